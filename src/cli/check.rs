//! `pgshepherd check`: offline validation of plans and their migration sets.
//!
//! Every problem goes to stderr as `FILE:LINE:COLUMN: message`. On stdout, one line
//! per valid plan (human mode) or one JSON object per plan (`--json`). Exit code 0
//! when every plan is valid, 2 otherwise.

use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::output;
use crate::plan::{self, Diagnostics, Plan, RollbackStrategy};

/// How many upcoming window openings `--json` lists.
pub const NEXT_WINDOWS: usize = 5;

/// Check every plan; the exit code is 0 when all are valid, 2 otherwise.
pub fn run(paths: &[PathBuf], json: bool) -> i32 {
    run_at(paths, json, Utc::now())
}

/// [`run`] with the clock as an input, for tests.
pub fn run_at(paths: &[PathBuf], json: bool, now: DateTime<Utc>) -> i32 {
    if paths.is_empty() {
        eprintln!("pgshepherd check: no plan given; usage: pgshepherd check PLAN...");
        return 2;
    }
    let mut all_valid = true;
    for path in paths {
        let result = plan::load(path);
        match &result {
            Err(diagnostics) => {
                all_valid = false;
                for d in &diagnostics.0 {
                    eprintln!("{d}");
                }
            }
            Ok(plan) => {
                for w in plan.migrations.warnings() {
                    eprintln!("{w}");
                }
            }
        }
        if json {
            output::line(report(path, &result, now));
        } else if let Ok(plan) = &result {
            output::line(summary(path, plan, now));
        }
    }
    if all_valid { 0 } else { 2 }
}

/// The `--json` object for one plan.
pub fn report(path: &Path, result: &Result<Plan, Diagnostics>, now: DateTime<Utc>) -> Value {
    match result {
        Err(diagnostics) => json!({
            "plan": path.display().to_string(),
            "valid": false,
            "errors": diagnostics.0.iter().map(|d| json!({
                "file": d.file.display().to_string(),
                "line": d.line,
                "column": d.column,
                "message": d.message,
            })).collect::<Vec<_>>(),
        }),
        Ok(plan) => json!({
            "plan": path.display().to_string(),
            "valid": true,
            "errors": [],
            "name": plan.name,
            "target": plan.target,
            "migration_set": plan.migrations.name,
            "migrations": plan.migrations.labels(),
            "rollback": strategy(plan.rollback.strategy),
            "window": plan.window.as_ref().map(|w| json!({
                "cron": w.cron,
                "timezone": w.timezone.name(),
                "duration": plan::duration::format(w.duration),
            })),
            "next_windows": next_windows(plan, now, NEXT_WINDOWS),
            "warnings": plan.migrations.warnings().iter().map(|d| json!({
                "file": d.file.display().to_string(),
                "line": d.line,
                "column": d.column,
                "message": d.message,
            })).collect::<Vec<_>>(),
        }),
    }
}

/// RFC 3339 with the window zone's offset, e.g. `2026-11-23T02:00:00+01:00`.
fn next_windows(plan: &Plan, now: DateTime<Utc>, n: usize) -> Vec<String> {
    match &plan.window {
        Some(w) => w
            .next_openings(now, n)
            .iter()
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, false))
            .collect(),
        None => Vec::new(),
    }
}

fn strategy(s: RollbackStrategy) -> &'static str {
    match s {
        RollbackStrategy::Down => "down",
        RollbackStrategy::Restore => "restore",
        RollbackStrategy::Hold => "hold",
    }
}

/// One line for a valid plan.
fn summary(path: &Path, plan: &Plan, now: DateTime<Utc>) -> String {
    let count = plan.migrations.migrations.len();
    let window = match &plan.window {
        None => "any time".to_string(),
        Some(w) => match w.current(now) {
            Some((_, closes)) => format!(
                "window open now until {} ({} {}, {})",
                closes
                    .with_timezone(&w.timezone)
                    .to_rfc3339_opts(SecondsFormat::Secs, false),
                w.cron,
                w.timezone.name(),
                plan::duration::format(w.duration)
            ),
            None => format!(
                "next window {} ({} {}, {})",
                next_windows(plan, now, 1)
                    .first()
                    .map_or("never", String::as_str),
                w.cron,
                w.timezone.name(),
                plan::duration::format(w.duration)
            ),
        },
    };
    format!(
        "{}: ok: {} -> target {}, {} migration{} ({}), rollback {}, {}",
        path.display(),
        plan.name,
        plan.target,
        count,
        if count == 1 { "" } else { "s" },
        plan.migrations.labels().join(", "),
        strategy(plan.rollback.strategy),
        window
    )
}
