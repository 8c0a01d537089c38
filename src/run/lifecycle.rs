//! The run lifecycle as one pure function: given the state a run is in and what
//! just happened (an [`Input`]), [`transition`] returns the next state and the
//! [`Effect`]s to perform. No I/O here; the effects layer ([`crate::run::driver`])
//! persists the next state first and only then hands the effects out.
//!
//! Invariants (unit- and property-tested below):
//! - An effect that changes the target (`Apply`, `Undo`) is only ever returned
//!   together with the state that allows it (`migrating`, `rolling_back`), so it is
//!   persisted before the target is touched.
//! - `finished` is final: every input on a finished run is illegal and changes
//!   nothing.
//! - A run in a `before_change` state never needs an undo: no input leads from
//!   there to `rolling_back`, `confirming` or an `Undo` effect; and `stopped`
//!   (which promises "the target is exactly as it was") is only reachable from
//!   those states.
//! - A run in `rehearsing` (its rehearsal on a scratch copy not passed yet) or
//!   `rehearsal_failed` goes nowhere but to the rehearsal's result or to a stop:
//!   it never reaches its window, let alone the target.
//! - An illegal pair is a typed [`IllegalTransition`]; [`next`] turns it into
//!   `needs_human` with the reason, never a line on stderr while the side effect
//!   goes ahead.

use serde::Serialize;

use crate::plan::RollbackStrategy;
use crate::run::event::Outcome;
use crate::run::state::RunState;
use crate::steps::soak::SoakProgress;

/// What the lifecycle needs to know of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub strategy: RollbackStrategy,
}

/// What just happened to a run (or what its runner is about to do and needs
/// the state for).
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Outside the window (or the gate stayed shut until it closed): let go of
    /// the target and wait for the next opening.
    WindowClosed,
    /// The window is open and the low-traffic gate, if any, let the run through.
    WindowOpen,
    /// The target's lock is held and its history is what preflight saw.
    LockTaken,
    /// The plan takes a backup; it is about to start.
    BackupStarting,
    /// About to apply `version` (the first one moves the run into `migrating`).
    MigrationStarting {
        version: i64,
    },
    MigrationApplied {
        version: i64,
    },
    /// A migration or its verify script failed. `left_behind`: the failure left
    /// something of `version` on the target (a verified-and-failed migration, a
    /// partly applied no-transaction one).
    MigrationFailed {
        version: i64,
        left_behind: bool,
        cause: String,
    },
    /// Every pending migration is applied: the soak starts.
    MigrationsDone,
    /// A soak sample tick: its progress is persisted before the next one.
    SoakTick {
        progress: Box<SoakProgress>,
    },
    SoakPassed,
    /// A check's verdict says the change hurts: undo it per the plan. From the
    /// soak, or from the EXPLAIN gate after the last migration (`migrating`).
    Breach {
        cause: String,
    },
    /// The change cannot be carried on (the set no longer matches what the
    /// target has): undo it per the plan.
    Undo {
        cause: String,
    },
    /// A check's verdict says stop and page a human without undoing anything.
    Hold {
        reason: String,
    },
    /// The operator asked the run to stop. Before any change the run stops with
    /// `reason`; once the target changed, the change is undone with `reason` as
    /// the cause; a rollback in progress always runs to its end.
    Abort {
        reason: String,
    },
    /// The run is continued by a new process from its checkpoint.
    Restarted,
    /// After a restart: the target's history says which versions of this run are
    /// on it (`by_run`, complete) and which it left half done (`interrupted`, a
    /// no-transaction migration). The target is the authority, not the checkpoint.
    Reconciled {
        by_run: Vec<i64>,
        interrupted: Vec<i64>,
    },
    UndoStepDone {
        version: i64,
    },
    /// The verified backup was restored: nothing of this run is left.
    Restored,
    RollbackFailed {
        reason: String,
    },
    /// After the rollback, the target's history equals the starting versions.
    BackAtStart,
    NotAtStart {
        now: Vec<i64>,
        starting: Vec<i64>,
    },
    /// The checks stayed healthy for the confirmation period.
    Confirmed,
    ConfirmationFailed {
        why: String,
    },
    /// Done without changing anything (a dry run, nothing pending).
    NothingToDo {
        reason: String,
    },
    /// Stop before any change (deadline, window, lock, backup, preflight); the
    /// exit code says why (CONTRACT: 5 on purpose or by circumstance, 2 invalid
    /// input, 1 environment).
    Stop {
        reason: String,
        exit_code: i32,
    },
    /// The run cannot go on by itself (its bundle no longer decodes, the lock
    /// cannot be taken back, the history cannot be read). Before any change it
    /// stops (exit 2 when `invalid_input`, else 1); after, a human takes over.
    Failure {
        reason: String,
        invalid_input: bool,
    },
    /// Another daemon holds the run now: this process stops touching it.
    LeaseLost,
    /// `rehearsal: required`: up, down and up again on a scratch copy gave
    /// back an identical catalog. The run may be approved (or is queued).
    RehearsalPassed,
    /// The rehearsal found differences or could not be completed.
    RehearsalFailed {
        reason: String,
    },
}

/// What the runner does after the next state is persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    WaitForWindow,
    ReleaseLock,
    TakeLock,
    MeasureBaseline,
    TakeBackup,
    /// Apply one migration: changes the target.
    Apply {
        version: i64,
    },
    Soak,
    /// Undo these versions (apply order; undone newest first) with the plan's
    /// strategy: changes the target. Empty when nothing of the run is left.
    Undo {
        versions: Vec<i64>,
        strategy: RollbackStrategy,
    },
    Confirm,
    /// The target is as it was: prepare again from the top.
    StartOver,
    /// Read the target's history before going on (after a restart).
    Reconcile,
    Finish {
        outcome: Outcome,
        reason: Option<String>,
        exit_code: i32,
    },
    /// Stop driving the run without writing anything.
    Relinquish,
}

impl Effect {
    /// Whether performing this effect changes the target database.
    pub fn changes_target(&self) -> bool {
        matches!(self, Effect::Apply { .. } | Effect::Undo { .. })
    }
}

/// The next state and what to do once it is persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub next: RunState,
    pub effects: Vec<Effect>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal run transition: {input} in state {from}: {advice}")]
pub struct IllegalTransition {
    pub from: &'static str,
    pub input: &'static str,
    pub advice: &'static str,
}

impl Input {
    /// The input's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Input::WindowClosed => "window_closed",
            Input::WindowOpen => "window_open",
            Input::LockTaken => "lock_taken",
            Input::BackupStarting => "backup_starting",
            Input::MigrationStarting { .. } => "migration_starting",
            Input::MigrationApplied { .. } => "migration_applied",
            Input::MigrationFailed { .. } => "migration_failed",
            Input::MigrationsDone => "migrations_done",
            Input::SoakTick { .. } => "soak_tick",
            Input::SoakPassed => "soak_passed",
            Input::Breach { .. } => "breach",
            Input::Undo { .. } => "undo",
            Input::Hold { .. } => "hold",
            Input::Abort { .. } => "abort",
            Input::Restarted => "restarted",
            Input::Reconciled { .. } => "reconciled",
            Input::UndoStepDone { .. } => "undo_step_done",
            Input::Restored => "restored",
            Input::RollbackFailed { .. } => "rollback_failed",
            Input::BackAtStart => "back_at_start",
            Input::NotAtStart { .. } => "not_at_start",
            Input::Confirmed => "confirmed",
            Input::ConfirmationFailed { .. } => "confirmation_failed",
            Input::NothingToDo { .. } => "nothing_to_do",
            Input::Stop { .. } => "stop",
            Input::Failure { .. } => "failure",
            Input::LeaseLost => "lease_lost",
            Input::RehearsalPassed => "rehearsal_passed",
            Input::RehearsalFailed { .. } => "rehearsal_failed",
        }
    }
}

/// The one place that decides a run's transitions. Pure.
pub fn transition(
    state: &RunState,
    input: Input,
    rules: Rules,
) -> Result<Transition, IllegalTransition> {
    let illegal = IllegalTransition {
        from: state.name(),
        input: input.name(),
        advice: advice(state),
    };
    if matches!(state, RunState::Finished { .. }) {
        return Err(illegal);
    }
    decide(state, input, rules).ok_or(illegal)
}

/// [`transition`], with an illegal pair ending the run as `needs_human` with
/// the reason (a finished run stays as it is). What the effects layer applies.
pub fn next(
    state: &RunState,
    input: Input,
    rules: Rules,
) -> (Transition, Option<IllegalTransition>) {
    match transition(state, input, rules) {
        Ok(t) => (t, None),
        Err(e) if matches!(state, RunState::Finished { .. }) => (
            Transition {
                next: state.clone(),
                effects: Vec::new(),
            },
            Some(e),
        ),
        Err(e) => {
            let reason = format!(
                "pgshepherd stopped the run on an internal error ({e}); inspect the target and its events, then finish or undo the change by hand"
            );
            (finish_with(Outcome::NeedsHuman, reason), Some(e))
        }
    }
}

fn finish(outcome: Outcome, reason: String, exit_code: i32) -> Transition {
    Transition {
        next: RunState::Finished {
            outcome,
            reason: Some(reason.clone()),
        },
        effects: vec![Effect::Finish {
            outcome,
            reason: Some(reason),
            exit_code,
        }],
    }
}

fn finish_with(outcome: Outcome, reason: String) -> Transition {
    finish(outcome, reason, outcome.exit_code())
}

/// The table. `None` is an illegal pair.
fn decide(state: &RunState, input: Input, rules: Rules) -> Option<Transition> {
    use Input as I;
    use RunState as S;
    let go = |next: RunState, effects: Vec<Effect>| Some(Transition { next, effects });
    let same = |effects: Vec<Effect>| go(state.clone(), effects);
    // Something went wrong after the change: undo it per the plan, or hold.
    let undo = |versions: Vec<i64>, cause: String| {
        if rules.strategy == RollbackStrategy::Hold {
            return Some(finish_with(
                Outcome::NeedsHuman,
                format!("{cause}; the plan says hold, so nothing was undone"),
            ));
        }
        go(
            S::RollingBack {
                applied: versions.clone(),
                cause,
            },
            vec![Effect::Undo {
                versions,
                strategy: rules.strategy,
            }],
        )
    };

    // A run still to be proved on a scratch copy (or proved wrong) goes
    // nowhere but to its rehearsal's result or to a stop: it never reaches its
    // window, let alone the target.
    if matches!(state, S::Rehearsing | S::RehearsalFailed { .. })
        && !matches!(
            input,
            I::Abort { .. } | I::Stop { .. } | I::Failure { .. } | I::LeaseLost
        )
    {
        return match (state, input) {
            (S::Rehearsing, I::RehearsalPassed) => go(S::Created, Vec::new()),
            (S::Rehearsing, I::RehearsalFailed { reason }) => {
                go(S::RehearsalFailed { reason }, Vec::new())
            }
            _ => None,
        };
    }
    match (state, input) {
        (_, I::LeaseLost) => same(vec![Effect::Relinquish]),
        (S::Created, I::Restarted) => go(S::Created, vec![Effect::StartOver]),
        (s, I::Restarted) if s.before_change() => {
            // Nothing was changed: the whole preparation runs again (an
            // unfinished backup is discarded, never trusted).
            go(S::WaitingForWindow, vec![Effect::StartOver])
        }
        (_, I::Restarted) => same(vec![Effect::TakeLock, Effect::Reconcile]),
        (
            s,
            I::Failure {
                reason,
                invalid_input,
            },
        ) => Some(if s.before_change() {
            finish(Outcome::Stopped, reason, if invalid_input { 2 } else { 1 })
        } else {
            finish_with(Outcome::NeedsHuman, reason)
        }),

        // Before the change: forward, back to waiting, or stop.
        (s, I::Stop { reason, exit_code }) if s.before_change() => {
            Some(finish(Outcome::Stopped, reason, exit_code))
        }
        (s, I::NothingToDo { reason }) if s.before_change() => {
            Some(finish_with(Outcome::Succeeded, reason))
        }
        (s, I::Abort { reason }) if s.before_change() => {
            Some(finish_with(Outcome::Stopped, reason))
        }
        (s, I::WindowClosed) if s.before_change() => {
            let mut effects = Vec::new();
            if matches!(s, S::Locking | S::MeasuringBaseline | S::BackingUp) {
                effects.push(Effect::ReleaseLock);
            }
            effects.push(Effect::WaitForWindow);
            go(S::WaitingForWindow, effects)
        }
        (S::Created | S::WaitingForWindow, I::WindowOpen) => go(S::Locking, vec![Effect::TakeLock]),
        (S::Locking, I::LockTaken) => go(S::MeasuringBaseline, vec![Effect::MeasureBaseline]),
        (S::MeasuringBaseline, I::BackupStarting) => go(S::BackingUp, vec![Effect::TakeBackup]),
        (S::MeasuringBaseline | S::BackingUp, I::MigrationStarting { version }) => go(
            S::Migrating {
                applied: Vec::new(),
            },
            vec![Effect::Apply { version }],
        ),

        // The change.
        (S::Migrating { applied }, I::MigrationStarting { version })
            if !applied.contains(&version) =>
        {
            same(vec![Effect::Apply { version }])
        }
        (S::Migrating { applied }, I::MigrationApplied { version })
            if !applied.contains(&version) =>
        {
            let mut applied = applied.clone();
            applied.push(version);
            go(S::Migrating { applied }, Vec::new())
        }
        (
            S::Migrating { applied },
            I::MigrationFailed {
                version,
                left_behind,
                cause,
            },
        ) => {
            let mut versions = applied.clone();
            if left_behind && !versions.contains(&version) {
                versions.push(version);
            }
            undo(versions, cause)
        }
        (S::Migrating { applied }, I::MigrationsDone) => go(
            S::Soaking {
                applied: applied.clone(),
                progress: None,
            },
            vec![Effect::Soak],
        ),
        (
            S::Migrating { applied } | S::Soaking { applied, .. },
            I::Abort { reason: cause } | I::Undo { cause },
        ) => undo(applied.clone(), cause),
        (S::Soaking { applied, .. }, I::SoakTick { progress }) => go(
            S::Soaking {
                applied: applied.clone(),
                progress: Some(progress),
            },
            Vec::new(),
        ),
        (S::Soaking { .. }, I::SoakPassed) => Some(Transition {
            next: S::Finished {
                outcome: Outcome::Succeeded,
                reason: None,
            },
            effects: vec![
                Effect::ReleaseLock,
                Effect::Finish {
                    outcome: Outcome::Succeeded,
                    reason: None,
                    exit_code: 0,
                },
            ],
        }),
        // A soak check's verdict, or a query failing the EXPLAIN gate right
        // after the last migration (the run is still `migrating` then).
        (S::Migrating { applied } | S::Soaking { applied, .. }, I::Breach { cause }) => {
            undo(applied.clone(), cause)
        }
        (S::Soaking { .. }, I::Hold { reason }) => Some(finish_with(Outcome::NeedsHuman, reason)),

        // After a restart, the target's history decides.
        (
            S::Migrating { .. },
            I::Reconciled {
                by_run,
                interrupted,
            },
        ) => {
            if let Some(first) = interrupted.first() {
                let cause = format!(
                    "pgshepherd stopped during the no-transaction migration V{first}; its effect is unknown"
                );
                let mut versions = by_run;
                versions.extend(&interrupted);
                undo(versions, cause)
            } else if by_run.is_empty() {
                // Stopped before the first migration, or inside a transactional
                // one that died with its connection: the target is as it was.
                // Start over, so that the window, the deadline, the gate, fresh
                // baselines and a fresh backup all apply again.
                go(
                    S::WaitingForWindow,
                    vec![Effect::ReleaseLock, Effect::StartOver],
                )
            } else {
                go(S::Migrating { applied: by_run }, Vec::new())
            }
        }
        (
            S::Soaking { applied, .. },
            I::Reconciled {
                by_run,
                interrupted,
            },
        ) => {
            if &by_run != applied || !interrupted.is_empty() {
                let cause = format!(
                    "the target changed while the run was not watched: this run applied {applied:?}, the target now has {by_run:?} beyond its start"
                );
                undo(by_run, cause)
            } else {
                same(vec![Effect::Soak])
            }
        }
        (
            S::RollingBack { cause, .. },
            I::Reconciled {
                by_run,
                interrupted,
            },
        ) => {
            let mut versions = by_run;
            versions.extend(&interrupted);
            go(
                S::RollingBack {
                    applied: versions.clone(),
                    cause: cause.clone(),
                },
                vec![Effect::Undo {
                    versions,
                    strategy: rules.strategy,
                }],
            )
        }
        (S::Confirming { .. }, I::Reconciled { .. }) => same(vec![Effect::Confirm]),

        // The rollback: always runs to its end once started.
        (S::RollingBack { .. } | S::Confirming { .. }, I::Abort { .. }) => same(Vec::new()),
        (S::RollingBack { applied, cause }, I::UndoStepDone { version })
            if applied.last() == Some(&version) =>
        {
            let mut applied = applied.clone();
            applied.pop();
            go(
                S::RollingBack {
                    applied,
                    cause: cause.clone(),
                },
                Vec::new(),
            )
        }
        (S::RollingBack { cause, .. }, I::Restored) => go(
            S::RollingBack {
                applied: Vec::new(),
                cause: cause.clone(),
            },
            Vec::new(),
        ),
        (S::RollingBack { cause, .. }, I::RollbackFailed { reason }) => Some(finish_with(
            Outcome::NeedsHuman,
            format!("{cause}; rollback failed: {reason}"),
        )),
        (S::RollingBack { cause, .. }, I::BackAtStart) => go(
            S::Confirming {
                cause: cause.clone(),
            },
            vec![Effect::Confirm],
        ),
        (S::Confirming { .. }, I::BackAtStart) => same(vec![Effect::Confirm]),
        (
            S::RollingBack { cause, .. } | S::Confirming { cause },
            I::NotAtStart { now, starting },
        ) => Some(finish_with(
            Outcome::NeedsHuman,
            format!(
                "{cause}; after the rollback the target is at {now:?}, not at its starting {starting:?}"
            ),
        )),
        (S::Confirming { cause }, I::Confirmed) => Some(finish_with(
            Outcome::RolledBack,
            format!("{cause}; rolled back and confirmed healthy"),
        )),
        (S::Confirming { cause }, I::ConfirmationFailed { why }) => Some(finish_with(
            Outcome::NeedsHuman,
            format!(
                "{cause}; rolled back to the starting version but the confirmation failed: {why}"
            ),
        )),
        _ => None,
    }
}

fn advice(from: &RunState) -> &'static str {
    match from {
        RunState::Finished { .. } => "the run is over; start a new run instead",
        RunState::RollingBack { .. } | RunState::Confirming { .. } => {
            "a rollback in progress can only finish or be confirmed; wait for it"
        }
        RunState::Rehearsing => {
            "the run is being rehearsed on a scratch copy; wait for the result, or abort it"
        }
        RunState::RehearsalFailed { .. } => {
            "the run's rehearsal failed; it can only be aborted (fix the change and submit it again)"
        }
        s if s.before_change() => {
            "nothing has been changed yet; the run can only go forward or stop"
        }
        _ => {
            "the target has been changed; the run can only soak, roll back or hand over to a human"
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const DOWN: Rules = Rules {
        strategy: RollbackStrategy::Down,
    };

    fn states() -> Vec<RunState> {
        vec![
            RunState::Created,
            RunState::Rehearsing,
            RunState::RehearsalFailed { reason: "x".into() },
            RunState::WaitingForWindow,
            RunState::Locking,
            RunState::MeasuringBaseline,
            RunState::BackingUp,
            RunState::Migrating { applied: vec![1] },
            RunState::Soaking {
                applied: vec![1],
                progress: None,
            },
            RunState::RollingBack {
                applied: vec![1],
                cause: "breach".into(),
            },
            RunState::Confirming {
                cause: "breach".into(),
            },
            RunState::Finished {
                outcome: Outcome::Succeeded,
                reason: None,
            },
        ]
    }

    fn progress() -> Box<SoakProgress> {
        Box::new(SoakProgress {
            elapsed_ms: 1000,
            samples_taken: 1,
            samples_planned: 10,
            checks: Vec::new(),
        })
    }

    /// One input of every kind.
    fn inputs() -> Vec<Input> {
        let s = || "x".to_string();
        vec![
            Input::WindowClosed,
            Input::WindowOpen,
            Input::LockTaken,
            Input::BackupStarting,
            Input::MigrationStarting { version: 2 },
            Input::MigrationApplied { version: 2 },
            Input::MigrationFailed {
                version: 2,
                left_behind: true,
                cause: s(),
            },
            Input::MigrationsDone,
            Input::SoakTick {
                progress: progress(),
            },
            Input::SoakPassed,
            Input::Breach { cause: s() },
            Input::Undo { cause: s() },
            Input::Hold { reason: s() },
            Input::Abort { reason: s() },
            Input::Restarted,
            Input::Reconciled {
                by_run: vec![1],
                interrupted: vec![],
            },
            Input::UndoStepDone { version: 1 },
            Input::Restored,
            Input::RollbackFailed { reason: s() },
            Input::BackAtStart,
            Input::NotAtStart {
                now: vec![1],
                starting: vec![],
            },
            Input::Confirmed,
            Input::ConfirmationFailed { why: s() },
            Input::NothingToDo { reason: s() },
            Input::Stop {
                reason: s(),
                exit_code: 5,
            },
            Input::Failure {
                reason: s(),
                invalid_input: false,
            },
            Input::LeaseLost,
            Input::RehearsalPassed,
            Input::RehearsalFailed { reason: s() },
        ]
    }

    /// The legal inputs of each state; every other pair is illegal.
    fn legal(state: &str) -> &'static [&'static str] {
        const BEFORE: &[&str] = &[
            "window_closed",
            "abort",
            "restarted",
            "nothing_to_do",
            "stop",
            "failure",
            "lease_lost",
        ];
        match state {
            "created" | "waiting_for_window" => &[
                "window_closed",
                "window_open",
                "abort",
                "restarted",
                "nothing_to_do",
                "stop",
                "failure",
                "lease_lost",
            ],
            "locking" => &[
                "window_closed",
                "lock_taken",
                "abort",
                "restarted",
                "nothing_to_do",
                "stop",
                "failure",
                "lease_lost",
            ],
            "measuring_baseline" => &[
                "window_closed",
                "backup_starting",
                "migration_starting",
                "abort",
                "restarted",
                "nothing_to_do",
                "stop",
                "failure",
                "lease_lost",
            ],
            "backing_up" => &[
                "window_closed",
                "migration_starting",
                "abort",
                "restarted",
                "nothing_to_do",
                "stop",
                "failure",
                "lease_lost",
            ],
            "migrating" => &[
                "migration_starting",
                "migration_applied",
                "migration_failed",
                "migrations_done",
                "breach",
                "undo",
                "abort",
                "restarted",
                "reconciled",
                "failure",
                "lease_lost",
            ],
            "soaking" => &[
                "soak_tick",
                "soak_passed",
                "breach",
                "undo",
                "hold",
                "abort",
                "restarted",
                "reconciled",
                "failure",
                "lease_lost",
            ],
            "rolling_back" => &[
                "abort",
                "restarted",
                "reconciled",
                "undo_step_done",
                "restored",
                "rollback_failed",
                "back_at_start",
                "not_at_start",
                "failure",
                "lease_lost",
            ],
            "confirming" => &[
                "abort",
                "restarted",
                "reconciled",
                "back_at_start",
                "not_at_start",
                "confirmed",
                "confirmation_failed",
                "failure",
                "lease_lost",
            ],
            "rehearsing" => &[
                "abort",
                "stop",
                "failure",
                "lease_lost",
                "rehearsal_passed",
                "rehearsal_failed",
            ],
            "rehearsal_failed" => &["abort", "stop", "failure", "lease_lost"],
            "finished" => &[],
            _ => BEFORE,
        }
    }

    /// Nothing outside `src/run/` names a run state: every transition is
    /// decided here and persisted by the effects layer.
    #[test]
    fn no_code_outside_run_constructs_or_matches_a_run_state() {
        fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    if !path.ends_with("run") {
                        walk(&path, out);
                    }
                } else if path.extension().is_some_and(|e| e == "rs")
                    && std::fs::read_to_string(&path)
                        .unwrap()
                        .contains(concat!("RunState", "::"))
                {
                    out.push(path.display().to_string());
                }
            }
        }
        let mut offenders = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut offenders,
        );
        assert!(
            offenders.is_empty(),
            "RunState used directly in {offenders:?}"
        );
    }

    #[test]
    fn every_pair_of_state_and_input_is_legal_or_illegal_as_the_table_says() {
        let mut checked = 0;
        for state in states() {
            for input in inputs() {
                let name = input.name();
                let result = transition(&state, input, DOWN);
                let expected = legal(state.name()).contains(&name);
                assert_eq!(
                    result.is_ok(),
                    expected,
                    "{name} in state {}: {result:?}",
                    state.name()
                );
                if let Err(e) = result {
                    assert_eq!((e.from, e.input), (state.name(), name));
                    assert!(!e.advice.is_empty());
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 12 * 29);
    }

    fn run(state: RunState, inputs: Vec<Input>, rules: Rules) -> (RunState, Vec<Effect>) {
        let mut state = state;
        let mut effects = Vec::new();
        for input in inputs {
            let t = transition(&state, input.clone(), rules)
                .unwrap_or_else(|e| panic!("{e} ({input:?})"));
            state = t.next;
            effects = t.effects;
        }
        (state, effects)
    }

    #[test]
    fn the_happy_path_migrates_soaks_and_succeeds() {
        let (state, effects) = run(
            RunState::Created,
            vec![
                Input::WindowClosed,
                Input::WindowOpen,
                Input::LockTaken,
                Input::BackupStarting,
                Input::MigrationStarting { version: 1 },
                Input::MigrationApplied { version: 1 },
                Input::MigrationStarting { version: 2 },
                Input::MigrationApplied { version: 2 },
                Input::MigrationsDone,
                Input::SoakTick {
                    progress: progress(),
                },
            ],
            DOWN,
        );
        assert_eq!(
            state,
            RunState::Soaking {
                applied: vec![1, 2],
                progress: Some(progress())
            }
        );
        assert!(effects.is_empty());
        let t = transition(&state, Input::SoakPassed, DOWN).unwrap();
        assert_eq!(t.next.outcome(), Some((Outcome::Succeeded, None)));
        assert!(t.effects.contains(&Effect::ReleaseLock));
    }

    #[test]
    fn a_breach_undoes_what_the_run_applied_and_a_confirmation_ends_it_rolled_back() {
        let soaking = RunState::Soaking {
            applied: vec![1, 2],
            progress: None,
        };
        let (state, effects) = run(
            soaking,
            vec![Input::Breach {
                cause: "p99 breached".into(),
            }],
            DOWN,
        );
        assert_eq!(
            effects,
            vec![Effect::Undo {
                versions: vec![1, 2],
                strategy: RollbackStrategy::Down
            }]
        );
        // Undone newest first; anything else is refused.
        assert!(transition(&state, Input::UndoStepDone { version: 1 }, DOWN).is_err());
        let (state, _) = run(
            state,
            vec![
                Input::UndoStepDone { version: 2 },
                Input::UndoStepDone { version: 1 },
                Input::BackAtStart,
                Input::Confirmed,
            ],
            DOWN,
        );
        assert_eq!(
            state.outcome(),
            Some((
                Outcome::RolledBack,
                Some("p99 breached; rolled back and confirmed healthy")
            ))
        );
    }

    #[test]
    fn a_failed_explain_gate_after_the_migrations_undoes_them_like_a_soak_breach() {
        let migrated = RunState::Migrating {
            applied: vec![1, 2],
        };
        let cause = "EXPLAIN gate: explain `dashboard`: index `idx` is not used after the change";
        let t = transition(
            &migrated,
            Input::Breach {
                cause: cause.into(),
            },
            DOWN,
        )
        .unwrap();
        assert_eq!(
            t.next,
            RunState::RollingBack {
                applied: vec![1, 2],
                cause: cause.into()
            }
        );
        assert_eq!(
            t.effects,
            vec![Effect::Undo {
                versions: vec![1, 2],
                strategy: RollbackStrategy::Down
            }]
        );
        // Before the change there is nothing to judge, and nothing to undo.
        assert!(
            transition(
                &RunState::MeasuringBaseline,
                Input::Breach {
                    cause: cause.into()
                },
                DOWN
            )
            .is_err()
        );
    }

    #[test]
    fn a_hold_plan_never_undoes_and_hands_over_to_a_human() {
        let hold = Rules {
            strategy: RollbackStrategy::Hold,
        };
        let t = transition(
            &RunState::Migrating { applied: vec![1] },
            Input::MigrationFailed {
                version: 2,
                left_behind: false,
                cause: "migration V2 failed".into(),
            },
            hold,
        )
        .unwrap();
        assert_eq!(
            t.next.outcome(),
            Some((
                Outcome::NeedsHuman,
                Some("migration V2 failed; the plan says hold, so nothing was undone")
            ))
        );
        assert!(!t.effects.iter().any(Effect::changes_target));
    }

    #[test]
    fn a_rehearsed_run_starts_only_after_its_rehearsal_passed() {
        // Passed: the run is new, as if submitted without a rehearsal.
        let t = transition(&RunState::Rehearsing, Input::RehearsalPassed, DOWN).unwrap();
        assert_eq!((t.next, t.effects), (RunState::Created, vec![]));
        // Failed: nothing but a stop, which leaves the target as it was.
        let failed = transition(
            &RunState::Rehearsing,
            Input::RehearsalFailed {
                reason: "index `i` still exists after V2's down script".into(),
            },
            DOWN,
        )
        .unwrap()
        .next;
        for input in [Input::WindowOpen, Input::Restarted, Input::RehearsalPassed] {
            let e = transition(&failed, input, DOWN).unwrap_err();
            assert!(e.advice.contains("aborted"), "{e}");
        }
        let t = transition(&failed, Input::Abort { reason: "x".into() }, DOWN).unwrap();
        assert_eq!(t.next.outcome(), Some((Outcome::Stopped, Some("x"))));
        // A run waiting for its rehearsal never reaches its window.
        assert!(transition(&RunState::Rehearsing, Input::WindowOpen, DOWN).is_err());
    }

    #[test]
    fn a_failed_migration_undoes_what_it_left_behind() {
        let t = transition(
            &RunState::Migrating { applied: vec![1] },
            Input::MigrationFailed {
                version: 2,
                left_behind: true,
                cause: "no-transaction V2 failed".into(),
            },
            DOWN,
        )
        .unwrap();
        assert_eq!(
            t.next,
            RunState::RollingBack {
                applied: vec![1, 2],
                cause: "no-transaction V2 failed".into()
            }
        );
    }

    #[test]
    fn stops_keep_their_exit_codes_and_failures_depend_on_whether_anything_changed() {
        let t = transition(
            &RunState::Created,
            Input::Stop {
                reason: "checksum drift".into(),
                exit_code: 2,
            },
            DOWN,
        )
        .unwrap();
        assert!(t.effects.contains(&Effect::Finish {
            outcome: Outcome::Stopped,
            reason: Some("checksum drift".into()),
            exit_code: 2
        }));
        let failure = |invalid_input| Input::Failure {
            reason: "bundle".into(),
            invalid_input,
        };
        let before = transition(&RunState::Locking, failure(true), DOWN).unwrap();
        assert_eq!(before.next.outcome().unwrap().0, Outcome::Stopped);
        assert!(
            before
                .effects
                .iter()
                .any(|e| matches!(e, Effect::Finish { exit_code: 2, .. }))
        );
        let after = transition(
            &RunState::Confirming { cause: "c".into() },
            failure(false),
            DOWN,
        )
        .unwrap();
        assert_eq!(after.next.outcome().unwrap().0, Outcome::NeedsHuman);
        // A stop after the change would lie about the target: refused.
        let err = transition(
            &RunState::Migrating { applied: vec![] },
            Input::Stop {
                reason: "x".into(),
                exit_code: 5,
            },
            DOWN,
        )
        .unwrap_err();
        assert!(err.to_string().contains("has been changed"), "{err}");
    }

    #[test]
    fn a_restart_starts_over_before_the_change_and_reconciles_after_it() {
        for s in [RunState::WaitingForWindow, RunState::BackingUp] {
            let t = transition(&s, Input::Restarted, DOWN).unwrap();
            assert_eq!(t.next, RunState::WaitingForWindow);
            assert_eq!(t.effects, vec![Effect::StartOver]);
        }
        let migrating = RunState::Migrating { applied: vec![1] };
        let t = transition(&migrating, Input::Restarted, DOWN).unwrap();
        assert_eq!(t.effects, vec![Effect::TakeLock, Effect::Reconcile]);
        // Nothing of the run on the target: as it was, so prepare again.
        let t = transition(
            &migrating,
            Input::Reconciled {
                by_run: vec![],
                interrupted: vec![],
            },
            DOWN,
        )
        .unwrap();
        assert_eq!(t.next, RunState::WaitingForWindow);
        // A no-transaction migration left half done: undo it with the rest.
        let t = transition(
            &migrating,
            Input::Reconciled {
                by_run: vec![1],
                interrupted: vec![2],
            },
            DOWN,
        )
        .unwrap();
        assert!(matches!(&t.next, RunState::RollingBack { applied, cause }
            if applied == &vec![1, 2] && cause.contains("no-transaction migration V2")));
        // The target changed while nobody watched the soak: undo what is there.
        let t = transition(
            &RunState::Soaking {
                applied: vec![1],
                progress: None,
            },
            Input::Reconciled {
                by_run: vec![1, 3],
                interrupted: vec![],
            },
            DOWN,
        )
        .unwrap();
        assert!(matches!(&t.next, RunState::RollingBack { applied, .. } if applied == &vec![1, 3]));
    }

    #[test]
    fn an_abort_stops_before_the_change_undoes_after_it_and_never_cuts_a_rollback() {
        let abort = || Input::Abort {
            reason: "aborted".into(),
        };
        let t = transition(&RunState::BackingUp, abort(), DOWN).unwrap();
        assert_eq!(t.next.outcome().unwrap().0, Outcome::Stopped);
        let t = transition(&RunState::Migrating { applied: vec![1] }, abort(), DOWN).unwrap();
        assert!(matches!(t.next, RunState::RollingBack { .. }));
        let rolling = RunState::RollingBack {
            applied: vec![1],
            cause: "c".into(),
        };
        let t = transition(&rolling, abort(), DOWN).unwrap();
        assert_eq!((t.next, t.effects), (rolling, vec![]));
    }

    #[test]
    fn an_illegal_input_ends_an_unfinished_run_as_needs_human_and_leaves_a_finished_one() {
        let (t, illegal) = next(
            &RunState::Soaking {
                applied: vec![1],
                progress: None,
            },
            Input::LockTaken,
            DOWN,
        );
        assert!(illegal.is_some());
        let (outcome, reason) = t.next.outcome().unwrap();
        assert_eq!(outcome, Outcome::NeedsHuman);
        assert!(reason.unwrap().contains("lock_taken in state soaking"));
        let done = RunState::Finished {
            outcome: Outcome::RolledBack,
            reason: None,
        };
        let (t, illegal) = next(&done, Input::Restarted, DOWN);
        assert!(illegal.is_some());
        assert_eq!((t.next, t.effects), (done, vec![]));
    }

    fn any_input() -> impl Strategy<Value = Input> {
        let version = 1i64..4;
        let versions = proptest::collection::vec(1i64..4, 0..3);
        prop_oneof![
            Just(Input::WindowClosed),
            Just(Input::WindowOpen),
            Just(Input::LockTaken),
            Just(Input::BackupStarting),
            version
                .clone()
                .prop_map(|version| Input::MigrationStarting { version }),
            version
                .clone()
                .prop_map(|version| Input::MigrationApplied { version }),
            (version.clone(), any::<bool>()).prop_map(|(version, left_behind)| {
                Input::MigrationFailed {
                    version,
                    left_behind,
                    cause: "failed".into(),
                }
            }),
            Just(Input::MigrationsDone),
            Just(Input::SoakTick {
                progress: progress()
            }),
            Just(Input::SoakPassed),
            Just(Input::Breach {
                cause: "breach".into()
            }),
            Just(Input::Undo {
                cause: "undo".into()
            }),
            Just(Input::Hold {
                reason: "hold".into()
            }),
            Just(Input::Abort {
                reason: "abort".into()
            }),
            Just(Input::Restarted),
            (versions.clone(), versions.clone()).prop_map(|(by_run, interrupted)| {
                Input::Reconciled {
                    by_run,
                    interrupted,
                }
            }),
            version.prop_map(|version| Input::UndoStepDone { version }),
            Just(Input::Restored),
            Just(Input::RollbackFailed {
                reason: "failed".into()
            }),
            Just(Input::BackAtStart),
            versions.prop_map(|now| Input::NotAtStart {
                now,
                starting: vec![]
            }),
            Just(Input::Confirmed),
            Just(Input::ConfirmationFailed { why: "why".into() }),
            Just(Input::NothingToDo {
                reason: "nothing".into()
            }),
            (0i32..6).prop_map(|exit_code| Input::Stop {
                reason: "stop".into(),
                exit_code
            }),
            any::<bool>().prop_map(|invalid_input| Input::Failure {
                reason: "failure".into(),
                invalid_input
            }),
            Just(Input::LeaseLost),
            Just(Input::RehearsalPassed),
            Just(Input::RehearsalFailed {
                reason: "differences".into()
            }),
        ]
    }

    fn any_rules() -> impl Strategy<Value = Rules> {
        prop_oneof![
            Just(RollbackStrategy::Down),
            Just(RollbackStrategy::Restore),
            Just(RollbackStrategy::Hold)
        ]
        .prop_map(|strategy| Rules { strategy })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Random input sequences, illegal ones included, from any state.
        #[test]
        fn the_lifecycle_invariants_hold_for_any_input_sequence(
            start in 0usize..12,
            inputs in proptest::collection::vec(any_input(), 1..40),
            rules in any_rules(),
        ) {
            let mut state = states().swap_remove(start);
            for input in inputs {
                let before = state.clone();
                let (t, illegal) = next(&before, input, rules);
                // A finished run stays finished, and nothing more happens.
                if before.outcome().is_some() {
                    prop_assert_eq!(&t.next, &before);
                    prop_assert!(t.effects.is_empty());
                }
                // A change to the target comes only with the state that allows
                // it, which the effects layer persists before handing it out.
                for e in &t.effects {
                    match e {
                        Effect::Apply { version } => {
                            let allowed = matches!(&t.next, RunState::Migrating { applied } if !applied.contains(version));
                            prop_assert!(allowed, "apply with {:?}", t.next);
                        }
                        Effect::Undo { versions, strategy } => {
                            let allowed = matches!(&t.next, RunState::RollingBack { applied, .. } if applied == versions);
                            prop_assert!(allowed, "undo with {:?}", t.next);
                            prop_assert_eq!(*strategy, rules.strategy);
                        }
                        _ => {}
                    }
                }
                // Before the change, nothing is ever undone.
                if before.before_change() {
                    let after_change = matches!(
                        t.next,
                        RunState::RollingBack { .. } | RunState::Confirming { .. } | RunState::Soaking { .. }
                    );
                    prop_assert!(!after_change, "{:?} from {:?}", t.next, before);
                    let undoes = t.effects.iter().any(|e| matches!(e, Effect::Undo { .. }));
                    prop_assert!(!undoes, "undo from {:?}", before);
                }
                // A run not yet proved on a scratch copy goes only to the
                // rehearsal's result or to a stop, and nothing takes it back.
                let unproved = |s: &RunState| {
                    matches!(s, RunState::Rehearsing | RunState::RehearsalFailed { .. })
                };
                if unproved(&before) && illegal.is_none() {
                    let allowed = unproved(&t.next)
                        || (t.next == RunState::Created && before == RunState::Rehearsing)
                        || t.next.outcome().is_some_and(|(o, _)| o == Outcome::Stopped);
                    prop_assert!(allowed, "{:?} from {:?}", t.next, before);
                    let quiet = t
                        .effects
                        .iter()
                        .all(|e| matches!(e, Effect::Finish { .. } | Effect::Relinquish));
                    prop_assert!(quiet, "{:?} from {:?}", t.effects, before);
                } else if !unproved(&before) {
                    prop_assert!(!unproved(&t.next), "{:?} from {:?}", t.next, before);
                }
                // `stopped` promises an untouched target: only from before the change.
                if let Some((Outcome::Stopped, _)) = t.next.outcome() && before.outcome().is_none() {
                    prop_assert!(before.before_change());
                }
                // The run ends exactly when a Finish effect says so.
                let finishes = t.effects.iter().any(|e| matches!(e, Effect::Finish { .. }));
                prop_assert_eq!(finishes, before.outcome().is_none() && t.next.outcome().is_some());
                // A hold plan never undoes anything.
                if rules.strategy == RollbackStrategy::Hold {
                    let enters = matches!(t.next, RunState::RollingBack { .. })
                        && !matches!(before, RunState::RollingBack { .. });
                    prop_assert!(!enters, "hold plan rolling back from {:?}", before);
                }
                state = t.next;
            }
        }
    }
}
