//! The audit trail over months: size-based rotation that keeps every
//! record exactly once while requests flow, and a full audit disk that
//! does not stop the proxy from serving (failed writes are counted,
//! retried, and reported by `/readyz`).

#[path = "support/client.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use client::*;
use proxy::*;
use support::*;

const READER: &str = "reader@emulator-project.iam.gserviceaccount.com";
const STORAGE: &str = "storage.googleapis.com";

/// A proxy (with an admin listener) in front of the emulator, one
/// impersonating route for Storage, and `audit` as its `[audit]` table.
async fn start(
    name: &str,
    audit: &str,
) -> (TestProxy, impersonate_proxy::emulator::Emulator, TempDir) {
    let emu_dir = tempdir(&format!("{name}-emu"));
    let emu = support::emulator_in(&emu_dir).await;
    emu.grant_token_creator(SOURCE_SA, READER);
    let key = emu.write_service_account_key(&emu_dir, SOURCE_SA).unwrap();
    let extra = format!(
        "[source]\ntype = \"service_account\"\nfile = \"{key}\"\n{upstream}\n{audit}\n[[route]]\nname = \"read\"\nhosts = [\"{STORAGE}\"]\nimpersonate = \"{READER}\"\nwarm = true\n",
        key = key.display(),
        upstream = emulator_upstream_toml(&emu, ""),
    );
    let (cfg, dir) = config_with_proxy_keys(name, "admin = \"127.0.0.1:0\"", &extra);
    (start_proxy(cfg, dir).await, emu, emu_dir)
}

/// `workers` clients, each on its own connection, sending requests with
/// unique paths (`/storage/v1/b/{tag}{n}x/o`) until `stop`; every answer
/// must be 200. Returns the tasks and the count of requests answered.
async fn load(
    proxy: &TestProxy,
    tag: &'static str,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<AtomicUsize>) {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let mut c = client(proxy, STORAGE, false).await;
        let (stop, next, done) = (stop.clone(), next.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let path = format!("/storage/v1/b/{tag}{n}x/o");
                let resp = c.send(for_version(get(STORAGE, &path), false)).await;
                assert_eq!(resp.status(), 200, "{path}");
                body_string(resp).await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    (tasks, done)
}

/// Every audit file for `base` (`base`, `base.1`, …) with its size.
fn audit_files(base: &Path) -> Vec<(PathBuf, u64)> {
    let dir = base.parent().unwrap();
    let name = base.file_name().unwrap().to_str().unwrap();
    let mut files: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_str().unwrap_or("");
            n == name
                || n.strip_prefix(name)
                    .and_then(|r| r.strip_prefix('.'))
                    .is_some_and(|r| r.parse::<u32>().is_ok())
        })
        .map(|e| (e.path(), e.metadata().unwrap().len()))
        .collect();
    files.sort();
    files
}

/// How many times each path containing `/b/{tag}` was audited, over every
/// file of `base`.
fn audited(base: &Path, tag: &str) -> HashMap<String, usize> {
    let marker = format!("/b/{tag}");
    let mut seen = HashMap::new();
    for (file, _) in audit_files(base) {
        for line in std::fs::read_to_string(&file).unwrap_or_default().lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not a JSON line ({e}): {line:?}", file.display()));
            let p = v["path"].as_str().unwrap_or_default();
            if p.contains(&marker) {
                *seen.entry(p.to_owned()).or_insert(0) += 1;
            }
        }
    }
    seen
}

fn exactly_once(seen: &HashMap<String, usize>, tag: &str, sent: usize) {
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "audited more than once: {twice:?}");
    let missing: Vec<usize> = (0..sent)
        .filter(|n| !seen.contains_key(&format!("/storage/v1/b/{tag}{n}x/o")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {sent} records missing: {missing:?}",
        missing.len()
    );
    assert_eq!(seen.len(), sent);
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn size_rotation_keeps_every_record_exactly_once_while_requests_flow() {
    let files = tempdir("audit-rotation-files");
    let base = files.join("audit.jsonl");
    let (proxy, _emu, _emu_dir) = start(
        "audit-rotation",
        &format!(
            "[audit]\nfile = \"{}\"\nmax_file_size = \"8KiB\"\nmax_files = 1000",
            base.display()
        ),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let (tasks, done) = load(&proxy, "rot", 4, stop.clone()).await;
    // Until the file has been rotated a dozen times, with records in
    // flight all along.
    let rotated = eventually(Duration::from_secs(60), || {
        let n = audit_files(&base).len();
        async move { n >= 13 }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(rotated, "rotated {} times", audit_files(&base).len() - 1);
    let sent = done.load(Ordering::SeqCst);
    let all_in = eventually(Duration::from_secs(10), || {
        let n = audited(&base, "rot").len();
        async move { n >= sent }
    })
    .await;
    assert!(all_in, "records still missing");
    exactly_once(&audited(&base, "rot"), "rot", sent);
    for (file, size) in audit_files(&base) {
        assert!(size <= 8192, "{} is {size} bytes", file.display());
        assert!(size > 0, "{} is empty", file.display());
    }
}

/// `max_files` bounds what is kept: the oldest rotated file goes.
#[tokio::test]
async fn only_max_files_rotated_files_are_kept() {
    let files = tempdir("audit-keep-files");
    let base = files.join("audit.jsonl");
    let (proxy, _emu, _emu_dir) = start(
        "audit-keep",
        &format!(
            "[audit]\nfile = \"{}\"\nmax_file_size = \"4KiB\"\nmax_files = 2",
            base.display()
        ),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let (tasks, done) = load(&proxy, "keep", 2, stop.clone()).await;
    // Enough records for ten files' worth: most are rotated away.
    let enough = eventually(Duration::from_secs(60), || {
        let n = done.load(Ordering::SeqCst);
        async move { n >= 150 }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(enough);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let names: Vec<String> = audit_files(&base)
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]);
    // The newest records are the ones kept, in order across the files.
    let sent = done.load(Ordering::SeqCst);
    let seen = audited(&base, "keep");
    assert!(seen.contains_key(&format!("/storage/v1/b/keep{}x/o", sent - 1)));
    assert!(!seen.contains_key("/storage/v1/b/keep0x/o"));
    assert!(seen.values().all(|n| *n == 1));
}

/// Set (to a tmpfs mount point) in the copy of this test binary that runs
/// inside a mount namespace of its own.
const FULL_DISK: &str = "IMPERSONATE_PROXY_TEST_FULL_DISK";

/// The audit file sits on a 64 MiB tmpfs (mounted in a mount namespace of
/// the test's own: `unshare -m`, or `-rm` when not root, so it works as
/// root, where permissions would not stop a write). Mid-load the disk
/// fills up: requests keep succeeding, `audit_write_errors_total` moves,
/// `/readyz` stays 200 and says what is wrong; once there is room again
/// the records kept meanwhile are written, each exactly once. The tmpfs
/// is larger than the 16 MiB backlog the sink keeps, so the backlog always
/// fits once the filler is gone, however fast the load runs.
#[tokio::test]
async fn a_full_audit_disk_does_not_stop_serving_and_is_reported() {
    const NAME: &str = "a_full_audit_disk_does_not_stop_serving_and_is_reported";
    let Ok(mount) = std::env::var(FULL_DISK) else {
        let mount = tempdir("audit-full-disk");
        let exe = std::env::current_exe().unwrap();
        let mut out = None;
        for flags in ["-m", "-rm"] {
            let o = Command::new("unshare")
                .args([
                    flags,
                    "--",
                    "sh",
                    "-c",
                    "mount -t tmpfs -o size=64m tmpfs \"$MOUNT\" && exec \"$0\" \"$@\"",
                ])
                .arg(&exe)
                .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
                .env("MOUNT", &*mount)
                .env(FULL_DISK, &*mount)
                .output()
                .expect("unshare runs");
            let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
            if o.status.success() || !stderr.contains("mount") {
                out = Some(o);
                break;
            }
            println!("unshare {flags}: {stderr}");
        }
        let out = out.expect("no mount namespace with a tmpfs can be made here (unshare -m / -rm)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        print!("--- inside the mount namespace ---\n{stdout}\n{stderr}");
        assert!(out.status.success(), "failed inside its namespace");
        assert!(
            stdout.contains("1 passed"),
            "did not run inside its namespace"
        );
        return;
    };
    let mount = PathBuf::from(mount);
    let base = mount.join("audit.jsonl");
    let (proxy, _emu, _emu_dir) = start(
        "audit-full",
        &format!("[audit]\nfile = \"{}\"", base.display()),
    )
    .await;
    let admin = proxy.admin.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (tasks, done) = load(&proxy, "full", 2, stop.clone()).await;
    let started = eventually(Duration::from_secs(20), || {
        let n = audited(&base, "full").len();
        async move { n >= 50 }
    })
    .await;
    assert!(started, "no records written");
    let (status, body) = http_get(admin, "GET", "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["audit"]["ok"], true, "{body}");
    let errors_before = metric(
        &http_get(admin, "GET", "/metrics").await.1,
        "impersonate_proxy_audit_write_errors_total",
    );
    assert_eq!(errors_before, 0.0);

    // Fill the disk.
    let filler = mount.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }
    let at_full = done.load(Ordering::SeqCst);
    // Writes fail and are counted; requests keep succeeding (the load
    // asserts every answer is 200); readiness stays, and says why.
    let counted = eventually(Duration::from_secs(20), || async move {
        let m = http_get(admin, "GET", "/metrics").await.1;
        metric(&m, "impersonate_proxy_audit_write_errors_total") >= 3.0
    })
    .await;
    assert!(counted, "audit_write_errors_total did not move");
    let served = eventually(Duration::from_secs(10), || {
        let n = done.load(Ordering::SeqCst);
        async move { n >= at_full + 100 }
    })
    .await;
    assert!(served, "requests stalled on a full audit disk");
    let (status, body) = http_get(admin, "GET", "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["audit"]["ok"], false, "{body}");
    assert!(
        v["audit"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left")),
        "{body}"
    );
    assert!(
        v["audit"]["unwritten_bytes"].as_u64().unwrap() > 0,
        "{body}"
    );

    // Room again: the kept records are written, in the same file.
    std::fs::remove_file(&filler).unwrap();
    let healthy = eventually(Duration::from_secs(10), || async move {
        json(&http_get(admin, "GET", "/readyz").await.1)["audit"]["ok"] == true
    })
    .await;
    assert!(healthy, "the audit sink did not recover");
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let sent = done.load(Ordering::SeqCst);
    eventually(Duration::from_secs(10), || {
        let n = audited(&base, "full").len();
        async move { n >= sent }
    })
    .await;
    exactly_once(&audited(&base, "full"), "full", sent);
    let (_, body) = http_get(admin, "GET", "/readyz").await;
    assert_eq!(json(&body)["audit"]["dropped_records"], 0, "{body}");
}
