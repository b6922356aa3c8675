//! Who may use the proxy: `[[client]]` by address and Basic credentials,
//! 407 for everyone else, and the refusal to listen openly by accident.

#[path = "support/client.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use client::*;
use proxy::*;
use support::*;

async fn curl(proxy: &TestProxy, proxy_url: &str) -> (String, String) {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code}",
            "-x",
            proxy_url,
        ])
        .arg("--cacert")
        .arg(&proxy.ca_pem)
        .arg("https://storage.googleapis.com/echo")
        .output()
        .await
        .expect("curl is installed");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn basic_credentials_admit_a_client_and_everyone_else_gets_407() {
    let dir = tempdir("auth-pw");
    let pw = owner_only_file(&dir, "batch.pw", "correct horse\n");
    let w = world(
        "auth",
        &format!(
            "[[client]]\nname = \"batch\"\ncidrs = [\"127.0.0.0/8\"]\nproxy_auth = {{ user = \"batch\", password_file = \"{}\" }}\n",
            pw.display()
        ),
    )
    .await;
    let addr = w.proxy.addr;
    // curl sends Basic on CONNECT, as gRPC and Java clients do.
    let (out, err) = curl(&w.proxy, &format!("http://batch:correct%20horse@{addr}")).await;
    assert!(out.ends_with("\n200"), "{out} {err}");
    assert!(
        !out.contains("proxy-authorization"),
        "credentials reached the upstream: {out}"
    );

    let (out, err) = curl(&w.proxy, &format!("http://batch:wrong@{addr}")).await;
    assert!(err.contains("407"), "{out} {err}");

    // No credentials: 407 with the challenge, for CONNECT and absolute-form.
    for request in [
        "CONNECT storage.googleapis.com:443 HTTP/1.1\r\nHost: storage.googleapis.com:443\r\n\r\n",
        "GET http://storage.googleapis.com/echo HTTP/1.1\r\nHost: storage.googleapis.com\r\n\r\n",
        "CONNECT storage.googleapis.com:443 HTTP/1.1\r\nProxy-Authorization: Basic %%%not-base64\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 407"), "{request:?}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("proxy-authenticate: basic realm=\"impersonate-proxy\""),
            "{head}"
        );
        let body = read_body(&mut s, &head).await;
        assert!(!body.contains("correct horse"), "{body}");
    }
}

#[test]
fn a_non_loopback_listener_needs_clients_or_an_explicit_opt_in() {
    let dir = tempdir("open-listen");
    let path = dir.join("p.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = check("[proxy]\nlisten = \"0.0.0.0:8080\"\n");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("proxy.listen") && err.contains("allow_any_client"),
        "{err}"
    );
    let out = check("[proxy]\nlisten = \"0.0.0.0:8080\"\nallow_any_client = true\n");
    assert!(out.status.success(), "{out:?}");
    let out = check("[proxy]\nlisten = \"0.0.0.0:8080\"\n[[client]]\nname = \"vpc\"\ncidrs = [\"10.8.0.0/16\"]\n");
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn routes_select_by_client() {
    let dir = tempdir("auth-routes");
    let pw = owner_only_file(&dir, "batch.pw", "s3cret");
    let w = world(
        "auth-routes",
        &format!(
            r#"[[client]]
name = "batch"
cidrs = ["127.0.0.0/8"]
proxy_auth = {{ user = "batch", password_file = "{}" }}
[[client]]
name = "office"
cidrs = ["127.0.0.0/8"]
[[route]]
name = "office-may-not"
hosts = ["storage.googleapis.com"]
clients = ["office"]
action = "deny"
"#,
            pw.display()
        ),
    )
    .await;
    let addr = w.proxy.addr;
    let (out, err) = curl(&w.proxy, &format!("http://batch:s3cret@{addr}")).await;
    assert!(
        out.ends_with("\n200"),
        "batch passes the office-only deny: {out} {err}"
    );
    let (out, err) = curl(&w.proxy, &format!("http://{addr}")).await;
    assert!(
        out.ends_with("\n403") && out.contains("office-may-not"),
        "{out} {err}"
    );
}
