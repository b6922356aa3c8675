//! Host names as the proxy compares them: one normalisation (lowercase,
//! no trailing dot), one DNS-name check, host patterns from the config,
//! default ports, and which authority a request names.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

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
/// labels of 1–63 letters, digits, `-` or `_`, the last of which is not a
/// number (see [`ends_in_number`]: resolvers read such a name as an IPv4
/// address).
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !ends_in_number(name)
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Whether the last label of `name` is all decimal digits or `0x` and hex
/// digits. No public DNS name ends that way (no top-level domain is
/// numeric), and `inet_aton`, which `getaddrinfo` tries first, reads such
/// names as IPv4 addresses.
pub fn ends_in_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    let hex = last.strip_prefix("0x").or_else(|| last.strip_prefix("0X"));
    match hex {
        Some(h) => h.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// The IPv4 address `inet_aton` reads from `s`, the way the system
/// resolver does before any DNS lookup: 1 to 4 parts separated by dots,
/// each decimal, octal (a leading `0`) or hex (`0x`); the last part fills
/// the remaining bytes (`127.1` is 127.0.0.1, `2130706433` and
/// `0x7f000001` are too). `None` if `s` is not such a form.
pub fn parse_ipv4_numeric(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut values = [0u32; 4];
    for (v, part) in values.iter_mut().zip(&parts) {
        *v = numeric_part(part)?;
    }
    let n = parts.len();
    // Every part but the last is one byte; the last fills 4 - (n - 1) bytes.
    if values[..n - 1].iter().any(|&v| v > 0xff) {
        return None;
    }
    let last_bits = 8 * (5 - n as u32);
    if last_bits < 32 && values[n - 1] >> last_bits != 0 {
        return None;
    }
    let mut addr = values[n - 1];
    for (i, &v) in values[..n - 1].iter().enumerate() {
        addr |= v << (24 - 8 * i as u32);
    }
    Some(Ipv4Addr::from(addr))
}

/// One part of an `inet_aton` form, at most 32 bits.
fn numeric_part(part: &str) -> Option<u32> {
    let (digits, radix) =
        if let Some(h) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (h, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    // from_str_radix alone would accept a sign; an empty hex part is
    // refused (glibc and browsers disagree on `0x`).
    if digits.is_empty() || !digits.bytes().all(|b| (b as char).is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

/// A host a client named: a DNS name, or an IP address however it was
/// spelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHost {
    /// A DNS name, normalized (lowercase, no trailing dot).
    Name(String),
    /// An IP address, including the numeric forms of
    /// [`parse_ipv4_numeric`].
    Ip(IpAddr),
}

/// Reads a host from a client (IPv6 without brackets): an IP address in
/// any spelling the system resolver would accept as one, else a DNS name.
/// A name that ends in a number but is no address is refused, since a
/// resolver might still read it as one. The error says what is wrong.
pub fn parse_client_host(raw: &str) -> Result<ClientHost, String> {
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Ok(ClientHost::Ip(ip));
    }
    let host = raw.strip_suffix('.').unwrap_or(raw);
    if let Some(v4) = parse_ipv4_numeric(host) {
        return Ok(ClientHost::Ip(IpAddr::V4(v4)));
    }
    if ends_in_number(host) {
        return Err(format!(
            "host `{}` ends in a number, so it is not a DNS name, and it is not an IPv4 address either",
            shorten(raw)
        ));
    }
    if is_dns_name(host) {
        Ok(ClientHost::Name(normalize_host(host)))
    } else {
        Err(format!(
            "host `{}` is not a host name or an IP address",
            shorten(raw)
        ))
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
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
    fn inet_aton_forms_are_ipv4_addresses() {
        let v4 = |s: &str| parse_ipv4_numeric(s).map(|a| a.to_string());
        for (form, addr) in [
            ("2130706433", "127.0.0.1"),
            ("0x7f000001", "127.0.0.1"),
            ("0X7F000001", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("127.1", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("127.0.1", "127.0.0.1"),
            ("0x7f.0x0.0x0.0x1", "127.0.0.1"),
            ("169.254.43518", "169.254.169.254"),
            ("0251.0376.0251.0376", "169.254.169.254"),
            ("010.0.0.1", "8.0.0.1"),
            ("0", "0.0.0.0"),
            ("00", "0.0.0.0"),
            ("4294967295", "255.255.255.255"),
            ("1.16777215", "1.255.255.255"),
            ("1.2.65535", "1.2.255.255"),
        ] {
            assert_eq!(v4(form).as_deref(), Some(addr), "{form}");
        }
        for not in [
            "",
            "4294967296",
            "1.16777216",
            "1.2.65536",
            "256.0.0.1",
            "1.2.3.256",
            "1.2.3.4.5",
            "08.0.0.1",
            "0x",
            "0xg",
            "+1",
            "-1",
            "1..2",
            "1.2.3.",
            "example.com",
            "99999999999999999999",
        ] {
            assert_eq!(v4(not), None, "{not}");
        }
    }

    #[test]
    fn client_hosts_are_names_or_addresses_never_numbers_as_names() {
        use std::net::IpAddr;
        let ip = |s: &str| Ok(ClientHost::Ip(s.parse::<IpAddr>().unwrap()));
        assert_eq!(parse_client_host("2130706433"), ip("127.0.0.1"));
        assert_eq!(parse_client_host("127.1."), ip("127.0.0.1"));
        assert_eq!(parse_client_host("::1"), ip("::1"));
        assert_eq!(
            parse_client_host("Storage.GoogleAPIs.com."),
            Ok(ClientHost::Name("storage.googleapis.com".into()))
        );
        assert_eq!(
            parse_client_host("x.0x7f.example"),
            Ok(ClientHost::Name("x.0x7f.example".into()))
        );
        for bad in ["1.2.3.4.5", "example.123", "foo.0x1f", "4294967296", "08.1"] {
            let err = parse_client_host(bad).unwrap_err();
            assert!(err.contains("ends in a number"), "{bad}: {err}");
        }
        assert!(parse_client_host("a..b")
            .unwrap_err()
            .contains("not a host name"));
        assert!(!is_dns_name("127.0.0.1"));
        assert!(!is_dns_name("2130706433"));
        assert!(is_dns_name("1e100.net"));
        assert!(is_dns_name("0x7f.example"));
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
