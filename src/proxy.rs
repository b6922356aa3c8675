//! The running proxy: state shared by every connection, built once at
//! start-up from the config, and the public `Proxy` handle that binds the
//! listener and serves until a shutdown signal.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use arc_swap::ArcSwap;

use crate::audit::AuditSink;
use crate::ca::{CaError, CertAuthority};
use crate::clients::{ClientError, Clients};

use crate::config::{
    normalize_host, parse_cidr, Config, ConfigError, HostPattern, LimitsConfig, OtherHosts,
};
use crate::forward::{Upstream, UpstreamSetupError};
use crate::google::{CredentialError, Mint, Token, TokenRequest};
use crate::metadata::Metadata;
use crate::routes::{compile_rules, RouteTable};
use crate::tokens::Registry;

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
}

impl StartError {
    /// Whether the cause is the configuration (exit code 2) rather than the
    /// environment.
    pub fn is_config(&self) -> bool {
        matches!(self, StartError::Config(_))
    }
}

/// What a reload can change: which hosts are intercepted, who may use the
/// proxy, egress policy, and the routes. Swapped whole, atomically; readers
/// never block.
pub(crate) struct Policy {
    pub intercept: Vec<HostPattern>,
    pub other: OtherHosts,
    pub intercept_ports: Vec<u16>,
    pub allow_private: Vec<ipnet::IpNet>,
    pub allow_ip_literals: bool,
    pub clients: Clients,
    pub routes: RouteTable,
}

impl Policy {
    /// Builds the policy of `cfg`; slots come from `registry`, so a token
    /// whose request did not change keeps its slot (no re-mint).
    fn build(cfg: &Config, registry: &Registry) -> Result<Policy, StartError> {
        cfg.validate()?;
        let specs = compile_rules(cfg)?;
        Ok(Policy {
            intercept: cfg.intercept_patterns()?,
            other: cfg.intercept.other,
            intercept_ports: cfg.intercept.ports.clone(),
            allow_private: cfg
                .intercept
                .allow_private
                .iter()
                .filter_map(|c| parse_cidr("", c).ok())
                .collect(),
            allow_ip_literals: cfg.intercept.allow_ip_literals,
            clients: Clients::load(cfg)?,
            routes: RouteTable::build(&specs, registry),
        })
    }

    /// Whether CONNECTs to `host` (normalized) are terminated and routed.
    pub fn intercepts(&self, host: &str) -> bool {
        host.parse::<std::net::IpAddr>().is_err() && self.intercept.iter().any(|p| p.matches(host))
    }
}

/// State every connection and request shares.
pub(crate) struct Shared {
    pub policy: ArcSwap<Policy>,
    pub limits: LimitsConfig,
    pub resolve: BTreeMap<String, SocketAddr>,
    pub connect_timeout: Duration,
    pub ca: CertAuthority,
    pub upstream: Upstream,
    /// Owns the token slots and their refresher tasks; the metadata
    /// endpoint asks it for slots on demand.
    pub registry: Registry,
    /// The metadata-server endpoint, when `[metadata] enabled` (a restart
    /// applies changes to it, a reload does not).
    pub metadata: Option<Metadata>,
    pub audit: AuditSink,
    pub h1: http1::Builder,
    pub h2: http2::Builder<TokioExecutor>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub connections: Arc<tokio::sync::Semaphore>,
    /// The config as started, to tell what a reload cannot change.
    pub started: Config,
    /// Where `reload` reads the config from.
    pub config_path: std::sync::Mutex<Option<std::path::PathBuf>>,
}

impl Shared {
    /// Re-reads the config file and swaps in its policy. On any error the
    /// running policy stays. Returns what happened, for the log and the
    /// admin endpoint.
    pub fn reload(&self) -> Result<String, String> {
        let path = self
            .config_path
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or("the proxy was not started from a config file; nothing to reload")?;
        let result = Config::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|cfg| {
                Policy::build(&cfg, &self.registry)
                    .map(|p| (cfg, p))
                    .map_err(|e| e.to_string())
            });
        let (cfg, policy) = match result {
            Ok(x) => x,
            Err(e) => {
                crate::metrics::global().reload(false);
                tracing::error!(config = %path.display(), error = %e, "reload failed; keeping the running config");
                return Err(format!("reload failed, running config kept: {e}"));
            }
        };
        let mut restart = Vec::new();
        let s = &self.started;
        if cfg.proxy.listen != s.proxy.listen
            || cfg.proxy.admin != s.proxy.admin
            || cfg.proxy.workers != s.proxy.workers
        {
            restart.push("[proxy] listen/admin/workers");
        }
        if cfg.ca != s.ca {
            restart.push("[ca]");
        }
        if cfg.source != s.source {
            restart.push("[source]");
        }
        if cfg.upstream != s.upstream {
            restart.push("[upstream]");
        }
        if cfg.limits != s.limits {
            restart.push("[limits]");
        }
        if cfg.audit != s.audit {
            restart.push("[audit]");
        }
        if cfg.metadata != s.metadata {
            restart.push("[metadata]");
        }
        let routes = policy.routes.routes().len();
        self.policy.store(Arc::new(policy));
        crate::metrics::global().reload(true);
        let mut msg = format!("reloaded {}: {routes} routes", path.display());
        if !restart.is_empty() {
            msg.push_str(&format!(
                "; changes to {} need a restart and were not applied",
                restart.join(", ")
            ));
            tracing::warn!(config = %path.display(), needs_restart = %restart.join(", "), "reload applied routes, clients and intercept policy; other changes need a restart");
        }
        tracing::info!(config = %path.display(), routes, "config reloaded");
        Ok(msg)
    }
}

/// A handle that reloads the running proxy's config (SIGHUP, `POST
/// /reload`).
#[derive(Clone)]
pub struct Reloader(Arc<Shared>);

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

impl Reloader {
    /// Re-reads the config file; see [`Proxy::with_config_file`].
    pub fn reload(&self) -> Result<String, String> {
        self.0.reload()
    }
}

/// A bound, ready-to-serve proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    drain_timeout: Duration,
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
    /// Loads the CA, builds the upstream client and binds the listeners.
    pub async fn bind(cfg: &Config) -> Result<Proxy, StartError> {
        let ca = CertAuthority::load(&cfg.ca.cert, &cfg.ca.key)?;
        let upstream = Upstream::new(&cfg.upstream)?;
        let registry = registry_for(cfg);
        let policy = Policy::build(cfg, &registry)?;
        let audit = AuditSink::start(&cfg.audit).map_err(StartError::Audit)?;
        let l = cfg.limits.clone();

        let mut h1 = http1::Builder::new();
        // Request heads and idle keep-alive connections are timed by the
        // connection's watchdog (src/idle.rs); hyper's own header timer
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
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));

        let listener = listen(cfg.proxy.listen).map_err(|source| StartError::Bind {
            addr: cfg.proxy.listen,
            source,
        })?;
        let local = listener.local_addr().map_err(|source| StartError::Bind {
            addr: cfg.proxy.listen,
            source,
        })?;
        let metadata = Metadata::new(&cfg.metadata, &registry, local)?;
        let admin = match cfg.proxy.admin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let shared = Shared {
            policy: ArcSwap::from_pointee(policy),
            resolve: cfg
                .upstream
                .resolve
                .iter()
                .map(|(k, v)| (normalize_host(k), *v))
                .collect(),
            connect_timeout: cfg.upstream.connect_timeout,
            connections: Arc::new(tokio::sync::Semaphore::new(l.max_connections)),
            limits: l,
            ca,
            upstream,
            metadata,
            registry,
            audit,
            h1,
            h2,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            started: cfg.clone(),
            config_path: std::sync::Mutex::new(None),
        };
        tracing::info!(
            routes = shared.policy.load().routes.routes().len(),
            "config loaded"
        );
        Ok(Proxy {
            shared: Arc::new(shared),
            listener,
            admin,
            drain_timeout: cfg.proxy.drain_timeout,
            workers: cfg.proxy.worker_count(),
        })
    }

    /// Makes `reload` (SIGHUP, `POST /reload`) re-read this file.
    pub fn with_config_file(self, path: std::path::PathBuf) -> Proxy {
        *self
            .shared
            .config_path
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(path);
        self
    }

    /// A handle to reload the config while serving.
    pub fn reloader(&self) -> Reloader {
        Reloader(self.shared.clone())
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

    /// Serves until `signal` completes, then stops accepting, asks every
    /// connection to finish its in-flight requests, and waits for them up
    /// to `[proxy] drain_timeout`. Returns whether everything drained.
    ///
    /// Client connections are served by `[proxy] workers` threads, each
    /// running its own single-threaded event loop that accepts from the
    /// shared listener: a connection, its requests and its upstream
    /// connections stay on one thread, with no hand-offs between threads
    /// per request. The caller's runtime keeps the control plane: the
    /// admin endpoint, token refreshes, reloads.
    pub async fn serve(self, signal: impl Future<Output = ()>) -> bool {
        let Proxy {
            shared,
            listener,
            admin,
            drain_timeout,
            workers,
        } = self;
        // The admin endpoint outlives the drain, so /readyz answers 503
        // while in-flight requests finish.
        let admin_task = admin.map(|l| tokio::spawn(crate::admin::serve(shared.clone(), l)));
        tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), workers, "proxy listening");
        let accepting = CancellationToken::new();
        let stop = CancellationToken::new();
        // If this future is dropped instead of completing, the workers stop
        // too rather than serving on unowned.
        let _stop_workers = (accepting.clone().drop_guard(), stop.clone().drop_guard());
        let threads = match start_workers(&shared, listener, workers, &accepting, &stop) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the worker threads");
                if let Some(t) = admin_task {
                    t.abort();
                }
                return false;
            }
        };
        signal.await;
        accepting.cancel();
        tracing::info!(
            in_flight = shared.tasks.len(),
            "shutting down: draining connections"
        );
        shared.shutdown.cancel();
        shared.tasks.close();
        let drained = tokio::time::timeout(drain_timeout, shared.tasks.wait())
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
        let audit = shared.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.flush()).await;
        if drained {
            tracing::info!("shutdown complete");
        } else {
            tracing::warn!(
                left = shared.tasks.len(),
                "drain timeout reached; closing remaining connections"
            );
        }
        drained
    }
}

/// Starts `n` worker threads accepting from `listener` until `accepting`
/// is cancelled and serving their connections until `stop` is.
fn start_workers(
    shared: &Arc<Shared>,
    listener: TcpListener,
    n: usize,
    accepting: &CancellationToken,
    stop: &CancellationToken,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let listener = listener.into_std()?;
    let mut threads = Vec::with_capacity(n);
    for i in 0..n.max(1) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = listener.try_clone()?;
        let (shared, accepting, done) = (shared.clone(), accepting.clone(), stop.clone());
        // Each worker has its own upstream pool, so that a pooled
        // connection is driven by the thread that uses it.
        let upstream = Arc::new(shared.upstream.with_own_pool());
        let thread = std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let idle = upstream.idle().clone();
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(crate::sticky::IDLE_TIMEOUT / 3).await;
                            idle.prune();
                        }
                    });
                    match TcpListener::from_std(listener) {
                        Ok(l) => {
                            crate::listener::accept_loop(
                                &shared,
                                l,
                                upstream,
                                accepting.cancelled(),
                            )
                            .await
                        }
                        Err(e) => tracing::error!(error = %e, "worker cannot listen"),
                    }
                    // Connections accepted here are served by this loop
                    // until the drain is over.
                    done.cancelled().await;
                });
            });
        match thread {
            Ok(t) => threads.push(t),
            Err(e) => {
                // Those already started stop with the proxy.
                stop.cancel();
                return Err(e);
            }
        }
    }
    Ok(threads)
}

/// The token registry for `[source]`. A source that cannot be loaded (no
/// ADC on this machine, a missing key file) does not stop the proxy: routes
/// that need a token answer 503 with the cause, the others keep working.
fn registry_for(cfg: &Config) -> Registry {
    match Registry::from_config(cfg) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "source credential unavailable; routes that impersonate will answer 503 until it is fixed and the proxy restarted");
            Registry::new(Arc::new(NoSource(e.to_string())))
        }
    }
}

/// A minter whose source credential could not be loaded.
pub(crate) struct NoSource(pub String);

impl Mint for NoSource {
    fn mint<'a>(
        &'a self,
        _req: &'a TokenRequest,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send + 'a>> {
        let message = self.0.clone();
        Box::pin(async move { Err(CredentialError::SourceUnavailable { message }) })
    }
}

/// Binds with a backlog deep enough for a burst of clients waiting for a
/// place under `max_connections` (the default of 128 drops them).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
