//! Retention: keep the newest backups of a target, and remove what an interrupted
//! backup left behind. Both scan and delete on the blocking pool.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::error::io_err;
use super::files::path_component;
use super::manifest::MANIFEST_SUFFIX;
use super::{Backup, BackupError};

/// Remove what an interrupted `take` of run `run_id` left in the target's backup
/// directory (an archive or directory without a manifest, or with one). Returns
/// what was removed; errors are ignored, there is nothing better to do with them.
pub async fn discard_partial(backup_dir: &Path, target: &str, run_id: &str) -> Vec<PathBuf> {
    let dir = backup_dir.join(path_component(target));
    let run_id = run_id.to_string();
    tokio::task::spawn_blocking(move || discard_in(&dir, &run_id))
        .await
        .unwrap_or_default()
}

fn discard_in(dir: &Path, run_id: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_name().to_string_lossy().contains(run_id) {
            continue;
        }
        let gone = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        if gone.is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// Keep the newest `keep` backups of `target` (by the manifests' `created_at`) and
/// delete the older ones, archive first and manifest last, so an interrupted prune
/// leaves a manifest that fails verification rather than an untracked archive.
/// Returns the removed paths. `keep` is at least 1: the backup just taken is never
/// pruned. Files that are not readable manifests are left alone.
pub async fn prune(
    backup_dir: &Path,
    target: &str,
    keep: u32,
) -> Result<Vec<PathBuf>, BackupError> {
    let dir = backup_dir.join(path_component(target));
    let context = format!("pruning {}", dir.display());
    let target = target.to_string();
    // The blocking pool does not inherit the caller's span: carry it, so that the
    // log lines below keep the run's fields.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(|| prune_in(&dir, &target, keep)))
        .await
        .map_err(|e| io_err(context)(io::Error::other(e)))?
}

fn prune_in(dir: &Path, target: &str, keep: u32) -> Result<Vec<PathBuf>, BackupError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("listing {}", dir.display()))(e)),
    };
    let mut manifests: Vec<(DateTime<Utc>, String, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(MANIFEST_SUFFIX) else {
            continue;
        };
        let Ok(backup) = Backup::load(&entry.path()) else {
            tracing::warn!(manifest = %entry.path().display(), "skipping unreadable manifest while pruning");
            continue;
        };
        manifests.push((backup.manifest.created_at, stem.to_string(), entry.path()));
    }
    manifests.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    let mut removed = Vec::new();
    for (_, stem, manifest_path) in manifests.into_iter().skip(keep.max(1) as usize) {
        // Archives are found by stem inside this directory, never by the path written
        // in the manifest: pruning must not delete anything outside the backup dir.
        for archive in [
            dir.join(format!("{stem}.dump")),
            dir.join(format!("{stem}.dir")),
        ] {
            let result = match fs::symlink_metadata(&archive) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&archive),
                Ok(_) => fs::remove_file(&archive),
                Err(_) => continue,
            };
            result.map_err(io_err(format!("deleting old backup {}", archive.display())))?;
            removed.push(archive);
        }
        fs::remove_file(&manifest_path).map_err(io_err(format!(
            "deleting old manifest {}",
            manifest_path.display()
        )))?;
        removed.push(manifest_path);
    }
    if !removed.is_empty() {
        tracing::info!(target, keep, removed = removed.len(), "pruned old backups");
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn discarding_a_partial_backup_removes_only_that_runs_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("orders-db");
        fs::create_dir_all(dir.join("20260101T000000.000Z-r2.dir")).unwrap();
        fs::write(dir.join("20260101T000000.000Z-r2.dir/toc.dat"), "x").unwrap();
        fs::write(dir.join("20260101T000000.000Z-r1.dump"), "x").unwrap();
        fs::write(dir.join("README"), "not a backup").unwrap();

        let removed = discard_partial(root.path(), "orders-db", "r2").await;
        assert_eq!(removed, vec![dir.join("20260101T000000.000Z-r2.dir")]);
        assert!(dir.join("20260101T000000.000Z-r1.dump").exists());
        assert!(dir.join("README").exists());
        assert!(
            discard_partial(root.path(), "no-such-target", "r2")
                .await
                .is_empty()
        );
    }
}
