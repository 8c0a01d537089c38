//! What the API, the scheduler and the workers of one daemon share.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::Config;
use crate::daemon::metrics::Metrics;

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
}

pub type SharedRef = Arc<Shared>;
