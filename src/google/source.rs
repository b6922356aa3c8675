//! The source credential (credential A): the identity that calls IAM.
//! Service account key, gcloud user login, metadata server, a static token
//! file, or Application Default Credentials discovery — and its cached
//! `cloud-platform` token.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{header, Request};
use serde::Deserialize;
use tokio::time::Instant;

use super::jwt::SigningKey;
use super::{
    bad_uri, google_error_message, iam, principal_email, Answer, CredentialError, Http, Token,
    TokenRequest, CLOUD_PLATFORM, DEFAULT_LIFETIME,
};
use crate::config::{SourceConfig, SourceKind};
use crate::forward::full_body;

/// Google's OAuth token endpoint, used when a credentials file names none.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// The metadata server's name when `GCE_METADATA_HOST` is not set.
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A static token file is re-read this often, so a token rotated on disk
/// by another tool is picked up.
const ACCESS_TOKEN_FILE_TTL: Duration = Duration::from_secs(300);

/// The environment ADC discovery looks at, captured once by the caller
/// (tests build one by hand instead of changing the process environment).
#[derive(Debug, Clone, Default)]
pub struct AdcEnv {
    /// `GOOGLE_APPLICATION_CREDENTIALS`.
    pub google_application_credentials: Option<PathBuf>,
    /// `CLOUDSDK_CONFIG`: gcloud's configuration directory.
    pub cloudsdk_config: Option<PathBuf>,
    /// The home directory (`HOME`).
    pub home: Option<PathBuf>,
    /// `GCE_METADATA_HOST`: `host[:port]` of the metadata server.
    pub gce_metadata_host: Option<String>,
}

impl AdcEnv {
    /// Reads the variables from the process environment.
    pub fn from_process() -> AdcEnv {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        AdcEnv {
            google_application_credentials: var("GOOGLE_APPLICATION_CREDENTIALS")
                .map(PathBuf::from),
            cloudsdk_config: var("CLOUDSDK_CONFIG").map(PathBuf::from),
            home: var("HOME").map(PathBuf::from),
            gce_metadata_host: var("GCE_METADATA_HOST").and_then(|v| v.into_string().ok()),
        }
    }

    fn metadata_host(&self) -> String {
        self.gce_metadata_host
            .clone()
            .unwrap_or_else(|| DEFAULT_METADATA_HOST.to_owned())
    }

    /// gcloud's `application_default_credentials.json`.
    fn gcloud_adc_file(&self) -> Option<PathBuf> {
        let dir = match (&self.cloudsdk_config, &self.home) {
            (Some(dir), _) => dir.clone(),
            (None, Some(home)) => home.join(".config").join("gcloud"),
            (None, None) => return None,
        };
        Some(dir.join("application_default_credentials.json"))
    }
}

/// A service account key file.
pub struct ServiceAccountKey {
    client_email: String,
    token_uri: String,
    key: SigningKey,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceAccountKey({}, …redacted)", self.client_email)
    }
}

/// A gcloud user login (`authorized_user`). The refresh token may be
/// replaced by the token endpoint; the old one is kept if it sends none.
pub struct AuthorizedUser {
    path: PathBuf,
    client_id: String,
    client_secret: String,
    refresh_token: Mutex<Arc<str>>,
    token_uri: String,
}

impl fmt::Debug for AuthorizedUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthorizedUser({}, …redacted)", self.path.display())
    }
}

/// The source credential, by kind.
#[derive(Debug)]
#[non_exhaustive]
pub enum SourceCredential {
    /// JWT-bearer grant with a service account key.
    ServiceAccount(ServiceAccountKey),
    /// `refresh_token` grant with a gcloud user login.
    AuthorizedUser(AuthorizedUser),
    /// The GCE/GKE metadata server at `host` (`host[:port]`).
    Metadata {
        /// `host[:port]`.
        host: String,
    },
    /// A token read from a file; never refreshed, only re-read.
    AccessToken {
        /// The file.
        path: PathBuf,
    },
    /// An ADC file of type `impersonated_service_account`: its own source,
    /// impersonating `target` through `delegates`.
    Impersonated {
        /// The inner source credential.
        source: Box<SourceCredential>,
        /// The service account it impersonates.
        target: String,
        /// The delegate chain, in order.
        delegates: Vec<String>,
    },
}

#[derive(Deserialize)]
struct CredentialsFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
    service_account_impersonation_url: Option<String>,
    #[serde(default)]
    delegates: Vec<String>,
    source_credentials: Option<serde_json::Value>,
}

impl SourceCredential {
    /// The source credential `[source]` describes; `adc` discovers it from
    /// `env`.
    pub fn from_config(
        cfg: &SourceConfig,
        env: &AdcEnv,
    ) -> Result<SourceCredential, CredentialError> {
        let need_file = |p: &Option<PathBuf>, key: &str| {
            p.clone().ok_or_else(|| CredentialError::File {
                path: PathBuf::from("[source]"),
                message: format!("`{key}` is required for this source type"),
            })
        };
        match cfg.kind {
            SourceKind::ServiceAccount => {
                Self::from_file_expecting(&need_file(&cfg.file, "file")?, "service_account")
            }
            SourceKind::AuthorizedUser => {
                Self::from_file_expecting(&need_file(&cfg.file, "file")?, "authorized_user")
            }
            SourceKind::Metadata => Ok(SourceCredential::Metadata {
                host: env.metadata_host(),
            }),
            SourceKind::AccessToken => Ok(SourceCredential::AccessToken {
                path: need_file(&cfg.token_file, "token_file")?,
            }),
            SourceKind::Adc => Self::discover(env),
        }
    }

    /// Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS`,
    /// then gcloud's ADC file, then the metadata server.
    pub fn discover(env: &AdcEnv) -> Result<SourceCredential, CredentialError> {
        if let Some(path) = &env.google_application_credentials {
            // Set but unreadable is an error, as in Google's libraries: the
            // user asked for this file.
            return Self::from_file(path);
        }
        if let Some(path) = env.gcloud_adc_file() {
            if path.is_file() {
                return Self::from_file(&path);
            }
        }
        if env.gce_metadata_host.is_some() || env.home.is_none() || on_gce() {
            return Ok(SourceCredential::Metadata {
                host: env.metadata_host(),
            });
        }
        Err(CredentialError::NoCredentials {
            tried: format!(
                "GOOGLE_APPLICATION_CREDENTIALS (unset), {} (missing), GCE_METADATA_HOST (unset, not on GCE)",
                env.gcloud_adc_file()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "gcloud ADC file".to_owned())
            ),
        })
    }

    /// Reads a credentials JSON file of any supported `type`.
    pub fn from_file(path: &Path) -> Result<SourceCredential, CredentialError> {
        let text = std::fs::read_to_string(path).map_err(|e| CredentialError::File {
            path: path.to_owned(),
            message: format!("cannot read credentials file: {e}"),
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| CredentialError::File {
                path: path.to_owned(),
                message: format!("not a JSON credentials file: {e}"),
            })?;
        Self::from_json(path, value)
    }

    fn from_file_expecting(path: &Path, kind: &str) -> Result<SourceCredential, CredentialError> {
        let cred = Self::from_file(path)?;
        let actual = cred.kind_name();
        if actual == kind {
            Ok(cred)
        } else {
            Err(CredentialError::File {
                path: path.to_owned(),
                message: format!("is a `{actual}` file but [source] type = \"{kind}\""),
            })
        }
    }

    fn from_json(
        path: &Path,
        value: serde_json::Value,
    ) -> Result<SourceCredential, CredentialError> {
        let err = |message: String| CredentialError::File {
            path: path.to_owned(),
            message,
        };
        let f: CredentialsFile = serde_json::from_value(value)
            .map_err(|e| err(format!("unexpected field type: {e}")))?;
        let missing = |field: &str, kind: &str| {
            err(format!("`{field}` is missing; a `{kind}` file needs it"))
        };
        match f.kind.as_deref() {
            Some("service_account") => {
                let client_email = f
                    .client_email
                    .ok_or_else(|| missing("client_email", "service_account"))?;
                let pem = f
                    .private_key
                    .ok_or_else(|| missing("private_key", "service_account"))?;
                let key_id = f.private_key_id.unwrap_or_default();
                let key = SigningKey::from_pem(&pem, &key_id).map_err(err)?;
                Ok(SourceCredential::ServiceAccount(ServiceAccountKey {
                    client_email,
                    token_uri: f.token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned()),
                    key,
                }))
            }
            Some("authorized_user") => Ok(SourceCredential::AuthorizedUser(AuthorizedUser {
                path: path.to_owned(),
                client_id: f.client_id.ok_or_else(|| missing("client_id", "authorized_user"))?,
                client_secret: f
                    .client_secret
                    .ok_or_else(|| missing("client_secret", "authorized_user"))?,
                refresh_token: Mutex::new(
                    f.refresh_token
                        .ok_or_else(|| missing("refresh_token", "authorized_user"))?
                        .into(),
                ),
                token_uri: f.token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned()),
            })),
            Some("impersonated_service_account") => {
                let url = f
                    .service_account_impersonation_url
                    .ok_or_else(|| missing("service_account_impersonation_url", "impersonated_service_account"))?;
                let target = target_from_impersonation_url(&url).ok_or_else(|| {
                    err(format!(
                        "service_account_impersonation_url `{url}` does not end in serviceAccounts/EMAIL:generateAccessToken"
                    ))
                })?;
                let inner = f
                    .source_credentials
                    .ok_or_else(|| missing("source_credentials", "impersonated_service_account"))?;
                let delegates = f
                    .delegates
                    .iter()
                    .map(|d| principal_email(d))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| err(format!("delegates: {e}")))?;
                Ok(SourceCredential::Impersonated {
                    source: Box::new(Self::from_json(path, inner)?),
                    target: principal_email(&target).map_err(|e| err(e.to_string()))?,
                    delegates,
                })
            }
            Some(other) => Err(err(format!(
                "credentials of type `{other}` are not supported; use service_account, authorized_user or impersonated_service_account"
            ))),
            None => Err(err("has no `type` field; is it a credentials file?".to_owned())),
        }
    }

    /// The `type` name, as in credentials files and `[source] type`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            SourceCredential::ServiceAccount(_) => "service_account",
            SourceCredential::AuthorizedUser(_) => "authorized_user",
            SourceCredential::Metadata { .. } => "metadata",
            SourceCredential::AccessToken { .. } => "access_token",
            SourceCredential::Impersonated { .. } => "impersonated_service_account",
        }
    }

    /// Who this is, for messages: never includes a secret.
    pub fn describe(&self) -> String {
        match self {
            SourceCredential::ServiceAccount(k) => {
                format!("service_account key for {}", k.client_email)
            }
            SourceCredential::AuthorizedUser(u) => format!("authorized_user {}", u.path.display()),
            SourceCredential::Metadata { host } => format!("metadata server {host}"),
            SourceCredential::AccessToken { path } => {
                format!("access_token file {}", path.display())
            }
            SourceCredential::Impersonated { source, target, .. } => {
                format!("{target} impersonated by {}", source.describe())
            }
        }
    }

    /// Fetches a fresh `cloud-platform` token (no caching here).
    pub(crate) fn fetch<'a>(
        &'a self,
        http: &'a Http,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Token, CredentialError>> + Send + 'a>,
    > {
        Box::pin(async move {
            match self {
                SourceCredential::ServiceAccount(k) => {
                    let assertion = k
                        .key
                        .assertion(&k.client_email, CLOUD_PLATFORM, &k.token_uri)
                        .map_err(|message| CredentialError::File {
                            path: PathBuf::from(&k.client_email),
                            message,
                        })?;
                    let form = [
                        ("grant_type", JWT_BEARER),
                        ("assertion", assertion.as_str()),
                    ];
                    let answer = http
                        .send_retrying(&k.token_uri, || form_request(&k.token_uri, &form))
                        .await?;
                    self.oauth_token(&k.token_uri, answer)
                }
                SourceCredential::AuthorizedUser(u) => {
                    let refresh = u
                        .refresh_token
                        .lock()
                        .map(|t| t.clone())
                        .unwrap_or_else(|p| p.into_inner().clone());
                    let form = [
                        ("grant_type", "refresh_token"),
                        ("client_id", u.client_id.as_str()),
                        ("client_secret", u.client_secret.as_str()),
                        ("refresh_token", &*refresh),
                    ];
                    let answer = http
                        .send_retrying(&u.token_uri, || form_request(&u.token_uri, &form))
                        .await?;
                    if answer.status.is_client_error() {
                        let message = google_error_message(&answer.body);
                        if message.starts_with("invalid_grant")
                            || message.contains("invalid_rapt")
                            || message.contains("reauth")
                        {
                            return Err(CredentialError::ReauthRequired { message });
                        }
                    }
                    let token = self.oauth_token(&u.token_uri, answer.clone_ref())?;
                    if let Some(new) = refresh_token_of(&answer.body) {
                        if let Ok(mut slot) = u.refresh_token.lock() {
                            *slot = new.into();
                        }
                    }
                    Ok(token)
                }
                SourceCredential::Metadata { host } => {
                    let uri = format!(
                        "http://{host}/computeMetadata/v1/instance/service-accounts/default/token?scopes={CLOUD_PLATFORM}"
                    );
                    let answer = http
                        .send_retrying(&uri, || {
                            Request::get(&uri)
                                .header("metadata-flavor", "Google")
                                .body(full_body(""))
                                .map_err(|e| bad_uri(&uri, e))
                        })
                        .await?;
                    self.oauth_token(&uri, answer)
                }
                SourceCredential::AccessToken { path } => {
                    let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                        CredentialError::File {
                            path: path.clone(),
                            message: format!("cannot read the access token file: {e}"),
                        }
                    })?;
                    let token = text.trim();
                    if token.is_empty() || token.contains(char::is_whitespace) {
                        return Err(CredentialError::File {
                            path: path.clone(),
                            message: "does not hold a single access token".to_owned(),
                        });
                    }
                    Ok(Token::new(token, ACCESS_TOKEN_FILE_TTL))
                }
                SourceCredential::Impersonated {
                    source,
                    target,
                    delegates,
                } => {
                    let bearer = source.fetch(http).await?;
                    let req = TokenRequest::access_token(
                        target,
                        delegates,
                        &[CLOUD_PLATFORM.to_owned()],
                        DEFAULT_LIFETIME,
                    )?;
                    iam::generate(http, &bearer, &req).await
                }
            }
        })
    }

    /// Parses `{"access_token","expires_in"}`, or turns an error answer
    /// into a [`CredentialError::Source`].
    fn oauth_token(&self, endpoint: &str, answer: Answer) -> Result<Token, CredentialError> {
        #[derive(Deserialize)]
        struct OAuthToken {
            access_token: String,
            expires_in: Option<u64>,
        }
        let endpoint = super::iam::host_of(endpoint);
        if !answer.status.is_success() {
            let hint = match self {
                SourceCredential::ServiceAccount(_) => "; check that the key is still enabled on the service account (keys can be deleted or disabled)",
                SourceCredential::AuthorizedUser(_) => "; run: gcloud auth application-default login",
                SourceCredential::Metadata { .. } => "; check that the VM or pod has a service account attached",
                _ => "",
            };
            return Err(CredentialError::Source {
                kind: self.describe(),
                endpoint,
                message: format!(
                    "HTTP {}: {}",
                    answer.status.as_u16(),
                    google_error_message(&answer.body)
                ),
                hint: hint.to_owned(),
            });
        }
        let t: OAuthToken =
            serde_json::from_slice(&answer.body).map_err(|e| CredentialError::BadResponse {
                endpoint: endpoint.clone(),
                message: format!("not an OAuth token response: {e}"),
            })?;
        let valid_for = Duration::from_secs(t.expires_in.unwrap_or(DEFAULT_LIFETIME.as_secs()));
        Ok(Token::new(t.access_token, valid_for))
    }
}

fn form_request(
    uri: &str,
    form: &[(&str, &str)],
) -> Result<Request<crate::forward::ProxyBody>, crate::forward::ForwardError> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(full_body(super::form_encode(form)))
        .map_err(|e| bad_uri(uri, e))
}

fn refresh_token_of(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct R {
        refresh_token: Option<String>,
    }
    serde_json::from_slice::<R>(body)
        .ok()?
        .refresh_token
        .filter(|t| !t.is_empty())
}

/// `…/serviceAccounts/EMAIL:generateAccessToken` → `EMAIL`.
fn target_from_impersonation_url(url: &str) -> Option<String> {
    let rest = url.rsplit_once("/serviceAccounts/")?.1;
    let email = rest.strip_suffix(":generateAccessToken")?;
    Some(email.replace("%40", "@"))
}

/// Whether this looks like a Google Compute Engine VM (the DMI product
/// name), so ADC falls back to the metadata server only where one exists.
fn on_gce() -> bool {
    std::fs::read_to_string("/sys/class/dmi/id/product_name")
        .map(|s| s.trim().starts_with("Google"))
        .unwrap_or(false)
}

/// The source credential's token, cached and refreshed on demand. The mutex
/// makes fetching single-flight; it is never touched on the request path.
pub(crate) struct SourceCache {
    credential: SourceCredential,
    state: tokio::sync::Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    token: Option<Token>,
    /// When the cached token is due for a refresh.
    refresh_at: Option<Instant>,
    /// No new fetch before this: the metadata server hands out the same
    /// token during its last minutes, and asking again would only spin.
    next_fetch: Option<Instant>,
}

impl fmt::Debug for SourceCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceCache({})", self.credential.describe())
    }
}

impl SourceCache {
    pub(crate) fn new(credential: SourceCredential) -> SourceCache {
        SourceCache {
            credential,
            state: tokio::sync::Mutex::new(Cached::default()),
        }
    }

    pub(crate) async fn token(&self, http: &Http) -> Result<Token, CredentialError> {
        let mut cached = self.state.lock().await;
        let now = Instant::now();
        if let Some(t) = &cached.token {
            let due = cached.refresh_at.is_none_or(|at| now >= at);
            let wait = cached.next_fetch.is_some_and(|n| now < n);
            if !t.expires_in().is_zero() && (!due || wait) {
                return Ok(t.clone());
            }
        }
        match self.credential.fetch(http).await {
            Ok(fresh) => {
                let left = fresh.expires_in();
                cached.refresh_at = Some(now + left - refresh_margin(left));
                cached.next_fetch = Some(now + min_refetch_interval(left));
                cached.token = Some(fresh.clone());
                Ok(fresh)
            }
            Err(e) => match cached.token.clone() {
                Some(t) if !t.expires_in().is_zero() => {
                    tracing::warn!(source = %self.credential.describe(), error = %e, "source token refresh failed; using the cached token");
                    cached.next_fetch = Some(now + Duration::from_secs(5));
                    Ok(t)
                }
                _ => Err(e),
            },
        }
    }
}

/// How long before expiry a token is refreshed: 5 minutes, or a quarter of
/// what is left for short lifetimes.
pub(crate) fn refresh_margin(left: Duration) -> Duration {
    (left / 4).min(Duration::from_secs(300))
}

/// The least time between two fetches of the source token, whatever its
/// expiry says: a quarter of its remaining life, between 1 s and 60 s.
fn min_refetch_interval(left: Duration) -> Duration {
    (left / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

impl Answer {
    fn clone_ref(&self) -> Answer {
        Answer {
            status: self.status,
            body: self.body.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ip-source-{}-{name}", std::process::id()))
    }

    #[test]
    fn adc_prefers_the_env_file_then_gcloud_then_metadata() {
        let dir = tmp("adc");
        let au =
            r#"{"type":"authorized_user","client_id":"c","client_secret":"s","refresh_token":"r"}"#;
        let gcloud = dir.join("gcloud");
        write(&gcloud, "application_default_credentials.json", au);
        let env = AdcEnv {
            cloudsdk_config: Some(gcloud.clone()),
            home: Some(dir.clone()),
            ..AdcEnv::default()
        };
        assert_eq!(
            SourceCredential::discover(&env).unwrap().kind_name(),
            "authorized_user"
        );

        let imp = format!(
            r#"{{"type":"impersonated_service_account","service_account_impersonation_url":"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/mid@p.iam.gserviceaccount.com:generateAccessToken","delegates":["projects/-/serviceAccounts/d@p.iam.gserviceaccount.com"],"source_credentials":{au}}}"#
        );
        let env2 = AdcEnv {
            google_application_credentials: Some(write(&dir, "imp.json", &imp)),
            ..env.clone()
        };
        match SourceCredential::discover(&env2).unwrap() {
            SourceCredential::Impersonated {
                source,
                target,
                delegates,
            } => {
                assert_eq!(target, "mid@p.iam.gserviceaccount.com");
                assert_eq!(delegates, vec!["d@p.iam.gserviceaccount.com".to_owned()]);
                assert_eq!(source.kind_name(), "authorized_user");
            }
            other => panic!("{other:?}"),
        }

        let env3 = AdcEnv {
            cloudsdk_config: Some(dir.join("nowhere")),
            gce_metadata_host: Some("127.0.0.1:1".into()),
            ..env.clone()
        };
        assert!(matches!(
            SourceCredential::discover(&env3).unwrap(),
            SourceCredential::Metadata { host } if host == "127.0.0.1:1"
        ));

        let missing = AdcEnv {
            google_application_credentials: Some(dir.join("absent.json")),
            ..env
        };
        let err = SourceCredential::discover(&missing).unwrap_err();
        assert!(err.to_string().contains("absent.json"), "{err}");
    }

    #[test]
    fn debug_of_a_user_login_hides_its_secrets() {
        let dir = tmp("dbg");
        let p = write(
            &dir,
            "au.json",
            r#"{"type":"authorized_user","client_id":"c","client_secret":"hush-secret","refresh_token":"1//refresh-secret"}"#,
        );
        let s = format!("{:?}", SourceCredential::from_file(&p).unwrap());
        assert!(
            !s.contains("hush-secret") && !s.contains("refresh-secret"),
            "{s}"
        );
    }

    #[test]
    fn refresh_never_spins_on_a_token_in_its_last_minutes() {
        // The metadata server returns a token with 4 minutes left: the next
        // fetch must wait, not happen immediately.
        assert!(min_refetch_interval(Duration::from_secs(240)) >= Duration::from_secs(60));
        assert!(min_refetch_interval(Duration::from_secs(2)) >= Duration::from_secs(1));
        assert_eq!(
            refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(20)),
            Duration::from_secs(5)
        );
    }
}
