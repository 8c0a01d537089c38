//! A real Flyway folder through `pgshepherd check` and `pgshepherd run`:
//! tests/fixtures/flyway/pagila is shaped like pagila-flyway (V001..V020 with
//! V020 in the `sql/` subfolder, two `R__` repeatable migrations, an
//! `afterMigrate__last_updated.sql` callback in `sql/`). The documented behaviour
//! (docs/plan-reference.md, "Existing Flyway folders"): the subfolder is read,
//! each Flyway-only file is refused by name with what to do, the missing down
//! scripts are reported in the same run, `run` changes nothing; and once the
//! messages are followed, the folder runs on a real PostgreSQL.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const FIXTURE: &str = "tests/fixtures/flyway/pagila";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn pgshepherd(what: &str, args: &[&str], plan: &Path) -> Output {
    common::output_within(
        what,
        Command::new(common::pgshepherd_bin())
            .current_dir(root())
            .args(args)
            .arg(plan),
    )
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `(file, message)` of each error of a `check --json` report.
fn errors(report: &Value) -> Vec<(String, String)> {
    report["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["file"].as_str().unwrap_or("").to_string(),
                e["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn check_reports_each_flyway_file_by_name_and_every_missing_down_script_at_once() {
    let plan = PathBuf::from(FIXTURE).join("plan.yaml");
    let out = pgshepherd("pgshepherd check --json", &["check", "--json"], &plan);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let reports = json_lines(&out);
    assert_eq!(reports.len(), 1);
    let errors = errors(&reports[0]);
    let set = format!("{FIXTURE}/db/migration");
    let at = |file: &str, needle: &str| {
        errors
            .iter()
            .filter(|(f, m)| *f == format!("{set}/{file}") && m.contains(needle))
            .count()
    };
    assert_eq!(
        at(
            "R__create_functions.sql",
            "is a Flyway repeatable migration (R__), which pgshepherd does not run"
        ),
        1,
        "{errors:#?}"
    );
    // Each repeatable is told the version it would be, in Flyway's order.
    assert_eq!(
        at(
            "R__create_functions.sql",
            "versioned migration V21__create_functions.sql with a .down.sql"
        ),
        1
    );
    assert_eq!(
        at(
            "R__create_views.sql",
            "versioned migration V22__create_views.sql with a .down.sql"
        ),
        1
    );
    assert_eq!(
        at(
            "sql/afterMigrate__last_updated.sql",
            "is a Flyway SQL callback (afterMigrate), which pgshepherd does not run"
        ),
        1,
        "{errors:#?}"
    );
    // The rollback rule is evaluated in the same run, for every versioned
    // migration that loaded, V20 in the subfolder included.
    let missing_down: Vec<&String> = errors
        .iter()
        .filter(|(_, m)| m.contains("needs a down script"))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(missing_down.len(), 20, "{errors:#?}");
    assert!(
        missing_down
            .iter()
            .any(|m| m.contains("V20__alter_table_store_add_fk_on_manager_staff_id has no")),
        "{missing_down:#?}"
    );
    assert_eq!(errors.len(), 23, "{errors:#?}");
    // Human mode says the same on stderr, one line per problem.
    let out = pgshepherd("pgshepherd check", &["check"], &plan);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 23);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_refuses_the_folder_as_it_is_and_leaves_the_target_untouched() {
    let db = common::fresh_db().await;
    let plan = root().join(FIXTURE).join("plan.yaml");
    let out = common::output_within(
        "pgshepherd run",
        Command::new(common::pgshepherd_bin())
            .arg("run")
            .arg(&plan)
            .args(["--database-url", &db.url, "--now", "--json"]),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let events = json_lines(&out);
    let last = events.last().expect("run_finished");
    assert_eq!(last["event"], "run_finished");
    assert_eq!(last["outcome"], "stopped");
    let reason = last["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("R__create_functions.sql is a Flyway repeatable migration"),
        "{reason}"
    );
    assert!(!db.table_exists("language").await);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgshepherd'")
            .await,
        0
    );
}

/// Copy `from` into `to`, subdirectories included.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_folder_runs_once_the_messages_are_followed() {
    let db = common::fresh_db().await;
    let scratch = common::scratch_dir();
    let dir = scratch.path().join("pagila");
    copy_tree(&root().join(FIXTURE), &dir);
    let set = dir.join("db/migration");
    // What the messages say: each repeatable becomes the versioned migration
    // they name; the callback's statements go into a migration of their own,
    // with the placeholder's value written out.
    std::fs::rename(
        set.join("R__create_functions.sql"),
        set.join("V021__create_functions.sql"),
    )
    .unwrap();
    std::fs::rename(
        set.join("R__create_views.sql"),
        set.join("V022__create_views.sql"),
    )
    .unwrap();
    let callback = std::fs::read_to_string(set.join("sql/afterMigrate__last_updated.sql")).unwrap();
    std::fs::remove_file(set.join("sql/afterMigrate__last_updated.sql")).unwrap();
    std::fs::write(
        set.join("sql/V023__last_updated_triggers.sql"),
        callback.replace("${flyway:defaultSchema}", "public"),
    )
    .unwrap();
    // No down scripts in this folder: the plan says what a rollback does.
    let plan = dir.join("plan.yaml");
    let text = std::fs::read_to_string(&plan).unwrap();
    std::fs::write(&plan, format!("{text}rollback:\n  strategy: hold\n")).unwrap();

    let out = pgshepherd("pgshepherd check", &["check"], &plan);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("23 migrations"), "{summary}");

    let out = common::output_within(
        "pgshepherd run",
        Command::new(common::pgshepherd_bin())
            .arg("run")
            .arg(&plan)
            .args(["--database-url", &db.url, "--now", "--json", "--backup-dir"])
            .arg(scratch.path().join("backups")),
    );
    let events = json_lines(&out);
    let last = events.last().expect("run_finished");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{last}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(last["outcome"], "succeeded");
    // The subfolder's migrations ran, named by their path in the set.
    let files: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "migration_started")
        .filter_map(|e| e["file"].as_str())
        .collect();
    assert_eq!(files.len(), 23, "{files:#?}");
    assert_eq!(
        files[19],
        "sql/V020__alter_table_store_add_fk_on_manager_staff_id.sql"
    );
    assert_eq!(files[22], "sql/V023__last_updated_triggers.sql");
    assert_eq!(
        db.query_i64("SELECT max(version) FROM pgshepherd.history WHERE state = 'applied'")
            .await,
        23
    );
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM pg_constraint WHERE conname = 'store_manager_staff_id_fkey'"
        )
        .await,
        1
    );
    // The former repeatables and callback did their work.
    assert_eq!(
        db.query_i64(
            "SELECT count(*) FROM pg_views WHERE viewname IN ('actor_info', 'customer_list')"
        )
        .await,
        2
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM pg_trigger WHERE tgname = 'last_updated'")
            .await,
        db.query_i64(
            "SELECT count(*) FROM information_schema.columns \
             WHERE column_name = 'last_update' AND table_schema = 'public' \
             AND table_name IN (SELECT tablename FROM pg_tables WHERE schemaname = 'public')"
        )
        .await
    );
}
