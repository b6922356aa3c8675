//! Who may use the proxy: `[[client]]` entries matched on the source
//! address and/or `Proxy-Authorization: Basic`. A request is attributed to
//! the first client it satisfies; with entries configured, a request that
//! satisfies none gets 407.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use http::HeaderValue;
use ipnet::IpNet;
use ring::digest::{digest, Digest, SHA256};

use crate::config::Config;
use crate::net::{parse_cidr, unmap};
use crate::ops::audit::IdentifiedBy;

/// A client entry could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The password file could not be read.
    #[error("client \"{client}\": password_file {path}: {source}")]
    Read {
        /// The client's name.
        client: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The password file is readable by group or others.
    #[error("client \"{client}\": password_file {path} is readable by group or others (mode {mode:o}); fix: chmod 600 {path} (a file owned by root may be 640: readable by the group root gave it)")]
    TooOpen {
        /// The client's name.
        client: String,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The password file is empty.
    #[error("client \"{client}\": password_file {path} is empty")]
    Empty {
        /// The client's name.
        client: String,
        /// The file.
        path: PathBuf,
    },
}

/// The identity a request was attributed to.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ClientId {
    /// Index into the `[[client]]` list (what routes match on).
    pub index: u32,
    /// The client's name (audit, metrics).
    pub name: Arc<str>,
    /// The strongest condition the entry sets: what the client proved.
    pub identified_by: IdentifiedBy,
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

struct Client {
    id: ClientId,
    cidrs: Vec<IpNet>,
    /// SHA-256 of `user:password`, compared in constant time.
    basic: Option<Digest>,
    /// URI or DNS SANs, one of which the client certificate must carry.
    cert_san: Vec<Box<str>>,
}

/// The compiled `[[client]]` list.
pub(crate) struct Clients {
    clients: Vec<Client>,
}

impl fmt::Debug for Clients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.clients.iter().map(|c| &c.id))
            .finish()
    }
}

/// Why a request is not attributed to any client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No credentials were sent and none of the source-address entries
    /// matched.
    NoCredentials,
    /// Credentials were sent but match no client (wrong, malformed, or
    /// from an address the client is not allowed at).
    BadCredentials,
    /// The client a connection was opened as is gone from the current
    /// policy, or no longer matches it (a reload changed it).
    Revoked,
}

/// What a client presented to be identified: its `Proxy-Authorization:
/// Basic` as a digest (never the password itself), kept with a tunnel so
/// every request in it is identified again against the current policy.
#[derive(Clone, Default)]
pub(crate) struct Presented {
    /// SHA-256 of a well-formed Basic `user:password`.
    basic: Option<Digest>,
    /// Whether a `Proxy-Authorization` was sent at all (even malformed).
    sent: bool,
    /// The URI and DNS SANs of the client certificate the TLS listener
    /// verified, shared by every request on the connection.
    cert_sans: Option<Arc<[Box<str>]>>,
}

impl Presented {
    /// From a request's `Proxy-Authorization`, if any.
    pub fn from_header(proxy_authorization: Option<&HeaderValue>) -> Presented {
        Presented {
            basic: proxy_authorization
                .and_then(basic_pair)
                .map(|p| digest(&SHA256, &p)),
            sent: proxy_authorization.is_some(),
            cert_sans: None,
        }
    }

    /// The same, with the SANs of the connection's verified client
    /// certificate.
    pub fn with_cert_sans(mut self, sans: Option<Arc<[Box<str>]>>) -> Presented {
        self.cert_sans = sans;
        self
    }
}

impl fmt::Debug for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (self.basic.is_some(), self.sent) {
            (true, _) => "Presented(basic",
            (false, true) => "Presented(malformed",
            (false, false) => "Presented(none",
        })?;
        f.write_str(if self.cert_sans.is_some() {
            ", cert)"
        } else {
            ")"
        })
    }
}

impl Client {
    /// Whether a request from `peer` presenting `presented` is this client.
    fn admits(&self, peer: IpAddr, presented: &Presented) -> bool {
        let addr_ok = self.cidrs.is_empty() || self.cidrs.iter().any(|n| n.contains(&peer));
        let auth_ok = match (&self.basic, &presented.basic) {
            (None, _) => true,
            (Some(want), Some(got)) => same(want, got),
            (Some(_), None) => false,
        };
        let cert_ok = self.cert_san.is_empty()
            || presented.cert_sans.as_ref().is_some_and(|sans| {
                sans.iter()
                    .any(|got| self.cert_san.iter().any(|want| san_matches(want, got)))
            });
        addr_ok && auth_ok && cert_ok
    }
}

impl Clients {
    /// Loads the list, reading (and checking the mode of) password files.
    pub fn load(cfg: &Config) -> Result<Clients, ClientError> {
        let mut clients = Vec::with_capacity(cfg.clients.len());
        for (i, c) in cfg.clients.iter().enumerate() {
            let cidrs = c
                .cidrs
                .iter()
                // Checked by `policy::check` before the clients are loaded.
                .filter_map(|s| parse_cidr(s).ok())
                .collect();
            let basic = match &c.proxy_auth {
                None => None,
                Some(a) => {
                    let password = read_secret(&c.name, &a.password_file)?;
                    let mut pair = Vec::with_capacity(a.user.len() + 1 + password.len());
                    pair.extend_from_slice(a.user.as_bytes());
                    pair.push(b':');
                    pair.extend_from_slice(&password);
                    Some(digest(&SHA256, &pair))
                }
            };
            let identified_by = if !c.cert_san.is_empty() {
                IdentifiedBy::Cert
            } else if basic.is_some() {
                IdentifiedBy::Basic
            } else {
                IdentifiedBy::Cidr
            };
            clients.push(Client {
                id: ClientId {
                    index: u32::try_from(i).expect("fewer than 2^32 clients"),
                    name: c.name.as_str().into(),
                    identified_by,
                },
                cidrs,
                basic,
                cert_san: c.cert_san.iter().map(|s| s.as_str().into()).collect(),
            });
        }
        Ok(Clients { clients })
    }

    /// The first client `peer` with `presented` satisfies. `Ok(None)` when
    /// no clients are configured.
    pub fn identify(
        &self,
        peer: IpAddr,
        presented: &Presented,
    ) -> Result<Option<ClientId>, Refusal> {
        if self.clients.is_empty() {
            return Ok(None);
        }
        let peer = unmap(peer);
        if let Some(c) = self.clients.iter().find(|c| c.admits(peer, presented)) {
            return Ok(Some(c.id.clone()));
        }
        if presented.sent {
            Err(Refusal::BadCredentials)
        } else {
            Err(Refusal::NoCredentials)
        }
    }

    /// The client a request on a connection opened as `prior` is now: the
    /// entry of that name in this (current) list, if it still admits
    /// `peer` with `presented` — by name, so a reordered list cannot hand
    /// one client's routes to another. A connection opened anonymously is
    /// identified afresh.
    pub fn reidentify(
        &self,
        prior: Option<&ClientId>,
        peer: IpAddr,
        presented: &Presented,
    ) -> Result<Option<ClientId>, Refusal> {
        let Some(prior) = prior.filter(|_| !self.clients.is_empty()) else {
            // Anonymous then, or anyone may use the proxy now.
            return self.identify(peer, presented);
        };
        let peer = unmap(peer);
        match self.clients.iter().find(|c| c.id.name == prior.name) {
            // Usually the same entry: a reference-count clone.
            Some(c) if c.admits(peer, presented) => Ok(Some(c.id.clone())),
            _ => Err(Refusal::Revoked),
        }
    }
}

/// Whether a certificate SAN `got` is the configured `want`: a URI (a
/// SPIFFE ID) exactly, a DNS name in any case.
fn san_matches(want: &str, got: &str) -> bool {
    if want.contains(':') {
        want == got
    } else {
        want.eq_ignore_ascii_case(got)
    }
}

/// `user:password` from `Basic base64(...)`, or `None` if malformed.
fn basic_pair(v: &HeaderValue) -> Option<Vec<u8>> {
    let s = v.to_str().ok()?.trim();
    let (scheme, rest) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()
}

/// Constant-time comparison of two SHA-256 digests (equal lengths by
/// construction, so the length leaks nothing).
fn same(a: &Digest, b: &Digest) -> bool {
    let (a, b) = (a.as_ref(), b.as_ref());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a secret file, refusing one that group or others can read (the
/// group of a root-owned file excepted: [`crate::config::secret_mode_ok`]).
/// A trailing newline (as `echo` writes) is not part of the secret.
pub(crate) fn read_secret(client: &str, path: &Path) -> Result<Vec<u8>, ClientError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(path).map_err(|source| ClientError::Read {
            client: client.to_owned(),
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if !crate::config::secret_mode_ok(mode, meta.uid(), crate::config::process_uid()) {
            return Err(ClientError::TooOpen {
                client: client.to_owned(),
                path: path.to_owned(),
                mode,
            });
        }
    }
    let mut bytes = std::fs::read(path).map_err(|source| ClientError::Read {
        client: client.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(ClientError::Empty {
            client: client.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients(toml: &str, dir: &Path) -> Clients {
        let cfg = Config::parse(&dir.join("c.toml"), toml).unwrap();
        Clients::load(&cfg).unwrap()
    }

    fn dir(name: &str) -> crate::test_dir::TempDir {
        crate::test_dir::TempDir::new(&format!("clients-{name}"))
    }

    fn secret(dir: &Path, name: &str, value: &str, mode: u32) {
        let p = dir.join(name);
        std::fs::write(&p, value).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }

    fn basic(user: &str, pass: &str) -> HeaderValue {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        HeaderValue::from_str(&format!("Basic {b}")).unwrap()
    }

    #[test]
    fn first_satisfied_client_wins_by_address_and_password() {
        let d = dir("match");
        secret(&d, "batch.pw", "s3cret\n", 0o600);
        let c = clients(
            r#"
[[client]]
name = "batch"
cidrs = ["10.8.0.0/16"]
proxy_auth = { user = "batch", password_file = "batch.pw" }
[[client]]
name = "office"
cidrs = ["192.168.1.0/24", "::1"]
"#,
            &d,
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let name = |r: Result<Option<ClientId>, Refusal>| r.map(|c| c.map(|c| c.name.to_string()));
        assert_eq!(
            name(c.identify(
                ip("10.8.1.2"),
                &Presented::from_header(Some(&basic("batch", "s3cret")))
            )),
            Ok(Some("batch".into()))
        );
        assert_eq!(
            name(c.identify(
                ip("10.8.1.2"),
                &Presented::from_header(Some(&basic("batch", "wrong")))
            )),
            Err(Refusal::BadCredentials)
        );
        assert_eq!(
            name(c.identify(
                ip("10.9.1.2"),
                &Presented::from_header(Some(&basic("batch", "s3cret")))
            )),
            Err(Refusal::BadCredentials)
        );
        assert_eq!(
            name(c.identify(ip("10.8.1.2"), &Presented::default())),
            Err(Refusal::NoCredentials)
        );
        assert_eq!(
            name(c.identify(ip("192.168.1.7"), &Presented::default())),
            Ok(Some("office".into()))
        );
        assert_eq!(
            name(c.identify(ip("::ffff:192.168.1.7"), &Presented::default())),
            Ok(Some("office".into()))
        );
        let junk = HeaderValue::from_static("Basic !!!not-base64!!!");
        assert_eq!(
            name(c.identify(ip("10.8.1.2"), &Presented::from_header(Some(&junk)))),
            Err(Refusal::BadCredentials)
        );
    }

    #[test]
    fn a_connection_is_reidentified_by_name_against_the_current_list() {
        let d = dir("again");
        let before = clients(
            "[[client]]\nname = \"alice\"\ncidrs = [\"10.1.0.0/16\"]\n[[client]]\nname = \"bob\"\ncidrs = [\"10.2.0.0/16\"]\n",
            &d,
        );
        let bob = before
            .identify("10.2.0.9".parse().unwrap(), &Presented::default())
            .unwrap()
            .unwrap();
        assert_eq!((&*bob.name, bob.index), ("bob", 1));
        // Reordered: bob is now entry 0, alice entry 1.
        let reordered = clients(
            "[[client]]\nname = \"bob\"\ncidrs = [\"10.2.0.0/16\"]\n[[client]]\nname = \"alice\"\ncidrs = [\"10.1.0.0/16\"]\n",
            &d,
        );
        let again = reordered
            .reidentify(
                Some(&bob),
                "10.2.0.9".parse().unwrap(),
                &Presented::default(),
            )
            .unwrap()
            .unwrap();
        assert_eq!((&*again.name, again.index), ("bob", 0));
        // Gone, or no longer matching: revoked.
        let gone = clients(
            "[[client]]\nname = \"alice\"\ncidrs = [\"10.1.0.0/16\"]\n",
            &d,
        );
        assert_eq!(
            gone.reidentify(
                Some(&bob),
                "10.2.0.9".parse().unwrap(),
                &Presented::default()
            ),
            Err(Refusal::Revoked)
        );
        let moved = clients(
            "[[client]]\nname = \"bob\"\ncidrs = [\"10.3.0.0/16\"]\n",
            &d,
        );
        assert_eq!(
            moved.reidentify(
                Some(&bob),
                "10.2.0.9".parse().unwrap(),
                &Presented::default()
            ),
            Err(Refusal::Revoked)
        );
    }

    #[test]
    fn cert_san_needs_a_verified_certificate_naming_it_and_every_other_condition() {
        let d = dir("cert");
        let c = clients(
            r#"
[proxy]
tls_listen = "127.0.0.1:8443"
[proxy.tls]
cert = "c.pem"
key = "k.pem"
client_ca = "ca.pem"
[[client]]
name = "batch"
cidrs = ["10.8.0.0/16"]
cert_san = ["spiffe://corp/ns/batch/sa/runner", "Batch.corp.internal"]
[[client]]
name = "office"
cidrs = ["192.168.1.0/24"]
"#,
            &d,
        );
        let sans = |list: &[&str]| {
            Presented::default()
                .with_cert_sans(Some(list.iter().map(|s| Box::<str>::from(*s)).collect()))
        };
        let who = |ip: &str, p: &Presented| {
            c.identify(ip.parse().unwrap(), p)
                .map(|c| c.map(|c| (c.name.to_string(), c.identified_by)))
        };
        let batch = Ok(Some(("batch".to_owned(), IdentifiedBy::Cert)));
        assert_eq!(
            who("10.8.0.1", &sans(&["spiffe://corp/ns/batch/sa/runner"])),
            batch
        );
        assert_eq!(
            who("10.8.0.1", &sans(&["x.example", "batch.CORP.internal"])),
            batch
        );
        // A URI is compared exactly; no certificate, or the wrong network: no.
        assert!(who("10.8.0.1", &sans(&["SPIFFE://corp/ns/batch/sa/runner"])).is_err());
        assert!(who("10.8.0.1", &Presented::default()).is_err());
        assert!(who("10.9.0.1", &sans(&["spiffe://corp/ns/batch/sa/runner"])).is_err());
        assert_eq!(
            who("192.168.1.2", &sans(&["spiffe://corp/ns/batch/sa/runner"])),
            Ok(Some(("office".to_owned(), IdentifiedBy::Cidr)))
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_readable_password_file_is_refused() {
        let d = dir("perm");
        secret(&d, "pw", "x", 0o644);
        let cfg = Config::parse(
            &d.join("c.toml"),
            "[[client]]\nname = \"a\"\nproxy_auth = { user = \"a\", password_file = \"pw\" }\n",
        )
        .unwrap();
        let err = Clients::load(&cfg).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
