//! The migration history pgshepherd keeps on each target, in `pgshepherd.history`.
//!
//! A transactional migration's row is written in the migration's own transaction.
//! A no-transaction migration gets a `started` row before its first statement and
//! becomes `applied` after its last, so an interrupted one is visible as `started`.

use serde::Serialize;
use tokio_postgres::Client;

use crate::migrations::{Migration, MigrationSet};
use crate::pg::lock::ANSWER_TIMEOUT;

pub const CREATE: &str = "
CREATE SCHEMA IF NOT EXISTS pgshepherd;
CREATE TABLE IF NOT EXISTS pgshepherd.history (
    migration_set text        NOT NULL,
    version       bigint      NOT NULL,
    name          text        NOT NULL,
    checksum      text        NOT NULL,
    state         text        NOT NULL CHECK (state IN ('started', 'applied')),
    transactional boolean     NOT NULL,
    run_id        text        NOT NULL,
    applied_at    timestamptz NOT NULL DEFAULT now(),
    duration_ms   bigint,
    PRIMARY KEY (migration_set, version)
);";

/// One row of the target's history.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub version: i64,
    pub name: String,
    pub checksum: String,
    /// `false` while a no-transaction migration has started but not finished.
    pub complete: bool,
    pub run_id: String,
}

/// Why the history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("while reading pgshepherd.history: {}", crate::pg::server_message(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error(
        "the target did not answer within {} s while pgshepherd.history was read",
        .after.as_secs()
    )]
    NoAnswer { after: std::time::Duration },
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Query(#[from] ReadError),
    #[error(
        "checksum drift: {label} was applied with checksum {applied} but the file now has {current}. \
         Applied migrations must not be edited; restore the file or add a new migration"
    )]
    Drift {
        label: String,
        applied: String,
        current: String,
    },
    #[error(
        "the target has V{version} ({name}) applied, which is not in this migration set; refusing to guess"
    )]
    Unknown { version: i64, name: String },
    #[error(
        "V{version} ({name}) was started outside a transaction by run {run_id} and never finished. \
         Inspect the target, finish or undo it by hand, then delete its row from pgshepherd.history"
    )]
    Interrupted {
        version: i64,
        name: String,
        run_id: String,
    },
    #[error("the history has a hole: V{missing} is not applied but V{later} is")]
    Hole { missing: i64, later: i64 },
}

/// The applied rows of `set`, in version order; an empty list when pgshepherd has
/// never touched the target. Two instant queries: a target that does not answer
/// them within [`ANSWER_TIMEOUT`] has a frozen server or network path, which
/// keepalives alone would take up to `tcp_user_timeout` (30 s) to notice.
pub async fn read(client: &Client, set: &str) -> Result<Vec<Applied>, ReadError> {
    match tokio::time::timeout(ANSWER_TIMEOUT, read_rows(client, set)).await {
        Ok(rows) => Ok(rows?),
        Err(_) => Err(ReadError::NoAnswer {
            after: ANSWER_TIMEOUT,
        }),
    }
}

async fn read_rows(client: &Client, set: &str) -> Result<Vec<Applied>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass('pgshepherd.history') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT version, name, checksum, state = 'applied', run_id
               FROM pgshepherd.history WHERE migration_set = $1 ORDER BY version",
            &[&set],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Applied {
            version: r.get(0),
            name: r.get(1),
            checksum: r.get(2),
            complete: r.get(3),
            run_id: r.get(4),
        })
        .collect())
}

/// Where a target stands against a migration set.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Versions applied, in order.
    pub applied: Vec<i64>,
    /// Migrations still to apply, in order.
    pub pending: Vec<i64>,
}

/// Compare the history with the set and refuse drifted or dirty state before
/// anything runs.
pub fn reconcile(set: &MigrationSet, history: &[Applied]) -> Result<Status, HistoryError> {
    let mut applied = Vec::new();
    for row in history {
        let Some(m) = set.migrations.iter().find(|m| m.version == row.version) else {
            return Err(HistoryError::Unknown {
                version: row.version,
                name: row.name.clone(),
            });
        };
        if !row.complete {
            return Err(HistoryError::Interrupted {
                version: row.version,
                name: row.name.clone(),
                run_id: row.run_id.clone(),
            });
        }
        if row.checksum != m.up.checksum {
            return Err(HistoryError::Drift {
                label: m.label(),
                applied: row.checksum.clone(),
                current: m.up.checksum.clone(),
            });
        }
        applied.push(row.version);
    }
    let pending: Vec<i64> = set
        .migrations
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect();
    if let (Some(first_pending), Some(last_applied)) = (pending.first(), applied.last())
        && first_pending < last_applied
    {
        return Err(HistoryError::Hole {
            missing: *first_pending,
            later: *last_applied,
        });
    }
    Ok(Status { applied, pending })
}

pub(crate) async fn record_started(
    client: &Client,
    set: &str,
    m: &Migration,
    run_id: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO pgshepherd.history (migration_set, version, name, checksum, state, transactional, run_id)
             VALUES ($1, $2, $3, $4, 'started', false, $5)",
            &[&set, &m.version, &m.name, &m.up.checksum, &run_id],
        )
        .await
        .map(|_| ())
}

/// The statement recording `m` as applied, as text so that it travels in the same
/// round trip as the migration's COMMIT. Every value is quoted as a literal.
pub(crate) fn record_applied_sql(
    set: &str,
    m: &Migration,
    run_id: &str,
    duration_ms: i64,
) -> String {
    format!(
        "INSERT INTO pgshepherd.history \
         (migration_set, version, name, checksum, state, transactional, run_id, duration_ms) \
         VALUES ({}, {}, {}, {}, 'applied', {}, {}, {duration_ms}) \
         ON CONFLICT (migration_set, version) \
         DO UPDATE SET state = 'applied', duration_ms = EXCLUDED.duration_ms, applied_at = now()",
        literal(set),
        m.version,
        literal(&m.name),
        literal(&m.up.checksum),
        m.up.transactional,
        literal(run_id),
    )
}

/// The statement forgetting `version` of `set`.
pub(crate) fn remove_sql(set: &str, version: i64) -> String {
    format!(
        "DELETE FROM pgshepherd.history WHERE migration_set = {} AND version = {version}",
        literal(set)
    )
}

/// A standard SQL string literal (standard_conforming_strings is on since 9.1).
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub(crate) async fn remove(
    client: &Client,
    set: &str,
    version: i64,
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(&remove_sql(set, version)).await
}

#[cfg(test)]
mod tests {
    use super::literal;

    #[test]
    fn literals_double_their_quotes() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("plain"), "'plain'");
    }
}
