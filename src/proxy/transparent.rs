//! `transparent_listen`: clients that never set a proxy connect here as if
//! to the Google API host itself (a private DNS zone or an iptables
//! REDIRECT sent them). The ClientHello's SNI names the host: an
//! intercepted host is served exactly as inside a CONNECT tunnel to
//! `SNI:443`; any other is spliced byte for byte (the ClientHello
//! included) to `SNI:443` after the egress check, or closed, per
//! `[intercept] other`. No SNI: closed. The client is whoever the source
//! address (or the PROXY protocol header) says.

use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::Scheme;
use http::{Method, Uri};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

use crate::config::OtherHosts;
use crate::net::normalize_host;
use crate::ops::audit::{AuditAction, Listener, Record};
use crate::policy::clients::{ClientId, Presented};
use crate::proxy::prefixed::Prefixed;
use crate::proxy::request::Target;
use crate::proxy::tunnel::{self, Dial};
use crate::proxy::upstream::Upstream;
use crate::proxy::{ConnPermit, DataPlane};

/// A ClientHello larger than this is not one (post-quantum key shares
/// make them 2 KB; the TLS limit for a handshake message is far above).
const MAX_CLIENT_HELLO: usize = 64 << 10;

/// The port every transparent connection goes to: the one clients dialled
/// before DNS or iptables sent them here.
const HTTPS_PORT: u16 = 443;

pub(crate) async fn serve(
    shared: Arc<DataPlane>,
    mut io: Prefixed<TcpStream>,
    peer: SocketAddr,
    permit: ConnPermit,
    upstream: Arc<Upstream>,
) {
    // The ClientHello's reading (3.5 KiB of state) and the dial are boxed:
    // inline they would be sized into this future for the connection's
    // whole life.
    let read = Box::pin(read_client_hello(&mut io));
    let (sni, hello) = match tokio::time::timeout(shared.limits.header_read_timeout, read).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "transparent listener: no TLS ClientHello; connection closed");
            return;
        }
        Err(_) => {
            tracing::debug!(client = %peer, "transparent listener: no ClientHello in time; connection closed");
            return;
        }
    };
    let Some(sni) = sni else {
        tracing::debug!(client = %peer, "transparent listener: the ClientHello names no server (SNI); connection closed");
        return;
    };
    io.unread(hello);
    let host = normalize_host(&sni);
    let policy = shared.control.policy_full();
    let client = match policy.clients.identify(peer.ip(), &Presented::default()) {
        Ok(c) => c,
        Err(_) => {
            tracing::debug!(client = %peer, host = %host, "transparent listener: the source address is no [[client]]; connection closed");
            audit(&shared, peer, None, &host, AuditAction::ProxyAuth, 407);
            return;
        }
    };
    if policy.intercepts(&host) {
        let target = match Target::new(Scheme::HTTPS, &host, HTTPS_PORT) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(client = %peer, error = %e, "transparent listener: bad SNI");
                return;
            }
        };
        drop(policy);
        let _permit = permit;
        tunnel::intercept(
            shared,
            peer,
            Listener::Transparent,
            (client, Presented::default()),
            target,
            upstream,
            io,
        )
        .await;
        return;
    }
    if policy.egress.other == OtherHosts::Deny {
        audit(
            &shared,
            peer,
            client.as_ref(),
            &host,
            AuditAction::Deny,
            403,
        );
        return;
    }
    let remote = match Box::pin(tunnel::dial(&shared, &policy, &host, HTTPS_PORT)).await {
        Ok(s) => s,
        Err(Dial::Refused(m)) => {
            tracing::debug!(client = %peer, host = %host, reason = %m, "transparent listener: tunnel refused");
            audit(
                &shared,
                peer,
                client.as_ref(),
                &host,
                AuditAction::Refused,
                403,
            );
            return;
        }
        Err(Dial::Failed(e)) => {
            tracing::debug!(client = %peer, host = %host, error = %e, "transparent listener: cannot connect");
            audit(
                &shared,
                peer,
                client.as_ref(),
                &host,
                AuditAction::Tunnel,
                502,
            );
            return;
        }
    };
    audit(
        &shared,
        peer,
        client.as_ref(),
        &host,
        AuditAction::Tunnel,
        200,
    );
    drop(policy);
    let _permit = permit;
    tunnel::splice(io, remote, shared.limits.idle_timeout).await;
}

/// Reads until a whole ClientHello is in: its SNI (if any) and every byte
/// read, to be put back in front of the stream.
async fn read_client_hello<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<(Option<String>, Vec<u8>), String> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut seen = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    loop {
        let n = io.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed before a complete ClientHello".into());
        }
        seen.extend_from_slice(&chunk[..n]);
        if seen.len() > MAX_CLIENT_HELLO {
            return Err("ClientHello too large".into());
        }
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            acceptor
                .read_tls(&mut fresh)
                .map_err(|e| format!("not TLS: {e}"))?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_owned);
                return Ok((sni, seen));
            }
            Ok(None) => {}
            Err((e, _)) => return Err(format!("not a TLS ClientHello: {e}")),
        }
    }
}

/// The record of a transparent connection that was not intercepted, as a
/// CONNECT to `host:443` would have been recorded.
fn audit(
    shared: &DataPlane,
    peer: SocketAddr,
    client: Option<&ClientId>,
    host: &str,
    action: AuditAction,
    status: u16,
) {
    if !shared.audit.enabled() {
        return;
    }
    let authority = format!("{host}:{HTTPS_PORT}");
    let uri = authority.parse::<Uri>().unwrap_or_default();
    let mut r = Record::new(peer, &Method::CONNECT, &authority.into(), &uri);
    r.listener = Listener::Transparent;
    r.client_name = client.map(|c| c.name.clone());
    r.identified_by = client.map(|c| c.identified_by);
    r.action = action;
    r.status = status;
    shared.audit.write(&r);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sni_is_read_and_every_byte_kept() {
        let config = rustls::ClientConfig::builder_with_provider(crate::net::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            "storage.googleapis.com".try_into().unwrap(),
        )
        .unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        let mut with_more = hello.clone();
        with_more.extend_from_slice(b"after");
        let (sni, seen) = read_client_hello(&mut &with_more[..]).await.unwrap();
        assert_eq!(sni.as_deref(), Some("storage.googleapis.com"));
        assert_eq!(seen, with_more);
        // Garbage first: refused, not waited on.
        let mut garbage = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        garbage.extend_from_slice(&hello);
        assert!(read_client_hello(&mut &garbage[..]).await.is_err());
        // Cut short: refused at the end of the stream.
        assert!(read_client_hello(&mut &hello[..hello.len() / 2])
            .await
            .is_err());
    }
}
