//! A hostile client against the policy: the route is chosen on exactly the
//! host, path, method and client the upstream will act on, and a token
//! never goes anywhere its route did not name. Each test here is a bypass
//! that worked before the rule was enforced.

#[path = "support/client.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use client::*;
use http::header::{AUTHORIZATION, CONNECTION, HOST};
use http::{HeaderValue, Method, StatusCode};
use impersonate_proxy::Config;
use proxy::*;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use upstream::*;

const STORAGE: &str = "storage.googleapis.com";
const READER: &str = "reader@emulator-project.iam.gserviceaccount.com";
const WRITER: &str = "writer@emulator-project.iam.gserviceaccount.com";

/// Storage routes with a bucket deny rule, a method deny rule and a
/// catch-all that impersonates READER (with a quota project).
fn storage_routes(extra: &str) -> String {
    format!(
        r#"
[[route]]
name = "no-audit-logs"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/audit-logs"
action = "deny"

[[route]]
name = "no-delete"
hosts = ["storage.googleapis.com"]
methods = ["DELETE"]
action = "deny"

[[route]]
name = "keep"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/keep"
impersonate = "{READER}"
authorization = "keep"

[[route]]
name = "gcs"
hosts = ["storage.googleapis.com"]
impersonate = "{READER}"
quota_project = "billing-project"

[[route]]
name = "oauth-open"
hosts = ["oauth2.googleapis.com"]
action = "passthrough"
{extra}"#
    )
}

async fn storage_world(name: &str) -> EmuWorld {
    let w = emu_world(name, &storage_routes(""), "").await;
    w.emu.grant_token_creator(SOURCE_SA, READER);
    w
}

/// Sends `method path` with `headers` to `host` through the proxy.
async fn send(
    proxy: &TestProxy,
    host: &str,
    h2: bool,
    method: Method,
    path: &str,
    headers: &[(&http::HeaderName, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let mut c = client(proxy, host, h2).await;
    let mut req = for_version(get(host, path), h2);
    *req.method_mut() = method;
    for (name, value) in headers {
        req.headers_mut()
            .append(*name, HeaderValue::from_str(value).unwrap());
    }
    let resp = c.send(req).await;
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, headers, body_string(resp).await)
}

fn from_proxy(headers: &http::HeaderMap) -> bool {
    headers.get("x-impersonate-proxy").is_some()
}

#[tokio::test]
async fn encoded_and_dot_segment_paths_cannot_escape_a_deny_rule() {
    let w = storage_world("bypass-path").await;
    for h2 in [false, true] {
        let (status, _, body) = send(
            &w.proxy,
            STORAGE,
            h2,
            Method::GET,
            "/storage/v1/b/audit%2Dlogs/o",
            &[],
        )
        .await;
        assert_eq!(status, 403, "h2={h2}: {body}");
        assert!(body.contains("no-audit-logs"), "{body}");
        for dots in [
            "/storage/v1/b/x/../audit-logs/o",
            "/storage/v1/b/x/%2e%2e/audit-logs/o",
            "/storage/v1/b/./audit-logs/o",
        ] {
            let (status, headers, body) = send(&w.proxy, STORAGE, h2, Method::GET, dots, &[]).await;
            assert_eq!(status, 400, "h2={h2} {dots}: {body}");
            assert!(from_proxy(&headers) && body.contains("segment"), "{body}");
        }
        // What is forwarded is the path that was matched.
        let (status, _, body) = send(
            &w.proxy,
            STORAGE,
            h2,
            Method::GET,
            "/storage/v1/b/d%61ta/o",
            &[],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(json(&body)["emulator"]["path"], "/storage/v1/b/data/o");
    }
    assert_eq!(
        w.emu.counters().get("storage", READER),
        2,
        "only the two plain requests reached the upstream"
    );
}

#[tokio::test]
async fn method_overrides_and_lower_case_methods_cannot_escape_a_method_rule() {
    let w = storage_world("bypass-method").await;
    let path = "/storage/v1/b/data/o/x";
    for h2 in [false, true] {
        for header in [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ] {
            let name = http::HeaderName::from_static(header);
            let (status, _, body) = send(
                &w.proxy,
                STORAGE,
                h2,
                Method::POST,
                path,
                &[(&name, "DELETE")],
            )
            .await;
            assert_eq!(status, 403, "h2={h2} {header}: {body}");
            assert!(body.contains("no-delete"), "{body}");
        }
        let lower = Method::from_bytes(b"delete").unwrap();
        let (status, headers, body) = send(&w.proxy, STORAGE, h2, lower, path, &[]).await;
        assert_eq!(status, 400, "h2={h2}: {body}");
        assert!(from_proxy(&headers), "{body}");
        let name = http::HeaderName::from_static("x-http-method-override");
        let (status, _, body) = send(
            &w.proxy,
            STORAGE,
            h2,
            Method::POST,
            path,
            &[(&name, "delete")],
        )
        .await;
        assert_eq!(status, 400, "h2={h2}: {body}");
    }
    assert_eq!(w.emu.counters().total("storage"), 0);
}

#[tokio::test]
async fn a_batch_request_matches_only_a_route_that_names_batch_where_routes_restrict() {
    let w = storage_world("bypass-batch").await;
    for path in ["/batch/storage/v1", "/batch"] {
        let (status, _, body) = send(&w.proxy, STORAGE, false, Method::POST, path, &[]).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("path_prefix names /batch"), "{body}");
    }
    assert_eq!(w.emu.counters().total("storage"), 0);
    // A host whose routes restrict nothing: the batch goes through.
    let (status, headers, body) = send(
        &w.proxy,
        "oauth2.googleapis.com",
        false,
        Method::POST,
        "/batch",
        &[],
    )
    .await;
    assert!(!from_proxy(&headers), "{status} {body}");

    // A route that names /batch allows it.
    let routes = storage_routes(&format!(
        "[[route]]\nname = \"batch\"\nhosts = [\"storage.googleapis.com\"]\npath_prefix = \"/batch\"\nimpersonate = \"{READER}\"\n"
    ))
    .replace("name = \"gcs\"", "name = \"gcs\"\npath_prefix = \"/storage\"");
    let w = emu_world("bypass-batch-ok", &routes, "").await;
    w.emu.grant_token_creator(SOURCE_SA, READER);
    let (status, headers, body) = send(
        &w.proxy,
        STORAGE,
        false,
        Method::POST,
        "/batch/storage/v1",
        &[],
    )
    .await;
    assert!(!from_proxy(&headers), "{status} {body}");
}

#[tokio::test]
async fn a_duplicate_host_is_refused_and_a_second_placeholder_is_a_placeholder() {
    let w = storage_world("bypass-host").await;
    for h2 in [false, true] {
        let (status, headers, body) = send(
            &w.proxy,
            STORAGE,
            h2,
            Method::GET,
            "/storage/v1/b/data/o",
            &[(&HOST, "evil.example")],
        )
        .await;
        assert!(status == 400 || status == 421, "h2={h2}: {status} {body}");
        assert!(from_proxy(&headers), "{body}");
    }
    assert_eq!(w.emu.counters().total("storage"), 0);
    // `authorization = "keep"`: a placeholder in the second value means
    // the client has no credential of its own; the route's token goes on.
    let (status, _, body) = send(
        &w.proxy,
        STORAGE,
        false,
        Method::GET,
        "/storage/v1/b/keep/o",
        &[
            (&AUTHORIZATION, "Bearer client-own"),
            (
                &AUTHORIZATION,
                "Bearer ya29.impersonate-proxy-placeholder.0123",
            ),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["emulator"]["principal"], READER);
}

#[tokio::test]
async fn connection_cannot_strip_the_injected_token_or_quota_project() {
    let w = storage_world("bypass-connection").await;
    let (status, _, body) = send(
        &w.proxy,
        STORAGE,
        false,
        Method::GET,
        "/storage/v1/b/data/o",
        &[(&CONNECTION, "authorization, x-goog-user-project")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = &json(&body)["emulator"];
    assert_eq!(seen["principal"], READER);
    assert_eq!(seen["userProject"], "billing-project");
}

#[test]
fn wildcard_token_routes_outside_googleapis_are_config_errors() {
    let check = |routes: &str| {
        let cfg = Config::parse(Path::new("t.toml"), routes)?;
        impersonate_proxy::policy::check(&cfg).map(|_| ())
    };
    let err = check(&format!(
        "[[route]]\nname = \"run\"\nhosts = [\"*.run.app\"]\nid_token = {{ audience = \"https://svc.run.app\", impersonate = \"{READER}\" }}\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("route[0].hosts[0]") && err.contains("exact hosts"),
        "{err}"
    );
    let err = check(&format!(
        "[[route]]\nname = \"app\"\nhosts = [\"*.appspot.com\"]\nimpersonate = \"{READER}\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("route[0].hosts[0]") && err.contains("googleapis.com"),
        "{err}"
    );
    // What stays allowed: googleapis.com wildcards, exact hosts, and any
    // wildcard on a route that attaches nothing.
    check(&format!(
        "[[route]]\nname = \"apis\"\nhosts = [\"*.googleapis.com\", \"*.eu.googleapis.com\", \"svc.a.run.app\"]\nimpersonate = \"{READER}\"\n[[route]]\nname = \"run\"\nhosts = [\"svc.a.run.app\"]\nid_token = {{ audience = \"https://svc.a.run.app\", impersonate = \"{READER}\" }}\n[[route]]\nname = \"pass\"\nhosts = [\"*.run.app\"]\naction = \"passthrough\"\n"
    ))
    .unwrap();
}

fn basic(user: &str, password: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Proxy-Authorization: Basic {b}\r\n")
}

#[tokio::test]
async fn a_tunnel_is_identified_again_after_clients_are_reordered_or_removed() {
    let (emu, key, dir) = emulator_with_key("bypass-reorder").await;
    emu.grant_token_creator(SOURCE_SA, READER);
    emu.grant_token_creator(SOURCE_SA, WRITER);
    let alice_pw = owner_only_file(&dir, "alice.pw", "alice-secret");
    let bob_pw = owner_only_file(&dir, "bob.pw", "bob-secret");
    let alice = format!(
        "[[client]]\nname = \"alice\"\ncidrs = [\"127.0.0.0/8\"]\nproxy_auth = {{ user = \"alice\", password_file = \"{}\" }}\n",
        alice_pw.display()
    );
    let bob = format!(
        "[[client]]\nname = \"bob\"\ncidrs = [\"127.0.0.0/8\"]\nproxy_auth = {{ user = \"bob\", password_file = \"{}\" }}\n",
        bob_pw.display()
    );
    let routes = format!(
        "[[route]]\nname = \"alice-writer\"\nhosts = [\"storage.googleapis.com\"]\nclients = [\"alice\"]\nimpersonate = \"{WRITER}\"\n[[route]]\nname = \"bob-reader\"\nhosts = [\"storage.googleapis.com\"]\nclients = [\"bob\"]\nimpersonate = \"{READER}\"\n"
    );
    let head = format!(
        "[source]\ntype = \"service_account\"\nfile = \"{}\"\n{}\n",
        key.display(),
        emulator_upstream_toml(&emu, "")
    );
    let (cfg, cdir) = config_with_ca("bypass-reorder", &format!("{head}{alice}{bob}{routes}"));
    let config = cdir.join("proxy.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let (proxy, reloader) = start_reloadable(cfg, cdir).await;

    let mut c = client_with(&proxy, STORAGE, false, &basic("bob", "bob-secret")).await;
    let principal = |resp: http::Response<hyper::body::Incoming>| async move {
        let status = resp.status();
        let body = body_string(resp).await;
        assert_eq!(status, 200, "{body}");
        json(&body)["emulator"]["principal"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let resp = c.send(get(STORAGE, "/storage/v1/b/data/o")).await;
    assert_eq!(principal(resp).await, READER);

    // The same entries, in the other order: bob is entry 0 now.
    let reordered = text.replace(&format!("{alice}{bob}"), &format!("{bob}{alice}"));
    assert_ne!(reordered, text);
    std::fs::write(&config, &reordered).unwrap();
    reloader.reload().unwrap();
    let resp = c.send(get(STORAGE, "/storage/v1/b/data/o")).await;
    assert_eq!(principal(resp).await, READER, "bob got alice's token");

    // Bob removed: his tunnel gets 407 and is closed.
    let bob_route = format!("[[route]]\nname = \"bob-reader\"\nhosts = [\"storage.googleapis.com\"]\nclients = [\"bob\"]\nimpersonate = \"{READER}\"\n");
    assert!(text.contains(&bob_route));
    std::fs::write(&config, text.replace(&bob, "").replace(&bob_route, "")).unwrap();
    reloader.reload().unwrap();
    let resp = c.send(get(STORAGE, "/storage/v1/b/data/o")).await;
    assert_eq!(resp.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
    drop(body_string(resp).await);
    assert!(
        c.try_send(get(STORAGE, "/storage/v1/b/data/o"))
            .await
            .is_err(),
        "the connection stays open after the 407"
    );
    assert_eq!(emu.counters().get("storage", WRITER), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn absolute_form_http_obeys_the_port_list_and_the_egress_check() {
    let (plain, seen) = start_upstream(None).await;
    let (cfg, dir) = config_with_proxy_keys(
        "bypass-absolute",
        "admin = \"127.0.0.1:0\"",
        &format!(
            "[upstream.resolve]\n\"pubsub.googleapis.com\" = \"{plain}\"\n[intercept]\nother = \"tunnel\"\n{PASSTHROUGH_ALL}"
        ),
    );
    let proxy = start_proxy(cfg, dir).await;
    let admin = proxy.admin.unwrap();
    let raw = |line: String| async move {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(line.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        let body = read_body(&mut s, &head).await;
        (head, body)
    };
    // The admin endpoint's port, named in a request for a mapped host.
    let (head, body) = raw(format!(
        "POST http://pubsub.googleapis.com:{}/reload HTTP/1.1\r\nHost: pubsub.googleapis.com:{}\r\nContent-Length: 0\r\n\r\n",
        admin.port(),
        admin.port()
    ))
    .await;
    assert_eq!(status_of(&head), Some(403), "{head}{body}");
    assert!(body.contains("http_ports"), "{body}");
    // Port 80, but the mapped address is loopback: the egress check.
    let (head, body) = raw(
        "GET http://pubsub.googleapis.com/echo HTTP/1.1\r\nHost: pubsub.googleapis.com\r\n\r\n"
            .to_owned(),
    )
    .await;
    assert_eq!(status_of(&head), Some(403), "{head}{body}");
    assert!(body.contains("allow_private"), "{body}");
    // Another host: the message names the `other` in force.
    let (head, body) =
        raw("GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n".to_owned()).await;
    assert_eq!(status_of(&head), Some(403), "{head}{body}");
    assert!(body.contains(r#"other = \"tunnel\""#), "{body}");
    assert_eq!(seen.requests.load(std::sync::atomic::Ordering::Relaxed), 0);

    // Allowed ports and range: a mapped host still goes to its own
    // address, whatever port the request names.
    let (cfg, dir) = config_with_proxy_keys(
        "bypass-absolute-ok",
        "admin = \"127.0.0.1:0\"",
        &format!(
            "[upstream.resolve]\n\"pubsub.googleapis.com\" = \"{plain}\"\n[intercept]\nallow_private = [\"127.0.0.0/8\"]\nhttp_ports = [80, {}]\n{PASSTHROUGH_ALL}",
            admin.port()
        ),
    );
    let proxy2 = start_proxy(cfg, dir).await;
    let mut s = TcpStream::connect(proxy2.addr).await.unwrap();
    s.write_all(
        format!(
            "GET http://pubsub.googleapis.com:{}/echo HTTP/1.1\r\nHost: pubsub.googleapis.com:{}\r\n\r\n",
            admin.port(),
            admin.port()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    let body = read_body(&mut s, &head).await;
    assert_eq!(status_of(&head), Some(200), "{head}{body}");
    assert_eq!(json(&body)["path"], "/echo", "{body}");
    assert_eq!(seen.requests.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn repeated_407s_from_one_address_slow_down() {
    let dir = tempdir("bypass-407");
    let pw = owner_only_file(&dir, "ci.pw", "s3cret");
    let (cfg, dir) = config_with_ca(
        "bypass-407",
        &format!(
            "[[client]]\nname = \"ci\"\nproxy_auth = {{ user = \"ci\", password_file = \"{}\" }}\n{PASSTHROUGH_ALL}",
            pw.display()
        ),
    );
    let proxy = start_proxy(cfg, dir).await;
    let mut slowest = Duration::ZERO;
    for i in 0..7 {
        let started = Instant::now();
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(
            format!(
                "CONNECT storage.googleapis.com:443 HTTP/1.1\r\nHost: storage.googleapis.com:443\r\n{}\r\n",
                basic("ci", &format!("guess-{i}"))
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let head = read_head(&mut s).await;
        assert_eq!(status_of(&head), Some(407), "{head}");
        slowest = slowest.max(started.elapsed());
    }
    // The 4th miss waits 0.1 s, the 7th 0.8 s: a lower bound the proxy
    // adds on purpose, not a measurement of its speed.
    assert!(slowest >= Duration::from_millis(800), "{slowest:?}");
}
