//! Host names as the proxy compares them: one normalisation (lowercase,
//! no trailing dot), one DNS-name check, host patterns from the config,
//! default ports, and which authority a request names.

use std::fmt;

use http::header::HOST;
use http::uri::Scheme;
use http::Request;

/// Lowercases a host name and drops a trailing dot, the form every
/// comparison in the proxy uses.
pub fn normalize_host(host: &str) -> String {
    let h = host.strip_suffix('.').unwrap_or(host);
    h.to_ascii_lowercase()
}

/// Whether `name` (without a trailing dot) is a DNS name: 1–253 bytes of
/// labels of 1–63 letters, digits, `-` or `_`.
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The port a URI of `scheme` means when it names none.
pub fn default_port(scheme: &Scheme) -> u16 {
    if *scheme == Scheme::HTTPS {
        443
    } else {
        80
    }
}

/// The authority a request names: the URI's (absolute form, HTTP/2
/// `:authority`), else its `Host` header. The one place that decides
/// which host a request is for.
pub fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
}

/// A host pattern from the config: an exact name or `*.suffix`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Matches this name only (lowercase, no trailing dot).
    Exact(String),
    /// Matches any name that ends with `.suffix` (stored as `.suffix`).
    Suffix(String),
}

impl HostPattern {
    /// Parses `host` or `*.suffix`. The error says what is wrong, for a
    /// message that also names the config key.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = normalize_host(raw);
        let not_a_host = || {
            format!("`{raw}` is not a host name (expected e.g. \"storage.googleapis.com\" or \"*.googleapis.com\")")
        };
        if let Some(rest) = s.strip_prefix("*.") {
            if !is_dns_name(rest) {
                return Err(not_a_host());
            }
            return Ok(HostPattern::Suffix(format!(".{rest}")));
        }
        if s.contains('*') {
            return Err(format!(
                "`{raw}`: a wildcard is only allowed as a leading `*.` (e.g. \"*.googleapis.com\")"
            ));
        }
        if !is_dns_name(&s) {
            return Err(not_a_host());
        }
        Ok(HostPattern::Exact(s))
    }

    /// Whether `host` (already normalized) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(sfx) => host.len() > sfx.len() && host.ends_with(sfx.as_str()),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

impl fmt::Debug for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_match_by_suffix_and_exactly() {
        let s = HostPattern::parse("*.GoogleAPIs.com.").unwrap();
        assert!(s.matches("storage.googleapis.com"));
        assert!(!s.matches("googleapis.com"));
        assert!(!s.matches("evilgoogleapis.com"));
        let e = HostPattern::parse("storage.googleapis.com").unwrap();
        assert!(e.matches("storage.googleapis.com"));
        assert!(!e.matches("x.storage.googleapis.com"));
        assert!(HostPattern::parse("foo.*.com")
            .unwrap_err()
            .contains("wildcard"));
        assert!(HostPattern::parse("a..b")
            .unwrap_err()
            .contains("not a host name"));
    }

    #[test]
    fn the_authority_of_a_request_is_the_uri_s_then_host() {
        let r = Request::get("https://a.googleapis.com/x")
            .header(HOST, "b.googleapis.com")
            .body(())
            .unwrap();
        assert_eq!(request_authority(&r), Some("a.googleapis.com"));
        let r = Request::get("/x")
            .header(HOST, "b.googleapis.com")
            .body(())
            .unwrap();
        assert_eq!(request_authority(&r), Some("b.googleapis.com"));
        let r = Request::get("/x").body(()).unwrap();
        assert_eq!(request_authority(&r), None);
    }
}
