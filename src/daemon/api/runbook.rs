//! `GET /v1/runs/{id}/runbook`: the run's rollback plan for the person on call,
//! the document `pgshepherd runbook PLAN --run RUN` prints, built from the run's
//! submitted bundle and its checkpoint (its verified backup), with the levels of
//! the plan's escalation policy from this daemon's config.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::config::Role;
use crate::daemon::api::auth::Caller;
use crate::daemon::api::bundle::Bundle;
use crate::daemon::api::error::{ApiError, BadRequest, NotFound};
use crate::daemon::api::routes::RUNBOOK;
use crate::daemon::api::runs::{RunPath, run_id};
use crate::daemon::shared::SharedRef;
use crate::run::checkpoint::Checkpoint;
use crate::runbook::{Document, Input, RunRecord};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunbookQuery {
    /// `markdown` (default) or `html`.
    #[param(value_type = Option<String>, pattern = "^(markdown|html)$")]
    pub format: Option<String>,
}

/// The run's rollback plan, as Markdown or HTML (role: read)
#[utoipa::path(
    get,
    path = RUNBOOK.path,
    operation_id = "runRunbook",
    tag = "runs",
    params(RunPath, RunbookQuery),
    responses(
        (status = 200, description = "The document: what changes, how to tell it is unhealthy, how to undo it by hand, how to verify the undo, who gets paged.", content(
            (String = "text/markdown"),
            (String = "text/html"),
        )),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
    ),
)]
pub async fn runbook(
    State(shared): State<SharedRef>,
    caller: Caller,
    path: Result<Path<RunPath>, PathRejection>,
    query: Result<Query<RunbookQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Read)?;
    let id = run_id(path)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let html = match query.format.as_deref() {
        None | Some("") | Some("markdown") => false,
        Some("html") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown format {other:?}; use markdown or html"
            )));
        }
    };
    let document = document(&shared, &id).await?;
    let (content_type, body) = if html {
        ("text/html; charset=utf-8", document.html())
    } else {
        ("text/markdown; charset=utf-8", document.markdown())
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// Run `id`'s runbook (also shown by the web page at `/runs/{id}/runbook`).
pub async fn document(shared: &SharedRef, id: &str) -> Result<Document, ApiError> {
    let client = shared.pool.get().await?;
    let Some(row) = client
        .query_opt("SELECT bundle, checkpoint FROM runs WHERE id = $1", &[&id])
        .await?
    else {
        return Err(ApiError::no_such_run(id));
    };
    let bundle: Bundle = serde_json::from_value(row.get(0))
        .map_err(|e| ApiError::internal(format!("the run's bundle cannot be read: {e}")))?;
    let plan = bundle
        .compile()
        .map_err(|d| ApiError::internal(format!("the run's plan no longer compiles: {d}")))?;
    // A checkpoint this build cannot read has no backup to show; the rest of
    // the document stands on the plan alone.
    let facts = serde_json::from_value::<Checkpoint>(row.get(1))
        .map(|cp| cp.facts)
        .unwrap_or_default();
    let run = RunRecord::from_facts(id, &facts);
    Ok(crate::runbook::compose(&Input {
        plan: &plan,
        run: Some(&run),
        policies: Some(&shared.config.notify.policies),
    }))
}
