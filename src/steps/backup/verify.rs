//! Read-back verification: a backup is only a backup once it has been read back.
//! Re-hash the archive against its manifest, check the table of contents has data
//! for every expected table, and decode every data block.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::error::{io_err, join};
use super::files::{combined_sha256, hash_dir_files, sha256_file};
use super::tool::{STDERR_LINES, spawn, tail};
use super::{ArchiveFormat, Backup, BackupError, Manifest, VerifyProblem};
use crate::pg::cluster::PgBinaries;

/// A successful verification and what it cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub path: PathBuf,
    pub sha256: String,
    pub size_bytes: u64,
    /// Expected tables found with data in the table of contents.
    pub tables_checked: usize,
    /// Re-hashing the archive.
    pub checksum_ms: u64,
    /// `pg_restore --list` and the table check.
    pub toc_ms: u64,
    /// `pg_restore -f /dev/null`: reading every data block.
    pub read_back_ms: u64,
    /// Wall time; the three parts run concurrently.
    pub total_ms: u64,
}

/// Re-hash an archive and compare it with its manifest.
pub(super) fn check_digest(manifest: &Manifest, workers: usize) -> Result<(), VerifyProblem> {
    let path = &manifest.path;
    match manifest.format {
        ArchiveFormat::Custom => {
            let (actual_size, actual) = sha256_file(path).map_err(|e| VerifyProblem::Missing {
                error: e.to_string(),
            })?;
            if actual != manifest.sha256 || actual_size != manifest.size_bytes {
                return Err(VerifyProblem::ChecksumMismatch {
                    expected: manifest.sha256.clone(),
                    actual,
                    expected_size: manifest.size_bytes,
                    actual_size,
                });
            }
            Ok(())
        }
        ArchiveFormat::Directory => {
            let files = hash_dir_files(path, workers).map_err(|e| VerifyProblem::Missing {
                error: e.to_string(),
            })?;
            let actual = combined_sha256(&files);
            if actual == manifest.sha256 && files == manifest.files {
                return Ok(());
            }
            let now: HashSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
            let then: HashSet<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
            let missing: Vec<String> = manifest
                .files
                .iter()
                .filter(|f| !now.contains(f.name.as_str()))
                .map(|f| f.name.clone())
                .collect();
            let unexpected: Vec<String> = files
                .iter()
                .filter(|f| !then.contains(f.name.as_str()))
                .map(|f| f.name.clone())
                .collect();
            let changed: Vec<String> = files
                .iter()
                .filter(|f| {
                    manifest.files.iter().any(|m| {
                        m.name == f.name && (m.sha256 != f.sha256 || m.size_bytes != f.size_bytes)
                    })
                })
                .map(|f| f.name.clone())
                .collect();
            if missing.is_empty() && unexpected.is_empty() && changed.is_empty() {
                // Per-file list matches but the combined hash does not: the manifest was edited.
                return Err(VerifyProblem::ChecksumMismatch {
                    expected: manifest.sha256.clone(),
                    actual,
                    expected_size: manifest.size_bytes,
                    actual_size: files.iter().map(|f| f.size_bytes).sum(),
                });
            }
            Err(VerifyProblem::FilesChanged {
                missing,
                unexpected,
                changed,
            })
        }
    }
}

/// Prove the backup can be restored: (a) the archive still hashes to its manifest's
/// sha256, (b) its table of contents has TABLE DATA for every expected table
/// (`expect_tables` when non-empty, else every table in the manifest), (c) every data
/// block reads back (`pg_restore -f /dev/null` exits 0). (a) and (c) each read the
/// whole archive; they run concurrently. All problems found are reported together.
#[tracing::instrument(skip_all, fields(path = %backup.path.display()))]
pub async fn verify(
    bins: &PgBinaries,
    backup: &Backup,
    expect_tables: &[String],
) -> Result<Verified, BackupError> {
    let started = Instant::now();
    let manifest = &backup.manifest;
    let workers = manifest.jobs.max(1) as usize;

    let checksum = {
        let manifest = manifest.clone();
        async move {
            let t = Instant::now();
            let r = tokio::task::spawn_blocking(move || check_digest(&manifest, workers))
                .await
                .unwrap_or_else(|e| {
                    Err(VerifyProblem::Missing {
                        error: format!("hashing task failed: {e}"),
                    })
                });
            (r, t.elapsed())
        }
    };
    let toc = async {
        let t = Instant::now();
        let r = check_toc(bins, manifest, expect_tables).await;
        (r, t.elapsed())
    };
    let read_back = async {
        let t = Instant::now();
        let r = read_back(bins, &manifest.path).await;
        (r, t.elapsed())
    };
    let ((sum, sum_t), (toc, toc_t), (back, back_t)) = tokio::join!(checksum, toc, read_back);

    let mut problems = Vec::new();
    let mut tables_checked = 0;
    if let Err(p) = sum {
        problems.push(p);
    }
    match toc {
        Ok(n) => tables_checked = n,
        Err(p) => problems.push(p),
    }
    match back {
        Ok(()) => {}
        Err(BackupError::ToolFailed { stderr, .. }) => {
            problems.push(VerifyProblem::ReadBackFailed { stderr })
        }
        Err(e) => return Err(e),
    }
    if !problems.is_empty() {
        tracing::warn!(problems = %join(&problems), "backup failed verification");
        return Err(BackupError::VerifyFailed {
            path: backup.path.clone(),
            problems,
        });
    }
    let verified = Verified {
        path: backup.path.clone(),
        sha256: manifest.sha256.clone(),
        size_bytes: manifest.size_bytes,
        tables_checked,
        checksum_ms: sum_t.as_millis() as u64,
        toc_ms: toc_t.as_millis() as u64,
        read_back_ms: back_t.as_millis() as u64,
        total_ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(
        tables = verified.tables_checked,
        checksum_ms = verified.checksum_ms,
        read_back_ms = verified.read_back_ms,
        total_ms = verified.total_ms,
        "backup verified"
    );
    Ok(verified)
}

/// `pg_restore --list` and the expected-tables check; returns how many tables were checked.
async fn check_toc(
    bins: &PgBinaries,
    manifest: &Manifest,
    expect_tables: &[String],
) -> Result<usize, VerifyProblem> {
    let out = Command::new(&bins.pg_restore)
        .arg("--list")
        .arg(&manifest.path)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| VerifyProblem::TocUnreadable {
            stderr: format!("could not run {}: {e}", bins.pg_restore.display()),
        })?;
    if !out.status.success() {
        return Err(VerifyProblem::TocUnreadable {
            stderr: tail(&String::from_utf8_lossy(&out.stderr), STDERR_LINES),
        });
    }
    let toc = TableDataIndex::parse(&String::from_utf8_lossy(&out.stdout));
    let missing = missing_tables(&toc, &manifest.tables, expect_tables);
    if !missing.is_empty() {
        return Err(VerifyProblem::MissingTables { tables: missing });
    }
    Ok(if expect_tables.is_empty() {
        manifest.tables.len()
    } else {
        expect_tables.len()
    })
}

/// `pg_restore -f /dev/null ARCHIVE`: decodes every data block, fails on a short or
/// garbled one.
async fn read_back(bins: &PgBinaries, archive: &Path) -> Result<(), BackupError> {
    let mut cmd = Command::new(&bins.pg_restore);
    cmd.arg("--file=/dev/null")
        .arg(archive)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = spawn(&mut cmd, "pg_restore", &bins.pg_restore)?;
    let out = child
        .wait_with_output()
        .await
        .map_err(io_err("waiting for pg_restore"))?;
    if !out.status.success() {
        return Err(BackupError::ToolFailed {
            tool: "pg_restore",
            action: format!("read-back of {}", archive.display()),
            status: out.status,
            stderr: tail(&String::from_utf8_lossy(&out.stderr), STDERR_LINES),
        });
    }
    Ok(())
}

/// The `schema name` pairs that have a TABLE DATA entry in `pg_restore --list`
/// output (`3320; 0 16385 TABLE DATA public orders owner`). Names are printed raw,
/// so each entry is stored both with and without its last word (the owner).
struct TableDataIndex {
    entries: HashSet<String>,
}

impl TableDataIndex {
    fn parse(list: &str) -> TableDataIndex {
        let mut entries = HashSet::new();
        for line in list.lines() {
            if line.starts_with(';') {
                continue;
            }
            let Some((_, rest)) = line.split_once(" TABLE DATA ") else {
                continue;
            };
            let rest = rest.trim_end();
            entries.insert(rest.to_string());
            if let Some((without_owner, _)) = rest.rsplit_once(' ') {
                entries.insert(without_owner.to_string());
            }
        }
        TableDataIndex { entries }
    }

    fn has(&self, schema: &str, name: &str) -> bool {
        self.entries.contains(&format!("{schema} {name}"))
    }
}

/// Split `schema.table` the way SQL reads it: unquoted parts fold to lower case,
/// `"Quoted"` parts are kept exactly. `None` when it is not one or two identifiers.
fn parse_qualified(s: &str) -> Option<(Option<String>, String)> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = s.trim().chars().peekable();
    let mut quoted_part = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted_part = true;
                loop {
                    match chars.next()? {
                        '"' if chars.peek() == Some(&'"') => {
                            chars.next();
                            current.push('"');
                        }
                        '"' => break,
                        other => current.push(other),
                    }
                }
            }
            '.' => {
                if current.is_empty() && !quoted_part {
                    return None;
                }
                parts.push(std::mem::take(&mut current));
                quoted_part = false;
            }
            c => current.extend(c.to_lowercase()),
        }
    }
    if current.is_empty() && !quoted_part {
        return None;
    }
    parts.push(current);
    match parts.len() {
        1 => Some((None, parts.pop()?)),
        2 => {
            let name = parts.pop()?;
            Some((parts.pop(), name))
        }
        _ => None,
    }
}

/// Expected tables (as written) without data in the archive. An unqualified name
/// means that table in whatever schema the manifest has it; a name the database did
/// not have at backup time is missing too.
fn missing_tables(
    toc: &TableDataIndex,
    manifest_tables: &[String],
    expect_tables: &[String],
) -> Vec<String> {
    let known: Vec<(String, String)> = manifest_tables
        .iter()
        .filter_map(|t| parse_qualified(t))
        .map(|(schema, name)| (schema.unwrap_or_else(|| "public".into()), name))
        .collect();
    let wanted: &[String] = if expect_tables.is_empty() {
        manifest_tables
    } else {
        expect_tables
    };
    let mut missing = Vec::new();
    for table in wanted {
        let found = match parse_qualified(table) {
            Some((Some(schema), name)) => toc.has(&schema, &name),
            Some((None, name)) => {
                let candidates: Vec<&(String, String)> =
                    known.iter().filter(|(_, n)| *n == name).collect();
                !candidates.is_empty() && candidates.iter().all(|(s, n)| toc.has(s, n))
            }
            None => false,
        };
        if !found {
            missing.push(table.clone());
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names_read_like_sql() {
        assert_eq!(
            parse_qualified("public.orders"),
            Some((Some("public".into()), "orders".into()))
        );
        assert_eq!(parse_qualified("Orders"), Some((None, "orders".into())));
        assert_eq!(
            parse_qualified(r#""Sales"."Big ""Q"".x""#),
            Some((Some("Sales".into()), "Big \"Q\".x".into()))
        );
        assert_eq!(parse_qualified("a.b.c"), None);
        assert_eq!(parse_qualified("a."), None);
    }

    #[test]
    fn toc_lookup_finds_table_data_and_reports_missing_tables() {
        let list = "\
;
; Archive created at 2025-01-01 00:00:00 UTC
215; 1259 16385 TABLE public orders postgres
3320; 0 16385 TABLE DATA public orders postgres
3321; 0 16390 TABLE DATA Sales Big Table app
";
        let toc = TableDataIndex::parse(list);
        let manifest = vec![
            "public.orders".to_string(),
            r#""Sales"."Big Table""#.to_string(),
            "public.gone".to_string(),
        ];
        assert_eq!(
            missing_tables(&toc, &manifest, &[]),
            vec!["public.gone".to_string()]
        );
        assert!(
            missing_tables(
                &toc,
                &manifest,
                &["orders".into(), r#""Sales"."Big Table""#.into()]
            )
            .is_empty()
        );
        assert_eq!(
            missing_tables(&toc, &manifest, &["nosuch".into()]),
            vec!["nosuch".to_string()]
        );
    }
}
