//! After the lifecycle decided to undo the change: roll back per the plan's
//! strategy, prove the target is at its starting version, and confirm the checks
//! are healthy again. A rollback always runs to its end once started.

use std::convert::Infallible;

use crate::pg::TargetLock;
use crate::run::driver::Effects;
use crate::run::event::{EventKind, Step};
use crate::run::lifecycle::{Effect, Input};
use crate::run::runner::{Phase, Runner};
use crate::steps::rollback::{self, RollbackError};
use crate::steps::soak::{Monitor, SoakEnd};

impl Runner<'_> {
    /// Perform an `Undo` effect, then confirm.
    pub(crate) async fn undo(
        &mut self,
        lock: TargetLock,
        monitor: &mut Monitor,
        effects: Effects,
    ) -> Phase<Infallible> {
        let Some(Effect::Undo { versions, strategy }) = effects
            .iter()
            .find(|e| matches!(e, Effect::Undo { .. }))
            .cloned()
        else {
            let reason = "internal error: asked to undo without an undo decision".to_string();
            return Err(self
                .end(Input::Failure {
                    reason,
                    invalid_input: false,
                })
                .await);
        };
        if versions.is_empty() {
            // The failed migration rolled back on its own; nothing of this run is left.
            return self.confirm(lock, monitor).await;
        }
        let lock = self.relock(lock).await?;
        self.ctx.emit(
            Step::Rollback,
            EventKind::RollbackStarted {
                strategy,
                cause: self.cause(),
                undo: versions.clone(),
            },
        );
        let permit = effects.permit();
        match rollback::roll_back(
            &self.ctx,
            &self.life,
            &lock,
            &versions,
            self.backup.as_ref(),
            permit,
        )
        .await
        {
            Ok(()) => {}
            Err(RollbackError::RunEnded(finished)) => return Err(finished),
            Err(e) => {
                let reason = e.to_string();
                self.ctx.emit(
                    Step::Rollback,
                    EventKind::RollbackFailed {
                        reason: reason.clone(),
                    },
                );
                return Err(self.end(Input::RollbackFailed { reason }).await);
            }
        }
        self.confirm(lock, monitor).await
    }

    /// Prove the rollback: the target is at its starting version, and the checks are
    /// healthy for the confirmation period.
    pub(crate) async fn confirm(
        &mut self,
        lock: TargetLock,
        monitor: &mut Monitor,
    ) -> Phase<Infallible> {
        let lock = self.relock(lock).await?;
        let plan = self.ctx.plan;
        let now = match rollback::applied_now(&self.ctx, &lock).await {
            Ok(v) => v,
            Err(e) => {
                let reason = format!("{}; {e}", self.cause());
                return Err(self
                    .end(Input::Failure {
                        reason,
                        invalid_input: false,
                    })
                    .await);
            }
        };
        let at_start = now == self.starting;
        self.ctx.emit(
            Step::Rollback,
            EventKind::RollbackFinished {
                strategy: plan.rollback.strategy,
                applied: now.clone(),
                at_starting_version: at_start,
            },
        );
        if !at_start {
            let starting = self.starting.clone();
            return Err(self.end(Input::NotAtStart { now, starting }).await);
        }
        self.life.apply(Input::BackAtStart).await?;
        let confirm = plan.rollback.confirm;
        if !confirm.is_zero() {
            let interval = plan.soak.interval.min(confirm);
            let result = monitor
                .watch(
                    &self.ctx.without_abort(),
                    Step::Confirm,
                    confirm,
                    interval,
                    None,
                    None,
                )
                .await;
            let unhealthy = match result.end {
                SoakEnd::Passed => None,
                SoakEnd::Verdict(v) => Some(v.message()),
                SoakEnd::Aborted => {
                    Some("the confirmation was cut short by the operator".to_string())
                }
                SoakEnd::RunEnded(finished) => return Err(finished),
            };
            if let Some(why) = unhealthy {
                return Err(self.end(Input::ConfirmationFailed { why }).await);
            }
        }
        Err(self.end(Input::Confirmed).await)
    }

    /// Why the run is being rolled back, as the persisted state says.
    fn cause(&self) -> String {
        self.life.state().cause().unwrap_or_default().to_string()
    }
}
