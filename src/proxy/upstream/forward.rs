//! A worker's forwarding client: the process's outbound connectors, and
//! this worker's idle upstream connections.

use std::sync::Arc;

use http::{Request, Response, Version};

use super::{IdleList, Sticky};
use crate::net::{ForwardError, Outbound, ProxyBody};

/// One worker's forwarding client. Its connections are driven by the
/// worker's event loop.
pub(crate) struct Upstream {
    outbound: Arc<Outbound>,
    idle: IdleList,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("outbound", &self.outbound)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// A forwarding client over `outbound` with no connections yet.
    pub fn new(outbound: Arc<Outbound>) -> Upstream {
        Upstream {
            outbound,
            idle: IdleList::default(),
        }
    }

    /// The forwarding connections kept for reuse.
    pub fn idle(&self) -> &IdleList {
        &self.idle
    }

    /// Forwards a client's request over an upstream connection to the
    /// client connection's host (`sticky`): in the client's HTTP version,
    /// or HTTP/2 by ALPN for every client with `protocol = "prefer_h2"`.
    /// An HTTP/1.1 connection goes back to the idle list when the
    /// response body ends.
    /// `direct`: never through the parent proxy (a pinned plain `http://`
    /// target whose host `no_proxy` names).
    pub async fn forward(
        &self,
        req: Request<ProxyBody>,
        client_version: Version,
        sticky: &Sticky,
        direct: bool,
    ) -> Result<Response<ProxyBody>, ForwardError> {
        let (connector, h2) = self
            .outbound
            .connector(client_version >= Version::HTTP_2, direct);
        let timeout = self.outbound.response_timeout();
        match tokio::time::timeout(timeout, sticky.send(connector, h2, req)).await {
            Ok(r) => r,
            Err(_) => Err(ForwardError::Timeout {
                host: sticky.host(),
                after: timeout,
            }),
        }
    }
}
