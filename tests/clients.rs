//! Real clients through the proxy: curl over HTTP/1.1 and HTTP/2.

#[path = "support/client.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use client::*;
use proxy::*;

async fn curl(proxy: &TestProxy, extra: &[&str], url: &str) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-x"])
        .arg(format!("http://{}", proxy.addr))
        .arg("--cacert")
        .arg(&proxy.ca_pem)
        .args(["-w", "\n%{http_version} %{http_code}"])
        .args(extra)
        .arg(url)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
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

#[tokio::test]
async fn curl_gets_200_through_the_proxy_over_http1_and_http2() {
    let w = world("curl", "").await;
    for (flag, want) in [("--http1.1", "1.1 200"), ("--http2", "2 200")] {
        let (ok, out, err) = curl(&w.proxy, &[flag], "https://storage.googleapis.com/echo").await;
        assert!(ok, "curl {flag} failed: {err}");
        let (body, status) = out.rsplit_once('\n').unwrap();
        assert_eq!(status, want, "curl {flag}: {out}");
        let v = json(body);
        let host = v["authority"].as_str().or(v["headers"]["host"].as_str());
        assert_eq!(host, Some("storage.googleapis.com"), "{body}");
    }
}

#[tokio::test]
async fn curl_sees_the_json_403_for_a_host_that_is_not_intercepted() {
    let w = world("curl-deny", "").await;
    let (ok, _out, err) = curl(&w.proxy, &[], "https://example.com/").await;
    assert!(!ok);
    assert!(err.contains("403"), "{err}");
}
