//! The Grafana dashboard and the Prometheus alert rules in `deploy/` use
//! only metric names a live `/metrics` scrape has, so they cannot drift
//! from the code.

#[path = "support/client.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::collections::BTreeSet;

use client::*;
use proxy::*;
use support::*;

const READER: &str = "reader@emulator-project.iam.gserviceaccount.com";
const UNGRANTED: &str = "nobody@emulator-project.iam.gserviceaccount.com";

/// Every `impersonate_proxy_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("impersonate_proxy_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The PromQL expressions of the dashboard's panels and variables.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/impersonate-proxy.json"
    ))
    .unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    exprs
}

/// The `expr` of every alerting rule.
fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/alerts.yaml"
    ))
    .unwrap();
    let rules: serde_json::Value = serde_norway::from_str(&text).expect("the rules are YAML");
    let mut exprs = Vec::new();
    for g in rules["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            assert!(r["alert"].is_string() && r["for"].is_string(), "{r}");
            exprs.push(r["expr"].as_str().unwrap().to_owned());
        }
    }
    exprs
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_metrics_the_proxy_exports() {
    let dir = tempdir("dashboard-emu");
    let emu = support::emulator_in(&dir).await;
    emu.grant_token_creator(SOURCE_SA, READER);
    let key = emu.write_service_account_key(&dir, SOURCE_SA).unwrap();
    let toml = format!(
        "[source]\ntype = \"service_account\"\nfile = \"{}\"\n{}\n[[route]]\nname = \"read\"\nhosts = [\"storage.googleapis.com\"]\nimpersonate = \"{READER}\"\n[[route]]\nname = \"broken\"\nhosts = [\"pubsub.googleapis.com\"]\nimpersonate = \"{UNGRANTED}\"\nwarm = false\n[audit]\nenabled = false\n",
        key.display(),
        emulator_upstream_toml(&emu, "")
    );
    let (cfg, config_dir) = config_with_proxy_keys("dashboard", "admin = \"127.0.0.1:0\"", &toml);
    let (proxy, reloader) = start_reloadable(cfg, config_dir).await;
    let admin = proxy.admin.unwrap();

    // Traffic: a good request (a mint, a certificate, a latency sample),
    // one whose mint fails, and a reload.
    let mut c = client(&proxy, "storage.googleapis.com", false).await;
    let resp = c
        .send(for_version(
            get("storage.googleapis.com", "/storage/v1/b/x/o"),
            false,
        ))
        .await;
    assert_eq!(resp.status(), 200);
    body_string(resp).await;
    let mut c = client(&proxy, "pubsub.googleapis.com", false).await;
    let resp = c
        .send(for_version(
            get("pubsub.googleapis.com", "/v1/projects/p/topics"),
            false,
        ))
        .await;
    assert_ne!(resp.status(), 200);
    body_string(resp).await;
    reloader.reload().unwrap();

    let (code, scrape) = http_get(admin, "GET", "/metrics").await;
    assert_eq!(code, 200);
    // Names that carry samples (a histogram's _bucket/_sum/_count, a
    // counter's _total), not only a # TYPE line.
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    assert!(exported.contains("impersonate_proxy_ready"), "{scrape}");

    let dashboard = metric_names(&dashboard_exprs().join("\n"));
    let alerts = metric_names(&alert_exprs().join("\n"));
    assert!(dashboard.len() >= 10, "{dashboard:?}");
    assert!(alerts.len() >= 6, "{alerts:?}");
    // The failures that cost something without a 5xx have an alert too.
    for needed in [
        "impersonate_proxy_token_expires_in_seconds",
        "impersonate_proxy_audit_write_errors_total",
        "impersonate_proxy_audit_records_dropped_total",
    ] {
        assert!(alerts.contains(needed), "no alert on {needed}: {alerts:?}");
    }
    for (file, names) in [("dashboard", &dashboard), ("alerts", &alerts)] {
        let missing: Vec<_> = names.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics /metrics does not export: {missing:?}\n{scrape}"
        );
    }
}
