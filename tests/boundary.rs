//! Credential Access Boundaries (`access_boundary`) through the proxy
//! against the emulator: a route's token is exchanged at STS for a
//! downscoped one that Cloud Storage holds to the boundary; `{bucket}`
//! routes get one token per bucket; an STS outage does not interrupt a
//! valid downscoped token; bad boundaries are config errors naming the key.

#[path = "support/client.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use impersonate_proxy::emulator::Emulator;
use impersonate_proxy::Config;

use client::*;
use proxy::*;
use support::*;

const STORAGE: &str = "storage.googleapis.com";
const TARGET: &str = "shared@emulator-project.iam.gserviceaccount.com";

fn tenant_a_route() -> String {
    format!(
        r#"
[[route]]
name = "tenant-a-reports"
hosts = ["storage.googleapis.com"]
impersonate = "{TARGET}"
access_boundary = [
  {{ resource = "//storage.googleapis.com/projects/_/buckets/tenant-a",
    permissions = ["inRole:roles/storage.objectViewer"],
    condition = "resource.name.startsWith('projects/_/buckets/tenant-a/objects/reports/')" }},
]
"#
    )
}

fn per_bucket_route() -> String {
    format!(
        r#"
[[route]]
name = "per-bucket"
hosts = ["storage.googleapis.com"]
impersonate = "{TARGET}"
access_boundary = [
  {{ resource = "//storage.googleapis.com/projects/_/buckets/{{bucket}}", permissions = ["inRole:roles/storage.objectAdmin"] }},
]
"#
    )
}

/// An emulator world with `route` and an audit file in `audit_dir`.
async fn world(name: &str, route: &str, audit_dir: &Path) -> EmuWorld {
    let toml = format!(
        "[audit]\nfile = \"{}\"\n{route}",
        audit_dir.join("audit.jsonl").display()
    );
    let w = emu_world(name, &toml, "").await;
    w.emu.grant_token_creator(SOURCE_SA, TARGET);
    w
}

/// `method path` through the proxy: status and body.
async fn call(w: &EmuWorld, method: &str, path: &str) -> (StatusCode, String) {
    let mut c = client(&w.proxy, STORAGE, false).await;
    let mut req = for_version(get(STORAGE, path), false);
    *req.method_mut() = method.parse().unwrap();
    let resp = c.send(req).await;
    let status = resp.status();
    (status, body_string(resp).await)
}

/// `GET path` straight to the emulator's Storage with `token`.
async fn direct(emu: &Emulator, token: &str, path: &str) -> (StatusCode, String) {
    let tcp = tokio::net::TcpStream::connect(emu.addr()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(STORAGE).unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_tls(emu.ca_pem_path(), &[b"http/1.1"]))
        .connect(name, tcp)
        .await
        .unwrap();
    let mut c = handshake(tls, false).await;
    let mut req = for_version(get(STORAGE, path), false);
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let resp = c.send(req).await;
    let status = resp.status();
    (status, body_string(resp).await)
}

fn audit_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(json)
        .collect()
}

#[tokio::test]
async fn tenant_a_reports_reads_only_under_reports_and_never_writes() {
    let audit = tempdir("boundary-tenant-audit");
    let w = world("boundary-tenant", &tenant_a_route(), &audit).await;
    w.emu.put_object("tenant-a", "reports/q3.csv", "q3 numbers");
    w.emu.put_object("tenant-a", "payroll/q3.csv", "salaries");

    let (status, body) = call(
        &w,
        "GET",
        "/storage/v1/b/tenant-a/o/reports%2Fq3.csv?alt=media",
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "q3 numbers"));

    // Elsewhere in the bucket, and the bucket's other object: the
    // emulator's 403, although the service account itself could read them.
    for path in [
        "/storage/v1/b/tenant-a/o/payroll%2Fq3.csv?alt=media",
        "/storage/v1/b/tenant-a/o/hello.txt?alt=media",
        "/storage/v1/b/tenant-b/o/reports%2Fq3.csv?alt=media",
    ] {
        let (status, body) = call(&w, "GET", path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert!(
            body.contains("does not have storage.objects.get access"),
            "{path}: {body}"
        );
    }
    // Any write, even under reports/.
    let (status, body) = call(
        &w,
        "POST",
        "/upload/storage/v1/b/tenant-a/o?uploadType=media&name=reports/new.csv",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("storage.objects.create"), "{body}");
    assert!(w.emu.object("tenant-a", "reports/new.csv").is_none());

    // What Storage saw: a downscoped token whose base principal is the
    // route's target, carrying the route's boundary.
    let read = w
        .emu
        .data_calls()
        .into_iter()
        .find(|c| c.resource == "tenant-a/reports/q3.csv")
        .expect("the read reached Storage");
    assert_eq!(read.principal, TARGET);
    assert_eq!(
        read.boundary.as_deref(),
        Some("//storage.googleapis.com/projects/_/buckets/tenant-a")
    );
    let downscoped = w.emu.downscoped_tokens();
    assert_eq!(downscoped.len(), 1, "{downscoped:?}");
    assert_eq!(downscoped[0].principal, TARGET);
    // One exchange served every request.
    assert_eq!(w.emu.counters().get("sts", TARGET), 1);

    // The audit record names the boundary's resource, never a token.
    assert!(
        eventually(Duration::from_secs(10), || async {
            audit_lines(&audit).len() >= 5
        })
        .await
    );
    let text = std::fs::read_to_string(audit.join("audit.jsonl")).unwrap();
    for secret in w.emu.issued_secrets() {
        assert!(!text.contains(&secret), "a token is in the audit log");
    }
    for line in audit_lines(&audit) {
        assert_eq!(line["route"], "tenant-a-reports", "{line}");
        assert_eq!(
            line["boundary"], "//storage.googleapis.com/projects/_/buckets/tenant-a",
            "{line}"
        );
    }
}

#[tokio::test]
async fn per_bucket_tokens_differ_are_cached_and_stay_in_their_bucket() {
    let audit = tempdir("boundary-bucket-audit");
    let w = world("boundary-bucket", &per_bucket_route(), &audit).await;
    for _ in 0..3 {
        for bucket in ["alpha-bucket", "beta-bucket"] {
            let (status, body) = call(
                &w,
                "GET",
                &format!("/storage/v1/b/{bucket}/o/hello.txt?alt=media"),
            )
            .await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, "hello\n"),
                "{bucket}"
            );
        }
        // Two exchanges, one per bucket, then none while they are cached.
        assert_eq!(w.emu.counters().get("sts", TARGET), 2);
    }
    // A write through the objectAdmin boundary.
    let (status, body) = call(
        &w,
        "POST",
        "/upload/storage/v1/b/alpha-bucket/o?uploadType=media&name=new.txt",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Different tokens, each limited to its bucket.
    let tokens = w.emu.downscoped_tokens();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert_ne!(tokens[0].token, tokens[1].token);
    let alpha = tokens
        .iter()
        .find(|t| t.boundary.resources().ends_with("/buckets/alpha-bucket"))
        .expect("a token for alpha-bucket");
    assert_eq!(alpha.principal, TARGET);
    for call in w.emu.data_calls() {
        let bucket = call.resource.split('/').next().unwrap().to_owned();
        assert_eq!(
            call.boundary,
            Some(format!(
                "//storage.googleapis.com/projects/_/buckets/{bucket}"
            )),
            "{call:?}"
        );
    }
    // The token obtained for alpha-bucket reads alpha-bucket, not beta-bucket.
    let (status, _) = direct(
        &w.emu,
        &alpha.token,
        "/storage/v1/b/alpha-bucket/o/hello.txt?alt=media",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = direct(
        &w.emu,
        &alpha.token,
        "/storage/v1/b/beta-bucket/o/hello.txt?alt=media",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.contains("does not have storage.objects.get access"),
        "{body}"
    );

    // No single bucket: the proxy's own 403, naming the route.
    for path in [
        "/storage/v1/b?project=p",
        "/storage/v1/b/ab/o",
        "/batch/storage/v1",
    ] {
        let (status, body) = call(&w, "GET", path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert!(body.contains("route \\\"per-bucket\\\""), "{path}: {body}");
        assert!(body.contains("no single valid bucket"), "{path}: {body}");
    }
    assert_eq!(w.emu.counters().get("sts", TARGET), 2);
}

#[tokio::test]
async fn an_sts_outage_keeps_serving_the_valid_downscoped_token() {
    let audit = tempdir("boundary-outage-audit");
    let w = world("boundary-outage", &tenant_a_route(), &audit).await;
    // Short-lived tokens, so the base refreshes (and the proxy exchanges
    // again) within the test.
    w.emu.set_token_lifetime(Some(Duration::from_secs(10)));
    w.emu.put_object("tenant-a", "reports/q3.csv", "q3 numbers");
    let read = "/storage/v1/b/tenant-a/o/reports%2Fq3.csv?alt=media";
    assert_eq!(call(&w, "GET", read).await.0, StatusCode::OK);
    w.emu.set_sts_outage(true);
    // The base token refreshes before it expires and the exchange that
    // follows fails (three attempts), then is retried...
    assert!(
        eventually(Duration::from_secs(15), || async {
            w.emu.counters().total("sts.outage") >= 4
        })
        .await,
        "the proxy never retried a failed exchange"
    );
    // ...while the downscoped token, still valid, keeps serving.
    let (status, body) = call(&w, "GET", read).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "q3 numbers"));
    assert_eq!(w.emu.downscoped_tokens().len(), 1);
    // At its expiry the route fails closed with STS's message.
    let last = std::cell::RefCell::new(String::new());
    let failed = eventually(Duration::from_secs(15), || async {
        let (status, body) = call(&w, "GET", read).await;
        *last.borrow_mut() = body;
        status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let last = last.into_inner();
    assert!(failed, "still served after expiry: {last}");
    assert!(last.contains("tenant-a-reports"), "{last}");
    assert!(last.contains("sts.googleapis.com"), "{last}");
    assert!(
        last.contains("The service is currently unavailable."),
        "{last}"
    );
    // And it recovers once STS does.
    w.emu.set_sts_outage(false);
    assert!(
        eventually(Duration::from_secs(15), || async {
            call(&w, "GET", read).await.0 == StatusCode::OK
        })
        .await
    );
}

fn check(routes: &str) -> String {
    let cfg = Config::parse(Path::new("boundary.toml"), routes).unwrap();
    impersonate_proxy::policy::check(&cfg)
        .map(|_| "accepted".to_owned())
        .unwrap_or_else(|e| e.to_string())
}

fn route(hosts: &str, boundary: &str) -> String {
    format!(
        "[[route]]\nname = \"r\"\nhosts = [{hosts}]\nimpersonate = \"{TARGET}\"\naccess_boundary = [{boundary}]\n"
    )
}

#[test]
fn each_bad_boundary_is_a_config_error_naming_the_key() {
    let storage = "\"storage.googleapis.com\"";
    let rule = |resource: &str, permission: &str, condition: Option<&str>| {
        let c = condition.map_or(String::new(), |c| format!(", condition = \"{c}\""));
        format!("{{ resource = \"//storage.googleapis.com/projects/_/buckets/{resource}\", permissions = [\"{permission}\"]{c} }}")
    };
    let viewer = "inRole:roles/storage.objectViewer";
    let good = rule("b-1", viewer, None);
    assert_eq!(check(&route(storage, &good)), "accepted");
    assert_eq!(
        check(&route(
            "\"*.storage.googleapis.com\"",
            &rule("{bucket}", viewer, None)
        )),
        "accepted"
    );
    let long = "x".repeat(2049);
    let cases = [
        (
            route("\"pubsub.googleapis.com\"", &good),
            "route[0].access_boundary",
            "only Cloud Storage",
        ),
        (
            route(storage, &vec![good.clone(); 11].join(", ")),
            "route[0].access_boundary",
            "at most 10",
        ),
        (
            route(storage, &rule("b-1", "roles/storage.objectViewer", None)),
            "route[0].access_boundary[0].permissions[0]",
            "inRole:",
        ),
        (
            route(storage, &rule("b-1", viewer, Some(&long))),
            "route[0].access_boundary[0].condition",
            "2048",
        ),
        (
            route(storage, &rule("b-1", "inRole:roles/{bucket}", None)),
            "route[0].access_boundary[0].permissions[0]",
            "{bucket} may appear only in resource and condition",
        ),
        (
            route(storage, &rule("B'1", viewer, None)),
            "route[0].access_boundary[0].resource",
            "not a bucket name",
        ),
        (
            format!("[[route]]\nname = \"r\"\nhosts = [{storage}]\nid_token = {{ audience = \"https://x\", impersonate = \"{TARGET}\" }}\naccess_boundary = [{good}]\n"),
            "route[0].access_boundary",
            "impersonate routes only",
        ),
    ];
    for (toml, key, cause) in cases {
        let err = check(&toml);
        assert!(err.contains(key), "{key} not named in: {err}");
        assert!(err.contains(cause), "{cause:?} not in: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_command_prints_a_downscoped_token() {
    let (emu, key, dir) = emulator_with_key("boundary-cli").await;
    emu.grant_token_creator(SOURCE_SA, TARGET);
    let toml = format!(
        "[source]\ntype = \"service_account\"\nfile = \"{}\"\n{}",
        key.display(),
        emulator_upstream_toml(&emu, "")
    );
    let (_cfg, config_dir) = config_with_ca("boundary-cli", &toml);
    let boundary = dir.join("boundary.json");
    std::fs::write(
        &boundary,
        r#"{"accessBoundary":{"accessBoundaryRules":[{"availableResource":"//storage.googleapis.com/projects/_/buckets/alpha-bucket","availablePermissions":["inRole:roles/storage.objectViewer"]}]}}"#,
    )
    .unwrap();
    let config = config_dir.join("proxy.toml");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
            .args(["token", "--impersonate", TARGET, "--access-boundary"])
            .arg(&boundary)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let issued = emu.issued(&token).expect("the emulator issued it");
    assert_eq!(issued.principal, TARGET);
    assert_eq!(
        issued.boundary.map(|b| b.resources()).as_deref(),
        Some("//storage.googleapis.com/projects/_/buckets/alpha-bucket")
    );
    let (status, _) = direct(
        &emu,
        &token,
        "/storage/v1/b/alpha-bucket/o/hello.txt?alt=media",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = direct(
        &emu,
        &token,
        "/storage/v1/b/beta-bucket/o/hello.txt?alt=media",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[test]
fn policy_tests_and_explain_show_the_rendered_boundary() {
    let dir = tempdir("boundary-policy-tools");
    let config = dir.join("proxy.toml");
    let routes = tenant_a_route().replace(
        "name = \"tenant-a-reports\"",
        "name = \"tenant-a-reports\"\npath_prefix = \"/storage/v1/b/tenant-a\"",
    );
    std::fs::write(&config, format!("{routes}{}", per_bucket_route())).unwrap();
    let cases = dir.join("routes.test.toml");
    std::fs::write(
        &cases,
        r#"
[[case]]
request = "GET https://storage.googleapis.com/storage/v1/b/tenant-a/o/reports%2Fq3.csv"
expect = { route = "tenant-a-reports", boundary = "//storage.googleapis.com/projects/_/buckets/tenant-a", status = 0 }

[[case]]
request = "GET https://storage.googleapis.com/storage/v1/b/alpha-bucket/o"
expect = { route = "per-bucket", boundary = "//storage.googleapis.com/projects/_/buckets/alpha-bucket", status = 0 }

[[case]]
request = "GET https://storage.googleapis.com/storage/v1/b?project=p"
expect = { route = "per-bucket", boundary = "none", status = 403 }

[[case]]
name = "a wrong expectation"
request = "GET https://storage.googleapis.com/storage/v1/b/beta-bucket/o"
expect = { boundary = "//storage.googleapis.com/projects/_/buckets/alpha-bucket" }
"#,
    )
    .unwrap();
    let bin = || std::process::Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"));
    let out = bin()
        .args(["check", "--config"])
        .arg(&config)
        .arg("--tests")
        .arg(&cases)
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("4 cases: 3 passed, 1 failed"), "{t}");
    assert!(
        t.contains("boundary    expected \"//storage.googleapis.com/projects/_/buckets/alpha-bucket\", got \"//storage.googleapis.com/projects/_/buckets/beta-bucket\""),
        "{t}"
    );
    let out = bin()
        .args(["explain", "--config"])
        .arg(&config)
        .args([
            "PUT",
            "https://storage.googleapis.com/gamma-bucket/reports/x",
        ])
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("boundary   //storage.googleapis.com/projects/_/buckets/gamma-bucket"),
        "{t}"
    );
}

#[tokio::test]
async fn check_live_exchanges_each_fixed_boundary_once() {
    let (emu, key, dir) = emulator_with_key("boundary-live").await;
    emu.grant_token_creator(SOURCE_SA, TARGET);
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[source]\ntype = \"service_account\"\nfile = \"{}\"\n{}\n{}",
            key.display(),
            emulator_upstream_toml(&emu, ""),
            tenant_a_route()
        ),
    )
    .unwrap();
    let live = || async {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
            .args(["check", "--live", "--config"])
            .arg(&config)
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, stdout) = live().await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("tenant-a-reports  //storage.googleapis.com/projects/_/buckets/tenant-a  ok, expires in"),
        "{stdout}"
    );
    assert_eq!(emu.counters().get("sts", TARGET), 1);
    emu.set_sts_outage(true);
    let (code, stdout) = live().await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("FAILED: sts.googleapis.com is unavailable"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_reload_keeps_a_fixed_boundarys_token() {
    let (emu, key, _emu_dir) = emulator_with_key("boundary-reload").await;
    emu.grant_token_creator(SOURCE_SA, TARGET);
    emu.put_object("tenant-a", "reports/q3.csv", "q3 numbers");
    let tenant = tenant_a_route().replace(
        "name = \"tenant-a-reports\"",
        "name = \"tenant-a-reports\"\npath_prefix = \"/storage/v1/b/tenant-a\"",
    );
    let toml = format!(
        "[source]\ntype = \"service_account\"\nfile = \"{}\"\n{}\n{tenant}{}",
        key.display(),
        emulator_upstream_toml(&emu, ""),
        per_bucket_route()
    );
    let (cfg, dir) = config_with_ca("boundary-reload", &toml);
    let (proxy, reloader) = start_reloadable(cfg, dir).await;
    let w = EmuWorldRef { proxy: &proxy };
    let both = || async {
        let (a, _) = w
            .call("/storage/v1/b/tenant-a/o/reports%2Fq3.csv?alt=media")
            .await;
        let (b, _) = w
            .call("/storage/v1/b/alpha-bucket/o/hello.txt?alt=media")
            .await;
        (a, b)
    };
    assert_eq!(both().await, (StatusCode::OK, StatusCode::OK));
    assert_eq!(emu.counters().get("sts", TARGET), 2);
    reloader.reload().unwrap();
    assert_eq!(both().await, (StatusCode::OK, StatusCode::OK));
    // The fixed boundary's slot survived the reload: its token was not
    // exchanged again. (The bucket table starts afresh: alpha-bucket is
    // exchanged again unless the old table was still held.)
    let tenant_tokens = emu
        .downscoped_tokens()
        .iter()
        .filter(|t| t.boundary.resources().ends_with("/buckets/tenant-a"))
        .count();
    assert_eq!(tenant_tokens, 1);
}

/// [`call`] for a proxy outside an [`EmuWorld`].
struct EmuWorldRef<'a> {
    proxy: &'a TestProxy,
}

impl EmuWorldRef<'_> {
    async fn call(&self, path: &str) -> (StatusCode, String) {
        let mut c = client(self.proxy, STORAGE, false).await;
        let resp = c.send(for_version(get(STORAGE, path), false)).await;
        let status = resp.status();
        (status, body_string(resp).await)
    }
}
