//! Downscoped slots on Tokio's paused clock, with a scripted minter and
//! STS: shared per (base, boundary), exchanged again when the base
//! refreshes, a failed exchange keeps the valid token, released when no
//! per-bucket table holds them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::*;
use crate::control::tokens::tests::Logs;
use crate::control::tokens::{Registry, RETRY_FLOOR};
use crate::google::slot::{SlotStatus, Unavailable};
use crate::google::Token;
use crate::policy::SlotSource;

/// Mints `base-N` valid for `lifetime`, or fails with IAM's 403 while
/// `iam_down` is set; downscopes `base-N` to `down-K-of-base-N` (expiring
/// with it; or `sts_shorter` before it, `sts_longer` after it, at most
/// `sts_max` from the exchange), or fails with STS's 503 while `sts_down`
/// is set.
struct Scripted {
    lifetime: Duration,
    mints: AtomicUsize,
    exchanges: AtomicUsize,
    iam_down: Mutex<bool>,
    sts_down: Mutex<bool>,
    sts_shorter: Mutex<Duration>,
    sts_longer: Mutex<Duration>,
    sts_max: Mutex<Duration>,
    /// When each exchange started.
    calls: Mutex<Vec<Instant>>,
}

const DENIED: &str = "Permission 'iam.serviceAccounts.getAccessToken' denied.";

/// How long the scripted STS takes to answer.
const LATENCY: Duration = Duration::from_millis(20);

impl Mint for Scripted {
    fn mint<'a>(
        &'a self,
        req: &'a TokenRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send + 'a>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if *self.iam_down.lock().unwrap() {
                return Err(CredentialError::Iam {
                    target: req.target_principal().to_owned(),
                    status: 403,
                    message: DENIED.to_owned(),
                });
            }
            let n = self.mints.fetch_add(1, Ordering::SeqCst);
            Ok(Token::new(format!("base-{n}"), self.lifetime))
        })
    }

    fn downscope<'a>(
        &'a self,
        _req: &'a TokenRequest,
        base: &'a Token,
        _boundary: &'a AccessBoundary,
    ) -> Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send + 'a>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(Instant::now());
            tokio::time::sleep(LATENCY).await;
            let k = self.exchanges.fetch_add(1, Ordering::SeqCst);
            if *self.sts_down.lock().unwrap() {
                return Err(CredentialError::Unavailable {
                    endpoint: "sts.googleapis.com".into(),
                    attempts: 3,
                    message: "HTTP 503: The service is currently unavailable.".into(),
                });
            }
            let lifetime = base
                .expires_in()
                .saturating_sub(*self.sts_shorter.lock().unwrap())
                .min(*self.sts_max.lock().unwrap())
                + *self.sts_longer.lock().unwrap();
            Ok(Token::new(
                format!("down-{k}-of-{}", base.expose_secret()),
                lifetime,
            ))
        })
    }
}

fn setup(lifetime: Duration) -> (Arc<Scripted>, Registry, Slot) {
    let minter = Arc::new(Scripted {
        lifetime,
        mints: AtomicUsize::new(0),
        exchanges: AtomicUsize::new(0),
        iam_down: Mutex::new(false),
        sts_down: Mutex::new(false),
        sts_shorter: Mutex::new(Duration::ZERO),
        sts_longer: Mutex::new(Duration::ZERO),
        sts_max: Mutex::new(Duration::MAX),
        calls: Mutex::new(Vec::new()),
    });
    let registry = Registry::new(minter.clone());
    let request = TokenRequest::access_token(
        "shared@p.iam.gserviceaccount.com",
        &[],
        &[],
        Duration::from_secs(3600),
    )
    .unwrap();
    let base = registry.slot(request, false);
    (minter, registry, base)
}

fn boundary(bucket: &str) -> Arc<AccessBoundary> {
    Arc::new(
        AccessBoundary::from_json(&format!(
            r#"{{"accessBoundary":{{"accessBoundaryRules":[{{"availableResource":"//storage.googleapis.com/projects/_/buckets/{bucket}","availablePermissions":["inRole:roles/storage.objectViewer"]}}]}}}}"#
        ))
        .unwrap(),
    )
}

fn bearer(slot: &Slot) -> String {
    slot.load().unwrap().to_str().unwrap().to_owned()
}

#[tokio::test(start_paused = true)]
async fn shared_per_pair_and_exchanged_again_when_the_base_refreshes() {
    let (minter, registry, base) = setup(Duration::from_secs(40));
    let down = registry.downscoper();
    let a = down.slot(&base, boundary("a-bucket"), true);
    let again = down.slot(&base, boundary("a-bucket"), true);
    let b = down.slot(&base, boundary("b-bucket"), true);
    assert!(matches!(a.load(), Err(Unavailable::Minting)));
    assert_eq!(
        a.get().await.unwrap().to_str().unwrap(),
        "Bearer down-0-of-base-0"
    );
    // The same pair is the same slot: no second exchange.
    assert_eq!(bearer(&again), "Bearer down-0-of-base-0");
    b.get().await.unwrap();
    // Once per base token: nothing more until the base refreshes.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(minter.exchanges.load(Ordering::SeqCst), 2);
    assert_eq!(minter.mints.load(Ordering::SeqCst), 1);
    // The base refreshes at 75% of 40 s (minus jitter, so by 30 s); the
    // downscoped tokens follow it at once, before the old ones expire, and
    // never lapse meanwhile.
    for _ in 0..35 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(a.load().is_ok());
    }
    assert!(bearer(&a).ends_with("-of-base-1"), "{}", bearer(&a));
    assert!(bearer(&b).ends_with("-of-base-1"), "{}", bearer(&b));
    assert_eq!(registry.downscoped_slots(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_exchange_serves_the_valid_token_then_fails_with_the_cause() {
    let (minter, registry, base) = setup(Duration::from_secs(40));
    let a = registry
        .downscoper()
        .slot(&base, boundary("a-bucket"), true);
    a.get().await.unwrap();
    *minter.sts_down.lock().unwrap() = true;
    // Across the base's refresh (about 30 s) the old downscoped token
    // keeps serving, with STS's error as the last one.
    tokio::time::sleep(Duration::from_secs(36)).await;
    assert_eq!(bearer(&a), "Bearer down-0-of-base-0");
    assert!(minter.exchanges.load(Ordering::SeqCst) >= 2);
    let last = a.last_error().expect("the failed exchange").to_string();
    assert!(last.contains("sts.googleapis.com"), "{last}");
    // At its expiry (the base's), the slot fails closed with the cause.
    tokio::time::sleep(Duration::from_secs(5)).await;
    match a.load() {
        Err(Unavailable::Failed(e)) => {
            let e = e.to_string();
            assert!(
                e.contains("expired") && e.contains("The service is currently unavailable."),
                "{e}"
            );
        }
        other => panic!("still serving: {other:?}"),
    }
    // STS back: the retry (backoff) exchanges the base's current token.
    *minter.sts_down.lock().unwrap() = false;
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(!bearer(&a).ends_with("-of-base-0"), "{}", bearer(&a));
}

#[tokio::test(start_paused = true)]
async fn per_bucket_slots_are_released_by_their_last_holder_kept_ones_never() {
    let (_minter, registry, base) = setup(Duration::from_secs(3600));
    let down = registry.downscoper();
    let held = down.slot(&base, boundary("a-bucket"), false);
    down.slot(&base, boundary("a-bucket"), false);
    held.get().await.unwrap();
    down.release(&base, &boundary("a-bucket"));
    assert!(held.load().is_ok(), "one holder is left");
    down.release(&base, &boundary("a-bucket"));
    assert!(matches!(held.load(), Err(Unavailable::Failed(_))));
    assert_eq!(registry.downscoped_slots(), 0);
    let kept = down.slot(&base, boundary("b-bucket"), true);
    down.slot(&base, boundary("b-bucket"), false);
    down.release(&base, &boundary("b-bucket"));
    down.release(&base, &boundary("b-bucket"));
    kept.get().await.unwrap();
    assert_eq!(registry.downscoped_slots(), 1);
}

/// STS fails from the base's refresh (about 5 minutes before the
/// downscoped token expires with the old base token) until 10 s before
/// that expiry. The exchange is retried as a slot's refresh is: never more
/// than a tenth of the time left apart (or the floor), so STS coming back
/// is seen within about a second and readers never see a gap. (Before,
/// the downscoped refresher kept its own copy of the retry loop whose
/// backoff grew to 15–30 s whatever the time left.)
#[tokio::test(start_paused = true)]
async fn exchange_retries_are_capped_by_the_time_left() {
    let ms = Duration::from_millis;
    let (minter, registry, base) = setup(Duration::from_secs(3600));
    let a = registry
        .downscoper()
        .slot(&base, boundary("a-bucket"), true);
    a.get().await.unwrap();
    let first = bearer(&a);
    let expiry = Instant::now() + a.expires_in().unwrap();
    *minter.sts_down.lock().unwrap() = true;
    while Instant::now() < expiry - Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(bearer(&a), first);
    }
    *minter.sts_down.lock().unwrap() = false;
    let calls = minter.calls.lock().unwrap().clone();
    let failed = &calls[1..];
    // The base refreshes 5–6 minutes before expiry; from then on the
    // exchange fails and is retried.
    assert!(failed[0] >= expiry - Duration::from_secs(360), "{failed:?}");
    assert!(failed.len() >= 20, "{failed:?}");
    for w in failed.windows(2) {
        let gap = w[1] - w[0];
        let left = expiry - (w[0] + LATENCY);
        // Tokio's timer fires on whole milliseconds, rounding up.
        let most = LATENCY + (left / 10).max(RETRY_FLOOR) + ms(1);
        assert!(gap <= most, "{gap:?} > {most:?} with {left:?} left");
    }
    // A tenth of 10 s, plus the exchange.
    tokio::time::sleep_until(expiry - ms(8900)).await;
    assert!(bearer(&a).ends_with("-of-base-1"), "{}", bearer(&a));
    while Instant::now() < expiry + Duration::from_secs(5) {
        tokio::time::sleep(ms(100)).await;
        a.load().unwrap_or_else(|e| panic!("gap in service: {e}"));
    }
    assert!(a.last_error().is_none());
}

/// Dropping the registry stops the downscoped slots' refreshers too: no
/// exchange, and no refresher left waiting on a base slot nobody renews.
#[tokio::test(start_paused = true)]
async fn dropping_the_registry_stops_the_downscoped_refreshers() {
    let (minter, registry, base) = setup(Duration::from_secs(40));
    let a = registry
        .downscoper()
        .slot(&base, boundary("a-bucket"), true);
    a.get().await.unwrap();
    drop(registry);
    let exchanges = minter.exchanges.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(minter.exchanges.load(Ordering::SeqCst), exchanges);
}

/// STS may make a downscoped token shorter-lived than its base: it is
/// exchanged again before it expires, when a slot would refresh it (at
/// 75% of a short life, less up to a fifth of the margin), not when the
/// base refreshes or the token runs out; readers never see a gap.
#[tokio::test(start_paused = true)]
async fn a_token_sts_made_shorter_lived_is_exchanged_again_before_it_expires() {
    let secs = Duration::from_secs;
    let (minter, registry, base) = setup(secs(3600));
    *minter.sts_max.lock().unwrap() = secs(600);
    let a = registry
        .downscoper()
        .slot(&base, boundary("a-bucket"), true);
    a.get().await.unwrap();
    let first = bearer(&a);
    for _ in 0..700 {
        tokio::time::sleep(secs(1)).await;
        a.load().unwrap_or_else(|e| panic!("gap in service: {e}"));
    }
    let calls = minter.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    // 600 s less 150 s (and up to 30 s of jitter), plus the exchange.
    let second = calls[1] - calls[0];
    assert!(second >= secs(420) && second <= secs(451), "{second:?}");
    assert_ne!(bearer(&a), first);
    assert!(bearer(&a).ends_with("-of-base-0"), "{}", bearer(&a));
    assert_eq!(minter.mints.load(Ordering::SeqCst), 1);
}

/// A downscoped token that expires no more than a second before its base
/// is not exchanged early: it waits for the base's refresh (here IAM is
/// down, so there is none). At its expiry it is no longer served, and the
/// slot says so while the base's token is exchanged again.
#[tokio::test(start_paused = true)]
async fn a_token_a_second_short_of_its_base_waits_for_the_base() {
    let ms = Duration::from_millis;
    let (minter, registry, base) = setup(Duration::from_secs(3600));
    *minter.sts_shorter.lock().unwrap() = Duration::from_secs(1);
    let a = registry
        .downscoper()
        .slot(&base, boundary("a-bucket"), true);
    a.get().await.unwrap();
    let first = bearer(&a);
    *minter.iam_down.lock().unwrap() = true;
    let expiry = Instant::now() + a.expires_in().unwrap();
    let base_expiry = Instant::now() + base.expires_in().unwrap();
    assert_eq!(base_expiry - expiry, Duration::from_secs(1));
    tokio::time::sleep_until(expiry - ms(1)).await;
    assert_eq!(bearer(&a), first);
    assert_eq!(minter.exchanges.load(Ordering::SeqCst), 1);
    assert_eq!(base.status(), SlotStatus::Refreshing);
    // Expired during the next exchange (20 ms), which starts at once.
    tokio::time::sleep_until(expiry + ms(10)).await;
    match a.load() {
        Err(Unavailable::Failed(e)) => assert!(e.is_expired(), "{e:?}"),
        other => panic!("still serving: {other:?}"),
    }
    assert_eq!(minter.calls.lock().unwrap().len(), 2);
}

/// A downscoped token can outlive its base by a little (its monotonic
/// expiry comes from STS's answer, read later than the base's): when the
/// base expires for good (IAM down), the downscoped token is still served,
/// with the base's failure as the last error, until its own expiry; then
/// the slot fails closed with that cause.
#[tokio::test(start_paused = true)]
async fn a_token_outliving_its_base_is_served_to_its_own_expiry() {
    let ms = Duration::from_millis;
    let (minter, registry, base) = setup(Duration::from_secs(3600));
    *minter.sts_longer.lock().unwrap() = Duration::from_secs(5);
    let a = registry
        .downscoper()
        .slot(&base, boundary("a-bucket"), true);
    a.get().await.unwrap();
    let first = bearer(&a);
    *minter.iam_down.lock().unwrap() = true;
    let expiry = Instant::now() + a.expires_in().unwrap();
    let base_expiry = Instant::now() + base.expires_in().unwrap();
    assert_eq!(expiry - base_expiry, Duration::from_secs(5));
    tokio::time::sleep_until(base_expiry + ms(1)).await;
    assert!(matches!(base.load(), Err(Unavailable::Failed(_))));
    assert_eq!(bearer(&a), first);
    assert_eq!(a.status(), SlotStatus::Refreshing);
    let e = a.last_error().expect("the base's failure");
    assert!(e.is_expired() && e.iam_message() == Some(DENIED), "{e:?}");
    tokio::time::sleep_until(expiry - ms(1)).await;
    assert_eq!(bearer(&a), first);
    tokio::time::sleep_until(expiry + ms(1)).await;
    match a.load() {
        Err(Unavailable::Failed(e)) => {
            assert!(e.is_expired() && e.iam_message() == Some(DENIED), "{e:?}");
        }
        other => panic!("still serving: {other:?}"),
    }
    assert_eq!(minter.exchanges.load(Ordering::SeqCst), 1);
}

/// A failed exchange whose cause is new is a warning; a retry that fails
/// the same way again is a debug line, so an STS outage does not flood the
/// log.
#[tokio::test(start_paused = true)]
async fn a_failed_exchange_is_warned_once_and_its_repeats_are_debug_lines() {
    let (logs, _guard) = Logs::capture();
    let (minter, registry, base) = setup(Duration::from_secs(3600));
    *minter.sts_down.lock().unwrap() = true;
    let a = registry
        .downscoper()
        .slot(&base, boundary("a-bucket"), true);
    assert!(a.get().await.is_err());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let exchanges = minter.exchanges.load(Ordering::SeqCst);
    assert!(exchanges >= 4, "{exchanges} exchanges");
    let text = logs.text();
    assert_eq!(
        logs.count("WARN", "STS exchange failed target_principal"),
        1,
        "{text}"
    );
    assert_eq!(
        logs.count("DEBUG", "STS exchange failed again target_principal"),
        exchanges - 1,
        "{text}"
    );
}

/// IAM down until the base token expires: the downscoped token (expiring
/// with it) is served to its last instant, then the slot fails closed
/// with IAM's refusal as the cause; once IAM is back, the base's new token
/// is exchanged.
#[tokio::test(start_paused = true)]
async fn when_the_base_expires_the_downscoped_slot_fails_with_its_cause() {
    let ms = Duration::from_millis;
    let (minter, registry, base) = setup(Duration::from_secs(3600));
    let a = registry
        .downscoper()
        .slot(&base, boundary("a-bucket"), true);
    a.get().await.unwrap();
    let first = bearer(&a);
    *minter.iam_down.lock().unwrap() = true;
    let expiry = Instant::now() + a.expires_in().unwrap();
    assert_eq!(Instant::now() + base.expires_in().unwrap(), expiry);
    tokio::time::sleep_until(expiry - ms(1)).await;
    assert_eq!(bearer(&a), first);
    tokio::time::sleep_until(expiry + ms(1)).await;
    match a.load() {
        Err(Unavailable::Failed(e)) => {
            assert!(e.is_expired() && e.iam_message() == Some(DENIED), "{e:?}");
        }
        other => panic!("still serving: {other:?}"),
    }
    assert_eq!(minter.calls.lock().unwrap().len(), 1);
    *minter.iam_down.lock().unwrap() = false;
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(bearer(&a).ends_with("-of-base-1"), "{}", bearer(&a));
    assert_eq!(minter.calls.lock().unwrap().len(), 2);
}

/// A time box (`refresh = false`) ends, and the reload that mints it anew
/// makes a new base slot: the downscoped slot for the same request and
/// boundary exchanges the new box's token, not the ended one's.
#[tokio::test(start_paused = true)]
async fn a_time_box_minted_anew_by_a_reload_is_exchanged_again() {
    let (minter, registry, _) = setup(Duration::from_secs(40));
    let request = TokenRequest::access_token(
        "boxed@p.iam.gserviceaccount.com",
        &[],
        &[],
        Duration::from_secs(3600),
    )
    .unwrap()
    .time_boxed();
    let down = registry.downscoper();
    let base = registry.slot(request.clone(), false);
    let d = down.slot(&base, boundary("a-bucket"), true);
    assert_eq!(
        d.get().await.unwrap().to_str().unwrap(),
        "Bearer down-0-of-base-0"
    );
    // The box ends, with no refresh: both slots stop serving.
    tokio::time::sleep(Duration::from_secs(45)).await;
    assert!(base.load().is_err());
    assert!(d.load().is_err());
    assert_eq!(minter.mints.load(Ordering::SeqCst), 1);
    // The reload asks again: a new box, and its downscoped token.
    let base = registry.slot(request, false);
    let d = down.slot(&base, boundary("a-bucket"), true);
    let got = tokio::time::timeout(Duration::from_secs(5), d.get())
        .await
        .expect("the downscoped slot follows the new box")
        .unwrap();
    assert_eq!(got.to_str().unwrap(), "Bearer down-1-of-base-1");
    assert_eq!(registry.downscoped_slots(), 1);
}
