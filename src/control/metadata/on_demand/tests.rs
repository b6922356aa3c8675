//! On-demand slot budget and release on Tokio's paused clock, with a
//! scripted minter instead of IAM.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::google::slot::Unavailable;
use crate::google::{CredentialError, Mint, Token};

const SA: &str = "meta@p.iam.gserviceaccount.com";

/// Mints tokens valid for two minutes (so refreshers run often) and counts
/// mints per request.
#[derive(Default)]
struct Scripted {
    mints: Mutex<HashMap<TokenRequest, usize>>,
}

impl Scripted {
    fn mints(&self, request: &TokenRequest) -> usize {
        self.mints
            .lock()
            .unwrap()
            .get(request)
            .copied()
            .unwrap_or(0)
    }
}

impl Mint for Scripted {
    fn mint<'a>(
        &'a self,
        req: &'a TokenRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send + 'a>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            *self.mints.lock().unwrap().entry(req.clone()).or_default() += 1;
            Ok(Token::new("id-token", Duration::from_secs(120)))
        })
    }
}

fn audience(name: &str) -> TokenRequest {
    TokenRequest::id_token(SA, &[], &format!("https://{name}.example")).unwrap()
}

fn client(name: &str) -> Option<Owner> {
    Some(Owner::Client(name.into()))
}

fn in_registry(registry: &Registry, request: &TokenRequest) -> bool {
    registry.slots().iter().any(|s| s.request() == request)
}

/// Asks for `request` as `owner` and waits for its token.
async fn use_slot(on_demand: &OnDemand, registry: &Registry, request: &TokenRequest, owner: &str) {
    let slot = on_demand
        .get(registry, request.clone(), client(owner))
        .unwrap();
    slot.get().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn unused_slots_are_released_and_their_refreshers_stop() {
    let minter = Arc::new(Scripted::default());
    let registry = Registry::new(minter.clone());
    let on_demand = OnDemand::new();
    let (junk, used, shared) = (audience("junk"), audience("used"), audience("shared"));
    // `shared` is also a route's token: the route asked the registry first.
    let route_slot = registry.slot(shared.clone(), true);
    for r in [&junk, &used, &shared] {
        use_slot(&on_demand, &registry, r, "app").await;
    }
    let held = on_demand
        .get(&registry, junk.clone(), client("app"))
        .unwrap();

    tokio::time::sleep(IDLE / 2).await;
    use_slot(&on_demand, &registry, &used, "app").await;
    tokio::time::sleep(IDLE / 2 + Duration::from_secs(1)).await;
    // The next ask releases what went unused for IDLE.
    use_slot(&on_demand, &registry, &audience("next"), "app").await;

    assert!(!in_registry(&registry, &junk), "{registry:?}");
    assert!(in_registry(&registry, &used), "{registry:?}");
    // Released by the endpoint, kept by the registry for the route.
    assert!(in_registry(&registry, &shared), "{registry:?}");
    // A clone still held gets an error, never a token no one refreshes.
    assert!(matches!(
        held.load(),
        Err(Unavailable::Failed(e)) if matches!(*e, CredentialError::Released { .. })
    ));

    let before = (minter.mints(&junk), minter.mints(&shared));
    tokio::time::sleep(Duration::from_secs(1800)).await;
    assert_eq!(minter.mints(&junk), before.0, "a released refresher minted");
    assert!(
        minter.mints(&shared) > before.1,
        "the route's token stopped"
    );
    assert!(route_slot.load().is_ok());

    // Asking again makes a new slot that mints again.
    use_slot(&on_demand, &registry, &junk, "app").await;
    assert_eq!(minter.mints(&junk), before.0 + 1);
}

#[tokio::test(start_paused = true)]
async fn one_client_holds_at_most_its_share_and_listed_audiences_are_free_and_kept() {
    let registry = Registry::new(Arc::new(Scripted::default()));
    let on_demand = OnDemand::new();
    let listed = audience("listed");
    on_demand.get(&registry, listed.clone(), None).unwrap();
    for n in 0..MAX_PER_CLIENT {
        let r = audience(&format!("junk-{n}"));
        on_demand.get(&registry, r, client("junk")).unwrap();
    }
    let refused = on_demand.get(&registry, audience("junk-more"), client("junk"));
    assert_eq!(
        refused.unwrap_err(),
        Refused::Owner(Owner::Client("junk".into()))
    );
    // What it holds is still served to it, and to others.
    on_demand
        .get(&registry, audience("junk-0"), client("junk"))
        .unwrap();
    on_demand
        .get(&registry, audience("junk-1"), client("app"))
        .unwrap();

    // Other clients fill the rest of the budget; the listed audience
    // does not count.
    for c in 1..MAX_ON_DEMAND / MAX_PER_CLIENT {
        for n in 0..MAX_PER_CLIENT {
            let r = audience(&format!("c{c}-{n}"));
            on_demand
                .get(&registry, r, client(&format!("c{c}")))
                .unwrap();
        }
    }
    let refused = on_demand.get(&registry, audience("late"), client("late"));
    assert_eq!(refused.unwrap_err(), Refused::Total);

    // Unused for IDLE: everything counted goes, the listed audience stays.
    tokio::time::sleep(IDLE).await;
    on_demand.release_idle(&registry);
    let left: Vec<TokenRequest> = registry
        .slots()
        .iter()
        .map(|s| s.request().clone())
        .collect();
    assert_eq!(left, [listed], "{registry:?}");
    on_demand
        .get(&registry, audience("late"), client("late"))
        .unwrap();
}

#[test]
fn owners_are_clients_or_remote_addresses() {
    let id = ClientId {
        index: 0,
        name: "ci".into(),
        identified_by: crate::ops::audit::IdentifiedBy::Cidr,
    };
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        Owner::of(Some(&id), ip("127.0.0.1")),
        Owner::Client("ci".into())
    );
    assert_eq!(Owner::of(None, ip("127.0.0.2")), Owner::Local);
    assert_eq!(Owner::of(None, ip("::1")), Owner::Local);
    assert_eq!(
        Owner::of(None, ip("::ffff:10.0.0.1")),
        Owner::Address(ip("10.0.0.1"))
    );
    assert_eq!(
        Owner::of(None, ip("2001:db8:1:2:3:4:5:6")),
        Owner::Address(ip("2001:db8:1:2::"))
    );
    assert_eq!(Owner::Local.cap(), MAX_ON_DEMAND);
    assert_eq!(Owner::Address(ip("10.0.0.1")).cap(), MAX_PER_CLIENT);
}
