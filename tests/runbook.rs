//! `pgshepherd runbook`: the on-call document of a plan, snapshot-tested per
//! rollback strategy (down, restore, hold), with and without a run, in Markdown
//! and HTML.
//!
//! The expected documents are in tests/fixtures/runbook/expected/. After an
//! intended change, regenerate them with `UPDATE_SNAPSHOTS=1 cargo nextest run
//! --test runbook` and review the diff.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use pgshepherd::run::checkpoint::{Checkpoint, RunFacts};
use pgshepherd::run::state::RunState;
use pgshepherd::steps::backup::{ArchiveFormat, Manifest};

const FIXTURES: &str = "tests/fixtures/runbook";
const RUN_ID: &str = "0a1b2c3d4e5f";

/// Run `pgshepherd runbook ARGS` from the crate root (plan paths in the
/// document are then relative and stable); returns stdout, stderr and the code.
fn runbook(args: &[&str]) -> (String, String, i32) {
    let out = common::output_within(
        "pgshepherd runbook",
        Command::new(common::pgshepherd_bin())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("PGSHEPHERD_DATABASE_URL")
            .arg("runbook")
            .args(args),
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.code().unwrap_or(-1),
    )
}

fn printed(args: &[&str]) -> String {
    let (stdout, stderr, code) = runbook(args);
    assert_eq!(code, 0, "runbook {args:?} failed: {stderr}");
    stdout
}

/// Compare with the stored snapshot, or store it with UPDATE_SNAPSHOTS=1.
fn assert_snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(FIXTURES)
        .join("expected")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (create it with UPDATE_SNAPSHOTS=1)",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name} differs from {} at line {}:\n--- expected\n{}\n--- actual\n{}\n(regenerate with UPDATE_SNAPSHOTS=1 if intended)",
            path.display(),
            first + 1,
            expected.lines().nth(first).unwrap_or("<end>"),
            actual.lines().nth(first).unwrap_or("<end>"),
        );
    }
}

fn plan(name: &str) -> String {
    format!("{FIXTURES}/{name}.yaml")
}

/// A backup directory as `run` leaves it: the journal's state with the verified
/// backup's manifest, and that manifest next to its archive.
fn backup_dir_with_run(dir: &Path) -> PathBuf {
    let archive = dir.join("jobs-20261206T020000Z-0a1b2c3d4e5f.dump");
    let manifest_path = dir.join("jobs-20261206T020000Z-0a1b2c3d4e5f.manifest.json");
    let manifest = Manifest {
        target: "jobs".into(),
        run_id: RUN_ID.into(),
        created_at: "2026-12-06T02:00:03Z".parse().unwrap(),
        server_version: "15.10".into(),
        format: ArchiveFormat::Custom,
        path: archive,
        size_bytes: 4096,
        sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        files: Vec::new(),
        compression: 0,
        jobs: 1,
        applied_versions: vec![1],
        tables: vec!["public.job_execution_summaries".into()],
        database: None,
        write_counters: Vec::new(),
        snapshot_of: None,
    };
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    let checkpoint = Checkpoint {
        state: RunState::Created,
        facts: RunFacts {
            backup_manifest: Some(manifest_path),
            ..RunFacts::default()
        },
    };
    std::fs::create_dir_all(dir.join("journal")).unwrap();
    std::fs::write(
        dir.join("journal").join(format!("{RUN_ID}.state.json")),
        serde_json::to_vec_pretty(&checkpoint).unwrap(),
    )
    .unwrap();
    dir.to_path_buf()
}

#[test]
fn down_strategy_without_a_run() {
    let doc = printed(&[&plan("down")]);
    // No secret of the HTTP check's URL, no connection string.
    assert!(!doc.contains("hunter2"), "{doc}");
    assert!(doc.contains("$PGSHEPHERD_DATABASE_URL"), "{doc}");
    // The captured migration's exact undo command, with a placeholder run id.
    assert!(
        doc.contains(
            "pgshepherd undo <RUN_ID> --database-url \"$PGSHEPHERD_DATABASE_URL\" --version 2 --mode merge"
        ),
        "{doc}"
    );
    // Down scripts newest first.
    let v3 = doc.find("### Undo `V3__cancel_reason_index`").unwrap();
    let v2 = doc.find("### Undo `V2__default_reason`").unwrap();
    let v1 = doc.find("### Undo `V1__create_table`").unwrap();
    assert!(v3 < v2 && v2 < v1, "{doc}");
    assert_snapshot("down.md", &doc);
}

#[test]
fn restore_strategy_without_a_run_has_marked_placeholders() {
    let doc = printed(&[&plan("restore")]);
    assert!(doc.contains("sha256sum <ARCHIVE>"), "{doc}");
    assert!(doc.contains("**Placeholders:**"), "{doc}");
    assert_snapshot("restore.md", &doc);
}

#[test]
fn restore_strategy_with_a_run_names_its_archive_and_sha256() {
    let dir = common::scratch_dir();
    let backup_dir = backup_dir_with_run(dir.path());
    let doc = printed(&[
        &plan("restore"),
        "--run",
        RUN_ID,
        "--backup-dir",
        backup_dir.to_str().unwrap(),
    ]);
    let archive = backup_dir.join("jobs-20261206T020000Z-0a1b2c3d4e5f.dump");
    assert!(
        doc.contains(&format!("sha256sum {}", archive.display())),
        "{doc}"
    );
    assert!(
        doc.contains("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        "{doc}"
    );
    for placeholder in ["<RUN_ID>", "<ARCHIVE>", "<SHA256>"] {
        assert!(!doc.contains(placeholder), "{placeholder} is left: {doc}");
    }
    let stable = doc.replace(&backup_dir.display().to_string(), "$BACKUP_DIR");
    assert_snapshot("restore-run.md", &stable);
}

#[test]
fn hold_strategy_with_a_config_lists_the_escalation_levels_in_html() {
    let dir = common::scratch_dir();
    let config = dir.path().join("pgshepherd.yaml");
    std::fs::write(
        &config,
        "channels:\n  \
           pager: {kind: generic, url: 'https://pager.example/hook?token=s3cret', secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}\n  \
           dba: {kind: slack, url: 'https://hooks.slack.com/services/T/B/XYZ'}\n\
         escalation:\n  \
           dba-oncall: {levels: [{channels: [pager], delay: 10m}, {channels: [dba, pager]}], repeat: 1, on_breach: true}\n",
    )
    .unwrap();
    let plan_path = dir.path().join("hold.yaml");
    // The fixture plan with an escalation policy, its set reached from here.
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(plan("hold")))
        .unwrap()
        .replace(
            "migrations: set",
            &format!("migrations: {}/{FIXTURES}/set", env!("CARGO_MANIFEST_DIR")),
        )
        .replace(
            "channels: [release-chat]",
            "channels: [release-chat]\n  escalation: dba-oncall",
        );
    std::fs::write(&plan_path, text).unwrap();
    let html = printed(&[
        plan_path.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--format",
        "html",
    ]);
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(
        !html.contains("s3cret") && !html.contains("hooks.slack.com"),
        "{html}"
    );
    assert!(
        html.contains(
            "<li>Level 1: <code>pager</code>; the next level after 10m without an ack.</li>"
        ),
        "{html}"
    );
    // User text is text: the comment's `<unknown>` is escaped.
    assert!(html.contains("&lt;unknown&gt;"), "{html}");
    let stable = html
        .replace(&dir.path().display().to_string(), "$DIR")
        .replace(env!("CARGO_MANIFEST_DIR"), "$CRATE");
    assert_snapshot("hold.html", &stable);
    // The same document in Markdown, without a config.
    assert_snapshot("hold.md", &printed(&[&plan("hold")]));
}

#[test]
fn a_run_without_a_journal_is_invalid_input() {
    let dir = common::scratch_dir();
    let (_, stderr, code) = runbook(&[
        &plan("down"),
        "--run",
        RUN_ID,
        "--backup-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("no journal of run 0a1b2c3d4e5f"),
        "{stderr}"
    );
    let (_, stderr, code) = runbook(&[&plan("down"), "--run", "../../etc/passwd"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("is not a run id"), "{stderr}");
}

#[test]
fn an_invalid_plan_is_refused_with_its_diagnostics() {
    let (stdout, stderr, code) = runbook(&["tests/fixtures/plans/broken/unknown-key.yaml"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("unknown-key.yaml:"), "{stderr}");
}

#[test]
fn a_recorded_backup_whose_manifest_is_gone_is_said_not_hidden() {
    let dir = common::scratch_dir();
    let backup_dir = backup_dir_with_run(dir.path());
    std::fs::remove_file(backup_dir.join("jobs-20261206T020000Z-0a1b2c3d4e5f.manifest.json"))
        .unwrap();
    let (doc, stderr, code) = runbook(&[
        &plan("restore"),
        "--run",
        RUN_ID,
        "--backup-dir",
        backup_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning: the run's backup manifest"),
        "{stderr}"
    );
    assert!(doc.contains("**The backup cannot be shown**"), "{doc}");
    assert!(doc.contains("sha256sum <ARCHIVE>"), "{doc}");
    assert!(!doc.contains("recorded no verified backup"), "{doc}");
}
