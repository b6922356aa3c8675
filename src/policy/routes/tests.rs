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
/// The same, ending in `/`.
const LONG_DIR: &str = "/a/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb/";

/// The table's indexed lookup agrees with the rules read top to bottom:
/// exact and `*.suffix` hosts, path prefixes of every kind (segment,
/// directory, past 64 bytes), methods, `[[client]]` lists, and batch
/// requests on hosts with and without restricted routes.
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
        Some("/batch"),
        Some("/batch/storage/v1"),
        Some(LONG),
        Some(LONG_DIR),
    ];
    let methods: [&[&str]; 3] = [&[], &["GET"], &["POST", "DELETE"]];
    let mut toml = String::new();
    let mut i = 0;
    let mut rule = |hosts: &str, prefix: Option<&str>, methods: &[&str]| {
        toml.push_str(&format!(
            "[[route]]\nname = \"r{i}\"\nhosts = [{hosts}]\naction = \"passthrough\"\n"
        ));
        if let Some(p) = prefix {
            toml.push_str(&format!("path_prefix = \"{p}\"\n"));
        }
        let m: Vec<String> = methods.iter().map(|m| format!("\"{m}\"")).collect();
        toml.push_str(&format!("methods = [{}]\n", m.join(", ")));
        i += 1;
    };
    for h in hosts {
        for p in prefixes {
            for m in methods {
                rule(&format!("\"{h}\""), p, m);
            }
        }
    }
    // Prefix lengths of every kind that named hosts and the `*.suffix`
    // covering them do not share (both are folded into the named host's
    // entry): e.m has none of its own, f.m others.
    rule("\"*.m.example.com\"", Some("/pp"), &[]);
    rule("\"*.m.example.com\"", Some("/ddd/"), &[]);
    rule("\"*.m.example.com\"", Some(LONG), &[]);
    rule("\"f.m.example.com\"", Some("/q"), &[]);
    rule("\"f.m.example.com\"", Some("/ee/"), &[]);
    // Hosts whose routes restrict nothing (a batch goes to them), one
    // restricted by methods alone, and an exact host covered by it.
    rule("\"free.example.com\", \"*.free.example.com\"", None, &[]);
    rule("\"*.m.example.com\"", None, &["GET"]);
    rule("\"*.m.example.com\", \"e.m.example.com\"", None, &[]);
    let cfg = Config::parse(std::path::Path::new("t.toml"), &toml).unwrap();
    let mut specs = compile_rules(&cfg).unwrap();
    // Some rules only for some `[[client]]` indices.
    for (i, s) in specs.iter_mut().enumerate() {
        s.client_indices = match i % 5 {
            1 => vec![1],
            3 => vec![0, 2],
            _ => vec![],
        };
    }
    // Rotate, so that the first match is not always the first rule.
    for shift in [0, 13, 40, 77, 133] {
        let mut specs = specs.clone();
        specs.rotate_left(shift);
        let t = RouteTable::build(&specs, &Unminted);
        let linear = |host: &str, method: &Method, path: &str, client: Option<u32>| {
            let for_host = |s: &&RuleSpec| s.hosts.iter().any(|h| h.matches(host));
            // A batch carries requests the proxy does not see: where some
            // route for the host restricts paths or methods, only a
            // route for `/batch` may take it.
            let batch_only = crate::policy::normalize::is_batch(path)
                && specs
                    .iter()
                    .filter(for_host)
                    .any(|s| s.path_prefix.is_some() || !s.methods.is_empty());
            specs
                .iter()
                .filter(for_host)
                .find(|s| {
                    (s.methods.is_empty() || s.methods.contains(method))
                        && (s.client_indices.is_empty()
                            || client.is_some_and(|c| s.client_indices.contains(&c)))
                        && (!batch_only
                            || s.path_prefix
                                .as_deref()
                                .is_some_and(|p| p.starts_with("/batch")))
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
        let long_paths = [
            format!("{LONG}/c"),
            format!("{LONG}c"),
            format!("{LONG}/"),
            format!("{LONG}/c/d"),
            format!("{LONG}//c"),
        ];
        let mut paths = vec![
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
            "/batch",
            "/batch/",
            "/batch/storage/v1",
            "/batch/storage/v1/b",
            "/batchx",
            "/pp",
            "/pp/x",
            "/ddd/x",
            "/q/x",
            "/ee/x",
            LONG,
        ];
        paths.extend(long_paths.iter().map(String::as_str));
        let mut matched = 0;
        for host in [
            "storage.googleapis.com",
            "a.b.googleapis.com",
            "x.a.b.googleapis.com",
            "b.googleapis.com",
            "googleapis.com",
            "example.com",
            "free.example.com",
            "x.free.example.com",
            "x.m.example.com",
            "e.m.example.com",
            "f.m.example.com",
        ] {
            for method in [Method::GET, Method::POST, Method::PUT] {
                for path in &paths {
                    for client in [None, Some(0), Some(1), Some(2)] {
                        let want = linear(host, &method, path, client);
                        matched += usize::from(want.is_some());
                        assert_eq!(
                            t.find_for(host, &method, path, client).map(|r| &*r.name),
                            want,
                            "{host} {method} {path} client {client:?} (shift {shift})"
                        );
                    }
                }
            }
        }
        assert!(matched > 1000, "{matched}");
    }
}

/// Hosts with more labels than the 64-bit label mask counts (the last bit
/// stands for 63 or more): `*.suffix` patterns of 64 and 70 labels still
/// match exactly the hosts under them.
#[tokio::test]
async fn suffixes_of_63_labels_and_more_match() {
    let labels = |n: usize| vec!["l"; n].join(".");
    let (s64, s70) = (labels(63), labels(69));
    let t = table(&format!(
        r#"
[[route]]
name = "sixty-four"
hosts = ["*.{s64}.com"]
action = "passthrough"
[[route]]
name = "seventy"
hosts = ["*.{s70}.org"]
action = "passthrough"
[[route]]
name = "short"
hosts = ["*.com"]
action = "deny"
"#
    ));
    let get = |host: &str| name(&t, host, "GET", "/");
    assert_eq!(get(&format!("x.{s64}.com")), Some("sixty-four"));
    assert_eq!(get(&format!("x.y.{s64}.com")), Some("sixty-four"));
    assert_eq!(get(&format!("{s64}.com")), Some("short"));
    assert_eq!(get(&format!("x.{}.com", labels(62))), Some("short"));
    assert_eq!(get(&format!("x.{s70}.org")), Some("seventy"));
    assert_eq!(get(&format!("x.{}.org", labels(68))), None);
}

/// Each route's action is the one its rule asked for, with what the audit
/// record and `check` say it did.
#[tokio::test]
async fn each_route_acts_as_its_rule_says() {
    let t = table(
        r#"
[[route]]
name = "access"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/plain"
impersonate = "r@p.iam.gserviceaccount.com"
[[route]]
name = "fixed"
hosts = ["storage.googleapis.com"]
path_prefix = "/storage/v1/b/tenant-a"
impersonate = "shared@p.iam.gserviceaccount.com"
access_boundary = [{ resource = "//storage.googleapis.com/projects/_/buckets/tenant-a", permissions = ["inRole:roles/storage.objectViewer"] }]
[[route]]
name = "per-bucket"
hosts = ["storage.googleapis.com"]
impersonate = "shared@p.iam.gserviceaccount.com"
access_boundary = [{ resource = "//storage.googleapis.com/projects/_/buckets/{bucket}", permissions = ["inRole:roles/storage.objectViewer"] }]
[[route]]
name = "sign"
hosts = ["iamcredentials.googleapis.com"]
sign_as = "reader@p.iam.gserviceaccount.com"
[[route]]
name = "run-invoke"
hosts = ["svc-abc123-uc.a.run.app"]
id_token = { audience = "https://svc-abc123-uc.a.run.app", impersonate = "invoker@p.iam.gserviceaccount.com" }
[[route]]
name = "open"
hosts = ["*.googleapis.com"]
methods = ["GET"]
action = "passthrough"
[[route]]
name = "rest"
hosts = ["*.googleapis.com"]
action = "deny"
"#,
    );
    let names: Vec<&str> = t.routes().iter().map(|r| &*r.name).collect();
    assert_eq!(
        names,
        [
            "access",
            "fixed",
            "per-bucket",
            "sign",
            "run-invoke",
            "open",
            "rest"
        ]
    );
    // Debug (in a `Policy`'s): the route names, in order.
    assert_eq!(
        format!("{t:?}"),
        r#"["access", "fixed", "per-bucket", "sign", "run-invoke", "open", "rest"]"#
    );
    let find = |host: &str, method: &str, path: &str| {
        t.find(host, &method.parse().unwrap(), path).unwrap()
    };
    let storage = |path| find("storage.googleapis.com", "GET", path);
    let signing = "/v1/projects/-/serviceAccounts/reader@p.iam.gserviceaccount.com";
    for (route, name, kind) in [
        (storage("/storage/v1/b/plain/o"), "access", "impersonate"),
        (storage("/storage/v1/b/tenant-a/o"), "fixed", "impersonate"),
        (
            storage("/storage/v1/b/other/o"),
            "per-bucket",
            "impersonate",
        ),
        (
            find(
                "iamcredentials.googleapis.com",
                "POST",
                &format!("{signing}:signBlob"),
            ),
            "sign",
            "sign_as",
        ),
        (
            find("svc-abc123-uc.a.run.app", "GET", "/"),
            "run-invoke",
            "id_token",
        ),
        (
            find("pubsub.googleapis.com", "GET", "/"),
            "open",
            "passthrough",
        ),
        (find("pubsub.googleapis.com", "POST", "/"), "rest", "deny"),
    ] {
        assert_eq!((&*route.name, route.action.kind()), (name, kind));
        assert_eq!(route.action.audit().as_str(), kind);
    }
    // A `sign_as` route takes only its account's signBlob and signJwt.
    let iam = |path: &str| &*find("iamcredentials.googleapis.com", "POST", path).name;
    assert_eq!(iam(&format!("{signing}:signJwt")), "sign");
    assert_eq!(iam(&format!("{signing}:generateAccessToken")), "rest");
    assert_eq!(
        iam("/v1/projects/-/serviceAccounts/other@p.iam.gserviceaccount.com:signBlob"),
        "rest"
    );
    // The boundary: none, fixed, or one per bucket.
    let downscope = |path| match &storage(path).action {
        Action::Inject { downscope, .. } => downscope.as_deref().map(|d| match d {
            Downscope::Fixed { .. } => "fixed",
            Downscope::PerBucket(_) => "per bucket",
        }),
        other => panic!("{other:?}"),
    };
    assert_eq!(downscope("/storage/v1/b/plain/o"), None);
    assert_eq!(downscope("/storage/v1/b/tenant-a/o"), Some("fixed"));
    assert_eq!(downscope("/storage/v1/b/other/o"), Some("per bucket"));
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

/// `FxHasher` known answers: the hash of every prefix of one host name,
/// lengths 0 to 20 (no tail, each tail length 1 to 7 with and without a
/// whole 8-byte chunk before it, two chunks), as a host map hashes a
/// `str` (its bytes, then 0xff). Pinned from the hasher as it is (the
/// routing hot path); a change to any mixing step changes them. Its reads
/// are little endian: the same answers on every platform.
#[test]
fn fx_hasher_known_answers() {
    const S: &str = "storage.googleapis.com/x";
    const WANT: [u64; 21] = [
        0x4445_6f44_3447_1b3b,
        0x8484_b75f_98b9_ae64,
        0x061d_fe74_e331_8a01,
        0xad68_0bcf_3e36_e84f,
        0xaed8_399d_a914_2902,
        0x9a9e_f446_6624_3928,
        0xe412_2682_079c_3115,
        0x00e7_a16c_35fe_dada,
        0x8130_6387_dafc_3bd9,
        0xad37_2eac_1086_3b3e,
        0x991f_96bd_dc53_10fd,
        0x861f_ecd8_30c0_be26,
        0xe23d_c31f_2385_5278,
        0x0f39_0054_b8eb_f924,
        0x5b26_fc8f_ef6f_5782,
        0x85ac_cca5_7136_131c,
        0x5fd5_dfdc_efbc_be86,
        0xf267_0d3a_000b_9e2a,
        0x1599_f313_921c_8b53,
        0x9b62_9ebb_62a7_c6dc,
        0xbad7_9833_9f28_cbc2,
    ];
    use std::hash::BuildHasher;
    for (n, want) in WANT.iter().enumerate() {
        let got = FxBuild::default().hash_one(&S[..n]);
        assert_eq!(got, *want, "{:?}: {got:#018x}", &S[..n]);
    }
}

/// `FxHasher` spreads what the host maps hold: thousands of host names
/// and `*.suffix` keys, and every path prefix of lengths 1 to 63 of
/// realistic Storage, Pub/Sub and BigQuery paths, hash to distinct 64-bit
/// values (a collision among a few thousand keys of a good 64-bit hash
/// has odds of about 1 in 10^12).
#[test]
fn fx_hasher_gives_distinct_hashes_to_hosts_and_path_prefixes() {
    use std::collections::HashSet;
    use std::hash::BuildHasher;
    let services = [
        "storage",
        "pubsub",
        "bigquery",
        "iamcredentials",
        "sts",
        "oauth2",
        "compute",
        "container",
        "logging",
        "monitoring",
        "secretmanager",
        "cloudkms",
        "run",
        "spanner",
        "firestore",
        "datastore",
        "aiplatform",
        "translate",
        "vision",
        "dns",
    ];
    let regions = [
        "",
        "us-central1-",
        "us-east1-",
        "us-west1-",
        "europe-west1-",
        "europe-west4-",
        "asia-east1-",
        "asia-northeast1-",
        "australia-southeast1-",
        "southamerica-east1-",
    ];
    let mut keys: HashSet<String> = HashSet::new();
    for s in services {
        for r in regions {
            for domain in ["googleapis.com", "mtls.googleapis.com", "p.example.com"] {
                keys.insert(format!("{r}{s}.{domain}"));
                keys.insert(format!(".{r}{s}.{domain}"));
            }
        }
    }
    let buckets = (0..40).map(|i| format!("bucket-{i}-logs"));
    let mut paths: Vec<String> = buckets
        .map(|b| format!("/storage/v1/b/{b}/o/2026%2F11%2F29%2Fpart-00017.json.gz"))
        .collect();
    for t in ["orders", "events", "clicks", "x"] {
        paths.push(format!(
            "/v1/projects/p-1234/topics/{t}-topic:publish?x=1&y=2&z=3"
        ));
        paths.push(format!(
            "/bigquery/v2/projects/p-1234/datasets/{t}/tables/daily/data"
        ));
    }
    for p in &paths {
        for n in 1..64.min(p.len() + 1) {
            keys.insert(p[..n].to_owned());
        }
    }
    assert!(keys.len() > 3000, "{}", keys.len());
    let hashes: HashSet<u64> = keys
        .iter()
        .map(|k| FxBuild::default().hash_one(k.as_str()))
        .collect();
    assert_eq!(hashes.len(), keys.len(), "colliding 64-bit hashes");
}

/// What `check` prints for each kind of rule.
#[test]
fn check_prints_each_rule_with_what_it_does() {
    let cfg = Config::parse(
        std::path::Path::new("t.toml"),
        r#"
[[client]]
name = "ci"
cidrs = ["10.0.0.0/8"]
[[route]]
name = "reports"
hosts = ["storage.googleapis.com", "*.storage.googleapis.com"]
path_prefix = "/storage/v1/b/reports"
methods = ["GET", "HEAD"]
clients = ["ci"]
impersonate = "r@p.iam.gserviceaccount.com"
authorization = "keep"
quota_project = "billing-1"
warm = true
access_boundary = [{ resource = "//storage.googleapis.com/projects/_/buckets/reports", permissions = ["inRole:roles/storage.objectViewer"] }]
[[route]]
name = "sign"
hosts = ["iamcredentials.googleapis.com"]
sign_as = "reader@p.iam.gserviceaccount.com"
delegates = ["mid@p.iam.gserviceaccount.com"]
allow_token_assertions = true
[[route]]
name = "plain"
hosts = ["pubsub.googleapis.com"]
impersonate = "r@p.iam.gserviceaccount.com"
[[route]]
name = "bare-sign"
hosts = ["iamcredentials.googleapis.com"]
sign_as = "other@p.iam.gserviceaccount.com"
[[route]]
name = "open"
hosts = ["*.googleapis.com"]
action = "passthrough"
[[route]]
name = "trial"
hosts = ["*.googleapis.com"]
action = "deny"
enforce = false
[[route]]
name = "rest"
hosts = ["*.googleapis.com"]
action = "deny"
"#,
    )
    .unwrap();
    let lines: Vec<String> = compile_rules(&cfg)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            "reports              hosts=storage.googleapis.com,*.storage.googleapis.com \
             path_prefix=/storage/v1/b/reports methods=GET,HEAD clients=ci \
             → access token for r@p.iam.gserviceaccount.com \
             access_boundary=//storage.googleapis.com/projects/_/buckets/reports \
             (keeps a client Authorization) quota_project=billing-1 warm",
            "sign                 hosts=iamcredentials.googleapis.com path_prefix=/v1/projects \
             methods=POST → sign_as reader@p.iam.gserviceaccount.com (signBlob, signJwt; \
             source credential) via mid@p.iam.gserviceaccount.com allow_token_assertions",
            "plain                hosts=pubsub.googleapis.com → access token for r@p.iam.gserviceaccount.com",
            "bare-sign            hosts=iamcredentials.googleapis.com path_prefix=/v1/projects \
             methods=POST → sign_as other@p.iam.gserviceaccount.com (signBlob, signJwt; \
             source credential)",
            "open                 hosts=*.googleapis.com → passthrough",
            "trial                hosts=*.googleapis.com → deny (report mode: enforce = false)",
            "rest                 hosts=*.googleapis.com → deny",
        ]
    );
}
