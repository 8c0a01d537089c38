//! Drives the undos asked for through the API: claims the ready ones (see
//! [`super::store::claim`]), and runs each as `pgshepherd undo` would, under the
//! target's lock with the plan's lock settings, writing its events to the run
//! and its outcome to the `undos` row under a lease.
//!
//! A daemon that dies during an undo leaves the target untouched: the undo is
//! one transaction ([`crate::undo::revert`]), which the server rolls back when
//! its session ends. The undo is claimed again (attempt 2): at once by the
//! daemon restarted under the same name (once it holds the name's lock, as for
//! runs), or by any daemon when its lease has run out; that attempt first ends
//! the dead one's target session (which may still hold the lock or wait on a row),
//! then runs the whole undo again. A daemon that died after the target
//! committed but before the outcome was recorded leaves an undo whose second
//! attempt finds its rows `already_undone` and says so.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, warn};

use crate::backoff::Backoff;
use crate::daemon::api::bundle::Bundle;
use crate::daemon::deadline::bounded;
use crate::daemon::rounds;
use crate::daemon::shared::SharedRef;
use crate::daemon::store::WriteError;
use crate::daemon::undo::store::{self, Claimed};
use crate::migrations::apply;
use crate::pg::{TargetLock, sqlstate};
use crate::plan::Plan;
use crate::run::event::{Event, EventKind, Step};
use crate::undo::outcome::UndoOutcome;
use crate::undo::revert::{self, Report, Request, UndoError};

/// Undos one daemon runs at once (each holds a target connection and its lock).
const MAX_ACTIVE_UNDOS: usize = 16;

/// Writing the undo's state while the state database is away.
const WRITE_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Until `shutdown`: take back this name's undos after a restart, claim ready
/// undos, and drive each in its own task. At shutdown, an undo waiting for the
/// target's lock lets it go and releases its lease; one in its transaction gets
/// `shutdown_timeout` to end, and one cut off there (it changed nothing) is
/// taken back by the restarted daemon or claimed once its lease runs out.
pub async fn run(shared: SharedRef, shutdown: CancellationToken) {
    let tasks = TaskTracker::new();
    let settings = shared.config.daemon.clone();
    // The undos this process drives, so that taking back the name's undos
    // leaves them alone.
    let driving: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let mut name_taken = 0;
    loop {
        let mut room = MAX_ACTIVE_UNDOS.saturating_sub(tasks.len()) as i64;
        let mut claimed = Vec::new();
        let taken = shared.name_taken.load(Ordering::Acquire);
        if taken != name_taken && room > 0 {
            let mine: Vec<i64> = lock(&driving).iter().copied().collect();
            let take_back = store::take_back(
                &shared.pool,
                &shared.node,
                settings.lease_timeout,
                &mine,
                room,
            );
            match bounded(
                &shared.pool,
                shared.op_timeout,
                "taking back undos",
                take_back,
            )
            .await
            {
                Ok(undos) => {
                    name_taken = taken;
                    if !undos.is_empty() {
                        info!(
                            undos = undos.len(),
                            "taking back the undos a previous process of this name left leased"
                        );
                    }
                    room -= undos.len() as i64;
                    claimed.extend(undos);
                }
                Err(e) => warn!(error = %e, "cannot take back this name's undos; retrying"),
            }
        }
        if room > 0 {
            let claim = store::claim(&shared.pool, &shared.node, settings.lease_timeout, room);
            match bounded(&shared.pool, shared.op_timeout, "claiming undos", claim).await {
                Ok(more) => claimed.extend(more),
                Err(e) => warn!(error = %e, "cannot claim undos"),
            }
        }
        for undo in claimed {
            let span = tracing::info_span!("undo", run_id = %undo.run_id,
                undo = undo.id, target = %undo.target);
            lock(&driving).insert(undo.id);
            let (shared, driving, shutdown) = (shared.clone(), driving.clone(), shutdown.clone());
            tasks.spawn(
                async move {
                    let id = undo.id;
                    drive(shared, undo, shutdown).await;
                    lock(&driving).remove(&id);
                }
                .instrument(span),
            );
        }
        if !rounds::next_round(settings.poll_interval, &shared.undo_wake, &shutdown).await {
            break;
        }
    }
    rounds::drain(
        tasks,
        settings.shutdown_timeout,
        "undos still running are cut off (nothing changed); they run again when taken back or their leases expire",
    )
    .await;
}

/// A poisoned lock only means a task panicked while updating the set.
fn lock(driving: &Mutex<HashSet<i64>>) -> MutexGuard<'_, HashSet<i64>> {
    driving.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drive one claimed undo to its recorded end, renewing its lease meanwhile.
async fn drive(shared: SharedRef, undo: Claimed, shutdown: CancellationToken) {
    info!(attempt = undo.attempt, "undo claimed");
    let lease_timeout = shared.config.daemon.lease_timeout;
    let (lost_tx, mut lost) = watch::channel(false);
    let heartbeat = {
        let shared = shared.clone();
        let undo = undo.clone();
        tokio::spawn(async move {
            let mut renewed = Instant::now();
            loop {
                tokio::time::sleep(lease_timeout / 3).await;
                let renew = store::renew(&shared.pool, &undo, lease_timeout);
                match bounded(
                    &shared.pool,
                    shared.op_timeout,
                    "renewing an undo's lease",
                    renew,
                )
                .await
                {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => break,
                    Err(e) => {
                        warn!(error = %e, "cannot renew the undo's lease");
                        if renewed.elapsed() >= lease_timeout {
                            break;
                        }
                    }
                }
            }
            let _ = lost_tx.send(true);
        })
    };
    let ended = tokio::select! {
        ended = perform(&shared, &undo, &shutdown) => Some(ended),
        _ = lost.wait_for(|l| *l) => None,
    };
    heartbeat.abort();
    let (finished, report) = match ended {
        Some(Performed::Ended(finished, report)) => (*finished, report),
        Some(Performed::Parked) => {
            // Stopped before touching the target: whoever starts next (this
            // daemon restarted, a replica) takes it at once.
            let release = store::release(&shared.pool, &undo);
            if let Err(e) = bounded(
                &shared.pool,
                shared.op_timeout,
                "releasing an undo",
                release,
            )
            .await
            {
                warn!(error = %e, "cannot release the undo's lease; it will expire");
            }
            info!("shutting down before the undo touched the target; released it");
            return;
        }
        None => {
            warn!(
                "lost the undo's lease; stopped (its target session is ended by whoever claims it next)"
            );
            return;
        }
    };
    let mut attempt = 0;
    loop {
        let write = store::finish(
            &shared.pool,
            &undo,
            &finished,
            report.as_ref(),
            &shared.config.notify,
        );
        match bounded(&shared.pool, shared.op_timeout, "recording an undo", write).await {
            Ok(()) => break,
            Err(WriteError::Fenced { .. }) => {
                warn!("the undo was claimed by another daemon before its end was recorded");
                return;
            }
            Err(WriteError::Store(e)) => {
                attempt += 1;
                warn!(error = %e, "cannot record the undo's end; retrying");
                tokio::time::sleep(WRITE_RETRY.delay(attempt)).await;
            }
        }
    }
    shared.outbox.poke();
    if let EventKind::UndoFinished { outcome, .. } = &finished.kind {
        shared.metrics.observe_undo(&undo.target, outcome);
        info!(outcome = outcome.as_str(), "undo finished");
    }
}

/// How [`perform`] ended.
enum Performed {
    /// With its `undo_finished` event and the report to keep.
    Ended(Box<Event>, Option<serde_json::Value>),
    /// Shutting down while it waited for the target's lock: nothing was done.
    Parked,
}

/// The undo itself: its `undo_started` event, the lock (given up at shutdown:
/// waiting loses nothing), the transaction on the target (which runs to its end).
async fn perform(shared: &SharedRef, undo: &Claimed, shutdown: &CancellationToken) -> Performed {
    let plan = serde_json::from_value::<Bundle>(undo.bundle.clone())
        .map_err(|e| e.to_string())
        .and_then(|b| b.compile().map_err(|d| d.to_string()));
    let dsn = shared.config.targets.get(&undo.target).cloned();
    let database = dsn
        .as_ref()
        .map_or_else(|| undo.target.clone(), |d| d.to_string());
    emit(
        shared,
        undo,
        EventKind::UndoStarted {
            database,
            versions: undo.versions.clone(),
            mode: undo.mode,
            predicate: undo.predicate.clone(),
            dry_run: undo.dry_run,
            request: Some(undo.id),
            attempt: Some(undo.attempt.max(1) as u32),
        },
    )
    .await;
    let (plan, dsn) = match (plan, dsn) {
        (Ok(plan), Some(dsn)) => (plan, dsn),
        (Err(e), _) => {
            return finished(
                undo,
                None,
                None,
                UndoOutcome::failed(
                    2,
                    format!(
                        "the run's plan no longer compiles, so its lock settings are unknown; nothing changed: {e}"
                    ),
                ),
            );
        }
        (_, None) => {
            return finished(
                undo,
                None,
                None,
                UndoOutcome::failed(
                    2,
                    format!(
                        "target {:?} is not defined in the daemon's config any more; nothing changed",
                        undo.target
                    ),
                ),
            );
        }
    };
    let application_name = format!("pgshepherd undo {} #{}", undo.run_id, undo.id);
    if undo.attempt > 1 {
        let ended = crate::pg::lock::end_stale_sessions(&dsn, &application_name).await;
        if ended > 0 {
            info!(
                sessions = ended,
                "ended the target sessions an earlier attempt of this undo left"
            );
        }
    }
    let started = Instant::now();
    let acquire = {
        let shared = shared.clone();
        let undo = undo.clone();
        TargetLock::acquire(
            &dsn,
            &application_name,
            plan.lock.acquire_timeout,
            move |holder| {
                let (shared, undo, holder) = (shared.clone(), undo.clone(), holder.clone());
                tokio::spawn(async move {
                    emit(&shared, &undo, EventKind::LockBusy { holder }).await;
                });
            },
        )
    };
    let lock = tokio::select! {
        lock = acquire => lock,
        _ = shutdown.cancelled() => return Performed::Parked,
    };
    let lock = match lock {
        Ok(lock) => lock,
        Err(e) => {
            let reason = format!("could not take the target's lock; nothing changed: {e}");
            return finished(undo, None, None, UndoOutcome::failed(5, reason));
        }
    };
    emit(
        shared,
        undo,
        EventKind::LockAcquired {
            waited_ms: started.elapsed().as_millis() as u64,
        },
    )
    .await;
    let request = Request {
        run_id: undo.run_id.clone(),
        versions: undo.versions.clone(),
        mode: undo.mode,
        predicate: undo.predicate.clone(),
        dry_run: undo.dry_run,
        who: who(shared, undo),
        lock_timeout: plan.lock.lock_timeout,
        forget: false,
    };
    let result = undo_with_retries(&lock, &request, &plan).await;
    drop(lock);
    match result {
        Ok(report) => {
            let dir = crate::daemon::worker::backup_dir(shared).join("journal");
            let name = format!("{}-undo-{}", undo.run_id, undo.id);
            let file = match report.write_conflicts(&dir, &name) {
                Ok(file) => file.map(|p| p.display().to_string()),
                Err(e) => {
                    warn!(error = %e, "cannot write the conflicts file");
                    None
                }
            };
            let outcome = UndoOutcome::of(report.conflicts.len(), undo.mode);
            finished(undo, Some(report), file, outcome)
        }
        Err(e) => finished(
            undo,
            None,
            None,
            UndoOutcome::failed(e.exit_code(), e.to_string()),
        ),
    }
}

/// [`revert::undo`], again after a lock timeout, a deadlock or a serialization
/// failure, as a migration would be: `lock.retries` more times, with the plan's
/// backoff. Each attempt is one whole transaction that changed nothing.
async fn undo_with_retries(
    lock: &TargetLock,
    request: &Request,
    plan: &Plan,
) -> Result<Report, UndoError> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match revert::undo(lock.client(), request).await {
            Err(UndoError::Query(e))
                if attempt <= plan.lock.retries
                    && sqlstate(&e).is_some_and(|s| apply::RETRYABLE.contains(&s)) =>
            {
                let wait = apply::backoff(&plan.lock).delay(attempt);
                warn!(attempt, retry_in_ms = wait.as_millis() as u64,
                    error = %crate::pg::server_message(&e), "the undo hit a lock; trying again");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// Recorded with the undo on the target.
fn who(shared: &SharedRef, undo: &Claimed) -> String {
    let approved = undo
        .approved_by
        .as_ref()
        .map(|a| format!(", approved by {a}"))
        .unwrap_or_default();
    format!(
        "{}{approved} (pgshepherd daemon {})",
        undo.requested_by, shared.node
    )
}

/// The `undo_finished` event and the report kept in the `undos` row.
fn finished(
    undo: &Claimed,
    report: Option<Report>,
    conflicts_file: Option<String>,
    outcome: UndoOutcome,
) -> Performed {
    let (versions, tables, conflicts, undo_id) = match &report {
        Some(r) => (
            r.versions.clone(),
            r.tables.clone(),
            r.conflicts.len() as u64,
            r.undo_id,
        ),
        None => (undo.versions.clone(), Default::default(), 0, None),
    };
    let kept = report.as_ref().map(|r| {
        serde_json::json!({
            "migration_set": r.migration_set,
            "versions": r.versions,
            "tables": r.tables,
            "total": r.total(),
            "conflicts": r.conflicts.len(),
            "conflicts_file": conflicts_file,
            "committed": r.committed,
            "undo_id": r.undo_id,
        })
    });
    let event = Event {
        ts: chrono::Utc::now(),
        run_id: undo.run_id.clone(),
        step: Some(Step::Undo),
        kind: EventKind::UndoFinished {
            outcome: outcome.outcome.to_string(),
            exit_code: outcome.exit_code,
            dry_run: undo.dry_run,
            mode: undo.mode,
            versions,
            tables,
            conflicts,
            conflicts_file,
            undo_id,
            reason: outcome.reason,
            request: Some(undo.id),
            attempt: Some(undo.attempt.max(1) as u32),
        },
    };
    Performed::Ended(Box::new(event), kept)
}

/// Write one event of the undo to its run (best effort: the outcome, written at
/// the end, is what counts).
async fn emit(shared: &SharedRef, undo: &Claimed, kind: EventKind) {
    let event = Event {
        ts: chrono::Utc::now(),
        run_id: undo.run_id.clone(),
        step: Some(Step::Undo),
        kind,
    };
    let write = store::write_events(
        &shared.pool,
        undo,
        std::slice::from_ref(&event),
        &shared.config.notify,
    );
    match bounded(
        &shared.pool,
        shared.op_timeout,
        "writing an undo's event",
        write,
    )
    .await
    {
        Ok(()) => shared.outbox.poke(),
        Err(e) => warn!(error = %e, event = event.kind.name(), "cannot record the undo's event"),
    }
}
