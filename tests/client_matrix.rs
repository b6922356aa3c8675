//! The client matrix: real Google client libraries, pinned in
//! `tests/clients/` and installed by `tests/clients/install`, each run
//! through the proxy binary against the emulator with nothing but the
//! block `run` prints (plus `PATH` and a fresh `HOME`), exactly as the
//! README tells a user. Each test asserts what the emulator saw (the
//! principal, the bytes, the messages), not only an exit code.
//!
//! Every test runs inside a network namespace of its own (`netns.rs`): a
//! client that bypassed the proxy cannot leave the machine, and fails.
//! A test whose runtime (node, python3, gcloud) is absent skips itself
//! and says so; one whose libraries are not installed fails with the fix.

#[path = "support/matrix.rs"]
mod matrix;
#[path = "support/netns.rs"]
mod netns;
mod support;

use std::path::PathBuf;

use matrix::*;
use netns::isolated;

const BUCKET: &str = "matrix-bucket";

fn node_script(name: &str) -> String {
    let dir = clients_dir().join("node");
    require_installed(&dir.join("node_modules/@google-cloud/pubsub"));
    dir.join(name).display().to_string()
}

fn python() -> PathBuf {
    let venv = clients_dir().join("python/.venv/bin/python");
    require_installed(&venv);
    venv
}

fn python_script(name: &str) -> String {
    clients_dir()
        .join("python")
        .join(name)
        .display()
        .to_string()
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The block names a test keeps: `all`, or only the upper-case ones (what
/// the README and `run` printed before both cases were given).
fn upper_case_only(name: &str) -> bool {
    !name.bytes().any(|b| b.is_ascii_lowercase())
}

// --- The printed block -------------------------------------------------

/// The variables the "exports" column of the README's client table sets
/// (`NAME=…`; JVM `-Dkey=value` options are not variables).
fn client_table_variables(readme: &str) -> Vec<String> {
    let table = readme
        .split("### What each client family needs")
        .nth(1)
        .expect("the README has the client table");
    let rows = table
        .lines()
        .skip_while(|l| !l.starts_with("| curl"))
        .take_while(|l| l.starts_with('|'));
    let mut names = Vec::new();
    for row in rows {
        let exports = row.split(" | ").nth(1).unwrap_or_default();
        for token in exports.split([' ', '`']) {
            let token = token.trim_start_matches('"');
            let Some((name, _)) = token.split_once('=') else {
                continue;
            };
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                names.push(name.to_owned());
            }
        }
    }
    assert!(names.len() > 10, "the client table's exports: {names:?}");
    names
}

#[test]
fn the_printed_block_gives_proxy_variables_in_both_cases() {
    // No client runs here: no namespace needed.
    runtime().block_on(async {
        let w = World::start("block").await;
        let get = |k: &str| {
            w.exports
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        let proxy = format!("http://{}", w.addr);
        assert_eq!(get("HTTPS_PROXY"), Some(proxy.as_str()));
        assert_eq!(get("https_proxy"), Some(proxy.as_str()));
        assert_eq!(get("NO_PROXY"), Some("127.0.0.1"));
        assert_eq!(get("no_proxy"), Some("127.0.0.1"));
        for k in ["GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT"] {
            assert_eq!(get(k), Some(w.addr.to_string().as_str()), "{k}");
        }
        let ca = get("SSL_CERT_FILE").unwrap();
        for k in [
            "REQUESTS_CA_BUNDLE",
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
            "NODE_EXTRA_CA_CERTS",
            "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
        ] {
            assert_eq!(get(k), Some(ca), "{k}");
        }
        // The README shows every line of the block, and its client
        // table asks for no variable the block does not set.
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"),
        )
        .unwrap();
        for (k, _) in &w.exports {
            assert!(
                readme.contains(&format!("export {k}=")),
                "the README does not show `export {k}=`"
            );
        }
        for name in client_table_variables(&readme) {
            assert!(
                w.exports.iter().any(|(k, _)| *k == name) || name == "JAVA_TOOL_OPTIONS",
                "the README's client table asks for {name}, which the block does not set"
            );
        }
    })
}

// --- curl ----------------------------------------------------------------

#[test]
fn curl_gets_a_placeholder_from_the_metadata_endpoint_and_lists_as_the_target() {
    if !require_runtime("curl", "curl") {
        return;
    }
    isolated(
        "curl_gets_a_placeholder_from_the_metadata_endpoint_and_lists_as_the_target",
        || {
            runtime().block_on(async {
                let w = World::start("curl").await;
                // The README's curl lines, with the block's variables.
                let script = format!(
                    r#"set -e
t=$(curl -sS --fail -H 'Metadata-Flavor: Google' "http://$GCE_METADATA_HOST/computeMetadata/v1/instance/service-accounts/default/token" | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
curl -sS --fail --cacert "$SSL_CERT_FILE" -H "Authorization: Bearer $t" https://storage.googleapis.com/storage/v1/b/{BUCKET}/o"#
                );
                let run = w
                    .run_client(std::path::Path::new("sh"), &["-c", &script])
                    .await;
                let v = run.json();
                assert_eq!(v["emulator"]["principal"], TARGET, "{v}");
                assert_eq!(w.emu.counters().get("storage", TARGET), 1);
                assert_eq!(w.audited_as_target("storage.googleapis.com").await, 1);
            })
        },
    );
}

// --- Node ----------------------------------------------------------------

#[test]
fn node_google_auth_library_get_client_finds_the_metadata_endpoint() {
    if !require_runtime("node", "google-auth-library getClient()") {
        return;
    }
    isolated(
        "node_google_auth_library_get_client_finds_the_metadata_endpoint",
        || {
            let script = node_script("auth.js");
            runtime().block_on(async {
                let w = World::start("node-auth").await;
                let run = w
                    .run_client(std::path::Path::new("node"), &[&script, BUCKET])
                    .await;
                let v = run.json();
                assert_eq!(v["client"], "Compute", "{v}");
                assert_eq!(v["email"], TARGET, "{v}");
                assert_eq!(v["projectId"], PROJECT, "{v}");
                assert_eq!(v["seen"]["principal"], TARGET, "{v}");
                let c = w.emu.counters();
                assert_eq!(c.get("storage", TARGET), 1);
                // The metadata endpoint handed out a placeholder: the
                // emulator's own metadata server was never asked.
                assert_eq!(c.total("metadata.token"), 0);
                assert_eq!(w.audited_as_target("storage.googleapis.com").await, 1);
            })
        },
    );
}

#[test]
fn node_get_id_token_client_gets_a_real_id_token_for_the_target() {
    if !require_runtime("node", "google-auth-library getIdTokenClient()") {
        return;
    }
    isolated(
        "node_get_id_token_client_gets_a_real_id_token_for_the_target",
        || {
            let script = node_script("id_token.js");
            runtime().block_on(async {
                let w = World::start("node-id-token").await;
                let audience = "https://svc-abc123-uc.a.run.app";
                let run = w
                    .run_client(std::path::Path::new("node"), &[&script, audience])
                    .await;
                let v = run.json();
                assert_eq!(v["client"], "IdTokenClient", "{v}");
                assert_eq!(
                    (v["aud"].as_str(), v["email"].as_str()),
                    (Some(audience), Some(TARGET))
                );
                let token = v["token"].as_str().unwrap();
                assert_eq!(w.emu.principal_of(token).as_deref(), Some(TARGET));
                // (The library also asks for one while it detects GCE.)
                assert!(w.emu.counters().get("generateIdToken", TARGET) >= 1);
                let asked = |w: &World| {
                    w.audit().iter().any(|r| {
                        r["path"]
                            == "/computeMetadata/v1/instance/service-accounts/default/identity"
                            && r["audience"] == audience
                            && r["target_principal"] == TARGET
                    })
                };
                assert!(
                    support::eventually(std::time::Duration::from_secs(10), || async { asked(&w) })
                        .await
                );
            })
        },
    );
}

#[test]
fn node_storage_lists_and_downloads_as_the_target() {
    if !require_runtime("node", "@google-cloud/storage") {
        return;
    }
    isolated("node_storage_lists_and_downloads_as_the_target", || {
        let script = node_script("storage.js");
        runtime().block_on(async {
            let w = World::start("node-storage").await;
            let data: Vec<u8> = (0..3 * 1024 * 1024 + 5)
                .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect();
            w.emu.put_object(BUCKET, "node/data.bin", data.clone());
            let run = w
                .run_client(
                    std::path::Path::new("node"),
                    &[&script, BUCKET, "node/data.bin"],
                )
                .await;
            let v = run.json();
            assert_eq!(
                v["names"],
                serde_json::json!(["hello.txt", "node/data.bin"]),
                "{v}"
            );
            assert_eq!(v["bytes"], data.len());
            assert_eq!(v["sha256"], sha256_hex(&data));
            let downloads: Vec<_> = w
                .emu
                .data_calls()
                .into_iter()
                .filter(|c| c.endpoint == "storage.download")
                .collect();
            assert_eq!(downloads.len(), 1, "{downloads:?}");
            assert_eq!(downloads[0].principal, TARGET);
            assert_eq!(downloads[0].resource, format!("{BUCKET}/node/data.bin"));
            assert_eq!(downloads[0].bytes, data.len() as u64);
        })
    });
}

/// Publishes `count` messages with pubsub.js within `deadline_ms`,
/// keeping the block names `keep` accepts. grpc-js traces (on stderr)
/// where it sent the call: the proxy, or its own DNS lookup.
async fn node_publish(
    w: &World,
    topic: &str,
    count: usize,
    deadline_ms: u32,
    keep: impl Fn(&str) -> bool,
) -> ClientRun {
    let script = node_script("pubsub.js");
    w.run_client_with(
        std::path::Path::new("node"),
        &[&script, topic, &count.to_string(), &deadline_ms.to_string()],
        keep,
        &[
            ("GRPC_TRACE", std::path::Path::new("proxy,dns_resolver")),
            ("GRPC_VERBOSITY", std::path::Path::new("DEBUG")),
        ],
    )
    .await
}

#[test]
fn node_pubsub_publishes_over_grpc_through_the_proxy() {
    if !require_runtime("node", "@google-cloud/pubsub") {
        return;
    }
    isolated("node_pubsub_publishes_over_grpc_through_the_proxy", || {
        runtime().block_on(async {
            let w = World::start("node-pubsub").await;
            let run = node_publish(&w, "matrix-node", 3, 30_000, |_| true).await;
            let v = run.json();
            assert!(
                run.stderr
                    .contains("set by environment variable https_proxy"),
                "grpc-js should find the proxy in https_proxy:\n{}",
                run.stderr
            );
            let topic = format!("projects/{PROJECT}/topics/matrix-node");
            assert_eq!(v["topic"], topic.as_str(), "{v}");
            let published = w.emu.published(&topic);
            assert_eq!(published.len(), 3);
            let ids: Vec<&str> = published.iter().map(|m| m.message_id.as_str()).collect();
            assert_eq!(v["ids"], serde_json::json!(ids));
            let mut data: Vec<_> = published.iter().map(|m| m.data.to_vec()).collect();
            data.sort();
            let want: Vec<Vec<u8>> = (0..3)
                .map(|i| format!("node message {i}").into_bytes())
                .collect();
            assert_eq!(data, want);
            assert!(published
                .iter()
                .all(|m| m.principal == TARGET && m.attributes["client"] == "node"));
            let calls: Vec<_> = w
                .emu
                .data_calls()
                .into_iter()
                .filter(|c| c.endpoint == "pubsub.publish")
                .collect();
            assert_eq!(calls.iter().map(|c| c.messages).sum::<u64>(), 3);
            assert!(calls
                .iter()
                .all(|c| c.principal == TARGET && c.http_version == "HTTP/2"));
            assert_eq!(
                calls.iter().map(|c| c.bytes).sum::<u64>(),
                ("node message 0".len() * 3) as u64
            );
            assert!(w.audited_as_target("pubsub.googleapis.com").await >= 1);
        })
    });
}

#[test]
fn node_pubsub_with_only_upper_case_proxy_variables_bypasses_the_proxy_and_fails() {
    if !require_runtime("node", "@google-cloud/pubsub") {
        return;
    }
    isolated(
        "node_pubsub_with_only_upper_case_proxy_variables_bypasses_the_proxy_and_fails",
        || {
            runtime().block_on(async {
                let w = World::start("node-pubsub-upper").await;
                let run = node_publish(&w, "matrix-upper", 1, 20_000, upper_case_only).await;
                let out = format!("{}\n{}", run.stdout, run.stderr);
                assert!(
                    !run.success,
                    "grpc-js ignores HTTPS_PROXY: the publish cannot succeed:\n{out}"
                );
                // grpc-js looked pubsub.googleapis.com up itself (and, in
                // the namespace, found nothing) instead of asking the proxy.
                assert!(
                    out.contains("Resolution error for target dns:pubsub.googleapis.com")
                        && !out.contains("set by environment variable"),
                    "grpc-js should have resolved Google itself:\n{out}"
                );
                assert!(out.contains("publish did not complete"), "{out}");
                assert_eq!(w.emu.counters().total("pubsub"), 0);
                assert!(w
                    .emu
                    .published("projects/emulator-project/topics/matrix-upper")
                    .is_empty());
                // The token still came from the metadata endpoint (gaxios
                // reads NO_PROXY), and nothing reached the proxy for Pub/Sub.
                assert!(
                    w.audit().iter().any(|r| r["action"] == "metadata"),
                    "{:?}",
                    w.audit()
                );
                assert!(!w
                    .audit()
                    .iter()
                    .any(|r| r["host"] == "pubsub.googleapis.com"));
            })
        },
    );
}

// --- Python --------------------------------------------------------------

#[test]
fn python_storage_uploads_and_downloads_a_multi_mib_object_as_the_target() {
    if !require_runtime("python3", "google-cloud-storage") {
        return;
    }
    isolated(
        "python_storage_uploads_and_downloads_a_multi_mib_object_as_the_target",
        || {
            let python = python();
            runtime().block_on(async {
                let w = World::start("python-storage").await;
                let size = 5 * 1024 * 1024 + 7;
                let run = w
                    .run_client(
                        &python,
                        &[
                            &python_script("storage_roundtrip.py"),
                            BUCKET,
                            &size.to_string(),
                        ],
                    )
                    .await;
                let v = run.json();
                assert_eq!(
                    v["credentials"], "google.auth.compute_engine.credentials.Credentials",
                    "{v}"
                );
                assert_eq!(v["project"], PROJECT);
                let sha = v["sha256"].as_str().unwrap();
                assert_eq!(v["downloaded_sha256"], serde_json::json!([sha, sha]));
                assert_eq!(
                    v["names"],
                    serde_json::json!(["python/multipart.bin", "python/resumable.bin"])
                );
                for name in ["python/multipart.bin", "python/resumable.bin"] {
                    let stored = w.emu.object(BUCKET, name).unwrap();
                    assert_eq!((stored.len(), sha256_hex(&stored).as_str()), (size, sha));
                }
                let calls = w.emu.data_calls();
                let seen: Vec<_> = calls
                    .iter()
                    .map(|c| (c.endpoint, c.upload_type, c.bytes, c.principal.as_str()))
                    .collect();
                let size = size as u64;
                assert_eq!(
                    seen,
                    [
                        ("storage.upload", "multipart", size, TARGET),
                        ("storage.upload", "resumable", size, TARGET),
                        ("storage.download", "", size, TARGET),
                        ("storage.download", "", size, TARGET),
                    ]
                );
            })
        },
    );
}

/// Publishes `count` messages with pubsub_publish.py within `deadline_s`,
/// keeping the block names `keep` accepts. C-core logs (on stderr) where
/// it sent the call.
async fn python_publish(
    w: &World,
    topic: &str,
    count: usize,
    deadline_s: u32,
    keep: impl Fn(&str) -> bool,
) -> ClientRun {
    let args = [
        python_script("pubsub_publish.py"),
        topic.to_owned(),
        count.to_string(),
        deadline_s.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    w.run_client_with(
        &python(),
        &args,
        keep,
        &[
            ("GRPC_VERBOSITY", std::path::Path::new("debug")),
            (
                "GRPC_TRACE",
                std::path::Path::new("subchannel,event_engine_dns,cares_resolver"),
            ),
        ],
    )
    .await
}

#[test]
fn python_pubsub_publishes_over_grpc_through_the_proxy() {
    if !require_runtime("python3", "google-cloud-pubsub") {
        return;
    }
    isolated(
        "python_pubsub_publishes_over_grpc_through_the_proxy",
        || {
            runtime().block_on(async {
                let w = World::start("python-pubsub").await;
                let run = python_publish(&w, "matrix-python", 4, 60, |_| true).await;
                let v = run.json();
                assert!(
                    run.stderr.contains(&format!("address=ipv4:{}", w.addr))
                        && run
                            .stderr
                            .contains("grpc.http_connect_server=pubsub.googleapis.com:443"),
                    "C-core should CONNECT through the proxy (https_proxy):\n{}",
                    run.stderr
                );
                let topic = format!("projects/{PROJECT}/topics/matrix-python");
                assert_eq!(v["topic"], topic.as_str(), "{v}");
                let published = w.emu.published(&topic);
                let mut data: Vec<_> = published.iter().map(|m| m.data.to_vec()).collect();
                data.sort();
                let want: Vec<Vec<u8>> = (0..4)
                    .map(|i| format!("python message {i}").into_bytes())
                    .collect();
                assert_eq!(data, want);
                assert!(published
                    .iter()
                    .all(|m| m.principal == TARGET && m.attributes["client"] == "python"));
                let mut ids: Vec<&str> = published.iter().map(|m| m.message_id.as_str()).collect();
                let mut printed: Vec<&str> = v["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_str().unwrap())
                    .collect();
                ids.sort();
                printed.sort();
                assert_eq!(ids, printed);
                let calls = w.emu.data_calls();
                assert!(calls
                    .iter()
                    .all(|c| c.endpoint == "pubsub.publish" && c.http_version == "HTTP/2"));
                assert_eq!(calls.iter().map(|c| c.messages).sum::<u64>(), 4);
                assert!(w.audited_as_target("pubsub.googleapis.com").await >= 1);
            })
        },
    );
}

#[test]
fn python_pubsub_with_only_upper_case_proxy_variables_bypasses_the_proxy_and_fails() {
    if !require_runtime("python3", "google-cloud-pubsub") {
        return;
    }
    isolated(
        "python_pubsub_with_only_upper_case_proxy_variables_bypasses_the_proxy_and_fails",
        || {
            runtime().block_on(async {
                let w = World::start("python-pubsub-upper").await;
                let run = python_publish(&w, "matrix-upper", 1, 5, upper_case_only).await;
                let out = format!("{}\n{}", run.stdout, run.stderr);
                assert!(
                    !run.success,
                    "C-core ignores HTTPS_PROXY: the publish cannot succeed:\n{out}"
                );
                assert!(out.contains("publish did not complete"), "{out}");
                // C-core looked pubsub.googleapis.com up itself (and, in the
                // namespace, found nothing) instead of asking the proxy.
                assert!(
                    out.contains("address lookup failed for pubsub.googleapis.com")
                        && !out.contains("grpc.http_connect_server"),
                    "C-core should have resolved Google itself:\n{out}"
                );
                assert_eq!(w.emu.counters().total("pubsub"), 0);
                assert!(!w
                    .audit()
                    .iter()
                    .any(|r| r["host"] == "pubsub.googleapis.com"));
            })
        },
    );
}

// --- gcloud --------------------------------------------------------------

#[test]
fn gcloud_storage_ls_through_the_metadata_endpoint() {
    if !require_runtime("gcloud", "gcloud storage ls") {
        return;
    }
    isolated("gcloud_storage_ls_through_the_metadata_endpoint", || {
        runtime().block_on(async {
            let w = World::start("gcloud").await;
            w.emu
                .put_object(BUCKET, "gcloud/a.txt", &b"from the emulator"[..]);
            let config = w.dir().join("gcloud-config");
            let run = w
                .run_client_with(
                    std::path::Path::new("gcloud"),
                    &["storage", "ls", &format!("gs://{BUCKET}")],
                    |_| true,
                    &[("CLOUDSDK_CONFIG", &config)],
                )
                .await;
            assert!(
                run.success,
                "gcloud failed:\n{}\n{}",
                run.stdout, run.stderr
            );
            let mut listed: Vec<&str> = run.stdout.lines().collect();
            listed.sort();
            assert_eq!(
                listed,
                [
                    format!("gs://{BUCKET}/gcloud/"),
                    format!("gs://{BUCKET}/hello.txt")
                ],
                "{}",
                run.stderr
            );
            assert!(w.emu.counters().get("storage", TARGET) >= 1);
            assert_eq!(
                w.emu.counters().total("storage"),
                w.emu.counters().get("storage", TARGET)
            );
        })
    });
}
