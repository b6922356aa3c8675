//! The hot path: put the matched route's credential on the request
//! headers. No lock, no await, no allocation when the slot holds a token;
//! the first request for a slot waits once on the single in-flight mint.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use crate::config::AuthorizationPolicy;
use crate::google::slot::{Slot, Unavailable};
use crate::google::CredentialError;
use crate::policy::boundary::Downscope;
use crate::policy::routes::Action;

/// The quota/billing project header Google APIs read.
pub static X_GOOG_USER_PROJECT: HeaderName = HeaderName::from_static("x-goog-user-project");

/// How every placeholder the metadata endpoint hands out begins. An
/// `Authorization: Bearer <placeholder>` is a marker, not a credential:
/// injecting routes treat it as absent, and it is never forwarded.
pub const PLACEHOLDER_PREFIX: &str = "ya29.impersonate-proxy-placeholder.";

/// Whether `value` is `Bearer <placeholder>`: a prefix comparison, no
/// allocation.
#[inline]
pub fn is_placeholder(value: &HeaderValue) -> bool {
    // Shorter than the scheme: no placeholder. (A length test of its own
    // had an off-by-one twin, `>= 7`, that no input could tell apart.)
    let Some((scheme, token)) = value.as_bytes().split_at_checked(7) else {
        return false;
    };
    scheme.eq_ignore_ascii_case(b"bearer ")
        && token
            .trim_ascii_start()
            .starts_with(PLACEHOLDER_PREFIX.as_bytes())
}

/// Removes `Authorization` when any of its values holds a metadata
/// placeholder (a second value is as much a placeholder as the first).
#[inline]
fn drop_placeholder(headers: &mut HeaderMap) {
    if headers.get_all(AUTHORIZATION).iter().any(is_placeholder) {
        headers.remove(AUTHORIZATION);
    }
}

/// What became of a request's headers.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// Ready to forward (credential attached, or none needed).
    Forward,
    /// The route refuses the request.
    Deny,
    /// The slot's first token is still being minted: await
    /// [`Slot::get`], then [`attach`]. (Owned for a bucket's slot, which
    /// lives in the route's bucket table.)
    Minting(Cow<'a, Slot>),
    /// No token can be had: the cause names the target and IAM's message.
    Unavailable(Arc<CredentialError>),
    /// A `{bucket}` route, and the request addresses no single bucket
    /// (list buckets, batch) or not a valid bucket name.
    NoBucket,
}

/// Applies `action` to `headers`, for a request to any host and path: a
/// `{bucket}` route answers [`Outcome::NoBucket`] (use [`apply_at`]).
#[inline]
pub fn apply<'a>(action: &'a Action, headers: &mut HeaderMap) -> Outcome<'a> {
    apply_at(action, headers, "", "", &mut None)
}

/// Applies `action` to the headers of a request to `host` and `path`
/// (normalised, as the route matched them); `boundary` gets the resources
/// of the access boundary the token carries, for the audit record.
#[inline]
pub fn apply_at<'a>(
    action: &'a Action,
    headers: &mut HeaderMap,
    host: &str,
    path: &str,
    boundary: &mut Option<Arc<str>>,
) -> Outcome<'a> {
    match action {
        Action::Inject {
            slot,
            authorization,
            quota_project,
            downscope,
        } => {
            let slot = match downscope.as_deref() {
                None => Cow::Borrowed(slot),
                Some(Downscope::Fixed { resource, .. }) => {
                    *boundary = Some(resource.clone());
                    Cow::Borrowed(slot)
                }
                Some(Downscope::PerBucket(table)) => match table.select(host, path) {
                    Some(entry) => {
                        *boundary = Some(entry.resource.clone());
                        Cow::Owned(entry.slot.clone())
                    }
                    None => return Outcome::NoBucket,
                },
            };
            match slot.load() {
                Ok(token) => {
                    attach(headers, token, *authorization, quota_project.as_ref());
                    Outcome::Forward
                }
                Err(Unavailable::Minting) => Outcome::Minting(slot),
                Err(Unavailable::Failed(e)) => Outcome::Unavailable(e),
            }
        }
        // The source credential goes to IAM in place of whatever the
        // client sent (a metadata placeholder, usually).
        Action::SignAs(s) => match s.slot.load() {
            Ok(token) => {
                attach(headers, token, AuthorizationPolicy::Replace, None);
                Outcome::Forward
            }
            Err(Unavailable::Minting) => Outcome::Minting(Cow::Borrowed(&s.slot)),
            Err(Unavailable::Failed(e)) => Outcome::Unavailable(e),
        },
        Action::Passthrough => {
            // Passthrough forwards the client's own credential untouched,
            // but a placeholder is none: Google would only reject it.
            drop_placeholder(headers);
            Outcome::Forward
        }
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
            drop_placeholder(headers);
            if !headers.contains_key(AUTHORIZATION) {
                headers.insert(AUTHORIZATION, token);
            }
        }
    }
    if let Some(q) = quota_project {
        headers.insert(X_GOOG_USER_PROJECT.clone(), q.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_recognised_by_prefix_only() {
        let p = |s: &'static str| is_placeholder(&HeaderValue::from_static(s));
        assert!(p("Bearer ya29.impersonate-proxy-placeholder.abc"));
        assert!(p("bearer  ya29.impersonate-proxy-placeholder.abc"));
        assert!(!p("Bearer ya29.real-token"));
        assert!(!p("Basic ya29.impersonate-proxy-placeholder.abc"));
        assert!(!p("Bearer"));
        assert!(!p("Bearer "));
        assert!(!p(""));
    }

    #[test]
    fn keep_treats_a_placeholder_as_absent() {
        let token = HeaderValue::from_static("Bearer real");
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer ya29.impersonate-proxy-placeholder.x"),
        );
        attach(&mut h, token.clone(), AuthorizationPolicy::Keep, None);
        assert_eq!(h[AUTHORIZATION], "Bearer real");
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer mine"));
        attach(&mut h, token.clone(), AuthorizationPolicy::Keep, None);
        assert_eq!(h[AUTHORIZATION], "Bearer mine");
        // A placeholder in a second value: the header is the placeholder's.
        h.append(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer ya29.impersonate-proxy-placeholder.y"),
        );
        attach(&mut h, token, AuthorizationPolicy::Keep, None);
        let values: Vec<_> = h.get_all(AUTHORIZATION).iter().collect();
        assert_eq!(values, ["Bearer real"]);
    }
}
