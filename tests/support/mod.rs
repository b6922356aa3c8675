//! Shared test helpers: a local TLS upstream standing in for a Google API
//! host, a proxy started from a config the way a user writes one, and a
//! client that goes through the proxy with CONNECT + TLS (HTTP/1.1 or h2).
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use impersonate_proxy::net::{full_body, BoxError, ProxyBody};
use impersonate_proxy::{Config, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

/// A fresh directory under the system temp dir.
pub fn tempdir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "ip-test-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A test CA plus a server certificate for `names`, as PEM files.
pub struct UpstreamCerts {
    pub ca_pem: PathBuf,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn upstream_certs(dir: &Path, names: &[&str]) -> UpstreamCerts {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "upstream test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let ca_pem = dir.join("upstream-ca.pem");
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut server =
        rustls::ServerConfig::builder_with_provider(impersonate_proxy::net::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)
            .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    UpstreamCerts {
        ca_pem,
        server: Arc::new(server),
    }
}

/// What the upstream saw, for assertions.
#[derive(Default)]
pub struct Seen {
    pub requests: AtomicUsize,
    /// TCP connections accepted.
    pub connections: AtomicUsize,
}

/// A hyper server on loopback, TLS (h1 + h2 by ALPN) when `tls` is set.
/// Routes:
/// - `GET /echo` → JSON of method, path, version, headers
/// - `POST /count` → the number of body bytes received, as text
/// - `GET /bytes/N` → N bytes, streamed in 64 KiB chunks
/// - `POST /echo-body` → the request body streamed back
/// - `GET /grpc` → a body plus trailers `grpc-status: 0`, `x-trailer: yes`
/// - `GET /close` → `Connection: close`: the server closes the connection
pub async fn start_upstream(tls: Option<Arc<rustls::ServerConfig>>) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            seen2.connections.fetch_add(1, Ordering::Relaxed);
            let tls = tls.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let seen = seen.clone();
                    async move {
                        seen.requests.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, Infallible>(upstream_route(req).await)
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(cfg) => {
                        let Ok(tls) = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await
                        else {
                            return;
                        };
                        let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn upstream_route(req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path().to_owned();
    if path == "/echo" {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    serde_json::Value::String(v.to_str().unwrap_or("").to_owned()),
                )
            })
            .collect();
        let body = serde_json::json!({
            "method": req.method().as_str(),
            "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
            "version": format!("{:?}", req.version()),
            "authority": req.uri().authority().map(|a| a.as_str()),
            "headers": headers,
        });
        return Response::new(full_body(serde_json::to_vec(&body).unwrap()));
    }
    if path == "/count" {
        let mut body = req.into_body();
        let mut n: u64 = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                n += data.len() as u64;
            }
        }
        return Response::new(full_body(n.to_string()));
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap();
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = (0..n.div_ceil(chunk.len())).map(move |i| {
            let len = chunk.len().min(n - i * chunk.len());
            Ok::<_, BoxError>(Frame::data(chunk.slice(..len)))
        });
        let body = StreamBody::new(futures_lite_iter(chunks));
        return Response::new(body.boxed());
    }
    if let Some(n) = path.strip_prefix("/slow/") {
        // N chunks of 1 KiB, 100 ms apart: a response that stays in flight.
        let n: usize = n.parse().unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        tokio::spawn(async move {
            for _ in 0..n {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                if tx
                    .send(Ok(Frame::data(Bytes::from(vec![b's'; 1024]))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        return Response::new(StreamBody::new(ReceiverStream(rx)).boxed());
    }
    if path == "/echo-body" {
        let body = req.into_body().map_err(BoxError::from).boxed();
        return Response::new(body);
    }
    if path == "/grpc" {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("x-trailer", "yes".parse().unwrap());
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
            Ok(Frame::trailers(trailers)),
        ];
        let mut resp =
            Response::new(StreamBody::new(futures_lite_iter(frames.into_iter())).boxed());
        resp.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        return resp;
    }
    if path == "/close" {
        let mut resp = Response::new(full_body("closing"));
        resp.headers_mut()
            .insert("connection", "close".parse().unwrap());
        return resp;
    }
    let mut resp = Response::new(full_body("not found"));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp
}

/// An iterator as a `Stream` without pulling in a futures crate.
pub fn futures_lite_iter<I: Iterator + Unpin>(iter: I) -> IterStream<I> {
    IterStream(iter)
}

pub struct IterStream<I>(I);

impl<I: Iterator + Unpin> futures_core::Stream for IterStream<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

/// An mpsc receiver as a `Stream`.
pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// A running proxy for tests.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub ca_pem: PathBuf,
    pub dir: PathBuf,
    pub shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<bool>>,
}

impl TestProxy {
    /// Sends the shutdown signal and waits for the drain to finish.
    pub async fn stop(mut self) -> bool {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.done.take().unwrap().await.unwrap()
    }
}

/// Writes a CA into a fresh dir and returns a config using it, with the
/// listener on an ephemeral loopback port. `extra` is appended TOML.
pub fn config_with_ca(name: &str, extra: &str) -> (Config, PathBuf) {
    config_with_proxy_keys(name, "", extra)
}

/// [`config_with_ca`] with more `[proxy]` keys (TOML lines).
pub fn config_with_proxy_keys(name: &str, proxy_keys: &str, extra: &str) -> (Config, PathBuf) {
    let dir = tempdir(name);
    impersonate_proxy::ca::init(&dir.join("certs"), false).unwrap();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"5s\"\n{proxy_keys}\n[ca]\ncert = \"certs/ca.pem\"\nkey = \"certs/ca-key.pem\"\n{extra}"
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, &text).unwrap();
    (Config::load(&path).unwrap(), dir)
}

pub async fn start_proxy(cfg: Config, dir: PathBuf) -> TestProxy {
    let proxy = Proxy::bind(&cfg).await.unwrap();
    let addr = proxy.local_addr();
    let admin = proxy.admin_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        proxy
            .serve(async move {
                let _ = rx.await;
            })
            .await
            .expect("the proxy starts serving")
    });
    TestProxy {
        addr,
        admin,
        ca_pem: cfg.ca.cert.clone(),
        dir,
        shutdown: Some(tx),
        done: Some(done),
    }
}

/// Sends a raw CONNECT and returns the stream and the response head.
pub async fn raw_connect(proxy: SocketAddr, authority: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}

/// Reads an HTTP response head (up to the blank line), byte by byte so no
/// tunnel bytes are consumed.
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => break,
            Ok(_) => buf.push(b[0]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Reads the body that follows `head`, by its content-length.
pub async fn read_body(s: &mut TcpStream, head: &str) -> String {
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// A TLS client config that trusts `ca_pem` and offers `alpn`.
pub fn client_tls(ca_pem: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let roots = impersonate_proxy::net::tls::root_store(&[ca_pem]).unwrap();
    let mut cfg =
        rustls::ClientConfig::builder_with_provider(impersonate_proxy::net::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// CONNECT to `authority`, then TLS with `sni`, trusting the proxy's CA.
pub async fn tls_through(
    proxy: &TestProxy,
    authority: &str,
    sni: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let (s, head) = raw_connect(proxy.addr, authority).await;
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT answered: {head}");
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(client_tls(&proxy.ca_pem, alpn))
        .connect(name, s)
        .await
}

/// An HTTP/1.1 or HTTP/2 (by negotiated ALPN) request sender over a
/// CONNECT tunnel to `host:443`.
pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<ProxyBody>),
    H2(hyper::client::conn::http2::SendRequest<ProxyBody>),
}

impl Sender {
    pub async fn try_send(&mut self, req: Request<ProxyBody>) -> hyper::Result<Response<Incoming>> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }

    pub async fn send(&mut self, req: Request<ProxyBody>) -> Response<Incoming> {
        match self {
            Sender::H1(s) => s.send_request(req).await.unwrap(),
            Sender::H2(s) => s.send_request(req).await.unwrap(),
        }
    }
}

pub async fn client(proxy: &TestProxy, host: &str, h2: bool) -> Sender {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let tls = tls_through(proxy, &format!("{host}:443"), host, alpn)
        .await
        .unwrap();
    handshake(tls, h2).await
}

pub async fn handshake(tls: TlsStream<TcpStream>, h2: bool) -> Sender {
    let io = TokioIo::new(tls);
    if h2 {
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        Sender::H2(send)
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        Sender::H1(send)
    }
}

/// A request for `https://{host}{path}` with an empty body.
pub fn get(host: &str, path: &str) -> Request<ProxyBody> {
    Request::get(format!("https://{host}{path}"))
        .header("host", host)
        .body(full_body(""))
        .unwrap()
}

/// For HTTP/2 the authority travels in the URI; for HTTP/1.1 hyper sends
/// the path only and the Host header carries it.
pub fn for_version(mut req: Request<ProxyBody>, h2: bool) -> Request<ProxyBody> {
    if !h2 {
        let pq = req.uri().path_and_query().unwrap().clone();
        *req.uri_mut() = pq.as_str().parse().unwrap();
    } else {
        req.headers_mut().remove("host");
    }
    req
}

pub async fn body_string(resp: Response<Incoming>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// A route that forwards every Google API request untouched: transport
/// tests are about the proxy, not credentials.
pub const PASSTHROUGH_ALL: &str =
    "[[route]]\nname = \"all\"\nhosts = [\"*.googleapis.com\"]\naction = \"passthrough\"\n";

/// A standard world: an upstream TLS server reachable as
/// `storage.googleapis.com` (and `other.googleapis.com`) through the
/// proxy's `[upstream.resolve]` and `extra_ca`.
pub struct World {
    pub proxy: TestProxy,
    pub upstream: SocketAddr,
    pub seen: Arc<Seen>,
}

pub async fn world(name: &str, extra: &str) -> World {
    world_with(name, "", "", extra).await
}

/// [`world`] with more `[proxy]` and `[upstream]` keys (TOML lines).
pub async fn world_with(name: &str, proxy_keys: &str, upstream_keys: &str, extra: &str) -> World {
    let dir = tempdir(&format!("{name}-up"));
    let certs = upstream_certs(&dir, &["storage.googleapis.com", "other.googleapis.com"]);
    let (upstream, seen) = start_upstream(Some(certs.server)).await;
    let toml = format!(
        "[upstream]\nextra_ca = [\"{}\"]\nresponse_timeout = \"5s\"\n{upstream_keys}\n[upstream.resolve]\n\"storage.googleapis.com\" = \"{upstream}\"\n\"other.googleapis.com\" = \"{upstream}\"\n{extra}\n{PASSTHROUGH_ALL}",
        certs.ca_pem.display()
    );
    let (cfg, dir) = config_with_proxy_keys(name, proxy_keys, &toml);
    let proxy = start_proxy(cfg, dir).await;
    World {
        proxy,
        upstream,
        seen,
    }
}

pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

/// The source identity in emulator worlds.
pub const SOURCE_SA: &str = "caller@emulator-project.iam.gserviceaccount.com";

/// `[upstream]` TOML that sends the emulator's hosts to it and trusts its
/// CA: the same keys a user would write.
pub fn emulator_upstream_toml(
    emu: &impersonate_proxy::emulator::Emulator,
    extra_resolve: &str,
) -> String {
    let mut t = format!(
        "[upstream]\nextra_ca = [\"{}\"]\nresponse_timeout = \"10s\"\n[upstream.resolve]\n",
        emu.ca_pem_path().display()
    );
    for h in impersonate_proxy::emulator::HOSTS {
        t.push_str(&format!("\"{h}\" = \"{}\"\n", emu.addr()));
    }
    t.push_str(extra_resolve);
    t
}

/// A proxy whose source is a service-account key the emulator knows, with
/// `routes` (TOML) and the emulator behind it.
pub struct EmuWorld {
    pub emu: impersonate_proxy::emulator::Emulator,
    pub proxy: TestProxy,
}

pub async fn emu_world(name: &str, routes: &str, extra_resolve: &str) -> EmuWorld {
    let dir = tempdir(&format!("{name}-emu"));
    let emu = impersonate_proxy::emulator::Emulator::start(
        impersonate_proxy::emulator::EmulatorOptions {
            dir: Some(dir.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let key = emu.write_service_account_key(&dir, SOURCE_SA).unwrap();
    let toml = format!(
        "[source]\ntype = \"service_account\"\nfile = \"{}\"\n{}\n{routes}",
        key.display(),
        emulator_upstream_toml(&emu, extra_resolve)
    );
    let (cfg, dir) = config_with_ca(name, &toml);
    let proxy = start_proxy(cfg, dir).await;
    EmuWorld { emu, proxy }
}

/// A file holding `value`, readable by its owner only (as password files
/// must be).
pub fn owner_only_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, value).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    p
}

/// Reads a response head for at most `limit`: `None` if nothing conclusive
/// came in time (a hang), `Some("")` if the connection was closed first.
pub async fn head_within(s: &mut TcpStream, limit: std::time::Duration) -> Option<String> {
    tokio::time::timeout(limit, read_head(s)).await.ok()
}

/// The status code of a well-formed `HTTP/1.x NNN Reason` status line, or
/// `None` for anything else.
pub fn status_of(head: &str) -> Option<u16> {
    let line = head.split("\r\n").next()?;
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))?;
    let (code, reason) = rest.split_at_checked(3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) || !reason.starts_with(' ') {
        return None;
    }
    code.parse().ok()
}

/// Like `client`, with extra CONNECT header lines (each ending in `\r\n`),
/// e.g. `Proxy-Authorization`.
pub async fn client_with(proxy: &TestProxy, host: &str, h2: bool, connect_headers: &str) -> Sender {
    let authority = format!("{host}:443");
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{connect_headers}\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT answered: {head}");
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let name = rustls_pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_tls(&proxy.ca_pem, alpn))
        .connect(name, s)
        .await
        .unwrap();
    handshake(tls, h2).await
}

/// Asserts that an ordinary `GET /echo` to `storage.googleapis.com` over
/// HTTP/1.1 still gets 200 within a few seconds; `after` names what was
/// thrown at the proxy before, for the failure message.
pub async fn assert_still_serves(proxy: &TestProxy, connect_headers: &str, after: &str) {
    let host = "storage.googleapis.com";
    let attempt = async {
        let mut c = client_with(proxy, host, false, connect_headers).await;
        c.send(for_version(get(host, "/echo"), false))
            .await
            .status()
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), attempt).await {
        Ok(status) => assert_eq!(status, 200, "a normal request after {after}"),
        Err(_) => panic!("a normal request after {after} got no answer in 10s"),
    }
}

/// A plain HTTP/1.1 request to `addr` (e.g. the admin endpoint); returns
/// the status code and body.
pub async fn http_get(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nX-Impersonate-Proxy: reload\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_owned())
        .unwrap_or_default();
    (code, body)
}
