//! Reading a plan file: size cap, UTF-8, YAML parse, compile, migration set.

use std::io::Read;
use std::path::Path;

use super::compile::{self, MigrationSource};
use super::diagnostic::{Diagnostic, Diagnostics};
use super::model::Plan;
use super::tree;

/// Plans are small; anything bigger is refused before it is parsed.
pub const MAX_PLAN_BYTES: u64 = 1024 * 1024;

/// Read, parse and compile the plan at `path`, loading its migration set relative
/// to the plan file's directory. Every problem found is returned, in file order.
pub fn load(path: &Path) -> Result<Plan, Diagnostics> {
    let text = read(path).map_err(|d| Diagnostics(vec![d]))?;
    load_str(path, &text, MigrationSource::Directory)
}

/// Parse and compile plan text that claims to come from `path` (used in messages
/// and, with [`MigrationSource::Directory`], to find the migration set).
pub fn load_str(path: &Path, text: &str, source: MigrationSource) -> Result<Plan, Diagnostics> {
    if text.len() as u64 > MAX_PLAN_BYTES {
        return Err(Diagnostics(vec![too_big(path, text.len() as u64)]));
    }
    let root = tree::parse(text)
        .map_err(|e| Diagnostics(vec![Diagnostic::new(path, e.line, e.column, e.message)]))?;
    compile::compile(path, &root, source).map_err(|mut d| {
        // Plan-file problems first, in file order, then those of the migration files.
        d.sort_by(|a, b| {
            let other_file = |x: &Diagnostic| x.file != path;
            (other_file(a), &a.file, a.line, a.column).cmp(&(
                other_file(b),
                &b.file,
                b.line,
                b.column,
            ))
        });
        d.dedup();
        Diagnostics(d)
    })
}

fn too_big(path: &Path, size: u64) -> Diagnostic {
    Diagnostic::new(
        path,
        1,
        1,
        format!(
            "the plan is {size} bytes or more; plans are limited to {} KiB",
            MAX_PLAN_BYTES / 1024
        ),
    )
}

fn read(path: &Path) -> Result<String, Diagnostic> {
    let file = std::fs::File::open(path)
        .map_err(|e| Diagnostic::new(path, 0, 0, format!("cannot read plan: {e}")))?;
    let mut bytes = Vec::new();
    // Read one byte past the cap so that an oversized file is recognised without reading it all.
    file.take(MAX_PLAN_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Diagnostic::new(path, 0, 0, format!("cannot read plan: {e}")))?;
    if bytes.len() as u64 > MAX_PLAN_BYTES {
        return Err(too_big(path, bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let good = std::str::from_utf8(good).unwrap_or_default();
        let line = good.matches('\n').count() as u32 + 1;
        let column = good.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
        Diagnostic::new(path, line, column, "the plan is not valid UTF-8 text")
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::migrations::MigrationSet;
    use crate::plan::model::*;

    fn set(with_down: bool) -> MigrationSet {
        let mut files = vec![
            (
                "V1__create.sql".to_string(),
                "CREATE TABLE t (c int);".to_string(),
            ),
            (
                "V2__index.sql".to_string(),
                "CREATE INDEX i ON t (c);".to_string(),
            ),
            (
                "V1__create.down.sql".to_string(),
                "DROP TABLE t;".to_string(),
            ),
        ];
        if with_down {
            files.push((
                "V2__index.down.sql".to_string(),
                "DROP INDEX i;".to_string(),
            ));
        }
        MigrationSet::from_files("jobs", None, files).unwrap()
    }

    fn compile(yaml: &str) -> Result<Plan, Vec<String>> {
        load_str(
            Path::new("plan.yaml"),
            yaml,
            MigrationSource::Given(set(true)),
        )
        .map_err(|d| d.0.iter().map(|d| d.to_string()).collect())
    }

    fn errors(yaml: &str) -> Vec<String> {
        compile(yaml).err().unwrap_or_default()
    }

    const MINIMAL: &str = "name: p\ntarget: app\nmigrations: jobs\nsoak:\n  duration: 10m\n  checks:\n    - name: c\n      builtin: deadlocks_per_second\n      max: 0\n";

    #[test]
    fn minimal_plan_gets_every_default() {
        let plan = compile(MINIMAL).unwrap();
        assert_eq!(plan.path, PathBuf::from("plan.yaml"));
        assert_eq!(plan.statement_timeout, Duration::from_secs(900));
        assert_eq!(plan.lock.acquire_timeout, Duration::from_secs(30));
        assert_eq!(plan.lock.lock_timeout, Duration::from_secs(2));
        assert_eq!(plan.lock.retries, 5);
        assert_eq!(plan.lock.backoff, Duration::from_millis(500));
        assert_eq!(plan.lock.max_backoff, Duration::from_secs(10));
        assert!(plan.window.is_none());
        assert!(plan.backup.enabled);
        assert_eq!(plan.backup.format, BackupFormat::Custom);
        assert_eq!(
            (plan.backup.jobs, plan.backup.compression, plan.backup.keep),
            (1, 0, 5)
        );
        assert!(plan.backup.expect_tables.is_empty());
        assert_eq!(plan.soak.interval, Duration::from_secs(10));
        assert_eq!(plan.soak.baseline_samples, 3);
        let c = &plan.soak.checks[0];
        assert_eq!(c.consecutive, 3);
        assert_eq!(c.min_samples, 30, "60 possible samples / 2");
        assert_eq!(c.on_inconclusive, InconclusivePolicy::Breach);
        assert_eq!(c.max_inconclusive, 2);
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(plan.rollback.strategy, RollbackStrategy::Down);
        assert!(!plan.rollback.allow_data_loss);
        assert_eq!(plan.rollback.confirm, Duration::from_secs(30));
        assert!(plan.notify.channels.is_empty() && plan.notify.escalation.is_none());
    }

    /// The diagnostics at `line:col` (there may be several).
    fn at(errors: &[String], line: u32, col: u32) -> Vec<String> {
        let prefix = format!("plan.yaml:{line}:{col}: ");
        errors
            .iter()
            .filter_map(|e| e.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }

    fn assert_error(yaml: &str, line: u32, col: u32, needle: &str) {
        let all = errors(yaml);
        let here = at(&all, line, col);
        assert!(
            here.iter().any(|m| m.contains(needle)),
            "no {needle:?} at {line}:{col} in {all:#?}"
        );
    }

    /// MINIMAL with `extra` appended at the top level (line 10 onwards).
    fn with(extra: &str) -> String {
        format!("{MINIMAL}{extra}")
    }

    #[test]
    fn the_example_plan_in_the_repository_is_valid() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/job-summaries-cancel-reason.yaml");
        let plan = load(&path).unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(plan.migrations.name, "job_summaries");
        assert!(plan.window.is_some());
    }

    #[test]
    fn the_full_example_in_the_reference_is_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let doc = std::fs::read_to_string(root.join("docs/plan-reference.md")).unwrap();
        let example = doc.split("## Full example").nth(1).unwrap();
        let yaml = example
            .split("```yaml\n")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap();
        let plan = load_str(
            &root.join("plans/example.yaml"),
            yaml,
            MigrationSource::Directory,
        )
        .unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(plan.soak.checks.len(), 4);
        assert_eq!(plan.soak.checks[0].min_samples, 180);
    }

    #[test]
    fn yaml_syntax_errors_have_a_position() {
        let all = errors("name: p\nsoak: [1, 2\n");
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(all[0].starts_with("plan.yaml:2:7: invalid YAML"), "{all:?}");
        assert_error("name: p\n  target: x\n", 2, 9, "invalid YAML");
    }

    #[test]
    fn unknown_keys_suggest_the_right_one() {
        assert_error(
            &with("rollbak:\n  strategy: down\n"),
            10,
            1,
            "unknown key `rollbak`; did you mean `rollback`?",
        );
        assert_error(
            &with("lock:\n  lock_timeot: 1s\n"),
            11,
            3,
            "unknown key `lock_timeot` in `lock`; did you mean `lock_timeout`?",
        );
        assert_error(
            &with("interval: 5s\n"),
            10,
            1,
            "`interval` belongs in `soak`",
        );
        assert_error(
            &with("colour: blue\n"),
            10,
            1,
            "expected one of name, target",
        );
    }

    #[test]
    fn an_unknown_key_does_not_hide_other_errors() {
        let all = errors(&with("rollbak: {}\nstatement_timeout: 5 min\n"));
        assert_eq!(at(&all, 10, 1).len(), 1, "{all:?}");
        assert_eq!(at(&all, 11, 20).len(), 1, "{all:?}");
    }

    #[test]
    fn wrong_types_name_what_was_found() {
        assert_error(
            &with("backup:\n  keep: many\n"),
            11,
            9,
            "`backup.keep` must be a whole number, found \"many\"",
        );
        assert_error(
            &with("backup:\n  enabled: yes\n"),
            11,
            12,
            "must be true or false",
        );
        assert_error(
            &with("notify:\n  channels: release-chat\n"),
            11,
            13,
            "must be a list",
        );
        assert_error(&with("lock: 5\n"), 10, 7, "`lock` must be a mapping");
        assert_error("name: 5\ntarget: app\nmigrations: jobs\n", 1, 7, "quote it");
        assert_error(&with("backup:\n  keep: 2.5\n"), 11, 9, "whole number");
    }

    #[test]
    fn bad_durations_point_at_the_value() {
        assert_error(
            &with("statement_timeout: 15\n"),
            10,
            20,
            "15 has no unit; write it like 15s",
        );
        assert_error(
            &with("statement_timeout: 15 minutes\n"),
            10,
            20,
            "contains a space",
        );
        assert_error(
            &with("statement_timeout: 15min\n"),
            10,
            20,
            "unknown unit \"min\"",
        );
        assert_error(
            &with("statement_timeout: 0s\n"),
            10,
            20,
            "must be greater than 0",
        );
        assert_error(
            &with("lock:\n  backoff: [1s]\n"),
            11,
            12,
            "expected a duration",
        );
    }

    #[test]
    fn bad_windows() {
        let w = |cron: &str, tz: &str, d: &str| {
            with(&format!(
                "window:\n  cron: \"{cron}\"\n  timezone: {tz}\n  duration: {d}\n"
            ))
        };
        assert_error(
            &w("0 0 2 * * 1-5", "UTC", "1h"),
            11,
            9,
            "has 6 fields; windows use standard 5-field crontab",
        );
        assert_error(
            &w("0 2 * * 9", "UTC", "1h"),
            11,
            9,
            "day-of-week field \"9\": 9 is out of range 0-7",
        );
        assert_error(
            &w("0 2 * * *", "Europe/Berlim", "1h"),
            12,
            13,
            "did you mean `Europe/Berlin`?",
        );
        assert_error(
            &w("0 2 * * *", "europe/berlin", "1h"),
            12,
            13,
            "did you mean `Europe/Berlin`?",
        );
        assert_error(
            &w("0 2 * * *", "Mars/Olympus_Mons", "1h"),
            12,
            13,
            "unknown time zone",
        );
        assert_error(
            &w("0 2 * * *", "UTC", "8d"),
            13,
            13,
            "longer than the maximum of 7 days",
        );
        assert_error(&w("0 2 * * *", "UTC", "0s"), 13, 13, "greater than 0");
        // A broken zone does not hide a broken expression.
        let all = errors(&w("61 2 * * *", "Nowhere", "1h"));
        assert_eq!(
            (at(&all, 11, 9).len(), at(&all, 12, 13).len()),
            (1, 1),
            "{all:?}"
        );
        assert_error(
            &with("window:\n  cron: 0 2 * * *\n"),
            10,
            1,
            "missing required key `timezone` in `window`",
        );
        assert_error(&with("window:\n"), 10, 1, "`window` has no value");
    }

    #[test]
    fn rollback_down_needs_every_down_script() {
        let plan = "name: p\ntarget: app\nmigrations: jobs\nsoak:\n  duration: 10m\n  checks:\n    - {name: c, builtin: deadlocks_per_second, max: 0}\n";
        let e = load_str(
            Path::new("plan.yaml"),
            plan,
            MigrationSource::Given(set(false)),
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(
            e.0[0].to_string(),
            "plan.yaml:3:13: rollback strategy `down` (the default) needs a down script (or `-- pgshepherd:capture`) \
             for every migration, but V2__index has no V2__index.down.sql; add it, or choose strategy `restore` or `hold`"
        );
        let explicit = format!("{plan}rollback:\n  strategy: down\n");
        let e = load_str(
            Path::new("plan.yaml"),
            &explicit,
            MigrationSource::Given(set(false)),
        )
        .unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].column), (9, 13));
        let hold = format!("{plan}rollback:\n  strategy: hold\n");
        assert!(
            load_str(
                Path::new("plan.yaml"),
                &hold,
                MigrationSource::Given(set(false))
            )
            .is_ok()
        );
    }

    #[test]
    fn restore_needs_consent_and_a_backup() {
        assert_error(
            &with("rollback:\n  strategy: restore\n"),
            11,
            13,
            "set `allow_data_loss: true`",
        );
        assert_error(
            &with(
                "backup:\n  enabled: false\nrollback:\n  strategy: restore\n  allow_data_loss: true\n",
            ),
            13,
            13,
            "needs a backup, but `backup.enabled` is false",
        );
        let ok = compile(&with(
            "rollback:\n  strategy: restore\n  allow_data_loss: true\n",
        ))
        .unwrap();
        assert_eq!(ok.rollback.strategy, RollbackStrategy::Restore);
    }

    fn check(body: &str) -> String {
        format!(
            "name: p\ntarget: app\nmigrations: jobs\nsoak:\n  duration: 1m\n  interval: 10s\n  checks:\n    - name: c\n{body}"
        )
    }

    #[test]
    fn thresholds_that_can_never_be_met() {
        // Lines: the check starts at 8:7; `body` starts at line 9.
        assert_error(
            &check("      builtin: deadlocks_per_second\n"),
            8,
            7,
            "has no threshold",
        );
        assert_error(
            &check("      sql: SELECT 1\n      min: 5\n      max: 1\n"),
            10,
            12,
            "`min` (5) is greater than `max` (1)",
        );
        assert_error(
            &check("      sql: SELECT 1\n      max: 1\n      consecutive: 7\n"),
            11,
            20,
            "`consecutive: 7` can never be reached, so the check can never breach: the soak takes only 6 samples (1m / 10s)",
        );
        assert_error(
            &check("      sql: SELECT 1\n      max: 1\n      min_samples: 7\n"),
            11,
            20,
            "the soak can never pass",
        );
        assert_error(
            &check("      builtin: lock_waiting_sessions\n      max: -1\n"),
            10,
            12,
            "never negative; every sample would breach",
        );
        assert_error(
            &check("      builtin: lock_waiting_sessions\n      min: 0\n"),
            10,
            12,
            "can never breach",
        );
        assert_error(
            &check("      builtin: lock_waiting_sessions\n      max_decrease: 100%\n"),
            10,
            21,
            "can never breach",
        );
        assert_error(
            &check("      sql: SELECT 1\n      max_increase: -5\n"),
            10,
            21,
            "must not be negative",
        );
        assert_error(
            &check("      sql: SELECT 1\n      max_decrease: \"-5%\"\n"),
            10,
            21,
            "must not be negative",
        );
        assert_error(
            &check("      sql: SELECT 1\n      max_increase: lots\n"),
            10,
            21,
            "a percentage like 20%",
        );
        assert_error(
            &check("      sql: SELECT 1\n      max: 1\n      timeout: 11s\n"),
            11,
            16,
            "longer than `soak.interval`",
        );
        // consecutive: the default 3 against a soak of 2 samples.
        let short = "name: p\ntarget: app\nmigrations: jobs\nsoak:\n  duration: 20s\n  checks:\n    - {name: c, sql: SELECT 1, max: 1}\n";
        assert_error(
            short,
            7,
            7,
            "`consecutive: 3` (the default) can never be reached",
        );
        // A sql source that is not one query.
        assert_error(
            &check("      sql: SELECT 1; SELECT 2\n      max: 1\n"),
            9,
            12,
            "found 2 statements",
        );
        assert_error(
            &check("      sql: UPDATE t SET x = 1\n      max: 1\n"),
            9,
            12,
            "found UPDATE",
        );
        assert_error(
            &check("      sql: SELECT 1\n      builtin: deadlocks_per_second\n      max: 1\n"),
            10,
            7,
            "has both `sql` and `builtin`",
        );
        assert_error(&check("      max: 1\n"), 8, 7, "measures nothing");
    }

    #[test]
    fn percentages_and_http_checks_compile() {
        let plan = compile(&check(
            "      http: {url: \"https://svc/health\", expect_status: 204, json_pointer: /p99}\n      max_increase: 20%\n      max_decrease: 5\n      on_inconclusive: hold\n",
        ))
        .unwrap();
        let c = &plan.soak.checks[0];
        assert_eq!(c.thresholds.max_increase, Some(Delta::Percent(20.0)));
        assert_eq!(c.thresholds.max_decrease, Some(Delta::Absolute(5.0)));
        assert_eq!(c.on_inconclusive, InconclusivePolicy::Hold);
        assert_eq!(c.min_samples, 3);
        let CheckSource::Http(probe) = &c.source else {
            panic!()
        };
        assert_eq!(probe.expect_status, [204]);
        assert_eq!(probe.json_pointer.as_deref(), Some("/p99"));
    }

    #[test]
    fn duplicate_check_names_and_keys() {
        let yaml = check(
            "      sql: SELECT 1\n      max: 1\n    - name: c\n      sql: SELECT 2\n      max: 1\n",
        );
        assert_error(
            &yaml,
            11,
            13,
            "duplicate check name `c` (first used at 8:13)",
        );
        assert_error(
            &with("target: other\n"),
            10,
            1,
            "duplicate key `target` (first written at 2:1)",
        );
    }

    #[test]
    fn several_errors_in_one_file_are_all_reported_in_order() {
        let yaml = "name: bad name\ntarget: app\nmigrations: jobs\nstatement_timeout: 15x\nwindow:\n  cron: \"0 0 2 * * *\"\n  timezone: Europe/Berln\n  duration: 2h\nsoak:\n  duration: 30s\n  intervall: 5s\n  checks:\n    - name: a\n      builtin: deadlocks_per_second\n      max: -1\nrollback:\n  strategy: restore\n";
        let all = errors(yaml);
        let positions: Vec<String> = all
            .iter()
            .map(|e| e.splitn(4, ':').take(3).collect::<Vec<_>>().join(":"))
            .collect();
        assert_eq!(
            positions,
            [
                "plan.yaml:1:7",
                "plan.yaml:4:20",
                "plan.yaml:6:9",
                "plan.yaml:7:13",
                "plan.yaml:11:3",
                "plan.yaml:15:12",
                "plan.yaml:17:13"
            ],
            "{all:#?}"
        );
    }

    #[test]
    fn empty_and_null_documents() {
        assert_eq!(
            errors(""),
            ["plan.yaml:1:1: the plan is empty; see docs/plan-reference.md for the format"]
        );
        assert_error("- a\n- b\n", 1, 1, "a plan must be a mapping");
        assert_error(&with("statement_timeout:\n"), 10, 1, "has no value");
    }

    #[test]
    fn hostile_documents_are_refused_quickly() {
        let start = std::time::Instant::now();
        let mut bomb = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for (prev, n) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
        {
            bomb.push_str(&format!("{n}: &{n} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let e = errors(&bomb);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].contains("refused: aliases expand to too much"),
            "{e:?}"
        );
        let deep = format!("name: {}x{}\n", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(errors(&deep).len(), 1);
        let deep_maps = format!("name: {}x{}\n", "{a: ".repeat(10_000), "}".repeat(10_000));
        assert_eq!(errors(&deep_maps).len(), 1);
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn files_are_capped_and_must_be_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        std::fs::write(
            &big,
            format!("name: p\n# {}\n", "x".repeat(2 * 1024 * 1024)),
        )
        .unwrap();
        let e = load(&big).unwrap_err();
        assert!(e.0[0].message.contains("limited to 1024 KiB"), "{e}");
        let latin1 = dir.path().join("latin1.yaml");
        std::fs::write(&latin1, b"name: p\ntarget: caf\xe9\n").unwrap();
        let e = load(&latin1).unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].column), (2, 12), "{e}");
        let e = load(&dir.path().join("absent.yaml")).unwrap_err();
        assert!(e.0[0].message.starts_with("cannot read plan"), "{e}");
    }

    #[test]
    fn the_migration_directory_is_relative_to_the_plan() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("plans")).unwrap();
        std::fs::create_dir_all(dir.path().join("migrations/jobs")).unwrap();
        std::fs::write(dir.path().join("migrations/jobs/V1__a.sql"), "SELECT 1;").unwrap();
        std::fs::write(
            dir.path().join("migrations/jobs/V1__a.down.sql"),
            "SELECT 1;",
        )
        .unwrap();
        let plan = dir.path().join("plans/p.yaml");
        std::fs::write(
            &plan,
            MINIMAL.replace("migrations: jobs", "migrations: ../migrations/jobs"),
        )
        .unwrap();
        assert_eq!(load(&plan).unwrap().migrations.name, "jobs");
        std::fs::write(
            &plan,
            MINIMAL.replace("migrations: jobs", "migrations: ../migrations/nope"),
        )
        .unwrap();
        let e = load(&plan).unwrap_err();
        assert_eq!((e.0[0].line, e.0[0].column), (3, 13));
        assert!(
            e.0[0]
                .message
                .contains("migration directory \"../migrations/nope\" does not exist"),
            "{e}"
        );
        std::fs::create_dir_all(dir.path().join("migrations/empty")).unwrap();
        std::fs::write(
            &plan,
            MINIMAL.replace("migrations: jobs", "migrations: ../migrations/empty"),
        )
        .unwrap();
        let e = load(&plan).unwrap_err();
        assert!(e.0[0].message.contains("has no migrations"), "{e}");
    }

    use std::time::Duration;
}
