//! The emulator's throwaway CA (ECDSA P-256) and its server certificate for
//! the Google hosts it stands in for.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CA certificate (PEM) and a rustls server config presenting a leaf it
/// signed, with ALPN `h2` and `http/1.1`.
pub(crate) struct ServerTls {
    pub(crate) ca_pem: String,
    pub(crate) config: Arc<rustls::ServerConfig>,
}

pub(crate) fn server_tls(hosts: &[&str]) -> Result<ServerTls, String> {
    let e = |what: &str, err: &dyn std::fmt::Display| format!("{what}: {err}");
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|x| e("CA key", &x))?;
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        "impersonate-proxy emulator CA (throwaway)",
    );
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(|x| e("CA certificate", &x))?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|x| e("leaf key", &x))?;
    let names: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
    let mut leaf = CertificateParams::new(names).map_err(|x| e("leaf names", &x))?;
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::CommonName, "googleapis.com emulator");
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .map_err(|x| e("leaf certificate", &x))?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(crate::net::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|x| e("TLS versions", &x))?
        .with_no_client_auth()
        .with_single_cert(vec![leaf_cert.der().clone(), ca_cert.der().clone()], key)
        .map_err(|x| e("TLS server config", &x))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerTls {
        ca_pem: ca_cert.pem(),
        config: Arc::new(config),
    })
}
