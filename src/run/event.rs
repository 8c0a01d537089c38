//! Events: every step and every decision of a run, as data. The journal, the
//! `--json` stream and the human progress on stderr all render these.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::migrations::apply::{Retry, ScriptError, ScriptReport};
use crate::pg::lock::Holder;
use crate::plan::RollbackStrategy;

/// The step a run is in when an event happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

/// How a run ended; the process exit code follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    RolledBack,
    NeedsHuman,
    Stopped,
}

impl Outcome {
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

#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
pub struct CheckTally {
    pub check: String,
    pub valid: u32,
    pub inconclusive: u32,
    pub min_samples: u32,
    /// Mean wall time of one sample, the check's own cost.
    pub mean_sample_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
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
        decision: &'static str,
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
    RunFinished {
        outcome: Outcome,
        reason: Option<String>,
        exit_code: i32,
        applied: Vec<i64>,
        backup: Option<String>,
        journal: Option<String>,
    },
}
