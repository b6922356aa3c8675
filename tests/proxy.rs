//! The intercepting proxy end to end: real TCP, real TLS, HTTP/1.1 and
//! HTTP/2, against a local upstream reached through `[upstream.resolve]`.

#[path = "support/client.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use impersonate_proxy::net::BoxError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use client::*;
use proxy::*;
use support::*;
use upstream::*;

const HOST: &str = "storage.googleapis.com";

#[tokio::test]
async fn http1_get_and_post_reach_the_upstream_without_hop_by_hop_headers() {
    let w = world("h1", "").await;
    let mut c = client(&w.proxy, HOST, false).await;
    let mut req = for_version(get(HOST, "/echo?alt=json"), false);
    req.headers_mut()
        .insert("proxy-authorization", "Basic dTpw".parse().unwrap());
    req.headers_mut()
        .insert("connection", "x-hop".parse().unwrap());
    req.headers_mut().insert("x-hop", "1".parse().unwrap());
    req.headers_mut()
        .insert("x-goog-api-client", "gl-test".parse().unwrap());
    let resp = c.send(req).await;
    assert_eq!(resp.status(), 200);
    let v = json(&body_string(resp).await);
    assert_eq!(v["path"], "/echo?alt=json");
    let headers = v["headers"].as_object().unwrap();
    assert_eq!(headers["host"], HOST);
    assert_eq!(headers["x-goog-api-client"], "gl-test");
    assert!(!headers.contains_key("proxy-authorization"), "{headers:?}");
    assert!(!headers.contains_key("x-hop"), "{headers:?}");

    let body = vec![7u8; 100_000];
    let req = Request::post("/count")
        .header("host", HOST)
        .body(full(body))
        .unwrap();
    let resp = c.send(req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body_string(resp).await, "100000");
    assert!(w.proxy.stop().await, "idle connections drain on shutdown");
}

#[tokio::test]
async fn http2_get_reaches_the_upstream_and_grpc_trailers_come_back() {
    let w = world("h2", "").await;
    let mut c = client(&w.proxy, HOST, true).await;
    let resp = c.send(for_version(get(HOST, "/echo"), true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let v = json(&body_string(resp).await);
    assert_eq!(v["authority"], HOST);

    let mut req = for_version(get(HOST, "/grpc"), true);
    req.headers_mut().insert("te", "trailers".parse().unwrap());
    req.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    let resp = c.send(req).await;
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-trailer"], "yes");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");
}

#[tokio::test]
async fn te_trailers_reaches_the_upstream_over_http2() {
    let w = world("te", "").await;
    let mut c = client(&w.proxy, HOST, true).await;
    let mut req = for_version(get(HOST, "/echo"), true);
    req.headers_mut().insert("te", "trailers".parse().unwrap());
    let v = json(&body_string(c.send(req).await).await);
    assert_eq!(v["version"], "HTTP/2.0", "upstream negotiated h2 by ALPN");
    assert_eq!(v["headers"]["te"], "trailers");
}

#[tokio::test]
async fn upstream_http_version_follows_the_client_unless_prefer_h2() {
    for (protocol, client_h2, want) in [
        ("match", false, "HTTP/1.1"),
        ("match", true, "HTTP/2.0"),
        ("prefer_h2", false, "HTTP/2.0"),
        ("prefer_h2", true, "HTTP/2.0"),
    ] {
        let w = world_with(
            &format!("proto-{protocol}-{client_h2}"),
            "",
            &format!("protocol = \"{protocol}\""),
            "",
        )
        .await;
        let mut c = client(&w.proxy, HOST, client_h2).await;
        for _ in 0..2 {
            let resp = c.send(for_version(get(HOST, "/echo"), client_h2)).await;
            assert_eq!(resp.status(), 200);
            let v = json(&body_string(resp).await);
            assert_eq!(
                v["version"], want,
                "protocol = {protocol}, client h2 = {client_h2}"
            );
        }
    }
}

#[tokio::test]
async fn an_http1_client_connection_keeps_its_upstream_connection_and_hands_it_on() {
    use std::sync::atomic::Ordering::Relaxed;
    let w = world("sticky", "").await;
    let mut c = client(&w.proxy, HOST, false).await;
    for _ in 0..5 {
        let resp = c.send(for_version(get(HOST, "/echo"), false)).await;
        assert_eq!(resp.status(), 200);
        body_string(resp).await;
    }
    assert_eq!(w.seen.requests.load(Relaxed), 5);
    assert_eq!(
        w.seen.connections.load(Relaxed),
        1,
        "one upstream connection for the client connection"
    );
    drop(c);
    // A later client connection (a one-request client, say) gets an idle
    // upstream connection of a closed one, once the proxy has seen the
    // close. Each worker thread has its own idle list, so a new connection
    // may first land where none is idle.
    let w = &w;
    let reused = eventually(Duration::from_secs(5), || async move {
        let before = w.seen.connections.load(Relaxed);
        let mut c = client(&w.proxy, HOST, false).await;
        let resp = c.send(for_version(get(HOST, "/echo"), false)).await;
        assert_eq!(resp.status(), 200);
        body_string(resp).await;
        w.seen.connections.load(Relaxed) == before
    })
    .await;
    assert!(
        reused,
        "a closed client connection's upstream connection is reused"
    );
}

#[tokio::test]
async fn idle_http1_client_connections_hold_no_upstream_connection() {
    use std::sync::atomic::Ordering::Relaxed;
    // One worker, so that every client connection draws on one idle list.
    let w = world_with("idle-release", "workers = 1", "", "").await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut c = client(&w.proxy, HOST, false).await;
        let resp = c.send(for_version(get(HOST, "/echo"), false)).await;
        assert_eq!(resp.status(), 200);
        body_string(resp).await;
        // Stays open, idle.
        clients.push(c);
    }
    assert_eq!(
        w.seen.connections.load(Relaxed),
        1,
        "each idle client connection handed its upstream connection back"
    );
    // Parked after a second of quiet (proxy/park.rs): each still serves
    // its next request, over the same upstream connection.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for c in &mut clients {
        let resp = c.send(for_version(get(HOST, "/echo"), false)).await;
        assert_eq!(resp.status(), 200);
        body_string(resp).await;
    }
    assert_eq!(w.seen.requests.load(Relaxed), 8);
    assert_eq!(w.seen.connections.load(Relaxed), 1);
}

/// `n` client connections through `w`'s proxy to [`HOST`], each with one
/// request done, left idle.
async fn idle_clients(w: &World, n: usize) -> Vec<Sender> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = client(&w.proxy, HOST, false).await;
        let resp = c.send(for_version(get(HOST, "/echo"), false)).await;
        assert_eq!(resp.status(), 200);
        body_string(resp).await;
        clients.push(c);
    }
    clients
}

/// Every client sends one request for `path` at the same moment; waits
/// for all the responses.
async fn all_at_once(clients: Vec<Sender>, path: &'static str) -> Vec<Sender> {
    let go = Arc::new(tokio::sync::Barrier::new(clients.len()));
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients {
        let go = go.clone();
        tasks.spawn(async move {
            go.wait().await;
            let resp = c.send(for_version(get(HOST, path), false)).await;
            assert_eq!(resp.status(), 200);
            body_string(resp).await;
            c
        });
    }
    tasks.join_all().await
}

#[tokio::test]
async fn a_burst_of_idle_clients_turning_busy_shares_a_few_new_upstream_connections() {
    use std::sync::atomic::Ordering::Relaxed;
    // One worker: one idle list, one limit on connections being made.
    let w = world_with("burst", "workers = 1", "", "").await;
    let clients = idle_clients(&w, 200).await;
    assert_eq!(w.seen.connections.load(Relaxed), 1);
    // 200 requests at once, one connection idle, and new connections that
    // take half a second (an upstream far away). Before, each request
    // found none idle and made its own: 199 TLS handshakes, every request
    // waiting half a second. Now at most 16 are being made at a time, and
    // the connection that comes back after each response goes to the next
    // request waiting: most are served before the new ones are made.
    w.seen.accept_delay_ms.store(500, Relaxed);
    let clients = all_at_once(clients, "/echo").await;
    let made = w.seen.connections.load(Relaxed) - 1;
    assert!(
        (1..=32).contains(&made),
        "{made} upstream connections made for 200 requests at once"
    );
    assert_eq!(w.seen.requests.load(Relaxed), 400);
    drop(clients);
}

#[tokio::test]
async fn requests_that_keep_their_upstream_connections_busy_each_get_one() {
    use std::sync::atomic::Ordering::Relaxed;
    let w = world_with("burst-slow", "workers = 1", "", "").await;
    let clients = idle_clients(&w, 40).await;
    // 40 responses of 200 ms at once: none comes back in time to be
    // shared, so each request needs a connection of its own, and the
    // limit on connections being made at once is no limit on connections.
    all_at_once(clients, "/slow/2").await;
    let made = w.seen.connections.load(Relaxed) - 1;
    assert!(
        made > 16,
        "{made} upstream connections for 40 concurrent long responses: requests waited for others to end"
    );
}

/// Reads one response (a head and a `Content-Length` body) from `s`.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "closed mid-head");
        out.push(b[0]);
    }
    let head = String::from_utf8_lossy(&out).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    head + &String::from_utf8_lossy(&body)
}

#[tokio::test]
async fn a_parked_connection_keeps_split_and_pipelined_requests() {
    let w = world("parked", "").await;
    let mut s = tls_through(&w.proxy, "storage.googleapis.com:443", HOST, &[b"http/1.1"])
        .await
        .unwrap();
    let req = format!("GET /echo HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    // Quiet for longer than PARK_AFTER: parked. Then a head in two parts
    // with a pause between (a started head is never parked), and a second
    // request behind it in the same write.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"GET /echo HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rest = format!(
        "st: {HOST}\r\n\r\nGET /echo HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(rest.as_bytes()).await.unwrap();
    for i in 0..2 {
        let resp = read_response(&mut s).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "response {i}: {resp}");
        assert!(resp.contains("/echo"), "response {i}: {resp}");
    }
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

#[tokio::test]
async fn http2_client_connections_share_one_upstream_connection_per_worker() {
    use std::sync::atomic::Ordering::Relaxed;
    let w = world_with("h2-shared", "workers = 1", "", "").await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(client(&w.proxy, HOST, true).await);
    }
    for _ in 0..3 {
        for c in &mut clients {
            let resp = c.send(for_version(get(HOST, "/echo"), true)).await;
            assert_eq!(resp.status(), 200);
            let v = json(&body_string(resp).await);
            assert_eq!(v["version"], "HTTP/2.0");
        }
    }
    assert_eq!(w.seen.requests.load(Relaxed), 12);
    assert_eq!(
        w.seen.connections.load(Relaxed),
        1,
        "one multiplexed upstream connection"
    );
}

#[tokio::test]
async fn a_request_after_the_upstream_closed_its_connection_goes_over_a_new_one() {
    use std::sync::atomic::Ordering::Relaxed;
    let w = world("sticky-close", "").await;
    let mut c = client(&w.proxy, HOST, false).await;
    for round in 1..=3 {
        let resp = c.send(for_version(get(HOST, "/close"), false)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(body_string(resp).await, "closing");
        // Sent at once, before or after the proxy has seen the close: the
        // request is never lost.
        let resp = c.send(for_version(get(HOST, "/echo"), false)).await;
        assert_eq!(resp.status(), 200, "round {round}");
        body_string(resp).await;
    }
    assert_eq!(w.seen.requests.load(Relaxed), 6);
    assert!(w.seen.connections.load(Relaxed) >= 4);
}

const BIG: usize = 100 * 1024 * 1024;

#[tokio::test]
async fn a_100_mb_upload_and_download_stream_through() {
    let w = world("big", "").await;
    for h2 in [false, true] {
        let mut c = client(&w.proxy, HOST, h2).await;
        let chunk = Bytes::from(vec![1u8; 256 * 1024]);
        let frames =
            (0..BIG / chunk.len()).map(move |_| Ok::<_, BoxError>(Frame::data(chunk.clone())));
        let body = StreamBody::new(futures_lite_iter(frames)).boxed();
        let req = for_version(
            Request::post(format!("https://{HOST}/count"))
                .header("host", HOST)
                .body(body)
                .unwrap(),
            h2,
        );
        let resp = c.send(req).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(body_string(resp).await, BIG.to_string(), "upload h2={h2}");

        let resp = c
            .send(for_version(get(HOST, &format!("/bytes/{BIG}")), h2))
            .await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut n = 0usize;
        while let Some(frame) = body.frame().await {
            if let Ok(d) = frame.unwrap().into_data() {
                n += d.len();
            }
        }
        assert_eq!(n, BIG, "download h2={h2}");
    }
}

#[tokio::test]
async fn connect_to_a_host_that_is_not_intercepted_is_denied_with_json() {
    let w = world("deny", "").await;
    let (mut s, head) = raw_connect(w.proxy.addr, "example.com:443").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    let v = json(std::str::from_utf8(&body).unwrap());
    assert_eq!(v["error"]["code"], 403);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("example.com"));
}

#[tokio::test]
async fn spliced_tunnel_carries_bytes_both_ways() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = echo.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            s.write_all(&buf[..n]).await.unwrap();
        }
    });
    let (cfg, dir) = config_with_ca(
        "splice",
        &format!("[intercept]\nother = \"tunnel\"\nallow_private = [\"127.0.0.1/32\"]\n[upstream.resolve]\n\"echo.example.test\" = \"{echo_addr}\"\n"),
    );
    let proxy = start_proxy(cfg, dir).await;
    let (mut s, head) = raw_connect(proxy.addr, "echo.example.test:7").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"not TLS, not inspected").await.unwrap();
    let mut buf = [0u8; 22];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"not TLS, not inspected");
}

#[tokio::test]
async fn sni_that_differs_from_the_connect_authority_gets_421() {
    let w = world("sni", "").await;
    let tls = tls_through(
        &w.proxy,
        "storage.googleapis.com:443",
        "other.googleapis.com",
        &[b"http/1.1"],
    )
    .await
    .unwrap();
    let mut c = handshake(tls, false).await;
    let resp = c
        .send(for_version(get("other.googleapis.com", "/echo"), false))
        .await;
    assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST);
    let v = json(&body_string(resp).await);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("other.googleapis.com"));
    assert_eq!(
        w.seen.requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn host_or_authority_that_differs_from_the_connect_authority_gets_421() {
    let w = world("host", "").await;
    for h2 in [false, true] {
        let mut c = client(&w.proxy, HOST, h2).await;
        let resp = c
            .send(for_version(get("other.googleapis.com", "/echo"), h2))
            .await;
        assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST, "h2={h2}");
    }
    assert_eq!(
        w.seen.requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn upstream_down_gives_502_in_googles_json_shape() {
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let (cfg, dir) = config_with_ca(
        "down",
        &format!(
            "[upstream.resolve]\n\"down.googleapis.com\" = \"{dead_addr}\"\n{PASSTHROUGH_ALL}"
        ),
    );
    let proxy = start_proxy(cfg, dir).await;
    let mut c = client(&proxy, "down.googleapis.com", false).await;
    let resp = c
        .send(for_version(get("down.googleapis.com", "/x"), false))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let v = json(&body_string(resp).await);
    assert_eq!(v["error"]["status"], "UNAVAILABLE");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("down.googleapis.com"), "{msg}");
}

#[tokio::test]
async fn absolute_form_http_requests_take_the_same_path() {
    let (plain, _) = start_upstream(None).await;
    let (cfg, dir) = config_with_ca(
        "absolute",
        &format!("[intercept]\nallow_private = [\"127.0.0.0/8\"]\n[upstream.resolve]\n\"plain.googleapis.com\" = \"{plain}\"\n{PASSTHROUGH_ALL}"),
    );
    let proxy = start_proxy(cfg, dir).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET http://plain.googleapis.com/echo HTTP/1.1\r\nHost: plain.googleapis.com\r\nProxy-Connection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

/// Each row: raw bytes sent to the proxy port, and the status expected
/// (`None`: the proxy may answer 4xx or just close).
#[tokio::test]
async fn bad_input_gets_4xx_or_close_and_the_proxy_keeps_serving() {
    let w = world("bad", "").await;
    let big_header = format!(
        "GET http://storage.googleapis.com/ HTTP/1.1\r\nHost: storage.googleapis.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let rows: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        (
            "garbage request line",
            b"\x16\x03\x01garbage\r\n\r\n".to_vec(),
            None,
        ),
        (
            "CONNECT without port",
            b"CONNECT storage.googleapis.com HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Some(400),
        ),
        (
            "CONNECT port 0",
            b"CONNECT storage.googleapis.com:0 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Some(400),
        ),
        (
            "CONNECT with userinfo",
            b"CONNECT u:p@storage.googleapis.com:443 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            None,
        ),
        (
            "origin-form request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Some(400),
        ),
        ("oversized headers", big_header.into_bytes(), Some(431)),
        (
            "header without colon",
            b"GET http://storage.googleapis.com/ HTTP/1.1\r\nHost storage\r\n\r\n".to_vec(),
            Some(400),
        ),
    ];
    for (name, bytes, want) in rows {
        let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
        let _ = s.write_all(&bytes).await;
        let head = tokio::time::timeout(std::time::Duration::from_secs(5), read_head(&mut s))
            .await
            .unwrap_or_else(|_| panic!("{name}: no answer and no close"));
        match want {
            Some(code) => assert!(
                head.starts_with(&format!("HTTP/1.1 {code}")),
                "{name}: {head}"
            ),
            None => assert!(
                head.is_empty() || head.starts_with("HTTP/1.1 4"),
                "{name}: {head}"
            ),
        }
        let mut c = client(&w.proxy, HOST, false).await;
        let resp = c.send(for_version(get(HOST, "/echo"), false)).await;
        assert_eq!(resp.status(), 200, "after {name}");
    }
}

#[tokio::test]
async fn idle_connections_close_but_a_long_response_is_not_cut() {
    let w = world("idle", "[limits]\nidle_timeout = \"1s\"\n").await;
    for h2 in [false, true] {
        let mut c = client(&w.proxy, HOST, h2).await;
        // 3 s of streaming with a 1 s idle timeout: in flight, so not idle.
        let resp = c.send(for_version(get(HOST, "/slow/30"), h2)).await;
        assert_eq!(count_body(resp, Arc::default()).await, 30 * 1024, "h2={h2}");
        // Watched, not prodded: a request would end the idleness. The
        // assertion below says whether it closed in time.
        eventually(Duration::from_millis(2500), || {
            std::future::ready(c.is_closed())
        })
        .await;
        let again = c.try_send(for_version(get(HOST, "/echo"), h2)).await;
        assert!(
            again.is_err(),
            "h2={h2}: connection idle for 2.5 s should be closed"
        );
    }
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_streaming_response_finish() {
    let w = world("drain", "").await;
    let mut c = client(&w.proxy, HOST, true).await;
    let resp = c.send(for_version(get(HOST, "/slow/20"), true)).await;
    let read = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn(count_body(resp, read.clone()));
    // The shutdown is to land mid-stream: wait until body bytes flow.
    let flowing = eventually(Duration::from_secs(10), || async {
        read.load(Ordering::Relaxed) > 0
    })
    .await;
    assert!(flowing, "the stream did not start");
    let drained = w.proxy.stop().await;
    assert_eq!(reader.await.unwrap(), 20 * 1024);
    assert!(drained);
}

#[tokio::test]
async fn tunnels_never_reach_internal_addresses_unless_allowed() {
    let (cfg, dir) = config_with_ca(
        "egress",
        "[intercept]\nother = \"tunnel\"\n[upstream.resolve]\n\"sneaky.example.test\" = \"127.0.0.1:22\"\n\"meta.example.test\" = \"169.254.169.254:80\"\n",
    );
    let proxy = start_proxy(cfg, dir).await;
    for (target, needle) in [
        ("sneaky.example.test:22", "127.0.0.1"),
        ("meta.example.test:80", "169.254.169.254"),
        ("localhost:22", "127.0.0.1"),
        ("10.1.2.3:443", "IP address"),
        ("[::1]:443", "IP address"),
    ] {
        let (mut s, head) = raw_connect(proxy.addr, target).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{target}: {head}");
        let body = read_body(&mut s, &head).await;
        assert!(body.contains(needle), "{target}: {body}");
    }
    // Plain http to a host that is not intercepted is never proxied.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET http://169.254.169.254/computeMetadata/v1/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 403"));
}

#[tokio::test]
async fn intercepted_hosts_only_on_allowed_ports() {
    let w = world("ports", "").await;
    let (_, head) = raw_connect(w.proxy.addr, "storage.googleapis.com:8443").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

#[tokio::test]
async fn keep_alive_outlives_the_header_timeout_but_a_slow_head_does_not() {
    let w = world(
        "keepalive",
        "[limits]\nheader_read_timeout = \"1s\"\nidle_timeout = \"30s\"\n",
    )
    .await;
    // An idle keep-alive connection lives for idle_timeout, not
    // header_read_timeout.
    let mut c = client(&w.proxy, HOST, false).await;
    let resp = c.send(for_version(get(HOST, "/echo"), false)).await;
    assert_eq!(resp.status(), 200);
    body_string(resp).await;
    // The behaviour under test, not a wait for it: the client stays silent
    // for longer than header_read_timeout, and the connection must outlive
    // that silence.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = c.try_send(for_version(get(HOST, "/echo"), false)).await;
    assert_eq!(again.expect("connection still open").status(), 200);

    // After a complete request, a head that starts and stalls is cut
    // after header_read_timeout (slowloris), on the listener itself.
    let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
    s.write_all(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    read_body(&mut s, &head).await;
    // Also the behaviour under test: idle between requests for longer than
    // header_read_timeout, so the timer that cuts the stalled head below
    // must have started at its first byte, not at the previous response.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"GET http://example.com/ HTTP/1.1\r\nHost: exa")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("a stalled head is closed, not kept")
        .unwrap_or(0);
    assert_eq!(
        n,
        0,
        "expected a close, got {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(800));
}

/// A client's session store that files every session under one name and
/// offers it for any: a client trying a ticket from one intercepted host
/// on another.
#[derive(Debug)]
struct OneNameSessions {
    inner: Arc<dyn rustls::client::ClientSessionStore>,
    name: rustls_pki_types::ServerName<'static>,
    /// TLS 1.3 tickets handed to a handshake.
    offered: AtomicUsize,
}

impl rustls::client::ClientSessionStore for OneNameSessions {
    fn set_kx_hint(&self, _: rustls_pki_types::ServerName<'static>, g: rustls::NamedGroup) {
        self.inner.set_kx_hint(self.name.clone(), g)
    }
    fn kx_hint(&self, _: &rustls_pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(&self.name)
    }
    fn set_tls12_session(
        &self,
        _: rustls_pki_types::ServerName<'static>,
        v: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(self.name.clone(), v)
    }
    fn tls12_session(
        &self,
        _: &rustls_pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(&self.name)
    }
    fn remove_tls12_session(&self, _: &rustls_pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(&self.name)
    }
    fn insert_tls13_ticket(
        &self,
        _: rustls_pki_types::ServerName<'static>,
        v: rustls::client::Tls13ClientSessionValue,
    ) {
        self.inner.insert_tls13_ticket(self.name.clone(), v)
    }
    fn take_tls13_ticket(
        &self,
        _: &rustls_pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        let t = self.inner.take_tls13_ticket(&self.name);
        if t.is_some() {
            self.offered.fetch_add(1, Ordering::Relaxed);
        }
        t
    }
}

/// CONNECT to `host:443` and TLS with `cfg` (its session store included);
/// the handshake kind and a sender.
async fn tls_with(
    proxy: &TestProxy,
    cfg: Arc<rustls::ClientConfig>,
    host: &str,
) -> (rustls::HandshakeKind, Sender) {
    let (s, head) = raw_connect(proxy.addr, &format!("{host}:443")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT answered: {head}");
    let name = rustls_pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, s)
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    (kind, handshake(tls, false).await)
}

/// TLS 1.3 sessions resume through the proxy (stateless tickets: the proxy
/// keeps nothing per client), a resumed connection is served like any
/// other, and a ticket is only good for the name it was issued for: one
/// offered for another intercepted host gets a full handshake and that
/// host's certificate.
#[tokio::test]
async fn tls_sessions_resume_for_the_host_they_were_made_for_only() {
    let w = world("resume", "").await;
    let first = rustls_pki_types::ServerName::try_from(HOST)
        .unwrap()
        .to_owned();
    let store = Arc::new(OneNameSessions {
        inner: Arc::new(rustls::client::ClientSessionMemoryCache::new(32)),
        name: first,
        offered: AtomicUsize::new(0),
    });
    let mut cfg = (*client_tls(&w.proxy.ca_pem, &[b"http/1.1"])).clone();
    cfg.resumption = rustls::client::Resumption::store(store.clone());
    let cfg = Arc::new(cfg);

    let mut served = 0;
    for (host, expect) in [
        (HOST, rustls::HandshakeKind::Full),
        (HOST, rustls::HandshakeKind::Resumed),
        ("other.googleapis.com", rustls::HandshakeKind::Full),
    ] {
        let (kind, mut c) = tls_with(&w.proxy, cfg.clone(), host).await;
        assert_eq!(kind, expect, "{host}");
        // The response also carries the session tickets in to the client.
        let resp = c.send(for_version(get(host, "/echo"), false)).await;
        assert_eq!(resp.status(), 200, "{host}");
        let v = json(&body_string(resp).await);
        assert_eq!(v["headers"]["host"], host);
        served += 1;
    }
    assert_eq!(served, 3);
    // The second and the third handshake each offered a ticket.
    assert_eq!(store.offered.load(Ordering::Relaxed), 2);
}
