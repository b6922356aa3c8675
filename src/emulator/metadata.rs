//! The GCE metadata server (plain HTTP, `GCE_METADATA_HOST`): the default
//! service account's token (`?scopes=`), email, and identity token. Like
//! the real one it requires `Metadata-Flavor: Google` and keeps handing out
//! the same token until the token's last minutes.

use std::time::{Duration, SystemTime};

use http::{header, request::Parts, HeaderValue, StatusCode};

use super::state::{State, MAX_LIFETIME};
use super::{text, Reply};

const SA_PREFIX: &str = "/computeMetadata/v1/instance/service-accounts/";

pub(crate) fn handle(state: &State, parts: &Parts) -> Reply {
    let mut reply = route(state, parts);
    reply
        .headers_mut()
        .insert("metadata-flavor", HeaderValue::from_static("Google"));
    reply
}

fn route(state: &State, parts: &Parts) -> Reply {
    let flavor = parts
        .headers
        .get("metadata-flavor")
        .map(HeaderValue::as_bytes);
    if flavor != Some(b"Google") {
        return text(
            StatusCode::FORBIDDEN,
            "Missing Metadata-Flavor:Google header.",
        );
    }
    let path = parts.uri.path();
    let Some(rest) = path.strip_prefix(SA_PREFIX) else {
        return text(StatusCode::NOT_FOUND, "Not Found");
    };
    let Some((account, item)) = rest.split_once('/') else {
        return text(StatusCode::NOT_FOUND, "Not Found");
    };
    if account != "default" && account != state.metadata_account {
        return text(StatusCode::NOT_FOUND, "Not Found");
    }
    let query = super::form_decode(parts.uri.query().unwrap_or_default().as_bytes());
    let param = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match item {
        "email" => text(StatusCode::OK, &state.metadata_account),
        "token" => {
            let scopes =
                param("scopes").unwrap_or_else(|| crate::google::CLOUD_PLATFORM.to_owned());
            state.count("metadata.token", &state.metadata_account);
            let (token, expires) = cached_token(state, &scopes);
            let expires_in = expires
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .as_secs();
            let mut r = super::json(
                StatusCode::OK,
                &serde_json::json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        "identity" => {
            let Some(audience) = param("audience").filter(|a| !a.is_empty()) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "non-empty audience parameter required",
                );
            };
            state.count("metadata.identity", &state.metadata_account);
            match state.issue_id_token(&state.metadata_account, &audience) {
                Ok(t) => text(StatusCode::OK, &t),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// The cached token for `scopes`, reissued only when less than a
/// fifteenth of its lifetime (4 minutes of an hour) is left.
fn cached_token(state: &State, scopes: &str) -> (String, SystemTime) {
    let now = SystemTime::now();
    if let Some((token, expires, lifetime)) = state.lock().metadata_tokens.get(scopes).cloned() {
        let left = expires.duration_since(now).unwrap_or(Duration::ZERO);
        if left > lifetime / 15 {
            return (token, expires);
        }
    }
    let (token, expires) = state.issue_access_token(&state.metadata_account, MAX_LIFETIME);
    let lifetime = expires.duration_since(now).unwrap_or_default();
    state
        .lock()
        .metadata_tokens
        .insert(scopes.to_owned(), (token.clone(), expires, lifetime));
    (token, expires)
}
