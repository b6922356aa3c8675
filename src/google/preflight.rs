//! `check --live`: mint every route's token once through the real source
//! credential and IAM, and for a permission error find the hop of the
//! delegate chain that lacks the Token Creator grant.
//!
//! IAM's 403 does not say which hop failed ("Permission … denied on
//! resource (or it may not exist)"), so the chain is walked: the caller
//! mints a short access token for the first delegate, then for the second
//! through the first, and so on; the first refusal names the hop, and if
//! every delegate answers the missing grant is on the target itself.

use std::fmt;
use std::time::Duration;

use super::{CredentialError, Minter, SourceCredential, TokenKind, TokenRequest};

/// The role that carries `iam.serviceAccounts.getAccessToken` and
/// `getOpenIdToken`.
const TOKEN_CREATOR: &str = "roles/iam.serviceAccountTokenCreator";

/// How long the probe tokens of a chain walk live.
const PROBE_LIFETIME: Duration = Duration::from_secs(300);

/// One route's result.
#[derive(Debug)]
pub struct RouteCheck {
    /// The route's name.
    pub route: String,
    /// What it mints.
    pub request: TokenRequest,
    /// How the mint went.
    pub outcome: Outcome,
}

/// How one mint went.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// Minted; the token expires in this long.
    Minted(Duration),
    /// Refused or failed, with the message (IAM's own when IAM refused) and
    /// for a missing grant the command that adds it.
    Failed {
        /// IAM's message, or the error.
        message: String,
        /// `gcloud iam service-accounts add-iam-policy-binding …`.
        fix: Option<String>,
    },
}

impl RouteCheck {
    /// Whether the route minted.
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Minted(_))
    }
}

/// The IAM member of the source credential, when its file says who it is.
fn source_member(source: &SourceCredential) -> Option<String> {
    match source {
        SourceCredential::ServiceAccount(k) => Some(format!("serviceAccount:{}", k.client_email)),
        SourceCredential::Impersonated { target, .. } => Some(format!("serviceAccount:{target}")),
        _ => None,
    }
}

/// The gcloud command that lets `member` mint tokens for `target`.
fn grant(target: &str, member: &str) -> String {
    format!("gcloud iam service-accounts add-iam-policy-binding {target} --member={member} --role={TOKEN_CREATOR}")
}

/// Mints every request in `routes` once with `minter`; `source` names the
/// caller in the fix for a missing grant.
pub async fn run(
    minter: &Minter,
    source: &SourceCredential,
    routes: Vec<(String, TokenRequest)>,
) -> Vec<RouteCheck> {
    let caller = source_member(source)
        .unwrap_or_else(|| "user:YOUR_EMAIL (the source credential's identity)".into());
    let mut out = Vec::with_capacity(routes.len());
    for (route, request) in routes {
        let outcome = match minter.mint_token(&request).await {
            Ok(t) => Outcome::Minted(t.expires_in()),
            Err(e) if e.is_permission_denied() => Outcome::Failed {
                message: message(&e),
                fix: Some(missing_hop(minter, &request, &caller).await),
            },
            Err(e) => Outcome::Failed {
                message: message(&e),
                fix: None,
            },
        };
        out.push(RouteCheck {
            route,
            request,
            outcome,
        });
    }
    out
}

fn message(e: &CredentialError) -> String {
    e.iam_message().map_or_else(|| e.to_string(), str::to_owned)
}

/// The fix for the first hop of `request`'s chain that IAM refuses.
async fn missing_hop(minter: &Minter, request: &TokenRequest, caller: &str) -> String {
    let delegates = request.delegates();
    let mut granter = caller.to_owned();
    for (i, hop) in delegates.iter().enumerate() {
        let probe = TokenRequest::access_token(hop, &delegates[..i], &[], PROBE_LIFETIME);
        let Ok(probe) = probe else { break };
        match minter.mint_token(&probe).await {
            Ok(_) => granter = format!("serviceAccount:{hop}"),
            Err(e) if e.is_permission_denied() => return grant(hop, &granter),
            // Not a grant problem on this hop: blame the last hop, the
            // one the route's own mint was refused on.
            Err(_) => break,
        }
    }
    if let Some(last) = delegates.last() {
        granter = format!("serviceAccount:{last}");
    }
    grant(request.target_principal(), &granter)
}

/// The chain a request acts through: `source → delegates… → target`.
fn chain(request: &TokenRequest) -> String {
    let mut hops: Vec<&str> = vec!["source"];
    hops.extend(request.delegates().iter().map(String::as_str));
    hops.push(request.target_principal());
    hops.join(" → ")
}

/// The table `check --live` prints.
pub struct Table<'a>(pub &'a [RouteCheck]);

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<[String; 4]> = self
            .0
            .iter()
            .map(|c| {
                let kind = match c.request.kind() {
                    TokenKind::Id { audience } => format!("id_token({audience})"),
                    TokenKind::Delegated { subject, .. } => format!("access(subject {subject})"),
                    _ => "access".to_owned(),
                };
                let result = match &c.outcome {
                    Outcome::Minted(d) => format!("ok, expires in {}s", d.as_secs()),
                    Outcome::Failed { message, .. } => format!("FAILED: {message}"),
                };
                [c.route.clone(), kind, chain(&c.request), result]
            })
            .collect();
        let head = ["ROUTE", "TOKEN", "CHAIN", "RESULT"];
        let width = |i: usize| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        };
        let (w0, w1, w2) = (width(0), width(1), width(2));
        writeln!(
            f,
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            head[0], head[1], head[2], head[3]
        )?;
        for r in &rows {
            writeln!(f, "{:<w0$}  {:<w1$}  {:<w2$}  {}", r[0], r[1], r[2], r[3])?;
        }
        let fixes: Vec<_> = self
            .0
            .iter()
            .filter_map(|c| match &c.outcome {
                Outcome::Failed { fix: Some(fix), .. } => Some((&c.route, fix)),
                _ => None,
            })
            .collect();
        if !fixes.is_empty() {
            writeln!(f, "\nto fix:")?;
            for (route, fix) in fixes {
                writeln!(f, "  # route {route}\n  {fix}")?;
            }
        }
        Ok(())
    }
}
