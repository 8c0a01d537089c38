//! The run state machine. The state is persisted before each side effect and all
//! transitions go through [`RunState::advance`], which refuses illegal ones.

use serde::{Deserialize, Serialize};

use crate::run::event::Outcome;
use crate::steps::soak::SoakProgress;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunState {
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

#[derive(Debug, thiserror::Error)]
#[error("illegal run transition from {from} to {to}: {advice}")]
pub struct IllegalTransition {
    pub from: &'static str,
    pub to: &'static str,
    pub advice: &'static str,
}

impl RunState {
    pub fn name(&self) -> &'static str {
        match self {
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
            RunState::Created
                | RunState::WaitingForWindow
                | RunState::Locking
                | RunState::MeasuringBaseline
                | RunState::BackingUp
        )
    }

    /// Move to `next` if the lifecycle allows it.
    pub fn advance(&mut self, next: RunState) -> Result<(), IllegalTransition> {
        use RunState::*;
        let legal = match (&*self, &next) {
            (Finished { .. }, _) => false,
            (
                _,
                Finished {
                    outcome: Outcome::Stopped,
                    ..
                },
            ) => self.before_change(),
            (
                _,
                Finished {
                    outcome: Outcome::Succeeded,
                    ..
                },
            ) => matches!(self, Soaking { .. } | Locking | MeasuringBaseline),
            (
                _,
                Finished {
                    outcome: Outcome::RolledBack,
                    ..
                },
            ) => matches!(self, Confirming { .. }),
            (
                _,
                Finished {
                    outcome: Outcome::NeedsHuman,
                    ..
                },
            ) => !self.before_change(),
            (Created, WaitingForWindow | Locking) => true,
            (WaitingForWindow, Locking) => true,
            // The window closed (or the gate stayed shut) before anything changed:
            // back to waiting for the next opening.
            (Locking | MeasuringBaseline | BackingUp, WaitingForWindow) => true,
            (Locking, MeasuringBaseline) => true,
            (MeasuringBaseline, BackingUp | Migrating { .. }) => true,
            (BackingUp, Migrating { .. }) => true,
            (Migrating { .. }, Migrating { .. } | Soaking { .. } | RollingBack { .. }) => true,
            (Soaking { .. }, RollingBack { .. }) => true,
            (RollingBack { .. }, RollingBack { .. } | Confirming { .. }) => true,
            _ => false,
        };
        if !legal {
            return Err(IllegalTransition {
                from: self.name(),
                to: next.name(),
                advice: advice(self),
            });
        }
        *self = next;
        Ok(())
    }
}

fn advice(from: &RunState) -> &'static str {
    match from {
        RunState::Finished { .. } => "the run is over; start a new run instead",
        RunState::RollingBack { .. } | RunState::Confirming { .. } => {
            "a rollback in progress can only finish or be confirmed; wait for it"
        }
        s if s.before_change() => {
            "nothing has been changed yet; the run can only go forward or stop"
        }
        _ => {
            "the target has been changed; the run can only soak, roll back or hand over to a human"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(outcome: Outcome) -> RunState {
        RunState::Finished {
            outcome,
            reason: None,
        }
    }

    #[test]
    fn the_happy_path_is_legal() {
        let mut s = RunState::Created;
        for next in [
            RunState::WaitingForWindow,
            RunState::Locking,
            RunState::MeasuringBaseline,
            RunState::BackingUp,
            RunState::Migrating { applied: vec![] },
            RunState::Migrating { applied: vec![1] },
            RunState::Soaking {
                applied: vec![1],
                progress: None,
            },
            finished(Outcome::Succeeded),
        ] {
            s.advance(next).unwrap();
        }
    }

    #[test]
    fn stopped_is_only_possible_before_any_change() {
        let mut s = RunState::BackingUp;
        s.advance(finished(Outcome::Stopped)).unwrap();
        let mut s = RunState::Migrating { applied: vec![] };
        let err = s.advance(finished(Outcome::Stopped)).unwrap_err();
        assert!(err.to_string().contains("has been changed"), "{err}");
    }

    #[test]
    fn rolled_back_needs_a_confirmation_and_finished_is_final() {
        let mut s = RunState::RollingBack {
            applied: vec![1],
            cause: "breach".into(),
        };
        assert!(s.clone().advance(finished(Outcome::RolledBack)).is_err());
        s.advance(RunState::Confirming {
            cause: "breach".into(),
        })
        .unwrap();
        s.advance(finished(Outcome::RolledBack)).unwrap();
        assert!(
            s.advance(RunState::Locking)
                .unwrap_err()
                .to_string()
                .contains("run is over")
        );
    }

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
