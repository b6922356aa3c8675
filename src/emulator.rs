//! A local stand-in for the Google endpoints the proxy talks to — the OAuth
//! token endpoint, IAM Credentials (tokens, `signBlob`, `signJwt`), STS
//! (downscoping), the public certificates of service account keys, a small
//! Cloud Storage API (JSON, media download, the three upload protocols, V4
//! signed URLs), Pub/Sub's gRPC `Publish`, and the metadata server —
//! speaking their wire formats over real TCP and TLS.
//! The offline `demo` command and the tests point the proxy at it with
//! [`Emulator::upstream_config`], exactly as a user would configure
//! `[upstream]`.

mod cert;
mod crc32c;
mod iam;
mod keys;
mod metadata;
mod oauth;
mod pubsub;
mod serve;
mod sign;
mod state;
mod storage;
mod sts;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

use crate::config::UpstreamConfig;
use state::{key_id, State, FIXTURE_KEY_PEM};

/// The hosts the TLS listener answers for (its certificate also covers
/// `*.googleapis.com`).
pub const HOSTS: [&str; 6] = [
    "oauth2.googleapis.com",
    "iamcredentials.googleapis.com",
    "storage.googleapis.com",
    "pubsub.googleapis.com",
    "www.googleapis.com",
    "sts.googleapis.com",
];

/// The emulator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmulatorError {
    /// A listener could not be bound or a file could not be written.
    #[error("emulator: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS material could not be created.
    #[error("emulator TLS setup: {0}")]
    Tls(String),
}

/// How to start an [`Emulator`].
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// Where the CA certificate is written; a fresh directory under the
    /// system temp dir if `None`.
    pub dir: Option<PathBuf>,
    /// The service account the metadata server serves as.
    pub metadata_account: String,
    /// Caps the lifetime of every token issued (to test refresh quickly).
    pub token_lifetime: Option<Duration>,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            dir: None,
            metadata_account: "vm-default@emulator-project.iam.gserviceaccount.com".to_owned(),
            token_lifetime: None,
        }
    }
}

/// Calls the emulator received, by endpoint and principal. Endpoints:
/// `token`, `generateAccessToken`, `generateIdToken`, `signBlob`,
/// `signJwt` (by target), `sts` (by the subject token's principal;
/// `sts.outage` while it is down), `storage` and `pubsub` (by caller),
/// `storage.signed_url` (by signer), `metadata.token`,
/// `metadata.identity`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters(BTreeMap<(String, String), u64>);

impl Counters {
    /// Calls to `endpoint` for `principal`.
    pub fn get(&self, endpoint: &str, principal: &str) -> u64 {
        self.0
            .get(&(endpoint.to_owned(), principal.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Calls to `endpoint`, for anyone.
    pub fn total(&self, endpoint: &str) -> u64 {
        self.0
            .iter()
            .filter(|((e, _), _)| e == endpoint)
            .map(|(_, n)| n)
            .sum()
    }
}

/// One data call the emulator served: an object upload or download, or a
/// Pub/Sub publish. Tests read them to see who moved how much, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DataCall {
    /// `storage.upload`, `storage.download` or `pubsub.publish`.
    pub endpoint: &'static str,
    /// The account whose token the call carried.
    pub principal: String,
    /// `BUCKET/OBJECT`, or the topic (`projects/P/topics/T`).
    pub resource: String,
    /// The payload: the object's bytes moved, or the messages' `data` summed.
    pub bytes: u64,
    /// Messages published (0 for Storage calls).
    pub messages: u64,
    /// The HTTP version the call arrived over: `HTTP/1.1` or `HTTP/2`
    /// (gRPC is always `HTTP/2`).
    pub http_version: &'static str,
    /// For an upload, its protocol: `media`, `multipart`, `resumable`
    /// (the call that completed it) or `signed_url` (a PUT on a V4 signed
    /// URL); empty otherwise.
    pub upload_type: &'static str,
    /// For a Storage call with a downscoped token, the resources of its
    /// Credential Access Boundary (comma-separated).
    pub boundary: Option<String>,
}

/// A message published to the emulated Pub/Sub.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishedMessage {
    /// The id the emulator gave it.
    pub message_id: String,
    /// Its `data`.
    pub data: Bytes,
    /// Its `attributes`.
    pub attributes: BTreeMap<String, String>,
    /// Its `ordering_key` (empty if none).
    pub ordering_key: String,
    /// Who published it.
    pub principal: String,
}

/// A token the emulator issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The account it was issued to (service account or user email); for
    /// a downscoped token, its subject token's.
    pub principal: String,
    /// When it stops being accepted.
    pub expire_time: std::time::SystemTime,
    /// The Credential Access Boundary of a token STS downscoped.
    pub boundary: Option<crate::google::AccessBoundary>,
}

/// A downscoped token STS issued: the token, its base principal and its
/// boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DownscopedToken {
    /// The token itself (a test fixture's secret).
    pub token: String,
    /// The principal of the token it was exchanged for.
    pub principal: String,
    /// Its Credential Access Boundary.
    pub boundary: crate::google::AccessBoundary,
}

/// A running emulator. Dropping it stops its listeners.
pub struct Emulator {
    state: Arc<State>,
    addr: SocketAddr,
    metadata_addr: SocketAddr,
    ca_pem_path: PathBuf,
    tasks: Vec<AbortHandle>,
}

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .field("metadata_addr", &self.metadata_addr)
            .field("ca_pem_path", &self.ca_pem_path)
            .finish_non_exhaustive()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmulatorError {
    let what = what.into();
    move |source| EmulatorError::Io { what, source }
}

impl Emulator {
    /// Starts the TLS listener and the metadata listener on
    /// `127.0.0.1:0` and writes the CA certificate.
    pub async fn start(opts: EmulatorOptions) -> Result<Emulator, EmulatorError> {
        let dir = match opts.dir {
            Some(d) => d,
            None => fresh_temp_dir(),
        };
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mut names: Vec<&str> = HOSTS.to_vec();
        names.push("*.googleapis.com");
        let tls = cert::server_tls(&names).map_err(EmulatorError::Tls)?;
        let ca_pem_path = dir.join("emulator-ca.pem");
        std::fs::write(&ca_pem_path, &tls.ca_pem)
            .map_err(io_err(format!("writing {}", ca_pem_path.display())))?;
        let state = Arc::new(
            State::new(opts.metadata_account, opts.token_lifetime).map_err(EmulatorError::Tls)?,
        );

        let google = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io_err("binding the TLS listener"))?;
        let metadata = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io_err("binding the metadata listener"))?;
        let addr = google.local_addr().map_err(io_err("local address"))?;
        let metadata_addr = metadata.local_addr().map_err(io_err("local address"))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
        let tasks = vec![
            tokio::spawn(serve::serve_tls(google, acceptor, state.clone())).abort_handle(),
            tokio::spawn(serve::serve_metadata(metadata, state.clone())).abort_handle(),
        ];
        tracing::info!(%addr, %metadata_addr, "emulator listening");
        Ok(Emulator {
            state,
            addr,
            metadata_addr,
            ca_pem_path,
            tasks,
        })
    }

    /// The TLS listener (all Google API hosts).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The plain-HTTP metadata server.
    pub fn metadata_addr(&self) -> SocketAddr {
        self.metadata_addr
    }

    /// The value for `GCE_METADATA_HOST`.
    pub fn metadata_host(&self) -> String {
        self.metadata_addr.to_string()
    }

    /// The emulator CA's certificate (PEM), for `upstream.extra_ca`.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem_path
    }

    /// The service account the metadata server serves as.
    pub fn metadata_account(&self) -> &str {
        &self.state.metadata_account
    }

    /// `[upstream]` that sends every host the emulator serves (and
    /// `metadata.google.internal`) to it and trusts its CA.
    pub fn upstream_config(&self) -> UpstreamConfig {
        let mut resolve: BTreeMap<String, SocketAddr> =
            HOSTS.iter().map(|h| ((*h).to_owned(), self.addr)).collect();
        resolve.insert("metadata.google.internal".to_owned(), self.metadata_addr);
        UpstreamConfig {
            extra_ca: vec![self.ca_pem_path.clone()],
            resolve,
            ..UpstreamConfig::default()
        }
    }

    /// Every secret the emulator has handed out: access and ID tokens, and
    /// refresh tokens. For tests that prove none of them leaks.
    pub fn issued_secrets(&self) -> Vec<String> {
        let inner = self.state.lock();
        inner
            .issued
            .keys()
            .chain(inner.refresh_tokens.keys())
            .cloned()
            .collect()
    }

    /// Grants `caller` the Token Creator role on `target` (emails).
    pub fn grant_token_creator(&self, caller: &str, target: &str) {
        self.state
            .lock()
            .token_creators
            .insert((caller.to_owned(), target.to_owned()));
    }

    /// Lets `email` act for Workspace users (domain-wide delegation, as an
    /// admin allows a client ID): the token endpoint then honours `sub` in
    /// its assertions; otherwise it answers `unauthorized_client`.
    pub fn allow_domain_wide_delegation(&self, email: &str) {
        self.state
            .lock()
            .domain_wide_delegation
            .insert(email.to_owned());
    }

    /// Removes a grant made with [`Emulator::grant_token_creator`].
    pub fn revoke_token_creator(&self, caller: &str, target: &str) {
        self.state
            .lock()
            .token_creators
            .remove(&(caller.to_owned(), target.to_owned()));
    }

    /// The Google-managed key `email` signs with (`signBlob`, `signJwt`):
    /// its id and its public key (DER `RSAPublicKey`), to check a
    /// signature with.
    pub fn signing_key(&self, email: &str) -> (String, Vec<u8>) {
        let key = self.state.sign_keys.of(email);
        (key.kid.clone(), key.public_der().to_vec())
    }

    /// A snapshot of the call counters.
    pub fn counters(&self) -> Counters {
        Counters(self.state.lock().counters.clone())
    }

    /// Every upload, download and publish so far, in order.
    pub fn data_calls(&self) -> Vec<DataCall> {
        self.state.lock().data_calls.clone()
    }

    /// Stores an object (as if uploaded), for clients to list and download.
    /// Every bucket also holds a 6-byte `hello.txt` until one replaces it.
    pub fn put_object(&self, bucket: &str, name: &str, data: impl Into<Bytes>) {
        self.state
            .put_object(bucket, name, "application/octet-stream", data.into());
    }

    /// The bytes of an object the emulator holds (uploaded or put).
    pub fn object(&self, bucket: &str, name: &str) -> Option<Bytes> {
        storage::lookup(&self.state, bucket, name).map(|o| o.data)
    }

    /// The messages published to `topic` (`projects/P/topics/T`), in order.
    pub fn published(&self, topic: &str) -> Vec<PublishedMessage> {
        self.state
            .lock()
            .published
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// While on, IAM Credentials answers 503 to everything.
    pub fn set_outage(&self, on: bool) {
        self.state.lock().outage = on;
    }

    /// Caps the lifetime of tokens issued from now on (`None`: 1 hour).
    pub fn set_token_lifetime(&self, cap: Option<Duration>) {
        self.state.lock().lifetime_cap = cap;
    }

    /// The principal a still-valid token was issued to.
    pub fn principal_of(&self, token: &str) -> Option<String> {
        self.state.principal_of(token)
    }

    /// What the emulator remembers about a token it issued (expired or
    /// not): for whom, and until when.
    pub fn issued(&self, token: &str) -> Option<IssuedToken> {
        let inner = self.state.lock();
        let issued = inner.issued.get(token)?;
        Some(IssuedToken {
            principal: issued.principal.clone(),
            expire_time: issued.expires,
            boundary: issued.boundary.clone(),
        })
    }

    /// Every downscoped token STS issued (expired or not).
    pub fn downscoped_tokens(&self) -> Vec<DownscopedToken> {
        let inner = self.state.lock();
        inner
            .issued
            .iter()
            .filter_map(|(token, i)| {
                Some(DownscopedToken {
                    token: token.clone(),
                    principal: i.principal.clone(),
                    boundary: i.boundary.clone()?,
                })
            })
            .collect()
    }

    /// While on, STS answers 503 to everything.
    pub fn set_sts_outage(&self, on: bool) {
        self.state.lock().sts_outage = on;
    }

    /// Writes a service account key file for `email` into `dir` (its
    /// `token_uri` is Google's; route it here with
    /// [`Emulator::upstream_config`]).
    pub fn write_service_account_key(&self, dir: &Path, email: &str) -> std::io::Result<PathBuf> {
        let kid = key_id(email);
        self.state.lock().keys.insert(kid.clone(), email.to_owned());
        let project = email
            .split_once('@')
            .and_then(|(_, d)| d.split('.').next())
            .unwrap_or("emulator-project");
        let json = serde_json::json!({
            "type": "service_account",
            "project_id": project,
            "private_key_id": kid,
            "private_key": FIXTURE_KEY_PEM,
            "client_email": email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": oauth::TOKEN_URI,
        });
        write_json(dir, &format!("{}-key.json", file_stem(email)), &json)
    }

    /// Writes an `authorized_user` file (a gcloud login) for `user`.
    pub fn write_authorized_user(&self, dir: &Path, user: &str) -> std::io::Result<PathBuf> {
        let client_id = "emulator-client.apps.googleusercontent.com".to_owned();
        let secret = format!("emu-secret-{:016x}", fastrand::u64(..));
        let refresh = format!("1//emu-refresh-{:016x}", fastrand::u64(..));
        self.state.lock().refresh_tokens.insert(
            refresh.clone(),
            (client_id.clone(), secret.clone(), user.to_owned()),
        );
        let json = serde_json::json!({
            "type": "authorized_user",
            "client_id": client_id,
            "client_secret": secret,
            "refresh_token": refresh,
        });
        write_json(dir, &format!("{}-adc.json", file_stem(user)), &json)
    }
}

fn file_stem(email: &str) -> String {
    email
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn write_json(dir: &Path, name: &str, json: &serde_json::Value) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(json).unwrap_or_default())?;
    Ok(path)
}

fn fresh_temp_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "impersonate-proxy-emulator-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

type Reply = Response<Full<Bytes>>;

fn json(status: StatusCode, body: &serde_json::Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    r
}

fn text(status: StatusCode, body: &str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// `{"error":{"code":…,"message":…,"status":…}}`, as Google APIs answer.
fn google_error(code: u16, status: &str, message: &str) -> Reply {
    json(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &serde_json::json!({"error": {"code": code, "message": message, "status": status}}),
    )
}

fn not_found(path: &str) -> Reply {
    google_error(
        404,
        "NOT_FOUND",
        &format!("The emulator has no handler for {path}."),
    )
}

/// Decodes `a=b&c=d` (form encoding: `+` is a space, `%XX` a byte).
fn form_decode(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &[u8]) -> String {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < s.len() => {
                    let hex = std::str::from_utf8(&s[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    body.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let mut it = pair.splitn(2, |b| *b == b'=');
            let k = decode(it.next().unwrap_or_default());
            let v = decode(it.next().unwrap_or_default());
            (k, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_handles_escapes() {
        let f = form_decode(b"grant_type=urn%3Aietf%3Aparams&a+b=c%26d&bad=%zz&end=%4");
        assert_eq!(f[0], ("grant_type".into(), "urn:ietf:params".into()));
        assert_eq!(f[1], ("a b".into(), "c&d".into()));
        assert_eq!(f[2], ("bad".into(), "%zz".into()));
        assert_eq!(f[3], ("end".into(), "%4".into()));
    }

    #[test]
    fn form_round_trips_with_the_client_encoder() {
        let v = "eyJ.x-y_z~/+=&?";
        let enc = crate::google::form_encode(&[("assertion", v)]);
        assert_eq!(
            form_decode(enc.as_bytes()),
            vec![("assertion".into(), v.into())]
        );
    }
}
