//! Rehearsals of submitted runs whose plan says `rehearsal: required`: before
//! such a run may be approved (or queued), a daemon proves its migrations on a
//! scratch copy of the target, as `pgshepherd rehearse` does
//! ([`crate::rehearse::copy`]): up, down, catalog compared, up again.
//!
//! The run waits in the phase `rehearsing`; its checkpoint moves through the
//! one run lifecycle ([`crate::run::lifecycle`]): `rehearsing` to `created`
//! when the rehearsal passed (the run then waits for approval, or is queued),
//! or to `rehearsal_failed`, from where it can only be aborted.
//!
//! A rehearsal is claimed under a lease (`rehearsal_owner`,
//! `rehearsal_lease_until`) renewed while it works. Its progress is not
//! persisted, only its result: a daemon that stops or dies during one leaves
//! it to be redone from the start, in a fresh scratch database, by whoever
//! claims it next (the same daemon after a restart under its name, at once;
//! any daemon once the lease ran out). `rehearsal_attempts` fences the
//! result: an attempt that was overtaken, or a run aborted meanwhile, records
//! nothing. The target is only read (`pg_dump`); the scratch databases are
//! made on the target's `rehearsal_dsn` server, or on its own.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, warn};

use crate::daemon::api::bundle::Bundle;
use crate::daemon::deadline::bounded;
use crate::daemon::rounds;
use crate::daemon::shared::SharedRef;
use crate::daemon::store::{self, StoreError};
use crate::pg::cluster::PgBinaries;
use crate::rehearse::Difference;
use crate::rehearse::copy::{Place, on_copy};
use crate::rehearse::diff::AFTER_DOWN;
use crate::rehearse::scratch;
use crate::run::checkpoint::Checkpoint;
use crate::run::event::{Event, EventKind};
use crate::run::lifecycle::{self, Input, Rules};

/// Rehearsals one daemon runs at once: each holds a `pg_dump` of its target
/// and a scratch database.
const MAX_ACTIVE_REHEARSALS: usize = 4;

/// A rehearsal this daemon claimed.
#[derive(Debug, Clone)]
struct Claimed {
    run_id: String,
    target: String,
    bundle: serde_json::Value,
    attempt: i32,
    requires_approval: bool,
}

/// A rehearsal's result, as the run keeps it (`runs.rehearsal`) and the API
/// shows it (`GET /v1/runs/{id}`, `rehearsal`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RehearsalResult {
    pub passed: bool,
    pub differences: Vec<Difference>,
    /// Why it did not get to a comparison, or what failed after it.
    pub reason: Option<String>,
    /// The scratch database it ran in (dropped since).
    pub scratch: String,
    pub attempt: i32,
}

impl RehearsalResult {
    /// One line for messages and the approval's refusal.
    pub fn summary(&self) -> String {
        if self.passed {
            return crate::rehearse::rehearsal::PASSED.into();
        }
        let mut parts: Vec<String> = self
            .differences
            .iter()
            .map(|d| d.describe(AFTER_DOWN))
            .collect();
        parts.extend(self.reason.clone());
        if parts.is_empty() {
            parts.push("it did not complete".into());
        }
        format!("rehearsal failed on a scratch copy: {}", parts.join("; "))
    }
}

/// Until `shutdown`: claim the runs waiting for their rehearsal and rehearse
/// each in its own task. At shutdown a rehearsal stops where it is, drops
/// its scratch database and lets its lease go: the next start redoes it.
pub async fn run(shared: SharedRef, shutdown: CancellationToken) {
    let tasks = TaskTracker::new();
    let settings = shared.config.daemon.clone();
    // The runs this process rehearses, so that taking back the name's
    // rehearsals after a restart leaves them alone.
    let driving: Arc<Mutex<HashSet<String>>> = Arc::default();
    loop {
        let room = MAX_ACTIVE_REHEARSALS.saturating_sub(tasks.len()) as i64;
        if room > 0 {
            let mine: Vec<String> = lock(&driving).iter().cloned().collect();
            // Only once this process holds its name's lock may it take back
            // the rehearsals leased to the name (a previous process of it).
            let own_name = shared.name_taken.load(Ordering::Acquire) > 0;
            let claim = claim(&shared, own_name, &mine, room);
            match bounded(
                &shared.pool,
                shared.op_timeout,
                "claiming rehearsals",
                claim,
            )
            .await
            {
                Ok(claimed) => {
                    for c in claimed {
                        let span = tracing::info_span!("rehearsal", run_id = %c.run_id,
                            target = %c.target, attempt = c.attempt);
                        lock(&driving).insert(c.run_id.clone());
                        let (shared, driving, shutdown) =
                            (shared.clone(), driving.clone(), shutdown.clone());
                        tasks.spawn(
                            async move {
                                let id = c.run_id.clone();
                                drive(&shared, c, &shutdown).await;
                                lock(&driving).remove(&id);
                            }
                            .instrument(span),
                        );
                    }
                }
                Err(e) => warn!(error = %e, "cannot claim rehearsals"),
            }
        }
        if !rounds::next_round(settings.poll_interval, &shared.rehearsal_wake, &shutdown).await {
            break;
        }
    }
    rounds::drain(
        tasks,
        settings.shutdown_timeout,
        "rehearsals still stopping; their leases expire and they are redone",
    )
    .await;
}

/// A poisoned lock only means a task panicked while updating the set.
fn lock(driving: &Mutex<HashSet<String>>) -> MutexGuard<'_, HashSet<String>> {
    driving.lock().unwrap_or_else(|e| e.into_inner())
}

fn scratch_name(shared: &SharedRef, c: &Claimed) -> Option<String> {
    let target = shared.config.targets.get(&c.target)?;
    Some(scratch::scratch_name(target, &c.run_id))
}

/// Claim up to `limit` runs waiting for their rehearsal, oldest first: never
/// claimed, with an expired lease, or (`own_name`) leased to this daemon's
/// name but not driven by this process. Each claim is an attempt, told by a
/// `rehearsal_started` event in the same transaction.
async fn claim(
    shared: &SharedRef,
    own_name: bool,
    driving: &[String],
    limit: i64,
) -> Result<Vec<Claimed>, StoreError> {
    let mut client = shared.pool.get().await?;
    let tx = client.transaction().await?;
    let lease_ms = shared.config.daemon.lease_timeout.as_millis() as f64;
    let rows = tx
        .query(
            "WITH ready AS (
                 SELECT id FROM runs
                  WHERE phase = 'rehearsing' AND rehearsal IS NULL
                    AND (rehearsal_owner IS NULL OR rehearsal_lease_until < now()
                         OR ($3 AND rehearsal_owner = $1 AND NOT (id = ANY($4))))
                  ORDER BY seq
                  LIMIT $5
                  FOR UPDATE SKIP LOCKED)
             UPDATE runs r
                SET rehearsal_owner = $1,
                    rehearsal_lease_until = now() + $2 * interval '1 millisecond',
                    rehearsal_attempts = r.rehearsal_attempts + 1,
                    updated_at = now()
               FROM ready
              WHERE r.id = ready.id
          RETURNING r.id, r.target, r.bundle, r.rehearsal_attempts, r.requires_approval",
            &[&shared.node, &lease_ms, &own_name, &driving, &limit],
        )
        .await?;
    let claimed: Vec<Claimed> = rows
        .iter()
        .map(|r| Claimed {
            run_id: r.get(0),
            target: r.get(1),
            bundle: r.get(2),
            attempt: r.get(3),
            requires_approval: r.get(4),
        })
        .collect();
    for c in &claimed {
        let started = EventKind::RehearsalStarted {
            scratch: scratch_name(shared, c).unwrap_or_default(),
            attempt: c.attempt.max(1) as u32,
        };
        store::append_events(
            &tx,
            &c.run_id,
            &[event(&c.run_id, started)],
            &shared.config.notify,
            None,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

fn event(run_id: &str, kind: EventKind) -> Event {
    Event {
        ts: chrono::Utc::now(),
        run_id: run_id.to_string(),
        step: None,
        kind,
    }
}

/// Keep the lease while the rehearsal works; returns when it was lost (the run
/// was aborted, or another daemon claimed it after a renewal came too late).
async fn keep_lease(shared: &SharedRef, c: &Claimed) {
    let lease_timeout = shared.config.daemon.lease_timeout;
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(lease_timeout / 3).await;
        let renew = async {
            let client = shared.pool.get().await?;
            let n = client
                .execute(
                    "UPDATE runs
                        SET rehearsal_lease_until = now() + $4 * interval '1 millisecond'
                      WHERE id = $1 AND rehearsal_owner = $2 AND rehearsal_attempts = $3
                        AND phase = 'rehearsing' AND rehearsal IS NULL",
                    &[
                        &c.run_id,
                        &shared.node,
                        &c.attempt,
                        &(lease_timeout.as_millis() as f64),
                    ],
                )
                .await?;
            Ok::<bool, StoreError>(n == 1)
        };
        match bounded(
            &shared.pool,
            shared.op_timeout,
            "renewing a rehearsal's lease",
            renew,
        )
        .await
        {
            Ok(true) => renewed = tokio::time::Instant::now(),
            Ok(false) => return,
            Err(e) => {
                warn!(error = %e, "cannot renew the rehearsal's lease");
                if renewed.elapsed() >= lease_timeout {
                    return;
                }
            }
        }
    }
}

/// Rehearse one claimed run and record the result.
async fn drive(shared: &SharedRef, c: Claimed, shutdown: &CancellationToken) {
    info!("rehearsing on a scratch copy");
    let outcome = tokio::select! {
        o = rehearse(shared, &c) => o,
        _ = keep_lease(shared, &c) => {
            info!("the rehearsal's lease was lost (the run was aborted or taken over); stopped it");
            cleanup(shared, &c).await;
            return;
        }
        _ = shutdown.cancelled() => {
            cleanup(shared, &c).await;
            release(shared, &c).await;
            info!("shutting down: stopped the rehearsal; it is redone at the next start");
            return;
        }
    };
    let mut wait = Duration::from_millis(100);
    // The state database may be away for a moment: the result is worth a retry
    // (the lease stays ours meanwhile, or the write is fenced out anyway).
    for _ in 0..8 {
        let write = record(shared, &c, &outcome);
        match bounded(
            &shared.pool,
            shared.op_timeout,
            "recording a rehearsal",
            write,
        )
        .await
        {
            Ok(true) => {
                info!(passed = outcome.passed, "rehearsal finished");
                shared.wake.notify_one();
                shared.outbox.poke();
                return;
            }
            Ok(false) => {
                info!("the run was aborted or rehearsed by another attempt; result discarded");
                return;
            }
            Err(e) => warn!(error = %e, "cannot record the rehearsal; retrying"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    warn!("gave up recording the rehearsal; it is redone once its lease expires");
}

/// The rehearsal itself: everything that goes wrong is its result (the run
/// cannot be approved; its reason says why).
async fn rehearse(shared: &SharedRef, c: &Claimed) -> RehearsalResult {
    let scratch = scratch_name(shared, c).unwrap_or_default();
    let failed = |reason: String| RehearsalResult {
        passed: false,
        differences: Vec::new(),
        reason: Some(reason),
        scratch: scratch.clone(),
        attempt: c.attempt,
    };
    let plan = match serde_json::from_value::<Bundle>(c.bundle.clone())
        .map_err(|e| e.to_string())
        .and_then(|b| b.compile().map_err(|d| d.to_string()))
    {
        Ok(p) => p,
        Err(e) => return failed(format!("the stored bundle no longer compiles: {e}")),
    };
    let target = match shared.config.target(&c.target) {
        Ok(d) => d,
        Err(e) => return failed(e.to_string()),
    };
    let server = shared
        .config
        .rehearsal_servers
        .get(&c.target)
        .unwrap_or(&target);
    let bins = match PgBinaries::locate_client() {
        Ok(b) => b,
        Err(e) => return failed(e.to_string()),
    };
    let done = on_copy(
        &bins,
        &target,
        &c.target,
        &plan,
        Place::New {
            server,
            name: &scratch,
            keep: false,
        },
        &c.run_id,
        None,
    )
    .await;
    if let Some(e) = done.drop_failed {
        warn!(error = %e, "cannot drop the scratch database; drop it by hand");
    }
    match done.result {
        Ok(r) => RehearsalResult {
            passed: r.passed(),
            differences: r.differences,
            reason: r.reapply_failed,
            scratch,
            attempt: c.attempt,
        },
        Err(e) => failed(e.to_string()),
    }
}

/// Drop the scratch database of a rehearsal cut off in the middle.
async fn cleanup(shared: &SharedRef, c: &Claimed) {
    let (Ok(target), Some(name)) = (shared.config.target(&c.target), scratch_name(shared, c))
    else {
        return;
    };
    let server = shared
        .config
        .rehearsal_servers
        .get(&c.target)
        .unwrap_or(&target);
    if let Err(e) = scratch::drop(server, &name).await {
        warn!(error = %e, "cannot drop the scratch database of a stopped rehearsal");
    }
}

/// Let the lease go, so that the next start redoes the rehearsal at once.
async fn release(shared: &SharedRef, c: &Claimed) {
    let release = async {
        let client = shared.pool.get().await?;
        client
            .execute(
                "UPDATE runs SET rehearsal_owner = NULL, rehearsal_lease_until = NULL
                  WHERE id = $1 AND rehearsal_owner = $2 AND rehearsal_attempts = $3",
                &[&c.run_id, &shared.node, &c.attempt],
            )
            .await?;
        Ok::<(), StoreError>(())
    };
    if let Err(e) = bounded(
        &shared.pool,
        shared.op_timeout,
        "releasing a rehearsal",
        release,
    )
    .await
    {
        warn!(error = %e, "cannot release the rehearsal's lease; it will expire");
    }
}

/// Record the result of attempt `c.attempt`, if it is still the run's
/// current one and the run still waits for it: the checkpoint moves through
/// the lifecycle, the phase follows, and `rehearsal_finished` (with the
/// approval request it gives rise to) is written in the same transaction.
async fn record(
    shared: &SharedRef,
    c: &Claimed,
    outcome: &RehearsalResult,
) -> Result<bool, StoreError> {
    let mut client = shared.pool.get().await?;
    let tx = client.transaction().await?;
    let Some(row) = tx
        .query_opt(
            "SELECT checkpoint FROM runs
              WHERE id = $1 AND phase = 'rehearsing' AND rehearsal IS NULL
                AND rehearsal_owner = $2 AND rehearsal_attempts = $3
              FOR UPDATE",
            &[&c.run_id, &shared.node, &c.attempt],
        )
        .await?
    else {
        return Ok(false);
    };
    let mut checkpoint: Checkpoint = serde_json::from_value(row.get(0))
        .map_err(|e| StoreError::Query(format!("run {}: checkpoint: {e}", c.run_id)))?;
    let input = if outcome.passed {
        Input::RehearsalPassed
    } else {
        Input::RehearsalFailed {
            reason: outcome.summary(),
        }
    };
    // The rollback strategy plays no part before the change.
    let rules = Rules {
        strategy: crate::plan::RollbackStrategy::Hold,
    };
    let next = lifecycle::transition(&checkpoint.state, input, rules)
        .map_err(|e| StoreError::Query(format!("run {}: {e}", c.run_id)))?
        .next;
    checkpoint.state = next;
    let phase = match (outcome.passed, c.requires_approval) {
        (true, true) => "pending_approval",
        (true, false) => "queued",
        (false, _) => "rehearsing",
    };
    let result = serde_json::to_value(outcome).map_err(|e| StoreError::Query(e.to_string()))?;
    let cp = serde_json::to_value(&checkpoint).map_err(|e| StoreError::Query(e.to_string()))?;
    tx.execute(
        "UPDATE runs
            SET checkpoint = $2, state_name = $3, phase = $4, rehearsal = $5,
                rehearsal_owner = NULL, rehearsal_lease_until = NULL, updated_at = now()
          WHERE id = $1",
        &[&c.run_id, &cp, &checkpoint.state.name(), &phase, &result],
    )
    .await?;
    let finished = EventKind::RehearsalFinished {
        passed: outcome.passed,
        differences: outcome.differences.clone(),
        reason: outcome.reason.clone(),
        requires_approval: Some(outcome.passed && c.requires_approval),
    };
    store::append_events(
        &tx,
        &c.run_id,
        &[event(&c.run_id, finished)],
        &shared.config.notify,
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rehearse::{Change, ObjectKind};

    #[test]
    fn the_summary_says_passed_or_names_each_difference() {
        let mut o = RehearsalResult {
            passed: true,
            differences: Vec::new(),
            reason: None,
            scratch: "db_rehearsal_1".into(),
            attempt: 1,
        };
        assert_eq!(
            o.summary(),
            "rehearsal passed on a scratch copy: up, down, up, catalog identical"
        );
        o.passed = false;
        o.differences.push(Difference {
            kind: ObjectKind::Index,
            object: "idx_rental_return_date".into(),
            change: Change::Left,
            changed_by: Some("V2__return_date_index".into()),
        });
        o.reason = Some("the migrations do not re-apply".into());
        assert_eq!(
            o.summary(),
            "rehearsal failed on a scratch copy: index `idx_rental_return_date` still exists \
             after V2__return_date_index's down script; the migrations do not re-apply"
        );
    }
}
