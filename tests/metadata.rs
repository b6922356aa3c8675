//! The metadata-server endpoint on the proxy listener, against the
//! emulator: what an unmodified ADC client does with GCE_METADATA_HOST
//! pointing at the proxy (plain HTTP to the proxy address with
//! `Metadata-Flavor: Google`), then its calls through the proxy.

#[path = "support/client.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::net::SocketAddr;

use http::StatusCode;
use impersonate_proxy::google::jwt::decode_unverified;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use client::*;
use proxy::*;
use support::*;

const STORAGE: &str = "storage.googleapis.com";
const TARGET: &str = "metadata-target@emulator-project.iam.gserviceaccount.com";
const SA_PATH: &str = "/computeMetadata/v1/instance/service-accounts";

/// A metadata answer: status, response head (lowercase header names, as
/// hyper writes them) and body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// One origin-form GET on the proxy listener, from `from` (a loopback
/// address) or any, with `Host: <proxy address>` and `headers`.
async fn metadata_get_from(
    proxy: SocketAddr,
    from: Option<&str>,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut s = match from {
        Some(ip) => {
            let sock = TcpSocket::new_v4().unwrap();
            sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
            sock.connect(proxy).await.unwrap()
        }
        None => TcpStream::connect(proxy).await.unwrap(),
    };
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {proxy}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    let body = read_body(&mut s, &head).await;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Answer { status, head, body }
}

async fn metadata_get(proxy: SocketAddr, path: &str) -> Answer {
    metadata_get_from(proxy, None, path, &[("Metadata-Flavor", "Google")]).await
}

/// Lists a bucket through the proxy with `Authorization: Bearer <token>`.
async fn list_bucket(
    proxy: &TestProxy,
    bucket: &str,
    token: &str,
) -> (StatusCode, serde_json::Value) {
    let mut c = client(proxy, STORAGE, false).await;
    let mut req = for_version(get(STORAGE, &format!("/storage/v1/b/{bucket}/o")), false);
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let resp = c.send(req).await;
    let status = resp.status();
    (status, json(&body_string(resp).await))
}

#[tokio::test]
async fn placeholder_token_is_replaced_and_never_reaches_upstream() {
    let audit_dir = tempdir("metadata-audit");
    let audit = audit_dir.join("audit.jsonl");
    let w = emu_world(
        "metadata-placeholder",
        &format!(
            r#"
[audit]
file = "{}"

[metadata]
enabled = true
service_account = "{TARGET}"

[[route]]
name = "keep"
hosts = ["{STORAGE}"]
path_prefix = "/storage/v1/b/kept"
impersonate = "{TARGET}"
authorization = "keep"

[[route]]
name = "public"
hosts = ["{STORAGE}"]
path_prefix = "/storage/v1/b/public"
action = "passthrough"

[[route]]
name = "gcs"
hosts = ["{STORAGE}"]
impersonate = "{TARGET}"
"#,
            audit.display()
        ),
        "",
    )
    .await;
    w.emu.grant_token_creator(SOURCE_SA, TARGET);

    let a = metadata_get(w.proxy.addr, &format!("{SA_PATH}/default/token")).await;
    assert_eq!(a.status, 200, "{}{}", a.head, a.body);
    assert!(a.head.contains("metadata-flavor: Google"), "{}", a.head);
    assert!(
        a.head.contains("content-type: application/json"),
        "{}",
        a.head
    );
    let t = json(&a.body);
    let placeholder = t["access_token"].as_str().unwrap().to_owned();
    assert!(
        placeholder.starts_with("ya29.impersonate-proxy-placeholder."),
        "{placeholder}"
    );
    assert_eq!(t["token_type"], "Bearer");
    let expires_in = t["expires_in"].as_u64().unwrap();
    assert!((60..=3600).contains(&expires_in), "{expires_in}");
    // Unique per answer, like real tokens.
    let again = json(
        &metadata_get(w.proxy.addr, &format!("{SA_PATH}/default/token"))
            .await
            .body,
    );
    assert_ne!(again["access_token"], placeholder.as_str());

    // authorization = "replace" (the default): the upstream sees the target.
    let (status, body) = list_bucket(&w.proxy, "data", &placeholder).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["emulator"]["principal"], TARGET);
    // authorization = "keep": the placeholder counts as no Authorization,
    // so the route's real token is used.
    let (status, body) = list_bucket(&w.proxy, "kept", &placeholder).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["emulator"]["principal"], TARGET);
    // passthrough: the placeholder is dropped, the upstream sees no bearer
    // at all (an unknown bearer would be "Invalid Credentials").
    let (status, body) = list_bucket(&w.proxy, "public", &placeholder).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Anonymous caller"),
        "{body}"
    );
    assert_eq!(w.emu.principal_of(&placeholder), None);
    assert_eq!(w.emu.counters().get("storage", ""), 1);

    // One audit record per metadata request, without the token; a
    // graceful stop writes every queued record.
    assert!(w.proxy.stop().await);
    let log = std::fs::read_to_string(&audit).unwrap();
    assert!(log.contains(r#""action":"metadata""#), "{log}");
    assert!(!log.contains(&placeholder), "{log}");
}

#[tokio::test]
async fn real_tokens_only_for_listed_clients() {
    let w = emu_world(
        "metadata-real",
        &format!(
            r#"
[audit]
enabled = false

[metadata]
enabled = true
service_account = "{TARGET}"
tokens = "real"
real_clients = ["pinned"]

[[client]]
name = "pinned"
cidrs = ["127.0.0.2/32"]

[[client]]
name = "everyone"
cidrs = ["127.0.0.0/8"]

[[route]]
name = "gcs"
hosts = ["{STORAGE}"]
impersonate = "{TARGET}"
"#
        ),
        "",
    )
    .await;
    w.emu.grant_token_creator(SOURCE_SA, TARGET);
    let flavor = [("Metadata-Flavor", "Google")];
    let path = format!("{SA_PATH}/default/token");

    let refused = metadata_get_from(w.proxy.addr, Some("127.0.0.1"), &path, &flavor).await;
    assert_eq!(refused.status, 403, "{}{}", refused.head, refused.body);
    assert!(refused.body.contains("\"everyone\""), "{}", refused.body);
    assert!(refused.body.contains("real_clients"), "{}", refused.body);
    assert!(
        refused.head.contains("metadata-flavor: Google"),
        "{}",
        refused.head
    );

    let a = metadata_get_from(w.proxy.addr, Some("127.0.0.2"), &path, &flavor).await;
    assert_eq!(a.status, 200, "{}{}", a.head, a.body);
    let t = json(&a.body);
    let token = t["access_token"].as_str().unwrap();
    assert!(!token.starts_with("ya29.impersonate-proxy-placeholder."));
    assert_eq!(w.emu.principal_of(token).as_deref(), Some(TARGET));
    assert!(t["expires_in"].as_u64().unwrap() > 60, "{t}");
    // The `<email>` alias of `default`, as google-auth asks for it.
    let a = metadata_get_from(
        w.proxy.addr,
        Some("127.0.0.2"),
        &format!("{SA_PATH}/{TARGET}/token"),
        &flavor,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(json(&a.body)["access_token"], token);
}

#[tokio::test]
async fn identity_returns_an_id_token_for_the_audience_and_honours_the_allow_list() {
    let w = emu_world(
        "metadata-identity",
        &format!(
            r#"
[audit]
enabled = false

[metadata]
enabled = true
service_account = "{TARGET}"
audiences = ["https://svc.example.run.app"]
"#
        ),
        "",
    )
    .await;
    w.emu.grant_token_creator(SOURCE_SA, TARGET);
    let a = metadata_get(
        w.proxy.addr,
        &format!(
            "{SA_PATH}/default/identity?audience=https%3A%2F%2Fsvc.example.run.app&format=full"
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}{}", a.head, a.body);
    let jwt = decode_unverified(a.body.trim()).unwrap();
    assert_eq!(jwt.claims["aud"], "https://svc.example.run.app");
    assert_eq!(jwt.claims["email"], TARGET);

    let a = metadata_get(
        w.proxy.addr,
        &format!("{SA_PATH}/default/identity?audience=https://elsewhere.example"),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("[metadata] audiences"), "{}", a.body);
    let a = metadata_get(w.proxy.addr, &format!("{SA_PATH}/default/identity")).await;
    assert_eq!(a.status, 400, "{}", a.body);
}

#[tokio::test]
async fn probes_info_and_refusals_look_like_the_metadata_server() {
    let w = emu_world(
        "metadata-probes",
        &format!(
            "[audit]\nenabled = false\n[metadata]\nenabled = true\nservice_account = \"{TARGET}\"\nnumeric_project_id = \"123456789012\"\n"
        ),
        "",
    )
    .await;
    let addr = w.proxy.addr;

    for path in ["/", "/computeMetadata/v1/"] {
        let a = metadata_get(addr, path).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        assert!(a.head.contains("metadata-flavor: Google"), "{}", a.head);
    }
    let a = metadata_get(addr, &format!("{SA_PATH}/default/email")).await;
    assert_eq!((a.status, a.body.as_str()), (200, TARGET));
    let a = metadata_get(addr, "/computeMetadata/v1/project/project-id").await;
    assert_eq!((a.status, a.body.as_str()), (200, "emulator-project"));
    // gcloud's "am I on GCE?" probe.
    let a = metadata_get(addr, "/computeMetadata/v1/project/numeric-project-id").await;
    assert_eq!((a.status, a.body.as_str()), (200, "123456789012"));
    let a = metadata_get(addr, &format!("{SA_PATH}/default/?recursive=true")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let info = json(&a.body);
    assert_eq!(info["email"], TARGET);
    assert_eq!(info["aliases"][0], "default");
    assert!(info["scopes"][0]
        .as_str()
        .unwrap()
        .ends_with("cloud-platform"));
    let a = metadata_get(
        addr,
        &format!("{SA_PATH}/other@x.iam.gserviceaccount.com/email"),
    )
    .await;
    assert_eq!(a.status, 404);

    // No Metadata-Flavor: the metadata server's own refusal.
    let a = metadata_get_from(addr, None, "/computeMetadata/v1/", &[]).await;
    assert_eq!(a.status, 403);
    assert!(
        a.body.contains("Missing Metadata-Flavor:Google header."),
        "{}",
        a.body
    );
    assert!(a.head.contains("metadata-flavor: Google"), "{}", a.head);
    // Proxied requests are refused, as GCE does.
    let a = metadata_get_from(
        addr,
        None,
        &format!("{SA_PATH}/default/token"),
        &[
            ("Metadata-Flavor", "Google"),
            ("X-Forwarded-For", "10.0.0.1"),
        ],
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("X-Forwarded-For"), "{}", a.body);
    // A Host that is not this server (DNS rebinding) is refused.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: evil.example:80\r\nMetadata-Flavor: Google\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    // With HTTP_PROXY also set, clients send the same request in
    // absolute form to the proxy: answered the same way.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET http://{addr}{SA_PATH}/default/email HTTP/1.1\r\nHost: {addr}\r\nMetadata-Flavor: Google\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_body(&mut s, &head).await, TARGET);
    // The well-known names are accepted.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: metadata.google.internal\r\nMetadata-Flavor: Google\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn on_demand_tokens_are_bounded_without_an_audience_allow_list() {
    let w = emu_world(
        "metadata-bounded",
        &format!("[audit]\nenabled = false\n[metadata]\nenabled = true\nservice_account = \"{TARGET}\"\n"),
        "",
    )
    .await;
    w.emu.grant_token_creator(SOURCE_SA, TARGET);
    let identity =
        |n: usize| format!("{SA_PATH}/default/identity?audience=https://svc-{n}.example");
    for n in 0..32 {
        let a = metadata_get(w.proxy.addr, &identity(n)).await;
        assert_eq!(a.status, 200, "audience {n}: {}", a.body);
    }
    let a = metadata_get(w.proxy.addr, &identity(32)).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(a.body.contains("[metadata] audiences"), "{}", a.body);
    // Audiences already kept are still served.
    assert_eq!(metadata_get(w.proxy.addr, &identity(7)).await.status, 200);
}

#[tokio::test]
async fn disabled_endpoint_says_how_to_enable_it() {
    let w = emu_world("metadata-off", "[audit]\nenabled = false\n", "").await;
    let a = metadata_get(w.proxy.addr, "/computeMetadata/v1/").await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert!(a.body.contains("[metadata] enabled = true"), "{}", a.body);
}
