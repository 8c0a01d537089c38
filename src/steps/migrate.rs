//! Migrate: apply the pending migrations in order, each followed by its verify
//! script. Stops at the first failure and says what it left on the target; the
//! lifecycle's state holds what this run applied (what a rollback undoes).

use crate::migrations::Migration;
use crate::migrations::apply::{self, Limits};
use crate::pg::TargetLock;
use crate::run::driver::{Finished, Lifecycle};
use crate::run::event::{EventKind, Step};
use crate::run::lifecycle::Input;
use crate::steps::context::StepContext;

#[derive(Debug, Clone)]
pub enum MigrateEnd {
    Done,
    /// A migration or its verify script failed; `left_behind` when something of
    /// `version` is on the target (a verified-and-failed migration, a partly
    /// applied no-transaction one).
    Failed {
        version: i64,
        left_behind: bool,
        cause: String,
    },
    /// The operator stopped the run between migrations.
    Aborted,
}

pub fn limits(ctx: &StepContext<'_>) -> Limits {
    Limits {
        lock: ctx.plan.lock.clone(),
        statement_timeout: ctx.plan.statement_timeout,
    }
}

/// Apply `pending` in order. Each migration starts only once the lifecycle has
/// persisted the state that allows it (and handed out the permit); each applied
/// one is recorded in the state before the next starts. `Err` when the run ended.
pub async fn migrate(
    ctx: &StepContext<'_>,
    life: &Lifecycle<'_>,
    lock: &TargetLock,
    pending: &[&Migration],
) -> Result<MigrateEnd, Finished> {
    let set = &ctx.plan.migrations.name;
    let limits = limits(ctx);
    for (i, m) in pending.iter().enumerate() {
        // Stop requests are honoured between migrations. Before the first one the
        // runner has just checked, so `Aborted` always has something to undo.
        if i > 0 && ctx.aborted() {
            return Ok(MigrateEnd::Aborted);
        }
        let version = m.version;
        let effects = life.apply(Input::MigrationStarting { version }).await?;
        let permit = effects.permit();
        debug_assert!(permit.as_ref().is_some_and(|p| p.allows_apply(version)));
        ctx.emit(
            Step::Migrate,
            EventKind::MigrationStarted {
                version,
                file: m.up.file.clone(),
                checksum: m.up.checksum.clone(),
                transactional: m.up.transactional,
            },
        );
        let mut on_retry = |r: &apply::Retry| {
            ctx.emit(
                Step::Migrate,
                EventKind::MigrationRetry {
                    version,
                    retry: r.clone(),
                },
            )
        };
        match apply::apply_up(
            lock,
            set,
            m,
            ctx.run_id,
            ctx.plan.rollback.keep_captured_changes,
            &limits,
            &mut on_retry,
        )
        .await
        {
            Ok(report) => {
                // Recorded before the checkpoint below persists the facts.
                ctx.events.set_fact(|f| {
                    crate::steps::backup::add_writes(&mut f.migration_writes, &report.writes)
                });
                ctx.emit(
                    Step::Migrate,
                    EventKind::MigrationApplied {
                        version,
                        report,
                        down_file: m.down.as_ref().map(|d| d.file.clone()),
                    },
                );
                life.apply(Input::MigrationApplied { version }).await?;
            }
            Err(error) => {
                let cause = format!("migration {} failed: {error}", m.label());
                let left_behind = !error.left_nothing();
                ctx.emit(Step::Migrate, EventKind::MigrationFailed { version, error });
                return Ok(MigrateEnd::Failed {
                    version,
                    left_behind,
                    cause,
                });
            }
        }
        if let Some(verify) = &m.verify {
            match apply::run_verify(lock, verify, &limits).await {
                Ok(took) => ctx.emit(
                    Step::Migrate,
                    EventKind::VerifyPassed {
                        version,
                        file: verify.file.clone(),
                        duration_ms: took.as_millis() as u64,
                    },
                ),
                Err(error) => {
                    let cause = format!("verify script {} failed: {}", verify.file, error.message);
                    ctx.emit(Step::Migrate, EventKind::VerifyFailed { version, error });
                    return Ok(MigrateEnd::Failed {
                        version,
                        left_behind: true,
                        cause,
                    });
                }
            }
        }
    }
    Ok(MigrateEnd::Done)
}
