//! Rollback: undo this run's migrations per the plan's strategy, then prove the
//! target is back at its starting version.

use std::time::Instant;

use crate::migrations::apply::{self, ScriptError};
use crate::migrations::history;
use crate::pg::TargetLock;
use crate::plan::RollbackStrategy;
use crate::run::driver::{Finished, Lifecycle, Permit};
use crate::run::event::{EventKind, Step};
use crate::run::lifecycle::Input;
use crate::steps::backup::{self, Backup, BackupError};
use crate::steps::context::StepContext;
use crate::steps::migrate::limits;

/// Why a rollback could not finish.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("the plan restores a backup, but this run took none")]
    NoBackup,
    #[error("pg_restore and psql were not found, so the backup cannot be restored")]
    NoTools,
    #[error("restoring {path} failed: {source}")]
    Restore { path: String, source: BackupError },
    #[error("the plan's rollback strategy is hold")]
    Hold,
    #[error("V{version} is not in the migration set")]
    NotInSet { version: i64 },
    #[error("{label} has no down script; undo it by hand")]
    NoDownScript { label: String },
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
            let started = Instant::now();
            let report = backup::restore(bins, ctx.dsn, backup, ctx.plan.lock.lock_timeout)
                .await
                .map_err(|source| RollbackError::Restore {
                    path: backup.path.display().to_string(),
                    source,
                })?;
            ctx.emit(
                Step::Rollback,
                EventKind::BackupRestored {
                    path: backup.path.display().to_string(),
                    sha256: backup.manifest.sha256.clone(),
                    duration_ms: started.elapsed().as_millis() as u64,
                    extension_owner_changes: report.extension_owner_changes,
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
        let Some(down) = &m.down else {
            return Err(RollbackError::NoDownScript { label: m.label() });
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
