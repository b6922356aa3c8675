//! `[upstream] proxy`, `proxy_auth` and `no_proxy`: the parent proxy's URL
//! parsed once (scheme, no credentials, an explicit port), and the keys
//! that only make sense together checked together.

use super::{Config, ConfigError};

/// Where the parent proxy of `[upstream] proxy` listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentProxyAddr {
    /// A DNS name or an IP address (an IPv6 address without brackets).
    pub host: String,
    /// The port, always written out in the URL.
    pub port: u16,
}

impl std::fmt::Display for ParentProxyAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

const EXAMPLE: &str = "write it like \"http://corp-proxy.internal:3128\"";

/// Parses `[upstream] proxy`: `http://host:port`, nothing else. The
/// error says what is wrong and how to write it.
pub fn parse_parent_proxy(raw: &str) -> Result<ParentProxyAddr, String> {
    let s = raw.trim();
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!("`{s}` has no scheme; {EXAMPLE}"));
    };
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(format!(
            "`{scheme}://` is not supported: the parent proxy is spoken to in plain HTTP (CONNECT over TCP, the way curl and squid mean http://); {EXAMPLE}"
        ));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('@') {
        return Err(
            "must not carry credentials: set upstream.proxy_auth = { user = \"…\", password_file = \"…\" } (the password in an owner-only file)".into(),
        );
    }
    if authority.contains(['/', '?', '#']) {
        return Err(format!(
            "`{s}` has a path, query or fragment; a proxy URL is only scheme, host and port: {EXAMPLE}"
        ));
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let Some((v6, after)) = inner.split_once(']') else {
            return Err(format!("`{s}` has an unclosed `[`"));
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`[{v6}]` is not an IPv6 address"));
        }
        (v6, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => {
                return Err(
                    "an IPv6 address must be in brackets, e.g. http://[2001:db8::1]:3128".into(),
                )
            }
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{s}` names no host; {EXAMPLE}"));
    }
    let Some(port) = port else {
        return Err(format!(
            "`{s}` names no port (proxies listen on many: 3128, 8080, …); {EXAMPLE}"
        ));
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
        _ => return Err(format!("port `{port}` is not a number from 1 to 65535")),
    };
    Ok(ParentProxyAddr {
        host: host.to_ascii_lowercase(),
        port,
    })
}

impl Config {
    /// `[upstream] proxy` parses; `proxy_auth` and `no_proxy` come with
    /// it. The host names in `no_proxy` are checked by `policy::check`.
    pub(super) fn validate_parent_proxy(&self) -> Result<(), ConfigError> {
        let u = &self.upstream;
        if let Some(p) = &u.proxy {
            parse_parent_proxy(p).map_err(|m| ConfigError::invalid("upstream.proxy", m))?;
        } else if u.proxy_auth.is_some() {
            return Err(ConfigError::invalid(
                "upstream.proxy_auth",
                "is set but upstream.proxy is not: name the parent proxy (proxy = \"http://host:port\") or remove proxy_auth",
            ));
        } else if !u.no_proxy.is_empty() {
            return Err(ConfigError::invalid(
                "upstream.no_proxy",
                "is set but upstream.proxy is not: without a parent proxy every connection is direct already; name the parent proxy or remove no_proxy",
            ));
        }
        if let Some(a) = &u.proxy_auth {
            if a.user.is_empty() || a.user.contains(':') || a.user.contains(char::is_control) {
                return Err(ConfigError::invalid(
                    "upstream.proxy_auth.user",
                    "must be non-empty and hold no `:` or control characters",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_proxy_urls() {
        let ok = |s: &str| parse_parent_proxy(s).unwrap().to_string();
        assert_eq!(
            ok("http://corp-proxy.internal:3128"),
            "corp-proxy.internal:3128"
        );
        assert_eq!(ok("HTTP://Proxy.Corp:8080/"), "proxy.corp:8080");
        assert_eq!(ok("http://10.0.0.1:3128"), "10.0.0.1:3128");
        assert_eq!(ok("http://[2001:db8::1]:3128"), "[2001:db8::1]:3128");
        for (bad, says) in [
            ("corp-proxy:3128", "no scheme"),
            ("https://corp-proxy:3128", "`https://` is not supported"),
            ("socks5://corp-proxy:1080", "`socks5://` is not supported"),
            ("http://gw:pw@corp-proxy:3128", "proxy_auth"),
            ("http://corp-proxy", "no port"),
            ("http://corp-proxy:0", "not a number"),
            ("http://corp-proxy:99999", "not a number"),
            ("http://corp-proxy:3128/path", "path"),
            ("http://:3128", "no host"),
            ("http://2001:db8::1:3128", "brackets"),
            ("http://[2001:db8::1:3128", "unclosed"),
        ] {
            let err = parse_parent_proxy(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(!err.contains("pw@"), "{err}");
        }
    }
}
