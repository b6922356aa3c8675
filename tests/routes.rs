//! Routes and injection through the proxy against the emulator, over
//! HTTP/1.1 and HTTP/2: the upstream sees the route's target principal.

#[path = "support/client.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use http::StatusCode;

use client::*;
use proxy::*;
use support::*;
use upstream::*;

const STORAGE: &str = "storage.googleapis.com";
const READER: &str = "reader@emulator-project.iam.gserviceaccount.com";
const WRITER: &str = "writer@emulator-project.iam.gserviceaccount.com";
const HOP: &str = "hop@emulator-project.iam.gserviceaccount.com";
const NOBODY: &str = "nobody@emulator-project.iam.gserviceaccount.com";

fn routes(audit: &std::path::Path) -> String {
    format!(
        r#"
[audit]
file = "{audit}"

[[route]]
name = "denied-bucket"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/secret"
action = "deny"

[[route]]
name = "via-chain"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/chain"
impersonate = "{WRITER}"
delegates = ["projects/-/serviceAccounts/{HOP}"]

[[route]]
name = "refused"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/refused"
impersonate = "{NOBODY}"

[[route]]
name = "keep-client-auth"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/keep"
impersonate = "{READER}"
authorization = "keep"

[[route]]
name = "billing"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/billed"
impersonate = "{READER}"
quota_project = "billing-project"

[[route]]
name = "gcs-read"
hosts = ["storage.googleapis.com"]
methods = ["GET", "HEAD"]
impersonate = "{READER}"
"#,
        audit = audit.display()
    )
}

/// The audit log the routes above write, in a directory of its own that is
/// removed when this is dropped.
struct Audit {
    path: std::path::PathBuf,
    _dir: TempDir,
}

async fn setup(name: &str) -> (EmuWorld, Audit) {
    let dir = tempdir(&format!("{name}-audit"));
    let audit = Audit {
        path: dir.join("audit.jsonl"),
        _dir: dir,
    };
    let w = emu_world(name, &routes(&audit.path), "").await;
    w.emu.grant_token_creator(SOURCE_SA, READER);
    w.emu.grant_token_creator(SOURCE_SA, HOP);
    w.emu.grant_token_creator(HOP, WRITER);
    (w, audit)
}

async fn call(
    w: &EmuWorld,
    h2: bool,
    method: &str,
    path: &str,
    auth: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut c = client(&w.proxy, STORAGE, h2).await;
    let mut req = for_version(get(STORAGE, path), h2);
    *req.method_mut() = method.parse().unwrap();
    if let Some(a) = auth {
        req.headers_mut()
            .insert("authorization", a.parse().unwrap());
    }
    let resp = c.send(req).await;
    let status = resp.status();
    (status, json(&body_string(resp).await))
}

#[tokio::test]
async fn the_upstream_sees_the_routes_target_over_http1_and_http2() {
    let (w, _audit) = setup("target").await;
    for h2 in [false, true] {
        // The client's own Authorization is replaced, not forwarded.
        let (status, body) = call(
            &w,
            h2,
            "GET",
            "/storage/v1/b/data/o",
            Some("Bearer client-own-token"),
        )
        .await;
        assert_eq!(status, 200, "h2={h2}: {body}");
        assert_eq!(body["emulator"]["principal"], READER);
        assert_eq!(body["emulator"]["proxyHeaders"], false);
    }
    // One slot, minted once, reused by both connections.
    assert_eq!(w.emu.counters().get("generateAccessToken", READER), 1);
}

#[tokio::test]
async fn a_delegate_chain_reaches_its_target() {
    let (w, _audit) = setup("chain").await;
    let (status, body) = call(&w, true, "GET", "/storage/v1/b/chain/o", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["emulator"]["principal"], WRITER);
}

#[tokio::test]
async fn deny_and_no_match_are_403_naming_the_cause() {
    let (w, _audit) = setup("deny").await;
    let (status, body) = call(&w, false, "GET", "/storage/v1/b/secret/o", None).await;
    assert_eq!(status, 403);
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("denied-bucket"), "{msg}");
    // POST matches no route (gcs-read is GET/HEAD only).
    let (status, body) = call(&w, false, "POST", "/storage/v1/b/data/o", None).await;
    assert_eq!(status, 403);
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("no [[route]] matches POST storage.googleapis.com"),
        "{msg}"
    );
    assert_eq!(
        w.emu.counters().total("storage"),
        0,
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn an_iam_refusal_is_503_carrying_iams_message() {
    let (w, _audit) = setup("refused").await;
    for h2 in [false, true] {
        let (status, body) = call(&w, h2, "GET", "/storage/v1/b/refused/o", None).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["status"], "UNAVAILABLE");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("route \"refused\""), "{msg}");
        assert!(msg.contains(NOBODY), "{msg}");
        assert!(
            msg.contains("Permission 'iam.serviceAccounts.getAccessToken' denied"),
            "{msg}"
        );
    }
    // Other routes keep working.
    let (status, _) = call(&w, false, "GET", "/storage/v1/b/data/o", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn keep_policy_forwards_the_clients_authorization() {
    let (w, _audit) = setup("keep").await;
    // The emulator does not know the client's token: 401 proves it was kept.
    let (status, body) = call(
        &w,
        false,
        "GET",
        "/storage/v1/b/keep/o",
        Some("Bearer client-own-token"),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    // Without one, the route's token is attached.
    let (status, body) = call(&w, false, "GET", "/storage/v1/b/keep/o", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["emulator"]["principal"], READER);
}

#[tokio::test]
async fn quota_project_sets_x_goog_user_project() {
    let (w, _audit) = setup("quota").await;
    let (status, body) = call(&w, true, "GET", "/storage/v1/b/billed/o", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["emulator"]["userProject"], "billing-project");
    let (_, body) = call(&w, true, "GET", "/storage/v1/b/data/o", None).await;
    assert_eq!(body["emulator"]["userProject"], serde_json::Value::Null);
}

#[tokio::test]
async fn the_audit_line_has_the_fields_and_no_token() {
    let (w, audit) = setup("audit").await;
    let (status, _) = call(
        &w,
        false,
        "GET",
        "/storage/v1/b/chain/o?access_token=ya29.from-query",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(&w, true, "GET", "/storage/v1/b/secret/o", None).await;
    assert_eq!(status, 403);
    // Records are written when the response body ends, by a writer thread.
    eventually(std::time::Duration::from_secs(5), || async {
        let text = std::fs::read_to_string(&audit.path).unwrap_or_default();
        text.lines().count() >= 2
    })
    .await;
    let text = std::fs::read_to_string(&audit.path).unwrap_or_default();
    let lines: Vec<serde_json::Value> = text.lines().map(json).collect();
    assert_eq!(lines.len(), 2, "{text}");
    let ok = &lines[0];
    for field in [
        "time",
        "client",
        "method",
        "host",
        "path",
        "route",
        "action",
        "status",
        "duration_ms",
        "bytes_in",
        "bytes_out",
    ] {
        assert!(ok.get(field).is_some(), "missing {field}: {ok}");
    }
    assert_eq!(ok["route"], "via-chain");
    assert_eq!(ok["action"], "impersonate");
    assert_eq!(ok["target_principal"], WRITER);
    assert_eq!(ok["delegates"][0], HOP);
    assert_eq!(ok["status"], 200);
    assert_eq!(
        ok["path"], "/storage/v1/b/chain/o",
        "no query string in the record"
    );
    assert!(ok["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(lines[1]["route"], "denied-bucket");
    assert_eq!(lines[1]["status"], 403);
    assert!(
        !text.contains("ya29."),
        "a token reached the audit log: {text}"
    );
}

#[tokio::test]
async fn id_token_routes_attach_a_jwt_for_the_audience() {
    let dir = tempdir("idtok-up");
    let certs = upstream_certs(&dir, &["hello.run.app"]);
    let (up, _) = start_upstream(Some(certs.server)).await;
    let routes = format!(
        r#"
[[route]]
name = "run-invoke"
hosts = ["hello.run.app"]
id_token = {{ audience = "https://hello.run.app", impersonate = "{READER}" }}
"#
    );
    // The route's host is intercepted because a route names it; the
    // upstream's CA joins the emulator's in extra_ca.
    let extra = format!("\"hello.run.app\" = \"{up}\"\n");
    let emu_dir = tempdir("idtok-emu");
    let emu = impersonate_proxy::emulator::Emulator::start(
        impersonate_proxy::emulator::EmulatorOptions {
            dir: Some(emu_dir.to_path_buf()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    emu.grant_token_creator(SOURCE_SA, READER);
    let key = emu.write_service_account_key(&emu_dir, SOURCE_SA).unwrap();
    let upstream = emulator_upstream_toml(&emu, &extra).replacen(
        "extra_ca = [",
        &format!("extra_ca = [\"{}\", ", certs.ca_pem.display()),
        1,
    );
    let toml = format!(
        "[source]\ntype = \"service_account\"\nfile = \"{}\"\n{upstream}\n{routes}",
        key.display()
    );
    let (cfg, cdir) = config_with_ca("idtok2", &toml);
    let proxy = start_proxy(cfg, cdir).await;
    let mut c = client(&proxy, "hello.run.app", true).await;
    let resp = c
        .send(for_version(get("hello.run.app", "/echo"), true))
        .await;
    assert_eq!(resp.status(), 200);
    let v = json(&body_string(resp).await);
    let auth = v["headers"]["authorization"].as_str().unwrap();
    let jwt = auth.strip_prefix("Bearer ").unwrap();
    let claims = impersonate_proxy::google::jwt::decode_unverified(jwt).unwrap();
    assert_eq!(claims.claim_str("aud"), Some("https://hello.run.app"));
    assert_eq!(claims.claim_str("email"), Some(READER));
}
