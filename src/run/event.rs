//! Events: every step and every decision of a run, as data. The journal, the
//! `--json` stream, the API and the state database carry them serialized; the
//! client reads them back into these same types; the one human rendering
//! ([`crate::run::render`]) and the notification notices are built from them.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::migrations::apply::{Retry, ScriptError, ScriptReport};
use crate::pg::lock::Holder;
use crate::plan::RollbackStrategy;

/// The step a run is in when an event happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Preflight,
    Window,
    Lock,
    Baseline,
    Backup,
    Migrate,
    Soak,
    Rollback,
    Confirm,
    /// The low-traffic gate before migrating.
    Gate,
    /// `pgshepherd undo`.
    Undo,
    /// The EXPLAIN gate: the plan's queries explained before and after the change.
    Explain,
}

/// How a run ended; the process exit code follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    RolledBack,
    NeedsHuman,
    Stopped,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Succeeded,
        Outcome::RolledBack,
        Outcome::NeedsHuman,
        Outcome::Stopped,
    ];

    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Succeeded => 0,
            Outcome::RolledBack => 3,
            Outcome::NeedsHuman => 4,
            Outcome::Stopped => 5,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::RolledBack => "rolled_back",
            Outcome::NeedsHuman => "needs_human",
            Outcome::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(serialize_with = "rfc3339")]
    pub ts: DateTime<Utc>,
    pub run_id: String,
    pub step: Option<Step>,
    #[serde(flatten)]
    pub kind: EventKind,
}

fn rfc3339<S: serde::Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&ts.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// One check's summary at the start of a soak.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckPlan {
    pub check: String,
    pub source: String,
    pub thresholds: crate::plan::Thresholds,
    pub baseline: Option<f64>,
    pub consecutive: u32,
    pub min_samples: u32,
    pub on_inconclusive: crate::plan::InconclusivePolicy,
    pub max_inconclusive: u32,
}

/// Samples taken of one check during a soak or confirmation period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckTally {
    pub check: String,
    pub valid: u32,
    pub inconclusive: u32,
    pub min_samples: u32,
    /// Mean wall time of one sample, the check's own cost.
    pub mean_sample_ms: f64,
}

/// What the run does about a check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Undo the change per the plan's strategy.
    RollBack,
    /// Stop without undoing anything and page a human.
    HoldForHuman,
    /// The confirmation after a rollback found the target still unhealthy.
    RollbackUnhealthy,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::RollBack => "roll_back",
            Decision::HoldForHuman => "hold_for_human",
            Decision::RollbackUnhealthy => "rollback_unhealthy",
        }
    }
}

/// When the EXPLAIN gate explained a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExplainPhase {
    /// With the baselines, before the backup and the change.
    Before,
    /// Right after the last migration, before the soak.
    After,
}

impl ExplainPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            ExplainPhase::Before => "before",
            ExplainPhase::After => "after",
        }
    }
}

/// The snapshot a restore took of the database before replacing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSnapshot {
    pub path: String,
    pub manifest: String,
    pub sha256: String,
    pub size_bytes: u64,
    /// Dump and read-back verification.
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    RunStarted {
        plan: String,
        plan_name: String,
        target: String,
        database: String,
        migration_set: String,
        applied: Vec<i64>,
        pending: Vec<String>,
        rollback_strategy: RollbackStrategy,
        journal: Option<String>,
        dry_run: bool,
    },
    WaitingForWindow {
        cron: String,
        timezone: String,
        opens_at: String,
    },
    WindowOpen {
        closes_at: Option<String>,
    },
    LockBusy {
        holder: Holder,
    },
    LockAcquired {
        waited_ms: u64,
    },
    BaselineMeasured {
        check: String,
        baseline: Option<f64>,
        valid_samples: u32,
        samples: Vec<serde_json::Value>,
    },
    BackupStarted {
        format: crate::plan::BackupFormat,
        compression: u8,
        directory: String,
    },
    BackupWritten {
        path: String,
        size_bytes: u64,
        sha256: String,
        duration_ms: u64,
    },
    BackupVerified {
        path: String,
        manifest: String,
        sha256: String,
        tables: usize,
        duration_ms: u64,
    },
    BackupFailed {
        reason: String,
    },
    BackupPruned {
        removed: Vec<String>,
    },
    MigrationStarted {
        version: i64,
        file: String,
        checksum: String,
        transactional: bool,
    },
    MigrationRetry {
        version: i64,
        #[serde(flatten)]
        retry: Retry,
    },
    MigrationApplied {
        version: i64,
        #[serde(flatten)]
        report: ScriptReport,
        down_file: Option<String>,
    },
    MigrationFailed {
        version: i64,
        #[serde(flatten)]
        error: ScriptError,
    },
    VerifyPassed {
        version: i64,
        file: String,
        duration_ms: u64,
    },
    VerifyFailed {
        version: i64,
        #[serde(flatten)]
        error: ScriptError,
    },
    SoakStarted {
        duration_s: f64,
        interval_s: f64,
        checks: Vec<CheckPlan>,
    },
    /// One sample of one check and what the verdict rules made of it.
    CheckSample {
        elapsed_s: f64,
        sample_ms: f64,
        /// How long after its scheduled instant the tick's sampling began (timer
        /// and scheduling delay); soak and confirmation samples only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        late_ms: Option<f64>,
        #[serde(flatten)]
        assessment: crate::checks::verdict::Assessment,
    },
    /// A check's verdict fired: the decision and everything that led to it.
    CheckVerdict {
        check: String,
        source: String,
        message: String,
        decision: Decision,
        verdict: crate::checks::verdict::Verdict,
    },
    SoakFinished {
        passed: bool,
        reason: Option<String>,
        elapsed_s: f64,
        tallies: Vec<CheckTally>,
    },
    RollbackStarted {
        strategy: RollbackStrategy,
        cause: String,
        undo: Vec<i64>,
    },
    RollbackRetry {
        version: i64,
        #[serde(flatten)]
        retry: Retry,
    },
    RollbackStepDone {
        version: i64,
        #[serde(flatten)]
        report: ScriptReport,
    },
    BackupRestored {
        path: String,
        sha256: String,
        duration_ms: u64,
        /// Extensions the restore created again, now owned by the target's role.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        extension_owner_changes: Vec<crate::steps::backup::ExtensionOwnerChange>,
        /// The verified snapshot of the database taken just before the restore,
        /// kept next to the backup: the rows the restore discarded are in it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot: Option<RestoreSnapshot>,
        /// Rows written since the backup that the restore discarded, per table
        /// (tables with none left out); `None` when the backup's manifest has no
        /// write counters (written by an older pgshepherd). Precision: docs/runs.md.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        discarded_writes: Option<Vec<crate::steps::backup::DiscardedWrites>>,
        /// Sequences set forward again so that no id handed out before the
        /// restore is handed out twice.
        #[serde(default)]
        sequences_advanced: Vec<crate::steps::backup::SequenceAdvance>,
        /// How long writers were blocked by the restore (its exclusive locks).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stall_ms: Option<u64>,
        /// ANALYZE after the restore; `None` when it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        analyze_ms: Option<u64>,
    },
    RollbackFinished {
        strategy: RollbackStrategy,
        applied: Vec<i64>,
        at_starting_version: bool,
    },
    RollbackFailed {
        reason: String,
    },
    DryRun {
        report: serde_json::Value,
    },
    /// The daemon accepted a submission.
    RunSubmitted {
        plan_name: String,
        target: String,
        submitted_by: String,
        bundle_sha256: String,
        requires_approval: bool,
        /// `rehearsal: required`: the daemon rehearses the run on a scratch
        /// copy before it may be approved (or queued).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rehearsal_required: bool,
    },
    RunApproved {
        approved_by: String,
    },
    AbortRequested {
        requested_by: String,
    },
    Acknowledged {
        acked_by: String,
    },
    /// A daemon took the run (first claim, restart or takeover) and continues it
    /// from its last checkpoint.
    RunResumed {
        owner: String,
        epoch: i64,
        from_state: String,
        detail: String,
    },
    /// The low-traffic gate: waiting for `consecutive` healthy samples of `check`.
    GateStarted {
        check: crate::run::event::CheckPlan,
        consecutive: u32,
        interval_s: f64,
    },
    GateOpen {
        samples: u32,
        waited_s: f64,
    },
    GateClosed {
        reason: String,
    },
    /// One query of the EXPLAIN gate explained: its plan in short form, or why
    /// there is none.
    ExplainMeasured {
        name: String,
        phase: ExplainPhase,
        analyze: bool,
        plan: Option<crate::checks::explain::PlanShape>,
        error: Option<String>,
        duration_ms: u64,
    },
    /// The EXPLAIN gate's verdict on one query: both plans, the measured costs
    /// (and times), the limits, and every rule that failed. `decision` is set
    /// when the query failed the gate.
    ExplainChecked {
        #[serde(flatten)]
        result: crate::checks::explain::ExplainResult,
        decision: Option<Decision>,
    },
    /// An undo was asked for through the daemon (`POST /v1/runs/{id}/undo`).
    UndoRequested {
        /// The undo's id in the run's view (`undos[].id`).
        request: i64,
        requested_by: String,
        /// As asked; empty for every captured version.
        versions: Vec<i64>,
        mode: crate::undo::revert::Mode,
        predicate: Option<String>,
        dry_run: bool,
        /// It waits for someone other than `requested_by` to approve it.
        requires_approval: bool,
    },
    UndoApproved {
        request: i64,
        approved_by: String,
    },
    /// `pgshepherd undo`: giving back the rows the run's migrations changed.
    UndoStarted {
        database: String,
        /// As asked; empty for every captured version.
        versions: Vec<i64>,
        mode: crate::undo::revert::Mode,
        predicate: Option<String>,
        dry_run: bool,
        /// Through the daemon: the undo's id in the run's view.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<i64>,
        /// Through the daemon: 1, or more when a daemon died during an
        /// earlier attempt (which changed nothing: the undo is one transaction).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
    },
    UndoFinished {
        /// `reverted` (all of it), `conflicts_left`, `refused` (nothing changed),
        /// `failed` (nothing changed), `cancelled` (through the daemon, before
        /// it started).
        outcome: String,
        exit_code: i32,
        dry_run: bool,
        mode: crate::undo::revert::Mode,
        versions: Vec<i64>,
        tables: std::collections::BTreeMap<String, crate::undo::revert::Counts>,
        conflicts: u64,
        conflicts_file: Option<String>,
        undo_id: Option<i64>,
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
    },
    /// The daemon started a run's rehearsal (`rehearsal: required`) in the
    /// scratch database `scratch` (a new one per attempt; `attempt` > 1 when a
    /// daemon stopped during an earlier one, which is redone from the start).
    RehearsalStarted {
        scratch: String,
        attempt: u32,
    },
    /// `pgshepherd rehearse`: the plan's pending migrations were run up and
    /// down on a scratch copy and its catalog compared with the original.
    RehearsalFinished {
        /// No difference, and every step (up, down, up again) succeeded.
        passed: bool,
        /// What the down scripts did not give back (see `rehearse::diff`).
        differences: Vec<crate::rehearse::Difference>,
        /// Why the rehearsal did not get to a comparison, or what failed after
        /// it (a migration that does not re-apply).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Through the daemon: whether the run now waits for someone's
        /// approval (a passed rehearsal), absent from `pgshepherd rehearse`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requires_approval: Option<bool>,
    },
    RunFinished {
        outcome: Outcome,
        reason: Option<String>,
        exit_code: i32,
        applied: Vec<i64>,
        backup: Option<String>,
        journal: Option<String>,
    },
}

impl EventKind {
    /// The event's name, as its `event` field carries it.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::RunStarted { .. } => "run_started",
            EventKind::WaitingForWindow { .. } => "waiting_for_window",
            EventKind::WindowOpen { .. } => "window_open",
            EventKind::LockBusy { .. } => "lock_busy",
            EventKind::LockAcquired { .. } => "lock_acquired",
            EventKind::BaselineMeasured { .. } => "baseline_measured",
            EventKind::BackupStarted { .. } => "backup_started",
            EventKind::BackupWritten { .. } => "backup_written",
            EventKind::BackupVerified { .. } => "backup_verified",
            EventKind::BackupFailed { .. } => "backup_failed",
            EventKind::BackupPruned { .. } => "backup_pruned",
            EventKind::MigrationStarted { .. } => "migration_started",
            EventKind::MigrationRetry { .. } => "migration_retry",
            EventKind::MigrationApplied { .. } => "migration_applied",
            EventKind::MigrationFailed { .. } => "migration_failed",
            EventKind::VerifyPassed { .. } => "verify_passed",
            EventKind::VerifyFailed { .. } => "verify_failed",
            EventKind::SoakStarted { .. } => "soak_started",
            EventKind::CheckSample { .. } => "check_sample",
            EventKind::CheckVerdict { .. } => "check_verdict",
            EventKind::SoakFinished { .. } => "soak_finished",
            EventKind::RollbackStarted { .. } => "rollback_started",
            EventKind::RollbackRetry { .. } => "rollback_retry",
            EventKind::RollbackStepDone { .. } => "rollback_step_done",
            EventKind::BackupRestored { .. } => "backup_restored",
            EventKind::RollbackFinished { .. } => "rollback_finished",
            EventKind::RollbackFailed { .. } => "rollback_failed",
            EventKind::DryRun { .. } => "dry_run",
            EventKind::RunSubmitted { .. } => "run_submitted",
            EventKind::RunApproved { .. } => "run_approved",
            EventKind::AbortRequested { .. } => "abort_requested",
            EventKind::Acknowledged { .. } => "acknowledged",
            EventKind::RunResumed { .. } => "run_resumed",
            EventKind::GateStarted { .. } => "gate_started",
            EventKind::GateOpen { .. } => "gate_open",
            EventKind::GateClosed { .. } => "gate_closed",
            EventKind::ExplainMeasured { .. } => "explain_measured",
            EventKind::ExplainChecked { .. } => "explain_checked",
            EventKind::UndoRequested { .. } => "undo_requested",
            EventKind::UndoApproved { .. } => "undo_approved",
            EventKind::UndoStarted { .. } => "undo_started",
            EventKind::UndoFinished { .. } => "undo_finished",
            EventKind::RehearsalStarted { .. } => "rehearsal_started",
            EventKind::RehearsalFinished { .. } => "rehearsal_finished",
            EventKind::RunFinished { .. } => "run_finished",
        }
    }
}

/// One event of every kind, for tests of everything that reads events.
#[cfg(test)]
#[path = "event_samples.rs"]
pub(crate) mod samples;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::samples;

    #[test]
    fn every_kind_has_a_sample_and_its_name_is_its_event_field() {
        let all: BTreeSet<String> = samples::all_names().into_iter().collect();
        assert!(all.len() > 30 && all.contains("run_finished"), "{all:?}");
        let sampled: BTreeSet<String> = samples::kinds()
            .iter()
            .map(|k| {
                let v = serde_json::to_value(k).unwrap();
                assert_eq!(v["event"], k.name());
                k.name().to_string()
            })
            .collect();
        assert_eq!(sampled, all, "add a sample of each new event kind");
    }

    /// What the client reads back is what was written: a renamed or retyped
    /// field fails here instead of printing blank.
    #[test]
    fn every_event_reads_back_as_written() {
        for event in samples::events() {
            let mut json = serde_json::to_value(&event).unwrap();
            // What the API adds to a stored event.
            json["seq"] = 7.into();
            let back: super::Event = serde_json::from_value(json.clone())
                .unwrap_or_else(|e| panic!("{}: {e}\n{json}", event.kind.name()));
            assert_eq!(back, event);
        }
    }
}
