//! Starting to serve can fail after the config and the listener are fine:
//! the worker threads need threads, event loops and file descriptors. The
//! process must then say why and exit 1, not 0.

mod support;

use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_impersonate-proxy")
}

#[test]
#[cfg(unix)]
fn workers_that_cannot_start_make_the_process_exit_1() {
    let dir = support::tempdir("start");
    let ca = Command::new(bin())
        .args(["ca", "init", "--dir"])
        .arg(dir.join("certs"))
        .output()
        .unwrap();
    assert!(ca.status.success(), "{ca:?}");
    let config = dir.join("proxy.toml");
    // Every worker needs an event loop and a copy of the listening socket:
    // 1,024 of them cannot fit under 64 file descriptors, while the
    // config, the CA and the listener can.
    std::fs::write(
        &config,
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 1024\n[source]\ntype = \"access_token\"\ntoken_file = \"token.txt\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("token.txt"), "ya29.start-test\n").unwrap();
    // Each worker takes a few descriptors (an event loop, a copy of the
    // listener), so the limit at which starting fails lands on a different
    // step depending on how many the process already holds: try a run of
    // limits so that every step's failure is covered.
    let mut worker_failures = 0;
    for limit in 56..=68 {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                r#"ulimit -n {limit} && exec "$0" run --config "$1""#
            ))
            .arg(bin())
            .arg(&config)
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(1) || !stderr.contains("cannot start the worker threads") {
            // Too few descriptors for the config or the listener is a
            // different, equally clean error; anything else is a failure.
            assert_eq!(
                out.status.code(),
                Some(1),
                "ulimit -n {limit}, stderr:\n{stderr}"
            );
            assert!(
                !stderr.contains("panicked"),
                "ulimit -n {limit}, stderr:\n{stderr}"
            );
            continue;
        }
        assert!(
            !stderr.contains("panicked"),
            "ulimit -n {limit}, stderr:\n{stderr}"
        );
        worker_failures += 1;
    }
    assert!(
        worker_failures > 0,
        "no limit made the workers fail to start"
    );
}

/// Starts the binary under `ulimit -Sn soft; ulimit -Hn hard` with
/// `max_connections`; returns the soft open-files limit it runs with and
/// what it logged until it listened.
#[cfg(unix)]
fn open_files_at_start(hard: u64, soft: u64, max_connections: usize) -> (u64, String) {
    use std::io::{BufRead, BufReader};
    let dir = support::tempdir(&format!("nofile-{hard}"));
    let ca = Command::new(bin())
        .args(["ca", "init", "--dir"])
        .arg(dir.join("certs"))
        .output()
        .unwrap();
    assert!(ca.status.success(), "{ca:?}");
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!("[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[limits]\nmax_connections = {max_connections}\n[source]\ntype = \"access_token\"\ntoken_file = \"token.txt\"\n"),
    )
    .unwrap();
    std::fs::write(dir.join("token.txt"), "ya29.start-test\n").unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            r#"ulimit -Sn {soft} && ulimit -Hn {hard} && exec "$0" run --config "$1""#
        ))
        .arg(bin())
        .arg(&config)
        .current_dir(&*dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut logs = String::new();
    for line in BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        logs.push_str(&line);
        logs.push('\n');
        if line.contains("listening on") {
            break;
        }
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let soft_now = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    (soft_now, logs)
}

#[test]
#[cfg(target_os = "linux")]
fn the_soft_open_files_limit_is_raised_to_the_hard_one_and_a_short_one_is_logged() {
    let (soft, logs) = open_files_at_start(4096, 256, 100);
    assert!(logs.contains("listening on"), "{logs}");
    assert_eq!(soft, 4096, "{logs}");
    assert!(!logs.contains("open-files limit"), "{logs}");
    // 10,000 connections do not fit under 2,048 descriptors: said at start.
    let (soft, logs) = open_files_at_start(2048, 256, 10_000);
    assert_eq!(soft, 2048, "{logs}");
    assert!(
        logs.contains("open-files limit") && logs.contains("max_connections"),
        "{logs}"
    );
}
