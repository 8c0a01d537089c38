//! Restore: make the database exactly what a verified archive holds, in one
//! transaction, or change nothing.

use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::error::io_err;
use super::readiness::{ExtensionOwnerChange, owner_changes};
use super::tool::{APPLICATION_NAME, read_text, spawn, tool};
use super::verify::check_digest;
use super::{Backup, BackupError};
use crate::pg::Dsn;
use crate::pg::cluster::PgBinaries;

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
    /// Extensions the restore dropped and created again as the restoring role,
    /// which now owns them (PostgreSQL cannot give an extension to another owner).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension_owner_changes: Vec<ExtensionOwnerChange>,
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
/// Extensions in the dropped schemas are created again by the archive's script, as
/// the role restoring them: each is then owned by that role, whoever owned it
/// before ([`RestoreReport::extension_owner_changes`] names them). Whether the
/// role can do all this at all is [`check_restore`](super::check_restore)'s
/// question, asked before the run changes anything.
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

    let extension_owner_changes = owner_changes(dsn).await;

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
        extension_owner_changes,
    };
    for change in &report.extension_owner_changes {
        tracing::warn!(
            extension = %change.extension,
            owner_before = %change.owner_before,
            owner_after = %change.owner_after,
            "the restore changed an extension's owner"
        );
    }
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
