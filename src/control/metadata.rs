//! The GCE metadata-server endpoint on the proxy listener: origin-form
//! requests with `Metadata-Flavor: Google` are answered as the metadata
//! server would answer them, for the `[metadata] service_account`, so
//! clients that only know Application Default Credentials work unchanged
//! with `GCE_METADATA_HOST` pointing here.
//!
//! By default the token endpoint hands out a placeholder that injecting
//! routes replace (the real token never leaves the proxy); `tokens =
//! "real"` hands the impersonated token itself to `real_clients` only.
//! With `[[client]]` entries, ID tokens go to `id_token_clients` only.
//! Tokens for other scopes and for ID-token audiences live in on-demand
//! slots ([`on_demand`]): bounded, per client, released when unused.

mod on_demand;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::config::{ConfigError, MetadataConfig, MetadataTokens};
use crate::control::Registry;
use crate::google::slot::Slot;
use crate::google::{TokenRequest, CLOUD_PLATFORM, DEFAULT_LIFETIME};
use crate::net::{full_body, request_authority, unmap, ProxyBody};
use crate::ops::audit::Principal;
use crate::policy::clients::ClientId;
use crate::policy::inject::PLACEHOLDER_PREFIX;
use crate::policy::normalize;

use on_demand::{OnDemand, Owner, Refused};

/// The names a metadata client addresses (besides the listener address).
const METADATA_NAMES: [&str; 2] = ["metadata.google.internal", "169.254.169.254"];

const SA_PREFIX: &str = "/computeMetadata/v1/instance/service-accounts";

/// What a placeholder claims when no real token's lifetime is known.
const PLACEHOLDER_EXPIRES_IN: u64 = 3599;

/// The metadata identity and its token slots, built once at start-up.
pub(crate) struct Metadata {
    email: String,
    project_id: Option<String>,
    numeric_project_id: Option<String>,
    tokens: MetadataTokens,
    real_clients: Vec<String>,
    audiences: Vec<String>,
    id_token_clients: Vec<String>,
    listen: SocketAddr,
    /// The `cloud-platform` access token of `email`.
    default_slot: Slot,
    /// Slots for requested scopes and ID-token audiences.
    on_demand: OnDemand,
}

impl Metadata {
    /// The endpoint for `[metadata]`, or `None` when it is disabled.
    pub fn new(
        cfg: &MetadataConfig,
        registry: &Registry,
        listen: SocketAddr,
    ) -> Result<Option<Metadata>, ConfigError> {
        if !cfg.enabled {
            return Ok(None);
        }
        let invalid = |e: crate::google::CredentialError| {
            ConfigError::invalid("metadata.service_account", e.to_string())
        };
        let sa = cfg.service_account.as_deref().unwrap_or_default();
        let request =
            TokenRequest::access_token(sa, &[], &[], DEFAULT_LIFETIME).map_err(invalid)?;
        let email = request.target_principal().to_owned();
        let project_id = cfg.project_id.clone().or_else(|| {
            email
                .split_once('@')
                .and_then(|(_, d)| d.strip_suffix(".iam.gserviceaccount.com"))
                .map(str::to_owned)
        });
        Ok(Some(Metadata {
            project_id,
            numeric_project_id: cfg.numeric_project_id.clone(),
            tokens: cfg.tokens,
            real_clients: cfg.real_clients.clone(),
            audiences: cfg.audiences.clone(),
            id_token_clients: cfg.id_token_clients.clone(),
            listen,
            default_slot: registry.slot(request, false),
            on_demand: OnDemand::new(),
            email,
        }))
    }

    /// Whether `host` (a `Host` header) names this metadata server: its
    /// well-known names, or the listener's own address. Other names are
    /// refused so that a DNS-rebound web page cannot reach it.
    pub fn is_our_host(&self, host: &str) -> bool {
        let Ok(a) = host.parse::<Authority>() else {
            return false;
        };
        let name = a.host().trim_start_matches('[').trim_end_matches(']');
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let port = a.port_u16();
        if METADATA_NAMES.contains(&name.as_str()) {
            return port.is_none_or(|p| p == 80 || p == self.listen.port());
        }
        if port.unwrap_or(80) != self.listen.port() {
            return false;
        }
        let bound = unmap(self.listen.ip());
        match name.parse::<IpAddr>().map(unmap) {
            Ok(ip) => {
                ip == bound || bound.is_unspecified() || (bound.is_loopback() && ip.is_loopback())
            }
            Err(_) => name == "localhost" && (bound.is_loopback() || bound.is_unspecified()),
        }
    }

    /// Whom the endpoint's default token acts as, for audit records.
    pub fn principal(&self) -> Arc<dyn Principal> {
        self.default_slot.principal()
    }

    /// Answers one metadata request from `peer`, attributed to `client`.
    /// An identity request's answer carries its audience for the audit
    /// record ([`audience`]).
    pub async fn answer(
        &self,
        registry: &Registry,
        client: Option<&ClientId>,
        peer: SocketAddr,
        req: &Request<Incoming>,
    ) -> Response<ProxyBody> {
        let headers = req.headers();
        let host = request_authority(req).unwrap_or_default();
        if !self.is_our_host(host) {
            return text(
                StatusCode::FORBIDDEN,
                &format!(
                    "Host `{host}` is not this metadata server; use {}, metadata.google.internal or 169.254.169.254",
                    self.listen
                ),
            );
        }
        if headers.contains_key("x-forwarded-for") {
            return text(
                StatusCode::FORBIDDEN,
                "Request had an X-Forwarded-For header and may have been proxied; the metadata server refuses it.",
            );
        }
        if headers.get("metadata-flavor").map(HeaderValue::as_bytes) != Some(b"Google") {
            return text(
                StatusCode::FORBIDDEN,
                "Missing Metadata-Flavor:Google header.",
            );
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        }
        let query = req.uri().query().unwrap_or_default();
        let recursive = param(query, "recursive").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let path = req.uri().path();
        match path {
            "/" => return text(StatusCode::OK, "computeMetadata/\n"),
            "/computeMetadata" | "/computeMetadata/" => return text(StatusCode::OK, "v1/\n"),
            "/computeMetadata/v1" | "/computeMetadata/v1/" => {
                return text(StatusCode::OK, "instance/\nproject/\n")
            }
            "/computeMetadata/v1/instance" | "/computeMetadata/v1/instance/" => {
                return text(StatusCode::OK, "service-accounts/\n")
            }
            "/computeMetadata/v1/project" | "/computeMetadata/v1/project/" => {
                return text(StatusCode::OK, "numeric-project-id\nproject-id\n")
            }
            "/computeMetadata/v1/universe/universe-domain" => {
                return text(StatusCode::OK, "googleapis.com")
            }
            "/computeMetadata/v1/project/numeric-project-id" => {
                return match &self.numeric_project_id {
                    Some(n) => text(StatusCode::OK, n),
                    None => text(
                        StatusCode::NOT_FOUND,
                        "no project number: set [metadata] numeric_project_id",
                    ),
                };
            }
            "/computeMetadata/v1/project/project-id" => {
                return match &self.project_id {
                    Some(p) => text(StatusCode::OK, p),
                    None => text(
                        StatusCode::NOT_FOUND,
                        "no project ID: set [metadata] project_id",
                    ),
                };
            }
            _ => {}
        }
        let Some(rest) = path.strip_prefix(SA_PREFIX) else {
            return not_found();
        };
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        if rest.is_empty() {
            return if recursive {
                let info = self.account_info();
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "default": info, self.email.as_str(): info }),
                )
            } else {
                text(StatusCode::OK, &format!("default/\n{}/\n", self.email))
            };
        }
        let (account, item) = rest.split_once('/').unwrap_or((rest, ""));
        if account != "default" && !account.eq_ignore_ascii_case(&self.email) {
            return not_found();
        }
        match item {
            "" if recursive => json(StatusCode::OK, &self.account_info()),
            "" => text(StatusCode::OK, "aliases\nemail\nidentity\nscopes\ntoken\n"),
            "email" => text(StatusCode::OK, &self.email),
            "aliases" => text(StatusCode::OK, "default"),
            "scopes" => text(StatusCode::OK, CLOUD_PLATFORM),
            "token" => self.token(registry, client, peer.ip(), query).await,
            "identity" => self.identity(registry, client, peer.ip(), query).await,
            _ => not_found(),
        }
    }

    fn account_info(&self) -> serde_json::Value {
        serde_json::json!({
            "aliases": ["default"],
            "email": self.email,
            "scopes": [CLOUD_PLATFORM],
        })
    }

    /// `…/token[?scopes=a,b]`: a placeholder, or the real access token for
    /// a `real_clients` client.
    async fn token(
        &self,
        registry: &Registry,
        client: Option<&ClientId>,
        peer: IpAddr,
        query: &str,
    ) -> Response<ProxyBody> {
        // ADC clients ask here most often: a chance to stop the
        // refreshers of on-demand slots nobody uses any more.
        self.on_demand.release_idle(registry);
        let (access_token, expires_in) = match self.tokens {
            MetadataTokens::Placeholder => {
                // Warms the real token for the routes that will replace
                // the placeholder with it.
                let _ = self.default_slot.load();
                let expires_in = self
                    .default_slot
                    .expires_in()
                    .map(|d| d.as_secs())
                    .filter(|s| *s >= 60)
                    .unwrap_or(PLACEHOLDER_EXPIRES_IN);
                (placeholder(), expires_in)
            }
            MetadataTokens::Real => {
                let allowed =
                    client.is_some_and(|c| self.real_clients.iter().any(|n| **n == *c.name));
                if !allowed {
                    let who = client.map_or("this client".to_owned(), |c| {
                        format!("client \"{}\"", c.name)
                    });
                    return text(
                        StatusCode::FORBIDDEN,
                        &format!(
                            "impersonate-proxy: {who} may not have a real token for {}: it is not in [metadata] real_clients; send its requests through the proxy (HTTPS_PROXY) instead",
                            self.email
                        ),
                    );
                }
                let scopes: Vec<String> = param(query, "scopes")
                    .map(|s| {
                        s.split([',', ' '])
                            .filter(|x| !x.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                let slot = if scopes.is_empty() || scopes == [CLOUD_PLATFORM] {
                    self.default_slot.clone()
                } else {
                    match TokenRequest::access_token(&self.email, &[], &scopes, DEFAULT_LIFETIME) {
                        Ok(r) => {
                            let owner = Owner::of(client, peer);
                            match self.on_demand.get(registry, r, Some(owner)) {
                                Ok(s) => s,
                                Err(refused) => return too_many(&refused),
                            }
                        }
                        Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
                    }
                };
                match slot.get().await {
                    Ok(h) => {
                        let expires_in = slot.expires_in().unwrap_or(Duration::ZERO).as_secs();
                        (bearer(&h), expires_in)
                    }
                    Err(e) => return no_token(&e),
                }
            }
        };
        let mut resp = json(
            StatusCode::OK,
            &serde_json::json!({
                "access_token": access_token,
                "expires_in": expires_in,
                "token_type": "Bearer",
            }),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    /// `…/identity?audience=…[&format=full]`: a real ID token for the
    /// requested audience, through generateIdToken, for an
    /// `id_token_clients` client (anyone when no clients are configured).
    async fn identity(
        &self,
        registry: &Registry,
        client: Option<&ClientId>,
        peer: IpAddr,
        query: &str,
    ) -> Response<ProxyBody> {
        let Some(audience) = param(query, "audience").filter(|a| !a.is_empty()) else {
            return text(
                StatusCode::BAD_REQUEST,
                "non-empty audience parameter required",
            );
        };
        let mut resp = self.id_token(registry, client, peer, &audience).await;
        resp.extensions_mut().insert(Audience(audience.into()));
        resp
    }

    async fn id_token(
        &self,
        registry: &Registry,
        client: Option<&ClientId>,
        peer: IpAddr,
        audience: &str,
    ) -> Response<ProxyBody> {
        // With [[client]] entries every request here is attributed (the
        // others got 407), so `None` means there are no clients to restrict.
        if let Some(c) = client.filter(|c| !self.id_token_clients.iter().any(|n| **n == *c.name)) {
            return text(
                StatusCode::FORBIDDEN,
                &format!(
                    "impersonate-proxy: client \"{}\" may not have ID tokens for {}: it is not in [metadata] id_token_clients; add \"{}\" there to allow it (or call the service through the proxy with an id_token route)",
                    c.name, self.email, c.name
                ),
            );
        }
        let listed = self.audiences.iter().any(|a| a == audience);
        if !self.audiences.is_empty() && !listed {
            return text(
                StatusCode::FORBIDDEN,
                &format!("impersonate-proxy: audience `{audience}` is not in [metadata] audiences"),
            );
        }
        let slot = match TokenRequest::id_token(&self.email, &[], audience) {
            Ok(r) => {
                let owner = (!listed).then(|| Owner::of(client, peer));
                match self.on_demand.get(registry, r, owner) {
                    Ok(s) => s,
                    Err(refused) => return too_many(&refused),
                }
            }
            Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        match slot.get().await {
            Ok(h) => {
                let mut resp = text(StatusCode::OK, &bearer(&h));
                resp.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                resp
            }
            Err(e) => no_token(&e),
        }
    }
}

/// The audience of an identity request, riding on its answer to the
/// audit record. Not a secret: the client chose it.
#[derive(Clone)]
struct Audience(Arc<str>);

/// The audience an identity request asked for, from its answer.
pub(crate) fn audience(resp: &Response<ProxyBody>) -> Option<Arc<str>> {
    resp.extensions().get::<Audience>().map(|a| a.0.clone())
}

fn too_many(refused: &Refused) -> Response<ProxyBody> {
    let idle = on_demand::IDLE.as_secs() / 60;
    let message = match refused {
        Refused::Owner(owner) => format!(
            "impersonate-proxy: {owner} already holds {} of the metadata endpoint's on-demand tokens (scope sets and audiences); one unused for {idle} minutes is released; list the audiences clients need in [metadata] audiences",
            on_demand::MAX_PER_CLIENT
        ),
        Refused::Total => format!(
            "impersonate-proxy: the metadata endpoint already keeps the most distinct tokens (scope sets and audiences) it will ({}); one unused for {idle} minutes is released; list the audiences clients need in [metadata] audiences",
            on_demand::MAX_ON_DEMAND
        ),
    };
    text(StatusCode::TOO_MANY_REQUESTS, &message)
}

/// A fresh placeholder: unique, and recognisable by its prefix.
fn placeholder() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // A placeholder is not a secret; if the system RNG fails, a
    // time-and-counter value is still unique enough to tell them apart.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        bytes[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    }
    let mut s = String::with_capacity(PLACEHOLDER_PREFIX.len() + 32);
    s.push_str(PLACEHOLDER_PREFIX);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The token of a `Bearer …` header value.
fn bearer(h: &HeaderValue) -> String {
    let b = h.as_bytes();
    let t = b.strip_prefix(b"Bearer ").unwrap_or(b);
    String::from_utf8_lossy(t).into_owned()
}

fn no_token(e: &crate::google::CredentialError) -> Response<ProxyBody> {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("impersonate-proxy: no token: {e}"),
    )
}

fn not_found() -> Response<ProxyBody> {
    text(StatusCode::NOT_FOUND, "Not Found")
}

fn text(status: StatusCode, body: &str) -> Response<ProxyBody> {
    respond(
        status,
        "application/text",
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    respond(
        status,
        "application/json",
        Bytes::from(serde_json::to_vec(body).unwrap_or_default()),
    )
}

/// Every answer carries `Metadata-Flavor: Google`: clients probe for it.
fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<ProxyBody> {
    let mut resp = Response::new(full_body(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert("metadata-flavor", HeaderValue::from_static("Google"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::SERVER,
        HeaderValue::from_static("Metadata Server for VM"),
    );
    resp
}

/// The first value of `key` in a query string, percent-decoded.
fn param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == key).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (normalize::hex(b[i + 1]), normalize::hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_percent_decoded() {
        let q = "audience=https%3A%2F%2Fsvc.run.app&format=full&scopes=a,b+c";
        assert_eq!(param(q, "audience").as_deref(), Some("https://svc.run.app"));
        assert_eq!(param(q, "format").as_deref(), Some("full"));
        assert_eq!(param(q, "scopes").as_deref(), Some("a,b c"));
        assert_eq!(param(q, "missing"), None);
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn placeholders_are_unique_and_recognised() {
        let (a, b) = (placeholder(), placeholder());
        assert_ne!(a, b);
        let h = HeaderValue::from_str(&format!("Bearer {a}")).unwrap();
        assert!(crate::policy::inject::is_placeholder(&h));
    }
}
