//! The hot path: put the matched route's credential on the request
//! headers. No lock, no await, no allocation when the slot holds a token;
//! the first request for a slot waits once on the single in-flight mint.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use crate::config::AuthorizationPolicy;
use crate::google::CredentialError;
use crate::routes::Action;
use crate::tokens::{Slot, Unavailable};

/// The quota/billing project header Google APIs read.
pub static X_GOOG_USER_PROJECT: HeaderName = HeaderName::from_static("x-goog-user-project");

/// What became of a request's headers.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// Ready to forward (credential attached, or none needed).
    Forward,
    /// The route refuses the request.
    Deny,
    /// The slot's first token is still being minted: await
    /// [`Slot::get`], then [`attach`].
    Minting(&'a Slot),
    /// No token can be had: the cause names the target and IAM's message.
    Unavailable(Arc<CredentialError>),
}

/// Applies `action` to `headers`.
#[inline]
pub fn apply<'a>(action: &'a Action, headers: &mut HeaderMap) -> Outcome<'a> {
    match action {
        Action::Inject {
            slot,
            authorization,
            quota_project,
        } => match slot.load() {
            Ok(token) => {
                attach(headers, token, *authorization, quota_project.as_ref());
                Outcome::Forward
            }
            Err(Unavailable::Minting) => Outcome::Minting(slot),
            Err(Unavailable::Failed(e)) => Outcome::Unavailable(e),
        },
        Action::Passthrough => Outcome::Forward,
        Action::Deny => Outcome::Deny,
    }
}

/// Sets `Authorization` (per the route's policy) and `x-goog-user-project`.
#[inline]
pub fn attach(
    headers: &mut HeaderMap,
    token: HeaderValue,
    policy: AuthorizationPolicy,
    quota_project: Option<&HeaderValue>,
) {
    match policy {
        AuthorizationPolicy::Replace => {
            headers.insert(AUTHORIZATION, token);
        }
        AuthorizationPolicy::Keep => {
            if !headers.contains_key(AUTHORIZATION) {
                headers.insert(AUTHORIZATION, token);
            }
        }
    }
    if let Some(q) = quota_project {
        headers.insert(X_GOOG_USER_PROJECT.clone(), q.clone());
    }
}
