//! The TOML configuration file: its shape, defaults, and the checks of
//! single values, with errors that name the key and what is wrong with it.
//! It imports nothing of the crate: what a value means to the rest of the
//! proxy (host patterns, CIDRs, routes, cross-references) is decided by
//! the one compile pass, `policy::compile`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

mod parent;
pub use parent::{parse_parent_proxy, ParentProxyAddr};

/// A configuration that could not be loaded: the file is missing, is not
/// TOML, or holds a value that is not allowed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a key of the wrong type or name.
    #[error("{path}: {message}")]
    Parse {
        /// The file that was parsed.
        path: PathBuf,
        /// The parser's message, which names the key and the line.
        message: String,
    },
    /// A key has a value that parses but is not allowed.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The dotted key, e.g. `intercept.hosts[2]`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[proxy]`: where to listen.
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// `[ca]`: the certificate authority that signs leaf certificates.
    #[serde(default)]
    pub ca: CaConfig,
    /// `[source]`: the identity that impersonates.
    #[serde(default)]
    pub source: SourceConfig,
    /// `[upstream]`: how the proxy reaches Google (and stand-ins for it).
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// `[intercept]`: which CONNECT hosts are terminated and routed.
    #[serde(default)]
    pub intercept: InterceptConfig,
    /// `[limits]`: timeouts and sizes that protect the proxy.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[audit]`: where the one-line-per-request audit record goes.
    #[serde(default)]
    pub audit: AuditConfig,
    /// `[[route]]`: the rules, first match wins.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// `[[client]]`: who may use the proxy.
    #[serde(default, rename = "client")]
    pub clients: Vec<ClientConfig>,
    /// `[metadata]`: a GCE metadata-server endpoint on the listener.
    #[serde(default)]
    pub metadata: MetadataConfig,
}

/// `[metadata]`: origin-form requests with `Metadata-Flavor: Google` on the
/// proxy listener are answered as the GCE metadata server, so clients
/// that only know Application Default Credentials work unchanged.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataConfig {
    /// Serve the endpoint at all.
    #[serde(default)]
    pub enabled: bool,
    /// What `project/project-id` answers; by default the project of a
    /// `…@PROJECT.iam.gserviceaccount.com` service account.
    #[serde(default)]
    pub project_id: Option<String>,
    /// What `project/numeric-project-id` answers (the project number);
    /// gcloud needs it to believe it is on GCE. Unset: 404.
    #[serde(default)]
    pub numeric_project_id: Option<String>,
    /// The target principal the metadata identity ("default") maps to.
    #[serde(default)]
    pub service_account: Option<String>,
    /// What the token endpoint hands out.
    #[serde(default)]
    pub tokens: MetadataTokens,
    /// `[[client]]` names that may get real access tokens.
    #[serde(default)]
    pub real_clients: Vec<String>,
    /// Audiences the identity endpoint mints ID tokens for; empty = any.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// `[[client]]` names that may get ID tokens from the identity
    /// endpoint. With `[[client]]` entries, no other client does; with
    /// none, anyone who reaches the listener does.
    #[serde(default)]
    pub id_token_clients: Vec<String>,
}

/// `[metadata] tokens = "placeholder" | "real"`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetadataTokens {
    /// An opaque placeholder that routes replace; the real token never
    /// leaves the proxy.
    #[default]
    Placeholder,
    /// The impersonated access token itself, for `real_clients` only.
    Real,
}

/// One `[[client]]`: a request is this client if it comes from one of
/// `cidrs` (when given) and carries `proxy_auth` (when given).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Shown in audit records and metrics; routes select with `clients`.
    pub name: String,
    /// Source address ranges, e.g. `"10.8.0.0/16"`.
    #[serde(default)]
    pub cidrs: Vec<String>,
    /// `Proxy-Authorization: Basic` credentials.
    #[serde(default)]
    pub proxy_auth: Option<ProxyAuthConfig>,
    /// URI or DNS subject alternative names, one of which a verified
    /// client certificate on `tls_listen` must carry (e.g. a SPIFFE ID).
    #[serde(default)]
    pub cert_san: Vec<String>,
}

/// `proxy_auth = { user, password_file }`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyAuthConfig {
    /// The Basic user name.
    pub user: String,
    /// A file holding the password (owner-only); the config never does.
    pub password_file: PathBuf,
}

/// `[audit]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Write audit records at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Append JSON lines to this file instead of stdout.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Rotate `file` when the next batch would take it past this size
    /// (`"100MiB"`, `"1GB"`, or bytes as an integer): it is renamed to
    /// `file.1` (the older ones shift up) and a new one is started.
    #[serde(default)]
    pub max_file_size: Option<Size>,
    /// Rotated files kept beside the current one (`file.1` … `file.N`);
    /// the oldest is deleted. Default 5; needs `max_file_size`.
    #[serde(default)]
    pub max_files: Option<usize>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            file: None,
            max_file_size: None,
            max_files: None,
        }
    }
}

/// Rotated audit files kept when `max_files` is not set.
pub const DEFAULT_AUDIT_MAX_FILES: usize = 5;
/// The smallest `[audit] max_file_size`.
const MIN_AUDIT_FILE_SIZE: u64 = 4096;
/// The most `[audit] max_files`.
const MAX_AUDIT_FILES: usize = 1000;

impl AuditConfig {
    /// `max_file_size` in bytes, if set (and valid: see `Config::validate`).
    pub fn max_file_bytes(&self) -> Option<u64> {
        self.max_file_size.as_ref().and_then(|s| s.bytes().ok())
    }
}

/// A size in a config file: bytes as an integer, or text with a unit
/// (`"100MiB"`, `"512 KiB"`, `"1GB"`), read by the `bytesize` crate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// A plain number of bytes.
    Bytes(u64),
    /// A number with a unit.
    Text(String),
}

impl Size {
    /// The size in bytes, or why the text is not a size.
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(n) => Ok(*n),
            Size::Text(t) => t.trim().parse::<bytesize::ByteSize>().map(|b| b.as_u64()).map_err(|e| {
                format!("`{t}` is not a size ({e}); write it like \"100MiB\", \"1GB\" or a number of bytes")
            }),
        }
    }
}

/// `audit = "all" | "errors" | "sample:0.01"` on a route: which of its
/// requests get an audit record. Denials, errors (status 400 and up, or
/// no response) and requests that carried no token are recorded whatever
/// the route says.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum AuditSampling {
    /// Every request (the default).
    #[default]
    All,
    /// Only the ones that are always recorded.
    Errors,
    /// Those, and this fraction (0 to 1) of the rest, drawn at random.
    Sample(f64),
}

impl AuditSampling {
    /// Parses a route's `audit` value.
    pub fn parse(s: &str) -> Result<AuditSampling, String> {
        match s.trim() {
            "all" => Ok(AuditSampling::All),
            "errors" => Ok(AuditSampling::Errors),
            t => {
                let fraction = t
                    .strip_prefix("sample:")
                    .and_then(|f| f.trim().parse::<f64>().ok())
                    .filter(|f| (0.0..=1.0).contains(f));
                match fraction {
                    Some(f) => Ok(AuditSampling::Sample(f)),
                    None => Err(format!(
                        "`{s}` is not an audit mode; write \"all\", \"errors\" or \"sample:F\" with F from 0 to 1 (e.g. \"sample:0.01\" keeps 1% of successful requests)"
                    )),
                }
            }
        }
    }
}

fn yes() -> bool {
    true
}

/// One `[[route]]` rule as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Shown in errors, audit records and metrics.
    pub name: String,
    /// Exact host names or `*.suffix` patterns.
    pub hosts: Vec<String>,
    /// Matches whole path segments.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// HTTP methods; empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// `[[client]]` names; empty means any client.
    #[serde(default)]
    pub clients: Vec<String>,
    /// Target service account for an access token.
    #[serde(default)]
    pub impersonate: Option<String>,
    /// Delegate chain, in order.
    #[serde(default)]
    pub delegates: Vec<String>,
    /// OAuth scopes; empty means `cloud-platform`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Requested token lifetime, e.g. `"3600s"`.
    #[serde(default)]
    pub lifetime: Option<String>,
    /// `false`: a time box. The token is minted once and never refreshed;
    /// after it expires the route answers 503 until a reload.
    #[serde(default = "yes")]
    pub refresh: bool,
    /// Keyless domain-wide delegation: the Workspace user the
    /// `impersonate` account's token acts for (`sub`).
    #[serde(default)]
    pub subject: Option<String>,
    /// Sets `x-goog-user-project` (quota and billing project).
    #[serde(default)]
    pub quota_project: Option<String>,
    /// An ID token instead of an access token.
    #[serde(default)]
    pub id_token: Option<IdTokenConfig>,
    /// `signBlob` / `signJwt` as this account: matches only
    /// `POST …/serviceAccounts/{this account}:signBlob|:signJwt` on IAM
    /// Credentials, which goes out with the source credential and the
    /// route's `delegates` in the body.
    #[serde(default)]
    pub sign_as: Option<String>,
    /// A `sign_as` route also signs token-endpoint assertions (a JWT whose
    /// `aud` is Google's token endpoint); off by default, since such a
    /// signature lets the client mint its own access tokens.
    #[serde(default)]
    pub allow_token_assertions: bool,
    /// A Credential Access Boundary: the route's token is exchanged at STS
    /// for one limited to these rules (Cloud Storage routes only).
    #[serde(default)]
    pub access_boundary: Option<Vec<BoundaryRuleConfig>>,
    /// `"deny"` or `"passthrough"` instead of a credential.
    #[serde(default)]
    pub action: Option<RouteActionConfig>,
    /// What to do with a client's own `Authorization` header.
    #[serde(default)]
    pub authorization: AuthorizationPolicy,
    /// Mint the token at start (and report it in `/readyz`).
    #[serde(default)]
    pub warm: bool,
    /// `false` on a `deny` route: report mode. A matching request is
    /// audited and counted as `would_deny`, then goes on to the next
    /// matching route.
    #[serde(default = "yes")]
    pub enforce: bool,
    /// Which requests get an audit record: `"all"` (default), `"errors"`
    /// or `"sample:0.01"`; see [`AuditSampling`].
    #[serde(default)]
    pub audit: Option<String>,
}

/// `id_token = { audience, impersonate, delegates }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdTokenConfig {
    /// The `aud` claim, e.g. the Cloud Run service URL.
    pub audience: String,
    /// The service account the ID token is for.
    pub impersonate: String,
    /// Delegate chain, in order.
    #[serde(default)]
    pub delegates: Vec<String>,
}

/// One `access_boundary` rule: `{ resource, permissions, condition }`.
/// `{bucket}` in `resource` or `condition` stands for the bucket each
/// request addresses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoundaryRuleConfig {
    /// `//storage.googleapis.com/projects/_/buckets/BUCKET`.
    pub resource: String,
    /// `inRole:roles/…` entries.
    pub permissions: Vec<String>,
    /// A CEL expression, e.g. `resource.name.startsWith('projects/_/buckets/B/objects/reports/')`.
    #[serde(default)]
    pub condition: Option<String>,
}

/// `action = …` for routes without a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteActionConfig {
    /// Refuse with 403.
    Deny,
    /// Forward untouched.
    Passthrough,
}

/// `authorization = "replace" | "keep"`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizationPolicy {
    /// Remove the client's `Authorization` and set the route's token.
    #[default]
    Replace,
    /// Keep a client-supplied `Authorization`; inject only when absent.
    Keep,
}

/// `[proxy]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The proxy listener (CONNECT and absolute-form `http://`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// How long in-flight requests and tunnels may take to finish after a
    /// shutdown signal.
    #[serde(default = "default_drain", deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
    /// The admin listener: `/healthz`, `/readyz`, `/metrics`, `POST
    /// /reload`. Never on the proxy port.
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// Serve anyone who can reach a non-loopback `listen` address, without
    /// `[[client]]` entries. Off unless set explicitly.
    #[serde(default)]
    pub allow_any_client: bool,
    /// Threads serving client connections, each with its own event loop
    /// (a connection and its upstream requests stay on one thread). Unset:
    /// one per CPU core.
    #[serde(default)]
    pub workers: Option<usize>,
    /// After a shutdown signal, how long `/readyz` answers 503 while the
    /// listener keeps accepting and serving, so that load balancers and
    /// Kubernetes endpoints stop sending new connections before it
    /// closes. 0 (the default): stop accepting at once.
    #[serde(default, deserialize_with = "de_duration")]
    pub shutdown_delay: Duration,
    /// Reload when the config file, or a password file it names, changes
    /// (including a Kubernetes ConfigMap's `..data` symlink swap), as
    /// SIGHUP does.
    #[serde(default)]
    pub watch_config: bool,
    /// An HTTPS proxy listener: TLS to the proxy (`[proxy.tls]`), then
    /// CONNECT or absolute-form inside.
    #[serde(default)]
    pub tls_listen: Option<SocketAddr>,
    /// A transparent listener: clients connect here as if to the Google
    /// API host itself (DNS or an iptables REDIRECT sent them); the TLS
    /// SNI names the host.
    #[serde(default)]
    pub transparent_listen: Option<SocketAddr>,
    /// Peers (CIDRs, e.g. a load balancer) that must send a PROXY protocol
    /// v1/v2 header on every listener; its source address is the client's.
    #[serde(default)]
    pub proxy_protocol_from: Vec<String>,
    /// `[proxy.tls]`: what `tls_listen` presents and whom it accepts.
    #[serde(default)]
    pub tls: Option<ProxyTlsConfig>,
}

/// `[proxy.tls]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyTlsConfig {
    /// The listener's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM); owner-only, like the CA key.
    pub key: PathBuf,
    /// Require a client certificate chained to this CA (PEM).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM) for `client_ca`.
    #[serde(default)]
    pub client_crl: Vec<PathBuf>,
}

/// Most `[proxy] workers` accepted.
pub const MAX_WORKERS: usize = 1024;

impl ProxyConfig {
    /// `workers`, or one per CPU core.
    pub fn worker_count(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            admin: None,
            allow_any_client: false,
            workers: None,
            listen: default_listen(),
            drain_timeout: default_drain(),
            shutdown_delay: Duration::ZERO,
            watch_config: false,
            tls_listen: None,
            transparent_listen: None,
            proxy_protocol_from: Vec::new(),
            tls: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_drain() -> Duration {
    Duration::from_secs(30)
}

/// `[ca]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// The CA certificate (PEM).
    #[serde(default = "default_ca_cert")]
    pub cert: PathBuf,
    /// The CA private key (PEM, PKCS#8); must be readable by the owner only.
    #[serde(default = "default_ca_key")]
    pub key: PathBuf,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            cert: default_ca_cert(),
            key: default_ca_key(),
        }
    }
}

fn default_ca_cert() -> PathBuf {
    PathBuf::from("certs/ca.pem")
}

fn default_ca_key() -> PathBuf {
    PathBuf::from("certs/ca-key.pem")
}

/// `[source]`: the source credential (credential A in Google's docs).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Which kind of source credential.
    #[serde(default, rename = "type")]
    pub kind: SourceKind,
    /// A service account key or an `authorized_user` file.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// A file that holds an access token (`type = "access_token"`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// The kinds of source credential.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Application Default Credentials discovery.
    #[default]
    Adc,
    /// A service account key file.
    ServiceAccount,
    /// A gcloud user login (`authorized_user` file).
    AuthorizedUser,
    /// The GCE/GKE metadata server.
    Metadata,
    /// A static access token read from `token_file`.
    AccessToken,
}

/// `[upstream]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// PEM files trusted in addition to the built-in roots, for forwarding
    /// and for token/IAM calls.
    #[serde(default)]
    pub extra_ca: Vec<PathBuf>,
    /// Host name → `ip:port`, used instead of DNS for every outbound
    /// connection the proxy makes.
    #[serde(default)]
    pub resolve: BTreeMap<String, SocketAddr>,
    /// How long to wait for a TCP connection to an upstream.
    #[serde(default = "default_connect_timeout", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// How long to wait for an upstream's response headers (→ 504).
    #[serde(default = "default_response_timeout", deserialize_with = "de_duration")]
    pub response_timeout: Duration,
    /// Which HTTP version forwarded requests use upstream.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// A parent proxy (`http://host:port`) that every outbound connection
    /// goes through by CONNECT: forwarding, tunnels, token endpoints, IAM.
    #[serde(default)]
    pub proxy: Option<String>,
    /// `Proxy-Authorization: Basic` credentials for the parent proxy.
    #[serde(default)]
    pub proxy_auth: Option<ProxyAuthConfig>,
    /// Hosts that bypass the parent proxy: exact names (or addresses) and
    /// `.suffix` for every name under a domain.
    #[serde(default)]
    pub no_proxy: Vec<String>,
}

/// `[upstream] protocol`: the HTTP version of forwarded requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// The client's own: HTTP/2 (by ALPN) for HTTP/2 clients, HTTP/1.1 for
    /// HTTP/1.1 clients, each over its own pooled connections. HTTP/1.1
    /// costs the proxy less CPU per request and spreads concurrent requests
    /// over connections (and cores) instead of one multiplexed connection.
    #[default]
    Match,
    /// HTTP/2 (by ALPN) for every request: all concurrent requests to a
    /// host share one upstream connection (fewer TLS handshakes upstream).
    PreferH2,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            extra_ca: Vec::new(),
            resolve: BTreeMap::new(),
            connect_timeout: default_connect_timeout(),
            response_timeout: default_response_timeout(),
            protocol: UpstreamProtocol::default(),
            proxy: None,
            proxy_auth: None,
            no_proxy: Vec::new(),
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_response_timeout() -> Duration {
    Duration::from_secs(300)
}

/// `[intercept]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterceptConfig {
    /// Hosts that are terminated and routed: exact names or `*.suffix`.
    #[serde(default = "default_intercept_hosts")]
    pub hosts: Vec<String>,
    /// What happens to a CONNECT for any other host.
    #[serde(default)]
    pub other: OtherHosts,
    /// Ports an intercepted host may be CONNECTed on.
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
    /// Ports an absolute-form `http://` request may name.
    #[serde(default = "default_http_ports")]
    pub http_ports: Vec<u16>,
    /// Private, loopback or link-local ranges (CIDRs) that `other =
    /// "tunnel"` may reach; all others are refused.
    #[serde(default)]
    pub allow_private: Vec<String>,
    /// Allow CONNECT to an IP address instead of a host name (tunnel only).
    #[serde(default)]
    pub allow_ip_literals: bool,
}

fn default_ports() -> Vec<u16> {
    vec![443]
}

fn default_http_ports() -> Vec<u16> {
    vec![80]
}

impl Default for InterceptConfig {
    fn default() -> Self {
        InterceptConfig {
            ports: default_ports(),
            http_ports: default_http_ports(),
            allow_private: Vec::new(),
            allow_ip_literals: false,
            hosts: default_intercept_hosts(),
            other: OtherHosts::default(),
        }
    }
}

fn default_intercept_hosts() -> Vec<String> {
    vec!["*.googleapis.com".to_owned()]
}

/// What to do with a CONNECT to a host that is not intercepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtherHosts {
    /// Answer 403.
    #[default]
    Deny,
    /// Splice bytes to the real host without looking at them.
    Tunnel,
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Time a client has to send a complete request head (slowloris guard).
    #[serde(
        default = "default_header_read_timeout",
        deserialize_with = "de_duration"
    )]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    #[serde(default = "default_idle_timeout", deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// Largest request head accepted; a larger one gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// HTTP/2 streams one client connection may have open at once.
    #[serde(default = "default_h2_streams")]
    pub h2_max_concurrent_streams: u32,
    /// Client connections served at once; more wait for a free place.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A client connection older than this (±10% jitter) is retired, so
    /// that long-lived connections spread again over the replicas behind
    /// a load balancer: HTTP/2 gets GOAWAY and finishes its streams,
    /// HTTP/1.1 closes after the next response (`Connection: close`).
    /// Blind tunnels are never cut. Unset: connections live until idle.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max_connection_age: Option<Duration>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_header_bytes: default_max_header_bytes(),
            h2_max_concurrent_streams: default_h2_streams(),
            max_connections: default_max_connections(),
            max_connection_age: None,
        }
    }
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(90)
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}

fn default_h2_streams() -> u32 {
    256
}

fn default_max_connections() -> usize {
    10_000
}

/// Above this, `max_connections` is no limit at all (and the semaphore
/// behind it has a ceiling).
const MAX_CONNECTIONS: usize = 1_000_000;
/// A request head larger than this is not a request.
const MAX_HEADER_BYTES: usize = 16 * 1024 * 1024;
/// Timeouts beyond a week are mistakes (and overflow `Instant`).
const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);

/// Parses durations such as `"10s"`, `"90s"`, `"1m 30s"` or `"3600s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}); write it like \"10s\" or \"5m\""))
}

/// Whether a file that holds a secret (the CA key, a password file),
/// with permission bits `mode` and owned by `owner_uid`, is readable only
/// by whom it should be: its owner (mode 0600 or less), or, when root owns
/// it, also its group (0640 or less). The second shape is how Kubernetes
/// hands a Secret volume to a non-root container (`fsGroup`: root-owned,
/// group the pod's, mode 0440); root chose that group, which is the rule
/// PostgreSQL applies to its server key. A file of one's own stays
/// owner-only, so a laptop's key readable by a shared group (macOS
/// `staff`) is still refused.
///
/// The group exception holds only for a reader that is not root itself: a
/// proxy running as root reads any file, so for it a root-owned secret is
/// its own and stays owner-only.
pub fn secret_mode_ok(mode: u32, owner_uid: u32, reader_uid: Option<u32>) -> bool {
    let mode = mode & 0o777;
    let reader_is_root = reader_uid.is_none_or(|u| u == 0);
    if owner_uid == 0 && !reader_is_root {
        mode & 0o037 == 0
    } else {
        mode & 0o077 == 0
    }
}

/// The uid this process runs as (the owner of `/proc/self`), where the
/// system says; `None` elsewhere (then treated as root: the strict rule).
pub fn process_uid() -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").ok().map(|m| m.uid())
    }
    #[cfg(not(unix))]
    {
        None
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates config text; `path` is used in messages and to
    /// resolve relative file names.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        if let Some(dir) = path.parent() {
            cfg.resolve_paths(dir);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Relative file names in the config are relative to the config file,
    /// so a config works the same from any working directory.
    fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !dir.as_os_str().is_empty() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.ca.cert);
        fix(&mut self.ca.key);
        self.upstream.extra_ca.iter_mut().for_each(fix);
        if let Some(a) = self.upstream.proxy_auth.as_mut() {
            fix(&mut a.password_file);
        }
        if let Some(p) = self.source.file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.source.token_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.audit.file.as_mut() {
            fix(p);
        }
        if let Some(t) = self.proxy.tls.as_mut() {
            fix(&mut t.cert);
            fix(&mut t.key);
            if let Some(p) = t.client_ca.as_mut() {
                fix(p);
            }
            t.client_crl.iter_mut().for_each(fix);
        }
        for c in &mut self.clients {
            if let Some(a) = c.proxy_auth.as_mut() {
                fix(&mut a.password_file);
            }
        }
    }

    /// Checks the values that parse but are not allowed, each on its own.
    /// What values mean together (host patterns, CIDRs, routes, names that
    /// refer to other entries) is checked by `policy::compile`, which every
    /// start, reload and `check` runs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.intercept.hosts.is_empty() {
            return Err(ConfigError::invalid(
                "intercept.hosts",
                "is empty; list the hosts to terminate, e.g. [\"*.googleapis.com\"]",
            ));
        }
        self.validate_audit()?;
        self.validate_clients()?;
        self.validate_metadata()?;
        self.validate_parent_proxy()?;
        if self.intercept.ports.is_empty() || self.intercept.ports.contains(&0) {
            return Err(ConfigError::invalid(
                "intercept.ports",
                "list the ports intercepted hosts may be reached on, e.g. [443]",
            ));
        }
        if self.intercept.http_ports.is_empty() || self.intercept.http_ports.contains(&0) {
            return Err(ConfigError::invalid(
                "intercept.http_ports",
                "list the ports absolute-form http:// requests may name, e.g. [80]",
            ));
        }
        match self.source.kind {
            SourceKind::ServiceAccount | SourceKind::AuthorizedUser
                if self.source.file.is_none() =>
            {
                return Err(ConfigError::invalid(
                    "source.file",
                    "is required for this source type: the path of the key or credentials JSON file",
                ));
            }
            SourceKind::AccessToken if self.source.token_file.is_none() => {
                return Err(ConfigError::invalid(
                    "source.token_file",
                    "is required for type = \"access_token\": a file that holds the token",
                ));
            }
            _ => {}
        }
        let l = &self.limits;
        if l.max_header_bytes < 1024 {
            return Err(ConfigError::invalid(
                "limits.max_header_bytes",
                "must be at least 1024",
            ));
        }
        if l.h2_max_concurrent_streams == 0 {
            return Err(ConfigError::invalid(
                "limits.h2_max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if l.max_connections == 0 || l.max_connections > MAX_CONNECTIONS {
            return Err(ConfigError::invalid(
                "limits.max_connections",
                format!("must be between 1 and {MAX_CONNECTIONS}"),
            ));
        }
        if matches!(self.proxy.workers, Some(n) if n == 0 || n > MAX_WORKERS) {
            return Err(ConfigError::invalid(
                "proxy.workers",
                format!("must be between 1 and {MAX_WORKERS} (leave it out for one per CPU core)"),
            ));
        }
        if l.max_header_bytes > MAX_HEADER_BYTES {
            return Err(ConfigError::invalid(
                "limits.max_header_bytes",
                format!("must be at most {MAX_HEADER_BYTES} (16 MiB)"),
            ));
        }
        for (key, d) in [
            ("limits.header_read_timeout", l.header_read_timeout),
            ("limits.idle_timeout", l.idle_timeout),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.response_timeout", self.upstream.response_timeout),
            ("proxy.drain_timeout", self.proxy.drain_timeout),
        ] {
            if d.is_zero() || d > MAX_TIMEOUT {
                return Err(ConfigError::invalid(
                    key,
                    "must be longer than 0s and at most 7 days",
                ));
            }
        }
        if let Some(age) = l.max_connection_age {
            if age.is_zero() || age > MAX_TIMEOUT {
                return Err(ConfigError::invalid(
                    "limits.max_connection_age",
                    "must be longer than 0s and at most 7 days (e.g. \"10m\"); leave it out to keep connections until they are idle",
                ));
            }
        }
        if self.proxy.shutdown_delay > MAX_TIMEOUT {
            return Err(ConfigError::invalid(
                "proxy.shutdown_delay",
                "must be at most 7 days; a few seconds more than your load balancer takes to see /readyz fail is enough (e.g. \"5s\")",
            ));
        }
        Ok(())
    }

    fn validate_audit(&self) -> Result<(), ConfigError> {
        let a = &self.audit;
        if let Some(size) = &a.max_file_size {
            let bytes = size
                .bytes()
                .map_err(|e| ConfigError::invalid("audit.max_file_size", e))?;
            if bytes < MIN_AUDIT_FILE_SIZE {
                return Err(ConfigError::invalid(
                    "audit.max_file_size",
                    format!("must be at least {MIN_AUDIT_FILE_SIZE} bytes; write e.g. \"100MiB\""),
                ));
            }
            if a.file.is_none() {
                return Err(ConfigError::invalid(
                    "audit.max_file_size",
                    "rotates the audit file, and records go to stdout: set audit.file, or remove max_file_size",
                ));
            }
        }
        if let Some(n) = a.max_files {
            if a.max_file_size.is_none() {
                return Err(ConfigError::invalid(
                    "audit.max_files",
                    "only applies with audit.max_file_size (size-based rotation): set that too, or remove max_files",
                ));
            }
            if n == 0 || n > MAX_AUDIT_FILES {
                return Err(ConfigError::invalid(
                    "audit.max_files",
                    format!("must be from 1 to {MAX_AUDIT_FILES} (rotated files kept beside the current one)"),
                ));
            }
        }
        Ok(())
    }

    fn validate_clients(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            if c.name.trim().is_empty() || !names.insert(c.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("client[{i}].name"),
                    format!("`{}` must be non-empty and unique", c.name),
                ));
            }
            if c.cidrs.is_empty() && c.proxy_auth.is_none() && c.cert_san.is_empty() {
                return Err(ConfigError::invalid(
                    format!("client[{i}] (\"{}\")", c.name),
                    "needs `cidrs`, `proxy_auth`, `cert_san`, or several: a client that matches everyone would make the list pointless",
                ));
            }
            for (j, san) in c.cert_san.iter().enumerate() {
                if san.trim().is_empty() || san.contains(char::is_whitespace) {
                    return Err(ConfigError::invalid(
                        format!("client[{i}].cert_san[{j}]"),
                        format!("`{san}` is not a URI or DNS name (e.g. \"spiffe://corp/ns/batch/sa/runner\")"),
                    ));
                }
            }
            if !c.cert_san.is_empty()
                && self
                    .proxy
                    .tls
                    .as_ref()
                    .is_none_or(|t| t.client_ca.is_none())
            {
                return Err(ConfigError::invalid(
                    format!("client[{i}].cert_san"),
                    "needs [proxy] tls_listen and [proxy.tls] client_ca: only a certificate verified against client_ca has SANs to match",
                ));
            }
            if let Some(a) = &c.proxy_auth {
                if a.user.is_empty() || a.user.contains(':') {
                    return Err(ConfigError::invalid(
                        format!("client[{i}].proxy_auth.user"),
                        "must be non-empty and hold no `:`",
                    ));
                }
            }
        }
        if let Some(admin) = self.proxy.admin {
            if admin == self.proxy.listen && admin.port() != 0 {
                return Err(ConfigError::invalid(
                    "proxy.admin",
                    "must differ from proxy.listen: the admin endpoints are never served on the proxy port",
                ));
            }
        }
        let p = &self.proxy;
        let listeners = [
            ("proxy.listen", Some(p.listen)),
            ("proxy.tls_listen", p.tls_listen),
            ("proxy.transparent_listen", p.transparent_listen),
        ];
        for (key, addr) in listeners {
            let Some(addr) = addr else { continue };
            let ip = addr.ip();
            if !ip.is_loopback() && self.clients.is_empty() && !p.allow_any_client {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "{ip} is reachable from other machines, and whoever reaches the proxy acts as its target service accounts; add [[client]] entries (cidrs, proxy_auth and/or cert_san), or set [proxy] allow_any_client = true if that is really intended"
                    ),
                ));
            }
            let admin = ("proxy.admin", p.admin);
            let clash = listeners
                .iter()
                .take_while(|(k, _)| *k != key)
                .chain(std::iter::once(&admin))
                .find(|(_, other)| *other == Some(addr) && addr.port() != 0);
            if let Some((other, _)) = clash {
                return Err(ConfigError::invalid(
                    key,
                    format!("{addr} is also {other}; every listener needs its own address"),
                ));
            }
        }
        match (&p.tls_listen, &p.tls) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "proxy.tls",
                    "is required with tls_listen: add [proxy.tls] with cert and key (PEM files), and client_ca to require client certificates",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "proxy.tls_listen",
                    "is not set, so [proxy.tls] would be used by no listener; set tls_listen = \"0.0.0.0:8443\" or remove [proxy.tls]",
                ))
            }
            _ => {}
        }
        if let Some(t) = &p.tls {
            if t.client_ca.is_none() && !t.client_crl.is_empty() {
                return Err(ConfigError::invalid(
                    "proxy.tls.client_crl",
                    "needs client_ca: revocation lists apply to client certificates, which are asked for only with client_ca",
                ));
            }
        }
        Ok(())
    }

    fn validate_metadata(&self) -> Result<(), ConfigError> {
        let m = &self.metadata;
        for (i, a) in m.audiences.iter().enumerate() {
            if a.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("metadata.audiences[{i}]"),
                    "must be non-empty (e.g. \"https://svc.run.app\")",
                ));
            }
        }
        if let Some(p) = &m.project_id {
            if p.trim().is_empty() || p.contains(char::is_whitespace) {
                return Err(ConfigError::invalid(
                    "metadata.project_id",
                    format!("`{p}` is not a project ID"),
                ));
            }
        }
        if let Some(n) = &m.numeric_project_id {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ConfigError::invalid(
                    "metadata.numeric_project_id",
                    format!("`{n}` is not a project number (digits only, e.g. \"123456789012\")"),
                ));
            }
        }
        if !m.enabled {
            return Ok(());
        }
        if m.service_account.is_none() {
            return Err(ConfigError::invalid(
                "metadata.service_account",
                "is required when [metadata] enabled = true: the service account (email) the metadata identity maps to",
            ));
        }
        if m.tokens == MetadataTokens::Real && m.real_clients.is_empty() {
            return Err(ConfigError::invalid(
                "metadata.real_clients",
                "is empty but tokens = \"real\" hands the impersonated token itself to clients; list the [[client]] names that may have it",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn empty_file_gets_defaults() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.proxy.listen, default_listen());
        assert_eq!(cfg.limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(cfg.limits.max_header_bytes, 65536);
        assert_eq!(cfg.intercept.other, OtherHosts::Deny);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = parse("[proxy]\nlisten = \"127.0.0.1:1\"\nlistn = 3\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("listn"), "{msg}");
    }

    #[test]
    fn audit_rotation_sizes_parse_and_mistakes_name_the_key() {
        let cfg = parse("[audit]\nfile = \"a.log\"\nmax_file_size = \"100MiB\"\nmax_files = 3\n")
            .unwrap();
        assert_eq!(cfg.audit.max_file_bytes(), Some(100 << 20));
        assert_eq!(cfg.audit.max_files, Some(3));
        let cfg = parse("[audit]\nfile = \"a.log\"\nmax_file_size = \"1GB\"\n").unwrap();
        assert_eq!(cfg.audit.max_file_bytes(), Some(1_000_000_000));
        let cfg = parse("[audit]\nfile = \"a.log\"\nmax_file_size = 65536\n").unwrap();
        assert_eq!(cfg.audit.max_file_bytes(), Some(65536));
        for (text, key, says) in [
            (
                "file = \"a.log\"\nmax_file_size = \"lots\"",
                "audit.max_file_size",
                "not a size",
            ),
            (
                "file = \"a.log\"\nmax_file_size = \"1KiB\"",
                "audit.max_file_size",
                "at least 4096",
            ),
            (
                "max_file_size = \"1MiB\"",
                "audit.max_file_size",
                "set audit.file",
            ),
            (
                "file = \"a.log\"\nmax_files = 3",
                "audit.max_files",
                "max_file_size",
            ),
            (
                "file = \"a.log\"\nmax_file_size = \"1MiB\"\nmax_files = 0",
                "audit.max_files",
                "from 1",
            ),
        ] {
            let err = parse(&format!("[audit]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn route_audit_modes_parse() {
        assert_eq!(AuditSampling::parse("all"), Ok(AuditSampling::All));
        assert_eq!(AuditSampling::parse("errors"), Ok(AuditSampling::Errors));
        assert_eq!(
            AuditSampling::parse("sample:0.01"),
            Ok(AuditSampling::Sample(0.01))
        );
        assert_eq!(
            AuditSampling::parse("sample:1"),
            Ok(AuditSampling::Sample(1.0))
        );
        for bad in ["sample:1.5", "sample:-0.1", "sample:", "some", "sample:NaN"] {
            let err = AuditSampling::parse(bad).unwrap_err();
            assert!(err.contains("sample:0.01"), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_parse_and_zero_is_refused() {
        let cfg = parse("[limits]\nidle_timeout = \"2m\"\n").unwrap();
        assert_eq!(cfg.limits.idle_timeout, Duration::from_secs(120));
        let err = parse("[limits]\nidle_timeout = \"0s\"\n").unwrap_err();
        assert!(err.to_string().contains("limits.idle_timeout"), "{err}");
        let err = parse("[limits]\nidle_timeout = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
    }

    #[test]
    fn workers_and_upstream_protocol_are_checked_with_key_names() {
        let cfg = parse("").unwrap();
        assert!(cfg.proxy.worker_count() >= 1);
        assert_eq!(cfg.upstream.protocol, UpstreamProtocol::Match);
        let cfg = parse("[proxy]\nworkers = 3\n[upstream]\nprotocol = \"prefer_h2\"\n").unwrap();
        assert_eq!(cfg.proxy.worker_count(), 3);
        assert_eq!(cfg.upstream.protocol, UpstreamProtocol::PreferH2);
        for bad in ["0", "1025"] {
            let err = parse(&format!("[proxy]\nworkers = {bad}\n")).unwrap_err();
            assert!(err.to_string().contains("proxy.workers"), "{err}");
        }
        let err = parse("[upstream]\nprotocol = \"h3\"\n").unwrap_err();
        assert!(err.to_string().contains("prefer_h2"), "{err}");
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let cfg =
            Config::parse(Path::new("/etc/ip/proxy.toml"), "[ca]\ncert = \"ca.pem\"\n").unwrap();
        assert_eq!(cfg.ca.cert, PathBuf::from("/etc/ip/ca.pem"));
    }

    #[test]
    fn metadata_section_is_validated_with_key_names() {
        let cfg = parse("").unwrap();
        assert!(!cfg.metadata.enabled);
        assert_eq!(cfg.metadata.tokens, MetadataTokens::Placeholder);
        let err = parse("[metadata]\nenabled = true\n").unwrap_err();
        assert!(
            err.to_string().contains("metadata.service_account"),
            "{err}"
        );
        let sa = "service_account = \"a@p.iam.gserviceaccount.com\"";
        let err = parse(&format!(
            "[metadata]\nenabled = true\n{sa}\ntokens = \"real\"\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("metadata.real_clients"), "{err}");
        let err = parse(&format!(
            "[metadata]\nenabled = true\n{sa}\ntoken = \"real\"\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");
        let cfg = parse(&format!(
            "[metadata]\nenabled = true\n{sa}\ntokens = \"real\"\nreal_clients = [\"ci\"]\n[[client]]\nname = \"ci\"\ncidrs = [\"127.0.0.1\"]\n"
        ))
        .unwrap();
        assert_eq!(cfg.metadata.tokens, MetadataTokens::Real);
    }

    #[test]
    fn secret_files_are_owner_only_or_root_owned_and_group_read() {
        // (mode, owner, reader, ok)
        for (mode, uid, reader, ok) in [
            (0o600, 1000, Some(1000), true),
            (0o400, 1000, Some(1000), true),
            (0o640, 1000, Some(1000), false),
            (0o604, 1000, Some(1000), false),
            (0o600, 0, Some(65532), true),
            (0o440, 0, Some(65532), true),
            (0o640, 0, Some(65532), true),
            (0o660, 0, Some(65532), false),
            (0o644, 0, Some(65532), false),
            (0o650, 0, Some(65532), false),
            // Root reading its own file: owner-only.
            (0o600, 0, Some(0), true),
            (0o640, 0, Some(0), false),
            (0o440, 0, None, false),
        ] {
            assert_eq!(
                secret_mode_ok(mode, uid, reader),
                ok,
                "{mode:o} owned by {uid}, read by {reader:?}"
            );
        }
    }

    #[test]
    fn replica_keys_default_off_and_are_checked_with_key_names() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.proxy.shutdown_delay, Duration::ZERO);
        assert!(!cfg.proxy.watch_config);
        assert_eq!(cfg.limits.max_connection_age, None);
        let cfg = parse(
            "[proxy]\nshutdown_delay = \"5s\"\nwatch_config = true\n[limits]\nmax_connection_age = \"10m\"\n",
        )
        .unwrap();
        assert_eq!(cfg.proxy.shutdown_delay, Duration::from_secs(5));
        assert!(cfg.proxy.watch_config);
        assert_eq!(
            cfg.limits.max_connection_age,
            Some(Duration::from_secs(600))
        );
        assert!(parse("[proxy]\nshutdown_delay = \"0s\"\n").is_ok());
        for bad in [
            "[limits]\nmax_connection_age = \"0s\"\n",
            "[limits]\nmax_connection_age = \"30d\"\n",
            "[limits]\nmax_connection_age = \"later\"\n",
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("max_connection_age"), "{bad}: {err}");
        }
        let err = parse("[proxy]\nshutdown_delay = \"8d\"\n").unwrap_err();
        assert!(err.to_string().contains("proxy.shutdown_delay"), "{err}");
    }

    #[test]
    fn gateway_listeners_are_checked_with_key_names() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.proxy.tls_listen, None);
        assert_eq!(cfg.proxy.transparent_listen, None);
        assert!(cfg.proxy.proxy_protocol_from.is_empty());
        let tls = "[proxy.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\n";
        let cfg = parse(&format!(
            "[proxy]\ntls_listen = \"127.0.0.1:8443\"\ntransparent_listen = \"127.0.0.1:443\"\nproxy_protocol_from = [\"10.0.0.0/8\"]\n{tls}[[client]]\nname = \"batch\"\ncert_san = [\"spiffe://corp/ns/batch/sa/runner\"]\n"
        ))
        .unwrap();
        let t = cfg.proxy.tls.unwrap();
        assert_eq!(t.key, PathBuf::from("k.pem"));
        assert_eq!(cfg.clients[0].cert_san.len(), 1);
        for (bad, key) in [
            ("[proxy]\ntls_listen = \"127.0.0.1:8443\"\n", "proxy.tls"),
            (tls, "proxy.tls_listen"),
            (
                "[proxy]\ntransparent_listen = \"0.0.0.0:443\"\n",
                "proxy.transparent_listen",
            ),
            (
                "[proxy]\ntransparent_listen = \"127.0.0.1:8080\"\n",
                "proxy.transparent_listen",
            ),
            (
                "[proxy]\ntls_listen = \"127.0.0.1:9000\"\nadmin = \"127.0.0.1:9000\"\n[proxy.tls]\ncert = \"c\"\nkey = \"k\"\n",
                "proxy.tls_listen",
            ),
            (
                "[proxy]\ntls_listen = \"127.0.0.1:8443\"\n[proxy.tls]\ncert = \"c\"\nkey = \"k\"\nclient_crl = [\"x.pem\"]\n",
                "proxy.tls.client_crl",
            ),
            (
                "[[client]]\nname = \"b\"\ncert_san = [\"spiffe://x\"]\n",
                "client[0].cert_san",
            ),
            (
                "[[client]]\nname = \"b\"\ncidrs = [\"10.0.0.0/8\"]\ncert_san = [\"\"]\n",
                "client[0].cert_san[0]",
            ),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{bad}: {err}");
        }
    }

    #[test]
    fn source_file_required_for_key_types() {
        let err = parse("[source]\ntype = \"service_account\"\n").unwrap_err();
        assert!(err.to_string().contains("source.file"), "{err}");
    }
}
