//! The EXPLAIN gate: each of the plan's `explain` queries is explained with the
//! baselines (before the backup and the change) and again right after the last
//! migration (before the soak); [`crate::checks::explain::judge`] compares the
//! two. A query that fails the gate is a breach: the runner feeds it to the
//! lifecycle like a soak breach.
//!
//! Every EXPLAIN goes through the checks' read-only session
//! ([`crate::checks::session`]): its own connection, `BEGIN READ ONLY`, a
//! `statement_timeout` of the entry's `timeout`, COMMIT (not ROLLBACK, which
//! the `rollbacks_per_second` check would count). With `analyze: true` the
//! query is executed in that transaction; writes are refused by the server.
//!
//! Before the change a failure stops the run (nothing has changed): the plan to
//! compare with would be missing. One failure is expected and let through: a
//! query on a table or column the change creates has no plan before it, which
//! only matters to an entry that compares with one (a ratio).

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;

use crate::checks::explain::{ExplainResult, Measurement, PlanShape, judge};
use crate::checks::session::{ReadError, ReadOnlySession};
use crate::pg::Dsn;
use crate::plan::ExplainQuery;
use crate::plan::duration;
use crate::run::event::{Decision, EventKind, ExplainPhase, Step};
use crate::steps::context::StepContext;

/// Why the plans before the change could not be taken; the run stops with
/// [`BeforeError::exit_code`] and the target untouched.
#[derive(Debug, thiserror::Error)]
pub enum BeforeError {
    #[error("explain `{name}`: {message}")]
    Unreachable { name: String, message: String },
    #[error(
        "explain `{name}`: EXPLAIN{} did not finish within its timeout {} before the change ({message}); \
         raise the entry's `timeout`{}",
        if *.analyze { " ANALYZE" } else { "" },
        duration::format(*.timeout),
        if *.analyze { " or drop `analyze`" } else { "" }
    )]
    Timeout {
        name: String,
        analyze: bool,
        timeout: Duration,
        message: String,
    },
    #[error("explain `{name}`: the query fails on the target before the change: {message}")]
    Invalid { name: String, message: String },
    #[error(
        "explain `{name}` compares with the plan from before the change (`{ratio}`), but the query \
         cannot be planned before it: {message}; a query on what the change creates can only \
         check `expect_index`"
    )]
    NothingToCompare {
        name: String,
        ratio: &'static str,
        message: String,
    },
}

impl BeforeError {
    /// CONTRACT: 1 for the environment, 5 for a circumstance, 2 for input that
    /// cannot work.
    pub fn exit_code(&self) -> i32 {
        match self {
            BeforeError::Unreachable { .. } => 1,
            BeforeError::Timeout { .. } => 5,
            BeforeError::Invalid { .. } | BeforeError::NothingToCompare { .. } => 2,
        }
    }
}

/// How one EXPLAIN failed.
enum Failure {
    /// No answer from the server: connection, network.
    Unreachable(String),
    Timeout(String),
    /// The server refused the query; `missing`: it names something that does
    /// not exist (yet).
    Refused {
        missing: bool,
        message: String,
    },
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Unreachable(m) | Failure::Timeout(m) | Failure::Refused { message: m, .. } => {
                m
            }
        }
    }
}

/// The plans before the change, one per query (in plan order), each also an
/// `explain_measured` event.
pub async fn before(ctx: &StepContext<'_>) -> Result<Vec<Measurement>, BeforeError> {
    let mut out = Vec::new();
    for q in &ctx.plan.explain {
        let (result, took) = explain(ctx.dsn, q).await;
        emit(ctx, q, ExplainPhase::Before, &result, took);
        let name = q.name.clone();
        match result {
            Ok(plan) => out.push(Measurement {
                name,
                plan: Some(plan),
                error: None,
            }),
            Err(Failure::Refused {
                missing: true,
                message,
            }) => {
                let ratio = match (q.max_cost_ratio, q.max_time_ratio) {
                    (Some(_), _) => Some("max_cost_ratio"),
                    (None, Some(_)) => Some("max_time_ratio"),
                    (None, None) => None,
                };
                if let Some(ratio) = ratio {
                    return Err(BeforeError::NothingToCompare {
                        name,
                        ratio,
                        message,
                    });
                }
                out.push(Measurement {
                    name,
                    plan: None,
                    error: Some(message),
                });
            }
            Err(Failure::Refused { message, .. }) => {
                return Err(BeforeError::Invalid { name, message });
            }
            Err(Failure::Timeout(message)) => {
                return Err(BeforeError::Timeout {
                    name,
                    analyze: q.analyze,
                    timeout: q.timeout,
                    message,
                });
            }
            Err(Failure::Unreachable(message)) => {
                return Err(BeforeError::Unreachable { name, message });
            }
        }
    }
    Ok(out)
}

/// The plans after the change, judged against `before` (by name); every
/// verdict is an `explain_checked` event. A query without a plan from before
/// (a run continued by a pgshepherd that did not take one) is judged on what
/// needs none.
pub async fn after(ctx: &StepContext<'_>, before: &[Measurement]) -> Vec<ExplainResult> {
    let mut out = Vec::new();
    for q in &ctx.plan.explain {
        let (result, took) = explain(ctx.dsn, q).await;
        emit(ctx, q, ExplainPhase::After, &result, took);
        let after = Measurement {
            name: q.name.clone(),
            error: result.as_ref().err().map(|f| f.message().to_string()),
            plan: result.ok(),
        };
        let before = before
            .iter()
            .find(|m| m.name == q.name)
            .cloned()
            .unwrap_or_else(|| Measurement {
                name: q.name.clone(),
                plan: None,
                error: Some("not measured before the change".into()),
            });
        let verdict = judge(q, before, after);
        ctx.emit(
            Step::Explain,
            EventKind::ExplainChecked {
                decision: (!verdict.passed).then_some(Decision::RollBack),
                result: verdict.clone(),
            },
        );
        out.push(verdict);
    }
    out
}

/// For a dry run: each query's plan right now, planned only (never executed,
/// even with `analyze`), without events.
pub async fn preview(ctx: &StepContext<'_>) -> Vec<Measurement> {
    let mut out = Vec::new();
    for q in &ctx.plan.explain {
        let planned_only = ExplainQuery {
            analyze: false,
            ..q.clone()
        };
        let (result, _) = explain(ctx.dsn, &planned_only).await;
        out.push(Measurement {
            name: q.name.clone(),
            error: result.as_ref().err().map(|f| f.message().to_string()),
            plan: result.ok(),
        });
    }
    out
}

/// The breach cause for the queries that failed, `None` when all passed.
pub fn breach_cause(results: &[ExplainResult]) -> Option<String> {
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed)
        .map(ExplainResult::message)
        .collect();
    (!failed.is_empty()).then(|| format!("EXPLAIN gate: {}", failed.join(" | ")))
}

fn emit(
    ctx: &StepContext<'_>,
    q: &ExplainQuery,
    phase: ExplainPhase,
    result: &Result<PlanShape, Failure>,
    took: Duration,
) {
    ctx.emit(
        Step::Explain,
        EventKind::ExplainMeasured {
            name: q.name.clone(),
            phase,
            analyze: q.analyze,
            plan: result.as_ref().ok().cloned(),
            error: result.as_ref().err().map(|f| f.message().to_string()),
            duration_ms: took.as_millis() as u64,
        },
    );
}

/// `EXPLAIN (FORMAT JSON)` (with `ANALYZE` when asked) of `q` on a read-only,
/// time-boxed session of its own.
async fn explain(dsn: &Dsn, q: &ExplainQuery) -> (Result<PlanShape, Failure>, Duration) {
    let started = Instant::now();
    let options = if q.analyze {
        "ANALYZE, FORMAT JSON"
    } else {
        "FORMAT JSON"
    };
    let sql = format!("EXPLAIN ({options}) {}", q.sql);
    let mut session = ReadOnlySession::new(dsn, q.timeout);
    let result = match session.read(&sql, None).await {
        Ok(read) => match read
            .rows
            .first()
            .map(|r| r.try_get::<_, serde_json::Value>(0))
        {
            Some(Ok(doc)) => PlanShape::from_explain(&doc).map_err(|e| Failure::Refused {
                missing: false,
                message: e.to_string(),
            }),
            Some(Err(e)) => Err(Failure::Refused {
                missing: false,
                message: format!("unexpected EXPLAIN output: {e}"),
            }),
            None => Err(Failure::Refused {
                missing: false,
                message: "EXPLAIN returned no row".into(),
            }),
        },
        Err(e) => Err(classify(e)),
    };
    (result, started.elapsed())
}

fn classify(e: ReadError) -> Failure {
    let message = e.to_string();
    match &e {
        ReadError::NoAnswer { .. } => Failure::Timeout(message),
        ReadError::Query { source, .. } => match source.as_db_error().map(|d| d.code()) {
            Some(c) if *c == SqlState::QUERY_CANCELED => Failure::Timeout(message),
            Some(c) => Failure::Refused {
                missing: [
                    SqlState::UNDEFINED_TABLE,
                    SqlState::UNDEFINED_COLUMN,
                    SqlState::UNDEFINED_FUNCTION,
                    SqlState::UNDEFINED_OBJECT,
                    SqlState::INVALID_SCHEMA_NAME,
                ]
                .contains(c),
                message,
            },
            None => Failure::Unreachable(message),
        },
        _ => Failure::Unreachable(message),
    }
}
