//! `POST /v1/runs/{id}/approve`, `/abort` and `/ack`. Each reads and changes the
//! run under `SELECT ... FOR UPDATE` and appends its event in the same
//! transaction, so two concurrent requests cannot both succeed. Of a finished
//! run, approve and abort act on its open undo (see [`crate::daemon::undo`]).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;

use crate::config::Role;
use crate::daemon::api::auth::Caller;
use crate::daemon::api::error::{ApiError, AuditDetail, BadRequest, Conflict, NotFound};
use crate::daemon::api::routes::{ABORT, ACK, APPROVE};
use crate::daemon::api::runs::{RunPath, run_id};
use crate::daemon::api::view::{self, RunView};
use crate::daemon::shared::SharedRef;
use crate::daemon::store;
use crate::daemon::undo::store as undos;
use crate::notify::outbox::RunNotify;
use crate::run::event::{Event, EventKind};

fn event(id: &str, kind: EventKind) -> Event {
    Event {
        ts: Utc::now(),
        run_id: id.to_string(),
        step: None,
        kind,
    }
}

/// The run's view as the answer, with the audit detail.
async fn answer(
    shared: &SharedRef,
    id: &str,
    status: StatusCode,
    detail: String,
) -> Result<Response, ApiError> {
    let client = shared.pool.get().await?;
    let view = view::load(&client, id)
        .await?
        .ok_or_else(|| ApiError::no_such_run(id))?;
    let mut response = (status, Json(view)).into_response();
    response.extensions_mut().insert(AuditDetail(detail));
    Ok(response)
}

/// Approve a run pending approval (role: approve; never the submitter)
///
/// Four eyes: the token that submitted a run can never approve it, whatever its
/// roles. The approved run is queued. Of a finished run, this approves its undo
/// waiting for approval (`POST /v1/runs/{id}/undo`), which the token that asked
/// for it can never approve.
#[utoipa::path(
    post,
    path = APPROVE.path,
    operation_id = "approveRun",
    tag = "control",
    params(RunPath),
    responses(
        (status = 200, description = "Approved: the run is queued.", body = RunView),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    ),
)]
pub async fn approve(
    State(shared): State<SharedRef>,
    caller: Caller,
    path: Result<Path<RunPath>, PathRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Approve)?;
    let id = run_id(path)?;
    let mut client = shared.pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT submitted_by, phase, approved_by, rehearsal FROM runs WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::no_such_run(&id))?;
    let (submitted_by, phase, approved_by): (String, String, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    if phase == "finished" {
        // A finished run has nothing to approve but, maybe, an undo.
        let Some((undo, undo_phase, requested_by)) = undos::open_for_update(&tx, &id).await? else {
            return Err(ApiError::conflict(format!(
                "run {id} is finished and no undo of it waits for approval; there is nothing to approve"
            )));
        };
        if requested_by == caller.name {
            return Err(ApiError::forbidden(format!(
                "four eyes: {requested_by} asked for undo #{undo} of run {id} and cannot also \
                 approve it; someone else with the approve role must"
            )));
        }
        undos::approve(
            &tx,
            &id,
            undo,
            undo_phase,
            &caller.name,
            &shared.config.notify,
        )
        .await?
        .map_err(|e| ApiError::conflict(format!("undo #{undo} of run {id}: {e}")))?;
        tx.commit().await?;
        drop(client);
        shared.undo_wake.notify_one();
        shared.outbox.poke();
        return answer(
            &shared,
            &id,
            StatusCode::OK,
            format!("approved undo #{undo}; asked for by {requested_by}"),
        )
        .await;
    }
    if submitted_by == caller.name {
        return Err(ApiError::forbidden(format!(
            "four eyes: {submitted_by} submitted run {id} and cannot also approve it; \
             someone else with the approve role must"
        )));
    }
    if phase == "rehearsing" {
        // `rehearsal: required`: nobody approves a change before it was
        // proved on a copy, and never one that failed there.
        let result: Option<serde_json::Value> = row.get(3);
        let why = match result.and_then(|r| {
            serde_json::from_value::<crate::daemon::rehearsal::RehearsalResult>(r).ok()
        }) {
            Some(r) => format!(
                "run {id} cannot be approved: its {}. Abort it (`pgshepherd abort {id}`), fix the \
                 change and submit it again",
                r.summary()
            ),
            None => format!(
                "run {id} is being rehearsed on a scratch copy (`rehearsal: required`); it can be \
                 approved once the rehearsal has passed (`pgshepherd status {id}`)"
            ),
        };
        return Err(ApiError::conflict(why));
    }
    if phase != "pending_approval" {
        let why = match approved_by {
            Some(by) => format!("run {id} was already approved by {by} (it is {phase})"),
            None => {
                format!("run {id} is {phase}, not pending_approval; there is nothing to approve")
            }
        };
        return Err(ApiError::conflict(why));
    }
    tx.execute(
        "UPDATE runs SET approved_by = $2, approved_at = now(), phase = 'queued', updated_at = now()
          WHERE id = $1",
        &[&id, &caller.name],
    )
    .await?;
    store::append_events(
        &tx,
        &id,
        &[event(
            &id,
            EventKind::RunApproved {
                approved_by: caller.name.clone(),
            },
        )],
        &shared.config.notify,
        None,
    )
    .await?;
    tx.commit().await?;
    drop(client);
    shared.wake.notify_one();
    shared.outbox.poke();
    answer(
        &shared,
        &id,
        StatusCode::OK,
        format!("approved; submitted by {submitted_by}"),
    )
    .await
}

/// Abort a run (role: approve or admin, or submit for one's own runs)
///
/// A run no daemon has started finishes at once (outcome `stopped`, 200). For an
/// active run the request is recorded (202) and the owning daemon acts on it
/// within a poll interval: before the change the run stops, during it the plan's
/// rollback runs. Of a finished run, this calls off its undo that has not
/// started (200; a running undo cannot be called off: 409).
#[utoipa::path(
    post,
    path = ABORT.path,
    operation_id = "abortRun",
    tag = "control",
    params(RunPath),
    responses(
        (status = 200, description = "The run was stopped before it started.", body = RunView),
        (status = 202, description = "The abort was requested; the owning daemon will act on it.", body = RunView),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    ),
)]
pub async fn abort(
    State(shared): State<SharedRef>,
    caller: Caller,
    path: Result<Path<RunPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = run_id(path)?;
    if !caller.has(Role::Approve) {
        if !caller.has(Role::Submit) {
            return Err(ApiError::forbidden(format!(
                "token {:?} may not abort runs: that needs the approve or admin role, \
                 or the submit role for one's own runs",
                caller.name
            )));
        }
        let client = shared.pool.get().await?;
        // Of a finished run, what can be aborted is its open undo: its owner
        // is who asked for it.
        let submitter: String = client
            .query_opt(
                "SELECT CASE WHEN r.phase = 'finished'
                             THEN coalesce((SELECT u.requested_by FROM undos u
                                             WHERE u.run_id = r.id AND u.phase <> 'finished'
                                             ORDER BY u.id LIMIT 1), r.submitted_by)
                             ELSE r.submitted_by END
                   FROM runs r WHERE r.id = $1",
                &[&id],
            )
            .await?
            .ok_or_else(|| ApiError::no_such_run(&id))?
            .get(0);
        if submitter != caller.name {
            return Err(ApiError::forbidden(format!(
                "run {id} was submitted by {submitter}; a submit token may only abort its own runs \
                 (approve or admin may abort any)"
            )));
        }
    }

    let reason = format!("aborted by {} before it started", caller.name);
    if store::finish_unclaimed(
        &shared.pool,
        &id,
        &reason,
        &caller.name,
        &shared.config.notify,
    )
    .await?
    {
        shared.wake.notify_one();
        shared.outbox.poke();
        return answer(
            &shared,
            &id,
            StatusCode::OK,
            "stopped before it started".into(),
        )
        .await;
    }

    let mut client = shared.pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT phase, outcome, abort_requested_by FROM runs WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::no_such_run(&id))?;
    let (phase, outcome, requested_by): (String, Option<String>, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    if phase == "finished" {
        let Some((undo, undo_phase, _)) = undos::open_for_update(&tx, &id).await? else {
            return Err(ApiError::conflict(format!(
                "run {id} has already finished ({}); there is nothing to abort",
                outcome.as_deref().unwrap_or("no outcome")
            )));
        };
        undos::cancel(
            &tx,
            &id,
            undo,
            undo_phase,
            &caller.name,
            &shared.config.notify,
        )
        .await?
        .map_err(|e| ApiError::conflict(format!("undo #{undo} of run {id}: {e}")))?;
        tx.commit().await?;
        drop(client);
        shared.wake.notify_one();
        shared.undo_wake.notify_one();
        shared.outbox.poke();
        return answer(
            &shared,
            &id,
            StatusCode::OK,
            format!("undo #{undo} called off before it started"),
        )
        .await;
    }
    let detail = match requested_by {
        Some(by) => format!("abort already requested by {by}"),
        None => {
            tx.execute(
                "UPDATE runs SET abort_requested_by = $2, abort_requested_at = now(), updated_at = now()
                  WHERE id = $1",
                &[&id, &caller.name],
            )
            .await?;
            store::append_events(
                &tx,
                &id,
                &[event(
                    &id,
                    EventKind::AbortRequested {
                        requested_by: caller.name.clone(),
                    },
                )],
                &shared.config.notify,
                None,
            )
            .await?;
            format!("abort requested while {phase}; the owning daemon will act on it")
        }
    };
    tx.commit().await?;
    drop(client);
    shared.wake.notify_one();
    shared.outbox.poke();
    answer(&shared, &id, StatusCode::ACCEPTED, detail).await
}

/// Acknowledge a run, stopping its escalation (role: submit, approve or admin)
///
/// Once per run.
#[utoipa::path(
    post,
    path = ACK.path,
    operation_id = "ackRun",
    tag = "control",
    params(RunPath),
    responses(
        (status = 200, description = "Acknowledged.", body = RunView),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    ),
)]
pub async fn ack(
    State(shared): State<SharedRef>,
    caller: Caller,
    path: Result<Path<RunPath>, PathRejection>,
) -> Result<Response, ApiError> {
    if !(caller.has(Role::Submit) || caller.has(Role::Approve)) {
        return Err(ApiError::forbidden(format!(
            "token {:?} may not acknowledge runs: that needs the submit, approve or admin role",
            caller.name
        )));
    }
    let id = run_id(path)?;
    let mut client = shared.pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT acked_by, acked_at, notify FROM runs WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::no_such_run(&id))?;
    let acked_by: Option<String> = row.get(0);
    if let Some(by) = acked_by {
        let at: Option<chrono::DateTime<Utc>> = row.get(1);
        return Err(ApiError::conflict(format!(
            "run {id} was already acknowledged by {by}{}",
            at.map(|t| format!(
                " at {}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ))
            .unwrap_or_default()
        )));
    }
    tx.execute(
        "UPDATE runs SET acked_by = $2, acked_at = now(), updated_at = now() WHERE id = $1",
        &[&id, &caller.name],
    )
    .await?;
    let plan_channels = serde_json::from_value::<RunNotify>(row.get(2))
        .unwrap_or_default()
        .channels;
    crate::notify::escalation::acknowledge(
        &tx,
        &shared.config.notify,
        &id,
        &caller.name,
        &plan_channels,
    )
    .await?;
    store::append_events(
        &tx,
        &id,
        &[event(
            &id,
            EventKind::Acknowledged {
                acked_by: caller.name.clone(),
            },
        )],
        &shared.config.notify,
        None,
    )
    .await?;
    tx.commit().await?;
    drop(client);
    shared.wake.notify_one();
    shared.outbox.poke();
    answer(&shared, &id, StatusCode::OK, "acknowledged".into()).await
}
