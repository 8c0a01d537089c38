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

impl StepContext<'_> {
    pub fn emit(&self, step: Step, kind: EventKind) {
        self.events.emit(Some(step), kind);
    }

    pub fn aborted(&self) -> bool {
        *self.abort.borrow()
    }

    /// Sleep for `d`, waking early (and returning false) if the run is aborted.
    pub async fn sleep(&self, d: std::time::Duration) -> bool {
        let mut abort = self.abort.clone();
        if *abort.borrow() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = abort.wait_for(|a| *a) => false,
        }
    }
}
