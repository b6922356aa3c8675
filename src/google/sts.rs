//! Security Token Service: exchange an access token for a downscoped one
//! that carries a Credential Access Boundary ("Downscope with Credential
//! Access Boundaries"). The exchange needs no credential of its own: the
//! token being downscoped is the subject, and the answer expires with it.

use std::fmt;
use std::time::Duration;

use http::{header, Request};
use serde::{Deserialize, Serialize};

use super::iam::host_of;
use super::{bad_uri, form_encode, google_error_message, CredentialError, Http, Token};
use crate::net::full_body;

/// The STS token endpoint.
pub const STS_URI: &str = "https://sts.googleapis.com/v1/token";

/// The OAuth 2.0 token exchange grant (RFC 8693).
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// The token type of an OAuth access token, subject and result alike.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// One rule of a boundary: a resource (a Cloud Storage bucket), the
/// permissions available on it (`inRole:roles/storage.objectViewer`), and
/// an optional CEL condition narrowing it (e.g. to an object prefix).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BoundaryRule {
    /// `//storage.googleapis.com/projects/_/buckets/BUCKET`.
    pub available_resource: String,
    /// `inRole:roles/…` entries.
    pub available_permissions: Vec<String>,
    /// `{"expression": "…"}`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_condition: Option<Condition>,
}

/// A rule's availability condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The CEL expression.
    pub expression: String,
    /// A title, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// A description, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A Credential Access Boundary: the rules a downscoped token is limited
/// to. Serialises as STS's `accessBoundary` object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessBoundary {
    /// At most 10.
    pub access_boundary_rules: Vec<BoundaryRule>,
}

/// The file format Google documents (and `token --access-boundary` reads):
/// `{"accessBoundary": {"accessBoundaryRules": […]}}`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Options<'a> {
    access_boundary: std::borrow::Cow<'a, AccessBoundary>,
}

impl AccessBoundary {
    /// Reads Google's JSON format, `{"accessBoundary":{"accessBoundaryRules":[…]}}`.
    pub fn from_json(text: &str) -> Result<AccessBoundary, String> {
        let o: Options<'static> = serde_json::from_str(text).map_err(|e| {
            format!("not a Credential Access Boundary (`{{\"accessBoundary\":{{\"accessBoundaryRules\":[{{\"availableResource\":…,\"availablePermissions\":[…]}}]}}}}`): {e}")
        })?;
        let b = o.access_boundary.into_owned();
        if b.access_boundary_rules.is_empty() {
            return Err(
                "`accessBoundaryRules` is empty; a boundary needs at least one rule".into(),
            );
        }
        Ok(b)
    }

    /// The `options` value of the STS request.
    pub fn options_json(&self) -> String {
        serde_json::to_string(&Options {
            access_boundary: std::borrow::Cow::Borrowed(self),
        })
        .unwrap_or_default()
    }

    /// The rules' resources, comma-separated: what an audit record names.
    pub fn resources(&self) -> String {
        let r: Vec<&str> = self
            .access_boundary_rules
            .iter()
            .map(|r| r.available_resource.as_str())
            .collect();
        r.join(",")
    }
}

impl fmt::Display for AccessBoundary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "access boundary {}", self.resources())
    }
}

/// Exchanges `base` at STS for a token limited to `boundary`. The result
/// expires when STS says or when `base` does, whichever is first.
pub(crate) async fn exchange(
    http: &Http,
    target: &str,
    base: &Token,
    boundary: &AccessBoundary,
) -> Result<Token, CredentialError> {
    let body = form_encode(&[
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
        ("requested_token_type", ACCESS_TOKEN_TYPE),
        ("subject_token", base.expose_secret()),
        ("options", &boundary.options_json()),
    ]);
    let answer = http
        .send_retrying(STS_URI, || {
            Request::post(STS_URI)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::ACCEPT, "application/json")
                .body(full_body(body.clone()))
                .map_err(|e| bad_uri(STS_URI, e))
        })
        .await?;
    if !answer.status.is_success() {
        return Err(CredentialError::Sts {
            target: target.to_owned(),
            status: answer.status.as_u16(),
            message: google_error_message(&answer.body),
        });
    }
    #[derive(Deserialize)]
    struct Exchanged {
        access_token: String,
        #[serde(default)]
        expires_in: Option<u64>,
    }
    let e: Exchanged =
        serde_json::from_slice(&answer.body).map_err(|e| CredentialError::BadResponse {
            endpoint: host_of(STS_URI),
            message: format!("not a token exchange response: {e}"),
        })?;
    // A downscoped token never outlives its base; STS may omit
    // `expires_in` when it is the base's.
    let valid_for = e.expires_in.map_or(base.expires_in(), |s| {
        Duration::from_secs(s).min(base.expires_in())
    });
    let expire_time = base
        .expire_time()
        .min(std::time::SystemTime::now() + valid_for);
    Ok(Token::expiring_at(e.access_token, expire_time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_googles_shape_and_round_trip() {
        let text = r#"{"accessBoundary":{"accessBoundaryRules":[{"availableResource":"//storage.googleapis.com/projects/_/buckets/b","availablePermissions":["inRole:roles/storage.objectViewer"],"availabilityCondition":{"expression":"resource.name.startsWith('projects/_/buckets/b/objects/r/')"}}]}}"#;
        let b = AccessBoundary::from_json(text).unwrap();
        assert_eq!(b.options_json(), text);
        assert_eq!(
            b.resources(),
            "//storage.googleapis.com/projects/_/buckets/b"
        );
        assert!(
            AccessBoundary::from_json(r#"{"accessBoundary":{"accessBoundaryRules":[]}}"#).is_err()
        );
        assert!(AccessBoundary::from_json(r#"{"rules":[]}"#).is_err());
    }
}
