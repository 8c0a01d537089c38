//! `pgshepherd status [RUN]` and `pgshepherd list`.

use reqwest::Method;
use serde_json::Value;

use crate::client::ClientOptions;
use crate::client::http::{Api, Failure, check_run_id};
use crate::client::render;
use crate::output;

/// Filters of `list`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Comma-separated phases, or `open`.
    pub phase: Option<String>,
    pub target: Option<String>,
    pub limit: Option<u32>,
}

/// `status RUN`: the run's view. A finished run exits with its own exit code
/// (0 succeeded, 3 rolled back, 4 needs a human, 5 stopped); any other run, 0.
/// `status` alone: the open runs.
pub async fn status(options: &ClientOptions, run: Option<&str>) -> i32 {
    let Some(id) = run else {
        let filter = ListFilter {
            phase: Some("open".into()),
            ..ListFilter::default()
        };
        return list(options, &filter).await;
    };
    match fetch_run(options, id).await {
        Ok(view) => {
            if options.json {
                output::line(&view);
            } else {
                output::line(render::run_status(&view));
            }
            run_exit_code(&view)
        }
        Err(f) => f.report(),
    }
}

/// The exit code `status` gives for a run view.
pub fn run_exit_code(view: &Value) -> i32 {
    if view["phase"] == "finished" {
        view["exit_code"]
            .as_i64()
            .and_then(|c| i32::try_from(c).ok())
            .unwrap_or(1)
    } else {
        0
    }
}

pub async fn fetch_run(options: &ClientOptions, id: &str) -> Result<Value, Failure> {
    check_run_id(id)?;
    let api = Api::new(options)?;
    api.json(Method::GET, &format!("/v1/runs/{id}"), None)
        .await
        .map(|(_, v)| v)
}

pub async fn list(options: &ClientOptions, filter: &ListFilter) -> i32 {
    let result = async {
        let api = Api::new(options)?;
        let mut url = api.url("/v1/runs")?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(p) = &filter.phase {
                q.append_pair("phase", p);
            }
            if let Some(t) = &filter.target {
                q.append_pair("target", t);
            }
            if let Some(l) = filter.limit {
                q.append_pair("limit", &l.to_string());
            }
        }
        let response = api.send(api.request(Method::GET, url)).await?;
        response.json::<Value>().await.map_err(|e| {
            Failure::Unreachable(format!(
                "the daemon's answer is not JSON: {}",
                e.without_url()
            ))
        })
    }
    .await;
    match result {
        Ok(body) => {
            if options.json {
                output::line(body);
            } else {
                let runs = body["runs"].as_array().cloned().unwrap_or_default();
                if runs.is_empty() {
                    eprintln!("no runs");
                } else {
                    output::line(render::run_table(&runs));
                }
            }
            0
        }
        Err(f) => f.report(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::run_exit_code;

    #[test]
    fn only_finished_runs_pass_on_their_exit_code() {
        assert_eq!(
            run_exit_code(&json!({"phase": "finished", "exit_code": 3})),
            3
        );
        assert_eq!(
            run_exit_code(&json!({"phase": "active", "exit_code": null})),
            0
        );
        assert_eq!(
            run_exit_code(&json!({"phase": "finished", "exit_code": null})),
            1
        );
    }
}
