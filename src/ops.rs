//! What operators see: Prometheus metrics, one audit record per request,
//! and the body wrappers that measure a request as it streams.

pub(crate) mod audit;
pub(crate) mod conn;
pub(crate) mod metrics;
pub(crate) mod observe;
