//! The operator's policy tools through the command line: policy tests
//! (`check --tests`), `explain`, and report mode (`enforce = false`) as
//! both show it. No network, nothing minted.

mod support;

use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
}

const CONFIG: &str = r#"
[ca]
cert = "certs/ca.pem"
key = "certs/ca-key.pem"

[[client]]
name = "batch"
cidrs = ["10.8.0.0/16"]

[[client]]
name = "web"
cidrs = ["10.9.0.0/16"]

[[route]]
name = "deny-delete"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/audit-logs"
methods = ["DELETE"]
action = "deny"

[[route]]
name = "trial-deny-web"
hosts = ["storage.googleapis.com"]
clients = ["web"]
action = "deny"
enforce = false

[[route]]
name = "gcs"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b"
impersonate = "reader@p.iam.gserviceaccount.com"
delegates = ["hop@p.iam.gserviceaccount.com"]
lifetime = "1800s"
"#;

const PASSING: &str = r#"
[[case]]
name = "batch reads"
request = "GET https://storage.googleapis.com/storage/v1/b/x/o"
client = "batch"
expect = { route = "gcs", action = "impersonate", impersonate = "reader@p.iam.gserviceaccount.com", delegates = ["hop@p.iam.gserviceaccount.com"], lifetime = "1800s", would_deny = [] }

[[case]]
name = "an override is the effective method"
request = "POST https://storage.googleapis.com/storage/v1/b/audit-logs/o/x"
from = "10.8.1.2"
headers = { "X-HTTP-Method-Override" = "DELETE" }
expect = { route = "deny-delete", action = "deny", status = 403, client = "batch" }

[[case]]
name = "report mode shows both outcomes"
request = "GET https://storage.googleapis.com/storage/v1/b/x/o"
client = "web"
expect = { route = "gcs", action = "impersonate", would_deny = ["trial-deny-web"], status = 0 }

[[case]]
name = "dot segments are refused"
request = "GET https://storage.googleapis.com/storage/v1/b/x/../y"
client = "batch"
expect = { status = 400 }

[[case]]
name = "a Host that disagrees"
request = "GET https://storage.googleapis.com/storage/v1/b/x/o"
client = "batch"
headers = { Host = "evil.example" }
expect = { status = 421 }
"#;

const FAILING: &str = r#"
[[case]]
request = "GET https://storage.googleapis.com/storage/v1/b/x/o"
client = "batch"
expect = { route = "gcs" }

[[case]]
name = "uploads are routed"
request = "POST https://storage.googleapis.com/upload/storage/v1/b/x/o"
client = "batch"
expect = { route = "gcs", action = "impersonate" }
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn policy_tests_pass_and_a_failing_case_prints_a_diff_and_exits_1() {
    let dir = support::tempdir("policy-tests");
    let config = write(&dir, "proxy.toml", CONFIG);
    let passing = write(&dir, "pass.test.toml", PASSING);
    let out = bin()
        .args(["check", "--config", &config, "--tests", &passing])
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("5 cases: 5 passed, 0 failed"), "{t}");

    let failing = write(&dir, "fail.test.toml", FAILING);
    let out = bin()
        .args(["check", "--config", &config, "--tests", &failing])
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("ok    case 1"), "{t}");
    assert!(t.contains("FAIL  case 2 \"uploads are routed\""), "{t}");
    assert!(
        t.contains("route       expected \"gcs\", got \"none\""),
        "{t}"
    );
    assert!(
        t.contains("action      expected \"impersonate\", got \"none\""),
        "{t}"
    );
    assert!(t.contains("2 cases: 1 passed, 1 failed"), "{t}");
}

#[test]
fn a_bad_tests_file_or_config_exits_2_naming_the_key() {
    let dir = support::tempdir("policy-tests-bad");
    let config = write(&dir, "proxy.toml", CONFIG);
    let bad = write(
        &dir,
        "bad.test.toml",
        "[[case]]\nrequest = \"GET https://storage.googleapis.com/\"\nexpect = { rout = \"x\" }\n",
    );
    let out = bin()
        .args(["check", "--config", &config, "--tests", &bad])
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("rout"), "{t}");

    let unknown = write(
        &dir,
        "unknown.test.toml",
        "[[case]]\nrequest = \"GET https://storage.googleapis.com/\"\nclient = \"nobody\"\nexpect = { route = \"x\" }\n",
    );
    let out = bin()
        .args(["check", "--config", &config, "--tests", &unknown])
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("case[0]") && t.contains("nobody"), "{t}");

    // Report mode on a route that is not a deny.
    let wrong = write(
        &dir,
        "wrong.toml",
        &CONFIG.replace(
            "lifetime = \"1800s\"",
            "lifetime = \"1800s\"\nenforce = false",
        ),
    );
    let out = bin()
        .args(["check", "--config", &wrong, "--tests", &bad])
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("route[2].enforce"), "{t}");
}

fn explain(dir: &Path, args: &[&str]) -> String {
    let config = write(dir, "proxy.toml", CONFIG);
    let out = bin()
        .args(["explain", "--config", &config])
        .args(args)
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    t
}

#[test]
fn explain_shows_a_match_a_miss_and_a_deny() {
    let dir = support::tempdir("explain");
    // A match, past a report-mode deny.
    let t = explain(
        &dir,
        &[
            "--client",
            "web",
            "GET",
            "https://Storage.googleapis.com./storage/v1/b/x/o?alt=json",
        ],
    );
    assert!(t.contains("host       storage.googleapis.com"), "{t}");
    assert!(t.contains("path       /storage/v1/b/x/o"), "{t}");
    assert!(
        t.contains("no     deny-delete          path /storage/v1/b/x/o is not under path_prefix /storage/v1/b/audit-logs"),
        "{t}"
    );
    assert!(t.contains("REPORT trial-deny-web"), "{t}");
    assert!(t.contains("would_deny route \"trial-deny-web\""), "{t}");
    assert!(t.contains("WINNER gcs"), "{t}");
    assert!(
        t.contains("target     reader@p.iam.gserviceaccount.com"),
        "{t}"
    );
    assert!(
        t.contains("delegates  hop@p.iam.gserviceaccount.com"),
        "{t}"
    );
    assert!(t.contains("lifetime   1800s"), "{t}");
    assert!(t.contains("result     forwarded"), "{t}");

    // A miss: no route for the path, and why for each.
    let t = explain(
        &dir,
        &[
            "--from",
            "10.8.0.9",
            "GET",
            "https://storage.googleapis.com/upload/x",
        ],
    );
    assert!(t.contains("client     batch"), "{t}");
    assert!(
        t.contains("no     trial-deny-web       the client is not in clients = [web]"),
        "{t}"
    );
    assert!(t.contains("route      none"), "{t}");
    assert!(
        t.contains("result     403 no [[route]] matches GET storage.googleapis.com/upload/x"),
        "{t}"
    );

    // A deny, through the method override.
    let t = explain(
        &dir,
        &[
            "--client",
            "batch",
            "-H",
            "X-HTTP-Method-Override: DELETE",
            "POST",
            "https://storage.googleapis.com/storage/v1/b/audit-logs/o/x",
        ],
    );
    assert!(t.contains("method     DELETE"), "{t}");
    assert!(t.contains("WINNER deny-delete"), "{t}");
    assert!(
        t.contains("result     403 denied by route \"deny-delete\""),
        "{t}"
    );
}
