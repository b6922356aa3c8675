//! The `impersonate-proxy` binary run as a child process, as a user or a
//! container runs it: signals, exit codes and the lines it logs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::proxy::TestProxy;
use crate::support::TempDir;

/// The binary as a child, with its proxy and admin addresses. The child
/// is killed if a test fails before it has exited.
pub struct Running {
    pub child: Child,
    pub proxy: TestProxy,
    pub admin: SocketAddr,
    logs: std::sync::mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Sends `sig` (as `kill` spells it: `-TERM`, `-HUP`, `-KILL`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Appends the log lines that came since the last call to `logs`.
    #[allow(dead_code)]
    pub fn collect_logs(&self, logs: &mut String) {
        for line in self.logs.try_iter() {
            logs.push_str(&line);
            logs.push('\n');
        }
    }
}

/// Runs the binary on `config`, which lives in `dir` with the CA under
/// `dir/certs`; the proxy holds `dir`.
#[allow(dead_code)]
pub fn run_binary(dir: TempDir, config: &Path) -> Running {
    let ca = dir.join("certs/ca.pem");
    run_binary_with_ca(dir, config, ca)
}

/// [`run_binary`] for a config whose CA is `ca_pem` (shared by several
/// processes, say).
pub fn run_binary_with_ca(dir: TempDir, config: &Path, ca_pem: PathBuf) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut proxy = None;
    let mut admin = None;
    while proxy.is_none() || admin.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("proxy started");
        if let Some(a) = line.split("listening on http://").nth(1) {
            proxy = Some(a.trim().parse::<SocketAddr>().unwrap());
        }
        if let Some(a) = line.split("admin endpoint on http://").nth(1) {
            admin = a.split_whitespace().next().and_then(|a| a.parse().ok());
        }
    }
    Running {
        child,
        proxy: TestProxy {
            addr: proxy.unwrap(),
            admin,
            ca_pem,
            _dir: dir,
            shutdown: None,
            done: None,
        },
        admin: admin.unwrap(),
        logs: rx,
    }
}
