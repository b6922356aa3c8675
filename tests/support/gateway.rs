//! The proxy as a gateway: started in this process with every listener's
//! address (`listen`, `tls_listen`, `transparent_listen`, admin), its
//! audit file, and curl run with no proxy from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use impersonate_proxy::{Config, Proxy};

use crate::support::{eventually, TempDir};

/// A proxy started in this process, with every listener's address.
#[allow(dead_code)]
pub struct Gateway {
    pub listen: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub transparent: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub ca_pem: PathBuf,
    /// `audit.jsonl` beside the config (set `[audit] file` to use it).
    pub audit: PathBuf,
    _dir: TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Binds `cfg` and serves it until the [`Gateway`] is dropped; it holds
/// `dir` (its config) from now on.
pub async fn start(cfg: Config, dir: TempDir) -> Gateway {
    let proxy = Proxy::bind(&cfg).await.unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let g = Gateway {
        listen: proxy.local_addr(),
        tls: proxy.tls_addr(),
        transparent: proxy.transparent_addr(),
        admin: proxy.admin_addr(),
        ca_pem: cfg.ca.cert.clone(),
        audit: dir.join("audit.jsonl"),
        _dir: dir,
        _stop: stop,
    };
    tokio::spawn(async move {
        let _ = proxy
            .serve(async move {
                let _ = rx.await;
            })
            .await;
    });
    g
}

#[allow(dead_code)]
impl Gateway {
    /// The audit records written so far.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until `n` records of requests whose path holds `path_part`
    /// are written, and returns those there are.
    pub async fn audited(&self, path_part: &str, n: usize) -> Vec<serde_json::Value> {
        let matching = || {
            self.audit()
                .into_iter()
                .filter(|r| r["path"].as_str().unwrap_or("").contains(path_part))
                .collect::<Vec<_>>()
        };
        eventually(Duration::from_secs(10), || async { matching().len() >= n }).await;
        matching()
    }
}

/// Runs curl with `args` and no proxy from the environment: success,
/// stdout and stderr.
#[allow(dead_code)]
pub async fn curl(args: &[&str]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "20"]).args(args);
    for v in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(v);
    }
    let out = cmd
        .output()
        .await
        .expect("curl is installed (.ci/run installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
