//! One rehearsal on a scratch database: fingerprint it, run the pending
//! migrations up (with their verify scripts, fingerprinting after each so a
//! difference can name the migration that made it), down newest first,
//! fingerprint again and compare, then up again to prove they re-apply.
//!
//! The scratch database must be a copy the caller made for this purpose: this
//! module changes it (under pgshepherd's advisory lock, through the same
//! `apply_up` / `apply_down` a run uses, so the rehearsal proves the scripts
//! exactly as a run executes them) and never looks at anything else. Building
//! the copy and dropping it are the command's business.
//!
//! A migration without a down script cannot be rehearsed here yet (undoing
//! captured data is for a later release): the rehearsal refuses before it
//! changes anything, naming every such migration.

use std::time::Duration;

use crate::migrations::apply::{self, Limits, ScriptError};
use crate::migrations::history::{self, HistoryError, ReadError};
use crate::migrations::{Migration, MigrationSet};
use crate::pg::lock::LockError;
use crate::pg::{Dsn, TargetLock};
use crate::rehearse::diff::{Difference, attribute, diff};
use crate::rehearse::fingerprint::{self, Fingerprint, FingerprintError};

/// `application_name` of the rehearsal's session on the scratch database.
pub const APPLICATION_NAME: &str = "pgshepherd rehearse";

/// How messages and the run view say that a rehearsal passed.
pub const PASSED: &str = "rehearsal passed on a scratch copy: up, down, up, catalog identical";

/// What a rehearsal that got to its comparison found.
#[derive(Debug, Clone, PartialEq)]
pub struct Rehearsal {
    /// The versions rehearsed (pending on the copy), in order.
    pub versions: Vec<i64>,
    /// What the down scripts did not give back; empty when they gave back
    /// everything.
    pub differences: Vec<Difference>,
    /// Applying the migrations a second time, after the down scripts, failed.
    pub reapply_failed: Option<String>,
}

impl Rehearsal {
    /// Identical catalogs and a clean second apply.
    pub fn passed(&self) -> bool {
        self.differences.is_empty() && self.reapply_failed.is_none()
    }
}

/// Why a rehearsal ended without a comparison.
#[derive(Debug, thiserror::Error)]
pub enum RehearsalError {
    /// Invalid input: nothing was changed.
    #[error(
        "cannot rehearse {}: no down script (undoing captured data is not rehearsed yet); \
         add a .down.sql for each",
        .labels.join(", ")
    )]
    NoDownScript { labels: Vec<String> },
    #[error("nothing to rehearse: every migration of the set is already applied on the copy")]
    NothingPending,
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("while preparing pgshepherd's history on the scratch database: {}", crate::pg::server_message(.0))]
    Prepare(tokio_postgres::Error),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error(transparent)]
    Fingerprint(#[from] FingerprintError),
    /// An up, verify or down script failed the first time round.
    #[error("{step} of {label} failed on the scratch database: {error}")]
    Script {
        step: &'static str,
        label: String,
        error: ScriptError,
    },
}

impl RehearsalError {
    /// The process exit code: 2 for what the user's input decides, 4 for a
    /// script that failed (the change itself is at fault, as with a
    /// difference), 1 for the environment.
    pub fn exit_code(&self) -> i32 {
        match self {
            RehearsalError::NoDownScript { .. } | RehearsalError::NothingPending => 2,
            RehearsalError::History(_) => 2,
            RehearsalError::Script { .. } => 4,
            _ => 1,
        }
    }
}

/// Rehearse `set`'s pending migrations on `scratch` (see the module
/// documentation). `lock_wait` bounds the wait for the scratch database's
/// advisory lock.
pub async fn rehearse(
    scratch: &Dsn,
    set: &MigrationSet,
    limits: &Limits,
    lock_wait: Duration,
) -> Result<Rehearsal, RehearsalError> {
    let lock = TargetLock::acquire(scratch, APPLICATION_NAME, lock_wait, |_| {}).await?;
    lock.client()
        .batch_execute(history::CREATE)
        .await
        .map_err(RehearsalError::Prepare)?;
    let status = history::reconcile(set, &history::read(lock.client(), &set.name).await?)?;
    let pending: Vec<&Migration> = set
        .migrations
        .iter()
        .filter(|m| status.pending.contains(&m.version))
        .collect();
    if pending.is_empty() {
        return Err(RehearsalError::NothingPending);
    }
    let without_down: Vec<String> = pending
        .iter()
        .filter(|m| m.down.is_none())
        .map(|m| m.label())
        .collect();
    if !without_down.is_empty() {
        return Err(RehearsalError::NoDownScript {
            labels: without_down,
        });
    }
    let run_id = crate::cli::run::new_run_id();
    let before = fingerprint::read(lock.client()).await?;
    let mut steps = Vec::new();
    up(&lock, set, &pending, &run_id, limits, Some(&mut steps)).await?;
    for m in pending.iter().rev() {
        let down = m.down.as_ref().expect("checked above");
        apply::apply_down(&lock, &set.name, m, down, limits, &mut |_| {})
            .await
            .map_err(|error| RehearsalError::Script {
                step: "the down script",
                label: m.label(),
                error,
            })?;
    }
    let after = fingerprint::read(lock.client()).await?;
    let mut differences = diff(&before, &after);
    attribute(&mut differences, &before, &steps);
    let reapply_failed = up(&lock, set, &pending, &run_id, limits, None)
        .await
        .err()
        .map(|e| format!("the migrations do not re-apply after their down scripts: {e}"));
    // Best effort: the connection closing releases the lock too.
    let _ = lock.release().await;
    Ok(Rehearsal {
        versions: pending.iter().map(|m| m.version).collect(),
        differences,
        reapply_failed,
    })
}

/// Apply `pending` in order, each followed by its verify script; with
/// `steps`, fingerprint after each one, so that a difference can name the
/// migration whose down script should give it back.
async fn up(
    lock: &TargetLock,
    set: &MigrationSet,
    pending: &[&Migration],
    run_id: &str,
    limits: &Limits,
    mut steps: Option<&mut Vec<(String, Fingerprint)>>,
) -> Result<(), RehearsalError> {
    for m in pending {
        let failed = |step| {
            move |error| RehearsalError::Script {
                step,
                label: m.label(),
                error,
            }
        };
        apply::apply_up(lock, &set.name, m, run_id, None, limits, &mut |_| {})
            .await
            .map_err(failed("the up script"))?;
        if let Some(verify) = &m.verify {
            apply::run_verify(lock, verify, limits)
                .await
                .map_err(failed("the verify script"))?;
        }
        if let Some(steps) = steps.as_deref_mut() {
            steps.push((m.label(), fingerprint::read(lock.client()).await?));
        }
    }
    Ok(())
}
