//! Retention: keep the newest backups of a database, and remove what an interrupted
//! backup left behind. Both scan and delete on the blocking pool.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::dump::SNAPSHOT_INFIX;
use super::error::io_err;
use super::files::path_component;
use super::manifest::MANIFEST_SUFFIX;
use super::{Backup, BackupError, DatabaseIdentity};

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

/// Remove the pre-restore snapshots of the backup `backup_stem` in `dir` that an
/// interrupted rollback left unfinished (an archive without its manifest), before
/// a new one is taken. Complete snapshots stay. Blocking.
pub(super) fn discard_partial_snapshots(dir: &Path, backup_stem: &str) -> Vec<PathBuf> {
    let prefix = format!("{backup_stem}{SNAPSHOT_INFIX}");
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name
            .strip_suffix(".dump")
            .or_else(|| name.strip_suffix(".dir"))
        else {
            continue;
        };
        if !stem.starts_with(&prefix) || dir.join(format!("{stem}{MANIFEST_SUFFIX}")).exists() {
            continue;
        }
        let path = entry.path();
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

/// Keep the newest `keep` backups of the database `latest` (just taken and
/// verified) was taken from, in `latest`'s target directory, and delete the older
/// ones of that database (by the manifests' `created_at`), archive first and
/// manifest last, so an interrupted prune leaves a manifest that fails
/// verification rather than an untracked archive. Returns the removed paths.
///
/// Only manifests recording the same [`DatabaseIdentity`] as `latest` are
/// candidates: a target name is not a database (`run --database-url` points one
/// plan at any database), so the backups of other databases sharing the directory
/// are never touched, whatever their age or number. Manifests that record no
/// identity (written before pgshepherd recorded one) are never deleted either:
/// which database they hold is unknown, and they may be its only backup; delete
/// them by hand. `keep` is at least 1: `latest` is never pruned. Files that are
/// not readable manifests are left alone.
///
/// Pre-restore snapshots (manifests with `snapshot_of`) are not backups: they
/// never count towards `keep`, and each is deleted only right after the backup it
/// belongs to. One whose backup is already gone (deleted by hand, or a prune
/// interrupted between the two) is kept: delete it by hand.
pub async fn prune(
    backup_dir: &Path,
    latest: &Backup,
    keep: u32,
) -> Result<Vec<PathBuf>, BackupError> {
    let Some(database) = latest.manifest.database.clone() else {
        // Cannot happen for a backup `take` wrote; without an identity nothing is
        // known to be of the same database, so nothing is deleted.
        return Ok(Vec::new());
    };
    let dir = backup_dir.join(path_component(&latest.manifest.target));
    let context = format!("pruning {}", dir.display());
    // The blocking pool does not inherit the caller's span: carry it, so that the
    // log lines below keep the run's fields.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(|| prune_in(&dir, &database, keep)))
        .await
        .map_err(|e| io_err(context)(io::Error::other(e)))?
}

fn prune_in(
    dir: &Path,
    database: &DatabaseIdentity,
    keep: u32,
) -> Result<Vec<PathBuf>, BackupError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("listing {}", dir.display()))(e)),
    };
    let mut manifests: Vec<(DateTime<Utc>, String, PathBuf)> = Vec::new();
    // Pre-restore snapshots by the manifest file name of the backup they belong to.
    let mut snapshots: Vec<(String, String, PathBuf)> = Vec::new();
    let mut unidentified = 0usize;
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
        if let Some(of) = backup.manifest.snapshot_of {
            snapshots.push((of, stem.to_string(), entry.path()));
            continue;
        }
        match &backup.manifest.database {
            Some(d) if d == database => {}
            Some(_) => continue,
            None => {
                unidentified += 1;
                continue;
            }
        }
        manifests.push((backup.manifest.created_at, stem.to_string(), entry.path()));
    }
    if unidentified > 0 {
        tracing::info!(
            unidentified,
            directory = %dir.display(),
            "backups whose manifest records no database identity are never pruned; delete them by hand"
        );
    }
    manifests.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    let mut removed = Vec::new();
    for (_, stem, manifest_path) in manifests.into_iter().skip(keep.max(1) as usize) {
        remove_archive(dir, &stem, &manifest_path, &mut removed)?;
        // A backup's pre-restore snapshots go with it, and after it: they hold
        // the writes its restore discarded, so they are never gone before it.
        let backup_manifest = format!("{stem}{MANIFEST_SUFFIX}");
        for (_, snapshot_stem, snapshot_manifest) in
            snapshots.iter().filter(|(of, _, _)| *of == backup_manifest)
        {
            remove_archive(dir, snapshot_stem, snapshot_manifest, &mut removed)?;
        }
    }
    if !removed.is_empty() {
        tracing::info!(database = %database, keep, removed = removed.len(), "pruned old backups");
    }
    Ok(removed)
}

/// Delete one archive (found by stem inside `dir`, never by the path written in
/// the manifest: pruning must not delete anything outside the backup directory),
/// then its manifest.
fn remove_archive(
    dir: &Path,
    stem: &str,
    manifest_path: &Path,
    removed: &mut Vec<PathBuf>,
) -> Result<(), BackupError> {
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
    fs::remove_file(manifest_path).map_err(io_err(format!(
        "deleting old manifest {}",
        manifest_path.display()
    )))?;
    removed.push(manifest_path.to_path_buf());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::backup::{ArchiveFormat, Manifest};

    fn identity(
        system_identifier: Option<&str>,
        server: Option<&str>,
        name: &str,
    ) -> DatabaseIdentity {
        DatabaseIdentity {
            system_identifier: system_identifier.map(str::to_string),
            server: server.map(str::to_string),
            name: name.to_string(),
        }
    }

    /// A manifest and an archive in `dir`, taken `minute` minutes past midnight.
    fn backup(dir: &Path, minute: u32, database: Option<DatabaseIdentity>) -> PathBuf {
        archive(dir, minute, database, None)
    }

    /// The pre-restore snapshot, taken at `minute`, of the backup taken at `of`.
    fn snapshot(dir: &Path, of: u32, minute: u32, database: DatabaseIdentity) -> PathBuf {
        archive(dir, minute, Some(database), Some(of))
    }

    fn archive(
        dir: &Path,
        minute: u32,
        database: Option<DatabaseIdentity>,
        snapshot_of: Option<u32>,
    ) -> PathBuf {
        let backup_stem = |m: u32| format!("20260101T00{m:02}00.000Z-r{m}");
        let stem = match snapshot_of {
            Some(of) => format!(
                "{}.pre-restore-20260101T00{minute:02}00.000Z",
                backup_stem(of)
            ),
            None => backup_stem(minute),
        };
        let archive = dir.join(format!("{stem}.dump"));
        fs::write(&archive, "x").unwrap();
        let manifest = Manifest {
            target: "app".into(),
            run_id: format!("r{minute}"),
            created_at: format!("2026-01-01T00:{minute:02}:00Z").parse().unwrap(),
            server_version: "15.0".into(),
            format: ArchiveFormat::Custom,
            path: archive,
            size_bytes: 1,
            sha256: "00".into(),
            files: Vec::new(),
            compression: 0,
            jobs: 1,
            applied_versions: Vec::new(),
            tables: Vec::new(),
            database,
            write_counters: Vec::new(),
            snapshot_of: snapshot_of.map(|of| format!("{}{MANIFEST_SUFFIX}", backup_stem(of))),
        };
        let path = dir.join(format!("{stem}{MANIFEST_SUFFIX}"));
        fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        path
    }

    #[test]
    fn pruning_goes_by_database_identity_and_spares_unidentified_backups() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let kx = identity(Some("7"), None, "kx");
        let ky = identity(Some("7"), None, "ky");
        // Same name, another cluster; and the same name known only by address.
        let kx_elsewhere = identity(Some("8"), None, "kx");
        let kx_by_address = identity(None, Some("10.0.0.1:5432"), "kx");
        let only_kx = backup(dir, 1, Some(kx.clone()));
        let legacy = backup(dir, 2, None);
        let other_cluster = backup(dir, 3, Some(kx_elsewhere));
        let by_address = backup(dir, 4, Some(kx_by_address));
        let old_ky = backup(dir, 5, Some(ky.clone()));
        let new_ky = backup(dir, 6, Some(ky.clone()));

        let removed = prune_in(dir, &ky, 1).unwrap();
        assert_eq!(
            removed,
            vec![dir.join("20260101T000500.000Z-r5.dump"), old_ky]
        );
        for kept in [&only_kx, &legacy, &other_cluster, &by_address, &new_ky] {
            assert!(kept.exists(), "{}", kept.display());
        }
        assert!(prune_in(dir, &kx, 1).unwrap().is_empty());
        assert!(legacy.exists());
    }

    #[test]
    fn a_snapshot_never_counts_as_a_backup_and_goes_only_after_its_own() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let db = identity(Some("7"), None, "kx");
        let b1 = backup(dir, 1, Some(db.clone()));
        let s1 = snapshot(dir, 1, 2, db.clone());
        let b3 = backup(dir, 3, Some(db.clone()));
        let s3 = snapshot(dir, 3, 4, db.clone());
        let b5 = backup(dir, 5, Some(db.clone()));
        // Its backup deleted by hand: kept.
        let orphan = snapshot(dir, 0, 6, db.clone());

        // keep 2: the two newest backups (5 and 3) stay whatever the snapshots' ages.
        let removed = prune_in(dir, &db, 2).unwrap();
        assert_eq!(
            removed,
            vec![
                dir.join("20260101T000100.000Z-r1.dump"),
                b1.clone(),
                dir.join("20260101T000100.000Z-r1.pre-restore-20260101T000200.000Z.dump"),
                s1.clone(),
            ]
        );
        for kept in [&b3, &s3, &b5, &orphan] {
            assert!(kept.exists(), "{}", kept.display());
        }
        assert!(!b1.exists() && !s1.exists());
    }

    #[test]
    fn an_unfinished_snapshot_is_discarded_and_finished_ones_stay() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let db = identity(Some("7"), None, "kx");
        backup(dir, 1, Some(db.clone()));
        let done = snapshot(dir, 1, 2, db);
        let unfinished = dir.join("20260101T000100.000Z-r1.pre-restore-20260101T000300.000Z.dump");
        fs::write(&unfinished, "x").unwrap();
        assert_eq!(
            discard_partial_snapshots(dir, "20260101T000100.000Z-r1"),
            vec![unfinished]
        );
        assert!(done.exists());
        assert!(dir.join("20260101T000100.000Z-r1.dump").exists());
    }

    #[test]
    fn a_manifest_without_a_database_identity_still_loads() {
        let root = tempfile::tempdir().unwrap();
        let path = backup(root.path(), 1, None);
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("\"database\""), "{text}");
        assert_eq!(Backup::load(&path).unwrap().manifest.database, None);
    }

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
