//! `pgshepherd check` from the outside: the real binary on fixture plans (good,
//! broken and missing migration sets), plus `pgshepherd::plan::load` on the same
//! fixtures so that a failure says whether the library or the CLI is at fault.
//!
//! Every broken fixture isolates one error class; its expected diagnostics are
//! listed with their exact `FILE:LINE:COLUMN` and a fragment of the message.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{DateTime, Datelike, FixedOffset, Timelike, Weekday};
use serde_json::Value;

const GOOD: &str = "tests/fixtures/plans/good";
const BROKEN: &str = "tests/fixtures/plans/broken";
const SETS: &str = "tests/fixtures/plans/broken/../sets";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Run `pgshepherd check ARGS...` from the crate root, so that paths in messages are relative.
fn check(args: &[&str]) -> Output {
    common::output_within(
        &format!("pgshepherd check {}", args.join(" ")),
        Command::new(env!("CARGO_BIN_EXE_pgshepherd"))
            .current_dir(root())
            .arg("check")
            .args(args),
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// (fixture file name, expected diagnostics as (file, line, column, message fragment)).
type Expectation = (&'static str, Vec<(String, u32, u32, &'static str)>);

fn plan(name: &str) -> String {
    format!("{BROKEN}/{name}")
}

fn in_set(set: &str, file: &str) -> String {
    format!("{SETS}/{set}/{file}")
}

fn broken_fixtures() -> Vec<Expectation> {
    vec![
        (
            "yaml-syntax.yaml",
            vec![(
                plan("yaml-syntax.yaml"),
                6,
                11,
                "invalid YAML: unclosed bracket",
            )],
        ),
        (
            "unknown-key.yaml",
            vec![
                (
                    plan("unknown-key.yaml"),
                    4,
                    1,
                    "unknown key `rollbak`; did you mean `rollback`?",
                ),
                (
                    plan("unknown-key.yaml"),
                    13,
                    7,
                    "unknown key `timout` in `soak.checks[0]`; did you mean `timeout`?",
                ),
                (
                    plan("unknown-key.yaml"),
                    14,
                    1,
                    "unknown key `colour`; expected one of name, target",
                ),
                // The unknown keys above do not hide this one.
                (
                    plan("unknown-key.yaml"),
                    15,
                    20,
                    "`statement_timeout`: duration \"15 minutes\" contains a space",
                ),
            ],
        ),
        (
            "wrong-type.yaml",
            vec![
                (
                    plan("wrong-type.yaml"),
                    5,
                    12,
                    "`lock.retries` must be a whole number, found \"many\"",
                ),
                (
                    plan("wrong-type.yaml"),
                    7,
                    12,
                    "`backup.enabled` must be true or false, found \"yes\"",
                ),
                (
                    plan("wrong-type.yaml"),
                    8,
                    18,
                    "`backup.expect_tables` must be a list",
                ),
                (
                    plan("wrong-type.yaml"),
                    14,
                    12,
                    "`soak.checks[0].max` must be a number, found \"0.5\"",
                ),
                (
                    plan("wrong-type.yaml"),
                    16,
                    15,
                    "`notify.escalation` must be a string, found an integer",
                ),
            ],
        ),
        (
            "bad-duration.yaml",
            vec![
                (
                    plan("bad-duration.yaml"),
                    4,
                    20,
                    "`statement_timeout`: 15 has no unit; write it like 15s",
                ),
                (
                    plan("bad-duration.yaml"),
                    6,
                    12,
                    "`lock.backoff`: duration \"1 week\" contains a space",
                ),
                (
                    plan("bad-duration.yaml"),
                    8,
                    13,
                    "`soak.duration` must be greater than 0",
                ),
                (
                    plan("bad-duration.yaml"),
                    9,
                    13,
                    "`soak.interval`: unknown unit \"x\"",
                ),
            ],
        ),
        (
            "bad-cron.yaml",
            vec![(
                plan("bad-cron.yaml"),
                5,
                9,
                "`window.cron`: minute field \"61\": 61 is out of range 0-59",
            )],
        ),
        (
            "cron-six-fields.yaml",
            vec![(
                plan("cron-six-fields.yaml"),
                6,
                9,
                "`window.cron`: cron expression \"0 0 2 * * 1-5\" has 6 fields; windows use standard 5-field crontab",
            )],
        ),
        (
            "bad-zone.yaml",
            vec![
                (
                    plan("bad-zone.yaml"),
                    6,
                    13,
                    "unknown time zone \"Europe/Berln\"; did you mean `Europe/Berlin`?",
                ),
                (
                    plan("bad-zone.yaml"),
                    7,
                    13,
                    "`window.duration` 192h is longer than the maximum of 7 days",
                ),
            ],
        ),
        (
            "missing-migrations.yaml",
            vec![(
                plan("missing-migrations.yaml"),
                3,
                13,
                "migration directory \"../sets/does_not_exist\" does not exist",
            )],
        ),
        (
            "set-empty.yaml",
            vec![(
                plan("set-empty.yaml"),
                3,
                13,
                "`migrations`: migration set empty has no migrations",
            )],
        ),
        (
            "set-misnamed.yaml",
            vec![
                (
                    in_set("misnamed", "V1__a.undo.sql"),
                    1,
                    1,
                    "the name \"a.undo\" may only contain letters, digits and _",
                ),
                (
                    in_set("misnamed", "V2-b.sql"),
                    1,
                    1,
                    "missing `__` between the version and the name",
                ),
                (
                    in_set("misnamed", "v3__c.sql"),
                    1,
                    1,
                    "migration files start with an uppercase V",
                ),
            ],
        ),
        (
            "set-gap.yaml",
            vec![(
                in_set("gap", "V4__d.sql"),
                1,
                1,
                "missing V3: versions must be consecutive, and V2 is followed by V4",
            )],
        ),
        (
            "set-duplicate.yaml",
            vec![
                (
                    in_set("duplicate", "V2__b.sql"),
                    1,
                    1,
                    "duplicate version 2: also V2__c.sql",
                ),
                (
                    in_set("duplicate", "V2__c.sql"),
                    1,
                    1,
                    "duplicate version 2: also V2__b.sql",
                ),
            ],
        ),
        (
            "set-orphans.yaml",
            vec![
                (
                    in_set("orphans", "V1__a_renamed.verify.sql"),
                    1,
                    1,
                    "has no up script V1__a_renamed.sql (V1 is V1__a.sql)",
                ),
                (
                    in_set("orphans", "V2__b.down.sql"),
                    1,
                    1,
                    "V2__b.down.sql has no up script V2__b.sql",
                ),
            ],
        ),
        (
            "set-directives.yaml",
            vec![
                (
                    in_set("directives", "V1__index_a.sql"),
                    1,
                    1,
                    "unknown directive `-- pgshepherd:no-transation`",
                ),
                (
                    in_set("directives", "V2__forgotten.sql"),
                    1,
                    1,
                    "up script V2__forgotten.sql contains no SQL statement",
                ),
                (
                    in_set("directives", "V3__late_directive.sql"),
                    2,
                    5,
                    "only counts on the first line of the file",
                ),
            ],
        ),
        (
            "down-missing.yaml",
            vec![(
                plan("down-missing.yaml"),
                11,
                13,
                "rollback strategy `down` needs a down script (or `-- pgshepherd:capture`) for every migration, but V2__index_a has no V2__index_a.down.sql",
            )],
        ),
        (
            "restore-without-consent.yaml",
            vec![
                (
                    plan("restore-without-consent.yaml"),
                    13,
                    13,
                    "set `allow_data_loss: true` to accept that",
                ),
                (
                    plan("restore-without-consent.yaml"),
                    13,
                    13,
                    "needs a backup, but `backup.enabled` is false",
                ),
            ],
        ),
        (
            "never-met.yaml",
            vec![
                (
                    plan("never-met.yaml"),
                    8,
                    7,
                    "check `no_threshold` has no threshold, so it can never breach",
                ),
                (
                    plan("never-met.yaml"),
                    12,
                    12,
                    "`min` (5) is greater than `max` (1), so every sample would breach",
                ),
                (
                    plan("never-met.yaml"),
                    17,
                    20,
                    "`consecutive: 7` can never be reached, so the check can never breach: the soak takes only 6 samples (1m / 10s)",
                ),
                (
                    plan("never-met.yaml"),
                    21,
                    20,
                    "`min_samples: 100` can never be reached, so the soak can never pass",
                ),
                (
                    plan("never-met.yaml"),
                    24,
                    12,
                    "`max: -1` can never hold because lock_waiting_sessions is never negative",
                ),
                (
                    plan("never-met.yaml"),
                    27,
                    21,
                    "`soak.checks[5].max_increase` must not be negative",
                ),
                (
                    plan("never-met.yaml"),
                    30,
                    12,
                    "check `never_breaches` can never breach",
                ),
                (
                    plan("never-met.yaml"),
                    34,
                    16,
                    "`timeout` 30s is longer than `soak.interval` 10s",
                ),
                (
                    plan("never-met.yaml"),
                    36,
                    12,
                    "`rollback.confirm` 5s is shorter than `soak.interval` 10s",
                ),
            ],
        ),
        (
            "duplicate-check.yaml",
            vec![(
                plan("duplicate-check.yaml"),
                10,
                13,
                "duplicate check name `latency` (first used at 7:13)",
            )],
        ),
        (
            "many-errors.yaml",
            vec![
                (
                    plan("many-errors.yaml"),
                    2,
                    7,
                    "`name` \"many errors\" may only contain letters, digits",
                ),
                (plan("many-errors.yaml"), 5, 20, "unknown unit \"x\""),
                (plan("many-errors.yaml"), 7, 9, "has 6 fields"),
                (
                    plan("many-errors.yaml"),
                    8,
                    13,
                    "did you mean `Europe/Berlin`?",
                ),
                (
                    plan("many-errors.yaml"),
                    12,
                    3,
                    "unknown key `intervall` in `soak`; did you mean `interval`?",
                ),
                (
                    plan("many-errors.yaml"),
                    15,
                    16,
                    "did you mean `deadlocks_per_second`?",
                ),
                (
                    plan("many-errors.yaml"),
                    18,
                    13,
                    "rollback strategy `restore`",
                ),
                (in_set("gap", "V4__d.sql"), 1, 1, "missing V3"),
            ],
        ),
        (
            "billion-laughs.yaml",
            vec![(
                plan("billion-laughs.yaml"),
                5,
                8,
                "refused: aliases expand to too much",
            )],
        ),
    ]
}

fn assert_diagnostics(
    fixture: &str,
    got: &[(String, u32, u32, String)],
    want: &[(String, u32, u32, &str)],
) {
    let render = |d: &[(String, u32, u32, String)]| {
        d.iter()
            .map(|(f, l, c, m)| format!("{f}:{l}:{c}: {m}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(got.len(), want.len(), "{fixture}: got\n{}", render(got));
    for ((gf, gl, gc, gm), (wf, wl, wc, wm)) in got.iter().zip(want) {
        assert_eq!(
            (gf, gl, gc),
            (wf, wl, wc),
            "{fixture}: got\n{}",
            render(got)
        );
        assert!(
            gm.contains(wm),
            "{fixture}: {gf}:{gl}:{gc}: {gm:?} does not contain {wm:?}"
        );
    }
}

#[test]
fn library_reports_every_error_class_with_its_position() {
    for (fixture, want) in broken_fixtures() {
        let path = PathBuf::from(plan(fixture));
        let err = pgshepherd::plan::load(&path).expect_err(fixture);
        let got: Vec<_> = err
            .0
            .iter()
            .map(|d| {
                (
                    d.file.display().to_string(),
                    d.line,
                    d.column,
                    d.message.clone(),
                )
            })
            .collect();
        assert_diagnostics(fixture, &got, &want);
    }
}

#[test]
fn check_prints_every_error_as_file_line_column_and_exits_2() {
    for (fixture, want) in broken_fixtures() {
        let out = check(&[&plan(fixture)]);
        assert_eq!(out.status.code(), Some(2), "{fixture}: {}", stderr(&out));
        assert_eq!(
            stdout(&out),
            "",
            "{fixture}: nothing on stdout for an invalid plan"
        );
        let got: Vec<_> = stderr(&out)
            .lines()
            .map(|line| {
                let mut parts = line.splitn(4, ':');
                let file = parts.next().unwrap().to_string();
                let l = parts
                    .next()
                    .and_then(|l| l.parse().ok())
                    .unwrap_or_else(|| panic!("{fixture}: {line}"));
                let c = parts
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or_else(|| panic!("{fixture}: {line}"));
                let m = parts.next().unwrap_or_default().trim_start().to_string();
                (file, l, c, m)
            })
            .collect();
        assert_diagnostics(fixture, &got, &want);
    }
}

#[test]
fn good_plans_pass_with_a_summary() {
    let out = check(&[
        &format!("{GOOD}/minimal.yaml"),
        &format!("{GOOD}/full.yaml"),
        &format!("{GOOD}/berlin-weekdays.yaml"),
        "plans/job-summaries-cancel-reason.yaml",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let minimal = &lines[0];
    for part in [
        "minimal.yaml",
        "minimal",
        "target app",
        "2 migrations",
        "V1__create_table",
        "rollback down",
        "any time",
    ] {
        assert!(minimal.contains(part), "{minimal:?} lacks {part:?}");
    }
    let full = &lines[1];
    for part in [
        "full_plan-1",
        "rollback restore",
        "30 1 * * MON-FRI Asia/Kolkata",
    ] {
        assert!(full.contains(part), "{full:?} lacks {part:?}");
    }
    assert!(full.contains("+05:30"), "{full:?}");
}

#[test]
fn a_missing_plan_file_is_invalid() {
    let out = check(&[&plan("does-not-exist.yaml")]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "{}:0:0: cannot read plan",
            plan("does-not-exist.yaml")
        )),
        "{err}"
    );
}

fn json_lines(out: &Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn openings(report: &Value) -> Vec<DateTime<FixedOffset>> {
    report["next_windows"]
        .as_array()
        .expect("next_windows")
        .iter()
        .map(|t| DateTime::parse_from_rfc3339(t.as_str().unwrap()).unwrap())
        .collect()
}

#[test]
fn json_reports_one_object_per_plan_with_next_windows() {
    let out = check(&[
        "--json",
        &format!("{GOOD}/full.yaml"),
        &plan("set-gap.yaml"),
        &format!("{GOOD}/minimal.yaml"),
        &format!("{GOOD}/berlin-weekdays.yaml"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "one invalid plan makes the run invalid"
    );
    let reports = json_lines(&out);
    assert_eq!(reports.len(), 4, "{}", stdout(&out));

    let full = &reports[0];
    assert_eq!(full["plan"], format!("{GOOD}/full.yaml"));
    assert_eq!(full["valid"], true);
    assert_eq!(full["errors"], serde_json::json!([]));
    assert_eq!(full["name"], "full_plan-1");
    assert_eq!(full["target"], "app");
    assert_eq!(
        full["migrations"],
        serde_json::json!(["V1__create_table", "V2__cancel_reason_index"])
    );
    assert_eq!(full["rollback"], "restore");
    let next = openings(full);
    assert_eq!(next.len(), 5);
    for (t, raw) in next.iter().zip(full["next_windows"].as_array().unwrap()) {
        assert!(raw.as_str().unwrap().ends_with("T01:30:00+05:30"), "{raw}");
        assert_eq!(t.offset().local_minus_utc(), 5 * 3600 + 30 * 60);
        assert!(!matches!(t.weekday(), Weekday::Sat | Weekday::Sun), "{t}");
    }
    assert!(next.windows(2).all(|w| w[0] < w[1]), "ascending: {next:?}");

    let gap = &reports[1];
    assert_eq!(gap["plan"], plan("set-gap.yaml"));
    assert_eq!(gap["valid"], false);
    assert!(gap.get("next_windows").is_none());
    let errors = gap["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["file"], in_set("gap", "V4__d.sql"));
    assert_eq!(errors[0]["line"], 1);
    assert_eq!(errors[0]["column"], 1);
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("missing V3")
    );

    let minimal = &reports[2];
    assert_eq!(minimal["valid"], true);
    assert_eq!(
        minimal["next_windows"],
        serde_json::json!([]),
        "no window: any time"
    );
    assert_eq!(minimal["rollback"], "down");

    let berlin = openings(&reports[3]);
    assert_eq!(berlin.len(), 5);
    for t in &berlin {
        let offset = t.offset().local_minus_utc();
        assert!(
            offset == 3600 || offset == 7200,
            "Berlin is +01:00 or +02:00: {t}"
        );
        assert_eq!((t.hour(), t.minute()), (2, 0), "{t}");
        assert!(!matches!(t.weekday(), Weekday::Sat | Weekday::Sun), "{t}");
    }
    // The human errors still go to stderr.
    assert!(stderr(&out).contains(&format!("{}:1:1: missing V3", in_set("gap", "V4__d.sql"))));
}

/// Each input would take the parser minutes or gigabytes if it were read to the
/// end; the refusal names the limit that stopped it (no timing is asserted).
#[test]
fn hostile_yaml_is_refused_by_its_limits_without_crashing() {
    let dir = tempfile::tempdir().unwrap();
    let deep_flow = dir.path().join("deep-flow.yaml");
    std::fs::write(
        &deep_flow,
        format!("name: {}x{}\n", "[".repeat(10_000), "]".repeat(10_000)),
    )
    .unwrap();
    let deep_block = dir.path().join("deep-block.yaml");
    std::fs::write(&deep_block, format!("name:\n{}x\n", "- ".repeat(10_000))).unwrap();
    let deep_maps = dir.path().join("deep-maps.yaml");
    std::fs::write(
        &deep_maps,
        format!("name: {}x{}\n", "{a: ".repeat(10_000), "}".repeat(10_000)),
    )
    .unwrap();
    let huge = dir.path().join("huge.yaml");
    std::fs::write(
        &huge,
        format!("name: x\n# {}\n", "y".repeat(4 * 1024 * 1024)),
    )
    .unwrap();
    let bomb = root().join(plan("billion-laughs.yaml"));

    for file in [&deep_flow, &deep_block, &deep_maps, &huge, &bomb] {
        let out = check(&[file.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: {}",
            file.display(),
            stderr(&out)
        );
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(&file.display().to_string()), "{err}");
        assert!(
            err.contains("refused") || err.contains("limited to"),
            "{err}"
        );

        let json = check(&["--json", file.to_str().unwrap()]);
        assert_eq!(json.status.code(), Some(2));
        let report = &json_lines(&json)[0];
        assert_eq!(report["valid"], false);
        assert_eq!(report["errors"].as_array().unwrap().len(), 1);
    }
}
