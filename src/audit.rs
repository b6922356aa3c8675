//! One structured record per request: who (client), what (method, host,
//! path), which route acted as whom (target principal, delegates), and how
//! it ended (status, duration, bytes). Never a token, never a query string
//! (it may carry `access_token=`).
//!
//! Records are written by a dedicated thread so that a slow disk never
//! stalls a request. The thread drains the queue every [`BATCH`] instead of
//! blocking on it, so queuing a record never wakes a thread (a futex wake
//! per request showed in profiles); shutdown flushes what is queued. If the
//! queue is full a record is dropped and counted.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::config::AuditConfig;

/// How long a record may wait in the queue before it is written.
const BATCH: std::time::Duration = std::time::Duration::from_millis(50);

enum Message {
    Line(Vec<u8>),
    /// Write everything queued so far, then answer.
    Flush(std::sync::mpsc::Sender<()>),
}

/// Where audit records go.
#[derive(Clone)]
pub(crate) struct AuditSink {
    tx: Option<SyncSender<Message>>,
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
        let (tx, rx) = sync_channel::<Message>(64 * 1024);
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(out);
                loop {
                    std::thread::sleep(BATCH);
                    loop {
                        match rx.try_recv() {
                            Ok(Message::Line(line)) => {
                                let _ = out.write_all(&line);
                            }
                            Ok(Message::Flush(done)) => {
                                let _ = out.flush();
                                let _ = done.send(());
                            }
                            Err(std::sync::mpsc::TryRecvError::Empty) => break,
                            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                                let _ = out.flush();
                                return;
                            }
                        }
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(AuditSink {
            tx: Some(tx),
            dropped,
        })
    }

    /// Waits (up to 5 s) until every record queued so far is written; for
    /// shutdown, so that nothing is lost.
    pub fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (done, wait) = std::sync::mpsc::channel();
        if tx.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(std::time::Duration::from_secs(5));
        }
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
        if let Err(TrySendError::Full(_)) = tx.try_send(Message::Line(line)) {
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
    #[serde(serialize_with = "method_str")]
    pub method: http::Method,
    pub host: Arc<str>,
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
    pub fn new(client: SocketAddr, method: &http::Method, host: &Arc<str>, path: &str) -> Record {
        Record {
            time: SystemTime::now(),
            client,
            client_name: None,
            method: method.clone(),
            host: host.clone(),
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

fn method_str<S: serde::Serializer>(m: &http::Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.as_str())
}
