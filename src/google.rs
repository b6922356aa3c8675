//! Credential exchanges with Google: the source credential (credential A),
//! and IAM Credentials calls that turn it into a token for the target
//! principal. Every call goes through [`Upstream::send`], so
//! `[upstream.resolve]` and `extra_ca` apply to token endpoints too.

pub(crate) mod iam;
pub mod jwt;
pub mod source;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;

use crate::config::Config;
use crate::forward::{ForwardError, ProxyBody, Upstream};

pub use source::{AdcEnv, SourceCredential};

/// The scope of the source credential's own token: IAM Credentials needs
/// `cloud-platform` (or `iam`).
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The default lifetime IAM grants when none is asked for.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The longest response body read from a token or IAM endpoint.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// A credential could not be obtained. Messages are for people: they name
/// the principal, the cause Google gave, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// IAM Credentials refused the request (a 4xx other than 429); `message`
    /// is Google's text, verbatim.
    #[error("IAM refused to mint a token for {target} (HTTP {status}): {message}{}", iam_hint(*.status))]
    Iam {
        /// The target principal (email).
        target: String,
        /// The HTTP status IAM answered with.
        status: u16,
        /// Google's error message.
        message: String,
    },
    /// A Google endpoint kept answering 429/5xx (or could not be reached)
    /// until the retries ran out.
    #[error("{endpoint} is unavailable after {attempts} attempts: {message}")]
    Unavailable {
        /// The host that failed.
        endpoint: String,
        /// How many requests were made.
        attempts: u32,
        /// The last status and message, or the connection error.
        message: String,
    },
    /// The source credential's token endpoint refused the grant.
    #[error("the source credential ({kind}) was refused by {endpoint}: {message}{hint}")]
    Source {
        /// Which source credential, e.g. `service_account key sa@p.iam.gserviceaccount.com`.
        kind: String,
        /// The token endpoint.
        endpoint: String,
        /// Google's `error` and `error_description`.
        message: String,
        /// What to do about it, starting with `; ` (or empty).
        hint: String,
    },
    /// The user login behind an `authorized_user` credential needs to be
    /// renewed.
    #[error("the gcloud user login needs to be renewed ({message}); run: gcloud auth application-default login")]
    ReauthRequired {
        /// Google's `error` and `error_description`.
        message: String,
    },
    /// A credentials file is missing or not in a format we understand.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Application Default Credentials discovery found nothing.
    #[error("no Application Default Credentials found (tried {tried}); run: gcloud auth application-default login, or set [source] type and file")]
    NoCredentials {
        /// The places that were looked at.
        tried: String,
    },
    /// An endpoint answered something that is not the documented format.
    #[error("unexpected answer from {endpoint}: {message}")]
    BadResponse {
        /// The host.
        endpoint: String,
        /// What was wrong.
        message: String,
    },
    /// A token request that cannot be sent, e.g. a target that is not an
    /// email address.
    #[error("invalid token request: {message}")]
    InvalidRequest {
        /// What is wrong.
        message: String,
    },
    /// The upstream client could not be built from `[upstream]`.
    #[error("{0}")]
    Setup(#[from] crate::forward::UpstreamSetupError),
    /// The cached token for the target expired and no refresh succeeded.
    #[error("the token for {target} expired and could not be refreshed{}", expired_cause(.cause))]
    Expired {
        /// The target principal (email).
        target: String,
        /// The error of the last refresh attempt, if one finished.
        cause: Option<Arc<CredentialError>>,
    },
}

fn iam_hint(status: u16) -> &'static str {
    match status {
        403 => "; grant the source credential roles/iam.serviceAccountTokenCreator on the target (with delegates: the source on the first delegate, each delegate on the next, the last on the target)",
        400 => "; check `lifetime` (at most 3600s unless the org policy constraints/iam.allowServiceAccountCredentialLifetimeExtension lists the target), scopes and audience",
        401 => "; the source credential's token was not accepted, check [source]",
        404 => "; check that the service account exists",
        _ => "",
    }
}

fn expired_cause(cause: &Option<Arc<CredentialError>>) -> String {
    match cause {
        Some(c) => format!(": {c}"),
        None => ": a refresh is still in progress".to_owned(),
    }
}

impl CredentialError {
    /// IAM answered 403: the caller lacks `iam.serviceAccounts.getAccessToken`
    /// (or `getOpenIdToken`) on the target or a delegate.
    pub fn is_permission_denied(&self) -> bool {
        match self {
            CredentialError::Iam { status, .. } => *status == 403,
            CredentialError::Expired { cause: Some(c), .. } => c.is_permission_denied(),
            _ => false,
        }
    }

    /// A transient failure: worth retrying later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CredentialError::Unavailable { .. })
    }

    /// The gcloud user login must be renewed by a person.
    pub fn is_reauth_required(&self) -> bool {
        matches!(self, CredentialError::ReauthRequired { .. })
    }

    /// A cached token reached its expiry without a successful refresh.
    pub fn is_expired(&self) -> bool {
        matches!(self, CredentialError::Expired { .. })
    }

    /// Google's own message for an IAM refusal, if this is one.
    pub fn iam_message(&self) -> Option<&str> {
        match self {
            CredentialError::Iam { message, .. } => Some(message),
            CredentialError::Expired { cause: Some(c), .. } => c.iam_message(),
            _ => None,
        }
    }
}

/// A bearer token and when it expires. `Debug` and `Display` never print
/// the secret.
#[derive(Clone)]
pub struct Token {
    secret: Arc<str>,
    expires_at: Instant,
    expire_time: SystemTime,
}

impl Token {
    /// A token that is valid for `valid_for` from now.
    pub fn new(secret: impl Into<Arc<str>>, valid_for: Duration) -> Token {
        Token {
            secret: secret.into(),
            expires_at: Instant::now() + valid_for,
            expire_time: SystemTime::now() + valid_for,
        }
    }

    /// A token that expires at the wall-clock time `expire_time` (as IAM
    /// reports it); already expired maps to "valid for 0s".
    pub fn expiring_at(secret: impl Into<Arc<str>>, expire_time: SystemTime) -> Token {
        let valid_for = expire_time
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let mut t = Token::new(secret, valid_for);
        t.expire_time = expire_time;
        t
    }

    /// The token itself. Only for putting it on the wire or printing it
    /// on explicit request (the `token` command).
    pub fn expose_secret(&self) -> &str {
        &self.secret
    }

    /// When the token stops working (monotonic clock).
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// When the token stops working (wall clock).
    pub fn expire_time(&self) -> SystemTime {
        self.expire_time
    }

    /// How long the token is still valid; zero once expired.
    pub fn expires_in(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Token(…redacted, expires in {})",
            ShortDuration(self.expires_in())
        )
    }
}

/// Prints `42m`, `1h 5m`, `20s` — minutes are enough for people.
pub(crate) struct ShortDuration(pub(crate) Duration);

impl fmt::Display for ShortDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        match s {
            0..=119 => write!(f, "{s}s"),
            120..=3599 => write!(f, "{}m", s / 60),
            _ => write!(f, "{}h {}m", s / 3600, (s % 3600) / 60),
        }
    }
}

/// What a token is for: one token slot exists per distinct request.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TokenRequest {
    target_principal: String,
    delegates: Vec<String>,
    kind: TokenKind,
}

/// The two kinds of token IAM Credentials mints.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum TokenKind {
    /// An OAuth 2.0 access token (`generateAccessToken`).
    Access {
        /// OAuth scopes, e.g. `cloud-platform`.
        scopes: Vec<String>,
        /// Requested lifetime.
        lifetime: Duration,
    },
    /// An OpenID Connect ID token (`generateIdToken`).
    Id {
        /// The `aud` claim, e.g. a Cloud Run URL.
        audience: String,
    },
}

impl TokenRequest {
    /// An access token for `target` (bare email or
    /// `projects/-/serviceAccounts/EMAIL`) through `delegates`, in order.
    /// Empty `scopes` means `cloud-platform`.
    pub fn access_token(
        target: &str,
        delegates: &[String],
        scopes: &[String],
        lifetime: Duration,
    ) -> Result<TokenRequest, CredentialError> {
        if lifetime.is_zero() || lifetime.subsec_nanos() != 0 {
            return Err(CredentialError::InvalidRequest {
                message: format!(
                    "lifetime {lifetime:?} for {target} must be a whole number of seconds, at least 1s"
                ),
            });
        }
        let scopes = if scopes.is_empty() {
            vec![CLOUD_PLATFORM.to_owned()]
        } else {
            scopes.to_vec()
        };
        Ok(TokenRequest {
            target_principal: principal_email(target)?,
            delegates: delegate_emails(delegates)?,
            kind: TokenKind::Access { scopes, lifetime },
        })
    }

    /// An ID token for `target` with the given audience.
    pub fn id_token(
        target: &str,
        delegates: &[String],
        audience: &str,
    ) -> Result<TokenRequest, CredentialError> {
        if audience.is_empty() {
            return Err(CredentialError::InvalidRequest {
                message: format!("an ID token for {target} needs a non-empty audience"),
            });
        }
        Ok(TokenRequest {
            target_principal: principal_email(target)?,
            delegates: delegate_emails(delegates)?,
            kind: TokenKind::Id {
                audience: audience.to_owned(),
            },
        })
    }

    /// The target principal's email.
    pub fn target_principal(&self) -> &str {
        &self.target_principal
    }

    /// The delegate chain (emails), in order.
    pub fn delegates(&self) -> &[String] {
        &self.delegates
    }

    /// Access or ID token, and its parameters.
    pub fn kind(&self) -> &TokenKind {
        &self.kind
    }
}

impl fmt::Display for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            TokenKind::Access { .. } => write!(f, "access token for {}", self.target_principal)?,
            TokenKind::Id { audience } => write!(
                f,
                "ID token for {} (audience {audience})",
                self.target_principal
            )?,
        }
        if !self.delegates.is_empty() {
            write!(f, " via {}", self.delegates.join(" → "))?;
        }
        Ok(())
    }
}

const RESOURCE_PREFIX: &str = "projects/-/serviceAccounts/";

/// `EMAIL` or `projects/-/serviceAccounts/EMAIL` → `EMAIL`.
pub(crate) fn principal_email(raw: &str) -> Result<String, CredentialError> {
    let email = raw.trim();
    let email = email.strip_prefix(RESOURCE_PREFIX).unwrap_or(email);
    let ok = email.split_once('@').is_some_and(|(user, domain)| {
        !user.is_empty() && !domain.is_empty() && !domain.contains('@') && !domain.contains('/')
    }) && !email.contains(char::is_whitespace);
    if ok {
        Ok(email.to_owned())
    } else {
        Err(CredentialError::InvalidRequest {
            message: format!(
                "`{raw}` is not a service account; write its email (sa@project.iam.gserviceaccount.com) or projects/-/serviceAccounts/EMAIL"
            ),
        })
    }
}

fn delegate_emails(delegates: &[String]) -> Result<Vec<String>, CredentialError> {
    delegates.iter().map(|d| principal_email(d)).collect()
}

/// The full resource name IAM expects on the wire.
pub(crate) fn resource_name(email: &str) -> String {
    format!("{RESOURCE_PREFIX}{email}")
}

/// Mints tokens for token slots. The production minter is [`Minter`];
/// tests may supply their own.
pub trait Mint: Send + Sync + 'static {
    /// Mints one token for `req`.
    fn mint<'a>(
        &'a self,
        req: &'a TokenRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send + 'a>>;
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
    /// `env`) and the upstream client from `[upstream]`.
    pub fn from_config(cfg: &Config, env: &AdcEnv) -> Result<Minter, CredentialError> {
        let source = SourceCredential::from_config(&cfg.source, env)?;
        let upstream = Upstream::new(&cfg.upstream)?;
        Ok(Minter::new(upstream, source))
    }

    /// A minter over an existing upstream client.
    pub fn new(upstream: Upstream, source: SourceCredential) -> Minter {
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
        iam::generate(&self.http, &bearer, req).await
    }
}

impl Mint for Minter {
    fn mint<'a>(
        &'a self,
        req: &'a TokenRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send + 'a>> {
        Box::pin(self.mint_token(req))
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

/// The upstream client as the credential code uses it: small buffered
/// requests, whole (bounded) response bodies.
#[derive(Clone)]
pub(crate) struct Http {
    pub(crate) upstream: Upstream,
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
    fn principals_accept_both_forms_and_reject_garbage() {
        let e = "sa@p.iam.gserviceaccount.com";
        assert_eq!(principal_email(e).unwrap(), e);
        assert_eq!(
            principal_email(&format!("projects/-/serviceAccounts/{e}")).unwrap(),
            e
        );
        assert!(principal_email("projects/-/serviceAccounts/").is_err());
        assert!(principal_email("nobody").is_err());
        assert!(principal_email("a@b/c").is_err());
    }

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
    fn token_debug_and_display_hide_the_secret() {
        let t = Token::new("ya29.very-secret", Duration::from_secs(42 * 60 + 5));
        for s in [format!("{t:?}"), format!("{t}")] {
            assert!(!s.contains("very-secret"), "{s}");
            assert!(s.contains("redacted") && s.contains("42m"), "{s}");
        }
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
