//! Slot schedule and state tests on Tokio's paused clock, with a scripted
//! minter instead of IAM.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::google::slot::{SlotStatus, Unavailable};
use crate::google::Token;

/// Mints `tok-N` valid for `lifetime`, or fails with IAM's 403 while
/// `failing` is set.
struct Scripted {
    lifetime: Duration,
    mints: AtomicUsize,
    failing: Mutex<bool>,
    latency: Duration,
}

impl Scripted {
    fn new(lifetime: Duration) -> Arc<Scripted> {
        Arc::new(Scripted {
            lifetime,
            mints: AtomicUsize::new(0),
            failing: Mutex::new(false),
            latency: Duration::from_millis(50),
        })
    }

    fn fail(&self, on: bool) {
        *self.failing.lock().unwrap() = on;
    }
}

const DENIED: &str =
    "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).";

impl Mint for Scripted {
    fn mint<'a>(
        &'a self,
        req: &'a TokenRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send + 'a>> {
        Box::pin(async move {
            tokio::time::sleep(self.latency).await;
            let n = self.mints.fetch_add(1, Ordering::SeqCst);
            if *self.failing.lock().unwrap() {
                return Err(CredentialError::Iam {
                    target: req.target_principal().to_owned(),
                    status: 403,
                    message: DENIED.to_owned(),
                });
            }
            Ok(Token::new(format!("tok-{n}"), self.lifetime))
        })
    }
}

fn request() -> TokenRequest {
    TokenRequest::access_token(
        "reader@p.iam.gserviceaccount.com",
        &[],
        &[],
        Duration::from_secs(3600),
    )
    .unwrap()
}

fn bearer(slot: &Slot) -> String {
    slot.load().unwrap().to_str().unwrap().to_owned()
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_loads_share_one_mint() {
    let minter = Scripted::new(Duration::from_secs(3600));
    let registry = Registry::new(minter.clone());
    let slot = registry.slot(request(), false);
    assert!(matches!(slot.load(), Err(Unavailable::Minting)));
    let waiters: Vec<_> = (0..100)
        .map(|_| {
            let s = registry.slot(request(), false);
            tokio::spawn(async move { s.get().await.map(|h| h.to_str().unwrap().to_owned()) })
        })
        .collect();
    for w in waiters {
        assert_eq!(w.await.unwrap().unwrap(), "Bearer tok-0");
    }
    assert_eq!(minter.mints.load(Ordering::SeqCst), 1);
    assert_eq!(registry.slots().len(), 1);
    assert!(slot.load().unwrap().is_sensitive());
}

#[tokio::test(start_paused = true)]
async fn nothing_is_minted_before_first_use_unless_warm() {
    let minter = Scripted::new(Duration::from_secs(3600));
    let registry = Registry::new(minter.clone());
    let cold = registry.slot(request(), false);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(minter.mints.load(Ordering::SeqCst), 0);
    assert_eq!(cold.status(), SlotStatus::Minting);

    let other = TokenRequest::id_token("inv@p.iam.gserviceaccount.com", &[], "https://svc.run.app")
        .unwrap();
    let warm = registry.slot(other, true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(warm.status(), SlotStatus::Fresh);
    assert_eq!(minter.mints.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_20s_token_is_refreshed_before_expiry_without_a_gap() {
    let minter = Scripted::new(Duration::from_secs(20));
    let registry = Registry::new(minter.clone());
    let slot = registry.slot(request(), true);
    slot.get().await.unwrap();
    let mut seen = vec![bearer(&slot)];
    // Read every 100 ms for two minutes of (paused) time: six lifetimes.
    for _ in 0..1200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let b = slot
            .load()
            .unwrap_or_else(|e| panic!("gap in service: {e}"));
        let b = b.to_str().unwrap().to_owned();
        if seen.last() != Some(&b) {
            seen.push(b);
        }
        assert!(slot.expires_in().unwrap() >= Duration::from_secs(2));
    }
    // Refreshed at 75% of the lifetime (minus jitter): 15–16 s apart.
    let mints = minter.mints.load(Ordering::SeqCst);
    assert!((8..=9).contains(&mints), "{mints} mints");
    assert_eq!(seen.len(), mints);
}

#[tokio::test(start_paused = true)]
async fn failed_refresh_serves_the_valid_token_then_reports_iam_error() {
    let minter = Scripted::new(Duration::from_secs(20));
    let registry = Registry::new(minter.clone());
    let slot = registry.slot(request(), true);
    slot.get().await.unwrap();
    let first = bearer(&slot);
    minter.fail(true);
    // Until the token's own expiry (20 s) readers keep getting it.
    for _ in 0..195 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(bearer(&slot), first);
    }
    assert_eq!(slot.status(), SlotStatus::Refreshing);
    assert!(
        minter.mints.load(Ordering::SeqCst) > 2,
        "refresh was retried"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    match slot.load() {
        Err(Unavailable::Failed(e)) => {
            assert!(e.is_expired() && e.is_permission_denied(), "{e}");
            let text = e.to_string();
            assert!(text.contains(DENIED), "{text}");
            assert!(text.contains("reader@p.iam.gserviceaccount.com"), "{text}");
        }
        other => panic!("expected the IAM error, got {other:?}"),
    }
    // Recovery: the next retry succeeds and service resumes.
    minter.fail(false);
    tokio::time::sleep(RETRY_MAX + Duration::from_secs(1)).await;
    assert!(slot.load().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_first_mint_failure_is_reported_to_waiters() {
    let minter = Scripted::new(Duration::from_secs(3600));
    minter.fail(true);
    let registry = Registry::new(minter.clone());
    let slot = registry.slot(request(), false);
    let err = slot.get().await.unwrap_err();
    assert!(err.iam_message() == Some(DENIED), "{err}");
}

#[tokio::test(start_paused = true)]
async fn debug_of_a_slot_never_shows_the_token() {
    let minter = Scripted::new(Duration::from_secs(3600));
    let registry = Registry::new(minter.clone());
    let slot = registry.slot(request(), true);
    let header = slot.get().await.unwrap();
    let secret = header
        .to_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned();
    assert_eq!(secret, "tok-0");
    for text in [
        format!("{slot:?}"),
        format!("{registry:?}"),
        format!("{header:?}"),
    ] {
        assert!(!text.contains(&secret), "{text}");
    }
    assert!(format!("{slot:?}").contains("redacted"));
}

#[tokio::test(start_paused = true)]
async fn only_slots_no_route_asked_for_are_removed_and_their_refreshers_stop() {
    let minter = Scripted::new(Duration::from_secs(20));
    let registry = Registry::new(minter.clone());
    let on_demand = registry.on_demand(request());
    on_demand.get().await.unwrap();
    assert!(registry.remove(&request()));
    assert!(registry.slots().is_empty());
    assert!(matches!(on_demand.load(), Err(Unavailable::Failed(_))));
    let mints = minter.mints.load(Ordering::SeqCst);
    sleep(Duration::from_secs(120)).await;
    assert_eq!(minter.mints.load(Ordering::SeqCst), mints);
    assert!(!registry.remove(&request()), "removed twice");

    // A route asks with `slot` before or after the endpoint: kept either way.
    let route = registry.slot(request(), false);
    assert!(!registry.remove(&request()));
    registry.on_demand(request());
    assert!(!registry.remove(&request()));
    route.get().await.unwrap();
    sleep(Duration::from_secs(120)).await;
    assert!(minter.mints.load(Ordering::SeqCst) > mints + 1);
    assert!(route.load().is_ok());
}

#[test]
fn refresh_delay_is_five_minutes_early_or_at_three_quarters() {
    for _ in 0..100 {
        let long = refresh_delay(Duration::from_secs(3600));
        assert!(long >= Duration::from_secs(3240) && long <= Duration::from_secs(3300));
        let short = refresh_delay(Duration::from_secs(20));
        assert!(short >= Duration::from_secs(14) && short <= Duration::from_secs(15));
        assert!(refresh_delay(Duration::from_millis(10)) >= Duration::from_millis(5));
    }
}

/// The metadata endpoint asks for slots from worker threads, each with a
/// runtime of its own that may stop while the slot lives: the refresher
/// must run on the registry's (the control plane's) runtime instead.
#[test]
fn a_slot_asked_for_on_another_thread_refreshes_on_the_registrys_runtime() {
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let minter = Scripted::new(Duration::from_secs(3600));
    let registry = Arc::new(control.block_on(async { Registry::new(minter.clone()) }));
    // A worker's own runtime, dropped right after asking: a refresher
    // spawned there would die with it (and outside any runtime, Tokio's
    // spawn panics).
    let slot = {
        let registry = registry.clone();
        std::thread::spawn(move || {
            let worker = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            worker.block_on(async { registry.slot(request(), true) })
        })
        .join()
        .unwrap()
    };
    let token = control.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), slot.get())
            .await
            .expect("the refresher runs although the asking runtime is gone")
    });
    assert_eq!(token.unwrap().to_str().unwrap(), "Bearer tok-0");
    assert_eq!(minter.mints.load(Ordering::SeqCst), 1);
}
