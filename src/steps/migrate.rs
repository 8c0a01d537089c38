//! Migrate: apply the pending migrations in order, each followed by its verify
//! script. Stops at the first failure and says exactly what is left to undo.

use crate::migrations::Migration;
use crate::migrations::apply::{self, Limits};
use crate::pg::TargetLock;
use crate::run::event::{EventKind, Step};
use crate::run::state::RunState;
use crate::steps::context::StepContext;

#[derive(Debug, Clone)]
pub enum MigrateEnd {
    Done {
        applied: Vec<i64>,
    },
    /// `undo` lists, in apply order, every version of this run that left something
    /// on the target: the applied ones, a verified-and-failed one, a partly
    /// applied no-transaction one.
    Failed {
        undo: Vec<i64>,
        cause: String,
    },
    /// The operator stopped the run between migrations.
    Aborted {
        undo: Vec<i64>,
    },
}

pub fn limits(ctx: &StepContext<'_>) -> Limits {
    Limits {
        lock: ctx.plan.lock.clone(),
        statement_timeout: ctx.plan.statement_timeout,
    }
}

/// Apply `pending` in order after `applied` (what this run applied before, when
/// it is resumed). The run state `Migrating { applied }` is persisted before
/// each migration starts, so the state is always saved before the side effect.
pub async fn migrate(
    ctx: &StepContext<'_>,
    lock: &TargetLock,
    pending: &[&Migration],
    applied: Vec<i64>,
) -> MigrateEnd {
    let set = &ctx.plan.migrations.name;
    let limits = limits(ctx);
    let mut applied = applied;
    let checkpoint = |applied: &[i64]| {
        let state = RunState::Migrating {
            applied: applied.to_vec(),
        };
        async move { ctx.events.save_state(&state).await }
    };
    for m in pending {
        // Stop requests are honoured between migrations. Before the first one the
        // executor has just checked, so `Aborted` always has something to undo.
        if !applied.is_empty() && ctx.aborted() {
            return MigrateEnd::Aborted { undo: applied };
        }
        checkpoint(&applied).await;
        ctx.emit(
            Step::Migrate,
            EventKind::MigrationStarted {
                version: m.version,
                file: m.up.file.clone(),
                checksum: m.up.checksum.clone(),
                transactional: m.up.transactional,
            },
        );
        let version = m.version;
        let mut on_retry = |r: &apply::Retry| {
            ctx.emit(
                Step::Migrate,
                EventKind::MigrationRetry {
                    version,
                    retry: r.clone(),
                },
            )
        };
        match apply::apply_up(lock, set, m, ctx.run_id, &limits, &mut on_retry).await {
            Ok(report) => {
                applied.push(m.version);
                ctx.emit(
                    Step::Migrate,
                    EventKind::MigrationApplied {
                        version,
                        report,
                        down_file: m.down.as_ref().map(|d| d.file.clone()),
                    },
                );
            }
            Err(error) => {
                let cause = format!("migration {} failed: {error}", m.label());
                if !error.left_nothing() {
                    applied.push(m.version);
                }
                ctx.emit(Step::Migrate, EventKind::MigrationFailed { version, error });
                return MigrateEnd::Failed {
                    undo: applied,
                    cause,
                };
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
                    return MigrateEnd::Failed {
                        undo: applied,
                        cause,
                    };
                }
            }
        }
    }
    checkpoint(&applied).await;
    MigrateEnd::Done { applied }
}
