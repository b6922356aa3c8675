//! `impersonate-proxy demo`: the whole product offline. Starts the Google
//! emulator and the proxy on loopback with a throwaway CA, sends a few
//! requests through the proxy the way a client library would (CONNECT,
//! TLS, HTTP/1.1 and HTTP/2), prints what each hop saw, then keeps serving
//! until Ctrl-C so the user can try `curl` by hand.

mod signed_url;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::emulator::{Emulator, EmulatorOptions, HOSTS};
use crate::proxy::Proxy;

const PROJECT: &str = "demo-project";
const CALLER: &str = "ci-runner@demo-project.iam.gserviceaccount.com";
const READER: &str = "gcs-reader@demo-project.iam.gserviceaccount.com";
const HOP: &str = "deployer@demo-project.iam.gserviceaccount.com";
const WRITER: &str = "gcs-writer@demo-project.iam.gserviceaccount.com";
const STRANGER: &str = "billing-admin@demo-project.iam.gserviceaccount.com";
const HOST: &str = "storage.googleapis.com";

/// The demo failed to set itself up.
#[derive(Debug, thiserror::Error)]
#[error("demo: {0}")]
pub struct DemoError(String);

fn err(what: &str) -> impl Fn(&dyn std::fmt::Display) -> DemoError + '_ {
    move |e| DemoError(format!("{what}: {e}"))
}

/// Options for [`run`].
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the proxy listens; if taken, an ephemeral port is used.
    pub listen: SocketAddr,
    /// Working directory for the throwaway CA, keys and audit log.
    pub dir: PathBuf,
    /// Where the process's warnings and logs go instead of the terminal,
    /// named in the demo's header.
    pub log_file: Option<PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            dir: std::env::temp_dir()
                .join(format!("impersonate-proxy-demo-{}", std::process::id())),
            log_file: None,
        }
    }
}

/// Runs the demo until `stop` completes.
pub async fn run(opts: DemoOptions, stop: impl Future<Output = ()>) -> Result<(), DemoError> {
    let dir = &opts.dir;
    std::fs::create_dir_all(dir).map_err(|e| err("creating the work dir")(&e))?;
    let emu = Emulator::start(EmulatorOptions {
        dir: Some(dir.join("emulator")),
        metadata_account: format!("vm@{PROJECT}.iam.gserviceaccount.com"),
        token_lifetime: None,
    })
    .await
    .map_err(|e| err("starting the emulator")(&e))?;
    // Who may mint for whom: the caller may act as the reader and the
    // deployer; only the deployer may act as the writer (a delegate chain);
    // nobody may act as the billing admin.
    emu.grant_token_creator(CALLER, READER);
    emu.grant_token_creator(CALLER, HOP);
    emu.grant_token_creator(HOP, WRITER);
    let key = emu
        .write_service_account_key(dir, CALLER)
        .map_err(|e| err("writing the source key")(&e))?;
    let certs = dir.join("certs");
    if !certs.join(crate::ca::CERT_FILE).exists() {
        crate::ca::init(&certs, true).map_err(|e| err("creating a CA")(&e))?;
    }

    let listen = free_or_ephemeral(opts.listen);
    let config_path = dir.join("demo.toml");
    std::fs::write(&config_path, demo_config(listen, &emu, &key, dir))
        .map_err(|e| err("writing the demo config")(&e))?;
    let cfg = Config::load(&config_path).map_err(|e| err("demo config")(&e))?;
    let proxy = Proxy::bind(&cfg)
        .await
        .map_err(|e| err("starting the proxy")(&e))?;
    let addr = proxy.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(proxy.serve(async {
        let _ = rx.await;
    }));

    println!("impersonate-proxy demo: everything runs on this machine, no Google account needed.");
    println!();
    println!(
        "  emulated Google APIs   https://{{oauth2,iamcredentials,storage}}.googleapis.com at {}",
        emu.addr()
    );
    println!(
        "  proxy                  http://{addr}   (config: {})",
        config_path.display()
    );
    if let Some(log) = &opts.log_file {
        println!("  warnings and logs      {}", log.display());
    }
    println!("  source identity        {CALLER} (a service-account key)");
    println!("  IAM Token Creator      {CALLER} → {READER} (also signBlob: signed URLs)");
    println!("                         {CALLER} → {HOP} → {WRITER}");
    println!("                         nobody → {STRANGER}");
    println!();

    let proxy_ca = certs.join(crate::ca::CERT_FILE);
    let tls = client_tls(&proxy_ca).map_err(|e| err("client TLS")(&e))?;
    let steps: [(&str, bool, &str); 5] = [
        ("GET", false, "/storage/v1/b/demo-bucket/o"),
        ("GET", true, "/storage/v1/b/demo-bucket/o"),
        ("GET", true, "/storage/v1/b/release-bucket/o"),
        ("GET", false, "/storage/v1/b/audit-logs/o"),
        ("GET", true, "/storage/v1/b/invoices/o"),
    ];
    println!(
        "{:<2} {:<8} {:<38} {:<14} {:<48} {:<7} status",
        "#", "protocol", "request", "route", "Storage saw the caller as", "token"
    );
    for (i, (method, h2, path)) in steps.iter().enumerate() {
        let before = emu.counters().total("generateAccessToken");
        let outcome = send(addr, &tls, *h2, method, path).await;
        let minted = emu.counters().total("generateAccessToken") > before;
        let (status, body) = match outcome {
            Ok(x) => x,
            Err(e) => (
                StatusCode::BAD_GATEWAY,
                serde_json::json!({"error": {"message": e}}),
            ),
        };
        let route = route_for(path);
        let seen = body["emulator"]["principal"]
            .as_str()
            .unwrap_or("—")
            .to_owned();
        let token = if status.is_success() {
            if minted {
                "minted"
            } else {
                "reused"
            }
        } else {
            "—"
        };
        println!(
            "{:<2} {:<8} {:<38} {:<14} {:<48} {:<7} {}",
            i + 1,
            if *h2 { "HTTP/2" } else { "HTTP/1.1" },
            format!("{method} {path}"),
            route,
            seen,
            token,
            status.as_u16()
        );
        if !status.is_success() {
            if let Some(m) = body["error"]["message"].as_str() {
                println!("   └ {m}");
            }
        }
    }
    // A signed URL: signBlob through the sign_as route, then a GET with
    // no proxy and no token.
    let signed =
        signed_url::sign_and_fetch(addr, &tls, &emu, READER, "/demo-bucket/hello.txt").await;
    let (status, seen, detail) = match signed {
        Ok(f) if f.status.is_success() => {
            let signer = emu
                .data_calls()
                .last()
                .map_or_else(|| "—".to_owned(), |c| c.principal.clone());
            (
                f.status,
                format!("{signer} (URL)"),
                format!("{} → {:?}", f.url, f.body),
            )
        }
        Ok(f) => (f.status, "—".to_owned(), f.body),
        Err(e) => (StatusCode::BAD_GATEWAY, "—".to_owned(), e),
    };
    println!(
        "{:<2} {:<8} {:<38} {:<14} {:<48} {:<7} {}",
        steps.len() + 1,
        "HTTP/1.1",
        "signBlob, then GET the URL, no proxy",
        "sign-as",
        seen,
        "none",
        status.as_u16()
    );
    println!("   └ {detail}");
    println!();
    println!(
        "Audit records (one JSON line per request, never a token): {}",
        dir.join("audit.jsonl").display()
    );
    println!();
    println!("Try it yourself (Ctrl-C to stop):");
    println!(
        "  curl --cacert {} -x http://{addr} https://{HOST}/storage/v1/b/demo-bucket/o",
        proxy_ca.display()
    );
    println!(
        "  impersonate-proxy token --config {} --impersonate {READER}",
        config_path.display()
    );

    stop.await;
    println!();
    println!("stopping…");
    let _ = tx.send(());
    let _ = served.await;
    drop(emu);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn route_for(path: &str) -> &'static str {
    match path.split('/').nth(4) {
        Some("demo-bucket") => "gcs-read",
        Some("release-bucket") => "gcs-release",
        Some("audit-logs") => "no-audit-logs",
        Some("invoices") => "billing",
        _ => "—",
    }
}

fn free_or_ephemeral(want: SocketAddr) -> SocketAddr {
    match std::net::TcpListener::bind(want) {
        Ok(l) => {
            drop(l);
            want
        }
        Err(_) => SocketAddr::new(want.ip(), 0),
    }
}

fn demo_config(listen: SocketAddr, emu: &Emulator, key: &Path, dir: &Path) -> String {
    let mut resolve = String::new();
    for h in HOSTS {
        resolve.push_str(&format!("\"{h}\" = \"{}\"\n", emu.addr()));
    }
    format!(
        r#"# Written by `impersonate-proxy demo`: the same keys a real setup uses,
# with [upstream] pointing at the local emulator instead of Google.
[proxy]
listen = "{listen}"
drain_timeout = "5s"

[ca]
cert = "certs/ca.pem"
key = "certs/ca-key.pem"

[source]
type = "service_account"
file = "{key}"

[upstream]
extra_ca = ["{ca}"]
[upstream.resolve]
{resolve}
[audit]
file = "{audit}"

[[route]]
name = "gcs-read"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/demo-bucket"
methods = ["GET", "HEAD"]
impersonate = "{READER}"

[[route]]
name = "gcs-release"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/release-bucket"
impersonate = "{WRITER}"
delegates = ["{HOP}"]

[[route]]
name = "no-audit-logs"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/audit-logs"
action = "deny"

[[route]]
name = "billing"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/invoices"
impersonate = "{STRANGER}"
quota_project = "{PROJECT}"

[[route]]
name = "sign-as"
hosts = ["iamcredentials.googleapis.com"]
sign_as = "{READER}"

[[route]]
name = "everything-else"
hosts = ["*.googleapis.com"]
impersonate = "{READER}"
"#,
        key = key.display(),
        ca = emu.ca_pem_path().display(),
        audit = dir.join("audit.jsonl").display(),
    )
}

fn client_tls(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = crate::net::tls::root_store(&[ca]).map_err(|e| e.to_string())?;
    let cfg = rustls::ClientConfig::builder_with_provider(crate::net::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// One request to Storage through the proxy as a client library sends
/// it: CONNECT, TLS with the proxy's CA, then HTTP/1.1 or HTTP/2.
async fn send(
    proxy: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    h2: bool,
    method: &str,
    path: &str,
) -> Result<(StatusCode, serde_json::Value), String> {
    send_to(proxy, tls, HOST, h2, method, path, Bytes::new()).await
}

/// [`send`] to any host, with a JSON body.
async fn send_to(
    proxy: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    host: &str,
    h2: bool,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<(StatusCode, serde_json::Value), String> {
    let mut s = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
    s.write_all(format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.map_err(|e| e.to_string())? == 0 {
            return Err("proxy closed the connection".into());
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "CONNECT refused: {}",
            String::from_utf8_lossy(&head).trim()
        ));
    }
    let mut cfg = (**tls).clone();
    cfg.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let name =
        rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, s)
        .await
        .map_err(|e| e.to_string())?;
    let io = TokioIo::new(stream);
    let req = Request::builder()
        .method(method)
        .header("user-agent", "impersonate-proxy-demo")
        .header("content-type", "application/json");
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = req
            .uri(format!("https://{host}{path}"))
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = req
            .uri(path)
            .header("host", host)
            .body(Full::new(body.clone()))
            .map_err(|e| e.to_string())?;
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}
