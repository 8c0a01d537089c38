//! Taking the per-target lock: once before the change (see
//! [`crate::run::prepare`]), and again, patiently, when a run that has changed
//! the target must go on after its lock session was lost or its process died.

use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::pg::TargetLock;
use crate::pg::lock::LockError;
use crate::run::event::{EventKind, Step};
use crate::run::lifecycle::Input;
use crate::run::runner::{Phase, Runner};

/// Retrying the lock of a run that must go on, while the target comes back.
const RELOCK_RETRY: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));

impl Runner<'_> {
    /// One attempt at the lock (polling up to `acquire_timeout`), with its events.
    pub(crate) async fn try_lock(&self) -> Result<TargetLock, LockError> {
        let plan = self.ctx.plan;
        let started = Instant::now();
        let application_name = format!("pgshepherd run {}", self.ctx.run_id);
        let lock = TargetLock::acquire(
            self.ctx.dsn,
            &application_name,
            plan.lock.acquire_timeout,
            |holder| {
                self.ctx.emit(
                    Step::Lock,
                    EventKind::LockBusy {
                        holder: holder.clone(),
                    },
                )
            },
        )
        .await?;
        self.ctx.emit(
            Step::Lock,
            EventKind::LockAcquired {
                waited_ms: started.elapsed().as_millis() as u64,
            },
        );
        Ok(lock)
    }

    /// The target restarted underneath the run (its lock session is gone), or
    /// the network path to it went silent (the session no longer answers): take
    /// the lock again before changing anything more.
    pub(crate) async fn relock(&mut self, lock: TargetLock) -> Phase<TargetLock> {
        if lock.answers().await {
            return Ok(lock);
        }
        drop(lock);
        self.ctx
            .events
            .progress("  the target's lock session was lost; taking the lock again");
        self.lock_patiently().await
    }

    /// Take the lock for a run that has changed the target and must go on: the
    /// target may be restarting, or a dead process's session may still hold it.
    pub(crate) async fn lock_patiently(&mut self) -> Phase<TargetLock> {
        // A session of this same run left by a process that lost it (killed
        // host, expired lease) may still hold the lock or run a statement. This
        // process owns the run now, so that session is stale: end it.
        self.end_stale_sessions().await;
        // The target may still be coming back: retry with backoff for a while.
        let give_up = self
            .ctx
            .plan
            .lock
            .acquire_timeout
            .max(Duration::from_secs(60));
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            match self.try_lock().await {
                Ok(lock) => return Ok(lock),
                Err(e) if started.elapsed() > give_up || e.is_pooler() => {
                    let reason =
                        format!("cannot take the target lock again to continue the run: {e}");
                    return Err(self
                        .end(Input::Failure {
                            reason,
                            invalid_input: false,
                        })
                        .await);
                }
                Err(_) => tokio::time::sleep(RELOCK_RETRY.delay(attempt)).await,
            }
        }
    }

    /// Terminate the target sessions named after this run (`pgshepherd run ID`)
    /// that are not ours (see [`crate::pg::lock::end_stale_sessions`]).
    async fn end_stale_sessions(&self) {
        let name = format!("pgshepherd run {}", self.ctx.run_id);
        let ended = crate::pg::lock::end_stale_sessions(self.ctx.dsn, &name).await;
        if ended > 0 {
            self.ctx.events.progress(&format!(
                "  ended {ended} stale session(s) of this run left by a previous owner"
            ));
        }
    }
}
