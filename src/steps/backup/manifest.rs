//! The manifest: what was dumped, when, from where, and the hash that proves the
//! archive is unchanged. Written last and atomically, so an archive without a
//! manifest is an unfinished backup.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::BackupError;
use super::error::io_err;
use super::files::sync_dir;
use super::writes::TableWrites;
use crate::plan::BackupFormat;

/// `<stem>.manifest.json` next to the archive `<stem>.dump` or `<stem>.dir`.
pub(super) const MANIFEST_SUFFIX: &str = ".manifest.json";

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
    /// Which database was dumped. Retention keeps and prunes per identity, never
    /// per target name: one target name can point at several databases
    /// (`run --database-url`). Absent in manifests written before pgshepherd
    /// recorded it; retention never deletes those (see [`prune`](super::prune)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseIdentity>,
    /// Every user table's write counters read just before pg_dump started (see
    /// [`writes`](super::writes)): what a restore compares with to say how many
    /// rows it discards. Empty in manifests written before pgshepherd recorded it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_counters: Vec<TableWrites>,
    /// Set on a pre-restore snapshot: the file name of the manifest of the backup
    /// whose restore it precedes. Retention never counts a snapshot as a backup
    /// and deletes it only together with that backup (see [`prune`](super::prune)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_of: Option<String>,
}

/// The identity of a database, as recorded in a manifest: its cluster and its name.
///
/// The cluster is its `system_identifier` (`pg_control_system()`, unique per
/// initdb, kept by physical replicas and by a restart or a move to another host).
/// PostgreSQL grants that function to PUBLIC, but a provider may revoke it; then
/// the cluster is known only as the address the server answered on
/// (`inet_server_addr()`, `local` over a Unix socket, and the `port` setting),
/// which tells two clusters apart but may name one cluster in two ways (its
/// address, `localhost`, its socket): retention then keeps more, never less.
/// Two identities are the same database only when every field is equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DatabaseIdentity {
    /// `pg_control_system().system_identifier`, in decimal (a u64 is beyond what
    /// JSON numbers carry exactly in most readers); `None` when the role may not
    /// read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
    /// Only without a system identifier: `ADDRESS:PORT` the server answered on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// `current_database()`.
    pub name: String,
}

impl std::fmt::Display for DatabaseIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.system_identifier, &self.server) {
            (Some(id), _) => write!(f, "database {} of cluster {id}", self.name),
            (None, Some(server)) => write!(f, "database {} on {server}", self.name),
            (None, None) => write!(f, "database {}", self.name),
        }
    }
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

/// Write the manifest atomically (temp file, fsync, rename, fsync the directory).
/// Blocking: call it through [`blocking`](super::files::blocking).
pub(super) fn write_manifest(path: &Path, manifest: &Manifest) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(manifest).expect("a manifest always serializes");
    let write = || -> io::Result<()> {
        let mut f = crate::private_fs::open(
            &tmp,
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true),
        )?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}
