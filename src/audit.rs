//! One structured record per request: who (client), what (method, host,
//! path), which route acted as whom (target principal, delegates), and how
//! it ended (status, duration, bytes). Never a token, never a query string
//! (it may carry `access_token=`).
//!
//! Records are written by a dedicated thread so that a slow disk never
//! stalls a request; if the queue is full a record is dropped and counted.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::config::AuditConfig;

/// Where audit records go.
#[derive(Clone)]
pub(crate) struct AuditSink {
    tx: Option<SyncSender<Vec<u8>>>,
    dropped: Arc<AtomicU64>,
}

impl AuditSink {
    /// Starts the writer thread for `[audit]`.
    pub fn start(cfg: &AuditConfig) -> std::io::Result<AuditSink> {
        let dropped = Arc::new(AtomicU64::new(0));
        if !cfg.enabled {
            return Ok(AuditSink { tx: None, dropped });
        }
        let out: Box<dyn Write + Send> = match &cfg.file {
            Some(path) => Box::new(open_append(path)?),
            None => Box::new(std::io::stdout()),
        };
        let (tx, rx) = sync_channel::<Vec<u8>>(16 * 1024);
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(out);
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(&line);
                    // Flush when the queue is empty: batches under load,
                    // prompt when quiet.
                    while let Ok(line) = rx.try_recv() {
                        let _ = out.write_all(&line);
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(AuditSink {
            tx: Some(tx),
            dropped,
        })
    }

    /// Whether records are written at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one record.
    pub fn write(&self, record: &Record) {
        let Some(tx) = &self.tx else { return };
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        if let Err(TrySendError::Full(_)) = tx.try_send(line) {
            if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    "audit queue full: dropping records (the audit file cannot keep up)"
                );
            }
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
#[derive(Debug, Serialize)]
pub(crate) struct Record {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub client: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_name: Option<Arc<str>>,
    pub method: String,
    pub host: String,
    pub path: String,
    pub route: Option<Arc<str>>,
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_principal: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub delegates: Vec<String>,
    pub status: u16,
    pub duration_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    #[serde(skip)]
    pub start: Option<Instant>,
    #[serde(skip)]
    pub counted_in: Option<Arc<AtomicU64>>,
}

impl Record {
    pub fn new(client: SocketAddr, method: &http::Method, host: &str, path: &str) -> Record {
        Record {
            time: SystemTime::now(),
            client,
            client_name: None,
            method: method.as_str().to_owned(),
            host: host.to_owned(),
            path: path.to_owned(),
            route: None,
            action: "none",
            target_principal: None,
            delegates: Vec::new(),
            status: 0,
            duration_ms: 0.0,
            bytes_in: 0,
            bytes_out: 0,
            start: Some(Instant::now()),
            counted_in: None,
        }
    }

    /// How long the request has taken so far.
    pub fn elapsed(&self) -> std::time::Duration {
        self.start.map(|s| s.elapsed()).unwrap_or_default()
    }

    /// Fills in the totals; called once, when the response is done.
    pub fn finish(&mut self, bytes_out: u64) {
        if let Some(start) = self.start {
            self.duration_ms = (start.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
        }
        if let Some(c) = &self.counted_in {
            self.bytes_in = c.load(Ordering::Relaxed);
        }
        self.bytes_out = bytes_out;
    }
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}
