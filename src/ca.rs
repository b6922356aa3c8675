//! The certificate authority: `ca init`, loading the CA for `run`, and the
//! per-host leaf certificates (one P-256 key pair for every leaf, one
//! certificate minted per host and cached).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::server::{ClientHello, ResolvesServerCert, StoresServerSessions};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

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
    /// The CA key can be read by users other than its owner.
    #[error("CA key {path} is readable by group or others (mode {mode:o}); anyone who reads it can impersonate Google to this proxy's clients. Fix: chmod 600 {path}")]
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

/// Creates a new CA (ECDSA P-256, ten years) in `dir`: `ca.pem` and
/// `ca-key.pem` (owner-only). Refuses to overwrite unless `force`.
pub fn init(dir: &Path, force: bool) -> Result<(PathBuf, PathBuf), CaError> {
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

/// Refuses a key file that group or others can read.
pub fn check_key_permissions(path: &Path) -> Result<(), CaError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| CaError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CaError::KeyTooOpen {
                path: path.to_owned(),
                mode,
            });
        }
    }
    Ok(())
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
    cache: RwLock<HashMap<String, Arc<MintCell>>>,
    max_cached: usize,
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
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, ca_key)
            .map_err(|e| crypto(format!("{}: not a PEM CA certificate", cert.display()), e))?;
        CertAuthority::from_issuer(issuer)
    }

    fn from_issuer(issuer: Issuer<'static, KeyPair>) -> Result<CertAuthority, CaError> {
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
            sessions: rustls::server::ServerSessionMemoryCache::new(16 * 1024),
            cache: RwLock::new(HashMap::new()),
            max_cached: 50_000,
        })
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
        tracing::debug!(host, "minted leaf certificate");
        crate::ops::metrics::global().cert_minted(self.cached_hosts());
        Ok(Arc::new(cfg))
    }

    /// A leaf certificate for `host`, signed by the CA (DER).
    pub fn leaf_der(&self, host: &str) -> Result<CertificateDer<'static>, CaError> {
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

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ip-ca-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
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
    fn missing_ca_says_how_to_create_it() {
        let dir = tempdir("missing");
        let err = CertAuthority::load(&dir.join("ca.pem"), &dir.join("ca-key.pem")).unwrap_err();
        assert!(err.to_string().contains("ca init"), "{err}");
    }
}
