//! `pgshepherd undo RUN` without a database: ask the daemon
//! (`POST /v1/runs/{id}/undo`), then follow the undo's events until it ends and
//! exit as `pgshepherd undo` does (0 reverted, 4 conflicts left, 5 refused or
//! nothing changed, 2 invalid input, 1 environment). An undo that waits for
//! approval is said so once; the command keeps waiting (`--no-wait` returns at
//! once with 0: asked for, nothing done yet).
//!
//! The run has finished, so its event stream has ended; the undo's events are
//! read by polling `GET /v1/runs/{id}/events?after=SEQ`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::client::ClientOptions;
use crate::client::http::{Api, Failure, check_run_id};
use crate::client::render;
use crate::output;
use crate::undo::revert::Mode;

/// Between two looks at the run's events.
const POLL: Duration = Duration::from_millis(500);

/// What to ask the daemon to undo.
#[derive(Debug, Clone)]
pub struct UndoAsk {
    pub run_id: String,
    pub versions: Vec<i64>,
    pub mode: Mode,
    pub predicate: Option<String>,
    pub dry_run: bool,
    /// Follow the undo to its end.
    pub wait: bool,
}

pub async fn undo(options: &ClientOptions, ask: &UndoAsk) -> i32 {
    run(options, ask).await.unwrap_or_else(|f| f.report())
}

async fn run(options: &ClientOptions, ask: &UndoAsk) -> Result<i32, Failure> {
    let id = ask.run_id.as_str();
    check_run_id(id)?;
    let api = Api::new(options)?;
    let body = json!({
        "versions": ask.versions,
        "mode": ask.mode.as_str(),
        "where": ask.predicate,
        "dry_run": ask.dry_run,
    });
    let (_, undo) = api
        .json(Method::POST, &format!("/v1/runs/{id}/undo"), Some(&body))
        .await?;
    let request = undo["id"].as_i64().unwrap_or_default();
    if options.json {
        output::line(&undo);
    } else {
        eprintln!("undo of run {id}: {}", render::undo_status(&undo));
    }
    if undo["phase"] == "pending_approval" {
        eprintln!(
            "undo #{request} waits for approval by someone with the approve role other than you: \
             `pgshepherd approve {id}` (or call it off with `pgshepherd abort {id}`)"
        );
    }
    if !ask.wait {
        return Ok(0);
    }
    follow(options, &api, id, request).await
}

/// Print undo `request`'s events until its `undo_finished`; its exit code.
async fn follow(
    options: &ClientOptions,
    api: &Api,
    id: &str,
    request: i64,
) -> Result<i32, Failure> {
    let mut after = 0i64;
    loop {
        let (events, full) = crate::client::logs::events_page(api, id, &mut after).await?;
        for e in &events {
            if e["request"].as_i64() != Some(request) {
                continue;
            }
            print(options, e);
            if e["event"] == "undo_finished" {
                return Ok(e["exit_code"].as_i64().map_or(1, |c| c as i32));
            }
        }
        if !full {
            tokio::time::sleep(POLL).await;
        }
    }
}

fn print(options: &ClientOptions, event: &Value) {
    if options.json {
        output::line(event);
    } else if let Some(line) = render::event_line(event) {
        eprintln!("{line}");
    }
}
