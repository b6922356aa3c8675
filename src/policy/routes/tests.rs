use super::*;
use crate::config::Config;
use crate::policy::{compile_rules, Unminted};

fn table(toml: &str) -> RouteTable {
    let cfg = Config::parse(std::path::Path::new("t.toml"), toml).unwrap();
    let specs = compile_rules(&cfg).unwrap();
    RouteTable::build(&specs, &Unminted)
}

fn name<'a>(t: &'a RouteTable, host: &str, method: &str, path: &str) -> Option<&'a str> {
    t.find(host, &method.parse().unwrap(), path)
        .map(|r| &*r.name)
}

#[tokio::test]
async fn first_match_wins_across_exact_and_suffix_hosts() {
    let t = table(
        r#"
[[route]]
name = "wild-get"
hosts = ["*.googleapis.com"]
methods = ["get"]
action = "passthrough"
[[route]]
name = "storage"
hosts = ["storage.googleapis.com"]
action = "passthrough"
[[route]]
name = "rest"
hosts = ["*.googleapis.com"]
action = "deny"
"#,
    );
    assert_eq!(
        name(&t, "storage.googleapis.com", "GET", "/"),
        Some("wild-get")
    );
    assert_eq!(
        name(&t, "storage.googleapis.com", "POST", "/"),
        Some("storage")
    );
    assert_eq!(name(&t, "pubsub.googleapis.com", "POST", "/"), Some("rest"));
    assert_eq!(name(&t, "a.b.googleapis.com", "POST", "/"), Some("rest"));
    assert_eq!(name(&t, "googleapis.com", "GET", "/"), None);
    assert_eq!(name(&t, "example.com", "GET", "/"), None);
}

#[tokio::test]
async fn path_prefix_matches_whole_segments() {
    let t = table(
        r#"
[[route]]
name = "b"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b"
action = "passthrough"
"#,
    );
    assert_eq!(
        name(&t, "storage.googleapis.com", "GET", "/storage/v1/b"),
        Some("b")
    );
    assert_eq!(
        name(&t, "storage.googleapis.com", "GET", "/storage/v1/b/x/o"),
        Some("b")
    );
    assert_eq!(
        name(&t, "storage.googleapis.com", "GET", "/storage/v1/bx"),
        None
    );
    assert_eq!(
        name(&t, "storage.googleapis.com", "GET", "/storage/v1"),
        None
    );
}

#[tokio::test]
async fn routes_asking_for_the_same_token_share_a_slot() {
    let t = table(
        r#"
[[route]]
name = "a"
hosts = ["storage.googleapis.com"]
impersonate = "r@p.iam.gserviceaccount.com"
[[route]]
name = "b"
hosts = ["pubsub.googleapis.com"]
impersonate = "projects/-/serviceAccounts/r@p.iam.gserviceaccount.com"
"#,
    );
    let slot = |host| match &t.find(host, &http::Method::GET, "/").unwrap().action {
        Action::Inject { slot, .. } => slot.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        slot("storage.googleapis.com").request(),
        slot("pubsub.googleapis.com").request()
    );
}

#[test]
fn bad_rules_name_the_route_and_the_key() {
    let bad = |toml: &str, needle: &str| {
        let cfg = Config::parse(std::path::Path::new("t.toml"), toml).unwrap();
        let err = crate::policy::check(&cfg).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle} not in: {err}");
    };
    bad(
        "[[route]]\nname = \"x\"\nhosts = [\"a.googleapis.com\"]\n",
        "route[0].action",
    );
    bad(
        "[[route]]\nname = \"x\"\nhosts = [\"a.googleapis.com\"]\nimpersonate = \"a@p.iam.gserviceaccount.com\"\nlifetime = \"50000s\"\n",
        "43200s",
    );
    bad(
        "[[route]]\nname = \"x\"\nhosts = [\"a.googleapis.com\"]\naction = \"deny\"\nscopes = [\"s\"]\n",
        "only apply",
    );
    bad(
        "[[route]]\nname = \"x\"\nhosts = [\"a.googleapis.com\"]\naction = \"deny\"\n[[route]]\nname = \"x\"\nhosts = [\"b.googleapis.com\"]\naction = \"deny\"\n",
        "unique",
    );
    bad(
        "[[route]]\nname = \"x\"\nhosts = [\"a.googleapis.com\"]\npath_prefix = \"nope\"\naction = \"deny\"\n",
        "path_prefix",
    );
}

#[tokio::test]
async fn a_thousand_rules_still_find_the_right_one() {
    let mut toml = String::new();
    for i in 0..1000 {
        if i % 2 == 0 {
            toml.push_str(&format!("[[route]]\nname = \"r{i}\"\nhosts = [\"h{i}.googleapis.com\"]\naction = \"passthrough\"\n"));
        } else {
            toml.push_str(&format!("[[route]]\nname = \"r{i}\"\nhosts = [\"*.s{i}.example.com\"]\naction = \"passthrough\"\n"));
        }
    }
    let t = table(&toml);
    assert_eq!(name(&t, "h998.googleapis.com", "GET", "/"), Some("r998"));
    assert_eq!(name(&t, "x.s999.example.com", "GET", "/"), Some("r999"));
    assert_eq!(name(&t, "h999.googleapis.com", "GET", "/"), None);
}

/// A path prefix past the table's length bitmask (64 bytes).
const LONG: &str = "/a/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// The table's indexed lookup agrees with the rules read top to bottom.
#[tokio::test]
async fn find_agrees_with_a_linear_scan_of_the_rules() {
    let hosts = [
        "storage.googleapis.com",
        "*.googleapis.com",
        "*.b.googleapis.com",
        "a.b.googleapis.com",
    ];
    let prefixes = [
        None,
        Some("/"),
        Some("/a"),
        Some("/a/"),
        Some("/a/b"),
        Some("/a//b"),
        Some("/ab"),
        Some(LONG),
    ];
    let methods: [&[&str]; 3] = [&[], &["GET"], &["POST", "DELETE"]];
    let mut toml = String::new();
    let mut i = 0;
    for h in hosts {
        for p in prefixes {
            for m in methods {
                toml.push_str(&format!(
                    "[[route]]\nname = \"r{i}\"\nhosts = [\"{h}\"]\naction = \"passthrough\"\n"
                ));
                if let Some(p) = p {
                    toml.push_str(&format!("path_prefix = \"{p}\"\n"));
                }
                let m: Vec<String> = m.iter().map(|m| format!("\"{m}\"")).collect();
                toml.push_str(&format!("methods = [{}]\n", m.join(", ")));
                i += 1;
            }
        }
    }
    let cfg = Config::parse(std::path::Path::new("t.toml"), &toml).unwrap();
    let specs = compile_rules(&cfg).unwrap();
    // Rotate, so that the first match is not always the first rule.
    for shift in [0, 13, 40, 77] {
        let mut specs = specs.clone();
        specs.rotate_left(shift);
        let t = RouteTable::build(&specs, &Unminted);
        let linear = |host: &str, method: &Method, path: &str| {
            specs
                .iter()
                .find(|s| {
                    s.hosts.iter().any(|h| h.matches(host))
                        && (s.methods.is_empty() || s.methods.contains(method))
                        && s.path_prefix
                            .as_deref()
                            .is_none_or(|p| match path.strip_prefix(p) {
                                Some(rest) => {
                                    rest.is_empty() || rest.starts_with('/') || p.ends_with('/')
                                }
                                None => false,
                            })
                })
                .map(|s| s.name.as_str())
        };
        for host in [
            "storage.googleapis.com",
            "a.b.googleapis.com",
            "x.a.b.googleapis.com",
            "b.googleapis.com",
            "googleapis.com",
            "example.com",
        ] {
            for method in [Method::GET, Method::POST, Method::PUT] {
                let long_paths = [format!("{LONG}/c"), format!("{LONG}c")];
                for path in [
                    "/",
                    "/a",
                    "/a/",
                    "/a/b",
                    "/a/bc",
                    "/a//b",
                    "/a//b/c",
                    "/ab",
                    "/abc",
                    "/b",
                    "*",
                    "/a/b/",
                    LONG,
                    &long_paths[0],
                    &long_paths[1],
                ] {
                    assert_eq!(
                        t.find(host, &method, path).map(|r| &*r.name),
                        linear(host, &method, path),
                        "{host} {method} {path} (shift {shift})"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn report_mode_denies_are_reported_in_order_and_passed_over() {
    let t = table(
        r#"
[[route]]
name = "trial-wild"
hosts = ["*.googleapis.com"]
action = "deny"
enforce = false
[[route]]
name = "trial-prefix"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/old"
action = "deny"
enforce = false
[[route]]
name = "old"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/old"
action = "passthrough"
[[route]]
name = "rest"
hosts = ["*.googleapis.com"]
methods = ["GET"]
action = "passthrough"
"#,
    );
    let get = Method::GET;
    let mut seen = Vec::new();
    let r = t.find_reporting(
        "storage.googleapis.com",
        &get,
        "/storage/v1/b/old/o",
        None,
        |d| seen.push(d.name.to_string()),
    );
    assert_eq!(r.map(|r| &*r.name), Some("old"));
    assert_eq!(seen, ["trial-wild", "trial-prefix"]);
    // On a host with no exact entry, through the suffix map.
    seen.clear();
    let r = t.find_reporting("pubsub.googleapis.com", &get, "/v1/x", None, |d| {
        seen.push(d.name.to_string())
    });
    assert_eq!(r.map(|r| &*r.name), Some("rest"));
    assert_eq!(seen, ["trial-wild"]);
    // Only report-mode denies match: no route decides.
    seen.clear();
    let r = t.find_reporting("pubsub.googleapis.com", &Method::POST, "/v1/x", None, |d| {
        seen.push(d.name.to_string())
    });
    assert!(r.is_none());
    assert_eq!(seen, ["trial-wild"]);
    // `find_for` agrees on the winner.
    assert_eq!(
        name(&t, "storage.googleapis.com", "GET", "/storage/v1/b/old/o"),
        Some("old")
    );
}
