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
use crate::run::checkpoint::Checkpoint;
use crate::run::dry_run;
use crate::run::event::{EventKind, Outcome, Step};
use crate::run::journal::Emitter;
use crate::run::state::RunState;
use crate::steps::StepContext;
use crate::steps::backup::{self, Backup};
use crate::steps::gate::GateEnd;
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
    async fn advance(&mut self, next: RunState) {
        if let Err(e) = self.state.advance(next) {
            // A bug, not an input problem: say so loudly, keep the old state.
            eprintln!("internal error: {e}");
            return;
        }
        self.ctx.events.save_state(&self.state).await;
    }

    /// A step persisted `state` itself (before each of its side effects); catch up.
    fn saved_by_step(&mut self, state: RunState) {
        self.state = state;
    }

    async fn finish(&mut self, outcome: Outcome, reason: Option<String>) -> Finished {
        self.finish_with_code(outcome, reason, outcome.exit_code())
            .await
    }

    async fn finish_with_code(
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
        // The final event first, so that it is written with the final state.
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
        ev.save_state(&self.state).await;
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
                return self
                    .finish_with_code(Outcome::Stopped, Some(reason), 1)
                    .await;
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
                return self
                    .finish_with_code(Outcome::Stopped, Some(e.to_string()), 1)
                    .await;
            }
            // Drifted or dirty history is a problem with the input: nothing ran.
            Err(e) => {
                return self
                    .finish_with_code(Outcome::Stopped, Some(e.to_string()), 2)
                    .await;
            }
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
            return self
                .finish(
                    Outcome::Succeeded,
                    Some("dry run: nothing was changed".into()),
                )
                .await;
        }
        if pending.is_empty() {
            self.advance(RunState::Locking).await;
            self.advance(RunState::MeasuringBaseline).await;
            let at = status
                .applied
                .last()
                .map(|v| format!("V{v}"))
                .unwrap_or_else(|| "no version".into());
            return self
                .finish(
                    Outcome::Succeeded,
                    Some(format!("nothing to apply: the target is already at {at}")),
                )
                .await;
        }

        // Window, gate, lock, baseline, backup: all before anything changes. If the
        // window closes before the migration can start, the run goes back to
        // waiting for the next opening (or stops at the plan's deadline).
        let (lock, mut monitor) = loop {
            match self.prepare().await {
                Prepared::Ready(ready) => break *ready,
                Prepared::WindowClosed => continue,
                Prepared::Finished(f) => return f,
            }
        };

        // Migrate.
        self.advance(RunState::Migrating {
            applied: Vec::new(),
        })
        .await;
        let end = migrate::migrate(&self.ctx, &lock, &pending, Vec::new()).await;
        self.after_migrate(lock, &mut monitor, end).await
    }

    /// Continue a run another process persisted (the daemon after a restart or a
    /// takeover). A run that had not changed the target starts again from the
    /// top (an unfinished backup is discarded, never trusted); a run that had
    /// changed it takes the lock again, reads the target's history (the
    /// authority on what is applied) and carries on where it was: the rest of
    /// the migrations, the soak at its next sample, the rollback, the
    /// confirmation.
    pub async fn resume(mut self, checkpoint: Checkpoint) -> Finished {
        let Checkpoint { state, facts } = checkpoint;
        if let RunState::Finished { outcome, reason } = state {
            return Finished {
                exit_code: outcome.exit_code(),
                outcome,
                reason,
            };
        }
        if state.before_change() {
            if matches!(state, RunState::BackingUp) {
                let removed = backup::discard_partial(
                    &self.ctx.backup_dir,
                    &self.opts.target,
                    self.ctx.run_id,
                )
                .await;
                if !removed.is_empty() {
                    self.ctx.events.progress(&format!(
                        "  discarded {} file(s) of an unfinished backup",
                        removed.len()
                    ));
                }
            }
            // Nothing was changed: the whole preparation runs again.
            self.state = match state {
                RunState::Created => RunState::Created,
                _ => RunState::WaitingForWindow,
            };
            return self.run().await;
        }
        self.state = state.clone();
        let plan = self.ctx.plan;
        let Some(starting) = facts.starting.clone() else {
            let reason = "cannot continue: the run's starting versions were never recorded; inspect the target".to_string();
            return self.finish(Outcome::NeedsHuman, Some(reason)).await;
        };
        self.starting = starting.clone();
        self.ctx.events.set_fact(|f| *f = facts.clone());
        if let Some(manifest) = &facts.backup_manifest {
            match Backup::load(manifest) {
                Ok(b) => self.backup = Some(b),
                Err(e) => self.ctx.events.progress(&format!(
                    "  warning: the run's backup cannot be loaded: {e}"
                )),
            }
        }
        let mut monitor = Monitor::new(&plan.soak.checks, self.ctx.dsn);
        if let Some(baselines) = &facts.baselines {
            monitor.restore_baselines(baselines);
        }
        let lock = match self.lock_patiently().await {
            Ok(lock) => lock,
            Err(f) => return f,
        };
        let rows = match history::read(lock.client(), &plan.migrations.name).await {
            Ok(rows) => rows,
            Err(e) => {
                let reason = format!("cannot continue: {}", HistoryError::Query(e));
                return self.finish(Outcome::NeedsHuman, Some(reason)).await;
            }
        };
        // What this run has on the target: complete rows beyond the start, and a
        // no-transaction migration it left half done.
        let by_run: Vec<i64> = rows
            .iter()
            .filter(|r| r.complete && !starting.contains(&r.version))
            .map(|r| r.version)
            .collect();
        let interrupted: Vec<i64> = rows
            .iter()
            .filter(|r| !r.complete && r.run_id == self.ctx.run_id)
            .map(|r| r.version)
            .collect();
        self.applied_by_run = by_run.clone();
        match state {
            RunState::Migrating { .. } if by_run.is_empty() && interrupted.is_empty() => {
                // Stopped at the checkpoint before the first migration, or inside
                // a transactional one that died with its connection: the target
                // is as it was. Start over, so that the window, the deadline, the
                // gate, fresh baselines and a fresh backup all apply again.
                drop(lock);
                self.ctx
                    .events
                    .set_fact(|f| *f = crate::run::checkpoint::RunFacts::default());
                self.backup = None;
                self.applied_by_run.clear();
                self.state = RunState::WaitingForWindow;
                self.run().await
            }
            RunState::Migrating { .. } => {
                if !interrupted.is_empty() {
                    let mut undo = by_run;
                    undo.extend(&interrupted);
                    let cause = format!(
                        "pgshepherd stopped during the no-transaction migration V{}; its effect is unknown",
                        interrupted[0]
                    );
                    self.applied_by_run = undo.clone();
                    return self.rollback(lock, &mut monitor, undo, cause).await;
                }
                if self.ctx.aborted() {
                    let cause = "aborted by the operator during the migration".to_string();
                    return self.rollback(lock, &mut monitor, by_run, cause).await;
                }
                let status = match history::reconcile(&plan.migrations, &rows) {
                    Ok(s) => s,
                    Err(e) => {
                        let cause = format!("cannot continue the migration: {e}");
                        return self.rollback(lock, &mut monitor, by_run, cause).await;
                    }
                };
                let pending: Vec<&Migration> = plan
                    .migrations
                    .migrations
                    .iter()
                    .filter(|m| status.pending.contains(&m.version))
                    .collect();
                let end = migrate::migrate(&self.ctx, &lock, &pending, by_run).await;
                self.after_migrate(lock, &mut monitor, end).await
            }
            RunState::Soaking { applied, progress } => {
                if by_run != applied || !interrupted.is_empty() {
                    let cause = format!(
                        "the target changed while the run was not watched: this run applied {applied:?}, the target now has {by_run:?} beyond its start"
                    );
                    return self.rollback(lock, &mut monitor, by_run, cause).await;
                }
                match self.soak(&mut monitor, progress.as_deref()).await {
                    Ok(()) => {
                        drop(lock);
                        self.finish(Outcome::Succeeded, None).await
                    }
                    Err(SoakFailure::Hold(reason)) => {
                        self.finish(Outcome::NeedsHuman, Some(reason)).await
                    }
                    Err(SoakFailure::Failed(cause)) => {
                        self.rollback(lock, &mut monitor, by_run, cause).await
                    }
                }
            }
            RunState::RollingBack { cause, .. } => {
                let mut undo = by_run;
                undo.extend(&interrupted);
                self.applied_by_run = undo.clone();
                self.rollback(lock, &mut monitor, undo, cause).await
            }
            RunState::Confirming { cause } => self.confirm(lock, &mut monitor, cause).await,
            other => {
                let reason = format!("cannot continue a run from state {}", other.name());
                self.finish(Outcome::NeedsHuman, Some(reason)).await
            }
        }
    }

    /// Everything before the change. Each wait honours the operator's stop.
    async fn prepare(&mut self) -> Prepared {
        let plan = self.ctx.plan;
        if let Some(f) = self.past_deadline().await {
            return Prepared::Finished(f);
        }
        // Window: the migration may only start inside it.
        if let Some(window) = plan.window.as_ref().filter(|_| !self.opts.now) {
            if window.current(Utc::now()).is_none() {
                self.back_to_waiting().await;
                let Some(opens) = window.next_openings(Utc::now(), 1).into_iter().next() else {
                    let f = self
                        .finish(Outcome::Stopped, Some("the window never opens".into()))
                        .await;
                    return Prepared::Finished(f);
                };
                if let Some(deadline) = plan.deadline
                    && opens.with_timezone(&Utc) >= deadline
                {
                    let reason = format!(
                        "the next window opens at {}, after the plan's deadline {}",
                        opens.to_rfc3339_opts(SecondsFormat::Secs, false),
                        deadline.to_rfc3339_opts(SecondsFormat::Secs, true)
                    );
                    return Prepared::Finished(self.finish(Outcome::Stopped, Some(reason)).await);
                }
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
                    let f = self
                        .finish(
                            Outcome::Stopped,
                            Some("aborted while waiting for the window".into()),
                        )
                        .await;
                    return Prepared::Finished(f);
                }
            }
            let closes = window
                .current(Utc::now())
                .map(|(_, c)| c.to_rfc3339_opts(SecondsFormat::Secs, true));
            self.ctx
                .emit(Step::Window, EventKind::WindowOpen { closes_at: closes });
        }
        // The low-traffic gate: wait for quiet before touching anything.
        if let Some(gate) = &plan.gate {
            let window_closes = plan
                .window
                .as_ref()
                .filter(|_| !self.opts.now)
                .and_then(|w| w.current(Utc::now()))
                .map(|(_, c)| c.with_timezone(&Utc));
            let give_up_at = match (window_closes, plan.deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match crate::steps::gate::wait_for_low_traffic(&self.ctx, gate, give_up_at).await {
                GateEnd::Open => {}
                GateEnd::Aborted => {
                    let f = self
                        .finish(
                            Outcome::Stopped,
                            Some("aborted while waiting for low traffic".into()),
                        )
                        .await;
                    return Prepared::Finished(f);
                }
                GateEnd::GaveUp(reason) => {
                    if self.window_closed() && self.past_deadline_at().is_none() {
                        self.back_to_waiting().await;
                        return Prepared::WindowClosed;
                    }
                    let f = self
                        .finish(
                            Outcome::Stopped,
                            Some(format!("low-traffic gate: {reason}")),
                        )
                        .await;
                    return Prepared::Finished(f);
                }
            }
        }

        // Lock: from here on, only this run changes the target.
        self.advance(RunState::Locking).await;
        let lock = match self.lock().await {
            Ok(lock) => lock,
            Err(f) => return Prepared::Finished(f),
        };
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
                return Prepared::Finished(self.finish(Outcome::Stopped, Some(reason)).await);
            }
            // The same classes and exit codes as in preflight.
            Err(e @ HistoryError::Query(_)) => {
                let f = self
                    .finish_with_code(Outcome::Stopped, Some(e.to_string()), 1)
                    .await;
                return Prepared::Finished(f);
            }
            Err(e) => {
                let f = self
                    .finish_with_code(Outcome::Stopped, Some(e.to_string()), 2)
                    .await;
                return Prepared::Finished(f);
            }
        }
        let starting = self.starting.clone();
        self.ctx.events.set_fact(|f| f.starting = Some(starting));

        // Baseline, before anything (including the backup's load) disturbs it.
        self.advance(RunState::MeasuringBaseline).await;
        let mut monitor = Monitor::new(&plan.soak.checks, self.ctx.dsn);
        if let Err(reason) = monitor
            .measure_baseline(&self.ctx, plan.soak.baseline_samples, plan.soak.interval)
            .await
        {
            let f = self
                .finish(Outcome::Stopped, Some(format!("baseline: {reason}")))
                .await;
            return Prepared::Finished(f);
        }
        let baselines = monitor.baseline_values();
        self.ctx.events.set_fact(|f| f.baselines = Some(baselines));

        // Backup: only a verified one lets the migration start.
        if plan.backup.enabled {
            self.advance(RunState::BackingUp).await;
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
                    return Prepared::Finished(self.finish(Outcome::Stopped, Some(reason)).await);
                }
            };
            match taken {
                Ok(b) => {
                    let manifest = b.manifest_path.clone();
                    self.ctx
                        .events
                        .set_fact(|f| f.backup_manifest = Some(manifest));
                    self.backup = Some(b);
                }
                Err(reason) => {
                    self.ctx.emit(
                        Step::Backup,
                        EventKind::BackupFailed {
                            reason: reason.clone(),
                        },
                    );
                    let f = self
                        .finish(Outcome::Stopped, Some(format!("backup: {reason}")))
                        .await;
                    return Prepared::Finished(f);
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
            return Prepared::Finished(self.finish(Outcome::Stopped, Some(reason)).await);
        }
        if self.ctx.aborted() {
            let f = self
                .finish(Outcome::Stopped, Some("aborted before migrating".into()))
                .await;
            return Prepared::Finished(f);
        }
        if let Some(f) = self.past_deadline().await {
            return Prepared::Finished(f);
        }
        if self.window_closed() {
            // Nothing changed: let go of the target and wait for the next opening.
            drop(lock);
            self.ctx.events.progress(
                "  the window closed before the migration could start; waiting for the next opening",
            );
            self.back_to_waiting().await;
            return Prepared::WindowClosed;
        }
        Prepared::Ready(Box::new((lock, monitor)))
    }

    /// Enter `waiting_for_window` (unless already there).
    async fn back_to_waiting(&mut self) {
        if self.state != RunState::WaitingForWindow {
            self.advance(RunState::WaitingForWindow).await;
        }
    }

    fn window_closed(&self) -> bool {
        self.ctx
            .plan
            .window
            .as_ref()
            .filter(|_| !self.opts.now)
            .is_some_and(|w| w.current(Utc::now()).is_none())
    }

    fn past_deadline_at(&self) -> Option<chrono::DateTime<Utc>> {
        self.ctx.plan.deadline.filter(|d| Utc::now() >= *d)
    }

    async fn past_deadline(&mut self) -> Option<Finished> {
        let deadline = self.past_deadline_at()?;
        let reason = format!(
            "the plan's deadline {} passed before the migration could start",
            deadline.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        Some(self.finish(Outcome::Stopped, Some(reason)).await)
    }

    /// The target restarted underneath the run (its lock session is gone): take
    /// the lock again before changing anything more.
    async fn relock(&mut self, lock: TargetLock) -> Result<TargetLock, Finished> {
        if !lock.client().is_closed() {
            return Ok(lock);
        }
        drop(lock);
        self.ctx
            .events
            .progress("  the target's lock session was lost; taking the lock again");
        self.lock_patiently().await
    }

    /// Take the lock for a run that has changed the target and must go on: the
    /// target may be restarting, or a dead process's session may still hold it.
    async fn lock_patiently(&mut self) -> Result<TargetLock, Finished> {
        // A session of this same run left by a process that lost it (killed
        // host, expired lease) may still hold the lock or run a statement. This
        // process owns the run now, so that session is stale: end it.
        self.end_stale_sessions().await;
        // The target may still be coming back: retry with backoff for a while.
        let mut wait = std::time::Duration::from_millis(250);
        let give_up = self
            .ctx
            .plan
            .lock
            .acquire_timeout
            .max(std::time::Duration::from_secs(60));
        let started = Instant::now();
        loop {
            match self.try_lock().await {
                Ok(lock) => return Ok(lock),
                Err(e) if started.elapsed() > give_up => {
                    let reason =
                        format!("cannot take the target lock again to continue the run: {e}");
                    return Err(self.finish(Outcome::NeedsHuman, Some(reason)).await);
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }

    /// Take the per-target lock, waiting up to the plan's `acquire_timeout`.
    async fn lock(&mut self) -> Result<TargetLock, Finished> {
        let acquired = tokio::select! {
            acquired = self.try_lock() => acquired,
            _ = self.ctx.abort_requested(), if self.state.before_change() => {
                return Err(self.finish(Outcome::Stopped, Some("aborted while waiting for the lock".into())).await);
            }
        };
        match acquired {
            Ok(lock) => Ok(lock),
            Err(e) if !self.state.before_change() => {
                let reason = format!("cannot take the target lock to continue the run: {e}");
                Err(self.finish(Outcome::NeedsHuman, Some(reason)).await)
            }
            Err(e @ LockError::Connect { .. }) => Err(self
                .finish_with_code(Outcome::Stopped, Some(e.to_string()), 1)
                .await),
            Err(e) => Err(self.finish(Outcome::Stopped, Some(e.to_string())).await),
        }
    }

    /// Terminate the target sessions named after this run (`pgshepherd run ID`)
    /// that are not ours. Best effort: without the privilege, the lock wait
    /// below still works once the server notices the old client is gone.
    async fn end_stale_sessions(&self) {
        let name = format!("pgshepherd run {}", self.ctx.run_id);
        let Ok(client) = self.ctx.dsn.connect("pgshepherd takeover", &[]).await else {
            return;
        };
        if let Ok(rows) = client
            .query(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE application_name = $1 AND pid <> pg_backend_pid()",
                &[&name],
            )
            .await
            && !rows.is_empty()
        {
            self.ctx.events.progress(&format!(
                "  ended {} stale session(s) of this run left by a previous owner",
                rows.len()
            ));
        }
    }

    /// One attempt at the lock (polling up to `acquire_timeout`), with its events.
    async fn try_lock(&self) -> Result<TargetLock, LockError> {
        let plan = self.ctx.plan;
        let started = Instant::now();
        let application_name = format!("pgshepherd run {}", self.ctx.run_id);
        let lock = TargetLock::acquire(
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
        )
        .await?;
        self.ctx.emit(
            Step::Lock,
            EventKind::LockAcquired {
                waited_ms: started.elapsed().as_millis() as u64,
            },
        );
        Ok(lock)
    }

    /// From the end of the migrate step: soak, then succeed, or roll back.
    async fn after_migrate(
        &mut self,
        lock: TargetLock,
        monitor: &mut Monitor,
        end: MigrateEnd,
    ) -> Finished {
        let (undo, cause) = match end {
            MigrateEnd::Done { applied } => {
                self.saved_by_step(RunState::Migrating {
                    applied: applied.clone(),
                });
                self.applied_by_run = applied.clone();
                self.advance(RunState::Soaking {
                    applied,
                    progress: None,
                })
                .await;
                match self.soak(monitor, None).await {
                    Ok(()) => {
                        drop(lock);
                        return self.finish(Outcome::Succeeded, None).await;
                    }
                    Err(SoakFailure::Hold(reason)) => {
                        return self.finish(Outcome::NeedsHuman, Some(reason)).await;
                    }
                    Err(SoakFailure::Failed(cause)) => (self.applied_by_run.clone(), cause),
                }
            }
            MigrateEnd::Failed { undo, cause } => (undo, cause),
            MigrateEnd::Aborted { undo } => {
                (undo, "aborted by the operator during the migration".into())
            }
        };
        self.saved_by_step(RunState::Migrating {
            applied: undo.clone(),
        });
        self.applied_by_run = undo.clone();
        self.rollback(lock, monitor, undo, cause).await
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
        match backup::prune(&self.ctx.backup_dir, &self.opts.target, plan.backup.keep).await {
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

    async fn soak(
        &mut self,
        monitor: &mut Monitor,
        resume: Option<&SoakProgress>,
    ) -> Result<(), SoakFailure> {
        let plan = self.ctx.plan;
        if resume.is_none() {
            self.ctx.emit(
                Step::Soak,
                EventKind::SoakStarted {
                    duration_s: plan.soak.duration.as_secs_f64(),
                    interval_s: plan.soak.interval.as_secs_f64(),
                    checks: monitor.check_plans(),
                },
            );
        }
        // Each tick's progress is persisted with the state, so the soak's
        // position and counts outlive the process.
        let applied = self.applied_by_run.clone();
        let checkpoint = move |progress: SoakProgress| RunState::Soaking {
            applied: applied.clone(),
            progress: Some(Box::new(progress)),
        };
        let result = monitor
            .watch(
                &self.ctx,
                Step::Soak,
                plan.soak.duration,
                plan.soak.interval,
                resume,
                Some(&checkpoint),
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
        lock: TargetLock,
        monitor: &mut Monitor,
        undo: Vec<i64>,
        cause: String,
    ) -> Finished {
        let plan = self.ctx.plan;
        let strategy = plan.rollback.strategy;
        self.advance(RunState::RollingBack {
            applied: undo.clone(),
            cause: cause.clone(),
        })
        .await;
        if strategy == RollbackStrategy::Hold {
            return self
                .finish(
                    Outcome::NeedsHuman,
                    Some(format!(
                        "{cause}; the plan says hold, so nothing was undone"
                    )),
                )
                .await;
        }
        if undo.is_empty() {
            // The failed migration rolled back on its own; nothing of this run is left.
            return self.confirm(lock, monitor, cause).await;
        }
        let lock = match self.relock(lock).await {
            Ok(lock) => lock,
            Err(f) => return f,
        };
        self.ctx.emit(
            Step::Rollback,
            EventKind::RollbackStarted {
                strategy,
                cause: cause.clone(),
                undo: undo.clone(),
            },
        );
        let result =
            rollback::roll_back(&self.ctx, &lock, &undo, self.backup.as_ref(), &cause).await;
        if let Err(reason) = result {
            self.ctx.emit(
                Step::Rollback,
                EventKind::RollbackFailed {
                    reason: reason.clone(),
                },
            );
            return self
                .finish(
                    Outcome::NeedsHuman,
                    Some(format!("{cause}; rollback failed: {reason}")),
                )
                .await;
        }
        self.confirm(lock, monitor, cause).await
    }

    /// Prove the rollback: the target is at its starting version, and the checks are
    /// healthy for the confirmation period.
    async fn confirm(
        &mut self,
        lock: TargetLock,
        monitor: &mut Monitor,
        cause: String,
    ) -> Finished {
        let lock = match self.relock(lock).await {
            Ok(lock) => lock,
            Err(f) => return f,
        };
        let plan = self.ctx.plan;
        let now = match rollback::applied_now(&self.ctx, &lock).await {
            Ok(v) => v,
            Err(reason) => {
                return self
                    .finish(Outcome::NeedsHuman, Some(format!("{cause}; {reason}")))
                    .await;
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
            return self.finish(Outcome::NeedsHuman, Some(reason)).await;
        }
        if !matches!(self.state, RunState::Confirming { .. }) {
            self.advance(RunState::Confirming {
                cause: cause.clone(),
            })
            .await;
        }
        let confirm = plan.rollback.confirm;
        if !confirm.is_zero() {
            let interval = plan.soak.interval.min(confirm);
            let result = monitor
                .watch(
                    &self.ctx.without_abort(),
                    Step::Confirm,
                    confirm,
                    interval,
                    None,
                    None,
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
                return self.finish(Outcome::NeedsHuman, Some(reason)).await;
            }
        }
        self.finish(
            Outcome::RolledBack,
            Some(format!("{cause}; rolled back and confirmed healthy")),
        )
        .await
    }
}

enum Prepared {
    /// Locked, baselines measured, backup verified, inside the window.
    Ready(Box<(TargetLock, Monitor)>),
    /// The window closed before the migration could start: wait for the next.
    WindowClosed,
    Finished(Finished),
}

enum SoakFailure {
    /// Stop without rolling back and page a human.
    Hold(String),
    /// Roll back per the plan's strategy.
    Failed(String),
}
