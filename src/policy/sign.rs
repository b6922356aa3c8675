//! `sign_as` routes: a client's `signBlob` / `signJwt` for one account
//! goes to IAM with the source credential's token and the route's
//! `delegates` written into the body. Unmodified programs need this for
//! Cloud Storage signed URLs (google-cloud-storage on metadata credentials
//! signs through IAM `signBlob` as the account the metadata server names).
//!
//! A signature is a credential: a signed JWT whose `aud` is Google's token
//! endpoint is an assertion its holder exchanges for an access token of
//! its own, outside the proxy. Such payloads are refused unless the route
//! sets `allow_token_assertions = true`. Only these requests have their
//! body read whole, and only up to [`MAX_SIGN_BODY`].

use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::StatusCode;

use crate::google::slot::Slot;
use crate::google::{principal_email, resource_name};
use crate::ops::audit::Principal;

/// The largest `signBlob` / `signJwt` request body a `sign_as` route
/// reads (a V4 string to sign is a few hundred bytes).
pub const MAX_SIGN_BODY: usize = 256 << 10;

/// Google's OAuth token endpoints (without scheme): an assertion naming
/// one of them as `aud` mints access tokens.
const TOKEN_ENDPOINTS: [&str; 5] = [
    "oauth2.googleapis.com/token",
    "accounts.google.com/o/oauth2/token",
    "www.googleapis.com/oauth2/v4/token",
    "www.googleapis.com/oauth2/v3/token",
    "oauth2.googleapis.com/oauth2/v4/token",
];

/// Whom a `sign_as` request acts as, for the audit record.
struct Signer {
    account: String,
    delegates: Vec<String>,
}

impl Principal for Signer {
    fn target_principal(&self) -> &str {
        &self.account
    }

    fn delegates(&self) -> &[String] {
        &self.delegates
    }
}

/// A compiled `sign_as` route.
pub struct SignAs {
    /// The source credential's own token.
    pub(crate) slot: Slot,
    account: Arc<str>,
    /// Full resource names, as IAM wants them in the body.
    delegates: Vec<String>,
    allow_token_assertions: bool,
    signer: Arc<dyn Principal>,
}

impl std::fmt::Debug for SignAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignAs")
            .field("account", &self.account)
            .field("delegates", &self.delegates)
            .field("allow_token_assertions", &self.allow_token_assertions)
            .finish_non_exhaustive()
    }
}

/// Why a `sign_as` request is not forwarded: the status and the message
/// (which names the route).
#[derive(Debug)]
pub struct Refusal {
    /// 400 (malformed, conflicting delegates), 403 (token assertion) or
    /// 413 (body too large).
    pub status: StatusCode,
    /// For the client.
    pub message: String,
}

impl SignAs {
    /// `account` and `delegates` are emails (checked by the compile pass).
    pub(crate) fn new(
        slot: Slot,
        account: &str,
        delegates: &[String],
        allow_token_assertions: bool,
    ) -> SignAs {
        SignAs {
            slot,
            account: account.into(),
            delegates: delegates.iter().map(|d| resource_name(d)).collect(),
            allow_token_assertions,
            signer: Arc::new(Signer {
                account: account.to_owned(),
                delegates: delegates.to_vec(),
            }),
        }
    }

    /// The account whose key signs.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// For the audit record: the account and the delegates.
    pub(crate) fn signer(&self) -> Arc<dyn Principal> {
        self.signer.clone()
    }

    /// The IAM method `path` calls for this route's account
    /// (`/v1/projects/{any}/serviceAccounts/{account}:signBlob|:signJwt`),
    /// or `None`: the route does not match.
    #[inline]
    pub fn method_of(&self, path: &str) -> Option<&'static str> {
        sign_method(path, &self.account)
    }

    /// The body to forward for a client's `signBlob` / `signJwt`
    /// request body: the route's delegates written in, token-endpoint
    /// assertions refused unless allowed.
    pub fn rewrite(&self, route: &str, method: &str, body: &[u8]) -> Result<Bytes, Refusal> {
        let bad = |message: String| Refusal {
            status: StatusCode::BAD_REQUEST,
            message: format!("route \"{route}\": {message}"),
        };
        let mut obj: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
            .map_err(|e| {
                bad(format!(
                    "the {method} request body is not a JSON object: {e}"
                ))
            })?;
        let theirs: Vec<String> = match obj.get("delegates") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|d| {
                    d.as_str()
                        .and_then(|s| principal_email(s).ok())
                        .ok_or_else(|| {
                            bad(format!("`delegates` entry {d} is not a service account"))
                        })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(bad(format!("`delegates` is {other}, not a list"))),
        };
        let ours: Vec<String> = self
            .delegates
            .iter()
            .map(|d| principal_email(d).unwrap_or_default())
            .collect();
        if !theirs.is_empty() && theirs != ours {
            return Err(bad(format!(
                "the request names delegates [{}] but the route signs through [{}]; remove `delegates` from the request (the route writes its own)",
                theirs.join(", "),
                ours.join(", ")
            )));
        }
        if self.delegates.is_empty() {
            obj.remove("delegates");
        } else {
            obj.insert("delegates".to_owned(), serde_json::json!(self.delegates));
        }
        if !self.allow_token_assertions {
            let payload = obj.get("payload").and_then(|p| p.as_str()).unwrap_or("");
            let claims = if method == "signJwt" {
                serde_json::from_str(payload).ok()
            } else {
                jwt_signing_input_claims(payload)
            };
            if let Some(aud) = claims.as_ref().and_then(token_endpoint_audience) {
                return Err(Refusal {
                    status: StatusCode::FORBIDDEN,
                    message: format!(
                        "route \"{route}\": refused to {method} a token-endpoint assertion as {} (aud {aud}): whoever holds it could mint access tokens for {} without the proxy; set allow_token_assertions = true on the route to allow it",
                        self.account, self.account
                    ),
                });
            }
        }
        Ok(Bytes::from(serde_json::Value::Object(obj).to_string()))
    }
}

/// `/v1/projects/{project}/serviceAccounts/{account}:{method}` for
/// `account` (its `@` may be written `%40`), method `signBlob` or
/// `signJwt`.
pub fn sign_method(path: &str, account: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/v1/projects/")?;
    let (project, rest) = rest.split_once('/')?;
    if project.is_empty() {
        return None;
    }
    let (name, op) = rest.strip_prefix("serviceAccounts/")?.rsplit_once(':')?;
    let same = match name.split_once('@') {
        Some(_) => name.eq_ignore_ascii_case(account),
        None => {
            let (user, domain) = account.split_once('@')?;
            let lower = name.to_ascii_lowercase();
            lower
                .strip_prefix(&user.to_ascii_lowercase())
                .and_then(|r| r.strip_prefix("%40"))
                .is_some_and(|d| d == domain.to_ascii_lowercase())
        }
    };
    if !same {
        return None;
    }
    match op {
        "signBlob" => Some("signBlob"),
        "signJwt" => Some("signJwt"),
        _ => None,
    }
}

/// A `signBlob` payload (base64) that is a JWT signing input
/// (`base64url(header).base64url(claims)`, both JSON objects): its claims.
fn jwt_signing_input_claims(payload: &str) -> Option<serde_json::Value> {
    let blob = STANDARD
        .decode(payload)
        .or_else(|_| URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')))
        .ok()?;
    let text = std::str::from_utf8(&blob).ok()?;
    let (header, claims) = text.trim().split_once('.')?;
    let segment = |s: &str| -> Option<serde_json::Value> {
        let bytes = URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        v.is_object().then_some(v)
    };
    segment(header)?;
    segment(claims)
}

/// The `aud` of `claims` that is a Google token endpoint, if any.
fn token_endpoint_audience(claims: &serde_json::Value) -> Option<String> {
    let is_endpoint = |aud: &str| {
        let a = aud.trim().to_ascii_lowercase();
        let a = a
            .strip_prefix("https://")
            .or_else(|| a.strip_prefix("http://"))
            .unwrap_or(&a);
        let a = a.trim_end_matches('/');
        TOKEN_ENDPOINTS.contains(&a)
    };
    match claims.get("aud")? {
        serde_json::Value::String(s) => is_endpoint(s).then(|| s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .filter_map(|v| v.as_str())
            .find(|s| is_endpoint(s))
            .map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::google::TokenRequest;

    const SA: &str = "reader@p.iam.gserviceaccount.com";

    fn route(delegates: &[&str], allow: bool) -> SignAs {
        let d: Vec<String> = delegates.iter().map(|s| (*s).to_owned()).collect();
        SignAs::new(Slot::new(TokenRequest::source_credential()), SA, &d, allow)
    }

    fn jwt_input(claims: &serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        STANDARD.encode(input)
    }

    #[test]
    fn only_this_accounts_sign_calls_match() {
        let p = |path: &str| sign_method(path, SA);
        assert_eq!(
            p(&format!("/v1/projects/-/serviceAccounts/{SA}:signBlob")),
            Some("signBlob")
        );
        assert_eq!(
            p(&format!("/v1/projects/p/serviceAccounts/{SA}:signJwt")),
            Some("signJwt")
        );
        assert_eq!(
            p("/v1/projects/-/serviceAccounts/reader%40p.iam.gserviceaccount.com:signBlob"),
            Some("signBlob")
        );
        assert_eq!(
            p(&format!(
                "/v1/projects/-/serviceAccounts/{SA}:generateAccessToken"
            )),
            None
        );
        assert_eq!(
            p("/v1/projects/-/serviceAccounts/other@p.iam.gserviceaccount.com:signBlob"),
            None
        );
        assert_eq!(
            p(&format!("/v1/projects//serviceAccounts/{SA}:signBlob")),
            None
        );
        assert_eq!(
            p(&format!("/v2/projects/-/serviceAccounts/{SA}:signBlob")),
            None
        );
    }

    #[test]
    fn delegates_are_written_and_conflicts_refused() {
        let mid = "mid@p.iam.gserviceaccount.com";
        let r = route(&[mid], false);
        let out = r
            .rewrite("s", "signBlob", br#"{"payload":"aGk="}"#)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["delegates"][0],
            format!("projects/-/serviceAccounts/{mid}")
        );
        // The same chain in either form passes; another one is a 400.
        r.rewrite(
            "s",
            "signBlob",
            format!(r#"{{"payload":"aGk=","delegates":["{mid}"]}}"#).as_bytes(),
        )
        .unwrap();
        let e = r
            .rewrite(
                "s",
                "signBlob",
                br#"{"payload":"aGk=","delegates":["x@p.iam.gserviceaccount.com"]}"#,
            )
            .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("route \"s\""), "{}", e.message);
        let e = route(&[], false)
            .rewrite(
                "s",
                "signBlob",
                br#"{"payload":"aGk=","delegates":["x@p.iam.gserviceaccount.com"]}"#,
            )
            .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(r.rewrite("s", "signBlob", b"nope").is_err());
    }

    #[test]
    fn token_endpoint_assertions_are_refused_unless_allowed() {
        let assertion = serde_json::json!({"iss": SA, "aud": "https://oauth2.googleapis.com/token", "scope": "x"});
        let jwt_body = serde_json::json!({"payload": assertion.to_string()}).to_string();
        let blob_body = serde_json::json!({"payload": jwt_input(&assertion)}).to_string();
        for (method, body) in [("signJwt", &jwt_body), ("signBlob", &blob_body)] {
            let e = route(&[], false)
                .rewrite("r", method, body.as_bytes())
                .unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{method}");
            assert!(
                e.message.contains("route \"r\"") && e.message.contains("allow_token_assertions")
            );
            route(&[], true)
                .rewrite("r", method, body.as_bytes())
                .unwrap();
        }
        for aud in [
            "https://accounts.google.com/o/oauth2/token",
            "https://www.googleapis.com/oauth2/v4/token",
        ] {
            let c = serde_json::json!({"aud": [aud]});
            let body = serde_json::json!({"payload": c.to_string()}).to_string();
            assert!(
                route(&[], false)
                    .rewrite("r", "signJwt", body.as_bytes())
                    .is_err(),
                "{aud}"
            );
        }
        // Other audiences and other blobs (a V4 string to sign) pass.
        let other = serde_json::json!({"aud": "https://storage.googleapis.com/"});
        let body = serde_json::json!({"payload": jwt_input(&other)}).to_string();
        route(&[], false)
            .rewrite("r", "signBlob", body.as_bytes())
            .unwrap();
        let v4 = STANDARD.encode("GOOG4-RSA-SHA256\n20260101T000000Z\nscope\nabc");
        let body = serde_json::json!({"payload": v4}).to_string();
        route(&[], false)
            .rewrite("r", "signBlob", body.as_bytes())
            .unwrap();
    }
}
