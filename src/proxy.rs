//! The data plane: what a worker thread needs to serve client connections
//! ([`DataPlane`]), and the public [`Proxy`] handle that binds the
//! listeners, starts the control plane and the workers, and serves until
//! a shutdown signal.
//!
//! A request meets, in order: `workers` and `accept` (accept, PROXY
//! protocol, the listener's TLS), `listener` (client identity, CONNECT or
//! absolute-form) or `transparent` (the SNI), `tunnel` (intercept or splice),
//! `request` (normalise, route, inject), `upstream` (forward), `reply`
//! (errors the proxy writes itself).

mod accept;
mod idle;
mod listener;
mod park;
mod prefixed;
mod refusals;
pub mod reply;
mod request;
mod transparent;
mod tunnel;
mod upstream;
mod workers;

pub use accept::check_listeners;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ca::{CaError, CertAuthority};
use crate::config::{Config, ConfigError, LimitsConfig};
use crate::control::{ControlPlane, ReloadError, Reloaded};
use crate::net::{tune, Outbound, UpstreamSetupError};
use crate::ops::audit::{AuditSink, Listener};
use crate::policy::{ClientError, CompileError};

/// The proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The CA is missing, unreadable or too widely readable.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The upstream client could not be built (e.g. a bad `extra_ca`).
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    /// A `[[client]]` password file is missing, empty or too open.
    #[error(transparent)]
    Clients(#[from] ClientError),
    /// The audit file could not be opened.
    #[error("[audit] file: {0}")]
    Audit(std::io::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured `[proxy] listen` address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The worker threads could not be started (threads, event loops or
    /// file descriptors ran out).
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
}

impl From<CompileError> for StartError {
    fn from(e: CompileError) -> Self {
        match e {
            CompileError::Config(e) => StartError::Config(e),
            CompileError::Clients(e) => StartError::Clients(e),
        }
    }
}

impl StartError {
    /// Whether the cause is the configuration (exit code 2) rather than the
    /// environment.
    pub fn is_config(&self) -> bool {
        matches!(self, StartError::Config(_))
    }
}

/// Holds one place under `limits.max_connections` for as long as the client
/// connection or any tunnel opened from it lives.
pub(crate) type ConnPermit = Arc<OwnedSemaphorePermit>;

/// What every worker shares: built once at start-up.
pub(crate) struct DataPlane {
    /// The policy, token slots and metadata answers.
    pub control: Arc<ControlPlane>,
    pub ca: CertAuthority,
    /// The process's one outbound client (forwarding connectors, tunnels).
    pub upstream: Arc<Outbound>,
    pub limits: LimitsConfig,
    pub audit: AuditSink,
    pub h1: http1::Builder,
    pub h2: http2::Builder<TokioExecutor>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub connections: Arc<tokio::sync::Semaphore>,
    /// Recent 407s by address, to slow down password guessing.
    pub refusals: refusals::Refusals,
    /// What `tls_listen` presents and whom it accepts (`[proxy.tls]`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Peers whose connections start with a PROXY protocol header.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
}

/// A handle that reloads the running proxy's config (SIGHUP, `POST
/// /reload`).
#[derive(Clone)]
pub struct Reloader(Arc<ControlPlane>);

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

impl Reloader {
    /// Re-reads the config file; see [`Proxy::with_config_file`].
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        self.0.reload()
    }
}

/// A handle that reopens the audit file by its name (SIGUSR1), after
/// logrotate has renamed it.
#[derive(Clone)]
pub struct LogReopener(AuditSink);

impl std::fmt::Debug for LogReopener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogReopener")
    }
}

impl LogReopener {
    /// Writes what is queued to the old file, then opens the file named
    /// in `[audit] file` again (creating it). Nothing for stdout.
    pub fn reopen(&self) -> std::io::Result<()> {
        self.0.reopen()
    }
}

/// A bound, ready-to-serve proxy.
pub struct Proxy {
    data: Arc<DataPlane>,
    listener: TcpListener,
    tls_listener: Option<TcpListener>,
    transparent_listener: Option<TcpListener>,
    admin: Option<TcpListener>,
    drain_timeout: Duration,
    shutdown_delay: Duration,
    watch_config: bool,
    workers: usize,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("listen", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Loads the CA, builds the outbound client, binds the listeners and
    /// starts the control plane on the caller's runtime.
    pub async fn bind(cfg: &Config) -> Result<Proxy, StartError> {
        cfg.validate()?;
        let ca = CertAuthority::load(&cfg.ca.cert, &cfg.ca.key)?;
        let upstream = Arc::new(Outbound::new(&cfg.upstream)?);
        let listener = listen(cfg.proxy.listen).map_err(|source| StartError::Bind {
            addr: cfg.proxy.listen,
            source,
        })?;
        let local = listener.local_addr().map_err(|source| StartError::Bind {
            addr: cfg.proxy.listen,
            source,
        })?;
        let tls = match &cfg.proxy.tls {
            Some(t) => Some(accept::listener_tls(t)?),
            None => None,
        };
        let bind_other = |addr: Option<SocketAddr>| -> Result<Option<TcpListener>, StartError> {
            addr.map(|addr| listen(addr).map_err(|source| StartError::Bind { addr, source }))
                .transpose()
        };
        let tls_listener = bind_other(cfg.proxy.tls_listen)?;
        let transparent_listener = bind_other(cfg.proxy.transparent_listen)?;
        let control = ControlPlane::start(cfg, upstream.clone(), local)?;
        let audit = AuditSink::start(&cfg.audit).map_err(StartError::Audit)?;
        control.set_audit(audit.clone());
        let l = cfg.limits.clone();

        let mut h1 = http1::Builder::new();
        // Request heads and idle keep-alive connections are timed by the
        // connection's watchdog (proxy/idle.rs); hyper's own header timer
        // would add a boxed timer per request.
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(l.max_header_bytes.max(8192))
            .max_header_size(l.max_header_bytes)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(l.h2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(l.max_header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(Some(64))
            .max_local_error_reset_streams(Some(256))
            .keep_alive_interval(Some(tune::H2_KEEP_ALIVE_INTERVAL))
            .keep_alive_timeout(tune::H2_KEEP_ALIVE_TIMEOUT);

        let admin = match cfg.proxy.admin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let data = DataPlane {
            control: Arc::new(control),
            connections: Arc::new(tokio::sync::Semaphore::new(l.max_connections)),
            limits: l,
            ca,
            upstream,
            audit,
            h1,
            h2,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            refusals: Default::default(),
            tls,
            proxy_protocol_from: accept::proxy_protocol_peers(cfg),
        };
        tracing::info!(
            routes = data.control.policy().routes().routes().len(),
            "config loaded"
        );
        warn_outside_ca_names(&data);
        Ok(Proxy {
            data: Arc::new(data),
            listener,
            tls_listener,
            transparent_listener,
            admin,
            drain_timeout: cfg.proxy.drain_timeout,
            shutdown_delay: cfg.proxy.shutdown_delay,
            watch_config: cfg.proxy.watch_config,
            workers: cfg.proxy.worker_count(),
        })
    }

    /// Makes `reload` (SIGHUP, `POST /reload`) re-read this file.
    pub fn with_config_file(self, path: std::path::PathBuf) -> Proxy {
        self.data.control.set_config_path(path);
        self
    }

    /// A handle to reload the config while serving.
    pub fn reloader(&self) -> Reloader {
        Reloader(self.data.control.clone())
    }

    /// A handle to reopen the audit file (SIGUSR1).
    pub fn log_reopener(&self) -> LogReopener {
        LogReopener(self.data.audit.clone())
    }

    /// The admin listener's address, if `[proxy] admin` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// The address `[proxy] tls_listen` is bound to, if set.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address `[proxy] transparent_listen` is bound to, if set.
    pub fn transparent_addr(&self) -> Option<SocketAddr> {
        self.transparent_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `signal` completes, then shuts down in three steps:
    ///
    /// 1. `/readyz` answers 503 at once, while the listener keeps
    ///    accepting and serving for `[proxy] shutdown_delay`, the time
    ///    load balancers and Kubernetes endpoints take to stop sending
    ///    new connections here;
    /// 2. it stops accepting; connections the kernel had already accepted
    ///    (the listen queue) are taken and served, not reset;
    /// 3. every connection is asked to finish its in-flight requests
    ///    (HTTP/1.1: close after the response; HTTP/2: GOAWAY), and they
    ///    get up to `[proxy] drain_timeout`.
    ///
    /// Returns whether everything drained, or why serving could not start.
    ///
    /// Client connections are served by `[proxy] workers` threads, each
    /// running its own single-threaded event loop that accepts from every
    /// configured listener (`listen`, `tls_listen`, `transparent_listen`,
    /// shared by all workers): a connection, its requests and its upstream
    /// connections stay on one thread, with no hand-offs between threads
    /// per request. The caller's runtime keeps the control plane: the
    /// admin endpoint, token refreshes, reloads and `[proxy]
    /// watch_config`.
    pub async fn serve(self, signal: impl Future<Output = ()>) -> Result<bool, StartError> {
        let Proxy {
            data,
            listener,
            tls_listener,
            transparent_listener,
            admin,
            drain_timeout,
            shutdown_delay,
            watch_config,
            workers,
        } = self;
        tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), workers, "proxy listening");
        let accepting = CancellationToken::new();
        let stop = CancellationToken::new();
        // Each worker holds a token of this tracker until it has stopped
        // accepting and taken what was left in the listen queue.
        let acceptors = TaskTracker::new();
        // If this future is dropped instead of completing, the workers stop
        // too rather than serving on unowned.
        let _stop_workers = (accepting.clone().drop_guard(), stop.clone().drop_guard());
        let mut listeners = vec![(Listener::Connect, listener)];
        for (kind, l) in [
            (Listener::Tls, tls_listener),
            (Listener::Transparent, transparent_listener),
        ] {
            if let Some(l) = l {
                tracing::info!(listener = kind.as_str(), addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "also listening");
                listeners.push((kind, l));
            }
        }
        let threads = workers::start(&data, listeners, workers, &accepting, &acceptors, &stop)
            .map_err(StartError::Workers)?;
        acceptors.close();
        // The admin endpoint outlives the drain, so /readyz answers 503
        // while in-flight requests finish.
        let admin_task =
            admin.map(|l| tokio::spawn(crate::control::serve_admin(data.control.clone(), l)));
        let watcher =
            watch_config.then(|| tokio::spawn(crate::control::watch_config(data.control.clone())));
        signal.await;
        data.control.start_draining();
        if let Some(w) = watcher {
            w.abort();
        }
        if !shutdown_delay.is_zero() {
            tracing::info!(
                shutdown_delay = %humantime::format_duration(shutdown_delay),
                "shutting down: /readyz answers 503; still accepting and serving until load balancers have stopped sending"
            );
            tokio::time::sleep(shutdown_delay).await;
        }
        accepting.cancel();
        acceptors.wait().await;
        tracing::info!(
            in_flight = data.tasks.len(),
            "shutting down: stopped accepting; draining connections"
        );
        data.shutdown.cancel();
        data.tasks.close();
        let drained = tokio::time::timeout(drain_timeout, data.tasks.wait())
            .await
            .is_ok();
        // Ends the workers' loops; what is still open is closed.
        stop.cancel();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        if let Some(t) = admin_task {
            t.abort();
        }
        let audit = data.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.flush()).await;
        if drained {
            tracing::info!("shutdown complete");
        } else {
            tracing::warn!(
                left = data.tasks.len(),
                "drain timeout reached; closing remaining connections"
            );
        }
        Ok(drained)
    }
}

/// Binds with a backlog deep enough for a burst of clients waiting for a
/// place under `max_connections`.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(tune::ACCEPT_BACKLOG)
}

/// Says at start-up which intercepted hosts the CA cannot sign for: their
/// clients would see a refused handshake (the mint is refused with the
/// fix, see `ca.rs`), so the operator should hear it before a client does.
fn warn_outside_ca_names(data: &DataPlane) {
    let names = data.ca.names();
    if !names.is_constrained() {
        tracing::info!("the CA has no name constraints: whoever steals its key can impersonate any site to clients that trust it; `ca init --force` creates a constrained one");
        return;
    }
    let policy = data.control.policy();
    for pattern in &policy.egress.intercept {
        if !names.permits_pattern(pattern) {
            tracing::warn!(
                host = %pattern,
                ca_permits = %names.describe(),
                "intercepted host is outside the CA's name constraints: its clients will be refused; create a CA with `ca init --force --permit DOMAIN` for every intercepted domain, or stop intercepting it"
            );
        }
    }
}
