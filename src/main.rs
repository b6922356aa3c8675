//! The command line: parse, load the config, start, map errors to exit
//! codes (0 ok, 1 runtime failure, 2 bad config or usage).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use impersonate_proxy::policy::cases;
use impersonate_proxy::policy::explain::{Decision, Facts, Who};
use impersonate_proxy::policy::routes::RouteTable;
use impersonate_proxy::{ca, Config, Proxy};

/// jemalloc, with background threads that give freed pages back to the
/// system a second after they are freed: after a burst of connections
/// the proxy's memory comes back, where glibc's malloc and mimalloc keep
/// it (measured in benches/README.md). Its settings are in
/// .cargo/config.toml.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "impersonate-proxy",
    version,
    about = "Call Google APIs as another service account, through a local proxy"
)]
struct Cli {
    /// Log format on stderr (RUST_LOG sets the level, default info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the proxy.
    Run {
        /// The config file (TOML).
        #[arg(
            long,
            required_unless_present = "impersonate",
            conflicts_with = "impersonate"
        )]
        config: Option<PathBuf>,
        /// Zero-config: ADC as the source, every *.googleapis.com request as
        /// this service account, the CA from certs/.
        #[arg(long, value_name = "SA_EMAIL")]
        impersonate: Option<String>,
        /// Listen address with --impersonate.
        #[arg(long, default_value = "127.0.0.1:8080", requires = "impersonate")]
        listen: std::net::SocketAddr,
    },
    /// Offline end-to-end demo: emulated Google APIs, the proxy, and a few
    /// requests through it; then serves until Ctrl-C.
    Demo {
        /// Where the demo proxy listens (an ephemeral port if taken).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Print an impersonated token, like `gcloud auth print-access-token
    /// --impersonate-service-account`.
    Token {
        /// The target service account.
        #[arg(long, value_name = "SA_EMAIL")]
        impersonate: String,
        /// Delegate chain, comma-separated, in order.
        #[arg(long, value_delimiter = ',')]
        delegates: Vec<String>,
        /// OAuth scopes, comma-separated (default cloud-platform).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Token lifetime, e.g. 3600s.
        #[arg(long, default_value = "3600s")]
        lifetime: String,
        /// Print an ID token for this audience instead.
        #[arg(long, value_name = "AUDIENCE")]
        id_token: Option<String>,
        /// Sign this file's bytes with the account's Google-managed key
        /// (IAM signBlob); prints keyId and the base64 signature.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["id_token", "sign_jwt", "subject"])]
        sign_blob: Option<PathBuf>,
        /// Sign this JSON claims set as a JWT (IAM signJwt); prints the
        /// signed JWT.
        #[arg(long, value_name = "CLAIMS.json", conflicts_with_all = ["id_token", "subject"])]
        sign_jwt: Option<PathBuf>,
        /// Print an access token acting for this Workspace user (keyless
        /// domain-wide delegation: signJwt, then the JWT-bearer grant).
        #[arg(long, value_name = "USER", conflicts_with = "id_token")]
        subject: Option<String>,
        /// Exchange the token at STS for one limited to this Credential
        /// Access Boundary (Google's JSON: {"accessBoundary":{"accessBoundaryRules":[…]}}).
        #[arg(long, value_name = "FILE.json", conflicts_with_all = ["id_token", "sign_blob", "sign_jwt"])]
        access_boundary: Option<PathBuf>,
        /// Use [source] and [upstream] from this config (default: ADC).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Manage the local certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Validate a config file and print what it means.
    Check {
        /// The config file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Also mint every route's token once through the source
        /// credential and IAM; exit 1 if any fails.
        #[arg(long, conflicts_with = "tests")]
        live: bool,
        /// Policy tests: a file of [[case]]s run against the routes (exit 1
        /// when a decision differs).
        #[arg(long, value_name = "FILE")]
        tests: Option<PathBuf>,
    },
    /// What the proxy would do with one request, and why.
    Explain {
        /// The config file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// The request comes from this [[client]].
        #[arg(long, value_name = "NAME", conflicts_with = "from")]
        client: Option<String>,
        /// The request comes from this address (identified by cidrs).
        #[arg(long, value_name = "IP")]
        from: Option<std::net::IpAddr>,
        /// A request header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// The request method, e.g. GET.
        method: String,
        /// The URL, e.g. https://storage.googleapis.com/storage/v1/b/x/o.
        url: String,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a CA (ECDSA P-256): ca.pem and an owner-only ca-key.pem.
    Init {
        /// Directory for ca.pem and ca-key.pem.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
        /// A domain the CA may sign for (itself and every name under it);
        /// repeat for several. Default: googleapis.com, run.app,
        /// cloudfunctions.net.
        #[arg(long = "permit", value_name = "DOMAIN")]
        permit: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let quiet = matches!(cli.command, Command::Demo { .. } | Command::Token { .. });
    // The demo's table is for reading: its warnings go to a file it names,
    // not between the rows.
    let demo_log = matches!(cli.command, Command::Demo { .. }).then(demo_log_path);
    init_logging(
        if quiet { "warn" } else { "info" },
        cli.log_format,
        demo_log.as_deref(),
    );
    match cli.command {
        Command::Ca {
            command: CaCommand::Init { dir, force, permit },
        } => ca_init(&dir, force, &permit),
        Command::Check {
            config,
            live,
            tests: None,
        } => check(&config, live),
        Command::Check {
            config,
            tests: Some(tests),
            ..
        } => policy_tests(&config, &tests),
        Command::Explain {
            config,
            client,
            from,
            headers,
            method,
            url,
        } => explain(&config, client, from, &headers, method, url),
        Command::Run {
            config: Some(config),
            ..
        } => match load(&config) {
            Ok(cfg) => run(cfg, Some(config)),
            Err(code) => code,
        },
        Command::Run {
            impersonate,
            listen,
            ..
        } => run(zero_config(impersonate.unwrap_or_default(), listen), None),
        Command::Demo { listen } => demo(listen),
        Command::Token {
            impersonate,
            delegates,
            scopes,
            lifetime,
            id_token,
            access_boundary,
            sign_blob,
            sign_jwt,
            subject,
            config,
        } => {
            let mode = match (id_token, sign_blob, sign_jwt, subject) {
                (Some(aud), ..) => TokenMode::IdToken(aud),
                (_, Some(file), ..) => TokenMode::SignBlob(file),
                (_, _, Some(file), _) => TokenMode::SignJwt(file),
                (.., Some(user)) => TokenMode::Subject(user),
                _ => TokenMode::Access,
            };
            token(
                &impersonate,
                &delegates,
                &scopes,
                &lifetime,
                mode,
                access_boundary.as_deref(),
                config.as_deref(),
            )
        }
    }
}

/// Logs go to stderr, or appended to `file` (falling back to stderr if
/// it cannot be opened).
fn init_logging(default: &str, format: LogFormat, file: Option<&Path>) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let file = file.and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    // Colour only for a person at a terminal: never in pipes, files or
    // journald.
    let (writer, ansi) = match file {
        Some(f) => (BoxMakeWriter::new(std::sync::Mutex::new(f)), false),
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(code)
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| fail(2, e))
}

fn ca_init(dir: &Path, force: bool, permit: &[String]) -> ExitCode {
    let permitted: Vec<&str> = if permit.is_empty() {
        ca::DEFAULT_PERMITTED.to_vec()
    } else {
        permit.iter().map(String::as_str).collect()
    };
    match ca::init_permitting(dir, force, &permitted) {
        Ok((cert, key)) => {
            let cert = std::fs::canonicalize(&cert).unwrap_or(cert);
            let c = cert.display();
            println!("Created CA certificate {c}");
            println!(
                "and its key {} (readable by you only; keep it secret).",
                key.display()
            );
            println!(
                "It can sign certificates only for names under {} (X.509 name constraints; change with --permit).",
                permitted.join(", ")
            );
            println!();
            println!("Trust it in the clients that go through the proxy:");
            println!("  curl:                   curl --cacert {c} -x http://127.0.0.1:8080 https://storage.googleapis.com/...");
            println!("  Python requests:        export REQUESTS_CA_BUNDLE={c}");
            println!("  gRPC (C-core, grpc-js): export GRPC_DEFAULT_SSL_ROOTS_FILE_PATH={c}");
            println!("  Node.js:                export NODE_EXTRA_CA_CERTS={c}");
            println!("  gcloud:                 gcloud config set core/custom_ca_certs_file {c}");
            println!("  OpenSSL/Go/most:        export SSL_CERT_FILE={c}   (replaces the system roots for that process)");
            println!();
            println!("Proxy variables: set both cases (HTTPS_PROXY and https_proxy, NO_PROXY and no_proxy);");
            println!("gRPC clients (grpc-js, C-core) read only the lower-case ones. `run` prints them all.");
            ExitCode::SUCCESS
        }
        Err(e @ (ca::CaError::Exists { .. } | ca::CaError::BadPermit { .. })) => fail(2, e),
        Err(e) => fail(1, e),
    }
}

fn check(path: &Path, live: bool) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let checked = match impersonate_proxy::policy::check(&cfg) {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    if let Err(e) = impersonate_proxy::proxy::check_listeners(&cfg) {
        return fail(2, e);
    }
    println!("{}: ok", path.display());
    println!("listen     {}", cfg.proxy.listen);
    if let Some(a) = cfg.proxy.tls_listen {
        println!("tls_listen {a}");
    }
    if let Some(a) = cfg.proxy.transparent_listen {
        println!("transparent_listen {a}");
    }
    if !cfg.proxy.proxy_protocol_from.is_empty() {
        println!(
            "proxy_protocol_from {}",
            cfg.proxy.proxy_protocol_from.join(", ")
        );
    }
    println!(
        "ca         {} / {}",
        cfg.ca.cert.display(),
        cfg.ca.key.display()
    );
    println!("intercept  {}", cfg.intercept.hosts.join(", "));
    println!("other      {:?}", cfg.intercept.other);
    println!("source     {:?}", cfg.source.kind);
    for (host, addr) in &cfg.upstream.resolve {
        println!("resolve    {host} -> {addr}");
    }
    if let Some(parent) = &cfg.upstream.proxy {
        let auth = match &cfg.upstream.proxy_auth {
            Some(a) => format!(" (Basic as {})", a.user),
            None => String::new(),
        };
        println!("parent     {parent}{auth}");
        if !cfg.upstream.no_proxy.is_empty() {
            println!("no_proxy   {}", cfg.upstream.no_proxy.join(", "));
        }
    }
    let rules = checked.rules;
    if rules.is_empty() {
        println!("routes     none: every intercepted request is denied (403) until a [[route]] matches it");
    } else {
        println!("routes     (first match wins)");
        for (i, rule) in rules.iter().enumerate() {
            println!("  {:>3}. {rule}", i + 1);
        }
    }
    if live {
        return check_live(&cfg, &rules);
    }
    ExitCode::SUCCESS
}

/// `check --live`: every route's token minted once.
fn check_live(cfg: &Config, rules: &[impersonate_proxy::policy::routes::RuleSpec]) -> ExitCode {
    use impersonate_proxy::google::{preflight, AdcEnv, Minter, SourceCredential};
    use impersonate_proxy::policy::routes::ActionSpec;
    let routes: Vec<_> = rules
        .iter()
        .filter_map(|r| match &r.action {
            ActionSpec::Inject { request, .. } => Some((r.name.clone(), request.clone())),
            _ => None,
        })
        .collect();
    let env = AdcEnv::from_process();
    let source = match SourceCredential::from_config(&cfg.source, &env) {
        Ok(s) => s,
        Err(e) => return fail(1, format!("source credential: {e}")),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let checks = rt.block_on(async {
        let minter = Minter::from_config(cfg, &env)?;
        Ok::<_, impersonate_proxy::google::CredentialError>(
            preflight::run(&minter, &source, routes).await,
        )
    });
    let checks = match checks {
        Ok(c) => c,
        Err(e) => return fail(1, e),
    };
    println!(
        "\nlive: minting each route's token once ({})",
        source.describe()
    );
    print!("{}", preflight::Table(&checks));
    let boundaries_ok = rt.block_on(check_live_boundaries(cfg, rules));
    if checks.iter().all(preflight::RouteCheck::ok) && boundaries_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `check --live` for routes with a fixed `access_boundary`: their token
/// exchanged once at STS (a `{bucket}` route's boundary depends on the
/// request, so only its base token is checked). Whether all succeeded.
async fn check_live_boundaries(
    cfg: &Config,
    rules: &[impersonate_proxy::policy::routes::RuleSpec],
) -> bool {
    use impersonate_proxy::google::{AdcEnv, Minter};
    use impersonate_proxy::policy::routes::ActionSpec;
    let fixed: Vec<_> = rules
        .iter()
        .filter_map(|r| match &r.action {
            ActionSpec::Inject {
                request,
                boundary: Some(b),
                ..
            } if !b.per_bucket() => Some((&r.name, request, b.render(""))),
            _ => None,
        })
        .collect();
    if fixed.is_empty() {
        return true;
    }
    let minter = match Minter::from_config(cfg, &AdcEnv::from_process()) {
        Ok(m) => m,
        Err(e) => {
            println!("\nlive: access boundaries not checked: {e}");
            return false;
        }
    };
    println!("\nlive: exchanging each access_boundary route's token at STS once");
    let mut ok = true;
    for (route, request, boundary) in fixed {
        let result = match minter.mint_token(request).await {
            Ok(base) => minter.downscope_token(request, &base, &boundary).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(t) => println!(
                "  {route}  {}  ok, expires in {}s",
                boundary.resources(),
                t.expires_in().as_secs()
            ),
            Err(e) => {
                ok = false;
                println!("  {route}  {}  FAILED: {e}", boundary.resources());
            }
        }
    }
    ok
}

/// The config, checked, and its route table with slots that never mint.
fn policy_of(
    path: &Path,
) -> Result<(Config, impersonate_proxy::policy::Checked, RouteTable), ExitCode> {
    let cfg = load(path)?;
    let checked = impersonate_proxy::policy::check(&cfg).map_err(|e| fail(2, e))?;
    let table = RouteTable::build(&checked.rules, &impersonate_proxy::policy::Unminted);
    Ok((cfg, checked, table))
}

/// `check --tests`: 0 all pass, 1 a decision differs, 2 a bad file.
fn policy_tests(config: &Path, tests: &Path) -> ExitCode {
    let (cfg, checked, table) = match policy_of(config) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let text = match std::fs::read_to_string(tests) {
        Ok(t) => t,
        Err(e) => return fail(2, format!("cannot read {}: {e}", tests.display())),
    };
    let file = match cases::parse(&text) {
        Ok(f) => f,
        Err(e) => return fail(2, format!("{}: {e}", tests.display())),
    };
    let results = match cases::run(&cfg, &checked.rules, &table, &file) {
        Ok(r) => r,
        Err(e) => return fail(2, format!("{}: {e}", tests.display())),
    };
    let failed = results.iter().filter(|r| !r.diffs.is_empty()).count();
    for r in &results {
        if r.diffs.is_empty() {
            println!("ok    {}", r.title);
        } else {
            println!("FAIL  {}", r.title);
            for d in &r.diffs {
                println!("        {d}");
            }
        }
    }
    println!(
        "{} cases: {} passed, {failed} failed",
        results.len(),
        results.len() - failed
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn explain(
    config: &Path,
    client: Option<String>,
    from: Option<std::net::IpAddr>,
    headers: &[String],
    method: String,
    url: String,
) -> ExitCode {
    let (cfg, checked, table) = match policy_of(config) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut pairs = Vec::with_capacity(headers.len());
    for h in headers {
        match h.split_once(':') {
            Some((n, v)) => pairs.push((n.trim().to_owned(), v.trim().to_owned())),
            None => return fail(2, format!("-H `{h}`: write it as `Name: value`")),
        }
    }
    let who = match (client, from) {
        (Some(n), _) => Who::Client(n),
        (None, Some(ip)) => Who::Addr(ip),
        (None, None) => Who::Anonymous,
    };
    let facts = Facts {
        method,
        url,
        who,
        headers: pairs,
    };
    let d = match impersonate_proxy::policy::explain::explain(&cfg, &checked.rules, &table, &facts)
    {
        Ok(d) => d,
        Err(e) => return fail(2, e),
    };
    print!("{}", render(&d));
    ExitCode::SUCCESS
}

/// `explain`'s report.
fn render(d: &Decision) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(o, "host       {}", or_dash(&d.host));
    let _ = writeln!(o, "path       {}", or_dash(&d.path));
    let _ = writeln!(o, "method     {}", or_dash(&d.method));
    let _ = writeln!(
        o,
        "client     {}",
        d.client.as_deref().unwrap_or("(anonymous)")
    );
    if !d.candidates.is_empty() {
        let _ = writeln!(o, "routes     (in order; first match wins)");
        for (i, c) in d.candidates.iter().enumerate() {
            let mark = if d.route.as_deref() == Some(c.route.as_str()) {
                "WINNER"
            } else if d.would_deny.contains(&c.route) {
                "REPORT"
            } else if c.matched {
                "match "
            } else {
                "no    "
            };
            let _ = writeln!(o, "  {:>3}. {mark} {:<20} {}", i + 1, c.route, c.reason);
        }
    }
    for r in &d.would_deny {
        let _ = writeln!(
            o,
            "would_deny route \"{r}\" (enforce = false): audited and counted, then the next matching route decides"
        );
    }
    let _ = writeln!(o, "route      {}", d.route.as_deref().unwrap_or("none"));
    let _ = writeln!(o, "action     {}", d.action);
    if let Some(s) = &d.slot {
        let _ = writeln!(o, "token      {}", s.kind);
        let _ = writeln!(o, "  target     {}", s.target);
        let delegates = if s.delegates.is_empty() {
            "(none)".to_owned()
        } else {
            s.delegates.join(" -> ")
        };
        let _ = writeln!(o, "  delegates  {delegates}");
        if !s.scopes.is_empty() {
            let _ = writeln!(o, "  scopes     {}", s.scopes.join(", "));
        }
        if let Some(l) = s.lifetime {
            let _ = writeln!(o, "  lifetime   {l}s");
        }
        if let Some(a) = &s.audience {
            let _ = writeln!(o, "  audience   {a}");
        }
        if let Some(b) = &s.boundary {
            let _ = writeln!(o, "  boundary   {b}");
        }
    }
    match (d.status, &d.message) {
        (Some(s), Some(m)) => {
            let _ = writeln!(o, "result     {s} {m}");
        }
        _ => {
            let _ = writeln!(o, "result     forwarded");
        }
    }
    o
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(1, format!("cannot start the async runtime: {e}")))
}

/// `run --impersonate SA`: ADC source, one route for every Google API
/// host, the CA under certs/.
fn zero_config(sa: String, listen: std::net::SocketAddr) -> Config {
    use impersonate_proxy::config::RouteConfig;
    let mut cfg = Config::default();
    cfg.proxy.listen = listen;
    let route = |name: &str, hosts: &str| RouteConfig {
        name: name.into(),
        hosts: vec![hosts.into()],
        path_prefix: None,
        methods: vec![],
        clients: vec![],
        impersonate: None,
        delegates: vec![],
        scopes: vec![],
        lifetime: None,
        refresh: true,
        subject: None,
        quota_project: None,
        id_token: None,
        sign_as: None,
        allow_token_assertions: false,
        access_boundary: None,
        action: None,
        authorization: Default::default(),
        warm: false,
        enforce: true,
        audit: None,
    };
    // Signed URLs: google-cloud-storage on metadata credentials signs
    // through IAM signBlob as the account the metadata server names.
    cfg.routes.push(RouteConfig {
        sign_as: Some(sa.clone()),
        ..route("sign-as", "iamcredentials.googleapis.com")
    });
    cfg.routes.push(RouteConfig {
        impersonate: Some(sa.clone()),
        warm: true,
        ..route("impersonate", "*.googleapis.com")
    });
    // ADC clients (gcloud, client libraries, Terraform) get a placeholder
    // from GCE_METADATA_HOST that the route above replaces.
    cfg.metadata.enabled = true;
    cfg.metadata.service_account = Some(sa);
    cfg
}

fn run(cfg: Config, path: Option<PathBuf>) -> ExitCode {
    if let Err(e) = impersonate_proxy::policy::check(&cfg) {
        return fail(2, e);
    }
    raise_open_files(cfg.limits.max_connections);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let proxy = match Proxy::bind(&cfg).await {
            Ok(p) => p,
            Err(e) if e.is_config() => return fail(2, e),
            Err(e) => return fail(1, e),
        };
        let proxy = match path {
            Some(p) => proxy.with_config_file(p),
            None => proxy,
        };
        let addr = proxy.local_addr();
        eprintln!("impersonate-proxy listening on http://{addr}");
        if let Some(admin) = proxy.admin_addr() {
            eprintln!("admin endpoint on http://{admin} (/healthz /readyz /metrics, POST /reload)");
        }
        reload_on_sighup(proxy.reloader());
        reopen_on_sigusr1(proxy.log_reopener());
        print_exports(addr, &cfg);
        if cfg.metadata.enabled
            && std::env::var("GCE_METADATA_HOST").is_ok_and(|h| h == addr.to_string())
        {
            eprintln!("warning: GCE_METADATA_HOST in this shell points at this proxy: an adc or metadata [source] would ask the proxy itself for its token; export it only in the shell of the program to proxy");
        }
        match proxy.serve(shutdown_signal()).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(1, e),
        }
    })
}

/// Descriptors the proxy needs besides one per client connection: the
/// listeners, upstream connections, the audit file, the config watcher.
const OPEN_FILES_MARGIN: u64 = 1024;

/// Raises the soft open-files limit to the hard one: every client
/// connection is a descriptor (a spliced tunnel two), and the usual soft
/// limit of 1,024 would refuse clients long before
/// `limits.max_connections`. Says so when even the hard limit is short.
fn raise_open_files(max_connections: usize) {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit");
            return;
        }
    };
    let needed = (max_connections as u64).saturating_add(OPEN_FILES_MARGIN);
    if soft < needed {
        tracing::warn!(
            open_files = soft,
            max_connections,
            needed,
            "the open-files limit (the hard `ulimit -n`) is below limits.max_connections + {OPEN_FILES_MARGIN}: clients beyond it will fail to connect; raise it (systemd LimitNOFILE=, docker --ulimit nofile=, or the container runtime's default) or lower limits.max_connections"
        );
    } else {
        tracing::debug!(open_files = soft, "open-files limit");
    }
}

/// The lines a user pastes into the shell of the program to proxy, ended
/// by an empty line. Proxy variables come in both cases: curl, Python,
/// Go, gcloud and the Node libraries' agents read either, but gRPC
/// (grpc-js, and C-core under Python, Ruby, PHP) reads only `https_proxy`
/// and `no_proxy`, and would otherwise resolve and call Google itself.
fn print_exports(addr: std::net::SocketAddr, cfg: &Config) {
    let ca = &cfg.ca.cert;
    let ca = std::fs::canonicalize(ca).unwrap_or_else(|_| ca.to_owned());
    let ca = ca.display();
    println!("# Paste into the shell of the program to run through the proxy");
    println!("# (both cases: gRPC reads only https_proxy and no_proxy):");
    println!("export HTTPS_PROXY=http://{addr}");
    println!("export https_proxy=http://{addr}");
    println!("export REQUESTS_CA_BUNDLE={ca}");
    println!("export GRPC_DEFAULT_SSL_ROOTS_FILE_PATH={ca}");
    println!("export NODE_EXTRA_CA_CERTS={ca}");
    println!("export CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE={ca}");
    println!("export SSL_CERT_FILE={ca}");
    if cfg.metadata.enabled {
        // GCE_METADATA_IP: google-auth (Python) and gcloud probe it to
        // decide they are on GCE; GCE_METADATA_ROOT: gcloud.
        println!("export GCE_METADATA_HOST={addr}");
        println!("export GCE_METADATA_IP={addr}");
        println!("export GCE_METADATA_ROOT={addr}");
        // Node's proxy agents would CONNECT to the metadata address too.
        println!("export NO_PROXY={}", addr.ip());
        println!("export no_proxy={}", addr.ip());
    }
    println!();
}

/// Where `demo` writes its warnings: beside its work dir, so that they
/// outlive it.
fn demo_log_path() -> PathBuf {
    impersonate_proxy::demo::DemoOptions::default()
        .dir
        .with_extension("log")
}

fn demo(listen: std::net::SocketAddr) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let log_file = demo_log_path();
    let opts = impersonate_proxy::demo::DemoOptions {
        listen,
        log_file: log_file.exists().then_some(log_file),
        ..Default::default()
    };
    match rt.block_on(async { impersonate_proxy::demo::run(opts, shutdown_signal()).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, e),
    }
}

/// What `token` prints.
enum TokenMode {
    Access,
    IdToken(String),
    SignBlob(PathBuf),
    SignJwt(PathBuf),
    Subject(String),
}

fn token(
    sa: &str,
    delegates: &[String],
    scopes: &[String],
    lifetime: &str,
    mode: TokenMode,
    access_boundary: Option<&Path>,
    config: Option<&Path>,
) -> ExitCode {
    use impersonate_proxy::google::{downscope_once, mint_once, AccessBoundary, TokenRequest};
    let boundary = match access_boundary {
        None => None,
        Some(p) => match std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|t| AccessBoundary::from_json(&t))
        {
            Ok(b) => Some(b),
            Err(e) => return fail(2, format!("--access-boundary {}: {e}", p.display())),
        },
    };
    let cfg = match config {
        Some(p) => match load(p) {
            Ok(c) => c,
            Err(code) => return code,
        },
        None => Config::default(),
    };
    let request = match mode {
        TokenMode::IdToken(aud) => TokenRequest::id_token(sa, delegates, &aud),
        TokenMode::Subject(user) => TokenRequest::delegated(sa, delegates, &user, scopes),
        TokenMode::SignBlob(file) => {
            let blob = match std::fs::read(&file) {
                Ok(b) => b,
                Err(e) => return fail(2, format!("--sign-blob {}: {e}", file.display())),
            };
            return sign_once(&cfg, sa, delegates, SignInput::Blob(blob));
        }
        TokenMode::SignJwt(file) => {
            let claims = match std::fs::read(&file)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    serde_json::from_slice::<serde_json::Value>(&b)
                        .map_err(|e| format!("not JSON: {e}"))
                        .and_then(|v| {
                            if v.is_object() {
                                Ok(v)
                            } else {
                                Err("not a JSON object of claims".to_owned())
                            }
                        })
                }) {
                Ok(c) => c,
                Err(e) => return fail(2, format!("--sign-jwt {}: {e}", file.display())),
            };
            return sign_once(&cfg, sa, delegates, SignInput::Jwt(claims));
        }
        TokenMode::Access => match impersonate_proxy::config::parse_duration(lifetime) {
            Ok(d) => TokenRequest::access_token(sa, delegates, scopes, d),
            Err(m) => return fail(2, format!("--lifetime: {m}")),
        },
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => return fail(2, e),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let minted = match &boundary {
        Some(b) => rt.block_on(downscope_once(&cfg, &request, b)),
        None => rt.block_on(mint_once(&cfg, &request)),
    };
    match minted {
        Ok(token) => {
            println!("{}", token.expose_secret());
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    }
}

enum SignInput {
    Blob(Vec<u8>),
    Jwt(serde_json::Value),
}

/// `token --sign-blob` / `--sign-jwt`: one IAM call with the source
/// credential from `cfg`.
fn sign_once(cfg: &Config, sa: &str, delegates: &[String], input: SignInput) -> ExitCode {
    use impersonate_proxy::google::{AdcEnv, Minter};
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let target = match impersonate_proxy::google::TokenRequest::access_token(
        sa,
        delegates,
        &[],
        std::time::Duration::from_secs(3600),
    ) {
        Ok(r) => r,
        Err(e) => return fail(2, e),
    };
    let signed = rt.block_on(async {
        let minter = Minter::from_config(cfg, &AdcEnv::from_process())?;
        match &input {
            SignInput::Blob(b) => {
                minter
                    .sign_blob(target.target_principal(), target.delegates(), b)
                    .await
            }
            SignInput::Jwt(c) => {
                minter
                    .sign_jwt(target.target_principal(), target.delegates(), c)
                    .await
            }
        }
    });
    match (signed, input) {
        (Ok(s), SignInput::Blob(_)) => {
            println!("keyId: {}", s.key_id);
            println!("signature: {}", s.signature);
            ExitCode::SUCCESS
        }
        (Ok(s), SignInput::Jwt(_)) => {
            println!("{}", s.signature);
            ExitCode::SUCCESS
        }
        (Err(e), _) => fail(1, e),
    }
}

/// Reloads the config on every SIGHUP.
fn reload_on_sighup(reloader: impersonate_proxy::Reloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                // reload() logs the outcome itself.
                let _ = reloader.reload();
            }
        });
    }
    #[cfg(not(unix))]
    let _ = reloader;
}

/// Reopens the audit file on every SIGUSR1 (logrotate).
fn reopen_on_sigusr1(reopener: impersonate_proxy::LogReopener) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
            return;
        };
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                match reopener.reopen() {
                    Ok(()) => tracing::info!("audit file reopened"),
                    Err(e) => {
                        tracing::warn!(error = %e, "audit file not reopened; still writing to the old one")
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = reopener;
}

/// Completes on Ctrl-C or SIGTERM. The SIGTERM handler is installed when
/// this is called (inside the runtime), not when the future is first
/// polled: the workers answer clients before `serve` awaits the signal,
/// and a SIGTERM in between would otherwise kill the process instead of
/// draining it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        {
            let Some(mut term) = term else {
                let _ = tokio::signal::ctrl_c().await;
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
