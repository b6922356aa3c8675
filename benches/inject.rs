//! The per-request hot path: route lookup (`RouteTable::find`) plus token
//! injection (`inject::apply`) against its floor, one hash-map get and one
//! `HeaderMap::insert` on the same request headers. The match is the last
//! rule of a table of 1, 100 or 1,000 rules; `bucket_1000` the same with
//! that rule downscoping per bucket (`{bucket}`, the bucket's slot warm);
//! `miss` is a host no rule matches. After criterion's report, the cases run again interleaved in
//! rounds and the medians are printed as ratios to the baseline.
//!
//! `cargo bench --bench inject -- --warm-up-time 1 --measurement-time 3`

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use impersonate_proxy::policy::inject::{self, Outcome};
use impersonate_proxy::policy::routes::RouteTable;

#[path = "support/hot_path.rs"]
mod hot_path;

use hot_path::{Fixture, HOST, METHOD, MISS_HOST, PATH};

/// One injection: what the proxy does per request once the slot is warm.
#[inline]
fn inject(table: &RouteTable, host: &str, headers: &mut HeaderMap) -> bool {
    match table.find(host, &METHOD, PATH) {
        Some(route) => matches!(inject::apply(&route.action, headers), Outcome::Forward),
        None => false,
    }
}

/// One injection through a `{bucket}` route whose bucket's slot is warm.
#[inline]
fn inject_bucket(table: &RouteTable, host: &str, headers: &mut HeaderMap) -> bool {
    let mut boundary = None;
    match table.find(host, &METHOD, PATH) {
        Some(route) => matches!(
            inject::apply_at(&route.action, headers, host, PATH, &mut boundary),
            Outcome::Forward
        ),
        None => false,
    }
}

/// The floor: the token looked up by host in a std `HashMap` and inserted.
#[inline]
fn baseline(map: &HashMap<&str, HeaderValue>, host: &str, headers: &mut HeaderMap) -> bool {
    match map.get(host) {
        Some(v) => {
            headers.insert(AUTHORIZATION, v.clone());
            true
        }
        None => false,
    }
}

struct Cases {
    map: HashMap<&'static str, HeaderValue>,
    tables: Vec<(&'static str, Fixture)>,
    /// 1,000 rules, the last a `{bucket}` route.
    bucket: Fixture,
}

impl Cases {
    fn new() -> Cases {
        let tables: Vec<(&'static str, Fixture)> =
            [("route_1", 1), ("route_100", 100), ("route_1000", 1000)]
                .into_iter()
                .map(|(name, n)| (name, Fixture::new(n, false)))
                .collect();
        // As many hosts as the largest table names, so the map is not a
        // one-entry toy.
        let token = tables[0].1.token.clone();
        let hosts: Vec<&'static str> = (0..200)
            .map(|i| &*String::leak(format!("api-{}.googleapis.com", i * 5)))
            .chain([HOST, "pubsub.googleapis.com"])
            .collect();
        let map = hosts.into_iter().map(|h| (h, token.clone())).collect();
        Cases {
            map,
            tables,
            bucket: Fixture::per_bucket(1000),
        }
    }

    /// Runs case `name` `iters` times on `headers`.
    fn run(&self, name: &str, iters: u64, headers: &mut HeaderMap) {
        match name {
            "baseline" => {
                for _ in 0..iters {
                    black_box(baseline(&self.map, black_box(HOST), headers));
                }
            }
            "bucket_1000" => {
                let table = &self.bucket.table;
                for _ in 0..iters {
                    black_box(inject_bucket(table, black_box(HOST), headers));
                }
            }
            "miss" => {
                let table = &self.tables[2].1.table;
                for _ in 0..iters {
                    black_box(inject(table, black_box(MISS_HOST), headers));
                }
            }
            _ => {
                let table = &self.table(name).table;
                for _ in 0..iters {
                    black_box(inject(table, black_box(HOST), headers));
                }
            }
        }
    }

    fn table(&self, name: &str) -> &Fixture {
        &self
            .tables
            .iter()
            .find(|(n, _)| *n == name)
            .expect("known case")
            .1
    }
}

const CASES: [&str; 6] = [
    "baseline",
    "route_1",
    "route_100",
    "route_1000",
    "bucket_1000",
    "miss",
];

fn criterion_cases(c: &mut Criterion, cases: &Cases) {
    let mut g = c.benchmark_group("inject");
    for name in CASES {
        // Reused across iterations: every insert replaces, so each
        // iteration does the same work.
        let mut headers = hot_path::request_headers();
        cases.run(name, 1, &mut headers);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                cases.run(name, iters, &mut headers);
                start.elapsed()
            })
        });
    }
    g.finish();
}

/// Interleaved rounds, so a noisy neighbour hits every case alike; prints
/// the median ns/iter of each case and its ratio to the baseline.
fn ratios(cases: &Cases) {
    const ROUNDS: usize = 15;
    const ITERS: u64 = 100_000;
    let mut samples = vec![Vec::with_capacity(ROUNDS); CASES.len()];
    let mut headers: Vec<HeaderMap> = CASES.iter().map(|_| hot_path::request_headers()).collect();
    for _ in 0..ROUNDS {
        for (i, name) in CASES.iter().enumerate() {
            let start = Instant::now();
            cases.run(name, ITERS, &mut headers[i]);
            samples[i].push(start.elapsed().as_secs_f64() * 1e9 / ITERS as f64);
        }
    }
    let median = |s: &mut Vec<f64>| {
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let medians: Vec<f64> = samples.iter_mut().map(median).collect();
    let base = medians[0];
    println!("\ninject: medians of {ROUNDS} interleaved rounds of {ITERS} iterations");
    println!("| case | ns/iter | ratio to baseline |\n| --- | ---: | ---: |");
    for (name, ns) in CASES.iter().zip(&medians) {
        println!("| {name} | {ns:.1} | {:.2} |", ns / base);
    }
}

fn main() {
    let cases = Cases::new();
    let mut c = Criterion::default().configure_from_args();
    criterion_cases(&mut c, &cases);
    c.final_summary();
    let args: Vec<String> = std::env::args().collect();
    let quick_mode = ["--profile-time", "--test", "--list"]
        .iter()
        .any(|flag| args.iter().any(|a| a == flag));
    if !quick_mode {
        ratios(&cases);
    }
}
