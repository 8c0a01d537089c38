//! What the commands write, and to whom: a reader that leaves early (`| head`)
//! ends a client command quietly and never stops a run; warnings reach stderr
//! while `--json` keeps stdout to JSON; errors carry the server's own words.
//!
//! The pipes here are real: the binary's stdout (and, for `run`, its stderr too)
//! goes into a pipe shrunk to one page, the test reads one line and closes its
//! end. Every test first checks the output is larger than the pipe, so the
//! command is still writing when the reader goes: the case is exercised, not
//! skipped by a command that finished early.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use common::daemon::{Api, Env, READER, SUBMITTER, plan_dir, soak_yaml};
use serde_json::Value;

/// What a command did after its reader left.
struct Cut {
    first_line: String,
    status: ExitStatus,
    stderr: String,
}

/// Run `cmd` with stdout (and with `stderr_too`, stderr) into a pipe of one page,
/// read the first line, close the pipe, and wait for the command. Returns it with
/// the pipe's capacity.
fn read_one_line_then_close(mut cmd: Command, stderr_too: bool) -> (Cut, usize) {
    let (reader, writer) = std::io::pipe().unwrap();
    // SAFETY: fcntl on a pipe we own; F_SETPIPE_SZ only resizes its buffer.
    let capacity = unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(capacity > 0, "F_SETPIPE_SZ failed");
    let stderr_file = tempfile::NamedTempFile::new().unwrap();
    cmd.stdout(writer.try_clone().unwrap());
    if stderr_too {
        cmd.stderr(writer);
    } else {
        drop(writer);
        cmd.stderr(stderr_file.reopen().unwrap());
    }
    cmd.stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    // Our copies of the write end go with `cmd`: only the child writes now.
    drop(cmd);
    let mut lines = BufReader::new(reader);
    let mut first_line = String::new();
    lines.read_line(&mut first_line).unwrap();
    drop(lines);
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    if !stderr_too {
        std::fs::File::open(stderr_file.path())
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
    }
    (
        Cut {
            first_line,
            status,
            stderr,
        },
        capacity as usize,
    )
}

fn assert_quiet_exit(cut: &Cut, what: &str) {
    assert!(
        !cut.stderr.contains("panicked") && !cut.stderr.contains("Broken pipe"),
        "{what}: {}",
        cut.stderr
    );
    // A panic exits 101; a signal leaves no code at all.
    assert_eq!(cut.status.code(), Some(0), "{what}: {:?}", cut.status);
}

fn pgshepherd(args: &[&str]) -> Command {
    let mut cmd = Command::new(common::pgshepherd_bin());
    cmd.args(args);
    cmd
}

#[test]
fn check_json_exits_quietly_when_its_reader_leaves() {
    let work = common::scratch_dir();
    let plan = common::one_table_plan(work.path(), "main", "1s", "");
    let plan = plan.to_str().unwrap();
    let mut args = vec!["check", "--json"];
    args.extend(std::iter::repeat_n(plan, 200));

    let full = pgshepherd(&args).output().unwrap();
    assert!(full.status.success(), "{full:?}");
    let (cut, capacity) = read_one_line_then_close(pgshepherd(&args), false);
    assert!(
        full.stdout.len() > 2 * capacity,
        "{} bytes do not outlast a {capacity}-byte pipe",
        full.stdout.len()
    );
    let first: Value = serde_json::from_str(&cut.first_line).unwrap();
    assert_eq!(first["valid"], true, "{first}");
    assert_quiet_exit(&cut, "check --json");
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_json_piped_into_head_exits_quietly() {
    let env = Env::new(&["main"], "lease_timeout: 5s\npoll_interval: 200ms").await;
    let work = common::scratch_dir();
    // Many migrations: many events, more than a pipe holds.
    let files: Vec<(String, String)> = (1..=30)
        .flat_map(|v| {
            [
                (
                    format!("V{v}__t{v}.sql"),
                    format!("CREATE TABLE t{v} (id int);\n"),
                ),
                (
                    format!("V{v}__t{v}.down.sql"),
                    format!("DROP TABLE t{v};\n"),
                ),
            ]
        })
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_str()))
        .collect();
    let tail = format!(
        "backup:\n  enabled: false\n{}rollback:\n  strategy: down\n",
        soak_yaml("1s", "250ms", "SELECT 1", 1)
    );
    let (plan, set) = plan_dir(work.path(), "main", &files, &tail);
    let daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    let row = env.wait_finished(&run, Duration::from_secs(60)).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");

    // The daemon's JSON log of the same run: each event's line carries the run,
    // the target, the step and the event as fields, and no clock in its message.
    let log = daemon.log_text();
    let applied: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["event"] == "migration_applied")
        .collect();
    assert_eq!(applied.len(), 30, "{log}");
    let line = &applied[0];
    assert_eq!(line["run_id"], run.as_str(), "{line}");
    assert_eq!(line["target"], "main", "{line}");
    assert_eq!(line["step"], "migrate", "{line}");
    let message = line["message"].as_str().unwrap();
    assert!(!message.starts_with('['), "a clock in the message: {line}");

    let args = [
        "logs",
        &run,
        "--json",
        "--server",
        &daemon.url,
        "--token",
        READER,
    ];
    let full = pgshepherd(&args).output().unwrap();
    assert!(full.status.success(), "{full:?}");
    let cmd = pgshepherd(&args);
    let (cut, capacity) = tokio::task::spawn_blocking(move || read_one_line_then_close(cmd, false))
        .await
        .unwrap();
    assert!(
        full.stdout.len() > 2 * capacity,
        "{} bytes do not outlast a {capacity}-byte pipe",
        full.stdout.len()
    );
    let first: Value = serde_json::from_str(&cut.first_line).unwrap();
    assert_eq!(first["event"], "run_submitted", "{first}");
    assert_quiet_exit(&cut, "logs --json");
}

/// `pgshepherd run --json 2>&1 | head -1`: the reader leaving is not a stop
/// request. The run goes on to its end with nowhere to write (stdout and stderr
/// both closed), and exits with its outcome's code.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_reader_leaves_goes_on_to_its_end() {
    let db = common::fresh_db().await;
    let work = common::scratch_dir();
    let plan = common::one_table_plan(work.path(), "main", "2s", "backup:\n  enabled: false\n");
    let backups = work.path().join("backups");
    let args: Vec<String> = vec![
        "run".into(),
        plan.display().to_string(),
        "--json".into(),
        "--now".into(),
        "--database-url".into(),
        db.url.clone(),
        "--backup-dir".into(),
        backups.display().to_string(),
    ];
    let (cut, capacity) = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(common::pgshepherd_bin());
        cmd.args(&args);
        read_one_line_then_close(cmd, true)
    })
    .await
    .unwrap();
    assert!(!cut.first_line.is_empty());
    assert_eq!(cut.status.code(), Some(0), "{:?}", cut.status);
    assert!(db.table_exists("t").await);

    // Its journal has every event, and more than the pipe could have held: the
    // run was still writing when the reader left.
    let journal = std::fs::read_dir(backups.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .expect("a journal");
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(text.len() > capacity, "{} bytes", text.len());
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "run_finished", "{last}");
    assert_eq!(last["outcome"], "succeeded", "{last}");
}

/// `run` logs its warnings on stderr (they were dropped before), and `--json`
/// keeps stdout to JSON lines.
#[tokio::test(flavor = "multi_thread")]
async fn run_warnings_reach_stderr_and_json_stays_alone_on_stdout() {
    let db = common::fresh_db().await;
    db.execute("CREATE TABLE accounts (id int PRIMARY KEY)")
        .await;
    let work = common::scratch_dir();
    let plan = common::one_table_plan(work.path(), "main", "1s", "");
    let backups = work.path().join("backups");
    // A manifest pgshepherd cannot read, where pruning after the backup looks:
    // it is skipped with a warning.
    std::fs::create_dir_all(backups.join("main")).unwrap();
    std::fs::write(
        backups.join("main/19990101T000000.000Z-garbled.manifest.json"),
        "{ not json",
    )
    .unwrap();
    let out = tokio::process::Command::new(common::pgshepherd_bin())
        .arg("run")
        .arg(&plan)
        .args(["--json", "--now", "--database-url", &db.url, "--backup-dir"])
        .arg(&backups)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("garbled.manifest.json"))
        .unwrap_or_else(|| panic!("no warning about the unreadable manifest:\n{stderr}"));
    assert!(
        !warning.contains('\u{1b}'),
        "no colours off a terminal: {warning:?}"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    for line in stdout.lines() {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout is not only JSON lines ({e}): {line:?}"));
        assert!(event["event"].is_string(), "{line}");
    }
    assert!(stdout.contains("\"run_finished\""), "{stdout}");
}

/// A server error shows the server's words, not the driver's "db error": here
/// a role that may connect but not read pgshepherd's history table.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_error_reaches_the_user_in_the_servers_words() {
    let db = common::fresh_db().await;
    let role = format!("{}_limited", db.name);
    db.execute(&format!(
        "{create}\nCREATE ROLE \"{role}\" LOGIN; GRANT USAGE ON SCHEMA pgshepherd TO \"{role}\";",
        create = pgshepherd::migrations::history::CREATE
    ))
    .await;
    let url = db
        .url
        .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    assert_ne!(url, db.url, "the harness's URL changed shape: {}", db.url);
    let work = common::scratch_dir();
    let plan = common::one_table_plan(work.path(), "main", "1s", "backup:\n  enabled: false\n");
    let out = run_plan_json(&plan, &url, &work.path().join("backups")).await;
    let finished = out.last().expect("a run_finished line");
    let reason = finished["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("permission denied for table history (SQLSTATE 42501)"),
        "{finished}"
    );
    assert!(!reason.contains("db error"), "{finished}");
}

async fn run_plan_json(plan: &Path, url: &str, backups: &Path) -> Vec<Value> {
    let out = tokio::process::Command::new(common::pgshepherd_bin())
        .arg("run")
        .arg(plan)
        .args(["--json", "--now", "--database-url", url, "--backup-dir"])
        .arg(backups)
        .output()
        .await
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
