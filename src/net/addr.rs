//! Address classes: CIDRs from the config, and which addresses count as
//! internal. Two views of an IPv6 address that carries an IPv4 one:
//! [`unmap`] (IPv4-mapped only: how a dual-stack socket shows an IPv4
//! *peer*, used to attribute clients) and [`embedded_ipv4`] (every form a
//! *destination* can hide an IPv4 address in, used to judge where a
//! tunnel goes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Parses a CIDR or a bare address (a /32 or /128). The error says what
/// was expected.
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{s}` is not a CIDR (e.g. \"10.8.0.0/16\") or an IP address"))
}

/// The IPv4 address an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
/// carries; any other address unchanged. This is the client view: a
/// dual-stack listener reports an IPv4 peer this way. To judge a
/// destination, use [`embedded_ipv4`] (through [`is_internal`]).
#[inline]
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The IPv4 address an IPv6 destination delivers to, when it embeds one:
/// IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96` (except `::` and
/// `::1`), IPv4-translated `::ffff:0:0:0/96` (RFC 2765), NAT64
/// `64:ff9b::/96` (RFC 6052) and 6to4 `2002::/16` (RFC 3056). A packet to
/// any of these can reach the IPv4 host, so it is judged as that host.
pub fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(low(hi, lo)),
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => Some(low(hi, lo)),
        [0, 0, 0, 0, 0, 0, hi, lo] if (hi, lo) != (0, 0) && (hi, lo) != (0, 1) => Some(low(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        _ => None,
    }
}

/// Addresses a tunnel must not reach by default: every range of the IANA
/// special-purpose registries that is not globally reachable (loopback,
/// private, link-local with the metadata server at 169.254.169.254,
/// shared CGNAT, documentation, benchmarking, multicast, reserved), and
/// any IPv6 form that embeds such an IPv4 address (see [`embedded_ipv4`]).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => match embedded_ipv4(v6) {
            Some(v4) => is_internal_v4(v4),
            None => is_internal_v6(v6),
        },
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    match (a, b, c) {
        (0 | 10 | 127, _, _) => true,
        (100, 64..=127, _) => true,
        (169, 254, _) | (172, 16..=31, _) | (192, 168, _) => true,
        // IETF protocol assignments, TEST-NET-1, the 6to4 relay anycast.
        (192, 0, 0 | 2) | (192, 88, 99) => true,
        // Benchmarking, TEST-NET-2, TEST-NET-3.
        (198, 18 | 19, _) | (198, 51, 100) | (203, 0, 113) => true,
        // Multicast, reserved (240/4), limited broadcast.
        (224.., _, _) => true,
        _ => false,
    }
}

fn is_internal_v6(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    v6.is_unspecified()
        || v6.is_loopback()
        // Local-use NAT64 (RFC 8215): translated by a local gateway.
        || (s[0], s[1], s[2]) == (0x64, 0xff9b, 1)
        // Discard-only (RFC 6666).
        || (s[0], s[1], s[2], s[3]) == (0x100, 0, 0, 0)
        // IETF protocol assignments 2001::/23 (Teredo, ORCHID, benchmarking).
        || (s[0] == 0x2001 && s[1] < 0x200)
        // Documentation: 2001:db8::/32 and 3fff::/20.
        || (s[0], s[1]) == (0x2001, 0xdb8)
        || (s[0] == 0x3fff && s[1] < 0x1000)
        // Unique local fc00::/7, link-local fe80::/10, site-local fec0::/10.
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        || v6.is_multicast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_are_their_ipv4_address() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(unmap(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
        // The client view unwraps only the mapped form.
        let nat64: IpAddr = "64:ff9b::a9fe:a9fe".parse().unwrap();
        assert_eq!(unmap(nat64), nat64);
    }

    #[test]
    fn every_form_that_embeds_an_ipv4_address_yields_it() {
        let meta = Ipv4Addr::new(169, 254, 169, 254);
        for v6 in [
            "::ffff:169.254.169.254",
            "::a9fe:a9fe",
            "::ffff:0:a9fe:a9fe",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
        ] {
            assert_eq!(embedded_ipv4(v6.parse().unwrap()), Some(meta), "{v6}");
        }
        for v6 in ["::", "::1", "2001:4860:4860::8888", "64:ff9b:1::a9fe:a9fe"] {
            assert_eq!(embedded_ipv4(v6.parse().unwrap()), None, "{v6}");
        }
    }

    #[test]
    fn address_classes() {
        let internal = [
            // IPv4 special-purpose ranges that are not globally reachable.
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.170",
            "192.0.0.1",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            // IPv6 ranges.
            "::",
            "::1",
            "64:ff9b:1::1",
            "64:ff9b:1:ffff::8.8.8.8",
            "100::1",
            "2001::1",
            "2001:10::1",
            "2001:1ff::1",
            "2001:db8::1",
            "3fff::1",
            "fc00::1",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            // IPv6 forms of an internal IPv4 address.
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::a9fe:a9fe",
            "::127.0.0.1",
            "::ffff:0:a9fe:a9fe",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::10.0.0.1",
            "2002:a9fe:a9fe::1",
            "2002:7f00:1::",
        ];
        let public = [
            "8.8.8.8",
            "142.250.0.1",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "192.0.1.1",
            "198.20.0.1",
            "223.255.255.255",
            "2001:4860:4860::8888",
            "2001:200::1",
            "2607:f8b0::1",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ];
        for a in internal {
            assert!(is_internal(a.parse().unwrap()), "{a} must be internal");
        }
        for a in public {
            assert!(!is_internal(a.parse().unwrap()), "{a} must stay allowed");
        }
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
