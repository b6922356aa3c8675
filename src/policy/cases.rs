//! Policy tests (`check --tests FILE`): a table of `[[case]]`s, each a
//! request and the decision expected for it, run through
//! [`explain`](crate::policy::explain::explain) — the request path's own
//! normalisation and route table — and compared field by field.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;

use crate::config::Config;
use crate::policy::explain::{explain, Decision, Facts, Who};
use crate::policy::routes::{RouteTable, RuleSpec};

/// A tests file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasesFile {
    /// The cases, in order.
    #[serde(default, rename = "case")]
    pub cases: Vec<Case>,
}

/// One `[[case]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Shown in the report (default: the request).
    #[serde(default)]
    pub name: Option<String>,
    /// `"METHOD URL"`.
    pub request: String,
    /// A `[[client]]` name.
    #[serde(default)]
    pub client: Option<String>,
    /// A client address, identified by `cidrs`.
    #[serde(default)]
    pub from: Option<std::net::IpAddr>,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The decision expected; only the keys given are compared.
    pub expect: Expect,
}

/// What a case expects.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The deciding route (`"none"`: no route matched).
    pub route: Option<String>,
    /// `deny`, `impersonate`, `id_token`, `passthrough` (or `none`,
    /// `proxy_auth` when refused before a route decided).
    pub action: Option<String>,
    /// The target service account.
    pub impersonate: Option<String>,
    /// The delegate chain.
    pub delegates: Option<Vec<String>>,
    /// Scopes of an access token.
    pub scopes: Option<Vec<String>>,
    /// Lifetime of an access token, e.g. `"3600s"`.
    pub lifetime: Option<String>,
    /// Audience of an ID token.
    pub audience: Option<String>,
    /// The status the proxy answers itself with (400, 403, 407, 421);
    /// `0` for "forwarded".
    pub status: Option<u16>,
    /// The `[[client]]` the request is identified as (`"none"`).
    pub client: Option<String>,
    /// The report-mode denies (`enforce = false`) passed over, in order.
    pub would_deny: Option<Vec<String>>,
    /// The resources of the access boundary the token is downscoped to
    /// (`"none"`: not downscoped).
    pub boundary: Option<String>,
}

/// A tests file that cannot be run: the message names the case and key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CasesError(String);

/// Parses a tests file.
pub fn parse(text: &str) -> Result<CasesFile, CasesError> {
    let file: CasesFile = toml::from_str(text).map_err(|e| CasesError(e.to_string()))?;
    for (i, c) in file.cases.iter().enumerate() {
        if c.client.is_some() && c.from.is_some() {
            return Err(CasesError(format!(
                "case[{i}]: set `client` or `from`, not both"
            )));
        }
        if c.request.split_once(' ').is_none() {
            return Err(CasesError(format!(
                "case[{i}].request: `{}` must be \"METHOD URL\"",
                c.request
            )));
        }
    }
    Ok(file)
}

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseResult {
    /// `case N "name": METHOD URL`.
    pub title: String,
    /// One line per differing field (empty: passed).
    pub diffs: Vec<String>,
}

/// Runs every case; `Err` for a case whose facts describe no request
/// (a bad URL, an unknown client name).
pub fn run(
    cfg: &Config,
    rules: &[RuleSpec],
    table: &RouteTable,
    file: &CasesFile,
) -> Result<Vec<CaseResult>, CasesError> {
    let mut out = Vec::with_capacity(file.cases.len());
    for (i, c) in file.cases.iter().enumerate() {
        let (method, url) = c.request.split_once(' ').expect("checked by parse");
        let who = match (&c.client, c.from) {
            (Some(n), _) => Who::Client(n.clone()),
            (None, Some(ip)) => Who::Addr(ip),
            (None, None) => Who::Anonymous,
        };
        let facts = Facts {
            method: method.trim().to_owned(),
            url: url.trim().to_owned(),
            who,
            headers: c
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let d = explain(cfg, rules, table, &facts)
            .map_err(|e| CasesError(format!("case[{i}]: {e}")))?;
        let mut title = format!("case {}", i + 1);
        if let Some(n) = &c.name {
            let _ = write!(title, " \"{n}\"");
        }
        let _ = write!(title, ": {}", c.request);
        out.push(CaseResult {
            title,
            diffs: compare(&c.expect, &d),
        });
    }
    Ok(out)
}

fn compare(e: &Expect, d: &Decision) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut field = |name: &str, want: &Option<String>, got: String| {
        if let Some(w) = want {
            if *w != got {
                diffs.push(format!("{name:<11} expected {w:?}, got {got:?}"));
            }
        }
    };
    let none = || "none".to_owned();
    let slot = d.slot.as_ref();
    field("route", &e.route, d.route.clone().unwrap_or_else(none));
    field("action", &e.action, d.action.to_owned());
    field(
        "impersonate",
        &e.impersonate,
        slot.map_or_else(none, |s| s.target.clone()),
    );
    field(
        "lifetime",
        &e.lifetime,
        slot.and_then(|s| s.lifetime)
            .map_or_else(none, |l| format!("{l}s")),
    );
    field(
        "audience",
        &e.audience,
        slot.and_then(|s| s.audience.clone()).unwrap_or_else(none),
    );
    field("client", &e.client, d.client.clone().unwrap_or_else(none));
    field(
        "boundary",
        &e.boundary,
        slot.and_then(|s| s.boundary.clone()).unwrap_or_else(none),
    );
    let status = d.status.unwrap_or(0);
    if e.status.is_some_and(|s| s != status) {
        let got = match (d.status, &d.message) {
            (Some(s), Some(m)) => format!("{s} ({m})"),
            _ => "forwarded (no status of the proxy's own)".to_owned(),
        };
        diffs.push(format!(
            "{:<11} expected {}, got {got}",
            "status",
            e.status.unwrap_or_default()
        ));
    }
    let mut list = |name: &str, want: &Option<Vec<String>>, got: Vec<String>| {
        if let Some(w) = want {
            if *w != got {
                diffs.push(format!("{name:<11} expected {w:?}, got {got:?}"));
            }
        }
    };
    list(
        "delegates",
        &e.delegates,
        slot.map(|s| s.delegates.clone()).unwrap_or_default(),
    );
    list(
        "scopes",
        &e.scopes,
        slot.map(|s| s.scopes.clone()).unwrap_or_default(),
    );
    list("would_deny", &e.would_deny, d.would_deny.clone());
    diffs
}
