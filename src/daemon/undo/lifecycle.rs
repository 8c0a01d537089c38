//! The phases of an undo asked for through the API, and the one function that
//! moves it between them. Pure; the SQL in [`super::store`] writes what
//! [`transition`] decides and names phases only through [`UndoPhase::as_str`].
//!
//! ```text
//! requested ─▶ pending_approval ─approve─▶ queued ─claim─▶ active ─finish─▶ finished
//!                    │                       │              │ ▲
//!                    └──────cancel───────────┴──▶ finished  └─┘ claim again (the daemon
//!                                                               driving it died)
//! ```
//!
//! Invariants (tested below):
//! - only an approved undo (or one that needs no approval: a dry run without a
//!   `where` predicate, a plan without approval) is ever claimed, so nothing
//!   runs on the target unapproved;
//! - an active undo cannot be cancelled: it is one transaction on the target that
//!   either commits or changes nothing, and it is short;
//! - `finished` is final.

/// Where an undo is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UndoPhase {
    PendingApproval,
    Queued,
    Active,
    Finished,
}

/// What happens to an undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UndoInput {
    Approve,
    /// A daemon takes it (again, if the one driving it died).
    Claim,
    Finish,
    /// Called off before it started.
    Cancel,
}

/// An input the undo's phase does not allow, with what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the undo is {}: {advice}", .from.as_str())]
pub struct IllegalUndoTransition {
    pub from: UndoPhase,
    pub input: UndoInput,
    pub advice: &'static str,
}

impl UndoPhase {
    pub const ALL: [UndoPhase; 4] = [
        UndoPhase::PendingApproval,
        UndoPhase::Queued,
        UndoPhase::Active,
        UndoPhase::Finished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UndoPhase::PendingApproval => "pending_approval",
            UndoPhase::Queued => "queued",
            UndoPhase::Active => "active",
            UndoPhase::Finished => "finished",
        }
    }

    pub fn parse(s: &str) -> Option<UndoPhase> {
        UndoPhase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The phase of a new undo. A dry run changes nothing and needs no
    /// approval, unless it carries a `where` predicate: that is SQL, run with
    /// the daemon's role on the target, and an expression can have effects a
    /// rolled-back transaction does not undo (ending sessions, calling out), so
    /// a second person looks at it first, as at a migration.
    pub fn initial(requires_approval: bool, dry_run: bool, predicate: bool) -> UndoPhase {
        if requires_approval && (!dry_run || predicate) {
            UndoPhase::PendingApproval
        } else {
            UndoPhase::Queued
        }
    }

    /// Not finished: it holds its place in the target's queue.
    pub fn is_open(self) -> bool {
        self != UndoPhase::Finished
    }
}

/// The one place that decides an undo's phase changes.
pub fn transition(from: UndoPhase, input: UndoInput) -> Result<UndoPhase, IllegalUndoTransition> {
    use UndoInput as I;
    use UndoPhase as P;
    let illegal = |advice| IllegalUndoTransition {
        from,
        input,
        advice,
    };
    match (from, input) {
        (P::PendingApproval, I::Approve) => Ok(P::Queued),
        (P::Queued | P::Active, I::Claim) => Ok(P::Active),
        (P::Active, I::Finish) => Ok(P::Finished),
        (P::PendingApproval | P::Queued, I::Cancel) => Ok(P::Finished),
        (P::PendingApproval, I::Claim | I::Finish) => Err(illegal(
            "it waits for approval by someone other than who asked for it",
        )),
        (P::Queued | P::Active, I::Approve) => Err(illegal("it needs no approval (any more)")),
        (P::Queued, I::Finish) => Err(illegal("it has not started")),
        (P::Active, I::Cancel) => Err(illegal(
            "it is running as one transaction on the target, which either commits or changes nothing; \
             look at its outcome, and undo again or ask for another undo if needed",
        )),
        (P::Finished, _) => Err(illegal("it is over; look at its outcome in the run's view")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUTS: [UndoInput; 4] = [
        UndoInput::Approve,
        UndoInput::Claim,
        UndoInput::Finish,
        UndoInput::Cancel,
    ];

    #[test]
    fn names_round_trip() {
        for p in UndoPhase::ALL {
            assert_eq!(UndoPhase::parse(p.as_str()), Some(p));
        }
        assert_eq!(UndoPhase::parse("running"), None);
    }

    #[test]
    fn a_dry_run_without_a_predicate_or_a_plan_without_approval_is_queued_at_once() {
        use UndoPhase::{PendingApproval, Queued};
        assert_eq!(UndoPhase::initial(true, false, false), PendingApproval);
        assert_eq!(UndoPhase::initial(true, true, false), Queued);
        assert_eq!(UndoPhase::initial(false, false, false), Queued);
        assert_eq!(UndoPhase::initial(false, false, true), Queued);
        // A predicate is SQL run on the target: approved like the undo itself.
        assert_eq!(UndoPhase::initial(true, true, true), PendingApproval);
    }

    /// Every path from a new undo to a claim passes an approval when one is
    /// required.
    #[test]
    fn nothing_unapproved_is_ever_claimed() {
        assert!(transition(UndoPhase::PendingApproval, UndoInput::Claim).is_err());
        let approved = transition(UndoPhase::PendingApproval, UndoInput::Approve).unwrap();
        assert_eq!(
            transition(approved, UndoInput::Claim),
            Ok(UndoPhase::Active)
        );
        // The only way out of pending_approval besides approval is cancel.
        for input in INPUTS {
            if let Ok(next) = transition(UndoPhase::PendingApproval, input) {
                assert!(matches!(
                    (input, next),
                    (UndoInput::Approve, UndoPhase::Queued)
                        | (UndoInput::Cancel, UndoPhase::Finished)
                ));
            }
        }
    }

    #[test]
    fn a_running_undo_cannot_be_cancelled_and_a_finished_one_is_final() {
        let e = transition(UndoPhase::Active, UndoInput::Cancel).unwrap_err();
        assert!(e.to_string().contains("one transaction"), "{e}");
        for input in INPUTS {
            assert!(transition(UndoPhase::Finished, input).is_err(), "{input:?}");
        }
        // A daemon that died during it: the undo is claimed again.
        assert_eq!(
            transition(UndoPhase::Active, UndoInput::Claim),
            Ok(UndoPhase::Active)
        );
    }
}
