//! Bounded, seeded fuzzing through the public interface: config text into
//! `Config::parse` and the compile pass (`policy::check`), and CONNECT
//! request targets into a live proxy.
//!
//! Every run is reproducible (fixed seeds). To run longer, set the number of
//! iterations (the default is 20,000 configs and 2,000 CONNECTs; the
//! CONNECT count is a tenth of it):
//!
//! ```sh
//! FUZZ_ITERS=1000000 cargo test --release --test fuzz -- --nocapture
//! FUZZ_SEED=7 FUZZ_ITERS=200000 cargo test --release --test fuzz -- --nocapture
//! ```

#[path = "support/client.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use impersonate_proxy::config::ConfigError;
use impersonate_proxy::Config;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use client::*;
use proxy::*;

fn iterations() -> usize {
    std::env::var("FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed)
}

// ---- Config parsing ----

/// Valid configs to start from: each one parses.
const CONFIGS: &[&str] = &[
    "",
    "[proxy]\nlisten = \"127.0.0.1:8080\"\n",
    r#"[proxy]
listen = "127.0.0.1:8080"
drain_timeout = "30s"
workers = 2

[ca]
cert = "certs/ca.pem"
key = "certs/ca-key.pem"

[source]
type = "service_account"
file = "key.json"

[upstream]
extra_ca = ["extra.pem"]
connect_timeout = "10s"
response_timeout = "300s"
protocol = "prefer_h2"
proxy = "http://corp-proxy.internal:3128"
no_proxy = ["metadata.google.internal", ".corp.internal", "169.254.169.254"]
[upstream.resolve]
"storage.googleapis.com" = "127.0.0.1:8443"

[intercept]
hosts = ["*.googleapis.com", "oauth2.googleapis.com"]
other = "tunnel"
ports = [443, 8443]
allow_private = ["10.0.0.0/8", "::1"]
allow_ip_literals = false

[audit]
enabled = true
file = "audit.jsonl"

[limits]
header_read_timeout = "10s"
idle_timeout = "90s"
max_header_bytes = 65536
h2_max_concurrent_streams = 256
max_connections = 10000

[[client]]
name = "batch"
cidrs = ["127.0.0.0/8"]
proxy_auth = { user = "batch", password_file = "batch.pw" }

[[route]]
name = "gcs-read"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b"
methods = ["GET", "HEAD"]
impersonate = "reader@p.iam.gserviceaccount.com"
delegates = ["d@p.iam.gserviceaccount.com"]
scopes = ["https://www.googleapis.com/auth/cloud-platform"]
lifetime = "3600s"
quota_project = "my-billing-project"
authorization = "keep"
warm = false

[[route]]
name = "run-invoke"
hosts = ["svc.run.app"]
id_token = { audience = "https://svc.run.app", impersonate = "invoker@p.iam.gserviceaccount.com", delegates = [] }

[[route]]
name = "rest"
hosts = ["*.googleapis.com"]
action = "deny"
"#,
    "[source]\ntype = \"access_token\"\ntoken_file = \"t.txt\"\n[[route]]\nname = \"all\"\nhosts = [\"*.googleapis.com\"]\naction = \"passthrough\"\n",
    "[proxy]\nlisten = \"0.0.0.0:3128\"\nallow_any_client = true\n[intercept]\nhosts = [\"storage.googleapis.com\"]\n",
];

/// TOML fragments inserted at line starts.
const FRAGMENTS: &[&str] = &[
    "[proxy]",
    "[ca]",
    "[source]",
    "[upstream]",
    "[upstream.resolve]",
    "[intercept]",
    "[limits]",
    "[audit]",
    "[[route]]",
    "[[client]]",
    "[[route]]\nname = \"x\"\nhosts = [\"*.googleapis.com\"]",
    "[[client]]\nname = \"x\"",
    "[proxy.listen]",
    "[[proxy]]",
    "route = []",
    "client = [{}]",
    "listen = \"[::]:0\"",
    "hosts = []",
    "hosts = [\"*\"]",
    "hosts = [\"*.\"]",
    "hosts = [\"\"]",
    "ports = [0]",
    "ports = [65536]",
    "cidrs = [\"10.0.0.0/33\"]",
    "proxy_auth = { user = \"\", password_file = \"\" }",
    "id_token = { audience = \"\", impersonate = \"\" }",
    "max_connections = 9223372036854775807",
    "max_header_bytes = -1",
    "h2_max_concurrent_streams = 4294967296",
    "idle_timeout = \"99999999999999999999999s\"",
    "header_read_timeout = \"500000000000years\"",
    "drain_timeout = \"1ns\"",
    "lifetime = \"-5s\"",
    "a.b.c.d = 1",
    "\"\u{202e}\" = 1",
    "'''",
    "\"\"\"",
    "= 1",
    "[",
    "]]",
    "x = { y = { z = [[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]] } }",
    "# comment \u{0}",
];

/// Values put after `key = `.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "65535",
    "65536",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "99999999999999999999999999999",
    "0x7fffffffffffffff",
    "1e400",
    "-0.0",
    "nan",
    "inf",
    "true",
    "1979-05-27T07:32:00Z",
    "\"\"",
    "\" \"",
    "\"\\u0000\"",
    "\"\\uD800\"",
    "\"é\u{202e}ẞ\u{1F600}\"",
    "\"0s\"",
    "\"1ns\"",
    "\"18446744073709551615s\"",
    "\"500000000000years\"",
    "\"*\"",
    "\"*.googleapis.com\"",
    "\"127.0.0.1:0\"",
    "\"[::1]:65535\"",
    "\"256.0.0.1:80\"",
    "\"10.0.0.0/8\"",
    "\"deny\"",
    "\"tunnel\"",
    "\"passthrough\"",
    "\"keep\"",
    "\"adc\"",
    "\"metadata\"",
    "[]",
    "[[]]",
    "[1, \"a\"]",
    "[\"\"]",
    "{}",
    "{ a = 1 }",
];

/// Keys that exist somewhere in the schema, plus a few that do not.
const KEYS: &[&str] = &[
    "listen",
    "drain_timeout",
    "allow_any_client",
    "workers",
    "protocol",
    "cert",
    "key",
    "type",
    "file",
    "token_file",
    "extra_ca",
    "connect_timeout",
    "response_timeout",
    "no_proxy",
    "hosts",
    "other",
    "ports",
    "allow_private",
    "allow_ip_literals",
    "enabled",
    "header_read_timeout",
    "idle_timeout",
    "max_header_bytes",
    "h2_max_concurrent_streams",
    "max_connections",
    "name",
    "path_prefix",
    "methods",
    "clients",
    "impersonate",
    "delegates",
    "scopes",
    "lifetime",
    "quota_project",
    "authorization",
    "warm",
    "id_token",
    "action",
    "cidrs",
    "proxy_auth",
    "\"storage.googleapis.com\"",
    "\"\"",
    "unknown",
    "ünïcödé",
];

/// Odd characters to insert anywhere.
const ODD: &[&str] = &[
    "\0",
    "\r",
    "\n",
    "\t",
    "\u{7f}",
    "\u{feff}",
    "\u{202e}",
    "\u{2028}",
    "\u{1F600}",
    "é",
    "\"",
    "'",
    "[",
    "]",
    "{",
    "}",
    "=",
    ",",
    ".",
    "#",
    "\\",
    "*",
];

fn pick<'a>(rng: &mut fastrand::Rng, from: &[&'a str]) -> &'a str {
    from[rng.usize(..from.len())]
}

/// Byte offsets where lines start.
fn line_starts(text: &[u8]) -> Vec<usize> {
    std::iter::once(0)
        .chain(
            text.iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect()
}

/// One random edit of `text` (bytes; turned into a string at the end).
fn mutate(rng: &mut fastrand::Rng, text: &mut Vec<u8>) {
    let at = rng.usize(..=text.len());
    let lines = line_starts(text);
    let line = lines[rng.usize(..lines.len())];
    let line_end = text[line..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(text.len(), |p| line + p);
    match rng.u8(..10) {
        0 if !text.is_empty() => {
            let i = rng.usize(..text.len());
            text[i] ^= 1 << rng.u8(..8);
        }
        1 => text.truncate(at),
        2 => splice(text, line, format!("{}\n", pick(rng, FRAGMENTS)).as_bytes()),
        3 => {
            // Replace the value of a `key = value` line.
            if let Some(eq) = text[line..line_end].iter().position(|b| *b == b'=') {
                let value = format!(" {}", pick(rng, VALUES));
                text.splice(line + eq + 1..line_end, value.bytes());
            }
        }
        4 => {
            let kv = format!("{} = {}\n", pick(rng, KEYS), pick(rng, VALUES));
            splice(text, line, kv.as_bytes());
        }
        5 => splice(text, at, pick(rng, ODD).as_bytes()),
        6 => {
            let copy = text[line..line_end].to_vec();
            splice(text, line, &[copy, b"\n".to_vec()].concat());
        }
        7 => {
            text.drain(line..(line_end + 1).min(text.len()));
        }
        8 => {
            // A huge value: long strings and deep nesting stress the parser.
            let n = rng.usize(1..5000);
            let blob = match rng.u8(..3) {
                0 => format!("k = \"{}\"\n", "x".repeat(n)),
                1 => format!("k = {}{}\n", "[".repeat(n.min(200)), "]".repeat(n.min(200))),
                _ => format!("k = {}\n", "9".repeat(n.min(400))),
            };
            splice(text, line, blob.as_bytes());
        }
        _ => {
            // Cross over with another valid config.
            let other = pick(rng, CONFIGS).as_bytes();
            let cut = rng.usize(..=other.len());
            text.truncate(at);
            text.extend(&other[cut..]);
        }
    }
}

fn splice(text: &mut Vec<u8>, at: usize, insert: &[u8]) {
    text.splice(at..at, insert.iter().copied());
}

thread_local! {
    /// Set while this thread runs [`quietly`].
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, catching a panic without printing it: the fuzz loop reports
/// what panicked in its assertion instead, with the input. The panic hook
/// is process-wide and the other tests of this binary run in parallel, so
/// it is set once, stays, and is quiet only on a thread inside `quietly`;
/// every other panic goes to the hook that was there before.
fn quietly<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result
}

#[test]
fn config_parse_never_panics_and_explains_every_refusal() {
    for text in CONFIGS {
        Config::parse(Path::new("f.toml"), text).unwrap_or_else(|e| panic!("seed config: {e}"));
    }
    let iters = iterations();
    let mut rng = fastrand::Rng::with_seed(seed());
    let (mut ok, mut refused) = (0usize, 0usize);
    let start = Instant::now();
    let mut problems = Vec::new();
    for i in 0..iters {
        let mut bytes = pick(&mut rng, CONFIGS).as_bytes().to_vec();
        for _ in 0..rng.usize(1..5) {
            mutate(&mut rng, &mut bytes);
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let parsed = quietly(|| Config::parse(Path::new("f.toml"), &text));
        let problem = match parsed {
            Err(_) => Some("Config::parse panicked".to_owned()),
            Ok(Ok(cfg)) => {
                // What parses goes through the one compile pass, as at
                // start-up: it may refuse, but must say why, and must not
                // panic.
                match quietly(|| (cfg.validate(), impersonate_proxy::policy::check(&cfg))) {
                    Ok((Ok(()), Ok(_))) => {
                        ok += 1;
                        None
                    }
                    Ok((Err(e), _)) => Some(format!("parsed, then validate() refused it: {e}")),
                    Ok((Ok(()), Err(e))) => {
                        refused += 1;
                        unexplained(&e)
                    }
                    Err(_) => Some("policy::check panicked".to_owned()),
                }
            }
            Ok(Err(e)) => {
                refused += 1;
                unexplained(&e)
            }
        };
        if let Some(p) = problem {
            problems.push(format!("iteration {i}: {p}\n--- config ---\n{text}\n---"));
            if problems.len() >= 5 {
                break;
            }
        }
    }
    eprintln!(
        "config fuzz: {iters} configs ({ok} accepted, {refused} refused) in {:.1?}",
        start.elapsed()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_route_limited_to_an_unknown_client_is_refused_naming_the_key() {
    let text = "[[client]]\nname = \"batch\"\ncidrs = [\"127.0.0.0/8\"]\n[[route]]\nname = \"r\"\nhosts = [\"*.googleapis.com\"]\naction = \"passthrough\"\nclients = [\"batch\"]\n";
    let compile =
        |text: &str| impersonate_proxy::policy::check(&Config::parse(Path::new("f.toml"), text)?);
    compile(text).expect("a defined client may be named");
    let err = compile(&text.replace("clients = [\"batch\"]", "clients = [\"nightly\"]"))
        .expect_err("an undefined client is refused")
        .to_string();
    assert!(
        err.contains("route[0].clients") && err.contains("nightly"),
        "{err}"
    );
}

/// `Some(why)` when a refusal does not say what is wrong.
fn unexplained(e: &ConfigError) -> Option<String> {
    let blank = |s: &str| s.trim().is_empty();
    let bad = match e {
        ConfigError::Parse { message, .. } => blank(message),
        ConfigError::Invalid { key, message } => blank(key) || blank(message),
        other => blank(&other.to_string()),
    };
    bad.then(|| format!("refused without an explanation: {e:?}"))
}

// ---- CONNECT request targets through a live proxy ----

const HOSTS: &[&str] = &[
    "storage.googleapis.com",
    "other.googleapis.com",
    "STORAGE.GoogleAPIs.com.",
    "googleapis.com",
    ".googleapis.com",
    "a..googleapis.com",
    "*.googleapis.com",
    "%73torage.googleapis.com",
    "storage.googleapis.com.evil.example",
    "xn--bcher-kva.googleapis.com",
    "under_score.googleapis.com",
    "example.com",
    "localhost",
    "127.0.0.1",
    "169.254.169.254",
    "0x7f.1",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[fe80::1%25eth0]",
    "[storage.googleapis.com]",
    "",
];

const PORTS: &[&str] = &[
    "443",
    "8443",
    "80",
    "0",
    "65535",
    "65536",
    "99999",
    "-1",
    "+443",
    "0443",
    "443443443443443443443443",
    "",
    "0x1bb",
    "443abc",
    "4 43",
];

/// Characters that mean something in an authority, a request line or
/// a header block.
const SPECIAL: &[u8] = b"[]:@%/?#\\ \t\0\r\n\x7f\xff.*-_~!$&'()+,;=\"<>{}|^`";

fn authority(rng: &mut fastrand::Rng) -> Vec<u8> {
    if rng.u8(..10) == 0 {
        // Pure noise.
        let n = rng.usize(..64);
        return std::iter::repeat_with(|| rng.u8(..)).take(n).collect();
    }
    let mut a = Vec::new();
    match rng.u8(..8) {
        0 => a.extend(b"user:pw@"),
        1 => a.extend(b"@"),
        _ => {}
    }
    a.extend(pick(rng, HOSTS).as_bytes());
    if rng.u8(..8) != 0 {
        a.push(b':');
        a.extend(pick(rng, PORTS).as_bytes());
    }
    for _ in 0..rng.usize(..4) {
        let at = rng.usize(..=a.len());
        match rng.u8(..5) {
            0 | 1 => a.insert(at, SPECIAL[rng.usize(..SPECIAL.len())]),
            2 => a.insert(at, rng.u8(..)),
            3 if at < a.len() => {
                a.remove(at);
            }
            _ => {
                // Very long: a label, then the rest.
                let n = *[64, 254, 1024, 9000].get(rng.usize(..4)).unwrap_or(&64);
                splice(&mut a, at, "a".repeat(n).as_bytes());
            }
        }
    }
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_targets_get_a_2xx_or_4xx_or_a_close_and_never_hang() {
    let w = world(
        "fuzz-connect",
        "[audit]\nenabled = false\n[limits]\nheader_read_timeout = \"1s\"\nidle_timeout = \"5s\"\n",
    )
    .await;
    let iters = (iterations() / 10).max(1);
    const WORKERS: usize = 8;
    let start = Instant::now();
    let proxy = Arc::new(w.proxy);
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let proxy = proxy.clone();
        let base = seed();
        workers.spawn(async move {
            let mut seen = std::collections::BTreeMap::<String, usize>::new();
            let mut problems = Vec::new();
            for i in (worker..iters).step_by(WORKERS) {
                // One seed per attempt, so a failure can be replayed alone.
                let mut rng = fastrand::Rng::with_seed(base ^ ((i as u64) << 20));
                let target = authority(&mut rng);
                let outcome = connect_once(&proxy, &target, rng.bool()).await;
                match outcome {
                    Ok(kind) => *seen.entry(kind).or_default() += 1,
                    Err(p) => problems.push(format!(
                        "attempt {i}: CONNECT {:?}: {p}",
                        String::from_utf8_lossy(&target)
                    )),
                }
            }
            (seen, problems)
        });
    }
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut problems = Vec::new();
    while let Some(r) = workers.join_next().await {
        let (s, p) = r.unwrap();
        for (k, n) in s {
            *seen.entry(k).or_default() += n;
        }
        problems.extend(p);
    }
    eprintln!(
        "CONNECT fuzz: {iters} request targets in {:.1?}: {seen:?}",
        start.elapsed()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_still_serves(&proxy, "", "the CONNECT fuzz").await;
}

/// Sends one CONNECT; `Ok` names the answer ("400", "close"), `Err` says
/// what was wrong with it.
async fn connect_once(proxy: &TestProxy, target: &[u8], with_host: bool) -> Result<String, String> {
    let mut s = TcpStream::connect(proxy.addr)
        .await
        .map_err(|e| format!("cannot connect to the proxy: {e}"))?;
    let mut req = b"CONNECT ".to_vec();
    req.extend(target);
    req.extend(b" HTTP/1.1\r\n");
    if with_host {
        req.extend(b"Host: ");
        req.extend(target);
        req.extend(b"\r\n");
    }
    req.extend(b"\r\n");
    // A write error means the proxy already answered and closed.
    let _ = s.write_all(&req).await;
    let Some(head) = head_within(&mut s, Duration::from_secs(3)).await else {
        return Err("no answer and no close within 3s".into());
    };
    if head.is_empty() {
        return Ok("close".into());
    }
    let Some(code) = status_of(&head) else {
        return Err(format!("not an HTTP status line: {head:?}"));
    };
    if !(200..300).contains(&code) && !(400..500).contains(&code) {
        return Err(format!("answered {code}: {head:?}"));
    }
    if code == 200 {
        // The tunnel is open: a ClientHello without SNI (an IP server name)
        // makes the proxy mint a leaf for the CONNECT host itself, whatever
        // odd name got through. It must answer or close, not hang.
        let name = rustls_pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let tls = tokio_rustls::TlsConnector::from(client_tls(&proxy.ca_pem, &[b"http/1.1"]));
        if tokio::time::timeout(Duration::from_secs(3), tls.connect(name, s))
            .await
            .is_err()
        {
            return Err("TLS without SNI after 200: no answer and no close within 3s".into());
        }
    }
    Ok(code.to_string())
}

// ---- What `validate()` accepts, the proxy can run ----
//
// The parse fuzz above finds extreme values that validate; these rows take
// them to a running proxy. Each row is `[limits]` TOML and the outcomes
// that are acceptable.

/// What became of a config with an extreme value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// `Config::parse` refused it with a message naming the key.
    Refused,
    /// The proxy started and served an ordinary request.
    Serves,
    /// The proxy started, and closed the CONNECT without an answer.
    ClosedUnanswered,
    /// Starting the proxy panicked (the binary exits 101, not 2).
    StartPanicked,
    /// Anything else, described.
    Other,
}

const EXTREMES: &[(&str, &[Fate])] = &[
    (
        "max_connections = 2305843009213693951",
        &[Fate::Refused, Fate::Serves],
    ),
    (
        "max_header_bytes = 9223372036854775807",
        &[Fate::Refused, Fate::Serves],
    ),
    (
        "h2_max_concurrent_streams = 4294967295",
        &[Fate::Refused, Fate::Serves],
    ),
    (
        "idle_timeout = \"500000000000years\"",
        &[Fate::Refused, Fate::Serves],
    ),
    (
        "header_read_timeout = \"200000000000years\"",
        &[Fate::Refused, Fate::Serves],
    ),
    (
        "header_read_timeout = \"500000000000years\"",
        &[Fate::Refused],
    ),
    ("max_connections = 9223372036854775807", &[Fate::Refused]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_values_that_validate_also_run() {
    check_extremes(EXTREMES).await;
}

async fn check_extremes(rows: &[(&str, &[Fate])]) {
    let mut problems = Vec::new();
    for (line, expect) in rows {
        let fate = fate_of(&format!("[limits]\n{line}\n")).await;
        eprintln!("{line:<48} {fate:?}");
        if !expect.contains(&fate) {
            problems.push(format!("{line}: expected one of {expect:?}, saw {fate:?}"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

async fn fate_of(extra: &str) -> Fate {
    if let Err(e) = Config::parse(Path::new("f.toml"), extra) {
        let key = extra.lines().nth(1).and_then(|l| l.split(' ').next());
        assert!(
            key.is_some_and(|k| e.to_string().contains(k)),
            "refusal does not name the key: {e}"
        );
        return Fate::Refused;
    }
    let extra = extra.to_owned();
    // In a task: a panic while starting is an outcome, not a test crash.
    let Ok(w) = tokio::spawn(async move { world("extreme", &extra).await }).await else {
        return Fate::StartPanicked;
    };
    let connect = tokio::time::timeout(
        Duration::from_secs(5),
        raw_connect(w.proxy.addr, "storage.googleapis.com:443"),
    );
    match connect.await {
        Ok((_, head)) if head.is_empty() => return Fate::ClosedUnanswered,
        Ok((_, head)) if status_of(&head) == Some(200) => {}
        _ => return Fate::Other,
    }
    let proxy = Arc::new(w.proxy);
    let request = tokio::spawn(async move { assert_still_serves(&proxy, "", "").await });
    match request.await {
        Ok(()) => Fate::Serves,
        Err(_) => Fate::Other,
    }
}
