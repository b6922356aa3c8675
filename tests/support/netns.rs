//! A test body run inside a network namespace of its own, where only
//! loopback exists: the test binary runs itself again, that one test only,
//! under `unshare -n`. Whatever the body starts (the emulator, the proxy,
//! a client) shares that loopback and nothing else, so a client that
//! bypassed the proxy cannot reach the network: its lookup or connection
//! fails, and the test sees that as a failure instead of a call to Google.

use std::process::Command;
use std::sync::OnceLock;

/// Set (to the test's name) in the copy of the test binary that runs
/// inside the namespace.
const INSIDE: &str = "IMPERSONATE_PROXY_TEST_NETNS";

/// `unshare` flags that make a network namespace here: `-n` as root, `-rn`
/// (a user namespace too) for anyone else; an error if neither works.
fn unshare_flags() -> &'static Result<&'static str, String> {
    static FLAGS: OnceLock<Result<&'static str, String>> = OnceLock::new();
    FLAGS.get_or_init(|| {
        let mut errors = Vec::new();
        for flags in ["-n", "-rn"] {
            match Command::new("unshare")
                .args([flags, "--", "ip", "link", "set", "lo", "up"])
                .output()
            {
                Ok(o) if o.status.success() => return Ok(flags),
                Ok(o) => errors.push(format!(
                    "unshare {flags}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => errors.push(format!("unshare {flags}: {e}")),
            }
        }
        Err(errors.join("; "))
    })
}

/// Runs `body` inside a fresh network namespace. Called in the test named
/// `name` (its full path in this binary): outside a namespace it runs that
/// test again under `unshare` and fails if it failed there; inside, it runs
/// `body`.
pub fn isolated(name: &str, body: impl FnOnce()) {
    if std::env::var(INSIDE).as_deref() == Ok(name) {
        // /proc/self/net is this namespace's view (/sys/class/net is not).
        let interfaces: Vec<String> = std::fs::read_to_string("/proc/self/net/dev")
            .unwrap_or_default()
            .lines()
            .skip(2)
            .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_owned()))
            .collect();
        assert_eq!(
            interfaces,
            ["lo"],
            "the namespace must hold nothing but loopback"
        );
        body();
        return;
    }
    // The libraries come from package registries: install them here,
    // before the namespace takes the network away.
    crate::matrix::install_clients();
    let flags = match unshare_flags() {
        Ok(f) => *f,
        Err(e) => panic!(
            "the client tests run each client in a network namespace of its own \
             (`unshare -n`, util-linux; `ip`, iproute2) so that none can reach the \
             network, and none can be made here: {e}"
        ),
    };
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new("unshare")
        .args([
            flags,
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ])
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, name)
        .output()
        .expect("unshare runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Through print!, so the harness shows it for a failed test only.
    print!("--- inside the network namespace ---\n{stdout}\n{stderr}");
    assert!(out.status.success(), "{name} failed inside its namespace");
    assert!(
        stdout.contains("1 passed"),
        "{name} did not run inside its namespace (no such test?)"
    );
}
