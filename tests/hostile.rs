//! Hostile clients, one table row each: every row throws something at a
//! running proxy, checks what came back (a status, a close, a GOAWAY)
//! within a bounded time, then checks that an ordinary request still gets
//! 200. A hang fails its row instead of hanging CI.
//!
//! `cargo test --test hostile -- --nocapture` prints what each row observed.

#[path = "support/client.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::time::{Duration, Instant};

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "storage.googleapis.com";
const AUTHORITY: &str = "storage.googleapis.com:443";

/// How long a hostile client waits for any answer before calling it a hang.
const PATIENCE: Duration = Duration::from_secs(5);

/// `[limits]` for the rows: a header read timeout short enough that the rows
/// about silence finish quickly, and an idle timeout far beyond `PATIENCE`,
/// so that a close within `PATIENCE` can only come from the former.
const LIMITS: &str =
    "[audit]\nenabled = false\n[limits]\nheader_read_timeout = \"1s\"\nidle_timeout = \"60s\"\n";

/// What a hostile client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Observed {
    /// An HTTP status line with this code.
    Status(u16),
    /// The connection was closed (EOF or reset) without an answer.
    Closed,
    /// The TLS handshake inside the tunnel failed: no certificate was served.
    TlsRefused,
    /// An HTTP/2 GOAWAY frame with this error code.
    GoAway(u32),
    /// The connection stayed open and kept answering: the attack was not
    /// stopped.
    Open,
    /// Nothing conclusive within `PATIENCE`.
    Hang,
}

use Observed::*;

use client::*;
use proxy::*;
use support::*;
use upstream::*;

/// HTTP/2 error codes (RFC 9113 §7).
const PROTOCOL_ERROR: u32 = 0x1;
const FRAME_SIZE_ERROR: u32 = 0x6;
const ENHANCE_YOUR_CALM: u32 = 0xb;

enum Attack {
    /// These bytes on a fresh connection to the proxy port, then wait for
    /// the answer.
    Raw(Vec<u8>),
    /// CONNECT to `AUTHORITY`, TLS (ALPN http/1.1) with this SNI, then
    /// `GET /echo` with this `Host`.
    Tls {
        sni: &'static str,
        host: &'static str,
    },
    /// CONNECT, then the first half of a real ClientHello record, then
    /// silence.
    HalfClientHello,
    /// CONNECT, TLS with ALPN h2, then these bytes.
    H2Bytes(Vec<u8>),
    /// CONNECT, TLS with ALPN h2, then this many streams each opened with
    /// HEADERS and at once cancelled with RST_STREAM (CVE-2023-44487).
    RapidReset(u32),
    /// This many connections that send nothing at all.
    Idle(usize),
}

struct Row {
    name: &'static str,
    attack: Attack,
    /// Every acceptable observation.
    expect: &'static [Observed],
}

fn connect_with(authority: &str, extra_headers: &str) -> Vec<u8> {
    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{extra_headers}\r\n").into_bytes()
}

fn open_rows() -> Vec<Row> {
    let mut rng = fastrand::Rng::with_seed(5);
    let garbage: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(4096).collect();
    let long_host = format!("{}.googleapis.com:443", "a".repeat(10 * 1024));
    let mut megabyte = String::new();
    for i in 0..1024 {
        megabyte.push_str(&format!("x-fill-{i}: {}\r\n", "v".repeat(1000)));
    }
    let mut h2_garbage = PREFACE.to_vec();
    h2_garbage.extend(std::iter::repeat_with(|| rng.u8(..)).take(1024));
    vec![
        Row {
            name: "garbage bytes",
            attack: Attack::Raw(garbage),
            expect: &[Status(400), Closed],
        },
        Row {
            name: "HTTP/1.0 origin-form GET",
            attack: Attack::Raw(b"GET / HTTP/1.0\r\n\r\n".to_vec()),
            expect: &[Status(400)],
        },
        Row {
            name: "HTTP/1.0 CONNECT",
            attack: Attack::Raw(format!("CONNECT {AUTHORITY} HTTP/1.0\r\n\r\n").into_bytes()),
            expect: &[Status(200)],
        },
        Row {
            name: "CONNECT without a port",
            attack: Attack::Raw(connect_with(HOST, "")),
            expect: &[Status(400)],
        },
        Row {
            name: "CONNECT to port 0",
            attack: Attack::Raw(connect_with("storage.googleapis.com:0", "")),
            expect: &[Status(400)],
        },
        Row {
            name: "CONNECT to port 99999",
            attack: Attack::Raw(connect_with("storage.googleapis.com:99999", "")),
            expect: &[Status(400)],
        },
        Row {
            name: "CONNECT with userinfo",
            attack: Attack::Raw(connect_with("user:pw@storage.googleapis.com:443", "")),
            expect: &[Status(400)],
        },
        Row {
            name: "CONNECT with a 10 KB host",
            attack: Attack::Raw(connect_with(&long_host, "")),
            expect: &[Status(400)],
        },
        // Host names must be names: no brackets around a name, no
        // wildcards, no junk bytes.
        Row {
            name: "CONNECT to a bracketed host name with junk",
            attack: Attack::Raw(connect_with("[storage.googleapis.com]junk:443", "")),
            expect: &[Status(400)],
        },
        Row {
            name: "CONNECT to a wildcard host",
            attack: Attack::Raw(connect_with("*.googleapis.com:443", "")),
            expect: &[Status(400)],
        },
        Row {
            name: "CONNECT to a host that is not a DNS name",
            attack: Attack::Raw(connect_with("sto$rage..googleapis.com:443", "")),
            expect: &[Status(400)],
        },
        Row {
            name: "1 MB of headers",
            attack: Attack::Raw(connect_with(AUTHORITY, &megabyte)),
            expect: &[Status(431), Closed],
        },
        Row {
            name: "a header line without a colon",
            attack: Attack::Raw(connect_with(AUTHORITY, "this line has no colon\r\n")),
            expect: &[Status(400)],
        },
        Row {
            name: "SNI (intercepted) != CONNECT authority",
            attack: Attack::Tls {
                sni: "other.googleapis.com",
                host: HOST,
            },
            expect: &[Status(421)],
        },
        Row {
            name: "SNI (not intercepted) != CONNECT authority",
            attack: Attack::Tls {
                sni: "example.com",
                host: HOST,
            },
            expect: &[TlsRefused],
        },
        Row {
            name: "TLS record cut in half, then silence",
            attack: Attack::HalfClientHello,
            expect: &[Closed],
        },
        Row {
            name: "Host != CONNECT authority inside the tunnel",
            attack: Attack::Tls {
                sni: HOST,
                host: "other.googleapis.com",
            },
            expect: &[Status(421)],
        },
        Row {
            name: "HTTP/2 preface then garbage",
            attack: Attack::H2Bytes(h2_garbage),
            expect: &[GoAway(PROTOCOL_ERROR), GoAway(FRAME_SIZE_ERROR), Closed],
        },
        Row {
            name: "1,000 HTTP/2 streams opened and reset",
            attack: Attack::RapidReset(1000),
            expect: &[GoAway(ENHANCE_YOUR_CALM), GoAway(PROTOCOL_ERROR), Closed],
        },
        Row {
            name: "500 idle connections",
            attack: Attack::Idle(500),
            expect: &[Closed, Status(408)],
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_a_status_or_a_close_and_the_proxy_keeps_serving() {
    let w = world("hostile", LIMITS).await;
    let mut failures = Vec::new();
    for row in open_rows() {
        let start = Instant::now();
        let seen =
            match tokio::time::timeout(Duration::from_secs(15), attack(&w, &row.attack)).await {
                Ok(seen) => seen,
                Err(_) => Hang,
            };
        eprintln!("{:<45} {seen:?} in {:.1?}", row.name, start.elapsed());
        if !row.expect.contains(&seen) {
            failures.push(format!(
                "{}: expected one of {:?}, saw {seen:?}",
                row.name, row.expect
            ));
        }
        assert_still_serves(&w.proxy, "", row.name).await;
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

async fn attack(w: &World, attack: &Attack) -> Observed {
    let proxy = &w.proxy;
    match attack {
        Attack::Raw(bytes) => {
            let mut s = TcpStream::connect(proxy.addr).await.unwrap();
            // The proxy may answer and close before it has read everything
            // (431): a failed write is part of the experiment.
            let _ = s.write_all(bytes).await;
            answer(&mut s).await
        }
        Attack::Tls { sni, host } => {
            let Ok(tls) = tls_through(proxy, AUTHORITY, sni, &[b"http/1.1"]).await else {
                return TlsRefused;
            };
            let mut c = handshake(tls, false).await;
            match c.try_send(for_version(get(host, "/echo"), false)).await {
                Ok(resp) => Status(resp.status().as_u16()),
                Err(_) => Closed,
            }
        }
        Attack::HalfClientHello => {
            let (mut s, head) = raw_connect(proxy.addr, AUTHORITY).await;
            assert_eq!(status_of(&head), Some(200), "{head}");
            let hello = client_hello();
            s.write_all(&hello[..hello.len() / 2]).await.unwrap();
            closed_within(&mut s, PATIENCE).await
        }
        Attack::H2Bytes(bytes) => {
            let tls = tls_through(proxy, AUTHORITY, HOST, &[b"h2"]).await.unwrap();
            let (mut r, mut wr) = tokio::io::split(tls);
            let _ = wr.write_all(bytes).await;
            let (seen, _) = h2_outcome(&mut r).await;
            seen
        }
        Attack::RapidReset(n) => {
            let before = w.seen.requests.load(std::sync::atomic::Ordering::Relaxed);
            let tls = tls_through(proxy, AUTHORITY, HOST, &[b"h2"]).await.unwrap();
            let (mut r, mut wr) = tokio::io::split(tls);
            let mut out = PREFACE.to_vec();
            out.extend(h2_frame(SETTINGS, 0, 0, &[]));
            for i in 0..*n {
                let id = 2 * i + 1;
                out.extend(h2_frame(
                    HEADERS,
                    END_STREAM | END_HEADERS,
                    id,
                    &get_echo_block(),
                ));
                out.extend(h2_frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
            }
            // Written from its own task: the proxy answers while we write.
            let writer = tokio::spawn(async move {
                let _ = wr.write_all(&out).await;
                let _ = wr.flush().await;
                wr
            });
            let (seen, answered) = h2_outcome(&mut r).await;
            let _ = writer.await;
            let reached = w.seen.requests.load(std::sync::atomic::Ordering::Relaxed) - before;
            eprintln!(
                "    rapid reset: {answered} HEADERS answered, {reached} requests reached the upstream"
            );
            seen
        }
        Attack::Idle(n) => {
            // Connected in paced batches smaller than the listen backlog
            // (128, tokio's default): a burst larger than that leaves
            // connections the kernel completed with a SYN cookie but never
            // queued for accept. Those are invisible to the proxy, so no
            // timeout of its own can close them, and this row is about the
            // proxy's timeouts.
            let mut conns = tokio::task::JoinSet::new();
            for batch in 0..n.div_ceil(50) {
                let mut connected = tokio::task::JoinSet::new();
                for _ in 0..(*n - batch * 50).min(50) {
                    let addr = proxy.addr;
                    connected.spawn(async move { TcpStream::connect(addr).await.unwrap() });
                }
                while let Some(s) = connected.join_next().await {
                    let mut s = s.unwrap();
                    conns.spawn(async move { answer(&mut s).await });
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut worst = Closed;
            while let Some(seen) = conns.join_next().await {
                match seen.unwrap() {
                    Closed => {}
                    Hang => worst = Hang,
                    other if worst == Closed => worst = other,
                    _ => {}
                }
            }
            worst
        }
    }
}

/// The status line the proxy answers with, a close, or a hang.
async fn answer(s: &mut TcpStream) -> Observed {
    match head_within(s, PATIENCE).await {
        None => Hang,
        Some(head) if head.is_empty() => Closed,
        Some(head) => status_of(&head).map(Status).unwrap_or(Closed),
    }
}

/// Waits for the peer to close, ignoring anything it sends first.
async fn closed_within<R: AsyncRead + Unpin>(r: &mut R, limit: Duration) -> Observed {
    let drain = async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    match tokio::time::timeout(limit, drain).await {
        Ok(()) => Closed,
        Err(_) => Hang,
    }
}

/// The first flight of a real TLS client for `HOST`.
fn client_hello() -> Vec<u8> {
    let dir = tempdir("hostile-hello");
    let certs = upstream_certs(&dir, &[HOST]);
    let name = rustls_pki_types::ServerName::try_from(HOST).unwrap();
    let mut conn =
        rustls::ClientConnection::new(client_tls(&certs.ca_pem, &[b"http/1.1"]), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert!(hello.len() > 100, "a ClientHello is a few hundred bytes");
    hello
}

// HTTP/2 framing, just enough to misbehave precisely (RFC 9113 §4, §6).

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend((stream & 0x7fff_ffff).to_be_bytes());
    f.extend(payload);
    f
}

/// HPACK for `GET https://storage.googleapis.com/echo`, without Huffman or
/// the dynamic table, so every block is the same bytes.
fn get_echo_block() -> Vec<u8> {
    // :method GET and :scheme https are static-table entries 2 and 7.
    let mut b = vec![0x82, 0x87];
    // Literals without indexing, names from the static table: 4 is :path,
    // 1 is :authority.
    for (index, value) in [(4u8, "/echo"), (1, HOST)] {
        b.push(index);
        b.push(u8::try_from(value.len()).unwrap());
        b.extend(value.as_bytes());
    }
    b
}

/// Reads server frames until a GOAWAY, a close, or a quiet second:
/// returns what ended it and how many HEADERS (responses) came before.
async fn h2_outcome<R: AsyncRead + Unpin>(r: &mut R) -> (Observed, usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut buf = Vec::new();
    let mut headers = 0;
    loop {
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let frame: Vec<u8> = buf.drain(..9 + len).collect();
            match frame[3] {
                GOAWAY if len >= 8 => {
                    let code = u32::from_be_bytes(frame[13..17].try_into().unwrap());
                    return (GoAway(code), headers);
                }
                HEADERS => headers += 1,
                _ => {}
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        let quiet = Duration::from_secs(1).min(deadline - tokio::time::Instant::now());
        match tokio::time::timeout(quiet, r.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (Closed, headers),
            Ok(Ok(n)) => buf.extend(&chunk[..n]),
            // Quiet for a second with the connection still up.
            Err(_) if headers > 0 => return (Open, headers),
            Err(_) if tokio::time::Instant::now() >= deadline => return (Hang, headers),
            Err(_) => {}
        }
    }
}

// Who may use the proxy: refusals of bad credentials are 407, never a crash,
// and the right credentials still work afterwards.

const USER: &str = "batch";
const PASSWORD: &str = "correct horse";

fn basic(pair: &str) -> String {
    format!(
        "Proxy-Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_proxy_credentials_get_407_and_good_ones_still_work() {
    let dir = tempdir("hostile-auth-pw");
    let pw = owner_only_file(&dir, "batch.pw", &format!("{PASSWORD}\n"));
    let w = world(
        "hostile-auth",
        &format!(
            "{LIMITS}[[client]]\nname = \"{USER}\"\ncidrs = [\"127.0.0.0/8\"]\nproxy_auth = {{ user = \"{USER}\", password_file = \"{}\" }}\n",
            pw.display()
        ),
    )
    .await;
    let good = basic(&format!("{USER}:{PASSWORD}"));
    let rows: [(&str, String, &[Observed]); 5] = [
        (
            "wrong password",
            basic(&format!("{USER}:wrong")),
            &[Status(407)],
        ),
        (
            "non-Base64 credentials",
            "Proxy-Authorization: Basic %%%not-base64\r\n".into(),
            &[Status(407)],
        ),
        ("Base64 without a colon", basic(USER), &[Status(407)]),
        (
            "another scheme",
            "Proxy-Authorization: Bearer abc\r\n".into(),
            &[Status(407)],
        ),
        (
            "8 KB of Base64",
            basic(&format!("{USER}:{}", "p".repeat(6 * 1024))),
            &[Status(407)],
        ),
    ];
    let mut failures = Vec::new();
    for (name, header, expect) in rows {
        let mut s = TcpStream::connect(w.proxy.addr).await.unwrap();
        s.write_all(&connect_with(AUTHORITY, &header))
            .await
            .unwrap();
        let seen = answer(&mut s).await;
        eprintln!("{name:<45} {seen:?}");
        if !expect.contains(&seen) {
            failures.push(format!("{name}: expected one of {expect:?}, saw {seen:?}"));
        }
        assert_still_serves(&w.proxy, &good, name).await;
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
