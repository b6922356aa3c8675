//! Intercepted HTTP/1.1 connections that cost little while idle.
//!
//! hyper gives every connection an 8 KiB write buffer when it starts and
//! an 8 KiB read buffer at its first read, and keeps both for the
//! connection's life. A fleet's gateway holds thousands of keep-alive
//! connections that are idle most of the time, so a connection that is
//! between requests and quiet for [`tune::PARK_AFTER`] is parked: hyper is
//! asked to end it (an idle HTTP/1.1 connection ends at once) without
//! closing the stream ([`Activity::set_parking`]), takes its buffers with
//! it, and what is left is the TLS session waiting for the next byte with
//! no buffer of its own. That byte (and whatever hyper had read ahead) is
//! put back in front of the stream for a new hyper connection. A
//! connection under load is never quiet that long, so the busy path is
//! hyper's, unchanged; a connection also starts parked, until its first
//! byte.
//!
//! The upstream connection is not held here at all: it goes back to the
//! worker's idle list when each response ends (`upstream::Sticky`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::net::{tune, ProxyBody};
use crate::proxy::idle::{ActiveIo, Activity, Expired};
use crate::proxy::DataPlane;

/// Serves HTTP/1.1 on `io` with `svc` until the connection ends: the
/// client closes it, it is idle for `limits.idle_timeout`, a head is too
/// slow, or the proxy shuts down. `activity` must be the one `svc` marks
/// requests in flight with.
///
/// A plain function returning an `async` block, not an `async fn`: the
/// block owns the stream (1.3 KiB with its TLS session) once, where an
/// `async fn` would keep its argument and the loop's copy side by side for
/// the connection's life.
pub(crate) fn serve_h1<T, S>(
    shared: Arc<DataPlane>,
    io: T,
    activity: Arc<Activity>,
    mut svc: S,
    host: Arc<str>,
) -> impl Future<Output = ()> + Send
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = std::convert::Infallible>
        + Unpin
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut io = ActiveIo::new(io, activity.clone());
    async move {
        let limits = &shared.limits;
        let (idle, head) = (limits.idle_timeout, limits.header_read_timeout);
        let host = &*host;
        let ended = loop {
            // Parked: the stream and its TLS session, nothing else.
            if !io.has_unread() {
                tokio::select! {
                    r = io.read_ahead() => match r {
                        Ok(true) => {}
                        Ok(false) => break Ok(()),
                        Err(e) => {
                            tracing::debug!(host, error = %e, "parked connection ended with an error");
                            break Ok(());
                        }
                    },
                    _ = shared.shutdown.cancelled() => {
                        close(&mut io, head).await;
                        break Ok(());
                    }
                    e = activity.watch(idle, Some(head)) => {
                        match e {
                            Expired::Idle => close(&mut io, head).await,
                            Expired::SlowHead => {
                                tracing::debug!(host, "request head too slow; connection closed");
                            }
                        }
                        break Ok(());
                    }
                }
            }
            // Boxed: its memory goes when it is parked.
            let mut conn = Box::new(shared.h1.serve_connection(TokioIo::new(io), svc));
            tokio::select! {
                r = &mut *conn => break r,
                _ = shared.shutdown.cancelled() => {
                    Pin::new(&mut *conn).graceful_shutdown();
                    break conn.await;
                }
                e = activity.watch(idle, Some(head)) => match e {
                    Expired::Idle => {
                        Pin::new(&mut *conn).graceful_shutdown();
                        break conn.await;
                    }
                    Expired::SlowHead => {
                        tracing::debug!(host, "request head too slow; connection closed");
                        break Ok(());
                    }
                },
                _ = activity.parkable(tune::PARK_AFTER) => {}
            }
            // Between requests and quiet: hyper ends the connection at once,
            // after flushing what it still had to write, and hands the stream
            // back open.
            activity.set_parking(true);
            Pin::new(&mut *conn).graceful_shutdown();
            let ended = tokio::time::timeout(idle, &mut *conn).await;
            activity.set_parking(false);
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break Err(e),
                // Could not flush for the whole idle timeout: give up on it.
                Err(_) => break Ok(()),
            }
            let parts = conn.into_parts();
            io = parts.io.into_inner();
            io.unread(parts.read_buf);
            svc = parts.service;
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "intercepted connection ended with an error");
        }
    }
}

/// Closes an idle connection as hyper would: TLS close_notify and a TCP
/// shutdown, for at most `within`.
async fn close<T: AsyncWrite + Unpin>(io: &mut T, within: std::time::Duration) {
    let _ = tokio::time::timeout(within, io.shutdown()).await;
}
