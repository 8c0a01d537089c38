//! One event of every kind, for tests of everything that reads events.

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

fn plan_shape(index: Option<&str>, cost: f64) -> crate::checks::explain::PlanShape {
    let scan = match index {
        Some(i) => {
            serde_json::json!({"Node Type": "Bitmap Heap Scan", "Relation Name": "jobs", "Total Cost": cost - 1.0,
            "Plans": [{"Node Type": "Bitmap Index Scan", "Index Name": i, "Total Cost": 4.3}]})
        }
        None => {
            serde_json::json!({"Node Type": "Seq Scan", "Relation Name": "jobs", "Total Cost": cost - 1.0})
        }
    };
    let doc = serde_json::json!([{"Plan": {"Node Type": "Aggregate", "Total Cost": cost, "Plans": [scan]},
        "Execution Time": cost / 100.0}]);
    crate::checks::explain::PlanShape::from_explain(&doc).expect("a sample plan")
}

/// A failed EXPLAIN gate: the expected index is not used after the change.
fn explain_result() -> crate::checks::explain::ExplainResult {
    use crate::checks::explain::{Measurement, judge};
    let query = crate::plan::ExplainQuery {
        name: "dashboard".into(),
        sql: "SELECT count(*) FROM jobs WHERE reason = 'timeout'".into(),
        expect_index: Some("idx_jobs_reason".into()),
        max_cost_ratio: Some(1.5),
        analyze: true,
        max_time_ratio: None,
        timeout: std::time::Duration::from_secs(30),
    };
    let m = |cost| Measurement {
        name: "dashboard".into(),
        plan: Some(plan_shape(None, cost)),
        error: None,
    };
    judge(&query, m(550.0), m(560.0))
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
            rehearsal_required: true,
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
        ExplainMeasured {
            name: s("dashboard"),
            phase: ExplainPhase::Before,
            analyze: true,
            plan: Some(plan_shape(Some("idx_jobs_reason"), 12.5)),
            error: None,
            duration_ms: 3,
        },
        ExplainChecked {
            result: explain_result(),
            decision: Some(Decision::RollBack),
        },
        UndoRequested {
            request: 3,
            requested_by: s("alice"),
            versions: vec![2],
            mode: crate::undo::revert::Mode::SkipConflicts,
            predicate: Some(s("table_name = 'public.users'")),
            dry_run: false,
            requires_approval: true,
        },
        UndoApproved {
            request: 3,
            approved_by: s("bob"),
        },
        UndoStarted {
            database: s("postgres://app@db/jobs"),
            versions: vec![2],
            mode: crate::undo::revert::Mode::SkipConflicts,
            predicate: Some(s("table_name = 'public.users'")),
            dry_run: false,
            request: Some(3),
            attempt: Some(1),
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
            request: Some(3),
            attempt: Some(1),
        },
        RehearsalFinished {
            passed: false,
            differences: vec![
                crate::rehearse::Difference {
                    kind: crate::rehearse::ObjectKind::Index,
                    object: s("idx_rental_return_date"),
                    change: crate::rehearse::Change::Left,
                    changed_by: Some(s("V2__return_date_index")),
                },
                crate::rehearse::Difference {
                    kind: crate::rehearse::ObjectKind::Column,
                    object: s("customer.loyalty_tier"),
                    change: crate::rehearse::Change::Changed {
                        attribute: s("default"),
                        before: Some(s("'bronze'::text")),
                        after: None,
                    },
                    changed_by: None,
                },
            ],
            reason: None,
            requires_approval: Some(true),
        },
        RehearsalStarted {
            scratch: s("rental_rehearsal_0123456789ab"),
            attempt: 1,
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
