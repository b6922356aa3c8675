//! Prometheus metrics, process-wide (like a default registry): request
//! counts and durations by route, client and status class; connections and
//! tunnels; certificates; token mints and failures by slot and reason;
//! seconds until each slot's token expires; source refreshes; IAM latency.
//!
//! Labels are bounded: route, client and slot names come from the config,
//! never from a request path or a token.

use std::fmt::Write as _;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::ops::conn::{IdentifiedBy, Listener};

/// A label value shared with the config (route and client names): a
/// reference-count bump per request, not a string copy.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Name(Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

fn name_or(v: Option<&Arc<str>>, default: &'static OnceLock<Arc<str>>, text: &str) -> Name {
    Name(
        v.cloned()
            .unwrap_or_else(|| default.get_or_init(|| text.into()).clone()),
    )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Name,
    client: Name,
    status: &'static str,
    /// `connect`, `tls` or `transparent`.
    listener: &'static str,
    /// `cidr`, `basic`, `cert`, or `none` (no `[[client]]` entries).
    identified_by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MintLabels {
    slot: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabel {
    slot: String,
}

/// Every metric the proxy exports.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    connections: Gauge,
    tunnels: Gauge,
    certs_minted: Counter,
    cert_cache: Gauge,
    mints: Family<MintLabels, Counter>,
    refresh_retries: Family<SlotLabel, Counter>,
    expires_in: Family<SlotLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    source_refreshes: Counter,
    iam_latency: Histogram,
    reloads: Family<ResultLabel, Counter>,
    ready: Gauge,
    would_deny: Family<RouteLabel, Counter>,
    audit_write_errors: Counter,
    audit_dropped: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// The process-wide metrics.
pub(crate) fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("impersonate_proxy");
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            connections: Gauge::default(),
            tunnels: Gauge::default(),
            certs_minted: Counter::default(),
            cert_cache: Gauge::default(),
            mints: Family::default(),
            refresh_retries: Family::default(),
            expires_in: Family::default(),
            source_refreshes: Counter::default(),
            iam_latency: latency_histogram(),
            reloads: Family::default(),
            ready: Gauge::default(),
            would_deny: Family::default(),
            audit_write_errors: Counter::default(),
            audit_dropped: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests by route, client, status class, listener and how the client was identified",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to the end of the response body, by route",
            m.duration.clone(),
        );
        registry.register(
            "active_connections",
            "Client connections open now",
            m.connections.clone(),
        );
        registry.register(
            "active_tunnels",
            "CONNECT tunnels open now (intercepted or spliced)",
            m.tunnels.clone(),
        );
        registry.register(
            "certificates_minted",
            "Leaf certificates minted",
            m.certs_minted.clone(),
        );
        registry.register(
            "certificate_cache_size",
            "Hosts with a cached leaf certificate",
            m.cert_cache.clone(),
        );
        registry.register(
            "token_mints",
            "Token mints by slot and result (ok, or the failure reason)",
            m.mints.clone(),
        );
        registry.register(
            "token_refresh_retries",
            "Failed mints or refreshes of a slot's token that will be retried, by slot",
            m.refresh_retries.clone(),
        );
        registry.register(
            "token_expires_in_seconds",
            "Seconds until each slot's token expires (0 when it has none)",
            m.expires_in.clone(),
        );
        registry.register(
            "source_token_refreshes",
            "Fetches of the source credential's own token",
            m.source_refreshes.clone(),
        );
        registry.register(
            "iam_request_duration_seconds",
            "Latency of IAM Credentials calls",
            m.iam_latency.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads by result",
            m.reloads.clone(),
        );
        registry.register(
            "ready",
            "1 when /readyz answers 200 (serving, every warm slot holds a token), else 0; set at each scrape",
            m.ready.clone(),
        );
        registry.register(
            "requests_would_deny",
            "Requests a report-mode deny route (enforce = false) matched and let through, by route",
            m.would_deny.clone(),
        );
        registry.register(
            "audit_write_errors",
            "Audit writes that failed (full or unwritable disk); the records are kept and retried",
            m.audit_write_errors.clone(),
        );
        registry.register(
            "audit_records_dropped",
            "Audit records dropped: the queue or the backlog of unwritten records was full",
            m.audit_dropped.clone(),
        );
        Metrics { registry, ..m }
    }

    /// One finished request.
    pub fn request(
        &self,
        route: Option<&Arc<str>>,
        client: Option<&Arc<str>>,
        (listener, identified_by): (Listener, Option<IdentifiedBy>),
        status: u16,
        elapsed: Duration,
    ) {
        static NONE: OnceLock<Arc<str>> = OnceLock::new();
        static ANONYMOUS: OnceLock<Arc<str>> = OnceLock::new();
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let route = name_or(route, &NONE, "none");
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                client: name_or(client, &ANONYMOUS, "anonymous"),
                status: class,
                listener: listener.as_str(),
                identified_by: identified_by.map_or("none", IdentifiedBy::as_str),
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabel { route })
            .observe(elapsed.as_secs_f64());
    }

    /// A request a report-mode deny `route` matched and let through.
    pub fn would_deny(&self, route: &Arc<str>) {
        self.would_deny
            .get_or_create(&RouteLabel {
                route: Name(route.clone()),
            })
            .inc();
    }

    /// A gauge guard: +1 now, -1 when dropped.
    pub fn connection(&'static self) -> GaugeGuard {
        GaugeGuard::new(&self.connections)
    }

    /// A gauge guard for an open tunnel.
    pub fn tunnel(&'static self) -> GaugeGuard {
        GaugeGuard::new(&self.tunnels)
    }

    /// A leaf certificate was minted; `cached` hosts now have one.
    pub fn cert_minted(&self, cached: usize) {
        self.certs_minted.inc();
        self.cert_cache
            .set(i64::try_from(cached).unwrap_or(i64::MAX));
    }

    /// A slot's mint finished: `Ok` or the failure reason.
    pub fn token_mint(&self, slot: &str, result: Result<(), &'static str>) {
        self.mints
            .get_or_create(&MintLabels {
                slot: slot.to_owned(),
                result: result.err().unwrap_or("ok").to_owned(),
            })
            .inc();
    }

    /// An audit write failed.
    pub fn audit_write_error(&self) {
        self.audit_write_errors.inc();
    }

    /// `n` audit records were dropped.
    pub fn audit_dropped(&self, n: u64) {
        self.audit_dropped.inc_by(n);
    }

    /// A slot's mint failed and is scheduled to be tried again.
    pub fn token_refresh_retry(&self, slot: &str) {
        self.refresh_retries
            .get_or_create(&SlotLabel {
                slot: slot.to_owned(),
            })
            .inc();
    }

    /// The source credential fetched a new token.
    pub fn source_refreshed(&self) {
        self.source_refreshes.inc();
    }

    /// One IAM Credentials call took `elapsed`.
    pub fn iam_call(&self, elapsed: Duration) {
        self.iam_latency.observe(elapsed.as_secs_f64());
    }

    /// A reload finished.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// The Prometheus text exposition, after setting the gauges that are
    /// read from state (each slot's seconds to expiry).
    /// What `/readyz` answers now, for the `ready` gauge.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub fn render(&self, slots: impl Iterator<Item = (String, f64)>) -> String {
        for (slot, secs) in slots {
            self.expires_in.get_or_create(&SlotLabel { slot }).set(secs);
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Decrements its gauge when dropped.
pub(crate) struct GaugeGuard(&'static Gauge<i64, AtomicI64>);

impl GaugeGuard {
    fn new(g: &'static Gauge<i64, AtomicI64>) -> GaugeGuard {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
