//! What a request is, as the upstream will act on it: the path with
//! percent-escapes in one canonical form and no dot segments, and the
//! effective method (override headers count). Routes are matched on these,
//! and the normalised path is what is forwarded, so a client cannot make
//! the proxy match one thing and the upstream act on another.

use std::borrow::Cow;

use http::header::{HeaderMap, HeaderName};
use http::Method;

/// Headers through which Google front ends (and many frameworks) let a
/// `POST` act as another method.
pub static METHOD_OVERRIDES: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Why a request cannot be normalised (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// A `%` not followed by two hex digits.
    #[error("the path has a malformed percent-escape; write `%` as `%25`")]
    BadEscape,
    /// A `.` or `..` segment, raw or percent-encoded.
    #[error(
        "the path has a `.` or `..` segment (raw or percent-encoded); send the path it stands for"
    )]
    DotSegment,
    /// A method that is not one of HTTP's standard ones in upper case.
    #[error("method `{0}` is not a standard HTTP method in upper case (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)")]
    Method(String),
    /// More than one override header, or override headers that disagree.
    #[error("conflicting method override headers (X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override)")]
    ConflictingOverride,
}

/// The path the upstream acts on: percent-escapes of unreserved
/// characters decoded, every other escape with upper-case hex (`%2F`
/// stays encoded, so it never becomes a segment boundary), and no `.` or
/// `..` segment. Borrows when the path is already in that form (no
/// allocation on the common path).
pub fn path(raw: &str) -> Result<Cow<'_, str>, Refusal> {
    let bytes = raw.as_bytes();
    let out = if bytes.contains(&b'%') {
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b != b'%' {
                out.push(b);
                i += 1;
                continue;
            }
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|c| hex(*c)),
                bytes.get(i + 2).and_then(|c| hex(*c)),
            ) else {
                return Err(Refusal::BadEscape);
            };
            // (Not `h << 4 | l`: its twin `h << 4 ^ l` is the same value.)
            let c = h * 16 + l;
            if is_unreserved(c) {
                out.push(c);
            } else {
                out.push(b'%');
                out.push(HEX[usize::from(h)]);
                out.push(HEX[usize::from(l)]);
            }
            i += 3;
        }
        // Only ASCII went in (escapes stay escapes or decode to ASCII).
        Cow::Owned(String::from_utf8(out).map_err(|_| Refusal::BadEscape)?)
    } else {
        Cow::Borrowed(raw)
    };
    if out.split('/').any(|s| s == "." || s == "..") {
        return Err(Refusal::DotSegment);
    }
    Ok(out)
}

/// The method the upstream acts on: the request's own, or the one an
/// override header names. Lower-case and non-standard methods are refused:
/// a route's `methods` names standard ones, and an upstream may treat
/// `delete` as `DELETE`.
pub fn method(method: &Method, headers: &HeaderMap) -> Result<Method, Refusal> {
    standard(method)?;
    let mut effective: Option<Method> = None;
    for name in &METHOD_OVERRIDES {
        for v in headers.get_all(name) {
            let m = Method::from_bytes(v.as_bytes().trim_ascii())
                .map_err(|_| Refusal::Method(String::from_utf8_lossy(v.as_bytes()).into_owned()))?;
            standard(&m)?;
            match &effective {
                Some(e) if *e != m => return Err(Refusal::ConflictingOverride),
                _ => effective = Some(m),
            }
        }
    }
    Ok(effective.unwrap_or_else(|| method.clone()))
}

/// Whether `path` is a batch endpoint (`/batch` or under it): its body
/// carries inner requests with their own paths and methods, which the
/// proxy does not parse.
#[inline]
pub fn is_batch(path: &str) -> bool {
    path.strip_prefix("/batch")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn standard(m: &Method) -> Result<(), Refusal> {
    match *m {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::OPTIONS
        | Method::TRACE
        | Method::CONNECT => Ok(()),
        _ => Err(Refusal::Method(m.as_str().chars().take(40).collect())),
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The value of one hex digit.
pub(crate) fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn paths_are_normalised_and_dot_segments_refused() {
        for (raw, want) in [
            ("/storage/v1/b/audit%2Dlogs/o", "/storage/v1/b/audit-logs/o"),
            ("/storage/v1/b/a%2fb/o", "/storage/v1/b/a%2Fb/o"),
            (
                "/storage/v1/b/x/o/%7euser%20name",
                "/storage/v1/b/x/o/~user%20name",
            ),
            ("/a/b", "/a/b"),
            ("/a/.b/c..d/", "/a/.b/c..d/"),
        ] {
            assert_eq!(path(raw).unwrap(), want, "{raw}");
        }
        assert!(matches!(path("/a/b").unwrap(), Cow::Borrowed(_)));
        for bad in [
            "/storage/v1/b/x/../audit-logs/o",
            "/a/./b",
            "/a/..",
            "/a/%2e%2E/b",
            "/a/%2E/b",
            "/a/.%2e",
        ] {
            assert_eq!(path(bad), Err(Refusal::DotSegment), "{bad}");
        }
        for bad in ["/a%", "/a%2", "/a%zz", "/a%2G"] {
            assert_eq!(path(bad), Err(Refusal::BadEscape), "{bad}");
        }
    }

    #[test]
    fn the_effective_method_counts_override_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(method(&Method::POST, &h).unwrap(), Method::POST);
        h.insert("x-http-method-override", HeaderValue::from_static("DELETE"));
        assert_eq!(method(&Method::POST, &h).unwrap(), Method::DELETE);
        // Overrides that agree are one override.
        h.insert("x-method-override", HeaderValue::from_static(" DELETE"));
        assert_eq!(method(&Method::POST, &h).unwrap(), Method::DELETE);
        h.insert("x-method-override", HeaderValue::from_static("GET"));
        assert_eq!(method(&Method::POST, &h), Err(Refusal::ConflictingOverride));
        let mut h = HeaderMap::new();
        h.insert("x-http-method", HeaderValue::from_static("delete"));
        assert!(matches!(method(&Method::POST, &h), Err(Refusal::Method(_))));
        let lower = Method::from_bytes(b"delete").unwrap();
        assert!(matches!(
            method(&lower, &HeaderMap::new()),
            Err(Refusal::Method(_))
        ));
        let odd = Method::from_bytes(b"PURGE").unwrap();
        assert!(matches!(
            method(&odd, &HeaderMap::new()),
            Err(Refusal::Method(_))
        ));
    }

    #[test]
    fn batch_paths_are_recognised() {
        assert!(is_batch("/batch"));
        assert!(is_batch("/batch/storage/v1"));
        assert!(!is_batch("/batchx"));
        assert!(!is_batch("/storage/v1/batch"));
    }
}
