//! `GET /v1/runs/{id}/events`: the run's events after a cursor, as a JSON array,
//! or as Server-Sent Events when the client accepts `text/event-stream`.
//!
//! Every event carries `seq`, its `events.id`: the cursor for `?after=` and the
//! SSE `id:`, so a client that reconnects with `Last-Event-ID` misses nothing
//! and sees nothing twice. The stream polls the state database every 250 ms,
//! sends a keep-alive comment every 15 s, and ends after `run_finished`, or at
//! the next poll once the web session that opened it has ended (signed out,
//! expired or dropped): a session's end must end what it can read.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::header::ACCEPT;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use deadpool_postgres::GenericClient;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use utoipa::IntoParams;

use crate::config::Role;
use crate::daemon::api::auth::Caller;
use crate::daemon::api::error::{ApiError, BadRequest, NotFound};
use crate::daemon::api::routes::EVENTS;
use crate::daemon::api::runs::{RunPath, run_id};
use crate::daemon::api::schema::RunEvent;
use crate::daemon::shared::SharedRef;

pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
pub const DEFAULT_LIMIT: i64 = 1000;
pub const MAX_LIMIT: i64 = 10_000;
/// Rows read per poll while streaming.
const STREAM_BATCH: i64 = 500;

/// Ends open event streams when the daemon stops (see `routes::router_until`).
#[derive(Debug, Clone)]
pub struct StopSignal(CancellationToken);

impl StopSignal {
    pub fn new(stop: CancellationToken) -> StopSignal {
        StopSignal(stop)
    }

    /// A signal nobody can give: streams end only with their run.
    pub fn never() -> StopSignal {
        StopSignal(CancellationToken::new())
    }

    /// Resolves once stopping.
    async fn stopped(&self) {
        self.0.cancelled().await
    }
}

/// The query of `GET /v1/runs/{id}/events`. Numbers are read as text so that a
/// bad one is refused with a message of ours.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events with a greater `seq`.
    #[param(value_type = Option<i64>, minimum = 0)]
    pub after: Option<String>,
    /// JSON only; at most 10000.
    #[param(value_type = Option<i64>, minimum = 1, default = json!(DEFAULT_LIMIT))]
    pub limit: Option<String>,
    /// Comma-separated event names to leave out, e.g. `check_sample` (the
    /// bulk of a soak's events: a chart reads them through the series route).
    pub exclude: Option<String>,
}

/// The event names of `exclude`, validated as snake_case names.
fn parse_exclude(value: Option<&str>) -> Result<Vec<String>, ApiError> {
    let mut names = Vec::new();
    for name in value.into_iter().flat_map(|v| v.split(',')) {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(ApiError::bad_request(format!(
                "`exclude` lists event names (snake_case), not {name:?}"
            )));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

fn parse_cursor(what: &str, value: &str) -> Result<i64, ApiError> {
    value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "`{what}` must be an event seq (a whole number >= 0)"
            ))
        })
}

/// One stored event as served: the event's JSON plus `seq`.
#[derive(Debug, Clone)]
struct Row {
    seq: i64,
    name: String,
    event: Value,
}

impl Row {
    fn json(mut self) -> Value {
        if let Some(o) = self.event.as_object_mut() {
            o.insert("seq".into(), Value::from(self.seq));
        }
        self.event
    }
}

async fn fetch(
    client: &impl GenericClient,
    id: &str,
    after: i64,
    limit: i64,
    exclude: &[String],
) -> Result<Vec<Row>, ApiError> {
    let rows = client
        .query(
            "SELECT id, name, event FROM events
              WHERE run_id = $1 AND id > $2 AND NOT (name = ANY($4))
              ORDER BY id LIMIT $3",
            &[&id, &after, &limit, &exclude],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Row {
            seq: r.get(0),
            name: r.get(1),
            event: r.get(2),
        })
        .collect())
}

/// The run's phase, or `None` when there is no such run.
async fn phase(client: &impl GenericClient, id: &str) -> Result<Option<String>, ApiError> {
    Ok(client
        .query_opt("SELECT phase FROM runs WHERE id = $1", &[&id])
        .await?
        .map(|r| r.get(0)))
}

/// A run's events as JSON, or as Server-Sent Events (role: read)
///
/// With `Accept: text/event-stream` the answer is an SSE stream: `id:` is the
/// event's seq, `event:` its name, `data:` its JSON. The stream starts after
/// `Last-Event-ID` (or `after`), polls for new events every 250 ms, sends a
/// keep-alive comment every 15 s, and ends after the `run_finished` event.
#[utoipa::path(
    get,
    path = EVENTS.path,
    operation_id = "runEvents",
    tag = "runs",
    params(
        RunPath,
        EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0,
            description = "SSE only: resume after this seq (overrides `after`)."),
    ),
    responses(
        (status = 200, description = "The events in order.", content(
            (Vec<RunEvent> = "application/json"),
            (String = "text/event-stream", example = json!(
                "id: 42\nevent: run_finished\ndata: {\"seq\":42,\"event\":\"run_finished\",\"outcome\":\"stopped\",...}\n\n"
            )),
        )),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
    ),
)]
pub async fn events(
    State(shared): State<SharedRef>,
    Extension(stop): Extension<StopSignal>,
    caller: Caller,
    path: Result<Path<RunPath>, PathRejection>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(Role::Read)?;
    let id = run_id(path)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let exclude = parse_exclude(query.exclude.as_deref())?;
    let mut after = match query.after.as_deref() {
        Some(a) if !a.is_empty() => parse_cursor("after", a)?,
        _ => 0,
    };
    let streaming = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"));
    if streaming && let Some(last) = headers.get("last-event-id") {
        let last = last
            .to_str()
            .map_err(|_| ApiError::bad_request("`Last-Event-ID` must be an event seq"))?;
        if !last.trim().is_empty() {
            after = parse_cursor("Last-Event-ID", last)?;
        }
    }
    let limit = match query.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if n >= 1 => n.min(MAX_LIMIT),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "`limit` must be a whole number from 1 to {MAX_LIMIT}"
                )));
            }
        },
    };

    let client = shared.pool.get().await?;
    if phase(&client, &id).await?.is_none() {
        return Err(ApiError::no_such_run(&id));
    }
    if !streaming {
        let rows = fetch(&client, &id, after, limit, &exclude).await?;
        let events: Vec<Value> = rows.into_iter().map(Row::json).collect();
        return Ok(Json(events).into_response());
    }
    drop(client);
    let stream = event_stream(shared, caller, id, after, exclude, stop);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

struct Cursor {
    shared: SharedRef,
    caller: Caller,
    stop: StopSignal,
    id: String,
    after: i64,
    exclude: Vec<String>,
    buffer: VecDeque<Row>,
    done: bool,
}

enum Poll {
    Rows(Vec<Row>),
    /// Nothing new, the run still open.
    Idle,
    /// Nothing new and the run finished: the stream is complete.
    Finished,
}

impl Cursor {
    async fn poll(&self) -> Result<Poll, ApiError> {
        let client = self.shared.pool.get().await?;
        // The phase first: a run's last events commit with its `finished` phase,
        // so no rows after seeing `finished` means none will ever come.
        let finished = phase(&client, &self.id)
            .await?
            .is_none_or(|p| p == "finished");
        let rows = fetch(&client, &self.id, self.after, STREAM_BATCH, &self.exclude).await?;
        Ok(if !rows.is_empty() {
            Poll::Rows(rows)
        } else if finished {
            Poll::Finished
        } else {
            Poll::Idle
        })
    }
}

fn sse(row: Row) -> SseEvent {
    // Names are snake_case by construction; never let one break the framing.
    let name: String = row
        .name
        .chars()
        .filter(|c| !matches!(c, '\r' | '\n'))
        .collect();
    let seq = row.seq;
    let data = serde_json::to_string(&row.json()).unwrap_or_else(|_| "{}".into());
    SseEvent::default()
        .id(seq.to_string())
        .event(name)
        .data(data)
}

fn event_stream(
    shared: SharedRef,
    caller: Caller,
    id: String,
    after: i64,
    exclude: Vec<String>,
    stop: StopSignal,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    let cursor = Cursor {
        shared,
        caller,
        stop,
        id,
        after,
        exclude,
        buffer: VecDeque::new(),
        done: false,
    };
    stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(row) = c.buffer.pop_front() {
                if row.name == "run_finished" {
                    c.done = true;
                    c.buffer.clear();
                }
                return Some((Ok(sse(row)), c));
            }
            // Ended without a word: the browser reconnects, is answered 401
            // and the page says the session ended.
            if c.done || !c.caller.still_signed_in(&c.shared) {
                return None;
            }
            match c.poll().await {
                Ok(Poll::Rows(rows)) => {
                    c.after = rows.last().map_or(c.after, |r| r.seq);
                    c.buffer.extend(rows);
                }
                Ok(Poll::Finished) => return None,
                Ok(Poll::Idle) => {
                    tokio::select! {
                        _ = tokio::time::sleep(POLL_INTERVAL) => {}
                        _ = c.stop.stopped() => return None,
                    }
                }
                Err(e) => {
                    // Tell the client why the stream ends; it may reconnect with
                    // Last-Event-ID and lose nothing.
                    tracing::warn!(run_id = %c.id, error = %e.message, "event stream ended");
                    c.done = true;
                    let data = serde_json::json!({"error": e.message}).to_string();
                    return Some((Ok(SseEvent::default().event("error").data(data)), c));
                }
            }
        }
    })
}
