//! The `undos` table: asking for an undo, approving or cancelling it, claiming
//! it under a lease with a fencing epoch (as runs are claimed), and recording
//! how it ended. Every phase change is decided by
//! [`super::lifecycle::transition`] and written here, with its event (and the
//! notifications the event gives rise to) in the same transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::daemon::api::view::{ts, ts_opt};
use crate::daemon::store::{self, StoreError, WriteError};
use crate::daemon::undo::lifecycle::{UndoInput, UndoPhase, transition};
use crate::notify::config::NotifyConfig;
use crate::run::event::{Event, EventKind, Step};
use crate::undo::revert::Mode;

/// An undo as the run's view shows it (`undos[]`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UndoView {
    /// Its id (`request` in its events).
    pub id: i64,
    pub run_id: String,
    pub target: String,
    pub requested_by: String,
    #[serde(serialize_with = "ts")]
    pub requested_at: DateTime<Utc>,
    /// The versions asked for; empty for every captured one.
    pub versions: Vec<i64>,
    #[schema(schema_with = crate::daemon::api::schema::undo_mode)]
    pub mode: String,
    /// The `where` predicate, when one was given.
    #[serde(rename = "where")]
    pub predicate: Option<String>,
    pub dry_run: bool,
    pub requires_approval: bool,
    pub approved_by: Option<String>,
    #[serde(serialize_with = "ts_opt")]
    pub approved_at: Option<DateTime<Utc>>,
    pub cancelled_by: Option<String>,
    #[schema(schema_with = crate::daemon::api::schema::phase)]
    pub phase: String,
    /// reverted, conflicts_left, refused, failed or cancelled; null until finished.
    #[schema(schema_with = crate::daemon::api::schema::undo_outcome)]
    pub outcome: Option<String>,
    pub reason: Option<String>,
    /// As `pgshepherd undo` would exit: 0 reverted, 4 conflicts left, 5 refused
    /// or nothing changed, 2 invalid input, 1 environment.
    pub exit_code: Option<i32>,
    /// Counts per table (`reverted`, `conflicts`, `already_gone`,
    /// `filtered_out`, `already_undone`), `conflicts`, `conflicts_file` (on
    /// the daemon's host) and `undo_id` (the record on the target).
    #[schema(value_type = Option<Object>)]
    pub report: Option<Value>,
    /// Times a daemon started it (more than 1: a daemon died during an earlier
    /// attempt, which changed nothing).
    pub attempts: i32,
    pub owner: Option<String>,
    #[serde(serialize_with = "ts_opt")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "ts_opt")]
    pub finished_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, run_id, target, requested_by, requested_at, versions, mode, predicate,
    dry_run, requires_approval, approved_by, approved_at, cancelled_by, phase, outcome, reason,
    exit_code, report, attempts, owner, started_at, finished_at";

fn view(r: &tokio_postgres::Row) -> UndoView {
    UndoView {
        id: r.get(0),
        run_id: r.get(1),
        target: r.get(2),
        requested_by: r.get(3),
        requested_at: r.get(4),
        versions: r.get(5),
        mode: r.get(6),
        predicate: r.get(7),
        dry_run: r.get(8),
        requires_approval: r.get(9),
        approved_by: r.get(10),
        approved_at: r.get(11),
        cancelled_by: r.get(12),
        phase: r.get(13),
        outcome: r.get(14),
        reason: r.get(15),
        exit_code: r.get(16),
        report: r.get(17),
        attempts: r.get(18),
        owner: r.get(19),
        started_at: r.get(20),
        finished_at: r.get(21),
    }
}

/// The undos of a run, oldest first.
pub async fn for_run(
    client: &impl GenericClient,
    run_id: &str,
) -> Result<Vec<UndoView>, tokio_postgres::Error> {
    let sql = format!("SELECT {COLUMNS} FROM undos WHERE run_id = $1 ORDER BY id");
    let rows = client.query(&sql, &[&run_id]).await?;
    Ok(rows.iter().map(view).collect())
}

pub async fn load(client: &impl GenericClient, id: i64) -> Result<UndoView, tokio_postgres::Error> {
    let sql = format!("SELECT {COLUMNS} FROM undos WHERE id = $1");
    Ok(view(&client.query_one(&sql, &[&id]).await?))
}

/// An undo being asked for.
#[derive(Debug, Clone)]
pub struct NewUndo {
    pub run_id: String,
    pub target: String,
    pub requested_by: String,
    pub versions: Vec<i64>,
    pub mode: Mode,
    pub predicate: Option<String>,
    pub dry_run: bool,
    pub requires_approval: bool,
}

fn event(run_id: &str, kind: EventKind) -> Event {
    Event {
        ts: Utc::now(),
        run_id: run_id.to_string(),
        step: Some(Step::Undo),
        kind,
    }
}

/// Store a new undo with its `undo_requested` event, in `tx` (which the caller
/// commits). Takes the target's submission lock, as a submit does, so that its
/// place in the target's queue is visible before any later run's.
pub async fn request(
    tx: &impl GenericClient,
    new: &NewUndo,
    notify: &NotifyConfig,
) -> Result<i64, StoreError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('pgshepherd target ' || $1))",
        &[&new.target],
    )
    .await?;
    let phase = UndoPhase::initial(new.requires_approval, new.dry_run, new.predicate.is_some());
    let id: i64 = tx
        .query_one(
            "INSERT INTO undos (run_id, target, requested_by, versions, mode, predicate, dry_run,
                                requires_approval, phase)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             RETURNING id",
            &[
                &new.run_id,
                &new.target,
                &new.requested_by,
                &new.versions,
                &new.mode.as_str(),
                &new.predicate,
                &new.dry_run,
                &(phase == UndoPhase::PendingApproval),
                &phase.as_str(),
            ],
        )
        .await?
        .get(0);
    let requested = event(
        &new.run_id,
        EventKind::UndoRequested {
            request: id,
            requested_by: new.requested_by.clone(),
            versions: new.versions.clone(),
            mode: new.mode,
            predicate: new.predicate.clone(),
            dry_run: new.dry_run,
            requires_approval: phase == UndoPhase::PendingApproval,
        },
    );
    store::append_events(tx, &new.run_id, &[requested], notify, None).await?;
    Ok(id)
}

/// The open undo of a run that a person can act on (approve, cancel), locked
/// for the rest of `tx`: (id, phase, requested_by).
pub async fn open_for_update(
    tx: &impl GenericClient,
    run_id: &str,
) -> Result<Option<(i64, UndoPhase, String)>, StoreError> {
    let row = tx
        .query_opt(
            "SELECT id, phase, requested_by FROM undos
              WHERE run_id = $1 AND phase <> $2
              ORDER BY id LIMIT 1 FOR UPDATE",
            &[&run_id, &UndoPhase::Finished.as_str()],
        )
        .await?;
    Ok(row.map(|r| {
        let phase = UndoPhase::parse(r.get(1)).unwrap_or(UndoPhase::Active);
        (r.get(0), phase, r.get(2))
    }))
}

/// Approve undo `id` (in `from`, locked by [`open_for_update`]), with its event.
pub async fn approve(
    tx: &impl GenericClient,
    run_id: &str,
    id: i64,
    from: UndoPhase,
    approver: &str,
    notify: &NotifyConfig,
) -> Result<Result<(), crate::daemon::undo::lifecycle::IllegalUndoTransition>, StoreError> {
    let next = match transition(from, UndoInput::Approve) {
        Ok(next) => next,
        Err(e) => return Ok(Err(e)),
    };
    tx.execute(
        "UPDATE undos SET phase = $2, approved_by = $3, approved_at = now(), updated_at = now()
          WHERE id = $1",
        &[&id, &next.as_str(), &approver],
    )
    .await?;
    let approved = event(
        run_id,
        EventKind::UndoApproved {
            request: id,
            approved_by: approver.to_string(),
        },
    );
    store::append_events(tx, run_id, &[approved], notify, None).await?;
    Ok(Ok(()))
}

/// Call off undo `id` before it started (in `from`, locked by
/// [`open_for_update`]): finished, `cancelled`, with its `undo_finished` event.
pub async fn cancel(
    tx: &impl GenericClient,
    run_id: &str,
    id: i64,
    from: UndoPhase,
    by: &str,
    notify: &NotifyConfig,
) -> Result<Result<(), crate::daemon::undo::lifecycle::IllegalUndoTransition>, StoreError> {
    let next = match transition(from, UndoInput::Cancel) {
        Ok(next) => next,
        Err(e) => return Ok(Err(e)),
    };
    let row = tx
        .query_one(
            "SELECT versions, mode, dry_run FROM undos WHERE id = $1",
            &[&id],
        )
        .await?;
    let reason = format!("cancelled by {by} before it started; nothing was changed");
    let mode = mode_of(row.get(1));
    let finished = event(
        run_id,
        EventKind::UndoFinished {
            outcome: "cancelled".into(),
            exit_code: 5,
            dry_run: row.get(2),
            mode,
            versions: row.get(0),
            tables: Default::default(),
            conflicts: 0,
            conflicts_file: None,
            undo_id: None,
            reason: Some(reason.clone()),
            request: Some(id),
            attempt: None,
        },
    );
    tx.execute(
        "UPDATE undos SET phase = $2, cancelled_by = $3, outcome = 'cancelled', reason = $4,
                exit_code = 5, finished_at = now(), updated_at = now()
          WHERE id = $1",
        &[&id, &next.as_str(), &by, &reason],
    )
    .await?;
    store::append_events(tx, run_id, &[finished], notify, None).await?;
    Ok(Ok(()))
}

/// `mode` as stored (written from [`Mode::as_str`]).
pub fn mode_of(stored: &str) -> Mode {
    <Mode as clap::ValueEnum>::from_str(stored, false).unwrap_or(Mode::Refuse)
}

/// An undo this daemon has just claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub run_id: String,
    pub target: String,
    pub owner: String,
    pub epoch: i64,
    pub versions: Vec<i64>,
    pub mode: Mode,
    pub predicate: Option<String>,
    pub dry_run: bool,
    pub requested_by: String,
    pub approved_by: Option<String>,
    pub attempt: i32,
    /// The run's plan bundle (its lock settings apply to the undo).
    pub bundle: Value,
}

/// Claim up to `limit` undos that are ready: queued (approved, or needing no
/// approval) or active under an expired lease (the daemon driving it died), and
/// first in their target's queue: no unfinished run or undo on the target
/// asked for before it, and no run on it active.
pub async fn claim(
    pool: &Pool,
    node: &str,
    lease_timeout: Duration,
    limit: i64,
) -> Result<Vec<Claimed>, StoreError> {
    let client = pool.get().await?;
    let lease_ms = lease_timeout.as_millis() as f64;
    let (queued, active, finished) = (
        UndoPhase::Queued.as_str(),
        UndoPhase::Active.as_str(),
        UndoPhase::Finished.as_str(),
    );
    let next = transition(UndoPhase::Queued, UndoInput::Claim)
        .map_err(|e| StoreError::Query(e.to_string()))?;
    let rows = client
        .query(
            "WITH ready AS (
                 SELECT u.id FROM undos u
                  WHERE u.phase IN ($4, $5)
                    AND (u.owner IS NULL OR u.lease_until < now())
                    AND NOT EXISTS (SELECT 1 FROM runs r
                                     WHERE r.target = u.target AND r.phase <> 'finished'
                                       AND (r.seq < u.seq OR r.phase = 'active'))
                    AND NOT EXISTS (SELECT 1 FROM undos o
                                     WHERE o.target = u.target AND o.phase <> $6
                                       AND o.seq < u.seq)
                  ORDER BY u.seq
                  LIMIT $3
                  FOR UPDATE OF u SKIP LOCKED)
             UPDATE undos u
                SET owner = $1, epoch = u.epoch + 1, phase = $7,
                    lease_until = now() + $2 * interval '1 millisecond',
                    started_at = coalesce(u.started_at, now()),
                    attempts = u.attempts + 1, updated_at = now()
               FROM ready, runs r
              WHERE u.id = ready.id AND r.id = u.run_id
          RETURNING u.id, u.run_id, u.target, u.epoch, u.versions, u.mode, u.predicate,
                    u.dry_run, u.requested_by, u.approved_by, u.attempts, r.bundle",
            &[
                &node,
                &lease_ms,
                &limit,
                &queued,
                &active,
                &finished,
                &next.as_str(),
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| claimed(r, node)).collect())
}

/// Take back, under new epochs, the active undos leased to `node` that this
/// process does not drive (`driving`): a previous process of this name died
/// during them. Only for a process that has just taken the name's lock (see
/// [`crate::daemon::name_lock`]); the new epoch fences the dead one all the same.
pub async fn take_back(
    pool: &Pool,
    node: &str,
    lease_timeout: Duration,
    driving: &[i64],
    limit: i64,
) -> Result<Vec<Claimed>, StoreError> {
    let next = transition(UndoPhase::Active, UndoInput::Claim)
        .map_err(|e| StoreError::Query(e.to_string()))?;
    let client = pool.get().await?;
    let lease_ms = lease_timeout.as_millis() as f64;
    let rows = client
        .query(
            "WITH mine AS (
                 SELECT id FROM undos
                  WHERE owner = $1 AND phase = $5 AND NOT (id = ANY($3))
                  ORDER BY seq
                  LIMIT $4
                  FOR UPDATE SKIP LOCKED)
             UPDATE undos u
                SET epoch = u.epoch + 1, phase = $6,
                    lease_until = now() + $2 * interval '1 millisecond',
                    attempts = u.attempts + 1, updated_at = now()
               FROM mine, runs r
              WHERE u.id = mine.id AND r.id = u.run_id
          RETURNING u.id, u.run_id, u.target, u.epoch, u.versions, u.mode, u.predicate,
                    u.dry_run, u.requested_by, u.approved_by, u.attempts, r.bundle",
            &[
                &node,
                &lease_ms,
                &driving,
                &limit,
                &UndoPhase::Active.as_str(),
                &next.as_str(),
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| claimed(r, node)).collect())
}

/// A claimed undo from the `RETURNING` row of [`claim`] or [`take_back`].
fn claimed(r: &tokio_postgres::Row, node: &str) -> Claimed {
    Claimed {
        id: r.get(0),
        run_id: r.get(1),
        target: r.get(2),
        owner: node.to_string(),
        epoch: r.get(3),
        versions: r.get(4),
        mode: mode_of(r.get(5)),
        predicate: r.get(6),
        dry_run: r.get(7),
        requested_by: r.get(8),
        approved_by: r.get(9),
        attempt: r.get(10),
        bundle: r.get(11),
    }
}

/// Extend the lease of a claimed undo; false when it is no longer ours.
pub async fn renew(
    pool: &Pool,
    undo: &Claimed,
    lease_timeout: Duration,
) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let lease_ms = lease_timeout.as_millis() as f64;
    let n = client
        .execute(
            "UPDATE undos SET lease_until = now() + $4 * interval '1 millisecond'
              WHERE id = $1 AND owner = $2 AND epoch = $3 AND phase = $5",
            &[
                &undo.id,
                &undo.owner,
                &undo.epoch,
                &lease_ms,
                &UndoPhase::Active.as_str(),
            ],
        )
        .await?;
    Ok(n == 1)
}

/// Append events of a claimed undo to its run, under its lease.
pub async fn write_events(
    pool: &Pool,
    undo: &Claimed,
    events: &[Event],
    notify: &NotifyConfig,
) -> Result<(), WriteError> {
    let mut client = pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    held(&tx, undo).await?;
    store::append_events(&tx, &undo.run_id, events, notify, None).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// Finish a claimed undo with its last event (`undo_finished`), under its lease.
pub async fn finish(
    pool: &Pool,
    undo: &Claimed,
    finished: &Event,
    report: Option<&Value>,
    notify: &NotifyConfig,
) -> Result<(), WriteError> {
    let EventKind::UndoFinished {
        outcome,
        exit_code,
        reason,
        ..
    } = &finished.kind
    else {
        return Err(StoreError::Query("an undo finishes with undo_finished".into()).into());
    };
    let next = transition(UndoPhase::Active, UndoInput::Finish)
        .map_err(|e| StoreError::Query(e.to_string()))?;
    let mut client = pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    held(&tx, undo).await?;
    tx.execute(
        "UPDATE undos SET phase = $2, outcome = $3, exit_code = $4, reason = $5, report = $6,
                finished_at = now(), owner = NULL, lease_until = NULL, updated_at = now()
          WHERE id = $1",
        &[
            &undo.id,
            &next.as_str(),
            outcome,
            exit_code,
            reason,
            &report,
        ],
    )
    .await
    .map_err(StoreError::from)?;
    store::append_events(
        &tx,
        &undo.run_id,
        std::slice::from_ref(finished),
        notify,
        None,
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// Give an undo back at shutdown (it had not touched the target yet): another
/// daemon, or this one after its restart, claims it at once.
pub async fn release(pool: &Pool, undo: &Claimed) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE undos SET owner = NULL, lease_until = NULL, updated_at = now()
              WHERE id = $1 AND owner = $2 AND epoch = $3",
            &[&undo.id, &undo.owner, &undo.epoch],
        )
        .await?;
    Ok(())
}

/// The undo is still ours (same owner and epoch, still active); locks its row.
async fn held(tx: &impl GenericClient, undo: &Claimed) -> Result<(), WriteError> {
    let row = tx
        .query_opt(
            "SELECT 1 FROM undos WHERE id = $1 AND owner = $2 AND epoch = $3 AND phase = $4
                FOR UPDATE",
            &[
                &undo.id,
                &undo.owner,
                &undo.epoch,
                &UndoPhase::Active.as_str(),
            ],
        )
        .await
        .map_err(StoreError::from)?;
    match row {
        Some(_) => Ok(()),
        None => Err(WriteError::Fenced {
            run_id: undo.run_id.clone(),
            epoch: undo.epoch,
        }),
    }
}
