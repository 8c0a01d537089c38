//! The effects layer of the lifecycle: it holds a run's state, decides each
//! input with [`lifecycle::next`], persists the next state, and only then hands
//! out the effects, together with the [`Permit`] that a change to the target
//! requires. It also ends the run: the `run_finished` event, then the final
//! state.

use std::sync::Mutex;

use crate::run::checkpoint::Checkpoint;
use crate::run::event::{Event, EventKind, Outcome};
use crate::run::journal::Emitter;
use crate::run::lifecycle::{self, Effect, Input, Rules};
use crate::run::state::RunState;

/// How the run ended, with the exit code the process should return.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub exit_code: i32,
}

/// The end of a run whose driving task failed (a panic) or whose checkpoint
/// cannot be read: `needs_human`, since whether the target was changed is for a
/// person to look at. The `run_finished` event and the checkpoint to write.
pub fn crashed(run_id: &str, reason: String) -> (Event, Checkpoint) {
    let outcome = Outcome::NeedsHuman;
    let event = Event {
        ts: chrono::Utc::now(),
        run_id: run_id.to_string(),
        step: None,
        kind: EventKind::RunFinished {
            outcome,
            reason: Some(reason.clone()),
            exit_code: outcome.exit_code(),
            applied: Vec::new(),
            backup: None,
            journal: None,
        },
    };
    let checkpoint = Checkpoint {
        state: RunState::Finished {
            outcome,
            reason: Some(reason),
        },
        facts: Default::default(),
    };
    (event, checkpoint)
}

/// [`crashed`], through a run's emitter.
pub async fn crash(events: &Emitter, reason: String) -> Finished {
    let (event, checkpoint) = crashed(events.run_id(), reason.clone());
    events.emit(event.step, event.kind);
    events.save_state(&checkpoint.state).await;
    Finished {
        outcome: Outcome::NeedsHuman,
        reason: Some(reason),
        exit_code: Outcome::NeedsHuman.exit_code(),
    }
}

/// Proof that the state allowing a change to the target is persisted: the
/// functions that change the target take one, and only [`Lifecycle::apply`]
/// makes them, after the save.
#[derive(Debug)]
pub struct Permit {
    effect: Effect,
}

impl Permit {
    /// Whether this permit covers applying `version`.
    pub fn allows_apply(&self, version: i64) -> bool {
        self.effect == Effect::Apply { version }
    }

    /// Whether this permit covers undoing `version`.
    pub fn allows_undo(&self, version: i64) -> bool {
        matches!(&self.effect, Effect::Undo { versions, .. } if versions.contains(&version))
    }
}

/// The effects of one transition, to perform now that its state is persisted.
#[derive(Debug)]
pub struct Effects {
    effects: Vec<Effect>,
}

impl Effects {
    pub fn has(&self, effect: &Effect) -> bool {
        self.effects.contains(effect)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Effect> {
        self.effects.iter()
    }

    /// The permit for this transition's change to the target, if it has one.
    pub fn permit(&self) -> Option<Permit> {
        self.effects
            .iter()
            .find(|e| e.changes_target())
            .map(|e| Permit { effect: e.clone() })
    }
}

struct Inner {
    state: RunState,
    /// The last state handed to the journal and the sink.
    persisted: RunState,
    /// Versions this run put on the target (what `run_finished` reports).
    touched: Vec<i64>,
    /// The verified backup's archive, once there is one.
    backup: Option<String>,
    finished: Option<Finished>,
}

/// A run's state and the only way to change it.
pub struct Lifecycle<'a> {
    rules: Rules,
    events: &'a Emitter,
    inner: Mutex<Inner>,
}

impl<'a> Lifecycle<'a> {
    /// A lifecycle at `state`, which is already persisted (`created` for a new
    /// run, a checkpoint's state for a resumed one).
    pub fn new(events: &'a Emitter, rules: Rules, state: RunState) -> Lifecycle<'a> {
        let finished = state.outcome().map(|(outcome, reason)| Finished {
            outcome,
            reason: reason.map(str::to_string),
            exit_code: outcome.exit_code(),
        });
        Lifecycle {
            rules,
            events,
            inner: Mutex::new(Inner {
                persisted: state.clone(),
                state,
                touched: Vec::new(),
                backup: None,
                finished,
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> RunState {
        self.inner().state.clone()
    }

    /// How the run ended, if it has.
    pub fn finished(&self) -> Option<Finished> {
        self.inner().finished.clone()
    }

    /// The verified backup's archive path, reported when the run ends.
    pub fn note_backup(&self, path: Option<String>) {
        self.inner().backup = path;
    }

    /// Apply `input`: decide, persist, then return what to do. `Err` when the run
    /// is over (it finished now, an illegal input ended it, or it had finished):
    /// return the [`Finished`] as the run's result.
    pub async fn apply(&self, input: Input) -> Result<Effects, Finished> {
        let (next, effects, persist) = {
            let mut inner = self.inner();
            if let Some(f) = &inner.finished {
                return Err(f.clone());
            }
            let entering_undo = matches!(input, Input::Reconciled { .. })
                || !matches!(inner.state, RunState::RollingBack { .. });
            if let Input::MigrationFailed {
                version,
                left_behind: true,
                ..
            } = &input
                && !inner.touched.contains(version)
            {
                inner.touched.push(*version);
            }
            let (t, illegal) = lifecycle::next(&inner.state, input, self.rules);
            if let Some(e) = illegal {
                tracing::error!(run_id = self.events.run_id(), error = %e, "illegal run transition");
            }
            match &t.next {
                RunState::Migrating { applied } | RunState::Soaking { applied, .. } => {
                    inner.touched = applied.clone();
                }
                RunState::RollingBack { applied, .. } if entering_undo => {
                    inner.touched = applied.clone();
                }
                _ => {}
            }
            inner.state = t.next.clone();
            let persist = inner.persisted != t.next;
            if persist {
                inner.persisted = t.next.clone();
            }
            (t.next, t.effects, persist)
        };
        if let Some(Effect::Finish {
            outcome,
            reason,
            exit_code,
        }) = effects.iter().find(|e| matches!(e, Effect::Finish { .. }))
        {
            let finished = Finished {
                outcome: *outcome,
                reason: reason.clone(),
                exit_code: *exit_code,
            };
            let (touched, backup) = {
                let mut inner = self.inner();
                inner.finished = Some(finished.clone());
                (inner.touched.clone(), inner.backup.clone())
            };
            // The final event first, so that it is written with the final state.
            self.events.emit(
                None,
                EventKind::RunFinished {
                    outcome: finished.outcome,
                    reason: finished.reason.clone(),
                    exit_code: finished.exit_code,
                    applied: touched,
                    backup,
                    journal: self.events.journal_path(),
                },
            );
            self.events.save_state(&next).await;
            return Err(finished);
        }
        if persist {
            self.events.save_state(&next).await;
        }
        Ok(Effects { effects })
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::plan::RollbackStrategy;
    use crate::run::checkpoint::{Checkpoint, RunSink};
    use crate::run::event::Event;

    /// Records the order of events and checkpoints as the daemon's sink sees them.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl RunSink for Recorder {
        fn event(&self, event: &Event) {
            let name = serde_json::to_value(event).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string();
            self.0.lock().unwrap().push(format!("event {name}"));
        }
        fn save(&self, cp: Checkpoint) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            self.0
                .lock()
                .unwrap()
                .push(format!("save {}", cp.state.name()));
            Box::pin(async {})
        }
    }

    fn rules() -> Rules {
        Rules {
            strategy: RollbackStrategy::Down,
        }
    }

    #[tokio::test]
    async fn the_state_is_saved_before_the_permit_to_change_the_target_exists() {
        let rec = Arc::new(Recorder::default());
        let events = Emitter::new("r1", None, false, false).with_sink(rec.clone());
        let life = Lifecycle::new(&events, rules(), RunState::MeasuringBaseline);
        let effects = life
            .apply(Input::MigrationStarting { version: 1 })
            .await
            .unwrap();
        // The save happened before `apply` returned the permit.
        assert_eq!(*rec.0.lock().unwrap(), ["save migrating"]);
        assert!(effects.permit().unwrap().allows_apply(1));
        // An unchanged state is not saved again.
        life.apply(Input::MigrationApplied { version: 1 })
            .await
            .unwrap();
        life.apply(Input::MigrationStarting { version: 2 })
            .await
            .unwrap();
        assert_eq!(rec.0.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn an_illegal_input_ends_the_run_as_needs_human_and_it_stays_finished() {
        let rec = Arc::new(Recorder::default());
        let events = Emitter::new("r1", None, false, false).with_sink(rec.clone());
        let life = Lifecycle::new(&events, rules(), RunState::Migrating { applied: vec![1] });
        let end = life.apply(Input::SoakPassed).await.unwrap_err();
        assert_eq!(end.outcome, Outcome::NeedsHuman);
        assert_eq!(end.exit_code, 4);
        assert!(
            end.reason
                .as_deref()
                .unwrap()
                .contains("soak_passed in state migrating"),
            "{end:?}"
        );
        assert_eq!(
            *rec.0.lock().unwrap(),
            ["event run_finished", "save finished"]
        );
        let again = life.apply(Input::MigrationsDone).await.unwrap_err();
        assert_eq!(again, end);
        assert_eq!(rec.0.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn run_finished_reports_what_the_run_put_on_the_target() {
        let events = Emitter::new("r1", None, false, false);
        let life = Lifecycle::new(&events, rules(), RunState::Migrating { applied: vec![] });
        life.apply(Input::MigrationApplied { version: 1 })
            .await
            .unwrap();
        life.apply(Input::MigrationFailed {
            version: 2,
            left_behind: true,
            cause: "boom".into(),
        })
        .await
        .unwrap();
        assert_eq!(life.inner().touched, vec![1, 2]);
        life.apply(Input::UndoStepDone { version: 2 })
            .await
            .unwrap();
        assert_eq!(life.inner().touched, vec![1, 2]);
    }
}
