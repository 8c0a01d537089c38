//! `GET /v1/runs` (newest first, filtered) and `GET /v1/runs/{id}`.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::config::Role;
use crate::daemon::api::auth::Caller;
use crate::daemon::api::error::{ApiError, BadRequest, NotFound};
use crate::daemon::api::routes::{LIST, SHOW};
use crate::daemon::api::view::{self, Filter, RunSummary, RunView};
use crate::daemon::shared::SharedRef;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

const PHASES: &[&str] = &[
    "rehearsing",
    "pending_approval",
    "queued",
    "active",
    "finished",
];

/// The query of `GET /v1/runs`. Numbers are read as text so that a bad one is
/// refused with a message of ours.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Comma-separated phases (rehearsing, pending_approval, queued, active, finished);
    /// `open` means every phase but finished.
    pub phase: Option<String>,
    pub target: Option<String>,
    /// At most 1000 (larger values are capped).
    #[param(value_type = Option<i64>, minimum = 1, default = json!(DEFAULT_LIMIT))]
    pub limit: Option<String>,
}

/// The answer to `GET /v1/runs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    pub runs: Vec<RunSummary>,
}

/// The path of every route about one run.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RunPath {
    /// The run id: 12 lowercase hex digits.
    #[param(pattern = "^[0-9a-f]{12}$")]
    pub id: String,
}

impl ListQuery {
    fn filter(&self) -> Result<Filter, ApiError> {
        let mut phases = Vec::new();
        for p in self.phase.iter().flat_map(|p| p.split(',')) {
            match p.trim() {
                "" => {}
                "open" => phases.extend(PHASES[..4].iter().map(|s| s.to_string())),
                p if PHASES.contains(&p) => phases.push(p.to_string()),
                p => {
                    return Err(ApiError::bad_request(format!(
                        "unknown phase {p:?}; use rehearsing, pending_approval, queued, active, finished or open"
                    )));
                }
            }
        }
        let limit = match self.limit.as_deref() {
            None | Some("") => DEFAULT_LIMIT,
            Some(l) => match l.parse::<i64>() {
                Ok(n) if n >= 1 => n.min(MAX_LIMIT),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "`limit` must be a whole number from 1 to {MAX_LIMIT}"
                    )));
                }
            },
        };
        let target = self.target.clone().filter(|t| !t.is_empty());
        Ok(Filter {
            phases,
            target,
            limit,
        })
    }
}

/// The path's run id, validated.
pub fn run_id(path: Result<Path<RunPath>, PathRejection>) -> Result<String, ApiError> {
    let Path(RunPath { id }) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    view::check_run_id(&id)?;
    Ok(id)
}

/// List runs, newest first (role: read)
#[utoipa::path(
    get,
    path = LIST.path,
    operation_id = "listRuns",
    tag = "runs",
    params(ListQuery),
    responses(
        (status = 200, description = "Compact views of the runs.", body = RunList),
        (status = 400, response = BadRequest),
    ),
)]
pub async fn list(
    State(shared): State<SharedRef>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<RunList>, ApiError> {
    caller.require(Role::Read)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = query.filter()?;
    let client = shared.pool.get().await?;
    let runs = view::list(&client, &filter).await?;
    Ok(Json(RunList { runs }))
}

/// One run in full (role: read)
#[utoipa::path(
    get,
    path = SHOW.path,
    operation_id = "getRun",
    tag = "runs",
    params(RunPath),
    responses(
        (status = 200, description = "The run.", body = RunView),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
    ),
)]
pub async fn show(
    State(shared): State<SharedRef>,
    caller: Caller,
    path: Result<Path<RunPath>, PathRejection>,
) -> Result<Json<RunView>, ApiError> {
    caller.require(Role::Read)?;
    let id = run_id(path)?;
    let client = shared.pool.get().await?;
    match view::load(&client, &id).await? {
        Some(v) => Ok(Json(v)),
        None => Err(ApiError::no_such_run(&id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(phase: Option<&str>, limit: Option<&str>) -> Result<Filter, ApiError> {
        ListQuery {
            phase: phase.map(str::to_owned),
            target: None,
            limit: limit.map(str::to_owned),
        }
        .filter()
    }

    #[test]
    fn filters_are_validated() {
        assert_eq!(q(None, None).unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(q(None, Some("5000")).unwrap().limit, MAX_LIMIT);
        assert!(q(None, Some("0")).is_err());
        assert!(q(None, Some("ten")).is_err());
        // Every phase but finished, a run waiting for its rehearsal included.
        assert_eq!(
            q(Some("open"), None).unwrap().phases,
            ["rehearsing", "pending_approval", "queued", "active"]
        );
        assert_eq!(
            q(Some("queued,finished"), None).unwrap().phases,
            ["queued", "finished"]
        );
        assert!(q(Some("running"), None).is_err());
    }
}
