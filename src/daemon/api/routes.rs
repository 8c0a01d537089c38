//! The route table and the middleware around every request: it times the request
//! for `metrics.observe_api` (by route template, so run ids do not explode the
//! label set), writes the audit row of every mutating or refused request, and
//! turns a panic in a handler into a 500 instead of a dropped connection.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use futures_util::FutureExt;
use tokio::sync::watch;

use crate::daemon::api::auth::ActorSlot;
use crate::daemon::api::error::{ApiError, AuditDetail, AuditRun};
use crate::daemon::api::events::StopSignal;
use crate::daemon::api::{audit, control, events, health, openapi, runs, submit, view};
use crate::daemon::shared::SharedRef;

/// Largest request body accepted (a submitted plan bundle with its migrations).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// One route: its method, its path template, and the name of its action in the
/// audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub action: &'static str,
    /// Audited on every request, not only when refused.
    pub mutating: bool,
}

const fn spec(method: &'static str, path: &'static str, action: &'static str) -> RouteSpec {
    RouteSpec {
        method,
        path,
        action,
        mutating: matches!(method.as_bytes(), b"POST"),
    }
}

pub const HEALTHZ: RouteSpec = spec("GET", "/healthz", "healthz");
pub const METRICS: RouteSpec = spec("GET", "/metrics", "metrics");
pub const OPENAPI: RouteSpec = spec("GET", "/openapi.json", "openapi");
pub const SUBMIT: RouteSpec = spec("POST", "/v1/runs", "submit");
pub const LIST: RouteSpec = spec("GET", "/v1/runs", "list_runs");
pub const SHOW: RouteSpec = spec("GET", "/v1/runs/{id}", "show_run");
pub const EVENTS: RouteSpec = spec("GET", "/v1/runs/{id}/events", "events");
pub const APPROVE: RouteSpec = spec("POST", "/v1/runs/{id}/approve", "approve");
pub const ABORT: RouteSpec = spec("POST", "/v1/runs/{id}/abort", "abort");
pub const ACK: RouteSpec = spec("POST", "/v1/runs/{id}/ack", "ack");

/// Every route the API serves (the OpenAPI document must describe each).
pub const ROUTES: &[RouteSpec] = &[
    HEALTHZ, METRICS, OPENAPI, SUBMIT, LIST, SHOW, EVENTS, APPROVE, ABORT, ACK,
];

/// The whole API, ready for `axum::serve`. Event streams stay open until their
/// run finishes; see [`router_until`] to end them at shutdown.
pub fn router(shared: SharedRef) -> Router {
    router_with(shared, StopSignal::never())
}

/// [`router`], with event streams that end once `stop` turns true, so that a
/// graceful shutdown does not wait for every follower of an open run (clients
/// reconnect with `Last-Event-ID` and miss nothing).
pub fn router_until(shared: SharedRef, stop: watch::Receiver<bool>) -> Router {
    router_with(shared, StopSignal::new(stop))
}

fn router_with(shared: SharedRef, stop: StopSignal) -> Router {
    Router::new()
        .route(HEALTHZ.path, get(health::healthz))
        .route(METRICS.path, get(health::metrics))
        .route(OPENAPI.path, get(openapi::handler(&shared.config)))
        .route(LIST.path, get(runs::list).post(submit::submit))
        .route(SHOW.path, get(runs::show))
        .route(EVENTS.path, get(events::events))
        .route(APPROVE.path, post(control::approve))
        .route(ABORT.path, post(control::abort))
        .route(ACK.path, post(control::ack))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(Extension(stop))
        .layer(from_fn_with_state(shared.clone(), observe))
        .with_state(shared)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see GET /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route; see GET /openapi.json",
    )
}

/// What the middleware knows about a request before it runs.
struct Matched {
    template: &'static str,
    spec: Option<RouteSpec>,
    run_id: Option<String>,
}

/// The route template (and spec) that `method path` matches: `{...}` segments
/// match any one segment.
fn classify(method: &Method, path: &str) -> Matched {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let fits = |template: &str| {
        let parts: Vec<&str> = template.split('/').collect();
        parts.len() == segments.len()
            && parts
                .iter()
                .zip(&segments)
                .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()))
    };
    let same_path: Vec<&RouteSpec> = ROUTES.iter().filter(|r| fits(r.path)).collect();
    let spec = same_path
        .iter()
        .find(|r| r.method == method.as_str())
        .copied()
        .copied();
    let template = spec
        .map(|s| s.path)
        .or(same_path.first().map(|s| s.path))
        .unwrap_or("unmatched");
    // Only a well-formed id is worth recording against the run.
    let run_id = match segments.as_slice() {
        ["", "v1", "runs", id, ..] if view::valid_run_id(id) => Some((*id).to_string()),
        _ => None,
    };
    Matched {
        template,
        spec,
        run_id,
    }
}

async fn observe(State(shared): State<SharedRef>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let matched = classify(request.method(), request.uri().path());
    let actor = ActorSlot::default();
    request.extensions_mut().insert(actor.clone());

    let response = match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(route = matched.template, panic = %what, "api handler panicked");
            ApiError::internal("internal error (the daemon logged it)").into_response()
        }
    };

    let status = response.status().as_u16();
    shared
        .metrics
        .observe_api(matched.template, status, started.elapsed().as_secs_f64());

    let refused = status == 401 || status == 403;
    if matched.spec.is_some_and(|s| s.mutating) || refused {
        let action = matched.spec.map_or("unknown", |s| s.action);
        let run_id = response
            .extensions()
            .get::<AuditRun>()
            .map(|r| r.0.clone())
            .or(matched.run_id);
        let detail = response
            .extensions()
            .get::<AuditDetail>()
            .map_or(String::new(), |d| d.0.clone());
        let actor = actor.get().unwrap_or_else(|| "anonymous".to_string());
        audit::record(&shared, &actor, action, run_id.as_deref(), status, &detail).await;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_uses_templates_and_keeps_only_valid_ids() {
        let m = classify(&Method::POST, "/v1/runs/0123456789ab/approve");
        assert_eq!(m.template, "/v1/runs/{id}/approve");
        assert_eq!(m.spec.map(|s| s.action), Some("approve"));
        assert_eq!(m.run_id.as_deref(), Some("0123456789ab"));

        let m = classify(&Method::GET, "/v1/runs/not-an-id");
        assert_eq!(m.template, "/v1/runs/{id}");
        assert_eq!(m.run_id, None);

        let m = classify(&Method::POST, "/v1/runs");
        assert_eq!(m.spec, Some(SUBMIT));
        let m = classify(&Method::DELETE, "/v1/runs");
        assert_eq!((m.template, m.spec), ("/v1/runs", None));
        assert_eq!(classify(&Method::GET, "/nope").template, "unmatched");
        assert_eq!(
            classify(&Method::GET, "/v1/runs//events").template,
            "unmatched"
        );
    }

    #[test]
    fn only_posts_are_mutating() {
        for r in ROUTES {
            assert_eq!(r.mutating, r.method == "POST", "{r:?}");
        }
    }
}
