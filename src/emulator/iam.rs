//! `iamcredentials.googleapis.com`: `generateAccessToken`,
//! `generateIdToken`, `signBlob` and `signJwt` (in `sign.rs`), with the Token Creator graph enforced along the
//! delegate chain, IAM's lifetime rule, and IAM's error texts.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Deserialize;

use super::state::{State, MAX_LIFETIME};
use super::{google_error, json, Reply};

const PREFIX: &str = "/v1/projects/";
const RESOURCE_PREFIX: &str = "projects/-/serviceAccounts/";

/// IAM's text when the caller lacks the permission on the target or a
/// delegate (it does not say which, nor whether the account exists).
pub(crate) fn denied(permission: &str) -> String {
    format!("Permission '{permission}' denied on resource (or it may not exist).")
}

/// IAM's text for a lifetime above one hour.
pub(crate) fn lifetime_refused(target: &str) -> String {
    format!(
        "Access tokens for service account {target} can not have lifetimes of more than 1 hour. Use the Org Policy Constraint constraints/iam.allowServiceAccountCredentialLifetimeExtension to allow up to 12 hours."
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    #[serde(default)]
    delegates: Vec<String>,
    #[serde(default)]
    scope: Vec<String>,
    lifetime: Option<String>,
    audience: Option<String>,
    payload: Option<String>,
}

pub(crate) fn handle(
    state: &State,
    method: &Method,
    path: &str,
    caller: Option<String>,
    body: &Bytes,
) -> Reply {
    // Any project segment: IAM reads the project from the account.
    let Some((name, op)) = path
        .strip_prefix(PREFIX)
        .and_then(|r| r.split_once("/serviceAccounts/"))
        .and_then(|(_, r)| r.rsplit_once(':'))
    else {
        return super::not_found(path);
    };
    let target = name.replace("%40", "@");
    let permission = match op {
        "generateAccessToken" => "iam.serviceAccounts.getAccessToken",
        "generateIdToken" => "iam.serviceAccounts.getOpenIdToken",
        "signBlob" => "iam.serviceAccounts.signBlob",
        "signJwt" => "iam.serviceAccounts.signJwt",
        _ => return super::not_found(path),
    };
    state.count(op, &target);
    if state.lock().outage {
        return google_error(503, "UNAVAILABLE", "The service is currently unavailable.");
    }
    if method != Method::POST {
        return google_error(405, "METHOD_NOT_ALLOWED", "POST only");
    }
    let Some(caller) = caller else {
        return google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.");
    };
    let body: Body = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            return google_error(
                400,
                "INVALID_ARGUMENT",
                &format!("Invalid JSON payload received. {e}"),
            )
        }
    };
    let mut chain = vec![caller.as_str()];
    for d in &body.delegates {
        // IAM wants the full resource name on the wire.
        let Some(email) = d.strip_prefix(RESOURCE_PREFIX) else {
            return google_error(
                400,
                "INVALID_ARGUMENT",
                &format!(
                    "Invalid form of delegates: {d}. Expected projects/-/serviceAccounts/EMAIL."
                ),
            );
        };
        chain.push(email);
    }
    chain.push(&target);
    if !state.chain_allowed(&chain) {
        return google_error(403, "PERMISSION_DENIED", &denied(permission));
    }
    if op == "signBlob" || op == "signJwt" {
        return super::sign::sign(state, op, &target, body.payload.as_deref());
    }
    if op == "generateAccessToken" {
        let lifetime = match body.lifetime.as_deref().map(parse_seconds) {
            None => MAX_LIFETIME,
            Some(Some(l)) => l,
            Some(None) => {
                return google_error(400, "INVALID_ARGUMENT", "Invalid value at 'lifetime' (type.googleapis.com/google.protobuf.Duration): Field 'lifetime', Illegal duration format; duration must end with 's'")
            }
        };
        if lifetime > MAX_LIFETIME {
            return google_error(400, "INVALID_ARGUMENT", &lifetime_refused(&target));
        }
        if body.scope.is_empty() {
            return google_error(400, "INVALID_ARGUMENT", "Scope required.");
        }
        let (token, expires) = state.issue_access_token(&target, lifetime);
        json(
            StatusCode::OK,
            &serde_json::json!({
                "accessToken": token,
                "expireTime": humantime::format_rfc3339_millis(expires).to_string(),
            }),
        )
    } else {
        let Some(audience) = body.audience.filter(|a| !a.is_empty()) else {
            return google_error(400, "INVALID_ARGUMENT", "Audience required.");
        };
        match state.issue_id_token(&target, &audience) {
            Ok(token) => json(StatusCode::OK, &serde_json::json!({ "token": token })),
            Err(e) => google_error(500, "INTERNAL", &e),
        }
    }
}

fn parse_seconds(s: &str) -> Option<Duration> {
    let n = s.strip_suffix('s')?;
    let secs: f64 = n.parse().ok()?;
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs))
}
