//! `GET /healthz` (no auth: for load balancers and systemd) and `GET /metrics`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::config::Role;
use crate::daemon::api::auth::Caller;
use crate::daemon::api::error::ApiError;
use crate::daemon::api::routes::{HEALTHZ, METRICS};
use crate::daemon::deadline::bounded;
use crate::daemon::shared::SharedRef;
use crate::daemon::store::StoreError;

/// How long `/healthz` waits for the state database before calling it down (at
/// most: the daemon's own operation deadline when that is shorter).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// The answer to `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: HealthStatus,
    /// This daemon's name.
    pub node: String,
    pub version: &'static str,
    /// Why the state database is unavailable (only then present).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
    /// Runs this daemon stopped driving because it could not renew their
    /// leases in time (only while its scheduler cannot reach the state
    /// database). They continue under whoever claims them next.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub runs_stopped: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    Unavailable,
}

/// Liveness and state-database health (no auth)
///
/// 200 while the state database answers `SELECT 1` (within 3 s) and the
/// scheduler's last round (lease renewal, claims) reached it, else 503.
#[utoipa::path(
    get,
    path = HEALTHZ.path,
    operation_id = "healthz",
    tag = "service",
    security(),
    responses(
        (status = 200, description = "The state database answers `SELECT 1`.", body = Health),
        (status = 503, description = "The state database does not answer, or the scheduler cannot renew its leases or claim runs.", body = Health),
    ),
)]
pub async fn healthz(State(shared): State<SharedRef>) -> Response {
    let probe = async {
        let client = shared.pool.get().await.map_err(StoreError::from)?;
        client
            .query_one("SELECT 1", &[])
            .await
            .map_err(StoreError::from)?;
        Ok::<(), StoreError>(())
    };
    // A probe that timed out closes the pool's idle connections: the one it
    // used may be stuck on a silent network and must not be handed out again.
    let limit = HEALTH_TIMEOUT.min(shared.op_timeout);
    let probed = bounded(&shared.pool, limit, "the health probe", probe).await;
    // The probe may succeed on a fresh connection while the scheduler's own
    // work still fails (or has just failed): both are reported.
    let view = shared.scheduler_view();
    let scheduler = view.failing_since.map(|since| {
        format!(
            "the scheduler has not reached the state database for {} ms: {}",
            since.elapsed().as_millis(),
            view.last_error.as_deref().unwrap_or("unknown error")
        )
    });
    let outcome = match (probed, scheduler) {
        (Ok(()), None) => Ok(()),
        (Err(e), None) => Err(e.to_string()),
        (Ok(()), Some(s)) => Err(s),
        (Err(e), Some(s)) => Err(format!("{e}; {s}")),
    };
    let (code, status, error) = match outcome {
        Ok(()) => (StatusCode::OK, HealthStatus::Ok, None),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            HealthStatus::Unavailable,
            Some(e),
        ),
    };
    let health = Health {
        status,
        node: shared.node.clone(),
        version: env!("CARGO_PKG_VERSION"),
        error,
        runs_stopped: (view.runs_stopped > 0).then_some(view.runs_stopped),
    };
    (code, Json(health)).into_response()
}

/// Prometheus text exposition (role: read)
#[utoipa::path(
    get,
    path = METRICS.path,
    operation_id = "metrics",
    tag = "service",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4.", body = String,
            content_type = "text/plain; version=0.0.4"),
    ),
)]
pub async fn metrics(
    State(shared): State<SharedRef>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Role::Read)?;
    let client = shared.pool.get().await?;
    let rows = client
        .query(
            "SELECT phase, state_name, count(*) FROM runs GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await?;
    let counts: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let pending: Vec<(String, i64)> = client
        .query(
            "SELECT channel, count(*) FROM notifications WHERE status = 'pending' GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut text = shared.metrics.render(&counts);
    shared
        .metrics
        .render_notifications(&mut text, &shared.outbox.stats, &pending);
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::daemon::metrics::CONTENT_TYPE),
    );
    Ok(response)
}
