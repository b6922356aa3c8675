//! The admin endpoint keeps web pages and socket floods off: `Host` must
//! name the endpoint (DNS rebinding), `Origin` is refused (cross-site
//! requests), a POST needs `X-Impersonate-Proxy`, and connections beyond
//! the cap are closed at once.

#[path = "support/client.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

use client::*;
use proxy::*;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A proxy with an admin endpoint whose `POST /reload` re-reads its file.
async fn admin_proxy(name: &str) -> (SocketAddr, TestProxy) {
    let (cfg, dir) = config_with_proxy_keys(name, "admin = \"127.0.0.1:0\"", "");
    // Reloadable, and it holds its config dir for as long as it runs.
    let (proxy, _reloader) = start_reloadable(cfg, dir).await;
    (proxy.admin.expect("admin endpoint bound"), proxy)
}

/// One request with exactly the given header lines; status and body.
async fn request(admin: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(admin).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    // A connection over the cap is closed at once: no answer, status 0.
    let _ = s.write_all(req.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status_of(head).unwrap_or(0), body.to_owned())
}

#[tokio::test]
async fn a_host_that_is_not_this_endpoint_is_refused() {
    let (admin, _stop) = admin_proxy("admin-host").await;
    let port = admin.port();
    // DNS rebinding: attacker.example resolved to 127.0.0.1 in the browser.
    for host in [
        format!("attacker.example:{port}"),
        "attacker.example".to_string(),
        format!("127.0.0.1:{}", port.wrapping_add(1).max(1)),
    ] {
        let (code, body) = request(admin, "GET", "/metrics", &format!("Host: {host}\r\n")).await;
        assert_eq!(code, 403, "Host: {host} read /metrics: {body}");
        assert!(body.contains("DNS rebinding"), "{body}");
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        admin.to_string(),
    ] {
        let (code, body) = request(admin, "GET", "/metrics", &format!("Host: {host}\r\n")).await;
        assert_eq!(code, 200, "Host: {host}: {body}");
    }
    let (code, _) = request(admin, "GET", "/healthz", "").await;
    assert_eq!(code, 200, "a request without Host is not from a browser");
}

#[tokio::test]
async fn a_request_with_an_origin_is_refused() {
    let (admin, _stop) = admin_proxy("admin-origin").await;
    let host = format!("Host: {admin}\r\n");
    let (code, body) = request(
        admin,
        "GET",
        "/metrics",
        &format!("{host}Origin: http://evil.example\r\n"),
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("Origin"), "{body}");
    // The cross-site form POST: text/plain needs no preflight, and here it
    // even carries the header, which a page could only add after one.
    let (code, body) = request(
        admin,
        "POST",
        "/reload",
        &format!("{host}Origin: http://evil.example\r\nContent-Type: text/plain\r\nX-Impersonate-Proxy: reload\r\n"),
    )
    .await;
    assert_eq!(code, 403, "a cross-site POST reloaded: {body}");
}

#[tokio::test]
async fn post_needs_the_custom_header() {
    let (admin, _stop) = admin_proxy("admin-post").await;
    let host = format!("Host: {admin}\r\n");
    let (code, body) = request(admin, "POST", "/reload", &host).await;
    assert_eq!(code, 403, "POST without the header reloaded: {body}");
    assert!(body.contains("X-Impersonate-Proxy"), "{body}");
    let (code, body) = request(
        admin,
        "POST",
        "/reload",
        &format!("{host}X-Impersonate-Proxy: reload\r\n"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let (admin, _stop) = admin_proxy("admin-cap").await;
    // 64 idle connections, each accepted by the endpoint (an answer on
    // the first proves the accept loop is running).
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(TcpStream::connect(admin).await.unwrap());
    }
    // The 65th is closed without an answer, long before any timeout.
    let mut extra = TcpStream::connect(admin).await.unwrap();
    let mut b = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut b)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the 65th idle admin connection was kept open: {closed:?}"
    );
    // The held ones still work, and so do new ones once they are gone.
    let first = &mut idle[0];
    first
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    first.read_to_end(&mut buf).await.unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    drop(idle);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if request(admin, "GET", "/healthz", "").await.0 == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cap was not released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
