//! The demo's signed-URL row: a V4 signed URL for an object, signed by
//! IAM `signBlob` through the proxy's `sign_as` route (the source
//! credential, no key file), then fetched straight from Storage with no
//! proxy and no token, as anyone the URL is handed to would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::emulator::Emulator;

const STORAGE: &str = "storage.googleapis.com";
const IAM: &str = "iamcredentials.googleapis.com";

/// What the row shows.
pub(super) struct Fetched {
    pub(super) status: StatusCode,
    /// The object's bytes, or Storage's error.
    pub(super) body: String,
    pub(super) url: String,
}

/// RFC 3986 encoding of all but the unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Signs a GET URL for `/{bucket}/{object}` as `signer` through the proxy
/// and fetches it without the proxy.
pub(super) async fn sign_and_fetch(
    proxy: SocketAddr,
    proxy_tls: &Arc<rustls::ClientConfig>,
    emu: &Emulator,
    signer: &str,
    resource: &str,
) -> Result<Fetched, String> {
    // 2026-01-02T03:04:05Z -> 20260102T030405Z
    let timestamp: String = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let scope = format!("{}/auto/storage/goog4_request", &timestamp[..8]);
    let credential = format!("{signer}/{scope}");
    let mut query: Vec<String> = [
        ("X-Goog-Algorithm", "GOOG4-RSA-SHA256"),
        ("X-Goog-Credential", credential.as_str()),
        ("X-Goog-Date", timestamp.as_str()),
        ("X-Goog-Expires", "600"),
        ("X-Goog-SignedHeaders", "host"),
    ]
    .iter()
    .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
    .collect();
    query.sort();
    let query = query.join("&");
    let canonical = format!("GET\n{resource}\n{query}\nhost:{STORAGE}\n\nhost\nUNSIGNED-PAYLOAD");
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    let to_sign = format!(
        "GOOG4-RSA-SHA256\n{timestamp}\n{scope}\n{}",
        hex(digest.as_ref())
    );
    let body = serde_json::json!({"payload": STANDARD.encode(&to_sign)}).to_string();
    let (status, answer) = super::send_to(
        proxy,
        proxy_tls,
        IAM,
        false,
        "POST",
        &format!("/v1/projects/-/serviceAccounts/{signer}:signBlob"),
        Bytes::from(body),
    )
    .await?;
    if !status.is_success() {
        return Ok(Fetched {
            status,
            body: answer["error"]["message"]
                .as_str()
                .unwrap_or("signBlob failed")
                .to_owned(),
            url: String::new(),
        });
    }
    let signature = answer["signedBlob"]
        .as_str()
        .and_then(|s| STANDARD.decode(s).ok())
        .ok_or("signBlob answered no signature")?;
    let path = format!("{resource}?{query}&X-Goog-Signature={}", hex(&signature));
    let url = format!("https://{STORAGE}{path}");
    let (status, body) = fetch_direct(emu, &path).await?;
    Ok(Fetched { status, body, url })
}

/// `GET https://storage.googleapis.com{path}` straight to the emulator:
/// no proxy, no `Authorization`.
async fn fetch_direct(emu: &Emulator, path: &str) -> Result<(StatusCode, String), String> {
    let tls = super::client_tls(emu.ca_pem_path())?;
    let tcp = TcpStream::connect(emu.addr())
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from(STORAGE).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", STORAGE)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
