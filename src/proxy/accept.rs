//! The accept loop (each worker runs one per listener, with a place under
//! `limits.max_connections` taken before each accept) and what happens to
//! a connection between `accept()` and the HTTP or TLS server that serves
//! it: the PROXY protocol header a load balancer puts
//! first (required from `[proxy] proxy_protocol_from` peers, never read
//! from anyone else), then the listener's own wrapping: none (`listen`),
//! TLS with client certificates (`tls_listen`, `[proxy.tls]`), or a peek at
//! the ClientHello (`transparent_listen`, in `transparent`).
//!
//! The PROXY header is parsed by the `ppp` crate (v1 text and v2 binary).
//! Bytes read past the header, and a ClientHello read to learn its SNI, are
//! handed on in front of the socket by `Prefixed`, so that what follows
//! sees the stream exactly as the client sent it.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::task::Poll;

use ipnet::IpNet;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::config::{Config, ConfigError, ProxyTlsConfig};
use crate::net::{parse_cidr, tls, unmap};
use crate::ops::audit::Listener;
use crate::proxy::listener::{self, Conn};
use crate::proxy::prefixed::Prefixed;
use crate::proxy::upstream::Upstream;
use crate::proxy::{transparent, ConnPermit, DataPlane};

/// Longest PROXY header accepted: v1 is at most 107 bytes; v2 carries
/// TLVs, of which load balancers send a few hundred bytes at most.
const MAX_PROXY_HEADER: usize = 4096;

/// Accepts from every listener until `signal`; connections accepted here
/// forward through `upstream` (the worker's own client and connection
/// pool). Then takes what is left in the listen queues before the
/// listeners are closed.
///
/// One loop for all listeners, so that the place under `max_connections`
/// taken before accepting goes to whichever listener has a client: a loop
/// per listener would park places on listeners nobody connects to.
pub(crate) async fn accept_loop(
    shared: &Arc<DataPlane>,
    listeners: Vec<(Listener, TcpListener)>,
    upstream: Arc<Upstream>,
    signal: impl Future<Output = ()>,
) {
    tokio::pin!(signal);
    // Which listener is asked first, turn by turn, so that a busy one
    // cannot starve the others.
    let mut first = 0usize;
    loop {
        // Waiting for a place before accepting leaves excess clients in the
        // kernel's backlog instead of failing them.
        let permit = tokio::select! {
            _ = &mut signal => break,
            p = shared.connections.clone().acquire_owned() => match p {
                Ok(p) => Arc::new(p),
                Err(_) => return,
            },
        };
        let accept = std::future::poll_fn(|cx| {
            let n = listeners.len();
            for i in 0..n {
                let (kind, l) = &listeners[(first + i) % n];
                if let Poll::Ready(r) = l.poll_accept(cx) {
                    return Poll::Ready((*kind, r));
                }
            }
            Poll::Pending
        });
        let (kind, (stream, peer)) = tokio::select! {
            _ = &mut signal => break,
            (kind, r) = accept => match r {
                Ok(x) => (kind, x),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, listener = kind.as_str(), "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        first = first.wrapping_add(1);
        spawn_client(shared, kind, stream, peer, permit, &upstream);
    }
    for (kind, l) in listeners {
        take_listen_queue(shared, kind, l, &upstream);
    }
}

/// Serves the connections the kernel has completed but nobody accepted
/// yet. Closing the listener would reset them, and a client (or a load
/// balancer in TCP mode, which has already forwarded the client's bytes)
/// sees that as a failed request. Asks the socket itself, not tokio's
/// readiness cache, which may not have heard of the last arrivals.
fn take_listen_queue(
    shared: &Arc<DataPlane>,
    kind: Listener,
    listener: TcpListener,
    upstream: &Arc<Upstream>,
) {
    let Ok(listener) = listener.into_std() else {
        return;
    };
    let mut taken = 0usize;
    loop {
        // At max_connections the rest would have waited anyway.
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            break;
        };
        let accepted = listener.accept().and_then(|(s, peer)| {
            s.set_nonblocking(true)?;
            Ok((TcpStream::from_std(s)?, peer))
        });
        match accepted {
            Ok((stream, peer)) => {
                taken += 1;
                spawn_client(shared, kind, stream, peer, Arc::new(permit), upstream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => {
                tracing::debug!(error = %e, "accept of a queued connection failed");
                break;
            }
        }
    }
    if taken > 0 {
        tracing::debug!(
            connections = taken,
            "served the listen queue after accepting stopped"
        );
    }
}

fn spawn_client(
    shared: &Arc<DataPlane>,
    kind: Listener,
    stream: TcpStream,
    peer: SocketAddr,
    permit: ConnPermit,
    upstream: &Arc<Upstream>,
) {
    let shared2 = shared.clone();
    let upstream = upstream.clone();
    shared
        .tasks
        .spawn(async move { serve_accepted(shared2, stream, peer, kind, permit, upstream).await });
}

/// Serves one accepted connection on listener `kind`.
async fn serve_accepted(
    shared: Arc<DataPlane>,
    mut stream: TcpStream,
    peer: SocketAddr,
    kind: Listener,
    permit: ConnPermit,
    upstream: Arc<Upstream>,
) {
    let _open = crate::ops::metrics::global().connection();
    let _ = stream.set_nodelay(true);
    let timeout = shared.limits.header_read_timeout;
    let (peer, after_header) = if from_listed(&shared.proxy_protocol_from, peer.ip()) {
        match tokio::time::timeout(timeout, Box::pin(read_proxy_header(&mut stream))).await {
            Ok(Ok((source, rest))) => (source.unwrap_or(peer), rest),
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "PROXY protocol header missing or malformed; connection closed");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %peer, "no PROXY protocol header in time; connection closed");
                return;
            }
        }
    } else {
        (peer, Vec::new())
    };
    let io = Prefixed::new(after_header, stream);
    match kind {
        // Each listener's serving is boxed: this task lives as long as a
        // transparent connection, and inline every branch's state would be
        // sized into it.
        Listener::Connect => {
            Box::pin(listener::serve_client(
                shared,
                io,
                peer,
                Conn::plain(),
                permit,
                upstream,
            ))
            .await
        }
        Listener::Tls => {
            let Some(config) = shared.tls.clone() else {
                return;
            };
            let accept = Box::pin(tokio_rustls::TlsAcceptor::from(config).accept(io));
            let tls = match tokio::time::timeout(timeout, accept).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(client = %peer, error = %e, "TLS handshake on tls_listen failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(client = %peer, "no TLS handshake on tls_listen in time");
                    return;
                }
            };
            let sans = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| cert_sans(leaf.as_ref()));
            let conn = Conn {
                listener: Listener::Tls,
                cert_sans: sans,
            };
            Box::pin(listener::serve_client(
                shared, tls, peer, conn, permit, upstream,
            ))
            .await
        }
        Listener::Transparent => {
            Box::pin(transparent::serve(shared, io, peer, permit, upstream)).await
        }
    }
}

fn from_listed(nets: &[IpNet], ip: IpAddr) -> bool {
    !nets.is_empty() && {
        let ip = unmap(ip);
        nets.iter().any(|n| n.contains(&ip))
    }
}

/// Reads one PROXY protocol header (v1 or v2) and nothing much beyond it:
/// the client's address (`None` for v2 `LOCAL`, v1 `UNKNOWN` and non-IP
/// families: the connection's own address stands) and the bytes read
/// after the header.
async fn read_proxy_header(
    stream: &mut TcpStream,
) -> Result<(Option<SocketAddr>, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the connection closed before a complete PROXY header".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_proxy_header(&buf) {
            Parsed::Incomplete if buf.len() < MAX_PROXY_HEADER => continue,
            Parsed::Incomplete => return Err("PROXY header too long".into()),
            Parsed::Bad(e) => return Err(e),
            Parsed::Done { source, len } => return Ok((source, buf.split_off(len))),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Parsed {
    Incomplete,
    Bad(String),
    Done {
        source: Option<SocketAddr>,
        len: usize,
    },
}

fn parse_proxy_header(buf: &[u8]) -> Parsed {
    use ppp::{v1, v2, HeaderResult, PartialResult};
    let parsed = HeaderResult::parse(buf);
    if parsed.is_incomplete() {
        return Parsed::Incomplete;
    }
    match parsed {
        HeaderResult::V1(Ok(h)) => Parsed::Done {
            len: h.header.len(),
            source: match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            },
        },
        HeaderResult::V2(Ok(h)) => Parsed::Done {
            len: h.len(),
            source: match (h.command, h.addresses) {
                (v2::Command::Local, _) => None,
                (_, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, _) => None,
            },
        },
        HeaderResult::V1(Err(e)) => Parsed::Bad(format!("not a PROXY protocol header: {e}")),
        HeaderResult::V2(Err(e)) => Parsed::Bad(format!("bad PROXY protocol v2 header: {e}")),
    }
}

/// The URI and DNS subject alternative names of a certificate the TLS
/// listener verified (none if it cannot be parsed, which verification
/// would already have refused).
fn cert_sans(der: &[u8]) -> Arc<[Box<str>]> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Arc::from(Vec::new());
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Arc::from(Vec::new());
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(s) | GeneralName::DNSName(s) => Some(Box::<str>::from(*s)),
            _ => None,
        })
        .collect()
}

/// `[proxy] proxy_protocol_from`, parsed (checked by `policy::check`).
pub(crate) fn proxy_protocol_peers(cfg: &Config) -> Vec<IpNet> {
    cfg.proxy
        .proxy_protocol_from
        .iter()
        .filter_map(|s| parse_cidr(s).ok())
        .collect()
}

/// Checks what the listeners load from files (`[proxy.tls]`), as `check`
/// and start-up do.
pub fn check_listeners(cfg: &Config) -> Result<(), ConfigError> {
    if let Some(t) = &cfg.proxy.tls {
        listener_tls(t)?;
    }
    Ok(())
}

/// The server config of `tls_listen`: its certificate and key, and with
/// `client_ca` a client certificate verifier (with `client_crl`).
pub(crate) fn listener_tls(t: &ProxyTlsConfig) -> Result<Arc<ServerConfig>, ConfigError> {
    let certs = tls::load_certs(&t.cert)
        .map_err(|e| ConfigError::invalid("proxy.tls.cert", e.to_string()))?;
    check_key_mode(&t.key)?;
    let key = PrivateKeyDer::from_pem_file(&t.key).map_err(|e| {
        ConfigError::invalid(
            "proxy.tls.key",
            format!("{}: not a PEM private key: {e}", t.key.display()),
        )
    })?;
    let provider = tls::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid("proxy.tls", e.to_string()))?;
    let builder = match &t.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in tls::load_certs(ca)
                .map_err(|e| ConfigError::invalid("proxy.tls.client_ca", e.to_string()))?
            {
                roots.add(cert).map_err(|e| {
                    ConfigError::invalid(
                        "proxy.tls.client_ca",
                        format!("{}: not a usable CA certificate: {e}", ca.display()),
                    )
                })?;
            }
            let mut crls = Vec::new();
            for (i, path) in t.client_crl.iter().enumerate() {
                let key = format!("proxy.tls.client_crl[{i}]");
                let bytes = std::fs::read(path).map_err(|e| {
                    ConfigError::invalid(&key, format!("{}: cannot read: {e}", path.display()))
                })?;
                let found = CertificateRevocationListDer::pem_slice_iter(&bytes)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        ConfigError::invalid(
                            &key,
                            format!("{}: not a PEM CRL: {e}", path.display()),
                        )
                    })?;
                if found.is_empty() {
                    return Err(ConfigError::invalid(
                        key,
                        format!("{}: holds no `BEGIN X509 CRL` block", path.display()),
                    ));
                }
                crls.extend(found);
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(crls)
                .build()
                .map_err(|e| ConfigError::invalid("proxy.tls.client_crl", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        ConfigError::invalid(
            "proxy.tls.key",
            format!(
                "{} does not go with proxy.tls.cert {}: {e}",
                t.key.display(),
                t.cert.display()
            ),
        )
    })?;
    // CONNECT and absolute-form are HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The key of `[proxy.tls]` is a secret like the CA key: owner-only (see
/// [`crate::config::secret_mode_ok`]).
fn check_key_mode(path: &Path) -> Result<(), ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(path).map_err(|e| {
            ConfigError::invalid("proxy.tls.key", format!("{}: {e}", path.display()))
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if !crate::config::secret_mode_ok(mode, meta.uid(), crate::config::process_uid()) {
            return Err(ConfigError::invalid(
                "proxy.tls.key",
                format!(
                    "{} is readable by group or others (mode {mode:o}); fix: chmod 600 {} (a file owned by root may be 640)",
                    path.display(),
                    path.display()
                ),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_headers_v1_and_v2_give_the_source_and_their_length() {
        let v1 = b"PROXY TCP4 127.0.0.2 127.0.0.1 5555 443\r\nGET";
        assert_eq!(
            parse_proxy_header(v1),
            Parsed::Done {
                source: Some("127.0.0.2:5555".parse().unwrap()),
                len: v1.len() - 3
            }
        );
        assert_eq!(
            parse_proxy_header(b"PROXY TCP4 127.0.0.2 127.0"),
            Parsed::Incomplete
        );
        // A v1 header, then a ClientHello's binary bytes in the same read.
        let v1_then_tls = b"PROXY TCP4 127.0.0.2 127.0.0.1 5555 443\r\n\x16\x03\x01\xff\xfe";
        assert_eq!(
            parse_proxy_header(v1_then_tls),
            Parsed::Done {
                source: Some("127.0.0.2:5555".parse().unwrap()),
                len: v1_then_tls.len() - 5
            }
        );
        assert_eq!(
            parse_proxy_header(b"PROXY UNKNOWN\r\n"),
            Parsed::Done {
                source: None,
                len: 15
            }
        );
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::7]:4000".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse_proxy_header(&bytes),
            Parsed::Done {
                source: Some("[2001:db8::7]:4000".parse().unwrap()),
                len: header.len()
            }
        );
        assert_eq!(
            parse_proxy_header(&header[..header.len() - 4]),
            Parsed::Incomplete
        );
        for garbage in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n",
        ] {
            assert!(
                matches!(parse_proxy_header(garbage), Parsed::Bad(_)),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn only_listed_peers_are_read_a_header_from() {
        let nets = vec![parse_cidr("127.0.0.2").unwrap()];
        assert!(from_listed(&nets, "127.0.0.2".parse().unwrap()));
        assert!(from_listed(&nets, "::ffff:127.0.0.2".parse().unwrap()));
        assert!(!from_listed(&nets, "127.0.0.3".parse().unwrap()));
        assert!(!from_listed(&[], "127.0.0.2".parse().unwrap()));
    }
}
