//! Crash safety: the daemon is killed with SIGKILL at each named step of a run,
//! restarted, and the run must end in the right outcome with the target in the
//! right state: no migration applied twice, no rollback skipped, no unverified
//! backup trusted. Also: takeover by a second daemon, SIGTERM checkpointing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use common::daemon::{Api, Env, ONE_TABLE, SUBMITTER, plan_dir, soak_yaml};
use serde_json::Value;

const MINUTE: Duration = Duration::from_secs(60);
const SETTINGS: &str = "lease_timeout: 3s\npoll_interval: 300ms\nshutdown_timeout: 10s";

fn soak(duration: &str, check_sql: &str, max: u32) -> String {
    soak_yaml(duration, "500ms", check_sql, max)
}

/// The one-table plan without a backup, soaking `duration` with a check that
/// never breaches.
fn one_table(dir: &Path, duration: &str) -> (PathBuf, PathBuf) {
    let tail = format!(
        "backup:\n  enabled: false\n{}",
        soak(duration, "SELECT 1", 1)
    );
    plan_dir(dir, "main", ONE_TABLE, &tail)
}

fn timestamp(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}")))
        .unwrap_or_else(|e| panic!("{v}: {e}"))
        .with_timezone(&Utc)
}

fn names(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_mid_soak_the_restarted_daemon_continues_the_soak_where_it_was() {
    let env = Env::new(&["main"], SETTINGS).await;
    let work = common::scratch_dir();
    let (plan, set) = one_table(work.path(), "5s");
    let mut daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    // Let a few samples be persisted, then pull the plug.
    env.wait_for_row(&run, "two samples checkpointed", |row| {
        row["checkpoint"]["state"]["progress"]["samples_taken"].as_u64() >= Some(2)
    })
    .await;
    daemon.kill9();
    let row = env.run_row(&run).await;
    assert_eq!(row["state_name"], "soaking", "{row}");
    let taken = row["checkpoint"]["state"]["progress"]["samples_taken"]
        .as_u64()
        .unwrap();
    assert!((2..10).contains(&taken), "{row}");

    let _daemon = env.start("d2").await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    assert_eq!(row["exit_code"], 0);
    let events = env.events(&run).await;
    let names = names(&events);
    // One migration, applied once; one soak start; the soak resumed, not restarted.
    assert_eq!(
        names.iter().filter(|n| **n == "migration_applied").count(),
        1
    );
    assert_eq!(
        names.iter().filter(|n| **n == "soak_started").count(),
        1,
        "{names:?}"
    );
    let resumed: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "run_resumed")
        .collect();
    assert_eq!(resumed.len(), 2);
    assert_eq!(resumed[1]["from_state"], "soaking");
    let finished = events
        .iter()
        .find(|e| e["event"] == "soak_finished")
        .unwrap();
    // Every planned sample counted exactly once across both daemons.
    assert_eq!(finished["tallies"][0]["valid"], 10, "{finished}");
    assert!(env.target("main").table_exists("t").await);
    let history = env
        .target("main")
        .query_i64("SELECT count(*) FROM pgshepherd.history")
        .await;
    assert_eq!(history, 1);
}

/// Leases that would keep a restarted daemon waiting a long time.
const LONG_LEASE: &str = "lease_timeout: 60s\npoll_interval: 300ms\nshutdown_timeout: 10s";

/// Killed mid-soak and restarted under the same name, with its runs' leases far
/// from expiring: the new process takes its own run back at once, under a new
/// epoch, instead of waiting for its predecessor's lease.
#[tokio::test(flavor = "multi_thread")]
async fn restarted_under_its_name_a_daemon_takes_its_runs_back_before_the_lease_expires() {
    let env = Env::new(&["main"], LONG_LEASE).await;
    let work = common::scratch_dir();
    let (plan, set) = one_table(work.path(), "5s");
    let mut daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    env.wait_for_row(&run, "two samples checkpointed", |row| {
        row["checkpoint"]["state"]["progress"]["samples_taken"].as_u64() >= Some(2)
    })
    .await;
    daemon.kill9();
    let row = env.run_row(&run).await;
    let (owner, epoch) = (row["owner"].clone(), row["epoch"].as_i64().unwrap());
    assert_eq!(owner, "d1", "{row}");
    let lease_until = timestamp(&row["lease_until"]);

    let _daemon = env.start("d1").await;
    let events = env
        .wait_for_events(&run, "the run resumed by the restarted daemon", |events| {
            events
                .iter()
                .filter(|e| e["event"] == "run_resumed")
                .count()
                == 2
        })
        .await;
    // Seen while the dead process's lease had not expired yet (the state
    // database's clock, the one leases are written with).
    let before_expiry: bool = env
        .state
        .client()
        .await
        .query_one("SELECT now() < $1", &[&lease_until])
        .await
        .unwrap()
        .get(0);
    assert!(before_expiry, "resumed only after the old lease expired");
    let resumed = events
        .iter()
        .rfind(|e| e["event"] == "run_resumed")
        .unwrap();
    assert_eq!(resumed["owner"], "d1", "{resumed}");
    assert_eq!(resumed["epoch"], epoch + 1, "{resumed}");
    assert_eq!(resumed["from_state"], "soaking", "{resumed}");
    assert!(timestamp(&resumed["ts"]) < lease_until, "{resumed}");

    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    let events = env.events(&run).await;
    let finished = events
        .iter()
        .find(|e| e["event"] == "soak_finished")
        .unwrap();
    assert_eq!(finished["tallies"][0]["valid"], 10, "{finished}");
}

/// Two live processes misconfigured with one name: the second does not take
/// the first's run (it would fence a live daemon); it says why in its log, and
/// the run ends under the first's epoch.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_live_process_with_the_same_name_does_not_take_the_runs() {
    let env = Env::new(&["main"], LONG_LEASE).await;
    let work = common::scratch_dir();
    let (plan, set) = one_table(work.path(), "4s");
    let first = env.start_as("first", "d1").await;
    let run = Api::new(&first).submit(SUBMITTER, &plan, &set).await;
    env.wait_for_event(&run, "soak_started", MINUTE).await;

    let second = env.start_as("second", "d1").await;
    common::eventually("the second process's warning", || async {
        second
            .log_text()
            .contains("another live process uses this daemon name")
            .then_some(())
    })
    .await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    assert_eq!(row["epoch"], 1, "{row}");
    let resumed: Vec<Value> = env
        .events(&run)
        .await
        .into_iter()
        .filter(|e| e["event"] == "run_resumed")
        .collect();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    drop(first);
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_between_migrations_nothing_is_applied_twice() {
    let env = Env::new(&["main"], SETTINGS).await;
    let work = common::scratch_dir();
    let tail = format!("backup:\n  enabled: false\n{}", soak("1s", "SELECT 1", 1));
    let (plan, set) = plan_dir(
        work.path(),
        "main",
        &[
            (
                "V1__log.sql",
                "CREATE TABLE log (v text); INSERT INTO log VALUES ('v1');",
            ),
            ("V1__log.down.sql", "DROP TABLE log;"),
            (
                "V2__slow.sql",
                &format!(
                    "{}; INSERT INTO log VALUES ('v2');",
                    common::held_until_released("v2")
                ),
            ),
            ("V2__slow.down.sql", "DELETE FROM log WHERE v = 'v2';"),
            ("V3__more.sql", "INSERT INTO log VALUES ('v3');"),
            ("V3__more.down.sql", "DELETE FROM log WHERE v = 'v3';"),
        ],
        &tail,
    );
    let db = env.target("main");
    db.prepare_release().await;
    let mut daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    // V2 is running (held): kill the daemon in the middle of it.
    db.wait_held("v2").await;
    daemon.kill9();
    let row = env.run_row(&run).await;
    assert_eq!(row["state_name"], "migrating", "{row}");
    assert_eq!(
        row["checkpoint"]["state"]["applied"],
        serde_json::json!([1])
    );
    // The dead daemon's session finishes V2's script and finds nobody to
    // commit it; the next daemon's V2 goes straight through.
    db.release("v2").await;

    let _daemon = env.start("d2").await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    // V2 was cut off with its transaction and applied once afterwards.
    assert_eq!(
        db.query_i64("SELECT count(*) FROM log WHERE v = 'v1'")
            .await,
        1
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM log WHERE v = 'v2'")
            .await,
        1
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM log WHERE v = 'v3'")
            .await,
        1
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM pgshepherd.history WHERE state = 'applied'")
            .await,
        3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_inside_a_no_transaction_migration_the_run_is_rolled_back() {
    let env = Env::new(&["main"], SETTINGS).await;
    let work = common::scratch_dir();
    let tail = format!(
        "backup:\n  enabled: false\n{}rollback:\n  strategy: down\n  confirm: 1s\n",
        soak("1s", "SELECT 1", 1)
    );
    let (plan, set) = plan_dir(
        work.path(),
        "main",
        &[
            (
                "V1__log.sql",
                "CREATE TABLE log (v text); INSERT INTO log VALUES ('v1');",
            ),
            ("V1__log.down.sql", "DROP TABLE log;"),
            (
                "V2__index.sql",
                &format!(
                    "-- pgshepherd:no-transaction\nCREATE INDEX CONCURRENTLY idx_log_v ON log (v);\n{};\n",
                    common::held_until_released("v2")
                ),
            ),
            ("V2__index.down.sql", "DROP INDEX IF EXISTS idx_log_v;"),
        ],
        &tail,
    );
    let db = env.target("main");
    db.prepare_release().await;
    let mut daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    // The index is built and V2 is held in its next statement: kill the daemon.
    db.wait_held("v2").await;
    daemon.kill9();
    db.release("v2").await;
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM pgshepherd.history WHERE version = 2 AND state = 'started'"
        )
        .await,
        1,
        "the no-transaction migration should be recorded as started, not finished"
    );

    let _daemon = env.start("d2").await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "rolled_back", "{row}");
    assert_eq!(row["exit_code"], 3);
    assert!(
        row["reason"].as_str().unwrap().contains("no-transaction"),
        "{row}"
    );
    // Both versions undone: the index and the table are gone, the history is empty.
    assert!(!db.index_exists("idx_log_v").await);
    assert!(!db.table_exists("log").await);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM pgshepherd.history")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_mid_rollback_the_rollback_is_finished_after_the_restart() {
    let env = Env::new(&["main"], SETTINGS).await;
    let work = common::scratch_dir();
    // The check breaches on the first soak sample (the table exists); the down
    // script is slow.
    let tail = format!(
        "backup:\n  enabled: false\n{}rollback:\n  strategy: down\n  confirm: 1s\n",
        soak(
            "10s",
            "SELECT count(*) FROM pg_class WHERE relname = 't' AND relkind = 'r'",
            0
        )
    );
    let (plan, set) = plan_dir(
        work.path(),
        "main",
        &[
            ("V1__t.sql", "CREATE TABLE t (id int);"),
            (
                "V1__t.down.sql",
                &format!("{}; DROP TABLE t;", common::held_until_released("down")),
            ),
        ],
        &tail,
    );
    let db = env.target("main");
    db.prepare_release().await;

    let mut daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    db.wait_held("down").await;
    daemon.kill9();
    let row = env.run_row(&run).await;
    assert_eq!(row["state_name"], "rolling_back", "{row}");
    assert!(db.table_exists("t").await, "the down script was cut off");
    db.release("down").await;

    let _daemon = env.start("d2").await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "rolled_back", "{row}");
    assert!(!db.table_exists("t").await);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM pgshepherd.history")
            .await,
        0
    );
    let names_after: Vec<String> = env.event_names(&run).await;
    assert!(names_after.contains(&"rollback_finished".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_during_the_backup_the_backup_is_taken_again_and_verified() {
    let env = Env::new(&["main"], SETTINGS).await;
    let db = env.target("main");
    db.execute("CREATE TABLE accounts AS SELECT g AS id FROM generate_series(1, 1000) g")
        .await;
    // pg_dump waits for ACCESS SHARE on every table (for up to 30 s): this holds
    // it up until the daemon has been killed.
    let blocker = db.client().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let work = common::scratch_dir();
    let tail = format!("backup:\n  format: custom\n{}", soak("1s", "SELECT 1", 1));
    let (plan, set) = plan_dir(
        work.path(),
        "main",
        &[
            ("V1__t.sql", "CREATE TABLE t (id int);"),
            ("V1__t.down.sql", "DROP TABLE t;"),
        ],
        &tail,
    );
    let mut daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    db.wait_for(
        "pg_dump waiting on the lock",
        "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name LIKE 'pgshepherd-backup %' \
           AND wait_event_type = 'Lock')",
    )
    .await;
    daemon.kill9();
    let row = env.run_row(&run).await;
    assert_eq!(row["state_name"], "backing_up", "{row}");
    blocker.batch_execute("ROLLBACK").await.unwrap();

    let _daemon = env.start("d2").await;
    let row_after = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row_after["outcome"], "succeeded", "{row_after}");
    let events = env.events(&run).await;
    let names = names(&events);
    // The cut-off backup was not trusted: a second one was taken and verified
    // before the migration.
    assert_eq!(
        names.iter().filter(|n| **n == "backup_started").count(),
        2,
        "{names:?}"
    );
    let verified = names.iter().position(|n| *n == "backup_verified").unwrap();
    let migrated = names
        .iter()
        .position(|n| *n == "migration_started")
        .unwrap();
    assert!(verified < migrated, "{names:?}");
    // Only complete archives (each with its manifest) are left in the directory.
    let dir = env.backups().join("main");
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let archives = files.iter().filter(|f| f.ends_with(".dump")).count();
    let manifests = files.iter().filter(|f| f.ends_with(".json")).count();
    assert_eq!(archives, manifests, "{files:?}");
    assert!(
        files
            .iter()
            .all(|f| !f.contains("partial") && !f.ends_with(".tmp")),
        "{files:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_takes_over_the_run_of_a_killed_one() {
    let env = Env::new(&["main"], SETTINGS).await;
    let work = common::scratch_dir();
    let (plan, set) = one_table(work.path(), "6s");
    let mut a = env.start("alpha").await;
    let mut b = env.start("beta").await;
    let run = Api::new(&a).submit(SUBMITTER, &plan, &set).await;
    env.wait_for_row(&run, "a sample checkpointed", |row| {
        row["checkpoint"]["state"]["progress"]["samples_taken"].as_u64() >= Some(1)
    })
    .await;
    let owner = env.run_row(&run).await["owner"]
        .as_str()
        .unwrap()
        .to_string();
    let survivor = if owner == "alpha" {
        a.kill9();
        "beta"
    } else {
        b.kill9();
        "alpha"
    };
    // The dead owner's lease as it last renewed it.
    let lease_until = timestamp(&env.run_row(&run).await["lease_until"]);
    let events = env
        .wait_for_events(&run, "the survivor's resume", |events| {
            events
                .iter()
                .any(|e| e["event"] == "run_resumed" && e["owner"] == survivor)
        })
        .await;
    let resumed = events
        .iter()
        .find(|e| e["event"] == "run_resumed" && e["owner"] == survivor)
        .unwrap();
    // Not before the dead owner's lease ran out (events are stamped to the ms).
    assert!(
        timestamp(&resumed["ts"]) >= lease_until.trunc_subsecs(3),
        "resumed before the lease of {owner} ran out at {lease_until}: {resumed}"
    );
    assert!(
        resumed["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("taken over from {owner}")),
        "{resumed}"
    );
    assert_eq!(resumed["epoch"], 2);
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    let events = env.events(&run).await;
    let finished = events
        .iter()
        .find(|e| e["event"] == "soak_finished")
        .unwrap();
    assert_eq!(finished["tallies"][0]["valid"], 12, "{finished}");
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_at_a_checkpoint_and_a_restart_resumes() {
    let env = Env::new(&["main"], SETTINGS).await;
    let work = common::scratch_dir();
    let (plan, set) = one_table(work.path(), "5s");
    let mut daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    env.wait_for_event(&run, "check_sample", MINUTE).await;
    let code = daemon.sigterm(common::PATIENCE);
    assert_eq!(code, Some(0), "{}", daemon.log_text());
    // Released, not finished: no rollback happened, nobody owns it.
    let row = env.run_row(&run).await;
    assert_eq!(row["phase"], "active", "{row}");
    assert_eq!(row["state_name"], "soaking", "{row}");
    assert!(row["owner"].is_null(), "{row}");
    assert!(env.target("main").table_exists("t").await);

    let _daemon = env.start("d2").await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    let names = env.event_names(&run).await;
    assert!(
        !names.contains(&"rollback_started".to_string()),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_owner_that_comes_back_is_fenced_off_and_the_run_finishes_once() {
    let env = Env::new(&["main"], SETTINGS).await;
    let work = common::scratch_dir();
    let (plan, set) = one_table(work.path(), "6s");
    let a = env.start("alpha").await;
    let run = Api::new(&a).submit(SUBMITTER, &plan, &set).await;
    env.wait_for_event(&run, "check_sample", MINUTE).await;
    // Only alpha runs so far, so it owns the run. Freeze it past its lease.
    assert_eq!(env.run_row(&run).await["owner"], "alpha");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(a.pid(), libc::SIGSTOP) };
    let _b = env.start("beta").await;
    // beta claims it (epoch 2) once alpha's lease has run out, but waits for the
    // target lock alpha's frozen session still holds.
    env.wait_for_row(&run, "beta's claim", |row| {
        row["owner"] == "beta" && row["epoch"] == 2
    })
    .await;
    // SAFETY: as above.
    unsafe { libc::kill(a.pid(), libc::SIGCONT) };
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    let events = env.events(&run).await;
    let names = names(&events);
    assert_eq!(
        names.iter().filter(|n| **n == "run_finished").count(),
        1,
        "{names:?}"
    );
    // alpha wrote nothing after losing the lease: every event after beta's
    // resume comes from beta's part of the run, and alpha said it stopped.
    let resumed_at = events
        .iter()
        .position(|e| e["event"] == "run_resumed" && e["owner"] == "beta")
        .unwrap();
    assert!(
        events[resumed_at..]
            .iter()
            .all(|e| e["event"] != "soak_started"),
        "{names:?}"
    );
    let log = a.log_text();
    assert!(log.contains("lost the run's lease"), "{log}");
    let finished = events
        .iter()
        .find(|e| e["event"] == "soak_finished")
        .unwrap();
    assert_eq!(finished["tallies"][0]["valid"], 12, "{finished}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_the_backup_parks_before_the_change_and_the_restart_prepares_again() {
    let env = Env::new(&["main"], SETTINGS).await;
    let db = env.target("main");
    db.execute("CREATE TABLE accounts AS SELECT g AS id FROM generate_series(1, 1000) g")
        .await;
    // pg_dump waits for ACCESS SHARE on every table: held up until the daemon
    // has taken in the SIGTERM.
    let blocker = db.client().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let work = common::scratch_dir();
    let tail = format!("backup:\n  format: custom\n{}", soak("1s", "SELECT 1", 1));
    let (plan, set) = plan_dir(work.path(), "main", ONE_TABLE, &tail);
    let mut daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    db.wait_for(
        "pg_dump waiting on the lock",
        "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name LIKE 'pgshepherd-backup %' \
           AND wait_event_type = 'Lock')",
    )
    .await;
    daemon.send_sigterm();
    common::eventually("the daemon shutting down", || async {
        daemon.log_text().contains("shutting down").then_some(())
    })
    .await;
    blocker.batch_execute("ROLLBACK").await.unwrap();
    // The backup finishes (it is not a waiting step), and the run parks at the
    // checkpoint before the first migration.
    assert_eq!(daemon.wait_exit(common::PATIENCE), Some(0));
    let row = env.run_row(&run).await;
    assert!(row["owner"].is_null(), "{row}");
    assert!(!db.table_exists("t").await);

    // Nothing was changed, so the restart goes through the preparation again
    // (window, gate, baselines, a fresh verified backup) before migrating.
    let _daemon = env.start("d2").await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    let events = env.events(&run).await;
    let names = names(&events);
    let resumed = names.iter().rposition(|n| *n == "run_resumed").unwrap();
    let after = &names[resumed..];
    let at = |n: &str| {
        after
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("{n} missing after the resume: {names:?}"))
    };
    assert!(at("baseline_measured") < at("backup_verified"), "{names:?}");
    assert!(at("backup_verified") < at("migration_started"), "{names:?}");
}
