//! [`Token`] (a secret that never prints) and [`TokenRequest`] (what a
//! slot mints: target principal, delegates, access or ID token).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{CredentialError, CLOUD_PLATFORM};

/// A bearer token and when it expires. `Debug` and `Display` never print
/// the secret.
#[derive(Clone)]
pub struct Token {
    secret: Arc<str>,
    expires_at: Instant,
    expire_time: SystemTime,
}

impl Token {
    /// A token that is valid for `valid_for` from now.
    pub fn new(secret: impl Into<Arc<str>>, valid_for: Duration) -> Token {
        Token {
            secret: secret.into(),
            expires_at: Instant::now() + valid_for,
            expire_time: SystemTime::now() + valid_for,
        }
    }

    /// A token that expires at the wall-clock time `expire_time` (as IAM
    /// reports it); already expired maps to "valid for 0s".
    pub fn expiring_at(secret: impl Into<Arc<str>>, expire_time: SystemTime) -> Token {
        let valid_for = expire_time
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let mut t = Token::new(secret, valid_for);
        t.expire_time = expire_time;
        t
    }

    /// The token itself. Only for putting it on the wire or printing it
    /// on explicit request (the `token` command).
    pub fn expose_secret(&self) -> &str {
        &self.secret
    }

    /// When the token stops working (monotonic clock).
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// When the token stops working (wall clock).
    pub fn expire_time(&self) -> SystemTime {
        self.expire_time
    }

    /// How long the token is still valid; zero once expired.
    pub fn expires_in(&self) -> Duration {
        self.expires_at.saturating_duration_since(Instant::now())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Token(…redacted, expires in {})",
            ShortDuration(self.expires_in())
        )
    }
}

/// Prints `42m`, `1h 5m`, `20s` — minutes are enough for people.
struct ShortDuration(Duration);

impl fmt::Display for ShortDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        match s {
            0..=119 => write!(f, "{s}s"),
            120..=3599 => write!(f, "{}m", s / 60),
            _ => write!(f, "{}h {}m", s / 3600, (s % 3600) / 60),
        }
    }
}

/// What a token is for: one token slot exists per distinct request.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TokenRequest {
    target_principal: String,
    delegates: Vec<String>,
    kind: TokenKind,
    /// `false` (`refresh = false`): minted once, served until it expires,
    /// never refreshed. Part of the key: a time-boxed route never shares a
    /// slot with a refreshed one.
    refresh: bool,
}

/// The two kinds of token IAM Credentials mints.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum TokenKind {
    /// An OAuth 2.0 access token (`generateAccessToken`).
    Access {
        /// OAuth scopes, e.g. `cloud-platform`.
        scopes: Vec<String>,
        /// Requested lifetime.
        lifetime: Duration,
    },
    /// An OpenID Connect ID token (`generateIdToken`).
    Id {
        /// The `aud` claim, e.g. a Cloud Run URL.
        audience: String,
    },
    /// Keyless domain-wide delegation: `signJwt` as the target for
    /// `{iss: target, sub: subject, scope, aud: token endpoint}`, then the
    /// JWT-bearer grant: an access token acting for `subject`.
    Delegated {
        /// The Workspace user the token acts for (`sub`).
        subject: String,
        /// OAuth scopes.
        scopes: Vec<String>,
    },
    /// The source credential's own token (what `sign_as` routes send
    /// IAM); the target principal is a placeholder name.
    Source,
}

impl TokenRequest {
    /// An access token for `target` (bare email or
    /// `projects/-/serviceAccounts/EMAIL`) through `delegates`, in order.
    /// Empty `scopes` means `cloud-platform`.
    pub fn access_token(
        target: &str,
        delegates: &[String],
        scopes: &[String],
        lifetime: Duration,
    ) -> Result<TokenRequest, CredentialError> {
        if lifetime.is_zero() || lifetime.subsec_nanos() != 0 {
            return Err(CredentialError::InvalidRequest {
                message: format!(
                    "lifetime {lifetime:?} for {target} must be a whole number of seconds, at least 1s"
                ),
            });
        }
        let scopes = if scopes.is_empty() {
            vec![CLOUD_PLATFORM.to_owned()]
        } else {
            scopes.to_vec()
        };
        Ok(TokenRequest {
            target_principal: principal_email(target)?,
            delegates: delegate_emails(delegates)?,
            kind: TokenKind::Access { scopes, lifetime },
            refresh: true,
        })
    }

    /// An access token for `target` acting for the Workspace user
    /// `subject` (domain-wide delegation without a key: IAM `signJwt`,
    /// then the JWT-bearer grant). Empty `scopes` means `cloud-platform`.
    pub fn delegated(
        target: &str,
        delegates: &[String],
        subject: &str,
        scopes: &[String],
    ) -> Result<TokenRequest, CredentialError> {
        let subject = subject.trim();
        if subject.is_empty() || subject.contains(char::is_whitespace) {
            return Err(CredentialError::InvalidRequest {
                message: format!("subject `{subject}` for {target} must be a user's email address"),
            });
        }
        let scopes = if scopes.is_empty() {
            vec![CLOUD_PLATFORM.to_owned()]
        } else {
            scopes.to_vec()
        };
        Ok(TokenRequest {
            target_principal: principal_email(target)?,
            delegates: delegate_emails(delegates)?,
            kind: TokenKind::Delegated {
                subject: subject.to_owned(),
                scopes,
            },
            refresh: true,
        })
    }

    /// The source credential's own token (scope `cloud-platform`), kept
    /// in a slot like any other: what `sign_as` routes send IAM.
    pub fn source_credential() -> TokenRequest {
        TokenRequest {
            target_principal: "the source credential".to_owned(),
            delegates: Vec::new(),
            kind: TokenKind::Source,
            refresh: true,
        }
    }

    /// The same request, minted once and never refreshed
    /// (`refresh = false`).
    pub fn time_boxed(mut self) -> TokenRequest {
        self.refresh = false;
        self
    }

    /// Whether the slot refreshes its token (`false`: a time box).
    pub fn refreshes(&self) -> bool {
        self.refresh
    }

    /// An ID token for `target` with the given audience.
    pub fn id_token(
        target: &str,
        delegates: &[String],
        audience: &str,
    ) -> Result<TokenRequest, CredentialError> {
        if audience.is_empty() {
            return Err(CredentialError::InvalidRequest {
                message: format!("an ID token for {target} needs a non-empty audience"),
            });
        }
        Ok(TokenRequest {
            target_principal: principal_email(target)?,
            delegates: delegate_emails(delegates)?,
            kind: TokenKind::Id {
                audience: audience.to_owned(),
            },
            refresh: true,
        })
    }

    /// The target principal's email.
    pub fn target_principal(&self) -> &str {
        &self.target_principal
    }

    /// The delegate chain (emails), in order.
    pub fn delegates(&self) -> &[String] {
        &self.delegates
    }

    /// Access or ID token, and its parameters.
    pub fn kind(&self) -> &TokenKind {
        &self.kind
    }
}

impl fmt::Display for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            TokenKind::Access { .. } => write!(f, "access token for {}", self.target_principal)?,
            TokenKind::Id { audience } => write!(
                f,
                "ID token for {} (audience {audience})",
                self.target_principal
            )?,
            TokenKind::Delegated { subject, .. } => write!(
                f,
                "access token for {subject} (domain-wide delegation by {})",
                self.target_principal
            )?,
            TokenKind::Source => f.write_str("the source credential's own token")?,
        }
        if !self.delegates.is_empty() {
            write!(f, " via {}", self.delegates.join(" → "))?;
        }
        if !self.refresh {
            f.write_str(" (minted once: refresh = false)")?;
        }
        Ok(())
    }
}

const RESOURCE_PREFIX: &str = "projects/-/serviceAccounts/";

/// `EMAIL` or `projects/-/serviceAccounts/EMAIL` → `EMAIL`.
pub(crate) fn principal_email(raw: &str) -> Result<String, CredentialError> {
    let email = raw.trim();
    let email = email.strip_prefix(RESOURCE_PREFIX).unwrap_or(email);
    let ok = email.split_once('@').is_some_and(|(user, domain)| {
        !user.is_empty() && !domain.is_empty() && !domain.contains('@') && !domain.contains('/')
    }) && !email.contains(char::is_whitespace);
    if ok {
        Ok(email.to_owned())
    } else {
        Err(CredentialError::InvalidRequest {
            message: format!(
                "`{raw}` is not a service account; write its email (sa@project.iam.gserviceaccount.com) or projects/-/serviceAccounts/EMAIL"
            ),
        })
    }
}

fn delegate_emails(delegates: &[String]) -> Result<Vec<String>, CredentialError> {
    delegates.iter().map(|d| principal_email(d)).collect()
}

/// The full resource name IAM expects on the wire.
pub(crate) fn resource_name(email: &str) -> String {
    format!("{RESOURCE_PREFIX}{email}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_accept_both_forms_and_reject_garbage() {
        let e = "sa@p.iam.gserviceaccount.com";
        assert_eq!(principal_email(e).unwrap(), e);
        assert_eq!(
            principal_email(&format!("projects/-/serviceAccounts/{e}")).unwrap(),
            e
        );
        assert!(principal_email("projects/-/serviceAccounts/").is_err());
        assert!(principal_email("nobody").is_err());
        assert!(principal_email("a@b/c").is_err());
    }

    #[test]
    fn token_debug_and_display_hide_the_secret() {
        let t = Token::new("ya29.very-secret", Duration::from_secs(42 * 60 + 5));
        for s in [format!("{t:?}"), format!("{t}")] {
            assert!(!s.contains("very-secret"), "{s}");
            assert!(s.contains("redacted") && s.contains("42m"), "{s}");
        }
    }
}
