//! `[proxy] watch_config`: reload when the config file, or a password file
//! it names, changes, with the same validation and logs as SIGHUP.
//!
//! Kubernetes updates a ConfigMap (or Secret) volume without writing any
//! file in place: it writes a new timestamped directory, then renames a
//! symlink `..data` over the old one, and `proxy.toml` is itself a symlink
//! to `..data/proxy.toml`. So the watcher follows each path to the file
//! it names *now* and compares what it finds with the last look: the
//! resolved path, the inode, the size, the modification and change times.
//! That catches an in-place write, an editor's write-and-rename and the
//! symlink swap alike.
//!
//! It polls, once a second, instead of using inotify: a few `stat` calls
//! per second cost nothing measurable, need no dependency and no watch on
//! directories that Kubernetes deletes, and a reload a second late is
//! soon enough for a config change. A change is applied once the files
//! have held still for [`SETTLE`], so a file being written is read whole
//! and a burst of changes is one reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::control::ControlPlane;

/// How often the files are looked at.
const POLL: Duration = Duration::from_secs(1);
/// How long the files must stay unchanged before a reload reads them.
const SETTLE: Duration = Duration::from_millis(250);

/// Watches the config file of `control` (and the password files its
/// config names) until the task is aborted, reloading on every change.
pub(crate) async fn watch(control: Arc<ControlPlane>) {
    let Some(path) = control.config_path() else {
        tracing::warn!("[proxy] watch_config is set but the proxy was not started from a config file; nothing to watch");
        return;
    };
    let mut files = watched_files(&path, &control.started);
    tracing::info!(config = %path.display(), files = files.len(), "watching the config for changes");
    let mut seen = stamps(&files).await;
    loop {
        tokio::time::sleep(POLL).await;
        let now = stamps(&files).await;
        if now == seen {
            continue;
        }
        // Let a write (or a burst of them) finish before reading.
        let mut settled = now;
        loop {
            tokio::time::sleep(SETTLE).await;
            let again = stamps(&files).await;
            if again == settled {
                break;
            }
            settled = again;
        }
        tracing::info!(config = %path.display(), "config changed on disk; reloading");
        // reload() validates, swaps and logs the outcome, as for SIGHUP.
        let _ = control.reload();
        seen = settled;
        // The new config may name other password files.
        if let Ok(cfg) = Config::load(&path) {
            let now_watched = watched_files(&path, &cfg);
            if now_watched != files {
                files = now_watched;
                seen = stamps(&files).await;
            }
        }
    }
}

/// The config file and every `[[client]]` password file `cfg` names.
fn watched_files(config: &Path, cfg: &Config) -> Vec<PathBuf> {
    let mut files = vec![config.to_owned()];
    for c in &cfg.clients {
        if let Some(a) = &c.proxy_auth {
            if !files.contains(&a.password_file) {
                files.push(a.password_file.clone());
            }
        }
    }
    files
}

/// What a file looks like from outside; `None` when it cannot be read
/// (a reload would then fail and say why).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    /// The path with every symlink resolved: a ConfigMap update changes
    /// this (`..data` points at a new directory).
    resolved: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    /// Inode, device and change time, where the platform has them.
    #[cfg(unix)]
    inode: (u64, u64, i64, i64),
}

async fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    let files = files.to_vec();
    // stat may block (network file systems): off the event loop.
    tokio::task::spawn_blocking(move || files.iter().map(|f| stamp(f)).collect())
        .await
        .unwrap_or_default()
}

fn stamp(path: &Path) -> Option<Stamp> {
    let resolved = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&resolved).ok()?;
    Some(Stamp {
        resolved,
        len: meta.len(),
        modified: meta.modified().ok(),
        #[cfg(unix)]
        inode: {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lays out `dir` as the kubelet does: `..data` -> `name`, and
    /// `proxy.toml` -> `..data/proxy.toml`.
    #[cfg(unix)]
    fn configmap(dir: &Path, name: &str, text: &str) {
        let version = dir.join(name);
        std::fs::create_dir_all(&version).unwrap();
        std::fs::write(version.join("proxy.toml"), text).unwrap();
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(name, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        let link = dir.join("proxy.toml");
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("..data/proxy.toml", &link).unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_configmap_swap_changes_the_stamp_even_with_the_same_size() {
        let dir = std::env::temp_dir().join(format!("ip-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        configmap(&dir, "..2026_01", "a = 1\n");
        let path = dir.join("proxy.toml");
        let before = stamp(&path).unwrap();
        assert_eq!(stamp(&path), Some(before.clone()), "a look changes nothing");
        configmap(&dir, "..2026_02", "a = 2\n");
        let after = stamp(&path).unwrap();
        assert_ne!(before, after);
        assert!(
            after.resolved.ends_with("..2026_02/proxy.toml"),
            "{after:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(stamp(&path), None);
    }

    #[test]
    fn password_files_are_watched_once_each() {
        let cfg = Config::parse(
            Path::new("/etc/ip/proxy.toml"),
            "[[client]]\nname = \"a\"\nproxy_auth = { user = \"a\", password_file = \"pw\" }\n[[client]]\nname = \"b\"\nproxy_auth = { user = \"b\", password_file = \"pw\" }\n",
        )
        .unwrap();
        assert_eq!(
            watched_files(Path::new("/etc/ip/proxy.toml"), &cfg),
            [
                PathBuf::from("/etc/ip/proxy.toml"),
                PathBuf::from("/etc/ip/pw")
            ]
        );
    }
}
