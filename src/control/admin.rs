//! The admin endpoint, on its own address (never the proxy port):
//! `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus text) and
//! `POST /reload`.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::control::ControlPlane;
use crate::google::slot::SlotStatus;
use crate::net::{full_body, ProxyBody};
use crate::policy::routes::Action;

/// Serves the admin endpoint until the task is aborted.
pub(crate) async fn serve(control: Arc<ControlPlane>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = control.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(full_body(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn handle(shared: &ControlPlane, req: Request<Incoming>) -> Response<ProxyBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") => readyz(shared),
        (&Method::GET, "/metrics") => {
            let slots = shared.registry().slots().into_iter().map(|s| {
                let secs = s.expires_in().map(|d| d.as_secs_f64()).unwrap_or(0.0);
                (s.request().to_string(), secs)
            });
            let body = crate::ops::metrics::global().render(slots);
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            )
        }
        (&Method::POST, "/reload") => match shared.reload() {
            Ok(done) => text(StatusCode::OK, "text/plain", format!("{done}\n")),
            Err(e) => text(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "admin endpoints: GET /healthz, GET /readyz, GET /metrics, POST /reload\n".into(),
        ),
    }
}

/// Ready when serving (not draining) and every warm route's slot holds a
/// token; otherwise 503 naming the failing routes and why.
fn readyz(shared: &ControlPlane) -> Response<ProxyBody> {
    if shared.is_draining() {
        let body = serde_json::json!({"ready": false, "reason": "shutting down"});
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            body.to_string(),
        );
    }
    let policy = shared.policy();
    let mut failing = Vec::new();
    for route in policy.routes.routes().iter().filter(|r| r.warm) {
        if let Action::Inject { slot, .. } = &route.action {
            if !matches!(slot.status(), SlotStatus::Fresh | SlotStatus::Refreshing) {
                failing.push(serde_json::json!({
                    "route": &*route.name,
                    "target_principal": slot.request().target_principal(),
                    "status": format!("{:?}", slot.status()),
                    "error": slot.last_error().map(|e| e.to_string()),
                }));
            }
        }
    }
    let ready = failing.is_empty();
    let body = serde_json::json!({"ready": ready, "failing": failing});
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, "application/json", body.to_string())
}
