//! The parent proxy (`[upstream] proxy`, `proxy_auth`, `no_proxy`): every
//! outbound connection — forwarded requests over HTTP/1.1 and HTTP/2
//! (gRPC included), the token mint's calls to the OAuth and IAM
//! endpoints, spliced tunnels, absolute-form `http://` — goes through a
//! real parent proxy, Debian's `tinyproxy`, whose own log shows each
//! CONNECT; a host `no_proxy` names goes direct.
//!
//! Each Google host of the emulator is reached through a relay port of
//! its own (`[upstream.resolve]` maps each name to its relay), so that the
//! CONNECT lines in tinyproxy's log (the proxy CONNECTs by the mapped
//! address) say which host each tunnel was for.
//!
//! Where `tinyproxy` is not installed these tests print SKIPPED and pass;
//! `.ci/run` installs it.

#[path = "support/client.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use client::*;
use http::Request;
use http_body_util::BodyExt;
use impersonate_proxy::emulator::Emulator;
use proxy::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const READER: &str = "reader@emulator-project.iam.gserviceaccount.com";
const STORAGE: &str = "storage.googleapis.com";
const PUBSUB: &str = "pubsub.googleapis.com";
const PARENT_USER: &str = "gw";
const PARENT_PASSWORD: &str = "parent-pw-5d1e0b9a";

// ------------------------------------------------------------ tinyproxy

fn tinyproxy_installed() -> bool {
    Command::new("tinyproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

macro_rules! require_tinyproxy {
    () => {
        if !tinyproxy_installed() {
            eprintln!(
                "SKIPPED: tinyproxy is not installed (apt-get install tinyproxy; .ci/run installs it)"
            );
            return;
        }
    };
}

/// tinyproxy in the foreground on a loopback port; killed when dropped.
struct Tinyproxy {
    child: std::process::Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tinyproxy {
    /// Its log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether its log shows a CONNECT to `target` (`host:port`).
    fn connected_to(&self, target: &str) -> bool {
        self.connects(target) > 0
    }

    /// How many CONNECTs to `target` its log shows.
    fn connects(&self, target: &str) -> usize {
        let line = format!(": CONNECT {target} HTTP/1.1");
        self.log().lines().filter(|l| l.contains(&line)).count()
    }

    /// Waits for its log to show a CONNECT to `target`.
    async fn saw_connect(&self, target: &str) -> bool {
        eventually(Duration::from_secs(5), || async {
            self.connected_to(target)
        })
        .await
    }
}

/// Starts tinyproxy allowing CONNECT to `ports` only, with Basic
/// credentials when `basic_auth` is set (a port taken between choosing
/// and binding makes it exit: then another is tried).
fn start_tinyproxy(dir: &Path, ports: &[u16], basic_auth: bool) -> Tinyproxy {
    let log = dir.join("tinyproxy.log");
    for attempt in 0..5 {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut conf = format!(
            "Port {}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Connect\nMaxClients 100\nAllow 127.0.0.1\nDisableViaHeader Yes\n",
            addr.port(),
            log.display()
        );
        for p in ports {
            conf.push_str(&format!("ConnectPort {p}\n"));
        }
        if basic_auth {
            conf.push_str(&format!("BasicAuth {PARENT_USER} {PARENT_PASSWORD}\n"));
        }
        let path = dir.join(format!("tinyproxy-{attempt}.conf"));
        std::fs::write(&path, conf).unwrap();
        let mut child = Command::new("tinyproxy")
            .args(["-d", "-c"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if std::net::TcpStream::connect(addr).is_ok() {
                return Tinyproxy { child, addr, log };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("tinyproxy did not start");
}

// ------------------------------------------------------------ the world

/// A loopback port that forwards every connection to `to`, counting them.
async fn relay(to: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if let Ok(mut out) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (addr, count)
}

/// The emulator's hosts, each behind its own relay.
struct Relays {
    by_host: Vec<(&'static str, SocketAddr, Arc<AtomicUsize>)>,
}

impl Relays {
    async fn new(emu: &Emulator) -> Relays {
        let mut by_host = Vec::new();
        for h in impersonate_proxy::emulator::HOSTS {
            let (addr, n) = relay(emu.addr()).await;
            by_host.push((h, addr, n));
        }
        Relays { by_host }
    }

    fn addr(&self, host: &str) -> SocketAddr {
        self.by_host.iter().find(|(h, ..)| *h == host).unwrap().1
    }

    fn connections(&self, host: &str) -> usize {
        self.by_host
            .iter()
            .find(|(h, ..)| *h == host)
            .unwrap()
            .2
            .load(Ordering::Relaxed)
    }

    fn ports(&self) -> Vec<u16> {
        self.by_host.iter().map(|(_, a, _)| a.port()).collect()
    }

    fn resolve_toml(&self) -> String {
        self.by_host
            .iter()
            .map(|(h, a, _)| format!("\"{h}\" = \"{a}\"\n"))
            .collect()
    }
}

struct ParentWorld {
    emu: Emulator,
    relays: Relays,
    parent: Tinyproxy,
    proxy: TestProxy,
    _dir: TempDir,
}

/// A [`ParentWorld`] before the proxy starts: its config, written to
/// `config_dir/proxy.toml`.
struct ParentSetup {
    emu: Emulator,
    relays: Relays,
    parent: Tinyproxy,
    cfg: impersonate_proxy::Config,
    config_dir: TempDir,
    dir: TempDir,
}

/// The emulator behind relays, tinyproxy (with Basic credentials), and a
/// proxy config with `[upstream] proxy` pointing at it. `upstream_keys`
/// are more `[upstream]` lines; `password` is what the proxy's password
/// file holds; `extra` is appended TOML.
async fn parent_setup(name: &str, upstream_keys: &str, password: &str, extra: &str) -> ParentSetup {
    let (emu, key, dir) = emulator_with_key(name).await;
    emu.grant_token_creator(SOURCE_SA, READER);
    let relays = Relays::new(&emu).await;
    let parent = start_tinyproxy(&dir, &relays.ports(), true);
    let pw = owner_only_file(&dir, "parent.pw", &format!("{password}\n"));
    let toml = format!(
        r#"[source]
type = "service_account"
file = "{key}"
[upstream]
extra_ca = ["{ca}"]
response_timeout = "10s"
connect_timeout = "5s"
proxy = "http://{parent}"
proxy_auth = {{ user = "{PARENT_USER}", password_file = "{pw}" }}
{upstream_keys}
[upstream.resolve]
{resolve}
[[route]]
name = "gcs"
hosts = ["{STORAGE}"]
impersonate = "{READER}"
[[route]]
name = "pubsub"
hosts = ["{PUBSUB}"]
impersonate = "{READER}"
{extra}"#,
        key = key.display(),
        ca = emu.ca_pem_path().display(),
        parent = parent.addr,
        pw = pw.display(),
        resolve = relays.resolve_toml(),
    );
    let (cfg, config_dir) = config_with_ca(name, &toml);
    ParentSetup {
        emu,
        relays,
        parent,
        cfg,
        config_dir,
        dir,
    }
}

/// [`parent_setup`], with the proxy started in this process.
async fn parent_world(name: &str, upstream_keys: &str, password: &str, extra: &str) -> ParentWorld {
    let s = parent_setup(name, upstream_keys, password, extra).await;
    let proxy = start_proxy(s.cfg, s.config_dir).await;
    ParentWorld {
        emu: s.emu,
        relays: s.relays,
        parent: s.parent,
        proxy,
        _dir: s.dir,
    }
}

impl ParentWorld {
    /// The CONNECT target the proxy sends the parent for `host`.
    fn target(&self, host: &str) -> String {
        self.relays.addr(host).to_string()
    }
}

/// `GET` the bucket's `hello.txt` through the proxy.
async fn download(proxy: &TestProxy, h2: bool) -> (u16, String) {
    let mut c = client(proxy, STORAGE, h2).await;
    let resp = c
        .send(for_version(
            get(STORAGE, "/storage/v1/b/bkt/o/hello.txt?alt=media"),
            h2,
        ))
        .await;
    let status = resp.status().as_u16();
    (status, body_string(resp).await)
}

/// A gRPC `Publish` of one message to `topic`, over HTTP/2; the
/// `grpc-status` trailer (or header, for a trailers-only answer).
async fn publish(proxy: &TestProxy, topic: &str, data: &[u8]) -> String {
    // PublishRequest { topic = 1; messages = 2 { data = 1 } }, hand-encoded.
    let mut msg = vec![0x0a, data.len() as u8];
    msg.extend_from_slice(data);
    let mut req = vec![0x0a, topic.len() as u8];
    req.extend_from_slice(topic.as_bytes());
    req.push(0x12);
    req.push(msg.len() as u8);
    req.extend_from_slice(&msg);
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(req.len() as u32).to_be_bytes());
    framed.extend_from_slice(&req);
    let mut c = client(proxy, PUBSUB, true).await;
    let request = Request::post(format!(
        "https://{PUBSUB}/google.pubsub.v1.Publisher/Publish"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(full(Bytes::from(framed)))
    .unwrap();
    let resp = c.send(request).await;
    if let Some(s) = resp.headers().get("grpc-status") {
        return s.to_str().unwrap().to_owned();
    }
    let collected = resp.into_body().collect().await.unwrap();
    collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_else(|| "none".into())
}

// ------------------------------------------------------------ tests

#[tokio::test]
async fn requests_and_token_calls_go_through_the_parent_and_reach_the_emulator_as_the_route_target()
{
    require_tinyproxy!();
    let w = parent_world("parent-ok", "", PARENT_PASSWORD, "").await;

    for h2 in [false, true] {
        let (status, body) = download(&w.proxy, h2).await;
        assert_eq!(status, 200, "h2={h2}: {body}");
        assert_eq!(body, "hello\n");
    }
    let calls = w.emu.data_calls();
    let versions: Vec<_> = calls
        .iter()
        .filter(|c| c.endpoint == "storage.download")
        .map(|c| (c.principal.as_str(), c.http_version))
        .collect();
    assert_eq!(
        versions,
        [(READER, "HTTP/1.1"), (READER, "HTTP/2")],
        "{calls:?}"
    );

    // gRPC inside the parent's tunnel.
    let topic = "projects/emulator-project/topics/through-parent";
    assert_eq!(publish(&w.proxy, topic, b"hi").await, "0");
    let published = w.emu.published(topic);
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].principal, READER);

    // A real client too: curl, HTTP/1.1 and HTTP/2.
    for version in ["--http1.1", "--http2"] {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "-x"])
            .arg(format!("http://{}", w.proxy.addr))
            .arg("--cacert")
            .arg(&w.proxy.ca_pem)
            .arg(version)
            .arg(format!(
                "https://{STORAGE}/storage/v1/b/bkt/o/hello.txt?alt=media"
            ))
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .await;
        match out {
            Ok(out) => assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "hello\n",
                "{version}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("curl not run ({e}); .ci/run installs it"),
        }
    }

    // The parent's own log: the token mint (OAuth token endpoint, IAM)
    // and the forwarded requests (Storage, Pub/Sub) each CONNECTed
    // through it.
    for host in [
        "oauth2.googleapis.com",
        "iamcredentials.googleapis.com",
        "storage.googleapis.com",
        "pubsub.googleapis.com",
    ] {
        assert!(
            w.parent.saw_connect(&w.target(host)).await,
            "no CONNECT for {host} ({}) in tinyproxy's log:\n{}",
            w.target(host),
            w.parent.log()
        );
    }
    // And every connection the relays saw came from the parent: as many
    // connections as CONNECTs.
    for host in impersonate_proxy::emulator::HOSTS {
        let target = w.target(host);
        assert!(
            eventually(Duration::from_secs(5), || async {
                w.relays.connections(host) == w.parent.connects(&target)
            })
            .await,
            "{host}: {} connections, {} CONNECTs",
            w.relays.connections(host),
            w.parent.connects(&target)
        );
    }
    // No secret in the parent's log either (it logs request lines only).
    assert!(!w.parent.log().contains(PARENT_PASSWORD));
}

#[tokio::test]
async fn wrong_parent_credentials_give_a_503_naming_the_parent_not_the_password() {
    require_tinyproxy!();
    let wrong = "not-the-parent-pw-77";
    let w = parent_world(
        "parent-wrong-pw",
        "",
        wrong,
        "[[route]]\nname = \"open\"\nhosts = [\"oauth2.googleapis.com\"]\naction = \"passthrough\"\n",
    )
    .await;
    let (status, body) = download(&w.proxy, false).await;
    assert_eq!(status, 503, "{body}");
    let parent = w.parent.addr.to_string();
    assert!(
        body.contains(&format!("the parent proxy {parent} refused CONNECT")),
        "{body}"
    );
    // tinyproxy says 401 to wrong credentials (407 to none).
    assert!(body.contains("HTTP/1.0 401"), "{body}");
    assert!(
        body.contains("it did not accept upstream.proxy_auth"),
        "{body}"
    );
    assert!(body.contains("gcs"), "the route is named: {body}");
    // A passthrough request cannot be forwarded either: 502, same cause.
    let mut c = client(&w.proxy, "oauth2.googleapis.com", false).await;
    let resp = c
        .send(for_version(get("oauth2.googleapis.com", "/"), false))
        .await;
    let status = resp.status();
    let passthrough = body_string(resp).await;
    assert_eq!(status, 502, "{passthrough}");
    assert!(
        passthrough.contains(&format!("the parent proxy {parent} refused CONNECT")),
        "{passthrough}"
    );
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{PARENT_USER}:{s}"))
    };
    for text in [&body, &passthrough] {
        for secret in [wrong.to_owned(), b64(wrong), PARENT_PASSWORD.to_owned()] {
            assert!(!text.contains(&secret), "{text}");
        }
    }
    // The parent refused the mint's first call; nothing reached Google.
    assert!(
        w.parent
            .saw_connect(&w.target("oauth2.googleapis.com"))
            .await
    );
    assert_eq!(w.relays.connections("oauth2.googleapis.com"), 0);
    assert_eq!(w.emu.counters().total("storage"), 0);
}

#[tokio::test]
async fn a_no_proxy_host_goes_direct_and_the_others_through_the_parent() {
    require_tinyproxy!();
    let w = parent_world(
        "parent-no-proxy",
        &format!("no_proxy = [\"{STORAGE}\", \".nothing.internal\"]"),
        PARENT_PASSWORD,
        "",
    )
    .await;
    for h2 in [false, true] {
        let (status, body) = download(&w.proxy, h2).await;
        assert_eq!(status, 200, "h2={h2}: {body}");
    }
    assert!(w.relays.connections(STORAGE) >= 1);
    // The token mint still went through the parent...
    assert!(
        w.parent
            .saw_connect(&w.target("iamcredentials.googleapis.com"))
            .await,
        "{}",
        w.parent.log()
    );
    assert!(
        w.parent
            .saw_connect(&w.target("oauth2.googleapis.com"))
            .await
    );
    // ...and Storage never did.
    assert!(
        !w.parent.connected_to(&w.target(STORAGE)),
        "storage is in no_proxy, yet tinyproxy saw it:\n{}",
        w.parent.log()
    );
}

#[tokio::test]
async fn the_parent_password_never_reaches_the_logs_or_the_audit_at_debug_level() {
    require_tinyproxy!();
    let s = parent_setup("parent-logs", "", PARENT_PASSWORD, "").await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
        .args(["run", "--config"])
        .arg(s.config_dir.join("proxy.toml"))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { stdout }, &mut s);
        s
    });
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let err_reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(a) = line.split("listening on http://").nth(1) {
                let _ = addr_tx.send(a.trim().to_owned());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the proxy started");
    for version in ["--http1.1", "--http2"] {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", version, "-x"])
            .arg(format!("http://{addr}"))
            .arg("--cacert")
            .arg(s.config_dir.join("certs/ca.pem"))
            .arg(format!(
                "https://{STORAGE}/storage/v1/b/bkt/o/hello.txt?alt=media"
            ))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .await;
        let Ok(out) = out else {
            eprintln!("SKIPPED: curl is not installed (.ci/run installs it)");
            let _ = child.kill();
            let _ = child.wait();
            return;
        };
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n", "{version}");
    }
    let _ = child.kill();
    let _ = child.wait();
    let logs = err_reader.join().unwrap();
    let audit = out_reader.join().unwrap();
    // The debug log did cover the CONNECTs to the parent.
    assert!(logs.contains("tunnel through the parent proxy"), "{logs}");
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{PARENT_USER}:{PARENT_PASSWORD}"))
    };
    for secret in [PARENT_PASSWORD, b64.as_str()] {
        assert!(!logs.contains(secret), "the log holds a parent credential");
        assert!(
            !audit.contains(secret),
            "the audit holds a parent credential"
        );
    }
}

/// A server that speaks first (like SMTP), then echoes a line.
async fn banner_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 banner first\r\n").await;
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf).await {
                    let _ = s.write_all(&buf[..n]).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn tunnels_and_plain_http_go_through_the_parent_which_resolves_names() {
    require_tinyproxy!();
    let dir = tempdir("parent-tunnel");
    let banner = banner_server().await;
    let (plain, seen) = upstream::start_upstream(None).await;
    let (direct, seen_direct) = upstream::start_upstream(None).await;
    let parent = start_tinyproxy(&dir, &[banner.port(), plain.port()], false);
    let (cfg, config_dir) = config_with_ca(
        "parent-tunnel",
        &format!(
            r#"[upstream]
proxy = "http://{parent}"
no_proxy = ["storage.googleapis.com"]
[upstream.resolve]
"banner.example" = "{banner}"
"pubsub.googleapis.com" = "{plain}"
"storage.googleapis.com" = "{direct}"
[intercept]
other = "tunnel"
allow_private = ["127.0.0.0/8"]
{PASSTHROUGH_ALL}"#,
            parent = parent.addr
        ),
    );
    let proxy = start_proxy(cfg, config_dir).await;

    // A spliced tunnel to a mapped host: CONNECTed through the parent by
    // the mapped address, and the server's first words come through.
    let (mut s, head) = raw_connect(proxy.addr, "banner.example:25").await;
    assert_eq!(status_of(&head), Some(200), "{head}");
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"220 banner first\r\n");
    s.write_all(b"PING\r\n").await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"PING\r\n");
    assert!(
        parent.saw_connect(&banner.to_string()).await,
        "{}",
        parent.log()
    );

    // A name the map does not hold is not resolved here: the parent gets
    // the name (and resolves it), so the proxy's private-address check,
    // which would refuse `localhost`, does not judge it.
    let target = format!("localhost:{}", banner.port());
    let (mut s, head) = raw_connect(proxy.addr, &target).await;
    assert_eq!(status_of(&head), Some(200), "{head}");
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"220 banner first\r\n");
    assert!(parent.saw_connect(&target).await, "{}", parent.log());

    // A port the parent does not allow: 502 naming the parent and its
    // answer.
    let (mut s, head) = raw_connect(proxy.addr, "localhost:1").await;
    assert_eq!(status_of(&head), Some(502), "{head}");
    let body = read_body(&mut s, &head).await;
    assert!(
        body.contains(&format!(
            "the parent proxy {} refused CONNECT localhost:1",
            parent.addr
        )),
        "{body}"
    );

    // Absolute-form http:// to an intercepted host: through the parent,
    // by the mapped address.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET http://pubsub.googleapis.com/echo HTTP/1.1\r\nHost: pubsub.googleapis.com\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    let body = read_body(&mut s, &head).await;
    assert_eq!(status_of(&head), Some(200), "{head}{body}");
    assert_eq!(
        json(&body)["headers"]["host"],
        "pubsub.googleapis.com",
        "{body}"
    );
    assert_eq!(seen.requests.load(Ordering::Relaxed), 1);
    assert!(
        parent.saw_connect(&plain.to_string()).await,
        "{}",
        parent.log()
    );

    // The same to a host `no_proxy` names: straight to the address the
    // egress check passed (the parent, which allows no CONNECT to that
    // port, would have refused it).
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET http://storage.googleapis.com/echo HTTP/1.1\r\nHost: storage.googleapis.com\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    let body = read_body(&mut s, &head).await;
    assert_eq!(status_of(&head), Some(200), "{head}{body}");
    assert_eq!(seen_direct.requests.load(Ordering::Relaxed), 1);
    assert!(
        !parent.connected_to(&direct.to_string()),
        "{}",
        parent.log()
    );
    drop(dir);
}

// ------------------------------------------------------------ config

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
}

/// `check` on a config with `upstream` (the `[upstream]` section's
/// lines): its exit code, and what it wrote (stderr, then stdout).
fn check(name: &str, upstream: &str) -> (Option<i32>, String) {
    let (_, dir) = config_with_ca(name, "");
    let path = dir.join("proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}\n[upstream]\n{upstream}\n")).unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ),
    )
}

#[test]
fn check_exits_2_on_a_bad_parent_proxy_naming_the_key() {
    for (upstream, key, says) in [
        (
            "proxy = \"socks5://127.0.0.1:1080\"",
            "upstream.proxy",
            "not supported",
        ),
        (
            "proxy = \"https://corp-proxy:3128\"",
            "upstream.proxy",
            "not supported",
        ),
        (
            "proxy = \"http://gw:hunter2@corp-proxy:3128\"",
            "upstream.proxy",
            "proxy_auth",
        ),
        ("proxy = \"http://corp-proxy\"", "upstream.proxy", "no port"),
        (
            "proxy = \"http://bad_host!:3128\"",
            "upstream.proxy",
            "not a host name",
        ),
        (
            "proxy_auth = { user = \"gw\", password_file = \"pw\" }",
            "upstream.proxy_auth",
            "upstream.proxy is not",
        ),
        (
            "proxy = \"http://corp-proxy:3128\"\nno_proxy = [\"ok.internal\", \"*\"]",
            "upstream.no_proxy[1]",
            "every connection",
        ),
        (
            "proxy = \"http://corp-proxy:3128\"\nno_proxy = [\"host:80\"]",
            "upstream.no_proxy[0]",
            "`.domain`",
        ),
    ] {
        let (code, stderr) = check("parent-check", upstream);
        assert_eq!(code, Some(2), "{upstream}: {stderr}");
        assert!(stderr.contains(&format!("`{key}`")), "{upstream}: {stderr}");
        assert!(stderr.contains(says), "{upstream}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
    let (code, stderr) = check(
        "parent-check-ok",
        "proxy = \"http://corp-proxy.internal:3128\"\nno_proxy = [\"metadata.google.internal\", \".corp.internal\", \"169.254.169.254\"]",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("parent     http://corp-proxy.internal:3128\nno_proxy   metadata.google.internal, .corp.internal, 169.254.169.254"),
        "{stderr}"
    );
}

#[cfg(unix)]
#[test]
fn run_refuses_a_parent_password_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let (_, dir) = config_with_ca("parent-pw-mode", "");
    let pw = owner_only_file(&dir, "parent.pw", "secret");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = dir.join("proxy.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!(
            "{text}\n[upstream]\nproxy = \"http://127.0.0.1:9\"\nproxy_auth = {{ user = \"gw\", password_file = \"parent.pw\" }}\n"
        ),
    )
    .unwrap();
    let mut child = bin()
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A proxy that accepted the file would serve until killed.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
    assert!(
        stderr.contains("upstream.proxy_auth.password_file"),
        "{stderr}"
    );
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
}
