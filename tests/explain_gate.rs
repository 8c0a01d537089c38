//! The EXPLAIN gate end to end: `pgshepherd run` against a real PostgreSQL,
//! with the demo's table and dashboard query. The gate explains the query with
//! the baselines and right after the migration; an index the query does not
//! use, or a plan that got dearer, rolls the change back before the soak.
//! `pgshepherd check` refuses what the gate must not run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestDb;
use serde_json::Value;

/// The demo's scenario, smaller: cancelled jobs with their reasons.
const SEED: &str = "CREATE TABLE job_execution_summaries (id bigserial PRIMARY KEY, status text NOT NULL, \
                    results jsonb NOT NULL DEFAULT '{}'); \
                    INSERT INTO job_execution_summaries (status, results) \
                    SELECT CASE WHEN g % 5 = 0 THEN 'cancelled' ELSE 'succeeded' END, \
                           CASE WHEN g % 5 = 0 THEN jsonb_build_object('cancel_reason', \
                                (ARRAY['user_request', 'timeout', 'superseded', 'quota_exceeded'])[1 + (g / 5) % 4]) \
                                ELSE '{}' END \
                      FROM generate_series(1, 20000) g; \
                    ANALYZE job_execution_summaries;";

const DASHBOARD: &str = "SELECT count(*) FROM job_execution_summaries WHERE status = 'cancelled' AND results ->> 'cancel_reason' = 'timeout'";

/// The index the dashboard really uses (the demo's migration, in a transaction).
const GOOD_INDEX: (&str, &str) = (
    "CREATE INDEX idx_job_summaries_cancel_reason ON job_execution_summaries ((results ->> 'cancel_reason'));\n\
     ANALYZE job_execution_summaries;\n",
    "DROP INDEX idx_job_summaries_cancel_reason;\n",
);

struct Run {
    code: i32,
    events: Vec<Value>,
    stderr: String,
}

impl Run {
    fn named(&self, name: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == name).collect()
    }

    fn one(&self, name: &str) -> &Value {
        let all = self.named(name);
        assert_eq!(all.len(), 1, "{name}: {all:#?}\n{}", self.stderr);
        all[0]
    }

    fn last(&self) -> &Value {
        self.events.last().expect("no events")
    }
}

/// A plan with the given `explain` entries (YAML list items) and a migration
/// `(up, down)` in `dir`, with a short soak and confirmation and no backup.
fn plan(dir: &Path, migration: (&str, &str), explain: &str) -> PathBuf {
    let set = dir.join("migrations");
    std::fs::create_dir_all(&set).unwrap();
    std::fs::write(set.join("V1__change.sql"), migration.0).unwrap();
    std::fs::write(set.join("V1__change.down.sql"), migration.1).unwrap();
    let path = dir.join("plan.yaml");
    let text = format!(
        "name: explain-gate\ntarget: testdb\nmigrations: migrations\nbackup:\n  enabled: false\n\
         soak:\n  duration: 1s\n  interval: 500ms\n  baseline_samples: 1\n  checks:\n    - name: one\n      \
         sql: SELECT 1\n      max: 1\n      min_samples: 1\n      consecutive: 1\n\
         rollback:\n  confirm: 1s\nexplain:\n{explain}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn run(db: &TestDb, plan: &Path, backups: &Path) -> Run {
    let out = common::output_within(
        "pgshepherd run",
        Command::new(common::pgshepherd_bin())
            .arg("run")
            .arg(plan)
            .args(["--database-url", &db.url, "--now", "--json", "--backup-dir"])
            .arg(backups),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{stderr}"))
        })
        .collect();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        events,
        stderr,
    };
    assert_eq!(run.last()["event"], "run_finished", "{}", run.stderr);
    run
}

/// The node types of a plan in an event (`before` or `after` of explain_checked).
fn node_types(plan: &Value) -> Vec<&str> {
    plan["plan"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| n["node_type"].as_str().unwrap_or(""))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_index_the_dashboard_uses_passes_and_the_events_carry_both_plans_and_times() {
    let db = common::fresh_db().await;
    db.execute(SEED).await;
    let dir = common::scratch_dir();
    let plan = plan(
        dir.path(),
        GOOD_INDEX,
        &format!(
            "  - name: cancellations_dashboard\n    sql: {DASHBOARD}\n    expect_index: idx_job_summaries_cancel_reason\n    \
             max_cost_ratio: 1.0\n    analyze: true\n"
        ),
    );
    let r = run(&db, &plan, &dir.path().join("backups"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.last()["outcome"], "succeeded");

    let measured = r.named("explain_measured");
    let phases: Vec<&str> = measured
        .iter()
        .map(|e| e["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["before", "after"], "{measured:#?}");
    assert!(measured.iter().all(|e| e["step"] == "explain"));
    // Before the change: a sequential scan, executed (analyze) with a time.
    assert!(
        node_types(measured[0]).contains(&"Seq Scan"),
        "{measured:#?}"
    );
    assert!(measured[0]["plan"]["execution_ms"].as_f64().is_some());

    let checked = r.one("explain_checked");
    assert_eq!(checked["passed"], true, "{checked:#}");
    assert_eq!(checked["decision"], Value::Null);
    assert_eq!(checked["expect_index"], "idx_job_summaries_cancel_reason");
    assert_eq!(checked["index_used_before"], false);
    assert_eq!(checked["index_used_after"], true);
    let (before, after) = (
        checked["cost_before"].as_f64().unwrap(),
        checked["cost_after"].as_f64().unwrap(),
    );
    assert!(after < before, "cost {before} -> {after}");
    assert!(checked["cost_ratio"].as_f64().unwrap() < 1.0);
    // analyze: the run documents how much faster the query became.
    assert!(checked["time_before_ms"].as_f64().is_some(), "{checked:#}");
    assert!(checked["time_after_ms"].as_f64().is_some(), "{checked:#}");
    assert!(checked["time_ratio"].as_f64().is_some(), "{checked:#}");
    assert!(
        node_types(&checked["after"]).contains(&"Bitmap Index Scan")
            || node_types(&checked["after"]).contains(&"Index Scan"),
        "{checked:#}"
    );

    // The gate sits between the migration and the soak.
    let position = |name: &str| r.events.iter().position(|e| e["event"] == name).unwrap();
    assert!(position("migration_applied") < position("explain_checked"));
    assert!(position("explain_checked") < position("soak_started"));
    assert!(
        r.stderr
            .contains("EXPLAIN gate: cancellations_dashboard passed: cost"),
        "{}",
        r.stderr
    );
    assert!(db.index_exists("idx_job_summaries_cancel_reason").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_says_what_the_gate_would_check_and_how_the_query_plans_now() {
    let db = common::fresh_db().await;
    db.execute(SEED).await;
    let dir = common::scratch_dir();
    let plan = plan(
        dir.path(),
        GOOD_INDEX,
        &format!(
            "  - name: cancellations_dashboard\n    sql: {DASHBOARD}\n    expect_index: idx_job_summaries_cancel_reason\n    \
             analyze: true\n"
        ),
    );
    let out = common::output_within(
        "pgshepherd run --dry-run",
        Command::new(common::pgshepherd_bin())
            .arg("run")
            .arg(&plan)
            .args([
                "--database-url",
                &db.url,
                "--now",
                "--json",
                "--dry-run",
                "--backup-dir",
            ])
            .arg(dir.path().join("backups")),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["event"] == "dry_run")
        .expect("a dry_run event")["report"]["explain"][0]
        .clone();
    assert_eq!(report["name"], "cancellations_dashboard");
    assert_eq!(report["index_used_now"], false, "{report:#}");
    // Planned only: a dry run never executes the query.
    assert!(
        report["now"]["plan"]["execution_ms"].is_null(),
        "{report:#}"
    );
    assert!(
        stderr.contains("would explain cancellations_dashboard")
            && stderr
                .contains("the plan must use index idx_job_summaries_cancel_reason (not used now)"),
        "{stderr}"
    );
    assert!(!db.index_exists("idx_job_summaries_cancel_reason").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_the_query_does_not_use_rolls_the_change_back_and_names_the_plan_nodes() {
    let db = common::fresh_db().await;
    db.execute(SEED).await;
    let dir = common::scratch_dir();
    // The GIN index that looks right but cannot serve `->>` equality (docs/demo.md).
    let gin = (
        "CREATE INDEX gin_cancel ON job_execution_summaries USING gin ((results -> 'cancel_reason'));\n\
         ANALYZE job_execution_summaries;\n",
        "DROP INDEX gin_cancel;\n",
    );
    let plan = plan(
        dir.path(),
        gin,
        &format!(
            "  - name: cancellations_dashboard\n    sql: {DASHBOARD}\n    expect_index: gin_cancel\n"
        ),
    );
    let r = run(&db, &plan, &dir.path().join("backups"));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(r.last()["outcome"], "rolled_back");

    let checked = r.one("explain_checked");
    assert_eq!(checked["passed"], false);
    assert_eq!(checked["decision"], "roll_back");
    assert_eq!(checked["index_used_after"], false);
    assert_eq!(
        checked["failures"][0],
        "index `gin_cancel` is not used after the change (the plan uses no index)"
    );
    assert!(node_types(&checked["before"]).contains(&"Seq Scan"));
    assert!(node_types(&checked["after"]).contains(&"Seq Scan"));
    // Both plans in short form, in the rollback's cause and the run's reason.
    let cause = r.one("rollback_started")["cause"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        cause.starts_with(
            "EXPLAIN gate: explain `cancellations_dashboard`: index `gin_cancel` is not used"
        ),
        "{cause}"
    );
    assert!(
        cause.contains("before: Aggregate (cost") && cause.contains("after: Aggregate (cost"),
        "{cause}"
    );
    assert!(
        cause.contains("Seq Scan on job_execution_summaries"),
        "{cause}"
    );
    let reason = r.last()["reason"].as_str().unwrap();
    assert!(reason.starts_with(&cause), "{reason}");
    // Rolled back before the soak: the index is gone, the soak never started.
    assert!(r.named("soak_started").is_empty());
    assert!(!db.index_exists("gin_cancel").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_that_got_dearer_than_the_cost_ratio_allows_rolls_back() {
    let db = common::fresh_db().await;
    db.execute(SEED).await;
    db.execute("CREATE INDEX jobs_status ON job_execution_summaries (status); ANALYZE job_execution_summaries")
        .await;
    let dir = common::scratch_dir();
    // Dropping the index the query relies on: the plan falls back to a scan.
    let drop = (
        "DROP INDEX jobs_status;\n",
        "CREATE INDEX jobs_status ON job_execution_summaries (status);\n",
    );
    let plan = plan(
        dir.path(),
        drop,
        "  - name: one_job\n    sql: SELECT id FROM job_execution_summaries WHERE status = 'failed'\n    max_cost_ratio: 1.5\n",
    );
    let r = run(&db, &plan, &dir.path().join("backups"));
    assert_eq!(r.code, 3, "{}", r.stderr);
    let checked = r.one("explain_checked");
    assert_eq!(checked["passed"], false);
    let ratio = checked["cost_ratio"].as_f64().unwrap();
    assert!(ratio > 1.5, "{checked:#}");
    assert_eq!(checked["max_cost_ratio"], 1.5);
    let failure = checked["failures"][0].as_str().unwrap();
    assert!(
        failure.starts_with("total cost grew from") && failure.ends_with("max_cost_ratio 1.5)"),
        "{failure}"
    );
    assert!(db.index_exists("jobs_status").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_on_what_the_change_creates_is_judged_on_its_index_alone() {
    let db = common::fresh_db().await;
    let dir = common::scratch_dir();
    let create = (
        "CREATE TABLE audit (id bigint PRIMARY KEY, what text);\n\
         INSERT INTO audit SELECT g, 'x' FROM generate_series(1, 5000) g;\nANALYZE audit;\n",
        "DROP TABLE audit;\n",
    );
    let plan_path = plan(
        dir.path(),
        create,
        "  - name: one_row\n    sql: SELECT what FROM audit WHERE id = 42\n    expect_index: audit_pkey\n",
    );
    let r = run(&db, &plan_path, &dir.path().join("backups"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let before = r.named("explain_measured")[0];
    assert!(
        before["error"].as_str().unwrap().contains("does not exist"),
        "{before:#}"
    );
    assert_eq!(r.one("explain_checked")["passed"], true);

    // A ratio needs a plan from before: refused before anything changes.
    let db = common::fresh_db().await;
    let dir = common::scratch_dir();
    let plan_path = plan(
        dir.path(),
        create,
        "  - name: one_row\n    sql: SELECT what FROM audit WHERE id = 42\n    max_cost_ratio: 2\n",
    );
    let r = run(&db, &plan_path, &dir.path().join("backups"));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(r.last()["outcome"], "stopped");
    assert!(
        r.last()["reason"].as_str().unwrap().starts_with(
            "explain `one_row` compares with the plan from before the change (`max_cost_ratio`)"
        ),
        "{:#}",
        r.last()
    );
    assert!(!db.table_exists("audit").await);
}

#[test]
fn check_refuses_what_the_gate_must_not_run_at_file_line_column() {
    let dir = common::scratch_dir();
    let plan = plan(
        dir.path(),
        GOOD_INDEX,
        "  - name: writes\n    sql: DELETE FROM job_execution_summaries\n\
         \x20 - name: two\n    sql: SELECT 1; SELECT 2\n\
         \x20 - name: ratio\n    sql: SELECT 1\n    max_cost_ratio: -1\n\
         \x20 - name: timing\n    sql: SELECT 1\n    max_time_ratio: 2\n",
    );
    let out = common::output_within(
        "pgshepherd check",
        Command::new(common::pgshepherd_bin())
            .arg("check")
            .arg(&plan),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let file = plan.display().to_string();
    let expected = [
        (
            20,
            10,
            "`explain[0].sql` must be a SELECT (or WITH ... SELECT), found `DELETE`",
        ),
        (
            22,
            10,
            "`explain[1].sql` must be exactly one SELECT statement, found 2 statements",
        ),
        (25, 21, "`explain[2].max_cost_ratio` must be greater than 0"),
        (28, 5, "`explain[3].max_time_ratio` needs `analyze: true`"),
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for ((line, column, message), got) in expected.iter().zip(&lines) {
        let prefix = format!("{file}:{line}:{column}: ");
        assert!(
            got.starts_with(&prefix) && got.contains(message),
            "expected {prefix}{message}\ngot {got}"
        );
    }
}

/// A daemon killed between two migrations: the next one carries on and judges
/// the plans after the change against the plans taken before it (kept in the
/// run's facts: measured again now, they would already show the new index), and
/// the verdict is in the run view and in `pgshepherd status`.
#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_run_judges_against_the_plans_from_before_and_shows_the_verdict() {
    use common::daemon::{Api, Env, READER, SUBMITTER, plan_dir, soak_yaml};

    let env = Env::new(
        &["main"],
        "lease_timeout: 3s\npoll_interval: 300ms\nshutdown_timeout: 10s",
    )
    .await;
    let db = env.target("main");
    db.execute(SEED).await;
    db.prepare_release().await;
    let work = common::scratch_dir();
    let tail = format!(
        "backup:\n  enabled: false\n{}explain:\n  - name: cancellations_dashboard\n    sql: {DASHBOARD}\n    \
         expect_index: idx_job_summaries_cancel_reason\n    max_cost_ratio: 1.0\n",
        soak_yaml("1s", "500ms", "SELECT 1", 1)
    );
    let slow = format!(
        "{};\nCREATE TABLE marker (id int);\n",
        common::held_until_released("v2")
    );
    let (plan, set) = plan_dir(
        work.path(),
        "main",
        &[
            ("V1__index.sql", GOOD_INDEX.0),
            ("V1__index.down.sql", GOOD_INDEX.1),
            ("V2__slow.sql", &slow),
            ("V2__slow.down.sql", "DROP TABLE marker;\n"),
        ],
        &tail,
    );
    let mut daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    db.wait_held("v2").await;
    daemon.kill9();
    let row = env.run_row(&run).await;
    assert_eq!(row["state_name"], "migrating", "{row}");
    assert_eq!(
        row["checkpoint"]["state"]["applied"],
        serde_json::json!([1])
    );
    let before = row["checkpoint"]["facts"]["explain_before"][0].clone();
    assert!(before["plan"]["total_cost"].is_f64(), "{row}");
    // V2's transaction dies with the dead daemon's session; the next daemon
    // applies it, then runs the gate.
    db.release("v2").await;

    let daemon = env.start("d2").await;
    let row = env.wait_finished(&run, common::PATIENCE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    let verdict = &row["checkpoint"]["facts"]["explain"][0];
    assert_eq!(verdict["passed"], true, "{verdict:#}");
    assert_eq!(verdict["before"], before);
    assert_eq!(verdict["index_used_before"], false, "{verdict:#}");
    let phases: Vec<String> = env
        .events(&run)
        .await
        .iter()
        .filter(|e| e["event"] == "explain_measured")
        .map(|e| e["phase"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(phases, ["before", "after"]);

    let (code, view) = Api::new(&daemon)
        .get(READER, &format!("/v1/runs/{run}"))
        .await;
    assert_eq!(code, 200, "{view}");
    assert_eq!(view["facts"]["explain"][0]["index_used_after"], true);
    let out = common::output_within(
        "pgshepherd status",
        Command::new(common::pgshepherd_bin()).args([
            "status",
            &run,
            "--server",
            &daemon.url,
            "--token",
            READER,
        ]),
    );
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("explain    cancellations_dashboard passed: cost"),
        "{status}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
