//! The route table and the layers around every request, outermost first:
//!
//! 1. `protective_headers` (crate::web::routes): `no-store`, `nosniff`, the
//!    page's CSP and friends, HSTS under TLS, on every answer, errors included;
//! 2. `observe`: times the request for `metrics.observe_api` (by route template,
//!    so run ids do not explode the label set) and writes the audit row of every
//!    mutating or refused request (those without an actor counted per source);
//! 3. `CatchPanicLayer`: a panic in a handler becomes a 500 with the API's JSON
//!    error instead of a dropped connection;
//! 4. `TimeoutLayer`: a request that has no response head after
//!    [`REQUEST_TIMEOUT`] is answered 503 (an event stream's head is ready at
//!    once and its body is not bounded; the route carries no timeout anyway);
//! 5. a concurrency limit on submits ([`MAX_CONCURRENT_SUBMITS`]): each holds its
//!    body and the bundle parsed from it, so they wait their turn rather than
//!    all at once take the memory of 8 MiB each.

use std::any::Any;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state, map_response, map_response_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use tokio_util::sync::CancellationToken;
use tower::limit::ConcurrencyLimitLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

use crate::daemon::api::auth::ActorSlot;
use crate::daemon::api::error::{ApiError, AuditDetail, AuditRun, NotAudited};
use crate::daemon::api::events::StopSignal;
use crate::daemon::api::{
    audit, control, events, health, openapi, runbook, runs, series, submit, undo, view,
};
use crate::daemon::shared::SharedRef;

/// Largest request body accepted (a submitted plan bundle with its migrations).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The longest a request may take until its response head: reading the body,
/// waiting for a submit slot and the handler's work. A handler cut off here has
/// its transaction rolled back (unless it was already committing).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Submits handled at once; the others wait (within [`REQUEST_TIMEOUT`]) before
/// their body is read. Measured with 16 concurrent 7.5 MiB submits
/// (benches/submit_memory.sh): see docs/operations.md.
pub const MAX_CONCURRENT_SUBMITS: usize = 2;

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

pub const fn spec(method: &'static str, path: &'static str, action: &'static str) -> RouteSpec {
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
pub const UNDO: RouteSpec = spec("POST", "/v1/runs/{id}/undo", "undo");
pub const RUNBOOK: RouteSpec = spec("GET", "/v1/runs/{id}/runbook", "runbook");
pub const SERIES: RouteSpec = spec("GET", "/v1/runs/{id}/checks/{name}/series", "check_series");

/// Every route the API serves (the OpenAPI document must describe each). The
/// web page's routes are [`crate::web::PAGES`].
pub const ROUTES: &[RouteSpec] = &[
    HEALTHZ, METRICS, OPENAPI, SUBMIT, LIST, SHOW, EVENTS, APPROVE, ABORT, ACK, UNDO, RUNBOOK,
    SERIES,
];

/// The whole API, ready for `axum::serve` (with
/// `into_make_service_with_connect_info::<SocketAddr>()`, so that unauthenticated
/// requests are audited by source address). Event streams stay open until their
/// run finishes; see [`router_until`] to end them at shutdown.
pub fn router(shared: SharedRef) -> Router {
    router_with(shared, StopSignal::never())
}

/// [`router`], with event streams that end once `stop` is cancelled, so that a
/// graceful shutdown does not wait for every follower of an open run (clients
/// reconnect with `Last-Event-ID` and miss nothing).
pub fn router_until(shared: SharedRef, stop: CancellationToken) -> Router {
    router_with(shared, StopSignal::new(stop))
}

fn router_with(shared: SharedRef, stop: StopSignal) -> Router {
    let submits = post(submit::submit).layer(ConcurrencyLimitLayer::new(MAX_CONCURRENT_SUBMITS));
    let requests = Router::new()
        .route(HEALTHZ.path, get(health::healthz))
        .route(METRICS.path, get(health::metrics))
        .route(OPENAPI.path, get(openapi::handler(&shared.config)))
        .route(LIST.path, get(runs::list).merge(submits))
        .route(SHOW.path, get(runs::show))
        .route(APPROVE.path, post(control::approve))
        .route(ABORT.path, post(control::abort))
        .route(ACK.path, post(control::ack))
        .route(UNDO.path, post(undo::undo))
        .route(RUNBOOK.path, get(runbook::runbook))
        .route(SERIES.path, get(series::series))
        .merge(crate::web::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    // An event stream stays open until its run finishes or the daemon stops.
    // (A method-not-allowed fallback applies to the routes present when it is
    // set, before any layer: each router sets its own.)
    let streams = Router::new()
        .route(EVENTS.path, get(events::events))
        .method_not_allowed_fallback(method_not_allowed);
    panic_safe(time_boxed(requests, REQUEST_TIMEOUT).merge(streams))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(Extension(stop))
        .layer(from_fn_with_state(shared.clone(), observe))
        .layer(map_response_with_state(
            shared.clone(),
            crate::web::routes::protective_headers,
        ))
        .with_state(shared)
}

/// `router` answered 503 (JSON) when a request has no response head within
/// `timeout`.
fn time_boxed<S: Clone + Send + Sync + 'static>(router: Router<S>, timeout: Duration) -> Router<S> {
    router
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(map_response(move |r| timeout_as_json(timeout, r)))
}

/// `router` with a handler's panic turned into a 500 (JSON).
fn panic_safe<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.layer(CatchPanicLayer::custom(panic_response))
}

/// tower-http's timeout answers with an empty body: give it the API's JSON
/// error. Handlers' own 503s carry JSON already and pass unchanged.
async fn timeout_as_json(timeout: Duration, response: Response) -> Response {
    if response.status() != StatusCode::SERVICE_UNAVAILABLE
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "no answer within {}s (the state database may be slow or unavailable); a submit, approve, abort, ack or undo may or may not have been applied: look at the run",
            timeout.as_secs_f64()
        ),
    )
    .into_response()
}

/// A handler panicked: log it (inside the request's span, which names the
/// route) and answer 500 with the API's JSON error. The panic text stays in the
/// log; it may hold anything.
fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "api handler panicked");
    ApiError::internal("internal error (the daemon logged it)").into_response()
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
/// match any one non-empty segment. A trailing slash is a segment of its own,
/// as for the router: `/v1/runs/` is no route (and so not a submit, to be
/// audited), while `/` is the runs page.
fn classify(method: &Method, path: &str) -> Matched {
    let segments: Vec<&str> = path.split('/').collect();
    let fits = |template: &str| {
        let parts: Vec<&str> = template.split('/').collect();
        parts.len() == segments.len()
            && parts
                .iter()
                .zip(&segments)
                .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()))
    };
    let same_path: Vec<&RouteSpec> = ROUTES
        .iter()
        .chain(crate::web::PAGES)
        .filter(|r| fits(r.path))
        .collect();
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
    // The peer address (served with connect info); not a forwarded header,
    // which anyone can write.
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());

    let span = tracing::info_span!("api", route = matched.template);
    let response = next.run(request).instrument(span).await;

    let status = response.status().as_u16();
    shared
        .metrics
        .observe_api(matched.template, status, started.elapsed().as_secs_f64());

    let refused = status == 401 || status == 403;
    let skipped = response.extensions().get::<NotAudited>().is_some();
    if (matched.spec.is_some_and(|s| s.mutating) || refused) && !skipped {
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
        match actor.get() {
            Some(actor) => {
                audit::record(&shared, &actor, action, run_id.as_deref(), status, &detail).await
            }
            // No actor (a 401, a refused or malformed sign-in):
            // anyone can send these without limit, so they are counted per
            // source address, status and minute, not written one by one.
            None => audit::record_unauthenticated(&shared, source, action, status, &detail).await,
        }
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
        // A trailing slash matches no route, except the page root.
        let m = classify(&Method::POST, "/v1/runs/");
        assert_eq!((m.template, m.spec), ("unmatched", None));
        let m = classify(&Method::POST, "/signout/");
        assert_eq!((m.template, m.spec), ("unmatched", None));
        assert_eq!(
            classify(&Method::GET, "/").spec,
            Some(crate::web::routes::RUNS_PAGE)
        );
    }

    /// Serve `router` on 127.0.0.1 and GET `path`: (status, JSON body).
    async fn get_json(router: Router, path: &str) -> (u16, serde_json::Value) {
        crate::tls::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        let status = response.status().as_u16();
        let is_json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        assert!(is_json, "{status}: {:?}", response.headers());
        (status, response.json().await.unwrap())
    }

    #[tokio::test]
    async fn a_request_without_an_answer_in_time_gets_a_json_503() {
        let router = time_boxed(
            Router::new()
                .route("/slow", get(std::future::pending::<()>))
                .route(
                    "/busy",
                    get(|| async { ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "db away") }),
                ),
            Duration::from_millis(100),
        );
        let (status, body) = get_json(router.clone(), "/slow").await;
        assert_eq!(status, 503);
        let error = body["error"].as_str().unwrap();
        assert!(error.starts_with("no answer within 0.1s"), "{error}");
        // A handler's own 503 keeps its message.
        let (status, body) = get_json(router, "/busy").await;
        assert_eq!((status, body["error"].as_str()), (503, Some("db away")));
    }

    async fn boom() -> ApiError {
        panic!("secret detail")
    }

    #[tokio::test]
    async fn a_panicking_handler_gets_a_json_500_and_the_server_goes_on() {
        let router = panic_safe(
            Router::new()
                .route("/boom", get(boom))
                .route("/fine", get(|| async { ApiError::not_found("no") })),
        );
        let (status, body) = get_json(router.clone(), "/boom").await;
        assert_eq!(status, 500);
        assert_eq!(body["error"], "internal error (the daemon logged it)");
        assert!(!body.to_string().contains("secret"), "{body}");
        let (status, _) = get_json(router, "/fine").await;
        assert_eq!(status, 404);
    }

    #[test]
    fn only_posts_are_mutating() {
        for r in ROUTES {
            assert_eq!(r.mutating, r.method == "POST", "{r:?}");
        }
    }
}
