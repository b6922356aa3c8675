//! Helpers every behaviour test may need: a directory that is removed when
//! the test ends, and waiting for a condition under a deadline.
//!
//! The larger helpers sit beside this file, one concern each, and a test
//! binary mounts the ones it uses under these names, which is how they
//! refer to each other (`proxy` needs `upstream`, `client` needs `proxy`):
//!
//! ```ignore
//! mod support;
//! #[path = "support/upstream.rs"]
//! mod upstream; // local TLS servers standing in for Google API hosts
//! #[path = "support/proxy.rs"]
//! mod proxy; // the proxy started from a config, and the worlds around it
//! #[path = "support/client.rs"]
//! mod client; // CONNECT + TLS clients (HTTP/1.1 or h2), raw requests
//! #[path = "support/process.rs"]
//! mod process; // the binary as a child process: signals, exit codes, logs
//! ```
//!
//! Each test binary compiles its own copy, so the dead-code lint runs per
//! binary. A helper that some of the binaries mounting its module never
//! reach carries its own `#[allow(dead_code)]`; what it calls counts as
//! used, so only such entry points carry one.

use std::future::Future;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A fresh directory under the system temp dir, removed with everything in
/// it when dropped. Whatever uses the directory holds it (the proxy, the
/// world, the test), so a test leaves nothing behind, passed or failed.
pub struct TempDir(PathBuf);

/// A fresh, empty [`TempDir`] whose name starts with `name`.
pub fn tempdir(name: &str) -> TempDir {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "ip-test-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

impl Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: this also runs while a failed test unwinds, where a
        // second panic would abort the whole test binary.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How often [`eventually`] evaluates its condition.
const POLL: Duration = Duration::from_millis(20);

/// Evaluates `condition` until it holds or `within` has passed, and says
/// whether it held. Tests wait for the state they need this way, not with a
/// sleep that is long enough only on a quiet machine: a slow run takes
/// longer instead of failing, a fast one does not wait. An evaluation still
/// pending at the deadline counts as "did not hold".
#[allow(dead_code)] // only some binaries wait for a condition
pub async fn eventually<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, condition()).await {
            Ok(true) => return true,
            Ok(false) if tokio::time::Instant::now() < deadline => {}
            Ok(false) | Err(_) => return false,
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The emulator of Google's endpoints, its files under `dir/emu`.
#[allow(dead_code)]
pub async fn emulator_in(dir: &Path) -> impersonate_proxy::emulator::Emulator {
    impersonate_proxy::emulator::Emulator::start(impersonate_proxy::emulator::EmulatorOptions {
        dir: Some(dir.join("emu")),
        ..Default::default()
    })
    .await
    .unwrap()
}
