//! What every part of the proxy needs to talk over the network: the body
//! type of every request and response ([`ProxyBody`]), host names and
//! address classes (one normalisation, one DNS-name check, one idea of an
//! internal address), the outbound client (roots, `[upstream.resolve]`,
//! connectors, the parent proxy) and the numbers that tune connections, in
//! one place each.

mod addr;
mod body;
mod client;
mod host;
mod parent;
pub mod tls;
pub mod tune;

pub use addr::{embedded_ipv4, is_internal, parse_cidr, unmap};
pub use body::{full_body, stream_body, BoxError, ProxyBody};
pub(crate) use client::Connector;
pub use client::{error_chain, ForwardError, Outbound, UpstreamSetupError};
pub use host::{
    default_port, ends_in_number, is_dns_name, normalize_host, parse_client_host,
    parse_ipv4_numeric, request_authority, ClientHost, HostPattern,
};
pub(crate) use parent::{NoProxy, Parent, Tunnel};
pub use parent::{ParentError, ParentSetupError};
