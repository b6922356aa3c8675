//! [`CredentialError`]: every way getting a credential can fail, with
//! messages that name the principal, Google's cause, and the fix.

use std::path::PathBuf;
use std::sync::Arc;

/// A credential could not be obtained. Messages are for people: they name
/// the principal, the cause Google gave, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// IAM Credentials refused the request (a 4xx other than 429); `message`
    /// is Google's text, verbatim.
    #[error("IAM refused to mint a token for {target} (HTTP {status}): {message}{}", iam_hint(*.status))]
    Iam {
        /// The target principal (email).
        target: String,
        /// The HTTP status IAM answered with.
        status: u16,
        /// Google's error message.
        message: String,
    },
    /// A Google endpoint kept answering 429/5xx (or could not be reached)
    /// until the retries ran out.
    #[error("{endpoint} is unavailable after {attempts} attempts: {message}")]
    Unavailable {
        /// The host that failed.
        endpoint: String,
        /// How many requests were made.
        attempts: u32,
        /// The last status and message, or the connection error.
        message: String,
    },
    /// The source credential's token endpoint refused the grant.
    #[error("the source credential ({kind}) was refused by {endpoint}: {message}{hint}")]
    Source {
        /// Which source credential, e.g. `service_account key sa@p.iam.gserviceaccount.com`.
        kind: String,
        /// The token endpoint.
        endpoint: String,
        /// Google's `error` and `error_description`.
        message: String,
        /// What to do about it, starting with `; ` (or empty).
        hint: String,
    },
    /// The user login behind an `authorized_user` credential needs to be
    /// renewed.
    #[error("the gcloud user login needs to be renewed ({message}); run: gcloud auth application-default login")]
    ReauthRequired {
        /// Google's `error` and `error_description`.
        message: String,
    },
    /// A credentials file is missing or not in a format we understand.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The `[source]` credential could not be loaded when the proxy started
    /// (e.g. no ADC on this machine); every mint fails with this cause.
    #[error("the source credential could not be loaded at start-up: {message}; fix [source] and restart the proxy")]
    SourceUnavailable {
        /// Why it could not be loaded.
        message: String,
    },
    /// Application Default Credentials discovery found nothing.
    #[error("no Application Default Credentials found (tried {tried}); run: gcloud auth application-default login, or set [source] type and file")]
    NoCredentials {
        /// The places that were looked at.
        tried: String,
    },
    /// An endpoint answered something that is not the documented format.
    #[error("unexpected answer from {endpoint}: {message}")]
    BadResponse {
        /// The host.
        endpoint: String,
        /// What was wrong.
        message: String,
    },
    /// A token request that cannot be sent, e.g. a target that is not an
    /// email address.
    #[error("invalid token request: {message}")]
    InvalidRequest {
        /// What is wrong.
        message: String,
    },
    /// The upstream client could not be built from `[upstream]`.
    #[error("{0}")]
    Setup(#[from] crate::net::UpstreamSetupError),
    /// The slot was released because no client used it for a while (the
    /// metadata endpoint's on-demand tokens); asking again makes a new one.
    #[error(
        "the token slot for {target} was released after it went unused; ask for the token again"
    )]
    Released {
        /// The target principal (email).
        target: String,
    },
    /// The token endpoint refused the JWT-bearer grant of a domain-wide
    /// delegation (`subject`) assertion that IAM signed.
    #[error("the token endpoint refused domain-wide delegation for {subject} by {target}: {message}; in the Workspace admin console (Security > API controls > Domain-wide delegation) allow {target}'s client ID for these scopes")]
    Delegation {
        /// The service account (email).
        target: String,
        /// The Workspace user.
        subject: String,
        /// Google's `error` and `error_description`.
        message: String,
    },
    /// A `refresh = false` route's one token expired: the route fails
    /// closed until the configuration is reloaded.
    #[error("time box ended at {}: the token for {target} was minted once (refresh = false) and has expired; reload the configuration to mint a new one", humantime::format_rfc3339_seconds(*.ended))]
    TimeBoxEnded {
        /// The target principal (email).
        target: String,
        /// When the token expired.
        ended: std::time::SystemTime,
    },
    /// STS refused to exchange the target's token for a downscoped one (a
    /// 4xx other than 429); `message` is Google's text, verbatim.
    #[error("STS refused to downscope the token for {target} (HTTP {status}): {message}; check the route's access_boundary (Cloud Storage buckets, inRole: permissions, a CEL condition)")]
    Sts {
        /// The target principal (email).
        target: String,
        /// The HTTP status STS answered with.
        status: u16,
        /// Google's error message.
        message: String,
    },
    /// The cached token for the target expired and no refresh succeeded.
    #[error("the token for {target} expired and could not be refreshed{}", expired_cause(.cause))]
    Expired {
        /// The target principal (email).
        target: String,
        /// The error of the last refresh attempt, if one finished.
        cause: Option<Arc<CredentialError>>,
    },
}

fn iam_hint(status: u16) -> &'static str {
    match status {
        403 => "; grant the source credential roles/iam.serviceAccountTokenCreator on the target (with delegates: the source on the first delegate, each delegate on the next, the last on the target)",
        400 => "; check `lifetime` (at most 3600s unless the org policy constraints/iam.allowServiceAccountCredentialLifetimeExtension lists the target), scopes and audience",
        401 => "; the source credential's token was not accepted, check [source]",
        404 => "; check that the service account exists",
        _ => "",
    }
}

fn expired_cause(cause: &Option<Arc<CredentialError>>) -> String {
    match cause {
        Some(c) => format!(": {c}"),
        None => ": a refresh is still in progress".to_owned(),
    }
}

impl CredentialError {
    /// IAM answered 403: the caller lacks `iam.serviceAccounts.getAccessToken`
    /// (or `getOpenIdToken`) on the target or a delegate.
    pub fn is_permission_denied(&self) -> bool {
        match self {
            CredentialError::Iam { status, .. } => *status == 403,
            CredentialError::Expired { cause: Some(c), .. } => c.is_permission_denied(),
            _ => false,
        }
    }

    /// A short, bounded word for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            CredentialError::Iam { status: 403, .. } => "iam_permission_denied",
            CredentialError::Iam { status: 400, .. } => "iam_invalid_argument",
            CredentialError::Iam { .. } => "iam_refused",
            CredentialError::Unavailable { .. } => "unavailable",
            CredentialError::Source { .. } => "source_refused",
            CredentialError::ReauthRequired { .. } => "reauth_required",
            CredentialError::File { .. } => "credentials_file",
            CredentialError::SourceUnavailable { .. } => "source_unavailable",
            CredentialError::NoCredentials { .. } => "no_credentials",
            CredentialError::BadResponse { .. } => "bad_response",
            CredentialError::InvalidRequest { .. } => "invalid_request",
            CredentialError::Sts { .. } => "sts_refused",
            CredentialError::Expired { .. } => "expired",
            CredentialError::Released { .. } => "released",
            CredentialError::Delegation { .. } => "delegation_refused",
            CredentialError::TimeBoxEnded { .. } => "time_box_ended",
            CredentialError::Setup(_) => "setup",
        }
    }

    /// A transient failure: worth retrying later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CredentialError::Unavailable { .. })
    }

    /// The gcloud user login must be renewed by a person.
    pub fn is_reauth_required(&self) -> bool {
        matches!(self, CredentialError::ReauthRequired { .. })
    }

    /// A cached token reached its expiry without a successful refresh.
    pub fn is_expired(&self) -> bool {
        matches!(self, CredentialError::Expired { .. })
    }

    /// A `refresh = false` route's token expired, as it was meant to.
    pub fn is_time_box_ended(&self) -> bool {
        matches!(self, CredentialError::TimeBoxEnded { .. })
    }

    /// Google's own message for an IAM refusal, if this is one.
    pub fn iam_message(&self) -> Option<&str> {
        match self {
            CredentialError::Iam { message, .. } => Some(message),
            CredentialError::Expired { cause: Some(c), .. } => c.iam_message(),
            _ => None,
        }
    }
}
