//! Idle detection for client connections and tunnels: a connection with no
//! request in flight and no bytes moving for `limits.idle_timeout` is
//! closed, so idle clients cannot hold places forever.
//!
//! It also times request heads (slowloris), as nginx does: the first head
//! must arrive within `limits.header_read_timeout` of the connection
//! opening; later heads within that time of their first byte. Between
//! requests only the idle timeout applies, so keep-alive connections live
//! for `idle_timeout`, not `header_read_timeout`.
//!
//! And it retires connections that have lived `limits.max_connection_age`
//! ([`Retirement`]): behind a load balancer, a long-lived connection
//! (gRPC over HTTP/2 above all) stays on the replica it first reached, so
//! new replicas get no share of it until it is asked to reconnect. The
//! cost is one handshake per connection per age; with the age unset, no
//! clock is read.
//!
//! And it tells when an HTTP/1.1 connection is between requests and quiet
//! ([`Activity::parkable`]), so that `proxy::park` can give back hyper's
//! buffers while it idles; [`ActiveIo`] holds the bytes read while parked
//! and keeps the stream open when hyper lets a parked connection go.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When a client connection is to be retired: `limits.max_connection_age`
/// after it started, ±10% so that connections opened together (after a
/// rollout) do not all reconnect together.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retirement(Option<Instant>);

impl Retirement {
    /// Retirement `age` (jittered) from now; never with `None`.
    pub fn after(age: Option<Duration>) -> Retirement {
        Retirement(age.map(|age| Instant::now() + age.mul_f64(0.9 + 0.2 * fastrand::f64())))
    }

    /// Whether the connection has reached its age.
    pub fn is_due(&self) -> bool {
        self.0.is_some_and(|at| Instant::now() >= at)
    }

    /// Completes when the connection reaches its age; never without one.
    pub async fn due(self) {
        match self.0 {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// HTTP/1.1: once the connection is due, the response it is about to
    /// send says `Connection: close`, and the connection closes after it.
    /// The client learns it from the response instead of finding the
    /// connection closed under its next request, so nothing is lost.
    pub fn close_if_due<B>(&self, resp: &mut http::Response<B>) {
        if self.is_due() {
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
    }
}

/// When a connection last did something, and how many requests it has in
/// flight.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    inflight: AtomicUsize,
    /// When the request head being read started (ms since `start`), or
    /// [`NO_HEAD`]. Starts at 0: the first head is timed from the accept.
    head_ms: AtomicU64,
    /// Set while hyper lets go of a parked connection: its shutdown must
    /// not close the stream.
    parking: AtomicBool,
}

const NO_HEAD: u64 = u64::MAX;

/// Why a connection's watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// Nothing in flight and nothing moving for the idle timeout.
    Idle,
    /// A request head took longer than the header read timeout.
    SlowHead,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            head_ms: AtomicU64::new(0),
            parking: AtomicBool::new(false),
        })
    }

    /// Completes once the connection is between requests (one has been
    /// served, nothing is in flight, no next head has started) and no
    /// bytes have moved for `after`.
    pub async fn parkable(&self, after: Duration) {
        let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        loop {
            let since = self
                .now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Relaxed));
            let between = self.inflight.load(Ordering::Relaxed) == 0
                && self.head_ms.load(Ordering::Relaxed) == NO_HEAD;
            if between && since >= after_ms {
                return;
            }
            let wait = if between { after_ms - since } else { after_ms };
            tokio::time::sleep(Duration::from_millis(wait.max(10))).await;
        }
    }

    /// While set, shutting the connection's [`ActiveIo`] down leaves the
    /// stream open (hyper ends a parked connection with a shutdown).
    pub fn set_parking(&self, on: bool) {
        self.parking.store(on, Ordering::Relaxed);
    }

    /// Bytes arrived from the client: if no request is in flight and no
    /// head is being timed, a new head starts now.
    fn bytes_in(&self) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        if self.inflight.load(Ordering::Relaxed) == 0
            && self.head_ms.load(Ordering::Relaxed) == NO_HEAD
        {
            self.head_ms.store(now, Ordering::Relaxed);
        }
    }

    /// Completes when the connection is idle for `idle`, or (with `head`)
    /// when a request head has taken longer than `head`.
    pub async fn watch(&self, idle: Duration, head: Option<Duration>) -> Expired {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let head_ms = head.map(|h| u64::try_from(h.as_millis()).unwrap_or(u64::MAX));
        loop {
            let now = self.now_ms();
            let since = now.saturating_sub(self.last_ms.load(Ordering::Relaxed));
            let inflight = self.inflight.load(Ordering::Relaxed);
            if inflight == 0 && since >= idle_ms {
                return Expired::Idle;
            }
            let mut wait = idle_ms.saturating_sub(since).max(idle_ms / 4);
            if let Some(limit) = head_ms {
                let started = self.head_ms.load(Ordering::Relaxed);
                if started != NO_HEAD && inflight == 0 {
                    let took = now.saturating_sub(started);
                    if took >= limit {
                        return Expired::SlowHead;
                    }
                    wait = wait.min(limit - took);
                } else {
                    // A head may start while we sleep: look again within
                    // half the limit, so a slow one is cut by 1.5x it.
                    wait = wait.min(limit / 2);
                }
            }
            tokio::time::sleep(Duration::from_millis(wait.max(10))).await;
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records activity now.
    pub fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Marks a request in flight until the guard is dropped (its head is
    /// complete).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.head_ms.store(NO_HEAD, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An I/O object that records activity whenever bytes move, and that
/// reads first the bytes put back with [`ActiveIo::unread`].
pub(crate) struct ActiveIo<T> {
    inner: T,
    activity: Arc<Activity>,
    /// Read from the stream but not consumed yet: served before it.
    pre: Bytes,
}

impl<T> ActiveIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        ActiveIo {
            inner,
            activity,
            pre: Bytes::new(),
        }
    }

    /// Puts `bytes` back in front of what is still to be read.
    pub fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if self.pre.is_empty() {
            self.pre = bytes;
        } else {
            let mut b = BytesMut::with_capacity(bytes.len() + self.pre.len());
            b.extend_from_slice(&bytes);
            b.extend_from_slice(&self.pre);
            self.pre = b.freeze();
        }
    }

    /// Whether bytes put back are waiting to be read.
    pub fn has_unread(&self) -> bool {
        !self.pre.is_empty()
    }
}

impl<T: AsyncRead + Unpin> ActiveIo<T> {
    /// Waits for the next byte and puts it back; false at the end of the
    /// stream. Holds no buffer while it waits.
    pub async fn read_ahead(&mut self) -> io::Result<bool> {
        let mut b = [0u8; 1];
        let n = self.read(&mut b).await?;
        self.unread(Bytes::copy_from_slice(&b[..n]));
        Ok(n > 0)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActiveIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            // Counted when they were first read.
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            if this.pre.is_empty() {
                this.pre = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_in();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActiveIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.parking.load(Ordering::Relaxed) {
            // hyper lets go of a parked connection: the stream stays open.
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_head_is_timed_from_the_accept_later_ones_from_their_first_byte() {
        let head = Some(Duration::from_secs(10));
        let idle = Duration::from_secs(90);
        // A connection that never sends a head: slow head at 10 s.
        let a = Activity::new();
        let t0 = tokio::time::Instant::now();
        assert_eq!(a.watch(idle, head).await, Expired::SlowHead);
        assert!(t0.elapsed() >= Duration::from_secs(10));
        // After a request, a quiet keep-alive connection lives until idle.
        let a = Activity::new();
        drop(a.begin());
        let t0 = tokio::time::Instant::now();
        assert_eq!(a.watch(idle, head).await, Expired::Idle);
        assert!(t0.elapsed() >= Duration::from_secs(89));
        // A head whose first byte arrived and that never completes.
        let a = Activity::new();
        drop(a.begin());
        tokio::time::sleep(Duration::from_secs(30)).await;
        a.bytes_in();
        let t0 = tokio::time::Instant::now();
        assert_eq!(a.watch(idle, head).await, Expired::SlowHead);
        assert!(t0.elapsed() >= Duration::from_secs(9) && t0.elapsed() <= Duration::from_secs(11));
    }

    #[tokio::test(start_paused = true)]
    async fn retirement_is_the_age_within_ten_percent_or_never() {
        let age = Duration::from_secs(100);
        for _ in 0..50 {
            let t0 = Instant::now();
            let r = Retirement::after(Some(age));
            let at = r.0.unwrap() - t0;
            assert!(
                at >= Duration::from_secs(90) && at <= Duration::from_secs(110),
                "{at:?}"
            );
            assert!(!r.is_due());
        }
        let r = Retirement::after(Some(age));
        r.due().await;
        assert!(r.is_due());
        let mut resp = http::Response::new(());
        r.close_if_due(&mut resp);
        assert_eq!(resp.headers()["connection"], "close");
        let never = Retirement::after(None);
        assert!(!never.is_due());
        assert!(
            tokio::time::timeout(Duration::from_secs(86_400 * 365), never.due())
                .await
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_in_flight_requests_and_quiet() {
        let a = Activity::new();
        let guard = a.begin();
        let timeout = Duration::from_secs(90);
        let head = Some(Duration::from_secs(10));
        let idle = tokio::time::timeout(Duration::from_secs(200), a.watch(timeout, head));
        tokio::pin!(idle);
        // Busy: not idle however long it takes.
        assert!(tokio::time::timeout(Duration::from_secs(150), &mut idle)
            .await
            .is_err());
        drop(guard);
        let t0 = tokio::time::Instant::now();
        assert_eq!(a.watch(timeout, head).await, Expired::Idle);
        assert!(
            t0.elapsed() >= Duration::from_secs(89),
            "{:?}",
            t0.elapsed()
        );
    }
}
