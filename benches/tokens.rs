//! The hot path: `Slot::load()` against the floor it is built on, a bare
//! `ArcSwap` load plus a `HeaderValue` clone.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderValue;
use impersonate_proxy::control::Registry;
use impersonate_proxy::google::{CredentialError, Mint, Token, TokenRequest};

/// Mints a fixed token without any I/O.
struct Fixed;

impl Mint for Fixed {
    fn mint<'a>(
        &'a self,
        _req: &'a TokenRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send + 'a>> {
        Box::pin(async { Ok(Token::new("ya29.bench-token", Duration::from_secs(3600))) })
    }
}

fn load(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let registry = Registry::new(Arc::new(Fixed));
    let req = TokenRequest::access_token(
        "bench@p.iam.gserviceaccount.com",
        &[],
        &[],
        Duration::from_secs(3600),
    )
    .expect("valid request");
    let slot = rt.block_on(async {
        let slot = registry.slot(req, true);
        slot.get().await.expect("minted");
        slot
    });

    let bytes = Bytes::from(String::from("Bearer ya29.bench-token"));
    drop(bytes.clone());
    let bare = ArcSwap::from_pointee(HeaderValue::from_maybe_shared(bytes).expect("header"));

    let mut g = c.benchmark_group("token_load");
    g.bench_function("bare_arcswap_headervalue_clone", |b| {
        b.iter(|| black_box((**bare.load()).clone()))
    });
    g.bench_function("slot_load", |b| b.iter(|| black_box(slot.load())));
    g.finish();
    drop(registry);
}

criterion_group!(benches, load);
criterion_main!(benches);
