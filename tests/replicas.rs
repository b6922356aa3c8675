//! Many replicas: what a replica behind a load balancer needs, and three
//! of them behind a real one.
//!
//! - `[proxy] watch_config`: a ConfigMap-style directory updated by the
//!   kubelet's `..data` symlink swap is applied without a signal (routes,
//!   and a password file from a Secret laid out the same way);
//! - `[limits] max_connection_age`: an old HTTP/2 connection gets GOAWAY
//!   while its stream finishes, an old HTTP/1.1 one `Connection: close`,
//!   and a blind tunnel is left alone;
//! - `[proxy] shutdown_delay`: after SIGTERM `/readyz` answers 503 at once
//!   while a new connection is still accepted and served;
//! - three processes sharing one CA and one config behind Debian's
//!   `haproxy` (TCP mode, checking `/readyz`) under a steady load of new
//!   connections: one SIGKILLed, one SIGTERMed, and every request that
//!   started after the SIGTERM (so after the replica went unready)
//!   succeeds; each replica minted its own token. Skipped, with a
//!   message, where `haproxy` is not installed (`.ci/run` installs it).

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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
const READER: &str = "reader@emulator-project.iam.gserviceaccount.com";

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

// ------------------------------------------------ replicas behind haproxy

fn haproxy_installed() -> bool {
    std::process::Command::new("haproxy")
        .arg("-v")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// haproxy in the foreground; killed when dropped.
struct Haproxy {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// TCP mode, round robin, each server health-checked by `GET /readyz` on
/// its admin port every 100 ms (one failure takes it out); a connection
/// that cannot be made is retried on another server.
fn haproxy_config(listen: SocketAddr, replicas: &[(SocketAddr, SocketAddr)]) -> String {
    let mut cfg = format!(
        r#"global
    maxconn 2000
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    retries 3
    option redispatch 1
frontend proxies
    bind {listen}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    default-server inter 100ms fall 1 rise 2
"#
    );
    for (i, (proxy, admin)) in replicas.iter().enumerate() {
        cfg.push_str(&format!(
            "    server replica{i} {proxy} check port {}\n",
            admin.port()
        ));
    }
    cfg
}

/// Starts haproxy on a free loopback port (a port taken between choosing
/// and binding makes it exit: then another is tried).
fn start_haproxy(dir: &Path, replicas: &[(SocketAddr, SocketAddr)]) -> Haproxy {
    for attempt in 0..5 {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let path = dir.join(format!("haproxy-{attempt}.cfg"));
        std::fs::write(&path, haproxy_config(addr, replicas)).unwrap();
        let mut child = std::process::Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if std::net::TcpStream::connect(addr).is_ok() {
                return Haproxy { child, addr };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("haproxy did not start");
}

/// One request as a client behind the load balancer makes it: a new TCP
/// connection, CONNECT, TLS with the proxy's CA, `GET` a bucket's objects.
async fn request_through(lb: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<(), String> {
    let attempt = async {
        let mut s = TcpStream::connect(lb)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let a = format!("{STORAGE}:443");
        s.write_all(format!("CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("CONNECT write: {e}"))?;
        let head = read_head(&mut s).await;
        if status_of(&head) != Some(200) {
            return Err(format!("CONNECT answered {head:?}"));
        }
        let name = rustls_pki_types::ServerName::try_from(STORAGE).unwrap();
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, s)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let resp = send
            .send_request(for_version(get(STORAGE, "/storage/v1/b/replicas/o"), false))
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status();
        use http_body_util::BodyExt;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        if status != 200 {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(r) => r,
        Err(_) => Err("no answer in 10 s".into()),
    }
}

/// What became of one request: when it started, whether it succeeded.
struct Outcome {
    started: Instant,
    error: Option<String>,
}

/// Successful requests so far among those that started after `t`.
fn ok_since(outcomes: &Mutex<Vec<Outcome>>, t: Instant) -> usize {
    outcomes
        .lock()
        .unwrap()
        .iter()
        .filter(|o| o.started >= t && o.error.is_none())
        .count()
}

/// `GET path` on an admin endpoint; `None` if it cannot be reached (the
/// process is gone).
async fn admin_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(admin).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = status_of(&text)?;
    Some((code, text.split_once("\r\n\r\n")?.1.to_owned()))
}

/// `impersonate_proxy_requests_total` with status 2xx, from `/metrics`.
async fn served(admin: SocketAddr) -> f64 {
    let Some((_, text)) = admin_get(admin, "/metrics").await else {
        return 0.0;
    };
    text.lines()
        .filter(|l| l.starts_with("impersonate_proxy_requests_total") && l.contains("2xx"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_haproxy_lose_no_request_that_started_after_a_sigterm() {
    if !haproxy_installed() {
        eprintln!(
            "SKIPPED: haproxy is not installed (apt-get install haproxy; .ci/run installs it)"
        );
        return;
    }
    // Google, and the one CA every replica shares.
    let dir = tempdir("replicas");
    let emu = support::emulator_in(&dir).await;
    emu.grant_token_creator(SOURCE_SA, READER);
    let key = emu.write_service_account_key(&dir, SOURCE_SA).unwrap();
    impersonate_proxy::ca::init(&dir.join("certs"), false).unwrap();
    let ca_pem = dir.join("certs/ca.pem");
    // One config: each replica's file differs only in its own listen and
    // admin ports (0: each reads its own from its log).
    let shared = format!(
        r#"[ca]
cert = "{ca}/ca.pem"
key = "{ca}/ca-key.pem"
[source]
type = "service_account"
file = "{key}"
{upstream}
[audit]
enabled = false
[[route]]
name = "read"
hosts = ["storage.googleapis.com"]
impersonate = "{READER}"
"#,
        ca = dir.join("certs").display(),
        key = key.display(),
        upstream = emulator_upstream_toml(&emu, ""),
    );
    let mut replicas = Vec::new();
    for i in 0..3 {
        let rdir = tempdir(&format!("replica{i}"));
        let path = rdir.join(format!("replica{i}.toml"));
        std::fs::write(
            &path,
            format!(
                "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworkers = 1\nshutdown_delay = \"2s\"\ndrain_timeout = \"10s\"\n{shared}"
            ),
        )
        .unwrap();
        replicas.push(Some(run_binary_with_ca(rdir, &path, ca_pem.clone())));
    }
    let addrs: Vec<(SocketAddr, SocketAddr)> = replicas
        .iter()
        .flatten()
        .map(|r| (r.proxy.addr, r.admin))
        .collect();
    for (_, admin) in &addrs {
        let admin = *admin;
        let ready = eventually(Duration::from_secs(20), || async move {
            admin_get(admin, "/readyz")
                .await
                .is_some_and(|(code, _)| code == 200)
        })
        .await;
        assert!(ready, "replica at {admin} never ready");
    }
    let lb = start_haproxy(&dir, &addrs);
    let tls = client_tls(&ca_pem, &[b"http/1.1"]);
    let lb_addr = lb.addr;
    let t = tls.clone();
    let through = eventually(Duration::from_secs(20), || {
        let t = t.clone();
        async move { request_through(lb_addr, t).await.is_ok() }
    })
    .await;
    assert!(through, "no request got through haproxy");

    // Steady load: 4 clients, each request on a new connection.
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (outcomes, stop, tls) = (outcomes.clone(), stop.clone(), tls.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let error = request_through(lb_addr, tls.clone()).await.err();
                outcomes.lock().unwrap().push(Outcome { started, error });
            }
        }));
    }
    let load_start = Instant::now();
    // haproxy spreads it: every replica serves its share.
    let spread = eventually(Duration::from_secs(60), || {
        let addrs = addrs.clone();
        async move {
            for (_, admin) in &addrs {
                if served(*admin).await < 50.0 {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(spread, "haproxy did not send requests to every replica");
    let mut per_replica = Vec::new();
    for (_, admin) in &addrs {
        per_replica.push(served(*admin).await);
    }

    // SIGKILL replica 1 mid-load: what it had in flight is lost.
    let kill = Instant::now();
    replicas[1].as_ref().unwrap().signal("-KILL");
    let o = outcomes.clone();
    let recovered = eventually(Duration::from_secs(30), || {
        std::future::ready(ok_since(&o, kill) >= 150)
    })
    .await;
    assert!(
        recovered,
        "requests did not recover after a replica was killed"
    );

    // SIGTERM replica 0: unready at once, serving through shutdown_delay
    // (2 s, far above haproxy's 100 ms checks), then draining.
    let mut terminated = replicas[0].take().unwrap();
    let term_admin = terminated.admin;
    let term = Instant::now();
    terminated.signal("-TERM");
    let unready = eventually(Duration::from_secs(10), || async move {
        admin_get(term_admin, "/readyz")
            .await
            .is_some_and(|(code, _)| code == 503)
    })
    .await;
    assert!(unready, "the SIGTERMed replica stayed ready");
    let went_unready = Instant::now();
    let exit = tokio::task::spawn_blocking(move || {
        let status = terminated.child.wait().unwrap();
        (status, terminated)
    });
    let (status, terminated) = tokio::time::timeout(Duration::from_secs(30), exit)
        .await
        .expect("the SIGTERMed replica did not exit within 30 s")
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "the SIGTERMed replica did not drain cleanly"
    );
    drop(terminated);
    let exited = Instant::now();
    // The last replica carries everything.
    let o = outcomes.clone();
    let carried = eventually(Duration::from_secs(30), || {
        std::future::ready(ok_since(&o, exited) >= 150)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert!(carried, "the last replica did not carry the load");

    let outcomes = outcomes.lock().unwrap();
    let sent = outcomes.len();
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    let after_unready: Vec<&&Outcome> = failed
        .iter()
        .filter(|o| o.started >= went_unready)
        .collect();
    let after_term = failed.iter().filter(|o| o.started >= term).count();
    let after_kill = failed.iter().filter(|o| o.started >= kill).count();
    println!(
        "replicas behind haproxy: {sent} requests sent, {} succeeded, {} failed; failed among those started after the SIGKILL: {after_kill}, after the SIGTERM: {after_term}, after the SIGTERMed replica went unready: {}",
        sent - failed.len(),
        failed.len(),
        after_unready.len()
    );
    println!(
        "timeline from the start of the load: every replica had served {per_replica:?} at {:?}; SIGKILL {:?}; SIGTERM {:?}; unready {:?}; SIGTERMed replica exited 0 {:?}; load stopped {:?}",
        kill - load_start,
        kill - load_start,
        term - load_start,
        went_unready - load_start,
        exited - load_start,
        load_start.elapsed(),
    );
    for f in failed.iter().take(10) {
        println!(
            "  failed at {:?}: {}",
            f.started - load_start,
            f.error.as_deref().unwrap_or("")
        );
    }
    assert!(
        after_unready.is_empty(),
        "{} requests that started after the SIGTERMed replica went unready failed",
        after_unready.len()
    );
    // Stronger: nothing that started after the SIGTERM itself failed (the
    // instant /readyz turned 503 is only as exact as the test's polling).
    assert_eq!(
        after_term, 0,
        "requests that started after the SIGTERM failed"
    );
    // Nothing shared but the CA and the config: each replica minted its
    // own token for the route.
    assert_eq!(
        emu.counters().get("generateAccessToken", READER),
        3,
        "one token per replica"
    );
    drop(lb);
}
