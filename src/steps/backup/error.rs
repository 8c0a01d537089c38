//! What can go wrong with a backup, and the reasons an archive is not a usable one.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("while {context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("could not connect to {dsn} to {purpose}: {}", crate::pg::server_message(.source))]
    Connect {
        dsn: String,
        purpose: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("while {context} on {dsn}: {}", crate::pg::server_message(.source))]
    Query {
        dsn: String,
        context: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("could not start {tool} ({program}): {source}")]
    Spawn {
        tool: &'static str,
        program: PathBuf,
        source: io::Error,
    },
    #[error("{tool} {action} failed ({status}): {stderr}")]
    ToolFailed {
        tool: &'static str,
        action: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("backup {} failed verification: {}", .path.display(), join(.problems))]
    VerifyFailed {
        path: PathBuf,
        problems: Vec<VerifyProblem>,
    },
    #[error("refusing to restore {}: {problem}; the archive is not what was verified", .path.display())]
    Tampered {
        path: PathBuf,
        problem: VerifyProblem,
    },
    #[error(
        "restore of {} into {dsn} gave up after waiting {}ms for locks (lock_timeout); nothing was changed: \
         the restore runs in one transaction. Retry when the sessions holding locks on the database are gone",
        .path.display(), .lock_timeout.as_millis()
    )]
    RestoreLockTimeout {
        path: PathBuf,
        dsn: String,
        lock_timeout: Duration,
    },
    #[error("restore of {} into {dsn} failed; nothing was changed (the restore runs in one transaction): {stderr}", .path.display())]
    RestoreFailed {
        path: PathBuf,
        dsn: String,
        stderr: String,
    },
    #[error("manifest {} is unreadable: {source}", .path.display())]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
    },
}

pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> BackupError {
    let context = context.into();
    move |source| BackupError::Io { context, source }
}

pub(super) fn join(problems: &[VerifyProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One reason an archive is not a usable backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum VerifyProblem {
    /// The archive is not where the manifest says.
    Missing { error: String },
    /// The bytes changed since they were written (truncation, corruption, tampering).
    ChecksumMismatch {
        expected: String,
        actual: String,
        expected_size: u64,
        actual_size: u64,
    },
    /// Directory format: files missing, added or changed since the dump.
    FilesChanged {
        missing: Vec<String>,
        unexpected: Vec<String>,
        changed: Vec<String>,
    },
    /// `pg_restore --list` could not read the table of contents.
    TocUnreadable { stderr: String },
    /// Expected tables without a TABLE DATA entry in the table of contents.
    MissingTables { tables: Vec<String> },
    /// Reading every data block back (`pg_restore -f /dev/null`) failed.
    ReadBackFailed { stderr: String },
}

impl fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyProblem::Missing { error } => write!(f, "archive is missing ({error})"),
            VerifyProblem::ChecksumMismatch {
                expected,
                actual,
                expected_size,
                actual_size,
            } => {
                write!(
                    f,
                    "sha256 mismatch: the archive hashes to {actual} but the manifest says {expected}"
                )?;
                if actual_size < expected_size {
                    write!(f, " (truncated: {actual_size} of {expected_size} bytes)")
                } else if actual_size > expected_size {
                    write!(
                        f,
                        " (grew: {actual_size} bytes, manifest says {expected_size})"
                    )
                } else {
                    write!(
                        f,
                        " (same size, {actual_size} bytes: corrupted or modified in place)"
                    )
                }
            }
            VerifyProblem::FilesChanged {
                missing,
                unexpected,
                changed,
            } => {
                let mut parts = Vec::new();
                if !missing.is_empty() {
                    parts.push(format!("missing {}", missing.join(", ")));
                }
                if !unexpected.is_empty() {
                    parts.push(format!("unexpected {}", unexpected.join(", ")));
                }
                if !changed.is_empty() {
                    parts.push(format!("changed {}", changed.join(", ")));
                }
                write!(
                    f,
                    "archive files differ from the manifest: {}",
                    parts.join("; ")
                )
            }
            VerifyProblem::TocUnreadable { stderr } => write!(
                f,
                "pg_restore --list cannot read the table of contents: {stderr}"
            ),
            VerifyProblem::MissingTables { tables } => {
                write!(
                    f,
                    "no TABLE DATA in the archive for expected table(s) {}",
                    tables.join(", ")
                )
            }
            VerifyProblem::ReadBackFailed { stderr } => {
                write!(
                    f,
                    "reading every data block back (pg_restore -f /dev/null) failed: {stderr}"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_problems_say_what_happened() {
        let p = VerifyProblem::ChecksumMismatch {
            expected: "aa".into(),
            actual: "bb".into(),
            expected_size: 10,
            actual_size: 5,
        };
        assert!(p.to_string().contains("truncated: 5 of 10 bytes"));
        let p = VerifyProblem::ChecksumMismatch {
            expected: "aa".into(),
            actual: "bb".into(),
            expected_size: 10,
            actual_size: 10,
        };
        assert!(p.to_string().contains("corrupted or modified in place"));
    }
}
