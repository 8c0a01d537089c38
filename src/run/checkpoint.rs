//! What a run persists so that another process can continue it: the state plus
//! the facts established on the way (the versions it started from, the check
//! baselines, the verified backup, the EXPLAIN gate's plans).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::run::event::Event;
use crate::run::state::RunState;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunFacts {
    /// Versions applied on the target when the run took its lock: what a rollback
    /// must return to. Absent until the lock is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting: Option<Vec<i64>>,
    /// Each soak check's baseline, in plan order; absent until measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baselines: Option<Vec<Option<f64>>>,
    /// The manifest of the backup this run took and verified. Only a verified
    /// backup is ever recorded here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_manifest: Option<PathBuf>,
    /// Rows this run's migrations wrote, per table, summed: what a restore
    /// rollback does not count as users' writes it discarded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migration_writes: Vec<crate::steps::backup::TableWrites>,
    /// The EXPLAIN gate's plans from before the change (one per query, taken
    /// with the baselines): what the plans after the change are judged against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub explain_before: Vec<crate::checks::explain::Measurement>,
    /// The EXPLAIN gate's verdicts, once the migrations are in: both plans,
    /// costs, times and ratios per query (how much faster the query became).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub explain: Vec<crate::checks::explain::ExplainResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub state: RunState,
    #[serde(default)]
    pub facts: RunFacts,
}

impl Checkpoint {
    pub fn new() -> Checkpoint {
        Checkpoint {
            state: RunState::Created,
            facts: RunFacts::default(),
        }
    }

    /// The checkpoint of a run the daemon accepted: waiting for its
    /// rehearsal when the plan requires one, else new.
    pub fn submitted(rehearsal_required: bool) -> Checkpoint {
        Checkpoint {
            state: if rehearsal_required {
                RunState::Rehearsing
            } else {
                RunState::Created
            },
            facts: RunFacts::default(),
        }
    }
}

impl Default for Checkpoint {
    fn default() -> Self {
        Checkpoint::new()
    }
}

/// Where a daemon-driven run's events and checkpoints go (the state database).
///
/// `event` must not block: it queues. `save` resolves once the checkpoint, and
/// every event queued before it, is durable; it never resolves if this process
/// has lost the run (another daemon took it over), so nothing after the
/// checkpoint can run on a stale lease.
pub trait RunSink: Send + Sync {
    fn event(&self, event: &Event);
    fn save(&self, checkpoint: Checkpoint) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}
