//! Operating the proxy: metrics after traffic, readiness that follows the
//! warm slots, reload (SIGHUP and POST /reload) that keeps in-flight
//! requests and unchanged slots, and SIGTERM that drains.

#[path = "support/client.rs"]
mod client;
#[path = "support/process.rs"]
mod process;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use impersonate_proxy::emulator::Emulator;

use client::*;
use process::*;
use proxy::*;
use support::*;
use upstream::*;

const READER: &str = "reader@emulator-project.iam.gserviceaccount.com";
const LATE: &str = "late@emulator-project.iam.gserviceaccount.com";
const STORAGE: &str = "storage.googleapis.com";
const SLOW: &str = "slow.googleapis.com";

fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
        .find_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
}

#[tokio::test]
async fn metrics_move_with_traffic_and_readyz_follows_warm_slots() {
    let dir = tempdir("operate-metrics");
    let emu = support::emulator_in(&dir).await;
    emu.grant_token_creator(SOURCE_SA, READER);
    let key = emu.write_service_account_key(&dir, SOURCE_SA).unwrap();
    impersonate_proxy::ca::init(&dir.join("certs"), false).unwrap();
    let text = format!(
        r#"[proxy]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
[ca]
cert = "certs/ca.pem"
key = "certs/ca-key.pem"
[source]
type = "service_account"
file = "{key}"
{upstream}
[audit]
enabled = false
[[route]]
name = "metrics-read"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/data"
impersonate = "{READER}"
[[route]]
name = "metrics-late"
hosts = ["storage.googleapis.com"]
impersonate = "{LATE}"
warm = true
"#,
        key = key.display(),
        upstream = emulator_upstream_toml(&emu, ""),
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = impersonate_proxy::Config::load(&path).unwrap();
    let proxy = start_proxy(cfg, dir).await;
    let admin = proxy.admin.expect("admin endpoint bound");

    // The warm slot cannot mint (no grant yet): not ready, and it says why.
    let (code, body) = http_get(admin, "GET", "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("metrics-late") && body.contains(LATE),
        "{body}"
    );
    assert_eq!(http_get(admin, "GET", "/healthz").await.0, 200);

    let mut c = client(&proxy, STORAGE, true).await;
    for _ in 0..3 {
        let resp = c
            .send(for_version(get(STORAGE, "/storage/v1/b/data/o"), true))
            .await;
        assert_eq!(resp.status(), 200);
        body_string(resp).await;
    }
    let resp = c
        .send(for_version(get(STORAGE, "/storage/v1/b/other/o"), true))
        .await;
    assert_eq!(resp.status(), 503);
    body_string(resp).await;

    let (code, m) = http_get(admin, "GET", "/metrics").await;
    assert_eq!(code, 200);
    let requests = "impersonate_proxy_requests_total";
    assert!(
        metric(
            &m,
            requests,
            &[
                "route=\"metrics-read\"",
                "status=\"2xx\"",
                "client=\"anonymous\""
            ]
        )
        .unwrap_or(0.0)
            >= 3.0,
        "{m}"
    );
    assert!(
        metric(&m, requests, &["route=\"metrics-late\"", "status=\"5xx\""]).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "impersonate_proxy_token_mints_total",
            &[READER, "result=\"ok\""]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "impersonate_proxy_token_mints_total",
            &[LATE, "result=\"iam_permission_denied\""]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "impersonate_proxy_token_expires_in_seconds", &[READER]).unwrap_or(0.0) > 3000.0,
        "{m}"
    );
    assert!(
        metric(&m, "impersonate_proxy_certificates_minted_total", &[]).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert!(
        m.contains("impersonate_proxy_request_duration_seconds_bucket"),
        "{m}"
    );
    assert!(
        m.contains("impersonate_proxy_iam_request_duration_seconds_bucket"),
        "{m}"
    );
    assert!(!m.contains("ya29."), "a token in the metrics");
    assert!(
        !m.contains("/storage/v1/b/data"),
        "a path in the metrics labels"
    );

    // Grant the role: the refresher retries and readiness follows.
    emu.grant_token_creator(SOURCE_SA, LATE);
    let ready = eventually(Duration::from_secs(30), || async {
        http_get(admin, "GET", "/readyz").await.0 == 200
    })
    .await;
    assert!(ready, "readyz did not recover after the grant");
}

/// An emulator, a slow upstream for `slow.googleapis.com`, and a config
/// file using both; `routes` is appended.
async fn setup(name: &str, routes: &str) -> (Emulator, TempDir, PathBuf, String) {
    let dir = tempdir(name);
    let emu = support::emulator_in(&dir).await;
    emu.grant_token_creator(SOURCE_SA, READER);
    let key = emu.write_service_account_key(&dir, SOURCE_SA).unwrap();
    let certs = upstream_certs(&dir, &[SLOW]);
    let (slow, _) = start_upstream(Some(certs.server)).await;
    impersonate_proxy::ca::init(&dir.join("certs"), false).unwrap();
    let upstream = emulator_upstream_toml(&emu, &format!("\"{SLOW}\" = \"{slow}\"\n")).replacen(
        "extra_ca = [",
        &format!("extra_ca = [\"{}\", ", certs.ca_pem.display()),
        1,
    );
    let base = format!(
        r#"[proxy]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
drain_timeout = "20s"
[ca]
cert = "certs/ca.pem"
key = "certs/ca-key.pem"
[source]
type = "service_account"
file = "{key}"
{upstream}
[audit]
enabled = false
[[route]]
name = "slow"
hosts = ["{SLOW}"]
action = "passthrough"
"#,
        key = key.display()
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, format!("{base}{routes}")).unwrap();
    (emu, dir, path, base)
}

const READ_ROUTE: &str = r#"
[[route]]
name = "read"
hosts = ["storage.googleapis.com"]
impersonate = "reader@emulator-project.iam.gserviceaccount.com"
"#;

const BLOCK_ROUTE: &str = r#"
[[route]]
name = "blocked-bucket"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/blocked"
action = "deny"
"#;

async fn storage_status(proxy: &TestProxy, path: &str) -> u16 {
    let mut c = client(proxy, STORAGE, false).await;
    let resp = c.send(for_version(get(STORAGE, path), false)).await;
    let status = resp.status().as_u16();
    body_string(resp).await;
    status
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reload_changes_routing_keeps_in_flight_requests_and_slots() {
    let (emu, dir, path, base) = setup("operate-reload", READ_ROUTE).await;
    let mut run = run_binary(dir, &path);
    assert_eq!(
        storage_status(&run.proxy, "/storage/v1/b/blocked/o").await,
        200
    );
    assert_eq!(emu.counters().get("generateAccessToken", READER), 1);

    // A 3-second streaming response is in flight across the reload.
    let mut slow = client(&run.proxy, SLOW, true).await;
    let resp = slow.send(for_version(get(SLOW, "/slow/30"), true)).await;
    let streaming = tokio::spawn(count_body(resp, Arc::default()));

    std::fs::write(&path, format!("{base}{BLOCK_ROUTE}{READ_ROUTE}")).unwrap();
    run.signal("-HUP");
    let proxy = &run.proxy;
    let blocked = eventually(Duration::from_secs(15), || async move {
        storage_status(proxy, "/storage/v1/b/blocked/o").await == 403
    })
    .await;
    assert!(blocked, "the new route did not take effect");
    assert_eq!(
        storage_status(&run.proxy, "/storage/v1/b/open/o").await,
        200
    );
    assert_eq!(
        streaming.await.unwrap(),
        30 * 1024,
        "the in-flight response was cut"
    );
    assert_eq!(
        emu.counters().get("generateAccessToken", READER),
        1,
        "an unchanged slot was re-minted by the reload"
    );

    // A broken config is refused and the running routes stay.
    std::fs::write(&path, format!("{base}[[route]]\nname = \"broken\"\nhosts = [\"a.googleapis.com\"]\nimpersonate = \"x\"\nlifetime = \"forever\"\n")).unwrap();
    run.signal("-HUP");
    // The refusal is logged once the reload has been tried; only then does
    // "the running routes stay" say anything.
    let mut logs = String::new();
    eventually(Duration::from_secs(10), || {
        run.collect_logs(&mut logs);
        std::future::ready(logs.contains("reload failed"))
    })
    .await;
    assert_eq!(
        storage_status(&run.proxy, "/storage/v1/b/blocked/o").await,
        403
    );
    assert_eq!(
        storage_status(&run.proxy, "/storage/v1/b/open/o").await,
        200
    );
    run.collect_logs(&mut logs);
    assert!(
        logs.contains("reload failed") && logs.contains("lifetime"),
        "{logs}"
    );

    // POST /reload answers with the outcome.
    let (code, body) = http_get(run.admin, "POST", "/reload").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("running config kept"), "{body}");
    std::fs::write(&path, format!("{base}{READ_ROUTE}")).unwrap();
    let (code, body) = http_get(run.admin, "POST", "/reload").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        storage_status(&run.proxy, "/storage/v1/b/blocked/o").await,
        200
    );

    run.signal("-TERM");
    assert_eq!(run.child.wait().unwrap().code(), Some(0));
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_drains_a_ten_second_stream_then_exits_0() {
    let (_emu, dir, path, _) = setup("operate-drain", "").await;
    let mut run = run_binary(dir, &path);
    let mut slow = client(&run.proxy, SLOW, true).await;
    let resp = slow.send(for_version(get(SLOW, "/slow/100"), true)).await;
    assert_eq!(resp.status(), 200);
    let read = Arc::new(AtomicUsize::new(0));
    let streaming = tokio::spawn(count_body(resp, read.clone()));
    // SIGTERM is to land mid-stream: wait until body bytes flow.
    let flowing = eventually(Duration::from_secs(10), || async {
        read.load(Ordering::Relaxed) > 0
    })
    .await;
    assert!(flowing, "the stream did not start");
    run.signal("-TERM");
    // While draining: not ready, no new connections. The listener closes
    // as the drain starts, which is not the instant readyz turns 503.
    let admin = run.admin;
    let saw_503 = eventually(Duration::from_secs(10), || async move {
        http_get(admin, "GET", "/readyz").await.0 == 503
    })
    .await;
    assert!(saw_503, "readyz stays 200 while draining");
    let addr = run.proxy.addr;
    let refused = eventually(Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(refused, "the listener still accepts after SIGTERM");
    assert_eq!(streaming.await.unwrap(), 100 * 1024, "the stream was cut");
    let status = tokio::task::spawn_blocking(move || run.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Audit lines that name `marker` in their path, per file.
fn audit_paths(path: &std::path::Path, marker: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let p = v["path"].as_str()?.to_owned();
            p.contains(marker).then_some(p)
        })
        .collect()
}

#[cfg(unix)]
#[tokio::test]
async fn sigusr1_reopens_the_audit_file_and_every_record_lands_once() {
    let (_emu, dir, path, base) = setup("operate-usr1", READ_ROUTE).await;
    let audit = dir.join("audit.log");
    let rotated = dir.join("audit.log.1");
    let with_audit = base.replace(
        "[audit]\nenabled = false",
        &format!("[audit]\nfile = \"{}\"", audit.display()),
    );
    std::fs::write(&path, format!("{with_audit}{READ_ROUTE}")).unwrap();
    let run = run_binary(dir, &path);

    // Requests flow, one after another, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut c = client(&run.proxy, STORAGE, false).await;
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n = sent.load(Ordering::SeqCst);
                let path = format!("/storage/v1/b/rot{n}x/o");
                let resp = c.send(for_version(get(STORAGE, &path), false)).await;
                assert_eq!(resp.status(), 200);
                body_string(resp).await;
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let audit_ref = &audit;
    assert!(
        eventually(Duration::from_secs(15), || async move {
            audit_paths(audit_ref, "/rot").len() >= 20
        })
        .await
    );
    // logrotate: rename, then signal.
    std::fs::rename(&audit, &rotated).unwrap();
    run.signal("-USR1");
    let mut logs = String::new();
    eventually(Duration::from_secs(10), || {
        run.collect_logs(&mut logs);
        std::future::ready(logs.contains("audit file reopened"))
    })
    .await;
    assert!(logs.contains("audit file reopened"), "{logs}");
    assert!(
        eventually(Duration::from_secs(15), || async move {
            audit_paths(audit_ref, "/rot").len() >= 20
        })
        .await,
        "no records in the reopened file"
    );
    stop.store(true, Ordering::SeqCst);
    sender.await.unwrap();
    let sent = sent.load(Ordering::SeqCst);

    // Every request's record, exactly once, across the two files.
    let (rotated_ref, audit_ref) = (&rotated, &audit);
    eventually(Duration::from_secs(10), || async move {
        audit_paths(rotated_ref, "/rot").len() + audit_paths(audit_ref, "/rot").len() >= sent
    })
    .await;
    let mut all = audit_paths(&rotated, "/rot");
    let old = all.len();
    all.extend(audit_paths(&audit, "/rot"));
    assert!(old > 0 && all.len() > old, "both files hold records");
    assert_eq!(all.len(), sent, "records lost or duplicated");
    let mut expect: Vec<String> = (0..sent)
        .map(|n| format!("/storage/v1/b/rot{n}x/o"))
        .collect();
    all.sort();
    expect.sort();
    assert_eq!(all, expect);

    // Logs piped to a file or a pipe carry no colour codes.
    run.collect_logs(&mut logs);
    assert!(
        !logs.contains('\u{1b}'),
        "ANSI escapes in piped logs: {logs:?}"
    );
}
