//! `pgshepherd submit PLAN`: the plan is checked locally first, exactly as
//! `pgshepherd check` does (its errors, exit 2), then sent with every script of
//! its migration set; the daemon compiles it again against its own targets.

use std::path::Path;

use reqwest::Method;

use crate::client::ClientOptions;
use crate::client::http::Api;
use crate::daemon::api::bundle::Bundle;
use crate::output;

pub async fn submit(options: &ClientOptions, plan_path: &Path) -> i32 {
    let plan = match crate::plan::load(plan_path) {
        Ok(plan) => plan,
        Err(diagnostics) => {
            for d in &diagnostics.0 {
                eprintln!("{d}");
            }
            eprintln!("error: the plan is invalid; nothing was submitted");
            return 2;
        }
    };
    // Read again for the exact text: the daemon keeps the plan as written.
    let text = match std::fs::read_to_string(plan_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}:0:0: cannot read plan: {e}", plan_path.display());
            return 2;
        }
    };
    let bundle = Bundle::from_plan(plan_path, text, &plan.migrations);
    let body = match serde_json::to_value(&bundle) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot encode the submission: {e}");
            return 1;
        }
    };
    let api = match Api::new(options) {
        Ok(api) => api,
        Err(f) => return f.report(),
    };
    match api.json(Method::POST, "/v1/runs", Some(&body)).await {
        Ok((_, run)) => {
            let id = run["id"].as_str().unwrap_or("?");
            if options.json {
                output::line(run);
            } else {
                output::line(id);
                eprintln!(
                    "submitted run {id}: plan {} -> target {}, {} file(s), {}",
                    run["plan"]["name"].as_str().unwrap_or("?"),
                    run["target"].as_str().unwrap_or("?"),
                    bundle.migrations.files.len(),
                    match run["phase"].as_str() {
                        Some("pending_approval") => {
                            "waiting for approval by someone other than you (pgshepherd approve RUN)"
                        }
                        Some("queued") => "queued",
                        Some("rehearsing") => {
                            "being rehearsed on a scratch copy first (pgshepherd status RUN)"
                        }
                        Some(other) => other,
                        None => "?",
                    }
                );
            }
            0
        }
        Err(f) => f.report(),
    }
}
