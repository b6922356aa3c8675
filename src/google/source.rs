//! The source credential (credential A): the identity that calls IAM.
//! Service account key, gcloud user login, metadata server, a static token
//! file, or Application Default Credentials discovery — and its cached
//! `cloud-platform` token.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{header, Request};
use serde::Deserialize;

mod adc;
mod cache;
mod file;

/// Files for the source tests: credentials JSON written to a temp dir.
#[cfg(test)]
pub(crate) mod test_files {
    use std::path::{Path, PathBuf};

    use crate::test_dir::TempDir;

    pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub(crate) fn tmp(name: &str) -> TempDir {
        TempDir::new(&format!("source-{name}"))
    }
}

use super::jwt::SigningKey;
use super::{
    bad_uri, google_error_message, iam, Answer, CredentialError, Http, Token, TokenRequest,
    CLOUD_PLATFORM, DEFAULT_LIFETIME,
};
use crate::config::{SourceConfig, SourceKind};
use crate::net::full_body;

pub use adc::AdcEnv;
pub(crate) use cache::{refresh_margin, SourceCache};

/// Google's OAuth token endpoint, used when a credentials file names none.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// The metadata server's name when `GCE_METADATA_HOST` is not set.
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A static token file is re-read this often, so a token rotated on disk
/// by another tool is picked up.
const ACCESS_TOKEN_FILE_TTL: Duration = Duration::from_secs(300);

/// A service account key file.
pub struct ServiceAccountKey {
    pub(crate) client_email: String,
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
) -> Result<Request<crate::net::ProxyBody>, crate::net::ForwardError> {
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

impl Answer {
    fn clone_ref(&self) -> Answer {
        Answer {
            status: self.status,
            body: self.body.clone(),
        }
    }
}
