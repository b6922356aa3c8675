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
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0" run --config "$1""#)
        .arg(bin())
        .arg(&config)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains("cannot start the worker threads"),
        "stderr:\n{stderr}"
    );
}
