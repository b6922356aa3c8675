//! One CONNECT: intercept (terminate TLS with a minted leaf and serve the
//! requests inside over HTTP/1.1 or HTTP/2), splice bytes to the real host,
//! or refuse.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::config::OtherHosts;
use crate::net::{
    full_body, normalize_host, parse_client_host, ClientHost, Parent, ProxyBody, Tunnel,
};
use crate::ops::audit::{AuditAction, Listener};
use crate::policy::clients::{ClientId, Presented};
use crate::policy::Policy;
use crate::proxy::idle::{ActiveIo, Activity, Retirement};
use crate::proxy::request::{self, Origin, Target};
use crate::proxy::upstream::Upstream;
use crate::proxy::{reply, ConnPermit, DataPlane};

/// Set on a CONNECT response that is not intercepted: what its audit
/// record says (deny, refused, tunnel).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectOutcome(pub AuditAction);

fn outcome(mut resp: Response<ProxyBody>, what: AuditAction) -> Response<ProxyBody> {
    resp.extensions_mut().insert(ConnectOutcome(what));
    resp
}

/// Answers a CONNECT and, on success, spawns the task that serves the
/// tunnel once hyper hands over the connection.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn connect(
    shared: Arc<DataPlane>,
    policy: &Policy,
    peer: SocketAddr,
    listener: Listener,
    client: (Option<ClientId>, Presented),
    permit: ConnPermit,
    upstream: Arc<Upstream>,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let (host, port) = match parse_authority(&req) {
        Ok(hp) => hp,
        Err(msg) => return reply::error(StatusCode::BAD_REQUEST, &msg),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    if policy.intercepts(&host) {
        if !policy.egress.intercept_ports.contains(&port) {
            return reply::error(
                StatusCode::FORBIDDEN,
                &format!(
                    "port {port} is not allowed for {host}; [intercept] ports = {:?}",
                    policy.egress.intercept_ports
                ),
            );
        }
        let target = match Target::new(Scheme::HTTPS, &host, port) {
            Ok(t) => t,
            Err(m) => return reply::error(StatusCode::BAD_REQUEST, &m),
        };
        let task_shared = shared.clone();
        shared.tasks.spawn(async move {
            let _permit = permit;
            match on_upgrade.await {
                Ok(up) => {
                    let io = TokioIo::new(up);
                    intercept(task_shared, peer, listener, client, target, upstream, io).await
                }
                Err(e) => tracing::debug!(client = %peer, error = %e, "CONNECT upgrade failed"),
            }
        });
        return Response::new(full_body(""));
    }
    if policy.egress.other == OtherHosts::Deny {
        return outcome(not_intercepted(&host), AuditAction::Deny);
    }
    let upstream = match dial(&shared, policy, &host, port).await {
        Ok(s) => s,
        Err(Dial::Refused(msg)) => {
            return outcome(
                reply::error(StatusCode::FORBIDDEN, &msg),
                AuditAction::Refused,
            )
        }
        Err(Dial::Failed(e)) => {
            return outcome(
                reply::error(
                    StatusCode::BAD_GATEWAY,
                    &format!("cannot connect to {host}:{port}: {e}"),
                ),
                AuditAction::Tunnel,
            )
        }
    };
    let idle = shared.limits.idle_timeout;
    shared.tasks.spawn(async move {
        let _permit = permit;
        match on_upgrade.await {
            Ok(up) => splice(TokioIo::new(up), upstream, idle).await,
            Err(e) => tracing::debug!(client = %peer, error = %e, "CONNECT upgrade failed"),
        }
    });
    outcome(Response::new(full_body("")), AuditAction::Tunnel)
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

/// `host:port` from a CONNECT request target, validated: a DNS name or
/// an IP address (IPv6 in brackets), and a decimal port 1–65535.
pub(crate) fn parse_authority(req: &Request<Incoming>) -> Result<(String, u16), String> {
    let Some(a) = req.uri().authority() else {
        return Err("CONNECT needs a target of the form host:port".into());
    };
    parse_connect_target(a.as_str())
}

/// The checks of [`parse_authority`] on the raw `host:port` text.
pub(crate) fn parse_connect_target(raw: &str) -> Result<(String, u16), String> {
    if raw.contains('@') {
        return Err("CONNECT target must not contain user information".into());
    }
    let Some((host, port)) = raw.rsplit_once(':') else {
        return Err(format!(
            "CONNECT target `{}` has no port; use host:443",
            shorten(raw)
        ));
    };
    let host = if let Some(inner) = host.strip_prefix('[') {
        let Some(v6) = inner.strip_suffix(']') else {
            return Err("CONNECT target has an unclosed `[`".into());
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`[{}]` is not an IPv6 address", shorten(v6)));
        }
        v6
    } else if host.contains(':') {
        return Err("an IPv6 CONNECT target must be in brackets, e.g. [2001:db8::1]:443".into());
    } else {
        host
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
        _ => {
            return Err(format!(
                "CONNECT port `{}` is not a number from 1 to 65535",
                shorten(port)
            ))
        }
    };
    if host.is_empty() || host.len() > 253 {
        return Err("CONNECT host is empty or longer than 253 bytes".into());
    }
    // Numeric spellings (`2130706433`, `0x7f.1`) become the address the
    // resolver would have made of them, so the IP-literal and egress
    // rules see it and it is never intercepted as a name.
    match parse_client_host(host) {
        Ok(ClientHost::Ip(ip)) => Ok((ip.to_string(), port)),
        Ok(ClientHost::Name(name)) => Ok((name, port)),
        Err(msg) => Err(format!("CONNECT {msg}")),
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The serving half of an intercepted connection, boxed: what the
/// connection's task holds for as long as the client keeps it open.
type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Terminates TLS on `io` (a CONNECT tunnel, or a transparent connection)
/// with a leaf minted for `target` and serves the requests inside.
///
/// The future this returns is what a connection's task holds while the
/// client keeps the connection open, mostly idle on a fleet's gateway, so
/// it is kept small: the handshake (the ClientHello alone is 1.4 KiB of
/// state, the TLS stream 1.2 KiB) runs in a box of its own that is freed
/// once it is done, and the serving half is a second box. An `async fn`
/// would size every one of its suspension points into the task for the
/// connection's whole life (4.4 KiB; `benches/README.md`).
pub(crate) fn intercept<I>(
    shared: Arc<DataPlane>,
    peer: SocketAddr,
    listener: Listener,
    client_id: (Option<ClientId>, Presented),
    target: Target,
    upstream: Arc<Upstream>,
    io: I,
) -> impl std::future::Future<Output = ()> + Send
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let setup = Box::pin(establish(
        shared, peer, listener, client_id, target, upstream, io,
    ));
    async move {
        let _open = crate::ops::metrics::global().tunnel();
        if let Some(serving) = setup.await {
            serving.await;
        }
    }
}

/// The TLS handshake of [`intercept`] and what the connection is served
/// with: `None` when the handshake fails or the SNI is refused.
async fn establish<I>(
    shared: Arc<DataPlane>,
    peer: SocketAddr,
    listener: Listener,
    client_id: (Option<ClientId>, Presented),
    target: Target,
    upstream: Arc<Upstream>,
    io: I,
) -> Option<Serving>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake_timeout = shared.limits.header_read_timeout;
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(handshake_timeout, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::debug!(host = %target.host, error = %e, "bad TLS ClientHello");
            return None;
        }
        Err(_) => {
            tracing::debug!(host = %target.host, "no TLS ClientHello in time");
            return None;
        }
    };
    let sni = start.client_hello().server_name().map(normalize_host);
    let misdirected_sni = sni.filter(|s| **s != *target.host);
    let name = misdirected_sni.as_deref().unwrap_or(&target.host);
    // A mismatched SNI still gets a certificate for the name it asked for,
    // so that the client can read the 421 that explains the problem; a name
    // we do not intercept gets nothing.
    if misdirected_sni.is_some() && !shared.control.policy().intercepts(name) {
        tracing::debug!(host = %target.host, sni = name, "SNI names a host that is not intercepted");
        return None;
    }
    let config = match shared.ca.server_config(name) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(host = name, error = %e, "cannot mint a leaf certificate");
            return None;
        }
    };
    let tls = match tokio::time::timeout(handshake_timeout, start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(host = %target.host, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => return None,
    };
    let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let origin_host = target.host.clone();
    let origin = Arc::new(Origin::new(
        upstream,
        peer,
        listener,
        client_id,
        target,
        misdirected_sni,
    ));
    let closing = origin.closing.clone();
    let svc_shared = shared.clone();
    let activity = Activity::new();
    let svc_activity = activity.clone();
    let retire = Retirement::after(shared.limits.max_connection_age);
    let svc = service_fn(move |req| {
        let shared = svc_shared.clone();
        let origin = origin.clone();
        let guard = svc_activity.begin();
        async move {
            let mut resp = request::handle(shared, origin, req, guard).await;
            // HTTP/2 is retired by GOAWAY below (and has no `Connection`).
            if !is_h2 {
                retire.close_if_due(&mut resp);
            }
            Ok::<_, Infallible>(resp)
        }
    });
    if !is_h2 {
        // Between requests it gives back hyper's buffers (proxy/park.rs).
        return Some(Box::pin(crate::proxy::park::serve_h1(
            shared,
            tls,
            activity,
            svc,
            origin_host,
        )));
    }
    // HTTP/2 PINGs would count as activity: idleness is judged on requests
    // in flight only. The connection is boxed here, not in the block, so
    // that the block does not keep a second slot for the TLS stream.
    let mut conn = Box::pin(shared.h2.serve_connection(TokioIo::new(tls), svc));
    Some(Box::pin(async move {
        let idle = shared.limits.idle_timeout;
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = shared.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            _ = activity.watch(idle, None) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            // The client is no longer admitted: GOAWAY after the 407.
            _ = closing.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            // Old enough to move: GOAWAY, and the streams in flight finish
            // here while the client opens new ones on a new connection.
            _ = retire.due() => {
                tracing::debug!(host = %origin_host, "max_connection_age reached: GOAWAY");
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "intercepted connection ended with an error");
        }
    }))
}

pub(crate) enum Dial {
    /// Egress policy says no.
    Refused(String),
    /// The connection could not be made.
    Failed(std::io::Error),
}

/// Where a connection goes once the egress check passed it.
#[derive(Debug)]
pub(crate) enum Dest {
    /// Straight to exactly these addresses.
    Direct(Vec<SocketAddr>),
    /// Through the parent proxy, by CONNECT to this `host:port`: the
    /// checked address of an IP literal or an `[upstream.resolve]` host,
    /// or the name itself, which the parent resolves.
    Parent(Arc<Parent>, String),
}

/// The upstream end of a spliced tunnel: a socket, and what the parent
/// proxy already passed on from the target (a server that speaks first),
/// which goes to the client before anything else.
pub(crate) struct Spliced {
    pub stream: TcpStream,
    pub early: Vec<u8>,
}

/// Opens the TCP connection for a spliced tunnel to exactly the addresses
/// [`resolve_for_egress`] passed, or through the parent proxy.
pub(crate) async fn dial(
    shared: &DataPlane,
    policy: &Policy,
    host: &str,
    port: u16,
) -> Result<Spliced, Dial> {
    let addrs = match resolve_for_egress(shared, policy, host, port).await? {
        Dest::Direct(addrs) => addrs,
        Dest::Parent(parent, target) => {
            return match parent.connect(&target).await {
                Ok(Tunnel { stream, early }) => Ok(Spliced { stream, early }),
                Err(e) => Err(Dial::Failed(std::io::Error::other(e))),
            }
        }
    };
    let connect = TcpStream::connect(&addrs[..]);
    match tokio::time::timeout(shared.upstream.connect_timeout(), connect).await {
        Ok(r) => r
            .map(|stream| Spliced {
                stream,
                early: Vec::new(),
            })
            .map_err(Dial::Failed),
        Err(_) => Err(Dial::Failed(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        ))),
    }
}

/// Where a connection to `host:port` may go, through the same
/// `[upstream.resolve]` map as every other outbound connection (a mapped
/// host goes to its mapped address, whatever port was asked for). The
/// policy is decided on the resolved addresses, and the caller connects to
/// exactly those, so DNS cannot smuggle in a private target.
///
/// With a parent proxy (and a host `no_proxy` does not name), a name the
/// map does not hold is not resolved here: the parent resolves it, and
/// its own access rules decide where it may go. IP literals and mapped
/// hosts are still judged here, on the address the CONNECT will carry.
pub(crate) async fn resolve_for_egress(
    shared: &DataPlane,
    policy: &Policy,
    host: &str,
    port: u16,
) -> Result<Dest, Dial> {
    let literal = host.parse::<IpAddr>().ok();
    if literal.is_some() && !policy.egress.allow_ip_literals {
        return Err(Dial::Refused(format!(
            "CONNECT to the IP address {host} is refused; use a host name, or set [intercept] allow_ip_literals = true"
        )));
    }
    let parent = shared.upstream.parent_for(host);
    let addrs: Vec<SocketAddr> = if let Some(addr) = shared.upstream.resolved(host) {
        vec![addr]
    } else if let Some(ip) = literal {
        vec![SocketAddr::new(ip, port)]
    } else if let Some(parent) = parent {
        return Ok(Dest::Parent(parent.clone(), format!("{host}:{port}")));
    } else {
        let lookup = tokio::net::lookup_host((host, port));
        match tokio::time::timeout(shared.upstream.connect_timeout(), lookup).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => return Err(Dial::Failed(e)),
            Err(_) => {
                return Err(Dial::Failed(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "DNS lookup timed out",
                )))
            }
        }
    };
    if addrs.is_empty() {
        return Err(Dial::Failed(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the name has no address",
        )));
    }
    if let Some(bad) = addrs.iter().find(|a| !policy.egress.allows(a.ip())) {
        return Err(Dial::Refused(format!(
            "{host} resolves to {}, a private, loopback or link-local address; connections to those are refused unless listed in [intercept] allow_private",
            bad.ip()
        )));
    }
    Ok(match parent {
        Some(parent) => Dest::Parent(parent.clone(), addrs[0].to_string()),
        None => Dest::Direct(addrs),
    })
}

/// Copies bytes both ways between the client and `upstream` until either
/// ends or nothing moves for `idle`.
pub(crate) async fn splice<I>(client: I, upstream: Spliced, idle: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let _open = crate::ops::metrics::global().tunnel();
    let Spliced {
        stream: mut upstream,
        early,
    } = upstream;
    let _ = upstream.set_nodelay(true);
    let activity = Activity::new();
    let mut client = ActiveIo::new(client, activity.clone());
    if !early.is_empty() {
        use tokio::io::AsyncWriteExt;
        if let Err(e) = client.write_all(&early).await {
            tracing::debug!(error = %e, "tunnel ended with an error");
            return;
        }
    }
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "tunnel ended with an error");
            }
        }
        _ = activity.watch(idle, None) => tracing::debug!("tunnel closed after idle timeout"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_connect_target as p;

    #[test]
    fn connect_targets_must_be_a_name_or_address_and_a_port() {
        assert_eq!(
            p("Storage.googleapis.com.:443"),
            Ok(("storage.googleapis.com".into(), 443))
        );
        assert_eq!(p("[::1]:8443"), Ok(("::1".into(), 8443)));
        assert_eq!(p("10.0.0.1:443"), Ok(("10.0.0.1".into(), 443)));
        // inet_aton spellings are the address they mean, never a name.
        for numeric in [
            "2130706433:443",
            "0x7f000001:443",
            "0177.0.0.1:443",
            "127.1:443",
            "0x7f.1:443",
            "0X7F.0.0.1.:443",
        ] {
            assert_eq!(p(numeric), Ok(("127.0.0.1".into(), 443)), "{numeric}");
        }
        for bad in [
            "1.2.3.4.5:443",
            "256.0.0.1:443",
            "example.123:443",
            "a.0x1f:443",
        ] {
            let err = p(bad).unwrap_err();
            assert!(err.starts_with("CONNECT host"), "{bad}: {err}");
        }
        assert!(p("example.123:443")
            .unwrap_err()
            .contains("ends in a number"));
        for bad in [
            "storage.googleapis.com",
            "storage.googleapis.com:0",
            "storage.googleapis.com:99999",
            "storage.googleapis.com:+443",
            "u:p@storage.googleapis.com:443",
            "[storage.googleapis.com]junk:443",
            "*.googleapis.com:443",
            "sto$rage..googleapis.com:443",
            "::1:443",
            "[::1:443",
            ":443",
        ] {
            assert!(p(bad).is_err(), "{bad} accepted");
        }
    }
}
