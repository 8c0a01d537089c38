//! Rollback: undo this run's migrations per the plan's strategy, then prove the
//! target is back at its starting version.

use std::time::Instant;

use crate::migrations::apply;
use crate::migrations::history;
use crate::pg::TargetLock;
use crate::plan::RollbackStrategy;
use crate::run::event::{EventKind, Step};
use crate::run::state::RunState;
use crate::steps::backup::{self, Backup};
use crate::steps::context::StepContext;
use crate::steps::migrate::limits;

/// Undo `undo` (versions in apply order) with the plan's strategy `down` or
/// `restore`. `RollingBack { applied, cause }` with the versions still applied is
/// persisted before each step.
pub async fn roll_back(
    ctx: &StepContext<'_>,
    lock: &TargetLock,
    undo: &[i64],
    backup: Option<&Backup>,
    cause: &str,
) -> Result<(), String> {
    let checkpoint = |left: &[i64]| {
        let state = RunState::RollingBack {
            applied: left.to_vec(),
            cause: cause.to_string(),
        };
        async move { ctx.events.save_state(&state).await }
    };
    match ctx.plan.rollback.strategy {
        RollbackStrategy::Down => down(ctx, lock, undo, &checkpoint).await,
        RollbackStrategy::Restore => {
            let Some(backup) = backup else {
                return Err("the plan restores a backup, but this run took none".into());
            };
            let Some(bins) = ctx.bins else {
                return Err(
                    "pg_restore and psql were not found, so the backup cannot be restored".into(),
                );
            };
            checkpoint(undo).await;
            let started = Instant::now();
            backup::restore(bins, ctx.dsn, backup, ctx.plan.lock.lock_timeout)
                .await
                .map_err(|e| format!("restoring {} failed: {e}", backup.path.display()))?;
            ctx.emit(
                Step::Rollback,
                EventKind::BackupRestored {
                    path: backup.path.display().to_string(),
                    sha256: backup.manifest.sha256.clone(),
                    duration_ms: started.elapsed().as_millis() as u64,
                },
            );
            Ok(())
        }
        RollbackStrategy::Hold => Err("the plan's rollback strategy is hold".into()),
    }
}

async fn down<F: Future<Output = ()>>(
    ctx: &StepContext<'_>,
    lock: &TargetLock,
    undo: &[i64],
    checkpoint: &impl Fn(&[i64]) -> F,
) -> Result<(), String> {
    let set = &ctx.plan.migrations.name;
    let limits = limits(ctx);
    let mut remaining: Vec<i64> = undo.to_vec();
    for version in undo.iter().rev() {
        checkpoint(&remaining).await;
        let m = ctx
            .plan
            .migrations
            .migrations
            .iter()
            .find(|m| m.version == *version)
            .ok_or_else(|| format!("V{version} is not in the migration set"))?;
        let Some(down) = &m.down else {
            return Err(format!("{} has no down script; undo it by hand", m.label()));
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
            .map_err(|e| format!("down script of {} failed: {e}", m.label()))?;
        remaining.pop();
        ctx.emit(
            Step::Rollback,
            EventKind::RollbackStepDone {
                version: *version,
                report,
            },
        );
    }
    checkpoint(&remaining).await;
    Ok(())
}

/// The versions applied on the target now, for comparison with the start.
pub async fn applied_now(ctx: &StepContext<'_>, lock: &TargetLock) -> Result<Vec<i64>, String> {
    let rows = history::read(lock.client(), &ctx.plan.migrations.name)
        .await
        .map_err(|e| format!("cannot read pgshepherd.history: {e}"))?;
    Ok(rows.into_iter().map(|r| r.version).collect())
}
