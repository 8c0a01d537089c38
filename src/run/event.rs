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
    /// `pgshepherd undo`: giving back the rows the run's migrations changed.
    UndoStarted {
        database: String,
        /// As asked; empty for every captured version.
        versions: Vec<i64>,
        mode: crate::undo::revert::Mode,
        predicate: Option<String>,
        dry_run: bool,
    },
    UndoFinished {
        /// `reverted` (all of it), `conflicts_left`, `refused` (nothing changed),
        /// `failed` (nothing changed).
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
            EventKind::UndoStarted { .. } => "undo_started",
            EventKind::UndoFinished { .. } => "undo_finished",
            EventKind::RunFinished { .. } => "run_finished",
        }
    }
}

/// One event of every kind, for tests of everything that reads events.
#[cfg(test)]
pub(crate) mod samples {
    use super::*;
    use crate::checks::verdict::{Assessment, Bound, Counts, Observation, Rule, Verdict};
    use crate::migrations::apply::{Retry, ScriptError, ScriptReport};
    use crate::plan::{BackupFormat, InconclusivePolicy, Thresholds};

    /// Every event name, read off the type itself: serde lists them when a
    /// name is unknown. A new kind shows up here without anyone adding it.
    pub fn all_names() -> Vec<String> {
        let err = serde_json::from_value::<EventKind>(serde_json::json!({"event": "?"}))
            .unwrap_err()
            .to_string();
        let list = err
            .split("expected one of ")
            .nth(1)
            .expect("serde lists the variants");
        list.split(", ")
            .map(|n| n.trim_matches(|c: char| c == '`' || !c.is_ascii() || c.is_whitespace()))
            .map(|n| n.split('`').next().unwrap_or(n).to_string())
            .collect()
    }

    fn breach() -> Verdict {
        Verdict::Breach {
            check: "p99_ms".into(),
            rule: Rule::Max,
            threshold: Some("max 250".into()),
            limit: Some(250.0),
            value: Some(312.0),
            baseline: Some(180.0),
            in_a_row: 3,
            needed: 3,
            reason: None,
        }
    }

    fn assessment() -> Assessment {
        let bound = Bound {
            rule: Rule::Max,
            limit: 250.0,
            text: "max 250".into(),
        };
        Assessment {
            check: "p99_ms".into(),
            observation: Observation::Value(312.0),
            value: Some(312.0),
            valid: true,
            breaching: true,
            reason: None,
            crossed: vec![bound.clone()],
            thresholds: "max 250".into(),
            bounds: vec![bound],
            baseline: Some(180.0),
            counts: Counts {
                total_samples: 5,
                valid_samples: 5,
                inconclusive_samples: 0,
                breaches_in_a_row: 3,
                inconclusive_in_a_row: 0,
            },
            verdict: Some(breach()),
        }
    }

    fn check_plan() -> CheckPlan {
        CheckPlan {
            check: "p99_ms".into(),
            source: "sql: SELECT p99 FROM latency".into(),
            thresholds: Thresholds {
                max: Some(250.0),
                ..Thresholds::default()
            },
            baseline: Some(180.0),
            consecutive: 3,
            min_samples: 10,
            on_inconclusive: InconclusivePolicy::Breach,
            max_inconclusive: 2,
        }
    }

    fn report() -> ScriptReport {
        ScriptReport {
            file: "V2__index.sql".into(),
            checksum: "abc".into(),
            transactional: false,
            duration_ms: 120,
            attempts: 2,
            cleaned_invalid_indexes: vec!["idx_x".into()],
            writes: Vec::new(),
        }
    }

    fn script_error() -> ScriptError {
        ScriptError {
            file: "V2__index.sql".into(),
            message: "canceling statement due to lock timeout".into(),
            sqlstate: Some("55P03".into()),
            attempts: 3,
            statements_done: 0,
            cleaned_invalid_indexes: vec![],
            invalid_indexes_left: vec![],
        }
    }

    fn retry() -> Retry {
        Retry {
            attempt: 0,
            of: 3,
            wait_ms: 200,
            error: "lock timeout".into(),
        }
    }

    pub fn kinds() -> Vec<EventKind> {
        use EventKind::*;
        let s = |x: &str| x.to_string();
        vec![
            RunStarted {
                plan: s("plans/p.yaml"),
                plan_name: s("p"),
                target: s("jobs"),
                database: s("postgres://app@db/jobs"),
                migration_set: s("jobs"),
                applied: vec![1],
                pending: vec![s("V2__index")],
                rollback_strategy: RollbackStrategy::Down,
                journal: Some(s("/var/lib/j.jsonl")),
                dry_run: false,
            },
            WaitingForWindow {
                cron: s("0 2 * * *"),
                timezone: s("Europe/Berlin"),
                opens_at: s("2026-12-07T02:00:00+01:00"),
            },
            WindowOpen {
                closes_at: Some(s("2026-12-07T03:00:00Z")),
            },
            LockBusy {
                holder: Holder {
                    pid: 42,
                    application_name: s("psql"),
                    client_addr: None,
                    since: None,
                },
            },
            LockAcquired { waited_ms: 3 },
            BaselineMeasured {
                check: s("p99_ms"),
                baseline: Some(180.0),
                valid_samples: 3,
                samples: vec![serde_json::json!({"value": 180.0})],
            },
            BackupStarted {
                format: BackupFormat::Custom,
                compression: 6,
                directory: s("/backups"),
            },
            BackupWritten {
                path: s("/backups/a.dump"),
                size_bytes: 1_200_000,
                sha256: s("0123456789abcdef"),
                duration_ms: 1500,
            },
            BackupVerified {
                path: s("/backups/a.dump"),
                manifest: s("/backups/a.json"),
                sha256: s("0123456789abcdef"),
                tables: 4,
                duration_ms: 900,
            },
            BackupFailed {
                reason: s("pg_dump exited 1"),
            },
            BackupPruned {
                removed: vec![s("/backups/old.dump")],
            },
            MigrationStarted {
                version: 2,
                file: s("V2__index.sql"),
                checksum: s("abc"),
                transactional: false,
            },
            MigrationRetry {
                version: 2,
                retry: retry(),
            },
            MigrationApplied {
                version: 2,
                report: report(),
                down_file: Some(s("V2__index.down.sql")),
            },
            MigrationFailed {
                version: 2,
                error: script_error(),
            },
            VerifyPassed {
                version: 2,
                file: s("V2__index.verify.sql"),
                duration_ms: 4,
            },
            VerifyFailed {
                version: 2,
                error: script_error(),
            },
            SoakStarted {
                duration_s: 3600.0,
                interval_s: 10.0,
                checks: vec![check_plan()],
            },
            CheckSample {
                elapsed_s: 30.0,
                sample_ms: 0.8,
                late_ms: Some(1.5),
                assessment: assessment(),
            },
            CheckVerdict {
                check: s("p99_ms"),
                source: s("sql: SELECT p99 FROM latency"),
                message: breach().message(),
                decision: Decision::RollBack,
                verdict: breach(),
            },
            SoakFinished {
                passed: false,
                reason: Some(breach().message()),
                elapsed_s: 30.0,
                tallies: vec![CheckTally {
                    check: s("p99_ms"),
                    valid: 5,
                    inconclusive: 0,
                    min_samples: 10,
                    mean_sample_ms: 0.8,
                }],
            },
            RollbackStarted {
                strategy: RollbackStrategy::Down,
                cause: breach().message(),
                undo: vec![2],
            },
            RollbackRetry {
                version: 2,
                retry: retry(),
            },
            RollbackStepDone {
                version: 2,
                report: report(),
            },
            BackupRestored {
                path: s("/backups/a.dump"),
                sha256: s("0123456789abcdef"),
                duration_ms: 2000,
                extension_owner_changes: Vec::new(),
                snapshot: Some(RestoreSnapshot {
                    path: s("/backups/a.pre-restore-20260301T101112.000Z.dump"),
                    manifest: s("/backups/a.pre-restore-20260301T101112.000Z.manifest.json"),
                    sha256: s("fedcba9876543210"),
                    size_bytes: 1_300_000,
                    duration_ms: 1800,
                }),
                discarded_writes: Some(vec![crate::steps::backup::DiscardedWrites {
                    writes: crate::steps::backup::TableWrites {
                        table: s("public.rental"),
                        inserted: 67,
                        updated: 3,
                        deleted: 0,
                    },
                    after_snapshot: 2,
                }]),
                sequences_advanced: vec![crate::steps::backup::SequenceAdvance {
                    sequence: s("public.rental_rental_id_seq"),
                    restored: Some(16049),
                    set_to: 16116,
                }],
                stall_ms: Some(85),
                analyze_ms: Some(40),
            },
            RollbackFinished {
                strategy: RollbackStrategy::Down,
                applied: vec![1],
                at_starting_version: true,
            },
            RollbackFailed {
                reason: s("down script of V2 failed"),
            },
            DryRun {
                report: serde_json::json!({"pending": []}),
            },
            RunSubmitted {
                plan_name: s("p"),
                target: s("jobs"),
                submitted_by: s("alice"),
                bundle_sha256: s("abc"),
                requires_approval: true,
            },
            RunApproved {
                approved_by: s("bob"),
            },
            AbortRequested {
                requested_by: s("bob"),
            },
            Acknowledged {
                acked_by: s("carol"),
            },
            RunResumed {
                owner: s("node-b"),
                epoch: 2,
                from_state: s("soaking"),
                detail: s("taken over from node-a; continuing from the last checkpoint"),
            },
            GateStarted {
                check: check_plan(),
                consecutive: 3,
                interval_s: 1.0,
            },
            GateOpen {
                samples: 3,
                waited_s: 3.2,
            },
            GateClosed {
                reason: s("the window closed"),
            },
            UndoStarted {
                database: s("postgres://app@db/jobs"),
                versions: vec![2],
                mode: crate::undo::revert::Mode::SkipConflicts,
                predicate: Some(s("table_name = 'public.users'")),
                dry_run: false,
            },
            UndoFinished {
                outcome: s("conflicts_left"),
                exit_code: 4,
                dry_run: false,
                mode: crate::undo::revert::Mode::SkipConflicts,
                versions: vec![2],
                tables: [(
                    s("public.users"),
                    crate::undo::revert::Counts {
                        reverted: 40,
                        conflicts: 2,
                        already_gone: 1,
                        filtered_out: 960,
                        already_undone: 0,
                    },
                )]
                .into(),
                conflicts: 2,
                conflicts_file: Some(s("pgshepherd-undo-r1-7.conflicts.jsonl")),
                undo_id: Some(7),
                reason: Some(s("2 rows changed by users since were left as they are")),
            },
            RunFinished {
                outcome: Outcome::RolledBack,
                reason: Some(s("p99 breached; rolled back and confirmed healthy")),
                exit_code: 3,
                applied: vec![2],
                backup: Some(s("/backups/a.dump")),
                journal: None,
            },
        ]
    }

    pub fn events() -> Vec<Event> {
        kinds()
            .into_iter()
            .map(|kind| Event {
                ts: DateTime::parse_from_rfc3339("2026-03-01T10:11:12.345Z")
                    .unwrap()
                    .with_timezone(&Utc),
                run_id: "0123456789ab".into(),
                step: Some(Step::Soak),
                kind,
            })
            .collect()
    }
}

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
