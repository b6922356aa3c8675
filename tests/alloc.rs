//! The hot path allocates nothing: once a route's slot holds a token,
//! `RouteTable::find` + `inject::apply` make no heap allocation; nor does
//! `inject::apply_at` for a `{bucket}` route once the bucket's slot does. Counted
//! with dhat's global allocator, so this file holds a single test (the
//! allocator counts every thread of the binary).

use http::header::AUTHORIZATION;
use impersonate_proxy::policy::inject::{self, Outcome};

#[path = "../benches/support/hot_path.rs"]
mod hot_path;

use hot_path::{Fixture, HOST, METHOD, MISS_HOST, PATH};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const INJECTIONS: u64 = 1_000;

#[test]
fn find_and_apply_do_not_allocate_once_the_slot_is_warm() {
    let _profiler = dhat::Profiler::builder().testing().build();
    // The route also sets `x-goog-user-project`, so both inserts are counted.
    let fixture = Fixture::new(1_000, true);
    let mut headers = hot_path::request_headers();
    let inject_once = |headers: &mut http::HeaderMap| {
        let route = fixture.table.find(HOST, &METHOD, PATH).expect("matches");
        assert!(matches!(
            inject::apply(&route.action, headers),
            Outcome::Forward
        ));
        assert!(fixture.table.find(MISS_HOST, &METHOD, PATH).is_none());
    };
    // Once per thread and per header map: arc-swap registers this thread's
    // debt slots on its first load, and the map makes room for the
    // `x-goog-user-project` it did not have.
    inject_once(&mut headers);

    let before = dhat::HeapStats::get();
    for _ in 0..INJECTIONS {
        inject_once(&mut headers);
    }
    let after = dhat::HeapStats::get();

    assert_eq!(headers[AUTHORIZATION], fixture.token);
    assert_eq!(headers["x-goog-user-project"], "billing-prod");
    let blocks = after.total_blocks - before.total_blocks;
    let bytes = after.total_bytes - before.total_bytes;
    dhat::assert_eq!(
        (blocks, bytes),
        (0, 0),
        "{INJECTIONS} injections allocated {blocks} blocks ({bytes} bytes)"
    );

    // A `{bucket}` route, once the request's bucket has its slot: the
    // bucket table is read like a slot, without a lock or an allocation.
    let fixture = Fixture::per_bucket(1_000);
    let mut headers = hot_path::request_headers();
    let mut boundary = None;
    let mut inject_bucket = |headers: &mut http::HeaderMap| {
        let route = fixture.table.find(HOST, &METHOD, PATH).expect("matches");
        assert!(matches!(
            inject::apply_at(&route.action, headers, HOST, PATH, &mut boundary),
            Outcome::Forward
        ));
    };
    inject_bucket(&mut headers);
    let before = dhat::HeapStats::get();
    for _ in 0..INJECTIONS {
        inject_bucket(&mut headers);
    }
    let after = dhat::HeapStats::get();
    assert_eq!(headers[AUTHORIZATION], fixture.token);
    assert_eq!(headers[AUTHORIZATION], "Bearer ya29.bench-downscoped");
    let blocks = after.total_blocks - before.total_blocks;
    let bytes = after.total_bytes - before.total_bytes;
    dhat::assert_eq!(
        (blocks, bytes),
        (0, 0),
        "{INJECTIONS} per-bucket injections allocated {blocks} blocks ({bytes} bytes)"
    );
}
