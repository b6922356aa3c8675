//! Limits of the metadata endpoint against the emulator: one client
//! cannot use up the on-demand token slots of everyone else, ID tokens
//! go only to the clients allowed them, and identity requests are
//! audited with their audience (never the token). Release of unused
//! slots is tested on Tokio's paused clock in `control::metadata`.

#[path = "support/client.rs"]
mod client;
#[path = "support/proxy.rs"]
mod proxy;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::net::SocketAddr;

use client::*;
use impersonate_proxy::google::jwt::decode_unverified;
use proxy::*;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

const TARGET: &str = "metadata-target@emulator-project.iam.gserviceaccount.com";
const IDENTITY: &str = "/computeMetadata/v1/instance/service-accounts/default/identity";

/// An origin-form metadata GET from the loopback address `from`:
/// status and body.
async fn metadata_get_from(proxy: SocketAddr, from: &str, path: &str) -> (u16, String) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(proxy).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {proxy}\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    let body = read_body(&mut s, &head).await;
    (status_of(&head).unwrap_or(0), body)
}

fn identity(audience: &str) -> String {
    format!("{IDENTITY}?audience={audience}")
}

/// Two clients told apart by source address: `junk` on 127.0.0.2,
/// `app` on the rest of loopback.
fn two_clients() -> &'static str {
    "[[client]]\nname = \"junk\"\ncidrs = [\"127.0.0.2/32\"]\n\n[[client]]\nname = \"app\"\ncidrs = [\"127.0.0.0/8\"]\n"
}

#[tokio::test]
async fn one_client_cannot_use_up_the_on_demand_slots_of_another() {
    let w = emu_world(
        "metadata-limits-cap",
        &format!(
            "[audit]\nenabled = false\n[metadata]\nenabled = true\nservice_account = \"{TARGET}\"\nid_token_clients = [\"junk\", \"app\"]\n{}",
            two_clients()
        ),
        "",
    )
    .await;
    w.emu.grant_token_creator(SOURCE_SA, TARGET);
    let addr = w.proxy.addr;

    // Junk audiences from one client, more than the whole budget.
    let mut minted = 0;
    let mut refusal = None;
    for n in 0..40 {
        let (status, body) = metadata_get_from(
            addr,
            "127.0.0.2",
            &identity(&format!("https://junk-{n}.example")),
        )
        .await;
        match status {
            200 => minted += 1,
            429 => refusal = Some(body),
            other => panic!("junk audience {n}: {other} {body}"),
        }
    }
    // The real audience of the other client still gets its token.
    let (status, body) =
        metadata_get_from(addr, "127.0.0.1", &identity("https://svc.example.run.app")).await;
    assert_eq!(status, 200, "{body}");
    let jwt = decode_unverified(body.trim()).unwrap();
    assert_eq!(jwt.claims["aud"], "https://svc.example.run.app");
    // The junk client's own cap stopped it well short of the budget, and
    // the refusal says why.
    assert!(minted <= 8, "one client kept {minted} on-demand slots");
    let refusal = refusal.expect("the junk client is refused at some point");
    assert!(refusal.contains("\"junk\""), "{refusal}");
    assert!(refusal.contains("[metadata] audiences"), "{refusal}");
    // And the junk client still gets the audiences it already holds.
    let (status, body) =
        metadata_get_from(addr, "127.0.0.2", &identity("https://junk-0.example")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn identity_requests_are_audited_with_their_audience_and_never_the_token() {
    let audit_dir = tempdir("metadata-limits-audit");
    let audit = audit_dir.join("audit.jsonl");
    let w = emu_world(
        "metadata-limits-audit",
        &format!(
            "[audit]\nfile = \"{}\"\n[metadata]\nenabled = true\nservice_account = \"{TARGET}\"\n",
            audit.display()
        ),
        "",
    )
    .await;
    w.emu.grant_token_creator(SOURCE_SA, TARGET);
    let (status, token) = metadata_get_from(
        w.proxy.addr,
        "127.0.0.1",
        &identity("https%3A%2F%2Fsvc.example.run.app"),
    )
    .await;
    assert_eq!(status, 200, "{token}");
    let (status, _) = metadata_get_from(
        w.proxy.addr,
        "127.0.0.1",
        "/computeMetadata/v1/instance/service-accounts/default/email",
    )
    .await;
    assert_eq!(status, 200);
    assert!(w.proxy.stop().await);

    let log = std::fs::read_to_string(&audit).unwrap();
    let records: Vec<serde_json::Value> = log.lines().map(json).collect();
    let id = records
        .iter()
        .find(|r| r["path"] == IDENTITY)
        .unwrap_or_else(|| panic!("no identity record: {log}"));
    assert_eq!(id["action"], "metadata", "{id}");
    assert_eq!(id["audience"], "https://svc.example.run.app", "{id}");
    assert_eq!(id["status"], 200, "{id}");
    // Other metadata requests have no audience field at all.
    let email = records
        .iter()
        .find(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/email")))
        .unwrap_or_else(|| panic!("no email record: {log}"));
    assert!(email.get("audience").is_none(), "{email}");
    assert!(!log.contains(token.trim()), "{log}");
}

#[tokio::test]
async fn only_id_token_clients_get_id_tokens_when_clients_are_configured() {
    let w = emu_world(
        "metadata-limits-idclients",
        &format!(
            "[audit]\nenabled = false\n[metadata]\nenabled = true\nservice_account = \"{TARGET}\"\nid_token_clients = [\"app\"]\n{}",
            two_clients()
        ),
        "",
    )
    .await;
    w.emu.grant_token_creator(SOURCE_SA, TARGET);
    let path = identity("https://svc.example.run.app");

    let (status, body) = metadata_get_from(w.proxy.addr, "127.0.0.1", &path).await;
    assert_eq!(status, 200, "{body}");
    let jwt = decode_unverified(body.trim()).unwrap();
    assert_eq!(jwt.claims["email"], TARGET);

    let (status, body) = metadata_get_from(w.proxy.addr, "127.0.0.2", &path).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"junk\""), "{body}");
    assert!(body.contains("[metadata] id_token_clients"), "{body}");
    assert!(!body.contains("eyJ"), "{body}");
}

#[tokio::test]
async fn with_clients_configured_and_none_listed_nobody_gets_id_tokens() {
    let w = emu_world(
        "metadata-limits-noidclients",
        &format!(
            "[audit]\nenabled = false\n[metadata]\nenabled = true\nservice_account = \"{TARGET}\"\n{}",
            two_clients()
        ),
        "",
    )
    .await;
    w.emu.grant_token_creator(SOURCE_SA, TARGET);
    let (status, body) = metadata_get_from(
        w.proxy.addr,
        "127.0.0.1",
        &identity("https://svc.example.run.app"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"app\""), "{body}");
    assert!(body.contains("[metadata] id_token_clients"), "{body}");
}

#[tokio::test]
async fn an_unknown_id_token_client_is_a_config_error_naming_the_key() {
    let (cfg, _dir) = config_with_ca(
        "metadata-limits-unknown",
        &format!(
            "[metadata]\nenabled = true\nservice_account = \"{TARGET}\"\nid_token_clients = [\"app\", \"nobody\"]\n{}",
            two_clients()
        ),
    );
    let err = match impersonate_proxy::Proxy::bind(&cfg).await {
        Ok(_) => panic!("a proxy started with an unknown id_token_clients name"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("metadata.id_token_clients[1]"), "{err}");
    assert!(err.contains("nobody"), "{err}");
}
