//! `pgshepherd run --json` as a child process whose events are read as they come.
#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A foreground run (`--now`) whose events a test waits for one by one.
pub struct LiveRun {
    pub child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    pub events: Vec<Value>,
}

impl LiveRun {
    pub fn start(plan: &Path, url: &str, backups: &Path) -> LiveRun {
        Self::spawn(plan, url, backups, true)
    }

    /// A run without `--now`: it waits for the plan's window first.
    pub fn in_window(plan: &Path, url: &str, backups: &Path) -> LiveRun {
        Self::spawn(plan, url, backups, false)
    }

    fn spawn(plan: &Path, url: &str, backups: &Path, now: bool) -> LiveRun {
        let mut command = tokio::process::Command::new(super::pgshepherd_bin());
        command
            .arg("run")
            .arg(plan)
            .args(["--database-url", url, "--json", "--backup-dir"])
            .arg(backups);
        if now {
            command.arg("--now");
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        LiveRun {
            child,
            lines,
            events: Vec::new(),
        }
    }

    /// Reads events until one named `event` (and returns it).
    pub async fn wait_for(&mut self, event: &str) -> Value {
        while let Some(line) = self.lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&line).unwrap();
            self.events.push(v.clone());
            if v["event"] == event {
                return v;
            }
        }
        panic!("the run ended without {event}: {:#?}", self.events);
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.id().unwrap() as i32;
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Reads to the end; the exit code and every event.
    pub async fn finish(mut self) -> (i32, Vec<Value>) {
        self.wait_for("run_finished").await;
        let status = self.child.wait().await.unwrap();
        (status.code().unwrap_or(-1), self.events)
    }
}
