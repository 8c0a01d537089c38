//! The scratch copy a rehearsal works on: a new database on the target's
//! server, filled from a fresh `pg_dump` of the target through pgshepherd's
//! own backup and restore code (the same archive, digest and one-transaction
//! restore a run's backup gets).
//!
//! `CREATE DATABASE ... TEMPLATE target` would be quicker, but PostgreSQL
//! refuses it while anyone else is connected to the target, which on a live
//! server is always. The target is only read: `pg_dump` works from its own
//! snapshot, and `CREATE DATABASE` / `DROP DATABASE` run on the target's
//! connection but change only the scratch database.

use std::time::Duration;

use crate::pg::Dsn;
use crate::pg::cluster::PgBinaries;
use crate::plan::{BackupFormat, BackupSettings};
use crate::steps::backup::{self, Backup, BackupError};

/// `application_name` of the session that creates and drops the scratch database.
const APPLICATION_NAME: &str = "pgshepherd rehearse";

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("cannot connect to {dsn} to create the scratch database: {}", crate::pg::server_message(.source))]
    Connect {
        dsn: String,
        source: tokio_postgres::Error,
    },
    #[error("cannot create the scratch database {name}: {}", crate::pg::server_message(.source))]
    Create {
        name: String,
        source: tokio_postgres::Error,
    },
    #[error("while copying the target into the scratch database: {0}")]
    Copy(#[from] BackupError),
    #[error("cannot make a private directory for the scratch copy's archive: {0}")]
    Dir(std::io::Error),
    #[error("cannot drop the scratch database {name}: {}", crate::pg::server_message(.source))]
    Drop {
        name: String,
        source: tokio_postgres::Error,
    },
}

/// The name of the scratch database for `target`'s rehearsal `run_id`:
/// recognisable in `\l`, within PostgreSQL's 63 bytes.
pub fn scratch_name(target: &Dsn, run_id: &str) -> String {
    let suffix = format!("_rehearsal_{run_id}");
    let mut base: String = target
        .dbname()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    base.truncate(63 - suffix.len());
    format!("{base}{suffix}")
}

/// Create the database `name` on `target`'s server (empty, from `template0`).
pub async fn create(target: &Dsn, name: &str) -> Result<Dsn, ScratchError> {
    let client = connect(target).await?;
    client
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE template0",
            quote(name)
        ))
        .await
        .map_err(|source| ScratchError::Create {
            name: name.to_string(),
            source,
        })?;
    Ok(target.with_dbname(name))
}

/// Copy `target` into the (empty or disposable) database `scratch`: a custom
/// format archive in a private temporary directory, restored in one transaction.
/// Everything `scratch` held before is replaced.
pub async fn copy(
    bins: &PgBinaries,
    target: &Dsn,
    scratch: &Dsn,
    target_name: &str,
    run_id: &str,
    lock_timeout: Duration,
) -> Result<(), ScratchError> {
    let dir = tempfile::Builder::new()
        .prefix("pgshepherd-rehearse-")
        .tempdir()
        .map_err(ScratchError::Dir)?;
    let settings = BackupSettings {
        enabled: true,
        format: BackupFormat::Custom,
        jobs: 1,
        compression: 0,
        keep: 1,
        expect_tables: Vec::new(),
    };
    let archive = backup::take(
        bins,
        target,
        &settings,
        dir.path(),
        target_name,
        run_id,
        &[],
        &|_| {},
    )
    .await?;
    restore(bins, scratch, &archive, lock_timeout).await
    // `dir` goes out of scope here, success or not: the archive (the target's
    // data) is removed with it at once.
}

/// Fill `scratch` from an existing backup (`pgshepherd rehearse
/// --from-backup`): the same one-transaction restore, which refuses an
/// archive that no longer matches its manifest's sha256.
pub async fn restore(
    bins: &PgBinaries,
    scratch: &Dsn,
    archive: &Backup,
    lock_timeout: Duration,
) -> Result<(), ScratchError> {
    backup::restore(bins, scratch, archive, lock_timeout).await?;
    Ok(())
}

/// Drop the scratch database `name`, ending sessions still in it (PostgreSQL
/// 13 and later; an older server refuses while one is left).
pub async fn drop(target: &Dsn, name: &str) -> Result<(), ScratchError> {
    let client = connect(target).await?;
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|source| ScratchError::Drop {
            name: name.to_string(),
            source,
        })?
        .get(0);
    let force = if version >= 130000 {
        " WITH (FORCE)"
    } else {
        ""
    };
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {}{force}", quote(name)))
        .await
        .map_err(|source| ScratchError::Drop {
            name: name.to_string(),
            source,
        })
}

async fn connect(target: &Dsn) -> Result<tokio_postgres::Client, ScratchError> {
    target
        .connect(APPLICATION_NAME, &[])
        .await
        .map_err(|source| ScratchError::Connect {
            dsn: target.to_string(),
            source,
        })
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_name_names_the_target_and_fits() {
        let dsn: Dsn = "postgres://u@h/app-db".parse().unwrap();
        assert_eq!(
            scratch_name(&dsn, "0123456789ab"),
            "app_db_rehearsal_0123456789ab"
        );
        let long: Dsn = format!("postgres://u@h/{}", "x".repeat(80))
            .parse()
            .unwrap();
        assert_eq!(scratch_name(&long, "0123456789ab").len(), 63);
    }
}
