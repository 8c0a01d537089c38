//! The run's persisted state. Which state follows which is decided in one place,
//! [`crate::run::lifecycle::transition`]; the state is persisted (by
//! [`crate::run::driver::Lifecycle`]) before each side effect.

use serde::{Deserialize, Serialize};

use crate::run::event::Outcome;
use crate::steps::soak::SoakProgress;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunState {
    /// Submitted to the daemon with `rehearsal: required`: the pending
    /// migrations must first be proved on a scratch copy (up, down, up, catalog
    /// compared). Not started, running, or to be redone after a restart: the
    /// rehearsal's own progress is not persisted, only its result.
    Rehearsing,
    /// The rehearsal found differences, or could not be completed: the run can
    /// only be aborted (fix the change, submit it again).
    RehearsalFailed {
        reason: String,
    },
    Created,
    WaitingForWindow,
    Locking,
    MeasuringBaseline,
    BackingUp,
    /// `applied`: versions this run has applied so far (what a rollback undoes).
    Migrating {
        applied: Vec<i64>,
    },
    /// `progress`: the soak's position and every check's counts after the last
    /// sample tick (absent until the first).
    Soaking {
        applied: Vec<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        progress: Option<Box<SoakProgress>>,
    },
    RollingBack {
        applied: Vec<i64>,
        cause: String,
    },
    Confirming {
        cause: String,
    },
    Finished {
        outcome: Outcome,
        reason: Option<String>,
    },
}

impl RunState {
    pub fn name(&self) -> &'static str {
        match self {
            RunState::Rehearsing => "rehearsing",
            RunState::RehearsalFailed { .. } => "rehearsal_failed",
            RunState::Created => "created",
            RunState::WaitingForWindow => "waiting_for_window",
            RunState::Locking => "locking",
            RunState::MeasuringBaseline => "measuring_baseline",
            RunState::BackingUp => "backing_up",
            RunState::Migrating { .. } => "migrating",
            RunState::Soaking { .. } => "soaking",
            RunState::RollingBack { .. } => "rolling_back",
            RunState::Confirming { .. } => "confirming",
            RunState::Finished { .. } => "finished",
        }
    }

    /// True until the first migration statement may have run: a run stopped here
    /// left the target exactly as it was.
    pub fn before_change(&self) -> bool {
        matches!(
            self,
            RunState::Rehearsing
                | RunState::RehearsalFailed { .. }
                | RunState::Created
                | RunState::WaitingForWindow
                | RunState::Locking
                | RunState::MeasuringBaseline
                | RunState::BackingUp
        )
    }

    /// The versions this run has on the target, in the states that track them.
    pub fn applied(&self) -> Option<&[i64]> {
        match self {
            RunState::Migrating { applied }
            | RunState::Soaking { applied, .. }
            | RunState::RollingBack { applied, .. } => Some(applied),
            _ => None,
        }
    }

    /// Why the run is being rolled back.
    pub fn cause(&self) -> Option<&str> {
        match self {
            RunState::RollingBack { cause, .. } | RunState::Confirming { cause } => Some(cause),
            _ => None,
        }
    }

    /// Where the soak stands, once it has sampled.
    pub fn soak_progress(&self) -> Option<&SoakProgress> {
        match self {
            RunState::Soaking {
                progress: Some(p), ..
            } => Some(p),
            _ => None,
        }
    }

    /// A run no process has started yet.
    pub fn is_new(&self) -> bool {
        matches!(self, RunState::Created)
    }

    /// How the run ended, once it has.
    pub fn outcome(&self) -> Option<(Outcome, Option<&str>)> {
        match self {
            RunState::Finished { outcome, reason } => Some((*outcome, reason.as_deref())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_json() {
        let s = RunState::RollingBack {
            applied: vec![1, 2],
            cause: "x".into(),
        };
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"state\":\"rolling_back\""));
        assert_eq!(serde_json::from_str::<RunState>(&text).unwrap(), s);
    }
}
