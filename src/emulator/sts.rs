//! `sts.googleapis.com/v1/token`: the token exchange that downscopes an
//! access token to a Credential Access Boundary, with the grant checked as
//! Google checks it; and the boundary check Cloud Storage applies to such
//! a token (bucket, the `resource.name.startsWith('…')` condition form,
//! and the role's permissions).

use std::time::SystemTime;

use http::{Method, StatusCode};

use super::state::State;
use super::{form_decode, json, Reply};
use crate::google::sts::{AccessBoundary, ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT};

const STORAGE_RESOURCE: &str = "//storage.googleapis.com/";

fn sts_error(status: StatusCode, code: &str, description: &str) -> Reply {
    json(
        status,
        &serde_json::json!({"error": code, "error_description": description}),
    )
}

pub(crate) fn token(state: &State, method: &Method, path: &str, body: &[u8]) -> Reply {
    if path != "/v1/token" {
        return super::not_found(path);
    }
    if state.lock().sts_outage {
        state.count("sts.outage", "");
        return super::google_error(503, "UNAVAILABLE", "The service is currently unavailable.");
    }
    let bad = |d: &str| sts_error(StatusCode::BAD_REQUEST, "invalid_request", d);
    if method != Method::POST {
        return bad("POST the token exchange request.");
    }
    let form = form_decode(body);
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match get("grant_type") {
        Some(TOKEN_EXCHANGE_GRANT) => {}
        Some(other) => {
            return sts_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("Invalid value for \"grant_type\": {other}. Supported value: {TOKEN_EXCHANGE_GRANT}."),
            )
        }
        None => return bad("Missing required field: grant_type."),
    }
    match get("subject_token_type") {
        Some(ACCESS_TOKEN_TYPE) => {}
        Some(other) => {
            return bad(&format!(
                "Invalid value for \"subject_token_type\": {other}. Downscoping takes {ACCESS_TOKEN_TYPE}."
            ))
        }
        None => return bad("Missing required field: subject_token_type."),
    }
    match get("requested_token_type") {
        Some(ACCESS_TOKEN_TYPE) => {}
        Some(other) => {
            return bad(&format!(
                "Invalid value for \"requested_token_type\": {other}. Supported value: {ACCESS_TOKEN_TYPE}."
            ))
        }
        None => return bad("Missing required field: requested_token_type."),
    }
    let Some(subject) = get("subject_token").filter(|s| !s.is_empty()) else {
        return bad("Missing required field: subject_token.");
    };
    let Some(options) = get("options") else {
        return bad("Missing required field: options (the Credential Access Boundary).");
    };
    let boundary = match AccessBoundary::from_json(options) {
        Ok(b) => b,
        Err(e) => return bad(&format!("Invalid options: {e}")),
    };
    if boundary.access_boundary_rules.len() > 10 {
        return bad("The Credential Access Boundary has more than 10 rules.");
    }
    for r in &boundary.access_boundary_rules {
        if !r.available_resource.starts_with(STORAGE_RESOURCE) {
            return bad(&format!(
                "Invalid availableResource {}: only Cloud Storage buckets are supported.",
                r.available_resource
            ));
        }
        if r.available_permissions.is_empty()
            || r.available_permissions
                .iter()
                .any(|p| !p.starts_with("inRole:"))
        {
            return bad("availablePermissions must name roles in the form inRole:roles/ROLE.");
        }
        if let Some(c) = &r.availability_condition {
            if c.expression.chars().count() > 2048 {
                return bad("The availabilityCondition expression is longer than 2048 characters.");
            }
        }
    }
    let Some(issued) = state.lock().issued.get(subject).cloned() else {
        state.count("sts", "");
        return sts_error(
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "The subject token is invalid or has expired.",
        );
    };
    if issued.expires <= SystemTime::now() || subject.starts_with("eyJ") {
        state.count("sts", "");
        return sts_error(
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "The subject token is invalid or has expired.",
        );
    }
    state.count("sts", &issued.principal);
    // A downscoped token expires with its subject.
    let (token, expires) = state.issue_downscoped(&issued.principal, issued.expires, boundary);
    let expires_in = expires
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .as_secs();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "access_token": token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": expires_in,
        }),
    )
}

/// The permissions a predefined Storage role grants, as far as the
/// emulated API needs them.
fn role_permissions(role: &str) -> &'static [&'static str] {
    match role {
        "roles/storage.objectViewer" => &["storage.objects.get", "storage.objects.list"],
        "roles/storage.objectCreator" => &["storage.objects.create"],
        "roles/storage.objectAdmin" => &[
            "storage.objects.get",
            "storage.objects.list",
            "storage.objects.create",
            "storage.objects.delete",
            "storage.objects.update",
        ],
        "roles/storage.legacyBucketReader" => &["storage.buckets.get", "storage.objects.list"],
        "roles/storage.admin" => &[
            "storage.buckets.get",
            "storage.objects.get",
            "storage.objects.list",
            "storage.objects.create",
            "storage.objects.delete",
            "storage.objects.update",
        ],
        _ => &[],
    }
}

/// `resource.name.startsWith('PREFIX')`, the one condition form the
/// emulator evaluates; any other expression makes its rule unavailable.
fn condition_holds(expression: &str, resource_name: &str) -> bool {
    let e = expression.trim();
    let Some(arg) = e
        .strip_prefix("resource.name.startsWith(")
        .and_then(|r| r.strip_suffix(')'))
        .map(str::trim)
    else {
        return false;
    };
    let prefix = arg
        .strip_prefix('\'')
        .and_then(|a| a.strip_suffix('\''))
        .or_else(|| arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')));
    prefix.is_some_and(|p| !p.contains(['\'', '"']) && resource_name.starts_with(p))
}

/// Whether `boundary` lets a token use `permission` on `bucket` (and
/// `object`, when the call names one).
pub(crate) fn allows(
    boundary: &AccessBoundary,
    permission: &str,
    bucket: &str,
    object: Option<&str>,
) -> bool {
    let bucket_resource = format!("{STORAGE_RESOURCE}projects/_/buckets/{bucket}");
    let resource_name = match object {
        Some(o) => format!("projects/_/buckets/{bucket}/objects/{o}"),
        None => format!("projects/_/buckets/{bucket}"),
    };
    boundary.access_boundary_rules.iter().any(|r| {
        r.available_resource == bucket_resource
            && r.available_permissions.iter().any(|p| {
                p.strip_prefix("inRole:")
                    .is_some_and(|role| role_permissions(role).contains(&permission))
            })
            && r.availability_condition
                .as_ref()
                .is_none_or(|c| condition_holds(&c.expression, &resource_name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boundary(role: &str, condition: Option<&str>) -> AccessBoundary {
        let c = condition.map_or(String::new(), |c| {
            format!(
                ",\"availabilityCondition\":{{\"expression\":{}}}",
                serde_json::json!(c)
            )
        });
        AccessBoundary::from_json(&format!(
            r#"{{"accessBoundary":{{"accessBoundaryRules":[{{"availableResource":"//storage.googleapis.com/projects/_/buckets/a","availablePermissions":["inRole:roles/storage.{role}"]{c}}}]}}}}"#
        ))
        .unwrap()
    }

    /// POSTs the form `pairs`; the status and the JSON answer.
    fn exchange(state: &State, pairs: &[(&str, &str)]) -> (u16, serde_json::Value) {
        use http_body_util::BodyExt;
        use std::future::Future;
        let body = crate::google::form_encode(pairs);
        let reply = token(state, &Method::POST, "/v1/token", body.as_bytes());
        let status = reply.status().as_u16();
        let mut collect = std::pin::pin!(reply.into_body().collect());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let std::task::Poll::Ready(Ok(b)) = collect.as_mut().poll(&mut cx) else {
            panic!("a Full body is always ready");
        };
        (status, serde_json::from_slice(&b.to_bytes()).unwrap())
    }

    #[test]
    fn the_grant_is_checked_as_google_checks_it() {
        let state = State::new("vm@p.iam.gserviceaccount.com".into(), None).unwrap();
        let (subject, _) = state.issue_access_token(
            "sa@p.iam.gserviceaccount.com",
            std::time::Duration::from_secs(60),
        );
        let options = r#"{"accessBoundary":{"accessBoundaryRules":[{"availableResource":"//storage.googleapis.com/projects/_/buckets/a","availablePermissions":["inRole:roles/storage.objectViewer"]}]}}"#;
        let good = [
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("subject_token", subject.as_str()),
            ("options", options),
        ];
        let with = |k: &str, v: &'static str| -> Vec<(&str, &str)> {
            good.iter()
                .map(|&(n, x)| (n, if n == k { v } else { x }))
                .collect()
        };
        let (status, body) = exchange(&state, &with("grant_type", "client_credentials"));
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("unsupported_grant_type"))
        );
        let (status, body) = exchange(
            &state,
            &with(
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:id_token",
            ),
        );
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{body}"
        );
        let (status, body) = exchange(&state, &with("options", "{}"));
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{body}"
        );
        let (status, body) = exchange(&state, &with("subject_token", "ya29.forged"));
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_grant")),
            "{body}"
        );
        let (status, body) = exchange(&state, &good);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["issued_token_type"], ACCESS_TOKEN_TYPE);
        assert_eq!(body["token_type"], "Bearer");
        let token = body["access_token"].as_str().unwrap();
        assert_eq!(
            state.principal_of(token).as_deref(),
            Some("sa@p.iam.gserviceaccount.com")
        );
        assert!(state.boundary_of(token).is_some());
        assert!(state.boundary_of(&subject).is_none());
    }

    #[test]
    fn bucket_role_and_prefix_are_enforced() {
        let b = boundary(
            "objectViewer",
            Some("resource.name.startsWith('projects/_/buckets/a/objects/reports/')"),
        );
        assert!(allows(&b, "storage.objects.get", "a", Some("reports/x")));
        assert!(!allows(&b, "storage.objects.get", "a", Some("other/x")));
        assert!(!allows(&b, "storage.objects.get", "b", Some("reports/x")));
        assert!(!allows(
            &b,
            "storage.objects.create",
            "a",
            Some("reports/x")
        ));
        let admin = boundary("objectAdmin", None);
        assert!(allows(&admin, "storage.objects.create", "a", Some("x")));
        assert!(allows(&admin, "storage.objects.list", "a", None));
        assert!(!allows(&admin, "storage.objects.get", "ab", Some("x")));
        let odd = boundary("objectAdmin", Some("true || resource.name.startsWith('x')"));
        assert!(!allows(&odd, "storage.objects.get", "a", Some("x")));
    }
}
