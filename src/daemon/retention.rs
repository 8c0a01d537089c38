//! Retention: what the state database no longer needs is deleted, in small
//! batches, by a task every daemon runs every `retention.interval`.
//!
//! Invariants:
//! - Nothing of a run that is not finished is touched: events, samples and
//!   notifications go only with their finished run's age (`finished_at`), audit
//!   rows naming an unfinished run stay.
//! - A notification still `pending` is never deleted, whatever its age.
//! - Each statement deletes at most `retention.batch` rows in its own short
//!   transaction: no long lock, no long-running transaction holding back vacuum,
//!   and active runs' writes go on meanwhile.
//! - The `runs` row itself (plan bundle, final checkpoint, outcome) is kept: the
//!   run stays listed and shown, without the events that were pruned.
//!
//! Replicas may prune at the same time: every delete is idempotent, and each
//! run's "pruned" flag is set once the rows are gone.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::RetentionSettings;
use crate::daemon::shared::SharedRef;
use crate::daemon::store::StoreError;

/// Runs looked at per query of each kind.
const RUNS_PER_PASS: i64 = 64;

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub samples: u64,
    pub events: u64,
    pub notifications: u64,
    pub audit: u64,
}

/// Prune every `interval` until `shutdown`.
pub async fn run(shared: SharedRef, shutdown: CancellationToken) {
    let settings = shared.config.retention.clone();
    loop {
        match prune(&shared.pool, &settings, &shutdown).await {
            Ok(p) if p != Pruned::default() => info!(
                samples = p.samples,
                events = p.events,
                notifications = p.notifications,
                audit = p.audit,
                "pruned the state database"
            ),
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "cannot prune the state database; trying again next interval")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One pass: delete whatever is older than its retention.
pub async fn prune(
    pool: &Pool,
    settings: &RetentionSettings,
    shutdown: &CancellationToken,
) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    let batch = settings.batch;
    if let Some(age) = settings.events {
        pruned.events = prune_runs(pool, Kind::Events, age, batch, shutdown).await?;
    }
    if let Some(age) = settings.samples {
        pruned.samples = prune_runs(pool, Kind::Samples, age, batch, shutdown).await?;
    }
    if let Some(age) = settings.notifications {
        pruned.notifications = prune_runs(pool, Kind::Notifications, age, batch, shutdown).await?;
    }
    if let Some(age) = settings.audit {
        pruned.audit = prune_audit(pool, age, batch, shutdown).await?;
    }
    Ok(pruned)
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Samples,
    Events,
    Notifications,
}

impl Kind {
    /// The run's flag saying this kind has been pruned.
    fn flag(self) -> &'static str {
        match self {
            Kind::Samples => "samples_pruned",
            Kind::Events => "events_pruned",
            Kind::Notifications => "notifications_pruned",
        }
    }

    /// Deletes one batch ($2 rows at most) of run $1's rows of this kind.
    fn delete(self) -> &'static str {
        match self {
            // The partial index events_check_samples finds a run's samples.
            Kind::Samples => {
                "DELETE FROM events WHERE id IN (
                     SELECT id FROM events
                      WHERE run_id = $1 AND name = 'check_sample'
                      LIMIT $2)"
            }
            Kind::Events => {
                "DELETE FROM events WHERE id IN (
                     SELECT id FROM events WHERE run_id = $1 ORDER BY id LIMIT $2)"
            }
            Kind::Notifications => {
                "DELETE FROM notifications WHERE id IN (
                     SELECT id FROM notifications
                      WHERE run_id = $1 AND status <> 'pending'
                      ORDER BY id LIMIT $2)"
            }
        }
    }

    /// Marks run $1 pruned of this kind (for events, of samples too), unless
    /// something of it remains that must stay (a pending notification).
    fn mark(self) -> &'static str {
        match self {
            Kind::Samples => "UPDATE runs SET samples_pruned = true WHERE id = $1",
            Kind::Events => {
                "UPDATE runs SET events_pruned = true, samples_pruned = true WHERE id = $1"
            }
            Kind::Notifications => {
                "UPDATE runs SET notifications_pruned = true
                  WHERE id = $1
                    AND NOT EXISTS (SELECT 1 FROM notifications
                                     WHERE run_id = $1 AND status = 'pending')"
            }
        }
    }
}

/// Prune `kind` of the runs finished more than `age` ago, oldest first.
async fn prune_runs(
    pool: &Pool,
    kind: Kind,
    age: Duration,
    batch: i64,
    shutdown: &CancellationToken,
) -> Result<u64, StoreError> {
    let age_ms = age.as_millis() as f64;
    // Finds the runs through the partial index of runs not yet pruned of this
    // kind: a pass reads only what is left to do.
    let due = format!(
        "SELECT id FROM runs
          WHERE phase = 'finished' AND NOT {flag}
            AND finished_at < now() - $1 * interval '1 millisecond'
          ORDER BY finished_at
          LIMIT $2",
        flag = kind.flag()
    );
    let mut deleted = 0;
    // Runs whose flag could not be set (a pending notification): not asked
    // again in this pass.
    let mut kept: Vec<String> = Vec::new();
    loop {
        let client = pool.get().await?;
        let runs: Vec<String> = client
            .query(&due, &[&age_ms, &(RUNS_PER_PASS + kept.len() as i64)])
            .await?
            .iter()
            .map(|r| r.get(0))
            .filter(|id: &String| !kept.contains(id))
            .collect();
        drop(client);
        if runs.is_empty() {
            return Ok(deleted);
        }
        for run_id in runs {
            loop {
                if shutdown.is_cancelled() {
                    return Ok(deleted);
                }
                let client = pool.get().await?;
                let n = client.execute(kind.delete(), &[&run_id, &batch]).await?;
                deleted += n;
                if (n as i64) < batch {
                    if client.execute(kind.mark(), &[&run_id]).await? == 0 {
                        kept.push(run_id.clone());
                    }
                    break;
                }
            }
        }
    }
}

/// Delete audit rows older than `age`, oldest first, except those of runs not
/// yet finished.
async fn prune_audit(
    pool: &Pool,
    age: Duration,
    batch: i64,
    shutdown: &CancellationToken,
) -> Result<u64, StoreError> {
    let age_ms = age.as_millis() as f64;
    let mut deleted = 0;
    loop {
        if shutdown.is_cancelled() {
            return Ok(deleted);
        }
        let client = pool.get().await?;
        // The primary key is in time order: the scan starts at the oldest rows
        // and stops after a batch.
        let n = client
            .execute(
                "DELETE FROM audit WHERE id IN (
                     SELECT a.id FROM audit a
                      WHERE a.ts < now() - $1 * interval '1 millisecond'
                        AND NOT EXISTS (SELECT 1 FROM runs r
                                         WHERE r.id = a.run_id AND r.phase <> 'finished')
                      ORDER BY a.id
                      LIMIT $2)",
                &[&age_ms, &batch],
            )
            .await?;
        deleted += n;
        if (n as i64) < batch {
            return Ok(deleted);
        }
    }
}
