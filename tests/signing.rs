//! The rest of IAM Credentials through the proxy, against the emulator:
//! `sign_as` routes (the source credential, the route's delegates in the
//! body, token-endpoint assertions refused unless allowed, IAM's own
//! refusal for a delegate chain hop), V4 signed URLs made by an unmodified
//! google-cloud-storage client and fetched by a plain curl, keyless
//! domain-wide delegation (`subject`), time-boxed routes
//! (`refresh = false`), and the `token` command's signing modes.

#[path = "support/client.rs"]
mod client;
// Only the client world and its helpers; the rest serves client_matrix.rs.
#[allow(dead_code)]
#[path = "support/matrix.rs"]
mod matrix;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::Request;
use impersonate_proxy::google::jwt::verify_rs256;

use client::{body_string, client, full, json};
use proxy::{
    config_with_proxy_keys, emu_world, emulator_upstream_toml, emulator_with_key, start_reloadable,
    SOURCE_SA,
};
use support::eventually;

const IAM: &str = "iamcredentials.googleapis.com";
const READER: &str = "reader@emulator-project.iam.gserviceaccount.com";
const MID: &str = "mid@emulator-project.iam.gserviceaccount.com";
const SIGNER: &str = "signer@emulator-project.iam.gserviceaccount.com";
const DWD: &str = "dwd@emulator-project.iam.gserviceaccount.com";
const JOB: &str = "job@emulator-project.iam.gserviceaccount.com";
const ADMIN: &str = "admin@example.com";

/// POSTs `body` to IAM Credentials `:{method}` for `account`, through the
/// proxy, with a metadata-style placeholder as the client's credential.
async fn iam_call(
    proxy: &proxy::TestProxy,
    account: &str,
    method: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut c = client(proxy, IAM, false).await;
    let req = Request::post(format!(
        "/v1/projects/-/serviceAccounts/{account}:{method}?alt=json"
    ))
    .header("host", IAM)
    .header(
        "authorization",
        "Bearer ya29.impersonate-proxy-placeholder.x",
    )
    .header("content-type", "application/json")
    .body(full(body.to_string()))
    .unwrap();
    let resp = c.send(req).await;
    let status = resp.status().as_u16();
    (status, json(&body_string(resp).await))
}

/// A token-endpoint assertion's claims.
fn assertion(iss: &str) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::json!({
        "iss": iss,
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "aud": "https://oauth2.googleapis.com/token",
        "iat": now - 10,
        "exp": now + 600,
    })
}

/// `base64(base64url(header).base64url(claims))`: a JWT signing input as
/// a `signBlob` payload.
fn signing_input(claims: &serde_json::Value) -> String {
    STANDARD.encode(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    ))
}

fn audit_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn sign_as_sends_the_source_credential_and_writes_the_routes_delegates() {
    let routes = format!(
        r#"[audit]
file = "audit.jsonl"

[[route]]
name = "sign-as-reader"
hosts = ["{IAM}"]
sign_as = "{READER}"
delegates = ["{MID}"]
"#
    );
    let w = emu_world("sign-as", &routes, "").await;
    w.emu.grant_token_creator(SOURCE_SA, MID);
    w.emu.grant_token_creator(MID, READER);

    let (status, v) = iam_call(
        &w.proxy,
        READER,
        "signBlob",
        serde_json::json!({"payload": STANDARD.encode("hello")}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    // Signed by the reader's own key, through the chain the route wrote.
    let (kid, public) = w.emu.signing_key(READER);
    assert_eq!(v["keyId"], kid.as_str());
    let sig = STANDARD.decode(v["signedBlob"].as_str().unwrap()).unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, &public)
        .verify(b"hello", &sig)
        .expect("the signature verifies with the reader's key");
    assert_eq!(w.emu.counters().get("signBlob", READER), 1);

    // The same chain named by the client passes; another one is a 400.
    let (status, _) = iam_call(
        &w.proxy,
        READER,
        "signJwt",
        serde_json::json!({"payload": "{\"sub\":\"x\"}", "delegates": [format!("projects/-/serviceAccounts/{MID}")]}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, v) = iam_call(
        &w.proxy,
        READER,
        "signBlob",
        serde_json::json!({"payload": "aGk=", "delegates": [SIGNER]}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("route \"sign-as-reader\""),
        "{v}"
    );

    // Nothing else matches: another account, another IAM method.
    let (status, _) = iam_call(
        &w.proxy,
        SIGNER,
        "signBlob",
        serde_json::json!({"payload": "aGk="}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = iam_call(
        &w.proxy,
        READER,
        "generateAccessToken",
        serde_json::json!({"scope": ["x"]}),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(w.emu.counters().total("generateAccessToken"), 0);

    // A hop without Token Creator: IAM's own message reaches the client.
    w.emu.revoke_token_creator(MID, READER);
    let (status, v) = iam_call(
        &w.proxy,
        READER,
        "signBlob",
        serde_json::json!({"payload": "aGk="}),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(
        v["error"]["message"],
        "Permission 'iam.serviceAccounts.signBlob' denied on resource (or it may not exist)."
    );

    // The audit records the method and the account.
    let audit = w.proxy._dir.join("audit.jsonl");
    assert!(
        eventually(Duration::from_secs(5), || async {
            audit_records(&audit).len() >= 6
        })
        .await
    );
    let records = audit_records(&audit);
    let signed: Vec<_> = records
        .iter()
        .filter(|r| r["action"] == "sign_as")
        .map(|r| {
            (
                r["sign"].as_str().unwrap_or_default().to_owned(),
                r["target_principal"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                r["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        signed,
        [
            ("signBlob".to_owned(), READER.to_owned(), 200),
            ("signJwt".to_owned(), READER.to_owned(), 200),
            ("signBlob".to_owned(), READER.to_owned(), 400),
            ("signBlob".to_owned(), READER.to_owned(), 403),
        ]
    );
    assert_eq!(
        records[0]["delegates"],
        serde_json::json!([MID]),
        "{records:?}"
    );
}

#[tokio::test]
async fn token_endpoint_assertions_are_refused_unless_the_route_allows_them() {
    let routes = format!(
        r#"[[route]]
name = "sign-as-reader"
hosts = ["{IAM}"]
sign_as = "{READER}"

[[route]]
name = "sign-as-signer"
hosts = ["{IAM}"]
sign_as = "{SIGNER}"
allow_token_assertions = true

[[route]]
name = "token-endpoint-and-certs"
hosts = ["oauth2.googleapis.com", "www.googleapis.com"]
action = "passthrough"
"#
    );
    let w = emu_world("assertions", &routes, "").await;
    w.emu.grant_token_creator(SOURCE_SA, READER);
    w.emu.grant_token_creator(SOURCE_SA, SIGNER);

    for (method, payload) in [
        ("signJwt", serde_json::json!(assertion(READER).to_string())),
        (
            "signBlob",
            serde_json::json!(signing_input(&assertion(READER))),
        ),
    ] {
        let (status, v) = iam_call(
            &w.proxy,
            READER,
            method,
            serde_json::json!({"payload": payload}),
        )
        .await;
        assert_eq!(status, 403, "{method}: {v}");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(
            m.contains("route \"sign-as-reader\"") && m.contains("allow_token_assertions"),
            "{m}"
        );
    }
    assert_eq!(w.emu.counters().get("signJwt", READER), 0);
    assert_eq!(w.emu.counters().get("signBlob", READER), 0);
    // Another audience is signed.
    let mut other = assertion(READER);
    other["aud"] = serde_json::json!("https://storage.googleapis.com/");
    let (status, _) = iam_call(
        &w.proxy,
        READER,
        "signJwt",
        serde_json::json!({"payload": other.to_string()}),
    )
    .await;
    assert_eq!(status, 200);

    // Allowed: the signed assertion is a credential the token endpoint
    // takes.
    let (status, v) = iam_call(
        &w.proxy,
        SIGNER,
        "signJwt",
        serde_json::json!({"payload": assertion(SIGNER).to_string()}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let jwt = v["signedJwt"].as_str().unwrap();
    let (status, _) = iam_call(
        &w.proxy,
        SIGNER,
        "signBlob",
        serde_json::json!({"payload": signing_input(&assertion(SIGNER))}),
    )
    .await;
    assert_eq!(status, 200);
    let mut c = client(&w.proxy, "oauth2.googleapis.com", false).await;
    let form =
        format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}");
    let resp = c
        .send(
            Request::post("/token")
                .header("host", "oauth2.googleapis.com")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(full(form))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let token = json(&body_string(resp).await)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(w.emu.principal_of(&token).as_deref(), Some(SIGNER));

    // Google publishes the key's certificate: the JWT verifies with it.
    let mut c = client(&w.proxy, "www.googleapis.com", false).await;
    let resp = c
        .send(client::get(
            "www.googleapis.com",
            &format!("/service_accounts/v1/metadata/x509/{SIGNER}"),
        ))
        .await;
    assert_eq!(resp.status(), 200);
    let certs = json(&body_string(resp).await);
    let kid = verify_rs256(jwt, &w.emu.signing_key(SIGNER).1)
        .unwrap()
        .header["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let pem = certs[&kid]
        .as_str()
        .unwrap_or_else(|| panic!("no {kid} in {certs}"));
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let public = cert.public_key().subject_public_key.data.to_vec();
    verify_rs256(jwt, &public).expect("the JWT verifies with the published certificate");
    assert!(verify_rs256(jwt, &w.emu.signing_key(READER).1).is_err());
    let resp = c
        .send(client::get(
            "www.googleapis.com",
            &format!("/service_accounts/v1/jwk/{SIGNER}"),
        ))
        .await;
    assert_eq!(
        json(&body_string(resp).await)["keys"][0]["kid"],
        kid.as_str()
    );
}

#[tokio::test]
async fn a_subject_route_acts_for_the_user_through_the_service_account() {
    let routes = format!(
        r#"[[route]]
name = "workspace-admin"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/admin"
impersonate = "{DWD}"
subject = "{ADMIN}"
scopes = ["https://www.googleapis.com/auth/admin.directory.user.readonly"]

[[route]]
name = "no-grant"
hosts = ["storage.googleapis.com"]
impersonate = "{JOB}"
subject = "{ADMIN}"
"#
    );
    let w = emu_world("subject", &routes, "").await;
    w.emu.grant_token_creator(SOURCE_SA, DWD);
    let admin = || async {
        let mut c = client(&w.proxy, "storage.googleapis.com", false).await;
        let resp = c
            .send(client::get("storage.googleapis.com", "/storage/v1/b/admin"))
            .await;
        let status = resp.status().as_u16();
        (status, json(&body_string(resp).await))
    };
    // Before a Workspace admin allows the account: the token endpoint's
    // refusal, naming the route.
    let (status, v) = admin().await;
    assert_eq!(status, 503, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("route \"workspace-admin\"")
            && m.contains("unauthorized_client")
            && m.contains("Domain-wide delegation"),
        "{m}"
    );
    w.emu.allow_domain_wide_delegation(DWD);
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, v) = admin().await;
        last = v;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last["emulator"]["principal"],
        format!("{ADMIN} via {DWD}"),
        "{last}"
    );
    // Minted with signJwt as the account, never generateAccessToken.
    assert!(w.emu.counters().get("signJwt", DWD) >= 2);
    assert_eq!(w.emu.counters().total("generateAccessToken"), 0);
    let mut c = client(&w.proxy, "storage.googleapis.com", false).await;

    // Without Token Creator: IAM's message, naming the route.
    let resp = c
        .send(client::get("storage.googleapis.com", "/storage/v1/b/other"))
        .await;
    assert_eq!(resp.status(), 503);
    let v = json(&body_string(resp).await);
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("route \"no-grant\"")
            && m.contains("Permission 'iam.serviceAccounts.signJwt' denied"),
        "{m}"
    );
}

#[tokio::test]
async fn a_time_boxed_route_serves_for_its_lifetime_then_503s_without_calling_iam() {
    let (emu, key, emu_dir) = emulator_with_key("time-box").await;
    emu.grant_token_creator(SOURCE_SA, JOB);
    let toml = format!(
        r#"[audit]
enabled = false

[source]
type = "service_account"
file = "{}"
{}
[[route]]
name = "one-off-job"
hosts = ["storage.googleapis.com"]
impersonate = "{JOB}"
lifetime = "20s"
refresh = false
warm = true
"#,
        key.display(),
        emulator_upstream_toml(&emu, "")
    );
    let (cfg, dir) = config_with_proxy_keys("time-box", "admin = \"127.0.0.1:0\"", &toml);
    let (proxy, reloader) = start_reloadable(cfg, dir).await;
    let admin = proxy.admin.unwrap();
    let get = || async {
        let mut c = client(&proxy, "storage.googleapis.com", false).await;
        let resp = c
            .send(client::get("storage.googleapis.com", "/storage/v1/b/job"))
            .await;
        let status = resp.status().as_u16();
        (status, json(&body_string(resp).await))
    };
    let (status, v) = get().await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["emulator"]["principal"], JOB);
    let token = emu.issued_secrets();
    let minted_until = token
        .iter()
        .filter_map(|t| emu.issued(t))
        .find(|i| i.principal == JOB)
        .unwrap()
        .expire_time;
    // Served for the whole box…
    let started = std::time::SystemTime::now();
    assert!(minted_until > started + Duration::from_secs(15));
    // …then refused, naming the route and when the box ended.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let last = loop {
        let (status, v) = get().await;
        if status == 503 {
            break v;
        }
        assert_eq!(status, 200, "{v}");
        assert!(std::time::SystemTime::now() <= minted_until + Duration::from_secs(2));
        assert!(
            tokio::time::Instant::now() < deadline,
            "the route kept serving"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(std::time::SystemTime::now() >= minted_until);
    let m = last["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        m.contains("route \"one-off-job\"") && m.contains("time box ended at "),
        "{m}"
    );
    assert_eq!(emu.counters().get("generateAccessToken", JOB), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(get().await.0, 503);
    assert_eq!(
        emu.counters().get("generateAccessToken", JOB),
        1,
        "no IAM call after the box ended"
    );
    // /readyz is not held back by an ended box (the route is warm).
    let (status, body) = client::http_get(admin, "GET", "/readyz").await;
    assert_eq!(status, 200, "{body}");
    // A reload mints a new box.
    reloader.reload().unwrap();
    let (status, _) = get().await;
    assert_eq!(status, 200);
    assert_eq!(emu.counters().get("generateAccessToken", JOB), 2);
    drop(emu_dir);
}

// --- Signed URLs with an unmodified client ------------------------------

#[test]
fn python_storage_signed_url_through_the_metadata_endpoint_is_fetched_by_plain_curl() {
    use matrix::*;
    if !require_runtime("python3", "google-cloud-storage") || !require_runtime("curl", "curl") {
        return;
    }
    netns::isolated(
        "python_storage_signed_url_through_the_metadata_endpoint_is_fetched_by_plain_curl",
        || {
            let python = clients_dir().join("python/.venv/bin/python");
            require_installed(&python);
            let script = clients_dir().join("python/signed_url.py");
            runtime().block_on(async {
                // The route `run --impersonate` adds, and the README shows.
                let routes = format!(
                    "[[route]]\nname = \"sign-as\"\nhosts = [\"{IAM}\"]\nsign_as = \"{TARGET}\"\n"
                );
                let w = World::start_with_routes("signed-url", &routes).await;
                w.emu.put_object("signed-bucket", "report.txt", "signed hello\n");
                let script = script.display().to_string();
                let sign = |method: &'static str, object: &'static str| {
                    let args = [script.clone(), "signed-bucket".into(), object.into(), method.into()];
                    let (w, python) = (&w, &python);
                    async move {
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        w.run_client(python, &args).await
                    }
                };
                let v = sign("GET", "report.txt").await.json();
                assert_eq!(
                    v["credentials"], "google.auth.compute_engine.credentials.Credentials",
                    "{v}"
                );
                assert_eq!(v["email"], TARGET);
                let url = v["url"].as_str().unwrap().to_owned();
                assert!(url.starts_with("https://storage.googleapis.com/signed-bucket/report.txt?"));
                assert_eq!(w.emu.counters().get("signBlob", TARGET), 1);

                // A plain curl: no proxy, no token; the emulator checks the
                // signature against the target's key.
                let curl = |args: Vec<String>| curl_without_proxy(&w.emu, args);
                assert_eq!(
                    curl(vec![url.clone()]).await,
                    ("200".to_owned(), "signed hello\n".to_owned())
                );
                let calls = w.emu.data_calls();
                assert_eq!(calls.last().unwrap().principal, TARGET);
                // A changed URL is refused.
                let tampered = url.replace("report.txt", "other.txt");
                let (code, body) = curl(vec![tampered]).await;
                assert_eq!(code, "403", "{body}");
                assert!(body.contains("SignatureDoesNotMatch"), "{body}");

                // PUT: an upload by signed URL.
                let v = sign("PUT", "upload.txt").await.json();
                let put = v["url"].as_str().unwrap().to_owned();
                let (code, body) =
                    curl(vec!["-X".into(), "PUT".into(), "--data-binary".into(), "uploaded by URL".into(), put]).await;
                assert_eq!(code, "200", "{body}");
                assert_eq!(
                    w.emu.object("signed-bucket", "upload.txt").as_deref(),
                    Some(&b"uploaded by URL"[..])
                );

                // The proxy audited each signBlob as the target.
                let signs = w
                    .audit()
                    .iter()
                    .filter(|r| r["action"] == "sign_as" && r["sign"] == "signBlob")
                    .filter(|r| r["target_principal"] == TARGET && r["status"] == 200)
                    .count();
                assert_eq!(signs, 2);
            })
        },
    );
}

#[test]
fn node_storage_signed_url_through_the_metadata_endpoint_is_fetched_by_plain_curl() {
    use matrix::*;
    if !require_runtime("node", "@google-cloud/storage") || !require_runtime("curl", "curl") {
        return;
    }
    netns::isolated(
        "node_storage_signed_url_through_the_metadata_endpoint_is_fetched_by_plain_curl",
        || {
            let dir = clients_dir().join("node");
            require_installed(&dir.join("node_modules/@google-cloud/storage"));
            let script = dir.join("signed_url.js").display().to_string();
            runtime().block_on(async {
                let routes = format!(
                    "[[route]]\nname = \"sign-as\"\nhosts = [\"{IAM}\"]\nsign_as = \"{TARGET}\"\n"
                );
                let w = World::start_with_routes("node-signed-url", &routes).await;
                w.emu
                    .put_object("signed-bucket", "node.txt", "node hello\n");
                let v = w
                    .run_client(
                        std::path::Path::new("node"),
                        &[&script, "signed-bucket", "node.txt"],
                    )
                    .await
                    .json();
                let url = v["url"].as_str().unwrap().to_owned();
                assert!(
                    url.starts_with("https://storage.googleapis.com/signed-bucket/node.txt?"),
                    "{url}"
                );
                assert_eq!(w.emu.counters().get("signBlob", TARGET), 1);
                assert_eq!(
                    curl_without_proxy(&w.emu, vec![url]).await,
                    ("200".to_owned(), "node hello\n".to_owned())
                );
            })
        },
    );
}

/// `curl ARGS` with no proxy and no token: `storage.googleapis.com`
/// reaches the emulator (`--connect-to`), trusted by its CA. Returns the
/// status and the body.
async fn curl_without_proxy(
    emu: &impersonate_proxy::emulator::Emulator,
    args: Vec<String>,
) -> (String, String) {
    let connect = format!("storage.googleapis.com:443:{}", emu.addr());
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--connect-to",
            &connect,
            "--cacert",
        ])
        .arg(emu.ca_pem_path())
        .args(["-w", "\n%{http_code}"])
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_owned(), body.to_owned())
}

// --- The token command --------------------------------------------------

#[tokio::test]
async fn the_token_command_signs_blobs_and_jwts_and_mints_delegated_tokens() {
    let (emu, key, dir) = emulator_with_key("token-cli").await;
    emu.grant_token_creator(SOURCE_SA, MID);
    emu.grant_token_creator(MID, SIGNER);
    emu.allow_domain_wide_delegation(SIGNER);
    let config = dir.join("cli.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\ntype = \"service_account\"\nfile = \"{}\"\n{}",
            key.display(),
            emulator_upstream_toml(&emu, "")
        ),
    )
    .unwrap();
    let run = |args: Vec<String>| {
        let config = config.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
                .arg("token")
                .arg("--config")
                .arg(&config)
                .args(&args)
                .env("RUST_LOG", "warn")
                .output()
                .await
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let blob = dir.join("blob.bin");
    std::fs::write(&blob, b"sign me").unwrap();
    let claims = dir.join("claims.json");
    std::fs::write(&claims, r#"{"sub":"someone","aud":"https://example.com"}"#).unwrap();
    let (kid, public) = emu.signing_key(SIGNER);

    // --sign-blob: keyId and the base64 signature.
    let (code, out, err) = run(vec![
        "--impersonate".into(),
        SIGNER.into(),
        "--delegates".into(),
        MID.into(),
        "--sign-blob".into(),
        blob.display().to_string(),
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(format!("keyId: {kid}").as_str()));
    let sig = lines.next().unwrap().strip_prefix("signature: ").unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, &public)
        .verify(b"sign me", &STANDARD.decode(sig).unwrap())
        .expect("the signature verifies with the signer's key");

    // --sign-jwt: the signed JWT, with the claims and an exp IAM added.
    let (code, out, err) = run(vec![
        "--impersonate".into(),
        SIGNER.into(),
        "--delegates".into(),
        MID.into(),
        "--sign-jwt".into(),
        claims.display().to_string(),
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    let jwt = verify_rs256(out.trim(), &public).expect("an RS256 JWT by the signer's key");
    assert_eq!(jwt.claim_str("sub"), Some("someone"));
    assert!(jwt.claims["exp"].as_u64().is_some());

    // --subject: a token acting for the user.
    let (code, out, err) = run(vec![
        "--impersonate".into(),
        SIGNER.into(),
        "--delegates".into(),
        MID.into(),
        "--subject".into(),
        ADMIN.into(),
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        emu.principal_of(out.trim()).as_deref(),
        Some(format!("{ADMIN} via {SIGNER}").as_str())
    );

    // check --live mints a subject route's token the same way.
    let live = dir.join("live.toml");
    std::fs::write(
        &live,
        format!(
            "{}\n[[route]]\nname = \"workspace-admin\"\nhosts = [\"admin.googleapis.com\"]\nimpersonate = \"{SIGNER}\"\ndelegates = [\"{MID}\"]\nsubject = \"{ADMIN}\"\n",
            std::fs::read_to_string(&config).unwrap()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
        .args(["check", "--live", "--config"])
        .arg(&live)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("access(subject {ADMIN})")) && text.contains("ok, expires in"),
        "{text}"
    );

    // IAM's refusal: exit 1 with its message; a missing file: exit 2.
    let (code, _, err) = run(vec![
        "--impersonate".into(),
        SIGNER.into(),
        "--sign-blob".into(),
        blob.display().to_string(),
    ])
    .await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("Permission 'iam.serviceAccounts.signBlob' denied"),
        "{err}"
    );
    let (code, _, err) = run(vec![
        "--impersonate".into(),
        SIGNER.into(),
        "--sign-jwt".into(),
        dir.join("missing.json").display().to_string(),
    ])
    .await;
    assert_eq!(code, Some(2), "{err}");
}

// --- Zero config ---------------------------------------------------------

#[test]
fn run_impersonate_adds_the_sign_as_route_ahead_of_the_catch_all() {
    netns::isolated(
        "run_impersonate_adds_the_sign_as_route_ahead_of_the_catch_all",
        || {
            matrix::runtime().block_on(async {
                // ADC is a key whose token endpoint cannot be reached here
                // (no network): every credential fails, and the 503 names
                // the route that answered.
                let (emu, key, dir) = emulator_with_key("zero-config").await;
                drop(emu);
                impersonate_proxy::ca::init(&dir.join("certs"), false).unwrap();
                let mut child =
                    tokio::process::Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
                        .args(["run", "--impersonate", READER, "--listen", "127.0.0.1:0"])
                        .current_dir(&*dir)
                        .env_clear()
                        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                        .env("HOME", &*dir)
                        .env("GOOGLE_APPLICATION_CREDENTIALS", &key)
                        .env("RUST_LOG", "error")
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::null())
                        .kill_on_drop(true)
                        .spawn()
                        .unwrap();
                let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
                    child.stdout.take().unwrap(),
                ));
                let addr: std::net::SocketAddr = loop {
                    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                        .await
                        .expect("run prints its export block")
                        .unwrap()
                        .expect("run prints GCE_METADATA_HOST");
                    if let Some(a) = line.strip_prefix("export GCE_METADATA_HOST=") {
                        break a.parse().unwrap();
                    }
                };
                let proxy = proxy::TestProxy {
                    addr,
                    admin: None,
                    ca_pem: dir.join("certs/ca.pem"),
                    _dir: support::tempdir("zero-config-client"),
                    shutdown: None,
                    done: None,
                };
                let (status, v) = iam_call(
                    &proxy,
                    READER,
                    "signBlob",
                    serde_json::json!({"payload": "aGk="}),
                )
                .await;
                assert_eq!(status, 503, "{v}");
                let m = v["error"]["message"].as_str().unwrap();
                assert!(m.starts_with("route \"sign-as\": no token"), "{m}");
                // Everything else is still the catch-all's.
                let (status, v) = iam_call(
                    &proxy,
                    READER,
                    "generateIdToken",
                    serde_json::json!({"audience": "x"}),
                )
                .await;
                assert_eq!(status, 503, "{v}");
                let m = v["error"]["message"].as_str().unwrap();
                assert!(m.starts_with("route \"impersonate\": no token"), "{m}");
                let _ = child.start_kill();
            })
        },
    );
}

#[test]
fn explain_names_the_account_a_sign_as_route_signs_for() {
    let dir = support::tempdir("sign-explain");
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[[route]]\nname = \"sign-as-reader\"\nhosts = [\"{IAM}\"]\nsign_as = \"{READER}\"\n"
        ),
    )
    .unwrap();
    let explain = |account: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
            .arg("explain")
            .arg("--config")
            .arg(&config)
            .arg("POST")
            .arg(format!(
                "https://{IAM}/v1/projects/-/serviceAccounts/{account}:signBlob"
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = explain(READER);
    assert!(
        out.contains("WINNER sign-as-reader")
            && out.contains(&format!("signBlob for {READER}"))
            && out.contains("action     sign_as"),
        "{out}"
    );
    let out = explain(SIGNER);
    assert!(
        out.contains("no     sign-as-reader")
            && out.contains("a sign_as route matches only POST")
            && out.contains("result     403"),
        "{out}"
    );
}
