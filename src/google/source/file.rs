//! Credentials JSON files: `service_account` keys, `authorized_user`
//! logins, and `impersonated_service_account` ADC files.

use std::path::Path;
use std::sync::Mutex;

use serde::Deserialize;

use super::{AuthorizedUser, ServiceAccountKey, SourceCredential, DEFAULT_TOKEN_URI};
use crate::google::jwt::SigningKey;
use crate::google::{principal_email, CredentialError};

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

    pub(super) fn from_file_expecting(
        path: &Path,
        kind: &str,
    ) -> Result<SourceCredential, CredentialError> {
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
}

/// `…/serviceAccounts/EMAIL:generateAccessToken` → `EMAIL`.
fn target_from_impersonation_url(url: &str) -> Option<String> {
    let rest = url.rsplit_once("/serviceAccounts/")?.1;
    let email = rest.strip_suffix(":generateAccessToken")?;
    Some(email.replace("%40", "@"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::google::source::test_files::{tmp, write};

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
}
