//! The client-facing HTTP/1.1 connection (on `listen`, or inside TLS on
//! `tls_listen`): client identity, then CONNECT vs absolute-form
//! dispatch.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header;
use http::uri::Scheme;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::OtherHosts;
use crate::control::metadata::{self, Metadata};
use crate::net::{default_port, normalize_host, request_authority, ProxyBody};
use crate::ops::audit::{AuditAction, Listener, Record};
use crate::ops::observe;
use crate::policy::clients::{ClientId, Presented};
use crate::proxy::idle::{ActiveIo, Activity, Expired, InFlight, Retirement};
use crate::proxy::request::{self, Origin, Target};
use crate::proxy::tunnel::{Dest, Dial};
use crate::proxy::upstream::Upstream;
use crate::proxy::{reply, tunnel, ConnPermit, DataPlane};

/// What a client connection brings from its listener.
#[derive(Clone)]
pub(crate) struct Conn {
    pub listener: Listener,
    /// The URI and DNS SANs of the client certificate `tls_listen`
    /// verified.
    pub cert_sans: Option<Arc<[Box<str>]>>,
}

impl Conn {
    /// A connection on `listen`.
    pub fn plain() -> Conn {
        Conn {
            listener: Listener::Connect,
            cert_sans: None,
        }
    }
}

/// Serves HTTP/1.1 on a client connection of `listen` or `tls_listen`.
pub(crate) async fn serve_client<I>(
    shared: Arc<DataPlane>,
    stream: I,
    peer: SocketAddr,
    conn: Conn,
    permit: ConnPermit,
    upstream: Arc<Upstream>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc_shared = shared.clone();
    let activity = Activity::new();
    let svc_activity = activity.clone();
    let retire = Retirement::after(shared.limits.max_connection_age);
    let svc = service_fn(move |req: Request<Incoming>| {
        let shared = svc_shared.clone();
        let permit = permit.clone();
        let upstream = upstream.clone();
        let conn = conn.clone();
        let guard = svc_activity.begin();
        let is_connect = req.method() == Method::CONNECT;
        async move {
            let mut resp = dispatch(shared, peer, conn, permit, upstream, req, guard).await;
            // A CONNECT turns the connection into a tunnel, which ages on
            // its own (or, spliced blind, not at all).
            if !is_connect {
                retire.close_if_due(&mut resp);
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let io = TokioIo::new(ActiveIo::new(stream, activity.clone()));
    let conn = shared.h1.serve_connection(io, svc).with_upgrades();
    tokio::pin!(conn);
    let l = &shared.limits;
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        e = activity.watch(l.idle_timeout, Some(l.header_read_timeout)) => match e {
            Expired::Idle => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            // Slowloris: drop the connection mid-head.
            Expired::SlowHead => {
                tracing::debug!(client = %peer, "request head too slow; connection closed");
                Ok(())
            }
        },
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
    }
}

async fn dispatch(
    shared: Arc<DataPlane>,
    peer: SocketAddr,
    conn: Conn,
    permit: ConnPermit,
    upstream: Arc<Upstream>,
    req: Request<Incoming>,
    guard: InFlight,
) -> Response<ProxyBody> {
    let policy = shared.control.policy_full();
    let presented = Presented::from_header(req.headers().get(header::PROXY_AUTHORIZATION))
        .with_cert_sans(conn.cert_sans);
    let listener = conn.listener;
    let client = match policy.clients.identify(peer.ip(), &presented) {
        Ok(c) => c,
        Err(refusal) => {
            let resp = reply::proxy_auth_required(refusal);
            audit_connection_level(
                &shared,
                peer,
                listener,
                None,
                &req,
                &resp,
                AuditAction::ProxyAuth,
            );
            // Guessing passwords gets slower with every miss.
            let delay = shared.refusals.record(peer.ip());
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            return resp;
        }
    };
    if req.method() == Method::CONNECT {
        let method = req.method().clone();
        let uri = req.uri().clone();
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let name = client.as_ref().map(|c| c.name.clone());
        let identified_by = client.as_ref().map(|c| c.identified_by);
        let resp = tunnel::connect(
            shared.clone(),
            &policy,
            peer,
            listener,
            (client, presented),
            permit,
            upstream,
            req,
        )
        .await;
        // Intercepted requests get their own records; here the CONNECT
        // itself is recorded when it is refused or spliced blind.
        if let Some(action) = resp
            .extensions()
            .get::<tunnel::ConnectOutcome>()
            .map(|o| o.0)
        {
            if shared.audit.enabled() {
                let mut r = Record::new(peer, &method, &authority.into(), &uri);
                r.client_name = name;
                r.identified_by = identified_by;
                r.listener = listener;
                r.action = action;
                r.status = resp.status().as_u16();
                shared.audit.write(&r);
            }
        }
        return resp;
    }
    let uri = req.uri();
    // HTTP_PROXY set as well as GCE_METADATA_HOST: the metadata request
    // arrives in absolute form, addressed to us.
    let metadata = shared.control.metadata().filter(|m| {
        uri.scheme() == Some(&Scheme::HTTP)
            && uri.authority().is_some_and(|a| m.is_our_host(a.as_str()))
    });
    if let Some(m) = metadata {
        return serve_metadata(&shared, m, peer, listener, client, req, guard).await;
    }
    match (uri.scheme(), uri.authority()) {
        (Some(s), Some(a)) if *s == Scheme::HTTP => {
            let port = a.port_u16().unwrap_or_else(|| default_port(&Scheme::HTTP));
            let host = normalize_host(a.host());
            if !policy.intercepts(&host) {
                // Plain http to other hosts is never proxied, whatever
                // [intercept] other says: it would let a client reach
                // internal addresses (the metadata server) through us.
                return reply::error(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "host `{host}` is not in [intercept] hosts; absolute-form http:// requests are forwarded only to intercepted hosts (with [intercept] other = \"{}\", which applies to CONNECT only)",
                        match policy.egress.other {
                            OtherHosts::Deny => "deny",
                            OtherHosts::Tunnel => "tunnel",
                        }
                    ),
                );
            }
            if !policy.egress.http_ports.contains(&port) {
                return reply::error(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "port {port} is not allowed for http://{host}; [intercept] http_ports = {:?}",
                        policy.egress.http_ports
                    ),
                );
            }
            // The same egress check as a tunnel, on the addresses the
            // connection will go to. Through a parent proxy, the
            // connector CONNECTs by the same address or name.
            let pin = match tunnel::resolve_for_egress(&shared, &policy, &host, port).await {
                Ok(Dest::Direct(addrs)) => Some(addrs[0]),
                Ok(Dest::Parent(..)) => None,
                Err(Dial::Refused(m)) => return reply::error(StatusCode::FORBIDDEN, &m),
                Err(Dial::Failed(e)) => {
                    return reply::error(
                        StatusCode::BAD_GATEWAY,
                        &format!("cannot resolve {host}:{port}: {e}"),
                    )
                }
            };
            let target = match Target::new(Scheme::HTTP, &host, port)
                .and_then(|t| match pin {
                    Some(addr) => t.pinned(addr),
                    None => Ok(t),
                })
            {
                Ok(t) => t,
                Err(m) => return reply::error(StatusCode::BAD_REQUEST, &m),
            };
            let origin = Arc::new(Origin::new(
                upstream,
                peer,
                listener,
                (client, presented),
                target,
                None,
            ));
            request::handle(shared, origin, req, guard).await
        }
        (Some(_), Some(_)) => reply::error(
            StatusCode::BAD_REQUEST,
            "absolute-form https:// requests are not proxied; clients must use CONNECT (set HTTPS_PROXY)",
        ),
        (None, None) => match shared.control.metadata() {
            // Origin-form: what a client sends to GCE_METADATA_HOST.
            Some(m) => serve_metadata(&shared, m, peer, listener, client, req, guard).await,
            None if req.headers().contains_key("metadata-flavor") => reply::error(
                StatusCode::NOT_FOUND,
                "this is impersonate-proxy; its metadata-server endpoint is off: set [metadata] enabled = true and service_account",
            ),
            None => not_a_server(),
        },
        _ => not_a_server(),
    }
}

fn not_a_server() -> Response<ProxyBody> {
    reply::error(
        StatusCode::BAD_REQUEST,
        "this is impersonate-proxy, a forward proxy: send CONNECT host:443 (set HTTPS_PROXY=http://<this address>) or an absolute-form http:// request",
    )
}

/// Serves an origin-form request on the listener as the metadata server,
/// with its audit record.
async fn serve_metadata(
    shared: &DataPlane,
    metadata: &Metadata,
    peer: SocketAddr,
    listener: Listener,
    client: Option<ClientId>,
    req: Request<Incoming>,
    guard: InFlight,
) -> Response<ProxyBody> {
    let resp = metadata
        .answer(shared.control.registry(), client.as_ref(), peer, &req)
        .await;
    let host = request_authority(&req).unwrap_or_default();
    let mut record = Record::new(peer, req.method(), &host.into(), req.uri());
    record.identified_by = client.as_ref().map(|c| c.identified_by);
    record.client_name = client.map(|c| c.name);
    record.listener = listener;
    record.action = AuditAction::Metadata;
    record.acting_as = Some(metadata.principal());
    record.audience = metadata::audience(&resp);
    record.status = resp.status().as_u16();
    let audit = shared.audit.enabled().then(|| shared.audit.clone());
    observe::finish(resp, guard, record, audit)
}

fn audit_connection_level(
    shared: &DataPlane,
    peer: SocketAddr,
    listener: Listener,
    client: Option<Arc<str>>,
    req: &Request<Incoming>,
    resp: &Response<ProxyBody>,
    action: AuditAction,
) {
    if !shared.audit.enabled() {
        return;
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut r = Record::new(peer, req.method(), &host.into(), req.uri());
    r.client_name = client;
    r.listener = listener;
    r.action = action;
    r.status = resp.status().as_u16();
    shared.audit.write(&r);
}
