//! The metadata endpoint's on-demand token slots: one per scope set or
//! ID-token audience that clients ask for, bounded in total and per
//! client, and released when unused.
//!
//! Why: each slot is a refresher that mints for as long as the slot lives,
//! and the audience is whatever a client writes in its query. Kept for
//! good, junk audiences from one client would use up the budget and every
//! other client's real audience would get 429 until a restart (a reload
//! does not rebuild the endpoint). So a slot counts against the client
//! that made it ([`MAX_PER_CLIENT`]), and one that no client has asked for
//! in [`IDLE`] is released at the next on-demand ask (its refresher stops;
//! see `Registry::remove` for why a slot a route shares is never
//! stopped). Audiences listed in `[metadata] audiences` are the operator's
//! choice: kept for good and not counted. Cost: a map lookup and an
//! `Instant` per on-demand ask, and a scan of at most [`MAX_ON_DEMAND`] +
//! `audiences` entries, under one lock off the proxy's hot path.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::control::tokens::Registry;
use crate::google::slot::Slot;
use crate::google::TokenRequest;
use crate::net::unmap;
use crate::policy::clients::ClientId;

/// Distinct scope sets and audiences the endpoint keeps for clients (on
/// top of the `audiences` allow-list), all clients together.
pub(super) const MAX_ON_DEMAND: usize = 32;

/// Of those, how many one client may hold, so that one client cannot
/// starve the others.
pub(super) const MAX_PER_CLIENT: usize = 8;

/// A slot no client has asked for this long is released.
pub(super) const IDLE: Duration = Duration::from_secs(600);

/// Whom an on-demand slot counts against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Owner {
    /// A `[[client]]`, by name.
    Client(Arc<str>),
    /// With no `[[client]]` entries, a remote source address (an IPv6
    /// address by its /64, which one host usually holds whole).
    Address(IpAddr),
    /// With no `[[client]]` entries, a loopback peer: a local program
    /// picks its source from all of 127/8, so the address tells no one
    /// apart and only the total bound applies.
    Local,
}

impl Owner {
    /// The owner of a request from `peer`, attributed to `client`.
    pub(super) fn of(client: Option<&ClientId>, peer: IpAddr) -> Owner {
        if let Some(c) = client {
            return Owner::Client(c.name.clone());
        }
        match unmap(peer) {
            ip if ip.is_loopback() => Owner::Local,
            IpAddr::V6(v6) => Owner::Address(IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & !u128::from(u64::MAX),
            ))),
            v4 => Owner::Address(v4),
        }
    }

    fn cap(&self) -> usize {
        match self {
            Owner::Local => MAX_ON_DEMAND,
            _ => MAX_PER_CLIENT,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Client(name) => write!(f, "client \"{name}\""),
            Owner::Address(IpAddr::V6(net)) => write!(f, "the clients in {net}/64"),
            Owner::Address(ip) => write!(f, "the client at {ip}"),
            Owner::Local => f.write_str("local clients"),
        }
    }
}

/// Why no slot was handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refused {
    /// The owner already holds [`MAX_PER_CLIENT`] slots.
    Owner(Owner),
    /// All clients together hold [`MAX_ON_DEMAND`].
    Total,
}

struct Held {
    slot: Slot,
    last_used: Instant,
    /// `None`: an `audiences` entry, kept for good and not counted.
    owner: Option<Owner>,
}

/// The on-demand slots and whom each counts against.
pub(super) struct OnDemand {
    held: Mutex<HashMap<TokenRequest, Held>>,
}

impl OnDemand {
    pub(super) fn new() -> OnDemand {
        OnDemand {
            held: Mutex::new(HashMap::new()),
        }
    }

    /// The slot for `request`, asked for by `owner` (`None`: an
    /// `audiences` entry), after releasing the slots that went unused.
    pub(super) fn get(
        &self,
        registry: &Registry,
        request: TokenRequest,
        owner: Option<Owner>,
    ) -> Result<Slot, Refused> {
        let now = Instant::now();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = held.get_mut(&request) {
            h.last_used = now;
            let slot = h.slot.clone();
            release_idle(&mut held, registry, now);
            return Ok(slot);
        }
        release_idle(&mut held, registry, now);
        let slot = match &owner {
            // Kept like a route's slot: `Registry::remove` never stops it.
            None => registry.slot(request.clone(), false),
            Some(o) => {
                let counted = || held.values().filter_map(|h| h.owner.as_ref());
                if counted().filter(|h| *h == o).count() >= o.cap() {
                    return Err(Refused::Owner(o.clone()));
                }
                if counted().count() >= MAX_ON_DEMAND {
                    return Err(Refused::Total);
                }
                registry.on_demand(request.clone())
            }
        };
        held.insert(
            request,
            Held {
                slot: slot.clone(),
                last_used: now,
                owner,
            },
        );
        Ok(slot)
    }

    /// Releases the slots that went unused, without asking for one.
    pub(super) fn release_idle(&self, registry: &Registry) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        release_idle(&mut held, registry, Instant::now());
    }
}

/// Forgets every counted slot not used for [`IDLE`] and gives it back to
/// the registry, which stops its refresher unless a route shares it.
fn release_idle(held: &mut HashMap<TokenRequest, Held>, registry: &Registry, now: Instant) {
    held.retain(|request, h| {
        if h.owner.is_none() || now.duration_since(h.last_used) < IDLE {
            return true;
        }
        let stopped = registry.remove(request);
        tracing::debug!(request = %request, refresher_stopped = stopped, "metadata endpoint released an unused on-demand token slot");
        false
    });
}

#[cfg(test)]
mod tests;
