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

/// State every connection and request shares.
pub(crate) struct Shared {
    pub intercept: Vec<HostPattern>,
    pub other: OtherHosts,
    pub intercept_ports: Vec<u16>,
    pub allow_private: Vec<ipnet::IpNet>,
    pub allow_ip_literals: bool,
    pub clients: Clients,
    pub limits: LimitsConfig,
    pub resolve: BTreeMap<String, SocketAddr>,
    pub connect_timeout: Duration,
    pub ca: CertAuthority,
    pub upstream: Upstream,
    pub routes: ArcSwap<RouteTable>,
    /// Owns the token slots' refresher tasks: dropping it stops them. The
    /// metadata endpoint asks it for slots on demand.
    pub registry: Registry,
    /// The metadata-server endpoint, when `[metadata] enabled`.
    pub metadata: Option<Metadata>,
    pub audit: AuditSink,
    pub h1: http1::Builder,
    pub h2: http2::Builder<TokioExecutor>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub connections: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    /// Whether CONNECTs to `host` (normalized) are terminated and routed.
    pub fn intercepts(&self, host: &str) -> bool {
        host.parse::<std::net::IpAddr>().is_err() && self.intercept.iter().any(|p| p.matches(host))
    }
}

/// A bound, ready-to-serve proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    listener: TcpListener,
    drain_timeout: Duration,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("listen", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Loads the CA, builds the upstream client and binds the listener.
    pub async fn bind(cfg: &Config) -> Result<Proxy, StartError> {
        cfg.validate()?;
        let specs = compile_rules(cfg)?;
        let clients = Clients::load(cfg)?;
        let ca = CertAuthority::load(&cfg.ca.cert, &cfg.ca.key)?;
        let upstream = Upstream::new(&cfg.upstream)?;
        let registry = registry_for(cfg);
        let routes = RouteTable::build(&specs, &registry);
        let audit = AuditSink::start(&cfg.audit).map_err(StartError::Audit)?;
        let l = cfg.limits.clone();

        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(l.header_read_timeout)
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

        let listener = TcpListener::bind(cfg.proxy.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: cfg.proxy.listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| StartError::Bind {
            addr: cfg.proxy.listen,
            source,
        })?;
        let metadata = Metadata::new(&cfg.metadata, &registry, local)?;
        let shared = Shared {
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
            clients,
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
            routes: ArcSwap::from_pointee(routes),
            metadata,
            registry,
            audit,
            h1,
            h2,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        Ok(Proxy {
            shared: Arc::new(shared),
            listener,
            drain_timeout: cfg.proxy.drain_timeout,
        })
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
    pub async fn serve(self, signal: impl Future<Output = ()>) -> bool {
        let Proxy {
            shared,
            listener,
            drain_timeout,
        } = self;
        tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "proxy listening");
        crate::listener::accept_loop(&shared, listener, signal).await;
        tracing::info!(
            in_flight = shared.tasks.len(),
            "shutting down: draining connections"
        );
        shared.shutdown.cancel();
        shared.tasks.close();
        let drained = tokio::time::timeout(drain_timeout, shared.tasks.wait())
            .await
            .is_ok();
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
struct NoSource(String);

impl Mint for NoSource {
    fn mint<'a>(
        &'a self,
        _req: &'a TokenRequest,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send + 'a>> {
        let message = self.0.clone();
        Box::pin(async move { Err(CredentialError::SourceUnavailable { message }) })
    }
}
