//! Local upstream servers standing in for Google API hosts: a test CA with
//! a server certificate, and a hyper server (h1 + h2 by ALPN) with a few
//! routes the proxy tests need.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use impersonate_proxy::net::{full_body, BoxError, ProxyBody};
use tokio::net::TcpListener;

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
    /// Each connection accepted from now on waits this long (ms) before
    /// its TLS handshake: an upstream far away, or slow to accept.
    pub accept_delay_ms: std::sync::atomic::AtomicU64,
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
                let delay = seen.accept_delay_ms.load(Ordering::Relaxed);
                if delay > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                }
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
struct ReceiverStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}
