//! What the policy does with one request, and why: the pure decision
//! behind `explain` and `check --tests`. It runs the request path's own
//! steps — the one-Host rule, [`normalize::method`], [`normalize::path`],
//! client identification and [`RouteTable::find_reporting`] — on request
//! facts instead of a live request, mints nothing and touches no network.
//! Alongside the winner it gives each route's reason for matching or not,
//! computed from the [`RuleSpec`]s; the winner itself always comes from
//! the route table, so `explain` cannot disagree with the proxy about it.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::Method;

use crate::config::Config;
use crate::google::TokenKind;
use crate::net::{default_port, normalize_host, parse_cidr};
use crate::policy::normalize;
use crate::policy::routes::{ActionSpec, RouteTable, RuleSpec};

/// Who sent the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Nobody in particular: the proxy's view when no `[[client]]` exists.
    Anonymous,
    /// The `[[client]]` of this name (as if it had proved who it is; no
    /// password file is read).
    Client(String),
    /// A request from this address, identified as the proxy does by
    /// `cidrs` (clients that also need `proxy_auth` are not matched by
    /// address alone: name them with [`Who::Client`]).
    Addr(IpAddr),
}

/// The facts of one request.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The request method as sent.
    pub method: String,
    /// `https://host[:port]/path?query` (inside an intercepted tunnel) or
    /// `http://…` (absolute-form).
    pub url: String,
    /// The client.
    pub who: Who,
    /// Request headers (`Host`, `X-HTTP-Method-Override`, …).
    pub headers: Vec<(String, String)>,
}

/// A route's verdict on the request.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The route's name.
    pub route: String,
    /// Whether it matched.
    pub matched: bool,
    /// Why (or why not), for people.
    pub reason: String,
}

/// The token a winning inject route attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSlot {
    /// `impersonate` or `id_token`.
    pub kind: &'static str,
    /// The target principal.
    pub target: String,
    /// The delegate chain, in order.
    pub delegates: Vec<String>,
    /// Scopes (access tokens).
    pub scopes: Vec<String>,
    /// Lifetime in seconds (access tokens).
    pub lifetime: Option<u64>,
    /// Audience (ID tokens).
    pub audience: Option<String>,
    /// The resources of the access boundary the token is downscoped to,
    /// rendered for the request's bucket where the route says `{bucket}`.
    pub boundary: Option<String>,
}

/// What the client gets.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The normalised host (`None` when the URL has none).
    pub host: Option<String>,
    /// The normalised path.
    pub path: Option<String>,
    /// The effective method.
    pub method: Option<String>,
    /// The `[[client]]` the request was identified as.
    pub client: Option<String>,
    /// Every route, in order, with its reason (empty when the request is
    /// refused before routing).
    pub candidates: Vec<Candidate>,
    /// Report-mode denies (`enforce = false`) the request matched and
    /// passed over, in order.
    pub would_deny: Vec<String>,
    /// The route that decided, if any.
    pub route: Option<String>,
    /// `deny`, `impersonate`, `id_token` or `passthrough` (`none` when
    /// refused before a route decided).
    pub action: &'static str,
    /// The status the proxy answers itself with (`None`: forwarded).
    pub status: Option<u16>,
    /// The refusal's message, as the client would read it.
    pub message: Option<String>,
    /// The token slot of an inject route.
    pub slot: Option<TokenSlot>,
}

impl Decision {
    fn refused(status: u16, message: impl Into<String>) -> Decision {
        Decision {
            host: None,
            path: None,
            method: None,
            client: None,
            candidates: Vec::new(),
            would_deny: Vec::new(),
            route: None,
            action: "none",
            status: Some(status),
            message: Some(message.into()),
            slot: None,
        }
    }
}

/// Facts that cannot describe a request at all (not a refusal the proxy
/// would send: a mistake in the question).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FactsError(String);

/// Decides `facts` under `cfg` (already [`crate::policy::check`]ed, with
/// `rules` from it) and `table` (built from the same rules, e.g. with
/// [`crate::policy::Unminted`] slots).
pub fn explain(
    cfg: &Config,
    rules: &[RuleSpec],
    table: &RouteTable,
    facts: &Facts,
) -> Result<Decision, FactsError> {
    let uri: Uri = facts
        .url
        .parse()
        .map_err(|_| FactsError(format!("`{}` is not a URL", facts.url)))?;
    let scheme = match uri.scheme() {
        Some(s) if *s == Scheme::HTTPS || *s == Scheme::HTTP => s.clone(),
        _ => {
            return Err(FactsError(format!(
                "`{}` must start with https:// or http://",
                facts.url
            )))
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| FactsError(format!("`{}` names no host", facts.url)))?;
    let host = normalize_host(
        authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']'),
    );
    let port = authority
        .port_u16()
        .unwrap_or_else(|| default_port(&scheme));
    let refused = |status: u16, message: String| {
        let mut d = Decision::refused(status, message);
        d.host = Some(host.clone());
        d
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &facts.headers {
        let n = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| FactsError(format!("`{name}` is not a header name")))?;
        let v = HeaderValue::from_str(value.trim())
            .map_err(|_| FactsError(format!("the value of `{name}` is not a header value")))?;
        headers.append(n, v);
    }
    let method = Method::from_bytes(facts.method.as_bytes())
        .map_err(|_| FactsError(format!("`{}` is not an HTTP method", facts.method)))?;

    // The order of the request path (src/proxy/request.rs).
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Ok(refused(400, "request has more than one Host header".into()));
    }
    if let Some(h) = first {
        let sent = h.to_str().unwrap_or("\u{fffd}");
        if !agrees(sent, &host, port, &scheme) {
            return Ok(refused(
                421,
                format!("Host `{sent}` does not match the CONNECT authority `{authority}`"),
            ));
        }
    }
    if method == Method::CONNECT {
        return Ok(refused(
            405,
            "CONNECT inside an intercepted connection is not supported".into(),
        ));
    }
    let method = match normalize::method(&method, &headers) {
        Ok(m) => m,
        Err(e) => return Ok(refused(400, e.to_string())),
    };
    let path = match normalize::path(uri.path()) {
        Ok(p) => p.into_owned(),
        Err(e) => return Ok(refused(400, e.to_string())),
    };
    let mut d = Decision::refused(0, "");
    d.host = Some(host.clone());
    d.path = Some(path.clone());
    d.method = Some(method.to_string());

    let client = match identify(cfg, &facts.who)? {
        Ok(c) => c,
        Err(message) => {
            d.status = Some(407);
            d.message = Some(message);
            d.action = "proxy_auth";
            return Ok(d);
        }
    };
    d.client = client.map(|i| cfg.clients[i as usize].name.clone());

    let batch = normalize::is_batch(&path);
    let restricted = batch
        && rules.iter().any(|r| {
            r.hosts.iter().any(|h| h.matches(&host))
                && (r.path_prefix.is_some() || !r.methods.is_empty())
        });
    for r in rules {
        d.candidates
            .push(candidate(r, &host, &method, &path, client, restricted));
    }
    let mut would_deny = Vec::new();
    let winner = table.find_reporting(&host, &method, &path, client, |r| {
        would_deny.push(r.name.to_string());
    });
    d.would_deny = would_deny;
    let Some(route) = winner else {
        d.status = Some(403);
        d.message = Some(no_route(&method, &host, &path));
        return Ok(d);
    };
    let spec = rules
        .iter()
        .find(|r| *r.name == *route.name)
        .expect("the table is built from these rules");
    d.route = Some(spec.name.clone());
    d.action = route.action.kind();
    d.status = None;
    d.message = None;
    match &spec.action {
        ActionSpec::Deny => {
            d.status = Some(403);
            d.message = Some(denied(&spec.name, &method, &host, &path));
        }
        ActionSpec::Passthrough => {}
        ActionSpec::SignAs {
            account, delegates, ..
        } => {
            d.slot = Some(TokenSlot {
                kind: "sign_as",
                target: account.clone(),
                delegates: delegates.clone(),
                scopes: Vec::new(),
                lifetime: None,
                audience: None,
                boundary: None,
            });
        }
        ActionSpec::Inject {
            request, boundary, ..
        } => {
            if scheme == Scheme::HTTP {
                d.status = Some(400);
                d.message = Some(plain_http(&spec.name));
            }
            let boundary = match boundary {
                None => None,
                Some(b) if !b.per_bucket() => Some(b.render("").resources()),
                Some(b) => match crate::policy::boundary::bucket_of(&host, &path) {
                    Some(bucket) => Some(b.render(bucket).resources()),
                    None => {
                        if d.status.is_none() {
                            d.status = Some(403);
                            d.message = Some(no_bucket(&spec.name, &method, &host, &path));
                        }
                        None
                    }
                },
            };
            let (kind, scopes, lifetime, audience) = match request.kind() {
                TokenKind::Access { scopes, lifetime } => (
                    "impersonate",
                    scopes.clone(),
                    Some(lifetime.as_secs()),
                    None,
                ),
                TokenKind::Id { audience } => {
                    ("id_token", Vec::new(), None, Some(audience.clone()))
                }
                TokenKind::Delegated { scopes, .. } => ("subject", scopes.clone(), None, None),
                _ => ("source", Vec::new(), None, None),
            };
            d.slot = Some(TokenSlot {
                kind,
                target: email(request.target_principal()),
                delegates: request.delegates().iter().map(|s| email(s)).collect(),
                scopes,
                lifetime,
                audience,
                boundary,
            });
        }
    }
    Ok(d)
}

/// The 403 message for a request no route matches (the proxy's own).
pub(crate) fn no_route(method: &Method, host: &str, path: &str) -> String {
    let batch = if normalize::is_batch(path) {
        "; a batch request carries inner requests the proxy does not see, so it matches only a route whose path_prefix names /batch when a route for this host restricts path_prefix or methods"
    } else {
        ""
    };
    format!(
        "no [[route]] matches {method} {host}{path}; add a route for it (action = \"passthrough\" to forward it untouched){batch}"
    )
}

/// The 403 message of a deny route.
pub(crate) fn denied(route: &str, method: &Method, host: &str, path: &str) -> String {
    format!("denied by route \"{route}\" ({method} {host}{path})")
}

/// The 403 message for a `{bucket}` route's request that addresses no
/// single bucket.
pub(crate) fn no_bucket(route: &str, method: &Method, host: &str, path: &str) -> String {
    format!(
        "route \"{route}\" downscopes its token to the bucket a request addresses ({{bucket}} in access_boundary), and {method} {host}{path} addresses no single valid bucket (listing buckets and batch requests do not); add a route for such requests"
    )
}

/// The 400 message for an injecting route reached over plain `http://`.
pub(crate) fn plain_http(route: &str) -> String {
    format!(
        "route \"{route}\" attaches a credential, which is never sent over plain http://; use https:// (the proxy intercepts it)"
    )
}

/// `projects/-/serviceAccounts/EMAIL` → `EMAIL`, as configs usually say it.
fn email(s: &str) -> String {
    s.strip_prefix("projects/-/serviceAccounts/")
        .unwrap_or(s)
        .to_owned()
}

/// The `[[client]]` index, `Ok(Err(message))` for the proxy's 407, or a
/// name no `[[client]]` has.
#[allow(clippy::type_complexity)]
fn identify(cfg: &Config, who: &Who) -> Result<Result<Option<u32>, String>, FactsError> {
    let index = |i: usize| u32::try_from(i).expect("fewer than 2^32 clients");
    match who {
        Who::Client(name) => match cfg.clients.iter().position(|c| &c.name == name) {
            Some(i) => Ok(Ok(Some(index(i)))),
            None => Err(FactsError(format!(
                "no [[client]] named `{name}` is defined"
            ))),
        },
        _ if cfg.clients.is_empty() => Ok(Ok(None)),
        Who::Anonymous => Ok(Err(
            "proxy authentication required: [[client]] entries exist and the request names none (give a client name or an address)".into(),
        )),
        Who::Addr(ip) => {
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(*ip, IpAddr::V4),
                v4 => *v4,
            };
            let found = cfg.clients.iter().position(|c| {
                c.proxy_auth.is_none()
                    && (c.cidrs.is_empty()
                        || c.cidrs
                            .iter()
                            .filter_map(|s| parse_cidr(s).ok())
                            .any(|n| n.contains(&ip)))
            });
            Ok(match found {
                Some(i) => Ok(Some(index(i))),
                None => Err(format!(
                    "proxy authentication required: no [[client]] admits {ip} by address (clients with proxy_auth are matched by name only here)"
                )),
            })
        }
    }
}

/// Whether a `Host` the client sent names `host:port`.
fn agrees(sent: &str, host: &str, port: u16, scheme: &Scheme) -> bool {
    let Ok(a) = sent.parse::<Authority>() else {
        return false;
    };
    let h = a.host().trim_start_matches('[').trim_end_matches(']');
    normalize_host(h) == host && a.port_u16().unwrap_or_else(|| default_port(scheme)) == port
}

/// One route's reason, from its spec.
fn candidate(
    r: &RuleSpec,
    host: &str,
    method: &Method,
    path: &str,
    client: Option<u32>,
    batch_only: bool,
) -> Candidate {
    let no = |reason: String| Candidate {
        route: r.name.clone(),
        matched: false,
        reason,
    };
    let Some(h) = r.hosts.iter().find(|h| h.matches(host)) else {
        let hosts: Vec<String> = r.hosts.iter().map(|h| h.to_string()).collect();
        return no(format!("host {host} is not in {}", hosts.join(", ")));
    };
    let mut why = vec![format!("host matches {h}")];
    match &r.path_prefix {
        Some(p) if !prefix_matches(p, path) => {
            return no(format!("path {path} is not under path_prefix {p}"))
        }
        Some(p) if batch_only && !p.starts_with("/batch") => {
            return no(format!(
                "batch rule: {path} is a batch request and a route for this host restricts path_prefix or methods, so only a path_prefix naming /batch matches (this one is {p})"
            ))
        }
        Some(p) => why.push(format!("path under {p}")),
        None if batch_only => {
            return no(format!(
                "batch rule: {path} is a batch request and a route for this host restricts path_prefix or methods, so only a path_prefix naming /batch matches (this route has none)"
            ))
        }
        None => why.push("any path".into()),
    }
    if let ActionSpec::SignAs { account, .. } = &r.action {
        match crate::policy::sign::sign_method(path, account) {
            Some(m) => why.push(format!("{m} for {account}")),
            None => {
                return no(format!(
                    "a sign_as route matches only POST …/serviceAccounts/{account}:signBlob or :signJwt"
                ))
            }
        }
    }
    if r.methods.is_empty() {
        why.push("any method".into());
    } else if r.methods.contains(method) {
        why.push(format!("method {method} listed"));
    } else {
        let m: Vec<&str> = r.methods.iter().map(|m| m.as_str()).collect();
        return no(format!("method {method} is not in {}", m.join(", ")));
    }
    if r.clients.is_empty() {
        why.push("any client".into());
    } else if client.is_some_and(|c| r.client_indices.contains(&c)) {
        why.push("client listed".into());
    } else {
        return no(format!(
            "the client is not in clients = [{}]",
            r.clients.join(", ")
        ));
    }
    Candidate {
        route: r.name.clone(),
        matched: true,
        reason: why.join(", "),
    }
}

/// Whole-segment prefix match, as the route table does it.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}
