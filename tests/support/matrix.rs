//! The world a real client meets in the client matrix: the emulator
//! standing in for Google, the proxy *binary* configured for it with the
//! metadata endpoint on, the export block that `run` prints, and client
//! processes started with that block as their whole configuration (plus
//! `PATH` and a fresh `HOME`). Also: where the pinned client libraries are
//! installed (`tests/clients/install`), and skipping a test whose runtime
//! (node, python3, gcloud) is not on the machine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use impersonate_proxy::emulator::{Emulator, EmulatorOptions, HOSTS};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{tempdir, TempDir};

/// The account the proxy impersonates for every Google API request, and
/// the metadata endpoint's "default" account.
pub const TARGET: &str = "matrix-target@emulator-project.iam.gserviceaccount.com";
/// The proxy's source credential (a key the emulator knows).
pub const SOURCE: &str = "matrix-source@emulator-project.iam.gserviceaccount.com";
/// The project of [`TARGET`], which clients learn from the metadata endpoint.
pub const PROJECT: &str = "emulator-project";

/// How long one client may run before it is killed and the test fails.
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

/// `tests/clients/`, where the client programs and their libraries live.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Installs the pinned client libraries (`tests/clients/install`) once per
/// test process, so that `cargo test` alone sets up a fresh machine; the
/// script does nothing while what it installed matches the lock files. It
/// runs outside the network namespaces (they have no network). If it
/// fails, the tests that need the libraries fail with the fix.
pub fn install_clients() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let script = clients_dir().join("install");
        match std::process::Command::new(&script).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("{} could not run: {e}", script.display()),
        }
    });
}

/// Whether `program --version` runs: the runtime is on this machine.
pub fn runtime_present(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Skips (returns false, saying why on stderr) when `program` is absent.
pub fn require_runtime(program: &str, test: &str) -> bool {
    if runtime_present(program) {
        return true;
    }
    eprintln!("SKIPPED {test}: `{program}` is not installed on this machine, so this client cannot be tested here");
    false
}

/// Fails with the fix when the runtime is there but the pinned libraries
/// are not installed.
pub fn require_installed(path: &Path) {
    assert!(
        path.exists(),
        "{} is missing: install the pinned client libraries with `tests/clients/install` (CI's .ci/run does)",
        path.display()
    );
}

/// A multi-threaded runtime for a test body (the tests are plain `#[test]`s
/// so that they can run themselves again inside a namespace).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The emulator and the proxy binary in front of it.
pub struct World {
    pub emu: Emulator,
    /// The proxy listener.
    pub addr: SocketAddr,
    /// The block `run` printed, as (name, value) in order.
    pub exports: Vec<(String, String)>,
    proxy: tokio::process::Child,
    dir: TempDir,
}

/// A client's exit status and output.
pub struct ClientRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl ClientRun {
    /// The JSON object the client printed last, failing with its output if
    /// it did not succeed.
    pub fn json(&self) -> serde_json::Value {
        assert!(
            self.success,
            "the client failed:\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        let last = self.stdout.lines().rev().find(|l| l.starts_with('{'));
        serde_json::from_str(last.unwrap_or_default()).unwrap_or_else(|e| {
            panic!(
                "the client printed no JSON result ({e}):\n{}\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl World {
    /// Starts the emulator, writes a config for it (source key, CA,
    /// `[upstream]`, the metadata endpoint as `TARGET`, one route sending
    /// every Google API request as `TARGET`), runs the proxy binary with it
    /// and reads the export block it prints.
    pub async fn start(name: &str) -> World {
        World::start_with_routes(name, "").await
    }

    /// [`World::start`] with `routes` (TOML) ahead of the route that
    /// sends everything as `TARGET`.
    pub async fn start_with_routes(name: &str, routes: &str) -> World {
        let dir = tempdir(&format!("matrix-{name}"));
        let emu = Emulator::start(EmulatorOptions {
            dir: Some(dir.join("emulator")),
            ..Default::default()
        })
        .await
        .unwrap();
        let key = emu.write_service_account_key(&dir, SOURCE).unwrap();
        emu.grant_token_creator(SOURCE, TARGET);
        impersonate_proxy::ca::init(&dir.join("certs"), false).unwrap();
        let mut resolve = String::new();
        for h in HOSTS {
            resolve.push_str(&format!("\"{h}\" = \"{}\"\n", emu.addr()));
        }
        let config = format!(
            r#"[proxy]
listen = "127.0.0.1:0"
drain_timeout = "1s"

[ca]
cert = "certs/ca.pem"
key = "certs/ca-key.pem"

[source]
type = "service_account"
file = "{key}"

[upstream]
extra_ca = ["{emu_ca}"]

[upstream.resolve]
{resolve}
[audit]
file = "audit.jsonl"

[metadata]
enabled = true
service_account = "{TARGET}"
numeric_project_id = "123456789012"
{routes}
[[route]]
name = "impersonate"
hosts = ["*.googleapis.com"]
impersonate = "{TARGET}"
"#,
            key = key.display(),
            emu_ca = emu.ca_pem_path().display(),
        );
        std::fs::write(dir.join("proxy.toml"), config).unwrap();
        std::fs::create_dir_all(dir.join("home")).unwrap();
        let mut proxy = tokio::process::Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
            .args(["run", "--config"])
            .arg(dir.join("proxy.toml"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.join("home"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the proxy binary starts");
        let stdout = proxy.stdout.take().unwrap();
        let block = tokio::time::timeout(Duration::from_secs(30), read_block(stdout))
            .await
            .expect("the proxy prints its export block within 30 s");
        let exports = parse_exports(&block);
        let addr = exports
            .iter()
            .find(|(k, _)| k == "GCE_METADATA_HOST")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("no GCE_METADATA_HOST in the block:\n{block}"));
        World {
            emu,
            addr,
            exports,
            proxy,
            dir,
        }
    }

    /// The test's directory (removed when the world is dropped).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs a client with the printed block as its environment (only the
    /// names `keep` accepts), plus `PATH`, a fresh `HOME` and `extra`.
    pub async fn run_client_with(
        &self,
        program: &Path,
        args: &[&str],
        keep: impl Fn(&str) -> bool,
        extra: &[(&str, &Path)],
    ) -> ClientRun {
        let home = self.dir.join("home");
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .current_dir(&*self.dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .envs(
                self.exports
                    .iter()
                    .filter(|(k, _)| keep(k))
                    .map(|(k, v)| (k, v)),
            )
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(CLIENT_DEADLINE, cmd.output()).await {
            Ok(out) => out.unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display())),
            Err(_) => panic!(
                "{} {args:?} did not finish within {CLIENT_DEADLINE:?}",
                program.display()
            ),
        };
        ClientRun {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// [`World::run_client_with`] with the whole printed block.
    pub async fn run_client(&self, program: &Path, args: &[&str]) -> ClientRun {
        self.run_client_with(program, args, |_| true, &[]).await
    }

    /// The audit records the proxy has written so far.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (under a deadline) for an audit record of a request to `host`
    /// that the route answered as `TARGET`, and returns how many there are.
    pub async fn audited_as_target(&self, host: &str) -> usize {
        let count = || {
            self.audit()
                .iter()
                .filter(|r| r["host"] == host && r["target_principal"] == TARGET)
                .count()
        };
        crate::support::eventually(Duration::from_secs(10), || async { count() > 0 }).await;
        count()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.proxy.start_kill();
    }
}

/// The lines from the block's header to the empty line that ends it.
async fn read_block(stdout: tokio::process::ChildStdout) -> String {
    let mut lines = BufReader::new(stdout).lines();
    let mut block = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.is_empty() && !block.is_empty() {
            break;
        }
        block.push_str(&line);
        block.push('\n');
    }
    block
}

/// `export NAME=VALUE` lines, as a shell would read them (no quoting is
/// printed, so none is parsed).
pub fn parse_exports(block: &str) -> Vec<(String, String)> {
    block
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
