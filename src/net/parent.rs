//! The parent proxy of `[upstream] proxy`: one CONNECT-through-the-parent
//! dialer that every outbound connection uses (forwarding connectors, the
//! proxy's own token and IAM calls, spliced tunnels), unless `no_proxy`
//! names the host.
//!
//! Why a hand-written CONNECT and not hyper's client with an upgrade: the
//! tunnel must come back as the plain `TcpStream` that the direct path
//! yields, so that one connector type (and rustls on top of it) serves
//! both, and the forwarding hot path keeps reading a socket rather than a
//! boxed upgraded stream. The exchange is one request head written and one
//! response head read (parsed by `httparse`, the parser hyper uses), with a
//! size cap and a timeout.
//!
//! Where names are resolved: a host in `[upstream.resolve]` is CONNECTed by
//! its mapped `ip:port` (the proxy applies its own DNS override, TLS SNI and
//! `Host` keep the name); any other name goes to the parent as a name, and
//! the parent resolves it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{parse_parent_proxy, ParentProxyAddr, UpstreamConfig};
use crate::net::{is_dns_name, normalize_host, parse_client_host, ClientHost};

/// The longest answer to CONNECT read before giving up on the parent.
const MAX_HEAD: usize = 16 * 1024;
/// Headers of the parent's answer parsed at most.
const MAX_HEADERS: usize = 64;

/// The parent proxy could not be set up from `[upstream]`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParentSetupError {
    /// `upstream.proxy` or an entry of `upstream.no_proxy` is not allowed.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The password file could not be read.
    #[error("upstream.proxy_auth.password_file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The password file is readable by group or others.
    #[error("upstream.proxy_auth.password_file {path} is readable by group or others (mode {mode:o}); fix: chmod 600 {path} (a file owned by root may be 640: readable by the group root gave it)")]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The password file is empty.
    #[error("upstream.proxy_auth.password_file {path} is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// A connection through the parent proxy that could not be made. The
/// messages name the parent and its answer, never the credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParentError {
    /// No TCP connection to the parent.
    #[error("cannot connect to the parent proxy {parent}: {source}")]
    Connect {
        /// `host:port` of the parent.
        parent: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The parent did not answer CONNECT in time.
    #[error("the parent proxy {parent} did not answer CONNECT {target} within {after:?}")]
    Timeout {
        /// `host:port` of the parent.
        parent: String,
        /// What was CONNECTed to.
        target: String,
        /// `[upstream] connect_timeout`.
        after: Duration,
    },
    /// The parent answered CONNECT with a status other than 2xx.
    #[error("the parent proxy {parent} refused CONNECT {target}: {status_line}{hint}")]
    Refused {
        /// `host:port` of the parent.
        parent: String,
        /// What was CONNECTed to.
        target: String,
        /// The status code.
        status: u16,
        /// The parent's status line (printable ASCII, shortened).
        status_line: String,
        /// What to check, for the statuses that say it.
        hint: &'static str,
    },
    /// The parent's answer is not an HTTP response head, is too large, or
    /// the connection broke while reading it.
    #[error("the parent proxy {parent} gave no usable answer to CONNECT {target}: {why}")]
    Protocol {
        /// `host:port` of the parent.
        parent: String,
        /// What was CONNECTed to.
        target: String,
        /// What was wrong.
        why: String,
    },
}

impl ParentError {
    /// The parent's status code, when it answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ParentError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A tunnel through the parent: the socket, and any bytes the parent sent
/// after its answer (the target speaking first) that were read with it.
#[derive(Debug)]
pub(crate) struct Tunnel {
    pub stream: TcpStream,
    pub early: Vec<u8>,
}

/// `upstream.no_proxy`: exact hosts (names or addresses) and `.suffix`
/// entries (every name under a domain, not the domain itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NoProxy {
    exact: Vec<String>,
    /// With the leading dot.
    suffixes: Vec<String>,
}

impl NoProxy {
    /// Parses the entries; the error names the entry's index and says what
    /// is wrong.
    pub fn parse(entries: &[String]) -> Result<NoProxy, (usize, String)> {
        let mut out = NoProxy::default();
        for (i, raw) in entries.iter().enumerate() {
            let e = raw.trim();
            if e == "*" {
                return Err((i, "`*` would send every connection around the parent proxy; remove upstream.proxy instead".into()));
            }
            if let Some(domain) = e.strip_prefix("*.").or_else(|| e.strip_prefix('.')) {
                let domain = normalize_host(domain);
                if !is_dns_name(&domain) {
                    return Err((i, format!("`{e}` is not `.domain` (a leading dot, then a DNS name, e.g. \".corp.internal\")")));
                }
                out.suffixes.push(format!(".{domain}"));
                continue;
            }
            let bare = e
                .strip_prefix('[')
                .and_then(|v| v.strip_suffix(']'))
                .unwrap_or(e);
            match parse_client_host(bare) {
                Ok(ClientHost::Name(n)) => out.exact.push(n),
                Ok(ClientHost::Ip(ip)) => out.exact.push(ip.to_string()),
                Err(m) => {
                    return Err((i, format!("{m}; write an exact host (\"metadata.google.internal\", \"169.254.169.254\") or `.domain` for every name under it (\".corp.internal\")")))
                }
            }
        }
        Ok(out)
    }

    /// Whether a connection to `host` (as in a URI or CONNECT target, any
    /// case, IPv6 with or without brackets) bypasses the parent.
    pub fn matches(&self, host: &str) -> bool {
        if self.exact.is_empty() && self.suffixes.is_empty() {
            return false;
        }
        let bare = host
            .strip_prefix('[')
            .and_then(|v| v.strip_suffix(']'))
            .unwrap_or(host);
        let host = match bare.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => normalize_host(bare),
        };
        self.exact.contains(&host) || self.suffixes.iter().any(|s| host.ends_with(&**s))
    }
}

/// The `Proxy-Authorization` value; never printed.
struct Credentials(String);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(…redacted)")
    }
}

/// The parent proxy: where it is, how to authenticate to it, and which
/// hosts go around it.
pub(crate) struct Parent {
    addr: ParentProxyAddr,
    /// `host:port`, for messages.
    name: String,
    auth: Option<Credentials>,
    no_proxy: NoProxy,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Parent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parent")
            .field("addr", &self.name)
            .field("auth", &self.auth.is_some())
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl Parent {
    /// The parent of `[upstream]`, if one is configured; reads the password
    /// file (owner-only) once.
    pub fn from_config(cfg: &UpstreamConfig) -> Result<Option<Parent>, ParentSetupError> {
        let Some(url) = &cfg.proxy else {
            return Ok(None);
        };
        let addr = parse_parent_proxy(url).map_err(|message| ParentSetupError::Invalid {
            key: "upstream.proxy".into(),
            message,
        })?;
        let no_proxy =
            NoProxy::parse(&cfg.no_proxy).map_err(|(i, message)| ParentSetupError::Invalid {
                key: format!("upstream.no_proxy[{i}]"),
                message,
            })?;
        let auth = match &cfg.proxy_auth {
            Some(a) => {
                let password = read_password(&a.password_file)?;
                let mut plain = Vec::with_capacity(a.user.len() + 1 + password.len());
                plain.extend_from_slice(a.user.as_bytes());
                plain.push(b':');
                plain.extend_from_slice(&password);
                let value = base64::engine::general_purpose::STANDARD.encode(&plain);
                Some(Credentials(format!("Basic {value}")))
            }
            None => None,
        };
        Ok(Some(Parent {
            name: addr.to_string(),
            addr,
            auth,
            no_proxy,
            connect_timeout: cfg.connect_timeout,
        }))
    }

    /// `host:port` of the parent.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a connection to `host` goes through the parent (`no_proxy`
    /// does not name it).
    pub fn applies_to(&self, host: &str) -> bool {
        !self.no_proxy.matches(host)
    }

    /// Opens a tunnel to `target` (`host:port`, IPv6 in brackets) through
    /// the parent. `connect_timeout` bounds the TCP connection to the
    /// parent and, separately, the wait for its answer (which includes the
    /// parent's own connection to the target).
    pub async fn connect(&self, target: &str) -> Result<Tunnel, ParentError> {
        // Callers pass a validated host or a socket address; a space or a
        // control byte here would split the request line or add a header.
        if target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(ParentError::Protocol {
                parent: self.name.clone(),
                target: target.escape_debug().to_string(),
                why: "the target is not a host:port (not sent)".into(),
            });
        }
        let timeout = self.connect_timeout;
        let tcp = TcpStream::connect((self.addr.host.as_str(), self.addr.port));
        let mut stream = match tokio::time::timeout(timeout, tcp).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(ParentError::Connect {
                    parent: self.name.clone(),
                    source,
                })
            }
            Err(_) => {
                return Err(ParentError::Connect {
                    parent: self.name.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connect timed out after {timeout:?}"),
                    ),
                })
            }
        };
        let _ = stream.set_nodelay(true);
        match tokio::time::timeout(timeout, self.handshake(&mut stream, target)).await {
            Ok(Ok(early)) => {
                tracing::debug!(parent = %self.name, target, "tunnel through the parent proxy");
                Ok(Tunnel { stream, early })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ParentError::Timeout {
                parent: self.name.clone(),
                target: target.to_owned(),
                after: timeout,
            }),
        }
    }

    /// Writes the CONNECT head and reads the answer's; returns the bytes
    /// read past the answer.
    async fn handshake(
        &self,
        stream: &mut TcpStream,
        target: &str,
    ) -> Result<Vec<u8>, ParentError> {
        let protocol = |why: String| ParentError::Protocol {
            parent: self.name.clone(),
            target: target.to_owned(),
            why,
        };
        let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(Credentials(value)) = &self.auth {
            head.push_str("Proxy-Authorization: ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let written = stream.write_all(head.as_bytes()).await;
        drop(head);
        written.map_err(|e| protocol(format!("sending CONNECT failed: {e}")))?;

        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 2048];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| protocol(format!("reading the answer failed: {e}")))?;
            if n == 0 {
                return Err(protocol(if buf.is_empty() {
                    "it closed the connection without an answer".into()
                } else {
                    "it closed the connection in the middle of its answer".into()
                }));
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    if (200..300).contains(&status) {
                        return Ok(buf.split_off(len));
                    }
                    let reason = resp.reason.unwrap_or("");
                    return Err(ParentError::Refused {
                        parent: self.name.clone(),
                        target: target.to_owned(),
                        status,
                        status_line: printable(&format!(
                            "HTTP/1.{} {status} {reason}",
                            resp.version.unwrap_or(1)
                        )),
                        hint: match status {
                            // tinyproxy answers wrong credentials with 401.
                            401 | 407 if self.auth.is_some() => {
                                " (it did not accept upstream.proxy_auth: check the user and the password file)"
                            }
                            407 => " (it wants credentials: set upstream.proxy_auth)",
                            403 => " (its access rules refuse this target or port)",
                            _ => "",
                        },
                    });
                }
                Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                    return Err(protocol(format!(
                        "its answer's head is larger than {} KiB",
                        MAX_HEAD / 1024
                    )))
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(protocol(format!("not an HTTP response ({e})"))),
            }
        }
    }
}

/// Printable ASCII only, at most 120 characters: the parent's words in an
/// error message, never its control characters.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(120)
        .collect::<String>()
        .trim_end()
        .to_owned()
}

/// Reads the password file, refusing one that group or others can read
/// (the group of a root-owned file excepted:
/// [`crate::config::secret_mode_ok`]). A trailing newline (as `echo`
/// writes) is not part of the password.
fn read_password(path: &Path) -> Result<Vec<u8>, ParentSetupError> {
    let read_err = |source| ParentSetupError::Read {
        path: path.to_owned(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(path).map_err(read_err)?;
        let mode = meta.permissions().mode() & 0o777;
        if !crate::config::secret_mode_ok(mode, meta.uid(), crate::config::process_uid()) {
            return Err(ParentSetupError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
    }
    let mut bytes = std::fs::read(path).map_err(read_err)?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(ParentSetupError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(entries: &[&str]) -> NoProxy {
        NoProxy::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn no_proxy_matches_exact_hosts_and_suffixes() {
        let n = np(&[
            "metadata.google.internal",
            ".corp.internal",
            "169.254.169.254",
            "[fd00::1]",
            "*.svc.local",
        ]);
        for direct in [
            "metadata.google.internal",
            "Metadata.Google.Internal.",
            "a.corp.internal",
            "x.y.corp.internal",
            "169.254.169.254",
            "[fd00::1]",
            "fd00:0::1",
            "api.svc.local",
        ] {
            assert!(n.matches(direct), "{direct} must go direct");
        }
        for parent in [
            "storage.googleapis.com",
            "corp.internal",
            "evilcorp.internal",
            "google.internal",
            "169.254.169.25",
            "svc.local",
        ] {
            assert!(!n.matches(parent), "{parent} must go through the parent");
        }
        assert!(!NoProxy::default().matches("anything"));
    }

    #[test]
    fn no_proxy_entries_are_checked() {
        for (bad, says) in [
            ("*", "every connection"),
            (".", "`.domain`"),
            (".bad..name", "`.domain`"),
            ("host:80", "not a host name"),
            ("http://x", "not a host name"),
            ("a b", "not a host name"),
        ] {
            let (i, msg) = NoProxy::parse(&["ok.example".into(), bad.into()]).unwrap_err();
            assert_eq!(i, 1, "{bad}");
            assert!(msg.contains(says), "{bad}: {msg}");
        }
    }

    /// A parent that answers a CONNECT with `answer` (in one write), then
    /// holds the connection open, or closes it when `close`; hands back
    /// the head it read.
    async fn fake_parent(
        answer: &'static [u8],
        close: bool,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).await.unwrap() == 1 {
                head.push(b[0]);
            }
            let _ = tx.send(String::from_utf8(head).unwrap());
            s.write_all(answer).await.unwrap();
            if !close {
                let _ = s.read(&mut b).await;
            }
        });
        (addr, rx)
    }

    fn parent(addr: std::net::SocketAddr, dir: &Path, password: Option<&str>) -> Parent {
        let mut cfg = UpstreamConfig {
            proxy: Some(format!("http://{addr}")),
            connect_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        if let Some(pw) = password {
            let file = dir.join("pw");
            std::fs::write(&file, format!("{pw}\n")).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
            cfg.proxy_auth = Some(crate::config::ProxyAuthConfig {
                user: "gw".into(),
                password_file: file,
            });
        }
        Parent::from_config(&cfg).unwrap().unwrap()
    }

    #[tokio::test]
    async fn connect_sends_the_credentials_and_keeps_what_the_target_said_first() {
        let dir = crate::test_dir::TempDir::new("parent-ok");
        let (addr, head) = fake_parent(
            b"HTTP/1.1 200 Connection established\r\nX: y\r\n\r\n220 banner",
            false,
        )
        .await;
        let p = parent(addr, &dir, Some("s3cret"));
        let t = p.connect("storage.googleapis.com:443").await.unwrap();
        assert_eq!(t.early, b"220 banner");
        let head = head.await.unwrap();
        assert_eq!(
            head,
            "CONNECT storage.googleapis.com:443 HTTP/1.1\r\nHost: storage.googleapis.com:443\r\nProxy-Authorization: Basic Z3c6czNjcmV0\r\n\r\n"
        );
        assert!(!format!("{p:?}").contains("Z3c6"), "{p:?}");
    }

    #[tokio::test]
    async fn refusals_and_broken_answers_name_the_parent_and_never_the_password() {
        let dir = crate::test_dir::TempDir::new("parent-bad");
        for (answer, close, says) in [
            (
                &b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"[..],
                false,
                "refused CONNECT t.example:443: HTTP/1.1 407 Proxy Authentication Required (it did not accept upstream.proxy_auth",
            ),
            (
                b"HTTP/1.0 403 Access violation\r\n\r\n",
                false,
                "refused CONNECT t.example:443: HTTP/1.0 403 Access violation (its access rules",
            ),
            (b"SSH-2.0-OpenSSH\r\n\r\n", false, "not an HTTP response"),
            (b"HTTP/1.1 200 OK\r\n", true, "closed the connection in the middle"),
            (b"", true, "closed the connection without an answer"),
            (b"", false, "did not answer CONNECT t.example:443 within 500ms"),
        ] {
            let (addr, _head) = fake_parent(answer, close).await;
            let err = parent(addr, &dir, Some("s3cret"))
                .connect("t.example:443")
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(text.contains(&format!("the parent proxy {addr} ")), "{text}");
            assert!(text.contains(says), "{text}");
            assert!(!text.contains("s3cret") && !text.contains("Z3c6"), "{text}");
        }
    }

    #[tokio::test]
    async fn an_endless_answer_head_is_cut_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
            // Long lines: the size cap, not the header count, ends it.
            let mut line = b"X-Filler: ".to_vec();
            line.extend_from_slice(&[b'a'; 1000]);
            line.extend_from_slice(b"\r\n");
            while s.write_all(&line).await.is_ok() {}
        });
        let dir = crate::test_dir::TempDir::new("parent-long");
        let err = parent(addr, &dir, None)
            .connect("t.example:443")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("larger than 16 KiB"), "{err}");
    }

    #[tokio::test]
    async fn a_target_that_would_split_the_request_is_never_sent() {
        let dir = crate::test_dir::TempDir::new("parent-inject");
        let (addr, head) = fake_parent(b"HTTP/1.1 200 OK\r\n\r\n", false).await;
        let p = parent(addr, &dir, None);
        for bad in ["a.example:443\r\nX-Evil: 1", "a b:443", ""] {
            let err = p.connect(bad).await.unwrap_err().to_string();
            assert!(err.contains("not sent"), "{err}");
        }
        // The fake parent saw no connection at all.
        let p = parent(addr, &dir, None);
        p.connect("ok.example:443").await.unwrap();
        assert!(head.await.unwrap().starts_with("CONNECT ok.example:443 "));
    }

    #[test]
    fn a_password_file_others_can_read_is_refused() {
        let dir = crate::test_dir::TempDir::new("parent-mode");
        let file = dir.join("pw");
        std::fs::write(&file, "pw").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = read_password(&file).unwrap_err().to_string();
            assert!(err.contains("upstream.proxy_auth.password_file"), "{err}");
            assert!(err.contains("chmod 600"), "{err}");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert_eq!(read_password(&file).unwrap(), b"pw");
        std::fs::write(&file, "\n").unwrap();
        assert!(read_password(&file)
            .unwrap_err()
            .to_string()
            .contains("is empty"));
    }

    #[test]
    fn credentials_never_print() {
        let c = Credentials("Basic Z3c6c2VjcmV0".into());
        assert!(!format!("{c:?}").contains("Z3c6"));
    }
}
