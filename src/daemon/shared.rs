//! What the API, the scheduler and the workers of one daemon share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::Config;
use crate::daemon::metrics::Metrics;
use crate::notify::outbox::Outbox;

pub struct Shared {
    pub config: Config,
    /// The state database.
    pub pool: deadpool_postgres::Pool,
    /// This daemon's name in leases, logs and `GET /v1/runs/{id}` (`owner`).
    pub node: String,
    pub metrics: Metrics,
    /// Poked by the API after a submit, approve or abort so the scheduler looks
    /// at once instead of at its next poll.
    pub wake: Notify,
    /// Poked by the API after an undo is asked for or approved, so the undo
    /// worker looks at once (a `Notify` of its own: `notify_one` wakes one
    /// waiter, and the scheduler waits on `wake`).
    pub undo_wake: Notify,
    /// Poked by the API after a submission to be rehearsed, so the rehearsal
    /// worker looks at once.
    pub rehearsal_wake: Notify,
    /// How many times the scheduler has taken this daemon name's lock (see
    /// [`crate::daemon::name_lock`]): each time, the work leased to the name
    /// by a previous process is taken back at once, the undos too.
    pub name_taken: AtomicU64,
    /// When the scheduler loop last went round (ms since the Unix epoch): the
    /// systemd watchdog is fed only while it keeps turning.
    pub scheduler_beat: AtomicU64,
    /// Notifications: the delivery workers' view of the config and their wake-up.
    pub outbox: Arc<Outbox>,
    /// The web page's signed-in sessions (in memory only).
    pub web: crate::web::session::Sessions,
    /// The open audit rows of unauthenticated requests, by source address.
    pub unauthenticated: crate::daemon::api::audit::Unauthenticated,
    /// The deadline of one state-database operation
    /// ([`crate::daemon::deadline::op_timeout`]).
    pub op_timeout: Duration,
    /// What the scheduler's last round with the state database found, for
    /// `/healthz`.
    pub scheduler_view: Mutex<SchedulerView>,
}

/// The scheduler's standing with the state database.
#[derive(Debug, Default, Clone)]
pub struct SchedulerView {
    /// Since when its rounds (renew, claim) have been failing; `None` while
    /// they succeed.
    pub failing_since: Option<Instant>,
    pub last_error: Option<String>,
    /// Runs it stopped driving because it could not renew their leases in
    /// time, during the current failure.
    pub runs_stopped: usize,
}

impl Shared {
    pub fn new(config: Config, pool: deadpool_postgres::Pool, node: String) -> Shared {
        let op_timeout = crate::daemon::deadline::op_timeout(config.daemon.lease_timeout);
        let outbox = Arc::new(Outbox::new(
            config.notify.clone(),
            pool.clone(),
            node.clone(),
            op_timeout,
        ));
        Shared {
            outbox,
            config,
            pool,
            node,
            metrics: Metrics::new(),
            wake: Notify::new(),
            undo_wake: Notify::new(),
            rehearsal_wake: Notify::new(),
            name_taken: AtomicU64::new(0),
            scheduler_beat: AtomicU64::new(now_ms()),
            web: Default::default(),
            unauthenticated: Default::default(),
            op_timeout,
            scheduler_view: Mutex::new(SchedulerView::default()),
        }
    }

    /// The scheduler's standing with the state database.
    pub fn scheduler_view(&self) -> SchedulerView {
        self.scheduler_view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A scheduler round reached the state database (`None`) or failed with
    /// this error.
    pub fn scheduler_round(&self, failure: Option<String>) {
        let mut view = self
            .scheduler_view
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match failure {
            None => *view = SchedulerView::default(),
            Some(e) => {
                view.failing_since.get_or_insert_with(Instant::now);
                view.last_error = Some(e);
            }
        }
    }

    /// The scheduler stopped driving `n` runs whose leases it could not renew.
    pub fn runs_stopped(&self, n: usize) {
        let mut view = self
            .scheduler_view
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        view.runs_stopped += n;
    }

    pub fn beat(&self) {
        self.scheduler_beat.store(now_ms(), Ordering::Relaxed);
    }

    /// The scheduler went round within `within`.
    pub fn scheduler_alive(&self, within: std::time::Duration) -> bool {
        now_ms().saturating_sub(self.scheduler_beat.load(Ordering::Relaxed))
            <= within.as_millis() as u64
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub type SharedRef = Arc<Shared>;
