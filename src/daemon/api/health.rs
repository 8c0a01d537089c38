//! `GET /healthz` (no auth: for load balancers and systemd) and `GET /metrics`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::config::Role;
use crate::daemon::api::auth::Caller;
use crate::daemon::api::error::ApiError;
use crate::daemon::shared::SharedRef;
use crate::daemon::store::StoreError;

/// How long `/healthz` waits for the state database before calling it down.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// 200 while the state database answers `SELECT 1`, else 503.
pub async fn healthz(State(shared): State<SharedRef>) -> Response {
    let probe = async {
        let client = shared.pool.get().await.map_err(StoreError::from)?;
        client
            .query_one("SELECT 1", &[])
            .await
            .map_err(StoreError::from)?;
        Ok::<(), StoreError>(())
    };
    let outcome = match tokio::time::timeout(HEALTH_TIMEOUT, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the state database did not answer within {}s",
            HEALTH_TIMEOUT.as_secs()
        )),
    };
    let version = env!("CARGO_PKG_VERSION");
    match outcome {
        Ok(()) => {
            Json(json!({"status": "ok", "node": shared.node, "version": version})).into_response()
        }
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable",
                "node": shared.node,
                "version": version,
                "error": error,
            })),
        )
            .into_response(),
    }
}

/// Prometheus text exposition (read role).
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
