//! Drives one claimed run: rebuilds its plan from the stored bundle, and runs
//! it from its persisted checkpoint with events and checkpoints going to the
//! state database under the run's lease.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use crate::backoff::Backoff;
use crate::daemon::api::bundle::Bundle;
use crate::daemon::deadline::bounded;
use crate::daemon::shared::SharedRef;
use crate::daemon::store::{self, Claimed, Lease, WriteError};
use crate::notify::notices;
use crate::notify::progress::Progress;
use crate::pg::cluster::PgBinaries;
use crate::plan::RollbackStrategy;
use crate::run::checkpoint::{Checkpoint, RunSink};
use crate::run::driver::{self, Lifecycle};
use crate::run::event::{Event, EventKind, Outcome};
use crate::run::journal::Emitter;
use crate::run::lifecycle::{Input, Rules};
use crate::run::{RunOptions, Runner};

/// How driving a run ended in this daemon.
#[derive(Debug)]
pub enum DriveEnd {
    Finished(Outcome),
    /// Another daemon holds the run now; this one stopped touching it.
    Lost,
    /// Shutting down: the run stopped at a checkpoint (or at a point where
    /// stopping loses nothing); its lease should be released.
    Parked,
}

/// Why a claimed run cannot be driven by this daemon.
#[derive(Debug, thiserror::Error)]
enum CannotDrive {
    #[error("{0}")]
    Checkpoint(serde_json::Error),
    #[error("{0}")]
    Bundle(serde_json::Error),
    /// The plan's diagnostics, already rendered with their locations.
    #[error("{0}")]
    Plan(String),
    #[error("target {0:?} is not defined in the daemon's config any more")]
    TargetGone(String),
}

/// Controls the scheduler keeps for a run it drives.
pub struct Handles {
    pub abort: watch::Sender<bool>,
    pub lost: watch::Sender<bool>,
}

pub fn handles(aborted: bool) -> (Handles, watch::Receiver<bool>, watch::Receiver<bool>) {
    let (abort, abort_rx) = watch::channel(aborted);
    let (lost, lost_rx) = watch::channel(false);
    (Handles { abort, lost }, abort_rx, lost_rx)
}

pub async fn drive(
    shared: SharedRef,
    claimed: Claimed,
    abort: watch::Receiver<bool>,
    lost: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> DriveEnd {
    let span = tracing::info_span!("run", run_id = %claimed.lease.run_id, target = %claimed.target);
    drive_inner(shared, claimed, abort, lost, shutdown)
        .instrument(span)
        .await
}

async fn drive_inner(
    shared: SharedRef,
    claimed: Claimed,
    abort: watch::Receiver<bool>,
    mut lost: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> DriveEnd {
    let lease = claimed.lease.clone();
    let (sink, writer) = DbSink::start(
        shared.clone(),
        lease.clone(),
        shutdown.clone(),
        lost.clone(),
    );
    let writer_lost = sink.lost.clone();
    let target = claimed.target.clone();
    let metrics_shared = shared.clone();
    let events = Emitter::new(&lease.run_id, None, false, false)
        .with_sink(sink.clone())
        .observe(Box::new(move |event: &Event| {
            metrics_shared.metrics.observe_event(&target, event);
            log_event(event);
        }));

    let prepared = (|| -> Result<_, CannotDrive> {
        let cp: Checkpoint =
            serde_json::from_value(claimed.checkpoint.clone()).map_err(CannotDrive::Checkpoint)?;
        let bundle: Bundle =
            serde_json::from_value(claimed.bundle.clone()).map_err(CannotDrive::Bundle)?;
        let plan = bundle
            .compile()
            .map_err(|d| CannotDrive::Plan(d.to_string()))?;
        let dsn = shared
            .config
            .targets
            .get(&claimed.target)
            .cloned()
            .ok_or_else(|| CannotDrive::TargetGone(claimed.target.clone()))?;
        Ok((cp, plan, dsn))
    })();
    let (cp, plan, dsn) = match prepared {
        Ok(x) => x,
        Err(e) => {
            let reason = e.to_string();
            warn!(%reason, "cannot drive the run");
            return give_up(&events, &claimed, reason).await;
        }
    };
    let events = events.with_facts(cp.facts.clone());
    let detail = match (&claimed.previous_owner, &cp.state) {
        (_, state) if state.is_new() => "starting".to_string(),
        (Some(prev), _) if prev != &lease.owner => {
            format!("taken over from {prev}; continuing from the last checkpoint")
        }
        _ => "restarted; continuing from the last checkpoint".to_string(),
    };
    events.emit(
        None,
        EventKind::RunResumed {
            owner: lease.owner.clone(),
            epoch: lease.epoch,
            from_state: cp.state.name().to_string(),
            detail,
        },
    );
    info!(
        state = cp.state.name(),
        epoch = lease.epoch,
        "driving the run"
    );

    let backup_dir = backup_dir(&shared);
    let bins = PgBinaries::locate_client().ok();
    let opts = RunOptions {
        target: claimed.target.clone(),
        backup_dir,
        now: false,
        dry_run: false,
    };
    let runner = Runner::new(&plan, &dsn, bins.as_ref(), opts, &events, abort);
    let mut parked = sink.parked.subscribe();
    let mut writer_lost_rx = writer_lost.subscribe();
    let end = tokio::select! {
        finished = runner.resume(cp) => DriveEnd::Finished(finished.outcome),
        _ = lost.wait_for(|l| *l) => DriveEnd::Lost,
        _ = writer_lost_rx.wait_for(|l| *l) => DriveEnd::Lost,
        _ = parked.wait_for(|p| *p) => DriveEnd::Parked,
        // At shutdown, a run whose current step only waits or reads (a window,
        // the lock, a soak between checkpoints) stops at once: its last
        // checkpoint already says everything a restart needs.
        _ = async {
            shutdown.cancelled().await;
            loop {
                if sink.idle_safe() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } => DriveEnd::Parked,
    };
    // Let queued events reach the database before the task ends.
    drop(events);
    drop(sink);
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    shared.metrics.forget_run(&lease.run_id);
    match &end {
        DriveEnd::Finished(outcome) => info!(outcome = outcome.as_str(), "run finished"),
        DriveEnd::Lost => warn!(
            "lost the run's lease (taken by another daemon, or not renewed in time); stopped driving it"
        ),
        DriveEnd::Parked => info!("stopped at a checkpoint for shutdown"),
    }
    end
}

/// Where this daemon keeps backups, and under `journal/` the conflicts files of
/// rollbacks' and undos' give-backs.
pub fn backup_dir(shared: &SharedRef) -> PathBuf {
    shared
        .config
        .backup_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("pgshepherd-backups"))
}

/// A run that cannot be driven (its bundle no longer compiles, its target is
/// gone from the config) ends here with the reason, never silently: stopped
/// (invalid input) if it had not changed the target, else needing a human.
async fn give_up(events: &Emitter, claimed: &Claimed, reason: String) -> DriveEnd {
    let reason = format!("cannot continue: {reason}");
    let checkpoint = serde_json::from_value::<Checkpoint>(claimed.checkpoint.clone());
    let outcome = match checkpoint {
        Ok(cp) => {
            // The plan could not be read; a failure does not depend on its rules.
            let rules = Rules {
                strategy: RollbackStrategy::Hold,
            };
            let life = Lifecycle::new(events, rules, cp.state);
            let input = Input::Failure {
                reason,
                invalid_input: true,
            };
            match life.apply(input).await {
                Err(finished) => finished.outcome,
                Ok(_) => Outcome::NeedsHuman,
            }
        }
        // A checkpoint this build cannot read (written by a newer one?) may
        // describe a changed target: never report that as untouched.
        Err(_) => driver::crash(events, reason).await.outcome,
    };
    DriveEnd::Finished(outcome)
}

/// A run event as a log line: the words as the message, the event's own fields
/// (as in `--json` and the API) under `detail`; `run_id` and `target` come from
/// the run's span.
fn log_event(event: &Event) {
    let step = event.step.map(|s| format!("{s:?}").to_lowercase());
    let name = event.kind.name();
    let text = crate::run::render::text(event);
    let detail = match serde_json::to_value(&event.kind) {
        Ok(serde_json::Value::Object(mut fields)) => {
            // The name is the line's `event` field already.
            fields.remove("event");
            serde_json::Value::Object(fields).to_string()
        }
        _ => String::new(),
    };
    match &event.kind {
        EventKind::CheckSample { .. } => {
            tracing::debug!(step = step.as_deref(), event = name, detail, "{text}")
        }
        _ => tracing::info!(step = step.as_deref(), event = name, detail, "{text}"),
    }
}

enum Msg {
    Event(Box<Event>),
    Save(Box<Checkpoint>, oneshot::Sender<()>),
}

/// The state database as a [`RunSink`]: events are queued to a writer task and
/// written in order; a checkpoint resolves once it (and every event before it)
/// is committed under the run's lease.
pub struct DbSink {
    tx: mpsc::UnboundedSender<Msg>,
    shutdown: CancellationToken,
    /// Set when, during shutdown, a checkpoint was written and the run was held
    /// there.
    parked: watch::Sender<bool>,
    /// Set when a write found the lease superseded.
    lost: watch::Sender<bool>,
    /// The state of the last checkpoint handed to the sink.
    last_state: Mutex<&'static str>,
}

impl DbSink {
    fn start(
        shared: SharedRef,
        lease: Lease,
        shutdown: CancellationToken,
        let_go: watch::Receiver<bool>,
    ) -> (Arc<DbSink>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = Arc::new(DbSink {
            tx,
            shutdown,
            parked: watch::channel(false).0,
            lost: watch::channel(false).0,
            last_state: Mutex::new("created"),
        });
        let lost = sink.lost.clone();
        let writer = tokio::spawn(write_loop(shared, lease, rx, lost, let_go));
        (sink, writer)
    }

    /// Whether stopping the run right now loses nothing: its current state only
    /// waits or reads, and its last checkpoint says how to continue.
    fn idle_safe(&self) -> bool {
        matches!(
            *self.last_state.lock().unwrap_or_else(|e| e.into_inner()),
            "created" | "waiting_for_window" | "locking" | "measuring_baseline" | "soaking"
        )
    }
}

impl RunSink for DbSink {
    fn event(&self, event: &Event) {
        let _ = self.tx.send(Msg::Event(Box::new(event.clone())));
    }

    fn save(
        &self,
        checkpoint: Checkpoint,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        *self.last_state.lock().unwrap_or_else(|e| e.into_inner()) = checkpoint.state.name();
        let finished = checkpoint.state.outcome().is_some();
        let (done, written) = oneshot::channel();
        let queued = self.tx.send(Msg::Save(Box::new(checkpoint), done)).is_ok();
        Box::pin(async move {
            if !queued || written.await.is_err() {
                // Fenced or shut down: nothing after this checkpoint may run.
                std::future::pending::<()>().await;
            }
            if self.shutdown.is_cancelled() && !finished {
                // Shutting down: the state is durable; hold the run here.
                let _ = self.parked.send(true);
                std::future::pending::<()>().await;
            }
        })
    }
}

/// The state database is away: the runs' writers retry on this schedule
/// (jittered, so hundreds of runs do not hit it together when it is back).
const WRITE_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

async fn write_loop(
    shared: SharedRef,
    lease: Lease,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    lost: watch::Sender<bool>,
    mut let_go: watch::Receiver<bool>,
) {
    let mut progress = Progress::new(
        shared
            .config
            .notify
            .channels
            .values()
            .filter_map(|c| c.progress_every.map(|every| (c.name.clone(), every)))
            .collect(),
    );
    while let Some(first) = rx.recv().await {
        let mut events = Vec::new();
        let mut checkpoint = None;
        let mut replies = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Event(e) => events.push(*e),
                Msg::Save(cp, reply) => {
                    checkpoint = Some(*cp);
                    replies.push(reply);
                }
            }
            if events.len() < 1000 {
                next = rx.try_recv().ok();
            }
        }
        let mut attempt = 0;
        loop {
            // The scheduler let the run go (its lease ran out unrenewed): what
            // is still queued happened after the last write that could be
            // fenced, and is not recorded.
            if *let_go.borrow() {
                return;
            }
            let write = store::write(
                &shared.pool,
                &lease,
                &events,
                checkpoint.as_ref(),
                &shared.config.notify,
                Some(&mut progress),
            );
            let written = bounded(
                &shared.pool,
                shared.op_timeout,
                "writing the run's state",
                write,
            );
            match written.await {
                Ok(()) => {
                    let progressed = progress.take_enqueued();
                    if progressed || events.iter().any(|e| notices::is_notable(&e.kind)) {
                        shared.outbox.poke();
                    }
                    break;
                }
                Err(WriteError::Fenced { .. }) => {
                    let _ = lost.send(true);
                    return;
                }
                Err(WriteError::Store(e)) => {
                    // The state database is away: the run waits at its next
                    // checkpoint until it is back (or the lease is lost).
                    attempt += 1;
                    let wait = WRITE_RETRY.delay(attempt);
                    warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot write the run's state; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = let_go.wait_for(|l| *l) => {}
                    }
                }
            }
        }
        for reply in replies {
            let _ = reply.send(());
        }
    }
}

/// The task driving a run failed (a bug): end the run as needing a human, under
/// its lease, so that it neither blocks its target nor fails again on every
/// claim. Whether the target was changed is for a person to look at.
pub async fn fail(shared: &SharedRef, lease: &Lease) -> Result<(), WriteError> {
    let reason = "pgshepherd failed internally while driving this run; inspect the target and its events, then finish or undo the change by hand".to_string();
    let (event, checkpoint) = driver::crashed(&lease.run_id, reason);
    let events = [event];
    let write = store::write(
        &shared.pool,
        lease,
        &events,
        Some(&checkpoint),
        &shared.config.notify,
        None,
    );
    let written = bounded(
        &shared.pool,
        shared.op_timeout,
        "recording the failed run",
        write,
    )
    .await;
    shared.outbox.poke();
    written
}
