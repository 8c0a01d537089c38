//! What a run recorded that the runbook needs: its verified backup. Read from
//! the run's checkpoint (the journal's `<run_id>.state.json` for `run`, the state
//! database for the daemon) and the backup's manifest.

use std::path::{Path, PathBuf};

use super::compose::{BackupRecord, RunRecord};
use crate::run::checkpoint::{Checkpoint, RunFacts};
use crate::steps::backup::{Backup, BackupError};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{run_id:?} is not a run id (hex digits, as `run` and `submit` print them)")]
    BadRunId { run_id: String },
    #[error(
        "no journal of run {run_id} in {dir} (pass the run's --backup-dir, or --config with its backup_dir)"
    )]
    NoJournal { run_id: String, dir: PathBuf },
    #[error("cannot read the state of run {run_id} from {path}: {message}")]
    State {
        run_id: String,
        path: PathBuf,
        message: String,
    },
}

impl RunRecord {
    /// The run whose journal is in `<backup_dir>/journal/` (where `run` writes it).
    pub fn from_journal(backup_dir: &Path, run_id: &str) -> Result<RunRecord, RecordError> {
        // The id becomes a file name: nothing but hex digits may reach the path.
        if run_id.is_empty() || !run_id.chars().all(|ch| ch.is_ascii_hexdigit()) {
            return Err(RecordError::BadRunId {
                run_id: run_id.to_string(),
            });
        }
        let dir = backup_dir.join("journal");
        let path = dir.join(format!("{run_id}.state.json"));
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RecordError::NoJournal {
                    run_id: run_id.to_string(),
                    dir,
                });
            }
            Err(e) => {
                return Err(RecordError::State {
                    run_id: run_id.to_string(),
                    path,
                    message: e.to_string(),
                });
            }
        };
        let checkpoint: Checkpoint =
            serde_json::from_slice(&text).map_err(|e| RecordError::State {
                run_id: run_id.to_string(),
                path: path.clone(),
                message: e.to_string(),
            })?;
        Ok(RunRecord::from_facts(run_id, &checkpoint.facts))
    }

    /// The run with these facts; its backup's manifest is read from disk. A
    /// manifest that cannot be read here (a daemon replica without that backup
    /// directory) is said in the document rather than failing it: everything
    /// else in it still holds.
    pub fn from_facts(run_id: &str, facts: &RunFacts) -> RunRecord {
        let mut record = RunRecord {
            run_id: run_id.to_string(),
            backup: None,
            backup_unreadable: None,
        };
        if let Some(manifest) = &facts.backup_manifest {
            match Backup::load(manifest) {
                Ok(b) => {
                    record.backup = Some(BackupRecord {
                        archive: b.path,
                        manifest: b.manifest_path,
                        sha256: b.manifest.sha256,
                        format: b.manifest.format,
                        created_at: b.manifest.created_at,
                        applied_versions: b.manifest.applied_versions,
                    })
                }
                Err(e) => record.backup_unreadable = Some(unreadable(manifest, &e)),
            }
        }
        record
    }
}

fn unreadable(manifest: &Path, e: &BackupError) -> String {
    format!(
        "the run's backup manifest {} cannot be read on this host: {e}",
        manifest.display()
    )
}
