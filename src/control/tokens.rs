//! The token registry: one slot per distinct token request (the cell is
//! `google::slot`), and the one refresher task per slot that keeps it
//! filled (first mint on first use, proactive refresh, jittered retry).
//! Refreshers run on the control plane's runtime, whichever thread asks
//! for a slot.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::AbortHandle;
use tokio::time::{sleep, sleep_until, Instant};

use crate::google::slot::{Ready, Slot};
use crate::google::{Backoff, CredentialError, Mint, TokenRequest};
use crate::policy::boundary::Downscoper;
use crate::policy::SlotSource;

mod downscope;
use downscope::Downscoped;

/// First delay before a failed mint is tried again; it doubles (with
/// jitter) up to [`RETRY_MAX`].
const RETRY_BASE: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// While a still-valid token is served, a retry is never more than a tenth
/// of its remaining life away (jittered), and never less than this.
const RETRY_FLOOR: Duration = Duration::from_millis(250);
/// The last retry before a served token expires starts this long before
/// its expiry, however the backoff falls.
const LAST_RETRY_LEAD: Duration = Duration::from_millis(500);

/// The delay before retrying a failed refresh of a token that is valid for
/// `left`: the backoff's `delay`, but at most a tenth of `left` (less up to
/// a quarter of jitter), and never less than [`RETRY_FLOOR`] on that
/// account. So retries get closer together as expiry nears, and IAM coming
/// back late in an outage is noticed within a tenth of the time left.
pub(crate) fn retry_delay(delay: Duration, left: Duration) -> Duration {
    let cap = (left / 10).mul_f64(0.75 + fastrand::f64() * 0.25);
    delay.min(cap.max(RETRY_FLOOR))
}

/// When to retry a failed refresh at `now` of a token that expires at
/// `hard_expiry`, the backoff having drawn `delay`: [`retry_delay`], moved
/// earlier to one last retry [`LAST_RETRY_LEAD`] before expiry if it would
/// land after that. `None` once that last retry is past: the token will
/// expire before the next one.
fn retry_before_expiry(now: Instant, hard_expiry: Instant, delay: Duration) -> Option<Instant> {
    let last = hard_expiry.checked_sub(LAST_RETRY_LEAD)?;
    if now >= last {
        return None;
    }
    Some((now + retry_delay(delay, hard_expiry - now)).min(last))
}

/// When to refresh a token that is valid for `left`: 5 minutes before
/// expiry, or at 75% of a short lifetime, minus up to a fifth more of that
/// margin of jitter so slots minted together do not refresh together.
/// The margin is at most 30% of `left`, so the delay is never under 70%
/// of it: there is no floor to apply (a floor of half the lifetime, kept
/// until issue 21, could never bind).
pub(crate) fn refresh_delay(left: Duration) -> Duration {
    let margin = crate::google::source::refresh_margin(left);
    let margin = margin + margin.mul_f64(fastrand::f64() * 0.2);
    left.saturating_sub(margin)
}

/// What a refresher (a slot's or a downscoped slot's) does after the
/// attempt to mint or exchange its token failed with `e`: counts the retry
/// in `token_refresh_retries_total` under `label`; keeps serving
/// `current`, with `e` as the last error, while a retry can still come
/// before it expires ([`retry_before_expiry`]), else serves it to its last
/// instant (no wait if that is past) and then reports the expiry with `e`
/// as its cause; with no token to serve, reports that expiry or `e`
/// itself. Returns when the next attempt is due: the backoff's delay,
/// capped by the time the served token has left.
async fn retry_after_failure(
    slot: &Slot,
    label: &str,
    current: &mut Option<Ready>,
    e: Arc<CredentialError>,
    ever_minted: bool,
    backoff: &mut Backoff,
) {
    crate::ops::metrics::global().token_refresh_retry(label);
    let expired = |e: Arc<CredentialError>| {
        Arc::new(CredentialError::Expired {
            target: slot.request().target_principal().to_owned(),
            cause: Some(e),
        })
    };
    let now = Instant::now();
    let delay = backoff.next_delay();
    let mut retry_at = now + delay;
    match current.clone() {
        Some(ready) => {
            let hard_expiry = ready.token().expires_at();
            match retry_before_expiry(now, hard_expiry, delay) {
                Some(at) => {
                    slot.store_refreshing(ready, Some(e));
                    retry_at = at;
                }
                // The last retry before expiry failed (or the token
                // expired while this one ran): serve the token to its last
                // instant (no wait if that is past), then report the
                // expiry with the cause.
                None => {
                    sleep_until(hard_expiry).await;
                    *current = None;
                    slot.store_expired(expired(e));
                    retry_at = retry_at.max(hard_expiry);
                }
            }
        }
        // Once a token has been served, its absence is reported as an
        // expiry (with the cause), not as a bare failure.
        None if ever_minted => slot.store_expired(expired(e)),
        None => slot.store_expired(e),
    }
    sleep_until(retry_at).await;
}

async fn refresher(slot: Slot, minter: Arc<dyn Mint>) {
    slot.first_use().await;
    let target = slot.request().target_principal().to_owned();
    let label = slot.request().to_string();
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
    let mut current: Option<Ready> = None;
    let mut last_error: Option<Arc<CredentialError>> = None;
    let mut ever_minted = false;
    let expire = |last_error: &Option<Arc<CredentialError>>| {
        slot.store_expired(Arc::new(CredentialError::Expired {
            target: target.clone(),
            cause: last_error.clone(),
        }));
    };
    loop {
        let mint = minter.mint(slot.request());
        let result = match current.as_ref().map(|r| r.token().expires_at()) {
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
        crate::ops::metrics::global()
            .token_mint(&label, result.as_ref().map(|_| ()).map_err(|e| e.reason()));
        match result {
            Ok(ready) if !slot.request().refreshes() => {
                // A time box: served until it expires, then the route
                // fails closed; no further IAM call until a reload makes
                // a new slot.
                tracing::info!(target_principal = %target, token = %ready.token(), "time-boxed token minted (refresh = false)");
                let ended = ready.token().expire_time();
                let expires_at = ready.token().expires_at();
                slot.store_fresh(ready);
                sleep_until(expires_at).await;
                tracing::warn!(target_principal = %target, "time box ended");
                slot.store_expired(Arc::new(CredentialError::TimeBoxEnded {
                    target: target.clone(),
                    ended,
                }));
                return;
            }
            Ok(ready) => {
                let delay = refresh_delay(ready.token().expires_in());
                tracing::info!(target_principal = %target, token = %ready.token(), "token minted");
                slot.store_fresh(ready.clone());
                current = Some(ready.clone());
                ever_minted = true;
                last_error = None;
                backoff.reset();
                sleep(delay).await;
                slot.store_refreshing(ready, None);
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
                retry_after_failure(&slot, &label, &mut current, e, ever_minted, &mut backoff)
                    .await;
            }
        }
    }
}

/// All token slots, one per distinct [`TokenRequest`]; routes that ask for
/// the same token share a slot (and a refresher). Refreshers run on the
/// runtime the registry was made on (the control plane's), whichever
/// thread asks for a slot. Dropping the registry stops the refreshers.
///
/// Slots are kept for the life of the registry, except those only ever
/// asked for with [`Registry::on_demand`] (the metadata endpoint's):
/// [`Registry::remove`] releases those, and refuses every other.
pub struct Registry {
    minter: Arc<dyn Mint>,
    runtime: Handle,
    slots: Mutex<HashMap<TokenRequest, Entry>>,
    /// Slots of tokens downscoped to an access boundary, over these.
    downscoped: Arc<Downscoped>,
}

struct Entry {
    slot: Slot,
    refresher: AbortHandle,
    /// Handed out by [`Registry::slot`] (a route, the metadata default
    /// token, a warm-up) at least once: such a holder may use the slot
    /// for as long as it lives, so it is never removed. Set under the
    /// registry's lock, the lock [`Registry::remove`] checks it under.
    kept: bool,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.slots()).finish()
    }
}

impl Registry {
    /// A registry whose slots mint with `minter`, their refreshers on the
    /// current Tokio runtime.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn new(minter: Arc<dyn Mint>) -> Registry {
        Registry {
            downscoped: Arc::new(Downscoped::new(minter.clone(), Handle::current())),
            minter,
            runtime: Handle::current(),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The slot for `request`, created (with its refresher) if it is the
    /// first ask, and kept for the life of the registry. With `warm`, the
    /// first mint starts now instead of on the first [`Slot::load`].
    pub fn slot(&self, request: TokenRequest, warm: bool) -> Slot {
        let slot = self.entry(request, true);
        if warm {
            slot.start();
        }
        slot
    }

    /// The slot for `request` for a caller that will give it back with
    /// [`Registry::remove`] when it is no longer used (the metadata
    /// endpoint's tokens for scopes and audiences that clients ask for).
    /// A slot that [`Registry::slot`] handed out stays kept.
    pub(crate) fn on_demand(&self, request: TokenRequest) -> Slot {
        self.entry(request, false)
    }

    fn entry(&self, request: TokenRequest, keep: bool) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = slots.get_mut(&request) {
            // An ended time box (`refresh = false`) is minted anew by the
            // reload that asks for it again; its refresher has returned.
            if request.refreshes() || !e.refresher.is_finished() {
                e.kept |= keep;
                return e.slot.clone();
            }
        }
        let slot = Slot::new(request.clone());
        let task = self
            .runtime
            .spawn(refresher(slot.clone(), self.minter.clone()));
        slots.insert(
            request,
            Entry {
                slot: slot.clone(),
                refresher: task.abort_handle(),
                kept: keep,
            },
        );
        slot
    }

    /// Removes the slot for `request` and stops its refresher, if it was
    /// only ever handed out by [`Registry::on_demand`]; returns whether it
    /// was removed. A slot that a route (or anything else that asked with
    /// [`Registry::slot`]) holds is never removed: both the check and
    /// every hand-out happen under the registry's lock, so a route either
    /// got the slot first (and it stays) or gets a new one afterwards.
    /// Whoever still holds a clone of a removed slot gets an error from
    /// it, never a token that is no longer refreshed.
    pub(crate) fn remove(&self, request: &TokenRequest) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.get(request).is_none_or(|e| e.kept) {
            return false;
        }
        let Some(e) = slots.remove(request) else {
            return false;
        };
        drop(slots);
        e.refresher.abort();
        e.slot.store_expired(Arc::new(CredentialError::Released {
            target: request.target_principal().to_owned(),
        }));
        true
    }

    /// How many downscoped slots (`access_boundary`) exist.
    pub fn downscoped_slots(&self) -> usize {
        self.downscoped.len()
    }

    /// Every slot, for health and metrics.
    pub fn slots(&self) -> Vec<Slot> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.values().map(|e| e.slot.clone()).collect()
    }
}

impl SlotSource for Registry {
    fn slot(&self, request: TokenRequest, warm: bool) -> Slot {
        Registry::slot(self, request, warm)
    }

    fn downscoper(&self) -> Arc<dyn Downscoper> {
        self.downscoped.clone()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let slots = self.slots.get_mut().unwrap_or_else(|p| p.into_inner());
        for e in slots.values() {
            e.refresher.abort();
        }
        self.downscoped.stop();
    }
}

#[cfg(test)]
mod tests;
