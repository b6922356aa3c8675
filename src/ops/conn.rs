//! How a connection reached the proxy and how its client was identified:
//! the words the audit record and the metrics labels share.

/// The listener a request arrived on, as written in its audit record and
/// metrics labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Listener {
    /// `[proxy] listen`: CONNECT and absolute-form.
    #[default]
    Connect,
    /// `[proxy] tls_listen`: TLS to the proxy, then CONNECT inside.
    Tls,
    /// `[proxy] transparent_listen`: TLS straight to the gateway.
    Transparent,
}

impl Listener {
    /// The word in the audit line and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Connect => "connect",
            Listener::Tls => "tls",
            Listener::Transparent => "transparent",
        }
    }
}

/// How a request was attributed to its `[[client]]`: by the strongest
/// condition the entry sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdentifiedBy {
    /// The source address (`cidrs` only).
    Cidr,
    /// `Proxy-Authorization: Basic` (`proxy_auth`).
    Basic,
    /// A verified client certificate's SANs (`cert_san`).
    Cert,
}

impl IdentifiedBy {
    /// The word in the audit line and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentifiedBy::Cidr => "cidr",
            IdentifiedBy::Basic => "basic",
            IdentifiedBy::Cert => "cert",
        }
    }
}
