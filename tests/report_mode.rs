//! Report mode: a `deny` route with `enforce = false` lets the request
//! through to the next matching route, while the audit record and the
//! `requests_would_deny` metric say it would have been denied.

#[path = "support/client.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use client::*;
use proxy::*;
use support::*;

const STORAGE: &str = "storage.googleapis.com";
const READER: &str = "reader@emulator-project.iam.gserviceaccount.com";

async fn scrape(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

fn would_deny_count(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("impersonate_proxy_requests_would_deny_total{")
                && l.contains("route=\"trial-deny\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn a_report_mode_deny_lets_the_request_through_and_says_would_deny() {
    let dir = tempdir("report-emu");
    let emu = impersonate_proxy::emulator::Emulator::start(
        impersonate_proxy::emulator::EmulatorOptions {
            dir: Some(dir.to_path_buf()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    emu.grant_token_creator(SOURCE_SA, READER);
    let key = emu.write_service_account_key(&dir, SOURCE_SA).unwrap();
    let audit = dir.join("audit.jsonl");
    let toml = format!(
        r#"[source]
type = "service_account"
file = "{key}"
{upstream}
[audit]
file = "{audit}"

[[route]]
name = "trial-deny"
hosts = ["{STORAGE}"]
path_prefix = "/storage/v1/b/legacy"
action = "deny"
enforce = false

[[route]]
name = "enforced-deny"
hosts = ["{STORAGE}"]
path_prefix = "/storage/v1/b/secret"
action = "deny"

[[route]]
name = "gcs-read"
hosts = ["{STORAGE}"]
impersonate = "{READER}"
"#,
        key = key.display(),
        upstream = emulator_upstream_toml(&emu, ""),
        audit = audit.display(),
    );
    let (cfg, config_dir) = config_with_proxy_keys("report", "admin = \"127.0.0.1:0\"", &toml);
    let proxy = start_proxy(cfg, config_dir).await;
    let admin = proxy.admin.expect("admin endpoint bound");
    let before = would_deny_count(&scrape(admin).await);

    for (path, want) in [
        ("/storage/v1/b/legacy/o", 200),
        ("/storage/v1/b/secret/o", 403),
    ] {
        let mut c = client(&proxy, STORAGE, false).await;
        let resp = c.send(get(STORAGE, path)).await;
        let status = resp.status();
        let body = body_string(resp).await;
        assert_eq!(status, want, "{path}: {body}");
        if want == 200 {
            assert_eq!(json(&body)["emulator"]["principal"], READER);
        }
    }

    eventually(Duration::from_secs(5), || async {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .count()
            >= 2
    })
    .await;
    let text = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(json).collect();
    let passed = &lines[0];
    assert_eq!(passed["would_deny"], "trial-deny", "{text}");
    assert_eq!(passed["route"], "gcs-read", "{text}");
    assert_eq!(passed["action"], "impersonate", "{text}");
    assert_eq!(passed["status"], 200, "{text}");
    let denied = &lines[1];
    assert_eq!(denied["route"], "enforced-deny", "{text}");
    assert_eq!(denied["action"], "deny", "{text}");
    assert!(denied.get("would_deny").is_none(), "{text}");

    let after = would_deny_count(&scrape(admin).await);
    assert_eq!(after, before + 1, "the would_deny counter moved once");
}
