//! Taking a backup: pg_dump into the backup directory, hashed while it is written,
//! then the manifest; and cancelling one that a stopped run left half-way.

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::error::io_err;
use super::files::{
    CHUNK, blocking, combined_sha256, dir_size, hash_dir_files, path_component, sync_dir,
};
use super::manifest::{MANIFEST_SUFFIX, write_manifest};
use super::retention::{discard_partial, discard_partial_snapshots};
use super::tool::{APPLICATION_NAME, read_text, spawn, tool};
use super::writes::{self, TableWrites};
use super::{ArchiveFormat, Backup, BackupError, DatabaseIdentity, FileDigest, Manifest};
use crate::pg::Dsn;
use crate::pg::cluster::PgBinaries;
use crate::plan::BackupSettings;

/// `application_name` of one run's pg_dump sessions, so that an interrupted backup
/// can find its own server sessions (see [`cancel`]).
pub fn dump_application_name(run_id: &str) -> String {
    format!("{APPLICATION_NAME} {run_id}")
}

/// pg_dump's `--lock-wait-timeout`: pg_dump takes ACCESS SHARE on every table when
/// it starts; stuck behind someone's ACCESS EXCLUSIVE it would also block everything
/// queued behind it, so it gives up instead.
const DUMP_LOCK_WAIT: Duration = Duration::from_secs(30);

/// `progress` is called at most once per this many bytes (and once at the end).
const PROGRESS_STEP: u64 = 8 << 20;

/// Take a backup of `dsn` with pg_dump into `backup_dir/<target>/` and write its
/// manifest. `progress` receives the archive's size so far, in bytes, every few MiB.
///
/// The list of tables (which [`verify`](super::verify()) later requires data for) is read just
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
    let dir = backup_dir.join(path_component(target));
    let create = dir.clone();
    blocking(
        format!("creating backup directory {}", dir.display()),
        move || crate::private_fs::create_dir_all(&create),
    )
    .await?;
    let resolve = dir.clone();
    let dir = blocking(format!("resolving {}", dir.display()), move || {
        fs::canonicalize(resolve)
    })
    .await?;
    let archive = Archive {
        dir,
        stem: Box::new(move |created_at| {
            format!("{}-{}", created_at.format(STAMP), path_component(run_id))
        }),
        target,
        run_id,
        snapshot_of: None,
    };
    write(bins, dsn, settings, archive, applied_versions, progress).await
}

/// Take the pre-restore snapshot of `dsn`: a backup like any other (same format,
/// checks and file modes), written next to `backup` (the one about to be restored)
/// as `<backup's stem>.pre-restore-<UTC timestamp>`, its manifest naming `backup`
/// in `snapshot_of` so that retention keeps it as long as `backup`.
#[tracing::instrument(skip_all, fields(run_id = run_id, backup = %backup.path.display()))]
pub async fn take_snapshot(
    bins: &PgBinaries,
    dsn: &Dsn,
    settings: &BackupSettings,
    backup: &Backup,
    run_id: &str,
    applied_versions: &[i64],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Backup, BackupError> {
    let manifest_name = backup
        .manifest_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let backup_stem = manifest_name
        .strip_suffix(MANIFEST_SUFFIX)
        .unwrap_or(&manifest_name)
        .to_string();
    let dir = backup
        .manifest_path
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    // A rollback resumed after a crash mid-snapshot starts a new one: the old
    // one's unfinished archive would otherwise stay forever (retention goes by
    // manifests).
    let (scan, stem) = (dir.clone(), backup_stem.clone());
    let removed = blocking(format!("cleaning up {}", dir.display()), move || {
        Ok(discard_partial_snapshots(&scan, &stem))
    })
    .await?;
    if !removed.is_empty() {
        tracing::info!(removed = ?removed, "removed an unfinished pre-restore snapshot");
    }
    let archive = Archive {
        dir,
        stem: Box::new(move |created_at| {
            format!("{backup_stem}{SNAPSHOT_INFIX}{}", created_at.format(STAMP))
        }),
        target: &backup.manifest.target,
        run_id,
        snapshot_of: Some(manifest_name),
    };
    write(bins, dsn, settings, archive, applied_versions, progress).await
}

/// The UTC timestamp in archive names.
const STAMP: &str = "%Y%m%dT%H%M%S%.3fZ";

/// Between a backup's stem and the timestamp of a pre-restore snapshot of it.
pub(super) const SNAPSHOT_INFIX: &str = ".pre-restore-";

/// Where an archive goes and what its manifest says it is.
struct Archive<'a> {
    /// An existing directory.
    dir: PathBuf,
    /// The file stem, from the creation time.
    stem: Box<dyn FnOnce(DateTime<Utc>) -> String + Send + 'a>,
    target: &'a str,
    run_id: &'a str,
    snapshot_of: Option<String>,
}

async fn write(
    bins: &PgBinaries,
    dsn: &Dsn,
    settings: &BackupSettings,
    archive: Archive<'_>,
    applied_versions: &[i64],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Backup, BackupError> {
    let started = Instant::now();
    let Archive {
        dir,
        stem,
        target,
        run_id,
        snapshot_of,
    } = archive;
    let (server_version, tables, database, write_counters) = inventory(dsn).await?;

    let created_at = Utc::now();
    let stem = stem(created_at);
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
        database: Some(database),
        write_counters,
        snapshot_of,
    };
    let manifest = {
        let path = manifest_path.clone();
        blocking(
            format!("writing manifest {}", manifest_path.display()),
            move || write_manifest(&path, &manifest).map(|()| manifest),
        )
        .await?
    };
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

/// The server version, the ordinary tables whose data pg_dump will write
/// (extension members are left out: pg_dump dumps only their definitions), the
/// database's identity and its tables' write counters.
async fn inventory(
    dsn: &Dsn,
) -> Result<(String, Vec<String>, DatabaseIdentity, Vec<TableWrites>), BackupError> {
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
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_database(), \
                    coalesce(host(inet_server_addr()), 'local') || ':' || current_setting('port')",
            &[],
        )
        .await
        .map_err(query_err("reading the server version"))?;
    let version: String = row.get(0);
    // PUBLIC may execute pg_control_system() unless the provider revoked it; any
    // error here (permission denied, no such function on a fork) means "unknown",
    // and the address stands in for the cluster (see DatabaseIdentity).
    let system_identifier = client
        .query_one(
            "SELECT system_identifier::text FROM pg_catalog.pg_control_system()",
            &[],
        )
        .await
        .ok()
        .and_then(|r| r.get::<_, Option<String>>(0));
    if system_identifier.is_none() {
        tracing::info!(
            "pg_control_system() is not readable by this role: backups of this database are told apart by \
             server address and database name"
        );
    }
    let database = DatabaseIdentity {
        server: match system_identifier {
            Some(_) => None,
            None => Some(row.get(2)),
        },
        system_identifier,
        name: row.get(1),
    };
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
    let counters = writes::read(&client).await.map_err(query_err(
        "reading the tables' write counters before the backup",
    ))?;
    Ok((
        version,
        rows.iter().map(|r| r.get(0)).collect(),
        database,
        counters,
    ))
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
/// straight to it. Sequential restore, `pg_restore -j` and every check in [`verify`](super::verify())
/// still work.
async fn dump_custom(
    bins: &PgBinaries,
    dsn: &Dsn,
    application_name: &str,
    compression: u8,
    path: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ArchiveDigest, BackupError> {
    let create = path.to_path_buf();
    let file = blocking(format!("creating {}", path.display()), move || {
        crate::private_fs::open(&create, fs::OpenOptions::new().write(true).create_new(true))
    })
    .await?;
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
            let _ = tokio::fs::remove_file(path).await;
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
                        sync_dir(writer_path.parent().unwrap_or(Path::new(".")));
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
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                status = child.wait() => return status,
                _ = tick.tick() => {
                    // A directory scan: on the blocking pool, like every other one.
                    let dir = path.to_path_buf();
                    if let Ok(size) = tokio::task::spawn_blocking(move || dir_size(&dir)).await {
                        progress(size);
                    }
                }
            }
        }
    };
    let (status, stderr_text) = tokio::join!(wait, read_text(stderr));
    let status = status.map_err(io_err("waiting for pg_dump"))?;
    if !status.success() {
        let _ = tokio::fs::remove_dir_all(path).await;
        return Err(BackupError::ToolFailed {
            tool: "pg_dump",
            action: format!("of {dsn}"),
            status,
            stderr: stderr_text,
        });
    }
    let dir = path.to_path_buf();
    let files = blocking(format!("hashing {}", path.display()), move || {
        // pg_dump creates the directory 0700 but its files with the umask. No one
        // else could read them meanwhile: the target directory above is 0700.
        crate::private_fs::restrict_dir(&dir)?;
        hash_dir_files(&dir, jobs as usize)
    })
    .await?;
    Ok(ArchiveDigest {
        size_bytes: files.iter().map(|f| f.size_bytes).sum(),
        sha256: combined_sha256(&files),
        files,
    })
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
    discard_partial(backup_dir, target, run_id).await
}
