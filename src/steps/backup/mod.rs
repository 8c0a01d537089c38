//! Backup: pg_dump into the backup directory, a manifest, read-back verification, retention, restore.
//!
//! A backup is only a backup once it has been read back. `pg_restore --list` proves
//! no more than the table of contents: a truncated or bit-flipped custom-format
//! archive still lists fine, and with compression 0 (our default) `pg_restore` copies
//! COPY data through without noticing a flipped byte. So [`verify`] does three
//! things: re-hash the archive against the sha256 recorded while it was written, check
//! the table of contents has data for every expected table, and read every data block
//! back (`pg_restore -f /dev/null`, which fails on a short or garbled block).
//!
//! Layout: `BACKUP_DIR/<target>/<UTC timestamp>-<run_id>.dump` (or `.dir` for the
//! directory format) next to `<same stem>.manifest.json`. The manifest is written
//! last, atomically: an archive without a manifest is an unfinished backup. A
//! pre-restore snapshot ([`take_snapshot`]) sits next to the backup it precedes, as
//! `<backup's stem>.pre-restore-<UTC timestamp>.dump`.
//!
//! Credentials reach pg_dump, pg_restore and psql through `PGPASSWORD` in their
//! environment, never through argv (visible in `ps`), and no error message here
//! contains a password: connection strings are printed through [`Dsn`]'s redacting
//! `Display`.
//!
//! File-system work that blocks (creating the directory, fsyncs, hashing, directory
//! scans, pruning, removing a partial archive) runs on tokio's blocking pool: a
//! daemon drives many runs' soaks on the same worker threads.
//!
//! Files: `dump` ([`take`], pg_dump streamed and hashed, and [`cancel`]),
//! `manifest` ([`Manifest`], [`Backup`], [`DatabaseIdentity`], loading and the
//! atomic write), `verify` ([`verify`]), `restore` ([`restore`], one transaction or
//! nothing; sequences never go backwards), `writes` (the rows written since a
//! backup, from the statistics' write counters), `readiness` ([`check_restore`]: whether the target's role can restore,
//! asked before anything changes), `retention` ([`prune`], per database identity,
//! and [`discard_partial`]), `error` ([`BackupError`], [`VerifyProblem`]),
//! and the helpers they share: `files` (hashing, paths, the blocking pool) and
//! `tool` (running pg_dump, pg_restore and psql).
//!
//! [`Dsn`]: crate::pg::Dsn

mod dump;
mod error;
mod files;
mod manifest;
mod readiness;
mod restore;
mod retention;
mod tool;
mod verify;
mod writes;

pub use dump::{cancel, dump_application_name, take, take_snapshot};
pub use error::{BackupError, VerifyProblem};
pub use manifest::{ArchiveFormat, Backup, DatabaseIdentity, FileDigest, Manifest};
pub use readiness::{ExtensionOwnerChange, Readiness, RestoreProblem, check_restore};
pub use restore::{RestoreReport, SequenceAdvance, restore};
pub use retention::{discard_partial, prune};
pub use tool::APPLICATION_NAME;
pub use verify::{Verified, verify};
pub use writes::{
    DiscardedWrites, TableWrites, add as add_writes, describe_discarded, discarded,
    read_own as read_own_writes,
};
