//! A migration set: `V{n}__{name}.sql` with optional `.down.sql` and `.verify.sql`,
//! loaded from a directory or from submitted file contents.

use std::path::PathBuf;

use serde::Serialize;

/// One SQL file of a migration.
#[derive(Debug, Clone, Serialize)]
pub struct Script {
    /// File name within the set, e.g. `V2__add_index.down.sql`.
    pub file: String,
    pub sql: String,
    /// sha256 of the file content, lowercase hex.
    pub checksum: String,
    /// `false` when the first line is `-- pgshepherd:no-transaction`.
    pub transactional: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    pub up: Script,
    pub down: Option<Script>,
    pub verify: Option<Script>,
}

impl Migration {
    /// `V3__add_index`, as people refer to it.
    pub fn label(&self) -> String {
        format!("V{}__{}", self.version, self.name)
    }
}

/// Versions strictly increasing with no gap or duplicate.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationSet {
    /// Identifies the set in the target's history table (the directory name by default).
    pub name: String,
    /// Where the files were read from, when they came from disk.
    pub dir: Option<PathBuf>,
    pub migrations: Vec<Migration>,
}
