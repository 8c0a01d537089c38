//! Undo that keeps users' writes (issue 11): a data migration with
//! `-- pgshepherd:capture` merges company B into A through the real binary; users
//! then change some of the moved rows; `pgshepherd undo` gives back what the
//! migration changed in each mode, keeping users' writes, and reports every
//! conflict.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::TestDb;
use common::live_run::LiveRun;
use serde_json::Value;

const SCHEMA: &str = "
CREATE TABLE companies (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE users (id int PRIMARY KEY, company_id int NOT NULL REFERENCES companies,
                    email text NOT NULL UNIQUE, name text);
CREATE TABLE invoices (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                       company_id int NOT NULL REFERENCES companies, amount numeric(10,2) NOT NULL,
                       amount_cents bigint GENERATED ALWAYS AS ((amount * 100)::bigint) STORED);
INSERT INTO companies VALUES (1, 'A'), (2, 'B'), (3, 'C');
INSERT INTO users VALUES (1, 1, 'u1@a', 'one'), (2, 1, 'u2@a', 'two'), (3, 2, 'u3@b', 'three'),
                         (4, 2, 'u4@b', 'four'), (5, 2, 'u5@b', 'five'), (6, 3, 'u6@c', 'six');
INSERT INTO invoices (company_id, amount) VALUES (1, 10.50), (2, 20.00), (2, 30.25), (3, 40.00);
";

const MERGE: &str = "-- Merge company B (2) into A (1).
-- pgshepherd:capture public.companies, public.users, public.invoices

UPDATE users SET company_id = 1 WHERE company_id = 2;
UPDATE invoices SET company_id = 1 WHERE company_id = 2;
DELETE FROM companies WHERE id = 2;
";

/// Every row of the three tables, in key order: compared before and after.
const SNAPSHOT: &str = "SELECT (SELECT string_agg(c::text, ';' ORDER BY id) FROM companies c) || ' | ' || \
     (SELECT string_agg(u::text, ';' ORDER BY id) FROM users u) || ' | ' || \
     (SELECT string_agg(i::text, ';' ORDER BY id) FROM invoices i)";

struct Merge {
    dir: tempfile::TempDir,
    db: TestDb,
    run_id: String,
    /// The tables before the migration.
    before: String,
}

impl Merge {
    /// A database with three companies, the merge applied by `pgshepherd run`.
    async fn applied() -> Merge {
        let db = common::fresh_db().await;
        db.execute(SCHEMA).await;
        let dir = common::scratch_dir();
        let plan = write_plan(dir.path(), MERGE);
        let before = snapshot(&db).await;
        let out = pgshepherd(dir.path(), &["run"], Some(&plan), &db.url, &["--now"]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let run_id = out.events[0]["run_id"].as_str().unwrap().to_string();
        Merge {
            dir,
            db,
            run_id,
            before,
        }
    }

    async fn undo(&self, extra: &[&str]) -> Output {
        pgshepherd(
            self.dir.path(),
            &["undo", &self.run_id],
            None,
            &self.db.url,
            extra,
        )
        .await
    }

    async fn company_of(&self, user: i32) -> i64 {
        self.db
            .query_i64(&format!(
                "SELECT company_id::bigint FROM users WHERE id = {user}"
            ))
            .await
    }
}

fn write_plan(dir: &Path, merge: &str) -> PathBuf {
    let set = dir.join("migrations");
    std::fs::create_dir_all(&set).unwrap();
    std::fs::write(set.join("V1__merge_b_into_a.sql"), merge).unwrap();
    let plan = dir.join("plan.yaml");
    std::fs::write(
        &plan,
        "name: merge\ntarget: app\nmigrations: migrations\nbackup:\n  enabled: false\n\
         rollback:\n  strategy: hold\nsoak:\n  duration: 1s\n  interval: 500ms\n  baseline_samples: 1\n  \
         checks:\n    - name: one\n      sql: SELECT 1\n      max: 1\n      min_samples: 1\n      consecutive: 1\n",
    )
    .unwrap();
    plan
}

async fn snapshot(db: &TestDb) -> String {
    let client = db.client().await;
    client.query_one(SNAPSHOT, &[]).await.unwrap().get(0)
}

struct Output {
    code: i32,
    events: Vec<Value>,
    stderr: String,
}

impl Output {
    fn finished(&self) -> &Value {
        self.events.last().expect("no events")
    }
}

async fn pgshepherd(
    cwd: &Path,
    command: &[&str],
    plan: Option<&Path>,
    url: &str,
    extra: &[&str],
) -> Output {
    let mut cmd = tokio::process::Command::new(common::pgshepherd_bin());
    cmd.args(command);
    if let Some(plan) = plan {
        cmd.arg(plan);
    }
    let out = cmd
        .args(["--database-url", url, "--json"])
        .args(extra)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{stderr}")))
        .collect();
    Output {
        code: out.status.code().unwrap_or(-1),
        events,
        stderr,
    }
}

/// Users' writes after the merge: a column the migration did not change (user
/// 3's name), one it did (user 4 moved to company C), a new user in A, and a
/// moved invoice deleted.
async fn users_write(m: &Merge) {
    m.db.execute(
        "UPDATE users SET name = 'three (renamed)' WHERE id = 3;
         UPDATE users SET company_id = 3 WHERE id = 4;
         INSERT INTO users VALUES (7, 1, 'u7@a', 'seven');
         DELETE FROM invoices WHERE id = 3;",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_merge_is_captured_and_undone_exactly_when_nobody_wrote_since() {
    let m = Merge::applied().await;
    assert_eq!(m.company_of(3).await, 1, "the merge ran");
    let captured =
        m.db.query_i64("SELECT count(*) FROM pgshepherd.captured_changes")
            .await;
    assert_eq!(captured, 3 + 2 + 1, "3 users, 2 invoices, 1 company");
    // The capture's triggers are gone with the migration's transaction.
    assert_eq!(
        m.db.query_i64("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgshepherd_capture%'")
            .await,
        0
    );

    let wrong = m.undo(&["--version", "2"]).await;
    assert_eq!(wrong.code, 2, "V2 was never captured: {}", wrong.stderr);
    let out = m.undo(&["--version", "1"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let fin = out.finished();
    assert_eq!(fin["event"], "undo_finished", "{fin}");
    assert_eq!(fin["outcome"], "reverted");
    assert_eq!(fin["tables"]["public.users"]["reverted"], 3, "{fin}");
    assert_eq!(fin["tables"]["public.companies"]["reverted"], 1, "{fin}");
    assert_eq!(snapshot(&m.db).await, m.before, "every row is back exactly");
    assert!(out.stderr.contains("undo reverted"), "{}", out.stderr);
    let history_undo =
        m.db.query_i64("SELECT last_undo FROM pgshepherd.history WHERE version = 1")
            .await;
    let recorded =
        m.db.query_i64("SELECT id FROM pgshepherd.undos WHERE mode = 'refuse'")
            .await;
    assert_eq!(history_undo, recorded, "the history row names the undo");

    // A second undo finds nothing left to revert.
    let again = m.undo(&[]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again.finished()["tables"]["public.users"]["already_undone"],
        3
    );
    assert_eq!(again.finished()["tables"]["public.users"]["reverted"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn refuse_and_dry_run_change_nothing_and_report_every_conflict() {
    let m = Merge::applied().await;
    users_write(&m).await;
    let after_users = snapshot(&m.db).await;

    let dry = m.undo(&["--dry-run", "--mode", "merge"]).await;
    assert_eq!(dry.code, 4, "{}", dry.stderr);
    assert_eq!(dry.finished()["dry_run"], true);
    assert_eq!(
        snapshot(&m.db).await,
        after_users,
        "a dry run changes nothing"
    );

    let refused = m.undo(&[]).await;
    assert_eq!(refused.code, 5, "{}", refused.stderr);
    let fin = refused.finished();
    assert_eq!(fin["outcome"], "refused", "{fin}");
    assert_eq!(fin["conflicts"], 2, "user 3 renamed, user 4 moved: {fin}");
    assert_eq!(fin["tables"]["public.invoices"]["already_gone"], 1, "{fin}");
    assert_eq!(snapshot(&m.db).await, after_users, "refuse changes nothing");
    let file = m.dir.path().join(fin["conflicts_file"].as_str().unwrap());
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let renamed = lines.iter().find(|l| l["key"]["id"] == 3).unwrap();
    assert_eq!(renamed["table"], "public.users");
    assert_eq!(renamed["operation"], "UPDATE");
    assert_eq!(renamed["before"]["company_id"], 2);
    assert_eq!(renamed["after"]["company_id"], 1);
    assert_eq!(renamed["current"]["name"], "three (renamed)");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the conflicts hold row data");
}

#[tokio::test(flavor = "multi_thread")]
async fn merge_reverts_what_users_left_alone_and_keeps_their_writes() {
    let m = Merge::applied().await;
    users_write(&m).await;
    let out = m.undo(&["--mode", "merge"]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    let fin = out.finished();
    assert_eq!(fin["outcome"], "conflicts_left", "{fin}");
    assert_eq!(
        fin["conflicts"], 1,
        "only user 4, whose company users changed: {fin}"
    );
    // B is back, with the users and the invoice users did not move.
    assert_eq!(
        m.db.query_i64("SELECT count(*) FROM companies WHERE id = 2 AND name = 'B'")
            .await,
        1
    );
    assert_eq!(m.company_of(3).await, 2);
    assert_eq!(m.company_of(5).await, 2);
    assert_eq!(m.company_of(4).await, 3, "users moved user 4: theirs stays");
    assert_eq!(
        m.db.query_i64("SELECT count(*) FROM users WHERE id = 3 AND name = 'three (renamed)'")
            .await,
        1,
        "users' rename of a reverted row is kept"
    );
    assert_eq!(m.company_of(7).await, 1, "a user added since stays");
    assert_eq!(
        m.db.query_i64("SELECT company_id::bigint FROM invoices WHERE id = 2")
            .await,
        2
    );
    assert_eq!(
        m.db.query_i64("SELECT count(*) FROM invoices WHERE id = 3")
            .await,
        0,
        "deleted by users, stays deleted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn skip_conflicts_leaves_every_row_users_touched() {
    let m = Merge::applied().await;
    users_write(&m).await;
    let out = m.undo(&["--mode", "skip-conflicts"]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert_eq!(out.finished()["conflicts"], 2, "{}", out.finished());
    assert_eq!(m.company_of(3).await, 1, "renamed by users: left as it is");
    assert_eq!(m.company_of(5).await, 2, "untouched: reverted");
}

/// Selective undo: of three merges captured in one run, only the two wrong ones
/// are undone; the third stays, and users' writes on all three stay.
#[tokio::test(flavor = "multi_thread")]
async fn a_predicate_undoes_only_the_wrong_merges() {
    let db = common::fresh_db().await;
    db.execute(SCHEMA).await;
    db.execute(
        "INSERT INTO companies VALUES (4, 'D'), (5, 'E');
         INSERT INTO users VALUES (8, 4, 'u8@d', 'eight'), (9, 5, 'u9@e', 'nine');",
    )
    .await;
    let dir = common::scratch_dir();
    let plan = write_plan(
        dir.path(),
        "-- Three merges: B, D and E into A.
-- pgshepherd:capture public.companies, public.users, public.invoices
UPDATE users SET company_id = 1 WHERE company_id IN (2, 4, 5);
UPDATE invoices SET company_id = 1 WHERE company_id IN (2, 4, 5);
DELETE FROM companies WHERE id IN (2, 4, 5);
",
    );
    let out = pgshepherd(dir.path(), &["run"], Some(&plan), &db.url, &["--now"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let run_id = out.events[0]["run_id"].as_str().unwrap().to_string();
    // Users write on rows of all three merges.
    db.execute(
        "UPDATE users SET name = 'five*' WHERE id = 5;
         UPDATE users SET name = 'eight*' WHERE id = 8;
         UPDATE users SET name = 'nine*' WHERE id = 9;",
    )
    .await;
    // D (4) was a right merge; B (2) and E (5) were wrong.
    let wrong = "(before->>'company_id')::int IN (2, 5) \
                 OR (table_name = 'public.companies' AND (key->>'id')::int IN (2, 5))";
    let out = pgshepherd(
        dir.path(),
        &["undo", &run_id],
        None,
        &db.url,
        &["--mode", "merge", "--where", wrong],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let fin = out.events.last().unwrap();
    assert_eq!(fin["tables"]["public.users"]["reverted"], 4, "{fin}");
    assert_eq!(fin["tables"]["public.users"]["filtered_out"], 1, "{fin}");
    assert_eq!(
        fin["tables"]["public.companies"]["filtered_out"], 1,
        "{fin}"
    );
    let company = |u: i32| {
        let db = &db;
        async move {
            db.query_i64(&format!(
                "SELECT company_id::bigint FROM users WHERE id = {u}"
            ))
            .await
        }
    };
    assert_eq!(company(5).await, 2);
    assert_eq!(company(9).await, 5);
    assert_eq!(company(8).await, 1, "the right merge stays");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM companies WHERE id IN (2, 5)")
            .await,
        2
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM companies WHERE id = 4")
            .await,
        0
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM users WHERE name LIKE '%*'")
            .await,
        3,
        "users' writes on all three merges stay"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_captured_table_without_a_key_is_refused_before_anything_changes() {
    let db = common::fresh_db().await;
    db.execute(
        "CREATE TABLE events (at timestamptz, what text); INSERT INTO events VALUES (now(), 'x');",
    )
    .await;
    let dir = common::scratch_dir();
    let plan = write_plan(
        dir.path(),
        "-- pgshepherd:capture public.events\nUPDATE events SET what = 'y';\n",
    );
    let out = pgshepherd(dir.path(), &["run"], Some(&plan), &db.url, &["--now"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    let fin = out.finished();
    assert_eq!(fin["outcome"], "stopped");
    assert!(
        fin["reason"]
            .as_str()
            .unwrap()
            .contains("no primary key or unique key"),
        "{fin}"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM events WHERE what = 'x'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn truncating_a_captured_table_fails_the_migration_and_changes_nothing() {
    let db = common::fresh_db().await;
    db.execute(SCHEMA).await;
    let before = snapshot(&db).await;
    let dir = common::scratch_dir();
    let plan = write_plan(
        dir.path(),
        "-- pgshepherd:capture public.invoices\nTRUNCATE invoices;\n",
    );
    let out = pgshepherd(dir.path(), &["run"], Some(&plan), &db.url, &["--now"]).await;
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("cannot be captured"), "{}", out.stderr);
    assert_eq!(snapshot(&db).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn undo_of_an_unknown_run_is_invalid_input() {
    let db = common::fresh_db().await;
    let dir = common::scratch_dir();
    let out = pgshepherd(dir.path(), &["undo", "nosuchrun"], None, &db.url, &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.finished()["reason"]
            .as_str()
            .unwrap()
            .contains("no captured changes"),
        "{}",
        out.finished()
    );
}

/// A plan whose V1 (captured, no down script) multiplies every `qty` by ten and
/// whose check breaches once rows with id > 1000 exist; `users` runs during the
/// soak (it must insert such rows). Returns the exit code, the events and the
/// database.
async fn tenfold_breach(
    data_conflicts: &str,
    users: &str,
) -> (i32, Vec<Value>, TestDb, tempfile::TempDir) {
    let db = common::fresh_db().await;
    db.execute(
        "CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, note text);
         INSERT INTO items SELECT g, g, 'n' || g FROM generate_series(1, 50) g;",
    )
    .await;
    let dir = common::scratch_dir();
    let set = dir.path().join("migrations");
    std::fs::create_dir_all(&set).unwrap();
    std::fs::write(
        set.join("V1__tenfold.sql"),
        "-- pgshepherd:capture public.items\nUPDATE items SET qty = qty * 10;\n",
    )
    .unwrap();
    let plan = dir.path().join("plan.yaml");
    // Breaches only once the writer's rows are there, so they are written
    // during the soak, before the rollback.
    std::fs::write(
        &plan,
        format!(
            "name: tenfold\ntarget: app\nmigrations: migrations\nbackup:\n  enabled: false\n\
             rollback:\n  data_conflicts: {data_conflicts}\n  confirm: 0s\nsoak:\n  duration: 60s\n  interval: 300ms\n  \
             baseline_samples: 1\n  checks:\n    - name: qty\n      sql: SELECT CASE WHEN EXISTS (SELECT FROM items WHERE id > 1000) \
             THEN max(qty) ELSE 0 END FROM items\n      max: 100\n      consecutive: 1\n      min_samples: 1\n"
        ),
    )
    .unwrap();
    let mut run = LiveRun::start(&plan, &db.url, &dir.path().join("backups"));
    run.wait_for("soak_started").await;
    assert_eq!(
        db.query_i64("SELECT qty::bigint FROM items WHERE id = 7")
            .await,
        70
    );
    db.execute(users).await;
    let (code, events) = run.finish().await;
    (code, events, db, dir)
}

/// A soak breach rolls back a captured migration that has no down script by
/// giving its rows back: the rows users inserted during the soak survive, and
/// with `data_conflicts: merge` so does their change to another column of a
/// migrated row.
#[tokio::test(flavor = "multi_thread")]
async fn a_breach_gives_a_captured_migrations_rows_back_and_keeps_the_writers_rows() {
    let (code, events, db, _dir) = tenfold_breach(
        "merge",
        "UPDATE items SET note = 'edited' WHERE id = 7;
         INSERT INTO items SELECT g, 1, 'writer' FROM generate_series(1001, 1010) g;",
    )
    .await;
    assert_eq!(code, 3, "{events:#?}");
    let given_back = events
        .iter()
        .find(|e| e["event"] == "undo_finished")
        .expect("the rollback gave the rows back");
    assert_eq!(given_back["step"], "rollback");
    assert_eq!(
        given_back["tables"]["public.items"]["reverted"], 50,
        "{given_back}"
    );
    assert_eq!(
        db.query_i64("SELECT sum(qty)::bigint FROM items WHERE id <= 50")
            .await,
        1275
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM items WHERE id > 1000")
            .await,
        10
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM items WHERE id = 7 AND qty = 7 AND note = 'edited'")
            .await,
        1,
        "merge: the migration's column back, the writer's column kept"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM pgshepherd.history")
            .await,
        0,
        "V1 is no longer applied"
    );
}

/// With the default `data_conflicts: refuse`, a row users changed during the
/// soak stops the rollback: nothing of the migration is given back, the
/// conflict is written down, and the run needs a human.
#[tokio::test(flavor = "multi_thread")]
async fn a_conflict_during_the_soak_stops_a_refusing_rollback_for_a_human() {
    let (code, events, db, dir) = tenfold_breach(
        "refuse",
        "UPDATE items SET qty = 5 WHERE id = 7;
         INSERT INTO items VALUES (1001, 1, 'writer');",
    )
    .await;
    assert_eq!(code, 4, "{events:#?}");
    let refused = events
        .iter()
        .find(|e| e["event"] == "undo_finished")
        .expect("the rollback tried to give the rows back");
    assert_eq!(refused["outcome"], "refused", "{refused}");
    assert_eq!(refused["conflicts"], 1, "{refused}");
    let file = refused["conflicts_file"].as_str().unwrap();
    assert!(
        file.starts_with(&dir.path().display().to_string()),
        "{file}"
    );
    assert!(std::fs::read_to_string(file).unwrap().contains("\"id\":7"));
    assert_eq!(
        db.query_i64("SELECT qty::bigint FROM items WHERE id = 8")
            .await,
        80,
        "nothing given back"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM pgshepherd.history")
            .await,
        1
    );
    let fin = events.last().unwrap();
    assert_eq!(fin["outcome"], "needs_human", "{fin}");
    assert!(
        fin["reason"].as_str().unwrap().contains("--mode merge"),
        "{fin}"
    );
}

/// `--config FILE --target NAME` finds the database as `run --config` does; an
/// unknown target is invalid input naming the known ones.
#[tokio::test(flavor = "multi_thread")]
async fn undo_finds_the_target_in_the_config() {
    let m = Merge::applied().await;
    let config = m.dir.path().join("pgshepherd.yaml");
    std::fs::write(
        &config,
        format!("targets:\n  app:\n    dsn: {}\n", m.db.url),
    )
    .unwrap();
    let with = |target: &'static str| {
        let config = config.clone();
        let m = &m;
        async move {
            let out = tokio::process::Command::new(common::pgshepherd_bin())
                .args(["undo", &m.run_id, "--json", "--target", target, "--config"])
                .arg(&config)
                .current_dir(m.dir.path())
                .output()
                .await
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        }
    };
    let (code, stderr) = with("nope").await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("target \"nope\" is not defined (targets: app)"),
        "{stderr}"
    );
    let (code, stderr) = with("app").await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(snapshot(&m.db).await, m.before);
}

/// A `pgshepherd undo` killed with SIGKILL in the middle of its transaction
/// leaves the target untouched (the server rolls the transaction back), and the
/// undo can simply be run again.
#[tokio::test(flavor = "multi_thread")]
async fn an_undo_killed_midway_leaves_the_target_untouched_and_runs_again() {
    let db = common::fresh_db().await;
    db.execute(
        "CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL);
         INSERT INTO items SELECT g, g % 100 FROM generate_series(1, 200000) g;",
    )
    .await;
    let original = db.query_i64("SELECT sum(qty)::bigint FROM items").await;
    let dir = common::scratch_dir();
    let plan = write_plan(
        dir.path(),
        "-- pgshepherd:capture public.items\nUPDATE items SET qty = qty + 1;\n",
    );
    let out = pgshepherd(dir.path(), &["run"], Some(&plan), &db.url, &["--now"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let run_id = out.events[0]["run_id"].as_str().unwrap().to_string();
    let migrated = db.query_i64("SELECT sum(qty)::bigint FROM items").await;
    assert_eq!(migrated, original + 200_000);

    // A row lock the undo's UPDATE must wait for holds it in the middle of its
    // transaction, after it changed the rows before that one.
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; SELECT * FROM items WHERE id = 150000 FOR UPDATE")
        .await
        .unwrap();
    let mut undo = tokio::process::Command::new(common::pgshepherd_bin())
        .args(["undo", &run_id, "--database-url", &db.url, "--json"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // In the middle: its session waits for the row, inside the revert.
    common::wait_for_sql(
        &db.dsn,
        "the undo waiting for the held row inside its transaction",
        "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = 'pgshepherd undo' \
           AND state = 'active' AND wait_event_type = 'Lock' AND query LIKE '%pgshepherd.captured_rows%')",
    )
    .await;
    undo.start_kill().unwrap();
    let status = undo.wait().await.unwrap();
    assert!(!status.success());
    // The server ends the orphaned session and rolls its transaction back.
    common::wait_for_sql(
        &db.dsn,
        "the killed undo's session gone",
        "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = 'pgshepherd undo')",
    )
    .await;
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        db.query_i64("SELECT sum(qty)::bigint FROM items").await,
        migrated,
        "untouched"
    );
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM pgshepherd.captured_changes WHERE undone_by IS NOT NULL"
        )
        .await,
        0
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM pgshepherd.undos").await,
        0
    );

    let again = pgshepherd(dir.path(), &["undo", &run_id], None, &db.url, &[]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again.finished()["tables"]["public.items"]["reverted"],
        200_000
    );
    assert_eq!(
        db.query_i64("SELECT sum(qty)::bigint FROM items").await,
        original
    );
}

/// A capture past its `keep_until` is dropped, partition and all, when the
/// next migration on that database captures; its run has nothing left to undo,
/// while a capture kept `forever` stays.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_capture_is_dropped_when_the_next_migration_captures() {
    let db = common::fresh_db().await;
    db.execute(
        "CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL);
         INSERT INTO items SELECT g, 0 FROM generate_series(1, 10) g;",
    )
    .await;
    let dir = common::scratch_dir();
    let plan = write_plan(
        dir.path(),
        "-- pgshepherd:capture public.items\nUPDATE items SET qty = qty + 1;\n",
    );
    let first = pgshepherd(dir.path(), &["run"], Some(&plan), &db.url, &["--now"]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let first_run = first.events[0]["run_id"].as_str().unwrap().to_string();
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM pgshepherd.captures \
              WHERE keep_until BETWEEN now() + interval '29 days' AND now() + interval '31 days'"
        )
        .await,
        1,
        "kept 30 days by default"
    );
    // The first capture expires; the second migration keeps its own forever.
    db.execute("UPDATE pgshepherd.captures SET keep_until = now() - interval '1 second'")
        .await;
    std::fs::write(
        dir.path().join("migrations/V2__again.sql"),
        "-- pgshepherd:capture public.items\nUPDATE items SET qty = qty + 1;\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(&plan).unwrap().replace(
        "  strategy: hold\n",
        "  strategy: hold\n  keep_captured_changes: forever\n",
    );
    std::fs::write(&plan, text).unwrap();
    let second = pgshepherd(dir.path(), &["run"], Some(&plan), &db.url, &["--now"]).await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM pgshepherd.captures WHERE keep_until IS NULL")
            .await,
        1
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM pgshepherd.captures")
            .await,
        1,
        "the expired capture is gone"
    );
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'pgshepherd.captured_rows'::regclass"
        )
        .await,
        1,
        "and its partition with it"
    );
    let undo = pgshepherd(dir.path(), &["undo", &first_run], None, &db.url, &[]).await;
    assert_eq!(undo.code, 2, "{}", undo.stderr);
    assert!(
        undo.stderr.contains("no captured changes"),
        "{}",
        undo.stderr
    );
}

/// A migration of many statements, some touching the same rows again, one
/// moving a row to a new key, is undone statement by statement in reverse: the
/// table is back exactly as it was.
#[tokio::test(flavor = "multi_thread")]
async fn many_statements_over_the_same_rows_are_undone_in_reverse_order() {
    let db = common::fresh_db().await;
    db.execute(
        "CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, tags text[] NOT NULL DEFAULT '{}');
         INSERT INTO items SELECT g, g, ARRAY['t' || g] FROM generate_series(1, 30) g;",
    )
    .await;
    let before = db
        .query_i64("SELECT hashtext(string_agg(i::text, ',' ORDER BY id))::bigint FROM items i")
        .await;
    let mut sql = String::from("-- pgshepherd:capture public.items\n");
    for n in 1..=20 {
        sql.push_str(&format!(
            "UPDATE items SET qty = qty * 2 + {n}, tags = tags || 'v{n}'::text WHERE id <= {n};\n"
        ));
    }
    sql.push_str(
        "DELETE FROM items WHERE id = 30;\nINSERT INTO items VALUES (31, 5, '{x}');\n\
         UPDATE items SET id = 40 WHERE id = 29;\n",
    );
    let dir = common::scratch_dir();
    let plan = write_plan(dir.path(), &sql);
    let out = pgshepherd(dir.path(), &["run"], Some(&plan), &db.url, &["--now"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let run_id = out.events[0]["run_id"].as_str().unwrap().to_string();
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'pgshepherd' \
               AND tablename LIKE 'captured_rows_%'"
        )
        .await,
        1,
        "a capture of this many statements is indexed by statement"
    );

    let undo = pgshepherd(dir.path(), &["undo", &run_id], None, &db.url, &[]).await;
    assert_eq!(undo.code, 0, "{}", undo.stderr);
    let counts = &undo.finished()["tables"]["public.items"];
    // 1+2+...+20 updates, the delete, the insert, and the move (a delete and
    // an insert).
    assert_eq!(counts["reverted"], 210 + 4, "{counts}");
    assert_eq!(counts["conflicts"], 0);
    assert_eq!(
        db.query_i64("SELECT hashtext(string_agg(i::text, ',' ORDER BY id))::bigint FROM items i")
            .await,
        before,
        "back exactly"
    );
}
