//! Running pg_dump, pg_restore and psql: credentials in the environment, never in
//! argv (visible in `ps`), and only the tail of their error output kept.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::BackupError;
use crate::pg::Dsn;

/// `application_name` of pgshepherd's backup and restore sessions.
pub const APPLICATION_NAME: &str = "pgshepherd-backup";

/// Error output kept in messages: enough to see the cause, not a whole COPY stream.
pub(super) const STDERR_LINES: usize = 20;

/// A pg tool that connects (pg_dump, psql) with the target's connection in its
/// environment and the keepalives in `--dbname`.
pub(super) fn tool(program: &Path, dsn: &Dsn, application_name: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg(format!("--dbname={}", dsn.libpq_conninfo()))
        .envs(dsn.libpq_env())
        .env("PGAPPNAME", application_name)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

pub(super) fn spawn(
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

pub(super) async fn read_text(mut r: impl AsyncRead + Unpin) -> String {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf).await;
    tail(&String::from_utf8_lossy(&buf), STDERR_LINES)
}

pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
