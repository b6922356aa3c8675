//! The upstream client for every outbound request the proxy makes, with
//! the `[upstream.resolve]` map and `extra_ca` roots: a pooled hyper
//! client for the proxy's own calls (token endpoints, IAM), and the
//! connectors that forwarded requests use through `crate::sticky`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{normalize_host, UpstreamConfig, UpstreamProtocol};
use crate::sticky::{IdleList, Sticky};

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request the proxy sends and every response it
/// writes: a streamed client body, or a small buffered one.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Wraps a streamed hyper body.
pub fn stream_body(body: Incoming) -> ProxyBody {
    body.map_err(BoxError::from).boxed()
}

/// A small in-memory body.
pub fn full_body(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

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
#[error("upstream.extra_ca: {0}")]
pub struct UpstreamSetupError(#[from] crate::tls::PemError);

pub(crate) type Connector = HttpsConnector<HttpConnector<ResolveMap>>;

/// The upstream client. Cheap to clone (a clone shares its connections).
#[derive(Clone)]
pub struct Upstream {
    /// Pooled, `h2` and `http/1.1` by ALPN: the proxy's own calls (token
    /// endpoints, IAM).
    any: Client<Connector, ProxyBody>,
    /// Offers `h2` and `http/1.1`: forwarding for HTTP/2 clients (and all
    /// clients with `protocol = "prefer_h2"`), see `crate::sticky`.
    any_connector: Connector,
    /// Offers `http/1.1` only: forwarding for HTTP/1.1 clients.
    http1_connector: Connector,
    /// Forwarding connections kept for reuse.
    idle: IdleList,
    protocol: UpstreamProtocol,
    response_timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("protocol", &self.protocol)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Builds the client: roots are the web PKI plus `extra_ca`; host names
    /// in `resolve` go to their configured address, others to DNS.
    pub fn new(cfg: &UpstreamConfig) -> Result<Upstream, UpstreamSetupError> {
        let roots = crate::tls::root_store(&cfg.extra_ca)?;
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new_with_resolver(ResolveMap::new(&cfg.resolve));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let any = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http.clone());
        let http1 = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Upstream {
            any: pooled(any.clone()),
            any_connector: any,
            http1_connector: http1,
            idle: IdleList::default(),
            protocol: cfg.protocol,
            response_timeout: cfg.response_timeout,
        })
    }

    /// The same client with forwarding connections of its own (a clone
    /// shares them): each worker thread gets one, so that the thread that
    /// drives an upstream connection is the one that sends on it.
    pub fn with_own_pool(&self) -> Upstream {
        Upstream {
            idle: IdleList::default(),
            ..self.clone()
        }
    }

    /// Forwards a client's request over the client connection's own
    /// upstream connection (`sticky`): in the client's HTTP version, or
    /// HTTP/2 by ALPN for every client with `protocol = "prefer_h2"`.
    pub(crate) async fn forward(
        &self,
        req: Request<ProxyBody>,
        client_version: Version,
        sticky: &Sticky,
    ) -> Result<Response<Incoming>, ForwardError> {
        let h2 = self.protocol == UpstreamProtocol::PreferH2 || client_version >= Version::HTTP_2;
        let connector = if h2 {
            &self.any_connector
        } else {
            &self.http1_connector
        };
        match tokio::time::timeout(self.response_timeout, sticky.send(connector, h2, req)).await {
            Ok(r) => r,
            Err(_) => Err(ForwardError::Timeout {
                host: sticky.host(),
                after: self.response_timeout,
            }),
        }
    }

    /// The forwarding connections kept for reuse.
    pub(crate) fn idle(&self) -> &IdleList {
        &self.idle
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
        match tokio::time::timeout(self.response_timeout, self.any.request(req)).await {
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
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        // Fixed windows: an adaptive one starts at 64 KiB and throttles
        // large responses while it learns; 4 MiB per stream (8 MiB per
        // connection) bounds what one upstream connection can buffer.
        .http2_initial_stream_window_size(4 << 20)
        .http2_initial_connection_window_size(8 << 20)
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

/// `[upstream.resolve]` in front of the system resolver.
#[derive(Clone)]
pub(crate) struct ResolveMap {
    map: Arc<BTreeMap<String, SocketAddr>>,
    dns: GaiResolver,
}

impl ResolveMap {
    fn new(map: &BTreeMap<String, SocketAddr>) -> Self {
        let map = map.iter().map(|(k, v)| (normalize_host(k), *v)).collect();
        ResolveMap {
            map: Arc::new(map),
            dns: GaiResolver::new(),
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
