//! Escalation: a run that needs a person pages the levels of its policy in turn,
//! each after the previous one's delay, repeating the whole policy `repeat`
//! times, until someone acknowledges the run.
//!
//! The timers are rows in `escalations` (next level, pass, when): any daemon
//! sharing the state database advances them, so they survive restarts and
//! takeover. Advancing one is a single transaction that pages the level (outbox
//! rows) and moves the timer, so a crash never pages a level twice or skips one.

use chrono::Utc;
use deadpool_postgres::GenericClient;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::notify::config::NotifyConfig;
use crate::notify::notices;
use crate::notify::outbox::{self, Outbox};
use crate::notify::{EscalationStep, Notice, NoticeKind, Severity};

/// Advance due escalations until `shutdown`.
pub async fn run(outbox: Arc<Outbox>, shutdown: CancellationToken) {
    loop {
        match advance_due(&outbox).await {
            Ok(0) => {}
            Ok(_) => outbox.poke(),
            Err(e) => {
                warn!(error = %crate::pg::error_text(&*e), "cannot advance escalations; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(outbox.config.delivery.poll_interval) => {}
            _ = shutdown.cancelled() => {}
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// Page every level that is due; returns how many pages were enqueued.
pub async fn advance_due(
    outbox: &Outbox,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let mut client = outbox.pool.get().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "SELECT run_id, policy, trigger, notice, next_level, pass FROM escalations
              WHERE status = 'active' AND next_at <= now()
              ORDER BY next_at LIMIT 50 FOR UPDATE SKIP LOCKED",
            &[],
        )
        .await?;
    let mut paged = 0;
    for row in &rows {
        let run_id: String = row.get(0);
        let policy_name: String = row.get(1);
        let trigger_kind: String = row.get(2);
        let notice: serde_json::Value = row.get(3);
        let level_index: i32 = row.get(4);
        let pass: i32 = row.get(5);
        let Some(policy) = outbox.config.policies.get(&policy_name) else {
            warn!(run_id = %run_id, policy = %policy_name,
                  "escalation policy no longer in the config; escalation stopped");
            tx.execute(
                "UPDATE escalations SET status = 'exhausted' WHERE run_id = $1",
                &[&run_id],
            )
            .await?;
            continue;
        };
        let Ok(trigger) = serde_json::from_value::<Notice>(notice) else {
            tx.execute(
                "UPDATE escalations SET status = 'exhausted' WHERE run_id = $1",
                &[&run_id],
            )
            .await?;
            continue;
        };
        let Some(level) = policy.levels.get(level_index.max(0) as usize) else {
            tx.execute(
                "UPDATE escalations SET status = 'exhausted' WHERE run_id = $1",
                &[&run_id],
            )
            .await?;
            continue;
        };
        let step = EscalationStep {
            policy: policy.name.clone(),
            level: level_index as u32 + 1,
            levels: policy.levels.len() as u32,
            pass: pass as u32 + 1,
            trigger: NoticeKind::parse(&trigger_kind).unwrap_or(trigger.kind),
        };
        let page = notices::page(&trigger, step, Utc::now());
        let pages: Vec<(String, Notice)> = level
            .channels
            .iter()
            .map(|c| (c.clone(), page.clone()))
            .collect();
        paged += outbox::enqueue_notices(&tx, &outbox.config, &pages).await?;
        info!(run_id = %run_id, policy = %policy.name, level = level_index + 1, pass = pass + 1,
              channels = ?level.channels, "escalation: paging a level");
        let (next_level, next_pass, status) = if (level_index as usize) + 1 < policy.levels.len() {
            (level_index + 1, pass, "active")
        } else if (pass as u32) < policy.repeat {
            (0, pass + 1, "active")
        } else {
            (level_index + 1, pass, "exhausted")
        };
        tx.execute(
            "UPDATE escalations
                SET next_level = $2, pass = $3, status = $4,
                    next_at = now() + $5 * interval '1 millisecond',
                    paged = ARRAY(SELECT DISTINCT unnest(paged || $6::text[]) ORDER BY 1)
              WHERE run_id = $1",
            &[
                &run_id,
                &next_level,
                &next_pass,
                &status,
                &(level.delay.as_millis() as f64),
                &level.channels,
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(paged)
}

/// Stop a run's escalation (inside the ack's transaction) and tell the channels
/// it paged that the run is acknowledged. The plan's own channels hear of the ack
/// from its `acknowledged` event. Returns whether an escalation was stopped.
pub async fn acknowledge(
    client: &impl GenericClient,
    config: &NotifyConfig,
    run_id: &str,
    by: &str,
    plan_channels: &[String],
) -> Result<bool, tokio_postgres::Error> {
    let Some(row) = client
        .query_opt(
            "UPDATE escalations SET status = 'acknowledged', acked_by = $2, acked_at = now()
              WHERE run_id = $1 AND status IN ('active', 'exhausted')
          RETURNING paged, notice, policy",
            &[&run_id, &by],
        )
        .await?
    else {
        return Ok(false);
    };
    let paged: Vec<String> = row.get(0);
    let trigger: Option<Notice> = serde_json::from_value(row.get(1)).ok();
    let policy: String = row.get(2);
    if let Some(trigger) = trigger {
        let notice = Notice {
            kind: NoticeKind::Acknowledged,
            severity: Severity::Info,
            ts: Utc::now(),
            title: format!("Acknowledged by {by}: {}", trigger.title),
            summary: format!(
                "{by} acknowledged run {run_id}; escalation policy {policy} stops paging."
            ),
            next_step: None,
            facts: Vec::new(),
            escalation: None,
            runbook: None,
            ..trigger
        };
        // The plan's channels hear of the ack from its event, unless their
        // filters keep it out: a channel that was paged always hears it.
        let hears_anyway = |c: &String| {
            plan_channels.contains(c)
                && config
                    .channels
                    .get(c)
                    .is_some_and(|ch| ch.wants(NoticeKind::Acknowledged, Severity::Info))
        };
        let to: Vec<(String, Notice)> = paged
            .iter()
            .filter(|c| !hears_anyway(c))
            .map(|c| (c.clone(), notice.clone()))
            .collect();
        outbox::enqueue_notices(client, config, &to).await?;
    }
    Ok(true)
}

/// The escalation of a run, for its view.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Escalation)]
pub struct EscalationView {
    pub policy: String,
    #[schema(schema_with = crate::daemon::api::schema::escalation_trigger)]
    pub trigger: String,
    #[schema(schema_with = crate::daemon::api::schema::escalation_status)]
    pub status: String,
    /// 1-based: the level paged next while `active`.
    pub next_level: i32,
    /// 1-based pass through the levels (a policy may repeat).
    pub pass: i32,
    /// While active: when the next level is paged.
    #[serde(serialize_with = "crate::daemon::api::view::ts_opt")]
    pub next_at: Option<chrono::DateTime<Utc>>,
    /// Channels paged so far.
    pub paged: Vec<String>,
    pub acked_by: Option<String>,
    #[serde(serialize_with = "crate::daemon::api::view::ts_opt")]
    pub acked_at: Option<chrono::DateTime<Utc>>,
}

pub async fn for_run(
    client: &impl GenericClient,
    run_id: &str,
) -> Result<Option<EscalationView>, tokio_postgres::Error> {
    // Part of every run view: prepared once per connection.
    let statement = client
        .prepare_cached(
            "SELECT policy, trigger, status, next_level, pass,
                    CASE WHEN status = 'active' THEN next_at END, paged, acked_by, acked_at
               FROM escalations WHERE run_id = $1",
        )
        .await?;
    let row = client.query_opt(&statement, &[&run_id]).await?;
    Ok(row.map(|r| EscalationView {
        policy: r.get(0),
        trigger: r.get(1),
        status: r.get(2),
        next_level: r.get::<_, i32>(3) + 1,
        pass: r.get::<_, i32>(4) + 1,
        next_at: r.get(5),
        paged: r.get(6),
        acked_by: r.get(7),
        acked_at: r.get(8),
    }))
}
