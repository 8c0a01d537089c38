//! A whole rehearsal on a scratch copy of a target: make the scratch database
//! (or take the one given), fill it (a fresh `pg_dump` of the target, or a
//! verified backup), [`rehearse`] in it, and drop it again. What
//! `pgshepherd rehearse` and the daemon (`rehearsal: required`) both run.

use crate::migrations::apply::Limits;
use crate::pg::Dsn;
use crate::pg::cluster::PgBinaries;
use crate::plan::Plan;
use crate::rehearse::rehearsal::{Rehearsal, RehearsalError, rehearse};
use crate::rehearse::scratch::{self, ScratchError};
use crate::steps::backup::Backup;

/// Where the scratch copy lives.
#[derive(Debug, Clone, Copy)]
pub enum Place<'a> {
    /// An existing database (`--scratch-url`): everything in it is replaced,
    /// and it is left in place.
    Given(&'a Dsn),
    /// A new database `name` on `server` (the target's own, or a target's
    /// `rehearsal_dsn`), dropped afterwards unless `keep`. One left by an
    /// interrupted earlier attempt under the same name is dropped first.
    New {
        server: &'a Dsn,
        name: &'a str,
        keep: bool,
    },
}

/// Why a rehearsal on a copy ended without a comparison.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    #[error(transparent)]
    Rehearsal(#[from] RehearsalError),
}

impl CopyError {
    /// The process exit code (see [`RehearsalError::exit_code`]); the scratch
    /// copy failing is the environment's fault.
    pub fn exit_code(&self) -> i32 {
        match self {
            CopyError::Scratch(_) => 1,
            CopyError::Rehearsal(e) => e.exit_code(),
        }
    }
}

/// What a rehearsal on a copy did.
#[derive(Debug)]
pub struct OnCopy {
    pub result: Result<Rehearsal, CopyError>,
    /// The scratch database that was made (named in `--keep`'s note).
    pub scratch: Option<String>,
    /// Dropping the scratch database failed: it is left on its server.
    pub drop_failed: Option<ScratchError>,
}

/// Rehearse `plan`'s pending migrations on a copy of `target` (named
/// `target_name` in the backup's file names). The target is only read.
pub async fn on_copy(
    bins: &PgBinaries,
    target: &Dsn,
    target_name: &str,
    plan: &Plan,
    place: Place<'_>,
    run_id: &str,
    from_backup: Option<&Backup>,
) -> OnCopy {
    let (scratch, made) = match place {
        Place::Given(d) => (d.clone(), None),
        Place::New { server, name, .. } => {
            // Left by an earlier attempt that was cut off (a daemon stopped
            // during it): its content is unknown, so it is made anew.
            let made = match scratch::drop(server, name).await {
                Ok(()) => scratch::create(server, name).await,
                Err(e) => Err(e),
            };
            match made {
                Ok(d) => (d, Some((server, name))),
                Err(e) => {
                    return OnCopy {
                        result: Err(e.into()),
                        scratch: None,
                        drop_failed: None,
                    };
                }
            }
        }
    };
    let limits = Limits {
        lock: plan.lock.clone(),
        statement_timeout: plan.statement_timeout,
    };
    let copied = match from_backup {
        Some(b) => scratch::restore(bins, &scratch, b, plan.lock.lock_timeout).await,
        None => {
            scratch::copy(
                bins,
                target,
                &scratch,
                target_name,
                run_id,
                plan.lock.lock_timeout,
            )
            .await
        }
    };
    let result = match copied {
        Ok(()) => rehearse(
            &scratch,
            &plan.migrations,
            &limits,
            plan.lock.acquire_timeout,
        )
        .await
        .map_err(CopyError::from),
        Err(e) => Err(e.into()),
    };
    // Dropped whatever happened above: a failed copy or rehearsal leaves
    // nothing behind on the server either.
    let keep = matches!(place, Place::New { keep: true, .. });
    let drop_failed = match made {
        Some((server, name)) if !keep => scratch::drop(server, name).await.err(),
        _ => None,
    };
    OnCopy {
        result,
        scratch: made.map(|(_, n)| n.to_string()),
        drop_failed,
    }
}
