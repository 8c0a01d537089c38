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
//! last, atomically: an archive without a manifest is an unfinished backup.
//!
//! Credentials reach pg_dump, pg_restore and psql through `PGPASSWORD` in their
//! environment, never through argv (visible in `ps`), and no error message here
//! contains a password: connection strings are printed through [`Dsn`]'s redacting
//! `Display`.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::pg::Dsn;
use crate::pg::cluster::PgBinaries;
use crate::plan::{BackupFormat, BackupSettings};

/// `application_name` of pgshepherd's backup and restore sessions.
pub const APPLICATION_NAME: &str = "pgshepherd-backup";

/// `application_name` of one run's pg_dump sessions, so that an interrupted backup
/// can find its own server sessions (see [`cancel`]).
pub fn dump_application_name(run_id: &str) -> String {
    format!("{APPLICATION_NAME} {run_id}")
}

/// pg_dump's `--lock-wait-timeout`: pg_dump takes ACCESS SHARE on every table when
/// it starts; stuck behind someone's ACCESS EXCLUSIVE it would also block everything
/// queued behind it, so it gives up instead.
const DUMP_LOCK_WAIT: Duration = Duration::from_secs(30);

/// Read size for pg_dump's stdout and for hashing files.
const CHUNK: usize = 1 << 20;

/// `progress` is called at most once per this many bytes (and once at the end).
const PROGRESS_STEP: u64 = 8 << 20;

/// Error output kept in messages: enough to see the cause, not a whole COPY stream.
const STDERR_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("while {context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("could not connect to {dsn} to {purpose}: {source}")]
    Connect {
        dsn: String,
        purpose: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("while {context} on {dsn}: {source}")]
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

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> BackupError {
    let context = context.into();
    move |source| BackupError::Io { context, source }
}

fn join(problems: &[VerifyProblem]) -> String {
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

/// pg_dump's archive format, as recorded in a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveFormat {
    /// One file (`pg_dump -Fc`), streamed through pgshepherd and hashed on the fly.
    Custom,
    /// A directory (`pg_dump -Fd -j N`), one file per table plus `toc.dat`.
    Directory,
}

impl From<BackupFormat> for ArchiveFormat {
    fn from(f: BackupFormat) -> Self {
        match f {
            BackupFormat::Custom => ArchiveFormat::Custom,
            BackupFormat::Directory => ArchiveFormat::Directory,
        }
    }
}

/// One file of a directory-format archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub name: String,
    pub size_bytes: u64,
    pub sha256: String,
}

/// What was dumped, when, from where, and the hash that proves it is unchanged.
/// Written next to the archive as `<stem>.manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub target: String,
    pub run_id: String,
    pub created_at: DateTime<Utc>,
    /// `server_version` of the dumped server.
    pub server_version: String,
    pub format: ArchiveFormat,
    /// The archive: a file (custom) or a directory.
    pub path: PathBuf,
    pub size_bytes: u64,
    /// Custom format: sha256 of the file (`sha256sum FILE`). Directory format:
    /// sha256 over `"<sha256>  <name>\n"` lines of every file sorted by name
    /// (`cd DIR && sha256sum * | LC_ALL=C sort -k2 | sha256sum`).
    pub sha256: String,
    /// Directory format only: every file with its own hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileDigest>,
    /// pg_dump compression level (0 = none).
    pub compression: u8,
    /// pg_dump jobs (directory format; 1 for custom).
    pub jobs: u32,
    /// Migration versions applied on the target when the backup was taken.
    pub applied_versions: Vec<i64>,
    /// Ordinary tables (`schema.table`, quoted where SQL needs it) present just
    /// before the dump; their data must be in the archive.
    pub tables: Vec<String>,
}

/// A backup on disk: its archive, its manifest and how long writing it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// The archive (same as `manifest.path`).
    pub path: PathBuf,
    pub manifest_path: PathBuf,
    pub manifest: Manifest,
    /// Wall time of pg_dump plus hashing and syncing the archive.
    pub dump_ms: u64,
}

impl Backup {
    /// Load a backup from its manifest (e.g. to restore it in a later process).
    pub fn load(manifest_path: &Path) -> Result<Backup, BackupError> {
        let text = fs::read(manifest_path)
            .map_err(io_err(format!("reading {}", manifest_path.display())))?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|source| BackupError::Manifest {
                path: manifest_path.to_path_buf(),
                source,
            })?;
        Ok(Backup {
            path: manifest.path.clone(),
            manifest_path: manifest_path.to_path_buf(),
            manifest,
            dump_ms: 0,
        })
    }
}

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

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    pub path: PathBuf,
    pub sha256: String,
    /// The database, with its password redacted.
    pub database: String,
    /// Tables of the manifest present after the restore (all of them, or it failed).
    pub tables: usize,
    pub duration_ms: u64,
}

/// Take a backup of `dsn` with pg_dump into `backup_dir/<target>/` and write its
/// manifest. `progress` receives the archive's size so far, in bytes, every few MiB.
///
/// The list of tables (which [`verify`] later requires data for) is read just
/// before the dump; pg_dump then works from its own snapshot.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(skip_all, fields(target = target, run_id = run_id, format = ?settings.format))]
pub async fn take(
    bins: &PgBinaries,
    dsn: &Dsn,
    settings: &BackupSettings,
    backup_dir: &Path,
    target: &str,
    run_id: &str,
    applied_versions: &[i64],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Backup, BackupError> {
    let started = Instant::now();
    let dir = backup_dir.join(path_component(target));
    fs::create_dir_all(&dir).map_err(io_err(format!(
        "creating backup directory {}",
        dir.display()
    )))?;
    let dir = fs::canonicalize(&dir).map_err(io_err(format!("resolving {}", dir.display())))?;

    let (server_version, tables) = inventory(dsn).await?;

    let created_at = Utc::now();
    let stem = format!(
        "{}-{}",
        created_at.format("%Y%m%dT%H%M%S%.3fZ"),
        path_component(run_id)
    );
    let format = ArchiveFormat::from(settings.format);
    let path = dir.join(match format {
        ArchiveFormat::Custom => format!("{stem}.dump"),
        ArchiveFormat::Directory => format!("{stem}.dir"),
    });
    let manifest_path = dir.join(format!("{stem}{MANIFEST_SUFFIX}"));

    let jobs = match format {
        ArchiveFormat::Custom => 1,
        ArchiveFormat::Directory => settings.jobs.max(1),
    };
    let digest = match format {
        ArchiveFormat::Custom => {
            dump_custom(
                bins,
                dsn,
                &dump_application_name(run_id),
                settings.compression,
                &path,
                progress,
            )
            .await?
        }
        ArchiveFormat::Directory => {
            dump_directory(
                bins,
                dsn,
                &dump_application_name(run_id),
                settings.compression,
                jobs,
                &path,
                progress,
            )
            .await?
        }
    };
    progress(digest.size_bytes);

    let manifest = Manifest {
        target: target.to_string(),
        run_id: run_id.to_string(),
        created_at,
        server_version,
        format,
        path: path.clone(),
        size_bytes: digest.size_bytes,
        sha256: digest.sha256,
        files: digest.files,
        compression: settings.compression,
        jobs,
        applied_versions: applied_versions.to_vec(),
        tables,
    };
    write_manifest(&manifest_path, &manifest)?;
    let dump_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        path = %path.display(),
        size_bytes = manifest.size_bytes,
        sha256 = %manifest.sha256,
        dump_ms,
        "backup written"
    );
    Ok(Backup {
        path,
        manifest_path,
        manifest,
        dump_ms,
    })
}

const MANIFEST_SUFFIX: &str = ".manifest.json";

/// The server version and the ordinary tables whose data pg_dump will write
/// (extension members are left out: pg_dump dumps only their definitions).
async fn inventory(dsn: &Dsn) -> Result<(String, Vec<String>), BackupError> {
    let client = dsn
        .connect(APPLICATION_NAME, &[("statement_timeout", "60s")])
        .await
        .map_err(|source| BackupError::Connect {
            dsn: dsn.to_string(),
            purpose: "list its tables before the backup",
            source,
        })?;
    let query_err = |context| {
        move |source| BackupError::Query {
            dsn: dsn.to_string(),
            context,
            source,
        }
    };
    let version: String = client
        .query_one("SELECT current_setting('server_version')", &[])
        .await
        .map_err(query_err("reading the server version"))?
        .get(0);
    let rows = client
        .query(
            r"SELECT format('%I.%I', n.nspname, c.relname)
                FROM pg_catalog.pg_class c
                JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind = 'r'
                 AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                 AND n.nspname NOT LIKE 'pg\_toast%'
                 AND n.nspname NOT LIKE 'pg\_temp%'
                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                                  WHERE d.classid = 'pg_catalog.pg_class'::regclass
                                    AND d.objid = c.oid AND d.deptype = 'e')
               ORDER BY n.nspname, c.relname",
            &[],
        )
        .await
        .map_err(query_err("listing tables before the backup"))?;
    Ok((version, rows.iter().map(|r| r.get(0)).collect()))
}

/// A pg tool with the target's connection in its environment.
fn tool(program: &Path, dsn: &Dsn, application_name: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.envs(dsn.libpq_env())
        .env("PGAPPNAME", application_name)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

fn spawn(
    cmd: &mut Command,
    tool: &'static str,
    program: &Path,
) -> Result<tokio::process::Child, BackupError> {
    cmd.spawn().map_err(|source| BackupError::Spawn {
        tool,
        program: program.to_path_buf(),
        source,
    })
}

async fn read_text(mut r: impl AsyncRead + Unpin) -> String {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf).await;
    tail(&String::from_utf8_lossy(&buf), STDERR_LINES)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Size and hash of an archive.
struct ArchiveDigest {
    size_bytes: u64,
    sha256: String,
    files: Vec<FileDigest>,
}

enum Chunk {
    Data(Vec<u8>),
    /// pg_dump exited 0 and its stdout is drained: sync and keep the file.
    Finish,
}

/// `pg_dump -Fc` to stdout, through us: every chunk is hashed and written as it
/// arrives, so the archive is never read a second time just to hash it. A thread
/// does the hashing and writing while this task keeps the pipe drained.
///
/// An archive written to a pipe has no data offsets in its table of contents:
/// pg_restore finds each table's data by skipping block headers instead of seeking
/// straight to it. Sequential restore, `pg_restore -j` and every check in [`verify`]
/// still work.
async fn dump_custom(
    bins: &PgBinaries,
    dsn: &Dsn,
    application_name: &str,
    compression: u8,
    path: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ArchiveDigest, BackupError> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(format!("creating {}", path.display())))?;
    let mut cmd = tool(&bins.pg_dump, dsn, application_name);
    cmd.arg("--format=custom")
        .arg(format!("--compress={compression}"))
        .arg(format!(
            "--lock-wait-timeout={}",
            DUMP_LOCK_WAIT.as_millis()
        ))
        .arg("--no-password")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match spawn(&mut cmd, "pg_dump", &bins.pg_dump) {
        Ok(c) => c,
        Err(e) => {
            let _ = fs::remove_file(path);
            return Err(e);
        }
    };
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    enlarge_pipe(stdout.as_raw_fd());

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(8);
    let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let writer_path = path.to_path_buf();
    let writer = tokio::task::spawn_blocking(move || -> io::Result<(u64, String)> {
        let mut file = file;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let result = (|| {
            while let Some(chunk) = rx.blocking_recv() {
                match chunk {
                    Chunk::Data(mut buf) => {
                        hasher.update(&buf);
                        file.write_all(&buf)?;
                        size += buf.len() as u64;
                        buf.clear();
                        let _ = spare_tx.send(buf);
                    }
                    Chunk::Finish => {
                        // pg_dump syncs its own output files; through a pipe it cannot.
                        file.sync_all()?;
                        return Ok(true);
                    }
                }
            }
            Ok(false)
        })();
        match result {
            Ok(true) => Ok((size, hex::encode(hasher.finalize()))),
            // Dump failed or this task was cancelled: leave no half archive behind.
            Ok(false) => {
                drop(file);
                let _ = fs::remove_file(&writer_path);
                Err(io::Error::other("backup abandoned"))
            }
            Err(e) => {
                drop(file);
                let _ = fs::remove_file(&writer_path);
                Err(e)
            }
        }
    });

    // Behind a mutex so that the pump future stays `Send` (the daemon drives runs
    // on a multi-threaded runtime); it is never contended.
    let spare_rx = std::sync::Mutex::new(spare_rx);
    let pump = async {
        let mut total = 0u64;
        let mut reported = 0u64;
        loop {
            let spare = spare_rx.lock().ok().and_then(|r| r.try_recv().ok());
            let mut buf = spare.unwrap_or_else(|| Vec::with_capacity(CHUNK));
            let n = stdout.read_buf(&mut buf).await?;
            if n == 0 {
                return Ok::<u64, io::Error>(total);
            }
            total += n as u64;
            if tx.send(Chunk::Data(buf)).await.is_err() {
                return Err(io::Error::other("the archive writer stopped"));
            }
            if total - reported >= PROGRESS_STEP {
                progress(total);
                reported = total;
            }
        }
    };
    let (pumped, stderr_text) = tokio::join!(pump, read_text(stderr));
    if pumped.is_err() {
        let _ = child.start_kill();
    }
    let status = child.wait().await.map_err(io_err("waiting for pg_dump"))?;
    let dump_ok = status.success() && pumped.is_ok();
    if dump_ok {
        let _ = tx.send(Chunk::Finish).await;
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| io_err("writing the archive")(io::Error::other(e)))?;
    if !status.success() {
        return Err(BackupError::ToolFailed {
            tool: "pg_dump",
            action: format!("of {dsn}"),
            status,
            stderr: stderr_text,
        });
    }
    let pumped = pumped.map_err(io_err("reading pg_dump's output"))?;
    let (size_bytes, sha256) = written.map_err(io_err(format!("writing {}", path.display())))?;
    debug_assert_eq!(pumped, size_bytes);
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(ArchiveDigest {
        size_bytes,
        sha256,
        files: Vec::new(),
    })
}

/// Ask for a 1 MiB pipe (Linux), so pg_dump is not paced by 64 KiB round trips.
/// Best effort: the default size only costs syscalls.
fn enlarge_pipe(fd: std::os::fd::RawFd) {
    #[cfg(target_os = "linux")]
    // SAFETY: fcntl on a pipe fd we own; failure is harmless.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, CHUNK as libc::c_int);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = fd;
}

/// `pg_dump -Fd -j N` into a new directory, then hash its files.
async fn dump_directory(
    bins: &PgBinaries,
    dsn: &Dsn,
    application_name: &str,
    compression: u8,
    jobs: u32,
    path: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ArchiveDigest, BackupError> {
    let mut cmd = tool(&bins.pg_dump, dsn, application_name);
    cmd.arg("--format=directory")
        .arg(format!("--jobs={jobs}"))
        .arg(format!("--compress={compression}"))
        .arg(format!(
            "--lock-wait-timeout={}",
            DUMP_LOCK_WAIT.as_millis()
        ))
        .arg("--no-password")
        .arg("--file")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = spawn(&mut cmd, "pg_dump", &bins.pg_dump)?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let wait = async {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                status = child.wait() => return status,
                _ = tick.tick() => progress(dir_size(path)),
            }
        }
    };
    let (status, stderr_text) = tokio::join!(wait, read_text(stderr));
    let status = status.map_err(io_err("waiting for pg_dump"))?;
    if !status.success() {
        let _ = fs::remove_dir_all(path);
        return Err(BackupError::ToolFailed {
            tool: "pg_dump",
            action: format!("of {dsn}"),
            status,
            stderr: stderr_text,
        });
    }
    let dir = path.to_path_buf();
    let files = tokio::task::spawn_blocking(move || hash_dir_files(&dir, jobs as usize))
        .await
        .map_err(|e| io_err("hashing the archive")(io::Error::other(e)))?
        .map_err(io_err(format!("hashing {}", path.display())))?;
    Ok(ArchiveDigest {
        size_bytes: files.iter().map(|f| f.size_bytes).sum(),
        sha256: combined_sha256(&files),
        files,
    })
}

fn dir_size(path: &Path) -> u64 {
    fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn sha256_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((size, hex::encode(hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

/// Hash every file of a directory archive, `workers` at a time, sorted by name.
fn hash_dir_files(dir: &Path, workers: usize) -> io::Result<Vec<FileDigest>> {
    let mut names: Vec<String> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                entry.path().display()
            )));
        }
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let workers = workers.clamp(1, names.len().max(1));
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<io::Result<FileDigest>>> = (0..names.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(name) = names.get(i) else {
                            return done;
                        };
                        let digest =
                            sha256_file(&dir.join(name)).map(|(size_bytes, sha256)| FileDigest {
                                name: name.clone(),
                                size_bytes,
                                sha256,
                            });
                        done.push((i, digest));
                    }
                })
            })
            .collect();
        for h in handles {
            for (i, d) in h.join().expect("hashing thread panicked") {
                results[i] = Some(d);
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.expect("every file was hashed"))
        .collect()
}

fn combined_sha256(files: &[FileDigest]) -> String {
    let mut hasher = Sha256::new();
    for f in files {
        hasher.update(format!("{}  {}\n", f.sha256, f.name).as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Re-hash an archive and compare it with its manifest.
fn check_digest(manifest: &Manifest, workers: usize) -> Result<(), VerifyProblem> {
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

/// Clean up after a `take` that was dropped half-way (the run was stopped): end
/// the server sessions of its pg_dump, which PostgreSQL keeps while they wait on a
/// lock even though the client is gone (and later lock requests queue behind
/// them), then remove its partial archive. Returns the files removed.
pub async fn cancel(dsn: &Dsn, backup_dir: &Path, target: &str, run_id: &str) -> Vec<PathBuf> {
    if let Ok(client) = dsn
        .connect("pgshepherd cancel-backup", &[("statement_timeout", "10s")])
        .await
    {
        let _ = client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                &[&dump_application_name(run_id)],
            )
            .await;
    }
    discard_partial(backup_dir, target, run_id)
}

/// Remove what an interrupted `take` of run `run_id` left in the target's backup
/// directory (an archive or directory without a manifest, or with one). Returns
/// what was removed; errors are ignored, there is nothing better to do with them.
pub fn discard_partial(backup_dir: &Path, target: &str, run_id: &str) -> Vec<PathBuf> {
    let dir = backup_dir.join(path_component(target));
    let Ok(entries) = fs::read_dir(&dir) else {
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
pub fn prune(backup_dir: &Path, target: &str, keep: u32) -> Result<Vec<PathBuf>, BackupError> {
    let dir = backup_dir.join(path_component(target));
    let entries = match fs::read_dir(&dir) {
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

/// Drops every user schema (all but pg_catalog, information_schema, pg_toast*,
/// pg_temp*) and the database-level objects an archive recreates that no schema
/// holds (large objects, publications), then recreates `public` the way initdb
/// makes it, so the archive's script (which, from pg_dump 15 on, assumes `public`
/// exists and only records changes to it) restores onto exactly that.
const RESET_SQL: &str = r"
BEGIN;
DO $pgshepherd$
DECLARE s text;
BEGIN
  FOR s IN SELECT nspname FROM pg_catalog.pg_namespace
            WHERE nspname NOT IN ('pg_catalog', 'information_schema')
              AND nspname NOT LIKE 'pg\_toast%'
              AND nspname NOT LIKE 'pg\_temp%'
  LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', s);
  END LOOP;
  PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;
  FOR s IN SELECT pubname FROM pg_catalog.pg_publication LOOP
    EXECUTE format('DROP PUBLICATION %I', s);
  END LOOP;
  IF current_setting('server_version_num')::int >= 150000 THEN
    CREATE SCHEMA public AUTHORIZATION pg_database_owner;
    GRANT USAGE ON SCHEMA public TO PUBLIC;
  ELSE
    CREATE SCHEMA public;
    GRANT ALL ON SCHEMA public TO PUBLIC;
  END IF;
  COMMENT ON SCHEMA public IS 'standard public schema';
END
$pgshepherd$;
";

/// Make the database exactly what the archive holds: objects created after the
/// backup are dropped, and rows written after it are lost (hence a plan's
/// `allow_data_loss`). Refuses when the archive no longer matches its manifest.
///
/// Atomicity: one psql session runs `BEGIN`, the schema reset, then the script
/// `pg_restore --single-transaction -f -` streams, whose last statement is the
/// `COMMIT`. Everything before that COMMIT is one transaction: if pg_restore dies
/// mid-archive, psql reaches end of input without a COMMIT and the server rolls the
/// whole thing back; if a statement fails, `ON_ERROR_STOP` ends the session, same
/// result. (`psql --single-transaction` would COMMIT at end of input even when the
/// stream was cut short, and a script made without `--single-transaction` carries
/// its own BEGIN/COMMIT around large objects; hence this shape.) The archive's own
/// `BEGIN` inside ours is a no-op warning, silenced by `client_min_messages=error`.
///
/// `lock_timeout` bounds every lock wait (DROP SCHEMA needs ACCESS EXCLUSIVE on
/// every table), so the restore fails and changes nothing rather than queueing
/// behind a long transaction while blocking everyone queued behind it.
///
/// Not covered: database settings, roles, subscriptions (DROP SUBSCRIPTION cannot
/// run in a transaction) and the rare object outside any schema that does not
/// depend on one. Ones created after the backup stay; if the archive also creates
/// one that still exists, the restore fails and changes nothing.
#[tracing::instrument(skip_all, fields(path = %backup.path.display(), database = %dsn))]
pub async fn restore(
    bins: &PgBinaries,
    dsn: &Dsn,
    backup: &Backup,
    lock_timeout: Duration,
) -> Result<RestoreReport, BackupError> {
    let started = Instant::now();
    let manifest = backup.manifest.clone();
    let workers = manifest.jobs.max(1) as usize;
    let digest = tokio::task::spawn_blocking(move || check_digest(&manifest, workers))
        .await
        .map_err(|e| io_err("hashing the archive")(io::Error::other(e)))?;
    if let Err(problem) = digest {
        return Err(BackupError::Tampered {
            path: backup.path.clone(),
            problem,
        });
    }

    let mut restore_cmd = Command::new(&bins.pg_restore);
    restore_cmd
        .arg("--single-transaction")
        .arg("--file=-")
        .arg(&backup.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut pg_restore = spawn(&mut restore_cmd, "pg_restore", &bins.pg_restore)?;
    let script: Stdio = pg_restore
        .stdout
        .take()
        .expect("stdout is piped")
        .try_into()
        .map_err(io_err("connecting pg_restore to psql"))?;
    let restore_stderr = pg_restore.stderr.take().expect("stderr is piped");

    let lock_ms = lock_timeout.as_millis().max(1);
    let mut psql_cmd = tool(&bins.psql, dsn, APPLICATION_NAME);
    psql_cmd
        .env(
            "PGOPTIONS",
            format!(
                "-c lock_timeout={lock_ms} -c statement_timeout=0 -c idle_in_transaction_session_timeout=0 \
                 -c client_min_messages=error"
            ),
        )
        .args(["--no-psqlrc", "--quiet", "--no-password", "--set", "ON_ERROR_STOP=1", "--set", "VERBOSITY=verbose"])
        .arg("--command")
        .arg(RESET_SQL)
        .arg("--file=-")
        .stdin(script)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut psql = spawn(&mut psql_cmd, "psql", &bins.psql)?;
    // The Command still holds our copy of the pipe's read end: close it, or a psql
    // that stops early (ON_ERROR_STOP) leaves pg_restore blocked writing forever.
    drop(psql_cmd);
    let psql_stderr = psql.stderr.take().expect("stderr is piped");

    let (restore_status, restore_err, psql_status, psql_err) = tokio::join!(
        pg_restore.wait(),
        read_text(restore_stderr),
        psql.wait(),
        read_text(psql_stderr)
    );
    let restore_status = restore_status.map_err(io_err("waiting for pg_restore"))?;
    let psql_status = psql_status.map_err(io_err("waiting for psql"))?;

    if !psql_status.success() {
        // 55P03 lock_not_available: the SQLSTATE reads the same in every server language.
        if psql_err.contains("55P03") {
            return Err(BackupError::RestoreLockTimeout {
                path: backup.path.clone(),
                dsn: dsn.to_string(),
                lock_timeout,
            });
        }
        let mut stderr = psql_err;
        if !restore_status.success() && !restore_err.is_empty() {
            stderr.push_str(&format!("\npg_restore: {restore_err}"));
        }
        return Err(BackupError::RestoreFailed {
            path: backup.path.clone(),
            dsn: dsn.to_string(),
            stderr,
        });
    }
    if !restore_status.success() {
        // The script stopped before its COMMIT; psql ended the session and the server
        // rolled the transaction back.
        return Err(BackupError::RestoreFailed {
            path: backup.path.clone(),
            dsn: dsn.to_string(),
            stderr: format!("pg_restore ({restore_status}): {restore_err}"),
        });
    }

    let tables = count_present_tables(dsn, &backup.manifest.tables).await?;
    if tables != backup.manifest.tables.len() {
        return Err(BackupError::RestoreFailed {
            path: backup.path.clone(),
            dsn: dsn.to_string(),
            stderr: format!(
                "after the restore only {tables} of the {} tables in the manifest exist; the session must have \
                 ended before the archive's COMMIT",
                backup.manifest.tables.len()
            ),
        });
    }
    let report = RestoreReport {
        path: backup.path.clone(),
        sha256: backup.manifest.sha256.clone(),
        database: dsn.to_string(),
        tables,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(tables, duration_ms = report.duration_ms, "backup restored");
    Ok(report)
}

async fn count_present_tables(dsn: &Dsn, tables: &[String]) -> Result<usize, BackupError> {
    if tables.is_empty() {
        return Ok(0);
    }
    let client = dsn
        .connect(APPLICATION_NAME, &[("statement_timeout", "60s")])
        .await
        .map_err(|source| BackupError::Connect {
            dsn: dsn.to_string(),
            purpose: "check the restored tables",
            source,
        })?;
    let row = client
        .query_one(
            "SELECT count(*) FROM unnest($1::text[]) AS t(name) WHERE to_regclass(t.name) IS NOT NULL",
            &[&tables],
        )
        .await
        .map_err(|source| BackupError::Query { dsn: dsn.to_string(), context: "checking the restored tables", source })?;
    Ok(row.get::<_, i64>(0) as usize)
}

/// A target or run id as one safe path component: anything but `[A-Za-z0-9._-]`
/// becomes `_`, and `.`/`..` cannot escape the backup directory.
fn path_component(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        cleaned.replace('.', "_") + "_"
    } else {
        cleaned
    }
}

/// Write the manifest atomically (temp file, fsync, rename, fsync the directory).
fn write_manifest(path: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(manifest).expect("a manifest always serializes");
    let write = || -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(format!("writing manifest {}", path.display()))(e)
    })?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

/// Make a new directory entry durable. Best effort: some filesystems refuse.
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
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

    #[test]
    fn path_components_cannot_escape() {
        assert_eq!(path_component("orders-db"), "orders-db");
        assert_eq!(path_component("../etc"), ".._etc");
        assert_eq!(path_component(".."), "___");
        assert_eq!(path_component(""), "_");
        assert_eq!(path_component("a/b c"), "a_b_c");
    }

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
