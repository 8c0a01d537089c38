//! The scheduler: every poll it renews this daemon's leases, relays abort
//! requests to the runs they concern, and claims ready runs up to its capacity
//! (one active run per target, in submission order; expired leases of dead
//! daemons included: that is the takeover). Runs leased to this daemon's own
//! name by a previous process of that name, gone now, are taken back at once
//! (see [`crate::daemon::name_lock`]). On shutdown it stops claiming,
//! lets each run reach a checkpoint, and releases the leases.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::daemon::deadline::bounded;
use crate::daemon::name_lock::{Held, NameLock};
use crate::daemon::shared::SharedRef;
use crate::daemon::store::{self, Lease};
use crate::daemon::worker::{self, DriveEnd, Handles};

struct Active {
    lease: Lease,
    handles: Handles,
    /// When the lease runs out as far as this daemon can tell: `lease_timeout`
    /// after the last claim or renewal that extended it was *sent* (the server
    /// set its `lease_until` later than that). Past it another daemon may drive
    /// the run, so this one stops touching it.
    expires: Instant,
    /// Told to stop because its lease ran out or was taken: no longer renewed;
    /// its task is ending.
    let_go: bool,
}

/// The identity of a run's task: run and epoch (a run reclaimed under a new
/// epoch has a new task; the old one's end must not remove it).
type TaskKey = (String, i64);

/// Runs until `shutdown` is cancelled and every run it drives has parked at a
/// checkpoint (or `shutdown_timeout` cut them off). The runs' tasks stay in a
/// `JoinSet` rather than a `TaskTracker`: the scheduler needs each one's end
/// (parked, lost, finished, panicked) to release or fail its lease, and must be
/// able to abort the stragglers at the deadline.
pub async fn run(shared: SharedRef, shutdown: CancellationToken) {
    let settings = shared.config.daemon.clone();
    let mut active: HashMap<String, Active> = HashMap::new();
    let mut tasks: JoinSet<(TaskKey, DriveEnd)> = JoinSet::new();
    // Which run each task drives, to clean up after a task that panicked.
    let mut task_runs: HashMap<tokio::task::Id, TaskKey> = HashMap::new();
    // The runs' own view of shutdown, cancelled once this loop has stopped
    // claiming: they park at their next checkpoint.
    let park = CancellationToken::new();
    let mut draining_since: Option<Instant> = None;
    let mut name = shared
        .config
        .state_database
        .clone()
        .map(|dsn| NameLock::new(dsn, &shared.node));
    let mut warned_same_name = false;
    loop {
        shared.beat();
        if draining_since.is_none() && shutdown.is_cancelled() {
            info!(
                runs = active.len(),
                "shutting down: no new runs; stopping the active ones at a checkpoint"
            );
            park.cancel();
            draining_since = Some(Instant::now());
        }
        // Reap the runs that ended.
        while let Some(joined) = tasks.try_join_next_with_id() {
            reap(&shared, &mut active, &mut task_runs, joined).await;
        }
        if let Some(since) = draining_since {
            if active.is_empty() {
                break;
            }
            if since.elapsed() >= settings.shutdown_timeout {
                warn!(
                    runs = active.len(),
                    "shutdown timeout: stopping the remaining runs where they are; their leases expire and they resume from their last checkpoint"
                );
                tasks.abort_all();
                break;
            }
        }

        // Stop the runs whose lease ran out without renewal: another daemon
        // may hold them now. Stopping closes their target sessions (and with
        // them the target lock); whoever claims them next, this daemon
        // included, continues from the last checkpoint under a new epoch.
        let op_timeout = shared.op_timeout;
        let now = Instant::now();
        let mut stopped = 0;
        for a in active.values_mut() {
            if !a.let_go && now >= a.expires {
                a.let_go = true;
                let _ = a.handles.lost.send(true);
                stopped += 1;
            }
        }
        if stopped > 0 {
            warn!(
                runs = stopped,
                "leases expired without renewal; stopped driving those runs until they can be claimed again"
            );
            shared.runs_stopped(stopped);
        }

        // Renew leases; relay aborts; stop runs whose lease was taken. The
        // renewal must answer before the first lease runs out: a later answer
        // would come too late to keep driving anything.
        // The first thing this round could not do with the state database, if any.
        let mut failure: Option<String> = None;
        let held = active.values().filter(|a| !a.let_go);
        let leases: Vec<Lease> = held.clone().map(|a| a.lease.clone()).collect();
        let renew_started = Instant::now();
        let limit = held
            .map(|a| a.expires.saturating_duration_since(renew_started))
            .min()
            .unwrap_or(op_timeout)
            .min(op_timeout);
        let renewal = store::renew(&shared.pool, &leases, settings.lease_timeout);
        match bounded(&shared.pool, limit, "renewing leases", renewal).await {
            Ok(renewed) => {
                for r in renewed {
                    let Some(a) = active.get_mut(&r.run_id) else {
                        continue;
                    };
                    if r.finished {
                        // Finished under our lease; its task is about to be reaped.
                    } else if !r.held {
                        warn!(run_id = %r.run_id, "the lease was taken by another daemon");
                        a.let_go = true;
                        let _ = a.handles.lost.send(true);
                    } else {
                        a.expires = renew_started + settings.lease_timeout;
                        if r.abort_requested_by.is_some() && !*a.handles.abort.borrow() {
                            info!(run_id = %r.run_id, by = ?r.abort_requested_by, "abort requested");
                            let _ = a.handles.abort.send(true);
                        }
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, runs = leases.len(), "cannot renew leases; a run whose lease runs out is stopped");
                failure = Some(format!("cannot renew leases: {e}"));
            }
        }

        if draining_since.is_none() {
            let room = settings.max_active_runs as i64 - active.len() as i64;
            // Leases taken back or claimed below run from no earlier than now.
            let claim_started = Instant::now();
            let taken_back = match name.as_mut() {
                Some(name) => {
                    take_back_own(&shared, name, &mut warned_same_name, &active, room).await
                }
                None => Vec::new(),
            };
            let room = room - taken_back.len() as i64;
            let claim = store::claim(&shared.pool, &shared.node, settings.lease_timeout, room);
            let mut claimed = taken_back;
            match bounded(&shared.pool, op_timeout, "claiming runs", claim).await {
                Ok(mut more) => claimed.append(&mut more),
                Err(e) => {
                    warn!(error = %e, "cannot claim runs");
                    failure.get_or_insert(format!("cannot claim runs: {e}"));
                }
            }
            for c in claimed {
                let id = c.lease.run_id.clone();
                if let Some(old) = active.remove(&id) {
                    // Our own expired lease, reclaimed under a new epoch:
                    // the old task is fenced and stops.
                    let _ = old.handles.lost.send(true);
                }
                info!(run_id = %id, epoch = c.lease.epoch, previous_owner = ?c.previous_owner, "claimed run");
                let (handles, abort_rx, lost_rx) = worker::handles(c.abort_requested_by.is_some());
                active.insert(
                    id.clone(),
                    Active {
                        lease: c.lease.clone(),
                        handles,
                        expires: claim_started + settings.lease_timeout,
                        let_go: false,
                    },
                );
                let shared = shared.clone();
                let park = park.clone();
                let key = (id, c.lease.epoch);
                let task_key = key.clone();
                let handle = tasks.spawn(async move {
                    let end = worker::drive(shared, c, abort_rx, lost_rx, park).await;
                    (task_key, end)
                });
                task_runs.insert(handle.id(), key);
            }
            let seen = store::seen(&shared.pool, &shared.node);
            if let Err(e) = bounded(
                &shared.pool,
                op_timeout,
                "recording this daemon as alive",
                seen,
            )
            .await
            {
                warn!(error = %e, "state database unreachable");
                failure.get_or_insert(e.to_string());
            }
        }
        shared.scheduler_round(failure);

        let poll = if draining_since.is_some() {
            Duration::from_millis(100).min(settings.poll_interval)
        } else {
            settings.poll_interval
        };
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shared.wake.notified() => {}
            _ = shutdown.cancelled(), if draining_since.is_none() => {}
            Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                reap(&shared, &mut active, &mut task_runs, joined).await;
            }
        }
    }
    // Whatever is left was cut off at the timeout: let its leases go now so that a
    // replica (or the restart) picks the runs up without waiting for expiry.
    for a in active.values() {
        let release = store::release(&shared.pool, &a.lease);
        let _ = bounded(
            &shared.pool,
            shared.op_timeout,
            "releasing a lease",
            release,
        )
        .await;
    }
}

/// Runs leased to this daemon's name that no live process drives: taken back
/// at once when this process has just taken the name's lock (see
/// [`crate::daemon::name_lock`]). Nothing otherwise.
async fn take_back_own(
    shared: &SharedRef,
    name: &mut NameLock,
    warned_same_name: &mut bool,
    active: &HashMap<String, Active>,
    room: i64,
) -> Vec<store::Claimed> {
    match name.hold().await {
        Ok(Held::Kept) => Vec::new(),
        Ok(Held::Taken) => {
            *warned_same_name = false;
            // The undo worker takes back this name's undos on its next round.
            shared
                .name_taken
                .fetch_add(1, std::sync::atomic::Ordering::Release);
            shared.undo_wake.notify_one();
            let driving: Vec<String> = active.keys().cloned().collect();
            let lease_timeout = shared.config.daemon.lease_timeout;
            let take_back =
                store::take_back(&shared.pool, &shared.node, lease_timeout, &driving, room);
            match bounded(
                &shared.pool,
                shared.op_timeout,
                "taking back this name's runs",
                take_back,
            )
            .await
            {
                Ok(runs) => {
                    if !runs.is_empty() {
                        info!(
                            runs = runs.len(),
                            "taking back the runs a previous process of this name left leased"
                        );
                    }
                    runs
                }
                Err(e) => {
                    warn!(error = %e, "cannot take back this name's runs; they resume when their leases expire");
                    Vec::new()
                }
            }
        }
        Ok(Held::Elsewhere) => {
            if !*warned_same_name {
                *warned_same_name = true;
                warn!(
                    node = %shared.node,
                    "another live process uses this daemon name: its runs are taken over only when their leases expire (give each daemon its own daemon.name)"
                );
            }
            Vec::new()
        }
        Err(e) => {
            warn!(error = %e, "cannot take the daemon name's lock");
            Vec::new()
        }
    }
}

/// A run's task ended: forget it (only if no newer task drives the run), give
/// back the lease of a run parked for shutdown, and end a run whose task
/// panicked as needing a human, rather than leaving it leased and stuck.
async fn reap(
    shared: &SharedRef,
    active: &mut HashMap<String, Active>,
    task_runs: &mut HashMap<tokio::task::Id, TaskKey>,
    joined: Result<(tokio::task::Id, (TaskKey, DriveEnd)), tokio::task::JoinError>,
) {
    let (key, end) = match joined {
        Ok((task, (key, end))) => {
            task_runs.remove(&task);
            (key, Some(end))
        }
        Err(e) => match task_runs.remove(&e.id()) {
            Some(key) => {
                error!(run_id = %key.0, error = %e, "the task driving the run failed");
                (key, None)
            }
            None => return,
        },
    };
    let (run_id, epoch) = key;
    let Some(a) = active.get(&run_id).filter(|a| a.lease.epoch == epoch) else {
        return;
    };
    let lease = a.lease.clone();
    active.remove(&run_id);
    match end {
        Some(DriveEnd::Parked) => {
            let release = store::release(&shared.pool, &lease);
            let released = bounded(
                &shared.pool,
                shared.op_timeout,
                "releasing a lease",
                release,
            );
            if let Err(e) = released.await {
                warn!(run_id = %run_id, error = %e, "cannot release the lease; it will expire");
            }
        }
        Some(_) => {}
        None => {
            if let Err(e) = worker::fail(shared, &lease).await {
                warn!(run_id = %run_id, error = %e, "cannot record the failed run; its lease will expire");
            }
        }
    }
    shared.metrics.forget_run(&run_id);
}
