//! The hot-path fixture shared by `benches/inject.rs` and `tests/alloc.rs`:
//! a route table of N realistic rules whose match for the bench request is
//! the last rule, a warm slot for it, and a realistic request.

use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Method;
use impersonate_proxy::control::Registry;
use impersonate_proxy::google::{AccessBoundary, CredentialError, Mint, Token, TokenRequest};
use impersonate_proxy::policy::compile_rules;
use impersonate_proxy::policy::inject::{self, Outcome};
use impersonate_proxy::policy::routes::RouteTable;
use impersonate_proxy::Config;

/// The request every case looks up (`miss` aside).
pub const HOST: &str = "storage.googleapis.com";
pub const PATH: &str = "/storage/v1/b/prod-data/o/reports%2F2026-11.csv";
pub const METHOD: Method = Method::GET;
/// A host no rule matches (not even a `*.suffix` one).
pub const MISS_HOST: &str = "api.example.com";

/// Mints a fixed token without any I/O.
struct Fixed;

impl Mint for Fixed {
    fn mint<'a>(
        &'a self,
        _req: &'a TokenRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send + 'a>> {
        Box::pin(async { Ok(Token::new("ya29.bench-token", Duration::from_secs(3600))) })
    }

    fn downscope<'a>(
        &'a self,
        _req: &'a TokenRequest,
        _base: &'a Token,
        _boundary: &'a AccessBoundary,
    ) -> Pin<Box<dyn Future<Output = Result<Token, CredentialError>> + Send + 'a>> {
        Box::pin(async {
            Ok(Token::new(
                "ya29.bench-downscoped",
                Duration::from_secs(3600),
            ))
        })
    }
}

/// The `{bucket}` boundary the per-bucket fixture's last route carries.
pub const BUCKET_BOUNDARY: &str = "access_boundary = [{ resource = \"//storage.googleapis.com/projects/_/buckets/{bucket}\", permissions = [\"inRole:roles/storage.objectViewer\"] }]";

/// `n` rules; the last one is the first to match [`HOST`] `GET` [`PATH`].
/// The others cycle through what large configs hold: one rule per API host,
/// `*.suffix` rules, per-bucket rules on the same host (path prefix +
/// methods), per-topic rules, and per-project deny rules on
/// `*.googleapis.com`. At n = 1,000 the bench host has 400 earlier
/// candidate rules (200 exact, 200 through `*.googleapis.com`), none
/// matching.
pub fn rules_toml(n: usize, quota_project: bool) -> String {
    let mut t = String::new();
    for i in 0..n.saturating_sub(1) {
        let sa = format!("sa-{}@proj-{}.iam.gserviceaccount.com", i % 64, i % 7);
        let _ = writeln!(t, "[[route]]\nname = \"r{i}\"");
        let _ = match i % 5 {
            0 => writeln!(t, "hosts = [\"api-{i}.googleapis.com\"]\nimpersonate = \"{sa}\""),
            1 => writeln!(
                t,
                "hosts = [\"*.tenant-{i}.googleapis.com\"]\nimpersonate = \"{sa}\""
            ),
            2 => writeln!(
                t,
                "hosts = [\"{HOST}\"]\npath_prefix = \"/storage/v1/b/bucket-{i}\"\nmethods = [\"GET\", \"HEAD\"]\nimpersonate = \"{sa}\""
            ),
            3 => writeln!(
                t,
                "hosts = [\"pubsub.googleapis.com\"]\npath_prefix = \"/v1/projects/proj-{i}/topics\"\nmethods = [\"POST\"]\nimpersonate = \"{sa}\""
            ),
            _ => writeln!(
                t,
                "hosts = [\"*.googleapis.com\"]\npath_prefix = \"/v1/projects/proj-{i}\"\nmethods = [\"DELETE\"]\naction = \"deny\""
            ),
        };
    }
    let _ = writeln!(
        t,
        "[[route]]\nname = \"prod-data-reader\"\nhosts = [\"{HOST}\"]\npath_prefix = \"/storage/v1/b/prod-data\"\nmethods = [\"GET\", \"HEAD\"]\nimpersonate = \"reader@prod.iam.gserviceaccount.com\""
    );
    if quota_project {
        let _ = writeln!(t, "quota_project = \"billing-prod\"");
    }
    t
}

/// A built table with the matched route's slot holding a token. Keep it
/// alive while using the table: dropping it stops the refreshers.
pub struct Fixture {
    pub table: RouteTable,
    /// The `Authorization` value the matched route injects.
    pub token: HeaderValue,
    _registry: Registry,
    _rt: tokio::runtime::Runtime,
}

impl Fixture {
    pub fn new(n: usize, quota_project: bool) -> Fixture {
        Fixture::build(rules_toml(n, quota_project))
    }

    /// [`Fixture::new`] whose matched route downscopes its token per
    /// bucket ([`BUCKET_BOUNDARY`]); the request's bucket's slot is warm.
    pub fn per_bucket(n: usize) -> Fixture {
        Fixture::build(format!("{}{BUCKET_BOUNDARY}\n", rules_toml(n, false)))
    }

    fn build(toml: String) -> Fixture {
        // Current-thread: the refreshers only run inside `block_on`, so
        // nothing runs (or allocates) behind the measured loop.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let cfg = Config::parse(Path::new("bench.toml"), &toml).expect("bench config parses");
        let specs = compile_rules(&cfg).expect("bench rules compile");
        let (registry, table, token) = rt.block_on(async {
            let registry = Registry::new(Arc::new(Fixed));
            let table = RouteTable::build(&specs, &registry);
            let route = table
                .find(HOST, &METHOD, PATH)
                .expect("the last rule matches");
            assert_eq!(&*route.name, "prod-data-reader");
            let mut headers = HeaderMap::new();
            let token = match inject::apply_at(&route.action, &mut headers, HOST, PATH, &mut None) {
                Outcome::Minting(slot) => slot.get().await.expect("minted"),
                _ => unreachable!("the bench route injects, and its slot is not minted yet"),
            };
            (registry, table, token)
        });
        Fixture {
            table,
            token,
            _registry: registry,
            _rt: rt,
        }
    }
}

/// What a client library sends to Cloud Storage: ten headers, including
/// its own `Authorization` that the route replaces.
pub fn request_headers() -> HeaderMap {
    let pairs = [
        ("host", HOST),
        (
            "user-agent",
            "gcloud-python/3.12.3 google-cloud-storage/2.18.2",
        ),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        ("authorization", "Bearer ya29.the-clients-own-token"),
        (
            "x-goog-api-client",
            "gl-python/3.12.3 gccl/2.18.2 gax/2.19.1 gapic/2.18.2",
        ),
        (
            "x-goog-request-params",
            "bucket=projects/_/buckets/prod-data",
        ),
        ("content-type", "application/json; charset=UTF-8"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        (
            "x-cloud-trace-context",
            "4bf92f3577b34da6a3ce929d0e0e4736/3456789;o=1",
        ),
    ];
    let mut h = HeaderMap::with_capacity(pairs.len() + 2);
    for (k, v) in pairs {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}
