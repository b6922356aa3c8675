//! A small Cloud Storage API on `storage.googleapis.com`: reading a bucket,
//! listing objects, object metadata and media download (`alt=media`, also
//! under `/download/`), and the three upload protocols (`upload.rs`). List
//! and bucket answers carry an `emulator` field naming the principal whose
//! token arrived, so a caller can see who the proxy made it. Objects carry a
//! `crc32c` and downloads an `x-goog-hash: crc32c=…`, which the client
//! libraries check, as against Google.
//!
//! Every bucket exists and holds a 6-byte `hello.txt` until an upload
//! replaces it.

mod upload;

use std::collections::BTreeSet;
use std::time::SystemTime;

use base64::Engine;
use bytes::Bytes;
use http::{header, request::Parts, HeaderValue, Method, StatusCode, Version};

pub(crate) use super::crc32c::crc32c;
use super::state::{Object, State};
use super::{google_error, json, sts, DataCall, Reply};
use crate::google::AccessBoundary;

/// The object every bucket holds until an upload replaces it.
const HELLO: (&str, &[u8]) = ("hello.txt", b"hello\n");

/// One authenticated Storage call: who made it, to which host, over what.
struct Call<'a> {
    state: &'a State,
    host: &'a str,
    principal: String,
    http_version: &'static str,
    /// The resources of a downscoped token's boundary.
    boundary: Option<String>,
}

impl Call<'_> {
    fn record(
        &self,
        endpoint: &'static str,
        resource: String,
        bytes: usize,
        upload_type: &'static str,
    ) {
        self.state.record(DataCall {
            endpoint,
            principal: self.principal.clone(),
            resource,
            bytes: bytes as u64,
            messages: 0,
            http_version: self.http_version,
            upload_type,
            boundary: self.boundary.clone(),
        });
    }
}

/// What a path names, below `…/b/`.
enum Target<'a> {
    Bucket(&'a str),
    Objects(&'a str),
    Object(&'a str, String),
}

fn target(rest: &str) -> Option<Target<'_>> {
    match rest.split_once('/') {
        None if !rest.is_empty() => Some(Target::Bucket(rest)),
        Some((b, "o")) => Some(Target::Objects(b)),
        Some((b, o)) => {
            let name = o.strip_prefix("o/").filter(|n| !n.is_empty())?;
            Some(Target::Object(b, percent_decode(name)))
        }
        None => None,
    }
}

pub(crate) fn http_version(v: Version) -> &'static str {
    if v == Version::HTTP_2 {
        "HTTP/2"
    } else {
        "HTTP/1.1"
    }
}

pub(crate) fn handle(
    state: &State,
    host: &str,
    parts: &Parts,
    body: Bytes,
    caller: Option<String>,
    had_bearer: bool,
    boundary: Option<AccessBoundary>,
) -> Reply {
    let path = parts.uri.path();
    let (kind, rest) = if let Some(r) = path.strip_prefix("/upload/storage/v1/b/") {
        ("upload", r)
    } else if let Some(r) = path.strip_prefix("/download/storage/v1/b/") {
        ("download", r)
    } else if let Some(r) = path.strip_prefix("/storage/v1/b/") {
        ("json", r)
    } else {
        return super::not_found(path);
    };
    let Some(target) = target(rest) else {
        return super::not_found(path);
    };
    let Some(principal) = caller else {
        state.count("storage", "");
        return if had_bearer {
            google_error(401, "UNAUTHENTICATED", "Invalid Credentials")
        } else {
            let (permission, what) = match (&target, &parts.method) {
                (Target::Bucket(b), _) => ("storage.buckets.get", format!("bucket {b}")),
                (Target::Objects(b), &Method::GET) => {
                    ("storage.objects.list", format!("bucket {b}"))
                }
                (Target::Objects(b), _) => ("storage.objects.create", format!("bucket {b}")),
                (Target::Object(b, o), _) => ("storage.objects.get", format!("object {b}/{o}")),
            };
            google_error(401, "UNAUTHENTICATED", &format!("Anonymous caller does not have {permission} access to the Google Cloud Storage {what}."))
        };
    };
    state.count("storage", &principal);
    let query = super::form_decode(parts.uri.query().unwrap_or_default().as_bytes());
    let param = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if let Some(b) = &boundary {
        if let Some(denied) =
            outside_boundary(state, &principal, b, &parts.method, kind, &target, param)
        {
            return denied;
        }
    }
    let call = Call {
        state,
        host,
        principal,
        http_version: http_version(parts.version),
        boundary: boundary.as_ref().map(AccessBoundary::resources),
    };
    match (&parts.method, kind, target) {
        (&Method::GET, "json", Target::Bucket(bucket)) => {
            let seen = seen(&call, parts);
            json(
                StatusCode::OK,
                &serde_json::json!({"kind": "storage#bucket", "id": bucket, "name": bucket, "emulator": seen}),
            )
        }
        (&Method::GET, "json", Target::Objects(bucket)) => list(&call, parts, bucket, param),
        (&Method::GET, "json" | "download", Target::Object(bucket, name)) => {
            let Some(object) = lookup(state, bucket, &name) else {
                return google_error(
                    404,
                    "NOT_FOUND",
                    &format!("No such object: {bucket}/{name}"),
                );
            };
            if kind == "download" || param("alt") == Some("media") {
                download(&call, parts, bucket, &name, &object)
            } else {
                json(StatusCode::OK, &object_json(host, bucket, &name, &object))
            }
        }
        (&Method::POST | &Method::PUT, "upload", Target::Objects(bucket)) => {
            upload::handle(&call, parts, bucket, param, body)
        }
        _ => google_error(
            405,
            "METHOD_NOT_ALLOWED",
            &format!("The emulator does not serve {} {path}.", parts.method),
        ),
    }
}

/// Google's 403 for a call a downscoped token's boundary does not allow,
/// or `None` when it allows it (or the call is not one Storage serves).
fn outside_boundary<'q>(
    state: &State,
    principal: &str,
    boundary: &AccessBoundary,
    method: &Method,
    kind: &str,
    target: &Target<'_>,
    param: impl Fn(&str) -> Option<&'q str>,
) -> Option<Reply> {
    let (permission, bucket, object, what) = match (method, kind, target) {
        (&Method::GET, "json", Target::Bucket(b)) => ("storage.buckets.get", *b, None, "bucket"),
        (&Method::GET, "json", Target::Objects(b)) => ("storage.objects.list", *b, None, "bucket"),
        (&Method::GET, "json" | "download", Target::Object(b, o)) => {
            ("storage.objects.get", *b, Some(o.clone()), "object")
        }
        (&Method::POST | &Method::PUT, "upload", Target::Objects(b)) => {
            let name = match param("upload_id") {
                Some(id) => state.lock().uploads.get(id).map(|u| u.name.clone()),
                None => param("name").map(str::to_owned),
            };
            (
                "storage.objects.create",
                *b,
                Some(name.unwrap_or_default()),
                "object",
            )
        }
        _ => return None,
    };
    if sts::allows(boundary, permission, bucket, object.as_deref()) {
        return None;
    }
    Some(google_error(
        403,
        "PERMISSION_DENIED",
        &format!("{principal} does not have {permission} access to the Google Cloud Storage {what}. Permission '{permission}' denied on resource (or it may not exist)."),
    ))
}

/// The `emulator` echo: who called, and how.
fn seen(call: &Call<'_>, parts: &Parts) -> serde_json::Value {
    serde_json::json!({
        "principal": call.principal,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "httpVersion": format!("{:?}", parts.version),
        "userProject": parts.headers.get("x-goog-user-project").and_then(|v| v.to_str().ok()),
        "accessBoundary": call.boundary,
        "proxyHeaders": parts.headers.keys().any(|k| k.as_str().starts_with("proxy-")),
    })
}

fn list<'q>(
    call: &Call<'_>,
    parts: &Parts,
    bucket: &str,
    param: impl Fn(&str) -> Option<&'q str>,
) -> Reply {
    let prefix = param("prefix").unwrap_or_default();
    let delimiter = param("delimiter").filter(|d| !d.is_empty());
    let mut items = Vec::new();
    let mut prefixes = BTreeSet::new();
    for (name, object) in objects_in(call.state, bucket) {
        let Some(after) = name.strip_prefix(prefix) else {
            continue;
        };
        if let Some(cut) = delimiter.and_then(|d| after.find(d).map(|i| i + d.len())) {
            prefixes.insert(format!("{prefix}{}", &after[..cut]));
            continue;
        }
        items.push(object_json(call.host, bucket, &name, &object));
    }
    let mut body = serde_json::json!({
        "kind": "storage#objects",
        "items": items,
        "emulator": seen(call, parts),
    });
    if !prefixes.is_empty() {
        body["prefixes"] = serde_json::json!(prefixes);
    }
    json(StatusCode::OK, &body)
}

fn download(call: &Call<'_>, parts: &Parts, bucket: &str, name: &str, object: &Object) -> Reply {
    let len = object.data.len();
    let range = parts
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| byte_range(v, len));
    let (status, data) = match range {
        Some((first, last)) => (StatusCode::PARTIAL_CONTENT, object.data.slice(first..=last)),
        None => (StatusCode::OK, object.data.clone()),
    };
    call.record(
        "storage.download",
        format!("{bucket}/{name}"),
        data.len(),
        "",
    );
    let mut r = Reply::new(http_body_util::Full::new(data));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&object.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert("x-goog-generation", HeaderValue::from(object.generation));
    h.insert("x-goog-stored-content-length", HeaderValue::from(len));
    if let Some((first, last)) = range {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")) {
            h.insert(header::CONTENT_RANGE, v);
        }
    } else if let Ok(v) = HeaderValue::from_str(&format!("crc32c={}", crc32c_b64(object.crc32c))) {
        // Only a whole object's hash: a client checks what it received
        // against it.
        h.insert("x-goog-hash", v);
    }
    r
}

/// `bytes=FIRST-LAST` or `bytes=FIRST-` within `len` bytes (one range only).
fn byte_range(v: &str, len: usize) -> Option<(usize, usize)> {
    let (first, last) = v.strip_prefix("bytes=")?.split_once('-')?;
    let first: usize = first.trim().parse().ok()?;
    let last = match last.trim() {
        "" => len.checked_sub(1)?,
        l => l.parse::<usize>().ok()?.min(len.checked_sub(1)?),
    };
    (first <= last).then_some((first, last))
}

/// The object `bucket/name`: uploaded, put, or the built-in `hello.txt`.
pub(crate) fn lookup(state: &State, bucket: &str, name: &str) -> Option<Object> {
    let stored = state
        .lock()
        .objects
        .get(&(bucket.to_owned(), name.to_owned()))
        .cloned();
    stored.or_else(|| (name == HELLO.0).then(hello))
}

fn hello() -> Object {
    let data = Bytes::from_static(HELLO.1);
    Object {
        crc32c: crc32c(&data),
        data,
        content_type: "text/plain".to_owned(),
        generation: 1,
        created: SystemTime::UNIX_EPOCH,
    }
}

/// Every object in `bucket`, by name.
fn objects_in(state: &State, bucket: &str) -> Vec<(String, Object)> {
    let mut out: Vec<(String, Object)> = state
        .lock()
        .objects
        .iter()
        .filter(|((b, _), _)| b == bucket)
        .map(|((_, n), o)| (n.clone(), o.clone()))
        .collect();
    if !out.iter().any(|(n, _)| n == HELLO.0) {
        out.push((HELLO.0.to_owned(), hello()));
        out.sort_by(|a, b| a.0.cmp(&b.0));
    }
    out
}

/// The object resource, as the JSON API describes an object.
fn object_json(host: &str, bucket: &str, name: &str, o: &Object) -> serde_json::Value {
    let enc = percent_encode(name);
    let time = humantime::format_rfc3339_millis(o.created).to_string();
    serde_json::json!({
        "kind": "storage#object",
        "id": format!("{bucket}/{name}/{}", o.generation),
        "selfLink": format!("https://{host}/storage/v1/b/{bucket}/o/{enc}"),
        "mediaLink": format!("https://{host}/download/storage/v1/b/{bucket}/o/{enc}?generation={}&alt=media", o.generation),
        "name": name,
        "bucket": bucket,
        "generation": o.generation.to_string(),
        "metageneration": "1",
        "contentType": o.content_type,
        "storageClass": "STANDARD",
        "size": o.data.len().to_string(),
        "crc32c": crc32c_b64(o.crc32c),
        "etag": format!("CI{}", o.generation),
        "timeCreated": time,
        "updated": time,
    })
}

/// As Storage writes it: base64 of the big-endian bytes.
fn crc32c_b64(c: u32) -> String {
    base64::engine::general_purpose::STANDARD.encode(c.to_be_bytes())
}

/// `%XX` escapes decoded (a bad escape stays as it is), as Storage reads
/// object names and query values.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
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

#[cfg(test)]
mod tests;
