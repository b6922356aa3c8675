//! Clients of the proxy: CONNECT + TLS (HTTP/1.1 or h2 by ALPN), raw
//! requests on the listener, and reading what comes back.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use impersonate_proxy::net::{full_body, ProxyBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::proxy::TestProxy;

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
#[allow(dead_code)]
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
    #[allow(dead_code)]
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

    /// Whether the connection is closed: looking does not send anything,
    /// so it does not keep an idle connection busy either.
    #[allow(dead_code)]
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

#[allow(dead_code)]
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

/// Reads `resp`'s body to its end and returns its length; `read` counts
/// the bytes as they arrive, so that a test can wait until a body flows.
#[allow(dead_code)]
pub async fn count_body(resp: Response<Incoming>, read: Arc<AtomicUsize>) -> usize {
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            read.fetch_add(d.len(), Ordering::Relaxed);
        }
    }
    read.load(Ordering::Relaxed)
}

#[allow(dead_code)]
pub async fn body_string(resp: Response<Incoming>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[allow(dead_code)]
pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[allow(dead_code)]
pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

/// Reads a response head for at most `limit`: `None` if nothing conclusive
/// came in time (a hang), `Some("")` if the connection was closed first.
#[allow(dead_code)]
pub async fn head_within(s: &mut TcpStream, limit: std::time::Duration) -> Option<String> {
    tokio::time::timeout(limit, read_head(s)).await.ok()
}

/// The status code of a well-formed `HTTP/1.x NNN Reason` status line, or
/// `None` for anything else.
#[allow(dead_code)]
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
#[allow(dead_code)]
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
#[allow(dead_code)]
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
