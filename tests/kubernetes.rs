//! The container image and the Kubernetes manifests, as a cluster gets
//! them: `deploy/kubernetes/` rendered by `kubectl kustomize` (the base,
//! every overlay, and every overlay with each optional component), then
//! checked against the config the rendering carries, which must itself
//! pass `impersonate-proxy check`:
//!
//! - liveness and readiness probes on the admin port's `/healthz` and
//!   `/readyz`;
//! - `terminationGracePeriodSeconds` above `shutdown_delay +
//!   drain_timeout`, and a readiness probe that can see the delay;
//! - the CA key only in a Secret, mounted read-only, and no private key
//!   anywhere in the manifests;
//! - non-root (the image's uid), read-only root filesystem, every
//!   capability dropped, seccomp `RuntimeDefault`, no service account
//!   token;
//! - the ConfigMap mounted as a directory (the kubelet updates only those)
//!   with `watch_config` on.
//!
//! Skipped with a message where `kubectl` is not installed. No container
//! daemon runs here: the Dockerfile is read, not built.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn kubectl_installed() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The documents `kubectl kustomize dir` renders.
fn render(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains("PRIVATE KEY"),
        "{}: a private key in the manifests",
        dir.display()
    );
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// `to` relative to the directory `from` (both absolute): kustomize
/// refuses absolute paths to other kustomizations.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c);
    }
    rel
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join("kustomization.yaml").is_file())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Every rendering a user can apply: the base, each overlay, and each
/// overlay with each component (through a kustomization made for it).
fn renderings() -> Vec<(String, Vec<Value>)> {
    let root = deploy();
    let mut out = vec![("base".to_owned(), render(&root.join("base")))];
    let overlays = subdirs(&root.join("overlays"));
    let components = subdirs(&root.join("components"));
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kustomize");
    for overlay in &overlays {
        let name = overlay.file_name().unwrap().to_string_lossy().into_owned();
        out.push((format!("overlays/{name}"), render(overlay)));
        for component in &components {
            let cname = component.file_name().unwrap().to_string_lossy();
            let dir = scratch.join(format!("{name}+{cname}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("kustomization.yaml"),
                format!(
                    "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n  - {}\n",
                    relative(&dir, overlay).display(),
                    relative(&dir, component).display()
                ),
            )
            .unwrap();
            out.push((
                format!("overlays/{name} + components/{cname}"),
                render(&dir),
            ));
        }
    }
    assert!(
        overlays
            .iter()
            .any(|o| o.ends_with("gke-workload-identity")),
        "the gke-workload-identity overlay is missing"
    );
    out
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

/// The port number a probe's `port` names (a number or a container port
/// name).
fn probe_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = str_of(port, "probe port");
    container["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// Checks one rendering; returns the config it carries.
fn check_rendering(what: &str, docs: &[Value]) -> impersonate_proxy::Config {
    let deployment = find(docs, "Deployment", "impersonate-proxy");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{what}: one container");
    let c = &containers[0];

    // The config: the ConfigMap behind the volume the --config path is in.
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config");
    let config_path = Path::new(args[at + 1]);
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    let mount_of = |path: &Path| {
        mounts
            .iter()
            .filter(|m| path.starts_with(str_of(&m["mountPath"], "mountPath")))
            .max_by_key(|m| m["mountPath"].as_str().map_or(0, str::len))
            .unwrap_or_else(|| panic!("{what}: nothing mounted at {}", path.display()))
    };
    let volume_of = |mount: &Value| {
        let name = &mount["name"];
        pod["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == *name))
            .unwrap_or_else(|| panic!("{what}: no volume {name}"))
    };
    let config_mount = mount_of(config_path);
    assert_eq!(config_mount["readOnly"], true, "{what}: config mount");
    assert!(
        config_mount.get("subPath").is_none(),
        "{what}: a subPath mount never sees ConfigMap updates"
    );
    let config_map = str_of(
        &volume_of(config_mount)["configMap"]["name"],
        "the config volume's ConfigMap",
    );
    let text = str_of(
        &find(docs, "ConfigMap", config_map)["data"]
            [config_path.file_name().unwrap().to_str().unwrap()],
        "proxy.toml",
    );
    let cfg = impersonate_proxy::Config::parse(config_path, text)
        .unwrap_or_else(|e| panic!("{what}: the ConfigMap's config: {e}"));
    assert!(cfg.proxy.watch_config, "{what}: watch_config is off");
    assert!(
        cfg.limits.max_connection_age.is_some(),
        "{what}: no max_connection_age: long-lived connections never rebalance"
    );

    // Probes on the admin port.
    let admin = cfg.proxy.admin.expect("[proxy] admin").port();
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{what}: {probe}");
        assert_eq!(
            probe_port(c, &get["port"]),
            u64::from(admin),
            "{what}: {probe} is not on the admin port"
        );
    }
    let proxy_port = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "proxy")
        .expect("a port named proxy");
    assert_eq!(
        proxy_port["containerPort"].as_u64(),
        Some(u64::from(cfg.proxy.listen.port())),
        "{what}: the container's proxy port is not [proxy] listen"
    );

    // Draining: the kubelet's SIGKILL comes after the delay and the drain,
    // and the readiness probe fails within the delay.
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let needed = cfg.proxy.shutdown_delay + cfg.proxy.drain_timeout;
    assert!(
        Duration::from_secs(grace) > needed,
        "{what}: terminationGracePeriodSeconds {grace} is not above shutdown_delay + drain_timeout ({needed:?})"
    );
    assert!(Duration::from_secs(grace) > cfg.proxy.drain_timeout);
    let probe = &c["readinessProbe"];
    let seen_within = probe["periodSeconds"].as_u64().unwrap_or(10)
        * probe["failureThreshold"].as_u64().unwrap_or(3);
    assert!(
        Duration::from_secs(seen_within) < cfg.proxy.shutdown_delay,
        "{what}: the readiness probe needs {seen_within}s to see /readyz fail, longer than shutdown_delay"
    );

    // The CA key: only in a Secret, mounted read-only.
    let key_mount = mount_of(&cfg.ca.key);
    assert_eq!(key_mount["readOnly"], true, "{what}: CA mount is writable");
    let key_volume = volume_of(key_mount);
    assert!(
        key_volume.get("secret").is_some(),
        "{what}: the CA key is not in a Secret volume: {key_volume}"
    );
    assert!(
        !cfg.ca
            .key
            .starts_with(str_of(&config_mount["mountPath"], "mountPath")),
        "{what}: the CA key sits in the ConfigMap's directory"
    );
    let key_file = cfg.ca.key.file_name().unwrap().to_str().unwrap();
    for d in docs.iter().filter(|d| d["kind"] == "ConfigMap") {
        let files = d["data"].as_object().into_iter().flatten();
        for (name, _) in files.chain(d["binaryData"].as_object().into_iter().flatten()) {
            assert_ne!(name, key_file, "{what}: the CA key in a ConfigMap");
        }
    }

    // Security context.
    let psc = &pod["securityContext"];
    let csc = &c["securityContext"];
    assert!(
        psc["runAsNonRoot"] == true || csc["runAsNonRoot"] == true,
        "{what}: runAsNonRoot"
    );
    let uid = csc["runAsUser"]
        .as_u64()
        .or(psc["runAsUser"].as_u64())
        .expect("runAsUser");
    assert_eq!(uid, 65532, "{what}: not the image's nonroot user");
    assert_eq!(csc["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(csc["allowPrivilegeEscalation"], false, "{what}");
    assert!(
        csc["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|c| c == "ALL")),
        "{what}: capabilities not all dropped"
    );
    let seccomp = if csc["seccompProfile"].is_null() {
        &psc["seccompProfile"]["type"]
    } else {
        &csc["seccompProfile"]["type"]
    };
    assert_eq!(seccomp, "RuntimeDefault", "{what}: seccomp");
    assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
    for limit in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(
                c["resources"][limit][r].is_string(),
                "{what}: no {limit}.{r}"
            );
        }
    }

    // The rest of the set, pointing at these pods.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selects_pods = |selector: &Value| {
        selector
            .as_object()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels[k] == *v))
    };
    assert!(
        deployment["spec"]["replicas"].as_u64() >= Some(2),
        "{what}: fewer than 2 replicas"
    );
    assert!(
        pod["topologySpreadConstraints"]
            .as_array()
            .is_some_and(|t| t
                .iter()
                .any(|t| t["topologyKey"] == "kubernetes.io/hostname")),
        "{what}: no spread across nodes"
    );
    let service = find(docs, "Service", "impersonate-proxy");
    assert!(
        selects_pods(&service["spec"]["selector"]),
        "{what}: Service"
    );
    assert!(
        service["spec"]["ports"]
            .as_array()
            .is_some_and(|ps| ps.iter().all(|p| p["targetPort"] == "proxy")),
        "{what}: the Service exposes more than the proxy port"
    );
    let pdb = find(docs, "PodDisruptionBudget", "impersonate-proxy");
    assert!(
        selects_pods(&pdb["spec"]["selector"]["matchLabels"]),
        "{what}: PDB"
    );
    let hpa = find(docs, "HorizontalPodAutoscaler", "impersonate-proxy");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "impersonate-proxy");
    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
    let np = find(docs, "NetworkPolicy", "impersonate-proxy");
    assert!(
        selects_pods(&np["spec"]["podSelector"]["matchLabels"]),
        "{what}: NetworkPolicy"
    );
    let egress = np["spec"]["egress"].to_string();
    assert!(
        egress.contains("443") && egress.contains("53"),
        "{what}: {egress}"
    );
    let ingress = np["spec"]["ingress"].as_array().expect("ingress");
    assert!(
        ingress
            .iter()
            .all(|rule| rule["from"][0]["namespaceSelector"]["matchLabels"].is_object()),
        "{what}: ingress from unlabelled namespaces"
    );
    let sa = find(docs, "ServiceAccount", "impersonate-proxy");
    assert_eq!(sa["automountServiceAccountToken"], false, "{what}");
    cfg
}

#[test]
fn every_overlay_renders_to_a_hardened_deployment_whose_config_passes_check() {
    if !kubectl_installed() {
        eprintln!("SKIPPED: kubectl is not installed (the manifests were not rendered); .ci/run installs it when the package is available");
        return;
    }
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kustomize-configs");
    std::fs::create_dir_all(&scratch).unwrap();
    for (i, (what, docs)) in renderings().iter().enumerate() {
        let cfg = check_rendering(what, docs);
        if what.starts_with("overlays/gke-workload-identity") {
            assert_eq!(
                cfg.source.kind,
                impersonate_proxy::config::SourceKind::Metadata,
                "{what}: Workload Identity comes from the metadata server"
            );
            let sa = find(docs, "ServiceAccount", "impersonate-proxy");
            assert!(
                sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
                    .as_str()
                    .is_some_and(|a| a.ends_with(".iam.gserviceaccount.com")),
                "{what}: the service account is not annotated for Workload Identity"
            );
        }
        if what.contains("components/servicemonitor") {
            let sm = find(docs, "ServiceMonitor", "impersonate-proxy");
            assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
        }
        // The config a pod reads passes the same check a user runs.
        let text = find(docs, "ConfigMap", "impersonate-proxy-config")["data"]["proxy.toml"]
            .as_str()
            .unwrap();
        let path = scratch.join(format!("proxy-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: `impersonate-proxy check` refused the ConfigMap's config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{what}: {} documents, checks passed", docs.len());
    }
}

#[test]
fn the_dockerfile_runs_a_release_build_as_the_user_the_manifests_expect() {
    // Read, not built: no container daemon runs here.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(
        stages,
        [
            "FROM rust:1-bookworm AS build",
            "FROM gcr.io/distroless/cc-debian12:nonroot"
        ]
    );
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(dockerfile.contains("\nUSER 65532:65532\n"));
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/impersonate-proxy\"]"));
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    for line in ["/target", "/certs", "**/ca-key.pem"] {
        assert!(
            ignore.lines().any(|l| l == line),
            ".dockerignore lacks {line}"
        );
    }
    for needed in ["/src", "/benches", "/Cargo.toml", "/Cargo.lock"] {
        assert!(
            !ignore.lines().any(|l| l == needed),
            ".dockerignore drops {needed}"
        );
    }
}
