//! Restore: make the database exactly what a verified archive holds, in one
//! transaction, or change nothing.

use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, ChildStdout, Command};

use super::error::io_err;
use super::files::CHUNK;
use super::readiness::{ExtensionOwnerChange, owner_changes};
use super::tool::{APPLICATION_NAME, read_text, spawn, tool};
use super::verify::check_digest;
use super::writes::{TableWrites, counters_sql};
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
    /// Every user table's write counters, read inside the restore once its locks
    /// held off every writer, just before the old tables were dropped.
    #[serde(default)]
    pub write_counters: Vec<TableWrites>,
    /// Sequences the archive would have set back below what they had handed out,
    /// and that the restore set forward again before its COMMIT.
    #[serde(default)]
    pub sequences_advanced: Vec<SequenceAdvance>,
    /// How long writers were blocked: from the moment the restore held its
    /// exclusive locks on every table to just before its COMMIT.
    pub stall_ms: u64,
    /// ANALYZE of the database after the restore (the restored tables have no
    /// planner statistics until then); `None` when it failed (a warning is logged).
    #[serde(default)]
    pub analyze_ms: Option<u64>,
}

/// A sequence the restore moved forward: the archive set it to `restored`
/// (`None`: never used when the backup was taken), but it had already handed out
/// `set_to` before the restore, so that is where it stands now (its next value
/// is past it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceAdvance {
    /// `schema.sequence`, quoted where SQL needs it.
    pub sequence: String,
    pub restored: Option<i64>,
    pub set_to: i64,
}

/// Written to the restoring psql session before the archive's script: the
/// transaction, every table locked at once (so that no write lands between the
/// readings below and the drop), the moment writers started to wait, every
/// sequence's value and every table's write counters, then the reset
/// ([`RESET_SQL`]). Results are printed as lines starting with a `pgshepherd-`
/// marker; the archive's own output (`set_config`, `setval`) never starts so.
fn head_sql() -> String {
    let counters = counters_sql("pg_stat_user_tables");
    format!(
        r"BEGIN;
DO $pgshepherd$
DECLARE t text;
BEGIN
  SELECT string_agg(format('%I.%I', n.nspname, c.relname), ', ') INTO t
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'p')
     AND n.nspname NOT IN ('pg_catalog', 'information_schema')
     AND n.nspname NOT LIKE 'pg\_toast%'
     AND n.nspname NOT LIKE 'pg\_temp%';
  IF t IS NOT NULL THEN
    EXECUTE 'LOCK TABLE ' || t || ' IN ACCESS EXCLUSIVE MODE';
  END IF;
END
$pgshepherd$;
CREATE TEMPORARY TABLE pgshepherd_restore ON COMMIT DROP AS SELECT clock_timestamp() AS locked_at;
CREATE TEMPORARY TABLE pgshepherd_sequences ON COMMIT DROP AS
  SELECT format('%I.%I', schemaname, sequencename) AS name, last_value FROM pg_catalog.pg_sequences;
SELECT concat_ws(E'\t', '{WRITES}', table_name, n_tup_ins, n_tup_upd, n_tup_del) FROM ({counters}) AS c;
{RESET_SQL}"
    )
}

/// Inserted before the archive's final COMMIT: every sequence that the archive set
/// back below what it had handed out before the restore goes forward to that
/// value again (for a descending one: down), inside the same transaction, so no
/// session ever sees it lower and an acknowledged id is never handed out twice.
/// Then how long the locks have been held.
const TAIL_SQL: &str = r"
SELECT concat_ws(E'\t', 'pgshepherd-sequence', s.name, r.last_value,
                 pg_catalog.setval(s.name::pg_catalog.regclass, s.last_value, true))
  FROM pg_temp.pgshepherd_sequences s
  JOIN pg_catalog.pg_sequences r ON pg_catalog.format('%I.%I', r.schemaname, r.sequencename) = s.name
 WHERE s.last_value IS NOT NULL
   AND (r.last_value IS NULL
        OR CASE WHEN r.increment_by > 0 THEN s.last_value > r.last_value
                ELSE s.last_value < r.last_value END);
SELECT concat_ws(E'\t', 'pgshepherd-stall',
                 (extract(epoch FROM clock_timestamp() - locked_at) * 1000)::bigint)
  FROM pg_temp.pgshepherd_restore;
";

const WRITES: &str = "pgshepherd-writes";

/// Drops every user schema (all but pg_catalog, information_schema, pg_toast*,
/// pg_temp*) and the database-level objects an archive recreates that no schema
/// holds (large objects, publications), then recreates `public` the way initdb
/// makes it, so the archive's script (which, from pg_dump 15 on, assumes `public`
/// exists and only records changes to it) restores onto exactly that.
const RESET_SQL: &str = r"
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

/// The end of the archive's script that is held back until pg_restore has exited,
/// so the COMMIT in it can be found and [`TAIL_SQL`] put before it.
const HOLD_BACK: usize = 64 << 10;

impl std::fmt::Display for SequenceAdvance {
    /// `public.rental_rental_id_seq 16049 → 16116`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.restored {
            Some(r) => write!(f, "{} {r} → {}", self.sequence, self.set_to),
            None => write!(f, "{} unused → {}", self.sequence, self.set_to),
        }
    }
}

/// Make the database exactly what the archive holds: objects created after the
/// backup are dropped, and rows written after it are lost (hence a plan's
/// `allow_data_loss`). Refuses when the archive no longer matches its manifest.
///
/// Atomicity: one psql session runs `BEGIN`, locks every table, the schema reset,
/// then the script `pg_restore --single-transaction -f -` streams (through
/// pgshepherd), whose last statement is the `COMMIT`. Everything before that
/// COMMIT is one transaction: if pg_restore dies mid-archive, pgshepherd never
/// passes the COMMIT on, psql reaches end of input and the server rolls the whole
/// thing back; if a statement fails, `ON_ERROR_STOP` ends the session, same
/// result. (`psql --single-transaction` would COMMIT at end of input even when the
/// stream was cut short, and a script made without `--single-transaction` carries
/// its own BEGIN/COMMIT around large objects; hence this shape.) The archive's own
/// `BEGIN` inside ours is a no-op warning, silenced by `client_min_messages=error`.
///
/// Sequences never go backwards: their values are read once the tables are
/// locked, and just before the COMMIT each one the archive set lower is set
/// forward again ([`RestoreReport::sequences_advanced`]). Writers wait from the
/// LOCK to the COMMIT ([`RestoreReport::stall_ms`]); after the COMMIT the
/// database is ANALYZEd, which does not block them.
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
    let script = pg_restore.stdout.take().expect("stdout is piped");
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
        .args(["--no-align", "--tuples-only"])
        .arg("--file=-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut psql = spawn(&mut psql_cmd, "psql", &bins.psql)?;
    let psql_stdin = psql.stdin.take().expect("stdin is piped");
    let psql_stdout = psql.stdout.take().expect("stdout is piped");
    let psql_stderr = psql.stderr.take().expect("stderr is piped");

    // Feed psql: our head, the archive's script, and our tail before its COMMIT,
    // which is passed on only once pg_restore has exited 0.
    let drive = async {
        let fed = feed(head_sql(), script, psql_stdin).await;
        if fed.is_err() {
            // psql stopped reading (it ended on an error): pg_restore would block
            // on a full pipe forever.
            let _ = pg_restore.start_kill();
        }
        let status = pg_restore.wait().await;
        let finished = match (&status, fed) {
            (Ok(s), Ok((stdin, held))) if s.success() => finish(stdin, held).await,
            // Dropping psql's stdin without the COMMIT: the server rolls back.
            _ => Ok(()),
        };
        (status, finished)
    };
    let ((restore_status, finished), restore_err, psql_out, psql_err) = tokio::join!(
        drive,
        read_text(restore_stderr),
        read_output(psql_stdout),
        read_text(psql_stderr)
    );
    let psql_status = psql.wait().await.map_err(io_err("waiting for psql"))?;
    let restore_status = restore_status.map_err(io_err("waiting for pg_restore"))?;

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
        // The script stopped before its COMMIT, which was never passed on; psql
        // reached end of input and the server rolled the transaction back.
        return Err(BackupError::RestoreFailed {
            path: backup.path.clone(),
            dsn: dsn.to_string(),
            stderr: format!("pg_restore ({restore_status}): {restore_err}"),
        });
    }
    if let Err(problem) = finished {
        return Err(BackupError::RestoreFailed {
            path: backup.path.clone(),
            dsn: dsn.to_string(),
            stderr: problem.to_string(),
        });
    }
    let output = psql_out.map_err(io_err("reading psql's output"))?;

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
    let analyze_ms = analyze(dsn).await;
    let report = RestoreReport {
        path: backup.path.clone(),
        sha256: backup.manifest.sha256.clone(),
        database: dsn.to_string(),
        tables,
        duration_ms: started.elapsed().as_millis() as u64,
        extension_owner_changes,
        write_counters: output.write_counters,
        sequences_advanced: output.sequences_advanced,
        stall_ms: output.stall_ms,
        analyze_ms,
    };
    for change in &report.extension_owner_changes {
        tracing::warn!(
            extension = %change.extension,
            owner_before = %change.owner_before,
            owner_after = %change.owner_after,
            "the restore changed an extension's owner"
        );
    }
    for s in &report.sequences_advanced {
        tracing::info!(sequence = %s.sequence, restored = ?s.restored, set_to = s.set_to, "sequence kept from going backwards");
    }
    tracing::info!(
        tables,
        duration_ms = report.duration_ms,
        stall_ms = report.stall_ms,
        analyze_ms = ?report.analyze_ms,
        "backup restored"
    );
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

/// Write `head`, then the archive's script from `script`, to psql, all but the
/// last [`HOLD_BACK`] bytes of the script, which are returned with the pipe.
async fn feed(
    head: String,
    mut script: ChildStdout,
    mut psql: ChildStdin,
) -> io::Result<(ChildStdin, Vec<u8>)> {
    psql.write_all(head.as_bytes()).await?;
    let mut held: Vec<u8> = Vec::with_capacity(2 * HOLD_BACK);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = script.read(&mut buf).await?;
        if n == 0 {
            return Ok((psql, held));
        }
        held.extend_from_slice(&buf[..n]);
        if held.len() > HOLD_BACK {
            let cut = held.len() - HOLD_BACK;
            psql.write_all(&held[..cut]).await?;
            held.drain(..cut);
        }
    }
}

/// The archive's script had no COMMIT to put the tail before.
#[derive(Debug, thiserror::Error)]
#[error("the archive's script did not end with COMMIT; nothing was committed")]
struct NoFinalCommit;

/// Pass on the end of the archive's script with [`TAIL_SQL`] before its final
/// COMMIT, then close psql's input. Without a COMMIT at the start of a line in
/// it, nothing is committed.
async fn finish(mut psql: ChildStdin, held: Vec<u8>) -> Result<(), NoFinalCommit> {
    let Some(at) = final_commit(&held) else {
        return Err(NoFinalCommit);
    };
    let write = async {
        psql.write_all(&held[..at]).await?;
        psql.write_all(TAIL_SQL.as_bytes()).await?;
        psql.write_all(&held[at..]).await?;
        psql.shutdown().await
    };
    // A failed write means psql ended early; its own error says why.
    let _ = write.await;
    Ok(())
}

/// Where the last `COMMIT;` statement of a script starts.
fn final_commit(script: &[u8]) -> Option<usize> {
    const COMMIT: &[u8] = b"COMMIT;\n";
    script
        .windows(COMMIT.len())
        .enumerate()
        .rev()
        .find(|(at, w)| *w == COMMIT && (*at == 0 || script[at - 1] == b'\n'))
        .map(|(at, _)| at)
}

/// What the restoring session printed behind our markers.
#[derive(Debug, Default, PartialEq, Eq)]
struct Output {
    write_counters: Vec<TableWrites>,
    sequences_advanced: Vec<SequenceAdvance>,
    stall_ms: u64,
}

async fn read_output(mut r: ChildStdout) -> io::Result<Output> {
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).await?;
    Ok(parse_output(&String::from_utf8_lossy(&buf)))
}

fn parse_output(text: &str) -> Output {
    let mut out = Output::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let int = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
        match f.first().copied() {
            Some(WRITES) if f.len() == 5 => out.write_counters.push(TableWrites {
                table: f[1].to_string(),
                inserted: int(2).unwrap_or(0),
                updated: int(3).unwrap_or(0),
                deleted: int(4).unwrap_or(0),
            }),
            // concat_ws leaves out a NULL: 3 fields when the restored value is NULL.
            Some("pgshepherd-sequence") if f.len() == 4 || f.len() == 3 => {
                out.sequences_advanced.push(SequenceAdvance {
                    sequence: f[1].to_string(),
                    restored: if f.len() == 4 { int(2) } else { None },
                    set_to: int(f.len() - 1).unwrap_or(0),
                })
            }
            Some("pgshepherd-stall") => out.stall_ms = int(1).unwrap_or(0).max(0) as u64,
            _ => {}
        }
    }
    out.write_counters.sort_by(|a, b| a.table.cmp(&b.table));
    out.sequences_advanced
        .sort_by(|a, b| a.sequence.cmp(&b.sequence));
    out
}

/// ANALYZE every table the role may analyze: a restored table has no planner
/// statistics, and autovacuum would get to it only after enough writes. Runs
/// after the COMMIT and blocks no writer (SHARE UPDATE EXCLUSIVE). Returns how
/// long it took, or `None` when it failed (logged: the restore itself stands).
async fn analyze(dsn: &Dsn) -> Option<u64> {
    let started = Instant::now();
    let result = async {
        let client = dsn
            .connect(APPLICATION_NAME, &[("statement_timeout", "0")])
            .await?;
        client.batch_execute("ANALYZE").await
    }
    .await;
    match result {
        Ok(()) => Some(started.elapsed().as_millis() as u64),
        Err(e) => {
            tracing::warn!(error = %crate::pg::server_message(&e), "ANALYZE after the restore failed; the planner has no statistics for the restored tables until autovacuum analyzes them");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_goes_before_the_last_commit_at_the_start_of_a_line() {
        let script = b"BEGIN;\nINSERT 'COMMIT;\n';\nCOMMIT;\n\n--\n-- PostgreSQL database dump complete\n--\n\n";
        assert_eq!(final_commit(script), Some(26));
        assert_eq!(&script[26..34], b"COMMIT;\n");
        assert_eq!(final_commit(b"BEGIN;\nxCOMMIT;\n"), None);
        assert_eq!(final_commit(b"COMMIT;\n"), Some(0));
    }

    #[test]
    fn the_sessions_output_is_read_behind_its_markers_only() {
        let text = "\n\npgshepherd-writes\tpublic.t\t3\t1\t0\n 42\npgshepherd-sequence\tpublic.t_id_seq\t10\t13\n\
                    pgshepherd-sequence\tpublic.\"Odd\"\t7\npgshepherd-stall\t85\n";
        assert_eq!(
            parse_output(text),
            Output {
                write_counters: vec![TableWrites {
                    table: "public.t".into(),
                    inserted: 3,
                    updated: 1,
                    deleted: 0
                }],
                sequences_advanced: vec![
                    SequenceAdvance {
                        sequence: "public.\"Odd\"".into(),
                        restored: None,
                        set_to: 7
                    },
                    SequenceAdvance {
                        sequence: "public.t_id_seq".into(),
                        restored: Some(10),
                        set_to: 13
                    },
                ],
                stall_ms: 85,
            }
        );
    }
}
