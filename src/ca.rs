//! The certificate authority: `ca init`, loading the CA for `run`, and the
//! per-host leaf certificates (one P-256 key pair for every leaf, one
//! certificate minted per host and cached).
//!
//! `ca init` writes X.509 name constraints into the CA: it may sign only
//! names under the permitted domains, and no IP addresses, so a stolen CA
//! key cannot mint a certificate that its trusting clients accept for any
//! other site. The proxy reads the constraints back when it loads the CA
//! and refuses to mint a leaf they do not cover, saying how to fix it.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::server::{ClientHello, ResolvesServerCert, StoresServerSessions};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::net::{is_dns_name, normalize_host, HostPattern};

/// The CA could not be created or loaded, or a leaf could not be minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The configured CA files do not exist.
    #[error("CA certificate {cert} or key {key} not found; create them with `impersonate-proxy ca init --dir {dir}` (or point [ca] cert/key at an existing CA)")]
    Missing {
        /// The certificate path.
        cert: PathBuf,
        /// The key path.
        key: PathBuf,
        /// The directory `ca init` should write to.
        dir: PathBuf,
    },
    /// The CA key can be read by users other than its owner (a root-owned
    /// key may also be read by its group).
    #[error("CA key {path} is readable by group or others (mode {mode:o}); anyone who reads it can impersonate Google to this proxy's clients. Fix: chmod 600 {path} (a key owned by root may be 640: readable by the group root gave it)")]
    KeyTooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// `ca init` would overwrite an existing CA.
    #[error("{path} already exists; pass --force to replace the CA (clients trusting the old one must then trust the new one)")]
    Exists {
        /// The file that exists.
        path: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A `--permit` name is not a domain name.
    #[error("--permit `{name}` is not a domain name; give one like googleapis.com (it permits that name and every name under it)")]
    BadPermit {
        /// The name as given.
        name: String,
    },
    /// The CA's name constraints do not cover a host the proxy was asked
    /// to intercept.
    #[error("cannot intercept {host}: the CA's name constraints let it sign only {permitted}, so clients would reject a certificate for {host}. Fix: create a CA that permits it (`impersonate-proxy ca init --force {fix}`) and trust the new one, or stop intercepting {host}")]
    OutsideConstraints {
        /// The host.
        host: String,
        /// What the CA may sign, for people.
        permitted: String,
        /// The `--permit` arguments that would cover it.
        fix: String,
    },
    /// A certificate or key could not be parsed or generated.
    #[error("{what}: {message}")]
    Crypto {
        /// What was being done.
        what: String,
        /// The library's message.
        message: String,
    },
}

fn crypto(what: impl Into<String>, e: impl fmt::Display) -> CaError {
    CaError::Crypto {
        what: what.into(),
        message: e.to_string(),
    }
}

/// File names `ca init` writes inside its directory.
pub const CERT_FILE: &str = "ca.pem";
/// The key file name, written with mode 0600.
pub const KEY_FILE: &str = "ca-key.pem";

/// The domains a CA from `ca init` may sign for when no `--permit` is
/// given: Google API hosts, and Cloud Run and Cloud Functions, where
/// ID-token routes send requests. Each covers itself and every name under
/// it (`googleapis.com` covers `storage.googleapis.com`).
pub const DEFAULT_PERMITTED: &[&str] = &["googleapis.com", "run.app", "cloudfunctions.net"];

/// Creates a new CA (ECDSA P-256, ten years) in `dir`: `ca.pem` and
/// `ca-key.pem` (owner-only), constrained to [`DEFAULT_PERMITTED`].
/// Refuses to overwrite unless `force`.
pub fn init(dir: &Path, force: bool) -> Result<(PathBuf, PathBuf), CaError> {
    init_permitting(dir, force, DEFAULT_PERMITTED)
}

/// [`init`] with the domains the CA may sign for (`ca init --permit`):
/// each a domain name, covering itself and every name under it; a
/// leading `*.` means the same. IP addresses are never permitted.
pub fn init_permitting<S: AsRef<str>>(
    dir: &Path,
    force: bool,
    permitted: &[S],
) -> Result<(PathBuf, PathBuf), CaError> {
    let mut domains = Vec::new();
    for raw in permitted {
        let raw = raw.as_ref();
        let name = normalize_host(raw.strip_prefix("*.").unwrap_or(raw));
        if !is_dns_name(&name) {
            return Err(CaError::BadPermit { name: raw.into() });
        }
        if !domains.contains(&name) {
            domains.push(name);
        }
    }
    if domains.is_empty() {
        return Err(CaError::BadPermit {
            name: String::new(),
        });
    }
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if !force {
        for p in [&cert_path, &key_path] {
            if p.exists() {
                return Err(CaError::Exists { path: p.clone() });
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| crypto("generating the CA key", e))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| crypto("CA parameters", e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "impersonate-proxy");
    dn.push(
        DnType::CommonName,
        format!("impersonate-proxy local CA {}", now_unix()),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(now_unix());
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + Duration::from_secs(10 * 365 * 86400);
    // Critical, as RFC 5280 requires. A permitted DNS subtree leaves IP
    // names unconstrained, so every IP address is excluded explicitly.
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: domains.into_iter().map(GeneralSubtree::DnsName).collect(),
        excluded_subtrees: vec![
            GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
            GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
        ],
    });
    let cert = params
        .self_signed(&key)
        .map_err(|e| crypto("self-signing the CA", e))?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.pem()).map_err(|source| CaError::Io {
        path: cert_path.clone(),
        source,
    })?;
    Ok((cert_path, key_path))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes a file that only its owner can read, created with that mode so
/// that it is never briefly readable by others.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    use std::io::Write;
    let io = |source| CaError::Io {
        path: path.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Refuses a key file that group or others can read, except the group of
/// a root-owned key ([`crate::config::secret_mode_ok`]: a Kubernetes
/// Secret mounted for a non-root user).
pub fn check_key_permissions(path: &Path) -> Result<(), CaError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(path).map_err(|source| CaError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if !crate::config::secret_mode_ok(mode, meta.uid(), crate::config::process_uid()) {
            return Err(CaError::KeyTooOpen {
                path: path.to_owned(),
                mode,
            });
        }
    }
    Ok(())
}

/// What a CA may sign, from its name-constraints extension (RFC 5280
/// 4.2.1.10): DNS names and IP addresses, each permitted (if the list is
/// not empty, a name must be under one entry) and excluded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameRules {
    permitted_dns: Vec<String>,
    excluded_dns: Vec<String>,
    permitted_ip: Vec<ipnet::IpNet>,
    excluded_ip: Vec<ipnet::IpNet>,
}

impl NameRules {
    /// Reads the name constraints of a CA certificate (none: no rules).
    pub fn from_ca_der(der: &[u8]) -> Result<NameRules, CaError> {
        use x509_parser::extensions::GeneralName;
        let (_, x509) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| crypto("reading the CA certificate", e))?;
        let nc = x509
            .name_constraints()
            .map_err(|e| crypto("reading the CA's name constraints", e))?;
        let mut rules = NameRules::default();
        let Some(nc) = nc else {
            return Ok(rules);
        };
        let subtrees = [
            (&nc.value.permitted_subtrees, true),
            (&nc.value.excluded_subtrees, false),
        ];
        for (list, permitted) in subtrees {
            for subtree in list.iter().flatten() {
                match &subtree.base {
                    GeneralName::DNSName(d) => {
                        let d = d.to_ascii_lowercase();
                        if permitted {
                            rules.permitted_dns.push(d);
                        } else {
                            rules.excluded_dns.push(d);
                        }
                    }
                    GeneralName::IPAddress(b) => {
                        let Some(net) = ip_subtree(b) else {
                            return Err(crypto(
                                "reading the CA's name constraints",
                                "an IP subtree that is not an address and a mask",
                            ));
                        };
                        if permitted {
                            rules.permitted_ip.push(net);
                        } else {
                            rules.excluded_ip.push(net);
                        }
                    }
                    // Email, URI and directory names never appear in a leaf
                    // the proxy mints.
                    _ => {}
                }
            }
        }
        Ok(rules)
    }

    /// Whether the CA has any name constraints.
    pub fn is_constrained(&self) -> bool {
        *self != NameRules::default()
    }

    /// Whether a certificate for `host` (normalized name or IP address)
    /// is within the constraints.
    pub fn permits(&self, host: &str) -> bool {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            let inside = |nets: &[ipnet::IpNet]| nets.iter().any(|n| n.contains(&ip));
            return (self.permitted_ip.is_empty() || inside(&self.permitted_ip))
                && !inside(&self.excluded_ip);
        }
        let inside = |subtrees: &[String]| subtrees.iter().any(|c| dns_within(host, c));
        (self.permitted_dns.is_empty() || inside(&self.permitted_dns))
            && !inside(&self.excluded_dns)
    }

    /// Whether every name `pattern` matches is permitted (excluded
    /// subtrees under a wildcard are not looked at).
    pub fn permits_pattern(&self, pattern: &HostPattern) -> bool {
        match pattern {
            HostPattern::Exact(h) => self.permits(h),
            // `*.x` is within a subtree when `x` is the subtree or under it.
            HostPattern::Suffix(sfx) => {
                let under = sfx.trim_start_matches('.');
                self.permitted_dns.is_empty()
                    || self.permitted_dns.iter().any(|c| {
                        let c = c.trim_start_matches('.');
                        under == c || dns_within(under, &format!(".{c}"))
                    })
            }
        }
    }

    /// What the CA may sign, for messages.
    pub fn describe(&self) -> String {
        let mut text = if self.permitted_dns.is_empty() {
            "any name".to_owned()
        } else {
            format!("names under {}", self.permitted_dns.join(", "))
        };
        if !self.excluded_dns.is_empty() {
            text += &format!(" except under {}", self.excluded_dns.join(", "));
        }
        let excludes_all = |v4: bool| {
            self.excluded_ip
                .iter()
                .any(|n| n.prefix_len() == 0 && matches!(n, ipnet::IpNet::V4(_)) == v4)
        };
        if excludes_all(true) && excludes_all(false) {
            text += "; no IP addresses";
        } else if !self.permitted_ip.is_empty() || !self.excluded_ip.is_empty() {
            text += "; IP addresses only within its IP subtrees";
        }
        text
    }

    /// The `ca init` arguments that permit what this CA permits plus `host`.
    fn fix_for(&self, host: &str) -> String {
        let mut names: Vec<&str> = self.permitted_dns.iter().map(String::as_str).collect();
        if host.parse::<std::net::IpAddr>().is_err() {
            names.push(host);
        }
        names
            .iter()
            .map(|n| format!("--permit {}", n.trim_start_matches('.')))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// RFC 5280 DNS name matching: `c` permits itself and every name under
/// it; a leading `.` means only names under it; empty means every name.
fn dns_within(host: &str, c: &str) -> bool {
    let host = host.to_ascii_lowercase();
    if c.is_empty() {
        return true;
    }
    if c.starts_with('.') {
        return host.ends_with(c);
    }
    host == c || (host.ends_with(c) && host[..host.len() - c.len()].ends_with('.'))
}

/// An IP subtree: an address followed by a mask of the same length.
fn ip_subtree(b: &[u8]) -> Option<ipnet::IpNet> {
    let (addr, mask): (std::net::IpAddr, std::net::IpAddr) = match b.len() {
        8 => (
            <[u8; 4]>::try_from(&b[..4]).ok()?.into(),
            <[u8; 4]>::try_from(&b[4..]).ok()?.into(),
        ),
        32 => (
            <[u8; 16]>::try_from(&b[..16]).ok()?.into(),
            <[u8; 16]>::try_from(&b[16..]).ok()?.into(),
        ),
        _ => return None,
    };
    ipnet::IpNet::with_netmask(addr, mask).ok()
}

/// One host's TLS config, minted at most once (the error text if the mint
/// failed).
type MintCell = OnceLock<Result<Arc<ServerConfig>, String>>;

/// A loaded CA and the cache of leaf certificates it has minted.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    leaf_key: KeyPair,
    leaf_signer: Arc<dyn SigningKey>,
    sessions: Arc<dyn StoresServerSessions>,
    tickets: Arc<dyn rustls::server::ProducesTickets>,
    cache: RwLock<HashMap<String, Arc<MintCell>>>,
    max_cached: usize,
    names: NameRules,
}

impl fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAuthority")
            .field("cached_hosts", &self.cached_hosts())
            .finish_non_exhaustive()
    }
}

impl CertAuthority {
    /// Loads the CA from `cert` and `key`, after checking that the key is
    /// owner-only; generates the one leaf key pair used for every host.
    pub fn load(cert: &Path, key: &Path) -> Result<CertAuthority, CaError> {
        if !cert.exists() || !key.exists() {
            let dir = key
                .parent()
                .map(Path::to_owned)
                .unwrap_or_else(|| PathBuf::from("certs"));
            return Err(CaError::Missing {
                cert: cert.to_owned(),
                key: key.to_owned(),
                dir,
            });
        }
        check_key_permissions(key)?;
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| CaError::Io {
                path: p.to_owned(),
                source,
            })
        };
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let ca_key = KeyPair::from_pem(&key_pem).map_err(|e| {
            crypto(
                format!("{}: not a PKCS#8 PEM private key", key.display()),
                e,
            )
        })?;
        let not_a_ca = |e: &dyn fmt::Display| {
            crypto(format!("{}: not a PEM CA certificate", cert.display()), e)
        };
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, ca_key).map_err(|e| not_a_ca(&e))?;
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e: rustls_pki_types::pem::Error| not_a_ca(&e))?;
        let names = NameRules::from_ca_der(CertificateDer::as_ref(&der))?;
        CertAuthority::from_issuer(issuer, names)
    }

    fn from_issuer(
        issuer: Issuer<'static, KeyPair>,
        names: NameRules,
    ) -> Result<CertAuthority, CaError> {
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| crypto("generating the leaf key", e))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let leaf_signer = crate::net::tls::provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| crypto("loading the leaf key", e))?;
        Ok(CertAuthority {
            issuer,
            leaf_key,
            leaf_signer,
            // TLS 1.3 resumption is stateless: the session travels in the
            // ticket, encrypted under a key that rotates every 6 hours, so a
            // fleet's thousands of clients cost the proxy no memory for it
            // (a server-side cache held 480 bytes per connection and a 16 K
            // entry table). The cache stays for TLS 1.2 session IDs.
            sessions: rustls::server::ServerSessionMemoryCache::new(1024),
            tickets: rustls::crypto::ring::Ticketer::new()
                .map_err(|e| crypto("the TLS session ticket key", e))?,
            cache: RwLock::new(HashMap::new()),
            max_cached: 50_000,
            names,
        })
    }

    /// What this CA may sign (its name constraints).
    pub fn names(&self) -> &NameRules {
        &self.names
    }

    /// How many hosts have a cached certificate.
    pub fn cached_hosts(&self) -> usize {
        self.cache.read().map(|c| c.len()).unwrap_or(0)
    }

    /// The TLS server config for `host` (normalized), minting its leaf
    /// certificate on first use. Concurrent first calls for one host mint
    /// once; calls for other hosts are not held up by a mint.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let cell = {
            let found = self.cache.read().ok().and_then(|c| c.get(host).cloned());
            match found {
                Some(cell) => cell,
                None => {
                    let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
                    if cache.len() >= self.max_cached && !cache.contains_key(host) {
                        // Bounded memory under a flood of distinct names: drop
                        // an arbitrary entry; it is re-minted if used again.
                        if let Some(k) = cache.keys().next().cloned() {
                            cache.remove(&k);
                        }
                    }
                    cache.entry(host.to_owned()).or_default().clone()
                }
            }
        };
        cell.get_or_init(|| self.mint(host).map_err(|e| e.to_string()))
            .clone()
            .map_err(|message| CaError::Crypto {
                what: format!("minting a certificate for {host}"),
                message,
            })
    }

    fn mint(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let der = self.leaf_der(host)?;
        let key = Arc::new(CertifiedKey::new(vec![der], self.leaf_signer.clone()));
        let mut cfg = ServerConfig::builder_with_provider(crate::net::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| crypto("TLS versions", e))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FixedCert(key)));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg.session_storage = self.sessions.clone();
        cfg.ticketer = self.tickets.clone();
        tracing::debug!(host, "minted leaf certificate");
        crate::ops::metrics::global().cert_minted(self.cached_hosts());
        Ok(Arc::new(cfg))
    }

    /// A leaf certificate for `host`, signed by the CA (DER).
    /// Refused for a host outside the CA's name constraints: clients would
    /// reject the certificate anyway, and the error says how to fix it.
    pub fn leaf_der(&self, host: &str) -> Result<CertificateDer<'static>, CaError> {
        if !self.names.permits(host) {
            return Err(CaError::OutsideConstraints {
                host: host.to_owned(),
                permitted: self.names.describe(),
                fix: self.names.fix_for(host),
            });
        }
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.try_into()
                    .map_err(|e| crypto(format!("`{host}` as a certificate name"), e))?,
            ),
        };
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![san];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(now_unix());
        params.not_before = now - Duration::from_secs(86400);
        params.not_after = now + Duration::from_secs(90 * 86400);
        let mut serial = [0u8; 16];
        fastrand::fill(&mut serial);
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(|e| crypto(format!("signing a certificate for {host}"), e))?;
        Ok(cert.der().clone())
    }
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> crate::test_dir::TempDir {
        crate::test_dir::TempDir::new(&format!("ca-{name}"))
    }

    #[test]
    fn init_writes_owner_only_key_and_refuses_overwrite() {
        let dir = tempdir("init");
        let (cert, key) = init(&dir, false).unwrap();
        check_key_permissions(&key).unwrap();
        assert!(matches!(init(&dir, false), Err(CaError::Exists { .. })));
        init(&dir, true).unwrap();
        let ca = CertAuthority::load(&cert, &key).unwrap();
        let a = ca.server_config("storage.googleapis.com").unwrap();
        let b = ca.server_config("storage.googleapis.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "second lookup must hit the cache");
        assert_eq!(ca.cached_hosts(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir("perm");
        let (cert, key) = init(&dir, false).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = CertAuthority::load(&cert, &key).unwrap_err();
        assert!(matches!(err, CaError::KeyTooOpen { .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn init_constrains_the_ca_to_the_permitted_domains_and_no_ip() {
        let dir = tempdir("constraints");
        let (cert, key) = init(&dir, false).unwrap();
        let ca = CertAuthority::load(&cert, &key).unwrap();
        let names = ca.names();
        assert!(names.is_constrained());
        for ok in [
            "storage.googleapis.com",
            "googleapis.com",
            "a.b.mtls.googleapis.com",
            "hello-abc-uc.a.run.app",
            "region-project.cloudfunctions.net",
        ] {
            assert!(names.permits(ok), "{ok}");
        }
        for no in [
            "evil.example",
            "googleapis.com.evil.example",
            "evilgoogleapis.com",
            "127.0.0.1",
            "::1",
        ] {
            assert!(!names.permits(no), "{no}");
        }
        assert_eq!(
            names.describe(),
            "names under googleapis.com, run.app, cloudfunctions.net; no IP addresses"
        );
        assert!(names.permits_pattern(&HostPattern::parse("*.googleapis.com").unwrap()));
        assert!(names.permits_pattern(&HostPattern::parse("*.a.run.app").unwrap()));
        assert!(!names.permits_pattern(&HostPattern::parse("*.com").unwrap()));
        assert!(!names.permits_pattern(&HostPattern::parse("*.example.com").unwrap()));
        // The proxy refuses the leaf, with the command that fixes it.
        let err = ca
            .server_config("api.example.test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("name constraints"), "{err}");
        assert!(
            err.contains("ca init --force --permit googleapis.com --permit run.app --permit cloudfunctions.net --permit api.example.test"),
            "{err}"
        );
        assert!(ca.server_config("storage.googleapis.com").is_ok());
    }

    #[test]
    fn permit_replaces_the_default_domains() {
        let dir = tempdir("permit");
        let (cert, key) =
            init_permitting(&dir, false, &["*.Example.TEST.", "corp.internal"]).unwrap();
        let ca = CertAuthority::load(&cert, &key).unwrap();
        assert!(ca.names().permits("api.example.test"));
        assert!(ca.names().permits("x.corp.internal"));
        assert!(!ca.names().permits("storage.googleapis.com"));
        for bad in ["bad name", "127.0.0.1", "*", "a..b"] {
            let err = init_permitting(&dir, true, &[bad]).unwrap_err();
            assert!(matches!(err, CaError::BadPermit { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn a_ca_without_constraints_permits_every_name() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let names = NameRules::from_ca_der(&der).unwrap();
        assert!(!names.is_constrained());
        assert!(names.permits("anything.example"));
        assert!(names.permits("10.0.0.1"));
        assert!(names.permits_pattern(&HostPattern::parse("*.com").unwrap()));
    }

    #[test]
    fn dns_subtrees_match_whole_labels() {
        assert!(dns_within("a.example.com", "example.com"));
        assert!(dns_within("example.com", "example.com"));
        assert!(!dns_within("badexample.com", "example.com"));
        assert!(dns_within("a.example.com", ".example.com"));
        assert!(!dns_within("example.com", ".example.com"));
        assert!(dns_within("anything", ""));
    }

    #[test]
    fn missing_ca_says_how_to_create_it() {
        let dir = tempdir("missing");
        let err = CertAuthority::load(&dir.join("ca.pem"), &dir.join("ca-key.pem")).unwrap_err();
        assert!(err.to_string().contains("ca init"), "{err}");
    }
}
