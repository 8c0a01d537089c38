//! Rollback: undo this run's migrations per the plan's strategy, then prove the
//! target is back at its starting version.

use std::time::Instant;

use crate::migrations::apply::{self, ScriptError};
use crate::migrations::history;
use crate::pg::TargetLock;
use crate::plan::RollbackStrategy;
use crate::run::driver::{Finished, Lifecycle, Permit};
use crate::run::event::{EventKind, RestoreSnapshot, Step};
use crate::run::lifecycle::Input;
use crate::steps::backup::{self, Backup, BackupError};
use crate::steps::context::StepContext;
use crate::steps::migrate::limits;
use crate::undo::outcome::UndoOutcome;
use crate::undo::revert::{self, Mode, UndoError};

/// Why a rollback could not finish.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("the plan restores a backup, but this run took none")]
    NoBackup,
    #[error("pg_restore and psql were not found, so the backup cannot be restored")]
    NoTools,
    #[error("restoring {path} failed: {source}")]
    Restore { path: String, source: BackupError },
    /// Without a snapshot, the writes since the backup would be gone for good:
    /// the restore is not attempted and the target stays as the migrations left it.
    #[error(
        "the snapshot of the database before restoring {path} could not be taken, so the backup was not \
         restored and the target is as the migrations left it: {source}"
    )]
    Snapshot { path: String, source: BackupError },
    #[error("reading the applied versions before the snapshot: {0}")]
    History(#[from] HistoryReadError),
    #[error("the plan's rollback strategy is hold")]
    Hold,
    #[error("V{version} is not in the migration set")]
    NotInSet { version: i64 },
    #[error("{label} has no down script; undo it by hand")]
    NoDownScript { label: String },
    #[error("giving back the rows {label} changed failed: {source}")]
    GiveBack { label: String, source: UndoError },
    #[error(
        "{conflicts} row(s) that {label} changed were changed again by users since, so nothing of it was \
         given back (rollback.data_conflicts: refuse){}; decide with `pgshepherd undo RUN --mode merge` \
         or skip-conflicts",
        .file.as_ref().map(|f| format!(", see {f}")).unwrap_or_default()
    )]
    DataConflicts {
        label: String,
        conflicts: usize,
        file: Option<String>,
    },
    #[error("down script of {label} failed: {source}")]
    Down { label: String, source: ScriptError },
    #[error("internal error: undoing V{version} was not allowed by the run's persisted state")]
    NotPermitted { version: i64 },
    /// The lifecycle ended the run while it was being rolled back.
    #[error("the run ended: {0:?}")]
    RunEnded(Finished),
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct HistoryReadError(history::ReadError);

/// Undo `undo` (versions in apply order) with the plan's strategy `down` or
/// `restore`, under the `permit` the lifecycle handed out with the persisted
/// `rolling_back` state. Each step done is recorded in the state before the next.
pub async fn roll_back(
    ctx: &StepContext<'_>,
    life: &Lifecycle<'_>,
    lock: &TargetLock,
    undo: &[i64],
    backup: Option<&Backup>,
    permit: Option<Permit>,
) -> Result<(), RollbackError> {
    if let Some(version) = undo
        .iter()
        .find(|v| !permit.as_ref().is_some_and(|p| p.allows_undo(**v)))
    {
        return Err(RollbackError::NotPermitted { version: *version });
    }
    match ctx.plan.rollback.strategy {
        RollbackStrategy::Down => down(ctx, life, lock, undo).await,
        RollbackStrategy::Restore => {
            let backup = backup.ok_or(RollbackError::NoBackup)?;
            let bins = ctx.bins.ok_or(RollbackError::NoTools)?;
            let snapshot = snapshot(ctx, lock, bins, backup).await?;
            let started = Instant::now();
            let report = backup::restore(bins, ctx.dsn, backup, ctx.plan.lock.lock_timeout)
                .await
                .map_err(|source| RollbackError::Restore {
                    path: backup.path.display().to_string(),
                    source,
                })?;
            // A manifest with tables but no counters predates them: the count is unknown.
            let counted =
                !backup.manifest.write_counters.is_empty() || backup.manifest.tables.is_empty();
            let discarded_writes = counted.then(|| {
                backup::discarded(
                    &backup.manifest.write_counters,
                    Some(&snapshot.backup.manifest.write_counters),
                    &report.write_counters,
                    &ctx.events.facts().migration_writes,
                )
            });
            ctx.emit(
                Step::Rollback,
                EventKind::BackupRestored {
                    path: backup.path.display().to_string(),
                    sha256: backup.manifest.sha256.clone(),
                    duration_ms: started.elapsed().as_millis() as u64,
                    extension_owner_changes: report.extension_owner_changes,
                    snapshot: Some(RestoreSnapshot {
                        path: snapshot.backup.path.display().to_string(),
                        manifest: snapshot.backup.manifest_path.display().to_string(),
                        sha256: snapshot.backup.manifest.sha256.clone(),
                        size_bytes: snapshot.backup.manifest.size_bytes,
                        duration_ms: snapshot.duration_ms,
                    }),
                    discarded_writes,
                    sequences_advanced: report.sequences_advanced,
                    stall_ms: Some(report.stall_ms),
                    analyze_ms: report.analyze_ms,
                },
            );
            life.apply(Input::Restored)
                .await
                .map_err(RollbackError::RunEnded)?;
            Ok(())
        }
        RollbackStrategy::Hold => Err(RollbackError::Hold),
    }
}

struct Snapshot {
    backup: Backup,
    duration_ms: u64,
}

/// Dump and verify the database as it is now, next to `backup`, before the restore
/// replaces it: the writes made since the backup survive in it. Writers are not
/// blocked meanwhile (pg_dump takes ACCESS SHARE locks), so rows committed after
/// pg_dump took its snapshot are in neither; the restore's report counts them.
async fn snapshot(
    ctx: &StepContext<'_>,
    lock: &TargetLock,
    bins: &crate::pg::cluster::PgBinaries,
    backup: &Backup,
) -> Result<Snapshot, RollbackError> {
    let started = Instant::now();
    let applied = applied_now(ctx, lock).await?;
    let failed = |source| RollbackError::Snapshot {
        path: backup.path.display().to_string(),
        source,
    };
    ctx.events.progress(&format!(
        "  taking a snapshot of the database before restoring {}",
        backup.path.display()
    ));
    let last = std::sync::Mutex::new(Instant::now());
    let progress = |bytes: u64| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed().as_secs_f64() >= 1.0 {
            *last = Instant::now();
            ctx.events
                .progress(&format!("  snapshot {:.1} MB written", bytes as f64 / 1e6));
        }
    };
    let snapshot = backup::take_snapshot(
        bins,
        ctx.dsn,
        &ctx.plan.backup,
        backup,
        ctx.run_id,
        &applied,
        &progress,
    )
    .await
    .map_err(failed)?;
    backup::verify(bins, &snapshot, &[]).await.map_err(failed)?;
    ctx.events.progress(&format!(
        "  snapshot written and verified: {}",
        snapshot.path.display()
    ));
    Ok(Snapshot {
        backup: snapshot,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

async fn down(
    ctx: &StepContext<'_>,
    life: &Lifecycle<'_>,
    lock: &TargetLock,
    undo: &[i64],
) -> Result<(), RollbackError> {
    let set = &ctx.plan.migrations.name;
    let limits = limits(ctx);
    for version in undo.iter().rev() {
        let m = ctx
            .plan
            .migrations
            .migrations
            .iter()
            .find(|m| m.version == *version)
            .ok_or(RollbackError::NotInSet { version: *version })?;
        if !m.up.capture.is_empty() {
            give_back(ctx, lock, m).await?;
        }
        let Some(down) = &m.down else {
            if m.up.capture.is_empty() {
                return Err(RollbackError::NoDownScript { label: m.label() });
            }
            life.apply(Input::UndoStepDone { version: *version })
                .await
                .map_err(RollbackError::RunEnded)?;
            continue;
        };
        let mut on_retry = |r: &apply::Retry| {
            ctx.emit(
                Step::Rollback,
                EventKind::RollbackRetry {
                    version: *version,
                    retry: r.clone(),
                },
            )
        };
        let report = apply::apply_down(lock, set, m, down, &limits, &mut on_retry)
            .await
            .map_err(|source| RollbackError::Down {
                label: m.label(),
                source,
            })?;
        ctx.emit(
            Step::Rollback,
            EventKind::RollbackStepDone {
                version: *version,
                report,
            },
        );
        life.apply(Input::UndoStepDone { version: *version })
            .await
            .map_err(RollbackError::RunEnded)?;
    }
    Ok(())
}

/// Give back the rows migration `m` of this run changed (captured), in the
/// plan's `data_conflicts` mode; without a down script its history row goes too,
/// in the same transaction. Conflicts left by `refuse` stop the rollback.
async fn give_back(
    ctx: &StepContext<'_>,
    lock: &TargetLock,
    m: &crate::migrations::Migration,
) -> Result<(), RollbackError> {
    let mode = ctx.plan.rollback.data_conflicts;
    let given = revert::give_back(
        lock.client(),
        ctx.run_id,
        &ctx.plan.migrations.name,
        m,
        mode,
        ctx.plan.lock.lock_timeout,
        "pgshepherd rollback",
    )
    .await
    .map_err(|source| RollbackError::GiveBack {
        label: m.label(),
        source,
    })?;
    let Some(report) = given else {
        return Ok(());
    };
    let conflicts = report.conflicts.len();
    let file = report
        .write_conflicts(
            &ctx.backup_dir.join("journal"),
            &format!("{}-V{}", ctx.run_id, m.version),
        )
        .ok()
        .flatten()
        .map(|p| p.display().to_string());
    let refused = conflicts > 0 && mode == Mode::Refuse;
    let outcome = UndoOutcome::of(conflicts, mode);
    ctx.emit(
        Step::Rollback,
        EventKind::UndoFinished {
            outcome: outcome.outcome.into(),
            exit_code: outcome.exit_code,
            dry_run: false,
            mode,
            versions: report.versions.clone(),
            tables: report.tables.clone(),
            conflicts: conflicts as u64,
            conflicts_file: file.clone(),
            undo_id: report.undo_id,
            reason: outcome.reason,
            request: None,
            attempt: None,
        },
    );
    if refused {
        return Err(RollbackError::DataConflicts {
            label: m.label(),
            conflicts,
            file,
        });
    }
    Ok(())
}

/// The versions applied on the target now, for comparison with the start.
pub async fn applied_now(
    ctx: &StepContext<'_>,
    lock: &TargetLock,
) -> Result<Vec<i64>, HistoryReadError> {
    let rows = history::read(lock.client(), &ctx.plan.migrations.name)
        .await
        .map_err(HistoryReadError)?;
    Ok(rows.into_iter().map(|r| r.version).collect())
}
