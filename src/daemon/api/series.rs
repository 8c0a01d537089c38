//! `GET /v1/runs/{id}/checks/{name}/series`: one soak check's samples for a
//! chart, downsampled on the server ([`crate::web::downsample`]: every breach
//! and inconclusive sample kept), with what the chart draws around them: the
//! thresholds in force, the baseline, the consecutive rule and the verdict.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::checks::verdict::Bound;
use crate::config::Role;
use crate::daemon::api::auth::Caller;
use crate::daemon::api::error::{ApiError, BadRequest, NotFound};
use crate::daemon::api::routes::SERIES;
use crate::daemon::api::view;
use crate::daemon::shared::SharedRef;
use crate::web::downsample::{self, Kind, Point};

pub const DEFAULT_POINTS: usize = 600;
pub const MAX_POINTS: usize = 10_000;

/// The path of the series route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SeriesPath {
    /// The run id: 12 lowercase hex digits.
    #[param(pattern = "^[0-9a-f]{12}$")]
    pub id: String,
    /// The check's name, as the plan's `soak.checks[].name` has it.
    pub name: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// How many ordinary samples at most (breaches and inconclusive samples
    /// come on top, all of them); from 2 to 10000.
    #[param(value_type = Option<i64>, minimum = 2, maximum = 10000, default = json!(DEFAULT_POINTS))]
    pub points: Option<String>,
}

/// One bound in force, the baseline arithmetic done.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SeriesBound {
    /// min, max, max_increase or max_decrease.
    pub rule: String,
    /// A sample breaches below it (min, max_decrease) or above it (max,
    /// max_increase).
    pub limit: f64,
    /// As the verdicts say it: "max 250", "baseline 3.0 + 20% = 3.6".
    pub text: String,
}

/// The check's verdict, when one fired.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SeriesVerdict {
    /// One line: the value, the threshold, how many in a row.
    pub message: String,
    /// roll_back, hold_for_human or rollback_unhealthy.
    pub decision: String,
}

/// One soak check's samples and what to draw around them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CheckSeries {
    pub check: String,
    /// Where the value comes from ("sql: SELECT ...", an HTTP probe, a built-in
    /// signal), as the plan wrote it.
    pub source: Option<String>,
    /// Every bound in force, in one line (null before the first sample).
    pub thresholds: Option<String>,
    pub bounds: Vec<SeriesBound>,
    /// The value measured before the change, if the check has one.
    pub baseline: Option<f64>,
    /// Breaching samples in a row that trigger the verdict.
    pub consecutive: Option<u32>,
    /// Breaching samples in a row at the latest sample.
    pub in_a_row: u32,
    /// The soak's planned length and sampling interval.
    pub soak_duration_s: Option<f64>,
    pub interval_s: Option<f64>,
    /// Samples taken so far (before downsampling).
    pub samples: u64,
    /// Of those, how many breached and how many were inconclusive (before
    /// downsampling, which thins long inconclusive stretches).
    pub breaching: u64,
    pub inconclusive: u64,
    /// Every sample with a `seq` up to this one is represented here: follow the
    /// run's events after it for new samples.
    pub through: i64,
    /// Samples in order, `t` in seconds since the soak started.
    pub points: Vec<Point>,
    pub verdict: Option<SeriesVerdict>,
}

/// A soak check's samples for a chart (role: read)
///
/// Downsampled to at most `points` ordinary samples (the lowest and highest
/// value of each of `points / 2` stretches of consecutive samples); every
/// breaching and every inconclusive sample is kept on top. A run whose soak has
/// not started answers an empty series.
#[utoipa::path(
    get,
    path = SERIES.path,
    operation_id = "checkSeries",
    tag = "runs",
    params(SeriesPath, SeriesQuery),
    responses(
        (status = 200, description = "The check's series.", body = CheckSeries),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
    ),
)]
pub async fn series(
    State(shared): State<SharedRef>,
    caller: Caller,
    path: Result<Path<SeriesPath>, PathRejection>,
    query: Result<Query<SeriesQuery>, QueryRejection>,
) -> Result<Json<CheckSeries>, ApiError> {
    caller.require(Role::Read)?;
    let Path(SeriesPath { id, name }) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    view::check_run_id(&id)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let target = match query.points.as_deref() {
        None | Some("") => DEFAULT_POINTS,
        Some(p) => match p.trim().parse::<usize>() {
            Ok(n) if (2..=MAX_POINTS).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "`points` must be a whole number from 2 to {MAX_POINTS}"
                )));
            }
        },
    };
    let client = shared.pool.get().await?;
    let Some(row) = client
        .query_opt(
            "SELECT (SELECT coalesce(max(e.id), 0) FROM events e WHERE e.run_id = r.id)
               FROM runs r WHERE r.id = $1",
            &[&id],
        )
        .await?
    else {
        return Err(ApiError::no_such_run(&id));
    };
    let through: i64 = row.get(0);
    load(&client, &id, &name, through, target)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("run {id} has no soak check named {name:?}")))
}

/// The series, or `None` when the soak started without a check `name`.
async fn load(
    client: &impl GenericClient,
    id: &str,
    name: &str,
    through: i64,
    target: usize,
) -> Result<Option<CheckSeries>, ApiError> {
    let soak: Option<Value> = client
        .query_opt(
            "SELECT event FROM events WHERE run_id = $1 AND name = 'soak_started' ORDER BY id LIMIT 1",
            &[&id],
        )
        .await?
        .map(|r| r.get(0));
    let plan = soak.as_ref().and_then(|s| {
        s["checks"]
            .as_array()?
            .iter()
            .find(|c| c["check"] == name)
            .cloned()
    });
    // Only what a chart draws, read from each sample event (the index on
    // (run_id, check, id) of check_sample events finds them).
    let sample_rows = client
        .query(
            "SELECT id, (event->>'elapsed_s')::float8, (event->>'value')::float8,
                    coalesce((event->>'valid')::bool, false), coalesce((event->>'breaching')::bool, false),
                    coalesce((event->'counts'->>'breaches_in_a_row')::int8, 0)
               FROM events
              WHERE run_id = $1 AND name = 'check_sample' AND event->>'check' = $2
                AND event->>'step' = 'soak' AND id <= $3
              ORDER BY id",
            &[&id, &name, &through],
        )
        .await?;
    if soak.is_some() && plan.is_none() && sample_rows.is_empty() {
        return Ok(None);
    }
    let all: Vec<Point> = sample_rows
        .iter()
        .map(|r| {
            let (valid, breaching): (bool, bool) = (r.get(3), r.get(4));
            let in_a_row: i64 = r.get(5);
            Point {
                seq: r.get(0),
                t: r.get::<_, Option<f64>>(1).unwrap_or_default(),
                value: r.get(2),
                kind: match (valid, breaching) {
                    (false, _) => Kind::Inconclusive,
                    (true, true) => Kind::Breach,
                    (true, false) => Kind::Ok,
                },
                in_a_row: u32::try_from(in_a_row).unwrap_or(u32::MAX),
            }
        })
        .collect();
    let latest: Option<Value> = match all.last() {
        Some(p) => client
            .query_opt("SELECT event FROM events WHERE id = $1", &[&p.seq])
            .await?
            .map(|r| r.get(0)),
        None => None,
    };
    let verdict = client
        .query_opt(
            "SELECT event FROM events
              WHERE run_id = $1 AND name = 'check_verdict' AND event->>'check' = $2 AND id <= $3
              ORDER BY id LIMIT 1",
            &[&id, &name, &through],
        )
        .await?
        .map(|r| {
            let v: Value = r.get(0);
            SeriesVerdict {
                message: v["message"].as_str().unwrap_or_default().to_string(),
                decision: v["decision"].as_str().unwrap_or_default().to_string(),
            }
        });
    let bounds: Vec<Bound> = latest
        .as_ref()
        .and_then(|l| serde_json::from_value(l["bounds"].clone()).ok())
        .unwrap_or_default();
    let plan = plan.unwrap_or(Value::Null);
    let soak = soak.unwrap_or(Value::Null);
    Ok(Some(CheckSeries {
        check: name.to_string(),
        source: plan["source"].as_str().map(str::to_owned),
        thresholds: latest
            .as_ref()
            .and_then(|l| l["thresholds"].as_str())
            .map(str::to_owned),
        bounds: bounds
            .into_iter()
            .map(|b| SeriesBound {
                rule: b.rule.as_str().to_string(),
                limit: b.limit,
                text: b.text,
            })
            .collect(),
        baseline: latest
            .as_ref()
            .and_then(|l| l["baseline"].as_f64())
            .or_else(|| plan["baseline"].as_f64()),
        consecutive: plan["consecutive"]
            .as_u64()
            .and_then(|c| u32::try_from(c).ok()),
        in_a_row: all.last().map_or(0, |p| p.in_a_row),
        soak_duration_s: soak["duration_s"].as_f64(),
        interval_s: soak["interval_s"].as_f64(),
        samples: all.len() as u64,
        breaching: all.iter().filter(|p| p.kind == Kind::Breach).count() as u64,
        inconclusive: all.iter().filter(|p| p.kind == Kind::Inconclusive).count() as u64,
        through,
        points: downsample::downsample(&all, target),
        verdict,
    }))
}
