//! Many replicas: what a replica behind a load balancer needs.
//!
//! - `[proxy] watch_config`: a ConfigMap-style directory updated by the
//!   kubelet's `..data` symlink swap is applied without a signal (routes,
//!   and a password file from a Secret laid out the same way);
//! - `[limits] max_connection_age`: an old HTTP/2 connection gets GOAWAY
//!   while its stream finishes, an old HTTP/1.1 one `Connection: close`,
//!   and a blind tunnel is left alone;
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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use client::*;
use process::*;
use proxy::*;
use support::*;
use upstream::*;

const STORAGE: &str = "storage.googleapis.com";

// ------------------------------------------------------------ ConfigMap

/// Lays out `dir` as the kubelet lays out a ConfigMap or Secret volume:
/// the files in a timestamped directory `version`, `..data` a symlink to
/// it (replaced by an atomic rename), and each file a symlink through
/// `..data`. Returns the path the program is given.
#[cfg(unix)]
fn kubelet_update(dir: &Path, version: &str, files: &[(&str, &str)]) {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let data = dir.join(version);
    std::fs::create_dir_all(&data).unwrap();
    for (name, text) in files {
        let p = data.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

fn basic(user: &str, password: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Proxy-Authorization: Basic {b64}\r\n")
}

/// The status of a CONNECT to storage carrying `headers`.
async fn connect_status(proxy: SocketAddr, headers: &str) -> u16 {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let a = format!("{STORAGE}:443");
    s.write_all(format!("CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n{headers}\r\n").as_bytes())
        .await
        .unwrap();
    status_of(&read_head(&mut s).await).unwrap_or(0)
}

/// `GET /echo` on a new connection as `batch` with `password`.
async fn echo_status(proxy: &TestProxy, password: &str) -> u16 {
    let mut c = client_with(proxy, STORAGE, false, &basic("batch", password)).await;
    let resp = c.send(for_version(get(STORAGE, "/echo"), false)).await;
    let status = resp.status().as_u16();
    body_string(resp).await;
    status
}

#[cfg(unix)]
#[tokio::test]
async fn a_configmap_symlink_swap_applies_new_routes_and_passwords_without_a_signal() {
    let up_dir = tempdir("watch-up");
    let certs = upstream_certs(&up_dir, &[STORAGE]);
    let (upstream, _) = start_upstream(Some(certs.server)).await;
    let dir = tempdir("watch");
    impersonate_proxy::ca::init(&dir.join("ca"), false).unwrap();
    let secret = dir.join("secret");
    kubelet_update(&secret, "..2026_01_01_00_00_00.1", &[("password", "first")]);
    let base = format!(
        r#"[proxy]
listen = "127.0.0.1:0"
watch_config = true
[ca]
cert = "{ca}/ca.pem"
key = "{ca}/ca-key.pem"
[upstream]
extra_ca = ["{up_ca}"]
[upstream.resolve]
"{STORAGE}" = "{upstream}"
[audit]
enabled = false
[[client]]
name = "batch"
proxy_auth = {{ user = "batch", password_file = "{secret}/password" }}
"#,
        ca = dir.join("ca").display(),
        up_ca = certs.ca_pem.display(),
        secret = secret.display(),
    );
    let all =
        "[[route]]\nname = \"all\"\nhosts = [\"*.googleapis.com\"]\naction = \"passthrough\"\n";
    let deny_echo = "[[route]]\nname = \"no-echo\"\nhosts = [\"storage.googleapis.com\"]\npath_prefix = \"/echo\"\naction = \"deny\"\n";
    kubelet_update(
        &dir,
        "..2026_01_01_00_00_00.1",
        &[("proxy.toml", &format!("{base}{all}"))],
    );
    let cfg = impersonate_proxy::Config::load(&dir.join("proxy.toml")).unwrap();
    // start_proxy reloads dir/proxy.toml: the symlink, as the pod sees it.
    let proxy = start_proxy(cfg, dir).await;
    let config_dir = proxy._dir.to_path_buf();
    assert_eq!(echo_status(&proxy, "first").await, 200);

    // The kubelet swaps in a new version of the ConfigMap; no signal.
    kubelet_update(
        &config_dir,
        "..2026_01_01_00_01_00.2",
        &[("proxy.toml", &format!("{base}{deny_echo}{all}"))],
    );
    let p = &proxy;
    let denied = eventually(Duration::from_secs(20), || async move {
        echo_status(p, "first").await == 403
    })
    .await;
    assert!(denied, "the new route was not applied");

    // And a new password in the Secret the config names.
    kubelet_update(
        &secret,
        "..2026_01_01_00_02_00.3",
        &[("password", "second")],
    );
    let addr = proxy.addr;
    let new_password = basic("batch", "second");
    let np = &new_password;
    let accepted = eventually(Duration::from_secs(20), || async move {
        connect_status(addr, np).await == 200
    })
    .await;
    assert!(accepted, "the new password was not applied");
    assert_eq!(connect_status(addr, &basic("batch", "first")).await, 407);
    assert_eq!(echo_status(&proxy, "second").await, 403, "routes kept");
    assert!(proxy.stop().await);
}

// --------------------------------------------------------- connection age

#[tokio::test]
async fn connections_older_than_max_connection_age_move_h2_by_goaway_h1_by_connection_close() {
    let up_dir = tempdir("age-up");
    let certs = upstream_certs(&up_dir, &[STORAGE]);
    let (upstream, _) = start_upstream(Some(certs.server)).await;
    let extra = format!(
        r#"[upstream]
extra_ca = ["{}"]
[upstream.resolve]
"{STORAGE}" = "{upstream}"
"blind.example.com" = "{upstream}"
[intercept]
other = "tunnel"
allow_private = ["127.0.0.1/32"]
[limits]
max_connection_age = "2s"
[audit]
enabled = false
{PASSTHROUGH_ALL}"#,
        certs.ca_pem.display()
    );
    let (cfg, dir) = config_with_ca("age", &extra);
    let proxy = start_proxy(cfg, dir).await;

    // HTTP/2, with its connection task, to see the connection end.
    let tls = tls_through(&proxy, &format!("{STORAGE}:443"), STORAGE, &[b"h2"])
        .await
        .unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake::<
        _,
        _,
        impersonate_proxy::net::ProxyBody,
    >(TokioExecutor::new(), TokioIo::new(tls))
    .await
    .unwrap();
    let h2_conn = tokio::spawn(conn);
    // HTTP/1.1 through the same proxy, and a blind tunnel.
    let mut h1 = client(&proxy, STORAGE, false).await;
    let (blind, head) = raw_connect(proxy.addr, "blind.example.com:443").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let upstream_name = rustls_pki_types::ServerName::try_from(STORAGE).unwrap();
    let blind = tokio_rustls::TlsConnector::from(client_tls(&certs.ca_pem, &[b"http/1.1"]))
        .connect(upstream_name, blind)
        .await
        .unwrap();
    let mut blind = handshake(blind, false).await;

    // A young HTTP/1.1 connection is kept alive.
    let resp = h1.send(for_version(get(STORAGE, "/echo"), false)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("connection").is_none(), "{resp:?}");
    body_string(resp).await;

    // A 6-second stream starts on the HTTP/2 connection.
    let resp = h2
        .send_request(for_version(get(STORAGE, "/slow/60"), true))
        .await
        .unwrap();
    let read = Arc::new(AtomicUsize::new(0));
    let streaming = tokio::spawn(count_body(resp, read.clone()));

    // Past the age (2 s ± 10%), the proxy sends GOAWAY: the client opens
    // no new stream on that connection.
    let started = Instant::now();
    let mut refused = None;
    while started.elapsed() < Duration::from_secs(10) {
        match h2
            .send_request(for_version(get(STORAGE, "/echo"), true))
            .await
        {
            Ok(resp) => {
                body_string(resp).await;
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused =
        refused.expect("no GOAWAY within 10 s on a connection with max_connection_age = 2s");
    let goaway_after = started.elapsed();
    println!("HTTP/2: new stream refused after {goaway_after:?}: {refused}");
    assert!(
        read.load(Ordering::Relaxed) < 60 * 1024,
        "the stream had already finished: GOAWAY came too late to show it finishes"
    );
    // The stream in flight finishes, then the connection closes.
    assert_eq!(streaming.await.unwrap(), 60 * 1024, "the stream was cut");
    let closed = eventually(Duration::from_secs(10), || {
        std::future::ready(h2_conn.is_finished())
    })
    .await;
    assert!(
        closed,
        "the HTTP/2 connection stayed open after its streams"
    );

    // The old HTTP/1.1 connection: its next response says Connection:
    // close, arrives whole, and the connection closes after it.
    let resp = h1.send(for_version(get(STORAGE, "/echo"), false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "{resp:?}"
    );
    assert!(body_string(resp).await.contains("\"path\":\"/echo\""));
    let h1_closed = eventually(Duration::from_secs(5), || {
        std::future::ready(h1.is_closed())
    })
    .await;
    assert!(
        h1_closed,
        "the HTTP/1.1 connection stayed open after Connection: close"
    );

    // A blind tunnel as old is not cut: it carries bytes the proxy cannot
    // add a header to or send GOAWAY on.
    let resp = blind.send(for_version(get(STORAGE, "/echo"), false)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("connection").is_none(), "{resp:?}");
    body_string(resp).await;
    assert!(!blind.is_closed());
    drop(blind);
    assert!(proxy.stop().await);
}

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
