//! The one rustls crypto provider used everywhere, and loading of PEM
//! certificates for trust stores.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The crypto provider for every TLS session the proxy makes or accepts,
/// and for signing (leaf certificates, JWT assertions).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A PEM file that could not be used as a trust anchor.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PemError {
    /// The file.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let err = |message: String| PemError {
        path: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err("holds no `BEGIN CERTIFICATE` block".into()));
    }
    Ok(certs)
}

/// The web PKI roots plus every certificate in `extra` (e.g. a private CA
/// or the emulator's CA).
pub fn root_store(extra: &[impl AsRef<Path>]) -> Result<RootCertStore, PemError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for path in extra {
        let path = path.as_ref();
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|e| PemError {
                path: path.display().to_string(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
    }
    Ok(roots)
}
