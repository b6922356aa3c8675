//! IAM Service Account Credentials: `generateAccessToken` and
//! `generateIdToken` for a target principal through a delegate chain, and
//! the bounded retry every credential call shares.

use std::time::{Duration, SystemTime};

use http::{header, HeaderValue, Request};
use serde::Deserialize;

use super::{
    bad_uri, google_error_message, jwt, resource_name, Answer, Backoff, CredentialError, Http,
    Token, TokenKind, TokenRequest,
};
use crate::net::{full_body, ForwardError, ProxyBody};

/// The IAM Credentials API base.
pub(crate) const IAM_BASE: &str = "https://iamcredentials.googleapis.com/v1";

/// Requests per call, counting the first.
const MAX_ATTEMPTS: u32 = 3;
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// One attempt may take this long, whatever `upstream.response_timeout` is:
/// a token call that hangs must not hold a route for minutes.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// The host of an absolute URI, for messages.
pub(crate) fn host_of(uri: &str) -> String {
    uri.parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
        .unwrap_or_else(|| uri.to_owned())
}

impl Http {
    /// Sends a request built by `build`, again after a jittered backoff on
    /// 429, 5xx or a connection failure, at most [`MAX_ATTEMPTS`] times.
    /// Any other answer, success or not, is returned as it is.
    pub(crate) async fn send_retrying(
        &self,
        uri: &str,
        build: impl Fn() -> Result<Request<ProxyBody>, ForwardError>,
    ) -> Result<Answer, CredentialError> {
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let req = build().map_err(|e| CredentialError::InvalidRequest {
                message: e.to_string(),
            })?;
            let last = match tokio::time::timeout(ATTEMPT_TIMEOUT, self.send(req)).await {
                Ok(Ok(a)) if !(a.status.as_u16() == 429 || a.status.is_server_error()) => {
                    return Ok(a)
                }
                Ok(Ok(a)) => format!(
                    "HTTP {}: {}",
                    a.status.as_u16(),
                    google_error_message(&a.body)
                ),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
            };
            if attempt >= MAX_ATTEMPTS {
                return Err(CredentialError::Unavailable {
                    endpoint: host_of(uri),
                    attempts: attempt,
                    message: last,
                });
            }
            let delay = backoff.next_delay();
            tracing::debug!(endpoint = %host_of(uri), attempt, ?delay, error = %last, "retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Mints the token `req` asks for, calling IAM with `source` as bearer.
pub(crate) async fn generate(
    http: &Http,
    source: &Token,
    req: &TokenRequest,
) -> Result<Token, CredentialError> {
    let target = req.target_principal();
    let delegates: Vec<String> = req.delegates().iter().map(|d| resource_name(d)).collect();
    let (method, body) = match req.kind() {
        TokenKind::Access { scopes, lifetime } => (
            "generateAccessToken",
            serde_json::json!({
                "delegates": delegates,
                "scope": scopes,
                "lifetime": format!("{}s", lifetime.as_secs()),
            }),
        ),
        TokenKind::Id { audience } => (
            "generateIdToken",
            serde_json::json!({
                "delegates": delegates,
                "audience": audience,
                "includeEmail": true,
            }),
        ),
        TokenKind::Delegated { .. } | TokenKind::Source => {
            return Err(CredentialError::InvalidRequest {
                message: format!("{req} is not minted by generateAccessToken/generateIdToken"),
            })
        }
    };
    let uri = format!("{IAM_BASE}/{}:{method}", resource_name(target));
    let answer = post(http, &uri, source, body.to_string(), target).await?;
    let bad = |message: String| CredentialError::BadResponse {
        endpoint: host_of(&uri),
        message,
    };
    match req.kind() {
        TokenKind::Access { .. } => {
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Generated {
                access_token: String,
                expire_time: String,
            }
            let g: Generated = serde_json::from_slice(&answer.body)
                .map_err(|e| bad(format!("not a generateAccessToken response: {e}")))?;
            let expire_time = parse_expire_time(&g.expire_time)
                .ok_or_else(|| bad(format!("expireTime `{}` is not RFC 3339", g.expire_time)))?;
            Ok(Token::expiring_at(g.access_token, expire_time))
        }
        TokenKind::Id { .. } => {
            #[derive(Deserialize)]
            struct Generated {
                token: String,
            }
            let g: Generated = serde_json::from_slice(&answer.body)
                .map_err(|e| bad(format!("not a generateIdToken response: {e}")))?;
            let exp = jwt::decode_unverified(&g.token)
                .map_err(|e| bad(format!("the ID token: {e}")))?
                .expire_time()
                .ok_or_else(|| bad("the ID token has no `exp` claim".to_owned()))?;
            Ok(Token::expiring_at(g.token, exp))
        }
        TokenKind::Delegated { .. } | TokenKind::Source => Err(bad(format!(
            "{req} is not minted by generateAccessToken/generateIdToken"
        ))),
    }
}

/// `2024-05-01T10:00:00Z` or `2024-05-01T10:00:00.123456789Z`.
pub(crate) fn parse_expire_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim()).ok()
}

/// POSTs a JSON `body` to an IAM Credentials `uri` with the source
/// credential (a sensitive header), counted in the IAM call metric; a
/// refusal becomes [`CredentialError::Iam`] naming `target`.
pub(super) async fn post(
    http: &Http,
    uri: &str,
    source: &Token,
    body: String,
    target: &str,
) -> Result<Answer, CredentialError> {
    let mut bearer =
        HeaderValue::try_from(format!("Bearer {}", source.expose_secret())).map_err(|_| {
            CredentialError::BadResponse {
                endpoint: "source credential".to_owned(),
                message: "its token is not a valid header value".to_owned(),
            }
        })?;
    bearer.set_sensitive(true);
    let started = std::time::Instant::now();
    let answer = http
        .send_retrying(uri, || {
            Request::post(uri)
                .header(header::AUTHORIZATION, bearer.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ACCEPT, "application/json")
                .body(full_body(body.clone()))
                .map_err(|e| bad_uri(uri, e))
        })
        .await;
    crate::ops::metrics::global().iam_call(started.elapsed());
    let answer = answer?;
    if !answer.status.is_success() {
        return Err(CredentialError::Iam {
            target: target.to_owned(),
            status: answer.status.as_u16(),
            message: google_error_message(&answer.body),
        });
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn expire_time_parses_with_and_without_fractions() {
        let whole = parse_expire_time("2024-05-01T10:00:00Z").unwrap();
        let frac = parse_expire_time("2024-05-01T10:00:00.250Z").unwrap();
        assert_eq!(
            whole.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_714_557_600
        );
        assert_eq!(
            frac.duration_since(whole).unwrap(),
            Duration::from_millis(250)
        );
        assert!(parse_expire_time("tomorrow").is_none());
    }

    #[test]
    fn hosts_are_extracted_for_messages() {
        assert_eq!(
            host_of("https://oauth2.googleapis.com/token"),
            "oauth2.googleapis.com"
        );
    }
}
