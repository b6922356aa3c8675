//! The policy: what a reload can change, compiled from the config in one
//! pass ([`compile`]) and swapped whole. Who may use the proxy
//! ([`clients`]), which hosts are intercepted and where tunnels may go
//! ([`egress`]), the route table ([`routes`]), and the hot path that puts a
//! route's credential on a request ([`inject`]).

pub mod boundary;
pub mod cases;
pub(crate) mod clients;
mod compile;
pub(crate) mod egress;
pub mod explain;
pub mod inject;
pub mod normalize;
pub mod routes;
pub mod sign;

pub use clients::ClientError;
pub use compile::{check, compile_rules, Checked, CompileError};

use crate::google::slot::Slot;
use crate::google::TokenRequest;

/// Where the route table gets a token slot for each injecting route. The
/// control plane's registry is the one that mints; `check` and `explain`
/// use cells that are never filled.
pub trait SlotSource {
    /// The slot for `request`; with `warm`, its first mint starts now.
    fn slot(&self, request: TokenRequest, warm: bool) -> Slot;

    /// Where downscoped slots (`access_boundary`) come from.
    fn downscoper(&self) -> std::sync::Arc<dyn boundary::Downscoper> {
        std::sync::Arc::new(Unminted)
    }
}

/// Slots that are never minted: for compiling a policy only to look at
/// it (`check`, benches, tests of the route table).
#[derive(Debug, Default, Clone, Copy)]
pub struct Unminted;

impl SlotSource for Unminted {
    fn slot(&self, request: TokenRequest, _warm: bool) -> Slot {
        Slot::new(request)
    }
}

/// What a reload can change: which hosts are intercepted, who may use the
/// proxy, egress policy, and the routes. Swapped whole, atomically; readers
/// never block.
pub struct Policy {
    pub(crate) egress: egress::Egress,
    pub(crate) clients: clients::Clients,
    pub(crate) routes: routes::RouteTable,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("clients", &self.clients)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// The route table.
    pub fn routes(&self) -> &routes::RouteTable {
        &self.routes
    }

    /// Whether CONNECTs to `host` (normalized) are terminated and routed.
    #[inline]
    pub fn intercepts(&self, host: &str) -> bool {
        self.egress.intercepts(host)
    }
}
