//! Uploads, as `POST /upload/storage/v1/b/BUCKET/o?uploadType=…`:
//! `media` (the body is the object, `name=` in the query), `multipart`
//! (`multipart/related`: JSON metadata, then the data) and `resumable` (a
//! session URL in `Location`, then `PUT`s with `Content-Range`, each
//! answered 308 with the `Range` received, until the last completes the
//! object). A `crc32c` the client sends (in the metadata, or
//! `x-goog-hash` on the last `PUT`) is checked against the bytes received,
//! as Storage does; a mismatch is a 400.

use bytes::Bytes;
use http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use http_body_util::Full;

use super::super::state::Resumable;
use super::super::{google_error, json, Reply};
use super::{crc32c, crc32c_b64, object_json, Call};

const DEFAULT_TYPE: &str = "application/octet-stream";

pub(super) fn handle<'q>(
    call: &Call<'_>,
    parts: &Parts,
    bucket: &str,
    param: impl Fn(&str) -> Option<&'q str>,
    body: Bytes,
) -> Reply {
    if let Some(id) = param("upload_id") {
        return resumable_put(call, &parts.headers, id, body);
    }
    let content_type = header_str(&parts.headers, header::CONTENT_TYPE.as_str());
    match param("uploadType") {
        Some("media") => {
            let Some(name) = param("name").filter(|n| !n.is_empty()) else {
                return google_error(400, "INVALID_ARGUMENT", "Required parameter: name");
            };
            let ct = content_type.unwrap_or(DEFAULT_TYPE);
            finish(call, bucket, name, ct, body, None, "media")
        }
        Some("multipart") => {
            let Some(boundary) = content_type.and_then(boundary) else {
                return google_error(
                    400,
                    "INVALID_ARGUMENT",
                    "Content-Type must be multipart/related with a boundary.",
                );
            };
            let parts = multipart(&body, boundary);
            let Some(&[(_, meta), (data_headers, data)]) = parts.as_deref() else {
                return google_error(
                    400,
                    "INVALID_ARGUMENT",
                    "Multipart body must hold two parts: JSON metadata, then the data.",
                );
            };
            let meta: serde_json::Value = serde_json::from_slice(meta).unwrap_or_default();
            let name = meta["name"].as_str().or(param("name")).unwrap_or_default();
            if name.is_empty() {
                return google_error(400, "INVALID_ARGUMENT", "Required parameter: name");
            }
            let ct = meta["contentType"]
                .as_str()
                .or_else(|| part_content_type(data_headers))
                .unwrap_or(DEFAULT_TYPE);
            let data = body.slice_ref(data);
            finish(
                call,
                bucket,
                name,
                ct,
                data,
                meta["crc32c"].as_str(),
                "multipart",
            )
        }
        Some("resumable") => {
            let meta: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let name = meta["name"].as_str().or(param("name")).unwrap_or_default();
            if name.is_empty() {
                return google_error(400, "INVALID_ARGUMENT", "Required parameter: name");
            }
            let ct = meta["contentType"]
                .as_str()
                .or(header_str(&parts.headers, "x-upload-content-type"))
                .unwrap_or(DEFAULT_TYPE);
            let id = format!("emu-upload-{:016x}", fastrand::u64(..));
            call.state.lock().uploads.insert(
                id.clone(),
                Resumable {
                    bucket: bucket.to_owned(),
                    name: name.to_owned(),
                    content_type: ct.to_owned(),
                    received: Vec::new(),
                },
            );
            let location = format!(
                "https://{}/upload/storage/v1/b/{bucket}/o?uploadType=resumable&upload_id={id}",
                call.host
            );
            let mut r = Reply::new(Full::new(Bytes::new()));
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        other => google_error(
            400,
            "INVALID_ARGUMENT",
            &format!(
                "Invalid upload type {:?}: media, multipart or resumable.",
                other.unwrap_or_default()
            ),
        ),
    }
}

/// One `PUT` of a resumable upload: `Content-Range: bytes A-B/TOTAL` (or
/// `/*` while the size is unknown), or `bytes */TOTAL` to ask how far it got.
fn resumable_put(call: &Call<'_>, headers: &HeaderMap, id: &str, body: Bytes) -> Reply {
    let range = header_str(headers, header::CONTENT_RANGE.as_str())
        .and_then(content_range)
        .unwrap_or((None, None));
    let done = {
        let mut inner = call.state.lock();
        let Some(session) = inner.uploads.get_mut(id) else {
            return google_error(404, "NOT_FOUND", "No such upload session.");
        };
        match range {
            (Some((first, last)), _) => {
                // A chunk that does not continue the bytes received is
                // answered with where the upload stands, to be resent.
                if first == session.received.len() && last + 1 - first == body.len() {
                    session.received.extend_from_slice(&body);
                }
            }
            (None, _) if !body.is_empty() => {
                return google_error(400, "INVALID_ARGUMENT", "Content-Range required.");
            }
            (None, _) => {}
        }
        let complete = range.1.is_some_and(|total| session.received.len() == total);
        if complete {
            inner.uploads.remove(id)
        } else {
            let mut r = Reply::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
            if let Some(last) = session.received.len().checked_sub(1) {
                r.headers_mut().insert(
                    header::RANGE,
                    HeaderValue::from_str(&format!("bytes=0-{last}"))
                        .unwrap_or(HeaderValue::from_static("bytes=0-0")),
                );
            }
            return r;
        }
    };
    let Some(s) = done else {
        return google_error(404, "NOT_FOUND", "No such upload session.");
    };
    let claimed = header_str(headers, "x-goog-hash")
        .and_then(|h| h.split(',').find_map(|p| p.trim().strip_prefix("crc32c=")));
    finish(
        call,
        &s.bucket,
        &s.name,
        &s.content_type,
        Bytes::from(s.received),
        claimed,
        "resumable",
    )
}

/// Stores the object, checking a claimed CRC32C first, and answers with
/// its resource.
fn finish(
    call: &Call<'_>,
    bucket: &str,
    name: &str,
    content_type: &str,
    data: Bytes,
    claimed_crc32c: Option<&str>,
    upload_type: &'static str,
) -> Reply {
    let actual = crc32c_b64(crc32c(&data));
    if let Some(claimed) = claimed_crc32c.filter(|c| *c != actual) {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            &format!("Provided CRC32C \"{claimed}\" doesn't match calculated CRC32C \"{actual}\"."),
        );
    }
    let len = data.len();
    let object = call.state.put_object(bucket, name, content_type, data);
    call.record(
        "storage.upload",
        format!("{bucket}/{name}"),
        len,
        upload_type,
    );
    json(
        StatusCode::OK,
        &object_json(call.host, bucket, name, &object),
    )
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The `boundary` parameter of a `multipart/related` content type.
fn boundary(content_type: &str) -> Option<&str> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/related") {
        return None;
    }
    params
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .filter(|b| !b.is_empty())
}

/// The parts of a multipart body: (headers, content) each.
fn multipart<'b>(body: &'b [u8], boundary: &str) -> Option<Vec<(&'b [u8], &'b [u8])>> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut at = find(body, delimiter, 0)? + delimiter.len();
    let mut parts = Vec::new();
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Some(parts);
        }
        let start = at + rest.strip_prefix(b"\r\n").map(|_| 2)?;
        let head_end = find(body, b"\r\n\r\n", start)?;
        // The content ends at CRLF + the next delimiter (a delimiter
        // always starts a line, so data that merely contains it is safe).
        let next = [b"\r\n".as_slice(), delimiter].concat();
        let end = find(body, &next, head_end + 4)?;
        parts.push((&body[start..head_end], &body[head_end + 4..end]));
        at = end + next.len();
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

fn part_content_type(headers: &[u8]) -> Option<&str> {
    std::str::from_utf8(headers)
        .ok()?
        .split("\r\n")
        .find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-type")
                .then(|| v.trim())
        })
}

/// `Content-Range` of a resumable `PUT`: the byte span carried, if any, and
/// the total size, if known.
#[allow(clippy::type_complexity)]
fn content_range(v: &str) -> Option<(Option<(usize, usize)>, Option<usize>)> {
    let (span, total) = v.strip_prefix("bytes ")?.trim().split_once('/')?;
    let total = match total {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let span = match span {
        "*" => None,
        s => {
            let (a, b) = s.split_once('-')?;
            let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
            if b < a {
                return None;
            }
            Some((a, b))
        }
    };
    Some((span, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_bodies_split_into_metadata_and_data() {
        let data = b"x\r\n--notthedelimiter\r\ny";
        let body = [
            b"--==b==\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{\"name\":\"o\"}\r\n--==b==\r\ncontent-type: text/plain\r\n\r\n".as_slice(),
            data,
            b"\r\n--==b==--".as_slice(),
        ]
        .concat();
        let parts = multipart(&body, "==b==").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].1, b"{\"name\":\"o\"}");
        assert_eq!(parts[1].1, data);
        assert_eq!(part_content_type(parts[1].0), Some("text/plain"));
        assert_eq!(
            boundary("multipart/related; boundary=\"==b==\""),
            Some("==b==")
        );
        assert_eq!(boundary("text/plain; boundary=x"), None);
        assert!(multipart(b"--b\r\nno end", "b").is_none());
    }

    #[test]
    fn content_ranges_of_resumable_puts() {
        assert_eq!(
            content_range("bytes 0-9/100"),
            Some((Some((0, 9)), Some(100)))
        );
        assert_eq!(content_range("bytes 10-19/*"), Some((Some((10, 19)), None)));
        assert_eq!(content_range("bytes */100"), Some((None, Some(100))));
        assert_eq!(content_range("bytes 9-0/10"), None);
        assert_eq!(content_range("items 0-1/2"), None);
    }
}
