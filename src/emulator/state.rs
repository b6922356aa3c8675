//! What the emulator remembers: who may mint for whom, which keys and
//! logins exist, every token it issued (principal, expiry), call counters,
//! the objects it stores and the messages published to it, every data call
//! (who, what, how many bytes), and injected failures.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{DataCall, PublishedMessage};
use crate::google::jwt::{unix, SigningKey};
use crate::google::sts::AccessBoundary;

/// The one RSA key every emulated service account key file holds, and that
/// signs the emulator's ID tokens. A public test fixture committed on
/// purpose (ring cannot generate RSA keys); it is not a secret and grants
/// nothing outside the emulator.
pub(crate) const FIXTURE_KEY_PEM: &str = include_str!("emulator-sa-key.pem");

/// The longest token lifetime IAM grants without the org policy.
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(3600);

/// An object in the emulated Cloud Storage.
#[derive(Debug, Clone)]
pub(crate) struct Object {
    pub(crate) data: Bytes,
    pub(crate) content_type: String,
    pub(crate) generation: u64,
    pub(crate) crc32c: u32,
    pub(crate) created: SystemTime,
}

/// A resumable upload in progress: where it goes, and the bytes so far.
#[derive(Debug, Clone)]
pub(crate) struct Resumable {
    pub(crate) bucket: String,
    pub(crate) name: String,
    pub(crate) content_type: String,
    pub(crate) received: Vec<u8>,
}

/// A token the emulator issued.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub(crate) principal: String,
    pub(crate) expires: SystemTime,
    /// The Credential Access Boundary of a token STS downscoped.
    pub(crate) boundary: Option<AccessBoundary>,
}

pub(crate) struct Inner {
    /// (caller, target): caller holds Token Creator on target.
    pub(crate) token_creators: HashSet<(String, String)>,
    /// kid → service account email, for keys written by the emulator.
    pub(crate) keys: HashMap<String, String>,
    /// Service accounts a Workspace admin allowed domain-wide delegation.
    pub(crate) domain_wide_delegation: HashSet<String>,
    /// refresh token → (client_id, client_secret, user email).
    pub(crate) refresh_tokens: HashMap<String, (String, String, String)>,
    pub(crate) issued: HashMap<String, Issued>,
    pub(crate) counters: BTreeMap<(String, String), u64>,
    pub(crate) outage: bool,
    /// While set, STS answers 503 to everything.
    pub(crate) sts_outage: bool,
    pub(crate) lifetime_cap: Option<Duration>,
    /// The metadata server's cached token per scope list.
    pub(crate) metadata_tokens: HashMap<String, (String, SystemTime, Duration)>,
    /// (bucket, object name) → object.
    pub(crate) objects: BTreeMap<(String, String), Object>,
    /// upload_id → resumable upload session.
    pub(crate) uploads: HashMap<String, Resumable>,
    /// Every upload, download and publish, in order.
    pub(crate) data_calls: Vec<DataCall>,
    /// (topic, message), in the order they were published.
    pub(crate) published: Vec<(String, PublishedMessage)>,
    /// The last serial number handed out: object generations, message ids.
    pub(crate) serial: u64,
}

pub(crate) struct State {
    pub(crate) key: SigningKey,
    /// Each account's Google-managed key (`signBlob`, `signJwt`).
    pub(crate) sign_keys: super::keys::Keys,
    pub(crate) public_key: Vec<u8>,
    pub(crate) metadata_account: String,
    inner: Mutex<Inner>,
}

impl State {
    pub(crate) fn new(
        metadata_account: String,
        lifetime_cap: Option<Duration>,
    ) -> Result<State, String> {
        let key = SigningKey::from_pem(FIXTURE_KEY_PEM, "emulator-id-token")?;
        Ok(State {
            public_key: key.public_key_der(),
            key,
            sign_keys: super::keys::Keys::load()?,
            metadata_account,
            inner: Mutex::new(Inner {
                token_creators: HashSet::new(),
                keys: HashMap::new(),
                domain_wide_delegation: HashSet::new(),
                refresh_tokens: HashMap::new(),
                issued: HashMap::new(),
                counters: BTreeMap::new(),
                outage: false,
                sts_outage: false,
                lifetime_cap,
                metadata_tokens: HashMap::new(),
                objects: BTreeMap::new(),
                uploads: HashMap::new(),
                data_calls: Vec::new(),
                published: Vec::new(),
                serial: 1_700_000_000_000_000,
            }),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn count(&self, endpoint: &str, target: &str) {
        *self
            .lock()
            .counters
            .entry((endpoint.to_owned(), target.to_owned()))
            .or_default() += 1;
    }

    /// Records an upload, download or publish.
    pub(crate) fn record(&self, call: DataCall) {
        self.lock().data_calls.push(call);
    }

    /// Stores `data` as `bucket/name` (replacing any earlier generation)
    /// and returns the stored object.
    pub(crate) fn put_object(
        &self,
        bucket: &str,
        name: &str,
        content_type: &str,
        data: Bytes,
    ) -> Object {
        let crc32c = super::crc32c::crc32c(&data);
        let mut inner = self.lock();
        inner.serial += 1;
        let object = Object {
            crc32c,
            data,
            content_type: content_type.to_owned(),
            generation: inner.serial,
            created: SystemTime::now(),
        };
        inner
            .objects
            .insert((bucket.to_owned(), name.to_owned()), object.clone());
        object
    }

    /// Issues an opaque access token for `principal`, valid for `lifetime`
    /// (capped by the configured lifetime).
    pub(crate) fn issue_access_token(
        &self,
        principal: &str,
        lifetime: Duration,
    ) -> (String, SystemTime) {
        let mut inner = self.lock();
        let lifetime = inner.lifetime_cap.map_or(lifetime, |cap| lifetime.min(cap));
        let token = format!(
            "ya29.emu-{:016x}{:016x}",
            fastrand::u64(..),
            fastrand::u64(..)
        );
        let expires = SystemTime::now() + lifetime;
        inner.issued.insert(
            token.clone(),
            Issued {
                principal: principal.to_owned(),
                expires,
                boundary: None,
            },
        );
        (token, expires)
    }

    /// Issues a downscoped access token for `principal`, limited to
    /// `boundary`, expiring at `expires` (its subject's expiry).
    pub(crate) fn issue_downscoped(
        &self,
        principal: &str,
        expires: SystemTime,
        boundary: AccessBoundary,
    ) -> (String, SystemTime) {
        let token = format!(
            "ya29.emu-downscoped-{:016x}{:016x}",
            fastrand::u64(..),
            fastrand::u64(..)
        );
        self.lock().issued.insert(
            token.clone(),
            Issued {
                principal: principal.to_owned(),
                expires,
                boundary: Some(boundary),
            },
        );
        (token, expires)
    }

    /// The boundary of a still-valid downscoped token.
    pub(crate) fn boundary_of(&self, token: &str) -> Option<AccessBoundary> {
        let inner = self.lock();
        let issued = inner.issued.get(token)?;
        if issued.expires > SystemTime::now() {
            issued.boundary.clone()
        } else {
            None
        }
    }

    /// Issues a signed ID token (RS256 JWT) for `principal`.
    pub(crate) fn issue_id_token(&self, principal: &str, audience: &str) -> Result<String, String> {
        let now = SystemTime::now();
        let lifetime = self
            .lock()
            .lifetime_cap
            .map_or(MAX_LIFETIME, |c| c.min(MAX_LIFETIME));
        let iat = unix(now);
        let token = self.key.sign(&serde_json::json!({
            "iss": "https://accounts.google.com",
            "aud": audience,
            "azp": principal,
            "sub": principal,
            "email": principal,
            "email_verified": true,
            "iat": iat,
            "exp": iat + lifetime.as_secs().max(1),
        }))?;
        self.lock().issued.insert(
            token.clone(),
            Issued {
                principal: principal.to_owned(),
                expires: now + lifetime,
                boundary: None,
            },
        );
        Ok(token)
    }

    /// The principal a still-valid token was issued to.
    pub(crate) fn principal_of(&self, token: &str) -> Option<String> {
        let inner = self.lock();
        let issued = inner.issued.get(token)?;
        (issued.expires > SystemTime::now()).then(|| issued.principal.clone())
    }

    /// Whether every hop of `chain` (caller, delegates…, target) holds
    /// Token Creator on the next.
    pub(crate) fn chain_allowed(&self, chain: &[&str]) -> bool {
        let inner = self.lock();
        chain.windows(2).all(|w| {
            inner
                .token_creators
                .contains(&(w[0].to_owned(), w[1].to_owned()))
        })
    }
}

/// The key id the emulator gives `email`'s key: a stable digest.
pub(crate) fn key_id(email: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, email.as_bytes());
    d.as_ref()[..20]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
