//! `pgshepherd approve RUN`, `abort RUN`, `ack RUN` (approve and abort of a
//! finished run act on its undo).

use reqwest::Method;

use crate::client::ClientOptions;
use crate::client::http::{Api, check_run_id};
use crate::output;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Approve,
    Abort,
    Ack,
}

impl Action {
    fn path(self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::Abort => "abort",
            Action::Ack => "ack",
        }
    }
}

pub async fn control(options: &ClientOptions, action: Action, id: &str) -> i32 {
    let result = async {
        check_run_id(id)?;
        let api = Api::new(options)?;
        api.json(
            Method::POST,
            &format!("/v1/runs/{id}/{}", action.path()),
            None,
        )
        .await
    }
    .await;
    let (status, run) = match result {
        Ok(answer) => answer,
        Err(f) => return f.report(),
    };
    if options.json {
        output::line(run);
        return 0;
    }
    let state = run["state"].as_str().unwrap_or("?");
    let text = match action {
        Action::Approve if run["phase"] == "finished" => match last_undo(&run) {
            Some(u) => format!("approved undo {}", crate::client::render::undo_status(u)),
            None => format!("approved the undo of run {id}"),
        },
        Action::Approve => format!(
            "approved run {id}: it is {}",
            run["phase"].as_str().unwrap_or("?")
        ),
        Action::Abort if run["phase"] == "finished" => match last_undo(&run) {
            Some(u) => format!("called off undo {}", crate::client::render::undo_status(u)),
            None => format!("called off the undo of run {id}"),
        },
        Action::Abort if status.as_u16() == 202 => format!(
            "abort requested for run {id} (now {state}): the daemon stops it, or rolls it back \
             per the plan if it has changed the target; follow with `pgshepherd logs {id} --follow`"
        ),
        Action::Abort => format!(
            "run {id} stopped before it started: {}",
            run["reason"].as_str().unwrap_or("aborted")
        ),
        Action::Ack => format!("acknowledged run {id}"),
    };
    output::line(text);
    0
}

/// The newest undo of a run's view.
fn last_undo(run: &serde_json::Value) -> Option<&serde_json::Value> {
    run["undos"].as_array().and_then(|u| u.last())
}
