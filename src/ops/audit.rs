//! One structured record per request: who (client), what (method, host,
//! path), which route acted as whom (target principal, delegates), and how
//! it ended (status, duration, bytes). Never a token, never a query string
//! (it may carry `access_token=`).
//!
//! Records are appended to an in-memory batch, which a dedicated thread
//! writes out every [`BATCH`], so that a slow disk never stalls a request
//! and queuing a record neither allocates nor wakes a thread (a futex wake
//! and a line buffer per request showed in profiles). Shutdown flushes the
//! batch. If the batch outgrows [`MAX_PENDING`] (the disk cannot keep up)
//! records are dropped and counted.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Instant, SystemTime};

use crate::config::{AuditConfig, AuditSampling};

/// What the proxy did with a request, as written in its audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditAction {
    /// Nothing was decided yet (the request was refused before routing).
    None,
    /// An access token was attached.
    Impersonate,
    /// An ID token was attached.
    IdToken,
    /// Forwarded untouched.
    Passthrough,
    /// Refused by a route, or a CONNECT to a host that is not intercepted.
    Deny,
    /// Answered by the metadata-server endpoint.
    Metadata,
    /// Refused with 407: no `[[client]]` matched.
    ProxyAuth,
    /// A CONNECT spliced blind to a host that is not intercepted.
    Tunnel,
    /// A tunnel refused by the egress policy.
    Refused,
    /// A `signBlob` / `signJwt` sent with the source credential
    /// (`sign_as`).
    SignAs,
}

impl AuditAction {
    /// The word in the audit line and in `check`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::None => "none",
            AuditAction::Impersonate => "impersonate",
            AuditAction::IdToken => "id_token",
            AuditAction::Passthrough => "passthrough",
            AuditAction::Deny => "deny",
            AuditAction::Metadata => "metadata",
            AuditAction::ProxyAuth => "proxy_auth",
            AuditAction::Tunnel => "tunnel",
            AuditAction::Refused => "refused",
            AuditAction::SignAs => "sign_as",
        }
    }
}

pub use crate::ops::conn::{IdentifiedBy, Listener};

/// Whom a request acted as: what a token slot tells the audit record,
/// without the token. Implemented by the token slots; a reference count,
/// not a copy, rides on every record.
pub trait Principal: Send + Sync {
    /// The service account the token is for.
    fn target_principal(&self) -> &str;
    /// The delegate chain, in order.
    fn delegates(&self) -> &[String];
}

impl std::fmt::Debug for dyn Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.target_principal())
    }
}

/// How long a record may wait in the batch before it is written.
const BATCH: std::time::Duration = std::time::Duration::from_millis(50);

/// Bytes of records waiting to be written beyond which new ones are dropped.
const MAX_PENDING: usize = 16 << 20;

/// Bytes that failed writes left unwritten, kept to be retried; records
/// beyond this are dropped (the newest: what is kept stays in order).
const MAX_UNWRITTEN: usize = 16 << 20;

/// While writes fail, they are retried this often (records keep queuing
/// in between).
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A failing audit sink is logged at most this often.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Where audit records go.
#[derive(Clone)]
pub(crate) struct AuditSink {
    inner: Option<Arc<Batch>>,
}

struct Batch {
    /// Records not yet handed to the writer.
    pending: Mutex<Vec<u8>>,
    /// The output and its state; held while writing.
    out: Mutex<Writer>,
    /// Records dropped: the queue was full, or the unwritten backlog.
    dropped: AtomicU64,
    /// Failed write attempts.
    errors: AtomicU64,
    /// Bytes waiting to be retried.
    unwritten: AtomicU64,
    /// The last write error while writes fail; `None` when healthy. Its
    /// own lock, so `/readyz` never waits on a slow disk.
    failing: Mutex<Option<String>>,
    /// The audit file, reopened by [`AuditSink::reopen`]; `None`: stdout.
    path: Option<PathBuf>,
}

/// Size-based rotation: `[audit] max_file_size` and `max_files`.
#[derive(Clone, Copy)]
struct Rotation {
    max_size: u64,
    keep: usize,
}

/// The writer thread's side: the open file and what it knows of it.
struct Writer {
    file: Box<dyn Write + Send>,
    /// The batch being written, swapped with `pending`.
    spare: Vec<u8>,
    /// Bytes a failed write left over (whole records, or the rest of one
    /// that was cut short), written before anything newer.
    unwritten: Vec<u8>,
    /// Bytes in the current file (for rotation).
    size: u64,
    rotation: Option<Rotation>,
    last_attempt_failed: Option<Instant>,
    last_warning: Option<Instant>,
    errors_since_warning: u64,
}

/// What `/readyz` says about the audit sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHealth {
    /// The last write error, while writes fail.
    pub error: Option<String>,
    /// Failed write attempts since start.
    pub write_errors: u64,
    /// Records dropped since start (queue or backlog full).
    pub dropped: u64,
    /// Bytes of records waiting for the disk.
    pub unwritten_bytes: u64,
}

impl Batch {
    /// Writes what is pending. Callers: the writer thread, `flush`, drop.
    fn drain(&self) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        self.drain_into(&mut out, false);
    }

    /// Hands the pending records to the writer and writes them, after any
    /// left over from a failed write. While writes fail, only every
    /// [`RETRY_EVERY`] is a write tried (unless `now`: shutdown, reopen).
    fn drain_into(&self, w: &mut Writer, now: bool) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *pending, &mut w.spare);
        }
        let retry_due = now
            || w.last_attempt_failed
                .is_none_or(|t| t.elapsed() >= RETRY_EVERY);
        if w.unwritten.is_empty() && retry_due {
            if w.spare.is_empty() {
                return;
            }
            let data = std::mem::take(&mut w.spare);
            let result = w.write_records(&data, self.path.as_deref());
            w.spare = data;
            match result {
                Ok(()) => self.healthy(w),
                Err((done, e)) => {
                    let rest = w.spare.split_off(done);
                    self.keep_unwritten(w, &rest);
                    self.failed(w, &e);
                }
            }
            w.spare.clear();
            return;
        }
        // A backlog: the new records go behind it.
        let new = std::mem::take(&mut w.spare);
        self.keep_unwritten(w, &new);
        w.spare = new;
        w.spare.clear();
        if !retry_due {
            return;
        }
        let backlog = std::mem::take(&mut w.unwritten);
        match w.write_records(&backlog, self.path.as_deref()) {
            Ok(()) => {
                w.unwritten = backlog;
                w.unwritten.clear();
                self.unwritten.store(0, Ordering::Relaxed);
                self.healthy(w);
            }
            Err((done, e)) => {
                w.unwritten = backlog;
                w.unwritten.drain(..done);
                self.unwritten
                    .store(w.unwritten.len() as u64, Ordering::Relaxed);
                self.failed(w, &e);
            }
        }
    }

    /// Appends `records` to the backlog, or drops them (counted) if the
    /// backlog is full.
    fn keep_unwritten(&self, w: &mut Writer, records: &[u8]) {
        if records.is_empty() {
            return;
        }
        if w.unwritten.len() + records.len() <= MAX_UNWRITTEN {
            w.unwritten.extend_from_slice(records);
        } else {
            // A cut-short record's rest has no newline of its own at the
            // start; counting lines counts the records lost.
            let lost = records.iter().filter(|&&b| b == b'\n').count() as u64;
            self.dropped.fetch_add(lost, Ordering::Relaxed);
            crate::ops::metrics::global().audit_dropped(lost);
        }
        self.unwritten
            .store(w.unwritten.len() as u64, Ordering::Relaxed);
    }

    fn failed(&self, w: &mut Writer, e: &std::io::Error) {
        w.last_attempt_failed = Some(Instant::now());
        w.errors_since_warning += 1;
        self.errors.fetch_add(1, Ordering::Relaxed);
        crate::ops::metrics::global().audit_write_error();
        let text = e.to_string();
        if w.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            tracing::warn!(
                error = %text,
                failed_writes = w.errors_since_warning,
                unwritten_bytes = w.unwritten.len(),
                dropped_records = self.dropped.load(Ordering::Relaxed),
                "audit records cannot be written; requests are still served, and the records are kept (up to 16 MiB) and retried every second"
            );
            w.last_warning = Some(Instant::now());
            w.errors_since_warning = 0;
        }
        *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
    }

    fn healthy(&self, w: &mut Writer) {
        if w.last_attempt_failed.take().is_some() {
            tracing::warn!(
                dropped_records = self.dropped.load(Ordering::Relaxed),
                "audit records are written again"
            );
            w.last_warning = None;
            w.errors_since_warning = 0;
            *self.failing.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

impl Writer {
    /// Writes `data` (whole records) to the file, rotating first whenever
    /// the next records would take the file past the size limit: a file
    /// is cut only between records, so each record is in exactly one
    /// file. A single record larger than the limit gets a file of its own.
    /// On error, returns how many bytes of `data` were written.
    fn write_records(
        &mut self,
        data: &[u8],
        path: Option<&Path>,
    ) -> Result<(), (usize, std::io::Error)> {
        let mut done = 0;
        while done < data.len() {
            let rest = &data[done..];
            let n = match (self.rotation, path) {
                (Some(r), Some(path)) => {
                    let room =
                        usize::try_from(r.max_size.saturating_sub(self.size)).unwrap_or(usize::MAX);
                    // The longest run of whole records that fits.
                    let fit = rest[..room.min(rest.len())]
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |i| i + 1);
                    if fit > 0 {
                        fit
                    } else if self.size > 0 {
                        self.rotate(path, r.keep).map_err(|e| (done, e))?;
                        continue;
                    } else {
                        rest.iter()
                            .position(|&b| b == b'\n')
                            .map_or(rest.len(), |i| i + 1)
                    }
                }
                _ => rest.len(),
            };
            let written = write_counted(&mut self.file, &rest[..n]);
            self.size += written.0 as u64;
            done += written.0;
            if let Some(e) = written.1 {
                return Err((done, e));
            }
        }
        let _ = self.file.flush();
        Ok(())
    }

    /// `path` becomes `path.1`, `path.1` becomes `path.2` … up to `keep`
    /// (the oldest is replaced), and a new, empty `path` is written from
    /// now on. The new file is opened (as `path.new`) before anything is
    /// renamed, so a failure leaves the current file in place.
    fn rotate(&mut self, path: &Path, keep: usize) -> std::io::Result<()> {
        let numbered = |i: usize| {
            let mut p = path.as_os_str().to_owned();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        let fresh_path = numbered(0).with_extension("new");
        let fresh = open_append(&fresh_path)?;
        self.file.flush()?;
        for i in (1..keep).rev() {
            match std::fs::rename(numbered(i), numbered(i + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(path, numbered(1))?;
        std::fs::rename(&fresh_path, path)?;
        self.file = Box::new(fresh);
        self.size = 0;
        Ok(())
    }
}

/// Writes `buf` with as many `write` calls as it takes: the bytes written,
/// and the error that stopped it, if one did.
fn write_counted(out: &mut dyn Write, buf: &[u8]) -> (usize, Option<std::io::Error>) {
    let mut off = 0;
    while off < buf.len() {
        match out.write(&buf[off..]) {
            Ok(0) => {
                return (
                    off,
                    Some(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        "the audit file took no bytes",
                    )),
                )
            }
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (off, Some(e)),
        }
    }
    (off, None)
}

impl Drop for Batch {
    fn drop(&mut self) {
        let out = self.out.get_mut().unwrap_or_else(|p| p.into_inner());
        let mut w = std::mem::replace(out, Writer::new(Box::new(std::io::sink()), 0, None));
        self.drain_into(&mut w, true);
    }
}

impl Writer {
    fn new(file: Box<dyn Write + Send>, size: u64, rotation: Option<Rotation>) -> Writer {
        Writer {
            file,
            spare: Vec::with_capacity(64 << 10),
            unwritten: Vec::new(),
            size,
            rotation,
            last_attempt_failed: None,
            last_warning: None,
            errors_since_warning: 0,
        }
    }
}

impl AuditSink {
    /// Starts the writer thread for `[audit]`.
    pub fn start(cfg: &AuditConfig) -> std::io::Result<AuditSink> {
        if !cfg.enabled {
            return Ok(AuditSink { inner: None });
        }
        let (out, size): (Box<dyn Write + Send>, u64) = match &cfg.file {
            Some(path) => {
                let f = open_append(path)?;
                let size = f.metadata().map_or(0, |m| m.len());
                (Box::new(f), size)
            }
            None => (Box::new(std::io::stdout()), 0),
        };
        let rotation = cfg.max_file_bytes().map(|max_size| Rotation {
            max_size,
            keep: cfg
                .max_files
                .unwrap_or(crate::config::DEFAULT_AUDIT_MAX_FILES),
        });
        let batch = Arc::new(Batch {
            pending: Mutex::new(Vec::with_capacity(64 << 10)),
            out: Mutex::new(Writer::new(out, size, rotation)),
            dropped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            unwritten: AtomicU64::new(0),
            failing: Mutex::new(None),
            path: cfg.file.clone(),
        });
        let weak: Weak<Batch> = Arc::downgrade(&batch);
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || loop {
                std::thread::sleep(BATCH);
                // Gone when the last sink is dropped; its drop wrote the rest.
                let Some(batch) = weak.upgrade() else { return };
                batch.drain();
            })?;
        Ok(AuditSink { inner: Some(batch) })
    }

    /// Writes every record queued so far; for shutdown, so that nothing
    /// is lost.
    pub fn flush(&self) {
        if let Some(b) = &self.inner {
            let mut out = b.out.lock().unwrap_or_else(|p| p.into_inner());
            b.drain_into(&mut out, true);
        }
    }

    /// Closes and reopens the audit file by its name (SIGUSR1), for
    /// logrotate's rename-then-signal. Every record queued before the
    /// reopen is written to the old file first, under the writer's lock,
    /// so each record lands in exactly one of the two files. If the new
    /// file cannot be opened the old one is kept.
    pub fn reopen(&self) -> std::io::Result<()> {
        let Some(b) = &self.inner else { return Ok(()) };
        let Some(path) = &b.path else { return Ok(()) };
        let mut out = b.out.lock().unwrap_or_else(|p| p.into_inner());
        b.drain_into(&mut out, true);
        let f = open_append(path)?;
        out.size = f.metadata().map_or(0, |m| m.len());
        out.file = Box::new(f);
        Ok(())
    }

    /// Whether records are written at all.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The sink's health, for `/readyz`; `None` when auditing is off.
    pub fn health(&self) -> Option<AuditHealth> {
        let b = self.inner.as_ref()?;
        Some(AuditHealth {
            error: b.failing.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            write_errors: b.errors.load(Ordering::Relaxed),
            dropped: b.dropped.load(Ordering::Relaxed),
            unwritten_bytes: b.unwritten.load(Ordering::Relaxed),
        })
    }

    /// Queues one record, if its route's `audit` setting keeps it.
    pub fn write(&self, record: &Record) {
        let Some(b) = &self.inner else { return };
        if !record.kept() {
            return;
        }
        let mut pending = b.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() < MAX_PENDING {
            record.write_json(&mut pending);
            return;
        }
        drop(pending);
        crate::ops::metrics::global().audit_dropped(1);
        if b.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!("audit writer cannot keep up: dropping records (is the audit file on a slow or full disk?)");
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o640);
    }
    o.open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("audit file {}: {e}", path.display())))
}

/// One request's audit record, filled in as the request moves along and
/// written when its response body ends.
#[derive(Debug)]
pub(crate) struct Record {
    pub time: SystemTime,
    pub client: SocketAddr,
    /// Omitted from the line when `None`.
    pub client_name: Option<Arc<str>>,
    /// How `client_name` was established (omitted when `None`).
    pub identified_by: Option<IdentifiedBy>,
    /// The listener the request arrived on.
    pub listener: Listener,
    pub method: http::Method,
    pub host: Arc<str>,
    /// Only its path is written, never the query.
    pub path: Option<http::uri::PathAndQuery>,
    /// `null` when no route matched.
    pub route: Option<Arc<str>>,
    pub action: AuditAction,
    /// The report-mode deny route (`enforce = false`) the request matched
    /// and passed over, written as `"would_deny":ROUTE` (omitted when
    /// `None`); the last one when several did. `route` and `action` are
    /// what happened next.
    pub would_deny: Option<Arc<str>>,
    /// Whom the request acted as: written as `target_principal` and
    /// `delegates` (omitted when `None` / empty).
    pub acting_as: Option<Arc<dyn Principal>>,
    /// The audience a metadata identity request asked for (omitted when
    /// `None`); never the ID token.
    pub audience: Option<Arc<str>>,
    /// A `sign_as` request's IAM method (`signBlob` / `signJwt`), written
    /// as `sign` (omitted when `None`); the account is `target_principal`.
    pub sign: Option<&'static str>,
    /// The resources of the access boundary the injected token carries
    /// (omitted when `None`); never the token.
    pub boundary: Option<Arc<str>>,
    pub status: u16,
    /// Written as `duration_ms`, to the microsecond.
    pub duration: std::time::Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Not written: when the request started.
    pub start: Option<Instant>,
    /// Not written: the request body's byte counter.
    pub counted_in: Option<Arc<AtomicU64>>,
    /// Not written: the route's `audit` setting (which records are kept).
    pub sampling: AuditSampling,
}

impl Record {
    pub fn new(
        client: SocketAddr,
        method: &http::Method,
        host: &Arc<str>,
        uri: &http::Uri,
    ) -> Record {
        Record {
            time: SystemTime::now(),
            client,
            client_name: None,
            identified_by: None,
            listener: Listener::Connect,
            method: method.clone(),
            host: host.clone(),
            path: uri.path_and_query().cloned(),
            route: None,
            action: AuditAction::None,
            would_deny: None,
            acting_as: None,
            audience: None,
            sign: None,
            boundary: None,
            status: 0,
            duration: std::time::Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
            start: Some(Instant::now()),
            counted_in: None,
            sampling: AuditSampling::All,
        }
    }

    /// Whether the route's `audit` setting keeps this record. Denials,
    /// errors (status 400 and up, or none) and requests that carried no
    /// token are always kept.
    pub fn kept(&self) -> bool {
        let always = || {
            !(100..400).contains(&self.status)
                || !matches!(self.action, AuditAction::Impersonate | AuditAction::IdToken)
                || self.acting_as.is_none()
        };
        match self.sampling {
            AuditSampling::All => true,
            AuditSampling::Errors => always(),
            AuditSampling::Sample(f) => always() || fastrand::f64() < f,
        }
    }

    /// Fills in the totals; called once, when the response is done.
    pub fn finish(&mut self, bytes_out: u64) {
        if let Some(start) = self.start {
            self.duration = start.elapsed();
        }
        if let Some(c) = &self.counted_in {
            self.bytes_in = c.load(Ordering::Relaxed);
        }
        self.bytes_out = bytes_out;
    }
}

impl Record {
    /// Appends the record as one JSON line (with its `\n`). Written by hand
    /// rather than through serde: it runs once per request, and serde_json
    /// with a formatted timestamp was a tenth of the proxy's instructions
    /// per request (callgrind, benches/README.md).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        write_time(out, self.time);
        out.extend_from_slice(b"\",\"client\":\"");
        push_addr(out, self.client);
        out.push(b'"');
        if let Some(name) = &self.client_name {
            out.extend_from_slice(b",\"client_name\":");
            json_str(out, name);
        }
        if let Some(by) = self.identified_by {
            out.extend_from_slice(b",\"identified_by\":\"");
            out.extend_from_slice(by.as_str().as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b",\"listener\":\"");
        out.extend_from_slice(self.listener.as_str().as_bytes());
        out.push(b'"');
        out.extend_from_slice(b",\"method\":");
        json_str(out, self.method.as_str());
        out.extend_from_slice(b",\"host\":");
        json_str(out, &self.host);
        out.extend_from_slice(b",\"path\":");
        json_str(out, self.path.as_ref().map_or("", |p| p.path()));
        out.extend_from_slice(b",\"route\":");
        match &self.route {
            Some(r) => json_str(out, r),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"action\":");
        json_str(out, self.action.as_str());
        if let Some(r) = &self.would_deny {
            out.extend_from_slice(b",\"would_deny\":");
            json_str(out, r);
        }
        if let Some(request) = &self.acting_as {
            out.extend_from_slice(b",\"target_principal\":");
            json_str(out, request.target_principal());
            if !request.delegates().is_empty() {
                out.extend_from_slice(b",\"delegates\":[");
                for (i, d) in request.delegates().iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    json_str(out, d);
                }
                out.push(b']');
            }
        }
        if let Some(sign) = self.sign {
            out.extend_from_slice(b",\"sign\":");
            json_str(out, sign);
        }
        if let Some(audience) = &self.audience {
            out.extend_from_slice(b",\"audience\":");
            json_str(out, audience);
        }
        if let Some(boundary) = &self.boundary {
            out.extend_from_slice(b",\"boundary\":");
            json_str(out, boundary);
        }
        out.extend_from_slice(b",\"status\":");
        push_u64(out, u64::from(self.status));
        let us = u64::try_from(self.duration.as_micros()).unwrap_or(u64::MAX);
        out.extend_from_slice(b",\"duration_ms\":");
        push_u64(out, us / 1000);
        out.push(b'.');
        push_fraction(out, us % 1000);
        out.extend_from_slice(b",\"bytes_in\":");
        push_u64(out, self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        push_u64(out, self.bytes_out);
        out.extend_from_slice(b"}\n");
    }
}

/// Decimal digits of `n`.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Three digits, zero-padded: `n` < 1000.
fn push_fraction(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&[
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

/// `ip:port`, `[ipv6]:port`.
fn push_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    use std::io::Write as _;
    match addr {
        SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(o));
            }
            out.push(b':');
            push_u64(out, u64::from(v4.port()));
        }
        SocketAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// RFC 3339 UTC with milliseconds. The date and time of day change once a
/// second, so each thread keeps the last second's text.
fn write_time(out: &mut Vec<u8>, t: SystemTime) {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
    }
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != secs {
            // "YYYY-MM-DDTHH:MM:SSZ": the first 19 bytes are the prefix.
            let text = humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            )
            .to_string();
            if let Some(prefix) = text.as_bytes().get(..19) {
                last.1.copy_from_slice(prefix);
                last.0 = secs;
            }
        }
        out.extend_from_slice(&last.1);
    });
    out.push(b'.');
    push_fraction(out, u64::from(since.subsec_millis()));
    out.push(b'Z');
}

/// Bytes a JSON string cannot hold as they are: `"`, `\\`, controls.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// A JSON string literal: `"`, `\\` and control characters escaped, other
/// text (UTF-8 included) copied in runs.
fn json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let plain = |b: &u8| !NEEDS_ESCAPE[usize::from(*b)];
    // Hosts, routes, principals and most paths need no escape at all.
    let Some(first) = bytes.iter().position(|b| !plain(b)) else {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    };
    out.extend_from_slice(&bytes[..first]);
    let mut start = first;
    for (i, &b) in bytes.iter().enumerate().skip(first) {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Acting(&'static str, Vec<String>);

    impl Principal for Acting {
        fn target_principal(&self) -> &str {
            self.0
        }
        fn delegates(&self) -> &[String] {
            &self.1
        }
    }

    fn record() -> Record {
        let uri: http::Uri = "/upload/storage/v1/b/my%22bucket/o?uploadType=media&access_token=x"
            .parse()
            .unwrap();
        let mut r = Record::new(
            "127.0.0.1:5555".parse().unwrap(),
            &http::Method::POST,
            &Arc::from("storage.googleapis.com"),
            &uri,
        );
        r.time = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_795_869_762_042);
        r.client_name = Some("ci \"runner\"\\\u{1}\n\u{e9}".into());
        r.identified_by = Some(IdentifiedBy::Cert);
        r.listener = Listener::Tls;
        r.route = Some("gcs".into());
        r.action = AuditAction::Impersonate;
        r.acting_as = Some(Arc::new(Acting(
            "reader@p.iam.gserviceaccount.com",
            vec![
                "a@p.iam.gserviceaccount.com".to_owned(),
                "b@p.iam.gserviceaccount.com".to_owned(),
            ],
        )));
        r.audience = Some("https://svc.example.run.app".into());
        r.status = 200;
        r.duration = std::time::Duration::from_micros(1_250);
        r.bytes_in = 7;
        r.bytes_out = 1 << 40;
        r
    }

    #[tokio::test]
    async fn a_record_is_one_json_line_with_every_field_and_no_query() {
        let mut out = Vec::new();
        record().write_json(&mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(out.ends_with(b"}\n"));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "time": "2026-11-28T12:42:42.042Z",
                "client": "127.0.0.1:5555",
                "client_name": "ci \"runner\"\\\u{1}\n\u{e9}",
                "identified_by": "cert",
                "listener": "tls",
                "method": "POST",
                "host": "storage.googleapis.com",
                "path": "/upload/storage/v1/b/my%22bucket/o",
                "route": "gcs",
                "action": "impersonate",
                "target_principal": "reader@p.iam.gserviceaccount.com",
                "delegates": ["a@p.iam.gserviceaccount.com", "b@p.iam.gserviceaccount.com"],
                "audience": "https://svc.example.run.app",
                "status": 200,
                "duration_ms": 1.25,
                "bytes_in": 7,
                "bytes_out": 1u64 << 40,
            })
        );
    }

    #[tokio::test]
    async fn optional_fields_are_omitted_and_a_missing_route_is_null() {
        let mut r = record();
        r.client = "[2001:db8::1]:443".parse().unwrap();
        r.client_name = None;
        r.route = None;
        r.acting_as = None;
        r.audience = None;
        r.path = None;
        r.duration = std::time::Duration::from_nanos(2_000_999_999);
        let mut out = Vec::new();
        r.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        for absent in ["client_name", "target_principal", "delegates", "audience"] {
            assert!(!keys.contains(&absent), "{absent} written");
        }
        assert_eq!(v["route"], serde_json::Value::Null);
        assert_eq!(v["path"], "");
        assert_eq!(v["client"], "[2001:db8::1]:443");
        assert_eq!(v["duration_ms"], 2000.999);
    }

    #[test]
    fn sampling_keeps_denials_errors_and_tokenless_requests() {
        let with = |sampling, action, status, token: bool| {
            let mut r = record();
            r.sampling = sampling;
            r.action = action;
            r.status = status;
            if !token {
                r.acting_as = None;
            }
            r
        };
        use AuditAction::{Deny, IdToken, Impersonate, Passthrough};
        for mode in [AuditSampling::Errors, AuditSampling::Sample(0.0)] {
            // A success that carried a token: not kept.
            assert!(!with(mode, Impersonate, 200, true).kept());
            assert!(!with(mode, IdToken, 304, true).kept());
            // Always kept.
            assert!(with(mode, Impersonate, 403, true).kept());
            assert!(with(mode, Impersonate, 503, true).kept());
            assert!(with(mode, Impersonate, 0, true).kept());
            assert!(with(mode, Impersonate, 200, false).kept());
            assert!(with(mode, Passthrough, 200, false).kept());
            assert!(with(mode, Deny, 403, false).kept());
            assert!(with(mode, AuditAction::None, 400, false).kept());
        }
        assert!(with(AuditSampling::All, Impersonate, 200, true).kept());
        assert!(with(AuditSampling::Sample(1.0), Impersonate, 200, true).kept());
        let kept = (0..10_000)
            .filter(|_| with(AuditSampling::Sample(0.1), Impersonate, 200, true).kept())
            .count();
        assert!((700..1300).contains(&kept), "{kept} of 10000 at 0.1");
    }

    #[test]
    fn numbers_are_plain_decimal() {
        for n in [0u64, 7, 10, 999, 1000, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn the_cached_second_follows_the_clock() {
        let mut out = Vec::new();
        for (ms, want) in [
            (1_795_869_762_042u64, "2026-11-28T12:42:42.042Z"),
            (1_795_869_762_999, "2026-11-28T12:42:42.999Z"),
            (1_795_869_763_000, "2026-11-28T12:42:43.000Z"),
            (0, "1970-01-01T00:00:00.000Z"),
        ] {
            out.clear();
            write_time(
                &mut out,
                SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            );
            assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        }
    }
}
