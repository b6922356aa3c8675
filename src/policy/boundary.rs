//! Credential Access Boundaries per route (`access_boundary`): the config
//! checks, the `{bucket}` template and the bucket a request addresses, and
//! the per-bucket slot table read on the request path.
//!
//! Why a table of its own: a `{bucket}` route needs one downscoped token
//! per bucket a client names, which the config cannot list. The table maps
//! a bucket name to its slot behind an `ArcSwap`, so a request for a bucket
//! seen before costs a hash of the name and three reference-count bumps,
//! no lock and no allocation (`tests/alloc.rs`; about twice a plain
//! route's time, `benches/README.md`). A new
//! bucket copies the table once under a mutex (at most [`BUCKET_SLOTS`]
//! entries) and starts one STS exchange; the least recently used bucket is
//! dropped (and its refresher stopped) when the table is full, so a client
//! naming endless buckets costs one STS call per new name, never memory.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::{BoundaryRuleConfig, ConfigError};
use crate::google::slot::Slot;
use crate::google::sts::{AccessBoundary, BoundaryRule, Condition};
use crate::net::HostPattern;

/// The most rules a boundary may have (Google's limit).
pub const MAX_RULES: usize = 10;
/// The longest `condition`, in characters (Google's limit).
pub const MAX_CONDITION: usize = 2048;
/// Buckets a `{bucket}` route keeps a downscoped token for at once; the
/// least recently used goes first.
pub const BUCKET_SLOTS: usize = 1024;
/// The placeholder for the bucket a request addresses.
pub const BUCKET: &str = "{bucket}";

const STORAGE: &str = "storage.googleapis.com";
const STORAGE_SUFFIX: &str = ".storage.googleapis.com";
const RESOURCE_PREFIX: &str = "//storage.googleapis.com/projects/_/buckets/";
/// The longest bucket name (with dots), for the condition length check.
const MAX_BUCKET: usize = 222;

/// A route's boundary as configured: fixed, or rendered per request's
/// bucket where a rule says `{bucket}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundaryTemplate {
    rules: Vec<BoundaryRuleConfig>,
    per_bucket: bool,
}

impl BoundaryTemplate {
    /// Whether some rule says `{bucket}`.
    pub fn per_bucket(&self) -> bool {
        self.per_bucket
    }

    /// The boundary for `bucket` (a name [`is_bucket_name`] accepted; only
    /// used where a rule says `{bucket}`).
    pub fn render(&self, bucket: &str) -> AccessBoundary {
        let fill = |s: &str| s.replace(BUCKET, bucket);
        AccessBoundary {
            access_boundary_rules: self
                .rules
                .iter()
                .map(|r| BoundaryRule {
                    available_resource: fill(&r.resource),
                    available_permissions: r.permissions.clone(),
                    availability_condition: r.condition.as_deref().map(|c| Condition {
                        expression: fill(c),
                        title: None,
                        description: None,
                    }),
                })
                .collect(),
        }
    }
}

impl fmt::Display for BoundaryTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r: Vec<&str> = self.rules.iter().map(|r| r.resource.as_str()).collect();
        write!(f, "access_boundary={}", r.join(","))
    }
}

/// Checks a route's `access_boundary` (`key` names the route's keys).
pub(crate) fn check(
    rules: &[BoundaryRuleConfig],
    hosts: &[HostPattern],
    key: &dyn Fn(&str) -> String,
) -> Result<BoundaryTemplate, ConfigError> {
    for (j, h) in hosts.iter().enumerate() {
        let storage = match h {
            HostPattern::Exact(n) => n.as_str() == STORAGE || n.ends_with(STORAGE_SUFFIX),
            HostPattern::Suffix(s) => s.as_str() == STORAGE_SUFFIX || s.ends_with(STORAGE_SUFFIX),
        };
        if !storage {
            return Err(ConfigError::invalid(
                key("access_boundary"),
                format!("hosts[{j}] is `{h}`: only Cloud Storage honours a Credential Access Boundary, so a route with access_boundary names only storage.googleapis.com or *.storage.googleapis.com hosts; move the other hosts to a route of their own"),
            ));
        }
    }
    if rules.is_empty() {
        return Err(ConfigError::invalid(
            key("access_boundary"),
            "is empty; give at least one rule { resource, permissions, condition }, or remove the key",
        ));
    }
    if rules.len() > MAX_RULES {
        return Err(ConfigError::invalid(
            key("access_boundary"),
            format!("has {} rules; STS takes at most {MAX_RULES}: merge rules or split the route by path", rules.len()),
        ));
    }
    let mut per_bucket = false;
    for (i, r) in rules.iter().enumerate() {
        let k = |field: &str| key(&format!("access_boundary[{i}].{field}"));
        let Some(bucket) = r.resource.strip_prefix(RESOURCE_PREFIX) else {
            return Err(ConfigError::invalid(
                k("resource"),
                format!("`{}` is not a Cloud Storage bucket; write \"{RESOURCE_PREFIX}BUCKET\" (or …/buckets/{BUCKET})", r.resource),
            ));
        };
        if !is_bucket_name(&bucket.replace(BUCKET, "bucket")) {
            return Err(ConfigError::invalid(
                k("resource"),
                format!("`{bucket}` is not a bucket name (3-63 lowercase letters, digits, `-`, `_`, `.`) or {BUCKET}"),
            ));
        }
        per_bucket |= bucket.contains(BUCKET);
        if r.permissions.is_empty() {
            return Err(ConfigError::invalid(
                k("permissions"),
                "is empty; name a role, e.g. [\"inRole:roles/storage.objectViewer\"]",
            ));
        }
        for (j, p) in r.permissions.iter().enumerate() {
            if p.contains(BUCKET) {
                return Err(ConfigError::invalid(
                    k(&format!("permissions[{j}]")),
                    format!("`{p}`: {BUCKET} may appear only in resource and condition"),
                ));
            }
            let role = p.strip_prefix("inRole:").unwrap_or_default();
            if !role.starts_with("roles/")
                || role.len() <= "roles/".len()
                || role.contains(char::is_whitespace)
            {
                return Err(ConfigError::invalid(
                    k(&format!("permissions[{j}]")),
                    format!("`{p}` is not in `inRole:` form; write e.g. \"inRole:roles/storage.objectViewer\""),
                ));
            }
        }
        if let Some(c) = &r.condition {
            per_bucket |= c.contains(BUCKET);
            let longest =
                c.chars().count() + c.matches(BUCKET).count() * (MAX_BUCKET - BUCKET.len());
            if longest > MAX_CONDITION || c.trim().is_empty() {
                return Err(ConfigError::invalid(
                    k("condition"),
                    format!("is {} characters{}; a condition is a non-empty CEL expression of at most {MAX_CONDITION}", c.chars().count(),
                        if c.contains(BUCKET) { format!(" ({longest} with {BUCKET} as the longest bucket name)") } else { String::new() }),
                ));
            }
        }
    }
    Ok(BoundaryTemplate {
        rules: rules.to_vec(),
        per_bucket,
    })
}

/// Whether `name` is a Cloud Storage bucket name: 3-63 characters (up to
/// 222 with dots, each part at most 63) of lowercase letters, digits, `-`,
/// `_` and `.`, starting and ending with a letter or digit, not starting
/// with `goog`. What passes cannot end a CEL string or a JSON value.
pub fn is_bucket_name(name: &str) -> bool {
    let b = name.as_bytes();
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let max = if name.contains('.') { MAX_BUCKET } else { 63 };
    (3..=max).contains(&b.len())
        && edge(b[0])
        && edge(b[b.len() - 1])
        && b.iter()
            .all(|&c| edge(c) || c == b'-' || c == b'_' || c == b'.')
        && name.split('.').all(|p| !p.is_empty() && p.len() <= 63)
        && !name.starts_with("goog")
}

/// The one bucket a Cloud Storage request addresses, from the normalised
/// host and path the route matched on: `{bucket}.storage.googleapis.com`,
/// the JSON API (`/storage/v1/b/{bucket}…`, `/upload/…`, `/download/…`)
/// or the XML API (`/{bucket}/…`). `None` for requests that name no
/// single bucket (list buckets, batch) or a name that is not a bucket's.
/// No allocation.
#[inline]
pub fn bucket_of<'a>(host: &'a str, path: &'a str) -> Option<&'a str> {
    let candidate = if let Some(b) = host.strip_suffix(STORAGE_SUFFIX) {
        b
    } else if host == STORAGE {
        let rest = [
            "/storage/v1/b/",
            "/upload/storage/v1/b/",
            "/download/storage/v1/b/",
        ]
        .iter()
        .find_map(|p| path.strip_prefix(p));
        match rest {
            Some(rest) => rest.split('/').next().unwrap_or_default(),
            None => {
                let first = path
                    .strip_prefix('/')?
                    .split('/')
                    .next()
                    .unwrap_or_default();
                if matches!(first, "storage" | "upload" | "download" | "batch") {
                    return None;
                }
                first
            }
        }
    } else {
        return None;
    };
    is_bucket_name(candidate).then_some(candidate)
}

/// Makes downscoped slots: the control plane's exchanges at STS; `check`
/// and `explain` get cells that are never filled.
pub trait Downscoper: Send + Sync {
    /// The slot of `base`'s token limited to `boundary`, shared by every
    /// route asking for the same pair. `keep`: never released (a route's
    /// fixed boundary); otherwise it is counted and [`Downscoper::release`]
    /// gives it back.
    fn slot(&self, base: &Slot, boundary: Arc<AccessBoundary>, keep: bool) -> Slot;
    /// Gives back a slot asked for with `keep = false`.
    fn release(&self, base: &Slot, boundary: &AccessBoundary);
}

impl Downscoper for crate::policy::Unminted {
    fn slot(&self, base: &Slot, _boundary: Arc<AccessBoundary>, _keep: bool) -> Slot {
        Slot::new(base.request().clone())
    }

    fn release(&self, _base: &Slot, _boundary: &AccessBoundary) {}
}

/// How an injecting route's token is limited.
#[derive(Debug)]
#[non_exhaustive]
pub enum Downscope {
    /// One boundary: the route's slot is already the downscoped one.
    Fixed {
        /// The boundary.
        boundary: Arc<AccessBoundary>,
        /// Its resources, for audit records.
        resource: Arc<str>,
    },
    /// `{bucket}`: a slot per bucket the request addresses; the route's
    /// slot is the base.
    PerBucket(BucketSlots),
}

/// One bucket's downscoped slot.
pub struct BucketEntry {
    /// The downscoped slot.
    pub slot: Slot,
    /// The rendered boundary's resources, for audit records.
    pub resource: Arc<str>,
    boundary: Arc<AccessBoundary>,
    /// The table's clock when last used (for eviction).
    used: AtomicU64,
}

type Table = HashMap<Box<str>, Arc<BucketEntry>>;

/// The per-bucket slots of one `{bucket}` route, at most [`BUCKET_SLOTS`].
pub struct BucketSlots {
    template: BoundaryTemplate,
    base: Slot,
    source: Arc<dyn Downscoper>,
    table: ArcSwap<Table>,
    /// Serialises adding a bucket: one slot (one STS exchange) per bucket.
    adding: Mutex<()>,
    /// Advanced by two on every addition; an entry used since the last
    /// one carries the current value, the one added then the value below.
    clock: AtomicU64,
    cap: usize,
}

impl fmt::Debug for BucketSlots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BucketSlots")
            .field("template", &self.template)
            .field("buckets", &self.table.load().len())
            .finish_non_exhaustive()
    }
}

impl BucketSlots {
    /// An empty table for `template` over `base`, slots from `source`.
    pub fn new(template: BoundaryTemplate, base: Slot, source: Arc<dyn Downscoper>) -> BucketSlots {
        BucketSlots::with_cap(template, base, source, BUCKET_SLOTS)
    }

    /// [`BucketSlots::new`] keeping at most `cap` buckets.
    pub fn with_cap(
        template: BoundaryTemplate,
        base: Slot,
        source: Arc<dyn Downscoper>,
        cap: usize,
    ) -> BucketSlots {
        BucketSlots {
            template,
            base,
            source,
            table: ArcSwap::from_pointee(Table::new()),
            adding: Mutex::new(()),
            clock: AtomicU64::new(0),
            cap: cap.max(1),
        }
    }

    /// The boundary template.
    pub fn template(&self) -> &BoundaryTemplate {
        &self.template
    }

    /// How many buckets hold a slot now.
    pub fn len(&self) -> usize {
        self.table.load().len()
    }

    /// Whether no bucket holds a slot.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slot for the bucket the request addresses (added if new), or
    /// `None` when it addresses no single bucket. A known bucket: no lock,
    /// no allocation.
    #[inline]
    pub fn select(&self, host: &str, path: &str) -> Option<Arc<BucketEntry>> {
        let bucket = bucket_of(host, path)?;
        let now = self.clock.load(Ordering::Relaxed);
        if let Some(e) = self.table.load().get(bucket) {
            // Only write when it changes: a shared line stays shared.
            if e.used.load(Ordering::Relaxed) != now {
                e.used.store(now, Ordering::Relaxed);
            }
            return Some(e.clone());
        }
        Some(self.add(bucket))
    }

    #[cold]
    fn add(&self, bucket: &str) -> Arc<BucketEntry> {
        let _adding = self.adding.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.table.load_full();
        if let Some(e) = current.get(bucket) {
            return e.clone();
        }
        let boundary = Arc::new(self.template.render(bucket));
        let entry = Arc::new(BucketEntry {
            slot: self.source.slot(&self.base, boundary.clone(), false),
            resource: boundary.resources().into(),
            boundary,
            used: AtomicU64::new(0),
        });
        let mut next: Table = (*current).clone();
        let mut evicted = None;
        if next.len() >= self.cap {
            let oldest = next
                .iter()
                .min_by_key(|(_, e)| e.used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            evicted = oldest.and_then(|k| next.remove(&k));
        }
        // The new entry ranks below anything used after it was added.
        let added = self.clock.fetch_add(2, Ordering::Relaxed) + 1;
        entry.used.store(added, Ordering::Relaxed);
        next.insert(bucket.into(), entry.clone());
        self.table.store(Arc::new(next));
        if let Some(e) = evicted {
            self.source.release(&self.base, &e.boundary);
        }
        entry
    }
}

impl Drop for BucketSlots {
    fn drop(&mut self) {
        for e in self.table.load().values() {
            self.source.release(&self.base, &e.boundary);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::google::TokenRequest;
    use crate::policy::Unminted;

    #[test]
    fn buckets_are_found_in_every_addressing_style() {
        let s = STORAGE;
        assert_eq!(bucket_of(s, "/storage/v1/b/tenant-a/o/x"), Some("tenant-a"));
        assert_eq!(bucket_of(s, "/storage/v1/b/tenant-a"), Some("tenant-a"));
        assert_eq!(
            bucket_of(s, "/upload/storage/v1/b/b.c-d_e/o"),
            Some("b.c-d_e")
        );
        assert_eq!(bucket_of(s, "/download/storage/v1/b/abc/o/x"), Some("abc"));
        assert_eq!(bucket_of(s, "/abc/reports/x"), Some("abc"));
        assert_eq!(
            bucket_of("abc.storage.googleapis.com", "/reports/x"),
            Some("abc")
        );
        for none in [
            "/storage/v1/b",
            "/storage/v1/b/",
            "/",
            "/batch/storage/v1",
            "/storage/v1/projects/p/hmacKeys",
        ] {
            assert_eq!(bucket_of(s, none), None, "{none}");
        }
        assert_eq!(bucket_of("pubsub.googleapis.com", "/abc/x"), None);
    }

    #[test]
    fn bucket_names_cannot_inject() {
        for ok in ["abc", "a-b_c.d", "0ab", &"a".repeat(63)] {
            assert!(is_bucket_name(ok), "{ok}");
        }
        for bad in [
            "ab",
            "Abc",
            "a'b",
            "a\"b",
            "a%27b",
            "-ab",
            "ab-",
            "a..b",
            "goog-x",
            &"a".repeat(64),
            "a b",
            "a/b",
            "a)||true||(b",
        ] {
            assert!(!is_bucket_name(bad), "{bad}");
        }
    }

    fn template(resource: &str, condition: Option<&str>) -> Result<BoundaryTemplate, ConfigError> {
        let rules = vec![BoundaryRuleConfig {
            resource: resource.into(),
            permissions: vec!["inRole:roles/storage.objectViewer".into()],
            condition: condition.map(str::to_owned),
        }];
        check(&rules, &[HostPattern::parse(STORAGE).unwrap()], &|f| {
            format!("route[0].{f}")
        })
    }

    #[test]
    fn templates_render_the_bucket_into_resource_and_condition() {
        let t = template(
            "//storage.googleapis.com/projects/_/buckets/{bucket}",
            Some("resource.name.startsWith('projects/_/buckets/{bucket}/objects/r/')"),
        )
        .unwrap();
        assert!(t.per_bucket());
        let b = t.render("abc");
        assert_eq!(
            b.resources(),
            "//storage.googleapis.com/projects/_/buckets/abc"
        );
        assert_eq!(
            b.access_boundary_rules[0]
                .availability_condition
                .as_ref()
                .unwrap()
                .expression,
            "resource.name.startsWith('projects/_/buckets/abc/objects/r/')"
        );
        let err = template("//storage.googleapis.com/projects/_/buckets/a'b", None).unwrap_err();
        assert!(
            err.to_string()
                .contains("route[0].access_boundary[0].resource"),
            "{err}"
        );
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_least_recently_used() {
        let t = template("//storage.googleapis.com/projects/_/buckets/{bucket}", None).unwrap();
        let base = Slot::new(
            TokenRequest::access_token(
                "a@p.iam.gserviceaccount.com",
                &[],
                &[],
                std::time::Duration::from_secs(60),
            )
            .unwrap(),
        );
        let table = BucketSlots::with_cap(t, base, Arc::new(Unminted), 2);
        let path = |b: &str| format!("/storage/v1/b/{b}/o");
        let a = table.select(STORAGE, &path("aaa")).unwrap();
        assert!(Arc::ptr_eq(
            &a,
            &table.select(STORAGE, &path("aaa")).unwrap()
        ));
        table.select(STORAGE, &path("bbb")).unwrap();
        // aaa used after bbb was added: bbb is the least recently used.
        table.select(STORAGE, &path("aaa")).unwrap();
        table.select(STORAGE, &path("ccc")).unwrap();
        assert_eq!(table.len(), 2);
        let t = table.table.load();
        assert!(
            t.contains_key("aaa") && t.contains_key("ccc"),
            "{:?}",
            t.keys().collect::<Vec<_>>()
        );
        assert!(table.select(STORAGE, "/storage/v1/b").is_none());
    }
}
