//! What the soak watches and when: a real `pgshepherd run --json` against a real
//! PostgreSQL.
//!
//! - A paused process does not make up its missed samples in a burst, and the
//!   pause does not count as soaked.
//! - pgshepherd's own rollbacks (a verify script, a lock-timeout retry) do not
//!   move `rollbacks_per_second`; the application's do.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use common::live_run::LiveRun as Run;

fn ts(event: &Value) -> DateTime<Utc> {
    event["ts"].as_str().unwrap().parse().unwrap()
}

fn samples<'a>(events: &'a [Value], step: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == "check_sample" && e["step"] == step)
        .collect()
}

fn find<'a>(events: &'a [Value], name: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == name)
        .unwrap_or_else(|| panic!("no {name} in {events:#?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_process_takes_no_burst_of_samples_and_the_pause_is_not_soaked() {
    let db = common::fresh_db().await;
    let dir = common::scratch_dir();
    // 4 s at 500 ms: 8 samples.
    let plan = common::one_table_plan(dir.path(), "db", "4s", "rollback:\n  confirm: 0s\n");
    let mut run = Run::start(&plan, &db.url, &dir.path().join("backups"));
    let started = run.wait_for("soak_started").await;
    run.wait_for("check_sample").await;
    run.wait_for("check_sample").await;
    // The fault itself lasts a while: the process is frozen, as by a stalled
    // write or a paused VM, across several due samples.
    let pause = Duration::from_secs(2);
    run.signal(libc::SIGSTOP);
    tokio::time::sleep(pause).await;
    run.signal(libc::SIGCONT);
    let finished = run.wait_for("soak_finished").await;
    let (code, events) = run.finish().await;
    assert_eq!(code, 0, "{events:#?}");
    assert_eq!(finished["passed"], true, "{finished}");

    let interval = 0.5;
    let soak = samples(&events, "soak");
    assert_eq!(soak.len(), 8, "every planned sample is taken: {soak:#?}");
    // No burst: consecutive samples stay about an interval apart (at least three
    // quarters of one by construction; half leaves room for scheduling noise).
    for pair in soak.windows(2) {
        let gap = (ts(pair[1]) - ts(pair[0])).as_seconds_f64();
        assert!(
            gap >= interval / 2.0,
            "samples {gap}s apart:\n{}\n{}",
            pair[0],
            pair[1]
        );
    }
    // The first sample after the pause was due during it and says how late it was.
    let late: Vec<f64> = soak
        .iter()
        .map(|s| s["late_ms"].as_f64().unwrap())
        .collect();
    let latest = late.iter().cloned().fold(0.0, f64::max);
    let at_least = (pause.as_secs_f64() - interval) * 1000.0;
    assert!(latest >= at_least, "late_ms {late:?}");
    // The soak watched its full duration, and the pause was not part of it: the
    // wall time from start to finish exceeds the soaked time by about the pause.
    let soaked = finished["elapsed_s"].as_f64().unwrap();
    assert!(soaked >= 4.0, "{finished}");
    let wall = (ts(&finished) - ts(&started)).as_seconds_f64();
    assert!(
        wall - soaked >= pause.as_secs_f64() - interval - interval / 4.0,
        "soaked {soaked}s of {wall}s wall time, paused {pause:?}"
    );
    // And each sample's elapsed_s is watched time: never more than its place in
    // the schedule plus a quarter interval, the pause excluded.
    for (n, s) in soak.iter().enumerate() {
        let elapsed = s["elapsed_s"].as_f64().unwrap();
        let place = (n + 1) as f64 * interval;
        assert!(elapsed >= place, "sample {}: {s}", n + 1);
        assert!(
            elapsed < place + pause.as_secs_f64() - interval,
            "sample {} counts the pause as soaked: {s}",
            n + 1
        );
    }
}

/// A plan that adds a column to `accounts` with a verify script that writes
/// (a temporary table and a row, both undone), watched by `rollbacks_per_second`
/// with no tolerance at all, for a soak long enough for PostgreSQL to publish an
/// idle session's statistics on its own (10 s). A second check, `ctl`, fails
/// (division by zero, inconclusive and ignored) while `ctl.d` is 0.
const SCHEMA: &str = "CREATE TABLE accounts (id int PRIMARY KEY); \
     CREATE TABLE ctl (d int); INSERT INTO ctl VALUES (0);";

fn rollbacks_plan(dir: &Path) -> PathBuf {
    let set = dir.join("migrations");
    std::fs::create_dir_all(&set).unwrap();
    std::fs::write(
        set.join("V1__note.sql"),
        "ALTER TABLE accounts ADD COLUMN note text;\n",
    )
    .unwrap();
    std::fs::write(
        set.join("V1__note.down.sql"),
        "ALTER TABLE accounts DROP COLUMN note;\n",
    )
    .unwrap();
    std::fs::write(
        set.join("V1__note.verify.sql"),
        "CREATE TEMP TABLE probe AS SELECT note FROM accounts;\n\
         INSERT INTO accounts (id, note) VALUES (-1, 'verify');\n\
         DO $$ BEGIN\n\
           IF NOT EXISTS (SELECT 1 FROM accounts WHERE note = 'verify') THEN\n\
             RAISE EXCEPTION 'note is not writable';\n\
           END IF;\n\
         END $$;\n",
    )
    .unwrap();
    let plan = dir.join("plan.yaml");
    std::fs::write(
        &plan,
        "name: rollbacks\ntarget: db\nmigrations: migrations\n\
         lock:\n  lock_timeout: 200ms\n  retries: 50\n  backoff: 100ms\n  max_backoff: 200ms\n\
         soak:\n  duration: 12s\n  interval: 1s\n  baseline_samples: 1\n  checks:\n\
         \x20   - name: rollbacks\n      builtin: rollbacks_per_second\n      max: 0\n\
         \x20     consecutive: 1\n      min_samples: 1\n\
         \x20   - name: ctl\n      sql: SELECT 1 / d FROM ctl\n      max: 1\n\
         \x20     on_inconclusive: ignore\n      min_samples: 1\n\
         rollback:\n  confirm: 0s\n",
    )
    .unwrap();
    plan
}

#[tokio::test(flavor = "multi_thread")]
async fn own_verify_and_lock_retry_rollbacks_do_not_count_but_the_applications_do() {
    let db = common::fresh_db().await;
    db.execute(SCHEMA).await;
    let dir = common::scratch_dir();
    let plan = rollbacks_plan(dir.path());

    // 1. pgshepherd's own: the first attempt of the migration waits behind an
    // application's transaction and hits lock_timeout (rolled back, retried);
    // the verify script is rolled back too. On an idle database the soak must
    // see no rollback at all, however long it lasts.
    let blocker = db.client().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE accounts IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let mut run = Run::start(&plan, &db.url, &dir.path().join("backups"));
    run.wait_for("migration_retry").await;
    // COMMIT, not ROLLBACK: the test's own session must not add one either.
    blocker.batch_execute("COMMIT").await.unwrap();
    let before_soak = run.wait_for("verify_passed").await;
    assert_eq!(before_soak["version"], 1);
    // A check that fails is pgshepherd's own failed read: three of them, then
    // it recovers.
    let mut failed = 0;
    while failed < 3 {
        let sample = run.wait_for("check_sample").await;
        if sample["check"] == "ctl" {
            assert_eq!(sample["valid"], false, "{sample}");
            failed += 1;
        }
    }
    db.execute("UPDATE ctl SET d = 1").await;
    let finished = run.wait_for("soak_finished").await;
    let (code, events) = run.finish().await;
    let all = samples(&events, "soak");
    let soak: Vec<&Value> = all
        .iter()
        .copied()
        .filter(|s| s["check"] == "rollbacks")
        .collect();
    assert_eq!(code, 0, "{soak:#?}");
    assert_eq!(finished["passed"], true, "{finished}");
    assert_eq!(soak.len(), 12);
    assert!(
        soak.iter().all(|s| s["value"] == 0.0),
        "{:?}",
        soak.iter().map(|s| &s["value"]).collect::<Vec<_>>()
    );
    assert!(find(&events, "migration_applied")["attempts"].as_u64() >= Some(2));
    // The verify script's writes were undone.
    assert_eq!(db.row_count("accounts").await, 0);
    assert!(
        db.query_i64("SELECT count(*) FROM pg_class WHERE relname = 'probe'")
            .await
            == 0
    );

    // 2. The application's: another session rolls back during the soak.
    let db = common::fresh_db().await;
    db.execute(SCHEMA).await;
    db.execute("UPDATE ctl SET d = 1").await;
    let dir = common::scratch_dir();
    let plan = rollbacks_plan(dir.path());
    let mut run = Run::start(&plan, &db.url, &dir.path().join("backups"));
    run.wait_for("check_sample").await;
    let app = db.client().await;
    for _ in 0..3 {
        app.batch_execute("BEGIN; INSERT INTO accounts (id) VALUES (1); ROLLBACK")
            .await
            .unwrap();
    }
    // Published at once rather than at the server's pace, so the soak's next
    // samples see them.
    app.batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    let verdict = run.wait_for("check_verdict").await;
    let (code, events) = run.finish().await;
    assert_eq!(verdict["check"], "rollbacks", "{verdict}");
    assert_eq!(verdict["decision"], "roll_back", "{verdict}");
    assert_eq!(code, 3, "{:#?}", samples(&events, "soak"));
    let note = db
        .query_i64(
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_name = 'accounts' AND column_name = 'note'",
        )
        .await;
    assert_eq!(note, 0, "the change was rolled back");
}
