//! IAM `signBlob` and `signJwt` with each account's Google-managed key;
//! the public certificates Google publishes for those keys (`www.googleapis.com/service_accounts/v1/metadata/x509/{email}` and
//! `…/jwk/{email}`); and Cloud Storage's V4 signed URLs (`X-Goog-Signature`
//! checked against the signer's key), for GET and PUT. The keys are in
//! `keys.rs`.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{header, request::Parts, HeaderValue, Method, StatusCode};
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

use super::state::State;
use super::{google_error, json, DataCall, Reply};
use crate::google::jwt::unix;

/// The longest `exp` IAM accepts in a `signJwt` payload.
const MAX_JWT_LIFETIME: u64 = 12 * 3600;

/// The longest a V4 signed URL may be valid (7 days).
const MAX_URL_EXPIRES: u64 = 604_800;

/// `signBlob` / `signJwt` for `target`, once the caller's chain holds
/// Token Creator. `payload` is base64 (signBlob) or a JSON claims set
/// (signJwt).
pub(crate) fn sign(state: &State, op: &str, target: &str, payload: Option<&str>) -> Reply {
    let key = state.sign_keys.of(target);
    let Some(payload) = payload.filter(|p| !p.is_empty()) else {
        return google_error(400, "INVALID_ARGUMENT", "Payload must not be empty.");
    };
    if op == "signBlob" {
        let Ok(blob) = STANDARD.decode(payload) else {
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "Invalid value at 'payload' (TYPE_BYTES), Base64 decoding failed.",
            );
        };
        return match key.sign(&blob) {
            Ok(sig) => json(
                StatusCode::OK,
                &serde_json::json!({"keyId": key.kid, "signedBlob": STANDARD.encode(sig)}),
            ),
            Err(e) => google_error(500, "INTERNAL", &e),
        };
    }
    let mut claims: serde_json::Value = match serde_json::from_str(payload) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => {
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "Payload must be a valid JSON object.",
            )
        }
    };
    let now = unix(SystemTime::now());
    match claims.get("exp").map(|e| e.as_u64()) {
        None => claims["exp"] = serde_json::json!(now + 3600),
        Some(Some(exp)) if exp <= now + MAX_JWT_LIFETIME => {}
        _ => {
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "The exp claim must be a number no more than 12 hours in the future.",
            )
        }
    }
    let header = serde_json::json!({"alg": "RS256", "kid": key.kid, "typ": "JWT"});
    let mut jwt = URL_SAFE_NO_PAD.encode(header.to_string());
    jwt.push('.');
    jwt.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    match key.sign(jwt.as_bytes()) {
        Ok(sig) => {
            jwt.push('.');
            jwt.push_str(&URL_SAFE_NO_PAD.encode(sig));
            json(
                StatusCode::OK,
                &serde_json::json!({"keyId": key.kid, "signedJwt": jwt}),
            )
        }
        Err(e) => google_error(500, "INTERNAL", &e),
    }
}

/// `www.googleapis.com`: the public certificates (x509) and keys (jwk)
/// of an account's Google-managed key.
pub(crate) fn public_keys(state: &State, path: &str) -> Reply {
    if let Some(email) = path.strip_prefix("/service_accounts/v1/metadata/x509/") {
        let email = email.replace("%40", "@");
        let kid = state.sign_keys.of(&email).kid;
        return match state.sign_keys.cert(&email) {
            Ok(pem) => json(StatusCode::OK, &serde_json::json!({ kid: pem })),
            Err(e) => google_error(500, "INTERNAL", &e),
        };
    }
    if let Some(email) = path.strip_prefix("/service_accounts/v1/jwk/") {
        let email = email.replace("%40", "@");
        let key = state.sign_keys.of(&email);
        let (n, e) = key.public_components();
        let n = URL_SAFE_NO_PAD.encode(n);
        let e = URL_SAFE_NO_PAD.encode(e);
        return json(
            StatusCode::OK,
            &serde_json::json!({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": key.kid, "n": n, "e": e}]}),
        );
    }
    super::not_found(path)
}

/// Whether a Storage request is a V4 signed URL.
pub(crate) fn is_signed_url(parts: &Parts) -> bool {
    parts
        .uri
        .query()
        .is_some_and(|q| q.contains("X-Goog-Signature="))
}

fn xml_error(status: StatusCode, code: &str, message: &str, details: &str) -> Reply {
    let body = format!(
        "<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message>{details}</Error>"
    );
    let mut r = Reply::new(http_body_util::Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml; charset=UTF-8"),
    );
    r
}

/// RFC 3986 encoding of everything but the unreserved characters, as the
/// V4 canonical query string wants.
fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `20260101T120000Z` → the time it names.
fn parse_goog_date(s: &str) -> Option<SystemTime> {
    if s.len() != 16 || s.as_bytes()[8] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    humantime::parse_rfc3339(&rfc).ok()
}

/// What a V4 signed URL proves: the canonical request Storage rebuilds
/// (method, path, sorted query without the signature, the signed headers,
/// `UNSIGNED-PAYLOAD`), hashed into the string to sign, checked against
/// the signer's key.
fn verify_signed_url(state: &State, parts: &Parts, host: &str) -> Result<String, Box<Reply>> {
    let raw = parts.uri.query().unwrap_or_default();
    let mut query: Vec<(String, String)> = raw
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                super::storage::percent_decode(k),
                super::storage::percent_decode(v),
            )
        })
        .collect();
    let get = |k: &str| {
        query
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    let missing = |what: &str| {
        Box::new(xml_error(
            StatusCode::BAD_REQUEST,
            "AuthorizationQueryParametersError",
            &format!("Query-string authentication version 4 requires the X-Goog-Algorithm, X-Goog-Credential, X-Goog-Date, X-Goog-Expires and X-Goog-SignedHeaders parameters; {what} is missing or malformed."),
            "",
        ))
    };
    if get("X-Goog-Algorithm").as_deref() != Some("GOOG4-RSA-SHA256") {
        return Err(missing("X-Goog-Algorithm"));
    }
    let credential = get("X-Goog-Credential").ok_or_else(|| missing("X-Goog-Credential"))?;
    let date = get("X-Goog-Date").ok_or_else(|| missing("X-Goog-Date"))?;
    let expires: u64 = get("X-Goog-Expires")
        .and_then(|e| e.parse().ok())
        .filter(|e| *e >= 1 && *e <= MAX_URL_EXPIRES)
        .ok_or_else(|| missing("X-Goog-Expires"))?;
    let signed_headers =
        get("X-Goog-SignedHeaders").ok_or_else(|| missing("X-Goog-SignedHeaders"))?;
    let signature = get("X-Goog-Signature")
        .and_then(|s| hex_decode(&s))
        .ok_or_else(|| missing("X-Goog-Signature"))?;
    let (signer, scope) = credential
        .split_once('/')
        .ok_or_else(|| missing("X-Goog-Credential"))?;
    let issued = parse_goog_date(&date).ok_or_else(|| missing("X-Goog-Date"))?;
    if !scope.starts_with(&date[..8]) || !scope.ends_with("/storage/goog4_request") {
        return Err(missing("X-Goog-Credential"));
    }
    let now = SystemTime::now();
    if issued > now + Duration::from_secs(60) {
        return Err(Box::new(xml_error(
            StatusCode::BAD_REQUEST,
            "ExpiredToken",
            "Invalid argument.",
            "<Details>Request is not yet valid.</Details>",
        )));
    }
    if issued + Duration::from_secs(expires) < now {
        return Err(Box::new(xml_error(
            StatusCode::BAD_REQUEST,
            "ExpiredToken",
            "Invalid argument.",
            "<Details>Request has expired</Details>",
        )));
    }
    query.retain(|(k, _)| k != "X-Goog-Signature");
    // Sorted as the client libraries sort it: by the encoded `name=value`.
    let mut canonical_query: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{}={}", uri_encode(k), uri_encode(v)))
        .collect();
    canonical_query.sort();
    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        let value = if name == "host" {
            parts
                .headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(host)
                .to_owned()
        } else {
            let values: Vec<&str> = parts
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::trim)
                .collect();
            values.join(",")
        };
        canonical_headers.push_str(&format!("{name}:{}\n", value.trim()));
    }
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\nUNSIGNED-PAYLOAD",
        parts.method,
        parts.uri.path(),
        canonical_query.join("&"),
        canonical_headers,
        signed_headers
    );
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical_request.as_bytes());
    let string_to_sign = format!(
        "GOOG4-RSA-SHA256\n{date}\n{scope}\n{}",
        hex(digest.as_ref())
    );
    let key = state.sign_keys.of(signer);
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.public_der())
        .verify(string_to_sign.as_bytes(), &signature)
        .map_err(|_| {
            Box::new(xml_error(
                StatusCode::FORBIDDEN,
                "SignatureDoesNotMatch",
                "Access denied.",
                &format!(
                    "<Details>The request signature we calculated does not match the signature you provided. Check your Google secret key and signing method.</Details><StringToSign>{}</StringToSign><CanonicalRequest>{}</CanonicalRequest>",
                    xml_escape(&string_to_sign),
                    xml_escape(&canonical_request)
                ),
            ))
        })?;
    Ok(signer.to_owned())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A request on a V4 signed URL (`/BUCKET/OBJECT?X-Goog-…`): GET reads
/// the object, PUT stores it, as the signer.
pub(crate) fn signed_url(state: &State, host: &str, parts: &Parts, body: Bytes) -> Reply {
    let signer = match verify_signed_url(state, parts, host) {
        Ok(s) => s,
        Err(reply) => {
            state.count("storage.signed_url", "");
            return *reply;
        }
    };
    state.count("storage.signed_url", &signer);
    let path = parts.uri.path().trim_start_matches('/');
    let Some((bucket, name)) = path
        .split_once('/')
        .filter(|(b, n)| !b.is_empty() && !n.is_empty())
    else {
        return xml_error(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "A signed URL names /BUCKET/OBJECT.",
            "",
        );
    };
    let name = super::storage::percent_decode(name);
    let http_version = super::storage::http_version(parts.version);
    let record = |endpoint: &'static str, bytes: usize, upload_type: &'static str| {
        state.record(DataCall {
            endpoint,
            principal: signer.clone(),
            resource: format!("{bucket}/{name}"),
            bytes: bytes as u64,
            messages: 0,
            http_version,
            upload_type,
            boundary: None,
        });
    };
    match parts.method {
        Method::GET => {
            let Some(object) = super::storage::lookup(state, bucket, &name) else {
                return xml_error(
                    StatusCode::NOT_FOUND,
                    "NoSuchKey",
                    "The specified key does not exist.",
                    "",
                );
            };
            record("storage.download", object.data.len(), "");
            let mut r = Reply::new(http_body_util::Full::new(object.data.clone()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(&object.content_type)
                    .unwrap_or(HeaderValue::from_static("application/octet-stream")),
            );
            r.headers_mut()
                .insert("x-goog-generation", HeaderValue::from(object.generation));
            r
        }
        Method::PUT => {
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream");
            let len = body.len();
            let object = state.put_object(bucket, &name, content_type, body);
            record("storage.upload", len, "signed_url");
            let mut r = Reply::new(http_body_util::Full::new(Bytes::new()));
            r.headers_mut()
                .insert("x-goog-generation", HeaderValue::from(object.generation));
            r
        }
        _ => xml_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.",
            "",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goog_dates_parse() {
        let t = parse_goog_date("20260101T120000Z").unwrap();
        assert_eq!(unix(t), 1_767_268_800);
        assert!(parse_goog_date("2026-01-01").is_none());
    }
}
