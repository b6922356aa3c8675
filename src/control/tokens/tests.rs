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
    /// When each mint started.
    calls: Mutex<Vec<Instant>>,
}

impl Scripted {
    fn new(lifetime: Duration) -> Arc<Scripted> {
        Arc::new(Scripted {
            lifetime,
            mints: AtomicUsize::new(0),
            failing: Mutex::new(false),
            latency: Duration::from_millis(50),
            calls: Mutex::new(Vec::new()),
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
            self.calls.lock().unwrap().push(Instant::now());
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
    request_for("reader@p.iam.gserviceaccount.com")
}

/// A request for `target`: a test that reads the process-wide metrics uses
/// a target (a slot label) of its own.
fn request_for(target: &str) -> TokenRequest {
    TokenRequest::access_token(target, &[], &[], Duration::from_secs(3600)).unwrap()
}

/// This slot's `token_refresh_retries_total`, from the process-wide metrics.
fn retries_of(slot: &Slot) -> u64 {
    let text = crate::ops::metrics::global().render(std::iter::empty());
    let line = format!(
        "impersonate_proxy_token_refresh_retries_total{{slot=\"{}\"}} ",
        slot.request()
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.parse().unwrap())
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
    // Never served, so not an expiry: the bare refusal.
    assert!(!err.is_expired(), "{err:?}");
    assert_eq!(slot.status(), SlotStatus::Expired);
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
    // The registry's Debug lists its slots (redacted).
    assert_eq!(format!("{registry:?}"), format!("[{slot:?}]"));
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
        let tiny = refresh_delay(Duration::from_millis(10));
        assert!(tiny >= Duration::from_micros(7000) && tiny <= Duration::from_micros(7500));
        assert_eq!(refresh_delay(Duration::ZERO), Duration::ZERO);
    }
}

#[test]
fn retry_delay_is_capped_by_a_tenth_of_the_time_left_with_a_floor() {
    let ms = Duration::from_millis;
    for _ in 0..1000 {
        // Early in a long life the backoff decides.
        assert_eq!(retry_delay(ms(500), Duration::from_secs(3600)), ms(500));
        assert_eq!(
            retry_delay(ms(30_000), Duration::from_secs(3600)),
            ms(30_000)
        );
        // Late, a tenth of the time left, less up to a quarter of jitter.
        let d = retry_delay(ms(30_000), Duration::from_secs(60));
        assert!(d >= ms(4500) && d <= ms(6000), "{d:?}");
        let d = retry_delay(ms(30_000), Duration::from_secs(10));
        assert!(d >= ms(750) && d <= ms(1000), "{d:?}");
        // Never under the floor on that account...
        assert_eq!(retry_delay(ms(30_000), Duration::from_secs(1)), RETRY_FLOOR);
        assert_eq!(retry_delay(ms(30_000), Duration::ZERO), RETRY_FLOOR);
        // ...but never later than the backoff asked either.
        assert_eq!(retry_delay(ms(100), Duration::from_secs(1)), ms(100));
    }
}

/// The refresh keeps failing from the first mint until ten seconds before
/// the token expires; when IAM answers again, the next retry is at most a
/// tenth of the time left away, so readers never see a gap. (Before issue
/// 21 the delay grew to 15–30 s whatever the time left, and most rounds
/// had a gap.)
#[tokio::test(start_paused = true)]
async fn an_outage_that_ends_ten_seconds_before_expiry_leaves_no_gap() {
    for round in 0..8 {
        let minter = Scripted::new(Duration::from_secs(3600));
        let registry = Registry::new(minter.clone());
        let slot = registry.slot(request(), true);
        slot.get().await.unwrap();
        let expiry = Instant::now() + slot.expires_in().unwrap();
        let first = bearer(&slot);
        minter.fail(true);
        while Instant::now() < expiry - Duration::from_secs(10) {
            sleep(Duration::from_secs(1)).await;
            assert_eq!(bearer(&slot), first, "round {round}");
        }
        minter.fail(false);
        // A tenth of 10 s, plus the mint.
        sleep_until(expiry - Duration::from_millis(8900)).await;
        assert_ne!(bearer(&slot), first, "round {round}: not refreshed yet");
        while Instant::now() < expiry + Duration::from_secs(5) {
            sleep(Duration::from_millis(100)).await;
            slot.load()
                .unwrap_or_else(|e| panic!("round {round}: gap in service: {e}"));
        }
        assert_eq!(slot.last_error().map(|e| e.to_string()), None);
    }
}

/// During an outage the refresher calls IAM at a measured pace: never a
/// hot loop, retries closer together as expiry nears but never closer than
/// the backoff or the floor allow (bar one last retry just before expiry),
/// then the widening backoff once the token is gone. Every failed mint is
/// counted in `token_refresh_retries_total` for the slot.
#[tokio::test(start_paused = true)]
async fn retries_during_an_outage_are_paced_by_the_time_left() {
    let ms = Duration::from_millis;
    let minter = Scripted::new(Duration::from_secs(20));
    let registry = Registry::new(minter.clone());
    let slot = registry.slot(request_for("paced@p.iam.gserviceaccount.com"), true);
    slot.get().await.unwrap();
    let expiry = Instant::now() + slot.expires_in().unwrap();
    minter.fail(true);
    sleep_until(expiry + Duration::from_secs(60)).await;
    let calls = minter.calls.lock().unwrap().clone();
    let failed = &calls[1..];
    let (before, after): (Vec<Instant>, Vec<Instant>) = failed.iter().partition(|t| **t < expiry);
    // The refresh starts at 75% of the lifetime (less jitter), 5–6 s left.
    // (Plus Tokio's 1 ms timer rounding.)
    assert!(before[0] >= expiry - ms(6000) && before[0] <= expiry - ms(5000) + ms(1));
    let mut short = 0;
    for w in before.windows(2) {
        let gap = w[1] - w[0];
        // The mint's 50 ms, then at most a tenth of what was left, or
        // the floor.
        let left = expiry - (w[0] + minter.latency);
        // Tokio's timer fires on whole milliseconds, rounding up: 1 ms of
        // slack.
        let most = minter.latency + (left / 10).max(RETRY_FLOOR) + ms(1);
        assert!(gap <= most, "{gap:?} > {most:?} with {left:?} left");
        assert!(gap >= minter.latency, "{gap:?}");
        if gap < minter.latency + ms(125) {
            short += 1;
        }
    }
    assert!(
        short <= 1,
        "{short} retries closer than the backoff: {before:?}"
    );
    assert!(before.len() <= 40, "{} calls in 6 s", before.len());
    // One last retry just before expiry.
    let last = *before.last().unwrap();
    assert!(
        last >= expiry - LAST_RETRY_LEAD - minter.latency
            && last <= expiry - LAST_RETRY_LEAD + ms(1),
        "last retry {:?} before expiry",
        expiry - last
    );
    // After expiry, the backoff keeps widening: a few calls a minute.
    assert!(
        (2..=8).contains(&after.len()),
        "{} calls: {after:?}",
        after.len()
    );
    for w in after.windows(2) {
        assert!(w[1] - w[0] >= ms(1000), "{:?}", w[1] - w[0]);
    }
    assert_eq!(retries_of(&slot), failed.len() as u64);
    // Still reported as an expiry with IAM's refusal as its cause.
    let e = slot.last_error().unwrap();
    assert!(e.is_expired() && e.iam_message() == Some(DENIED), "{e:?}");
}

/// Collects what a `tracing` subscriber writes.
#[derive(Clone, Default)]
pub(super) struct Logs(Arc<Mutex<Vec<u8>>>);

/// Holds a capture: its subscriber, a second one that only counts, and the
/// lock that keeps other captures out meanwhile.
pub(super) struct Capturing {
    _default: tracing::subscriber::DefaultGuard,
    _second: tracing::Dispatch,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

impl Logs {
    /// Captures this thread's `tracing` events, debug and up, until the
    /// guard is dropped (a paused-clock test's tasks run on its thread).
    ///
    /// `tracing` caches, process-wide, whether each callsite is wanted.
    /// While a single subscriber exists it asks only the subscriber of the
    /// thread that first reaches the callsite: a test on another thread,
    /// with none, reaching one of this module's debug lines first would
    /// switch it off for this capture too (seen in CI: 0 of 5 repeats
    /// logged). A second subscriber, registered and kept while the capture
    /// lasts, makes `tracing` ask every live subscriber instead (registering
    /// it rebuilds the caches). One capture at a time.
    pub(super) fn capture() -> (Logs, Capturing) {
        static ONE: Mutex<()> = Mutex::new(());
        let one = ONE.lock().unwrap_or_else(|p| p.into_inner());
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let default = tracing::subscriber::set_default(subscriber);
        let second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        (
            logs,
            Capturing {
                _default: default,
                _second: second,
                _one_at_a_time: one,
            },
        )
    }

    /// How many lines so far have `level` and `what` in them.
    pub(super) fn count(&self, level: &str, what: &str) -> usize {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|l| l.contains(level) && l.contains(what))
            .count()
    }

    pub(super) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A failure whose cause is new is a warning; a retry that fails the same
/// way again is a debug line, so an outage does not flood the log.
#[tokio::test(start_paused = true)]
async fn a_failure_is_warned_once_and_its_repeats_are_debug_lines() {
    let (logs, _guard) = Logs::capture();
    let minter = Scripted::new(Duration::from_secs(3600));
    minter.fail(true);
    let registry = Registry::new(minter.clone());
    let slot = registry.slot(request_for("logged@p.iam.gserviceaccount.com"), true);
    sleep(Duration::from_secs(10)).await;
    let text = logs.text();
    let lines = |level: &str, what: &str| logs.count(level, what);
    let mints = minter.mints.load(Ordering::SeqCst);
    assert!(mints >= 4, "{mints} mints");
    assert_eq!(
        lines("WARN", "token mint failed target_principal"),
        1,
        "{text}"
    );
    assert_eq!(
        lines("DEBUG", "token mint failed again target_principal"),
        mints - 1,
        "{text}"
    );
    assert_eq!(slot.status(), SlotStatus::Expired);
}

/// What the slot says in each state: fresh (no error), refreshing with the
/// last failure, served to the last instant of the token's life, then
/// failed closed with the cause; and fresh again when IAM answers.
#[tokio::test(start_paused = true)]
async fn the_token_is_served_to_its_last_instant_and_no_longer() {
    let ms = Duration::from_millis;
    let minter = Scripted::new(Duration::from_secs(20));
    let registry = Registry::new(minter.clone());
    let slot = registry.slot(request(), true);
    slot.get().await.unwrap();
    assert_eq!(slot.status(), SlotStatus::Fresh);
    assert!(slot.last_error().is_none());
    let expiry = Instant::now() + slot.expires_in().unwrap();
    let first = bearer(&slot);
    minter.fail(true);
    sleep_until(expiry - ms(3000)).await;
    assert_eq!(slot.status(), SlotStatus::Refreshing);
    let e = slot.last_error().expect("the failed refresh's error");
    assert!(!e.is_expired() && e.iam_message() == Some(DENIED), "{e:?}");
    sleep_until(expiry - ms(1)).await;
    assert_eq!(bearer(&slot), first);
    assert_eq!(slot.status(), SlotStatus::Refreshing);
    sleep_until(expiry + ms(1)).await;
    assert_eq!(slot.status(), SlotStatus::Expired);
    match slot.load() {
        Err(Unavailable::Failed(e)) => {
            assert!(e.is_expired() && e.iam_message() == Some(DENIED), "{e:?}");
            let text = e.to_string();
            assert!(text.contains("reader@p.iam.gserviceaccount.com"), "{text}");
            assert!(text.contains(DENIED), "{text}");
        }
        other => panic!("served after expiry: {other:?}"),
    }
    minter.fail(false);
    sleep(RETRY_MAX + Duration::from_secs(1)).await;
    assert_eq!(slot.status(), SlotStatus::Fresh);
    assert!(slot.last_error().is_none());
    assert_ne!(bearer(&slot), first);
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

/// A time box (`refresh = false`) is minted once and shared while it
/// lasts; once it has ended, asking for it again (a reload does) makes a
/// new slot that mints anew, and the ended one stays ended.
#[tokio::test(start_paused = true)]
async fn a_time_box_is_shared_while_it_lasts_and_minted_anew_after() {
    let minter = Scripted::new(Duration::from_secs(600));
    let registry = Registry::new(minter.clone());
    let boxed = request().time_boxed();
    let first = registry.slot(boxed.clone(), true);
    first.get().await.unwrap();
    let again = registry.slot(boxed.clone(), false);
    assert_eq!(bearer(&again), "Bearer tok-0");
    sleep(Duration::from_secs(601)).await;
    assert_eq!(minter.mints.load(Ordering::SeqCst), 1);
    match first.load() {
        Err(Unavailable::Failed(e)) => assert!(e.is_time_box_ended(), "{e}"),
        other => panic!("{other:?}"),
    }
    let renewed = registry.slot(boxed, true);
    renewed.get().await.unwrap();
    assert_eq!(bearer(&renewed), "Bearer tok-1");
    assert!(first.load().is_err());
    assert_eq!(registry.slots().len(), 1);
}

/// Dropping the registry (a reload's old one, shutdown) stops its
/// refreshers: no more calls to IAM.
#[tokio::test(start_paused = true)]
async fn dropping_the_registry_stops_its_refreshers() {
    let minter = Scripted::new(Duration::from_secs(20));
    let registry = Registry::new(minter.clone());
    let slot = registry.slot(request(), true);
    slot.get().await.unwrap();
    drop(registry);
    let mints = minter.mints.load(Ordering::SeqCst);
    sleep(Duration::from_secs(120)).await;
    assert_eq!(minter.mints.load(Ordering::SeqCst), mints);
}
