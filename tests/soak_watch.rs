//! What the soak watches and when: a real `pgshepherd run --json` against a real
//! PostgreSQL.
//!
//! - A paused process does not make up its missed samples in a burst, and the
//!   pause does not count as soaked.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A `pgshepherd run --json` child and the events it printed so far.
struct Run {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    events: Vec<Value>,
}

impl Run {
    fn start(plan: &Path, url: &str, backups: &Path) -> Run {
        let mut child = tokio::process::Command::new(common::pgshepherd_bin())
            .arg("run")
            .arg(plan)
            .args(["--database-url", url, "--json", "--now", "--backup-dir"])
            .arg(backups)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Run {
            child,
            lines,
            events: Vec::new(),
        }
    }

    /// Reads events until one named `event` (and returns it).
    async fn wait_for(&mut self, event: &str) -> Value {
        while let Some(line) = self.lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&line).unwrap();
            self.events.push(v.clone());
            if v["event"] == event {
                return v;
            }
        }
        panic!("the run ended without {event}: {:#?}", self.events);
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.id().unwrap() as i32;
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Reads to the end; the exit code and every event.
    async fn finish(mut self) -> (i32, Vec<Value>) {
        self.wait_for("run_finished").await;
        let status = self.child.wait().await.unwrap();
        (status.code().unwrap_or(-1), self.events)
    }
}

fn ts(event: &Value) -> DateTime<Utc> {
    event["ts"].as_str().unwrap().parse().unwrap()
}

fn samples<'a>(events: &'a [Value], step: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == "check_sample" && e["step"] == step)
        .collect()
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
