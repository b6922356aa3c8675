//! Address classes: CIDRs from the config, and which addresses count as
//! internal. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is the IPv4
//! address it carries, everywhere.

use std::net::IpAddr;

/// Parses a CIDR or a bare address (a /32 or /128). The error says what
/// was expected.
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{s}` is not a CIDR (e.g. \"10.8.0.0/16\") or an IP address"))
}

/// The IPv4 address an IPv4-mapped IPv6 address carries; any other
/// address unchanged.
#[inline]
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Addresses a tunnel must not reach by default: loopback, private,
/// link-local (169.254.0.0/16 holds the metadata server), shared (CGNAT),
/// unspecified, multicast and reserved ranges.
pub fn is_internal(ip: IpAddr) -> bool {
    match unmap(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_are_their_ipv4_address() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(unmap(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
        assert!(is_internal(mapped));
        assert!(is_internal("::ffff:169.254.169.254".parse().unwrap()));
        assert!(!is_internal("::ffff:8.8.8.8".parse().unwrap()));
        assert!(is_internal("fd00::1".parse().unwrap()));
        assert!(is_internal("100.64.0.1".parse().unwrap()));
        assert!(!is_internal("2001:4860::1".parse().unwrap()));
    }

    #[test]
    fn cidrs_and_bare_addresses_parse() {
        assert_eq!(
            parse_cidr("10.8.0.0/16").unwrap().to_string(),
            "10.8.0.0/16"
        );
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        assert!(parse_cidr("10.8.0.0/33")
            .unwrap_err()
            .contains("not a CIDR"));
    }
}
