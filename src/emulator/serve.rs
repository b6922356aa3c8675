//! The emulator's two listeners: TLS (h2 or HTTP/1.1 by ALPN) for the
//! Google API hosts, dispatched by `Host`/`:authority` (gRPC to Pub/Sub
//! needs the h2 side), and plain HTTP for the metadata server.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::state::State;
use super::{google_error, iam, metadata, oauth, pubsub, sign, storage, sts};

/// A request body the emulator reads whole: uploads in the client tests
/// are a few MiB.
const MAX_BODY: usize = 64 << 20;

/// Every answer of the TLS listener: a whole body, or gRPC (data, then
/// trailers).
type Answer = Response<Either<Full<Bytes>, pubsub::GrpcBody>>;

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The request's host, without a port, lowercased.
fn request_host(req: &Request<Incoming>) -> String {
    let raw = req
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            Some(h.rsplit_once(':').map_or(h, |(name, _)| name).to_owned())
        })
        .unwrap_or_default();
    raw.to_ascii_lowercase()
}

async fn google(state: Arc<State>, req: Request<Incoming>) -> Result<Answer, Infallible> {
    let host = request_host(&req);
    let (parts, body) = req.into_parts();
    let Ok(body) = Limited::new(body, MAX_BODY).collect().await else {
        return Ok(google_error(
            400,
            "INVALID_ARGUMENT",
            "Request body unreadable or too large.",
        )
        .map(Either::Left));
    };
    let body = body.to_bytes();
    let token = bearer(&parts.headers);
    let caller = token.and_then(|t| state.principal_of(t));
    let path = parts.uri.path();
    let reply = match host.as_str() {
        "oauth2.googleapis.com" => oauth::token(&state, &parts.method, path, &body),
        "iamcredentials.googleapis.com" => iam::handle(&state, &parts.method, path, caller, &body),
        "www.googleapis.com" => sign::public_keys(&state, path),
        "storage.googleapis.com" if sign::is_signed_url(&parts) => {
            sign::signed_url(&state, &host, &parts, body)
        }
        "sts.googleapis.com" => sts::token(&state, &parts.method, path, &body),
        "storage.googleapis.com" => {
            let boundary = token.and_then(|t| state.boundary_of(t));
            storage::handle(
                &state,
                &host,
                &parts,
                body,
                caller,
                token.is_some(),
                boundary,
            )
        }
        "pubsub.googleapis.com" if pubsub::is_grpc(&parts) => {
            return Ok(pubsub::handle(&state, &parts, &body, caller).map(Either::Right));
        }
        _ => google_error(
            404,
            "NOT_FOUND",
            &format!("The emulator does not serve {host} {path}."),
        ),
    };
    Ok(reply.map(Either::Left))
}

pub(crate) async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(tls);
            let svc = service_fn(move |req| google(state.clone(), req));
            let result = if h2 {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "emulator connection ended");
            }
        });
    }
}

pub(crate) async fn serve_metadata(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let (parts, _) = req.into_parts();
                let reply = metadata::handle(&state, &parts);
                async move { Ok::<_, Infallible>(reply) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
