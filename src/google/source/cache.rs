//! The source credential's own token, cached: fetched on demand,
//! single-flight, never more often than its remaining life allows.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::SourceCredential;
use crate::google::{CredentialError, Http, Token};

/// The source credential's token, cached and refreshed on demand. The mutex
/// makes fetching single-flight; it is never touched on the request path.
pub(crate) struct SourceCache {
    credential: SourceCredential,
    state: tokio::sync::Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    token: Option<Token>,
    /// When the cached token is due for a refresh.
    refresh_at: Option<Instant>,
    /// No new fetch before this: the metadata server hands out the same
    /// token during its last minutes, and asking again would only spin.
    next_fetch: Option<Instant>,
}

impl fmt::Debug for SourceCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceCache({})", self.credential.describe())
    }
}

impl SourceCache {
    pub(crate) fn new(credential: SourceCredential) -> SourceCache {
        SourceCache {
            credential,
            state: tokio::sync::Mutex::new(Cached::default()),
        }
    }

    pub(crate) async fn token(&self, http: &Http) -> Result<Token, CredentialError> {
        let mut cached = self.state.lock().await;
        let now = Instant::now();
        if let Some(t) = &cached.token {
            let due = cached.refresh_at.is_none_or(|at| now >= at);
            let wait = cached.next_fetch.is_some_and(|n| now < n);
            if !t.expires_in().is_zero() && (!due || wait) {
                return Ok(t.clone());
            }
        }
        match self.credential.fetch(http).await {
            Ok(fresh) => {
                crate::ops::metrics::global().source_refreshed();
                let left = fresh.expires_in();
                cached.refresh_at = Some(now + left - refresh_margin(left));
                cached.next_fetch = Some(now + min_refetch_interval(left));
                cached.token = Some(fresh.clone());
                Ok(fresh)
            }
            Err(e) => match cached.token.clone() {
                Some(t) if !t.expires_in().is_zero() => {
                    tracing::warn!(source = %self.credential.describe(), error = %e, "source token refresh failed; using the cached token");
                    cached.next_fetch = Some(now + Duration::from_secs(5));
                    Ok(t)
                }
                _ => Err(e),
            },
        }
    }
}

/// How long before expiry a token is refreshed: 5 minutes, or a quarter of
/// what is left for short lifetimes.
pub(crate) fn refresh_margin(left: Duration) -> Duration {
    (left / 4).min(Duration::from_secs(300))
}

/// The least time between two fetches of the source token, whatever its
/// expiry says: a quarter of its remaining life, between 1 s and 60 s.
fn min_refetch_interval(left: Duration) -> Duration {
    (left / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_never_spins_on_a_token_in_its_last_minutes() {
        // The metadata server returns a token with 4 minutes left: the next
        // fetch must wait, not happen immediately.
        assert!(min_refetch_interval(Duration::from_secs(240)) >= Duration::from_secs(60));
        assert!(min_refetch_interval(Duration::from_secs(2)) >= Duration::from_secs(1));
        assert_eq!(
            refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(20)),
            Duration::from_secs(5)
        );
    }
}
