//! The daemon end to end, through the real binary and its HTTP API: submit,
//! approve (four eyes), window, migrate, soak, succeed; breach and roll back;
//! abort before and during the change; one run per target in submission order.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use common::daemon::{ADMIN, APPROVER, Api, Env, READER, SUBMITTER, SUBMITTER2, soak_plan};

const MINUTE: Duration = Duration::from_secs(60);
const SETTINGS: &str = "lease_timeout: 5s\npoll_interval: 200ms";

/// One migration creating `t`, a check `check_sql` with `max`, a `down`
/// rollback, and `extra` keys.
fn write_plan(
    dir: &Path,
    target: &str,
    soak: &str,
    check_sql: &str,
    max: u32,
    extra: &str,
) -> (PathBuf, PathBuf) {
    let tail = format!("rollback:\n  strategy: down\n  confirm: 500ms\n{extra}");
    soak_plan(dir, target, soak, check_sql, max, &tail)
}

/// Add a second migration (column `u` on `t`, with its down script) to `set`:
/// it only applies on top of the first.
fn add_second_migration(set: &Path) {
    std::fs::write(set.join("V2__u.sql"), "ALTER TABLE t ADD COLUMN u int;\n").unwrap();
    std::fs::write(set.join("V2__u.down.sql"), "ALTER TABLE t DROP COLUMN u;\n").unwrap();
}

/// A barrier on the scheduler: a run on target `side`, submitted now, has
/// started. Runs are claimed oldest first, so any run submitted before it that
/// could start has started by then.
async fn scheduler_turn(env: &Env, api: &Api) {
    let work = common::scratch_dir();
    let (plan, set) = write_plan(work.path(), "side", "500ms", "SELECT 1", 1, "");
    let run = api.submit(SUBMITTER, &plan, &set).await;
    env.wait_for_event(&run, "run_started", MINUTE).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_approve_window_migrate_soak_succeeded() {
    let env = Env::new(&["main", "side"], SETTINGS).await;
    let work = common::scratch_dir();
    let (plan, set) = write_plan(
        work.path(),
        "main",
        "1s",
        "SELECT 1",
        1,
        "approval:\n  required: true\nwindow:\n  cron: \"* * * * *\"\n  timezone: Europe/Berlin\n  duration: 1h\n",
    );
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let run = api.submit(SUBMITTER, &plan, &set).await;
    let (status, view) = api.get(READER, &format!("/v1/runs/{run}")).await;
    assert_eq!(status, 200);
    assert_eq!(view["phase"], "pending_approval", "{view}");

    // Nothing happens without an approval, even after the scheduler has
    // started a later run.
    scheduler_turn(&env, &api).await;
    assert!(!env.target("main").table_exists("t").await);
    let (_, view) = api.get(READER, &format!("/v1/runs/{run}")).await;
    assert_eq!(view["phase"], "pending_approval", "{view}");

    // Four eyes: the submitter cannot approve, even with a second token of the
    // same person's role; a reader cannot either.
    let (status, body) = api
        .post(
            SUBMITTER,
            &format!("/v1/runs/{run}/approve"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = api
        .post(
            READER,
            &format!("/v1/runs/{run}/approve"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = api
        .post(
            APPROVER,
            &format!("/v1/runs/{run}/approve"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    assert_eq!(row["approved_by"], "bob");
    assert_eq!(row["submitted_by"], "alice");
    assert!(env.target("main").table_exists("t").await);
    let names = env.event_names(&run).await;
    for expected in [
        "run_submitted",
        "run_approved",
        "window_open",
        "migration_applied",
        "soak_finished",
        "run_finished",
    ] {
        assert!(
            names.contains(&expected.to_string()),
            "{expected} missing: {names:?}"
        );
    }
    // The API shows the finished run with its latest sample per check.
    let (_, view) = api.get(READER, &format!("/v1/runs/{run}")).await;
    assert_eq!(view["outcome"], "succeeded", "{view}");
    // The audit trail has who did what, and no token text.
    let audit = env
        .state
        .client()
        .await
        .query(
            "SELECT actor, action, status, coalesce(detail, '') FROM audit ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let rows: Vec<(String, String, i32, String)> = audit
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert!(rows.iter().any(|r| r.0 == "bob" && r.2 == 200), "{rows:?}");
    assert!(
        rows.iter().any(|r| r.0 == "alice" && r.2 == 403),
        "{rows:?}"
    );
    let text = format!("{rows:?}");
    for secret in [SUBMITTER, APPROVER, READER] {
        assert!(!text.contains(secret));
    }
    let log = daemon.log_text();
    for secret in [SUBMITTER, APPROVER, READER, ADMIN] {
        assert!(!log.contains(secret), "a token leaked into the log");
    }
    // The JSON log carries each run event's fields as data, not only as words.
    let finished = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["event"] == "run_finished")
        .unwrap_or_else(|| panic!("no run_finished line in the log:\n{log}"));
    assert_eq!(finished["detail"]["outcome"], "succeeded", "{finished}");
    assert_eq!(finished["detail"]["exit_code"], 0, "{finished}");
    assert!(finished["run_id"].is_string(), "{finished}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_breach_in_the_soak_rolls_back() {
    let env = Env::new(&["main"], SETTINGS).await;
    let work = common::scratch_dir();
    let (plan, set) = write_plan(
        work.path(),
        "main",
        "5s",
        "SELECT count(*) FROM pg_class WHERE relname = 't' AND relkind = 'r'",
        0,
        "",
    );
    let daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "rolled_back", "{row}");
    assert_eq!(row["exit_code"], 3);
    assert!(!env.target("main").table_exists("t").await);
    let verdict = env.wait_for_event(&run, "check_verdict", MINUTE).await;
    assert_eq!(verdict["decision"], "roll_back", "{verdict}");
}

#[tokio::test(flavor = "multi_thread")]
async fn abort_before_the_change_stops_and_during_the_soak_rolls_back() {
    let env = Env::new(&["early", "late"], SETTINGS).await;
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);

    // Before: a window that is not open now (1 January, 03:00): the run waits.
    let w1 = common::scratch_dir();
    let (plan, set) = write_plan(
        w1.path(),
        "early",
        "1s",
        "SELECT 1",
        1,
        "window:\n  cron: \"0 3 1 1 *\"\n  timezone: UTC\n  duration: 1m\n",
    );
    let run = api.submit(SUBMITTER, &plan, &set).await;
    env.wait_for_event(&run, "waiting_for_window", MINUTE).await;
    // Another submitter may not abort alice's run; an approver may.
    let (status, _) = api
        .post(
            SUBMITTER2,
            &format!("/v1/runs/{run}/abort"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = api
        .post(
            SUBMITTER,
            &format!("/v1/runs/{run}/abort"),
            serde_json::json!({}),
        )
        .await;
    // 202: the request is recorded; the owning daemon carries it out.
    assert_eq!(status, 202, "{body}");
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "stopped", "{row}");
    assert_eq!(row["exit_code"], 5);
    assert!(!env.target("early").table_exists("t").await);

    // During: abort while soaking rolls the change back.
    let w2 = common::scratch_dir();
    let (plan, set) = write_plan(w2.path(), "late", "30s", "SELECT 1", 1, "");
    let run = api.submit(SUBMITTER, &plan, &set).await;
    env.wait_for_event(&run, "soak_started", MINUTE).await;
    let (status, body) = api
        .post(
            APPROVER,
            &format!("/v1/runs/{run}/abort"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "rolled_back", "{row}");
    assert!(!env.target("late").table_exists("t").await);
    assert_eq!(row["abort_requested_by"], "bob");
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_on_one_target_go_one_at_a_time_in_submission_order() {
    let env = Env::new(&["main"], SETTINGS).await;
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let w1 = common::scratch_dir();
    let (plan1, set1) = write_plan(w1.path(), "main", "1500ms", "SELECT 1", 1, "");
    // The second plan's migration set builds on the first: it only works after it.
    let w2 = common::scratch_dir();
    let (plan2, set2) = write_plan(w2.path(), "main", "500ms", "SELECT 1", 1, "");
    add_second_migration(&set2);
    let first = api.submit(SUBMITTER, &plan1, &set1).await;
    let second = api.submit(SUBMITTER, &plan2, &set2).await;
    let row2 = env.wait_finished(&second, MINUTE).await;
    let row1 = env.wait_finished(&first, MINUTE).await;
    assert_eq!(row1["outcome"], "succeeded", "{row1}");
    assert_eq!(row2["outcome"], "succeeded", "{row2}");
    let finished1 = env.wait_for_event(&first, "run_finished", MINUTE).await;
    let started2 = env.wait_for_event(&second, "run_started", MINUTE).await;
    assert!(
        started2["ts"].as_str().unwrap() >= finished1["ts"].as_str().unwrap(),
        "the second run started before the first finished"
    );
    let applied = env
        .target("main")
        .query_i64("SELECT count(*) FROM pgshepherd.history")
        .await;
    assert_eq!(applied, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_low_traffic_gate_holds_the_migration_until_quiet_and_the_deadline_stops_it() {
    let env = Env::new(&["quiet", "busy"], SETTINGS).await;
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let window = "window:\n  cron: \"* * * * *\"\n  timezone: UTC\n  duration: 1h\n";
    let gate = |sql: &str| {
        format!(
            "gate:\n  check:\n    name: load\n    sql: \"{sql}\"\n    max: 3\n  consecutive: 3\n  interval: 200ms\n"
        )
    };

    // Quiet: three healthy samples in a row, then the lock and the migration.
    let w1 = common::scratch_dir();
    let extra = format!("{window}{}", gate("SELECT 1"));
    let (plan, set) = write_plan(w1.path(), "quiet", "500ms", "SELECT 1", 1, &extra);
    let run = api.submit(SUBMITTER, &plan, &set).await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    let names = env.event_names(&run).await;
    let at = |n: &str| names.iter().position(|x| x == n).unwrap();
    assert!(at("gate_open") < at("lock_acquired"), "{names:?}");
    let opened = env.wait_for_event(&run, "gate_open", MINUTE).await;
    assert_eq!(opened["samples"], 3, "{opened}");

    // Busy until the deadline: the run stops without touching the target.
    let w2 = common::scratch_dir();
    let deadline = (chrono::Utc::now() + chrono::Duration::seconds(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let extra = format!("{window}  deadline: {deadline}\n{}", gate("SELECT 10"));
    let (plan, set) = write_plan(w2.path(), "busy", "500ms", "SELECT 1", 1, &extra);
    let run = api.submit(SUBMITTER, &plan, &set).await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "stopped", "{row}");
    assert_eq!(row["exit_code"], 5);
    let reason = row["reason"].as_str().unwrap();
    assert!(
        reason.contains("low-traffic gate") && reason.contains("load"),
        "{reason}"
    );
    assert!(!env.target("busy").table_exists("t").await);
    let names = env.event_names(&run).await;
    assert!(!names.contains(&"lock_acquired".to_string()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_requires_approval_holds_runs_whose_plan_does_not_ask_for_it() {
    let env = Env::new(&["guarded"], SETTINGS).await;
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let work = common::scratch_dir();
    let (plan, set) = write_plan(work.path(), "guarded", "500ms", "SELECT 1", 1, "");
    let run = api.submit(SUBMITTER, &plan, &set).await;
    let (_, view) = api.get(READER, &format!("/v1/runs/{run}")).await;
    assert_eq!(view["phase"], "pending_approval", "{view}");
    assert_eq!(view["requires_approval"], true);
    let (status, _) = api
        .post(
            APPROVER,
            &format!("/v1/runs/{run}/approve"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_needs_a_human_holds_its_targets_queue_until_acknowledged() {
    let env = Env::new(&["main", "side"], SETTINGS).await;
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    // The first run breaches and its plan says hold: the change stays, a person
    // must look.
    let w1 = common::scratch_dir();
    let (plan1, set1) = soak_plan(
        w1.path(),
        "main",
        "1s",
        "SELECT 5",
        1,
        "rollback:\n  strategy: hold\n",
    );
    let w2 = common::scratch_dir();
    let (plan2, set2) = write_plan(w2.path(), "main", "500ms", "SELECT 1", 1, "");
    add_second_migration(&set2);

    let held = api.submit(SUBMITTER, &plan1, &set1).await;
    let row = env.wait_finished(&held, MINUTE).await;
    assert_eq!(row["outcome"], "needs_human", "{row}");
    let queued = api.submit(SUBMITTER, &plan2, &set2).await;

    // Nothing new starts on the target while nobody has acknowledged, even
    // after the scheduler has started a later run elsewhere.
    scheduler_turn(&env, &api).await;
    let (_, view) = api.get(READER, &format!("/v1/runs/{queued}")).await;
    assert_eq!(view["phase"], "queued", "{view}");
    assert!(
        env.event_names(&queued)
            .await
            .iter()
            .all(|e| e != "run_started")
    );

    let (status, body) = api
        .post(
            APPROVER,
            &format!("/v1/runs/{held}/ack"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let row = env.wait_finished(&queued, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    let acked = env.wait_for_event(&held, "acknowledged", MINUTE).await;
    let started = env.wait_for_event(&queued, "run_started", MINUTE).await;
    assert!(started["ts"].as_str().unwrap() >= acked["ts"].as_str().unwrap());
}
