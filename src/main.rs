//! The command line: parse, load the config, start, map errors to exit
//! codes (0 ok, 1 runtime failure, 2 bad config or usage).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use impersonate_proxy::{ca, Config, Proxy};

#[derive(Parser)]
#[command(
    name = "impersonate-proxy",
    version,
    about = "Call Google APIs as another service account, through a local proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the proxy.
    Run {
        /// The config file (TOML).
        #[arg(long)]
        config: PathBuf,
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
    init_logging();
    match cli.command {
        Command::Ca {
            command: CaCommand::Init { dir, force },
        } => ca_init(&dir, force),
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(code)
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| fail(2, e))
}

fn ca_init(dir: &Path, force: bool) -> ExitCode {
    match ca::init(dir, force) {
        Ok((cert, key)) => {
            let cert = std::fs::canonicalize(&cert).unwrap_or(cert);
            let c = cert.display();
            println!("Created CA certificate {c}");
            println!(
                "and its key {} (readable by you only; keep it secret).",
                key.display()
            );
            println!();
            println!("Trust it in the clients that go through the proxy:");
            println!("  curl:            curl --cacert {c} -x http://127.0.0.1:8080 https://storage.googleapis.com/...");
            println!("  Python requests: export REQUESTS_CA_BUNDLE={c}");
            println!("  gRPC (C-core):   export GRPC_DEFAULT_SSL_ROOTS_FILE_PATH={c}");
            println!("  Node.js:         export NODE_EXTRA_CA_CERTS={c}");
            println!("  gcloud:          gcloud config set core/custom_ca_certs_file {c}");
            println!("  OpenSSL/Go/most: export SSL_CERT_FILE={c}   (replaces the system roots for that process)");
            ExitCode::SUCCESS
        }
        Err(e @ ca::CaError::Exists { .. }) => fail(2, e),
        Err(e) => fail(1, e),
    }
}

fn check(path: &Path) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!("{}: ok", path.display());
    println!("listen     {}", cfg.proxy.listen);
    println!(
        "ca         {} / {}",
        cfg.ca.cert.display(),
        cfg.ca.key.display()
    );
    println!("intercept  {}", cfg.intercept.hosts.join(", "));
    println!("other      {:?}", cfg.intercept.other);
    for (host, addr) in &cfg.upstream.resolve {
        println!("resolve    {host} -> {addr}");
    }
    ExitCode::SUCCESS
}

fn run(path: &Path) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(1, format!("cannot start the async runtime: {e}")),
    };
    rt.block_on(async {
        let proxy = match Proxy::bind(&cfg).await {
            Ok(p) => p,
            Err(e) if e.is_config() => return fail(2, e),
            Err(e) => return fail(1, e),
        };
        eprintln!(
            "impersonate-proxy listening on http://{}",
            proxy.local_addr()
        );
        proxy.serve(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
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
