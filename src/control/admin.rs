//! The admin endpoint, on its own address (never the proxy port):
//! `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus text) and
//! `POST /reload`, and the rules that keep browsers and idle sockets off it.
//!
//! The endpoint has no authentication, so it must not be reachable from a
//! web page a local user visits. A page can make a browser send requests
//! to it in two ways: cross-site (the request carries `Origin`; a form POST
//! needs no preflight) and by DNS rebinding (a name the attacker controls
//! resolves to this address, and the page reads the answer as same-origin;
//! the request carries the attacker's name in `Host`). So every request
//! with an `Origin` header is refused, `Host` must name this endpoint, and
//! a POST must carry [`POST_HEADER`], which a page can only send after a
//! CORS preflight this endpoint never grants. Curl, Prometheus and
//! Kubernetes probes send no `Origin` and put the address they connected
//! to in `Host`.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE, ORIGIN};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::control::ControlPlane;
use crate::google::slot::SlotStatus;
use crate::net::{full_body, request_authority, unmap, ProxyBody};
use crate::policy::routes::Action;

/// How long a connection may take to send a request head. hyper starts
/// this timer when it waits for a head, so it is also how long a
/// keep-alive connection may sit idle between requests.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an admin connection may live, whatever it is doing: a client
/// that never reads its `/metrics` answer, or never sends the body it
/// announced, is not covered by the head timer. Every admin request is
/// answered in milliseconds; scrapers reconnect.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// Concurrent admin connections. More are closed as soon as they are
/// accepted, so a flood of idle sockets costs at most this many tasks.
const MAX_CONNECTIONS: usize = 64;

/// The header every POST must carry (any value; `reload` by convention).
pub(crate) const POST_HEADER: &str = "x-impersonate-proxy";

/// Serves the admin endpoint until the task is aborted.
pub(crate) async fn serve(control: Arc<ControlPlane>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(
                max = MAX_CONNECTIONS,
                "admin connection closed: too many open"
            );
            continue;
        };
        // The address this connection reached: on a wildcard bind it is
        // the interface address (the pod IP a kubelet probe uses).
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let shared = control.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_conn(TokioIo::new(stream), move |req| handle(&shared, local, req)).await;
        });
    }
}

/// Serves one admin connection under the head timer and the connection
/// deadline.
async fn serve_conn<I, F>(io: I, handler: F)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Response<ProxyBody> + Clone + Send + 'static,
{
    let svc = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(req)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, svc);
    if tokio::time::timeout(CONNECTION_DEADLINE, conn)
        .await
        .is_err()
    {
        tracing::debug!("admin connection closed at its deadline");
    }
}

/// Whether `authority` (from `Host` or an absolute-form request target)
/// names this endpoint: the address the connection reached, or a
/// loopback name (`localhost`, `127.0.0.1`, `[::1]`), with the admin port
/// or no port.
fn names_this_endpoint(authority: &str, local: SocketAddr) -> bool {
    // `Authority` accepts userinfo, which a Host never carries (RFC 9110).
    if authority.contains('@') {
        return false;
    }
    let Ok(a) = authority.parse::<Authority>() else {
        return false;
    };
    if a.port_u16().is_some_and(|p| p != local.port()) {
        return false;
    }
    let host = a.host();
    if host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<IpAddr>().map(unmap) {
        Ok(ip) => ip.is_loopback() || ip == unmap(local.ip()),
        Err(_) => false,
    }
}

/// The reason a request is refused before it is routed, if it is.
fn refusal(req: &Request<Incoming>, local: SocketAddr) -> Option<String> {
    if req.headers().contains_key(ORIGIN) {
        return Some(
            "the admin endpoint refuses requests with an Origin header: browsers send one, and a web page must not reach this endpoint. Use curl, a scraper or a probe\n"
                .into(),
        );
    }
    // Browsers always send Host; a request without one is not from a page.
    if let Some(authority) = request_authority(req) {
        if !names_this_endpoint(authority, local) {
            return Some(format!(
                "Host `{}` does not name this admin endpoint; use its address (http://{local}/) or localhost with port {}. Any other name is refused so that a web page cannot reach the endpoint through DNS rebinding\n",
                authority.chars().take(80).collect::<String>(),
                local.port()
            ));
        }
    }
    if req.method() == Method::POST && !req.headers().contains_key(POST_HEADER) {
        return Some(format!(
            "POST needs the header `X-Impersonate-Proxy: reload` (e.g. curl -X POST -H 'X-Impersonate-Proxy: reload' http://{local}{}); a cross-site form cannot send it\n",
            req.uri().path()
        ));
    }
    None
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(full_body(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn handle(shared: &ControlPlane, local: SocketAddr, req: Request<Incoming>) -> Response<ProxyBody> {
    if let Some(why) = refusal(&req, local) {
        return text(StatusCode::FORBIDDEN, "text/plain", why);
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => readyz(shared),
        (&Method::GET, "/metrics") => {
            let slots = shared.registry().slots().into_iter().map(|s| {
                let secs = s.expires_in().map(|d| d.as_secs_f64()).unwrap_or(0.0);
                (s.request().to_string(), secs)
            });
            let metrics = crate::ops::metrics::global();
            metrics.set_ready(readiness(shared).0);
            let body = metrics.render(slots);
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            )
        }
        (&Method::POST, "/reload") => match shared.reload() {
            Ok(done) => text(StatusCode::OK, "text/plain", format!("{done}\n")),
            Err(e) => text(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "admin endpoints: GET /healthz, GET /readyz, GET /metrics, POST /reload\n".into(),
        ),
    }
}

/// Ready when serving (not draining) and every warm route's slot holds a
/// token; otherwise 503 naming the failing routes and why.
fn readyz(shared: &ControlPlane) -> Response<ProxyBody> {
    let (ready, body) = readiness(shared);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, "application/json", body.to_string())
}

/// Whether the proxy is ready, and the `/readyz` body saying why.
fn readiness(shared: &ControlPlane) -> (bool, serde_json::Value) {
    if shared.is_draining() {
        return (
            false,
            serde_json::json!({"ready": false, "reason": "shutting down"}),
        );
    }
    let policy = shared.policy();
    let mut failing = Vec::new();
    for route in policy.routes.routes().iter().filter(|r| r.warm) {
        if let Action::Inject { slot, .. } = &route.action {
            // An ended time box (`refresh = false`) is the route working
            // as configured, not the proxy failing to start.
            let ended = slot.last_error().is_some_and(|e| e.is_time_box_ended());
            if !ended && !matches!(slot.status(), SlotStatus::Fresh | SlotStatus::Refreshing) {
                failing.push(serde_json::json!({
                    "route": &*route.name,
                    "target_principal": slot.request().target_principal(),
                    "status": format!("{:?}", slot.status()),
                    "error": slot.last_error().map(|e| e.to_string()),
                }));
            }
        }
    }
    let ready = failing.is_empty();
    let mut body = serde_json::json!({"ready": ready, "failing": failing});
    // Reported, not a reason to be unready: a full audit disk is usually
    // shared by every replica, and taking them all out of rotation would
    // turn an audit problem into an outage. Alert on
    // audit_write_errors_total instead.
    if let Some(a) = shared.audit_health() {
        body["audit"] = serde_json::json!({
            "ok": a.error.is_none(),
            "error": a.error,
            "write_errors": a.write_errors,
            "dropped_records": a.dropped,
            "unwritten_bytes": a.unwritten_bytes,
        });
    }
    (ready, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn host_must_name_this_endpoint() {
        let lo: SocketAddr = "127.0.0.1:9091".parse().unwrap();
        let pod: SocketAddr = "10.4.2.7:9091".parse().unwrap();
        let dual: SocketAddr = "[::ffff:10.4.2.7]:9091".parse().unwrap();
        for (host, local) in [
            ("127.0.0.1:9091", lo),
            ("127.0.0.1", lo),
            ("localhost:9091", lo),
            ("LocalHost:9091", lo),
            ("[::1]:9091", lo),
            ("10.4.2.7:9091", pod),
            ("10.4.2.7:9091", dual),
            ("localhost:9091", pod),
        ] {
            assert!(names_this_endpoint(host, local), "{host} via {local}");
        }
        for (host, local) in [
            ("attacker.example:9091", lo),
            ("attacker.example", lo),
            ("127.0.0.1:9092", lo),
            ("localhost:80", lo),
            ("10.4.2.8:9091", pod),
            ("127.0.0.1.nip.io:9091", lo),
            ("localhost.attacker.example:9091", lo),
            ("", lo),
            ("user@127.0.0.1:9091", lo),
        ] {
            assert!(!names_this_endpoint(host, local), "{host} via {local}");
        }
    }

    fn ok_handler(_req: Request<Incoming>) -> Response<ProxyBody> {
        Response::new(full_body(vec![b'x'; 1 << 20]))
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_the_head_timeout() {
        let (mut client, server) = tokio::io::duplex(4 << 20);
        let conn = tokio::spawn(serve_conn(TokioIo::new(server), ok_handler));
        client
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        // Read the whole answer (1 MiB body plus the head), then stay idle.
        let mut buf = vec![0u8; (1 << 20) + 200];
        let mut got = 0;
        while got < 1 << 20 {
            got += client.read(&mut buf[got..]).await.unwrap();
        }
        let idle_from = tokio::time::Instant::now();
        let eof = tokio::time::timeout(Duration::from_secs(3600), async {
            loop {
                if client.read(&mut buf).await.unwrap_or(0) == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(
            eof.is_ok(),
            "an idle admin connection stayed open for an hour"
        );
        let idle = idle_from.elapsed();
        assert!(
            idle >= HEADER_READ_TIMEOUT && idle < HEADER_READ_TIMEOUT + Duration::from_secs(1),
            "closed after {idle:?}"
        );
        conn.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_is_dropped_at_the_deadline() {
        // A 1 MiB answer into a 1 KiB pipe nobody reads: the write stalls.
        let (mut client, server) = tokio::io::duplex(1024);
        let start = tokio::time::Instant::now();
        let conn = tokio::spawn(serve_conn(TokioIo::new(server), ok_handler));
        client
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let done = tokio::time::timeout(Duration::from_secs(3600), conn).await;
        assert!(done.is_ok(), "a stalled admin connection lived for an hour");
        let lived = start.elapsed();
        assert!(
            lived >= CONNECTION_DEADLINE && lived < CONNECTION_DEADLINE + Duration::from_secs(1),
            "closed after {lived:?}"
        );
    }
}
