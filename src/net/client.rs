//! The outbound client: every connection the proxy makes goes through
//! the `[upstream.resolve]` map, through the parent proxy when one is
//! configured (`net::parent`), and trusts the web PKI plus `extra_ca`.
//! Built once per process and shared: a pooled hyper client for the
//! proxy's own calls (token endpoints, IAM, STS), the connectors that
//! forwarded requests use (`proxy::upstream`), and the resolve map and
//! parent that spliced tunnels dial through.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::net::{normalize_host, tune, BoxError, Parent, ParentSetupError, ProxyBody};

/// An upstream request that failed before a response arrived.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// No connection could be made (DNS, TCP, or TLS).
    #[error("cannot connect to {host}: {cause}")]
    Connect {
        /// The upstream host.
        host: String,
        /// The underlying cause, as text.
        cause: String,
    },
    /// The upstream did not answer within `upstream.response_timeout`.
    #[error("{host} did not respond within {after:?}")]
    Timeout {
        /// The upstream host.
        host: String,
        /// The configured limit.
        after: Duration,
    },
    /// The connection failed while sending the request or reading the head.
    #[error("request to {host} failed: {cause}")]
    Upstream {
        /// The upstream host.
        host: String,
        /// The underlying cause, as text.
        cause: String,
    },
}

impl ForwardError {
    /// Whether the upstream timed out (→ 504) rather than failed (→ 502).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ForwardError::Timeout { .. })
    }
}

/// The upstream could not be set up from the config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamSetupError {
    /// A file of `extra_ca` is missing or holds no usable certificate.
    #[error("upstream.extra_ca: {0}")]
    ExtraCa(#[from] crate::net::tls::PemError),
    /// The parent proxy (`proxy`, `proxy_auth`, `no_proxy`) is unusable.
    #[error(transparent)]
    Parent(#[from] ParentSetupError),
}

pub(crate) type Connector = HttpsConnector<Dialer>;

/// The outbound client, one per process, shared by the control plane
/// (its own calls) and the data plane (forwarding connectors, tunnels).
pub struct Outbound {
    /// Pooled, `h2` and `http/1.1` by ALPN: the proxy's own calls (token
    /// endpoints, IAM). Its connections are driven by the runtime that
    /// sends on it: the control plane's.
    pooled: Client<Connector, ProxyBody>,
    /// Offers `h2` and `http/1.1`: forwarding for HTTP/2 clients (and all
    /// clients with `protocol = "prefer_h2"`).
    any_connector: Connector,
    /// Offers `http/1.1` only: forwarding for HTTP/1.1 clients.
    http1_connector: Connector,
    /// Never through the parent proxy: plain `http://` forwarding to the
    /// address the egress check chose for a direct connection.
    direct_connector: Connector,
    resolve: Arc<BTreeMap<String, SocketAddr>>,
    parent: Option<Arc<Parent>>,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("protocol", &self.protocol)
            .field("parent", &self.parent)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// Builds the client: roots are the web PKI plus `extra_ca`; host names
    /// in `resolve` go to their configured address, others to DNS; with a
    /// parent proxy, every host that `no_proxy` does not name goes through
    /// it (reads the parent's password file).
    pub fn new(cfg: &UpstreamConfig) -> Result<Outbound, UpstreamSetupError> {
        let parent = Parent::from_config(cfg)?.map(Arc::new);
        let roots = crate::net::tls::root_store(&cfg.extra_ca)?;
        let tls = rustls::ClientConfig::builder_with_provider(crate::net::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let resolve: Arc<BTreeMap<String, SocketAddr>> = Arc::new(
            cfg.resolve
                .iter()
                .map(|(k, v)| (normalize_host(k), *v))
                .collect(),
        );
        let mut inner = HttpConnector::new_with_resolver(ResolveMap {
            map: resolve.clone(),
            dns: GaiResolver::new(),
        });
        inner.enforce_http(false);
        inner.set_nodelay(true);
        inner.set_connect_timeout(Some(cfg.connect_timeout));
        let direct = Dialer {
            direct: MappedPorts {
                inner,
                map: resolve.clone(),
            },
            parent: None,
            map: resolve.clone(),
        };
        let dialer = Dialer {
            parent: parent.clone(),
            ..direct.clone()
        };
        let any = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(dialer.clone());
        let http1 = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(dialer);
        let direct = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(direct);
        Ok(Outbound {
            pooled: pooled(any.clone()),
            any_connector: any,
            http1_connector: http1,
            direct_connector: direct,
            resolve,
            parent,
            protocol: cfg.protocol,
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.response_timeout,
        })
    }

    /// The connector for a forwarded request: one that offers `h2` (for
    /// HTTP/2 clients, or every client with `protocol = "prefer_h2"`), or
    /// `http/1.1` only. Returns whether it offers `h2`.
    /// `direct`: the target is an address the egress check chose for a
    /// direct connection (see [`Outbound::parent_for`]); its connector
    /// never goes through the parent.
    pub(crate) fn connector(&self, client_is_h2: bool, direct: bool) -> (&Connector, bool) {
        if direct {
            (&self.direct_connector, false)
        } else if self.protocol == UpstreamProtocol::PreferH2 || client_is_h2 {
            (&self.any_connector, true)
        } else {
            (&self.http1_connector, false)
        }
    }

    /// The `[upstream.resolve]` address of `host` (normalized), if any.
    pub fn resolved(&self, host: &str) -> Option<SocketAddr> {
        self.resolve.get(host).copied()
    }

    /// The parent proxy a connection to `host` goes through: `None` when
    /// there is none, or `no_proxy` names the host.
    pub(crate) fn parent_for(&self, host: &str) -> Option<&Arc<Parent>> {
        self.parent.as_ref().filter(|p| p.applies_to(host))
    }

    /// `[upstream] connect_timeout`.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// `[upstream] response_timeout`.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// Sends one of the proxy's own requests (token endpoint, IAM). The URI
    /// must be absolute (`https://host/path`); the destination is the URI's
    /// host, resolved through the map.
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, ForwardError> {
        // A refcount clone; the host is copied out only for an error.
        let authority = req.uri().authority().cloned();
        let host_on_error = || {
            authority
                .as_ref()
                .map(|a| a.host().to_owned())
                .unwrap_or_default()
        };
        match tokio::time::timeout(self.response_timeout, self.pooled.request(req)).await {
            Err(_) => Err(ForwardError::Timeout {
                host: host_on_error(),
                after: self.response_timeout,
            }),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                let cause = error_chain(&e);
                if e.is_connect() {
                    Err(ForwardError::Connect {
                        host: host_on_error(),
                        cause,
                    })
                } else {
                    Err(ForwardError::Upstream {
                        host: host_on_error(),
                        cause,
                    })
                }
            }
        }
    }
}

fn pooled(connector: Connector) -> Client<Connector, ProxyBody> {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(tune::UPSTREAM_IDLE_TIMEOUT)
        .pool_max_idle_per_host(tune::MAX_IDLE_PER_HOST)
        .http2_initial_stream_window_size(tune::H2_STREAM_WINDOW)
        .http2_initial_connection_window_size(tune::H2_CONNECTION_WINDOW)
        .build(connector)
}

/// The error and its sources, joined, so a user sees the root cause (e.g.
/// "invalid peer certificate: UnknownIssuer") and not only "client error".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// The TCP connection under every outbound connector: through the parent
/// proxy for a host `no_proxy` does not name (CONNECT to the
/// `[upstream.resolve]` address of a mapped host, else to the name, which
/// the parent resolves), else straight there. TLS, when the URI is
/// `https`, runs on top of either, to the real host's name.
#[derive(Clone)]
pub(crate) struct Dialer {
    direct: MappedPorts,
    parent: Option<Arc<Parent>>,
    map: Arc<BTreeMap<String, SocketAddr>>,
}

type Dialed = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl tower_service::Service<http::Uri> for Dialer {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Dialed;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.direct.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let host = uri.host().unwrap_or_default();
        let Some(parent) = self.parent.as_ref().filter(|p| p.applies_to(host)) else {
            let fut = self.direct.call(uri);
            return Box::pin(async move { fut.await.map_err(Into::into) });
        };
        let target = match self.map.get(&normalize_host(host)) {
            Some(addr) => addr.to_string(),
            None => {
                let port = uri.port_u16().unwrap_or_else(|| {
                    if uri.scheme() == Some(&http::uri::Scheme::HTTP) {
                        80
                    } else {
                        443
                    }
                });
                format!("{host}:{port}")
            }
        };
        let parent = parent.clone();
        Box::pin(async move {
            let tunnel = parent.connect(&target).await?;
            // TLS and HTTP clients speak first: a byte before that is not
            // the target's, and rustls would not see it.
            if !tunnel.early.is_empty() {
                return Err(format!(
                    "the parent proxy {} sent data after its answer to CONNECT {target}, before the client spoke",
                    parent.name()
                )
                .into());
            }
            Ok(TokioIo::new(tunnel.stream))
        })
    }
}

/// `[upstream.resolve]` in front of the system resolver.
#[derive(Clone)]
pub(crate) struct ResolveMap {
    map: Arc<BTreeMap<String, SocketAddr>>,
    dns: GaiResolver,
}

/// The TCP connector, with one rule on top of hyper-util's: a host in
/// `[upstream.resolve]` goes to exactly its configured address. hyper-util
/// lets a port named in the URI replace the mapped address's port; then a
/// request could pick any port on a mapped (often loopback or private)
/// address.
#[derive(Clone)]
pub(crate) struct MappedPorts {
    inner: HttpConnector<ResolveMap>,
    map: Arc<BTreeMap<String, SocketAddr>>,
}

impl tower_service::Service<http::Uri> for MappedPorts {
    type Response = <HttpConnector<ResolveMap> as tower_service::Service<http::Uri>>::Response;
    type Error = <HttpConnector<ResolveMap> as tower_service::Service<http::Uri>>::Error;
    type Future = <HttpConnector<ResolveMap> as tower_service::Service<http::Uri>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let mapped = uri.port().is_some()
            && uri
                .host()
                .is_some_and(|h| self.map.contains_key(&normalize_host(h)));
        if !mapped {
            return self.inner.call(uri);
        }
        // The same URI without its port: the mapped address keeps its own.
        let mut parts = http::uri::Parts::default();
        parts.scheme = uri.scheme().cloned();
        parts.authority = uri.host().and_then(|h| h.parse().ok());
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        match http::Uri::from_parts(parts) {
            Ok(u) => self.inner.call(u),
            Err(_) => self.inner.call(uri),
        }
    }
}

type Addrs = std::vec::IntoIter<SocketAddr>;

impl tower_service::Service<Name> for ResolveMap {
    type Response = Addrs;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Addrs, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        // A mapped address keeps its own port: hyper-util only overrides it
        // when the URI names a port explicitly.
        if let Some(addr) = self.map.get(&normalize_host(name.as_str())) {
            let addr = *addr;
            return Box::pin(async move { Ok(vec![addr].into_iter()) });
        }
        let fut = self.dns.call(name);
        Box::pin(async move {
            let addrs = fut.await?;
            Ok(addrs.collect::<Vec<_>>().into_iter())
        })
    }
}
