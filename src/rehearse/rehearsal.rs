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
//! A migration is undone as a rollback under `strategy: down` undoes it: its
//! captured rows given back ([`revert::give_back`]), then its down script.
//! When migrations capture data, the rows of every table are summed before
//! and compared after the undo ([`crate::rehearse::data`]). A migration with
//! neither a down script nor captured data cannot be undone: the rehearsal
//! refuses before it changes anything, naming every such migration.

use std::time::Duration;

use crate::migrations::apply::{self, Limits, ScriptError};
use crate::migrations::history::{self, HistoryError, ReadError};
use crate::migrations::{Migration, MigrationSet};
use crate::pg::lock::LockError;
use crate::pg::{Dsn, TargetLock};
use crate::rehearse::data;
use crate::rehearse::diff::{Difference, attribute, diff};
use crate::rehearse::fingerprint::{self, Fingerprint, FingerprintError};
use crate::undo::revert::{self, Mode};

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
        "cannot rehearse {}: no down script and no captured data, so nothing undoes it; \
         add a .down.sql (or `-- pgshepherd:capture` for a data change) to each",
        .labels.join(", ")
    )]
    NoDownScript { labels: Vec<String> },
    #[error("while recording or comparing the rows of the scratch copy's tables: {}", crate::pg::server_message(.0))]
    Data(tokio_postgres::Error),
    /// Giving a migration's captured rows back failed, or found conflicts
    /// (nobody else writes to the scratch copy: the migrations' own doing).
    #[error("giving back the captured rows of {label} failed on the scratch database: {reason}")]
    GiveBack { label: String, reason: String },
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
            RehearsalError::Script { .. } | RehearsalError::GiveBack { .. } => 4,
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
        .filter(|m| m.down.is_none() && m.up.capture.is_empty())
        .map(|m| m.label())
        .collect();
    if !without_down.is_empty() {
        return Err(RehearsalError::NoDownScript {
            labels: without_down,
        });
    }
    let run_id = crate::cli::run::new_run_id();
    let captured: Vec<String> = pending
        .iter()
        .flat_map(|m| m.up.capture.iter().cloned())
        .collect();
    let rows_before = if captured.is_empty() {
        None
    } else {
        Some(
            data::record(lock.client(), &captured)
                .await
                .map_err(RehearsalError::Data)?,
        )
    };
    let before = fingerprint::read(lock.client()).await?;
    let mut steps = Vec::new();
    up(&lock, set, &pending, &run_id, limits, Some(&mut steps)).await?;
    // Which migration captures which table, by the name the row sums use;
    // read now that every table the migrations create exists.
    let mut capturers: Vec<(String, i64)> = Vec::new();
    for m in pending.iter().filter(|m| !m.up.capture.is_empty()) {
        let names = data::resolve(lock.client(), &m.up.capture)
            .await
            .map_err(RehearsalError::Data)?;
        capturers.extend(names.into_iter().flatten().map(|n| (n, m.version)));
    }
    for m in pending.iter().rev() {
        if !m.up.capture.is_empty() {
            give_back(&lock, set, m, &run_id, limits).await?;
        }
        let Some(down) = &m.down else { continue };
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
    if let Some(rows_before) = &rows_before {
        // A captured table names the migrations that capture it; any other
        // table was changed by one of the captured migrations (or their down
        // scripts) without being captured: all of them are named.
        let undone = |table: &str, captured: bool| {
            let mut versions: Vec<i64> = capturers
                .iter()
                .filter(|(t, _)| !captured || t == table)
                .map(|(_, v)| *v)
                .collect();
            versions.sort_unstable();
            versions.dedup();
            versions
                .iter()
                .map(|v| format!("V{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        differences.extend(
            data::compare(lock.client(), rows_before, undone)
                .await
                .map_err(RehearsalError::Data)?,
        );
    }
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

/// Give back the rows `m` changed in its captured tables, as a rollback
/// does. Nobody else writes to the scratch copy, so any conflict is the
/// migrations' own doing and stops the rehearsal (`refuse`: nothing given).
async fn give_back(
    lock: &TargetLock,
    set: &MigrationSet,
    m: &Migration,
    run_id: &str,
    limits: &Limits,
) -> Result<(), RehearsalError> {
    let failed = |reason: String| RehearsalError::GiveBack {
        label: m.label(),
        reason,
    };
    let report = revert::give_back(
        lock.client(),
        run_id,
        &set.name,
        m,
        Mode::Refuse,
        limits.lock.lock_timeout,
        APPLICATION_NAME,
    )
    .await
    .map_err(|e| failed(e.to_string()))?;
    match report {
        Some(r) if !r.conflicts.is_empty() => Err(failed(format!(
            "{} captured row(s) were changed again after the migration (by a later one?), \
             so none was given back",
            r.conflicts.len()
        ))),
        _ => Ok(()),
    }
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
