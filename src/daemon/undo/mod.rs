//! Undos through the daemon (`POST /v1/runs/{id}/undo`, `pgshepherd undo RUN`):
//! giving back the rows a finished run's migrations changed, as a change to the
//! target like a run: approved per the run's plan, queued with the target's
//! runs, run under the target's lock, announced on the run's channels, and
//! recorded in the run's events.
//!
//! - [`lifecycle`]: an undo's phases and the one function that changes them.
//! - [`store`]: the `undos` table: request, approve, cancel, claim, finish.
//! - [`worker`]: claims ready undos and runs them under a lease.

pub mod lifecycle;
pub mod store;
pub mod worker;
