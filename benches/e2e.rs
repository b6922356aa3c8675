//! End-to-end bench: the release binary as a child process, a local TLS
//! upstream and a load client in this process. Every leg runs "direct"
//! (client → upstream) and "proxy" (client → CONNECT → proxy → upstream)
//! side by side in rounds; the table quotes medians and the ratios (to
//! nginx and to the splice floor: the median of each round's ratio).
//!
//! `cargo bench --bench e2e` (add `-- --quick` for a shorter run, and
//! `-- --only TEXT` to run only the legs whose name contains TEXT,
//! `-- --secs N` for N seconds per leg and round). `E2E_PROXY_PREFIX`
//! runs the proxy under a profiler, e.g. "valgrind --tool=callgrind";
//! `E2E_PROXY_BIN` runs another build of the proxy (an older commit, or
//! one with another allocator) against the same bench; `--no-nginx` leaves
//! the nginx legs out, and `--no-splice` the splice floor.
//!
//! Where Debian's `nginx` is installed, the keep-alive legs also run
//! through nginx as a TLS reverse proxy doing the same work (TLS in, the
//! `Authorization` header set, TLS out to the same upstream over kept-alive
//! connections, an access log line per request, as many workers as the
//! proxy), and the idle-connection legs measure nginx's memory too.
//!
//! The keep-alive HTTP/1.1 legs also run through the proxy's spliced
//! tunnel (`[intercept] other = "tunnel"`: CONNECT, then bytes copied both
//! ways, TLS end to end with the upstream): the same hops as the proxy and
//! nginx with nothing terminated in the middle, the floor any proxy on
//! this machine stands on ("splice/s", and its ratio to nginx).
//!
//! The fleet legs (`idle`, `10000`, `idle h2`): a fresh proxy, N TLS
//! connections through it (CONNECT, TLS, one request each; HTTP/2 for
//! `idle h2`) left idle; the proxy's RSS (/proc/PID/status) before, idle,
//! under load (every connection sending, with the upstream connections
//! made meanwhile: each a TLS handshake) and after they all close.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

const SMALL: &[u8; 64] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

// ---------------------------------------------------------------- upstream

fn tls_material(dir: &Path) -> (PathBuf, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Not rcgen's default name, which the leaf has too: OpenSSL (nginx)
    // would take the leaf for self-signed.
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "bench upstream CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let names = vec![
        "bench.googleapis.com".to_string(),
        "*.bench.googleapis.com".to_string(),
        SPLICE_HOST.to_string(),
    ];
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let ca_pem = dir.join("upstream-ca.pem");
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
    let mut cfg =
        rustls::ServerConfig::builder_with_provider(impersonate_proxy::net::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // nginx serves the same certificate as the reverse proxy.
    std::fs::write(dir.join("upstream-cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("upstream-key.pem"), key.serialize_pem()).unwrap();
    (ca_pem, Arc::new(cfg))
}

/// Upstream connections open now (the proxy's, and nginx's).
static UPSTREAM_OPEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Upstream connections accepted so far (each a TLS handshake).
static UPSTREAM_MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct OpenGuard;
impl Drop for OpenGuard {
    fn drop(&mut self) {
        UPSTREAM_OPEN.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn upstream_route(req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if path == "/1m" {
        static MB: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
        let b = MB.get_or_init(|| Bytes::from(vec![b'm'; 1 << 20])).clone();
        return Response::new(Full::new(b).boxed());
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 256 * 1024]);
        let chunks =
            (0..n / chunk.len()).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
        return Response::new(StreamBody::new(IterStream(chunks)).boxed());
    }
    if path == "/count" {
        let mut body = req.into_body();
        let mut n = 0usize;
        while let Some(Ok(f)) = body.frame().await {
            if let Ok(d) = f.into_data() {
                n += d.len();
            }
        }
        return Response::new(Full::new(Bytes::from(n.to_string())).boxed());
    }
    Response::new(Full::new(Bytes::from_static(SMALL)).boxed())
}

struct IterStream<I>(I);
impl<I: Iterator + Unpin> futures_core::Stream for IterStream<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

/// The upstream runs on its own runtime whose threads are named, so its
/// CPU time can be read from /proc apart from the load client's.
fn start_upstream(tls: Arc<rustls::ServerConfig>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("upstream")
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            loop {
                let s = match l.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Once: a proxy holding one upstream connection per
                        // client runs this process out of descriptors.
                        static SAID: std::sync::Once = std::sync::Once::new();
                        SAID.call_once(|| eprintln!("upstream accept: {e} (said once)"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = s.set_nodelay(true);
                let acceptor = acceptor.clone();
                UPSTREAM_OPEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                UPSTREAM_MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    let _open = OpenGuard;
                    let Ok(tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    b.http2().max_concurrent_streams(1000);
                    let svc =
                        service_fn(|r| async move { Ok::<_, Infallible>(upstream_route(r).await) });
                    let _ = b.serve_connection(TokioIo::new(tls), svc).await;
                });
            }
        });
    });
    rx.recv().unwrap()
}

/// utime + stime of the threads of this process whose name starts with
/// `prefix`, in clock ticks.
fn thread_cpu(prefix: &str) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.starts_with(prefix) {
            total += stat_cpu(&e.path().join("stat"));
        }
    }
    total
}

/// CPU time, in clock ticks, of the bench's client threads, its upstream
/// threads, and the process in the middle (the proxy, or nginx's workers).
#[derive(Clone, Copy, Default)]
struct Cpu {
    client: u64,
    upstream: u64,
    middle: u64,
    /// The part of `middle` spent in the kernel.
    middle_kernel: u64,
}

impl Cpu {
    fn now(middle: &[PathBuf]) -> Cpu {
        Cpu {
            client: thread_cpu("client"),
            upstream: thread_cpu("upstream"),
            middle: middle.iter().map(|p| stat_cpu(p)).sum(),
            middle_kernel: middle.iter().map(|p| stat_field(p, 12)).sum(),
        }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            client: self.client.saturating_sub(before.client),
            upstream: self.upstream.saturating_sub(before.upstream),
            middle: self.middle.saturating_sub(before.middle),
            middle_kernel: self.middle_kernel.saturating_sub(before.middle_kernel),
        }
    }

    fn add(&mut self, o: Cpu) {
        self.client += o.client;
        self.upstream += o.upstream;
        self.middle += o.middle;
        self.middle_kernel += o.middle_kernel;
    }
}

/// One leg's CPU per request, direct, through the proxy and through nginx,
/// and what the proxy could use to reach 1.1× nginx's rate on the same
/// CPU (the issue's goal): nginx's total ÷ 1.1, less the client's and the
/// upstream's share.
fn cpu_breakdown(name: &str, cpu: &[CpuPerRequest; 3], nginx: bool, tick: f64) -> String {
    let row = |label: &str, c: &CpuPerRequest, middle: bool| {
        let [cl, up, mid, all, kernel] = c.micros(tick);
        let (mid, kernel) = if middle {
            (format!("{mid:5.1}"), format!("{kernel:5.1}"))
        } else {
            ("    —".into(), "    —".into())
        };
        format!(
            "  {label:<7} {cl:5.1} + {up:5.1} + {mid} = {all:5.1}   (middle in the kernel {kernel}; {:.2} cores busy)",
            c.cores(tick)
        )
    };
    let mut out = format!(
        "{name}\n{}\n{}",
        row("direct", &cpu[0], false),
        row("proxy", &cpu[1], true)
    );
    if nginx {
        let [pc, pu, pm, ..] = cpu[1].micros(tick);
        let [_, _, nm, n_all, _] = cpu[2].micros(tick);
        let room = n_all / 1.1 - pc - pu;
        out += &format!(
            "\n{}\n  1.1× nginx's rate needs the proxy within {room:.1} µs per request; it uses {pm:.1} (nginx {nm:.1})",
            row("nginx", &cpu[2], true),
        );
    }
    out
}

/// The `stat` files of nginx's workers (the master's children).
fn nginx_workers(master: u32) -> Vec<PathBuf> {
    std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|pid| PathBuf::from(format!("/proc/{pid}/stat")))
        .collect()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU per request of one way through, summed over the rounds.
#[derive(Default)]
struct CpuPerRequest {
    cpu: Cpu,
    requests: f64,
    /// Wall-clock seconds of the legs.
    secs: f64,
}

impl CpuPerRequest {
    /// Runs `leg` and counts its CPU and requests.
    async fn measure(
        &mut self,
        middle: &[PathBuf],
        leg: impl std::future::Future<Output = Sample>,
    ) -> Sample {
        let before = Cpu::now(middle);
        let s = leg.await;
        self.cpu.add(Cpu::now(middle).since(before));
        self.requests += s.requests;
        self.secs += s.requests / s.rps.max(f64::MIN_POSITIVE);
        s
    }

    /// Cores kept busy by the three, on average.
    fn cores(&self, tick: f64) -> f64 {
        let c = self.cpu;
        (c.client + c.upstream + c.middle) as f64 * tick / self.secs.max(f64::MIN_POSITIVE)
    }

    /// µs per request: client, upstream, middle, all three, and the
    /// middle's kernel part.
    fn micros(&self, tick: f64) -> [f64; 5] {
        let us = |t: u64| t as f64 * tick * 1e6 / self.requests.max(1.0);
        let c = self.cpu;
        [
            us(c.client),
            us(c.upstream),
            us(c.middle),
            us(c.client + c.upstream + c.middle),
            us(c.middle_kernel),
        ]
    }
}

/// User + system CPU ticks of a `/proc/…/stat` file.
fn stat_cpu(path: &Path) -> u64 {
    stat_field(path, 11) + stat_field(path, 12)
}

/// Field `i` after the command name of a `/proc/…/stat` file (11: user
/// ticks, 12: system ticks).
fn stat_field(path: &Path, i: usize) -> u64 {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    after
        .split_whitespace()
        .nth(i)
        .and_then(|x| x.parse::<u64>().ok())
        .unwrap_or(0)
}

fn vm_hwm_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resident memory of `pids` together, KiB.
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter().map(|p| status_kib(*p, "VmRSS:")).sum()
}

/// `pid` and its child processes (nginx's workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Raises this process's open-files limit (the proxy and nginx inherit
/// it): 10,000 client connections, and as many upstream ones for a proxy
/// that holds one per client.
fn raise_open_files() {
    use rlimit::Resource;
    let want = 65_536;
    if Resource::NOFILE.set(want, want).is_err() {
        let _ = rlimit::increase_nofile_limit(want);
    }
}

// ------------------------------------------------------------------ proxy

struct ProxyChild {
    child: Child,
    addr: SocketAddr,
    ca_pem: PathBuf,
}

impl Drop for ProxyChild {
    fn drop(&mut self) {
        // SIGTERM first: the proxy drains and exits, so a profiler wrapped
        // around it (E2E_PROXY_PREFIX) gets to write its output.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The proxy's source identity in the emulator, and the account every
/// bench request is sent as: the realistic path, a token attached per request.
const SOURCE_SA: &str = "bench-runner@emulator-project.iam.gserviceaccount.com";
const TARGET_SA: &str = "bench-reader@emulator-project.iam.gserviceaccount.com";

/// The proxy binary: this tree's, or `E2E_PROXY_BIN`.
fn proxy_bin() -> String {
    std::env::var("E2E_PROXY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_impersonate-proxy").to_string())
}

fn start_proxy(
    dir: &Path,
    upstream: SocketAddr,
    upstream_ca: &Path,
    hosts: usize,
    emu: &impersonate_proxy::emulator::Emulator,
    extra: &str,
) -> ProxyChild {
    let certs = dir.join("certs");
    if !certs.join("ca.pem").exists() {
        impersonate_proxy::ca::init(&certs, false).unwrap();
    }
    let key = emu.write_service_account_key(dir, SOURCE_SA).unwrap();
    let mut resolve =
        format!("\"bench.googleapis.com\" = \"{upstream}\"\n\"{SPLICE_HOST}\" = \"{upstream}\"\n");
    for h in impersonate_proxy::emulator::HOSTS {
        resolve.push_str(&format!("\"{h}\" = \"{}\"\n", emu.addr()));
    }
    for i in 0..hosts {
        resolve.push_str(&format!(
            "\"h{i:04}.bench.googleapis.com\" = \"{upstream}\"\n"
        ));
    }
    let cfg = format!(
        "{extra}[proxy]\nlisten = \"127.0.0.1:0\"\n[ca]\ncert = \"certs/ca.pem\"\nkey = \"certs/ca-key.pem\"\n[source]\ntype = \"service_account\"\nfile = \"{key}\"\n[audit]\nfile = \"{audit}\"\n[intercept]\nother = \"tunnel\"\nallow_private = [\"127.0.0.0/8\"]\n[[route]]\nname = \"bench\"\nhosts = [\"bench.googleapis.com\", \"*.bench.googleapis.com\"]\nimpersonate = \"{TARGET_SA}\"\nwarm = true\n[upstream]\nextra_ca = [\"{}\", \"{}\"]\n[upstream.resolve]\n{resolve}",
        upstream_ca.display(),
        emu.ca_pem_path().display(),
        key = key.display(),
        audit = dir.join("audit.jsonl").display(),
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, cfg).unwrap();
    // E2E_PROXY_PREFIX runs the proxy under a wrapper, e.g.
    // "valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out".
    let prefix = std::env::var("E2E_PROXY_PREFIX").unwrap_or_default();
    let mut words = prefix.split_whitespace();
    let mut child = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(proxy_bin());
            c
        }
        None => Command::new(proxy_bin()),
    };
    let mut child = child
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("proxy printed its address").unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.trim().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    ProxyChild {
        child,
        addr,
        ca_pem: certs.join("ca.pem"),
    }
}

// ------------------------------------------------------------------ nginx

struct NginxChild {
    child: Child,
    addr: SocketAddr,
}

impl Drop for NginxChild {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_bin() -> Option<&'static str> {
    ["nginx", "/usr/sbin/nginx"].into_iter().find(|b| {
        Command::new(b)
            .arg("-v")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// nginx as a TLS reverse proxy doing the proxy's work: TLS in (HTTP/1.1
/// and HTTP/2), `Authorization` replaced, TLS out (verified, SNI) to the
/// same upstream over kept-alive connections (32 idle per worker, as the
/// proxy keeps), an access log line per request, `workers` workers.
fn start_nginx(dir: &Path, upstream: SocketAddr, workers: usize) -> Option<NginxChild> {
    let Some(bin) = nginx_bin() else {
        println!("nginx legs skipped: no nginx here (apt-get install nginx; .ci/run installs it)");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.join("nginx");
    std::fs::create_dir_all(&d).unwrap();
    let conf = format!(
        r#"worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
daemon off;
events {{ worker_connections 20000; }}
http {{
    access_log {d}/access.log combined buffer=64k flush=1s;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream google {{
        server {upstream};
        keepalive 32;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {dir}/upstream-cert.pem;
        ssl_certificate_key {dir}/upstream-key.pem;
        location / {{
            proxy_pass https://google;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host bench.googleapis.com;
            proxy_set_header Authorization "Bearer ya29.a-token-of-the-length-iam-mints-for-a-service-account-0123456789abcdefghijklmnopqrstuvwxyz";
            proxy_ssl_server_name on;
            proxy_ssl_name bench.googleapis.com;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {dir}/upstream-ca.pem;
            proxy_ssl_session_reuse on;
        }}
    }}
}}
"#,
        d = d.display(),
        dir = dir.display(),
    );
    let path = d.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(bin)
        .arg("-p")
        .arg(&d)
        .arg("-e")
        .arg(d.join("error.log"))
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let n = NginxChild { child, addr };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            println!(
                "nginx legs skipped: nginx did not listen; {}",
                std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
            );
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(n)
}

// ----------------------------------------------------------------- client

#[derive(Clone)]
struct Ends {
    upstream: SocketAddr,
    upstream_tls: Arc<rustls::ClientConfig>,
    proxy: SocketAddr,
    proxy_tls: Arc<rustls::ClientConfig>,
    /// nginx as a reverse proxy (serves the upstream's certificate).
    nginx: Option<SocketAddr>,
}

#[derive(Clone, Copy, PartialEq)]
enum Via {
    Direct,
    Proxy,
    Nginx,
    /// Through the proxy's spliced tunnel to the upstream (`[intercept]
    /// other = "tunnel"`): the same hops as the proxy and nginx legs, with
    /// no TLS terminated in the middle, so the least a proxy can cost.
    Splice,
}

/// The name the splice leg CONNECTs to: not intercepted, resolved to the
/// upstream, on the upstream's certificate.
const SPLICE_HOST: &str = "splice.bench.test";

fn client_tls(ca: &Path, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let roots = impersonate_proxy::net::tls::root_store(&[ca]).unwrap();
    let mut c =
        rustls::ClientConfig::builder_with_provider(impersonate_proxy::net::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    c.alpn_protocols = vec![alpn.to_vec()];
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

async fn open(
    ends: &Ends,
    via: Via,
    host: &str,
    h2: bool,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    try_open(ends, via, host, h2).await.unwrap()
}

/// CONNECT (through the proxy) and TLS to `host`.
async fn try_open(
    ends: &Ends,
    via: Via,
    host: &str,
    h2: bool,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let e = |e: std::io::Error| e.to_string();
    let host = if via == Via::Splice {
        SPLICE_HOST
    } else {
        host
    };
    let (stream, cfg) = match via {
        Via::Direct => (
            TcpStream::connect(ends.upstream).await.map_err(e)?,
            &ends.upstream_tls,
        ),
        Via::Nginx => (
            TcpStream::connect(ends.nginx.ok_or("no nginx")?)
                .await
                .map_err(e)?,
            &ends.upstream_tls,
        ),
        Via::Proxy | Via::Splice => {
            let mut s = TcpStream::connect(ends.proxy).await.map_err(e)?;
            s.write_all(
                format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n").as_bytes(),
            )
            .await
            .map_err(e)?;
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut b).await.map_err(e)?;
                head.push(b[0]);
            }
            if !head.starts_with(b"HTTP/1.1 200") {
                return Err(String::from_utf8_lossy(&head).to_string());
            }
            (
                s,
                if via == Via::Splice {
                    &ends.upstream_tls
                } else {
                    &ends.proxy_tls
                },
            )
        }
    };
    stream.set_nodelay(true).map_err(e)?;
    let mut cfg = (**cfg).clone();
    cfg.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let name =
        rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, stream)
        .await
        .map_err(e)
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

async fn sender(ends: &Ends, via: Via, h2: bool) -> Sender {
    let io = TokioIo::new(open(ends, via, "bench.googleapis.com", h2).await);
    if h2 {
        let (s, c) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake(io)
            .await
            .unwrap();
        tokio::spawn(c);
        Sender::H2(s)
    } else {
        let (s, c) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(c);
        Sender::H1(s)
    }
}

fn req(path: &str, h2: bool) -> Request<Empty<Bytes>> {
    let b = if h2 {
        Request::get(format!("https://bench.googleapis.com{path}"))
    } else {
        Request::get(path).header("host", "bench.googleapis.com")
    };
    b.body(Empty::new()).unwrap()
}

async fn drain(resp: Response<Incoming>) -> usize {
    let mut body = resp.into_body();
    let mut n = 0;
    while let Some(Ok(f)) = body.frame().await {
        if let Ok(d) = f.into_data() {
            n += d.len();
        }
    }
    n
}

struct Sample {
    /// Requests answered.
    requests: f64,
    rps: f64,
    mbps: f64,
    p50_us: f64,
    p99_us: f64,
}

/// `conns` connections × `streams` concurrent requests each, for `dur`.
async fn keepalive(
    ends: &Ends,
    via: Via,
    h2: bool,
    conns: usize,
    streams: usize,
    path: &'static str,
    dur: Duration,
) -> Sample {
    let mut tasks = Vec::new();
    let start = Instant::now();
    let deadline = start + dur;
    for _ in 0..conns {
        let s = sender(ends, via, h2).await;
        match s {
            Sender::H1(mut s) => tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut bytes = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    s.ready().await.unwrap();
                    let resp = s.send_request(req(path, false)).await.unwrap();
                    assert_eq!(resp.status(), 200);
                    bytes += drain(resp).await;
                    lat.push(t.elapsed().as_micros() as u32);
                }
                (lat, bytes)
            })),
            Sender::H2(s) => {
                for _ in 0..streams {
                    let mut s = s.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut lat = Vec::new();
                        let mut bytes = 0;
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            let resp = s.send_request(req(path, true)).await.unwrap();
                            assert_eq!(resp.status(), 200);
                            bytes += drain(resp).await;
                            lat.push(t.elapsed().as_micros() as u32);
                        }
                        (lat, bytes)
                    }));
                }
            }
        }
    }
    let mut lat = Vec::new();
    let mut bytes = 0;
    for t in tasks {
        let (l, b) = t.await.unwrap();
        lat.extend(l);
        bytes += b;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
    };
    Sample {
        requests: lat.len() as f64,
        rps: lat.len() as f64 / secs,
        mbps: bytes as f64 / secs / 1e6,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
    }
}

/// CONNECT + TLS handshake only, `n` times, `par` at once; host names from
/// `host(i)`. Returns handshakes/s and p50 µs.
async fn handshakes(
    ends: &Ends,
    n: usize,
    par: usize,
    host: impl Fn(usize) -> String + Send + Sync + 'static,
) -> (f64, f64) {
    let host = Arc::new(host);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..par {
        let ends = ends.clone();
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = w;
            while i < n {
                let t = Instant::now();
                let tls = open(&ends, Via::Proxy, &host(i), false).await;
                lat.push(t.elapsed().as_micros() as u32);
                drop(tls);
                i += par;
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    (n as f64 / secs, lat[lat.len() / 2] as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

async fn transfer(ends: &Ends, upload: bool, bytes: usize) -> f64 {
    let tls = open(ends, Via::Proxy, "bench.googleapis.com", false).await;
    let (mut s, c) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::combinators::BoxBody<Bytes, Infallible>,
    >(TokioIo::new(tls))
    .await
    .unwrap();
    tokio::spawn(c);
    let t = Instant::now();
    if upload {
        let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
        let frames =
            (0..bytes / chunk.len()).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
        let r = Request::post("/count")
            .header("host", "bench.googleapis.com")
            .body(StreamBody::new(IterStream(frames)).boxed())
            .unwrap();
        let resp = s.send_request(r).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, bytes.to_string().as_bytes());
    } else {
        let r = Request::get(format!("/bytes/{bytes}"))
            .header("host", "bench.googleapis.com")
            .body(Empty::new().boxed())
            .unwrap();
        assert_eq!(drain(s.send_request(r).await.unwrap()).await, bytes);
    }
    bytes as f64 / t.elapsed().as_secs_f64() / 1e6
}

type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

type H2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// One connection via `via`, HTTP/2 (a gRPC client, say) or HTTP/1.1,
/// with one request done.
async fn open_one(ends: &Ends, via: Via, h2: bool) -> Result<Fleet, String> {
    let tls = try_open(ends, via, "bench.googleapis.com", h2).await?;
    let io = TokioIo::new(tls);
    let e = |e: hyper::Error| e.to_string();
    let (conn, resp) = if h2 {
        let (mut s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(e)?;
        tokio::spawn(c);
        let resp = s.send_request(req("/64", true)).await.map_err(e)?;
        (Fleet::H2(vec![s]), resp)
    } else {
        let (mut s, c) = hyper::client::conn::http1::handshake(io).await.map_err(e)?;
        tokio::spawn(c);
        let resp = s.send_request(req("/64", false)).await.map_err(e)?;
        (Fleet::H1(vec![s]), resp)
    };
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    drain(resp).await;
    Ok(conn)
}

/// Opens `n` connections via `via` (64 handshakes at a time), one request
/// each, and leaves them open. Returns them and the failures.
async fn open_idle(ends: &Ends, via: Via, n: usize, h2: bool) -> (Fleet, Vec<String>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (ends, gate) = (ends.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await.unwrap();
            open_one(&ends, via, h2).await
        }));
    }
    let mut open = if h2 {
        Fleet::H2(Vec::with_capacity(n))
    } else {
        Fleet::H1(Vec::with_capacity(n))
    };
    let mut failed = Vec::new();
    for t in tasks {
        match (t.await.unwrap(), &mut open) {
            (Ok(Fleet::H1(c)), Fleet::H1(all)) => all.extend(c),
            (Ok(Fleet::H2(c)), Fleet::H2(all)) => all.extend(c),
            (Ok(_), _) => unreachable!("one protocol per leg"),
            (Err(e), _) => failed.push(e),
        }
    }
    (open, failed)
}

/// The connections a fleet leg holds open.
enum Fleet {
    H1(Vec<H1>),
    H2(Vec<H2>),
}

impl Fleet {
    fn len(&self) -> usize {
        match self {
            Fleet::H1(c) => c.len(),
            Fleet::H2(c) => c.len(),
        }
    }
}

/// Every connection sends requests back to back for `dur`; returns
/// requests/s and failures.
async fn load_all(conns: &mut Vec<H1>, dur: Duration) -> (f64, usize) {
    let deadline = Instant::now() + dur;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(conns.len());
    for mut s in conns.drain(..) {
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, 0usize);
            while Instant::now() < deadline {
                let r = async {
                    s.ready().await?;
                    s.send_request(req("/64", false)).await
                }
                .await;
                match r {
                    Ok(resp) if resp.status() == 200 => {
                        drain(resp).await;
                        ok += 1;
                    }
                    _ => {
                        failed += 1;
                        break;
                    }
                }
            }
            (s, ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (s, o, f) = t.await.unwrap();
        conns.push(s);
        ok += o;
        failed += f;
    }
    (ok as f64 / start.elapsed().as_secs_f64(), failed)
}

/// Samples `pids`' RSS every 100 ms until `stop`; the highest, KiB.
fn sample_peak(
    pids: Vec<u32>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(rss_kib(&pids));
            std::thread::sleep(Duration::from_millis(100));
        }
        peak.max(rss_kib(&pids))
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The fleet leg: `n` idle keep-alive TLS connections through `via`
/// (one request each): the server's RSS per idle connection, under load
/// (when `load` is set), and after they all close.
#[allow(clippy::too_many_arguments)]
fn fleet_leg(
    rt: &tokio::runtime::Runtime,
    ends: &Ends,
    via: Via,
    pids: &dyn Fn() -> Vec<u32>,
    n: usize,
    h2: bool,
    load: Option<Duration>,
    label: &str,
) {
    let up0 = UPSTREAM_OPEN.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(&pids());
    let t = Instant::now();
    let (mut conns, failed) = rt.block_on(open_idle(ends, via, n, h2));
    let opened_in = t.elapsed();
    // Past the proxy's PARK_AFTER (1 s): the connections are idle.
    std::thread::sleep(Duration::from_millis(2500));
    let idle = rss_kib(&pids());
    let up_idle = UPSTREAM_OPEN.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{label}: {} of {n} connections open ({} refused or failed{}) in {:.1} s; RSS before {}, with {} idle {} ({:.1} KiB per idle connection); upstream connections open {}",
        conns.len(),
        failed.len(),
        failed.first().map(|e| format!(", first: {e}")).unwrap_or_default(),
        opened_in.as_secs_f64(),
        mib(before),
        conns.len(),
        mib(idle),
        idle.saturating_sub(before) as f64 / conns.len().max(1) as f64,
        up_idle.saturating_sub(up0),
    );
    if let (Some(dur), Fleet::H1(conns)) = (load, &mut conns) {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = sample_peak(pids(), stop.clone());
        let made0 = UPSTREAM_MADE.load(std::sync::atomic::Ordering::Relaxed);
        let (rps, failed) = rt.block_on(load_all(conns, dur));
        let made = UPSTREAM_MADE.load(std::sync::atomic::Ordering::Relaxed) - made0;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let peak = sampler.join().unwrap();
        println!(
            "{label}: under load (all {} sending for {:.0} s): {rps:.0} req/s, {failed} failed; peak RSS {}; upstream connections made {made}, open {}",
            conns.len(),
            dur.as_secs_f64(),
            mib(peak),
            UPSTREAM_OPEN
                .load(std::sync::atomic::Ordering::Relaxed)
                .saturating_sub(up0),
        );
    }
    drop(conns);
    let mut line = format!("{label}: after close: RSS");
    let mut waited = Duration::ZERO;
    for at in [3u64, 12] {
        let until = Duration::from_secs(at);
        std::thread::sleep(until - waited);
        waited = until;
        let now = rss_kib(&pids());
        line.push_str(&format!(
            " +{at} s {} ({:.2}× before)",
            mib(now),
            now as f64 / before.max(1) as f64
        ));
    }
    line.push_str(&format!(
        "; upstream connections still open {}",
        UPSTREAM_OPEN
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(up0)
    ));
    println!("{line}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only TEXT`: run only the legs whose name contains TEXT
    // ("handshake", "memory", "idle" and "10000" name the last sections).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let wanted = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    let (rounds, mut dur) = if quick {
        (3, Duration::from_millis(1000))
    } else {
        (5, Duration::from_millis(2000))
    };
    // `--secs N`: each leg's duration per round (longer under a profiler).
    if let Some(secs) = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1)?.parse::<f64>().ok())
    {
        dur = Duration::from_secs_f64(secs);
    }
    raise_open_files();
    let dir = std::env::temp_dir().join(format!("ip-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (upstream_ca, server_tls) = tls_material(&dir);
    let upstream = start_upstream(server_tls);
    let hosts = 2000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()
        .unwrap();
    let emu = rt
        .block_on(impersonate_proxy::emulator::Emulator::start(
            impersonate_proxy::emulator::EmulatorOptions {
                dir: Some(dir.join("emu")),
                ..Default::default()
            },
        ))
        .unwrap();
    emu.grant_token_creator(SOURCE_SA, TARGET_SA);
    let proxy = start_proxy(&dir, upstream, &upstream_ca, hosts, &emu, "");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // As many nginx workers as the proxy has (one per core); `--no-nginx`
    // leaves nginx out.
    // `--no-splice` leaves the splice floor out (a profile of the proxy
    // then counts only the terminated legs).
    let splice = !args.iter().any(|a| a == "--no-splice");
    let mut nginx = if args.iter().any(|a| a == "--no-nginx") {
        None
    } else {
        start_nginx(&dir, upstream, cores)
    };
    let ends = Ends {
        upstream,
        upstream_tls: client_tls(&upstream_ca, b"h2"),
        proxy: proxy.addr,
        proxy_tls: client_tls(&proxy.ca_pem, b"h2"),
        nginx: nginx.as_ref().map(|n| n.addr),
    };
    let proxy_stat = PathBuf::from(format!("/proc/{}/stat", proxy.child.id()));
    eprintln!("proxy pid {}", proxy.child.id());

    println!(
        "impersonate-proxy e2e bench — {} rounds × {:?} per leg, medians; machine: {} cores",
        rounds,
        dur,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "{:<26} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>10} {:>9} {:>9} {:>9}",
        "leg",
        "direct/s",
        "proxy/s",
        "d p50µs",
        "p p50µs",
        "d p99µs",
        "p p99µs",
        "rps ×",
        "p50 ×",
        "nginx/s",
        "p/nginx ×",
        "splice/s",
        "s/nginx ×"
    );
    let legs: [(&str, bool, usize, usize, &'static str); 6] = [
        ("h1 keep-alive c=1", false, 1, 1, "/64"),
        ("h1 keep-alive c=16", false, 16, 1, "/64"),
        ("h1 keep-alive c=64", false, 64, 1, "/64"),
        ("h2 4 conns × 16 streams", true, 4, 16, "/64"),
        ("h1 1 MB responses c=4", false, 4, 1, "/1m"),
        ("h2 1 MB responses 1×4", true, 1, 4, "/1m"),
    ];
    let mut cpu_ratio = None;
    let mut cpu_lines = Vec::new();
    let tick = 1.0 / clock_ticks();
    rt.block_on(async {
        // The proxy leg must be the real path: routed, token attached, 200.
        match sender(&ends, Via::Proxy, false).await {
            Sender::H1(mut s) => {
                let resp = s.send_request(req("/64", false)).await.unwrap();
                assert_eq!(resp.status(), 200, "the bench route does not answer 200");
            }
            Sender::H2(_) => unreachable!(),
        }
        for (name, h2, conns, streams, path) in legs {
            if !wanted(name) {
                continue;
            }
            let (mut d, mut p, mut g) = (Vec::new(), Vec::new(), Vec::new());
            let with_nginx = ends.nginx.is_some() && path == "/64";
            // The floor: the same hops through a spliced tunnel.
            let mut floor = Vec::new();
            // CPU per request of each way through: direct, proxy, nginx.
            let mut cpu: [CpuPerRequest; 3] = Default::default();
            let workers = nginx.as_ref().map_or(Vec::new(), |n| nginx_workers(n.child.id()));
            let proxy_stat = std::slice::from_ref(&proxy_stat);
            for _ in 0..rounds {
                if with_nginx {
                    let leg = keepalive(&ends, Via::Nginx, h2, conns, streams, path, dur);
                    g.push(cpu[2].measure(&workers, leg).await.rps);
                }
                if splice && path == "/64" {
                    floor.push(keepalive(&ends, Via::Splice, h2, conns, streams, path, dur).await.rps);
                }
                let leg = keepalive(&ends, Via::Direct, h2, conns, streams, path, dur);
                d.push(cpu[0].measure(&[], leg).await);
                let leg = keepalive(&ends, Via::Proxy, h2, conns, streams, path, dur);
                let s = cpu[1].measure(proxy_stat, leg).await;
                p.push(s);
            }
            if path == "/64" {
                // Without nginx's workers (no `/proc/…/children`), its CPU
                // is unknown: its row is left out.
                let nginx_cpu = with_nginx && !workers.is_empty();
                cpu_lines.push(cpu_breakdown(name, &cpu, nginx_cpu, tick));
            }
            if name == "h1 keep-alive c=16" {
                // CPU per request, proxy vs upstream, on the same requests.
                let c = cpu[1].cpu;
                cpu_ratio = Some(c.middle as f64 / c.upstream.max(1) as f64);
            }
            let big = path == "/1m";
            let dm = median(d.iter().map(|s| if big { s.mbps } else { s.rps }).collect());
            let pm = median(p.iter().map(|s| if big { s.mbps } else { s.rps }).collect());
            let d50 = median(d.iter().map(|s| s.p50_us).collect());
            let p50 = median(p.iter().map(|s| s.p50_us).collect());
            let d99 = median(d.iter().map(|s| s.p99_us).collect());
            let p99 = median(p.iter().map(|s| s.p99_us).collect());
            let unit = if big { " MB/s" } else { "" };
            // Against nginx: the median of each round's ratio (nginx ran
            // in the same round, moments before), so that the machine's
            // drift from round to round cancels out.
            let paired = |a: &[f64], b: &[f64]| {
                (!b.is_empty() && a.len() == b.len())
                    .then(|| median(a.iter().zip(b).map(|(x, y)| x / y).collect()))
            };
            let rps: Vec<f64> = p.iter().map(|s| s.rps).collect();
            let ratio = |r: Option<f64>| r.map_or("—".to_string(), |r| format!("{r:.2}"));
            let (gr, fr) = (ratio(paired(&rps, &g)), ratio(paired(&floor, &g)));
            let cell = |v: &[f64]| {
                (!v.is_empty()).then(|| median(v.to_vec())).map_or("—".to_string(), |v| format!("{v:.0}"))
            };
            let (gm, fm) = (cell(&g), cell(&floor));
            println!(
                "{:<26} {:>10} {:>10} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>7.2} {:>7.2} {:>10} {:>9} {:>9} {:>9}",
                name,
                format!("{dm:.0}{unit}"),
                format!("{pm:.0}{unit}"),
                d50, p50, d99, p99,
                pm / dm,
                p50 / d50,
                gm,
                gr,
                fm,
                fr
            );
        }
        if !cpu_lines.is_empty() {
            println!(
                "CPU per request, µs: the bench's client + its upstream + the middle (proxy or nginx) = all;"
            );
            println!(
                "they share this machine's cores, so where the cores are all busy, requests/s ≈ cores ÷ all"
            );
            for l in cpu_lines.drain(..) {
                println!("{l}");
            }
        }
        if let Some(r) = cpu_ratio.take() {
            println!("proxy CPU per request / upstream CPU per request (h1 c=16): {r:.2}×");
        }

        if !wanted("handshake") {
            return;
        }
        // Handshakes: cached leaf vs first-time mint.
        let _ = handshakes(&ends, 50, 1, |_| "bench.googleapis.com".to_string()).await;
        let n = if quick { 500 } else { hosts };
        let (cached_rate, cached_p50) = handshakes(&ends, n, 1, |_| "bench.googleapis.com".to_string()).await;
        let (mint_rate, mint_p50) = handshakes(&ends, n, 1, |i| format!("h{i:04}.bench.googleapis.com")).await;
        println!("handshake (CONNECT+TLS) c=1: cached {cached_rate:.0}/s p50 {cached_p50:.0}µs; first mint ({n} hosts) {mint_rate:.0}/s p50 {mint_p50:.0}µs; p50 × {:.2}", mint_p50 / cached_p50);
        let (c16, c16p) = handshakes(&ends, 320, 16, |_| "bench.googleapis.com".to_string()).await;
        let (m16, m16p) = handshakes(&ends, 320, 16, move |i| format!("h{:04}.bench.googleapis.com", hosts - 1 - i)).await;
        println!("handshake c=16: cached {c16:.0}/s p50 {c16p:.0}µs; 16 concurrent first mints {m16:.0}/s p50 {m16p:.0}µs; rate × {:.2}", m16 / c16);
    });
    drop(proxy);

    // Memory: a fresh proxy per transfer so VmHWM is that transfer's peak.
    let gib = if quick { 256 << 20 } else { 1 << 30 };
    for upload in [true, false] {
        if !wanted("memory") {
            break;
        }
        let proxy = start_proxy(&dir, upstream, &upstream_ca, 0, &emu, "");
        let ends = Ends {
            proxy: proxy.addr,
            proxy_tls: client_tls(&proxy.ca_pem, b"http/1.1"),
            ..ends.clone()
        };
        let base = vm_hwm_kib(proxy.child.id());
        let mbps = rt.block_on(transfer(&ends, upload, gib));
        let peak = vm_hwm_kib(proxy.child.id());
        println!(
            "{} {} MiB through the proxy: {mbps:.0} MB/s; proxy VmHWM {:.1} MiB (at start {:.1} MiB)",
            if upload { "upload" } else { "download" },
            gib >> 20,
            peak as f64 / 1024.0,
            base as f64 / 1024.0
        );
    }

    // Fleet legs: a fresh proxy each, so that its RSS is the leg's.
    let fleet = [
        // gRPC clients: HTTP/2 connections, idle between calls.
        ("idle h2 2000", 2000usize, true, None),
        ("idle 5000", 5000, false, Some(Duration::from_secs(2))),
        ("10000 connections", 10_000, false, None),
    ];
    for (name, n, h2, load) in fleet {
        if !wanted(name) {
            continue;
        }
        let proxy = start_proxy(
            &dir,
            upstream,
            &upstream_ca,
            0,
            &emu,
            "[limits]\nmax_connections = 20000\n",
        );
        let ends = Ends {
            proxy: proxy.addr,
            proxy_tls: client_tls(&proxy.ca_pem, b"http/1.1"),
            ..ends.clone()
        };
        // Warm: the token minted, the leaf cached.
        drop(rt.block_on(open_idle(&ends, Via::Proxy, 1, false)));
        let pid = proxy.child.id();
        fleet_leg(
            &rt,
            &ends,
            Via::Proxy,
            &|| vec![pid],
            n,
            h2,
            load,
            &format!("{name}, proxy"),
        );
        drop(proxy);
        if name.starts_with("idle") && nginx.is_some() {
            // A fresh nginx for each leg, as for the proxy: nginx keeps the
            // memory of a leg for the next one.
            drop(nginx.take());
            nginx = start_nginx(&dir, upstream, cores);
            if let Some(ng) = &nginx {
                let pid = ng.child.id();
                let ends = Ends {
                    nginx: Some(ng.addr),
                    ..ends.clone()
                };
                fleet_leg(
                    &rt,
                    &ends,
                    Via::Nginx,
                    &|| with_children(pid),
                    n,
                    h2,
                    load,
                    &format!("{name}, nginx"),
                );
            }
        }
    }
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);
}
