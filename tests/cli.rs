//! The command line as a user runs it: exit codes, messages, files.

#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
}

#[test]
fn ca_init_writes_an_owner_only_key_prints_trust_lines_and_refuses_to_overwrite() {
    let dir = support::tempdir("cli-ca");
    let out = bin()
        .args(["ca", "init", "--dir"])
        .arg(dir.join("certs"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "REQUESTS_CA_BUNDLE",
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
        "NODE_EXTRA_CA_CERTS",
        "custom_ca_certs_file",
        "--cacert",
    ] {
        assert!(stdout.contains(needle), "missing {needle} in:\n{stdout}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("certs/ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = bin()
        .args(["ca", "init", "--dir"])
        .arg(dir.join("certs"))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let forced = bin()
        .args(["ca", "init", "--force", "--dir"])
        .arg(dir.join("certs"))
        .output()
        .unwrap();
    assert!(forced.status.success());
}

#[test]
fn check_names_the_bad_key_and_exits_2() {
    let dir = support::tempdir("cli-check");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[intercept]\nhosts = [\"*.googleapis.com\"]\nother = \"maybe\"\n",
    )
    .unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("other"), "{stderr}");

    std::fs::write(&path, "[proxy]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("*.googleapis.com"));
}

#[test]
fn run_without_a_ca_says_how_to_create_one() {
    let dir = support::tempdir("cli-noca");
    let path = dir.join("proxy.toml");
    std::fs::write(&path, "[proxy]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let out = bin().args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("impersonate-proxy ca init"), "{stderr}");
}

#[cfg(unix)]
#[test]
fn run_refuses_a_world_readable_ca_key() {
    use std::os::unix::fs::PermissionsExt;
    let (_, dir) = proxy::config_with_ca("cli-perm", "");
    let key = dir.join("certs/ca-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = bin()
        .args(["run", "--config"])
        .arg(dir.join("proxy.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

#[cfg(unix)]
#[test]
fn run_serves_until_sigterm_then_exits_0() {
    let (_, dir) = proxy::config_with_ca("cli-run", "");
    let mut child = bin()
        .args(["run", "--config"])
        .arg(dir.join("proxy.toml"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("proxy printed its address").unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.trim().to_owned();
        }
    };
    // The proxy answers: a CONNECT to a host it does not intercept is 403.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 403");
    drop(s);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = child.wait().unwrap();
    assert_eq!(code.code(), Some(0));
}

#[test]
fn version_prints_the_name_and_the_crate_version() {
    // The image's first check (`docker run IMAGE --version`).
    let out = bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("impersonate-proxy {}", env!("CARGO_PKG_VERSION"))
    );
}
