//! The proxy under test, started in-process from a config the way a user
//! writes one, and the worlds around it: a local upstream, or the emulator
//! standing in for Google.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use impersonate_proxy::{Config, Proxy};

use crate::support::{tempdir, TempDir};
use crate::upstream::{start_upstream, upstream_certs, Seen};

/// A running proxy for tests: in this process (from [`start_proxy`]) or a
/// child process that a test started.
#[allow(dead_code)]
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub ca_pem: PathBuf,
    /// The proxy's config and CA, removed when the proxy is dropped.
    pub _dir: TempDir,
    pub shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<bool>>,
}

impl TestProxy {
    /// Sends the shutdown signal and waits for the drain to finish.
    #[allow(dead_code)]
    pub async fn stop(mut self) -> bool {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.done.take().unwrap().await.unwrap()
    }
}

/// Writes a CA into a fresh dir and returns a config using it, with the
/// listener on an ephemeral loopback port. `extra` is appended TOML.
pub fn config_with_ca(name: &str, extra: &str) -> (Config, TempDir) {
    config_with_proxy_keys(name, "", extra)
}

/// [`config_with_ca`] with more `[proxy]` keys (TOML lines).
#[allow(dead_code)]
pub fn config_with_proxy_keys(name: &str, proxy_keys: &str, extra: &str) -> (Config, TempDir) {
    let dir = tempdir(name);
    impersonate_proxy::ca::init(&dir.join("certs"), false).unwrap();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"5s\"\n{proxy_keys}\n[ca]\ncert = \"certs/ca.pem\"\nkey = \"certs/ca-key.pem\"\n{extra}"
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, &text).unwrap();
    (Config::load(&path).unwrap(), dir)
}

/// Starts `cfg` in this process; the proxy holds `dir` (its config) from
/// now on.
pub async fn start_proxy(cfg: Config, dir: TempDir) -> TestProxy {
    start_reloadable(cfg, dir).await.0
}

/// [`start_proxy`], with a handle that reloads `dir/proxy.toml` (the file
/// [`config_with_ca`] wrote) as SIGHUP would.
pub async fn start_reloadable(
    cfg: Config,
    dir: TempDir,
) -> (TestProxy, impersonate_proxy::Reloader) {
    let proxy = Proxy::bind(&cfg)
        .await
        .unwrap()
        .with_config_file(dir.join("proxy.toml"));
    let reloader = proxy.reloader();
    let addr = proxy.local_addr();
    let admin = proxy.admin_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        proxy
            .serve(async move {
                let _ = rx.await;
            })
            .await
            .expect("the proxy starts serving")
    });
    let proxy = TestProxy {
        addr,
        admin,
        ca_pem: cfg.ca.cert.clone(),
        _dir: dir,
        shutdown: Some(tx),
        done: Some(done),
    };
    (proxy, reloader)
}

/// A route that forwards every Google API request untouched: transport
/// tests are about the proxy, not credentials.
pub const PASSTHROUGH_ALL: &str =
    "[[route]]\nname = \"all\"\nhosts = [\"*.googleapis.com\"]\naction = \"passthrough\"\n";

/// A standard world: an upstream TLS server reachable as
/// `storage.googleapis.com` (and `other.googleapis.com`) through the
/// proxy's `[upstream.resolve]` and `extra_ca`.
#[allow(dead_code)]
pub struct World {
    pub proxy: TestProxy,
    pub seen: Arc<Seen>,
    /// The upstream's CA and certificate.
    _certs: TempDir,
}

/// A [`World`] whose config gets `extra` (TOML) appended.
#[allow(dead_code)]
pub async fn world(name: &str, extra: &str) -> World {
    world_with(name, "", "", extra).await
}

/// [`world`] with more `[proxy]` and `[upstream]` keys (TOML lines).
pub async fn world_with(name: &str, proxy_keys: &str, upstream_keys: &str, extra: &str) -> World {
    let certs_dir = tempdir(&format!("{name}-up"));
    let certs = upstream_certs(
        &certs_dir,
        &["storage.googleapis.com", "other.googleapis.com"],
    );
    let (upstream, seen) = start_upstream(Some(certs.server)).await;
    let toml = format!(
        "[upstream]\nextra_ca = [\"{}\"]\nresponse_timeout = \"5s\"\n{upstream_keys}\n[upstream.resolve]\n\"storage.googleapis.com\" = \"{upstream}\"\n\"other.googleapis.com\" = \"{upstream}\"\n{extra}\n{PASSTHROUGH_ALL}",
        certs.ca_pem.display()
    );
    let (cfg, dir) = config_with_proxy_keys(name, proxy_keys, &toml);
    let proxy = start_proxy(cfg, dir).await;
    World {
        proxy,
        seen,
        _certs: certs_dir,
    }
}

/// The source identity in emulator worlds.
pub const SOURCE_SA: &str = "caller@emulator-project.iam.gserviceaccount.com";

/// `[upstream]` TOML that sends the emulator's hosts to it and trusts its
/// CA: the same keys a user would write.
pub fn emulator_upstream_toml(
    emu: &impersonate_proxy::emulator::Emulator,
    extra_resolve: &str,
) -> String {
    let mut t = format!(
        "[upstream]\nextra_ca = [\"{}\"]\nresponse_timeout = \"10s\"\n[upstream.resolve]\n",
        emu.ca_pem_path().display()
    );
    for h in impersonate_proxy::emulator::HOSTS {
        t.push_str(&format!("\"{h}\" = \"{}\"\n", emu.addr()));
    }
    t.push_str(extra_resolve);
    t
}

/// A proxy whose source is a service-account key the emulator knows, with
/// `routes` (TOML) and the emulator behind it.
#[allow(dead_code)]
pub struct EmuWorld {
    pub emu: impersonate_proxy::emulator::Emulator,
    pub proxy: TestProxy,
    /// The emulator's CA and the source key.
    _emu_dir: TempDir,
}

/// An [`EmuWorld`]: the emulator, and a proxy configured for it with
/// `routes` and `extra_resolve` (`[upstream.resolve]` lines).
#[allow(dead_code)]
pub async fn emu_world(name: &str, routes: &str, extra_resolve: &str) -> EmuWorld {
    let (emu, key, dir) = emulator_with_key(name).await;
    let toml = format!(
        "[source]\ntype = \"service_account\"\nfile = \"{}\"\n{}\n{routes}",
        key.display(),
        emulator_upstream_toml(&emu, extra_resolve)
    );
    let (cfg, config_dir) = config_with_ca(name, &toml);
    let proxy = start_proxy(cfg, config_dir).await;
    EmuWorld {
        emu,
        proxy,
        _emu_dir: dir,
    }
}

/// The emulator, a service-account key for [`SOURCE_SA`] it knows, and the
/// directory both live in.
#[allow(dead_code)]
pub async fn emulator_with_key(
    name: &str,
) -> (impersonate_proxy::emulator::Emulator, PathBuf, TempDir) {
    let dir = tempdir(&format!("{name}-emu"));
    let emu = impersonate_proxy::emulator::Emulator::start(
        impersonate_proxy::emulator::EmulatorOptions {
            dir: Some(dir.to_path_buf()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let key = emu.write_service_account_key(&dir, SOURCE_SA).unwrap();
    (emu, key, dir)
}

/// A file holding `value`, readable by its owner only (as password files
/// must be).
#[allow(dead_code)]
pub fn owner_only_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, value).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    p
}
