//! Downscoped token slots (`access_boundary`): one per (base slot,
//! rendered boundary), shared by every route asking for the pair, filled
//! by a refresher that exchanges the base slot's token at STS. It
//! exchanges again whenever the base slot serves a new token, and its
//! token expires with the base's. An STS failure is handled like an IAM
//! one: a still-valid downscoped token keeps being served while the
//! exchange is retried; at its expiry the slot fails closed with the
//! cause.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::AbortHandle;
use tokio::time::{sleep_until, Instant};

use super::{refresh_delay, retry_after_failure, RETRY_BASE, RETRY_MAX};
use crate::google::slot::{Ready, Slot};
use crate::google::{AccessBoundary, Backoff, CredentialError, Mint, TokenRequest};
use crate::policy::boundary::Downscoper;

type Key = (TokenRequest, Arc<AccessBoundary>);

struct Entry {
    slot: Slot,
    /// The slot whose tokens this one exchanges.
    base: Slot,
    refresher: AbortHandle,
    /// Asked for by a route's fixed boundary: kept for the registry's life.
    kept: bool,
    /// Holders that asked with `keep = false` (per-bucket tables) and have
    /// not released it.
    users: usize,
}

/// The downscoped slots of one registry; their refreshers run on the
/// control plane's runtime.
pub(crate) struct Downscoped {
    minter: Arc<dyn Mint>,
    runtime: Handle,
    slots: Mutex<HashMap<Key, Entry>>,
}

impl Downscoped {
    pub(crate) fn new(minter: Arc<dyn Mint>, runtime: Handle) -> Downscoped {
        Downscoped {
            minter,
            runtime,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// How many downscoped slots exist (kept or in use).
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Stops every refresher.
    pub(crate) fn stop(&self) {
        for e in self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            e.refresher.abort();
        }
    }
}

impl Downscoped {
    /// A new downscoped slot for `base` and `boundary`, and its refresher.
    fn spawn(&self, base: &Slot, boundary: &Arc<AccessBoundary>) -> (Slot, AbortHandle) {
        let slot = Slot::new(base.request().clone());
        let task = self.runtime.spawn(refresher(
            slot.clone(),
            base.clone(),
            boundary.clone(),
            self.minter.clone(),
        ));
        (slot, task.abort_handle())
    }
}

impl Downscoper for Downscoped {
    fn slot(&self, base: &Slot, boundary: Arc<AccessBoundary>, keep: bool) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let key = (base.request().clone(), boundary);
        let e = slots.entry(key.clone()).or_insert_with(|| {
            let (slot, refresher) = self.spawn(base, &key.1);
            Entry {
                slot,
                base: base.clone(),
                refresher,
                kept: false,
                users: 0,
            }
        });
        if !e.base.same(base) {
            // Another slot for the same request: an ended time box
            // (`refresh = false`) that a reload minted anew. Exchange that
            // one's tokens; the old refresher would wait on the ended box
            // forever.
            e.refresher.abort();
            (e.slot, e.refresher) = self.spawn(base, &key.1);
            e.base = base.clone();
        }
        e.kept |= keep;
        e.users += usize::from(!keep);
        e.slot.clone()
    }

    fn release(&self, base: &Slot, boundary: &AccessBoundary) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let key = (base.request().clone(), Arc::new(boundary.clone()));
        let Some(e) = slots.get_mut(&key) else {
            return;
        };
        e.users = e.users.saturating_sub(1);
        if e.kept || e.users > 0 {
            return;
        }
        if let Some(e) = slots.remove(&key) {
            drop(slots);
            e.refresher.abort();
            e.slot.store_expired(Arc::new(CredentialError::Released {
                target: base.request().target_principal().to_owned(),
            }));
        }
    }
}

/// Completes at `at`, or never.
async fn until(at: Option<Instant>) {
    match at {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn refresher(slot: Slot, base: Slot, boundary: Arc<AccessBoundary>, minter: Arc<dyn Mint>) {
    slot.first_use().await;
    let request = base.request().clone();
    let target = request.target_principal().to_owned();
    // One label for every boundary over the same base token: a `{bucket}`
    // route has a slot per bucket, and a label per bucket would be
    // unbounded.
    let label = format!("{request} downscoped");
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
    let mut current: Option<Ready> = None;
    let mut last_error: Option<Arc<CredentialError>> = None;
    let mut ever = false;
    let expire = |last_error: &Option<Arc<CredentialError>>| {
        slot.store_expired(Arc::new(CredentialError::Expired {
            target: target.clone(),
            cause: last_error.clone(),
        }));
    };
    // Keeps serving `current` while it is valid, with `e` as the last
    // error; otherwise fails with it.
    let fail = |current: &mut Option<Ready>, e: Arc<CredentialError>, ever: bool| match current {
        Some(r) if r.token().expires_at() > Instant::now() => {
            slot.store_refreshing(r.clone(), Some(e));
        }
        _ => {
            *current = None;
            if ever {
                expire(&Some(e));
            } else {
                slot.store_expired(e);
            }
        }
    };
    let expiry = |current: &Option<Ready>| current.as_ref().map(|r| r.token().expires_at());
    loop {
        // The base token to exchange; registered for the base's next
        // change before looking, so none is missed.
        let changed = base.changed();
        let base_token = match base.current_token() {
            Some(t) if !t.expires_in().is_zero() => t,
            // The base token's last instant: its refresher reports the
            // expiry (or a new token) now. `get()` would still return
            // this one, and looking again at once would spin.
            Some(_) => {
                changed.await;
                continue;
            }
            None => {
                match base.get().await {
                    Ok(_) => continue,
                    Err(e) => {
                        last_error = Some(e.clone());
                        fail(&mut current, e, ever);
                        // The base slot retries on its own; try again when
                        // it changes, or fail when ours expires.
                        tokio::select! {
                            () = changed => {}
                            () = until(expiry(&current)) => {
                                current = None;
                                expire(&last_error);
                            }
                        }
                    }
                }
                continue;
            }
        };
        drop(changed);
        let result = {
            let exchange = minter.downscope(&request, &base_token, &boundary);
            tokio::pin!(exchange);
            tokio::select! {
                r = &mut exchange => r,
                () = until(expiry(&current)) => {
                    current = None;
                    expire(&last_error);
                    exchange.await
                }
            }
        };
        let result = result.and_then(Ready::new);
        crate::ops::metrics::global()
            .token_mint(&label, result.as_ref().map(|_| ()).map_err(|e| e.reason()));
        match result {
            Ok(ready) => {
                tracing::info!(target_principal = %target, boundary = %boundary.resources(), token = %ready.token(), "downscoped token exchanged");
                slot.store_fresh(ready.clone());
                current = Some(ready.clone());
                ever = true;
                last_error = None;
                backoff.reset();
                // Until the base serves another token (it refreshed), or
                // ours (which expires with that base) runs out; a token
                // STS made shorter-lived than its base is exchanged again
                // before it expires, as a slot refreshes.
                let early = (ready.token().expires_at() + Duration::from_secs(1)
                    < base_token.expires_at())
                .then(|| Instant::now() + refresh_delay(ready.token().expires_in()));
                loop {
                    let changed = base.changed();
                    let same = base
                        .current_token()
                        .is_some_and(|t| t.expose_secret() == base_token.expose_secret());
                    if !same {
                        break;
                    }
                    tokio::select! {
                        () = changed => {}
                        () = until(early) => break,
                        () = sleep_until(ready.token().expires_at()) => break,
                    }
                }
                match &current {
                    Some(r) if r.token().expires_at() > Instant::now() => {
                        slot.store_refreshing(r.clone(), None);
                    }
                    _ => {
                        current = None;
                        expire(&last_error);
                    }
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                let repeat = last_error
                    .as_ref()
                    .is_some_and(|prev| prev.to_string() == e.to_string());
                if repeat {
                    tracing::debug!(target_principal = %target, error = %e, "STS exchange failed again");
                } else {
                    tracing::warn!(target_principal = %target, boundary = %boundary.resources(), error = %e, "STS exchange failed");
                }
                last_error = Some(e.clone());
                // As a slot's refresh: the valid token keeps serving and
                // the retries come closer together as its expiry nears.
                retry_after_failure(&slot, &label, &mut current, e, ever, &mut backoff).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
