//! The body type of every request the proxy sends and every response it
//! writes.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed client body, or a small buffered one.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Wraps a streamed hyper body.
pub fn stream_body(body: Incoming) -> ProxyBody {
    body.map_err(BoxError::from).boxed()
}

/// A small in-memory body.
pub fn full_body(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}
