//! Stopping a run from outside: a real SIGTERM to the real process.

mod common;

use chrono::Timelike;
use serde_json::Value;

use common::live_run::LiveRun as Run;

/// The one-table plan with a soak long enough to be interrupted.
fn scenario(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    common::one_table_plan(
        dir,
        "db",
        "60s",
        &format!("rollback:\n  confirm: 1s\n{extra}"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_the_soak_cuts_it_short_and_rolls_back() {
    let db = common::fresh_db().await;
    let dir = common::scratch_dir();
    let plan = scenario(dir.path(), "");
    let mut run = Run::start(&plan, &db.url, &dir.path().join("backups"));
    let soak = run.wait_for("soak_started").await;
    assert!(db.table_exists("t").await);
    // The persisted state says where the run is, what it applied, and (from the
    // first tick on) how far the soak has got with which counts.
    let run_id = soak["run_id"].as_str().unwrap();
    let state_file = dir
        .path()
        .join(format!("backups/journal/{run_id}.state.json"));
    let read_state = || -> Value {
        let checkpoint: Value =
            serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
        checkpoint["state"].clone()
    };
    let state = read_state();
    assert_eq!(state["state"], "soaking", "{state}");
    assert_eq!(state["applied"], serde_json::json!([1]));
    run.wait_for("check_sample").await;
    run.wait_for("check_sample").await;
    let state = read_state();
    let progress = &state["progress"];
    assert!(progress["samples_taken"].as_u64().unwrap() >= 1, "{state}");
    assert_eq!(progress["samples_planned"], 120);
    assert!(
        progress["checks"][0]["counts"]["valid_samples"]
            .as_u64()
            .unwrap()
            >= 1,
        "{state}"
    );
    run.signal(libc::SIGTERM);
    let (code, events) = run.finish().await;
    let last = events.last().unwrap();
    assert_eq!(code, 3, "{last}");
    assert!(
        last["reason"].as_str().unwrap().contains("cut short"),
        "{last}"
    );
    assert!(!db.table_exists("t").await);
    let state = read_state();
    assert_eq!(state["state"], "finished", "{state}");
    assert_eq!(state["outcome"], "rolled_back");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_waiting_for_the_window_stops_with_nothing_changed() {
    let db = common::fresh_db().await;
    let dir = common::scratch_dir();
    // A one-hour window opening at twelve hours from now's hour: certainly closed.
    let hour = (chrono::Utc::now().hour() + 12) % 24;
    let window = format!("window:\n  cron: \"0 {hour} * * *\"\n  timezone: UTC\n  duration: 1h\n");
    let plan = scenario(dir.path(), &window);
    let mut run = Run::in_window(&plan, &db.url, &dir.path().join("backups"));
    let waiting = run.wait_for("waiting_for_window").await;
    let opens = waiting["opens_at"].as_str().unwrap();
    assert!(opens.contains(&format!("T{hour:02}:00:00")), "{waiting}");
    run.signal(libc::SIGTERM);
    let (code, events) = run.finish().await;
    let last = events.last().unwrap();
    assert_eq!(code, 5, "{last}");
    assert_eq!(last["outcome"], "stopped");
    assert!(!db.table_exists("t").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_the_backup_kills_pg_dump_and_leaves_nothing_behind() {
    let db = common::fresh_db().await;
    db.execute("CREATE TABLE accounts (id int)").await;
    let dir = common::scratch_dir();
    let plan = scenario(dir.path(), "");
    // pg_dump waits for ACCESS SHARE on every table: this holds it up for good.
    let blocker = db.client().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE;")
        .await
        .unwrap();
    let backups = dir.path().join("backups");
    let mut run = Run::start(&plan, &db.url, &backups);
    run.wait_for("backup_started").await;
    // Until pg_dump is really waiting on the lock.
    db.wait_for(
        "pg_dump queued behind the lock",
        "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name LIKE 'pgshepherd-backup %' \
           AND wait_event_type = 'Lock')",
    )
    .await;
    run.signal(libc::SIGTERM);
    let (code, events) = run.finish().await;
    let last = events.last().unwrap();
    assert_eq!(code, 5, "{last}");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("aborted during the backup"),
        "{last}"
    );
    // pg_dump is gone (its session ends a moment after the process), and so is
    // its partial archive; nothing was migrated.
    db.wait_for(
        "pg_dump's session gone",
        "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE application_name LIKE 'pgshepherd-backup %')",
    )
    .await;
    let left: Vec<_> = std::fs::read_dir(backups.join("db"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    blocker.batch_execute("ROLLBACK").await.unwrap();
    assert!(!db.table_exists("t").await);
}
