//! The slot's states as its readers see them, driven directly through the
//! `store_*` methods (the refresher's schedule is tested in
//! `control::tokens`).

use std::time::Duration;

use super::*;

fn request() -> TokenRequest {
    TokenRequest::access_token(
        "reader@p.iam.gserviceaccount.com",
        &[
            "d1@p.iam.gserviceaccount.com".to_owned(),
            "d2@p.iam.gserviceaccount.com".to_owned(),
        ],
        &[],
        Duration::from_secs(3600),
    )
    .unwrap()
}

fn ready(secret: &str, valid_for: Duration) -> Ready {
    Ready::new(Token::new(secret, valid_for)).unwrap()
}

fn denied() -> Arc<CredentialError> {
    Arc::new(CredentialError::Iam {
        target: "reader@p.iam.gserviceaccount.com".to_owned(),
        status: 403,
        message: "denied".to_owned(),
    })
}

/// `f`'s output, or a failure (not a hung test) if it is still waiting
/// after 5 s of the paused clock.
async fn soon<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("still waiting after 5 s")
}

/// What every reader of the slot sees, in one value.
#[derive(Debug, PartialEq)]
struct View {
    status: SlotStatus,
    header: Option<String>,
    current: Option<String>,
    expires_in: Option<Duration>,
    last_error: Option<String>,
}

fn view(slot: &Slot) -> View {
    View {
        status: slot.status(),
        header: slot.load().ok().map(|h| h.to_str().unwrap().to_owned()),
        current: slot.current_token().map(|t| t.expose_secret().to_owned()),
        expires_in: slot.expires_in(),
        last_error: slot.last_error().map(|e| e.to_string()),
    }
}

#[tokio::test(start_paused = true)]
async fn each_state_shows_its_token_expiry_and_error() {
    let slot = Slot::new(request());
    let none = View {
        status: SlotStatus::Minting,
        header: None,
        current: None,
        expires_in: None,
        last_error: None,
    };
    assert_eq!(view(&slot), none);

    slot.store_fresh(ready("tok-0", Duration::from_secs(60)));
    tokio::time::advance(Duration::from_secs(15)).await;
    assert_eq!(
        view(&slot),
        View {
            status: SlotStatus::Fresh,
            header: Some("Bearer tok-0".to_owned()),
            current: Some("tok-0".to_owned()),
            expires_in: Some(Duration::from_secs(45)),
            last_error: None,
        }
    );
    assert!(slot.load().unwrap().is_sensitive());

    slot.store_refreshing(ready("tok-1", Duration::from_secs(30)), None);
    let refreshing = View {
        status: SlotStatus::Refreshing,
        header: Some("Bearer tok-1".to_owned()),
        current: Some("tok-1".to_owned()),
        expires_in: Some(Duration::from_secs(30)),
        last_error: None,
    };
    assert_eq!(view(&slot), refreshing);

    slot.store_refreshing(ready("tok-1", Duration::from_secs(30)), Some(denied()));
    assert_eq!(
        view(&slot),
        View {
            last_error: Some(denied().to_string()),
            ..refreshing
        }
    );

    slot.store_expired(denied());
    assert_eq!(
        view(&slot),
        View {
            status: SlotStatus::Expired,
            last_error: Some(denied().to_string()),
            ..none
        }
    );
    match slot.load() {
        Err(e @ Unavailable::Failed(_)) => assert_eq!(e.to_string(), denied().to_string()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unavailable_says_why() {
    assert_eq!(
        Unavailable::Minting.to_string(),
        "the first token is still being minted"
    );
}

#[tokio::test(start_paused = true)]
async fn the_principal_is_the_requests_target_and_delegates() {
    let slot = Slot::new(request());
    let p = slot.principal();
    assert_eq!(p.target_principal(), "reader@p.iam.gserviceaccount.com");
    assert_eq!(
        p.delegates(),
        [
            "d1@p.iam.gserviceaccount.com",
            "d2@p.iam.gserviceaccount.com"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_first_load_starts_the_refresher_once_and_get_waits_for_the_mint() {
    let slot = Slot::new(request());
    let first_use = slot.clone();
    let started = tokio::spawn(async move { first_use.first_use().await });
    tokio::task::yield_now().await;
    assert!(!started.is_finished(), "started before any use");
    assert!(matches!(slot.load(), Err(Unavailable::Minting)));
    soon(started).await.unwrap();

    // Later loads while minting do not wake the refresher again: a second
    // wait for first use (which no refresher makes) stays pending.
    assert!(matches!(slot.load(), Err(Unavailable::Minting)));
    slot.start();
    let again = slot.clone();
    let again = tokio::spawn(async move { again.first_use().await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!again.is_finished(), "woken again by a later load");
    again.abort();

    let waiter = slot.clone();
    let waiter =
        tokio::spawn(async move { waiter.get().await.map(|h| h.to_str().unwrap().to_owned()) });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiter.is_finished());
    slot.store_fresh(ready("tok-0", Duration::from_secs(60)));
    assert_eq!(soon(waiter).await.unwrap().unwrap(), "Bearer tok-0");
}

#[tokio::test(start_paused = true)]
async fn get_returns_the_first_mints_error() {
    let slot = Slot::new(request());
    let waiter = slot.clone();
    let waiter = tokio::spawn(async move { waiter.get().await.map(|_| ()) });
    tokio::time::sleep(Duration::from_secs(1)).await;
    slot.store_expired(denied());
    let e = soon(waiter).await.unwrap().unwrap_err();
    assert_eq!(e.to_string(), denied().to_string());
}
