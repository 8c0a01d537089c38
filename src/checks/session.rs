//! The read-only, time-boxed session through which SQL checks and built-in signals
//! read the database they watch.
//!
//! The soak must never write to or overload its target, so every read is:
//! - on a connection named `pgshepherd-check` (so builtins can exclude it) opened
//!   with `default_transaction_read_only=on`;
//! - inside `BEGIN READ ONLY` with `SET LOCAL statement_timeout` = the check's
//!   timeout, so even a query that calls a writing function is refused by the server;
//! - ended by COMMIT even when the read failed (undone to a savepoint first), so
//!   that the checks never add to `pg_stat_database.xact_rollback`, which
//!   `rollbacks_per_second` judges;
//! - sent with the extended protocol, which accepts exactly one statement: a query
//!   ending in `; DELETE FROM orders` is a syntax error, not a second statement;
//! - bounded on the client side too, in case the server or the network hangs
//!   without ever delivering the statement timeout.
//!
//! Every failure comes back as a [`ReadError`] worded for an inconclusive sample. The
//! connection is opened lazily and dropped after any failure that may have left it
//! unusable, so the next sample reconnects; an ordinary SQL error (a typo, a
//! statement timeout) keeps it, so a broken query does not turn into a stream of
//! new backends on the watched server.

use std::time::Duration;

use tokio_postgres::error::{Severity, SqlState};
use tokio_postgres::{Client, Row};

use crate::pg::Dsn;

/// `application_name` of check sessions; builtins exclude `pgshepherd%`.
pub const APPLICATION_NAME: &str = "pgshepherd-check";

/// Extra time the client waits beyond the statement timeout, so the server's own
/// (more specific) timeout error normally arrives first.
const CLIENT_GRACE: Duration = Duration::from_millis(500);

/// Connecting gets at least this long, even with a tighter check timeout: a check
/// that reconnects after a failure should not fail again only because TCP and
/// authentication took a few hundred milliseconds.
const MIN_CONNECT_BUDGET: Duration = Duration::from_secs(2);

/// A session the daemon stopped talking to mid-transaction (frozen, partitioned)
/// must not hold a snapshot on the target: the server ends it after this.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "30s";

/// Why a read produced no rows. Each message is worded as the reason of an
/// inconclusive sample.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// `dsn` is the redacted connection string.
    #[error("cannot connect to {dsn}: {}", crate::pg::server_message(.source))]
    Connect {
        dsn: String,
        source: tokio_postgres::Error,
    },
    #[error("cannot connect to {dsn}: no answer within {}", ms(*.budget))]
    ConnectTimeout { dsn: String, budget: Duration },
    #[error("no connection")]
    NoConnection,
    #[error(
        "no answer from the server within {} (statement_timeout {} was not enforced)",
        ms(*.budget),
        ms(*.timeout)
    )]
    NoAnswer { budget: Duration, timeout: Duration },
    #[error("{}", describe_error(.source, *.timeout))]
    Query {
        source: tokio_postgres::Error,
        timeout: Duration,
    },
}

/// What one read-only transaction produced.
pub(crate) struct Read {
    pub rows: Vec<Row>,
    /// Number of columns of `describe`, when one was asked for.
    pub described_columns: Option<usize>,
}

pub(crate) struct ReadOnlySession {
    dsn: Dsn,
    timeout: Duration,
    client: Option<Client>,
}

impl ReadOnlySession {
    pub fn new(dsn: &Dsn, timeout: Duration) -> Self {
        // statement_timeout 0 would mean "no timeout": never let a rounding do that.
        let timeout = timeout.max(Duration::from_millis(1));
        ReadOnlySession {
            dsn: dsn.clone(),
            timeout,
            client: None,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// Runs `sql` (one statement, no parameters) in a read-only transaction and
    /// returns its rows. When `describe` is given it is only prepared, in the same
    /// transaction and under the same timeout, and its column count returned.
    pub async fn read(&mut self, sql: &str, describe: Option<&str>) -> Result<Read, ReadError> {
        if !self.is_connected() {
            self.client = None;
            self.client = Some(self.connect().await?);
        }
        let Some(client) = self.client.as_mut() else {
            return Err(ReadError::NoConnection);
        };
        let budget = self.timeout + CLIENT_GRACE;
        let outcome =
            tokio::time::timeout(budget, read_only(client, self.timeout, sql, describe)).await;
        match outcome {
            Ok(Ok(read)) => Ok(read),
            Ok(Err(e)) => {
                let keep = e
                    .as_db_error()
                    .is_some_and(|db| db.parsed_severity() == Some(Severity::Error))
                    && !client.is_closed();
                if !keep {
                    self.client = None;
                }
                Err(ReadError::Query {
                    source: e,
                    timeout: self.timeout,
                })
            }
            Err(_) => {
                // The server neither answered nor enforced statement_timeout: the
                // connection's state is unknown, so drop it (the server ends the
                // statement itself once its own timeout fires).
                self.client = None;
                Err(ReadError::NoAnswer {
                    budget,
                    timeout: self.timeout,
                })
            }
        }
    }

    async fn connect(&self) -> Result<Client, ReadError> {
        let statement_timeout = self.timeout.as_millis().to_string();
        let options = [
            ("default_transaction_read_only", "on"),
            // Covers BEGIN / COMMIT and the describe too, on top of SET LOCAL.
            ("statement_timeout", statement_timeout.as_str()),
            (
                "idle_in_transaction_session_timeout",
                IDLE_IN_TRANSACTION_TIMEOUT,
            ),
        ];
        let budget = (self.timeout + CLIENT_GRACE).max(MIN_CONNECT_BUDGET);
        match tokio::time::timeout(budget, self.dsn.connect(APPLICATION_NAME, &options)).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(source)) => Err(ReadError::Connect {
                dsn: self.dsn.to_string(),
                source,
            }),
            Err(_) => Err(ReadError::ConnectTimeout {
                dsn: self.dsn.to_string(),
                budget,
            }),
        }
    }
}

/// Set right after BEGIN, so that a failed read can be undone without rolling
/// back the transaction.
const SAVEPOINT: &str = "pgshepherd_read";

async fn read_only(
    client: &mut Client,
    timeout: Duration,
    sql: &str,
    describe: Option<&str>,
) -> Result<Read, tokio_postgres::Error> {
    let result = async {
        // One round trip for all three: this is our own SQL, so the simple
        // protocol is fine.
        client
            .batch_execute(&format!(
                "BEGIN READ ONLY; SET LOCAL statement_timeout = {}; SAVEPOINT {SAVEPOINT}",
                timeout.as_millis()
            ))
            .await?;
        let described_columns = match describe {
            Some(d) => Some(client.prepare(d).await?.columns().len()),
            None => None,
        };
        let rows = client.query(sql, &[]).await?;
        Ok(Read {
            rows,
            described_columns,
        })
    }
    .await;
    // COMMIT, not ROLLBACK: the transaction is read-only either way, and a
    // rollback would count in pg_stat_database.xact_rollback, which the
    // rollbacks_per_second builtin watches. A failed read (a timeout, a typo in
    // a check) would make COMMIT a rollback all the same, so the failure is
    // undone to the savepoint first and the empty transaction commits: a check
    // failing on every sample must not read as the application rolling back.
    let end = match &result {
        Ok(_) => client.batch_execute("COMMIT").await,
        Err(_) => match client
            .batch_execute(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}; COMMIT"))
            .await
        {
            Ok(()) => Ok(()),
            // BEGIN's batch failed half-way (no savepoint): end whatever is
            // open so that no aborted transaction is left for the next sample
            // (outside one, COMMIT is only a warning).
            Err(_) => client.batch_execute("COMMIT").await,
        },
    };
    let read = result?;
    end?;
    Ok(read)
}

/// A query's error as an inconclusive reason: the server's message and SQLSTATE
/// when it came from the server, with the two cases users hit most named plainly.
fn describe_error(e: &tokio_postgres::Error, timeout: Duration) -> String {
    let Some(db) = e.as_db_error() else {
        return format!("query failed: {}", crate::pg::server_message(e));
    };
    let code = db.code();
    let what = if *code == SqlState::QUERY_CANCELED {
        format!("statement_timeout {} reached: ", ms(timeout))
    } else if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        "refused, checks are read-only: ".to_string()
    } else {
        "query failed: ".to_string()
    };
    format!("{what}{} (SQLSTATE {})", db.message(), code.code())
}

/// `Display` of an error followed by its sources: tokio-postgres and reqwest keep
/// the useful part ("Connection refused") in the source chain.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}
