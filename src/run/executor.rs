//! Runs one plan's whole lifecycle against one target:
//! preflight → window → lock → baseline → backup → migrate → soak
//! → succeeded | rollback → confirm → rolled back | needs a human.
//!
//! Each transition is persisted (through [`RunState::advance`]) before the side
//! effect it leads to, and every step and decision is an event.

use std::path::PathBuf;
use std::time::Instant;

use chrono::{SecondsFormat, Utc};
use tokio::sync::watch;

use crate::migrations::Migration;
use crate::migrations::history::{self, HistoryError};
use crate::pg::cluster::PgBinaries;
use crate::pg::lock::LockError;
use crate::pg::{Dsn, TargetLock};
use crate::plan::{Plan, RollbackStrategy};
use crate::run::dry_run;
use crate::run::event::{EventKind, Outcome, Step};
use crate::run::journal::Emitter;
use crate::run::state::RunState;
use crate::steps::StepContext;
use crate::steps::backup::{self, Backup};
use crate::steps::migrate::{self, MigrateEnd};
use crate::steps::rollback;
use crate::steps::soak::{Monitor, SoakEnd, SoakProgress};

/// Choices made on the command line rather than in the plan.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Name of the target (for backup paths and events).
    pub target: String,
    pub backup_dir: PathBuf,
    /// Ignore the plan's window and start now.
    pub now: bool,
    pub dry_run: bool,
}

/// How the run ended, with the exit code the process should return.
#[derive(Debug, Clone)]
pub struct Finished {
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub exit_code: i32,
}

pub struct Runner<'a> {
    ctx: StepContext<'a>,
    opts: RunOptions,
    state: RunState,
    starting: Vec<i64>,
    applied_by_run: Vec<i64>,
    backup: Option<Backup>,
}

impl<'a> Runner<'a> {
    pub fn new(
        plan: &'a Plan,
        dsn: &'a Dsn,
        bins: Option<&'a PgBinaries>,
        opts: RunOptions,
        events: &'a Emitter,
        abort: watch::Receiver<bool>,
    ) -> Runner<'a> {
        let ctx = StepContext {
            plan,
            dsn,
            target: opts.target.clone(),
            run_id: events.run_id(),
            backup_dir: opts.backup_dir.clone(),
            bins,
            events,
            abort,
        };
        Runner {
            ctx,
            opts,
            state: RunState::Created,
            starting: Vec::new(),
            applied_by_run: Vec::new(),
            backup: None,
        }
    }

    /// The single way the run changes state: legal transitions only, persisted
    /// before the caller goes on to the side effect.
    fn advance(&mut self, next: RunState) {
        if let Err(e) = self.state.advance(next) {
            // A bug, not an input problem: say so loudly, keep the old state.
            eprintln!("internal error: {e}");
            return;
        }
        self.ctx.events.save_state(&self.state);
    }

    fn finish(&mut self, outcome: Outcome, reason: Option<String>) -> Finished {
        self.finish_with_code(outcome, reason, outcome.exit_code())
    }

    fn finish_with_code(
        &mut self,
        outcome: Outcome,
        reason: Option<String>,
        exit_code: i32,
    ) -> Finished {
        let next = RunState::Finished {
            outcome,
            reason: reason.clone(),
        };
        if self.state.advance(next.clone()).is_err() {
            self.state = next;
        }
        self.ctx.events.save_state(&self.state);
        let ev = self.ctx.events;
        ev.emit(
            None,
            EventKind::RunFinished {
                outcome,
                reason: reason.clone(),
                exit_code,
                applied: self.applied_by_run.clone(),
                backup: self.backup.as_ref().map(|b| b.path.display().to_string()),
                journal: ev.journal_path(),
            },
        );
        Finished {
            outcome,
            reason,
            exit_code,
        }
    }

    pub async fn run(mut self) -> Finished {
        let plan = self.ctx.plan;
        // Preflight: can we reach the target, and is its history what the set expects?
        let client = match self.ctx.dsn.connect("pgshepherd preflight", &[]).await {
            Ok(c) => c,
            Err(e) => {
                let reason = format!(
                    "cannot connect to {}: {}",
                    self.ctx.dsn,
                    crate::pg::server_message(&e)
                );
                return self.finish_with_code(Outcome::Stopped, Some(reason), 1);
            }
        };
        let status = match history::read(&client, &plan.migrations.name).await {
            Ok(rows) => history::reconcile(&plan.migrations, &rows),
            Err(e) => Err(HistoryError::Query(e)),
        };
        drop(client);
        let status = match status {
            Ok(s) => s,
            Err(e @ HistoryError::Query(_)) => {
                return self.finish_with_code(Outcome::Stopped, Some(e.to_string()), 1);
            }
            // Drifted or dirty history is a problem with the input: nothing ran.
            Err(e) => return self.finish_with_code(Outcome::Stopped, Some(e.to_string()), 2),
        };
        self.starting = status.applied.clone();
        let pending: Vec<&Migration> = plan
            .migrations
            .migrations
            .iter()
            .filter(|m| status.pending.contains(&m.version))
            .collect();
        self.ctx.events.emit(
            Some(Step::Preflight),
            EventKind::RunStarted {
                plan: plan.path.display().to_string(),
                plan_name: plan.name.clone(),
                target: self.opts.target.clone(),
                database: self.ctx.dsn.to_string(),
                migration_set: plan.migrations.name.clone(),
                applied: status.applied.clone(),
                pending: pending.iter().map(|m| m.label()).collect(),
                rollback_strategy: plan.rollback.strategy,
                journal: self.ctx.events.journal_path(),
                dry_run: self.opts.dry_run,
            },
        );
        if self.opts.dry_run {
            let report = dry_run::report(&self.ctx, &pending, &status.applied).await;
            self.ctx
                .events
                .emit(Some(Step::Preflight), EventKind::DryRun { report });
            return self.finish(
                Outcome::Succeeded,
                Some("dry run: nothing was changed".into()),
            );
        }
        if pending.is_empty() {
            self.advance(RunState::Locking);
            self.advance(RunState::MeasuringBaseline);
            let at = status
                .applied
                .last()
                .map(|v| format!("V{v}"))
                .unwrap_or_else(|| "no version".into());
            return self.finish(
                Outcome::Succeeded,
                Some(format!("nothing to apply: the target is already at {at}")),
            );
        }

        // Window: the migration may only start inside it.
        if let Some(window) = plan.window.as_ref().filter(|_| !self.opts.now) {
            if window.current(Utc::now()).is_none() {
                self.advance(RunState::WaitingForWindow);
                let Some(opens) = window.next_openings(Utc::now(), 1).into_iter().next() else {
                    return self.finish(Outcome::Stopped, Some("the window never opens".into()));
                };
                self.ctx.emit(
                    Step::Window,
                    EventKind::WaitingForWindow {
                        cron: window.cron.clone(),
                        timezone: window.timezone.name().to_string(),
                        opens_at: opens.to_rfc3339_opts(SecondsFormat::Secs, false),
                    },
                );
                let wait = (opens.with_timezone(&Utc) - Utc::now())
                    .to_std()
                    .unwrap_or_default();
                if !self.ctx.sleep(wait).await {
                    return self.finish(
                        Outcome::Stopped,
                        Some("aborted while waiting for the window".into()),
                    );
                }
            }
            let closes = window
                .current(Utc::now())
                .map(|(_, c)| c.to_rfc3339_opts(SecondsFormat::Secs, true));
            self.ctx
                .emit(Step::Window, EventKind::WindowOpen { closes_at: closes });
        }

        // Lock: from here on, only this run changes the target.
        self.advance(RunState::Locking);
        let started = Instant::now();
        let application_name = format!("pgshepherd run {}", self.ctx.run_id);
        let acquire = TargetLock::acquire(
            self.ctx.dsn,
            &application_name,
            plan.lock.acquire_timeout,
            |holder| {
                self.ctx.emit(
                    Step::Lock,
                    EventKind::LockBusy {
                        holder: holder.clone(),
                    },
                )
            },
        );
        let acquired = tokio::select! {
            acquired = acquire => acquired,
            _ = self.ctx.abort_requested() => {
                return self.finish(Outcome::Stopped, Some("aborted while waiting for the lock".into()));
            }
        };
        let lock = match acquired {
            Ok(lock) => lock,
            Err(e @ LockError::Connect { .. }) => {
                return self.finish_with_code(Outcome::Stopped, Some(e.to_string()), 1);
            }
            Err(e) => return self.finish(Outcome::Stopped, Some(e.to_string())),
        };
        self.ctx.emit(
            Step::Lock,
            EventKind::LockAcquired {
                waited_ms: started.elapsed().as_millis() as u64,
            },
        );
        // Someone may have migrated between preflight and the lock: look again.
        match history::read(lock.client(), &plan.migrations.name)
            .await
            .map_err(HistoryError::Query)
            .and_then(|rows| history::reconcile(&plan.migrations, &rows))
        {
            Ok(s) if s.applied == self.starting => {}
            Ok(s) => {
                let reason = format!(
                    "the target changed while waiting for the lock (now at {:?}); run again",
                    s.applied
                );
                return self.finish(Outcome::Stopped, Some(reason));
            }
            // The same classes and exit codes as in preflight.
            Err(e @ HistoryError::Query(_)) => {
                return self.finish_with_code(Outcome::Stopped, Some(e.to_string()), 1);
            }
            Err(e) => return self.finish_with_code(Outcome::Stopped, Some(e.to_string()), 2),
        }

        // Baseline, before anything (including the backup's load) disturbs it.
        self.advance(RunState::MeasuringBaseline);
        let mut monitor = Monitor::new(&plan.soak.checks, self.ctx.dsn);
        if let Err(reason) = monitor
            .measure_baseline(&self.ctx, plan.soak.baseline_samples, plan.soak.interval)
            .await
        {
            return self.finish(Outcome::Stopped, Some(format!("baseline: {reason}")));
        }

        // Backup: only a verified one lets the migration start.
        if plan.backup.enabled {
            self.advance(RunState::BackingUp);
            // A stop request cancels the backup: dropping it kills pg_dump, and
            // whatever it had written is removed.
            let taken = tokio::select! {
                taken = self.take_backup() => taken,
                _ = self.ctx.abort_requested() => {
                    let removed = backup::cancel(self.ctx.dsn, &self.ctx.backup_dir, &self.opts.target, self.ctx.run_id).await;
                    let reason = format!(
                        "aborted during the backup; nothing was changed ({} partial file(s) removed)",
                        removed.len()
                    );
                    return self.finish(Outcome::Stopped, Some(reason));
                }
            };
            match taken {
                Ok(b) => self.backup = Some(b),
                Err(reason) => {
                    self.ctx.emit(
                        Step::Backup,
                        EventKind::BackupFailed {
                            reason: reason.clone(),
                        },
                    );
                    return self.finish(Outcome::Stopped, Some(format!("backup: {reason}")));
                }
            }
        }
        // pgshepherd's own bookkeeping: created before the first migration so that
        // nothing between the last abort check and the first migration can fail.
        if let Err(e) = lock.client().batch_execute(history::CREATE).await {
            let reason = format!(
                "cannot create pgshepherd.history: {}",
                crate::pg::server_message(&e)
            );
            return self.finish(Outcome::Stopped, Some(reason));
        }
        if self.ctx.aborted() {
            return self.finish(Outcome::Stopped, Some("aborted before migrating".into()));
        }
        if let Some(window) = plan.window.as_ref().filter(|_| !self.opts.now)
            && window.current(Utc::now()).is_none()
        {
            return self.finish(
                Outcome::Stopped,
                Some("the window closed before the migration could start".into()),
            );
        }

        // Migrate.
        self.advance(RunState::Migrating {
            applied: Vec::new(),
        });
        // The checkpoint persists `Migrating { applied }` before each migration
        // starts; `self.state` catches up when `migrate` returns.
        let events = self.ctx.events;
        let mut last = Vec::new();
        let end = migrate::migrate(&self.ctx, &lock, &pending, &mut |applied| {
            last = applied.to_vec();
            events.save_state(&RunState::Migrating {
                applied: last.clone(),
            });
        })
        .await;
        self.advance(RunState::Migrating { applied: last });
        let (undo, cause) = match end {
            MigrateEnd::Done { applied } => {
                self.applied_by_run = applied.clone();
                self.advance(RunState::Soaking {
                    applied,
                    progress: None,
                });
                match self.soak(&mut monitor).await {
                    Ok(()) => {
                        drop(lock);
                        return self.finish(Outcome::Succeeded, None);
                    }
                    Err(SoakFailure::Hold(reason)) => {
                        return self.finish(Outcome::NeedsHuman, Some(reason));
                    }
                    Err(SoakFailure::Failed(cause)) => (self.applied_by_run.clone(), cause),
                }
            }
            MigrateEnd::Failed { undo, cause } => (undo, cause),
            MigrateEnd::Aborted { undo } => {
                (undo, "aborted by the operator during the migration".into())
            }
        };
        self.applied_by_run = undo.clone();
        self.rollback(&lock, &mut monitor, undo, cause).await
    }

    async fn take_backup(&self) -> Result<Backup, String> {
        let plan = self.ctx.plan;
        let Some(bins) = self.ctx.bins else {
            return Err(
                "pg_dump and pg_restore were not found; install the PostgreSQL client tools".into(),
            );
        };
        self.ctx.emit(
            Step::Backup,
            EventKind::BackupStarted {
                format: plan.backup.format,
                compression: plan.backup.compression,
                directory: self.ctx.backup_dir.display().to_string(),
            },
        );
        let started = Instant::now();
        let last = std::sync::Mutex::new(Instant::now());
        let events = self.ctx.events;
        let progress = |bytes: u64| {
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed().as_secs_f64() >= 1.0 {
                *last = Instant::now();
                events.progress(&format!("  backup {:.1} MB written", bytes as f64 / 1e6));
            }
        };
        let backup = backup::take(
            bins,
            self.ctx.dsn,
            &plan.backup,
            &self.ctx.backup_dir,
            &self.opts.target,
            self.ctx.run_id,
            &self.starting,
            &progress,
        )
        .await
        .map_err(|e| e.to_string())?;
        self.ctx.emit(
            Step::Backup,
            EventKind::BackupWritten {
                path: backup.path.display().to_string(),
                size_bytes: backup.manifest.size_bytes,
                sha256: backup.manifest.sha256.clone(),
                duration_ms: started.elapsed().as_millis() as u64,
            },
        );
        let verify_started = Instant::now();
        let verified = backup::verify(bins, &backup, &plan.backup.expect_tables)
            .await
            .map_err(|e| e.to_string())?;
        self.ctx.emit(
            Step::Backup,
            EventKind::BackupVerified {
                path: backup.path.display().to_string(),
                manifest: backup.manifest_path.display().to_string(),
                sha256: backup.manifest.sha256.clone(),
                tables: verified.tables_checked,
                duration_ms: verify_started.elapsed().as_millis() as u64,
            },
        );
        match backup::prune(&self.ctx.backup_dir, &self.opts.target, plan.backup.keep) {
            Ok(removed) if !removed.is_empty() => self.ctx.emit(
                Step::Backup,
                EventKind::BackupPruned {
                    removed: removed.iter().map(|p| p.display().to_string()).collect(),
                },
            ),
            Ok(_) => {}
            Err(e) => self
                .ctx
                .events
                .progress(&format!("  warning: pruning old backups failed: {e}")),
        }
        Ok(backup)
    }

    async fn soak(&mut self, monitor: &mut Monitor) -> Result<(), SoakFailure> {
        let plan = self.ctx.plan;
        self.ctx.emit(
            Step::Soak,
            EventKind::SoakStarted {
                duration_s: plan.soak.duration.as_secs_f64(),
                interval_s: plan.soak.interval.as_secs_f64(),
                checks: monitor.check_plans(),
            },
        );
        // Each tick's progress is persisted with the state, so the soak's
        // position and counts outlive the process.
        let events = self.ctx.events;
        let applied = self.applied_by_run.clone();
        let mut checkpoint = |progress: &SoakProgress| {
            events.save_state(&RunState::Soaking {
                applied: applied.clone(),
                progress: Some(Box::new(progress.clone())),
            })
        };
        let result = monitor
            .watch(
                &self.ctx,
                Step::Soak,
                plan.soak.duration,
                plan.soak.interval,
                &mut checkpoint,
            )
            .await;
        let (passed, failure) = match &result.end {
            SoakEnd::Passed => (true, None),
            SoakEnd::Verdict(v @ crate::checks::verdict::Verdict::Hold { .. }) => {
                (false, Some(SoakFailure::Hold(v.message())))
            }
            SoakEnd::Verdict(v) => (false, Some(SoakFailure::Failed(v.message()))),
            SoakEnd::Aborted => (
                false,
                Some(SoakFailure::Failed(
                    "the soak was cut short by the operator".into(),
                )),
            ),
        };
        let reason = failure.as_ref().map(|f| match f {
            SoakFailure::Hold(r) | SoakFailure::Failed(r) => r.clone(),
        });
        self.ctx.emit(
            Step::Soak,
            EventKind::SoakFinished {
                passed,
                reason,
                elapsed_s: result.elapsed.as_secs_f64(),
                tallies: result.tallies,
            },
        );
        failure.map_or(Ok(()), Err)
    }

    async fn rollback(
        &mut self,
        lock: &TargetLock,
        monitor: &mut Monitor,
        undo: Vec<i64>,
        cause: String,
    ) -> Finished {
        let plan = self.ctx.plan;
        let strategy = plan.rollback.strategy;
        self.advance(RunState::RollingBack {
            applied: undo.clone(),
            cause: cause.clone(),
        });
        if strategy == RollbackStrategy::Hold {
            return self.finish(
                Outcome::NeedsHuman,
                Some(format!(
                    "{cause}; the plan says hold, so nothing was undone"
                )),
            );
        }
        if undo.is_empty() {
            // The failed migration rolled back on its own; nothing of this run is left.
            return self.confirm(lock, monitor, cause).await;
        }
        self.ctx.emit(
            Step::Rollback,
            EventKind::RollbackStarted {
                strategy,
                cause: cause.clone(),
                undo: undo.clone(),
            },
        );
        let mut states = Vec::new();
        let result =
            rollback::roll_back(&self.ctx, lock, &undo, self.backup.as_ref(), &mut |left| {
                states.push(left.to_vec())
            })
            .await;
        for left in states {
            self.advance(RunState::RollingBack {
                applied: left,
                cause: cause.clone(),
            });
        }
        if let Err(reason) = result {
            self.ctx.emit(
                Step::Rollback,
                EventKind::RollbackFailed {
                    reason: reason.clone(),
                },
            );
            return self.finish(
                Outcome::NeedsHuman,
                Some(format!("{cause}; rollback failed: {reason}")),
            );
        }
        self.confirm(lock, monitor, cause).await
    }

    /// Prove the rollback: the target is at its starting version, and the checks are
    /// healthy for the confirmation period.
    async fn confirm(
        &mut self,
        lock: &TargetLock,
        monitor: &mut Monitor,
        cause: String,
    ) -> Finished {
        let plan = self.ctx.plan;
        let now = match rollback::applied_now(&self.ctx, lock).await {
            Ok(v) => v,
            Err(reason) => {
                return self.finish(Outcome::NeedsHuman, Some(format!("{cause}; {reason}")));
            }
        };
        let at_start = now == self.starting;
        self.ctx.emit(
            Step::Rollback,
            EventKind::RollbackFinished {
                strategy: plan.rollback.strategy,
                applied: now.clone(),
                at_starting_version: at_start,
            },
        );
        if !at_start {
            let reason = format!(
                "{cause}; after the rollback the target is at {now:?}, not at its starting {:?}",
                self.starting
            );
            return self.finish(Outcome::NeedsHuman, Some(reason));
        }
        self.advance(RunState::Confirming {
            cause: cause.clone(),
        });
        let confirm = plan.rollback.confirm;
        if !confirm.is_zero() {
            let interval = plan.soak.interval.min(confirm);
            let result = monitor
                .watch(
                    &self.ctx.without_abort(),
                    Step::Confirm,
                    confirm,
                    interval,
                    &mut |_| {},
                )
                .await;
            let unhealthy = match result.end {
                SoakEnd::Passed => None,
                SoakEnd::Verdict(v) => Some(v.message()),
                SoakEnd::Aborted => {
                    Some("the confirmation was cut short by the operator".to_string())
                }
            };
            if let Some(why) = unhealthy {
                let reason = format!(
                    "{cause}; rolled back to the starting version but the confirmation failed: {why}"
                );
                return self.finish(Outcome::NeedsHuman, Some(reason));
            }
        }
        self.finish(
            Outcome::RolledBack,
            Some(format!("{cause}; rolled back and confirmed healthy")),
        )
    }
}

enum SoakFailure {
    /// Stop without rolling back and page a human.
    Hold(String),
    /// Roll back per the plan's strategy.
    Failed(String),
}
