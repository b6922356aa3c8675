//! Secrets stay secret: during a full run of the real binary at debug log
//! level — tokens minted and refreshed, Basic proxy credentials, refusals —
//! nothing the proxy writes (logs, audit records, error bodies) contains a
//! token, a refresh token, a proxy password or the source key.

#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::io::Read;
use std::process::{Command, Stdio};

use impersonate_proxy::emulator::{Emulator, EmulatorOptions};

use proxy::*;
use support::*;

const READER: &str = "reader@emulator-project.iam.gserviceaccount.com";
const NOBODY: &str = "nobody@emulator-project.iam.gserviceaccount.com";
const PASSWORD: &str = "pw-9f1c2e77-never-log-me";

#[cfg(unix)]
#[tokio::test]
async fn no_token_or_password_reaches_logs_audit_or_error_bodies() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir("secrets");
    let emu = Emulator::start(EmulatorOptions {
        dir: Some(dir.join("emu")),
        // Short tokens so refreshes happen during the run too.
        token_lifetime: Some(std::time::Duration::from_secs(3)),
        ..Default::default()
    })
    .await
    .unwrap();
    emu.grant_token_creator(SOURCE_SA, READER);
    let key = emu.write_service_account_key(&dir, SOURCE_SA).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    impersonate_proxy::ca::init(&dir.join("certs"), false).unwrap();
    let audit = dir.join("audit.jsonl");
    let config = format!(
        r#"[proxy]
listen = "127.0.0.1:0"
[ca]
cert = "certs/ca.pem"
key = "certs/ca-key.pem"
[source]
type = "service_account"
file = "{key}"
{upstream}
[audit]
file = "{audit}"
[[client]]
name = "ci"
cidrs = ["127.0.0.0/8"]
proxy_auth = {{ user = "ci", password_file = "{pw}" }}
[[route]]
name = "refused"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/refused"
impersonate = "{NOBODY}"
[[route]]
name = "read"
hosts = ["storage.googleapis.com"]
impersonate = "{READER}"
warm = true
"#,
        key = key.display(),
        upstream = emulator_upstream_toml(&emu, ""),
        audit = audit.display(),
        pw = pw.display(),
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let err_reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut sent = false;
        loop {
            let n = stderr.read(&mut buf).unwrap_or(0);
            if n == 0 {
                return String::from_utf8_lossy(&all).into_owned();
            }
            all.extend_from_slice(&buf[..n]);
            if !sent {
                let text = String::from_utf8_lossy(&all);
                // Only a complete line: a read can end mid-address.
                if let Some((addr, _)) = text
                    .split("listening on http://")
                    .nth(1)
                    .and_then(|rest| rest.split_once('\n'))
                {
                    let _ = addr_tx.send(addr.trim().to_owned());
                    sent = true;
                }
            }
        }
    });
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let addr = addr_rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("proxy started");

    let mut bodies = String::new();
    let ca = dir.join("certs/ca.pem");
    let curl = |proxy_url: String, http: &'static str, path: &'static str| {
        let ca = ca.clone();
        async move {
            let out = tokio::process::Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "20",
                    http,
                    "-x",
                    &proxy_url,
                    "--cacert",
                ])
                .arg(&ca)
                .arg(format!("https://storage.googleapis.com{path}"))
                .output()
                .await
                .expect("curl is installed");
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        }
    };
    let good = format!("http://ci:{PASSWORD}@{addr}");
    for round in 0..3 {
        for http in ["--http1.1", "--http2"] {
            let out = curl(good.clone(), http, "/storage/v1/b/data/o").await;
            if !out.contains(READER) {
                Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status()
                    .unwrap();
                let _ = child.wait();
                panic!(
                    "round {round} {http}: {out}\nproxy logs:\n{}",
                    err_reader.join().unwrap()
                );
            }
            bodies.push_str(&out);
        }
        bodies.push_str(&curl(good.clone(), "--http2", "/storage/v1/b/refused/o").await);
        bodies.push_str(
            &curl(
                format!("http://ci:wrong-{PASSWORD}@{addr}"),
                "--http1.1",
                "/x",
            )
            .await,
        );
        // Outlive the 3 s tokens so refreshes are logged too.
        tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    }
    assert!(
        bodies.contains("Permission 'iam.serviceAccounts.getAccessToken' denied"),
        "{bodies}"
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    let logs = err_reader.join().unwrap() + &out_reader.join().unwrap();
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    assert!(logs.contains("DEBUG"), "logs were at debug level");
    assert!(audit_text.lines().count() >= 12, "{audit_text}");

    let mut secrets = emu.issued_secrets();
    assert!(
        secrets.len() >= 4,
        "tokens were minted and refreshed: {}",
        secrets.len()
    );
    secrets.push(PASSWORD.to_owned());
    let key_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&key).unwrap()).unwrap();
    let key_pem = key_json["private_key"].as_str().unwrap();
    // A line from the middle of the key's base64 body.
    secrets.push(key_pem.lines().nth(5).unwrap().to_owned());
    for secret in &secrets {
        for (what, text) in [
            ("logs", &logs),
            ("audit", &audit_text),
            ("client-visible bodies", &bodies),
        ] {
            assert!(
                !text.contains(secret.as_str()),
                "a secret reached the {what}"
            );
        }
    }
}
