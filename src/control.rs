//! The control plane: the policy in force, its reloads and the watch that
//! triggers them, the token slots and their refreshers (every Google
//! call), the metadata-server answers, and the admin endpoint. It runs on
//! the runtime it was started on (the caller's), never on a worker
//! thread: a worker that asks for a slot gets one whose refresher runs
//! here.

mod admin;
pub(crate) mod metadata;
mod reload;
pub mod tokens;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::google::{AdcEnv, CredentialError, Mint, Minter, Token, TokenRequest};
use crate::net::Outbound;
use crate::policy::{CompileError, Policy};

pub(crate) use admin::serve as serve_admin;
pub use reload::{ReloadError, Reloaded};
pub use tokens::Registry;
pub(crate) use watch::watch as watch_config;

use metadata::Metadata;

/// The control plane of a running proxy; the data plane holds a handle.
pub(crate) struct ControlPlane {
    policy: ArcSwap<Policy>,
    /// Owns the token slots and their refresher tasks; the metadata
    /// endpoint asks it for slots on demand.
    registry: Registry,
    /// The metadata-server endpoint, when `[metadata] enabled` (a restart
    /// applies changes to it, a reload does not).
    metadata: Option<Metadata>,
    /// The config as started, to tell what a reload cannot change.
    started: Config,
    /// Where `reload` reads the config from.
    config_path: Mutex<Option<PathBuf>>,
    /// Cancelled when the proxy starts draining: `/readyz` answers 503.
    draining: CancellationToken,
    /// The audit sink, whose health `/readyz` reports.
    audit: OnceLock<crate::ops::audit::AuditSink>,
}

impl ControlPlane {
    /// Compiles the policy of `cfg` and makes its token slots. Call it on
    /// the runtime that is to run the refreshers. `listen` is the proxy
    /// listener's address (the metadata endpoint answers for it).
    pub fn start(
        cfg: &Config,
        upstream: Arc<Outbound>,
        listen: SocketAddr,
    ) -> Result<ControlPlane, CompileError> {
        let registry = registry_for(cfg, upstream);
        let policy = Policy::compile(cfg, &registry)?;
        let metadata = Metadata::new(&cfg.metadata, &registry, listen)?;
        Ok(ControlPlane {
            policy: ArcSwap::from_pointee(policy),
            registry,
            metadata,
            started: cfg.clone(),
            config_path: Mutex::new(None),
            draining: CancellationToken::new(),
            audit: OnceLock::new(),
        })
    }

    /// The policy in force, for the moment of one decision (a snapshot: a
    /// reload does not change it). Lock-free and cheaper than
    /// [`Self::policy_full`]; do not hold it across an await.
    #[inline]
    pub fn policy(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.policy.load()
    }

    /// The policy in force, owned: for holding across awaits.
    pub fn policy_full(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// The metadata-server endpoint, if enabled.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref()
    }

    /// The token registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Makes `reload` re-read this file.
    pub fn set_config_path(&self, path: PathBuf) {
        *self.config_path.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
    }

    /// The file `reload` reads, if the proxy was started from one.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config_path
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The audit sink whose health `/readyz` reports.
    pub(crate) fn set_audit(&self, sink: crate::ops::audit::AuditSink) {
        let _ = self.audit.set(sink);
    }

    /// The audit sink's health, if auditing is on.
    pub(crate) fn audit_health(&self) -> Option<crate::ops::audit::AuditHealth> {
        self.audit.get().and_then(|a| a.health())
    }

    /// From now on `/readyz` says the proxy is shutting down.
    pub fn start_draining(&self) {
        self.draining.cancel();
    }

    /// Whether the proxy is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }
}

/// The token registry for `[source]`. A source that cannot be loaded (no
/// ADC on this machine yet, a missing key file) does not stop the proxy:
/// routes that need a token answer 503 with the cause, the others keep
/// working, and loading is retried (see [`LateSource`]), so a user who
/// runs `gcloud auth application-default login` after starting the proxy
/// need not restart it.
fn registry_for(cfg: &Config, upstream: Arc<Outbound>) -> Registry {
    match Minter::with_upstream(cfg, &AdcEnv::from_process(), upstream.clone()) {
        Ok(minter) => Registry::new(Arc::new(minter)),
        Err(e) => {
            tracing::warn!(error = %e, "source credential unavailable; routes that impersonate will answer 503 until it can be loaded (retried with backoff, no restart needed)");
            Registry::new(Arc::new(LateSource::new(cfg.clone(), upstream, e)))
        }
    }
}

/// First retry of a source credential that could not be loaded at start;
/// each failure doubles it, up to [`SOURCE_RETRY_MAX`].
const SOURCE_RETRY_BASE: Duration = Duration::from_secs(1);
const SOURCE_RETRY_MAX: Duration = Duration::from_secs(30);

/// A minter whose source credential could not be loaded at start. A mint
/// (the slots' refreshers retry with their own backoff) tries to load it
/// again, at most once per backoff step; once it loads, every mint goes
/// to the real [`Minter`] and this is never tried again.
struct LateSource {
    cfg: Config,
    upstream: Arc<Outbound>,
    loaded: OnceLock<Minter>,
    retry: Mutex<Retry>,
}

struct Retry {
    next: Instant,
    backoff: Duration,
    error: String,
}

impl LateSource {
    fn new(cfg: Config, upstream: Arc<Outbound>, error: CredentialError) -> LateSource {
        LateSource {
            cfg,
            upstream,
            loaded: OnceLock::new(),
            retry: Mutex::new(Retry {
                next: Instant::now() + SOURCE_RETRY_BASE,
                backoff: SOURCE_RETRY_BASE,
                error: error.to_string(),
            }),
        }
    }

    /// The minter, if the source credential loads now (or did before).
    fn minter(&self) -> Result<&Minter, CredentialError> {
        if let Some(m) = self.loaded.get() {
            return Ok(m);
        }
        let mut retry = self.retry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = self.loaded.get() {
            return Ok(m);
        }
        let now = Instant::now();
        if now >= retry.next {
            match Minter::with_upstream(&self.cfg, &AdcEnv::from_process(), self.upstream.clone()) {
                Ok(minter) => {
                    tracing::info!(
                        source = ?minter,
                        "source credential loaded; routes that impersonate work now"
                    );
                    return Ok(self.loaded.get_or_init(|| minter));
                }
                Err(e) => {
                    retry.backoff = (retry.backoff * 2).min(SOURCE_RETRY_MAX);
                    retry.next = now + retry.backoff;
                    let message = e.to_string();
                    if message != retry.error {
                        tracing::warn!(error = %e, "source credential still unavailable");
                    }
                    retry.error = message;
                }
            }
        }
        Err(CredentialError::SourceUnavailable {
            message: retry.error.clone(),
        })
    }
}

impl Mint for LateSource {
    fn mint<'a>(
        &'a self,
        req: &'a TokenRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send + 'a>> {
        Box::pin(async move { self.minter()?.mint_token(req).await })
    }

    fn downscope<'a>(
        &'a self,
        req: &'a TokenRequest,
        base: &'a Token,
        boundary: &'a crate::google::AccessBoundary,
    ) -> Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send + 'a>> {
        Box::pin(async move { self.minter()?.downscope_token(req, base, boundary).await })
    }
}
