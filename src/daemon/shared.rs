//! What the API, the scheduler and the workers of one daemon share.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// When the scheduler loop last went round (ms since the Unix epoch): the
    /// systemd watchdog is fed only while it keeps turning.
    pub scheduler_beat: AtomicU64,
    /// Notifications: the delivery workers' view of the config and their wake-up.
    pub outbox: Arc<Outbox>,
    /// The open audit rows of unauthenticated requests, by source address.
    pub unauthenticated: crate::daemon::api::audit::Unauthenticated,
}

impl Shared {
    pub fn new(config: Config, pool: deadpool_postgres::Pool, node: String) -> Shared {
        let outbox = Arc::new(Outbox::new(
            config.notify.clone(),
            pool.clone(),
            node.clone(),
        ));
        Shared {
            outbox,
            config,
            pool,
            node,
            metrics: Metrics::new(),
            wake: Notify::new(),
            scheduler_beat: AtomicU64::new(now_ms()),
            unauthenticated: Default::default(),
        }
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
