//! Runs one plan's whole lifecycle against one target:
//! preflight → window → lock → baseline → backup → migrate → EXPLAIN gate → soak
//! → succeeded | rollback → confirm → rolled back | needs a human.
//!
//! The runner performs effects; it never decides a transition. Each step feeds
//! what happened to [`Lifecycle::apply`], which persists the next state before
//! the runner goes on (and ends the run when the lifecycle says so). The phases
//! live next to this file: [`crate::run::prepare`] (window, gate, lock, baseline,
//! backup), [`crate::run::locking`], [`crate::run::undo`] (rollback and
//! confirmation).

use std::convert::Infallible;
use std::path::PathBuf;

use tokio::sync::watch;

use crate::checks::visibility::{self, SessionVisibility};
use crate::migrations::Migration;
use crate::migrations::history::{self, HistoryError};
use crate::pg::cluster::PgBinaries;
use crate::pg::lock::ANSWER_TIMEOUT;
use crate::pg::{Dsn, TargetLock, session};
use crate::plan::{Plan, RollbackStrategy};
use crate::run::checkpoint::{Checkpoint, RunFacts};
use crate::run::driver::{Finished, Lifecycle};
use crate::run::dry_run;
use crate::run::event::{EventKind, Step};
use crate::run::journal::Emitter;
use crate::run::lifecycle::{Effect, Input, Rules};
use crate::run::state::RunState;
use crate::steps::StepContext;
use crate::steps::backup::{self, Backup};
use crate::steps::explain;
use crate::steps::migrate::{self, MigrateEnd};
use crate::steps::soak::{Monitor, SoakEnd, SoakProgress};
use crate::undo::capture::{self, KeyProblem};

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

const ABORTED_MIGRATING: &str = "aborted by the operator during the migration";
const SOAK_CUT_SHORT: &str = "the soak was cut short by the operator";

/// The runner's phases return `Err` once the run is over; `Ok` carries what the
/// next phase needs.
pub(crate) type Phase<T> = Result<T, Finished>;

pub struct Runner<'a> {
    pub(crate) ctx: StepContext<'a>,
    pub(crate) opts: RunOptions,
    pub(crate) life: Lifecycle<'a>,
    /// Versions applied on the target when the run took its lock.
    pub(crate) starting: Vec<i64>,
    pub(crate) backup: Option<Backup>,
}

/// How a soak ended, for the runner.
pub(crate) enum SoakOutcome {
    Passed,
    /// Stop without rolling back and page a human.
    Hold(String),
    /// Undo the change per the plan's strategy.
    Failed(String),
    Aborted,
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
            life: Lifecycle::new(events, rules(plan), RunState::Created),
            ctx,
            opts,
            starting: Vec::new(),
            backup: None,
        }
    }

    /// Stop before any change, on purpose or by circumstance (exit 5).
    /// Stop before any change because the environment failed (exit 1): the
    /// target unreachable, a preflight question it could not answer.
    async fn stop_on_environment(&self, reason: String) -> Finished {
        self.end(Input::Stop {
            reason,
            exit_code: 1,
        })
        .await
    }

    pub(crate) async fn stop_before_change(&self, reason: String) -> Finished {
        self.end(Input::Stop {
            reason,
            exit_code: 5,
        })
        .await
    }

    /// Feed `input` to the lifecycle; the run's end when it ends the run. For
    /// inputs that always end it (a stop, a failure, a verdict to hold).
    pub(crate) async fn end(&self, input: Input) -> Finished {
        match self.life.apply(input).await {
            Err(finished) => finished,
            Ok(_) => {
                let reason = "internal error: an input that ends the run did not".to_string();
                match self
                    .life
                    .apply(Input::Failure {
                        reason,
                        invalid_input: false,
                    })
                    .await
                {
                    Err(finished) => finished,
                    Ok(_) => unreachable!("a failure always ends an unfinished run"),
                }
            }
        }
    }

    /// Run a new run from the top.
    pub async fn run(mut self) -> Finished {
        match self.start_from_the_top().await {
            Err(finished) => finished,
            Ok(never) => match never {},
        }
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
        self.life = Lifecycle::new(self.ctx.events, rules(self.ctx.plan), state.clone());
        match self.resume_inner(state, facts).await {
            Err(finished) => finished,
            Ok(never) => match never {},
        }
    }

    async fn resume_inner(&mut self, state: RunState, facts: RunFacts) -> Phase<Infallible> {
        let effects = self.life.apply(Input::Restarted).await?;
        if effects.has(&Effect::StartOver) {
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
            return self.start_from_the_top().await;
        }
        let plan = self.ctx.plan;
        let Some(starting) = facts.starting.clone() else {
            let reason = "cannot continue: the run's starting versions were never recorded; inspect the target".to_string();
            return Err(self
                .end(Input::Failure {
                    reason,
                    invalid_input: false,
                })
                .await);
        };
        self.starting = starting.clone();
        self.ctx.events.set_fact(|f| *f = facts.clone());
        if let Some(manifest) = &facts.backup_manifest {
            match Backup::load(manifest) {
                Ok(b) => {
                    self.life.note_backup(Some(b.path.display().to_string()));
                    self.backup = Some(b);
                }
                Err(e) => self.ctx.events.progress(&format!(
                    "  warning: the run's backup cannot be loaded: {e}"
                )),
            }
        }
        let mut monitor = Monitor::new(&plan.soak.checks, self.ctx.dsn);
        if let Some(baselines) = &facts.baselines {
            monitor.restore_baselines(baselines);
        }
        let lock = self.lock_patiently().await?;
        let rows = match history::read(lock.client(), &plan.migrations.name).await {
            Ok(rows) => rows,
            Err(e) => {
                let reason = format!("cannot continue: {}", HistoryError::Query(e));
                return Err(self
                    .end(Input::Failure {
                        reason,
                        invalid_input: false,
                    })
                    .await);
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
        let effects = self
            .life
            .apply(Input::Reconciled {
                by_run,
                interrupted,
            })
            .await?;
        if effects.has(&Effect::StartOver) {
            drop(lock);
            self.ctx.events.set_fact(|f| *f = RunFacts::default());
            self.backup = None;
            self.life.note_backup(None);
            return self.start_from_the_top().await;
        }
        if effects.has(&Effect::Confirm) {
            return self.confirm(lock, &mut monitor).await;
        }
        if effects.iter().any(|e| matches!(e, Effect::Undo { .. })) {
            return self.undo(lock, &mut monitor, effects).await;
        }
        if effects.has(&Effect::Soak) {
            let progress = match self.life.state() {
                RunState::Soaking { progress, .. } => progress,
                _ => None,
            };
            return self
                .soak_then_finish(lock, &mut monitor, progress.as_deref())
                .await;
        }
        // Still migrating: carry on with what is pending.
        if self.ctx.aborted() {
            let reason = ABORTED_MIGRATING.to_string();
            let effects = self.life.apply(Input::Abort { reason }).await?;
            return self.undo(lock, &mut monitor, effects).await;
        }
        let status = match history::reconcile(&plan.migrations, &rows) {
            Ok(s) => s,
            Err(e) => {
                let cause = format!("cannot continue the migration: {e}");
                let effects = self.life.apply(Input::Undo { cause }).await?;
                return self.undo(lock, &mut monitor, effects).await;
            }
        };
        let pending: Vec<&Migration> = plan
            .migrations
            .migrations
            .iter()
            .filter(|m| status.pending.contains(&m.version))
            .collect();
        let end = migrate::migrate(&self.ctx, &self.life, &lock, &pending).await?;
        self.after_migrate(lock, &mut monitor, end).await
    }

    async fn start_from_the_top(&mut self) -> Phase<Infallible> {
        let pending = self.preflight().await?;
        // Window, gate, lock, baseline, backup: all before anything changes. If the
        // window closes before the migration can start, the run goes back to
        // waiting for the next opening (or stops at the plan's deadline).
        let (lock, mut monitor) = loop {
            if let Some(ready) = self.prepare().await? {
                break ready;
            }
        };
        let pending: Vec<&Migration> = self
            .ctx
            .plan
            .migrations
            .migrations
            .iter()
            .filter(|m| pending.contains(&m.version))
            .collect();
        let end = migrate::migrate(&self.ctx, &self.life, &lock, &pending).await?;
        self.after_migrate(lock, &mut monitor, end).await
    }

    /// Can we reach the target, and is its history what the set expects? Returns
    /// the pending versions.
    async fn preflight(&mut self) -> Phase<Vec<i64>> {
        let plan = self.ctx.plan;
        let client = match self.ctx.dsn.connect("pgshepherd preflight", &[]).await {
            Ok(c) => c,
            Err(e) => {
                let reason = format!(
                    "cannot connect to {}: {}",
                    self.ctx.dsn,
                    crate::pg::server_message(&e)
                );
                return Err(self.stop_on_environment(reason).await);
            }
        };
        // A pooler that shares server sessions is refused now, before the run
        // waits for its window; the lock checks again (see `pg::session`).
        if let Err(e) =
            session::check(&client, self.ctx.dsn, ANSWER_TIMEOUT, "the target URL").await
        {
            let exit_code = if e.is_pooler() { 5 } else { 1 };
            let reason = e.to_string();
            return Err(self.end(Input::Stop { reason, exit_code }).await);
        }
        let status = match history::read(&client, &plan.migrations.name).await {
            Ok(rows) => history::reconcile(&plan.migrations, &rows),
            Err(e) => Err(HistoryError::from(e)),
        };
        // A `restore` rollback that cannot work must be found now, not after the
        // migration, when the target is already changed (issue 10).
        let restore = match plan.rollback.strategy {
            RollbackStrategy::Restore if status.is_ok() => {
                Some(backup::check_restore(&client, self.ctx.dsn).await)
            }
            _ => None,
        };
        // A check that counts other sessions reads 0 when the role cannot see them:
        // found now, not as a soak that passes on missing data (issue 10).
        let blind = visibility::blind_checks(plan);
        let sessions = match blind.is_empty() {
            true => None,
            false => Some(SessionVisibility::read(&client).await),
        };
        // A captured table without a key could not be undone row by row: refused
        // now, before anything changes.
        let keys = match &status {
            Ok(s) => {
                let captured: Vec<&Migration> = plan
                    .migrations
                    .migrations
                    .iter()
                    .filter(|m| s.pending.contains(&m.version) && !m.up.capture.is_empty())
                    .collect();
                capture::check_keys(&client, &captured).await
            }
            Err(_) => Ok(()),
        };
        drop(client);
        let status = match status {
            Ok(s) => s,
            Err(e) => return Err(self.end(history_stop(e)).await),
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
        let restore = match restore {
            None => None,
            Some(Ok(readiness)) => Some(readiness),
            Some(Err(e)) => {
                let reason = format!("cannot tell whether the backup could be restored: {e}");
                return Err(self.stop_on_environment(reason).await);
            }
        };
        match keys {
            Ok(()) => {}
            Err(e @ KeyProblem::NoKey { .. }) => {
                // Exit 2: the migration set asks for what the schema cannot give.
                let input = Input::Stop {
                    reason: e.to_string(),
                    exit_code: 2,
                };
                return Err(self.end(input).await);
            }
            Err(e) => return Err(self.stop_on_environment(e.to_string()).await),
        }
        let blind_refusal = match sessions {
            None => None,
            Some(Ok(v)) => visibility::refusal(&v, &blind),
            Some(Err(e)) => {
                let reason = format!(
                    "cannot tell whether the role sees other sessions: {}",
                    crate::pg::server_message(&e)
                );
                return Err(self.stop_on_environment(reason).await);
            }
        };
        if self.opts.dry_run {
            let ready = dry_run::Readiness {
                restore: restore.as_ref(),
                sessions: blind_refusal.as_deref(),
            };
            let report = dry_run::report(&self.ctx, &pending, &status.applied, ready).await;
            self.ctx
                .events
                .emit(Some(Step::Preflight), EventKind::DryRun { report });
            let reason = "dry run: nothing was changed".to_string();
            return Err(self.end(Input::NothingToDo { reason }).await);
        }
        if pending.is_empty() {
            let at = status
                .applied
                .last()
                .map(|v| format!("V{v}"))
                .unwrap_or_else(|| "no version".into());
            let reason = format!("nothing to apply: the target is already at {at}");
            return Err(self.end(Input::NothingToDo { reason }).await);
        }
        if let Some(reason) = blind_refusal {
            // Exit 5 like the restore readiness below: a privilege missing on the
            // live target is a circumstance, the plan itself is valid.
            return Err(self.stop_before_change(reason).await);
        }
        if let Some(readiness) = &restore {
            if !readiness.ready() {
                // Exit 5, not 2: the plan and its set are valid (`check` passes);
                // what is missing is a privilege on the live target, a
                // circumstance like a held lock or a backup pg_dump cannot read.
                let reason = format!(
                    "rollback strategy restore cannot work for role {}: {}; nothing was changed \
                     (grant what is missing, or use rollback strategy down)",
                    readiness.role,
                    readiness.explain()
                );
                return Err(self.stop_before_change(reason).await);
            }
            for change in &readiness.owner_changes {
                self.ctx.events.progress(&format!("  note: {change}"));
            }
        }
        Ok(pending.iter().map(|m| m.version).collect())
    }

    /// From the end of the migrate step: soak, then succeed, or roll back.
    async fn after_migrate(
        &mut self,
        lock: TargetLock,
        monitor: &mut Monitor,
        end: MigrateEnd,
    ) -> Phase<Infallible> {
        let input = match end {
            MigrateEnd::Done => {
                // The EXPLAIN gate, before the soak: a query that fails it is a
                // breach, fed to the lifecycle like a soak check's.
                if let Some(cause) = self.explain_after().await {
                    let effects = self.life.apply(Input::Breach { cause }).await?;
                    return self.undo(lock, monitor, effects).await;
                }
                self.life.apply(Input::MigrationsDone).await?;
                return self.soak_then_finish(lock, monitor, None).await;
            }
            MigrateEnd::Failed {
                version,
                left_behind,
                cause,
            } => Input::MigrationFailed {
                version,
                left_behind,
                cause,
            },
            MigrateEnd::Aborted => Input::Abort {
                reason: ABORTED_MIGRATING.into(),
            },
        };
        let effects = self.life.apply(input).await?;
        self.undo(lock, monitor, effects).await
    }

    /// The EXPLAIN gate after the change, judged against the plans taken
    /// before it (the run's facts, so a resumed run judges against the same);
    /// the breach cause when a query failed it.
    async fn explain_after(&self) -> Option<String> {
        if self.ctx.plan.explain.is_empty() {
            return None;
        }
        let before = self.ctx.events.facts().explain_before;
        let results = explain::after(&self.ctx, &before).await;
        let cause = explain::breach_cause(&results);
        // Persisted with the next state (soaking or rolling back).
        self.ctx.events.set_fact(|f| f.explain = results);
        cause
    }

    async fn soak_then_finish(
        &mut self,
        lock: TargetLock,
        monitor: &mut Monitor,
        resume: Option<&SoakProgress>,
    ) -> Phase<Infallible> {
        let input = match self.soak(monitor, resume).await? {
            SoakOutcome::Passed => {
                drop(lock);
                return Err(self.end(Input::SoakPassed).await);
            }
            SoakOutcome::Hold(reason) => return Err(self.end(Input::Hold { reason }).await),
            SoakOutcome::Failed(cause) => Input::Breach { cause },
            SoakOutcome::Aborted => Input::Abort {
                reason: SOAK_CUT_SHORT.into(),
            },
        };
        let effects = self.life.apply(input).await?;
        self.undo(lock, monitor, effects).await
    }

    async fn soak(
        &mut self,
        monitor: &mut Monitor,
        resume: Option<&SoakProgress>,
    ) -> Phase<SoakOutcome> {
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
        let result = monitor
            .watch(
                &self.ctx,
                Step::Soak,
                plan.soak.duration,
                plan.soak.interval,
                resume,
                Some(&self.life),
            )
            .await;
        let outcome = match result.end {
            SoakEnd::Passed => SoakOutcome::Passed,
            SoakEnd::Verdict(v @ crate::checks::verdict::Verdict::Hold { .. }) => {
                SoakOutcome::Hold(v.message())
            }
            SoakEnd::Verdict(v) => SoakOutcome::Failed(v.message()),
            SoakEnd::Aborted => SoakOutcome::Aborted,
            SoakEnd::RunEnded(finished) => return Err(finished),
        };
        let reason = match &outcome {
            SoakOutcome::Passed => None,
            SoakOutcome::Hold(r) | SoakOutcome::Failed(r) => Some(r.clone()),
            SoakOutcome::Aborted => Some(SOAK_CUT_SHORT.to_string()),
        };
        self.ctx.emit(
            Step::Soak,
            EventKind::SoakFinished {
                passed: matches!(outcome, SoakOutcome::Passed),
                reason,
                elapsed_s: result.elapsed.as_secs_f64(),
                tallies: result.tallies,
            },
        );
        Ok(outcome)
    }
}

fn rules(plan: &Plan) -> Rules {
    Rules {
        strategy: plan.rollback.strategy,
    }
}

/// The lifecycle's input for a history that cannot be read or does not match
/// the set: the same classes and exit codes at preflight and after the lock.
pub(crate) fn history_stop(e: HistoryError) -> Input {
    let exit_code = match e {
        HistoryError::Query(_) => 1,
        // Drifted or dirty history is a problem with the input: nothing ran.
        _ => 2,
    };
    Input::Stop {
        reason: e.to_string(),
        exit_code,
    }
}
