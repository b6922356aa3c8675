//! The credentials half against the emulator: every source type, IAM
//! delegate chains and refusals, single-flight slots, refresh without a
//! gap, outages, and secrets kept out of `Debug`. Loopback only, real TCP
//! and TLS, configured the way a user configures the proxy (`[upstream]`
//! resolve + extra_ca, the key's `token_uri`, `GCE_METADATA_HOST`).

mod support;

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use impersonate_proxy::config::{Config, SourceConfig, SourceKind};
use impersonate_proxy::control::Registry;
use impersonate_proxy::emulator::{Emulator, EmulatorOptions};
use impersonate_proxy::google::jwt::decode_unverified;
use impersonate_proxy::google::slot::{SlotStatus, Unavailable};
use impersonate_proxy::google::{
    mint_once, AdcEnv, CredentialError, Minter, SourceCredential, Token, TokenRequest,
};
use impersonate_proxy::net::{full_body, Outbound};

use support::{eventually, tempdir, TempDir};

const SOURCE_SA: &str = "caller@emulator-project.iam.gserviceaccount.com";
const TARGET: &str = "reader@emulator-project.iam.gserviceaccount.com";
const DENIED: &str =
    "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).";

/// An emulator and its directory (its CA), removed when dropped.
struct Emu {
    emu: Emulator,
    _dir: TempDir,
}

impl Deref for Emu {
    type Target = Emulator;

    fn deref(&self) -> &Emulator {
        &self.emu
    }
}

async fn emulator(lifetime: Option<Duration>) -> Emu {
    let dir = tempdir("credentials-emu");
    let emu = Emulator::start(EmulatorOptions {
        dir: Some(dir.to_path_buf()),
        token_lifetime: lifetime,
        ..EmulatorOptions::default()
    })
    .await
    .unwrap();
    Emu { emu, _dir: dir }
}

fn config(emu: &Emulator, kind: SourceKind, file: Option<PathBuf>) -> Config {
    Config {
        source: SourceConfig {
            kind,
            file: file.clone(),
            token_file: file,
        },
        upstream: emu.upstream_config(),
        ..Config::default()
    }
}

/// A minter whose source is a service account key for `SOURCE_SA`.
fn sa_minter(emu: &Emulator) -> Minter {
    // The minter reads the key here, so its directory can go at the end.
    let dir = tempdir("credentials-key");
    let key = emu.write_service_account_key(&dir, SOURCE_SA).unwrap();
    Minter::from_config(
        &config(emu, SourceKind::ServiceAccount, Some(key)),
        &AdcEnv::default(),
    )
    .unwrap()
}

fn access(target: &str, delegates: &[&str]) -> TokenRequest {
    let delegates: Vec<String> = delegates.iter().map(|d| d.to_string()).collect();
    TokenRequest::access_token(target, &delegates, &[], Duration::from_secs(3600)).unwrap()
}

fn secret_of(header: &http::HeaderValue) -> String {
    header
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn service_account_key_source_mints_for_the_target() {
    let emu = emulator(None).await;
    emu.grant_token_creator(SOURCE_SA, TARGET);
    let minter = sa_minter(&emu);
    let source = minter.source_token().await.unwrap();
    assert_eq!(
        emu.principal_of(source.expose_secret()).as_deref(),
        Some(SOURCE_SA)
    );
    let token = minter.mint_token(&access(TARGET, &[])).await.unwrap();
    assert_eq!(
        emu.principal_of(token.expose_secret()).as_deref(),
        Some(TARGET)
    );
    let left = token.expires_in();
    assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600));
    // Our expiry is IAM's expireTime (parsed with its fractional seconds).
    let issued = emu.issued(token.expose_secret()).unwrap();
    let skew = match issued.expire_time.duration_since(token.expire_time()) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(skew < Duration::from_millis(5), "{skew:?}");
    // The source token is cached: one JWT-bearer grant for both calls.
    assert_eq!(emu.counters().get("token", SOURCE_SA), 1);
    assert_eq!(emu.counters().get("generateAccessToken", TARGET), 1);
}

#[tokio::test]
async fn a_key_google_does_not_know_is_refused_with_its_message() {
    let emu = emulator(None).await;
    let dir = tempdir("credentials-forged");
    let key = emu.write_service_account_key(&dir, SOURCE_SA).unwrap();
    let text = std::fs::read_to_string(&key).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["private_key_id"] = "0000".into();
    std::fs::write(&key, json.to_string()).unwrap();
    let minter = Minter::from_config(
        &config(&emu, SourceKind::ServiceAccount, Some(key)),
        &AdcEnv::default(),
    )
    .unwrap();
    let err = minter.source_token().await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("Invalid JWT Signature."), "{msg}");
    assert!(msg.contains(SOURCE_SA), "{msg}");
}

#[tokio::test]
async fn authorized_user_source_and_the_reauth_hint() {
    let emu = emulator(None).await;
    let user = "alice@example.com";
    emu.grant_token_creator(user, TARGET);
    let dir = tempdir("credentials-au");
    let file = emu.write_authorized_user(&dir, user).unwrap();
    let cfg = config(&emu, SourceKind::AuthorizedUser, Some(file.clone()));
    let minter = Minter::from_config(&cfg, &AdcEnv::default()).unwrap();
    let token = minter.mint_token(&access(TARGET, &[])).await.unwrap();
    assert_eq!(
        emu.principal_of(token.expose_secret()).as_deref(),
        Some(TARGET)
    );
    assert_eq!(emu.counters().get("token", user), 1);

    // A revoked login: Google says invalid_grant, we say how to fix it.
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    json["refresh_token"] = "1//revoked".into();
    let revoked = dir.join("revoked.json");
    std::fs::write(&revoked, json.to_string()).unwrap();
    let cfg = config(&emu, SourceKind::AuthorizedUser, Some(revoked));
    let err = Minter::from_config(&cfg, &AdcEnv::default())
        .unwrap()
        .mint_token(&access(TARGET, &[]))
        .await
        .unwrap_err();
    assert!(err.is_reauth_required(), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("invalid_grant"), "{msg}");
    assert!(
        msg.contains("run: gcloud auth application-default login"),
        "{msg}"
    );
}

#[tokio::test]
async fn metadata_source_via_gce_metadata_host_and_adc_fallback() {
    let emu = emulator(None).await;
    let vm = emu.metadata_account().to_owned();
    emu.grant_token_creator(&vm, TARGET);
    let no_gcloud = tempdir("credentials-no-gcloud");
    let env = AdcEnv {
        gce_metadata_host: Some(emu.metadata_host()),
        cloudsdk_config: Some(no_gcloud.to_path_buf()),
        ..AdcEnv::default()
    };
    for kind in [SourceKind::Metadata, SourceKind::Adc] {
        let minter = Minter::from_config(&config(&emu, kind, None), &env).unwrap();
        let token = minter.mint_token(&access(TARGET, &[])).await.unwrap();
        assert_eq!(
            emu.principal_of(token.expose_secret()).as_deref(),
            Some(TARGET),
            "{kind:?}"
        );
    }
    assert_eq!(emu.counters().get("metadata.token", &vm), 2);
}

#[tokio::test]
async fn access_token_source_reads_its_file() {
    let emu = emulator(None).await;
    emu.grant_token_creator(SOURCE_SA, TARGET);
    let source = sa_minter(&emu).source_token().await.unwrap();
    let dir = tempdir("credentials-at");
    let file = dir.join("token.txt");
    std::fs::write(&file, format!("{}\n", source.expose_secret())).unwrap();
    let minter = Minter::from_config(
        &config(&emu, SourceKind::AccessToken, Some(file)),
        &AdcEnv::default(),
    )
    .unwrap();
    let token = minter.mint_token(&access(TARGET, &[])).await.unwrap();
    assert_eq!(
        emu.principal_of(token.expose_secret()).as_deref(),
        Some(TARGET)
    );
}

#[tokio::test]
async fn adc_impersonated_service_account_file_honours_its_delegates() {
    let emu = emulator(None).await;
    let user = "bob@example.com";
    let delegate = "hop@emulator-project.iam.gserviceaccount.com";
    let mid = "mid@emulator-project.iam.gserviceaccount.com";
    let dir = tempdir("credentials-adc-imp");
    let au = emu.write_authorized_user(&dir, user).unwrap();
    let au: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(au).unwrap()).unwrap();
    let adc = serde_json::json!({
        "type": "impersonated_service_account",
        "service_account_impersonation_url": format!("https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{mid}:generateAccessToken"),
        "delegates": [delegate],
        "source_credentials": au,
    });
    let gcloud = tempdir("credentials-gcloud");
    std::fs::write(
        gcloud.join("application_default_credentials.json"),
        adc.to_string(),
    )
    .unwrap();
    let env = AdcEnv {
        cloudsdk_config: Some(gcloud.to_path_buf()),
        ..AdcEnv::default()
    };
    let cfg = config(&emu, SourceKind::Adc, None);
    emu.grant_token_creator(user, delegate);
    emu.grant_token_creator(mid, TARGET);
    // The file's delegate chain is enforced: hop → mid is missing.
    let err = Minter::from_config(&cfg, &env)
        .unwrap()
        .mint_token(&access(TARGET, &[]))
        .await
        .unwrap_err();
    assert!(err.is_permission_denied(), "{err}");
    assert!(err.to_string().contains(mid), "{err}");

    emu.grant_token_creator(delegate, mid);
    let minter = Minter::from_config(&cfg, &env).unwrap();
    let source = minter.source_token().await.unwrap();
    assert_eq!(
        emu.principal_of(source.expose_secret()).as_deref(),
        Some(mid)
    );
    let token = minter.mint_token(&access(TARGET, &[])).await.unwrap();
    assert_eq!(
        emu.principal_of(token.expose_secret()).as_deref(),
        Some(TARGET)
    );
}

#[tokio::test]
async fn delegate_chain_is_allowed_then_refused_with_iams_message() {
    let emu = emulator(None).await;
    let b = "b@emulator-project.iam.gserviceaccount.com";
    let c = "c@emulator-project.iam.gserviceaccount.com";
    emu.grant_token_creator(SOURCE_SA, b);
    emu.grant_token_creator(b, c);
    emu.grant_token_creator(c, TARGET);
    let minter = sa_minter(&emu);
    // Bare email and full resource name are both accepted.
    let req = access(TARGET, &[b, &format!("projects/-/serviceAccounts/{c}")]);
    let token = minter.mint_token(&req).await.unwrap();
    assert_eq!(
        emu.principal_of(token.expose_secret()).as_deref(),
        Some(TARGET)
    );

    emu.revoke_token_creator(b, c);
    let err = minter.mint_token(&req).await.unwrap_err();
    assert!(err.is_permission_denied(), "{err:?}");
    assert_eq!(err.iam_message(), Some(DENIED));
    let msg = err.to_string();
    assert!(msg.contains(TARGET) && msg.contains(DENIED), "{msg}");
    assert!(
        msg.contains("roles/iam.serviceAccountTokenCreator"),
        "{msg}"
    );
    // A 403 is not retried.
    assert_eq!(emu.counters().get("generateAccessToken", TARGET), 2);
}

#[tokio::test]
async fn a_lifetime_over_an_hour_is_refused_with_googles_text() {
    let emu = emulator(None).await;
    emu.grant_token_creator(SOURCE_SA, TARGET);
    let req = TokenRequest::access_token(TARGET, &[], &[], Duration::from_secs(7200)).unwrap();
    let err = sa_minter(&emu).mint_token(&req).await.unwrap_err();
    assert!(
        matches!(err, CredentialError::Iam { status: 400, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "Access tokens for service account {TARGET} can not have lifetimes of more than 1 hour"
        )),
        "{msg}"
    );
    assert!(
        msg.contains("constraints/iam.allowServiceAccountCredentialLifetimeExtension"),
        "{msg}"
    );
}

#[tokio::test]
async fn id_tokens_carry_the_audience_and_expire_with_the_jwt() {
    let emu = emulator(None).await;
    emu.grant_token_creator(SOURCE_SA, TARGET);
    let req = TokenRequest::id_token(TARGET, &[], "https://svc.run.app").unwrap();
    let token = sa_minter(&emu).mint_token(&req).await.unwrap();
    let jwt = decode_unverified(token.expose_secret()).unwrap();
    assert_eq!(jwt.claim_str("aud"), Some("https://svc.run.app"));
    assert_eq!(jwt.claim_str("email"), Some(TARGET));
    let left = token.expires_in();
    assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600));
    assert_eq!(emu.counters().get("generateIdToken", TARGET), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_first_loads_mint_once() {
    let emu = emulator(None).await;
    emu.grant_token_creator(SOURCE_SA, TARGET);
    let registry = Registry::new(Arc::new(sa_minter(&emu)));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let slot = registry.slot(access(TARGET, &[]), false);
            tokio::spawn(async move {
                match slot.load() {
                    Ok(h) => h,
                    Err(_) => slot.get().await.unwrap(),
                }
            })
        })
        .collect();
    let mut secrets = Vec::new();
    for t in tasks {
        secrets.push(secret_of(&t.await.unwrap()));
    }
    secrets.dedup();
    assert_eq!(secrets.len(), 1);
    assert_eq!(emu.principal_of(&secrets[0]).as_deref(), Some(TARGET));
    assert_eq!(emu.counters().get("generateAccessToken", TARGET), 1);
    assert_eq!(registry.slots().len(), 1);
}

#[tokio::test]
async fn short_tokens_are_refreshed_before_expiry_without_a_gap() {
    let lifetime = Duration::from_secs(2);
    let emu = emulator(Some(lifetime)).await;
    emu.grant_token_creator(SOURCE_SA, TARGET);
    let registry = Registry::new(Arc::new(sa_minter(&emu)));
    let slot = registry.slot(access(TARGET, &[]), true);
    slot.get().await.unwrap();
    let mut seen: Vec<String> = Vec::new();
    let until = tokio::time::Instant::now() + lifetime * 2 + Duration::from_millis(500);
    // Sampled all through the window, not waited for: a gap between two
    // tokens, however short, must show up as a failed load.
    while tokio::time::Instant::now() < until {
        let header = slot.load().unwrap_or_else(|e| panic!("gap: {e}"));
        let secret = secret_of(&header);
        // Google (the emulator) still accepts every token a reader gets.
        assert_eq!(emu.principal_of(&secret).as_deref(), Some(TARGET));
        if seen.last() != Some(&secret) {
            seen.push(secret);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 4.5 s of 2 s tokens refreshed at ~75%: at least three tokens.
    assert!(seen.len() >= 3, "{} tokens", seen.len());
    let mints = emu.counters().get("generateAccessToken", TARGET) as usize;
    assert!(mints >= seen.len() && mints <= seen.len() + 1, "{mints}");
}

#[tokio::test]
async fn an_iam_outage_serves_the_cached_token_then_reports_the_error() {
    let lifetime = Duration::from_secs(2);
    let emu = emulator(Some(lifetime)).await;
    emu.grant_token_creator(SOURCE_SA, TARGET);
    let registry = Registry::new(Arc::new(sa_minter(&emu)));
    let slot = registry.slot(access(TARGET, &[]), true);
    let cached = secret_of(&slot.get().await.unwrap());
    let minted_at = tokio::time::Instant::now();
    emu.set_outage(true);
    // Until the token's own expiry, readers keep getting it (sampled all
    // through that time).
    while minted_at.elapsed() < lifetime - Duration::from_millis(300) {
        assert_eq!(secret_of(&slot.load().unwrap()), cached);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // After it, the slot fails closed with the cause (once the refresh that
    // was in flight at expiry has failed too).
    let expired = eventually(
        (minted_at + lifetime * 3).saturating_duration_since(tokio::time::Instant::now()),
        || async {
            matches!(
                slot.last_error().as_deref(),
                Some(CredentialError::Expired { cause: Some(_), .. })
            )
        },
    )
    .await;
    assert!(expired, "never expired: {slot:?}");
    assert_eq!(slot.status(), SlotStatus::Expired);
    match slot.load() {
        Err(Unavailable::Failed(e)) => {
            assert!(e.is_expired(), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains(TARGET), "{msg}");
            assert!(
                msg.contains("The service is currently unavailable."),
                "{msg}"
            );
        }
        other => panic!("expected the outage error, got {other:?}"),
    }
    assert!(emu.counters().get("generateAccessToken", TARGET) > 1);
    // When IAM is back, the slot recovers on its own.
    emu.set_outage(false);
    let recovered = eventually(Duration::from_secs(10), || async { slot.load().is_ok() }).await;
    assert!(recovered, "never recovered");
}

/// A long IAM outage over 60 s tokens that ends ten seconds before the
/// cached token expires: retries track the time left (at most a tenth of
/// it apart), so the refresher sees IAM back within about a second and no
/// load in between fails. Takes about 50 s (the token's life less 10 s).
#[tokio::test]
async fn iam_back_ten_seconds_before_expiry_after_a_long_outage_leaves_no_gap() {
    let lifetime = Duration::from_secs(60);
    let emu = emulator(Some(lifetime)).await;
    emu.grant_token_creator(SOURCE_SA, TARGET);
    let registry = Registry::new(Arc::new(sa_minter(&emu)));
    let slot = registry.slot(access(TARGET, &[]), true);
    let cached = secret_of(&slot.get().await.unwrap());
    let expiry = tokio::time::Instant::now() + slot.expires_in().unwrap();
    emu.set_outage(true);
    let before = emu.counters().get("generateAccessToken", TARGET);
    let sample = |what: &str| {
        let header = slot.load().unwrap_or_else(|e| panic!("gap {what}: {e}"));
        secret_of(&header)
    };
    while tokio::time::Instant::now() < expiry - Duration::from_secs(10) {
        assert_eq!(sample("during the outage"), cached);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The refresh started at 75% of the life (less jitter) and was retried
    // through the outage, paced, not in a loop.
    let calls = emu.counters().get("generateAccessToken", TARGET) - before;
    assert!(
        (2..=150).contains(&calls),
        "{calls} IAM calls in the outage"
    );
    assert_eq!(slot.status(), SlotStatus::Refreshing);
    assert!(
        slot.last_error().is_some_and(|e| e
            .to_string()
            .contains("The service is currently unavailable.")),
        "{slot:?}"
    );
    emu.set_outage(false);
    let back = tokio::time::Instant::now();
    let mut fresh_after = None;
    while tokio::time::Instant::now() < expiry + Duration::from_secs(2) {
        let secret = sample("after IAM came back");
        assert_eq!(emu.principal_of(&secret).as_deref(), Some(TARGET));
        if fresh_after.is_none() && secret != cached {
            fresh_after = Some(back.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A tenth of the 10 s left, plus one mint.
    let fresh_after = fresh_after.expect("a new token before the old one expired");
    assert!(fresh_after < Duration::from_millis(2500), "{fresh_after:?}");
    assert_eq!(slot.status(), SlotStatus::Fresh);
}

#[tokio::test]
async fn storage_sees_the_impersonated_principal_over_h2() {
    let emu = emulator(None).await;
    emu.grant_token_creator(SOURCE_SA, TARGET);
    let token = sa_minter(&emu)
        .mint_token(&access(TARGET, &[]))
        .await
        .unwrap();
    let upstream = Arc::new(Outbound::new(&emu.upstream_config()).unwrap());
    let get = |bearer: Option<String>| {
        let mut req = http::Request::get("https://storage.googleapis.com/storage/v1/b/bkt/o")
            .header("x-goog-user-project", "billing-project");
        if let Some(b) = bearer {
            req = req.header("authorization", format!("Bearer {b}"));
        }
        let req = req.body(full_body("")).unwrap();
        let upstream = upstream.clone();
        async move {
            let resp = upstream.send(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        }
    };
    let (status, body) = get(Some(token.expose_secret().to_owned())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["emulator"]["principal"], TARGET);
    assert_eq!(body["emulator"]["userProject"], "billing-project");
    assert_eq!(body["emulator"]["httpVersion"], "HTTP/2.0");
    let (status, _) = get(None).await;
    assert_eq!(status, 401);
    let (status, body) = get(Some("ya29.not-issued".into())).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["message"], "Invalid Credentials");
}

#[tokio::test]
async fn mint_once_explains_a_refusal() {
    let emu = emulator(None).await;
    let dir = tempdir("credentials-once");
    let key = emu.write_service_account_key(&dir, SOURCE_SA).unwrap();
    let cfg = config(&emu, SourceKind::ServiceAccount, Some(key));
    let err = mint_once(&cfg, &access(TARGET, &[])).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(DENIED) && msg.contains(TARGET), "{msg}");
    assert!(
        msg.contains("roles/iam.serviceAccountTokenCreator"),
        "{msg}"
    );
    emu.grant_token_creator(SOURCE_SA, TARGET);
    let token: Token = mint_once(&cfg, &access(TARGET, &[])).await.unwrap();
    assert_eq!(
        emu.principal_of(token.expose_secret()).as_deref(),
        Some(TARGET)
    );
}

#[tokio::test]
async fn debug_of_every_token_holding_type_hides_the_secret() {
    let emu = emulator(None).await;
    emu.grant_token_creator(SOURCE_SA, TARGET);
    let dir = tempdir("credentials-debug");
    let au_file = emu
        .write_authorized_user(&dir, "carol@example.com")
        .unwrap();
    let au: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&au_file).unwrap()).unwrap();
    let key_file = emu.write_service_account_key(&dir, SOURCE_SA).unwrap();
    let key: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    let minter = sa_minter(&emu);
    let source_token = minter.source_token().await.unwrap();
    let registry = Registry::new(Arc::new(sa_minter(&emu)));
    let slot = registry.slot(access(TARGET, &[]), true);
    let header = slot.get().await.unwrap();
    let slot_secret = secret_of(&header);

    let texts = [
        format!("{source_token:?}"),
        format!("{source_token}"),
        format!("{minter:?}"),
        format!("{slot:?}"),
        format!("{registry:?}"),
        format!("{header:?}"),
        format!("{:?}", SourceCredential::from_file(&au_file).unwrap()),
        format!("{:?}", SourceCredential::from_file(&key_file).unwrap()),
        format!("{:?}", Unavailable::Minting),
    ];
    let private_key = key["private_key"].as_str().unwrap();
    let key_body = private_key.lines().nth(1).unwrap();
    let secrets = [
        source_token.expose_secret(),
        slot_secret.as_str(),
        au["refresh_token"].as_str().unwrap(),
        au["client_secret"].as_str().unwrap(),
        key_body,
    ];
    for text in &texts {
        for secret in secrets {
            assert!(!text.contains(secret), "{text} leaks {secret}");
        }
    }
    assert!(texts[0].contains("redacted") && texts[3].contains("redacted"));
}

#[tokio::test]
async fn the_metadata_server_requires_its_header_and_serves_email_token_identity() {
    let emu = emulator(None).await;
    let upstream = Arc::new(Outbound::new(&emu.upstream_config()).unwrap());
    // `metadata.google.internal` reaches the emulator through `resolve`.
    let get = |path: &str, flavor: bool| {
        let mut req = http::Request::get(format!(
            "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/{path}"
        ));
        if flavor {
            req = req.header("metadata-flavor", "Google");
        }
        let req = req.body(full_body("")).unwrap();
        let upstream = upstream.clone();
        async move {
            let resp = upstream.send(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    assert_eq!(get("email", false).await.0, 403);
    assert_eq!(
        get("email", true).await,
        (http::StatusCode::OK, emu.metadata_account().to_owned())
    );
    let (status, jwt) = get("identity?audience=https%3A%2F%2Fsvc.run.app", true).await;
    assert_eq!(status, 200);
    let claims = decode_unverified(&jwt).unwrap();
    assert_eq!(claims.claim_str("aud"), Some("https://svc.run.app"));
    assert_eq!(claims.claim_str("email"), Some(emu.metadata_account()));
    // The same token is handed out again while it has time left.
    let (_, a) = get(
        "token?scopes=https://www.googleapis.com/auth/cloud-platform",
        true,
    )
    .await;
    let (_, b) = get(
        "token?scopes=https://www.googleapis.com/auth/cloud-platform",
        true,
    )
    .await;
    let a: serde_json::Value = serde_json::from_str(&a).unwrap();
    let b: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(a["access_token"], b["access_token"]);
    assert_eq!(
        emu.principal_of(a["access_token"].as_str().unwrap())
            .as_deref(),
        Some(emu.metadata_account())
    );
}
