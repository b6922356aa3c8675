//! Google-managed keys: one RSA key per service account, as IAM keeps for
//! `signBlob` and `signJwt`, with its id and self-signed certificate.
//!
//! ring cannot generate RSA keys, so the keys come from a pool of public
//! test fixtures committed beside this file (`sign-keys.pem`; they grant
//! nothing outside the emulator); an account gets the next unused one on
//! first use (wrapping after eight accounts), so within a test every
//! account signs with a key of its own.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;

/// Eight RSA-2048 PKCS#8 keys: public fixtures, not secrets.
const POOL_PEM: &str = include_str!("sign-keys.pem");

struct PoolKey {
    pem: String,
    key: RsaKeyPair,
}

/// The pool and which account holds which key.
pub(crate) struct Keys {
    pool: Vec<PoolKey>,
    /// email → pool index, in the order accounts were first used.
    assigned: Mutex<HashMap<String, usize>>,
    /// email → the self-signed certificate (PEM) of its key.
    certs: Mutex<HashMap<String, String>>,
}

/// One account's key: its id and where it sits in the pool.
pub(crate) struct AccountKey<'a> {
    pub(crate) kid: String,
    key: &'a PoolKey,
}

impl AccountKey<'_> {
    pub(crate) fn public_der(&self) -> &[u8] {
        self.key.key.public().as_ref()
    }

    /// The modulus and the exponent, big-endian (for a JWK).
    pub(crate) fn public_components(&self) -> (Vec<u8>, Vec<u8>) {
        let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(self.key.key.public());
        (c.n, c.e)
    }

    pub(crate) fn sign(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        let mut sig = vec![0; self.key.key.public().modulus_len()];
        self.key
            .key
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), data, &mut sig)
            .map_err(|_| "RSA signing failed".to_owned())?;
        Ok(sig)
    }
}

impl Keys {
    pub(crate) fn load() -> Result<Keys, String> {
        let mut pool = Vec::new();
        for (i, der) in PrivatePkcs8KeyDer::pem_slice_iter(POOL_PEM.as_bytes()).enumerate() {
            let der = der.map_err(|e| format!("key pool entry {i}: {e}"))?;
            let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
                .map_err(|e| format!("key pool entry {i}: {e}"))?;
            let pem = pem_of(der.secret_pkcs8_der());
            pool.push(PoolKey { pem, key });
        }
        if pool.is_empty() {
            return Err("the key pool is empty".to_owned());
        }
        Ok(Keys {
            pool,
            assigned: Mutex::new(HashMap::new()),
            certs: Mutex::new(HashMap::new()),
        })
    }

    /// `email`'s key, assigned on first use.
    pub(crate) fn of(&self, email: &str) -> AccountKey<'_> {
        let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        let next = assigned.len() % self.pool.len();
        let i = *assigned.entry(email.to_owned()).or_insert(next);
        AccountKey {
            kid: system_kid(email),
            key: &self.pool[i],
        }
    }

    /// The account whose Google-managed key has id `kid`, if any was used.
    pub(crate) fn owner_of(&self, kid: &str) -> Option<String> {
        let assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        assigned.keys().find(|e| system_kid(e) == kid).cloned()
    }

    pub(crate) fn cert(&self, email: &str) -> Result<String, String> {
        if let Some(c) = self
            .certs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(email)
        {
            return Ok(c.clone());
        }
        let key = self.of(email);
        let pair = rcgen::KeyPair::from_pem_and_sign_algo(&key.key.pem, &rcgen::PKCS_RSA_SHA256)
            .map_err(|e| format!("loading {email}'s key: {e}"))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, email);
        let cert = params
            .self_signed(&pair)
            .map_err(|e| format!("certificate for {email}: {e}"))?;
        let pem = cert.pem();
        self.certs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(email.to_owned(), pem.clone());
        Ok(pem)
    }
}

fn pem_of(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// The id of `email`'s Google-managed key (distinct from its key files'):
/// 40 hex digits, like Google's.
fn system_kid(email: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("google-managed:{email}").as_bytes(),
    );
    d.as_ref()[..20]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

    use super::*;

    #[test]
    fn accounts_get_distinct_keys_and_their_signatures_verify() {
        let keys = Keys::load().unwrap();
        let a = keys.of("a@p.iam.gserviceaccount.com");
        let b = keys.of("b@p.iam.gserviceaccount.com");
        assert_ne!(a.public_der(), b.public_der());
        assert_ne!(a.kid, b.kid);
        let sig = a.sign(b"data").unwrap();
        let verify = |k: &AccountKey<'_>| {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, k.public_der())
                .verify(b"data", &sig)
                .is_ok()
        };
        assert!(verify(&a) && !verify(&b));
        assert_eq!(
            keys.owner_of(&a.kid).as_deref(),
            Some("a@p.iam.gserviceaccount.com")
        );
        assert!(keys
            .cert("a@p.iam.gserviceaccount.com")
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
    }
}
