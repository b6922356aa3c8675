//! Which hosts are intercepted, and where a spliced tunnel may go.

use std::net::IpAddr;

use crate::config::OtherHosts;
use crate::net::{is_internal, unmap, HostPattern};

/// The compiled `[intercept]` section.
#[derive(Debug)]
pub(crate) struct Egress {
    /// `[intercept] hosts` plus every route's hosts.
    pub intercept: Vec<HostPattern>,
    /// What a CONNECT to any other host gets.
    pub other: OtherHosts,
    /// Ports an intercepted host may be CONNECTed on.
    pub intercept_ports: Vec<u16>,
    /// Ports an absolute-form `http://` request may name.
    pub http_ports: Vec<u16>,
    /// Internal ranges a tunnel may reach anyway.
    pub allow_private: Vec<ipnet::IpNet>,
    /// Whether a tunnel may name an IP address.
    pub allow_ip_literals: bool,
}

impl Egress {
    /// Whether CONNECTs to `host` (normalized) are terminated and routed.
    /// An IP address never is.
    pub fn intercepts(&self, host: &str) -> bool {
        host.parse::<IpAddr>().is_err() && self.intercept.iter().any(|p| p.matches(host))
    }

    /// Whether a tunnel may connect to `ip`: not internal, or in
    /// `allow_private` (an IPv4-mapped address counts as its IPv4 one).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = unmap(ip);
        !is_internal(ip) || self.allow_private.iter().any(|n| n.contains(&ip))
    }
}
