//! `check --config FILE --live` against the emulator: one good route
//! (access and ID token), one delegate chain with a missing grant (the fix
//! names the hop), one lifetime IAM refuses.

#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use proxy::*;
use support::*;

const READER: &str = "reader@emulator-project.iam.gserviceaccount.com";
const HOP1: &str = "hop1@emulator-project.iam.gserviceaccount.com";
const HOP2: &str = "hop2@emulator-project.iam.gserviceaccount.com";
const TARGET: &str = "deployer@emulator-project.iam.gserviceaccount.com";

#[tokio::test]
async fn check_live_mints_each_route_and_names_the_hop_that_lacks_the_grant() {
    let dir = tempdir("preflight");
    let emu = support::emulator_in(&dir).await;
    emu.grant_token_creator(SOURCE_SA, READER);
    // source → hop1 → (missing) hop2 → deployer
    emu.grant_token_creator(SOURCE_SA, HOP1);
    emu.grant_token_creator(HOP2, TARGET);
    let key = emu.write_service_account_key(&dir, SOURCE_SA).unwrap();
    let config = format!(
        r#"[proxy]
listen = "127.0.0.1:0"
[source]
type = "service_account"
file = "{key}"
{upstream}
[[route]]
name = "good"
hosts = ["storage.googleapis.com"]
impersonate = "{READER}"
[[route]]
name = "good-id"
hosts = ["svc.a.run.app"]
id_token = {{ audience = "https://svc.a.run.app", impersonate = "{READER}" }}
[[route]]
name = "chain"
hosts = ["pubsub.googleapis.com"]
impersonate = "{TARGET}"
delegates = ["{HOP1}", "{HOP2}"]
[[route]]
name = "too-long"
hosts = ["bigquery.googleapis.com"]
impersonate = "{READER}"
lifetime = "7200s"
[[route]]
name = "open"
hosts = ["logging.googleapis.com"]
action = "passthrough"
"#,
        key = key.display(),
        upstream = emulator_upstream_toml(&emu, "")
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
        .args(["check", "--live", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let row = |route: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{route} ")))
            .unwrap_or_else(|| panic!("no row for {route}:\n{stdout}"))
            .to_owned()
    };
    assert!(row("good").contains("ok, expires in"), "{stdout}");
    assert!(
        row("good-id").contains("id_token(https://svc.a.run.app)"),
        "{stdout}"
    );
    assert!(row("good-id").contains("ok, expires in"), "{stdout}");
    let chain = row("chain");
    assert!(
        chain.contains(&format!("source → {HOP1} → {HOP2} → {TARGET}")),
        "{chain}"
    );
    assert!(
        chain.contains("FAILED: Permission 'iam.serviceAccounts.getAccessToken' denied"),
        "{chain}"
    );
    assert!(
        row("too-long").contains("can not have lifetimes of more than 1 hour"),
        "{stdout}"
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("open ")),
        "a passthrough route mints nothing:\n{stdout}"
    );
    // The fix grants hop1 the role on hop2: the hop that lacks it.
    assert!(stdout.contains(&format!(
        "gcloud iam service-accounts add-iam-policy-binding {HOP2} --member=serviceAccount:{HOP1} --role=roles/iam.serviceAccountTokenCreator"
    )), "{stdout}");
    // Only the chain needs a grant; the lifetime refusal is not one.
    assert_eq!(
        stdout.matches("add-iam-policy-binding").count(),
        1,
        "{stdout}"
    );

    // With the grant in place, every route but the lifetime passes.
    emu.grant_token_creator(HOP1, HOP2);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
        .args(["check", "--live", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(row_ok(&stdout, "chain"), "{stdout}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "the lifetime refusal still fails"
    );
}

fn row_ok(stdout: &str, route: &str) -> bool {
    stdout
        .lines()
        .any(|l| l.starts_with(&format!("{route} ")) && l.contains("ok, expires in"))
}
