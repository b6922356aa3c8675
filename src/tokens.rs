//! Token slots: one lock-free cache per distinct token request, read on
//! every proxied request, and the one refresher task per slot that keeps
//! it filled (first mint on first use, proactive refresh, jittered retry).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderValue;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::{sleep, sleep_until, Instant};

use crate::config::Config;
use crate::google::{AdcEnv, Backoff, CredentialError, Mint, Minter, Token, TokenRequest};

/// First delay before a failed mint is tried again; it doubles (with
/// jitter) up to [`RETRY_MAX`].
const RETRY_BASE: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Why [`Slot::load`] has no header to give.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Unavailable {
    /// The first token is being minted; await [`Slot::get`].
    Minting,
    /// No valid token: the mint failed, or the token expired while every
    /// refresh failed. The error names the target and IAM's message.
    Failed(Arc<CredentialError>),
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::Minting => f.write_str("the first token is still being minted"),
            Unavailable::Failed(e) => fmt::Display::fmt(e, f),
        }
    }
}

/// A minted token with its `Authorization` header value, built once.
#[derive(Clone)]
struct Ready {
    header: HeaderValue,
    token: Token,
}

impl Ready {
    fn new(token: Token) -> Result<Ready, CredentialError> {
        let bytes = Bytes::from(format!("Bearer {}", token.expose_secret()));
        // A `Bytes` made from a `Vec` allocates its shared header on the
        // first clone; do that clone here so `load()` never allocates.
        drop(bytes.clone());
        let mut header =
            HeaderValue::from_maybe_shared(bytes).map_err(|_| CredentialError::BadResponse {
                endpoint: "iamcredentials.googleapis.com".to_owned(),
                message: "the minted token is not a valid header value".to_owned(),
            })?;
        header.set_sensitive(true);
        Ok(Ready { header, token })
    }
}

/// What a slot holds. Readers only ever see one of these, whole.
enum State {
    /// Nothing yet: the first mint has not finished.
    Minting,
    /// A valid token, not yet due for refresh.
    Fresh(Ready),
    /// A valid token that is being refreshed; `last_error` is set while
    /// refreshes fail and are retried.
    Refreshing {
        ready: Ready,
        last_error: Option<Arc<CredentialError>>,
    },
    /// No valid token; the error says why.
    Expired(Arc<CredentialError>),
}

/// The public, secret-free view of a slot's state (for `/readyz`, metrics,
/// logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotStatus {
    /// The first mint has not finished.
    Minting,
    /// Serving a token that is not yet due for refresh.
    Fresh,
    /// Serving a valid token while refreshing it.
    Refreshing,
    /// Not serving: no valid token.
    Expired,
}

struct Shared {
    request: TokenRequest,
    state: ArcSwap<State>,
    /// Woken on every state change, for [`Slot::get`].
    changed: Notify,
    /// Starts the refresher on first use.
    wake: Notify,
    started: AtomicBool,
}

impl Shared {
    fn store(&self, state: State) {
        self.state.store(Arc::new(state));
        self.changed.notify_waiters();
    }
}

/// A cached token for one [`TokenRequest`], kept fresh by its own
/// refresher task. Cheap to clone.
#[derive(Clone)]
pub struct Slot(Arc<Shared>);

impl Slot {
    /// The hot path: the ready `Authorization` value (`Bearer …`, marked
    /// sensitive), or why there is none. No lock, no await, no allocation:
    /// an `ArcSwap` load and a reference-count bump.
    #[inline]
    pub fn load(&self) -> Result<HeaderValue, Unavailable> {
        let state = self.0.state.load();
        match &**state {
            State::Fresh(r) | State::Refreshing { ready: r, .. } => Ok(r.header.clone()),
            State::Expired(e) => Err(Unavailable::Failed(e.clone())),
            State::Minting => {
                self.start();
                Err(Unavailable::Minting)
            }
        }
    }

    /// The cold path: waits for the single in-flight first mint (starting
    /// it if needed). Returns the mint's error if it failed.
    pub async fn get(&self) -> Result<HeaderValue, Arc<CredentialError>> {
        loop {
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            // Register before looking, so a store between the look and the
            // await is not missed.
            changed.as_mut().enable();
            match self.load() {
                Ok(h) => return Ok(h),
                Err(Unavailable::Failed(e)) => return Err(e),
                Err(Unavailable::Minting) => changed.await,
            }
        }
    }

    /// Starts the refresher if it is waiting for first use.
    fn start(&self) {
        if !self.0.started.load(Ordering::Relaxed) && !self.0.started.swap(true, Ordering::AcqRel) {
            self.0.wake.notify_one();
        }
    }

    /// What the slot is for.
    pub fn request(&self) -> &TokenRequest {
        &self.0.request
    }

    /// The slot's state, without the token.
    pub fn status(&self) -> SlotStatus {
        match &**self.0.state.load() {
            State::Minting => SlotStatus::Minting,
            State::Fresh(_) => SlotStatus::Fresh,
            State::Refreshing { .. } => SlotStatus::Refreshing,
            State::Expired(_) => SlotStatus::Expired,
        }
    }

    /// How long the served token is still valid, if there is one.
    pub fn expires_in(&self) -> Option<Duration> {
        match &**self.0.state.load() {
            State::Fresh(r) | State::Refreshing { ready: r, .. } => Some(r.token.expires_in()),
            _ => None,
        }
    }

    /// The error of the last failed mint or refresh, if the last attempt
    /// failed.
    pub fn last_error(&self) -> Option<Arc<CredentialError>> {
        match &**self.0.state.load() {
            State::Refreshing { last_error, .. } => last_error.clone(),
            State::Expired(e) => Some(e.clone()),
            _ => None,
        }
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.0.state.load();
        write!(f, "Slot({}: ", self.0.request)?;
        match &**state {
            State::Minting => f.write_str("Minting")?,
            State::Fresh(r) => write!(f, "Fresh, {}", r.token)?,
            State::Refreshing { ready, last_error } => {
                write!(f, "Refreshing, {}", ready.token)?;
                if let Some(e) = last_error {
                    write!(f, ", last error: {e}")?;
                }
            }
            State::Expired(e) => write!(f, "Expired: {e}")?,
        }
        f.write_str(")")
    }
}

/// When to refresh a token that is valid for `left`: 5 minutes before
/// expiry, or at 75% of a short lifetime, minus up to a fifth more of that
/// margin of jitter so slots minted together do not refresh together.
pub(crate) fn refresh_delay(left: Duration) -> Duration {
    let margin = crate::google::source::refresh_margin(left);
    let margin = margin + margin.mul_f64(fastrand::f64() * 0.2);
    let floor = (left / 2).min(Duration::from_secs(1));
    left.saturating_sub(margin).max(floor)
}

async fn refresher(shared: Arc<Shared>, minter: Arc<dyn Mint>) {
    shared.wake.notified().await;
    let target = shared.request.target_principal().to_owned();
    let label = shared.request.to_string();
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
    let mut current: Option<Ready> = None;
    let mut last_error: Option<Arc<CredentialError>> = None;
    let mut ever_minted = false;
    let expire = |last_error: &Option<Arc<CredentialError>>| {
        shared.store(State::Expired(Arc::new(CredentialError::Expired {
            target: target.clone(),
            cause: last_error.clone(),
        })));
    };
    loop {
        let mint = minter.mint(&shared.request);
        let result = match current.as_ref().map(|r| r.token.expires_at()) {
            Some(hard_expiry) => {
                tokio::pin!(mint);
                tokio::select! {
                    r = &mut mint => r,
                    () = sleep_until(hard_expiry) => {
                        current = None;
                        expire(&last_error);
                        mint.await
                    }
                }
            }
            None => mint.await,
        };
        let result = result.and_then(Ready::new);
        crate::metrics::global()
            .token_mint(&label, result.as_ref().map(|_| ()).map_err(|e| e.reason()));
        match result {
            Ok(ready) => {
                let delay = refresh_delay(ready.token.expires_in());
                tracing::info!(target_principal = %target, token = %ready.token, "token minted");
                shared.store(State::Fresh(ready.clone()));
                current = Some(ready.clone());
                ever_minted = true;
                last_error = None;
                backoff.reset();
                sleep(delay).await;
                shared.store(State::Refreshing {
                    ready,
                    last_error: None,
                });
            }
            Err(e) => {
                let e = Arc::new(e);
                // Warn when the cause changes; a retry that fails the same
                // way again is only worth a debug line.
                let repeat = last_error
                    .as_ref()
                    .is_some_and(|prev| prev.to_string() == e.to_string());
                if repeat {
                    tracing::debug!(target_principal = %target, error = %e, "token mint failed again");
                } else {
                    tracing::warn!(target_principal = %target, error = %e, "token mint failed");
                }
                last_error = Some(e.clone());
                let retry_at = Instant::now() + backoff.next_delay();
                match current.clone() {
                    Some(ready) if ready.token.expires_at() > Instant::now() => {
                        let hard_expiry = ready.token.expires_at();
                        shared.store(State::Refreshing {
                            ready,
                            last_error: Some(e),
                        });
                        if hard_expiry < retry_at {
                            sleep_until(hard_expiry).await;
                            current = None;
                            expire(&last_error);
                        }
                    }
                    // Once a token has been served, its absence is reported
                    // as an expiry (with the cause), not as a bare failure.
                    Some(_) => {
                        current = None;
                        expire(&last_error);
                    }
                    None if ever_minted => expire(&last_error),
                    None => shared.store(State::Expired(e)),
                }
                sleep_until(retry_at).await;
            }
        }
    }
}

/// All token slots, one per distinct [`TokenRequest`]; routes that ask for
/// the same token share a slot (and a refresher). Dropping the registry
/// stops the refreshers.
pub struct Registry {
    minter: Arc<dyn Mint>,
    slots: Mutex<HashMap<TokenRequest, (Slot, AbortHandle)>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.slots()).finish()
    }
}

impl Registry {
    /// A registry whose slots mint with `minter`.
    pub fn new(minter: Arc<dyn Mint>) -> Registry {
        Registry {
            minter,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// A registry minting with `[source]` (ADC from the process
    /// environment) through `[upstream]`.
    pub fn from_config(cfg: &Config) -> Result<Registry, CredentialError> {
        let minter = Minter::from_config(cfg, &AdcEnv::from_process())?;
        Ok(Registry::new(Arc::new(minter)))
    }

    /// The slot for `request`, created (with its refresher) if it is the
    /// first ask. With `warm`, the first mint starts now instead of on the
    /// first [`Slot::load`].
    ///
    /// # Panics
    /// Outside a Tokio runtime (the refresher is spawned here).
    pub fn slot(&self, request: TokenRequest, warm: bool) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = match slots.get(&request) {
            Some((slot, _)) => slot.clone(),
            None => {
                let shared = Arc::new(Shared {
                    request: request.clone(),
                    state: ArcSwap::from_pointee(State::Minting),
                    changed: Notify::new(),
                    wake: Notify::new(),
                    started: AtomicBool::new(false),
                });
                let task = tokio::spawn(refresher(shared.clone(), self.minter.clone()));
                let slot = Slot(shared);
                slots.insert(request, (slot.clone(), task.abort_handle()));
                slot
            }
        };
        if warm {
            slot.start();
        }
        slot
    }

    /// Every slot, for health and metrics.
    pub fn slots(&self) -> Vec<Slot> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.values().map(|(s, _)| s.clone()).collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let slots = self.slots.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, task) in slots.values() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests;
