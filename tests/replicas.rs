//! Many replicas: what a replica behind a load balancer needs.
//!
//! - `[proxy] shutdown_delay`: after SIGTERM `/readyz` answers 503 at once
//!   while a new connection is still accepted and served.

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
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use client::*;
use process::*;
use proxy::*;
use support::*;
use upstream::*;

const STORAGE: &str = "storage.googleapis.com";

// ---------------------------------------------------------- shutdown delay

/// A local upstream for storage and a config file for the binary in a
/// fresh dir; `proxy_keys` are more `[proxy]` lines.
async fn binary_world(name: &str, proxy_keys: &str) -> (TempDir, PathBuf, TempDir) {
    let up_dir = tempdir(&format!("{name}-up"));
    let certs = upstream_certs(&up_dir, &[STORAGE]);
    let (upstream, _) = start_upstream(Some(certs.server)).await;
    let dir = tempdir(name);
    impersonate_proxy::ca::init(&dir.join("certs"), false).unwrap();
    let text = format!(
        r#"[proxy]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
workers = 1
{proxy_keys}
[ca]
cert = "certs/ca.pem"
key = "certs/ca-key.pem"
[upstream]
extra_ca = ["{}"]
[upstream.resolve]
"{STORAGE}" = "{upstream}"
[audit]
enabled = false
{PASSTHROUGH_ALL}"#,
        certs.ca_pem.display()
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path, up_dir)
}

async fn echo_on_new_connection(proxy: &TestProxy) -> u16 {
    let mut c = client(proxy, STORAGE, false).await;
    let resp = c.send(for_version(get(STORAGE, "/echo"), false)).await;
    let status = resp.status().as_u16();
    body_string(resp).await;
    status
}

#[cfg(unix)]
#[tokio::test]
async fn after_sigterm_readyz_fails_at_once_while_new_connections_are_served_for_shutdown_delay() {
    let (dir, path, _up) = binary_world(
        "shutdown-delay",
        "shutdown_delay = \"4s\"\ndrain_timeout = \"10s\"",
    )
    .await;
    let mut run = run_binary(dir, &path);
    let admin = run.admin;
    let ready = eventually(Duration::from_secs(10), || async move {
        http_get(admin, "GET", "/readyz").await.0 == 200
    })
    .await;
    assert!(ready, "never ready");
    assert_eq!(echo_on_new_connection(&run.proxy).await, 200);

    let term = Instant::now();
    run.signal("-TERM");
    let unready = eventually(Duration::from_secs(10), || async move {
        http_get(admin, "GET", "/readyz").await.0 == 503
    })
    .await;
    assert!(unready, "/readyz still 200 after SIGTERM");
    let unready_after = term.elapsed();
    // Within the delay: a connection made now is accepted and served.
    assert_eq!(
        echo_on_new_connection(&run.proxy).await,
        200,
        "a new connection during shutdown_delay was not served"
    );
    let served_by = term.elapsed();
    println!("after SIGTERM: /readyz 503 after {unready_after:?}; a new connection served at {served_by:?}");
    assert!(
        served_by < Duration::from_secs(4),
        "the check ran past the delay"
    );

    // Then the listener closes and the process exits 0.
    let addr = run.proxy.addr;
    let refused = eventually(Duration::from_secs(20), || async move {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        refused,
        "the listener still accepts long after shutdown_delay"
    );
    println!("listener closed {:?} after SIGTERM", term.elapsed());
    assert!(
        term.elapsed() >= Duration::from_millis(3900),
        "the listener closed before shutdown_delay was over"
    );
    let status = tokio::task::spawn_blocking(move || run.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
