//! RS256 JSON Web Tokens with `ring`: the service-account assertion for
//! the JWT-bearer grant, and reading (or, for the emulator, verifying) the
//! claims of ID tokens.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;

/// How far back `iat` is set, so a token endpoint whose clock is slightly
/// behind does not reject the assertion as "issued in the future".
const IAT_SKEW: Duration = Duration::from_secs(10);

/// An RSA private key from a service account key file. `Debug` prints no
/// key material.
pub struct SigningKey {
    key: RsaKeyPair,
    key_id: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(kid {}, …redacted)", self.key_id)
    }
}

impl SigningKey {
    /// Parses a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, as in key files).
    pub fn from_pem(pem: &str, key_id: &str) -> Result<SigningKey, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("private_key is not a PKCS#8 PEM key: {e}"))?;
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| format!("private_key is not a usable RSA key: {e}"))?;
        Ok(SigningKey {
            key,
            key_id: key_id.to_owned(),
        })
    }

    /// The `kid` header value (the key file's `private_key_id`).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key, DER `RSAPublicKey`, for [`verify_rs256`].
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.public().as_ref().to_vec()
    }

    /// Signs `claims` as a compact JWT with header
    /// `{"alg":"RS256","typ":"JWT","kid":…}`.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, String> {
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": self.key_id});
        let mut out = URL_SAFE_NO_PAD.encode(header.to_string());
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                out.as_bytes(),
                &mut sig,
            )
            .map_err(|_| "RSA signing failed".to_owned())?;
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(out)
    }

    /// The JWT-bearer assertion: `iss` = the service account, `aud` = the
    /// token endpoint, valid for an hour from a few seconds ago.
    pub fn assertion(
        &self,
        client_email: &str,
        scope: &str,
        token_uri: &str,
    ) -> Result<String, String> {
        let iat = unix(SystemTime::now()) - IAT_SKEW.as_secs();
        self.sign(&serde_json::json!({
            "iss": client_email,
            "scope": scope,
            "aud": token_uri,
            "iat": iat,
            "exp": iat + 3600,
        }))
    }
}

/// Seconds since the Unix epoch.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A decoded JWT (not verified unless it came from [`verify_rs256`]).
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The header object (`alg`, `kid`, …).
    pub header: serde_json::Value,
    /// The claims object.
    pub claims: serde_json::Value,
}

impl Decoded {
    /// The `exp` claim as a wall-clock time.
    pub fn expire_time(&self) -> Option<SystemTime> {
        let exp = self.claims.get("exp")?.as_u64()?;
        Some(UNIX_EPOCH + Duration::from_secs(exp))
    }

    /// A string claim.
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name)?.as_str()
    }
}

fn split(jwt: &str) -> Result<(&str, &str, &str), String> {
    let mut parts = jwt.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(c), Some(s), None) => Ok((h, c, s)),
        _ => Err("not a compact JWT (expected three dot-separated parts)".to_owned()),
    }
}

fn json_part(part: &str, what: &str) -> Result<serde_json::Value, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| format!("JWT {what} is not base64url: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("JWT {what} is not JSON: {e}"))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(format!("JWT {what} is not a JSON object"))
    }
}

/// Reads header and claims without checking the signature (for tokens we
/// received from IAM over TLS and only need the `exp` of).
pub fn decode_unverified(jwt: &str) -> Result<Decoded, String> {
    let (h, c, _) = split(jwt)?;
    Ok(Decoded {
        header: json_part(h, "header")?,
        claims: json_part(c, "claims")?,
    })
}

/// Checks an RS256 signature against a DER `RSAPublicKey` and returns the
/// decoded token.
pub fn verify_rs256(jwt: &str, public_key_der: &[u8]) -> Result<Decoded, String> {
    let (h, c, s) = split(jwt)?;
    let decoded = Decoded {
        header: json_part(h, "header")?,
        claims: json_part(c, "claims")?,
    };
    if decoded.header.get("alg").and_then(|a| a.as_str()) != Some("RS256") {
        return Err("JWT alg is not RS256".to_owned());
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| format!("JWT signature is not base64url: {e}"))?;
    let signed = &jwt[..h.len() + 1 + c.len()];
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key_der,
    )
    .verify(signed.as_bytes(), &sig)
    .map_err(|_| "Invalid JWT Signature.".to_owned())?;
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = include_str!("../emulator/emulator-sa-key.pem");

    #[test]
    fn assertion_round_trips_and_tampering_is_detected() {
        let key = SigningKey::from_pem(PEM, "kid-1").unwrap();
        let jwt = key
            .assertion(
                "sa@p.iam.gserviceaccount.com",
                "s1",
                "https://oauth2.googleapis.com/token",
            )
            .unwrap();
        let d = verify_rs256(&jwt, &key.public_key_der()).unwrap();
        assert_eq!(d.header["kid"], "kid-1");
        assert_eq!(d.claim_str("iss"), Some("sa@p.iam.gserviceaccount.com"));
        assert_eq!(
            d.claim_str("aud"),
            Some("https://oauth2.googleapis.com/token")
        );
        let iat = d.claims["iat"].as_u64().unwrap();
        let exp = d.claims["exp"].as_u64().unwrap();
        assert!(exp - iat <= 3600 && iat < unix(SystemTime::now()));

        let (h, _, s) = split(&jwt).unwrap();
        let forged_claims = URL_SAFE_NO_PAD.encode(r#"{"iss":"root@p.iam.gserviceaccount.com"}"#);
        let forged = format!("{h}.{forged_claims}.{s}");
        assert!(verify_rs256(&forged, &key.public_key_der()).is_err());
        assert!(decode_unverified(&forged).is_ok());
    }

    #[test]
    fn debug_prints_no_key_material() {
        let key = SigningKey::from_pem(PEM, "kid-1").unwrap();
        let s = format!("{key:?}");
        assert!(s.contains("kid-1") && !s.contains("MII"), "{s}");
    }
}
