//! The compiled rule table: (host, method, path, client) → the first
//! matching route and its action. Matching is by map, not by scan: exact
//! names in one map (each also holding the `*.suffix` rules that cover
//! it), `*.suffix` patterns in another keyed by suffix, and under each the
//! path-prefix rules keyed by prefix, so a table of 1,000 rules costs a
//! few lookups, not 1,000 comparisons.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use http::{HeaderValue, Method};

use crate::config::{AuditSampling, AuthorizationPolicy};
use crate::google::slot::Slot;
use crate::google::{TokenKind, TokenRequest};
use crate::net::HostPattern;
use crate::ops::audit::AuditAction;
use crate::policy::boundary::{BoundaryTemplate, BucketSlots, Downscope};
use crate::policy::sign::SignAs;
use crate::policy::SlotSource;

/// What a matched route does with a request.
#[derive(Debug)]
#[non_exhaustive]
pub enum Action {
    /// Attach a token from the slot.
    Inject {
        /// Where the token comes from.
        slot: Slot,
        /// What happens to a client's own `Authorization`.
        authorization: AuthorizationPolicy,
        /// `x-goog-user-project`, if the route sets one.
        quota_project: Option<HeaderValue>,
        /// `access_boundary`: how the token is limited (fixed: `slot` is
        /// the downscoped one; per bucket: `slot` is the base).
        downscope: Option<Box<Downscope>>,
    },
    /// Forward a `signBlob` / `signJwt` with the source credential and
    /// the route's delegates.
    SignAs(Arc<SignAs>),
    /// Forward untouched.
    Passthrough,
    /// Refuse with 403.
    Deny,
}

impl Action {
    /// What the audit record says the route did.
    pub fn audit(&self) -> AuditAction {
        match self {
            Action::Inject { slot, .. }
                if matches!(slot.request().kind(), TokenKind::Id { .. }) =>
            {
                AuditAction::IdToken
            }
            Action::Inject { .. } => AuditAction::Impersonate,
            Action::SignAs(_) => AuditAction::SignAs,
            Action::Passthrough => AuditAction::Passthrough,
            Action::Deny => AuditAction::Deny,
        }
    }

    /// A short word for audit records and `check`.
    pub fn kind(&self) -> &'static str {
        self.audit().as_str()
    }
}

/// One compiled rule.
#[derive(Debug)]
pub struct Route {
    /// The rule's name.
    pub name: Arc<str>,
    methods: Vec<Method>,
    /// `[[client]]` indices allowed; empty means any client.
    clients: Vec<u32>,
    /// What it does.
    pub action: Action,
    /// Its token is minted at start and `/readyz` waits for it.
    pub warm: bool,
    /// `false`: a report-mode deny, which [`RouteTable::find_reporting`]
    /// reports and passes over.
    pub enforce: bool,
    /// Which of its requests get an audit record (`audit = …`).
    pub audit: AuditSampling,
    /// Its position in the table.
    index: u32,
}

impl Route {
    #[inline]
    fn allows(&self, method: &Method, path: &str, client: Option<u32>) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && (self.clients.is_empty() || client.is_some_and(|c| self.clients.contains(&c)))
            && match &self.action {
                Action::SignAs(s) => s.method_of(path).is_some(),
                _ => true,
            }
    }
}

/// Whether `path[..k]` can equal a matching `path_prefix`. A prefix
/// matches whole segments (`/storage/v1/b` matches `/storage/v1/b` and
/// `/storage/v1/b/x`, not `/storage/v1/bx`; one ending in `/` matches
/// whatever follows it), so `k` is the whole path, or sits just before or
/// just after a `/`.
#[inline]
fn is_cut(path: &[u8], k: usize) -> bool {
    k != 0 && (k == path.len() || path[k] == b'/' || path[k - 1] == b'/')
}

/// A fast, non-keyed hash for the host maps. The keys come from the
/// config; a client only chooses what is looked up, which cannot make the
/// fixed table's buckets collide more, so SipHash's DoS resistance buys
/// nothing here.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

const FX_K: u64 = 0xf135_7aea_2e62_a9c5;

impl std::hash::Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(FX_K);
        }
        let rest = chunks.remainder();
        // One round for the tail, not one per byte (host names and path
        // prefixes are rarely a multiple of 8 long), and fixed-size reads,
        // not a `memcpy` call. (`str` hashing appends 0xff after the bytes,
        // so an overlapping or zero-padded tail cannot make equal hashes
        // for different strings any likelier.)
        let tail = if rest.is_empty() {
            None
        } else if bytes.len() >= 8 {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[bytes.len() - 8..]);
            Some(u64::from_le_bytes(w))
        } else {
            let (mut w, mut i) = (0u64, 0usize);
            if rest.len() >= 4 {
                let mut a = [0u8; 4];
                a.copy_from_slice(&rest[..4]);
                w = u64::from(u32::from_le_bytes(a));
                i = 4;
            }
            if rest.len() - i >= 2 {
                let mut a = [0u8; 2];
                a.copy_from_slice(&rest[i..i + 2]);
                w |= u64::from(u16::from_le_bytes(a)) << (8 * i);
                i += 2;
            }
            if rest.len() > i {
                w |= u64::from(rest[i]) << (8 * i);
            }
            Some(w)
        };
        if let Some(w) = tail {
            h = (h.rotate_left(5) ^ w).wrapping_mul(FX_K);
        }
        self.0 = h;
    }

    #[inline]
    fn write_u8(&mut self, b: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(FX_K);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxBuild = BuildHasherDefault<FxHasher>;

/// The routes naming one host key, split so that a lookup never scans the
/// rules whose path prefix cannot match: those are found by hashing the
/// few prefixes of the request path that could equal one.
#[derive(Default)]
struct Candidates {
    /// Routes without a path prefix, ascending.
    any_path: Vec<u32>,
    /// `path_prefix` → routes with it, ascending.
    by_prefix: HashMap<Box<str>, Vec<u32>, FxBuild>,
    /// Bit k set: some prefix not ending in `/` is k bytes long (k < 64).
    seg_lens: u64,
    /// Bit k set: some prefix ending in `/` is k bytes long (k < 64).
    dir_lens: u64,
    /// Some prefix is 64 bytes or longer.
    long_prefix: bool,
    /// Some route here restricts `path_prefix` or `methods`: a batch
    /// request (whose inner requests the proxy does not see) then matches
    /// only routes whose prefix names `/batch`.
    restricted: bool,
}

impl Candidates {
    fn push(&mut self, idx: u32, path_prefix: Option<&str>, restricts_methods: bool) {
        self.restricted |= path_prefix.is_some() || restricts_methods;
        match path_prefix {
            None => self.any_path.push(idx),
            Some(p) => {
                match p.len() {
                    k @ 0..64 if p.ends_with('/') => self.dir_lens |= 1 << k,
                    k @ 0..64 => self.seg_lens |= 1 << k,
                    _ => self.long_prefix = true,
                }
                self.by_prefix.entry(p.into()).or_default().push(idx);
            }
        }
    }

    /// Adds `other`'s routes (lists are sorted again by [`Self::finish`]).
    fn merge(&mut self, other: &Candidates) {
        self.any_path.extend_from_slice(&other.any_path);
        for (p, list) in &other.by_prefix {
            self.by_prefix
                .entry(p.clone())
                .or_default()
                .extend_from_slice(list);
        }
        self.seg_lens |= other.seg_lens;
        self.dir_lens |= other.dir_lens;
        self.long_prefix |= other.long_prefix;
        self.restricted |= other.restricted;
    }

    /// Sorts every list ascending (the scan stops at the first match).
    fn finish(&mut self) {
        for v in std::iter::once(&mut self.any_path).chain(self.by_prefix.values_mut()) {
            v.sort_unstable();
            v.dedup();
        }
    }
}

type HostMap = HashMap<Box<str>, Candidates, FxBuild>;

/// The rule table, built once per config (and again on reload).
pub struct RouteTable {
    routes: Vec<Route>,
    /// Exact host → the routes naming it or a `*.suffix` covering it.
    exact: HostMap,
    /// `.suffix` → the routes with `*.suffix`.
    suffix: HostMap,
    /// Bit n set: some suffix pattern has n labels (skip other lookups).
    suffix_labels: u64,
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.routes.iter().map(|r| &r.name))
            .finish()
    }
}

/// A validated rule, before slots exist: what `check` prints and what the
/// table is built from.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    /// The route's name.
    pub name: String,
    /// Its host patterns.
    pub hosts: Vec<HostPattern>,
    /// Its path prefix, if any.
    pub path_prefix: Option<String>,
    /// Its methods (empty = any).
    pub methods: Vec<Method>,
    /// Its `[[client]]` names (empty = any).
    pub clients: Vec<String>,
    /// The same clients as indices into `[[client]]`.
    pub client_indices: Vec<u32>,
    /// What it does.
    pub action: ActionSpec,
    /// `false`: report mode (a deny that is audited, then passed over).
    pub enforce: bool,
    /// Which of its requests are audited.
    pub audit: AuditSampling,
}

/// The action of a [`RuleSpec`].
#[derive(Debug, Clone)]
pub enum ActionSpec {
    /// Mint and attach this token.
    Inject {
        /// The token to attach.
        request: TokenRequest,
        /// The client's own `Authorization`: replaced or kept.
        authorization: AuthorizationPolicy,
        /// `x-goog-user-project`.
        quota_project: Option<String>,
        /// Mint at start.
        warm: bool,
        /// `access_boundary`: the token is downscoped at STS.
        boundary: Option<BoundaryTemplate>,
    },
    /// `signBlob` / `signJwt` as `account` with the source credential.
    SignAs {
        /// The account whose key signs (email).
        account: String,
        /// Written into the request body (emails).
        delegates: Vec<String>,
        /// Token-endpoint assertions are signed too.
        allow_token_assertions: bool,
    },
    /// Forward untouched.
    Passthrough,
    /// Refuse with 403.
    Deny,
}

impl fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self.hosts.iter().map(|h| h.to_string()).collect();
        write!(f, "{:<20} hosts={}", self.name, hosts.join(","))?;
        if let Some(p) = &self.path_prefix {
            write!(f, " path_prefix={p}")?;
        }
        if !self.methods.is_empty() {
            let m: Vec<&str> = self.methods.iter().map(|m| m.as_str()).collect();
            write!(f, " methods={}", m.join(","))?;
        }
        if !self.clients.is_empty() {
            write!(f, " clients={}", self.clients.join(","))?;
        }
        match &self.action {
            ActionSpec::Inject {
                request,
                authorization,
                quota_project,
                warm,
                boundary,
            } => {
                write!(f, " → {request}")?;
                if let Some(b) = boundary {
                    write!(f, " {b}")?;
                }
                if *authorization == AuthorizationPolicy::Keep {
                    write!(f, " (keeps a client Authorization)")?;
                }
                if let Some(q) = quota_project {
                    write!(f, " quota_project={q}")?;
                }
                if *warm {
                    write!(f, " warm")?;
                }
                Ok(())
            }
            ActionSpec::SignAs {
                account,
                delegates,
                allow_token_assertions,
            } => {
                write!(
                    f,
                    " → sign_as {account} (signBlob, signJwt; source credential)"
                )?;
                if !delegates.is_empty() {
                    write!(f, " via {}", delegates.join(" → "))?;
                }
                if *allow_token_assertions {
                    write!(f, " allow_token_assertions")?;
                }
                Ok(())
            }
            ActionSpec::Passthrough => write!(f, " → passthrough"),
            ActionSpec::Deny if !self.enforce => {
                write!(f, " → deny (report mode: enforce = false)")
            }
            ActionSpec::Deny => write!(f, " → deny"),
        }
    }
}

impl RouteTable {
    /// Builds the table; each injecting route gets its slot from `slots`
    /// (routes asking for the same token share one).
    pub fn build(specs: &[RuleSpec], slots: &dyn SlotSource) -> RouteTable {
        let mut routes = Vec::with_capacity(specs.len());
        let mut exact = HostMap::default();
        let mut suffix = HostMap::default();
        let mut suffix_labels = 0u64;
        for (i, spec) in specs.iter().enumerate() {
            let idx = u32::try_from(i).expect("fewer than 2^32 routes");
            for h in &spec.hosts {
                match h {
                    HostPattern::Exact(name) => exact
                        .entry(name.as_str().into())
                        .or_default()
                        .push(idx, spec.path_prefix.as_deref(), !spec.methods.is_empty()),
                    HostPattern::Suffix(sfx) => {
                        let labels = sfx.matches('.').count().min(63);
                        suffix_labels |= 1 << labels;
                        suffix.entry(sfx.as_str().into()).or_default().push(
                            idx,
                            spec.path_prefix.as_deref(),
                            !spec.methods.is_empty(),
                        );
                    }
                }
            }
            let warm = matches!(spec.action, ActionSpec::Inject { warm: true, .. });
            let action = match &spec.action {
                ActionSpec::Inject {
                    request,
                    authorization,
                    quota_project,
                    warm,
                    boundary,
                } => {
                    let (slot, downscope) = match boundary {
                        None => (slots.slot(request.clone(), *warm), None),
                        Some(b) if b.per_bucket() => {
                            let base = slots.slot(request.clone(), *warm);
                            let table =
                                BucketSlots::new(b.clone(), base.clone(), slots.downscoper());
                            (base, Some(Box::new(Downscope::PerBucket(table))))
                        }
                        Some(b) => {
                            let base = slots.slot(request.clone(), false);
                            // A fixed boundary has no `{bucket}`: the
                            // bucket argument is never used.
                            let boundary = Arc::new(b.render(""));
                            let slot = slots.downscoper().slot(&base, boundary.clone(), true);
                            if *warm {
                                slot.start();
                            }
                            let resource = boundary.resources().into();
                            (
                                slot,
                                Some(Box::new(Downscope::Fixed { boundary, resource })),
                            )
                        }
                    };
                    Action::Inject {
                        slot,
                        authorization: *authorization,
                        quota_project: quota_project
                            .as_deref()
                            .and_then(|q| HeaderValue::from_str(q).ok()),
                        downscope,
                    }
                }
                ActionSpec::SignAs {
                    account,
                    delegates,
                    allow_token_assertions,
                } => Action::SignAs(Arc::new(SignAs::new(
                    slots.slot(TokenRequest::source_credential(), false),
                    account,
                    delegates,
                    *allow_token_assertions,
                ))),
                ActionSpec::Passthrough => Action::Passthrough,
                ActionSpec::Deny => Action::Deny,
            };
            routes.push(Route {
                name: spec.name.as_str().into(),
                methods: spec.methods.clone(),
                clients: spec.client_indices.clone(),
                action,
                warm,
                enforce: spec.enforce,
                audit: spec.audit,
                index: idx,
            });
        }
        // A named host also matches the `*.suffix` patterns that cover
        // it; folding those in here makes a named host one lookup.
        for (host, c) in exact.iter_mut() {
            // (A named host is a DNS name: it has no dot at 0.)
            for (pos, _) in host.match_indices('.') {
                if let Some(s) = suffix.get(&host[pos..]) {
                    c.merge(s);
                }
            }
        }
        for c in exact.values_mut().chain(suffix.values_mut()) {
            c.finish();
        }
        RouteTable {
            routes,
            exact,
            suffix,
            suffix_labels,
        }
    }

    /// Every route, in order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// [`RouteTable::find_for`] an anonymous client (no `[[client]]`).
    #[inline]
    pub fn find(&self, host: &str, method: &Method, path: &str) -> Option<&Route> {
        self.find_for(host, method, path, None)
    }

    /// The first route matching `host` (normalized), `method` (the
    /// effective one), `path` (normalised, without query) and `client` (a
    /// `[[client]]` index), passing over report-mode denies
    /// (`enforce = false`): [`RouteTable::find_reporting`] without the
    /// report. No allocation, no lock, and no scan of the rules whose host
    /// or path prefix cannot match.
    ///
    /// A batch request (`/batch`, `/batch/...`) carries inner requests
    /// with their own paths and methods: when some route for the host
    /// restricts `path_prefix` or `methods`, only a route whose prefix
    /// names `/batch` can match it, so a batch cannot smuggle past them.
    #[inline]
    pub fn find_for(
        &self,
        host: &str,
        method: &Method,
        path: &str,
        client: Option<u32>,
    ) -> Option<&Route> {
        self.find_reporting(host, method, path, client, |_| {})
    }

    /// [`RouteTable::find_for`], calling `report` with each report-mode
    /// deny (`enforce = false`) that matched before the route returned, in
    /// order. Without such routes in the table this is one lookup; each
    /// one matched costs one more, starting after it. No allocation.
    #[inline]
    pub fn find_reporting(
        &self,
        host: &str,
        method: &Method,
        path: &str,
        client: Option<u32>,
        mut report: impl FnMut(&Route),
    ) -> Option<&Route> {
        let mut from = 0;
        loop {
            match self.find_from(host, method, path, client, from) {
                Some(r) if !r.enforce => {
                    report(r);
                    from = r.index + 1;
                }
                found => return found,
            }
        }
    }

    /// The first matching route at index `from` or later.
    #[inline]
    fn find_from(
        &self,
        host: &str,
        method: &Method,
        path: &str,
        client: Option<u32>,
        from: u32,
    ) -> Option<&Route> {
        let batch = crate::policy::normalize::is_batch(path);
        let mut best = u32::MAX;
        if let Some(c) = self.exact.get(host) {
            // Holds the `*.suffix` routes covering `host` too.
            let q = Query {
                method,
                path,
                client,
                batch_only: batch && c.restricted,
                from,
            };
            best = self.first_in(c, best, &q);
        } else if self.suffix_labels != 0 {
            let batch_only = batch && {
                let mut restricted = false;
                self.each_suffix(host, |c| restricted |= c.restricted);
                restricted
            };
            let q = Query {
                method,
                path,
                client,
                batch_only,
                from,
            };
            self.each_suffix(host, |c| best = self.first_in(c, best, &q));
        }
        self.routes.get(best as usize)
    }

    /// Calls `f` with the candidates of every `*.suffix` pattern covering
    /// `host`: every proper suffix starting at a dot, right to left (".c",
    /// ".b.c" of "a.b.c"), looked up only for label counts some pattern has
    /// (bit 63 stands for 63 labels or more). The scan goes on to the
    /// host's first byte: stopping past the longest pattern saved a few
    /// byte comparisons, and only on hosts with more labels than every
    /// pattern.
    #[inline]
    fn each_suffix(&self, host: &str, mut f: impl FnMut(&Candidates)) {
        let mut labels = 0usize;
        // A plain loop: `rfind` costs more per call than a host name has
        // bytes.
        for (pos, &b) in host.as_bytes().iter().enumerate().rev() {
            if b != b'.' {
                continue;
            }
            labels += 1;
            if self.suffix_labels & (1 << labels.min(63)) != 0 {
                if let Some(c) = self.suffix.get(&host[pos..]) {
                    f(c);
                }
            }
        }
    }

    /// The lowest route index below `best` among `c` that allows the
    /// query's method and client and whose path prefix (if any) matches
    /// its path; else `best`.
    #[inline]
    fn first_in(&self, c: &Candidates, mut best: u32, q: &Query<'_>) -> u32 {
        if !q.batch_only {
            best = self.first_allowing(&c.any_path, best, q);
        }
        let bytes = q.path.as_bytes();
        // Only the lengths some prefix has, and only where a prefix could
        // end: usually one or two probes, however many prefixes there are.
        let upto = match bytes.len() {
            n @ 0..63 => (1 << (n + 1)) - 1,
            _ => u64::MAX,
        };
        let mut lens = (c.seg_lens | c.dir_lens) & upto;
        while lens != 0 {
            let k = lens.trailing_zeros() as usize;
            lens &= lens - 1;
            // A prefix without a trailing `/` ends the path or a segment;
            // one with it ends right after a `/`. (Bit 0 is never set.)
            let seg = c.seg_lens >> k & 1 != 0 && (k == bytes.len() || bytes[k] == b'/');
            let dir = c.dir_lens >> k & 1 != 0 && bytes[k - 1] == b'/';
            if seg || dir {
                best = self.probe(c, best, q, k);
            }
        }
        if c.long_prefix {
            for k in (64..=bytes.len()).filter(|&k| is_cut(bytes, k)) {
                best = self.probe(c, best, q, k);
            }
        }
        best
    }

    #[inline]
    fn probe(&self, c: &Candidates, best: u32, q: &Query<'_>, k: usize) -> u32 {
        let prefix = &q.path[..k];
        // A batch request under a restricted host: only prefixes that
        // name `/batch` (the request is under it, so the prefix is
        // `/batch` or longer, or `/batch/`).
        if q.batch_only && !prefix.starts_with("/batch") {
            return best;
        }
        match c.by_prefix.get(prefix) {
            Some(list) => self.first_allowing(list, best, q),
            None => best,
        }
    }

    #[inline]
    fn first_allowing(&self, list: &[u32], best: u32, q: &Query<'_>) -> u32 {
        for &i in list {
            if i >= best {
                break;
            }
            if i >= q.from && self.routes[i as usize].allows(q.method, q.path, q.client) {
                return i;
            }
        }
        best
    }
}

/// One lookup's request facts.
struct Query<'a> {
    method: &'a Method,
    path: &'a str,
    client: Option<u32>,
    /// Only routes whose prefix names `/batch` may match.
    batch_only: bool,
    /// Only routes at this index or later (after a report-mode deny).
    from: u32,
}

#[cfg(test)]
mod tests;
