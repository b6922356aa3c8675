//! A small Cloud Storage JSON API on `storage.googleapis.com`: listing
//! objects and reading bucket metadata, answering with the principal whose
//! token it received so a caller can see who the proxy made it.

use http::{request::Parts, StatusCode};

use super::state::State;
use super::{google_error, json, Reply};

pub(crate) fn handle(
    state: &State,
    parts: &Parts,
    caller: Option<String>,
    had_bearer: bool,
) -> Reply {
    let path = parts.uri.path();
    let Some(rest) = path.strip_prefix("/storage/v1/b/") else {
        return super::not_found(path);
    };
    let (bucket, objects) = match rest.split_once('/') {
        Some((b, "o")) => (b, true),
        None => (rest, false),
        Some(_) => return super::not_found(path),
    };
    let Some(principal) = caller else {
        state.count("storage", "");
        return if had_bearer {
            google_error(401, "UNAUTHENTICATED", "Invalid Credentials")
        } else {
            google_error(401, "UNAUTHENTICATED", &format!("Anonymous caller does not have storage.objects.list access to the Google Cloud Storage bucket {bucket}."))
        };
    };
    state.count("storage", &principal);
    let seen = serde_json::json!({
        "principal": principal,
        "method": parts.method.as_str(),
        "path": path,
        "httpVersion": format!("{:?}", parts.version),
        "userProject": parts.headers.get("x-goog-user-project").and_then(|v| v.to_str().ok()),
        "proxyHeaders": parts.headers.keys().any(|k| k.as_str().starts_with("proxy-")),
    });
    let body = if objects {
        serde_json::json!({
            "kind": "storage#objects",
            "items": [{"kind": "storage#object", "bucket": bucket, "name": "hello.txt", "size": "6"}],
            "emulator": seen,
        })
    } else {
        serde_json::json!({"kind": "storage#bucket", "id": bucket, "name": bucket, "emulator": seen})
    };
    json(StatusCode::OK, &body)
}
