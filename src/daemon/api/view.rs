//! The JSON view of a run (`GET /v1/runs/{id}`, the answer to submit and to the
//! control actions) and its compact form in lists. Built from the `runs` row, the
//! run's events and its checkpoint; never contains a DSN or a token.

use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::GenericClient;
use serde::Deserialize;
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::run::checkpoint::Checkpoint;
use tokio_postgres::Row;
use utoipa::ToSchema;

use crate::daemon::api::error::ApiError;
use crate::daemon::api::schema;

/// Run ids are 12 lowercase hex digits (see `cli::run::new_run_id`).
pub fn valid_run_id(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// 400 unless `id` looks like a run id (checked before any query).
pub fn check_run_id(id: &str) -> Result<(), ApiError> {
    if valid_run_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "a run id is 12 lowercase hex digits, e.g. 3f9a1c2b7d40",
        ))
    }
}

/// The compact view of a run, as lists show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunSummary {
    pub id: String,
    pub plan: PlanRef,
    pub target: String,
    #[schema(schema_with = schema::phase)]
    pub phase: String,
    /// The run state machine's state: rehearsing, rehearsal_failed, created,
    /// waiting_for_window, locking,
    /// measuring_baseline, backing_up, migrating, soaking, rolling_back,
    /// confirming, finished.
    pub state: String,
    /// The step of the latest event that had one.
    pub step: Option<String>,
    #[schema(schema_with = schema::outcome)]
    pub outcome: Option<String>,
    pub reason: Option<String>,
    /// As `pgshepherd run` would exit: 0, 3, 4 or 5.
    pub exit_code: Option<i32>,
    pub submitted_by: String,
    #[serde(serialize_with = "ts")]
    pub submitted_at: DateTime<Utc>,
    pub requires_approval: bool,
    pub approved_by: Option<String>,
    #[serde(serialize_with = "ts_opt")]
    pub approved_at: Option<DateTime<Utc>>,
    pub abort_requested_by: Option<String>,
    #[serde(serialize_with = "ts_opt")]
    pub abort_requested_at: Option<DateTime<Utc>>,
    pub acked_by: Option<String>,
    #[serde(serialize_with = "ts_opt")]
    pub acked_at: Option<DateTime<Utc>>,
    /// The daemon holding the run's lease.
    pub owner: Option<String>,
    /// The fencing epoch: how many times the run has been claimed.
    pub epoch: i64,
    #[serde(serialize_with = "ts_opt")]
    pub lease_until: Option<DateTime<Utc>>,
    #[serde(serialize_with = "ts_opt")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "ts_opt")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "ts")]
    pub updated_at: DateTime<Utc>,
    pub bundle_sha256: String,
}

/// The full view of one run: the answer to `GET /v1/runs/{id}`, to a submission
/// and to the control actions.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Run)]
pub struct RunView {
    #[serde(flatten)]
    pub summary: RunSummary,
    #[serde(flatten)]
    pub detail: RunDetail,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlanRef {
    pub name: String,
    pub path: String,
    pub migration_set: Option<String>,
}

/// What only the full view carries.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunDetail {
    /// The `seq` of the run's newest event when this view was read (0 before
    /// any): follow the events after it (`?after=`, `Last-Event-ID`) to miss
    /// nothing that happened since.
    pub last_seq: i64,
    pub files: Vec<FileRef>,
    /// Versions this run has applied so far (while migrating, soaking or rolling back).
    pub applied: Option<Vec<i64>>,
    /// Why a rollback is under way.
    pub cause: Option<String>,
    /// The soak's position after its last sample tick.
    pub progress: Option<Progress>,
    /// Facts established on the way: starting versions, baselines, the verified
    /// backup's manifest.
    #[schema(value_type = Object)]
    pub facts: Value,
    /// The latest `check_sample` event of each check.
    #[schema(value_type = Vec<schema::CheckSample>)]
    pub checks: Vec<Value>,
    /// Every notification about this run, oldest first: where it went and
    /// whether it arrived. Never the channel's URL or secret.
    pub notifications: Vec<crate::notify::outbox::Delivered>,
    /// The run's escalation, once needs_human, rollback_failed (or a breach, with
    /// on_breach) triggered its plan's policy.
    pub escalation: Option<crate::notify::escalation::EscalationView>,
    /// Undos of the run's captured data changes asked for through the API
    /// (`POST /v1/runs/{id}/undo`), oldest first, with their outcome.
    pub undos: Vec<crate::daemon::undo::store::UndoView>,
    /// `rehearsal: required`: the run's rehearsal on a scratch copy, which
    /// must pass before the run may be approved. Null for other plans.
    pub rehearsal: Option<RehearsalView>,
}

/// A run's rehearsal: up, down and up again on a scratch copy of the target.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RehearsalView {
    /// pending (no daemon has it yet, or it is to be redone), running, passed
    /// or failed.
    #[schema(schema_with = schema::rehearsal_status)]
    pub status: String,
    /// How many times a daemon started it (more than one: a daemon stopped
    /// during an earlier attempt, which was redone from the start).
    pub attempts: i32,
    /// The daemon rehearsing it, while it runs.
    pub owner: Option<String>,
    /// "rehearsal passed on a scratch copy: up, down, up, catalog identical",
    /// or the differences in words; null until it finished.
    pub summary: Option<String>,
    /// What the down scripts did not give back, object by object.
    pub differences: Vec<RehearsalDifference>,
    /// Why it did not get to a comparison, or what failed after it.
    pub reason: Option<String>,
}

/// One object that is not as it was after the down scripts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RehearsalDifference {
    /// table, column, constraint, index, trigger, function, view, sequence, ...
    pub kind: String,
    pub object: String,
    /// missing (dropped by the down scripts), left (created by the
    /// migrations and left behind) or changed.
    pub change: String,
    /// For `changed`: which attribute, and its values before and after.
    pub attribute: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
    /// The migration whose down script should give it back, when known.
    pub changed_by: Option<String>,
    /// The difference in words.
    pub message: String,
}

impl RehearsalView {
    fn read(
        required: bool,
        result: Option<Value>,
        attempts: i32,
        owner: Option<String>,
        lease_live: bool,
    ) -> Option<RehearsalView> {
        if !required {
            return None;
        }
        let result = result.and_then(|r| {
            serde_json::from_value::<crate::daemon::rehearsal::RehearsalResult>(r).ok()
        });
        let Some(r) = result else {
            let running = owner.is_some() && lease_live;
            return Some(RehearsalView {
                status: if running { "running" } else { "pending" }.into(),
                attempts,
                owner: owner.filter(|_| running),
                summary: None,
                differences: Vec::new(),
                reason: None,
            });
        };
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let differences = r
            .differences
            .iter()
            .map(|d| {
                let v = serde_json::to_value(d).unwrap_or_default();
                RehearsalDifference {
                    kind: text(&v, "kind").unwrap_or_default(),
                    object: d.object.clone(),
                    change: text(&v, "change").unwrap_or_default(),
                    attribute: text(&v, "attribute"),
                    before: text(&v, "before"),
                    after: text(&v, "after"),
                    changed_by: d.changed_by.clone(),
                    message: d.describe(crate::rehearse::diff::AFTER_DOWN),
                }
            })
            .collect();
        Some(RehearsalView {
            status: if r.passed { "passed" } else { "failed" }.into(),
            attempts,
            owner: None,
            summary: Some(r.summary()),
            differences,
            reason: r.reason.clone(),
        })
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileRef {
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Progress {
    pub elapsed_ms: Option<u64>,
    pub samples_taken: Option<u64>,
    pub samples_planned: Option<u64>,
}

pub(crate) fn ts<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

pub(crate) fn ts_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ts(t, s),
        None => s.serialize_none(),
    }
}

const COLUMNS: &str = "r.id, r.plan_name, r.plan_path, r.target, r.phase, r.state_name,
    r.outcome, r.reason, r.exit_code, r.submitted_by, r.submitted_at, r.requires_approval,
    r.approved_by, r.approved_at, r.abort_requested_by, r.abort_requested_at,
    r.acked_by, r.acked_at, r.owner, r.epoch, r.lease_until, r.started_at,
    r.finished_at, r.updated_at, r.bundle_sha256, r.bundle->'migrations'->>'name',
    (SELECT e.event->>'step' FROM events e
      WHERE e.run_id = r.id AND e.event->>'step' IS NOT NULL
      ORDER BY e.id DESC LIMIT 1)";

/// Columns after [`COLUMNS`] in the full view.
const DETAIL: &str = "(SELECT coalesce(jsonb_agg(jsonb_build_object('name', f->>'name', 'sha256', f->>'sha256') ORDER BY n), '[]'::jsonb)
       FROM jsonb_array_elements(CASE WHEN jsonb_typeof(r.bundle->'migrations'->'files') = 'array'
                                      THEN r.bundle->'migrations'->'files' ELSE '[]'::jsonb END)
            WITH ORDINALITY AS x(f, n)),
    r.checkpoint, r.rehearsal_required, r.rehearsal, r.rehearsal_attempts,
    r.rehearsal_owner, coalesce(r.rehearsal_lease_until > now(), false),
    (SELECT coalesce(max(e.id), 0) FROM events e WHERE e.run_id = r.id)";

fn compact(row: &Row) -> RunSummary {
    RunSummary {
        id: row.get(0),
        plan: PlanRef {
            name: row.get(1),
            path: row.get(2),
            migration_set: row.get(25),
        },
        target: row.get(3),
        phase: row.get(4),
        state: row.get(5),
        outcome: row.get(6),
        reason: row.get(7),
        exit_code: row.get(8),
        submitted_by: row.get(9),
        submitted_at: row.get(10),
        requires_approval: row.get(11),
        approved_by: row.get(12),
        approved_at: row.get(13),
        abort_requested_by: row.get(14),
        abort_requested_at: row.get(15),
        acked_by: row.get(16),
        acked_at: row.get(17),
        owner: row.get(18),
        epoch: row.get(19),
        lease_until: row.get(20),
        started_at: row.get(21),
        finished_at: row.get(22),
        updated_at: row.get(23),
        bundle_sha256: row.get(24),
        step: row.get(26),
    }
}

/// The full view of one run, or `None` when there is no such run.
pub async fn load(client: &impl GenericClient, id: &str) -> Result<Option<RunView>, ApiError> {
    // Prepared once per connection: planning the run query costs more than
    // running it.
    let sql = format!("SELECT {COLUMNS}, {DETAIL} FROM runs r WHERE r.id = $1");
    let run = client.prepare_cached(&sql).await?;
    let Some(row) = client.query_opt(&run, &[&id]).await? else {
        return Ok(None);
    };
    let summary = compact(&row);
    let files: Value = row.get(27);
    let checkpoint: Value = row.get(28);
    let last_seq: i64 = row.get(34);
    let latest = client
        .prepare_cached(
            // A skip scan over events_check_samples: the first check name,
            // then each next one, then the newest sample of each.
            "WITH RECURSIVE checks(name) AS (
                 (SELECT event->>'check' FROM events
                   WHERE run_id = $1 AND name = 'check_sample'
                   ORDER BY event->>'check' LIMIT 1)
                 UNION ALL
                 SELECT (SELECT event->>'check' FROM events
                          WHERE run_id = $1 AND name = 'check_sample'
                            AND event->>'check' > checks.name
                          ORDER BY event->>'check' LIMIT 1)
                   FROM checks WHERE checks.name IS NOT NULL
             )
             SELECT (SELECT event FROM events
                      WHERE run_id = $1 AND name = 'check_sample'
                        AND event->>'check' = checks.name
                      ORDER BY event->>'check', id DESC LIMIT 1)
               FROM checks WHERE checks.name IS NOT NULL
              ORDER BY checks.name",
        )
        .await?;
    let checks = client
        .query(&latest, &[&id])
        .await?
        .iter()
        .map(|r| {
            let mut e: Value = r.get(0);
            if let Some(o) = e.as_object_mut() {
                o.remove("run_id");
            }
            e
        })
        .collect();
    let mut d = detail(files, &checkpoint, checks);
    d.last_seq = last_seq;
    d.notifications = crate::notify::outbox::for_run(client, id).await?;
    d.escalation = crate::notify::escalation::for_run(client, id).await?;
    d.undos = crate::daemon::undo::store::for_run(client, id).await?;
    d.rehearsal = RehearsalView::read(
        row.get(29),
        row.get(30),
        row.get(31),
        row.get(32),
        row.get(33),
    );
    Ok(Some(RunView { summary, detail: d }))
}

fn detail(files: Value, checkpoint: &Value, checks: Vec<Value>) -> RunDetail {
    let files = files
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| FileRef {
                    name: f["name"].as_str().unwrap_or_default().to_string(),
                    sha256: f["sha256"].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    // Read back into the run's own types; a checkpoint this build cannot read
    // (written by a newer one) shows no details rather than wrong ones.
    let state = Checkpoint::deserialize(checkpoint).ok().map(|cp| cp.state);
    let state = state.as_ref();
    let progress = state.and_then(|s| s.soak_progress()).map(|p| Progress {
        elapsed_ms: Some(p.elapsed_ms),
        samples_taken: Some(p.samples_taken.into()),
        samples_planned: Some(p.samples_planned.into()),
    });
    RunDetail {
        last_seq: 0,
        files,
        applied: state.and_then(|s| s.applied()).map(<[i64]>::to_vec),
        cause: state.and_then(|s| s.cause()).map(str::to_owned),
        progress,
        facts: match &checkpoint["facts"] {
            Value::Null => Value::Object(Default::default()),
            facts => facts.clone(),
        },
        checks,
        notifications: Vec::new(),
        escalation: None,
        undos: Vec::new(),
        rehearsal: None,
    }
}

/// Which runs `GET /v1/runs` lists.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Empty: every phase.
    pub phases: Vec<String>,
    pub target: Option<String>,
    pub limit: i64,
}

/// Compact views, newest submission first.
pub async fn list(
    client: &impl GenericClient,
    filter: &Filter,
) -> Result<Vec<RunSummary>, ApiError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM runs r
          WHERE (cardinality($1::text[]) = 0 OR r.phase = ANY($1))
            AND ($2::text IS NULL OR r.target = $2)
          ORDER BY r.seq DESC
          LIMIT $3"
    );
    let rows = client
        .query(&sql, &[&filter.phases, &filter.target, &filter.limit])
        .await?;
    Ok(rows.iter().map(compact).collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn run_ids_are_twelve_lowercase_hex_digits() {
        assert!(valid_run_id("0123456789ab"));
        assert!(!valid_run_id("0123456789AB"));
        assert!(!valid_run_id("0123456789a"));
        assert!(!valid_run_id("0123456789abc"));
        assert!(!valid_run_id("../../etc/pa"));
    }

    #[test]
    fn detail_reads_soak_progress_from_the_checkpoint() {
        let cp = json!({
            "state": {"state": "soaking", "applied": [1, 2],
                      "progress": {"elapsed_ms": 5000, "samples_taken": 3, "samples_planned": 360, "checks": []}},
            "facts": {"starting": [0]}
        });
        let d = detail(json!([{"name": "V1__a.sql", "sha256": "ab"}]), &cp, vec![]);
        assert_eq!(d.applied, Some(vec![1, 2]));
        let p = d.progress.unwrap();
        assert_eq!((p.samples_taken, p.samples_planned), (Some(3), Some(360)));
        assert_eq!(d.files[0].name, "V1__a.sql");
        assert_eq!(d.facts["starting"], json!([0]));
        let created = detail(json!([]), &json!({"state": {"state": "created"}}), vec![]);
        assert!(created.applied.is_none() && created.progress.is_none());
        assert_eq!(created.facts, json!({}));
    }

    #[test]
    fn a_rehearsal_reads_as_pending_running_passed_or_failed() {
        assert!(RehearsalView::read(false, None, 0, None, false).is_none());
        let pending = RehearsalView::read(true, None, 0, None, false).unwrap();
        assert_eq!((pending.status.as_str(), pending.owner), ("pending", None));
        // A lease that ran out: to be redone, not running.
        let lapsed = RehearsalView::read(true, None, 1, Some("d1".into()), false).unwrap();
        assert_eq!(lapsed.status, "pending");
        let running = RehearsalView::read(true, None, 1, Some("d1".into()), true).unwrap();
        assert_eq!(
            (running.status.as_str(), running.owner.as_deref()),
            ("running", Some("d1"))
        );
        let failed = json!({
            "passed": false,
            "differences": [{"kind": "index", "object": "idx_t", "change": "left",
                             "changed_by": "V2__idx"}],
            "reason": null, "scratch": "db_rehearsal_0123456789ab", "attempt": 2
        });
        let failed = RehearsalView::read(true, Some(failed), 2, None, false).unwrap();
        assert_eq!(failed.status, "failed");
        assert_eq!(failed.attempts, 2);
        let d = &failed.differences[0];
        assert_eq!((d.kind.as_str(), d.change.as_str()), ("index", "left"));
        assert_eq!(
            d.message,
            "index `idx_t` still exists after V2__idx's down script"
        );
        assert!(
            failed
                .summary
                .unwrap()
                .starts_with("rehearsal failed on a scratch copy: index")
        );
    }
}
