//! `pgshepherd run` end to end: the real binary against a real PostgreSQL, through
//! the success path and every way back. Each test gets a fresh database and its
//! own plan + migration set in a scratch directory, then asserts the outcome, the
//! events that explain it, and what is (and is not) left on the target.

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::TestDb;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

/// A plan and its migration set in a scratch directory, aimed at a fresh database.
struct Scenario {
    dir: tempfile::TempDir,
    db: TestDb,
}

struct Outcome {
    code: i32,
    events: Vec<Value>,
    stderr: String,
}

impl Outcome {
    fn last(&self) -> &Value {
        self.events.last().expect("no events")
    }

    fn outcome(&self) -> &str {
        self.last()["outcome"].as_str().unwrap_or("")
    }

    fn reason(&self) -> String {
        self.last()["reason"].as_str().unwrap_or("").to_string()
    }

    fn named(&self, name: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == name).collect()
    }
}

const TABLE_SETUP: &str = "CREATE TABLE accounts (id int PRIMARY KEY, email text); \
                           INSERT INTO accounts SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 500) g;";

impl Scenario {
    async fn new() -> Scenario {
        let db = common::fresh_db().await;
        db.execute(TABLE_SETUP).await;
        Scenario {
            dir: common::scratch_dir(),
            db,
        }
    }

    fn set_dir(&self) -> PathBuf {
        self.dir.path().join("migrations")
    }

    fn file(&self, name: &str, sql: &str) -> &Self {
        std::fs::create_dir_all(self.set_dir()).unwrap();
        std::fs::write(self.set_dir().join(name), sql).unwrap();
        self
    }

    /// Write the plan with a short soak; `body` adds or overrides top-level keys
    /// (`soak:` with its checks, `rollback:`...).
    fn plan(&self, body: &str) -> PathBuf {
        let path = self.dir.path().join("plan.yaml");
        let text = format!(
            "name: test-plan\ntarget: testdb\nmigrations: migrations\n\
             lock:\n  acquire_timeout: 1s\n  lock_timeout: 300ms\n  retries: 2\n  backoff: 100ms\n  max_backoff: 200ms\n{body}"
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn run(&self, plan: &PathBuf, extra: &[&str]) -> Outcome {
        self.run_at(&self.db.url, plan, extra).await
    }

    /// Run against `url` (this scenario's database, as another role).
    async fn run_at(&self, url: &str, plan: &PathBuf, extra: &[&str]) -> Outcome {
        let out = self
            .command_at(url, plan, extra)
            .output()
            .await
            .expect("run pgshepherd");
        parse(out)
    }

    fn command(&self, plan: &PathBuf, extra: &[&str]) -> tokio::process::Command {
        self.command_at(&self.db.url, plan, extra)
    }

    fn command_at(&self, url: &str, plan: &PathBuf, extra: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(common::pgshepherd_bin());
        cmd.arg("run")
            .arg(plan)
            .args(["--database-url", url, "--now", "--json", "--backup-dir"])
            .arg(self.dir.path().join("backups"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }
}

fn parse(out: std::process::Output) -> Outcome {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}\nstderr:\n{stderr}"))
        })
        .collect();
    for e in &events {
        for key in ["ts", "run_id", "event", "step"] {
            assert!(e.get(key).is_some(), "event without {key}: {e}");
        }
    }
    let last = events
        .last()
        .unwrap_or_else(|| panic!("no events on stdout; stderr:\n{stderr}"));
    assert_eq!(
        last["event"], "run_finished",
        "last line must be run_finished\nstderr:\n{stderr}"
    );
    Outcome {
        code: out.status.code().unwrap_or(-1),
        events,
        stderr,
    }
}

/// A soak of `secs` seconds sampling every 500 ms with the given checks.
fn soak(secs: u32, checks: &str) -> String {
    format!(
        "soak:\n  duration: {secs}s\n  interval: 500ms\n  baseline_samples: 1\n  checks:\n{checks}\nbackup:\n  keep: 2\n"
    )
}

/// A check on the number of rows in `accounts` with max 10000: never breached
/// unless a test inserts that many.
const QUIET_CHECK: &str = "    - name: accounts_rows\n      sql: SELECT count(*) FROM accounts\n      max: 10000\n      consecutive: 2\n      min_samples: 1\n";

/// Breaches as soon as the table `audit_log` exists.
const AUDIT_LOG_ABSENT: &str = "    - name: audit_log_absent\n      sql: SELECT count(*) FROM pg_tables WHERE tablename = 'audit_log'\n      max: 0\n      consecutive: 2\n      min_samples: 1\n";

fn add_audit_log(s: &Scenario) {
    s.file("V1__audit_log.sql", "CREATE TABLE audit_log (id bigserial PRIMARY KEY, what text NOT NULL);\nINSERT INTO audit_log (what) VALUES ('created');\n");
    s.file("V1__audit_log.down.sql", "DROP TABLE audit_log;\n");
    s.file(
        "V2__accounts_created_at.sql",
        "ALTER TABLE accounts ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();\n",
    );
    s.file(
        "V2__accounts_created_at.down.sql",
        "ALTER TABLE accounts DROP COLUMN created_at;\n",
    );
}

async fn history_versions(db: &TestDb) -> Vec<i64> {
    let client = db.client().await;
    let exists: bool = client
        .query_one("SELECT to_regclass('pgshepherd.history') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    if !exists {
        return Vec::new();
    }
    client
        .query(
            "SELECT version FROM pgshepherd.history WHERE state = 'applied' ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn column_exists(db: &TestDb, table: &str, column: &str) -> bool {
    db.query_i64(&format!(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = '{table}' AND column_name = '{column}'"
    ))
    .await
        == 1
}

#[tokio::test(flavor = "multi_thread")]
async fn success_applies_every_migration_and_records_history() {
    let s = Scenario::new().await;
    add_audit_log(&s);
    let plan = s.plan(&soak(2, QUIET_CHECK));
    let out = s.run(&plan, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.outcome(), "succeeded");
    assert!(s.db.table_exists("audit_log").await);
    assert!(column_exists(&s.db, "accounts", "created_at").await);
    assert_eq!(s.db.row_count("accounts").await, 500);
    assert_eq!(history_versions(&s.db).await, vec![1, 2]);
    // The journal holds every migration with its checksum, and the backup's sha256.
    let applied = out.named("migration_applied");
    assert_eq!(applied.len(), 2);
    assert_eq!(applied[0]["checksum"].as_str().unwrap().len(), 64);
    let verified = out.named("backup_verified");
    assert_eq!(verified.len(), 1, "{}", out.stderr);
    let journal = out.last()["journal"].as_str().unwrap();
    let text = std::fs::read_to_string(journal).unwrap();
    assert!(
        text.contains("migration_applied")
            && text.contains(verified[0]["sha256"].as_str().unwrap())
    );
    // Samples explain themselves.
    let sample = out.named("check_sample")[0];
    assert!(
        sample["value"].is_number()
            && sample["counts"].is_object()
            && sample["thresholds"].is_string(),
        "{sample}"
    );

    // Running again finds nothing to do.
    let again = s.run(&plan, &[]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.reason().contains("nothing to apply"),
        "{}",
        again.reason()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn breach_rolls_back_with_down_scripts_and_keeps_user_rows() {
    let s = Scenario::new().await;
    add_audit_log(&s);
    let plan = s.plan(&format!(
        "{}rollback:\n  strategy: down\n  confirm: 1s\n",
        soak(4, AUDIT_LOG_ABSENT)
    ));
    let out = s.run(&plan, &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(out.outcome(), "rolled_back");
    assert!(!s.db.table_exists("audit_log").await);
    assert!(!column_exists(&s.db, "accounts", "created_at").await);
    assert_eq!(s.db.row_count("accounts").await, 500);
    assert_eq!(history_versions(&s.db).await, Vec::<i64>::new());
    // The decision carries the value, the threshold and the counts.
    let verdict = out.named("check_verdict");
    assert_eq!(verdict.len(), 1, "{}", out.stderr);
    let v = &verdict[0]["verdict"];
    assert_eq!(v["verdict"], "breach");
    assert_eq!(v["value"], 1.0);
    assert_eq!(v["limit"], 0.0);
    assert_eq!(v["in_a_row"], 2);
    // Down scripts ran in reverse order.
    let undone: Vec<i64> = out
        .named("rollback_step_done")
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert_eq!(undone, vec![2, 1]);
    let finished = out.named("rollback_finished");
    assert_eq!(finished[0]["at_starting_version"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn breach_restores_the_verified_backup_when_the_plan_allows_data_loss() {
    let s = Scenario::new().await;
    add_audit_log(&s);
    let plan = s.plan(&format!(
        "{}rollback:\n  strategy: restore\n  allow_data_loss: true\n  confirm: 1s\n",
        soak(4, AUDIT_LOG_ABSENT)
    ));
    let out = s.run(&plan, &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(out.named("backup_restored").len(), 1);
    assert!(!s.db.table_exists("audit_log").await);
    assert!(!column_exists(&s.db, "accounts", "created_at").await);
    assert_eq!(s.db.row_count("accounts").await, 500);
    assert_eq!(history_versions(&s.db).await, Vec::<i64>::new());
}

/// Issue 10: two databases run through the same plan (one target name) with
/// `--database-url` and `keep: 1`. The second database's run must not delete the
/// first one's only backup: retention goes by the database, not the target name.
#[tokio::test(flavor = "multi_thread")]
async fn keep_one_on_one_database_leaves_another_databases_only_backup() {
    let s = Scenario::new().await;
    add_audit_log(&s);
    let other = common::fresh_db().await;
    other.execute(TABLE_SETUP).await;
    let plan = s.plan(&format!(
        "{}backup:\n  keep: 1\n",
        soak(1, QUIET_CHECK).replace("backup:\n  keep: 2\n", "")
    ));

    let first = s.run(&plan, &[]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let kx_manifest = first.named("backup_verified")[0]["manifest"]
        .as_str()
        .unwrap()
        .to_string();
    let second = s.run_at(&other.url, &plan, &[]).await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    let ky_manifest = second.named("backup_verified")[0]["manifest"]
        .as_str()
        .unwrap()
        .to_string();

    assert!(
        second.named("backup_pruned").is_empty(),
        "{:?}",
        second.named("backup_pruned")
    );
    for (manifest, db) in [(&kx_manifest, &s.db), (&ky_manifest, &other)] {
        let text: Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
        assert_eq!(text["target"], "testdb", "one target name");
        assert_eq!(text["database"]["name"], db.name.as_str(), "{text}");
        assert!(text["database"]["system_identifier"].is_string(), "{text}");
        assert!(
            std::path::Path::new(text["path"].as_str().unwrap()).exists(),
            "{text}"
        );
    }
}

/// A managed-database-style role: not a superuser, owns the database (so schema
/// `public`) and `accounts`, may create trusted extensions but not others. The
/// test cluster trusts every role on loopback. Returns the role's URL.
async fn non_superuser_owner(db: &TestDb) -> String {
    let role = format!("app_{}", db.name.split('_').next().unwrap());
    db.execute(&format!(
        "CREATE ROLE {role} LOGIN; ALTER DATABASE \"{}\" OWNER TO {role}; ALTER TABLE accounts OWNER TO {role};",
        db.name
    ))
    .await;
    db.url.replacen("postgres@", &format!("{role}@"), 1)
}

/// Issue 10: a restore the role cannot perform (an untrusted extension in the
/// archive, a schema it does not own) is found by the dry run and refuses the run
/// before anything changes, naming what is missing, instead of failing after the
/// migration and leaving the target migrated.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_the_role_cannot_perform_stops_the_run_before_any_change() {
    let s = Scenario::new().await;
    add_audit_log(&s);
    let url = non_superuser_owner(&s.db).await;
    // Installed by a superuser, as a provider would: the role cannot create it.
    s.db.execute("CREATE EXTENSION pg_buffercache; CREATE SCHEMA audit; CREATE TABLE audit.trail (at timestamptz)")
        .await;
    let plan = s.plan(&format!(
        "{}rollback:\n  strategy: restore\n  allow_data_loss: true\n  confirm: 1s\n",
        soak(4, AUDIT_LOG_ABSENT)
    ));

    let dry = s.run_at(&url, &plan, &["--dry-run"]).await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let rollback = &dry.named("dry_run")[0]["report"]["rollback"];
    assert_eq!(rollback["ready"], false, "{rollback}");
    let problems = rollback["restore"]["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(
            |p| p["problem"] == "extension_not_creatable" && p["extension"] == "pg_buffercache"
        ),
        "{rollback}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p["problem"] == "schema_not_owned" && p["schema"] == "audit"),
        "{rollback}"
    );
    assert!(dry.stderr.contains("restore NOT ready"), "{}", dry.stderr);

    let out = s.run_at(&url, &plan, &[]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert_eq!(out.outcome(), "stopped");
    let reason = out.reason();
    for named in [
        "pg_buffercache",
        "only a superuser may create it",
        "schema audit is owned by postgres",
    ] {
        assert!(reason.contains(named), "{named} not in: {reason}");
    }
    assert!(
        out.named("backup_started").is_empty(),
        "stopped before the backup"
    );
    assert!(out.named("migration_started").is_empty());
    assert!(!s.db.table_exists("audit_log").await);
    assert!(!column_exists(&s.db, "accounts", "created_at").await);
    assert_eq!(history_versions(&s.db).await, Vec::<i64>::new());
    assert_eq!(
        s.db.query_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgshepherd'")
            .await,
        0
    );
}

/// Issue 10: a role without `pg_read_all_stats` sees only its own sessions, so
/// `lock_waiting_sessions` and a gate on `pg_stat_activity` would read 0 while
/// another role's session waits. The dry run says so and the run refuses before
/// anything changes, naming the checks and the GRANT; with the grant it runs.
#[tokio::test(flavor = "multi_thread")]
async fn checks_that_cannot_see_other_roles_sessions_stop_the_run_before_any_change() {
    let s = Scenario::new().await;
    add_audit_log(&s);
    let url = non_superuser_owner(&s.db).await;
    let role = url
        .split("//")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_string();
    let checks = format!(
        "{QUIET_CHECK}    - name: waiters\n      builtin: lock_waiting_sessions\n      max: 5\n      consecutive: 1\n      min_samples: 1\n"
    );
    let plan = s.plan(&format!(
        "gate:\n  check:\n    name: busy\n    sql: SELECT count(*) FROM pg_stat_activity WHERE state = 'active'\n    max: 50\n  \
         consecutive: 1\n  interval: 100ms\n{}",
        soak(1, &checks)
    ));

    let dry = s.run_at(&url, &plan, &["--dry-run"]).await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(dry.stderr.contains("checks NOT ready"), "{}", dry.stderr);
    let hidden = &dry.named("dry_run")[0]["report"]["soak"]["sessions_hidden"];
    assert!(
        hidden.as_str().unwrap().contains("check `waiters`"),
        "{hidden}"
    );

    let out = s.run_at(&url, &plan, &[]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert_eq!(out.outcome(), "stopped");
    let reason = out.reason();
    for named in [
        "gate check `busy` (its SQL reads pg_stat_activity)",
        "check `waiters` (builtin lock_waiting_sessions)",
        &format!("GRANT pg_read_all_stats TO {role}"),
    ] {
        assert!(reason.contains(named), "{named} not in: {reason}");
    }
    assert!(!reason.contains("accounts_rows"), "{reason}");
    assert!(
        out.named("backup_started").is_empty(),
        "stopped before the backup"
    );
    assert!(out.named("migration_started").is_empty());
    assert!(!s.db.table_exists("audit_log").await);
    assert_eq!(history_versions(&s.db).await, Vec::<i64>::new());

    s.db.execute(&format!("GRANT pg_read_all_stats TO {role}"))
        .await;
    let out = s.run_at(&url, &plan, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(history_versions(&s.db).await, vec![1, 2]);
}

/// The other side: the same kind of role with only a trusted extension can
/// restore, so the check lets it through, the breach is undone by the restore,
/// and the run says that the extension's owner changed.
#[tokio::test(flavor = "multi_thread")]
async fn a_non_superuser_that_can_restore_is_let_through_and_told_of_the_owner_change() {
    let s = Scenario::new().await;
    add_audit_log(&s);
    let url = non_superuser_owner(&s.db).await;
    s.db.execute("CREATE EXTENSION citext").await;
    let plan = s.plan(&format!(
        "{}rollback:\n  strategy: restore\n  allow_data_loss: true\n  confirm: 1s\n",
        soak(4, AUDIT_LOG_ABSENT)
    ));
    let dry = s.run_at(&url, &plan, &["--dry-run"]).await;
    let rollback = &dry.named("dry_run")[0]["report"]["rollback"];
    assert_eq!(rollback["ready"], true, "{rollback}");
    assert_eq!(
        rollback["restore"]["owner_changes"][0]["extension"], "citext",
        "{rollback}"
    );

    let out = s.run_at(&url, &plan, &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let restored = out.named("backup_restored");
    assert_eq!(restored.len(), 1);
    let change = &restored[0]["extension_owner_changes"][0];
    assert_eq!(change["extension"], "citext", "{}", restored[0]);
    assert_eq!(change["owner_before"], "postgres");
    assert!(!s.db.table_exists("audit_log").await);
    assert_eq!(s.db.row_count("accounts").await, 500);
    assert_eq!(
        s.db.query_i64("SELECT count(*) FROM pg_extension WHERE extname = 'citext' AND extowner::regrole::text <> 'postgres'")
            .await,
        1,
        "the restoring role owns the extension now"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hold_changes_nothing_after_a_breach_and_needs_a_human() {
    let s = Scenario::new().await;
    add_audit_log(&s);
    let plan = s.plan(&format!(
        "{}rollback:\n  strategy: hold\n",
        soak(4, AUDIT_LOG_ABSENT)
    ));
    let out = s.run(&plan, &[]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert_eq!(out.outcome(), "needs_human");
    assert!(out.reason().contains("hold"), "{}", out.reason());
    assert!(s.db.table_exists("audit_log").await);
    assert_eq!(history_versions(&s.db).await, vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_migration_rolls_back_itself_and_the_earlier_ones_are_undone() {
    let s = Scenario::new().await;
    s.file("V1__audit_log.sql", "CREATE TABLE audit_log (id int);\n");
    s.file("V1__audit_log.down.sql", "DROP TABLE audit_log;\n");
    // Fails half-way: the ALTER must not survive the failure of the UPDATE.
    s.file(
        "V2__broken.sql",
        "ALTER TABLE accounts ADD COLUMN score int;\nUPDATE accounts SET score = 1 / (id - id);\n",
    );
    s.file(
        "V2__broken.down.sql",
        "ALTER TABLE accounts DROP COLUMN score;\n",
    );
    let plan = s.plan(&format!(
        "{}rollback:\n  confirm: 1s\n",
        soak(2, QUIET_CHECK)
    ));
    let out = s.run(&plan, &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let failed = out.named("migration_failed");
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("division by zero"),
        "{}",
        failed[0]
    );
    assert!(!column_exists(&s.db, "accounts", "score").await);
    assert!(!s.db.table_exists("audit_log").await);
    let undone: Vec<i64> = out
        .named("rollback_step_done")
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert_eq!(
        undone,
        vec![1],
        "only V1 is undone; V2 rolled back with its transaction"
    );
    assert_eq!(history_versions(&s.db).await, Vec::<i64>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_verify_script_rolls_the_migration_back() {
    let s = Scenario::new().await;
    s.file(
        "V1__email_unique.sql",
        "ALTER TABLE accounts ADD COLUMN nickname text;\n",
    );
    s.file(
        "V1__email_unique.down.sql",
        "ALTER TABLE accounts DROP COLUMN nickname;\n",
    );
    s.file(
        "V1__email_unique.verify.sql",
        "DO $$ BEGIN IF (SELECT count(*) FROM accounts WHERE nickname IS NULL) > 0 THEN RAISE EXCEPTION 'accounts without a nickname'; END IF; END $$;\n",
    );
    let plan = s.plan(&format!(
        "{}rollback:\n  confirm: 1s\n",
        soak(2, QUIET_CHECK)
    ));
    let out = s.run(&plan, &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let failed = out.named("verify_failed");
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("accounts without a nickname")
    );
    assert!(!column_exists(&s.db, "accounts", "nickname").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_transaction_index_build_succeeds_and_a_failed_one_leaves_no_invalid_index() {
    let s = Scenario::new().await;
    s.file(
        "V1__email_index.sql",
        "-- pgshepherd:no-transaction\nCREATE INDEX CONCURRENTLY accounts_email_idx ON accounts (email);\n",
    );
    s.file(
        "V1__email_index.down.sql",
        "-- pgshepherd:no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS accounts_email_idx;\n",
    );
    let plan = s.plan(&soak(1, QUIET_CHECK));
    let out = s.run(&plan, &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(s.db.index_exists("accounts_email_idx").await);
    assert_eq!(out.named("migration_applied")[0]["transactional"], false);

    // A unique index over duplicate data fails in CONCURRENTLY's validation and
    // leaves an INVALID index behind, which pgshepherd must drop.
    s.db.execute("INSERT INTO accounts VALUES (1001, 'user1@example.com')")
        .await;
    s.file(
        "V2__email_unique.sql",
        "-- pgshepherd:no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY accounts_email_key ON accounts (email);\n",
    );
    s.file(
        "V2__email_unique.down.sql",
        "-- pgshepherd:no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS accounts_email_key;\n",
    );
    let out = s.run(&plan, &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let failed = &out.named("migration_failed")[0];
    assert_eq!(
        failed["cleaned_invalid_indexes"][0], "public.accounts_email_key",
        "{failed}"
    );
    assert!(!s.db.index_exists("accounts_email_key").await);
    assert_eq!(
        s.db.query_i64("SELECT count(*) FROM pg_index WHERE NOT indisvalid")
            .await,
        0
    );
    assert_eq!(history_versions(&s.db).await, vec![1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_applied_migration_whose_file_changed_is_refused_before_anything_runs() {
    let s = Scenario::new().await;
    s.file(
        "V1__nickname.sql",
        "ALTER TABLE accounts ADD COLUMN nickname text;\n",
    );
    s.file(
        "V1__nickname.down.sql",
        "ALTER TABLE accounts DROP COLUMN nickname;\n",
    );
    let plan = s.plan(&soak(1, QUIET_CHECK));
    assert_eq!(s.run(&plan, &[]).await.code, 0);
    s.file(
        "V1__nickname.sql",
        "ALTER TABLE accounts ADD COLUMN nickname varchar(20);\n",
    );
    s.file("V2__more.sql", "CREATE TABLE more (id int);\n");
    s.file("V2__more.down.sql", "DROP TABLE more;\n");
    let out = s.run(&plan, &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.reason().contains("checksum drift") && out.reason().contains("V1__nickname"),
        "{}",
        out.reason()
    );
    assert!(!s.db.table_exists("more").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_on_the_same_target_is_refused_and_names_the_holder() {
    let s = Scenario::new().await;
    add_audit_log(&s);
    let plan = s.plan(&soak(5, QUIET_CHECK));
    let first = s.command(&plan, &[]).spawn().unwrap();
    // Wait until the first run holds the lock.
    s.db.wait_for(
        "the first run holding the lock",
        "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted \
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
    )
    .await;
    let second = s.run(&plan, &[]).await;
    assert_eq!(second.code, 5, "{}", second.stderr);
    assert!(
        second.reason().contains("locked by pgshepherd run"),
        "{}",
        second.reason()
    );
    assert_eq!(second.named("lock_busy").len(), 1);
    let first = parse(first.wait_with_output().await.unwrap());
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(
        second
            .reason()
            .contains(first.last()["run_id"].as_str().unwrap()),
        "{}",
        second.reason()
    );
    assert_eq!(history_versions(&s.db).await, vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_timeout_retries_with_backoff_and_never_queues_behind_a_long_transaction() {
    let s = Scenario::new().await;
    s.file(
        "V1__nickname.sql",
        "ALTER TABLE accounts ADD COLUMN nickname text;\n",
    );
    s.file(
        "V1__nickname.down.sql",
        "ALTER TABLE accounts DROP COLUMN nickname;\n",
    );
    let plan = s.plan(&format!(
        "{}rollback:\n  confirm: 1s\n",
        soak(1, QUIET_CHECK)
    ));

    // A long transaction holds a lock the ALTER needs, for longer than all attempts.
    let blocker = s.db.client().await;
    blocker
        .batch_execute("BEGIN; SELECT * FROM accounts LIMIT 1;")
        .await
        .unwrap();
    let mut run = s.command(&plan, &[]).spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(run.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut probed = false;
    while let Some(line) = lines.next_line().await.unwrap() {
        if !probed && line.contains("\"event\":\"migration_retry\"") {
            // While the ALTER is between attempts, the application's reads are
            // not queued behind it: a probe with a short timeout gets through.
            let probe = s.db.client().await;
            probe
                .batch_execute("SET statement_timeout = '1s'")
                .await
                .unwrap();
            let n: i64 = probe
                .query_one("SELECT count(*) FROM accounts", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 500);
            probed = true;
        }
        seen.push(line);
    }
    assert!(probed, "no migration_retry event");
    let output = run.wait_with_output().await.unwrap();
    let out = parse(std::process::Output {
        stdout: (seen.join("\n") + "\n").into_bytes(),
        ..output
    });
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(out.named("migration_retry").len(), 2, "retries: 2");
    let failed = &out.named("migration_failed")[0];
    assert_eq!(failed["sqlstate"], "55P03");
    assert!(!column_exists(&s.db, "accounts", "nickname").await);
    blocker.batch_execute("ROLLBACK").await.unwrap();

    // Released during the retries: the migration gets through.
    blocker
        .batch_execute("BEGIN; SELECT * FROM accounts LIMIT 1;")
        .await
        .unwrap();
    let mut run = s.command(&plan, &[]).spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(run.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        let retry = line.contains("\"event\":\"migration_retry\"");
        seen.push(line);
        if retry {
            blocker.batch_execute("ROLLBACK").await.unwrap();
            break;
        }
    }
    while let Some(line) = lines.next_line().await.unwrap() {
        seen.push(line);
    }
    let output = run.wait_with_output().await.unwrap();
    let out = parse(std::process::Output {
        stdout: (seen.join("\n") + "\n").into_bytes(),
        ..output
    });
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.named("migration_retry").is_empty());
    assert!(column_exists(&s.db, "accounts", "nickname").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_that_cannot_be_verified_stops_the_run_before_any_change() {
    let s = Scenario::new().await;
    add_audit_log(&s);
    let plan = s.plan(&format!(
        "{}  expect_tables: [public.accounts, public.invoices]\n",
        soak(1, QUIET_CHECK)
    ));
    let out = s.run(&plan, &[]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert_eq!(out.outcome(), "stopped");
    assert!(out.reason().contains("invoices"), "{}", out.reason());
    assert!(out.named("migration_started").is_empty());
    assert!(!s.db.table_exists("audit_log").await);
}

/// NULL while `audit_log` exists, 1 otherwise: missing data appears with the change.
fn null_while_migrated(policy: &str, min_samples: u32) -> String {
    format!(
        "    - name: nullable\n      sql: SELECT CASE WHEN to_regclass('audit_log') IS NULL THEN 1 END\n      max: 5\n      on_inconclusive: {policy}\n      max_inconclusive: 1\n      min_samples: {min_samples}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn inconclusive_samples_beyond_the_tolerance_breach_under_policy_breach() {
    let s = Scenario::new().await;
    add_audit_log(&s);
    let plan = s.plan(&format!(
        "{}rollback:\n  confirm: 1s\n",
        soak(4, &null_while_migrated("breach", 1))
    ));
    let out = s.run(&plan, &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let v = &out.named("check_verdict")[0]["verdict"];
    assert_eq!(v["rule"], "inconclusive", "{v}");
    assert_eq!(v["in_a_row"], 2);
    assert!(!s.db.table_exists("audit_log").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn inconclusive_samples_beyond_the_tolerance_hold_for_a_human_under_policy_hold() {
    let s = Scenario::new().await;
    add_audit_log(&s);
    let plan = s.plan(&soak(4, &null_while_migrated("hold", 1)));
    let out = s.run(&plan, &[]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert_eq!(out.named("check_verdict")[0]["verdict"]["verdict"], "hold");
    assert!(
        s.db.table_exists("audit_log").await,
        "hold must not undo anything"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ignored_inconclusive_samples_still_cannot_pass_a_soak_without_min_samples() {
    let s = Scenario::new().await;
    add_audit_log(&s);
    let plan = s.plan(&format!(
        "{}rollback:\n  confirm: 1s\n",
        soak(2, &null_while_migrated("ignore", 2))
    ));
    let out = s.run(&plan, &[]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    let v = &out.named("check_verdict")[0]["verdict"];
    assert_eq!(v["verdict"], "insufficient_samples", "{v}");
    assert_eq!(v["valid_samples"], 0);
    assert_eq!(v["min_samples"], 2);
    let finished = &out.named("soak_finished")[0];
    assert_eq!(finished["passed"], false);
    assert!(!s.db.table_exists("audit_log").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_reports_what_would_happen_and_changes_nothing() {
    let s = Scenario::new().await;
    add_audit_log(&s);
    let plan = s.plan(&soak(2, QUIET_CHECK));
    let out = s.run(&plan, &["--dry-run"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = &out.named("dry_run")[0]["report"];
    assert_eq!(report["pending"].as_array().unwrap().len(), 2);
    assert!(
        report["pending"][0]["sql"]
            .as_str()
            .unwrap()
            .contains("CREATE TABLE audit_log")
    );
    assert_eq!(report["rollback"]["ready"], true);
    assert_eq!(report["soak"]["checks"][0]["baseline"], 500.0);
    assert!(!s.db.table_exists("audit_log").await);
    assert_eq!(history_versions(&s.db).await, Vec::<i64>::new());
    assert_eq!(
        s.db.query_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgshepherd'")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_is_an_environment_error() {
    let s = Scenario::new().await;
    add_audit_log(&s);
    let plan = s.plan(&soak(1, QUIET_CHECK));
    let out = tokio::process::Command::new(common::pgshepherd_bin())
        .arg("run")
        .arg(&plan)
        .args([
            "--database-url",
            "postgres://nobody:hunter2@127.0.0.1:1/nothing",
            "--now",
            "--json",
            "--backup-dir",
        ])
        .arg(s.dir.path().join("backups"))
        .output()
        .await
        .unwrap();
    let out = parse(out);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let all = format!(
        "{}{}",
        out.stderr,
        serde_json::to_string(&out.events).unwrap()
    );
    assert!(!all.contains("hunter2"), "the password leaked: {all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_whose_confirmation_still_breaches_needs_a_human() {
    let s = Scenario::new().await;
    // The down script undoes the schema change but not the row: the check, which
    // counts rows, stays breached after the rollback.
    s.file("V1__extra.sql", "ALTER TABLE accounts ADD COLUMN extra int;\nINSERT INTO accounts VALUES (9999, 'late@example.com');\n");
    s.file(
        "V1__extra.down.sql",
        "ALTER TABLE accounts DROP COLUMN extra;\n",
    );
    let check = "    - name: accounts_rows\n      sql: SELECT count(*) FROM accounts\n      max: 500\n      consecutive: 3\n      min_samples: 1\n";
    // confirm 1s at 500ms takes two samples, fewer than `consecutive: 3`: the
    // confirmation must still fail when both breach.
    let plan = s.plan(&format!("{}rollback:\n  confirm: 1s\n", soak(3, check)));
    let out = s.run(&plan, &[]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert_eq!(out.outcome(), "needs_human");
    assert!(
        out.reason().contains("confirmation failed"),
        "{}",
        out.reason()
    );
    let verdicts = out.named("check_verdict");
    assert_eq!(verdicts.last().unwrap()["decision"], "rollback_unhealthy");
    assert_eq!(verdicts.last().unwrap()["step"], "confirm");
}

/// Breaches as soon as the table `breach_now` exists (a test creates it when it
/// wants the rollback).
const BREACH_NOW_ABSENT: &str = "    - name: breach_now_absent\n      sql: SELECT count(*) FROM pg_tables WHERE tablename = 'breach_now'\n      max: 0\n      consecutive: 2\n      min_samples: 1\n";

/// Whether every write counter of `table` has reached what the test wrote: a
/// backend publishes its statistics only when idle, at most once a second.
fn counters_reach(table: &str, ins: i64, upd: i64, del: i64) -> String {
    format!(
        "SELECT coalesce((SELECT n_tup_ins >= {ins} AND n_tup_upd >= {upd} AND n_tup_del >= {del} \
         FROM pg_stat_user_tables WHERE relid = '{table}'::regclass), false)"
    )
}

/// Issue 11: a restore that loses nothing. Users write during the soak (rows with
/// ids from a sequence, updates, deletes); a breach restores the backup. The run
/// says exactly what the restore discarded, per table; the sequence does not hand
/// out an acknowledged id a second time; the planner has statistics; and the
/// snapshot the run kept gives back the database as it was before the rollback.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_keeps_a_snapshot_counts_what_it_discards_and_never_reuses_ids() {
    let s = Scenario::new().await;
    s.db.execute(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, note text NOT NULL); \
         INSERT INTO orders (note) SELECT 'before ' || g FROM generate_series(1, 10) g;",
    )
    .await;
    // The setup's own writes must be in the counters before the backup reads them.
    common::wait_for_sql(
        &s.db.dsn,
        "the setup's statistics",
        &counters_reach("accounts", 500, 0, 0),
    )
    .await;
    common::wait_for_sql(
        &s.db.dsn,
        "the setup's statistics",
        &counters_reach("orders", 10, 0, 0),
    )
    .await;
    // The migration writes rows too: the restore undoes those by design, so they
    // are not among the users' writes it reports discarded.
    s.file(
        "V1__audit_log.sql",
        "CREATE TABLE audit_log (id bigserial PRIMARY KEY, what text NOT NULL);\n\
         UPDATE accounts SET email = upper(email) WHERE id > 490;\n",
    );
    let plan = s.plan(&format!(
        "{}rollback:\n  strategy: restore\n  allow_data_loss: true\n  confirm: 1s\n",
        soak(120, BREACH_NOW_ABSENT)
    ));

    let mut run = s.command(&plan, &[]).spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(run.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut wrote = false;
    let mut last_id = 0i64;
    const INSERTED: i64 = 25;
    while let Some(line) = lines.next_line().await.unwrap() {
        let soaking = line.contains("\"event\":\"soak_started\"");
        seen.push(line);
        if !soaking {
            continue;
        }
        // Users at work during the soak, each write committed and acknowledged.
        let writer = s.db.client().await;
        for i in 0..INSERTED {
            let row = writer
                .query_one(
                    "INSERT INTO orders (note) VALUES ($1) RETURNING id",
                    &[&format!("during {i}")],
                )
                .await
                .unwrap();
            last_id = last_id.max(row.get(0));
        }
        writer
            .batch_execute(
                "UPDATE accounts SET email = 'changed' || id WHERE id <= 4; \
                 DELETE FROM accounts WHERE id > 497; \
                 INSERT INTO audit_log (what) VALUES ('during');",
            )
            .await
            .unwrap();
        writer
            .batch_execute("SELECT pg_stat_force_next_flush()")
            .await
            .unwrap();
        common::wait_for_sql(
            &s.db.dsn,
            "the writer's statistics",
            &counters_reach("orders", 10 + INSERTED, 0, 0),
        )
        .await;
        common::wait_for_sql(
            &s.db.dsn,
            "the writer's statistics",
            &counters_reach("accounts", 500, 10 + 4, 3),
        )
        .await;
        s.db.execute("CREATE TABLE breach_now ()").await;
        wrote = true;
        break;
    }
    assert!(wrote, "no soak_started event");
    while let Some(line) = lines.next_line().await.unwrap() {
        seen.push(line);
    }
    let output = run.wait_with_output().await.unwrap();
    let out = parse(std::process::Output {
        stdout: (seen.join("\n") + "\n").into_bytes(),
        ..output
    });
    assert_eq!(out.code, 3, "{}", out.stderr);
    let applied = out.named("migration_applied");
    assert_eq!(
        applied[0]["writes"],
        serde_json::json!([{"table": "public.accounts", "inserted": 0, "updated": 10, "deleted": 0}])
    );
    let restored = out.named("backup_restored");
    assert_eq!(restored.len(), 1);
    let restored = restored[0];

    // What the restore discarded, per table, is what was written.
    let discarded = restored["discarded_writes"]
        .as_array()
        .expect("discarded_writes");
    let of = |table: &str| {
        discarded
            .iter()
            .find(|d| d["table"] == table)
            .unwrap_or_else(|| panic!("{table} not in {restored}"))
            .clone()
    };
    let orders = of("public.orders");
    assert_eq!(
        (
            orders["inserted"].as_i64(),
            orders["updated"].as_i64(),
            orders["deleted"].as_i64()
        ),
        (Some(INSERTED), Some(0), Some(0)),
        "{orders}"
    );
    let accounts = of("public.accounts");
    assert_eq!(
        (
            accounts["inserted"].as_i64(),
            accounts["updated"].as_i64(),
            accounts["deleted"].as_i64()
        ),
        (Some(0), Some(4), Some(3)),
        "{accounts}"
    );
    let audit = of("public.audit_log");
    assert_eq!(audit["inserted"], 1, "{audit}");
    assert_eq!(discarded.len(), 3, "nothing else was written: {restored}");
    assert!(
        discarded.iter().all(|d| d["after_snapshot"] == 0),
        "{restored}"
    );
    assert!(
        out.stderr
            .contains("33 row write(s) since the backup discarded"),
        "{}",
        out.stderr
    );

    // The database is the backup again...
    assert_eq!(s.db.row_count("orders").await, 10);
    assert_eq!(s.db.row_count("accounts").await, 500);
    assert!(!s.db.table_exists("audit_log").await);
    // ...but its sequence never hands out an id a user was already given.
    let advanced = restored["sequences_advanced"].as_array().unwrap();
    assert!(
        advanced
            .iter()
            .any(|a| a["sequence"] == "public.orders_id_seq"
                && a["restored"] == 10
                && a["set_to"] == last_id),
        "{restored}"
    );
    let next = s.db.query_i64("SELECT nextval('orders_id_seq')").await;
    assert!(
        next > last_id,
        "nextval {next} after the restore, {last_id} handed out before"
    );

    // The planner has statistics for the restored tables; writers were blocked a measured while.
    assert!(restored["analyze_ms"].as_u64().is_some(), "{restored}");
    assert!(restored["stall_ms"].as_u64().is_some(), "{restored}");
    for table in ["accounts", "orders"] {
        let stats = s
            .db
            .query_i64(&format!("SELECT count(*) FROM pg_stats WHERE schemaname = 'public' AND tablename = '{table}'"))
            .await;
        assert!(stats > 0, "no planner statistics for {table}");
    }

    // The snapshot is next to the backup, private, and holds the pre-rollback state.
    let snapshot = &restored["snapshot"];
    let path = PathBuf::from(snapshot["path"].as_str().expect("snapshot path"));
    let backup = PathBuf::from(restored["path"].as_str().unwrap());
    assert_eq!(path.parent(), backup.parent());
    assert!(
        path.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&backup.file_stem().unwrap().to_string_lossy().to_string())
            && path.to_string_lossy().contains(".pre-restore-"),
        "{}",
        path.display()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        out.stderr.contains(&path.display().to_string()),
        "{}",
        out.stderr
    );
    let scratch = common::fresh_db().await;
    let restore = common::output_within(
        "pg_restore of the snapshot",
        std::process::Command::new(&common::binaries().pg_restore)
            .arg("--no-owner")
            .arg(format!("--dbname={}", scratch.url))
            .arg(&path),
    );
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    assert_eq!(scratch.row_count("orders").await, 10 + INSERTED);
    assert_eq!(
        scratch.query_i64("SELECT max(id) FROM orders").await,
        last_id
    );
    assert_eq!(scratch.row_count("accounts").await, 497);
    assert_eq!(
        scratch
            .query_i64("SELECT count(*) FROM accounts WHERE email LIKE 'changed%'")
            .await,
        4
    );
    assert_eq!(scratch.row_count("audit_log").await, 1);
    assert_eq!(
        scratch
            .query_i64("SELECT count(*) FROM pgshepherd.history")
            .await,
        1,
        "the snapshot holds the migrated state"
    );
}

/// Issue 11: without a snapshot, the restore would throw away the writes since
/// the backup for good. When it cannot be taken (here the role may not read a
/// table created during the soak), the backup is not restored: the rollback
/// fails, the run needs a human, the target stays as the migration left it and
/// no partial snapshot is left behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_that_cannot_be_taken_stops_the_restore_and_needs_a_human() {
    let s = Scenario::new().await;
    add_audit_log(&s);
    let url = non_superuser_owner(&s.db).await;
    let plan = s.plan(&format!(
        "{}rollback:\n  strategy: restore\n  allow_data_loss: true\n  confirm: 1s\n",
        soak(120, BREACH_NOW_ABSENT)
    ));
    let mut run = s.command_at(&url, &plan, &[]).spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(run.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        let soaking = line.contains("\"event\":\"soak_started\"");
        seen.push(line);
        if soaking {
            // Owned by the superuser, unreadable to the run's role: pg_dump fails.
            s.db.execute("CREATE TABLE secret (x int); CREATE TABLE breach_now ();")
                .await;
        }
    }
    let output = run.wait_with_output().await.unwrap();
    let out = parse(std::process::Output {
        stdout: (seen.join("\n") + "\n").into_bytes(),
        ..output
    });
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert_eq!(out.outcome(), "needs_human");
    assert!(out.named("backup_restored").is_empty());
    let failed = &out.named("rollback_failed")[0];
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("snapshot") && reason.contains("not restored") && reason.contains("secret"),
        "{reason}"
    );
    assert!(
        s.db.table_exists("audit_log").await,
        "the target is as the migration left it"
    );
    assert_eq!(history_versions(&s.db).await, vec![1, 2]);
    let left: Vec<String> = std::fs::read_dir(s.dir.path().join("backups/testdb"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".pre-restore-"))
        .collect();
    assert!(left.is_empty(), "a partial snapshot was left: {left:?}");
}
