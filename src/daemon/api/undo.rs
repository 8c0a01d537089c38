//! `POST /v1/runs/{id}/undo`: ask the daemon to give back the rows a finished
//! run's migrations changed (captured), keeping users' writes. The request is
//! checked against the run (finished, captured something, the versions named
//! are captured ones), stored with its `undo_requested` event, and run by the
//! daemon's undo worker ([`crate::daemon::undo`]) once approved and first in
//! its target's queue.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::config::Role;
use crate::daemon::api::auth::Caller;
use crate::daemon::api::bundle::Bundle;
use crate::daemon::api::error::{ApiError, AuditDetail, BadRequest, Conflict, NotFound, TooLarge};
use crate::daemon::api::routes::UNDO;
use crate::daemon::api::runs::{RunPath, run_id};
use crate::daemon::api::submit::json_body;
use crate::daemon::shared::SharedRef;
use crate::daemon::undo::store::{self, NewUndo, UndoView};
use crate::undo::revert::Mode;

/// The longest `where` predicate accepted.
pub const MAX_PREDICATE_CHARS: usize = 8192;

/// What to undo; every field is optional (`{}` undoes every captured version
/// in `refuse` mode). The same knobs as `pgshepherd undo`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UndoRequest {
    /// Only these versions of the run; every captured one when empty.
    #[serde(default)]
    pub versions: Vec<i64>,
    /// What to do about rows users changed since the migration (default
    /// `refuse`: change nothing if anything conflicts).
    #[serde(default)]
    #[schema(schema_with = crate::daemon::api::schema::undo_mode)]
    pub mode: Option<Mode>,
    /// Only the changes matching this SQL predicate over `table_name`, `op`,
    /// `key`, `before`, `after` (jsonb) and `version`.
    #[serde(default, rename = "where")]
    #[schema(max_length = 8192)]
    pub predicate: Option<String>,
    /// Report what would be undone and change nothing (needs no approval,
    /// unless it has a `where` predicate).
    #[serde(default)]
    pub dry_run: bool,
}

impl UndoRequest {
    /// 400 for what no run could accept.
    fn check(&mut self) -> Result<(), ApiError> {
        if let Some(v) = self.versions.iter().find(|v| **v < 0) {
            return Err(ApiError::bad_request(format!(
                "`versions` holds {v}: versions are whole numbers from 0"
            )));
        }
        self.versions.sort_unstable();
        self.versions.dedup();
        if let Some(p) = &self.predicate {
            if p.trim().is_empty() {
                return Err(ApiError::bad_request(
                    "`where` is empty: leave it out to undo every captured change",
                ));
            }
            if p.chars().count() > MAX_PREDICATE_CHARS {
                return Err(ApiError::bad_request(format!(
                    "`where` is longer than {MAX_PREDICATE_CHARS} characters"
                )));
            }
            if p.contains('\0') {
                return Err(ApiError::bad_request("`where` contains a NUL character"));
            }
        }
        Ok(())
    }
}

/// Undo a finished run's captured data changes (role: submit)
///
/// A change to the target like a run: when the run's plan (or the daemon's
/// config for its target) requires approval, the undo waits for someone with the
/// approve role other than who asked (`POST /v1/runs/{id}/approve`); a dry run
/// without a `where` predicate needs no approval (a predicate is SQL run on the
/// target). It then waits its turn behind the target's earlier runs and
/// undos, takes the target's lock with the plan's lock settings, runs in one
/// transaction, and is announced on the run's channels. Its events
/// (`undo_requested`, `undo_approved`, `undo_started`, `undo_finished`) are the
/// run's, and the run's view lists it under `undos`. An empty body undoes every
/// captured version in `refuse` mode.
#[utoipa::path(
    post,
    path = UNDO.path,
    operation_id = "undoRun",
    tag = "control",
    params(RunPath),
    request_body(content = UndoRequest, description = "What to undo (every field optional)."),
    responses(
        (status = 202, description = "The undo was accepted: pending approval or queued.", body = UndoView),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = TooLarge),
    ),
)]
pub async fn undo(
    State(shared): State<SharedRef>,
    caller: Caller,
    path: Result<Path<RunPath>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Submit)?;
    let id = run_id(path)?;
    let mut asked: UndoRequest = match &body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => UndoRequest::default(),
        _ => json_body(body, "undo request")?,
    };
    asked.check()?;
    let mode = asked.mode.unwrap_or(Mode::Refuse);

    let mut client = shared.pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT target, phase, outcome, bundle, requires_approval FROM runs
              WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::no_such_run(&id))?;
    let (target, phase, outcome): (String, String, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    if phase != "finished" {
        return Err(ApiError::conflict(format!(
            "run {id} is {phase}: only a finished run can be undone (wait for it to finish, \
             or abort it: its plan's rollback then undoes it)"
        )));
    }
    match outcome.as_deref() {
        Some("stopped") => {
            return Err(ApiError::conflict(format!(
                "run {id} stopped before changing anything: there is nothing to undo"
            )));
        }
        Some("rolled_back") => {
            return Err(ApiError::conflict(format!(
                "run {id} was rolled back: its changes are undone already"
            )));
        }
        _ => {}
    }
    let captured = captured_versions(row.get(3)).map_err(|e| {
        ApiError::conflict(format!(
            "run {id}'s plan no longer compiles with this daemon, so what it captured is unknown: {e}"
        ))
    })?;
    if captured.is_empty() {
        return Err(ApiError::conflict(format!(
            "run {id} captured no data changes: none of its migrations declares \
             `-- pgshepherd:capture` (undo a schema change with its down script, or restore a backup)"
        )));
    }
    let unknown: Vec<String> = asked
        .versions
        .iter()
        .filter(|v| !captured.contains(v))
        .map(|v| format!("V{v}"))
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::bad_request(format!(
            "run {id} captured no changes for {}; its captured versions are {}",
            unknown.join(", "),
            captured
                .iter()
                .map(|v| format!("V{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if let Some((open, open_phase, by)) = store::open_for_update(&tx, &id).await? {
        return Err(ApiError::conflict(format!(
            "undo #{open} of run {id}, asked for by {by}, is {}: wait for it to finish, \
             or call it off with `pgshepherd abort {id}`",
            open_phase.as_str()
        )));
    }
    let requires_approval: bool =
        row.get::<_, bool>(4) || shared.config.approval_required.contains(&target);
    let new = NewUndo {
        run_id: id.clone(),
        target: target.clone(),
        requested_by: caller.name.clone(),
        versions: asked.versions.clone(),
        mode,
        predicate: asked.predicate.clone(),
        dry_run: asked.dry_run,
        requires_approval,
    };
    let undo_id = store::request(&tx, &new, &shared.config.notify).await?;
    tx.commit().await?;
    shared.undo_wake.notify_one();
    shared.outbox.poke();
    let view = store::load(&client, undo_id).await?;
    let detail = format!(
        "undo #{undo_id} of run {id} on {target}, mode {}{}, {}",
        mode.as_str(),
        if asked.dry_run { ", dry run" } else { "" },
        view.phase
    );
    let mut response = (StatusCode::ACCEPTED, Json(view)).into_response();
    response.extensions_mut().insert(AuditDetail(detail));
    Ok(response)
}

/// The versions of the run's migration set whose up script declares
/// `-- pgshepherd:capture`.
fn captured_versions(bundle: serde_json::Value) -> Result<Vec<i64>, String> {
    let bundle: Bundle = serde_json::from_value(bundle).map_err(|e| e.to_string())?;
    let plan = bundle.compile().map_err(|d| d.to_string())?;
    Ok(plan
        .migrations
        .migrations
        .iter()
        .filter(|m| !m.up.capture.is_empty())
        .map(|m| m.version)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Result<UndoRequest, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn the_body_takes_the_cli_knobs_and_nothing_else() {
        let b = body(
            r#"{"versions":[2,1,2],"mode":"skip-conflicts","where":"op = 'U'","dry_run":true}"#,
        )
        .unwrap();
        assert_eq!(b.mode, Some(Mode::SkipConflicts));
        assert!(b.dry_run);
        let mut b = b;
        b.check().unwrap();
        assert_eq!(b.versions, [1, 2]);
        assert!(body(r#"{"mode":"force"}"#).is_err());
        assert!(
            body(r#"{"version":[1]}"#).is_err(),
            "unknown fields are refused"
        );
        assert!(body(r#"{"versions":"1"}"#).is_err());
        let mut empty = body("{}").unwrap();
        empty.check().unwrap();
        assert_eq!((empty.mode, empty.dry_run), (None, false));
    }

    #[test]
    fn a_bad_predicate_or_version_is_a_400() {
        for json in [
            r#"{"where":"  "}"#,
            r#"{"versions":[-1]}"#,
            r#"{"where":"a\u0000b"}"#,
        ] {
            let e = body(json).unwrap().check().unwrap_err();
            assert_eq!(
                e.into_response().status(),
                StatusCode::BAD_REQUEST,
                "{json}"
            );
        }
        let long = format!(r#"{{"where":"{}"}}"#, "x".repeat(MAX_PREDICATE_CHARS + 1));
        assert!(body(&long).unwrap().check().is_err());
    }
}
