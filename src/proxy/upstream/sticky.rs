//! Upstream HTTP/1.1 connections kept per client connection.
//!
//! Every request on an intercepted connection goes to the same host, so an
//! HTTP/1.1 client connection keeps the upstream connection its first
//! request used, for as long as it lives, instead of checking one out of a
//! pool per request (the checkout, its hashing and the return were a tenth
//! of the proxy's instructions per request). When the client connection
//! closes, its upstream connection goes back to the worker's idle list for
//! the next client connection to the same host, so one-request clients
//! (curl in a loop) still reuse upstream connections.
//!
//! HTTP/2 client connections (gRPC) share one multiplexed upstream
//! connection per host and worker, held the same way, so no request pays
//! for a pool checkout; an upstream that answers ALPN with `http/1.1` gets
//! HTTP/1.1 instead.
//!
//! A connection taken from the idle list may have been closed by the
//! server meanwhile: a request that was not sent on it is retried once on
//! a new connection; one that was sent is not (its body is gone).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::{http2, TrySendError};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use crate::net::tune::{self, MAX_IDLE_PER_HOST, UPSTREAM_IDLE_TIMEOUT as IDLE_TIMEOUT};
use crate::net::{error_chain, Connector, ForwardError, ProxyBody};

type Key = (Scheme, Authority);

struct Idle {
    since: Instant,
    sender: SendRequest<ProxyBody>,
}

type H2Sender = http2::SendRequest<ProxyBody>;

/// A worker's upstream connections kept for reuse, by scheme and
/// authority: idle HTTP/1.1 ones, and the shared HTTP/2 one.
#[derive(Clone, Default)]
pub(crate) struct IdleList {
    h1: Arc<Mutex<HashMap<Key, Vec<Idle>>>>,
    h2: Arc<Mutex<HashMap<Key, H2Sender>>>,
}

impl IdleList {
    fn h2(&self, key: &Key) -> Option<H2Sender> {
        let mut map = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    fn set_h2(&self, key: Key, sender: H2Sender) {
        self.h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, sender);
    }

    fn take(&self, key: &Key) -> Option<SendRequest<ProxyBody>> {
        let mut map = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.get_mut(key)?;
        let mut found = None;
        // Most recently used first: the least likely to have been closed.
        while let Some(idle) = list.pop() {
            if usable(&idle) {
                found = Some(idle.sender);
                break;
            }
        }
        if list.is_empty() {
            map.remove(key);
        }
        found
    }

    fn put(&self, key: Key, sender: SendRequest<ProxyBody>) {
        // Only a connection with no response still streaming can be reused.
        if !sender.is_ready() {
            return;
        }
        let mut map = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_HOST {
            list.remove(0);
        }
        list.push(Idle {
            since: Instant::now(),
            sender,
        });
    }

    /// Drops (and so closes) connections idle for longer than
    /// [`IDLE_TIMEOUT`] or closed by the server.
    pub fn prune(&self) {
        let mut map = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, list| {
            list.retain(usable);
            !list.is_empty()
        });
        drop(map);
        self.h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, s| !s.is_closed());
    }
}

fn usable(idle: &Idle) -> bool {
    idle.since.elapsed() < IDLE_TIMEOUT && !idle.sender.is_closed()
}

/// The upstream connection of one client connection: empty until its
/// first request, returned to the idle list when dropped.
pub(crate) struct Sticky {
    key: Key,
    held: Mutex<Option<Sender>>,
    idle: IdleList,
}

/// An upstream connection's sending half.
enum Sender {
    H1(SendRequest<ProxyBody>),
    H2(H2Sender),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    async fn try_send(
        &mut self,
        mut req: Request<ProxyBody>,
        authority: &Authority,
    ) -> Result<Response<Incoming>, TrySendError<Request<ProxyBody>>> {
        match self {
            Sender::H1(s) => {
                // HTTP/1.1 wants the origin form and a Host header.
                let path = req
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                *req.uri_mut() = path.into();
                if !req.headers().contains_key(header::HOST) {
                    if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                        req.headers_mut().insert(header::HOST, v);
                    }
                }
                s.try_send_request(req).await
            }
            Sender::H2(s) => s.try_send_request(req).await,
        }
    }
}

impl std::fmt::Debug for Sticky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sticky")
            .field("authority", &self.key.1)
            .finish_non_exhaustive()
    }
}

impl Drop for Sticky {
    fn drop(&mut self) {
        let held = self.held.get_mut().unwrap_or_else(|p| p.into_inner());
        // An HTTP/2 connection stays shared in the worker's list.
        if let Some(Sender::H1(sender)) = held.take() {
            self.idle.put(self.key.clone(), sender);
        }
    }
}

impl Sticky {
    /// For a client connection whose requests all go to `authority`.
    pub fn new(idle: &IdleList, scheme: Scheme, authority: Authority) -> Sticky {
        Sticky {
            key: (scheme, authority),
            held: Mutex::new(None),
            idle: idle.clone(),
        }
    }

    /// The upstream host, for errors.
    pub fn host(&self) -> String {
        self.key.1.host().to_owned()
    }

    fn take(&self, h2: bool) -> Option<Sender> {
        let held = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .filter(|s| !s.is_closed());
        held.or_else(|| {
            if h2 {
                self.idle.h2(&self.key).map(Sender::H2)
            } else {
                self.idle.take(&self.key).map(Sender::H1)
            }
        })
    }

    fn keep(&self, sender: Sender) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
    }

    /// Sends `req` (absolute URI, for this connection's authority) over
    /// the kept connection, a reusable one, or a new one from `connector`
    /// (which offers `h2` when `h2` is set, for HTTP/2 clients).
    pub async fn send(
        &self,
        connector: &Connector,
        h2: bool,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ForwardError> {
        let host = || self.host();
        let mut reused = self.take(h2);
        loop {
            let was_reused = reused.is_some();
            let mut sender = match reused.take() {
                Some(s) => s,
                None => {
                    let new = connect(connector, req.uri()).await.map_err(|cause| {
                        ForwardError::Connect {
                            host: host(),
                            cause,
                        }
                    })?;
                    if let Sender::H2(s) = &new {
                        self.idle.set_h2(self.key.clone(), s.clone());
                    }
                    new
                }
            };
            // HTTP/1.1: waits for the previous response on this connection
            // to end.
            if let Err(e) = sender.ready().await {
                if was_reused {
                    continue;
                }
                return Err(ForwardError::Connect {
                    host: host(),
                    cause: error_chain(&e),
                });
            }
            match sender.try_send(req, &self.key.1).await {
                Ok(resp) => {
                    self.keep(sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the connection had closed. Retry once,
                    // on a new connection.
                    Some(unsent) if was_reused => req = unsent,
                    _ => {
                        return Err(ForwardError::Upstream {
                            host: host(),
                            cause: error_chain(e.error()),
                        })
                    }
                },
            }
        }
    }
}

/// A new connection to `uri`'s authority, HTTP/2 if the server chose it
/// by ALPN, driven by its own task on this worker.
async fn connect(connector: &Connector, uri: &http::Uri) -> Result<Sender, String> {
    let mut connector = connector.clone();
    std::future::poll_fn(|cx| connector.poll_ready(cx))
        .await
        .map_err(|e| error_chain(&*e))?;
    let io = connector
        .call(uri.clone())
        .await
        .map_err(|e| error_chain(&*e))?;
    if io.connected().is_negotiated_h2() {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(tune::H2_STREAM_WINDOW)
            .initial_connection_window_size(tune::H2_CONNECTION_WINDOW)
            .keep_alive_interval(Some(tune::H2_KEEP_ALIVE_INTERVAL))
            .keep_alive_timeout(tune::H2_KEEP_ALIVE_TIMEOUT)
            .handshake(io)
            .await
            .map_err(|e| error_chain(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        return Ok(Sender::H2(sender));
    }
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| error_chain(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(Sender::H1(sender))
}
