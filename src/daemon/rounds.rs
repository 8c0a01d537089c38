//! The loop shape of the daemon's background workers that claim leased work
//! (undos, rehearsals): claim, start each in a tracked task, wait for the next
//! round; at shutdown, give the tasks a bounded time to stop.

use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Wait for the next round: `poll` passed, or `wake` was notified (new work
/// was submitted). False once `shutdown` is given.
pub async fn next_round(poll: Duration, wake: &Notify, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(poll) => true,
        _ = wake.notified() => true,
        _ = shutdown.cancelled() => false,
    }
}

/// Close `tasks` and wait up to `timeout` for them to finish; past it, warn
/// with `unfinished` (what happens to the work they leave).
pub async fn drain(tasks: TaskTracker, timeout: Duration, unfinished: &str) {
    tasks.close();
    if tokio::time::timeout(timeout, tasks.wait()).await.is_err() {
        tracing::warn!("shutdown timeout: {unfinished}");
    }
}
