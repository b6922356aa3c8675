//! `oauth2.googleapis.com/token`: the JWT-bearer grant (signature and
//! claims checked as Google does; signed with a key file's key or with
//! the account's Google-managed key through `signJwt`; `sub` honoured:
//! the token's principal reads `USER via ACCOUNT`) and the
//! `refresh_token` grant.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, StatusCode};

use super::state::{key_id, State, MAX_LIFETIME};
use super::{form_decode, json, Reply};
use crate::google::jwt::{decode_unverified, unix, verify_rs256};

/// The audience a JWT-bearer assertion must name.
pub(crate) const TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

fn oauth_error(code: &str, description: &str) -> Reply {
    json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({"error": code, "error_description": description}),
    )
}

pub(crate) fn token(state: &State, method: &Method, path: &str, body: &Bytes) -> Reply {
    if path != "/token" {
        return super::not_found(path);
    }
    if method != Method::POST {
        return oauth_error("invalid_request", "POST the token request");
    }
    let form = form_decode(body);
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match get("grant_type") {
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
            let Some(assertion) = get("assertion") else {
                return oauth_error("invalid_request", "Missing required parameter: assertion");
            };
            jwt_bearer(state, assertion)
        }
        Some("refresh_token") => {
            let (Some(rt), Some(id), Some(secret)) =
                (get("refresh_token"), get("client_id"), get("client_secret"))
            else {
                return oauth_error(
                    "invalid_request",
                    "Missing required parameter: refresh_token",
                );
            };
            let known = state.lock().refresh_tokens.get(rt).cloned();
            match known {
                Some((cid, csec, user)) if cid == id && csec == secret => {
                    state.count("token", &user);
                    grant(state, &user, MAX_LIFETIME)
                }
                Some(_) => oauth_error("invalid_client", "The OAuth client was not found."),
                None => {
                    state.count("token", "");
                    oauth_error("invalid_grant", "Token has been expired or revoked.")
                }
            }
        }
        _ => oauth_error("unsupported_grant_type", "Invalid grant_type"),
    }
}

/// The account that owns key `kid` and its public key: a key file the
/// emulator wrote, or an account's Google-managed key.
fn assertion_key(state: &State, kid: &str) -> Option<(String, Vec<u8>)> {
    let file_owner = state.lock().keys.get(kid).cloned();
    if let Some(owner) = file_owner.filter(|o| kid == key_id(o)) {
        return Some((owner, state.public_key.clone()));
    }
    let owner = state.sign_keys.owner_of(kid)?;
    let public = state.sign_keys.of(&owner).public_der().to_vec();
    Some((owner, public))
}

fn jwt_bearer(state: &State, assertion: &str) -> Reply {
    let kid = decode_unverified(assertion)
        .ok()
        .and_then(|d| d.header.get("kid")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    let Some((key_owner, public_key)) = assertion_key(state, &kid) else {
        state.count("token", "");
        return oauth_error("invalid_grant", "Invalid JWT Signature.");
    };
    let decoded = match verify_rs256(assertion, &public_key) {
        Ok(d) => d,
        Err(e) => {
            state.count("token", "");
            return oauth_error("invalid_grant", &e);
        }
    };
    let iss = decoded.claim_str("iss").unwrap_or_default().to_owned();
    state.count("token", &iss);
    if key_owner != iss {
        return oauth_error("invalid_grant", "Invalid JWT Signature.");
    }
    if decoded.claim_str("aud") != Some(TOKEN_URI) {
        return oauth_error("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.");
    }
    let now = unix(SystemTime::now());
    let (Some(iat), Some(exp)) = (
        decoded.claims.get("iat").and_then(|v| v.as_u64()),
        decoded.claims.get("exp").and_then(|v| v.as_u64()),
    ) else {
        return oauth_error("invalid_grant", "Invalid JWT: iat and exp are required.");
    };
    if iat > now + 60 || exp <= now || exp < iat || exp - iat > 3600 {
        return oauth_error("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.");
    }
    if decoded.claim_str("scope").is_none_or(str::is_empty) {
        return oauth_error(
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        );
    }
    // Domain-wide delegation: the token acts for the user in `sub`, if a
    // Workspace admin allowed the account.
    let principal = match decoded.claim_str("sub") {
        Some(user) if !user.is_empty() && user != iss => {
            if !state.lock().domain_wide_delegation.contains(&iss) {
                return oauth_error("unauthorized_client", "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.");
            }
            format!("{user} via {iss}")
        }
        _ => iss,
    };
    grant(state, &principal, MAX_LIFETIME)
}

fn grant(state: &State, principal: &str, lifetime: Duration) -> Reply {
    let (token, expires) = state.issue_access_token(principal, lifetime);
    let expires_in = expires
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .as_secs();
    json(
        StatusCode::OK,
        &serde_json::json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}),
    )
}
