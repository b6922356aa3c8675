//! The CA from `ca init` is name-constrained: curl accepts the leaves the
//! proxy mints for the permitted domains, and rejects a certificate for
//! any other name or an IP address even when it is signed with the CA's
//! own key (a stolen key).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use impersonate_proxy::ca::{self, CertAuthority};
use rcgen::{CertificateParams, Issuer, KeyPair};
use support::tempdir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A TLS server on loopback that answers every request with `200 ok`.
async fn serve_tls(config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// A leaf for `name` signed directly with the CA's key, the way someone
/// who stole the key would, bypassing the proxy's own refusal.
fn forged_leaf(cert: &Path, key: &Path, name: &str) -> Arc<rustls::ServerConfig> {
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(key).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&std::fs::read_to_string(cert).unwrap(), ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(impersonate_proxy::net::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key_der)
        .unwrap();
    Arc::new(cfg)
}

/// `curl --cacert CA https://NAME:PORT/` with NAME resolved to loopback:
/// whether it succeeded, and its stderr.
async fn curl(ca: &Path, name: &str, addr: SocketAddr) -> (bool, String) {
    let host = if name.parse::<std::net::IpAddr>().is_ok() {
        addr.ip().to_string()
    } else {
        name.to_owned()
    };
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http1.1", "--max-time", "20", "--noproxy", "*"])
        .arg("--cacert")
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{name}:{}:{}", addr.port(), addr.ip()))
        .arg(format!("https://{host}:{}/", addr.port()))
        .output()
        .await
        .expect("curl is installed (.ci/run installs it)");
    (
        out.status.success() && out.stdout == b"ok",
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn curl_trusts_minted_leaves_and_rejects_names_outside_the_constraints() {
    let dir = tempdir("ca-constraints");
    let (cert, key) = ca::init(&dir, false).unwrap();
    let authority = CertAuthority::load(&cert, &key).unwrap();
    // The leaves the proxy mints for the default domains validate.
    for name in [
        "storage.googleapis.com",
        "hello.a.run.app",
        "fn.cloudfunctions.net",
    ] {
        let addr = serve_tls(authority.server_config(name).unwrap()).await;
        let (ok, err) = curl(&cert, name, addr).await;
        assert!(ok, "curl rejected the minted leaf for {name}: {err}");
    }
    // A leaf forged with the stolen key for any other name is rejected.
    for name in [
        "evil.example.test",
        "googleapis.com.evil.example",
        "127.0.0.1",
    ] {
        let addr = serve_tls(forged_leaf(&cert, &key, name)).await;
        let (ok, err) = curl(&cert, name, addr).await;
        assert!(!ok, "curl trusted a forged certificate for {name}");
        assert!(
            err.contains("SSL certificate") || err.contains("certificate"),
            "{name}: {err}"
        );
    }
    // The proxy will not mint outside them either (with the fix, see ca.rs).
    assert!(authority.server_config("evil.example.test").is_err());
    // The forged leaf for a permitted name is accepted: the constraints,
    // not the forging, made the difference above.
    let addr = serve_tls(forged_leaf(&cert, &key, "pubsub.googleapis.com")).await;
    assert!(curl(&cert, "pubsub.googleapis.com", addr).await.0);
}

#[tokio::test]
async fn ca_init_permit_chooses_the_domains() {
    let dir = tempdir("ca-permit");
    let bin = env!("CARGO_BIN_EXE_impersonate-proxy");
    let out = std::process::Command::new(bin)
        .args(["ca", "init", "--dir"])
        .arg(&*dir)
        .args(["--permit", "example.test", "--permit", "corp.test"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("only for names under example.test, corp.test"),
        "{stdout}"
    );
    let (cert, key) = (dir.join(ca::CERT_FILE), dir.join(ca::KEY_FILE));
    let authority = CertAuthority::load(&cert, &key).unwrap();
    let addr = serve_tls(authority.server_config("api.example.test").unwrap()).await;
    assert!(curl(&cert, "api.example.test", addr).await.0);
    let addr = serve_tls(forged_leaf(&cert, &key, "storage.googleapis.com")).await;
    assert!(!curl(&cert, "storage.googleapis.com", addr).await.0);

    let out = std::process::Command::new(bin)
        .args(["ca", "init", "--force", "--dir"])
        .arg(&*dir)
        .args(["--permit", "not a domain"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--permit `not a domain`"));
}
