//! The token slot: one lock-free cell per distinct token request, read on
//! every proxied request. Its state is an enum behind an `ArcSwap`:
//! readers see one state whole, never a half-written one; `load()` takes
//! no lock, awaits nothing and allocates nothing. What fills it (first
//! mint on first use, proactive refresh, retries) is the refresher in
//! `control::tokens`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderValue;
use tokio::sync::Notify;

use super::{CredentialError, Token, TokenRequest};
use crate::ops::audit::Principal;

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
pub(crate) struct Ready {
    header: HeaderValue,
    token: Token,
}

impl Ready {
    /// The header value for `token`, made once so `load()` never allocates.
    pub(crate) fn new(token: Token) -> Result<Ready, CredentialError> {
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

    /// The token (redacted in `Debug`/`Display`).
    pub(crate) fn token(&self) -> &Token {
        &self.token
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

impl Principal for Shared {
    fn target_principal(&self) -> &str {
        self.request.target_principal()
    }

    fn delegates(&self) -> &[String] {
        self.request.delegates()
    }
}

/// A cached token for one [`TokenRequest`], kept fresh by its own
/// refresher task (`control::tokens`). Cheap to clone.
#[derive(Clone)]
pub struct Slot(Arc<Shared>);

impl Slot {
    /// An empty slot for `request`; its refresher waits on
    /// [`Slot::first_use`] and fills it with the `store_*` methods.
    pub(crate) fn new(request: TokenRequest) -> Slot {
        Slot(Arc::new(Shared {
            request,
            state: ArcSwap::from_pointee(State::Minting),
            changed: Notify::new(),
            wake: Notify::new(),
            started: AtomicBool::new(false),
        }))
    }

    /// Whether `other` is this very slot (not merely one for the same
    /// request).
    pub(crate) fn same(&self, other: &Slot) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Completes when the slot is first loaded (or warmed).
    pub(crate) async fn first_use(&self) {
        self.0.wake.notified().await;
    }

    /// Serves `ready`, not yet due for refresh.
    pub(crate) fn store_fresh(&self, ready: Ready) {
        self.0.store(State::Fresh(ready));
    }

    /// Keeps serving `ready` while it is refreshed; `last_error` is set
    /// while refreshes fail.
    pub(crate) fn store_refreshing(&self, ready: Ready, last_error: Option<Arc<CredentialError>>) {
        self.0.store(State::Refreshing { ready, last_error });
    }

    /// Serves nothing: `error` says why.
    pub(crate) fn store_expired(&self, error: Arc<CredentialError>) {
        self.0.store(State::Expired(error));
    }

    /// Whom this slot's tokens act as, for an audit record: a reference
    /// count, no copy.
    #[inline]
    pub fn principal(&self) -> Arc<dyn Principal> {
        self.0.clone()
    }

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
    pub(crate) fn start(&self) {
        if !self.0.started.load(Ordering::Relaxed) && !self.0.started.swap(true, Ordering::AcqRel) {
            self.0.wake.notify_one();
        }
    }

    /// The token served now, if any (for a downscoped slot built on this
    /// one).
    pub(crate) fn current_token(&self) -> Option<Token> {
        match &**self.0.state.load() {
            State::Fresh(r) | State::Refreshing { ready: r, .. } => Some(r.token.clone()),
            _ => None,
        }
    }

    /// Completes at the first state change after the call (a `Notified`
    /// receives `notify_waiters` from its creation on, polled or not), so
    /// take it *before* looking at the state.
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.changed.notified()
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

#[cfg(test)]
mod tests;
