//! `pgshepherd run` through a real PgBouncer: session mode keeps one server
//! session per client and works; transaction and statement mode share server
//! sessions between clients, which would break the run's advisory lock and its
//! migrations' session settings, so the run is refused before anything changes
//! and leaves no lock behind on a pooled server session.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::TestDb;
use common::pgbouncer::{PgBouncer, PoolMode};
use serde_json::Value;

/// What the refusal tells the user to do.
const ADVICE: &str = "pgshepherd needs one session for its lock and migrations; use pool_mode=session or a direct URL";

struct Run {
    code: i32,
    events: Vec<Value>,
    stderr: String,
}

impl Run {
    fn finished(&self) -> &Value {
        let last = self.events.last().expect("no events on stdout");
        assert_eq!(last["event"], "run_finished", "{}", self.stderr);
        last
    }

    fn reason(&self) -> &str {
        self.finished()["reason"].as_str().unwrap_or("")
    }

    fn has(&self, event: &str) -> bool {
        self.events.iter().any(|e| e["event"] == event)
    }
}

/// `pgshepherd run PLAN --database-url URL --now --json`, to its end.
fn run(plan: &Path, url: &str, backups: &Path) -> Run {
    let out = common::output_within(
        "pgshepherd run",
        std::process::Command::new(common::pgshepherd_bin())
            .arg("run")
            .arg(plan)
            .args(["--database-url", url, "--now", "--json", "--backup-dir"])
            .arg(backups)
            .stdout(Stdio::piped()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{stderr}"))
        })
        .collect();
    Run {
        code: out.status.code().unwrap_or(-1),
        events,
        stderr,
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Advisory locks held in `db`, as the server (not the pooler) sees them.
async fn advisory_locks(db: &TestDb) -> i64 {
    db.query_i64(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .await
}

async fn history_exists(db: &TestDb) -> bool {
    db.query_i64("SELECT (to_regclass('pgshepherd.history') IS NOT NULL)::int")
        .await
        == 1
}

/// Refused before the window, the lock, the backup and the first migration:
/// nothing on the target, no backup, no lock held by a pooled server session.
async fn refused_before_anything_changed(mode: PoolMode, wording: &str) {
    let db = common::fresh_db().await;
    let dir = common::scratch_dir();
    let plan = common::one_table_plan(dir.path(), "testdb", "1s", "");
    let backups = dir.path().join("backups");
    let bouncer = PgBouncer::start(mode);

    let refused = run(&plan, &bouncer.route(&db.url), &backups);
    assert_eq!(refused.code, 5, "{}", refused.stderr);
    assert_eq!(refused.finished()["outcome"], "stopped");
    assert!(refused.reason().contains(wording), "{}", refused.reason());
    assert!(refused.reason().contains(ADVICE), "{}", refused.reason());
    assert!(refused.stderr.contains(ADVICE), "{}", refused.stderr);
    for event in ["lock_acquired", "backup_started", "migration_started"] {
        assert!(!refused.has(event), "{event} in {:?}", refused.events);
    }
    assert!(!db.table_exists("t").await);
    assert!(!history_exists(&db).await);
    let written: Vec<PathBuf> = files_under(&backups)
        .into_iter()
        .filter(|p| {
            let name = p.to_string_lossy();
            !(name.ends_with(".jsonl") || name.ends_with(".state.json"))
        })
        .collect();
    assert!(written.is_empty(), "backup files written: {written:?}");
    // PgBouncer still holds its server connections: none of them holds the lock.
    assert_eq!(advisory_locks(&db).await, 0, "{}", bouncer.log());

    // So a direct run of the same plan is not told the target is locked.
    let direct = run(&plan, &db.url, &backups);
    assert_eq!(direct.code, 0, "{}", direct.stderr);
    assert_eq!(direct.finished()["outcome"], "succeeded");
    assert!(db.table_exists("t").await);
}

#[tokio::test]
async fn transaction_mode_is_refused_before_anything_changes_and_leaves_no_lock() {
    refused_before_anything_changed(PoolMode::Transaction, "pooler in transaction mode").await;
}

#[tokio::test]
async fn statement_mode_is_refused_before_anything_changes() {
    refused_before_anything_changed(PoolMode::Statement, "pooler in statement mode").await;
}

#[tokio::test]
async fn session_mode_runs_end_to_end() {
    let db = common::fresh_db().await;
    let dir = common::scratch_dir();
    let plan = common::one_table_plan(dir.path(), "testdb", "1s", "");
    let bouncer = PgBouncer::start(PoolMode::Session);

    let through = run(&plan, &bouncer.route(&db.url), &dir.path().join("backups"));
    assert_eq!(through.code, 0, "{}\n{}", through.stderr, bouncer.log());
    assert_eq!(through.finished()["outcome"], "succeeded");
    for event in ["lock_acquired", "backup_verified", "migration_applied"] {
        assert!(through.has(event), "no {event}: {}", through.stderr);
    }
    assert!(db.table_exists("t").await);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM pgshepherd.history WHERE version = 1")
            .await,
        1
    );
    // The lock went with the run's session: PgBouncer reset it (DISCARD ALL)
    // before handing the server session on.
    assert_eq!(advisory_locks(&db).await, 0, "{}", bouncer.log());
}

/// The lock itself checks the session before asking for the lock (a daemon
/// that resumes a run takes it without a new preflight): through a
/// transaction-mode pooler it refuses, and no pooled server session is left
/// holding the lock.
#[tokio::test]
async fn the_lock_refuses_a_shared_session_without_taking_the_lock() {
    use pgshepherd::pg::{Dsn, TargetLock};
    let db = common::fresh_db().await;
    let bouncer = PgBouncer::start(PoolMode::Transaction);
    let pooled: Dsn = bouncer.route(&db.url).parse().unwrap();
    let patience = std::time::Duration::from_secs(1);

    let refused = common::within("the lock through the pooler", async {
        TargetLock::acquire(&pooled, "pgshepherd-test", patience, |_| {}).await
    })
    .await;
    let Err(e) = refused else {
        panic!("took the lock through a transaction-mode pooler")
    };
    assert!(e.is_pooler(), "{e}");
    assert!(e.to_string().contains(ADVICE), "{e}");
    assert_eq!(advisory_locks(&db).await, 0, "{}", bouncer.log());

    let lock = TargetLock::acquire(&db.dsn, "pgshepherd-test", patience, |_| {})
        .await
        .unwrap_or_else(|e| panic!("direct: {e}"));
    assert!(lock.answers().await);
    assert_eq!(advisory_locks(&db).await, 1);
}

/// The daemon drives its runs with the same code: a target whose DSN goes
/// through a transaction-mode pooler ends its run `stopped` with the same
/// advice, nothing changed and no lock left.
#[tokio::test]
async fn the_daemon_stops_a_run_whose_target_goes_through_a_transaction_pooler() {
    use common::daemon::{Api, Env, ONE_TABLE, SUBMITTER, plan_dir};
    let bouncer = PgBouncer::start(PoolMode::Transaction);
    let mut env = Env::new(&["main"], "poll_interval: 300ms").await;
    let pooled = bouncer.route(&env.target("main").url);
    env.set_target_url("main", &pooled);
    let work = common::scratch_dir();
    let tail = "soak:\n  duration: 1s\n  interval: 500ms\n  baseline_samples: 1\n  checks:\n    \
                - name: one\n      sql: \"SELECT 1\"\n      max: 1\n      min_samples: 1\n      consecutive: 1\n";
    let (plan, set) = plan_dir(work.path(), "main", ONE_TABLE, tail);
    let daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;

    let row = env.wait_finished(&run, common::PATIENCE).await;
    assert_eq!(row["outcome"], "stopped", "{row}");
    assert!(
        row["reason"].as_str().unwrap_or("").contains(ADVICE),
        "{row}"
    );
    let names = env.event_names(&run).await;
    for event in ["lock_acquired", "backup_started", "migration_started"] {
        assert!(!names.iter().any(|n| n == event), "{event} in {names:?}");
    }
    let target = env.target("main");
    assert!(!target.table_exists("t").await);
    assert!(!history_exists(target).await);
    assert_eq!(advisory_locks(target).await, 0, "{}", bouncer.log());
    drop(daemon);
}

/// The daemon's own state database needs one session too (its schema lock and
/// upgrade, the daemon name's lock): through a transaction-mode pooler the
/// daemon refuses to start, saying why, and leaves no schema lock behind.
#[tokio::test]
async fn the_daemon_refuses_a_state_database_behind_a_transaction_pooler() {
    use common::daemon::Env;
    let bouncer = PgBouncer::start(PoolMode::Transaction);
    let mut env = Env::new(&["main"], "").await;
    let pooled = bouncer.route(&env.state.url);
    env.set_state_url(&pooled);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let config = env.config("d1", port);

    let out = common::output_within(
        "pgshepherd daemon with a pooled state database",
        std::process::Command::new(common::pgshepherd_bin())
            .args(["daemon", "--config"])
            .arg(&config),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the state_database URL goes through a pooler in transaction mode"),
        "{stderr}"
    );
    assert!(stderr.contains(ADVICE), "{stderr}");
    assert_eq!(advisory_locks(&env.state).await, 0, "{}", bouncer.log());
}
