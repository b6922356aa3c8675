//! The proxy as a VPC egress gateway, with real clients: curl straight to
//! the transparent listener (`--connect-to`, as a private DNS zone would
//! send it), curl through the HTTPS proxy listener with a client
//! certificate, and `haproxy` in front speaking PROXY protocol v1 and v2.

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gateway::{curl, start, Gateway};
use impersonate_proxy::emulator::Emulator;
use proxy::{config_with_proxy_keys, emulator_upstream_toml, emulator_with_key, SOURCE_SA};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use support::{eventually, tempdir, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use upstream::{start_upstream, upstream_certs};

const READER: &str = "reader@emulator-project.iam.gserviceaccount.com";
const OBJECT_URL: &str = "https://storage.googleapis.com/storage/v1/b/bkt/o/obj?alt=media";
const SPIFFE: &str = "spiffe://corp/ns/batch/sa/runner";

/// The emulator, with READER's object `bkt/obj` = "hello", and a proxy for
/// it whose `[proxy]` gets `proxy_keys`; `extra` is appended TOML.
async fn emu_gateway(name: &str, proxy_keys: &str, extra: &str) -> (Gateway, Emulator, TempDir) {
    let (emu, key, emu_dir) = emulator_with_key(name).await;
    emu.grant_token_creator(SOURCE_SA, READER);
    emu.put_object("bkt", "obj", "hello");
    let toml = format!(
        "[source]\ntype = \"service_account\"\nfile = \"{}\"\n[audit]\nfile = \"audit.jsonl\"\n{}\n[[route]]\nname = \"gcs\"\nhosts = [\"storage.googleapis.com\"]\nimpersonate = \"{READER}\"\n{extra}",
        key.display(),
        emulator_upstream_toml(&emu, ""),
    );
    let (cfg, dir) = config_with_proxy_keys(name, proxy_keys, &toml);
    (start(cfg, dir).await, emu, emu_dir)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ------------------------------------------------ transparent listener

#[tokio::test]
async fn curl_straight_to_the_transparent_listener_reaches_storage_as_the_routes_target() {
    let (g, emu, _e) = emu_gateway(
        "gw-transparent",
        "transparent_listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"",
        "",
    )
    .await;
    let to = format!(
        "storage.googleapis.com:443:127.0.0.1:{}",
        g.transparent.unwrap().port()
    );
    for flag in ["--http1.1", "--http2"] {
        let (ok, out, err) = curl(&[
            flag,
            "--connect-to",
            &to,
            "--cacert",
            s(&g.ca_pem),
            OBJECT_URL,
        ])
        .await;
        assert!(ok, "curl {flag}: {err}");
        assert_eq!(out, "hello", "curl {flag}");
    }
    assert_eq!(emu.counters().get("storage", READER), 2);
    let records = g.audited("/storage/v1/b/bkt/o/obj", 2).await;
    assert_eq!(records.len(), 2, "{records:?}");
    for r in &records {
        assert_eq!(r["listener"], "transparent", "{r}");
        assert_eq!(r["route"], "gcs", "{r}");
        assert_eq!(r["target_principal"], READER, "{r}");
        assert!(
            r["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{r}"
        );
    }
    // The same Host/SNI agreement as inside a CONNECT: a Host naming
    // another host than the SNI is answered 421 by the proxy.
    let (ok, out, err) = curl(&[
        "--connect-to",
        &to,
        "--cacert",
        s(&g.ca_pem),
        "-H",
        "Host: other.googleapis.com",
        "-w",
        "\n%{http_code}",
        OBJECT_URL,
    ])
    .await;
    assert!(ok, "{err}");
    assert!(out.ends_with("\n421"), "{out}");
    assert_eq!(emu.counters().get("storage", READER), 2);
    let (_, metrics) = support_http_get(g.admin.unwrap(), "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("impersonate_proxy_requests_total{")
                && l.contains("listener=\"transparent\"")
                && l.contains("identified_by=\"none\"")),
        "{metrics}"
    );
}

/// A plain HTTP/1.1 GET (the admin endpoint).
async fn support_http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text)
}

/// A TLS server for `tunnel.example` (not intercepted) and a proxy with a
/// transparent listener whose `[intercept] other` is `other`.
async fn tunnel_world(name: &str, other: &str) -> (Gateway, SocketAddr, TempDir) {
    let certs_dir = tempdir(&format!("{name}-up"));
    let certs = upstream_certs(&certs_dir, &["tunnel.example"]);
    let (up, _seen) = start_upstream(Some(certs.server)).await;
    let toml = format!(
        "[audit]\nfile = \"audit.jsonl\"\n[intercept]\nother = \"{other}\"\nallow_private = [\"127.0.0.0/8\"]\n[upstream.resolve]\n\"tunnel.example\" = \"{up}\"\n"
    );
    let (cfg, dir) = config_with_proxy_keys(name, "transparent_listen = \"127.0.0.1:0\"", &toml);
    (start(cfg, dir).await, up, certs_dir)
}

#[tokio::test]
async fn a_host_that_is_not_intercepted_is_spliced_with_its_client_hello_or_closed() {
    let (g, _up, certs) = tunnel_world("gw-splice", "tunnel").await;
    let port = g.transparent.unwrap().port();
    let to = format!("tunnel.example:443:127.0.0.1:{port}");
    // The client verifies the real server's certificate (not the proxy's
    // CA): the bytes went through untouched, ClientHello first.
    let ca = certs.join("upstream-ca.pem");
    let (ok, out, err) = curl(&[
        "--connect-to",
        &to,
        "--cacert",
        s(&ca),
        "https://tunnel.example/echo",
    ])
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("\"path\":\"/echo\""), "{out}");
    let spliced = || {
        g.audit().iter().any(|r| {
            r["host"] == "tunnel.example:443"
                && r["action"] == "tunnel"
                && r["listener"] == "transparent"
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || async { spliced() }).await,
        "{:?}",
        g.audit()
    );
    // No SNI (an IP address in the URL): closed.
    let (ok, _, err) = curl(&["-k", &format!("https://127.0.0.1:{port}/echo")]).await;
    assert!(!ok, "answered without an SNI: {err}");

    let (g, _up, certs) = tunnel_world("gw-splice-deny", "deny").await;
    let to = format!(
        "tunnel.example:443:127.0.0.1:{}",
        g.transparent.unwrap().port()
    );
    let ca = certs.join("upstream-ca.pem");
    let (ok, out, err) = curl(&[
        "--connect-to",
        &to,
        "--cacert",
        s(&ca),
        "https://tunnel.example/echo",
    ])
    .await;
    assert!(!ok, "other = \"deny\" let it through: {out}");
    assert!(!err.is_empty());
    let denied = || {
        g.audit()
            .iter()
            .any(|r| r["host"] == "tunnel.example:443" && r["action"] == "deny")
    };
    assert!(
        eventually(Duration::from_secs(10), || async { denied() }).await,
        "{:?}",
        g.audit()
    );
}

// ------------------------------------------------ TLS listener, client certificates

/// PEM files: a server CA and the proxy listener's certificate for
/// 127.0.0.1; a client CA, client certificates (one with the SPIFFE ID,
/// one with another, one revoked), and the client CA's CRL.
struct TlsFiles {
    server_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_ca: PathBuf,
    crl: PathBuf,
    /// (cert, key) per client: "batch", "other", "revoked".
    clients: Vec<(PathBuf, PathBuf)>,
}

fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

fn write_key(path: &Path, key: &KeyPair) {
    std::fs::write(path, key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn tls_files(dir: &Path) -> TlsFiles {
    let (server_ca, server_issuer) = ca("gateway server CA");
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "gateway.internal".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &server_issuer).unwrap();
    let f = |n: &str| dir.join(n);
    std::fs::write(f("server-ca.pem"), server_ca.pem()).unwrap();
    std::fs::write(f("server.pem"), cert.pem()).unwrap();
    write_key(&f("server-key.pem"), &key);

    let (client_ca, client_issuer) = ca("gateway client CA");
    std::fs::write(f("client-ca.pem"), client_ca.pem()).unwrap();
    let mut clients = Vec::new();
    for (i, (name, uri)) in [
        ("batch", SPIFFE),
        ("other", "spiffe://corp/ns/other/sa/x"),
        ("revoked", SPIFFE),
    ]
    .into_iter()
    .enumerate()
    {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(rcgen::SerialNumber::from(100 + i as u64));
        let cert = params.signed_by(&key, &client_issuer).unwrap();
        let (c, k) = (f(&format!("{name}.pem")), f(&format!("{name}-key.pem")));
        std::fs::write(&c, cert.pem()).unwrap();
        write_key(&k, &key);
        clients.push((c, k));
    }
    let crl = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2024, 1, 1),
        next_update: rcgen::date_time_ymd(2100, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from(102u64),
            revocation_time: rcgen::date_time_ymd(2024, 1, 1),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&client_issuer)
    .unwrap();
    std::fs::write(f("clients.crl.pem"), crl.pem().unwrap()).unwrap();
    TlsFiles {
        server_ca: f("server-ca.pem"),
        server_cert: f("server.pem"),
        server_key: f("server-key.pem"),
        client_ca: f("client-ca.pem"),
        crl: f("clients.crl.pem"),
        clients,
    }
}

fn tls_proxy_keys(t: &TlsFiles) -> String {
    format!(
        "tls_listen = \"127.0.0.1:0\"\n[proxy.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nclient_crl = [\"{}\"]\n",
        s(&t.server_cert),
        s(&t.server_key),
        s(&t.client_ca),
        s(&t.crl)
    )
}

#[tokio::test]
async fn curl_through_the_https_proxy_with_a_client_certificate_is_its_cert_san_client() {
    let files_dir = tempdir("gw-tls-files");
    let t = tls_files(&files_dir);
    let (g, emu, _e) = emu_gateway(
        "gw-tls",
        &tls_proxy_keys(&t),
        &format!(
            "[[client]]\nname = \"batch\"\ncert_san = [\"{SPIFFE}\", \"batch.corp.internal\"]\n"
        ),
    )
    .await;
    let proxy_url = format!("https://127.0.0.1:{}", g.tls.unwrap().port());
    let through = |cert: Option<&(PathBuf, PathBuf)>, extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "--proxy".into(),
            proxy_url.clone(),
            "--proxy-cacert".into(),
            s(&t.server_ca).into(),
            "--cacert".into(),
            s(&g.ca_pem).into(),
            "-w".into(),
            "\n%{http_code}".into(),
        ];
        if let Some((c, k)) = cert {
            args.extend([
                "--proxy-cert".into(),
                s(c).into(),
                "--proxy-key".into(),
                s(k).into(),
            ]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        args.push(OBJECT_URL.into());
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&args).await
        }
    };
    let (ok, out, err) = through(Some(&t.clients[0]), &[]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "hello\n200");
    let records = g.audited("/storage/v1/b/bkt/o/obj", 1).await;
    assert_eq!(records[0]["client_name"], "batch", "{records:?}");
    assert_eq!(records[0]["identified_by"], "cert", "{records:?}");
    assert_eq!(records[0]["listener"], "tls", "{records:?}");
    assert_eq!(emu.counters().get("storage", READER), 1);

    // No certificate: the handshake fails with an alert; nothing proxied.
    let (ok, out, err) = through(None, &[]).await;
    assert!(!ok, "served without a client certificate: {out}");
    assert!(
        err.contains("SSL") || err.contains("alert") || err.contains("certificate"),
        "{err}"
    );
    // Revoked by the CRL: the same.
    let (ok, out, err) = through(Some(&t.clients[2]), &[]).await;
    assert!(!ok, "served a revoked certificate: {out}");
    assert!(
        err.contains("SSL") || err.contains("alert") || err.contains("revoked"),
        "{err}"
    );
    // A valid certificate whose SAN no [[client]] lists: 407.
    let (ok, out, err) = through(Some(&t.clients[1]), &[]).await;
    assert!(!ok, "{out}");
    assert!(err.contains("407"), "{err}");
    assert_eq!(emu.counters().get("storage", READER), 1);
}

// ------------------------------------------------ PROXY protocol behind haproxy

fn haproxy_installed() -> bool {
    std::process::Command::new("haproxy")
        .arg("-v")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// haproxy in the foreground; killed when dropped.
struct Haproxy(std::process::Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// TCP frontends, each in front of one proxy listener with its PROXY
/// protocol flavour: `(frontend, backend, "send-proxy" | "send-proxy-v2")`.
fn start_haproxy(dir: &Path, routes: &[(SocketAddr, SocketAddr, &str)]) -> Haproxy {
    let mut cfg = "global\n    maxconn 200\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n".to_owned();
    for (i, (front, back, flavour)) in routes.iter().enumerate() {
        cfg.push_str(&format!(
            "frontend f{i}\n    bind {front}\n    default_backend b{i}\nbackend b{i}\n    server s{i} {back} {flavour}\n"
        ));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let mut child = std::process::Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = child.wait();
            panic!("haproxy exited: {status}");
        }
        if routes
            .iter()
            .all(|(f, _, _)| std::net::TcpStream::connect(f).is_ok())
        {
            return Haproxy(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("haproxy did not start");
}

#[tokio::test]
async fn haproxy_with_proxy_protocol_v1_and_v2_attributes_requests_to_the_original_source() {
    if !haproxy_installed() {
        eprintln!(
            "SKIPPED: haproxy is not installed (apt-get install haproxy; .ci/run installs it)"
        );
        return;
    }
    let (g, emu, _e) = emu_gateway(
        "gw-ppp",
        "transparent_listen = \"127.0.0.1:0\"\nproxy_protocol_from = [\"127.0.0.1\"]",
        "[[client]]\nname = \"two\"\ncidrs = [\"127.0.0.2\"]\n[[client]]\nname = \"three\"\ncidrs = [\"127.0.0.3\"]\n",
    )
    .await;
    let (v2, v1, tv2, tv1) = (free_port(), free_port(), free_port(), free_port());
    let hdir = tempdir("gw-ppp-haproxy");
    let _lb = start_haproxy(
        &hdir,
        &[
            (v2, g.listen, "send-proxy-v2"),
            (v1, g.listen, "send-proxy"),
            (tv2, g.transparent.unwrap(), "send-proxy-v2"),
            (tv1, g.transparent.unwrap(), "send-proxy"),
        ],
    );
    let ca = s(&g.ca_pem).to_owned();
    for (source, front, path) in [
        ("127.0.0.2", v2, "obj"),
        ("127.0.0.3", v1, "obj"),
        ("127.0.0.3", v2, "obj"),
    ] {
        let (ok, out, err) = curl(&[
            "--interface",
            source,
            "--proxy",
            &format!("http://{front}"),
            "--cacert",
            &ca,
            &OBJECT_URL.replace("obj?", &format!("{path}?")),
        ])
        .await;
        assert!(ok, "from {source} through {front}: {err}");
        assert_eq!(out, "hello");
    }
    // The transparent listener behind the load balancer too: the header,
    // then the ClientHello.
    for (source, front) in [("127.0.0.2", tv2), ("127.0.0.3", tv1)] {
        let (ok, out, err) = curl(&[
            "--interface",
            source,
            "--connect-to",
            &format!("storage.googleapis.com:443:{front}"),
            "--cacert",
            &ca,
            OBJECT_URL,
        ])
        .await;
        assert!(ok, "from {source} through {front}: {err}");
        assert_eq!(out, "hello");
    }
    let records = g.audited("/storage/v1/b/bkt/o/obj", 5).await;
    let seen: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            let ip = r["client"]
                .as_str()
                .unwrap()
                .rsplit_once(':')
                .unwrap()
                .0
                .to_owned();
            (
                ip,
                r["client_name"].as_str().unwrap_or("").to_owned(),
                r["listener"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = |ip: &str, name: &str, listener: &str| {
        (ip.to_owned(), name.to_owned(), listener.to_owned())
    };
    assert_eq!(
        seen,
        [
            want("127.0.0.2", "two", "connect"),
            want("127.0.0.3", "three", "connect"),
            want("127.0.0.3", "three", "connect"),
            want("127.0.0.2", "two", "transparent"),
            want("127.0.0.3", "three", "transparent"),
        ],
        "{records:?}"
    );
    assert!(records.iter().all(|r| r["identified_by"] == "cidr"));
    assert_eq!(emu.counters().get("storage", READER), 5);

    // A listed peer that sends no header is closed, unanswered.
    let mut direct = tokio::net::TcpStream::connect(g.listen).await.unwrap();
    direct
        .write_all(b"CONNECT storage.googleapis.com:443 HTTP/1.1\r\nHost: storage.googleapis.com:443\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), direct.read_to_end(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "{read:?} {:?}",
        String::from_utf8_lossy(&buf)
    );
    // An unlisted peer is never read a header from: served as itself.
    let (ok, out, err) = curl(&[
        "--interface",
        "127.0.0.3",
        "--proxy",
        &format!("http://{}", g.listen),
        "--cacert",
        &ca,
        OBJECT_URL,
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "hello");
}

// ------------------------------------------------ check

/// `impersonate-proxy check` on a config with `proxy` in its `[proxy]`:
/// the exit code and what it printed on stderr.
fn check(dir: &Path, proxy: &str) -> (Option<i32>, String) {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, format!("[proxy]\nlisten = \"127.0.0.1:0\"\n{proxy}")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_names_the_key_of_a_bad_gateway_setting() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("gw-check");
    let t = tls_files(&dir);
    let good = tls_proxy_keys(&t);
    let (code, err) = check(&dir, &good);
    assert_eq!(code, Some(0), "{err}");
    let cases = [
        (
            format!("proxy_protocol_from = [\"10.0.0.0/33\"]\n{good}"),
            "proxy.proxy_protocol_from[0]",
        ),
        (
            good.replace(s(&t.server_cert), "/nonexistent/cert.pem"),
            "proxy.tls.cert",
        ),
        (
            good.replace(s(&t.client_ca), "/nonexistent/ca.pem"),
            "proxy.tls.client_ca",
        ),
        (
            good.replace(s(&t.crl), s(&t.server_cert)),
            "proxy.tls.client_crl[0]",
        ),
        (
            good.replace(s(&t.server_key), s(&t.clients[0].1)),
            "proxy.tls.key",
        ),
    ];
    for (proxy, key) in &cases {
        let (code, err) = check(&dir, proxy);
        assert_eq!(code, Some(2), "{key}: {err}");
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
    }
    std::fs::set_permissions(&t.server_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = check(&dir, &good);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`proxy.tls.key`") && err.contains("chmod 600"),
        "{err}"
    );
}

/// Python's urllib3 (from the client matrix's pinned virtualenv, as
/// `requests` uses it) through `tls_listen`, with a client certificate
/// in its proxy TLS context.
#[tokio::test]
async fn python_urllib3_through_the_https_proxy_with_a_client_certificate() {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients/python/.venv/bin/python");
    if !python.exists() {
        eprintln!(
            "SKIPPED: {} is missing (tests/clients/install creates it; .ci/run runs it)",
            python.display()
        );
        return;
    }
    let files_dir = tempdir("gw-py-files");
    let t = tls_files(&files_dir);
    let (g, emu, _e) = emu_gateway(
        "gw-py",
        &tls_proxy_keys(&t),
        &format!("[[client]]\nname = \"batch\"\ncert_san = [\"{SPIFFE}\"]\n"),
    )
    .await;
    let script = r#"
import ssl, sys, urllib3
proxy_url, proxy_ca, cert, key, ca, url = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=proxy_ca)
ctx.load_cert_chain(cert, key)
http = urllib3.ProxyManager(proxy_url, proxy_ssl_context=ctx, ca_certs=ca)
r = http.request("GET", url, retries=False)
print(r.status, r.data.decode())
"#;
    let (cert, key) = &t.clients[0];
    let out = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(format!("https://127.0.0.1:{}", g.tls.unwrap().port()))
        .args([s(&t.server_ca), s(cert), s(key), s(&g.ca_pem), OBJECT_URL])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "200 hello");
    let records = g.audited("/storage/v1/b/bkt/o/obj", 1).await;
    assert_eq!(records[0]["client_name"], "batch", "{records:?}");
    assert_eq!(records[0]["identified_by"], "cert", "{records:?}");
    assert_eq!(emu.counters().get("storage", READER), 1);
}

/// Every listener is served when the places under `max_connections` are
/// fewer than the listeners: a listener nobody connects to holds none.
#[tokio::test]
async fn idle_listeners_hold_no_places_under_max_connections() {
    let files_dir = tempdir("gw-places-files");
    let t = tls_files(&files_dir);
    let (g, _emu, _e) = emu_gateway(
        "gw-places",
        &format!(
            "workers = 1\ntransparent_listen = \"127.0.0.1:0\"\n{}",
            tls_proxy_keys(&t)
        ),
        "[limits]\nmax_connections = 2\n",
    )
    .await;
    let to = format!(
        "storage.googleapis.com:443:127.0.0.1:{}",
        g.transparent.unwrap().port()
    );
    let ca = s(&g.ca_pem).to_owned();
    for _ in 0..2 {
        let (ok, out, err) = curl(&["--connect-to", &to, "--cacert", &ca, OBJECT_URL]).await;
        assert!(ok, "transparent: {err}");
        assert_eq!(out, "hello");
        let (ok, out, err) = curl(&[
            "--proxy",
            &format!("http://{}", g.listen),
            "--cacert",
            &ca,
            OBJECT_URL,
        ])
        .await;
        assert!(ok, "listen: {err}");
        assert_eq!(out, "hello");
    }
}
