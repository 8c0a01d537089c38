//! Deadlines on the state database.
//!
//! A network path that goes silent without a reset (a firewall or NAT that forgets
//! the connection) leaves a TCP connection that neither answers nor fails: a query
//! sent on it waits forever. Every operation the daemon depends on (renewing its
//! leases, claiming runs, writing a run's events and checkpoints, claiming and
//! recording notifications, `/healthz`) therefore runs under a deadline, and an
//! operation that missed it closes the pool's idle connections with it:
//! - the connection it was using is returned to the pool when its future is
//!   dropped, with the unanswered query still queued on it; handed out again, it
//!   would stall its next user too. A silent path usually silences every
//!   connection over it, so the idle ones go as well; new ones are opened on
//!   demand (and fail or succeed on their own, under the connect timeout).
//! - on the server, the session it leaves behind ends by itself:
//!   `statement_timeout` and `idle_in_transaction_session_timeout` are set on
//!   every pooled connection (see [`crate::daemon::store::open`]), so the row
//!   locks of a transaction cut off mid-way do not outlive it.

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::Pool;

use crate::daemon::store::StoreError;

/// The deadline of one state-database operation, from the lease timeout: a
/// third of it (at least 1 s, at most 10 s), so that a renewal that found a dead
/// connection still has time for a second attempt on a fresh one before the
/// leases expire.
pub fn op_timeout(lease_timeout: Duration) -> Duration {
    (lease_timeout / 3).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// `operation` (which takes its connections from `pool`) within `limit`. On
/// timeout the operation is dropped, the pool's idle connections are closed (see
/// the module comment) and [`StoreError::Deadline`] names `what` was cut off.
pub async fn bounded<T, E>(
    pool: &Pool,
    limit: Duration,
    what: &'static str,
    operation: impl Future<Output = Result<T, E>>,
) -> Result<T, E>
where
    E: From<StoreError>,
{
    match tokio::time::timeout(limit, operation).await {
        Ok(result) => result,
        Err(_) => {
            // The operation's future has been dropped by now, so its connection
            // is back among the idle ones: close them all.
            pool.retain(|_, _| false);
            Err(StoreError::Deadline { what, after: limit }.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_is_a_third_of_the_lease_within_bounds() {
        assert_eq!(op_timeout(Duration::from_secs(15)), Duration::from_secs(5));
        assert_eq!(op_timeout(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(op_timeout(Duration::from_secs(60)), Duration::from_secs(10));
    }
}
