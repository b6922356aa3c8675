//! The rest of IAM Credentials: `signBlob` and `signJwt` for a target
//! principal through a delegate chain (the `token` command's signing
//! modes), and keyless domain-wide delegation: `signJwt` as the target for
//! `{iss: target, sub: subject, scope, aud: token endpoint}`, exchanged at
//! the token endpoint with the JWT-bearer grant. No key file anywhere: the
//! signature is made by the account's Google-managed key.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{header, Request};
use serde::Deserialize;

use super::iam::{host_of, IAM_BASE};
use super::{
    bad_uri, form_encode, google_error_message, jwt, resource_name, CredentialError, Http, Token,
    TokenKind, TokenRequest,
};
use crate::net::full_body;

/// The token endpoint a delegation assertion names (`aud`) and is sent to.
pub const TOKEN_ENDPOINT: &str = "https://oauth2.googleapis.com/token";

/// The longest a delegation assertion is valid; Google refuses more.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// How far back `iat` is set, for a token endpoint whose clock is behind.
const IAT_SKEW: u64 = 10;

/// What `signBlob` or `signJwt` answered.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Signed {
    /// The id of the Google-managed key that signed.
    pub key_id: String,
    /// `signBlob`: the signature, base64. `signJwt`: the signed JWT.
    pub signature: String,
}

/// Calls `signBlob` (`payload` is raw bytes) or `signJwt` (`payload` is
/// a JSON claims set) for `target` through `delegates`, with `source` as
/// the bearer.
async fn call(
    http: &Http,
    source: &Token,
    target: &str,
    delegates: &[String],
    method: &str,
    payload: String,
) -> Result<Signed, CredentialError> {
    let delegates: Vec<String> = delegates.iter().map(|d| resource_name(d)).collect();
    let uri = format!("{IAM_BASE}/{}:{method}", resource_name(target));
    let body = serde_json::json!({"delegates": delegates, "payload": payload}).to_string();
    let answer = super::iam::post(http, &uri, source, body, target).await?;
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        key_id: String,
        signed_blob: Option<String>,
        signed_jwt: Option<String>,
    }
    let a: Answer =
        serde_json::from_slice(&answer.body).map_err(|e| CredentialError::BadResponse {
            endpoint: host_of(&uri),
            message: format!("not a {method} response: {e}"),
        })?;
    let signature = a
        .signed_blob
        .or(a.signed_jwt)
        .ok_or_else(|| CredentialError::BadResponse {
            endpoint: host_of(&uri),
            message: format!("the {method} response carries no signature"),
        })?;
    Ok(Signed {
        key_id: a.key_id,
        signature,
    })
}

/// `signBlob`: `target`'s Google-managed key signs `blob`
/// (RSA PKCS#1 v1.5, SHA-256).
pub(crate) async fn sign_blob(
    http: &Http,
    source: &Token,
    target: &str,
    delegates: &[String],
    blob: &[u8],
) -> Result<Signed, CredentialError> {
    call(
        http,
        source,
        target,
        delegates,
        "signBlob",
        STANDARD.encode(blob),
    )
    .await
}

/// `signJwt`: `target`'s Google-managed key signs `claims` as an RS256
/// JWT (IAM adds `exp` an hour ahead when the claims have none).
pub(crate) async fn sign_jwt(
    http: &Http,
    source: &Token,
    target: &str,
    delegates: &[String],
    claims: &serde_json::Value,
) -> Result<Signed, CredentialError> {
    call(
        http,
        source,
        target,
        delegates,
        "signJwt",
        claims.to_string(),
    )
    .await
}

/// Mints a [`TokenKind::Delegated`] token: `signJwt` as the target, then
/// the JWT-bearer grant at [`TOKEN_ENDPOINT`].
pub(crate) async fn delegated(
    http: &Http,
    source: &Token,
    req: &TokenRequest,
) -> Result<Token, CredentialError> {
    let TokenKind::Delegated { subject, scopes } = req.kind() else {
        return Err(CredentialError::InvalidRequest {
            message: format!("{req} is not a domain-wide delegation"),
        });
    };
    let target = req.target_principal();
    let iat = jwt::unix(SystemTime::now()).saturating_sub(IAT_SKEW);
    let claims = serde_json::json!({
        "iss": target,
        "sub": subject,
        "scope": scopes.join(" "),
        "aud": TOKEN_ENDPOINT,
        "iat": iat,
        "exp": iat + ASSERTION_LIFETIME.as_secs(),
    });
    let assertion = sign_jwt(http, source, target, req.delegates(), &claims).await?;
    let body = form_encode(&[
        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
        ("assertion", &assertion.signature),
    ]);
    let answer = http
        .send_retrying(TOKEN_ENDPOINT, || {
            Request::post(TOKEN_ENDPOINT)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::ACCEPT, "application/json")
                .body(full_body(body.clone()))
                .map_err(|e| bad_uri(TOKEN_ENDPOINT, e))
        })
        .await?;
    if !answer.status.is_success() {
        return Err(CredentialError::Delegation {
            target: target.to_owned(),
            subject: subject.clone(),
            message: google_error_message(&answer.body),
        });
    }
    #[derive(Deserialize)]
    struct Granted {
        access_token: String,
        expires_in: u64,
    }
    let g: Granted =
        serde_json::from_slice(&answer.body).map_err(|e| CredentialError::BadResponse {
            endpoint: host_of(TOKEN_ENDPOINT),
            message: format!("not a token response: {e}"),
        })?;
    Ok(Token::new(
        g.access_token,
        Duration::from_secs(g.expires_in),
    ))
}
