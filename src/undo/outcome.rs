//! What an undo's report means for the person who asked: its outcome word and
//! exit code, the same for `pgshepherd undo`, a rollback's give-back and an undo
//! through the daemon.
//!
//! - no conflict: `reverted`, exit 0;
//! - conflicts in `refuse` mode: `refused`, exit 5, nothing was changed;
//! - conflicts in `skip-conflicts` or `merge`: `conflicts_left`, exit 4, the
//!   rest was reverted;
//! - an error before or during the undo: `failed`, with the error's exit code;
//!   the undo's one transaction changed nothing.

use crate::undo::revert::Mode;

/// An undo's outcome, as `undo_finished` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndoOutcome {
    pub outcome: &'static str,
    pub exit_code: i32,
    pub reason: Option<String>,
}

impl UndoOutcome {
    /// From the number of conflicts an undo in `mode` found.
    pub fn of(conflicts: usize, mode: Mode) -> UndoOutcome {
        match (conflicts, mode) {
            (0, _) => UndoOutcome {
                outcome: "reverted",
                exit_code: 0,
                reason: None,
            },
            (n, Mode::Refuse) => UndoOutcome {
                outcome: "refused",
                exit_code: 5,
                reason: Some(format!(
                    "{n} row(s) changed by users since the migration; nothing was changed \
                     (see the conflicts; mode skip-conflicts or merge reverts the rest)"
                )),
            },
            (n, _) => UndoOutcome {
                outcome: "conflicts_left",
                exit_code: 4,
                reason: Some(format!(
                    "{n} row(s) changed by users since the migration were left as they are"
                )),
            },
        }
    }

    /// The undo did not happen: nothing was changed.
    pub fn failed(exit_code: i32, reason: String) -> UndoOutcome {
        UndoOutcome {
            outcome: "failed",
            exit_code,
            reason: Some(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_conflicts_and_the_mode() {
        assert_eq!(UndoOutcome::of(0, Mode::Refuse).exit_code, 0);
        assert_eq!(UndoOutcome::of(0, Mode::Merge).outcome, "reverted");
        let refused = UndoOutcome::of(2, Mode::Refuse);
        assert_eq!((refused.outcome, refused.exit_code), ("refused", 5));
        assert!(refused.reason.unwrap().contains("nothing was changed"));
        for mode in [Mode::SkipConflicts, Mode::Merge] {
            let left = UndoOutcome::of(1, mode);
            assert_eq!((left.outcome, left.exit_code), ("conflicts_left", 4));
        }
        assert_eq!(UndoOutcome::failed(2, "x".into()).outcome, "failed");
    }
}
