//! Responses the proxy writes itself, in Google's JSON error shape
//! (`{"error":{"code":…,"message":…,"status":…}}`), so a client library
//! surfaces our message the way it surfaces Google's.

use http::header::{self, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::net::{full_body, ProxyBody};
use crate::policy::clients::Refusal;

/// The canonical gRPC/Google status name for an HTTP status we emit.
fn status_name(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 | 431 => "INVALID_ARGUMENT",
        401 | 407 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        405 | 421 => "FAILED_PRECONDITION",
        429 => "RESOURCE_EXHAUSTED",
        501 => "UNIMPLEMENTED",
        504 => "DEADLINE_EXCEEDED",
        502 | 503 => "UNAVAILABLE",
        _ => "UNKNOWN",
    }
}

/// The gRPC status code that matches an HTTP status, for gRPC clients that
/// read `grpc-status` from a trailers-only response.
fn grpc_code(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 | 431 => "3",
        401 | 407 => "16",
        403 => "7",
        404 => "5",
        405 | 421 => "9",
        429 => "8",
        501 => "12",
        504 => "4",
        502 | 503 => "14",
        _ => "2",
    }
}

/// 407 with the challenge that makes curl, gcloud, gRPC and Java clients
/// send their `Proxy-Authorization: Basic` credentials.
pub(crate) fn proxy_auth_required(refusal: Refusal) -> Response<ProxyBody> {
    let message = match refusal {
        Refusal::NoCredentials => "this proxy serves only configured [[client]] identities: send Proxy-Authorization: Basic (e.g. HTTPS_PROXY=http://USER:PASSWORD@HOST:PORT) from an allowed address",
        Refusal::BadCredentials => "Proxy-Authorization does not match any [[client]] allowed from this address",
        Refusal::Revoked => "the [[client]] this connection was opened as is no longer in the proxy's config, or no longer matches it (the config was reloaded); open a new connection",
    };
    let mut resp = error(StatusCode::PROXY_AUTHENTICATION_REQUIRED, message);
    resp.headers_mut().insert(
        header::PROXY_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"impersonate-proxy\""),
    );
    resp
}

/// A JSON error body for `code` carrying `message` (which must never hold
/// a secret: it is shown to the client).
pub fn error(code: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "error": {
            "code": code.as_u16(),
            "message": message,
            "status": status_name(code),
        }
    });
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = Response::new(full_body(bytes));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    resp.headers_mut()
        .insert("x-impersonate-proxy", HeaderValue::from_static("error"));
    resp
}

/// Like [`error`], and for a gRPC request also sets `grpc-status` and
/// `grpc-message` so gRPC clients show the cause instead of a bare
/// HTTP status.
pub fn error_for(is_grpc: bool, code: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut resp = error(code, message);
    if is_grpc {
        let h = resp.headers_mut();
        h.insert("grpc-status", HeaderValue::from_static(grpc_code(code)));
        if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
            h.insert("grpc-message", v);
        }
    }
    resp
}

/// gRPC's percent-encoding of `grpc-message`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_has_googles_shape() {
        let resp = error(StatusCode::FORBIDDEN, "no route for host x");
        assert_eq!(resp.status(), 403);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], 403);
        assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
        assert_eq!(v["error"]["message"], "no route for host x");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        let resp = error_for(true, StatusCode::SERVICE_UNAVAILABLE, "é 100%");
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-message"], "%C3%A9 100%25");
    }
}
