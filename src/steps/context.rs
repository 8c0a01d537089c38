//! What every step of a run needs: the plan, the target, the event emitter and the
//! operator's abort signal.

use std::path::PathBuf;

use tokio::sync::watch;

use crate::pg::Dsn;
use crate::pg::cluster::PgBinaries;
use crate::plan::Plan;
use crate::run::event::{EventKind, Step};
use crate::run::journal::Emitter;

pub struct StepContext<'a> {
    pub plan: &'a Plan,
    pub dsn: &'a Dsn,
    pub target: String,
    pub run_id: &'a str,
    pub backup_dir: PathBuf,
    pub bins: Option<&'a PgBinaries>,
    pub events: &'a Emitter,
    /// Becomes `true` when the operator asks the run to stop (Ctrl-C, SIGTERM).
    pub abort: watch::Receiver<bool>,
}

impl<'a> StepContext<'a> {
    pub fn emit(&self, step: Step, kind: EventKind) {
        self.events.emit(Some(step), kind);
    }

    pub fn aborted(&self) -> bool {
        *self.abort.borrow()
    }

    /// Resolves when the operator asks the run to stop; never, if the signal's
    /// sender is gone (a dropped sender is not a request).
    pub async fn abort_requested(&self) {
        let mut abort = self.abort.clone();
        if abort.wait_for(|a| *a).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The same context, deaf to stop requests: a rollback and its confirmation
    /// always run to the end once started.
    pub fn without_abort(&self) -> StepContext<'a> {
        StepContext {
            target: self.target.clone(),
            backup_dir: self.backup_dir.clone(),
            abort: watch::channel(false).1,
            ..*self
        }
    }

    /// Sleep for `d`, waking early (and returning false) if the run is aborted.
    pub async fn sleep(&self, d: std::time::Duration) -> bool {
        if self.aborted() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.abort_requested() => false,
        }
    }
}
