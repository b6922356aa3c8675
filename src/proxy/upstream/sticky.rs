//! Upstream connections held by client connections, and each worker's
//! idle ones.
//!
//! Every request on an intercepted connection goes to the same host. An
//! HTTP/1.1 upstream connection is held by a client connection while one
//! of its responses streams, and goes back to the worker's idle list for
//! that host the moment the response body ends, so a client connection
//! that is idle holds no upstream connection: 5,000 idle clients share a
//! handful of upstream connections instead of holding 5,000. The client
//! connection keeps a handle on its host's list (one hash lookup when it
//! opens, none per request), and the list hands out the most recently
//! returned connection first, so a client that sends its next request at
//! once gets the connection it just used back (the one most likely to be
//! warm and still open). The list keeps [`MAX_IDLE_PER_HOST`] connections
//! per host per worker for up to [`IDLE_TIMEOUT`]; during a burst it keeps
//! more (up to [`tune::MAX_IDLE_BURST`]), since under load every one of
//! them is taken again within moments and closing them would cost a
//! handshake each, and closes those beyond the cap once they have been
//! idle for [`tune::IDLE_SURPLUS_TIMEOUT`].
//!
//! A request that finds no idle connection waits for the first of two
//! things: a connection handed back by a response that ends (it goes to
//! the longest-waiting request before the idle list), or a permit to make
//! a new one; at most [`tune::MAX_CONNECTING_PER_HOST`] are being made at
//! once. So when thousands of idle clients turn busy together, a few new
//! connections are made and shared instead of a TLS handshake per
//! request (`benches/README.md`, fleet scale third pass: 4,925 → 716–830
//! connections, 3–5× the requests per second), while requests whose
//! responses keep their connections busy still each get one as fast as
//! they can be made.
//!
//! HTTP/2 client connections (gRPC) share one multiplexed upstream
//! connection per host and worker, held the same way, so no request pays
//! for a pool checkout; an upstream that answers ALPN with `http/1.1` gets
//! HTTP/1.1 instead.
//!
//! A connection taken from the idle list may have been closed by the
//! server meanwhile: a request that was not sent on it is retried once on
//! a new connection; one that was sent is not (its body is gone).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::{http2, TrySendError};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{oneshot, Semaphore};
use tower_service::Service;

use crate::net::tune::{self, MAX_IDLE_PER_HOST, UPSTREAM_IDLE_TIMEOUT as IDLE_TIMEOUT};
use crate::net::{error_chain, BoxError, Connector, ForwardError, ProxyBody};

type Key = (Scheme, Authority);

struct Idle {
    since: Instant,
    sender: SendRequest<ProxyBody>,
}

/// A request waiting for one of its host's HTTP/1.1 connections.
type Waiter = oneshot::Sender<SendRequest<ProxyBody>>;

/// One host's idle HTTP/1.1 connections on one worker, most recently
/// returned last, and the requests waiting for one, first come first.
#[derive(Default)]
struct Pool {
    list: Vec<Idle>,
    waiters: VecDeque<Waiter>,
}

/// One host's HTTP/1.1 connections on one worker.
struct HostIdle {
    pool: Mutex<Pool>,
    /// At most [`tune::MAX_CONNECTING_PER_HOST`] new connections are being
    /// made at once; a request that finds none idle and no permit waits
    /// for whichever comes first, a connection handed back or a permit.
    connects: Arc<Semaphore>,
    /// The host answered an offer of HTTP/2 with HTTP/1.1: HTTP/2
    /// clients take its HTTP/1.1 connections too.
    h1_only: AtomicBool,
    /// A task is closing the connections beyond the cap.
    trimming: AtomicBool,
}

impl Default for HostIdle {
    fn default() -> Self {
        HostIdle {
            pool: Mutex::default(),
            connects: Arc::new(Semaphore::new(tune::MAX_CONNECTING_PER_HOST)),
            h1_only: AtomicBool::new(false),
            trimming: AtomicBool::new(false),
        }
    }
}

/// A request's place in its host's queue. A connection handed to it that
/// it did not take (its own new one was made first, or the request was
/// dropped: its client went away, its time ran out) goes back to the next
/// request waiting or to the idle list, instead of being closed.
struct Waiting {
    rx: oneshot::Receiver<SendRequest<ProxyBody>>,
    host: Arc<HostIdle>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // Closed first, so that nothing is handed over after the look.
        self.rx.close();
        if let Ok(s) = self.rx.try_recv() {
            self.host.put(s);
        }
    }
}

/// How a request got its HTTP/1.1 connection.
enum Got {
    /// Idle, or handed back by a response that ended: it may have been
    /// closed by the server meanwhile.
    Kept(SendRequest<ProxyBody>),
    /// Made for this request.
    New(Sender),
}

impl HostIdle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> Option<SendRequest<ProxyBody>> {
        Self::take_from(&mut self.lock())
    }

    fn take_from(pool: &mut Pool) -> Option<SendRequest<ProxyBody>> {
        // Most recently used first: the least likely to have been closed.
        while let Some(idle) = pool.list.pop() {
            if usable(&idle) {
                return Some(idle.sender);
            }
        }
        None
    }

    /// An idle connection, one handed back by a response that ends, or a
    /// new one, whichever comes first. A burst of requests (a fleet of
    /// idle clients turning busy at once) opens at most
    /// [`tune::MAX_CONNECTING_PER_HOST`] connections at a time and shares
    /// those that come back, instead of a TLS handshake per request; a
    /// connection that keeps being needed is made as soon as a permit is
    /// free, so long responses never hold others up.
    async fn checkout(
        self: &Arc<Self>,
        connector: &Connector,
        uri: &http::Uri,
    ) -> Result<Got, String> {
        let (tx, rx) = oneshot::channel();
        {
            let mut pool = self.lock();
            if let Some(s) = Self::take_from(&mut pool) {
                return Ok(Got::Kept(s));
            }
            // Requests that stopped waiting (answered, or gone) go first.
            while pool.waiters.front().is_some_and(|w| w.is_closed()) {
                pool.waiters.pop_front();
            }
            pool.waiters.push_back(tx);
        }
        let mut waiting = Waiting {
            rx,
            host: self.clone(),
        };
        let permit = tokio::select! {
            biased;
            handed = &mut waiting.rx => match handed {
                Ok(s) => return Ok(Got::Kept(s)),
                // Not while this request holds its host (only the host's
                // end drops a waiter unanswered): connect anyway.
                Err(_) => return connect(connector.clone(), uri.clone()).await.map(Got::New),
            },
            p = self.connects.clone().acquire_owned() => p,
        };
        let mut connect = Box::pin(connect(connector.clone(), uri.clone()));
        tokio::select! {
            biased;
            // A connection handed over meanwhile goes back as `waiting`
            // is dropped.
            made = &mut connect => made.map(Got::New),
            Ok(s) = &mut waiting.rx => {
                // Handed one first: the new connection, when made, goes to
                // the next request waiting, or to the idle list.
                let host = self.clone();
                tokio::spawn(async move {
                    if let Ok(Sender::H1(s)) = connect.await {
                        host.put(s);
                    }
                    drop(permit);
                });
                Ok(Got::Kept(s))
            }
        }
    }

    /// Keeps `sender`, whose last response has ended (hyper may not have
    /// marked it ready yet: the next request waits for that): the first
    /// request waiting for a connection gets it, or it joins the idle list.
    fn put(self: &Arc<Self>, mut sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let mut pool = self.lock();
        while let Some(w) = pool.waiters.pop_front() {
            match w.send(sender) {
                Ok(()) => return,
                // That request stopped waiting.
                Err(s) => sender = s,
            }
        }
        let list = &mut pool.list;
        if list.len() >= tune::MAX_IDLE_BURST {
            // The oldest is the first to be closed by the server anyway.
            list.remove(0);
        }
        list.push(Idle {
            since: Instant::now(),
            sender,
        });
        let over = list.len() > MAX_IDLE_PER_HOST;
        drop(pool);
        if over && !self.trimming.swap(true, Ordering::Relaxed) {
            self.trim_later();
        }
    }

    /// Closes the connections beyond [`MAX_IDLE_PER_HOST`] as they pass
    /// [`tune::IDLE_SURPLUS_TIMEOUT`] unused, on this worker.
    fn trim_later(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.trimming.store(false, Ordering::Relaxed);
            return;
        };
        let host = self.clone();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(tune::IDLE_SURPLUS_TIMEOUT).await;
                if host.trim() {
                    host.trimming.store(false, Ordering::Relaxed);
                    // A put may have found the flag still set meanwhile.
                    if !host.over_cap() || host.trimming.swap(true, Ordering::Relaxed) {
                        return;
                    }
                }
            }
        });
    }

    /// Drops the oldest connections beyond the cap that have been idle
    /// long enough; whether the list is now within the cap.
    fn trim(&self) -> bool {
        let mut pool = self.lock();
        let list = &mut pool.list;
        let surplus = list.len().saturating_sub(MAX_IDLE_PER_HOST);
        let stale = list
            .iter()
            .take(surplus)
            .take_while(|i| i.since.elapsed() >= tune::IDLE_SURPLUS_TIMEOUT || !usable(i))
            .count();
        list.drain(..stale);
        if list.capacity() > 4 * MAX_IDLE_PER_HOST && list.len() <= MAX_IDLE_PER_HOST {
            list.shrink_to(MAX_IDLE_PER_HOST);
        }
        list.len() <= MAX_IDLE_PER_HOST
    }

    fn over_cap(&self) -> bool {
        self.lock().list.len() > MAX_IDLE_PER_HOST
    }

    fn prune(&self) -> usize {
        let mut pool = self.lock();
        pool.list.retain(usable);
        pool.waiters.retain(|w| !w.is_closed());
        if pool.list.is_empty() {
            // Give the memory back too: a burst may have grown it.
            pool.list = Vec::new();
        }
        if pool.waiters.is_empty() {
            pool.waiters = VecDeque::new();
        }
        pool.list.len()
    }
}

type H2Sender = http2::SendRequest<ProxyBody>;

/// A worker's upstream connections kept for reuse, by scheme and
/// authority: idle HTTP/1.1 ones, and the shared HTTP/2 one.
#[derive(Clone, Default)]
pub(crate) struct IdleList {
    h1: Arc<Mutex<HashMap<Key, Arc<HostIdle>>>>,
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

    /// The idle list of `key`'s host, made on first use.
    fn host(&self, key: &Key) -> Arc<HostIdle> {
        let mut map = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = map.get(key) {
            return h.clone();
        }
        let h = Arc::new(HostIdle::default());
        map.insert(key.clone(), h.clone());
        h
    }

    /// Drops (and so closes) connections idle for longer than
    /// [`IDLE_TIMEOUT`] or closed by the server, and forgets hosts that no
    /// client connection is using and that have none left.
    pub fn prune(&self) {
        let mut map = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, host| host.prune() > 0 || Arc::strong_count(host) > 1);
        if map.is_empty() {
            *map = HashMap::new();
        }
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

/// A client connection's way to its host's upstream connections: an
/// HTTP/1.1 one is taken per request and rides with the response body,
/// which hands it back to the worker's idle list when it ends; the shared
/// HTTP/2 one is held.
pub(crate) struct Sticky {
    key: Key,
    held: Mutex<Option<H2Sender>>,
    /// This host's idle HTTP/1.1 connections on this worker.
    host: Arc<HostIdle>,
    idle: IdleList,
}

/// An upstream connection's sending half.
enum Sender {
    H1(SendRequest<ProxyBody>),
    H2(H2Sender),
}

impl Sender {
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

impl Sticky {
    /// For a client connection whose requests all go to `authority`.
    pub fn new(idle: &IdleList, scheme: Scheme, authority: Authority) -> Sticky {
        let key = (scheme, authority);
        Sticky {
            host: idle.host(&key),
            key,
            held: Mutex::new(None),
            idle: idle.clone(),
        }
    }

    /// The upstream host, for errors.
    pub fn host(&self) -> String {
        self.key.1.host().to_owned()
    }

    fn take(&self, h2: bool) -> Option<Sender> {
        if !h2 {
            return self.host.take().map(Sender::H1);
        }
        let held = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .filter(|s| !s.is_closed());
        match held.or_else(|| self.idle.h2(&self.key)) {
            Some(s) => Some(Sender::H2(s)),
            None if self.host.h1_only.load(Ordering::Relaxed) => self.host.take().map(Sender::H1),
            None => None,
        }
    }

    /// Sends `req` (absolute URI, for this connection's authority) over
    /// the held connection, a reusable one, or a new one from `connector`
    /// (which offers `h2` when `h2` is set, for HTTP/2 clients). The
    /// response's body hands the connection back when it ends.
    pub async fn send(
        &self,
        connector: &Connector,
        h2: bool,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ForwardError> {
        let host = || self.host();
        let mut reused = self.take(h2);
        // A kept connection failed: the retry gets a new one.
        let mut fresh = false;
        loop {
            let mut was_reused = reused.is_some();
            let mut sender = match reused.take() {
                Some(s) => s,
                None => {
                    // Boxed: a new connection is the rare path, and inline
                    // its 6.5 KiB of TLS-connect state would be sized into
                    // every request's future (and copied with it).
                    let pooled = !h2 || self.host.h1_only.load(Ordering::Relaxed);
                    let got = if pooled && !fresh {
                        Box::pin(self.host.checkout(connector, req.uri())).await
                    } else {
                        Box::pin(connect(connector.clone(), req.uri().clone()))
                            .await
                            .map(Got::New)
                    };
                    match got.map_err(|cause| ForwardError::Connect {
                        host: host(),
                        cause,
                    })? {
                        Got::Kept(s) => {
                            was_reused = true;
                            Sender::H1(s)
                        }
                        Got::New(new) => {
                            match &new {
                                Sender::H2(s) => self.idle.set_h2(self.key.clone(), s.clone()),
                                Sender::H1(_) if h2 => {
                                    self.host.h1_only.store(true, Ordering::Relaxed)
                                }
                                Sender::H1(_) => {}
                            }
                            new
                        }
                    }
                }
            };
            // HTTP/1.1: waits for the previous response on this connection
            // to end.
            if let Err(e) = sender.ready().await {
                if was_reused {
                    fresh = true;
                    continue;
                }
                return Err(ForwardError::Connect {
                    host: host(),
                    cause: error_chain(&e),
                });
            }
            match sender.try_send(req, &self.key.1).await {
                Ok(resp) => {
                    return Ok(match sender {
                        Sender::H1(s) => {
                            let back = (s, self.host.clone());
                            resp.map(|body| Releasing::boxed(body, back))
                        }
                        Sender::H2(s) => {
                            *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
                            resp.map(|body| BodyExt::boxed(body.map_err(BoxError::from)))
                        }
                    });
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the connection had closed. Retry once,
                    // on a new connection.
                    Some(unsent) if was_reused => {
                        req = unsent;
                        fresh = true;
                    }
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

/// An HTTP/1.1 upstream response body that hands its connection back to
/// the idle list when it ends (read to its end, or dropped once hyper has
/// seen its end: a body of known length is not polled past its last
/// byte). A body dropped before its end leaves the connection unusable:
/// it is closed.
struct Releasing {
    inner: Incoming,
    back: Option<(SendRequest<ProxyBody>, Arc<HostIdle>)>,
}

impl Releasing {
    fn boxed(inner: Incoming, back: (SendRequest<ProxyBody>, Arc<HostIdle>)) -> ProxyBody {
        BodyExt::boxed(Releasing {
            inner,
            back: Some(back),
        })
    }

    fn ended(&mut self) {
        if let Some((sender, host)) = self.back.take() {
            host.put(sender);
        }
    }
}

impl Body for Releasing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match r {
            Poll::Ready(None) => {
                this.ended();
                Poll::Ready(None)
            }
            Poll::Ready(Some(r)) => Poll::Ready(Some(r.map_err(BoxError::from))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Releasing {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.ended();
        }
    }
}

/// A new connection to `uri`'s authority, HTTP/2 if the server chose it
/// by ALPN, driven by its own task on this worker.
async fn connect(mut connector: Connector, uri: http::Uri) -> Result<Sender, String> {
    std::future::poll_fn(|cx| connector.poll_ready(cx))
        .await
        .map_err(|e| error_chain(&*e))?;
    let io = connector.call(uri).await.map_err(|e| error_chain(&*e))?;
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
