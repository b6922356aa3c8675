//! A source credential that cannot be loaded at start is retried: the
//! proxy starts without its service-account key, the key appears, and the
//! route starts working without a restart.

#[path = "support/client.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::time::Duration;

use client::*;
use proxy::*;
use support::*;

const READER: &str = "reader@emulator-project.iam.gserviceaccount.com";
const STORAGE: &str = "storage.googleapis.com";

async fn status(proxy: &TestProxy) -> u16 {
    let mut c = client(proxy, STORAGE, false).await;
    let resp = c
        .send(for_version(get(STORAGE, "/storage/v1/b/late/o"), false))
        .await;
    let s = resp.status().as_u16();
    body_string(resp).await;
    s
}

#[tokio::test]
async fn a_key_file_created_after_start_is_picked_up_without_a_restart() {
    let dir = tempdir("late-source");
    let emu = support::emulator_in(&dir).await;
    emu.grant_token_creator(SOURCE_SA, READER);
    // The key exists only in memory until the test writes it.
    let written = emu.write_service_account_key(&dir, SOURCE_SA).unwrap();
    let key_json = std::fs::read_to_string(&written).unwrap();
    std::fs::remove_file(&written).unwrap();
    let key = dir.join("late-key.json");
    let toml = format!(
        "[source]\ntype = \"service_account\"\nfile = \"{}\"\n{}\n[audit]\nenabled = false\n[[route]]\nname = \"read\"\nhosts = [\"{STORAGE}\"]\nimpersonate = \"{READER}\"\n",
        key.display(),
        emulator_upstream_toml(&emu, "")
    );
    let (cfg, config_dir) = config_with_ca("late-source", &toml);
    let proxy = start_proxy(cfg, config_dir).await;
    assert_eq!(status(&proxy).await, 503, "no source credential yet");

    owner_only_file(&dir, "late-key.json", &key_json);
    let proxy_ref = &proxy;
    let works = eventually(Duration::from_secs(60), || async move {
        status(proxy_ref).await == 200
    })
    .await;
    assert!(
        works,
        "the route did not start working after the key appeared"
    );
    assert!(emu.counters().get("generateAccessToken", READER) >= 1);
}
