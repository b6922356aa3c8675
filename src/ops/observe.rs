//! Body wrappers that watch a request as it streams: the connection's
//! in-flight count, bytes in and out, and the audit record written when the
//! response body ends (or is dropped because the client went away).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::net::{BoxError, ProxyBody};
use crate::ops::audit::{AuditSink, Record};

/// The data bytes in a polled frame (0 for trailers, errors, pending).
fn data_len<E>(r: &Poll<Option<Result<Frame<Bytes>, E>>>) -> u64 {
    match r {
        Poll::Ready(Some(Ok(f))) => f.data_ref().map_or(0, |d| d.remaining() as u64),
        _ => 0,
    }
}

/// A request body that counts the bytes it yields.
pub(crate) struct CountedIn {
    inner: Incoming,
    count: Arc<AtomicU64>,
}

impl CountedIn {
    pub fn boxed(inner: Incoming, count: Arc<AtomicU64>) -> ProxyBody {
        http_body_util::BodyExt::boxed(CountedIn { inner, count })
    }
}

impl Body for CountedIn {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        this.count.fetch_add(data_len(&r), Ordering::Relaxed);
        r.map(|o| o.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps a response so that `guard` (the connection's in-flight mark) is
/// held until its body is done; then the request is counted in the metrics
/// and its audit record (if auditing is on) is written.
pub(crate) fn finish<G: Send + Sync + Unpin + 'static>(
    resp: Response<ProxyBody>,
    guard: G,
    record: Record,
    audit: Option<AuditSink>,
) -> Response<ProxyBody> {
    resp.map(|inner| {
        http_body_util::BodyExt::boxed(Tracked {
            inner,
            bytes_out: 0,
            record: Some(record),
            audit,
            _guard: guard,
        })
    })
}

struct Tracked<G> {
    inner: ProxyBody,
    bytes_out: u64,
    record: Option<Record>,
    audit: Option<AuditSink>,
    _guard: G,
}

impl<G: Unpin> Body for Tracked<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        this.bytes_out += data_len(&r);
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<G> Drop for Tracked<G> {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.finish(self.bytes_out);
            crate::ops::metrics::global().request(
                record.route.as_ref(),
                record.client_name.as_ref(),
                (record.listener, record.identified_by),
                record.status,
                record.duration,
            );
            if let Some(sink) = &self.audit {
                sink.write(&record);
            }
        }
    }
}
