//! Forwarding: a worker's upstream connections ([`Upstream`]) and the one
//! each client connection holds ([`Sticky`]).

mod forward;
mod sticky;

pub(crate) use forward::Upstream;
pub(crate) use sticky::{IdleList, Sticky};
