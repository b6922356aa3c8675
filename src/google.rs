//! Credential exchanges with Google: the source credential (credential A),
//! and IAM Credentials calls that turn it into a token for the target
//! principal; and the token slot, the lock-free cell each token is served
//! from. Every call goes through [`Outbound::send`], so
//! `[upstream.resolve]` and `extra_ca` apply to token endpoints too.

mod error;
pub(crate) mod iam;
pub mod jwt;
pub mod preflight;
pub mod sign;
pub mod slot;
pub mod source;
pub mod sts;
mod token;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};

use crate::config::Config;
use crate::net::{ForwardError, Outbound, ProxyBody};

pub use error::CredentialError;
pub use source::{AdcEnv, SourceCredential};
pub use sts::AccessBoundary;
pub(crate) use token::{principal_email, resource_name};
pub use token::{Token, TokenKind, TokenRequest};

/// The scope of the source credential's own token: IAM Credentials needs
/// `cloud-platform` (or `iam`).
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The default lifetime IAM grants when none is asked for.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The longest response body read from a token or IAM endpoint.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Mints tokens for token slots. The production minter is [`Minter`];
/// tests may supply their own.
pub trait Mint: Send + Sync + 'static {
    /// Mints one token for `req`.
    fn mint<'a>(
        &'a self,
        req: &'a TokenRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send + 'a>>;

    /// Exchanges `base` (a token for `req`) at STS for one limited to
    /// `boundary`. A minter that cannot reach STS refuses.
    fn downscope<'a>(
        &'a self,
        req: &'a TokenRequest,
        base: &'a Token,
        boundary: &'a AccessBoundary,
    ) -> Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send + 'a>> {
        let _ = (base, boundary);
        Box::pin(async move {
            Err(CredentialError::InvalidRequest {
                message: format!(
                    "this minter cannot downscope the token for {}",
                    req.target_principal()
                ),
            })
        })
    }
}

/// The production minter: a source credential, its cached token, and the
/// upstream client.
pub struct Minter {
    http: Http,
    source: source::SourceCache,
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// Builds the source credential from `[source]` (discovering ADC from
    /// `env`) and an outbound client of its own from `[upstream]` (for a
    /// one-off mint; a running proxy shares its client through
    /// [`Minter::with_upstream`]).
    pub fn from_config(cfg: &Config, env: &AdcEnv) -> Result<Minter, CredentialError> {
        let upstream = Arc::new(Outbound::new(&cfg.upstream)?);
        Minter::with_upstream(cfg, env, upstream)
    }

    /// Builds the source credential from `[source]` (discovering ADC from
    /// `env`); every call goes through `upstream`, the process's one
    /// outbound client.
    pub fn with_upstream(
        cfg: &Config,
        env: &AdcEnv,
        upstream: Arc<Outbound>,
    ) -> Result<Minter, CredentialError> {
        let source = SourceCredential::from_config(&cfg.source, env)?;
        Ok(Minter::new(upstream, source))
    }

    /// A minter over an existing outbound client.
    pub fn new(upstream: Arc<Outbound>, source: SourceCredential) -> Minter {
        Minter {
            http: Http { upstream },
            source: source::SourceCache::new(source),
        }
    }

    /// The source credential's own token (scope `cloud-platform`), cached.
    pub async fn source_token(&self) -> Result<Token, CredentialError> {
        self.source.token(&self.http).await
    }

    /// Mints a token for `req` with the source credential.
    pub async fn mint_token(&self, req: &TokenRequest) -> Result<Token, CredentialError> {
        let bearer = self.source.token(&self.http).await?;
        match req.kind() {
            TokenKind::Source => Ok(bearer),
            TokenKind::Delegated { .. } => sign::delegated(&self.http, &bearer, req).await,
            _ => iam::generate(&self.http, &bearer, req).await,
        }
    }

    /// `signBlob` as `target` through `delegates` with the source
    /// credential.
    pub async fn sign_blob(
        &self,
        target: &str,
        delegates: &[String],
        blob: &[u8],
    ) -> Result<sign::Signed, CredentialError> {
        let bearer = self.source.token(&self.http).await?;
        sign::sign_blob(&self.http, &bearer, target, delegates, blob).await
    }

    /// `signJwt` as `target` through `delegates` with the source
    /// credential.
    pub async fn sign_jwt(
        &self,
        target: &str,
        delegates: &[String],
        claims: &serde_json::Value,
    ) -> Result<sign::Signed, CredentialError> {
        let bearer = self.source.token(&self.http).await?;
        sign::sign_jwt(&self.http, &bearer, target, delegates, claims).await
    }

    /// Exchanges `base` (a token for `req`) at STS for one limited to
    /// `boundary`.
    pub async fn downscope_token(
        &self,
        req: &TokenRequest,
        base: &Token,
        boundary: &AccessBoundary,
    ) -> Result<Token, CredentialError> {
        sts::exchange(&self.http, req.target_principal(), base, boundary).await
    }
}

impl Mint for Minter {
    fn mint<'a>(
        &'a self,
        req: &'a TokenRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send + 'a>> {
        Box::pin(self.mint_token(req))
    }

    fn downscope<'a>(
        &'a self,
        req: &'a TokenRequest,
        base: &'a Token,
        boundary: &'a AccessBoundary,
    ) -> Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send + 'a>> {
        Box::pin(self.downscope_token(req, base, boundary))
    }
}

/// Mints one token from the config, as the `token` command does: the
/// source credential from `[source]` (ADC from the process environment),
/// `[upstream]` for every call. The error's `Display` carries IAM's message
/// and a hint.
pub async fn mint_once(cfg: &Config, req: &TokenRequest) -> Result<Token, CredentialError> {
    Minter::from_config(cfg, &AdcEnv::from_process())?
        .mint_token(req)
        .await
}

/// [`mint_once`], then the STS exchange for a token limited to `boundary`
/// (the `token --access-boundary` command).
pub async fn downscope_once(
    cfg: &Config,
    req: &TokenRequest,
    boundary: &AccessBoundary,
) -> Result<Token, CredentialError> {
    let minter = Minter::from_config(cfg, &AdcEnv::from_process())?;
    let base = minter.mint_token(req).await?;
    minter.downscope_token(req, &base, boundary).await
}

/// The upstream client as the credential code uses it: small buffered
/// requests, whole (bounded) response bodies.
#[derive(Clone)]
pub(crate) struct Http {
    pub(crate) upstream: Arc<Outbound>,
}

/// A buffered answer.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

impl Http {
    pub(crate) async fn send(&self, req: Request<ProxyBody>) -> Result<Answer, ForwardError> {
        let host = req.uri().host().unwrap_or_default().to_owned();
        let resp = self.upstream.send(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ForwardError::Upstream {
                host,
                cause: format!("reading the response body: {e}"),
            })?
            .to_bytes();
        Ok(Answer { status, body })
    }
}

pub(crate) fn bad_uri(uri: &str, e: http::Error) -> ForwardError {
    ForwardError::Connect {
        host: uri.to_owned(),
        cause: format!("not a usable URI: {e}"),
    }
}

/// `a=b&c=d` with form percent-encoding.
pub(crate) fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode(k, &mut out);
        out.push('=');
        percent_encode(v, &mut out);
    }
    out
}

fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

/// The `{"error":{"message":…}}` (Google APIs) or
/// `{"error":…,"error_description":…}` (OAuth) text of an error body, or
/// the body itself if it is neither.
pub(crate) fn google_error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ApiError {
        message: Option<String>,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum ErrorField {
        Api(ApiError),
        OAuth(String),
    }
    #[derive(serde::Deserialize)]
    struct Body {
        error: Option<ErrorField>,
        error_description: Option<String>,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(Body {
            error: Some(ErrorField::Api(ApiError { message: Some(m) })),
            ..
        }) => m,
        Ok(Body {
            error: Some(ErrorField::OAuth(code)),
            error_description,
        }) => match error_description {
            Some(d) if !d.is_empty() => format!("{code}: {d}"),
            _ => code,
        },
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "(empty body)".to_owned()
            } else {
                text.chars().take(300).collect()
            }
        }
    }
}

/// Jittered exponential backoff: each delay is between half and all of
/// `base * 2^n`, capped at `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        exp.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_escapes_reserved_bytes() {
        assert_eq!(
            form_encode(&[("grant_type", "urn:x"), ("a b", "c&d=e/")]),
            "grant_type=urn%3Ax&a+b=c%26d%3De%2F"
        );
    }

    #[test]
    fn google_errors_are_extracted_verbatim() {
        let api = br#"{"error":{"code":403,"message":"Permission 'x' denied.","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(google_error_message(api), "Permission 'x' denied.");
        let oauth = br#"{"error":"invalid_grant","error_description":"Bad Request"}"#;
        assert_eq!(google_error_message(oauth), "invalid_grant: Bad Request");
        assert_eq!(google_error_message(b"oops"), "oops");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d.iter().all(|d| *d <= Duration::from_secs(1)));
        assert!(d[7] >= Duration::from_millis(500));
    }
}
