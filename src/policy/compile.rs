//! The one pass from a [`Config`] to a [`Policy`]: every value that means
//! something to another part of the proxy is checked here (host patterns,
//! CIDRs, routes, names that refer to other entries), with errors that
//! name the key. Start-up, reload, `check` and the benches all run it, so
//! what `check` accepts is what the proxy runs.

use std::time::Duration;

use http::{HeaderValue, Method};

use crate::config::{
    parse_duration, parse_parent_proxy, AuditSampling, Config, ConfigError, RouteActionConfig,
    RouteConfig,
};
use crate::google::{principal_email, TokenKind, TokenRequest};
use crate::net::{parse_cidr, parse_client_host, HostPattern, NoProxy};
use crate::policy::boundary;
use crate::policy::clients::{ClientError, Clients};
use crate::policy::egress::Egress;
use crate::policy::routes::{ActionSpec, RouteTable, RuleSpec};
use crate::policy::{Policy, SlotSource};

/// IAM's ceiling for `lifetime` (where the org policy allows more than 1 h).
const MAX_LIFETIME: Duration = Duration::from_secs(43_200);
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// A policy could not be compiled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompileError {
    /// A value is not allowed; the error names the key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A `[[client]]` password file is missing, empty or too open.
    #[error(transparent)]
    Clients(#[from] ClientError),
}

impl CompileError {
    /// Whether the cause is the configuration text rather than a file it
    /// names.
    pub fn is_config(&self) -> bool {
        matches!(self, CompileError::Config(_))
    }
}

/// What [`check`] found: the parts of the policy that need no I/O.
#[derive(Debug)]
#[non_exhaustive]
pub struct Checked {
    /// Every route, in order, before slots exist.
    pub rules: Vec<RuleSpec>,
    /// The hosts that are terminated and routed: `[intercept] hosts` plus
    /// every route's hosts (a route for a host implies intercepting it).
    pub intercept: Vec<HostPattern>,
    /// `[intercept] allow_private`.
    pub allow_private: Vec<ipnet::IpNet>,
}

/// Checks everything in `cfg` that a policy depends on, without reading
/// a file or minting a token.
pub fn check(cfg: &Config) -> Result<Checked, ConfigError> {
    cfg.validate()?;
    let cidr = |key: String, s: &str| parse_cidr(s).map_err(|m| ConfigError::invalid(key, m));
    let pattern =
        |key: String, s: &str| HostPattern::parse(s).map_err(|m| ConfigError::invalid(key, m));
    let mut intercept = Vec::new();
    for (i, h) in cfg.intercept.hosts.iter().enumerate() {
        intercept.push(pattern(format!("intercept.hosts[{i}]"), h)?);
    }
    for (r, route) in cfg.routes.iter().enumerate() {
        for (i, h) in route.hosts.iter().enumerate() {
            let p = pattern(format!("route[{r}].hosts[{i}]"), h)?;
            if !intercept.contains(&p) {
                intercept.push(p);
            }
        }
    }
    for host in cfg.upstream.resolve.keys() {
        pattern(format!("upstream.resolve.\"{host}\""), host)?;
    }
    parent_proxy(cfg)?;
    for (i, c) in cfg.clients.iter().enumerate() {
        for (j, s) in c.cidrs.iter().enumerate() {
            cidr(format!("client[{i}].cidrs[{j}]"), s)?;
        }
    }
    for (i, s) in cfg.proxy.proxy_protocol_from.iter().enumerate() {
        cidr(format!("proxy.proxy_protocol_from[{i}]"), s)?;
    }
    let allow_private = cfg
        .intercept
        .allow_private
        .iter()
        .enumerate()
        .map(|(i, s)| cidr(format!("intercept.allow_private[{i}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    let m = &cfg.metadata;
    client_names(cfg, "metadata.real_clients", &m.real_clients)?;
    client_names(cfg, "metadata.id_token_clients", &m.id_token_clients)?;
    if let Some(sa) = m.service_account.as_deref().filter(|_| m.enabled) {
        principal_email(sa)
            .map_err(|e| ConfigError::invalid("metadata.service_account", e.to_string()))?;
    }
    Ok(Checked {
        rules: compile_rules(cfg)?,
        intercept,
        allow_private,
    })
}

/// `[upstream] proxy` names a host (a DNS name or an address) and every
/// `no_proxy` entry is an exact host or `.domain`.
fn parent_proxy(cfg: &Config) -> Result<(), ConfigError> {
    let Some(url) = &cfg.upstream.proxy else {
        return Ok(());
    };
    let addr = parse_parent_proxy(url).map_err(|m| ConfigError::invalid("upstream.proxy", m))?;
    if let Err(m) = parse_client_host(&addr.host) {
        return Err(ConfigError::invalid("upstream.proxy", m));
    }
    NoProxy::parse(&cfg.upstream.no_proxy)
        .map_err(|(i, m)| ConfigError::invalid(format!("upstream.no_proxy[{i}]"), m))?;
    Ok(())
}

/// The suffix under which every host is one Google runs: an access token
/// may go to any of them.
const GOOGLE_APIS: &str = ".googleapis.com";

/// A token goes only where its route names: an access token to exact
/// hosts or to wildcards under `googleapis.com` (every name there is
/// Google's; under `run.app`, `appspot.com` or `cloudfunctions.net` anyone
/// can deploy a service and would receive it); an ID token only to the
/// exact hosts of its audience's service.
fn token_destinations(
    request: &TokenRequest,
    hosts: &[HostPattern],
    key: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    for (j, h) in hosts.iter().enumerate() {
        let HostPattern::Suffix(sfx) = h else {
            continue;
        };
        match request.kind() {
            TokenKind::Id { .. } => {
                return Err(ConfigError::invalid(
                    key(&format!("hosts[{j}]")),
                    format!("`{h}`: an id_token route names exact hosts (the service of its audience), never a wildcard: anyone who can deploy a service under `*{sfx}` would receive the ID token"),
                ))
            }
            _ if sfx.as_str() == GOOGLE_APIS || sfx.ends_with(GOOGLE_APIS) => {}
            _ => {
                return Err(ConfigError::invalid(
                    key(&format!("hosts[{j}]")),
                    format!("`{h}`: a route that attaches an access token names exact hosts or wildcards under googleapis.com; under `*{sfx}` hosts are not all Google's, and whoever runs one would receive the token. List the exact hosts, or use action = \"passthrough\""),
                ))
            }
        }
    }
    Ok(())
}

/// A list of `[[client]]` names (`metadata.real_clients`,
/// `metadata.id_token_clients`): a typo would silently refuse the client
/// meant.
fn client_names(cfg: &Config, key: &str, names: &[String]) -> Result<(), ConfigError> {
    for (i, name) in names.iter().enumerate() {
        if !cfg.clients.iter().any(|c| &c.name == name) {
            return Err(ConfigError::invalid(
                format!("{key}[{i}]"),
                format!("`{name}` is not the name of any [[client]]; add a [[client]] with that name or remove it"),
            ));
        }
    }
    Ok(())
}

impl Policy {
    /// Compiles `cfg`: [`check`], then the `[[client]]` password files, then
    /// the route table with its slots from `slots` (a token whose request
    /// did not change keeps its slot across a reload: no re-mint).
    pub fn compile(cfg: &Config, slots: &dyn SlotSource) -> Result<Policy, CompileError> {
        let checked = check(cfg)?;
        Ok(Policy {
            egress: Egress {
                intercept: checked.intercept,
                other: cfg.intercept.other,
                intercept_ports: cfg.intercept.ports.clone(),
                http_ports: cfg.intercept.http_ports.clone(),
                allow_private: checked.allow_private,
                allow_ip_literals: cfg.intercept.allow_ip_literals,
            },
            clients: Clients::load(cfg)?,
            routes: RouteTable::build(&checked.rules, slots),
        })
    }
}

/// Validates every `[[route]]` and turns it into a [`RuleSpec`].
pub fn compile_rules(cfg: &Config) -> Result<Vec<RuleSpec>, ConfigError> {
    let clients: Vec<&str> = cfg.clients.iter().map(|c| c.name.as_str()).collect();
    let mut names = std::collections::HashSet::new();
    cfg.routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let spec = compile_rule(i, r, &clients)?;
            if !names.insert(spec.name.clone()) {
                return Err(ConfigError::invalid(
                    format!("route[{i}].name"),
                    format!(
                        "`{}` is used by an earlier route; names must be unique",
                        spec.name
                    ),
                ));
            }
            Ok(spec)
        })
        .collect()
}

fn compile_rule(i: usize, r: &RouteConfig, clients: &[&str]) -> Result<RuleSpec, ConfigError> {
    let key = |field: &str| format!("route[{i}].{field} (route \"{}\")", r.name);
    if r.name.trim().is_empty() {
        return Err(ConfigError::invalid(
            format!("route[{i}].name"),
            "must not be empty",
        ));
    }
    if r.hosts.is_empty() {
        return Err(ConfigError::invalid(
            key("hosts"),
            "is empty; list exact hosts or \"*.suffix\" patterns",
        ));
    }
    let hosts = r
        .hosts
        .iter()
        .enumerate()
        .map(|(j, h)| {
            HostPattern::parse(h).map_err(|m| ConfigError::invalid(key(&format!("hosts[{j}]")), m))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(p) = &r.path_prefix {
        if !p.starts_with('/') || p.contains('?') {
            return Err(ConfigError::invalid(
                key("path_prefix"),
                format!("`{p}` must start with `/` and hold no query"),
            ));
        }
    }
    let methods = r
        .methods
        .iter()
        .map(|m| {
            Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                ConfigError::invalid(key("methods"), format!("`{m}` is not an HTTP method"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut client_indices = Vec::with_capacity(r.clients.len());
    for c in &r.clients {
        match clients.iter().position(|known| known == c) {
            Some(i) => client_indices.push(u32::try_from(i).expect("fewer than 2^32 clients")),
            None => {
                return Err(ConfigError::invalid(
                    key("clients"),
                    format!("no [[client]] named `{c}` is defined"),
                ))
            }
        }
    }
    let chosen = [
        r.impersonate.is_some(),
        r.id_token.is_some(),
        r.action.is_some(),
        r.sign_as.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if chosen != 1 {
        return Err(ConfigError::invalid(
            key("action"),
            "set exactly one of `impersonate = \"SA\"`, `id_token = { audience, impersonate }`, `sign_as = \"SA\"` or `action = \"deny\" | \"passthrough\"`",
        ));
    }
    if r.subject.is_some() && r.impersonate.is_none() {
        return Err(ConfigError::invalid(
            key("subject"),
            "`subject` (domain-wide delegation) goes with `impersonate = \"SA\"`: the account that signs for the user",
        ));
    }
    if !r.refresh && r.impersonate.is_none() {
        return Err(ConfigError::invalid(
            key("refresh"),
            "`refresh = false` (a time box) applies to `impersonate` routes",
        ));
    }
    if r.allow_token_assertions && r.sign_as.is_none() {
        return Err(ConfigError::invalid(
            key("allow_token_assertions"),
            "applies only to `sign_as` routes",
        ));
    }
    if let Some(account) = &r.sign_as {
        return sign_as_rule(r, account, hosts, client_indices, &key);
    }
    let credential_keys = r.subject.is_some()
        || !r.delegates.is_empty()
        || !r.scopes.is_empty()
        || r.lifetime.is_some()
        || r.quota_project.is_some()
        || r.warm;
    let action = if let Some(target) = &r.impersonate {
        let lifetime = match &r.lifetime {
            None => DEFAULT_LIFETIME,
            Some(s) => {
                let d = parse_duration(s).map_err(|m| ConfigError::invalid(key("lifetime"), m))?;
                if d > MAX_LIFETIME || d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
                    return Err(ConfigError::invalid(
                        key("lifetime"),
                        format!("`{s}` must be whole seconds between 1s and 43200s (IAM allows more than 3600s only where the org policy constraints/iam.allowServiceAccountCredentialLifetimeExtension permits)"),
                    ));
                }
                d
            }
        };
        let request = match &r.subject {
            None => TokenRequest::access_token(target, &r.delegates, &r.scopes, lifetime)
                .map_err(|e| ConfigError::invalid(key("impersonate"), e.to_string()))?,
            Some(_) if r.lifetime.is_some() => {
                return Err(ConfigError::invalid(
                    key("lifetime"),
                    "a `subject` route's token comes from the token endpoint, which grants one hour; remove `lifetime`",
                ))
            }
            Some(subject) => {
                TokenRequest::delegated(target, &r.delegates, subject, &r.scopes)
                    .map_err(|e| ConfigError::invalid(key("subject"), e.to_string()))?
            }
        };
        let request = if r.refresh {
            request
        } else {
            request.time_boxed()
        };
        let boundary = r
            .access_boundary
            .as_deref()
            .map(|rules| boundary::check(rules, &hosts, &key))
            .transpose()?;
        ActionSpec::Inject {
            request,
            authorization: r.authorization,
            quota_project: r.quota_project.clone(),
            warm: r.warm,
            boundary,
        }
    } else if let Some(id) = &r.id_token {
        if !r.scopes.is_empty() || r.lifetime.is_some() || !r.delegates.is_empty() {
            return Err(ConfigError::invalid(
                key("id_token"),
                "an ID token route takes its delegates inside id_token = { … }; scopes and lifetime do not apply",
            ));
        }
        if r.access_boundary.is_some() {
            return Err(ConfigError::invalid(
                key("access_boundary"),
                "applies to impersonate routes only: STS downscopes access tokens, and an ID token cannot carry a boundary; remove it or use impersonate = \"SA\"",
            ));
        }
        let request = TokenRequest::id_token(&id.impersonate, &id.delegates, &id.audience)
            .map_err(|e| ConfigError::invalid(key("id_token"), e.to_string()))?;
        ActionSpec::Inject {
            request,
            authorization: r.authorization,
            quota_project: r.quota_project.clone(),
            warm: r.warm,
            boundary: None,
        }
    } else {
        if r.access_boundary.is_some() {
            return Err(ConfigError::invalid(
                key("access_boundary"),
                "applies to impersonate routes only; a deny or passthrough route attaches no token to limit",
            ));
        }
        if credential_keys {
            return Err(ConfigError::invalid(
                key("action"),
                "delegates, scopes, lifetime, quota_project and warm only apply to impersonate / id_token routes",
            ));
        }
        match r.action {
            Some(RouteActionConfig::Deny) => ActionSpec::Deny,
            _ => ActionSpec::Passthrough,
        }
    };
    if !r.enforce && !matches!(action, ActionSpec::Deny) {
        return Err(ConfigError::invalid(
            key("enforce"),
            "`enforce = false` (report mode) applies only to action = \"deny\" routes; remove it, or make the route a deny",
        ));
    }
    if let ActionSpec::Inject {
        quota_project: Some(q),
        ..
    } = &action
    {
        if HeaderValue::from_str(q).is_err() || q.is_empty() {
            return Err(ConfigError::invalid(
                key("quota_project"),
                format!("`{q}` is not a project ID"),
            ));
        }
    }
    if let ActionSpec::Inject { request, .. } = &action {
        token_destinations(request, &hosts, &key)?;
    }
    let audit = audit_sampling(r, &key)?;
    Ok(RuleSpec {
        name: r.name.clone(),
        hosts,
        path_prefix: r.path_prefix.clone(),
        methods,
        clients: r.clients.clone(),
        client_indices,
        action,
        enforce: r.enforce,
        audit,
    })
}

/// The IAM Credentials host: the only one a `sign_as` route names.
const IAM_CREDENTIALS: &str = "iamcredentials.googleapis.com";

/// A `sign_as` route: POST `…/serviceAccounts/{account}:signBlob|:signJwt`
/// on IAM Credentials, nothing else.
fn sign_as_rule(
    r: &RouteConfig,
    account: &str,
    hosts: Vec<HostPattern>,
    client_indices: Vec<u32>,
    key: &dyn Fn(&str) -> String,
) -> Result<RuleSpec, ConfigError> {
    let account = principal_email(account)
        .map_err(|e| ConfigError::invalid(key("sign_as"), e.to_string()))?;
    let delegates = r
        .delegates
        .iter()
        .map(|d| principal_email(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::invalid(key("delegates"), e.to_string()))?;
    for (j, h) in hosts.iter().enumerate() {
        if !matches!(h, HostPattern::Exact(name) if name.as_str() == IAM_CREDENTIALS) {
            return Err(ConfigError::invalid(
                key(&format!("hosts[{j}]")),
                format!("`{h}`: a sign_as route serves IAM Credentials only; write hosts = [\"{IAM_CREDENTIALS}\"]"),
            ));
        }
    }
    if r.access_boundary.is_some() {
        return Err(ConfigError::invalid(
            key("access_boundary"),
            "applies to impersonate routes only: a sign_as route forwards signBlob/signJwt with the source credential, which STS cannot downscope; remove it",
        ));
    }
    if r.path_prefix.is_some() || !r.methods.is_empty() {
        return Err(ConfigError::invalid(
            key("sign_as"),
            "a sign_as route matches only POST …/serviceAccounts/{its account}:signBlob and :signJwt; remove path_prefix and methods",
        ));
    }
    if !r.scopes.is_empty()
        || r.lifetime.is_some()
        || r.quota_project.is_some()
        || r.warm
        || r.authorization != crate::config::AuthorizationPolicy::Replace
    {
        return Err(ConfigError::invalid(
            key("sign_as"),
            "scopes, lifetime, quota_project, warm and authorization do not apply to a sign_as route (it always sends the source credential); remove them",
        ));
    }
    if !r.enforce {
        return Err(ConfigError::invalid(
            key("enforce"),
            "`enforce = false` (report mode) applies only to action = \"deny\" routes; remove it",
        ));
    }
    Ok(RuleSpec {
        name: r.name.clone(),
        hosts,
        path_prefix: Some("/v1/projects".to_owned()),
        methods: vec![Method::POST],
        clients: r.clients.clone(),
        client_indices,
        action: ActionSpec::SignAs {
            account,
            delegates,
            allow_token_assertions: r.allow_token_assertions,
        },
        enforce: true,
        audit: audit_sampling(r, key)?,
    })
}

/// The route's `audit` mode (`all` when unset).
fn audit_sampling(
    r: &RouteConfig,
    key: &dyn Fn(&str) -> String,
) -> Result<AuditSampling, ConfigError> {
    match &r.audit {
        Some(a) => AuditSampling::parse(a).map_err(|e| ConfigError::invalid(key("audit"), e)),
        None => Ok(AuditSampling::All),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Parses and checks, as start-up, reload and `check` do.
    fn compile(text: &str) -> Result<Checked, ConfigError> {
        check(&Config::parse(Path::new("test.toml"), text)?)
    }

    #[test]
    fn a_bad_route_audit_mode_names_the_key() {
        let err = compile(
            "[[route]]\nname = \"r\"\nhosts = [\"storage.googleapis.com\"]\naction = \"passthrough\"\naudit = \"sample:5\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("route[0].audit") || err.contains("audit"),
            "{err}"
        );
        assert!(err.contains("sample:0.01"), "{err}");
    }

    #[test]
    fn bad_host_pattern_names_the_key() {
        let err = compile("[intercept]\nhosts = [\"a.com\", \"foo.*.com\"]\n").unwrap_err();
        assert!(err.to_string().contains("intercept.hosts[1]"), "{err}");
        let err = compile("[upstream.resolve]\n\"a b\" = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("upstream.resolve"), "{err}");
        let err = compile("[intercept]\nother = \"tunnel\"\nallow_private = [\"10.0.0.0/33\"]\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("intercept.allow_private[0]"),
            "{err}"
        );
    }

    #[test]
    fn route_hosts_are_intercepted_too() {
        let c = compile(
            "[[route]]\nname = \"run\"\nhosts = [\"svc.a.run.app\"]\naction = \"passthrough\"\n",
        )
        .unwrap();
        let hosts: Vec<String> = c.intercept.iter().map(|p| p.to_string()).collect();
        assert_eq!(hosts, ["*.googleapis.com", "svc.a.run.app"]);
    }

    #[test]
    fn metadata_cross_references_are_checked_with_key_names() {
        let err =
            compile("[metadata]\nenabled = true\nservice_account = \"nobody\"\n").unwrap_err();
        assert!(
            err.to_string().contains("metadata.service_account"),
            "{err}"
        );
        let sa = "service_account = \"a@p.iam.gserviceaccount.com\"";
        let err = compile(&format!(
            "[metadata]\nenabled = true\n{sa}\ntokens = \"real\"\nreal_clients = [\"ci\"]\n"
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("metadata.real_clients[0]"),
            "{err}"
        );
        compile(&format!(
            "[metadata]\nenabled = true\n{sa}\ntokens = \"real\"\nreal_clients = [\"ci\"]\n[[client]]\nname = \"ci\"\ncidrs = [\"127.0.0.1\"]\n"
        ))
        .unwrap();
    }

    #[test]
    fn report_mode_is_only_for_deny_routes() {
        let route = "[[route]]\nname = \"r\"\nhosts = [\"a.googleapis.com\"]\nenforce = false\n";
        let err = compile(&format!("{route}action = \"passthrough\"\n")).unwrap_err();
        assert!(err.to_string().contains("route[0].enforce"), "{err}");
        let err = compile(&format!(
            "{route}impersonate = \"a@p.iam.gserviceaccount.com\"\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("route[0].enforce"), "{err}");
        let c = compile(&format!("{route}action = \"deny\"\n")).unwrap();
        assert!(!c.rules[0].enforce);
    }

    #[test]
    fn signing_delegation_and_time_box_keys_are_checked_with_key_names() {
        let sa = "a@p.iam.gserviceaccount.com";
        let iam = "hosts = [\"iamcredentials.googleapis.com\"]";
        let route = |body: &str| format!("[[route]]\nname = \"r\"\n{body}\n");
        let err = |body: &str| compile(&route(body)).unwrap_err().to_string();
        let ok = |body: &str| compile(&route(body)).unwrap();

        let c = ok(&format!(
            "{iam}\nsign_as = \"{sa}\"\ndelegates = [\"m@p.iam.gserviceaccount.com\"]"
        ));
        assert_eq!(c.rules[0].methods, [Method::POST]);
        assert!(matches!(&c.rules[0].action, ActionSpec::SignAs { account, .. } if account == sa));
        let e = err(&format!(
            "hosts = [\"*.googleapis.com\"]\nsign_as = \"{sa}\""
        ));
        assert!(
            e.contains("route[0].hosts[0]") && e.contains("iamcredentials"),
            "{e}"
        );
        let e = err(&format!("{iam}\nsign_as = \"{sa}\"\npath_prefix = \"/v1\""));
        assert!(e.contains("route[0].sign_as"), "{e}");
        let e = err(&format!(
            "{iam}\nsign_as = \"{sa}\"\nauthorization = \"keep\""
        ));
        assert!(e.contains("route[0].sign_as"), "{e}");
        let e = err(&format!("{iam}\nsign_as = \"nobody\""));
        assert!(e.contains("route[0].sign_as"), "{e}");
        let e = err(&format!(
            "{iam}\nsign_as = \"{sa}\"\nimpersonate = \"{sa}\""
        ));
        assert!(e.contains("route[0].action"), "{e}");
        let e = err(&format!(
            "{iam}\nimpersonate = \"{sa}\"\nallow_token_assertions = true"
        ));
        assert!(e.contains("route[0].allow_token_assertions"), "{e}");

        let gcs = "hosts = [\"storage.googleapis.com\"]";
        let c = ok(&format!(
            "{gcs}\nimpersonate = \"{sa}\"\nsubject = \"admin@example.com\""
        ));
        let ActionSpec::Inject { request, .. } = &c.rules[0].action else {
            panic!("an inject route")
        };
        assert!(
            matches!(request.kind(), crate::google::TokenKind::Delegated { subject, .. } if subject == "admin@example.com")
        );
        let e = err(&format!(
            "{gcs}\naction = \"passthrough\"\nsubject = \"admin@example.com\""
        ));
        assert!(e.contains("route[0].subject"), "{e}");
        let e = err(&format!(
            "{gcs}\nimpersonate = \"{sa}\"\nsubject = \"admin@example.com\"\nlifetime = \"600s\""
        ));
        assert!(e.contains("route[0].lifetime"), "{e}");

        let c = ok(&format!(
            "{gcs}\nimpersonate = \"{sa}\"\nlifetime = \"20s\"\nrefresh = false"
        ));
        let ActionSpec::Inject { request, .. } = &c.rules[0].action else {
            panic!("an inject route")
        };
        assert!(!request.refreshes());
        let e = err("hosts = [\"a.run.app\"]\nid_token = { audience = \"x\", impersonate = \"a@p.iam.gserviceaccount.com\" }\nrefresh = false");
        assert!(e.contains("route[0].refresh"), "{e}");
    }

    #[test]
    fn client_cidrs_are_checked_with_key_names() {
        let err = compile("[[client]]\nname = \"ci\"\ncidrs = [\"10.8.0.0/16\", \"nope\"]\n")
            .unwrap_err();
        assert!(err.to_string().contains("client[0].cidrs[1]"), "{err}");
    }
}
