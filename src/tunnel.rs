//! One CONNECT: intercept (terminate TLS with a minted leaf and serve the
//! requests inside over HTTP/1.1 or HTTP/2), splice bytes to the real host,
//! or refuse.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::config::{normalize_host, OtherHosts};
use crate::forward::{full_body, ProxyBody};
use crate::idle::{ActiveIo, Activity};
use crate::listener::ConnPermit;
use crate::proxy::Shared;
use crate::reply;
use crate::request::{self, Origin, Target};

/// Answers a CONNECT and, on success, spawns the task that serves the
/// tunnel once hyper hands over the connection.
pub(crate) async fn connect(
    shared: Arc<Shared>,
    peer: SocketAddr,
    permit: ConnPermit,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let (host, port) = match parse_authority(&req) {
        Ok(hp) => hp,
        Err(msg) => return reply::error(StatusCode::BAD_REQUEST, &msg),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    if shared.intercepts(&host) {
        let target = match Target::new(Scheme::HTTPS, &host, port) {
            Ok(t) => t,
            Err(m) => return reply::error(StatusCode::BAD_REQUEST, &m),
        };
        let task_shared = shared.clone();
        shared.tasks.spawn(async move {
            let _permit = permit;
            match on_upgrade.await {
                Ok(up) => intercept(task_shared, peer, target, up).await,
                Err(e) => tracing::debug!(client = %peer, error = %e, "CONNECT upgrade failed"),
            }
        });
        return Response::new(full_body(""));
    }
    if shared.other == OtherHosts::Deny {
        return not_intercepted(&host);
    }
    let upstream = match dial(&shared, &host, port).await {
        Ok(s) => s,
        Err(e) => {
            return reply::error(
                StatusCode::BAD_GATEWAY,
                &format!("cannot connect to {host}:{port}: {e}"),
            )
        }
    };
    let idle = shared.limits.idle_timeout;
    shared.tasks.spawn(async move {
        let _permit = permit;
        match on_upgrade.await {
            Ok(up) => splice(up, upstream, idle).await,
            Err(e) => tracing::debug!(client = %peer, error = %e, "CONNECT upgrade failed"),
        }
    });
    Response::new(full_body(""))
}

/// The 403 for a host that `[intercept] hosts` does not list while
/// `other = "deny"`.
pub(crate) fn not_intercepted(host: &str) -> Response<ProxyBody> {
    reply::error(
        StatusCode::FORBIDDEN,
        &format!(
            "host `{host}` is not in [intercept] hosts and [intercept] other = \"deny\"; add it to hosts, or set other = \"tunnel\" to pass it through untouched"
        ),
    )
}

/// `host:port` from a CONNECT request target, validated.
fn parse_authority(req: &Request<Incoming>) -> Result<(String, u16), String> {
    let Some(a) = req.uri().authority() else {
        return Err("CONNECT needs a target of the form host:port".into());
    };
    if a.as_str().contains('@') {
        return Err("CONNECT target must not contain user information".into());
    }
    let Some(port) = a.port_u16() else {
        return Err(format!("CONNECT target `{a}` has no port; use host:443"));
    };
    if port == 0 {
        return Err("CONNECT port 0 is not valid".into());
    }
    let host = a.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.len() > 253 {
        return Err("CONNECT host is empty or longer than 253 bytes".into());
    }
    Ok((normalize_host(host), port))
}

async fn intercept(shared: Arc<Shared>, peer: SocketAddr, target: Target, upgraded: Upgraded) {
    let handshake_timeout = shared.limits.header_read_timeout;
    let acceptor =
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), TokioIo::new(upgraded));
    let start = match tokio::time::timeout(handshake_timeout, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::debug!(host = %target.host, error = %e, "bad TLS ClientHello");
            return;
        }
        Err(_) => {
            tracing::debug!(host = %target.host, "no TLS ClientHello in time");
            return;
        }
    };
    let sni = start.client_hello().server_name().map(normalize_host);
    let misdirected_sni = sni.filter(|s| *s != target.host);
    let name = misdirected_sni.as_deref().unwrap_or(&target.host);
    // A mismatched SNI still gets a certificate for the name it asked for,
    // so that the client can read the 421 that explains the problem; a name
    // we do not intercept gets nothing.
    if misdirected_sni.is_some() && !shared.intercepts(name) {
        tracing::debug!(host = %target.host, sni = name, "SNI names a host that is not intercepted");
        return;
    }
    let config = match shared.ca.server_config(name) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(host = name, error = %e, "cannot mint a leaf certificate");
            return;
        }
    };
    let tls = match tokio::time::timeout(handshake_timeout, start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(host = %target.host, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let origin = Arc::new(Origin {
        client: peer,
        target,
        misdirected_sni,
    });
    let svc_shared = shared.clone();
    let activity = Activity::new();
    let svc_activity = activity.clone();
    let svc = service_fn(move |req| {
        let shared = svc_shared.clone();
        let origin = origin.clone();
        let guard = svc_activity.begin();
        async move { Ok::<_, Infallible>(request::handle(shared, origin, req, guard).await) }
    });
    let idle = shared.limits.idle_timeout;
    let io = TokioIo::new(tls);
    let result = if is_h2 {
        let conn = shared.h2.serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = shared.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            _ = activity.idle_for(idle) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        let conn = shared.h1.serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = shared.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            _ = activity.idle_for(idle) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "intercepted connection ended with an error");
    }
}

/// Opens the TCP connection for a spliced tunnel, through the same
/// `[upstream.resolve]` map as every other outbound connection.
async fn dial(shared: &Shared, host: &str, port: u16) -> std::io::Result<TcpStream> {
    let connect = async {
        if let Some(addr) = shared.resolve.get(host) {
            return TcpStream::connect(*addr).await;
        }
        TcpStream::connect((host, port)).await
    };
    match tokio::time::timeout(shared.connect_timeout, connect).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

async fn splice(upgraded: Upgraded, mut upstream: TcpStream, idle: Duration) {
    let _ = upstream.set_nodelay(true);
    let activity = Activity::new();
    let mut client = ActiveIo::new(TokioIo::new(upgraded), activity.clone());
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "tunnel ended with an error");
            }
        }
        _ = activity.idle_for(idle) => tracing::debug!("tunnel closed after idle timeout"),
    }
}
