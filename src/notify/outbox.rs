//! The outbox: notifications are rows in the state database, written in the
//! transaction of the state change they report, and sent by delivery workers.
//!
//! - At least once: a row is marked delivered only after a 2xx; a worker that
//!   dies mid-send leaves a claim that expires, and the row is sent again under
//!   the same `msg_id`.
//! - Order: one run's notifications to one channel go one at a time, oldest
//!   first; a row is not claimed while an older one of the same run and channel
//!   is still pending (even one waiting out its backoff).
//! - Isolation: each channel has its own worker and its own in-flight limit, so
//!   a slow or dead receiver delays only its own channel, never a run (runs only
//!   insert rows) or another channel.
//! - Several daemons share the outbox: claims use `FOR UPDATE SKIP LOCKED` and a
//!   claim deadline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::daemon::deadline::bounded;
use crate::notify::config::{Channel, NotifyConfig};
use crate::notify::deliver::{self, Attempt, Delivery};
use crate::notify::notices::{self, RunMeta};
use crate::notify::progress::{Progress, ProgressPoint};
use crate::notify::{Notice, NoticeKind, render, sign};
use crate::run::event::Event;

/// What a run's plan asked for, as stored in `runs.notify`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RunNotify {
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub escalation: Option<String>,
}

impl RunNotify {
    pub fn from_plan(plan: &crate::plan::Plan) -> RunNotify {
        RunNotify {
            channels: plan.notify.channels.clone(),
            escalation: plan.notify.escalation.clone(),
        }
    }
}

/// One row to insert.
struct Outgoing<'a> {
    channel: &'a Channel,
    notice: Notice,
}

/// Write the notifications that `events` give rise to (and start an escalation
/// when one of them needs a person), inside the caller's transaction. Events
/// that are not worth a message cost nothing: the run is read only when one is.
pub async fn enqueue_for_events(
    client: &impl GenericClient,
    config: &NotifyConfig,
    run_id: &str,
    events: &[Event],
    progress: Option<&mut Progress>,
) -> Result<usize, tokio_postgres::Error> {
    if config.channels.is_empty() {
        return Ok(0);
    }
    // Soak progress is decided from the samples alone: most batches (a tick's
    // samples) cost no read of the run.
    let mut due: Vec<(usize, String, ProgressPoint)> = Vec::new();
    if let Some(p) = progress {
        for (i, event) in events.iter().enumerate() {
            due.extend(
                p.observe(event)
                    .into_iter()
                    .map(|(ch, point)| (i, ch, point)),
            );
        }
    }
    let notable = events.iter().any(|e| notices::is_notable(&e.kind));
    if !notable && due.is_empty() {
        return Ok(0);
    }
    let Some(row) = client
        .query_opt(
            "SELECT target, plan_name, notify, acked_by IS NOT NULL FROM runs WHERE id = $1",
            &[&run_id],
        )
        .await?
    else {
        return Ok(0);
    };
    let run = RunMeta {
        run_id: run_id.to_string(),
        target: row.get(0),
        plan: row.get(1),
    };
    let wanted: RunNotify = serde_json::from_value(row.get(2)).unwrap_or_default();
    let acked: bool = row.get(3);
    let channels: Vec<&Channel> = wanted
        .channels
        .iter()
        .filter_map(|c| config.channels.get(c))
        .collect();

    let mut out: Vec<Outgoing<'_>> = Vec::new();
    let mut triggers: Vec<Notice> = Vec::new();
    let runbook = notices::RunbookLinks {
        generic: config.delivery.runbook_url.as_deref(),
        public_url: config.delivery.public_url.as_deref(),
    };
    for (i, event) in events.iter().enumerate() {
        for (_, name, point) in due.iter().filter(|d| d.0 == i) {
            let notice = point.notice(&run);
            if let Some(ch) = channels.iter().find(|c| &c.name == name)
                && ch.wants(notice.kind, notice.severity)
            {
                out.push(Outgoing {
                    channel: ch,
                    notice,
                });
            }
        }
        if !notices::is_notable(&event.kind) {
            continue;
        }
        for notice in notices::from_event(event, &run, runbook) {
            if escalates(config, &wanted, &notice) {
                triggers.push(notice.clone());
            }
            for ch in &channels {
                if ch.wants(notice.kind, notice.severity) {
                    out.push(Outgoing {
                        channel: ch,
                        notice: notice.clone(),
                    });
                }
            }
        }
    }
    let n = insert(client, &out).await?;
    if let (Some(policy), Some(trigger), false) = (&wanted.escalation, triggers.first(), acked) {
        start_escalation(client, run_id, policy, trigger).await?;
    }
    Ok(n)
}

/// Whether this notice starts the run's escalation policy.
fn escalates(config: &NotifyConfig, wanted: &RunNotify, notice: &Notice) -> bool {
    let Some(policy) = wanted
        .escalation
        .as_ref()
        .and_then(|p| config.policies.get(p))
    else {
        return false;
    };
    match notice.kind {
        NoticeKind::NeedsHuman | NoticeKind::RollbackFailed => true,
        NoticeKind::Breach => policy.on_breach,
        _ => false,
    }
}

async fn start_escalation(
    client: &impl GenericClient,
    run_id: &str,
    policy: &str,
    trigger: &Notice,
) -> Result<(), tokio_postgres::Error> {
    let notice = serde_json::to_value(trigger).unwrap_or_default();
    client
        .execute(
            "INSERT INTO escalations (run_id, policy, trigger, notice)
             VALUES ($1, $2, $3, $4) ON CONFLICT (run_id) DO NOTHING",
            &[&run_id, &policy, &trigger.kind.as_str(), &notice],
        )
        .await?;
    Ok(())
}

/// Insert rendered notifications (one statement).
async fn insert(
    client: &impl GenericClient,
    out: &[Outgoing<'_>],
) -> Result<usize, tokio_postgres::Error> {
    if out.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(out.len());
    let mut run_ids = Vec::with_capacity(out.len());
    let mut channels = Vec::with_capacity(out.len());
    let mut kinds = Vec::with_capacity(out.len());
    let mut severities = Vec::with_capacity(out.len());
    let mut titles = Vec::with_capacity(out.len());
    let mut bodies = Vec::with_capacity(out.len());
    for o in out {
        ids.push(sign::new_message_id());
        run_ids.push(o.notice.run_id.clone());
        channels.push(o.channel.name.clone());
        kinds.push(o.notice.kind.as_str());
        severities.push(o.notice.severity.as_str());
        titles.push(o.notice.title.clone());
        bodies.push(render::render(o.channel.kind, &o.notice).to_string());
    }
    client
        .execute(
            "INSERT INTO notifications (msg_id, run_id, channel, kind, severity, title, body)
             SELECT m, r, c, k, s, ti, b
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                           $6::text[], $7::text[]) WITH ORDINALITY AS x(m, r, c, k, s, ti, b, n)
              ORDER BY n",
            &[
                &ids,
                &run_ids,
                &channels,
                &kinds,
                &severities,
                &titles,
                &bodies,
            ],
        )
        .await
        .map(|n| n as usize)
}

/// Notify the channels named in `notices` directly, whatever their filters
/// (escalation pages and the acknowledgement that ends them: a channel in an
/// escalation level has asked to be paged), inside the caller's transaction.
pub async fn enqueue_notices(
    client: &impl GenericClient,
    config: &NotifyConfig,
    notices: &[(String, Notice)],
) -> Result<usize, tokio_postgres::Error> {
    let out: Vec<Outgoing<'_>> = notices
        .iter()
        .filter_map(|(name, notice)| {
            let ch = config.channels.get(name)?;
            Some(Outgoing {
                channel: ch,
                notice: notice.clone(),
            })
        })
        .collect();
    insert(client, &out).await
}

/// Delivery counters per channel, for `/metrics`.
#[derive(Default)]
pub struct DeliveryStats {
    channels: Mutex<BTreeMap<String, Arc<ChannelStats>>>,
}

#[derive(Default)]
pub struct ChannelStats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub retries: AtomicU64,
    pub dropped: AtomicU64,
    /// 1 while the channel is disabled (a 410).
    pub disabled: AtomicU64,
}

impl DeliveryStats {
    pub fn channel(&self, name: &str) -> Arc<ChannelStats> {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    pub fn snapshot(&self) -> Vec<(String, Arc<ChannelStats>)> {
        let map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// What the delivery workers need.
pub struct Outbox {
    pub config: NotifyConfig,
    pub pool: Pool,
    /// This daemon's name (claims).
    pub node: String,
    /// Bumped after a transaction that enqueued notifications commits; every
    /// channel worker sees each bump (a watch never loses one).
    pub wake: watch::Sender<u64>,
    pub stats: DeliveryStats,
    /// The deadline of a claim or a record on the state database (see
    /// [`crate::daemon::deadline`]).
    pub op_timeout: Duration,
}

impl Outbox {
    pub fn new(config: NotifyConfig, pool: Pool, node: String, op_timeout: Duration) -> Outbox {
        Outbox {
            config,
            pool,
            node,
            op_timeout,
            wake: watch::channel(0).0,
            stats: DeliveryStats::default(),
        }
    }

    /// New notifications were committed: look now rather than at the next poll.
    pub fn poke(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Run one delivery worker per configured channel, plus the escalation timer,
/// until `shutdown`. In-flight sends finish (bounded by their timeout); anything
/// not yet sent stays in the outbox for the next start or another daemon.
pub async fn run(outbox: Arc<Outbox>, shutdown: CancellationToken) {
    if outbox.config.channels.is_empty() {
        return;
    }
    warn_orphans(&outbox).await;
    let client = deliver::client();
    let mut tasks = tokio::task::JoinSet::new();
    for channel in outbox.config.channels.values() {
        tasks.spawn(channel_worker(
            outbox.clone(),
            channel.clone(),
            client.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(crate::notify::escalation::run(
        outbox.clone(),
        shutdown.clone(),
    ));
    while tasks.join_next().await.is_some() {}
}

/// Pending notifications for channels this daemon's config no longer defines
/// stay in the outbox (another replica, or this one after a config fix, may
/// still send them); say so rather than leave them unexplained.
async fn warn_orphans(outbox: &Outbox) {
    let names: Vec<String> = outbox.config.channels.keys().cloned().collect();
    let Ok(client) = outbox.pool.get().await else {
        return;
    };
    if let Ok(rows) = client
        .query(
            "SELECT channel, count(*) FROM notifications
              WHERE status = 'pending' AND channel <> ALL($1) GROUP BY 1",
            &[&names],
        )
        .await
    {
        for r in rows {
            let channel: String = r.get(0);
            let pending: i64 = r.get(1);
            warn!(channel = %channel, pending,
                  "notifications are pending for a channel that is not in this daemon's config; they wait until a daemon that defines it sends them");
        }
    }
}

/// Claimed row.
struct Claimed {
    id: i64,
    msg_id: String,
    run_id: String,
    kind: String,
    body: String,
    attempts: i32,
    created_at: DateTime<Utc>,
}

async fn channel_worker(
    outbox: Arc<Outbox>,
    channel: Channel,
    client: reqwest::Client,
    shutdown: CancellationToken,
) {
    let stats = outbox.stats.channel(&channel.name);
    let slots = Arc::new(Semaphore::new(channel.concurrency.max(1) as usize));
    let mut disabled = check_disabled(&outbox, &channel, &stats).await;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut wake = outbox.wake.subscribe();
    let mut rechecked = tokio::time::Instant::now();
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        while in_flight.try_join_next().is_some() {}
        if rechecked.elapsed() >= Duration::from_secs(5) {
            // Another daemon may have disabled it.
            disabled = check_disabled(&outbox, &channel, &stats).await;
            rechecked = tokio::time::Instant::now();
        }
        let free = slots.available_permits();
        let mut claimed_any = false;
        if free > 0 {
            match bounded(
                &outbox.pool,
                outbox.op_timeout,
                "claiming notifications",
                claim(&outbox, &channel, free as i64),
            )
            .await
            {
                Ok(rows) => {
                    claimed_any = !rows.is_empty();
                    for row in rows {
                        // A 410 answered to one of our own sends disables the
                        // channel at once, before anything else goes out.
                        disabled |= stats.disabled.load(Ordering::Relaxed) == 1;
                        if disabled {
                            drop_disabled(&outbox, &stats, row.id).await;
                            continue;
                        }
                        let Ok(permit) = slots.clone().acquire_owned().await else {
                            break;
                        };
                        let outbox = outbox.clone();
                        let channel = channel.clone();
                        let client = client.clone();
                        let stats = stats.clone();
                        in_flight.spawn(async move {
                            send_one(&outbox, &channel, &client, &stats, row).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    warn!(channel = %channel.name, error = %crate::pg::error_text(&*e), "cannot read the outbox; retrying")
                }
            }
        }
        if claimed_any && slots.available_permits() > 0 {
            // More may be waiting (and order-blocked rows become claimable once
            // their predecessor is delivered).
            tokio::task::yield_now().await;
            tokio::select! {
                _ = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            continue;
        }
        tokio::select! {
            _ = wake.changed() => {}
            _ = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = tokio::time::sleep(outbox.config.delivery.poll_interval) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    // Let sends already on the wire finish: their outcome is recorded, so they
    // are not sent again by the next owner.
    let grace = channel.timeout + Duration::from_secs(1);
    let _ = tokio::time::timeout(grace, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
}

async fn claim(
    outbox: &Outbox,
    channel: &Channel,
    limit: i64,
) -> Result<Vec<Claimed>, Box<dyn std::error::Error + Send + Sync>> {
    let client = outbox.pool.get().await?;
    // The claim outlives the request's timeout: a live worker records the
    // outcome before anyone else may send the row again.
    let hold_ms = (channel.timeout.as_millis() as f64) * 2.0 + 5000.0;
    let rows = client
        .query(
            // The head of each run's queue to this channel (its oldest pending
            // row), found by a skip scan over notifications_pending_by_run:
            // the cost grows with the runs that have pending rows, not with
            // the rows (a dead receiver's backlog). Only heads are sent, so one
            // run's notifications go out one at a time, in order.
            "WITH RECURSIVE heads(run_id, id) AS (
                 (SELECT run_id, id FROM notifications
                   WHERE channel = $1 AND status = 'pending'
                   ORDER BY run_id, id LIMIT 1)
                 UNION ALL
                 SELECT next.run_id, next.id
                   FROM heads,
                        LATERAL (SELECT run_id, id FROM notifications
                                  WHERE channel = $1 AND status = 'pending'
                                    AND run_id > heads.run_id
                                  ORDER BY run_id, id LIMIT 1) AS next
             ),
             due AS (
                 SELECT c.id FROM heads JOIN notifications c ON c.id = heads.id
                  WHERE c.status = 'pending' AND c.next_attempt_at <= now()
                    AND (c.claimed_until IS NULL OR c.claimed_until < now())
                  ORDER BY c.id
                  LIMIT $2
                    FOR UPDATE OF c SKIP LOCKED
             )
             UPDATE notifications n
                SET claimed_until = now() + $3 * interval '1 millisecond', claimed_by = $4,
                    attempts = n.attempts + 1, last_attempt_at = now()
               FROM due
              WHERE n.id = due.id
          RETURNING n.id, n.msg_id, n.run_id, n.kind, n.body, n.attempts, n.created_at",
            &[&channel.name, &limit, &hold_ms, &outbox.node],
        )
        .await?;
    let mut claimed: Vec<Claimed> = rows
        .iter()
        .map(|r| Claimed {
            id: r.get(0),
            msg_id: r.get(1),
            run_id: r.get(2),
            kind: r.get(3),
            body: r.get(4),
            attempts: r.get(5),
            created_at: r.get(6),
        })
        .collect();
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

/// Send one claimed notification and record what happened.
async fn send_one(
    outbox: &Outbox,
    channel: &Channel,
    client: &reqwest::Client,
    stats: &ChannelStats,
    row: Claimed,
) {
    let attempt = Attempt {
        kind: channel.kind,
        url: &channel.url,
        body: row.body.as_bytes(),
        msg_id: &row.msg_id,
        secrets: &channel.secrets,
        timeout: channel.timeout,
    };
    let result = deliver::send(client, &attempt).await;
    let settings = &outbox.config.delivery;
    let now = Utc::now();
    let update = match &result {
        Delivery::Delivered { status } => {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            Update::Delivered(*status)
        }
        Delivery::Retry {
            status,
            error,
            retry_after,
        } => {
            // A Retry-After is honoured within [min_backoff, 1 h] (see deliver::backoff).
            let delay = deliver::backoff(settings)
                .delay_or_suggested(row.attempts.max(1) as u32, *retry_after);
            let age = (now - row.created_at).to_std().unwrap_or_default();
            if age + delay > settings.max_age {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                error!(channel = %channel.name, run_id = %row.run_id, notification = %row.msg_id,
                       attempts = row.attempts, error = %error,
                       "giving up on a notification: still failing at its max_age");
                Update::Failed(
                    *status,
                    format!(
                        "gave up after {} attempts over {}s: {error}",
                        row.attempts,
                        age.as_secs()
                    ),
                )
            } else {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                // A dead receiver fails every attempt of every run's oldest
                // notification: say so on the first failures and then every
                // tenth, not on each one (the metrics count them all).
                if row.attempts <= 2 || row.attempts % 10 == 0 {
                    warn!(channel = %channel.name, run_id = %row.run_id, notification = %row.msg_id,
                          attempt = row.attempts, retry_in_ms = delay.as_millis() as u64, error = %error,
                          "notification not delivered; will retry");
                } else {
                    tracing::debug!(channel = %channel.name, run_id = %row.run_id, notification = %row.msg_id,
                          attempt = row.attempts, retry_in_ms = delay.as_millis() as u64, error = %error,
                          "notification not delivered; will retry");
                }
                Update::Retry(*status, error.clone(), delay)
            }
        }
        Delivery::Gone { status, error } => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            stats.disabled.store(1, Ordering::Relaxed);
            error!(channel = %channel.name, status, error = %error,
                   "the channel's receiver answered 410 Gone: channel disabled until its url changes in the config");
            Update::Gone(Some(*status), error.clone())
        }
        Delivery::Rejected { status, error } => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            error!(channel = %channel.name, run_id = %row.run_id, notification = %row.msg_id,
                   kind = %row.kind, status, error = %error,
                   "the receiver rejected a notification; not retrying it");
            Update::Failed(Some(*status), error.clone())
        }
    };
    // The outcome must be recorded, or the row is sent again after its claim
    // expires (at least once, never silently lost): retry the write a few times.
    for wait in [0u64, 200, 1000, 3000] {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        match bounded(
            &outbox.pool,
            outbox.op_timeout,
            "recording a delivery",
            record(outbox, channel, &row, &update),
        )
        .await
        {
            Ok(()) => return,
            Err(e) => {
                warn!(channel = %channel.name, notification = %row.msg_id, error = %crate::pg::error_text(&*e),
                      "cannot record a delivery outcome; retrying")
            }
        }
    }
}

enum Update {
    Delivered(u16),
    Retry(Option<u16>, String, Duration),
    Gone(Option<u16>, String),
    Failed(Option<u16>, String),
}

async fn record(
    outbox: &Outbox,
    channel: &Channel,
    row: &Claimed,
    update: &Update,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut client = outbox.pool.get().await?;
    let tx = client.transaction().await?;
    match update {
        Update::Delivered(status) => {
            tx.execute(
                "UPDATE notifications SET status = 'delivered', delivered_at = now(),
                        last_status = $2, last_error = NULL, claimed_until = NULL
                  WHERE id = $1",
                &[&row.id, &(*status as i32)],
            )
            .await?;
        }
        Update::Retry(status, error, delay) => {
            tx.execute(
                "UPDATE notifications
                    SET next_attempt_at = now() + $4 * interval '1 millisecond',
                        last_status = $2, last_error = $3, claimed_until = NULL
                  WHERE id = $1 AND status = 'pending'",
                &[
                    &row.id,
                    &status.map(|s| s as i32),
                    error,
                    &(delay.as_millis() as f64),
                ],
            )
            .await?;
        }
        Update::Failed(status, error) | Update::Gone(status, error) => {
            tx.execute(
                "UPDATE notifications SET status = 'failed', last_status = $2, last_error = $3,
                        claimed_until = NULL
                  WHERE id = $1",
                &[&row.id, &status.map(|s| s as i32), error],
            )
            .await?;
            if matches!(update, Update::Gone(..)) {
                let reason = format!(
                    "HTTP {} from the receiver: {error}",
                    status.unwrap_or_default()
                );
                tx.execute(
                    "INSERT INTO disabled_channels (channel, url_sha256, reason) VALUES ($1, $2, $3)
                     ON CONFLICT (channel) DO UPDATE SET url_sha256 = $2, reason = $3, disabled_at = now()",
                    &[&channel.name, &channel.url_fingerprint(), &reason],
                )
                .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Whether the channel is disabled (a 410 for its current URL). A disabled row
/// for an older URL is removed: changing the URL re-enables the channel.
async fn check_disabled(outbox: &Outbox, channel: &Channel, stats: &ChannelStats) -> bool {
    let Ok(client) = outbox.pool.get().await else {
        return stats.disabled.load(Ordering::Relaxed) == 1;
    };
    let row = client
        .query_opt(
            "SELECT url_sha256, reason FROM disabled_channels WHERE channel = $1",
            &[&channel.name],
        )
        .await;
    match row {
        Ok(Some(r)) => {
            let sha: String = r.get(0);
            if sha == channel.url_fingerprint() {
                if stats.disabled.swap(1, Ordering::Relaxed) == 0 {
                    let reason: String = r.get(1);
                    error!(channel = %channel.name, reason = %reason,
                           "channel disabled (its receiver answered 410 Gone); change its url in the config to enable it again");
                }
                true
            } else {
                let _ = client
                    .execute(
                        "DELETE FROM disabled_channels WHERE channel = $1",
                        &[&channel.name],
                    )
                    .await;
                info!(channel = %channel.name, "channel url changed since it was disabled: enabled again");
                stats.disabled.store(0, Ordering::Relaxed);
                false
            }
        }
        Ok(None) => {
            stats.disabled.store(0, Ordering::Relaxed);
            false
        }
        Err(_) => stats.disabled.load(Ordering::Relaxed) == 1,
    }
}

async fn drop_disabled(outbox: &Outbox, stats: &ChannelStats, id: i64) {
    stats.dropped.fetch_add(1, Ordering::Relaxed);
    if let Ok(client) = outbox.pool.get().await {
        let _ = client
            .execute(
                "UPDATE notifications SET status = 'dropped', claimed_until = NULL,
                        attempts = attempts - 1, last_attempt_at = NULL,
                        last_error = 'channel disabled: its receiver answered 410 Gone'
                  WHERE id = $1",
                &[&id],
            )
            .await;
    }
}

/// One notification as `GET /v1/runs/{id}` and `pgshepherd status` show it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Notification)]
pub struct Delivered {
    /// The webhook-id: the same on every retry.
    pub id: String,
    pub channel: String,
    /// The notice: submitted, approval_needed, breach, needs_human, ...
    pub event: String,
    #[schema(schema_with = crate::daemon::api::schema::severity)]
    pub severity: String,
    pub title: String,
    #[schema(schema_with = crate::daemon::api::schema::delivery_status)]
    pub status: String,
    pub attempts: i32,
    /// HTTP status of the last attempt, if one came back.
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "crate::daemon::api::view::ts")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::daemon::api::view::ts_opt")]
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// While pending: when the next attempt is due.
    #[serde(serialize_with = "crate::daemon::api::view::ts_opt")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::daemon::api::view::ts_opt")]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A run's notifications, oldest first.
pub async fn for_run(
    client: &impl GenericClient,
    run_id: &str,
) -> Result<Vec<Delivered>, tokio_postgres::Error> {
    // Part of every run view: prepared once per connection.
    let statement = client
        .prepare_cached(
            "SELECT msg_id, channel, kind, severity, title, status, attempts, last_status,
                    last_error, created_at, last_attempt_at,
                    CASE WHEN status = 'pending' THEN next_attempt_at END, delivered_at
               FROM notifications WHERE run_id = $1 ORDER BY id",
        )
        .await?;
    let rows = client.query(&statement, &[&run_id]).await?;
    Ok(rows
        .iter()
        .map(|r| Delivered {
            id: r.get(0),
            channel: r.get(1),
            event: r.get(2),
            severity: r.get(3),
            title: r.get(4),
            status: r.get(5),
            attempts: r.get(6),
            last_status: r.get(7),
            last_error: r.get(8),
            created_at: r.get(9),
            last_attempt_at: r.get(10),
            next_attempt_at: r.get(11),
            delivered_at: r.get(12),
        })
        .collect())
}
