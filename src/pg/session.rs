//! Whether a connection is a session of its own on the server, or a pooler's
//! client connection whose server session is shared (PgBouncer in
//! `pool_mode = transaction` or `statement`).
//!
//! pgshepherd relies on session state: the advisory lock is held by a session
//! for the whole run, a no-transaction migration `SET`s its timeouts before its
//! statements, and everything that changes the target goes through the locked
//! session. Behind a transaction-mode pooler every statement outside a
//! transaction may run on another server session, and another client may run on
//! the one that holds the lock: two runs both "hold" the lock, and a lock taken
//! stays held by a pooled server session after the run has ended.
//!
//! [`check`] is the one place that decides it. A pooler that shares server
//! sessions cannot be recognised from one connection alone (with one idle server
//! session, it hands the same one back every time), so the check opens a second
//! connection, the witness:
//! 1. the checked connection sets a session-level marker (a custom setting, a
//!    random token) and notes its backend pid;
//! 2. the witness opens a transaction, which pins a server session to it even
//!    behind a pooler, and reads its pid and the marker: the pid of the checked
//!    connection, or its marker, means the two share server sessions (a pooler
//!    hands the most recently released session out first, so a transaction-mode
//!    pooler is caught here); a statement-mode pooler refuses the transaction;
//! 3. while the witness still holds its session, the checked connection reads
//!    its pid and marker again: another pid, or the marker gone, means its
//!    statements do not stay on one session.
//!
//! A session pooler (`pool_mode = session`) and a direct connection pass: each
//! client keeps one server session for as long as it is connected.
//!
//! Every statement uses the simple protocol: a transaction-mode pooler would
//! run the parse and the execute of a prepared statement on different server
//! sessions, and this check must produce its verdict, not that error. The
//! witness ends its transaction with COMMIT, never ROLLBACK, which
//! `rollbacks_per_second` would count.

use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::pg::Dsn;

/// Name of the session-level setting the check sets, with a fresh token.
const MARKER: &str = "pgshepherd.session_check";

/// `application_name` of the witness connection.
const WITNESS_NAME: &str = "pgshepherd session check";

/// What to do, in every refusal.
const ADVICE: &str = "pgshepherd needs one session for its lock and migrations; \
                      use pool_mode=session or a direct URL";

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(
        "{url} goes through a pooler in transaction mode (PgBouncer pool_mode=transaction?): \
         {ADVICE}; seen: {evidence}"
    )]
    Shared { url: &'static str, evidence: String },
    #[error(
        "{url} goes through a pooler in statement mode (PgBouncer pool_mode=statement?): \
         {ADVICE}; it refused a transaction: {message}"
    )]
    StatementMode { url: &'static str, message: String },
    #[error(
        "cannot check that {url} keeps one session (a pooler in transaction mode would \
         break pgshepherd's lock): {}",
        crate::pg::server_message(.source)
    )]
    Query {
        url: &'static str,
        source: tokio_postgres::Error,
    },
    #[error(
        "cannot check that {url} keeps one session: no answer within {} s \
         (a pooler in transaction mode with every server connection busy waits like this too)",
        .after.as_secs()
    )]
    NoAnswer { url: &'static str, after: Duration },
}

impl SessionError {
    /// The URL goes through a pooler that shares server sessions (as opposed
    /// to: the check itself could not be made). Trying again cannot help.
    pub fn is_pooler(&self) -> bool {
        matches!(
            self,
            SessionError::Shared { .. } | SessionError::StatementMode { .. }
        )
    }
}

/// What one look at a session found: its backend pid and the marker's value.
#[derive(Debug, Clone, PartialEq)]
struct Look {
    pid: i32,
    marker: Option<String>,
}

/// Refuse `client` unless it is a session of its own on the server (see the
/// module documentation). `dsn` is what `client` was opened with; the witness
/// connects there too. Each statement and the witness's connect are bounded by
/// `answer_within`. `url` names the URL in the refusal ("the target URL").
pub async fn check(
    client: &Client,
    dsn: &Dsn,
    answer_within: Duration,
    url: &'static str,
) -> Result<(), SessionError> {
    inspect(client, dsn, answer_within)
        .await
        .map_err(|r| match r {
            Refusal::Shared(evidence) => SessionError::Shared { url, evidence },
            Refusal::StatementMode(message) => SessionError::StatementMode { url, message },
            Refusal::Query(source) => SessionError::Query { url, source },
            Refusal::NoAnswer(after) => SessionError::NoAnswer { url, after },
        })
}

/// [`check`]'s verdict, before it is worded for a URL.
enum Refusal {
    Shared(String),
    StatementMode(String),
    Query(tokio_postgres::Error),
    NoAnswer(Duration),
}

impl From<tokio_postgres::Error> for Refusal {
    fn from(e: tokio_postgres::Error) -> Self {
        Refusal::Query(e)
    }
}

async fn inspect(client: &Client, dsn: &Dsn, answer_within: Duration) -> Result<(), Refusal> {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let first = look(
        client,
        &format!("SELECT pg_backend_pid(), set_config('{MARKER}', '{token}', false)"),
        answer_within,
    )
    .await?;
    let witness = bounded(dsn.connect(WITNESS_NAME, &[]), answer_within).await?;
    let seen = match look(
        &witness,
        &format!("BEGIN; SELECT pg_backend_pid(), current_setting('{MARKER}', true)"),
        answer_within,
    )
    .await
    {
        Ok(seen) => seen,
        Err(Refusal::Query(e)) if refuses_transactions(&e) => {
            return Err(Refusal::StatementMode(crate::pg::server_message(&e)));
        }
        Err(e) => return Err(e),
    };
    let again = if shares(&first, &seen, &token) {
        Err(Refusal::Shared(format!(
            "another connection was served by the same server session (backend pid {})",
            seen.pid
        )))
    } else {
        // The witness still holds its server session, so the checked
        // connection cannot be handed that one now.
        look(
            client,
            &format!("SELECT pg_backend_pid(), current_setting('{MARKER}', true)"),
            answer_within,
        )
        .await
    };
    // Best effort: the verdict no longer depends on the witness, and closing
    // it ends its transaction anyway.
    let _ = bounded(witness.batch_execute("COMMIT"), answer_within).await;
    drop(witness);
    if let Some(evidence) = moved(&first, &again?, &token) {
        return Err(Refusal::Shared(evidence));
    }
    // The marker was only for this check; the session is the caller's.
    bounded(
        client.batch_execute(&format!("RESET {MARKER}")),
        answer_within,
    )
    .await?;
    Ok(())
}

/// Whether the witness's look shows the checked connection's server session.
fn shares(first: &Look, witness: &Look, token: &str) -> bool {
    witness.pid == first.pid || witness.marker.as_deref() == Some(token)
}

/// Why the checked connection's second look shows it is not one session.
fn moved(first: &Look, again: &Look, token: &str) -> Option<String> {
    if again.pid != first.pid {
        return Some(format!(
            "the connection's server session changed between two statements (backend pid {}, then {})",
            first.pid, again.pid
        ));
    }
    if again.marker.as_deref() != Some(token) {
        return Some("a session setting did not stay set from one statement to the next".into());
    }
    None
}

/// PgBouncer in statement mode ends a client that leaves a transaction open
/// ("transaction blocks not allowed in statement pooling mode").
fn refuses_transactions(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| db.message().contains("pooling mode"))
}

async fn bounded<T>(
    query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    within: Duration,
) -> Result<T, Refusal> {
    match tokio::time::timeout(within, query).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Refusal::NoAnswer(within)),
    }
}

/// The pid and marker of the last row `sql` returns (simple protocol), within
/// `within`.
async fn look(client: &Client, sql: &str, within: Duration) -> Result<Look, Refusal> {
    let messages = bounded(client.simple_query(sql), within).await?;
    let row = messages.iter().rev().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    // Both columns are ours: a pid always parses, the marker may be NULL.
    let pid = row
        .and_then(|r| r.get(0))
        .and_then(|p| p.parse().ok())
        .unwrap_or_default();
    let marker = row.and_then(|r| r.get(1)).map(str::to_string);
    Ok(Look { pid, marker })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(pid: i32, marker: Option<&str>) -> Look {
        Look {
            pid,
            marker: marker.map(str::to_string),
        }
    }

    #[test]
    fn a_witness_on_the_same_server_session_means_a_pooler() {
        let first = seen(10, Some("t"));
        assert!(shares(&first, &seen(10, Some("")), "t"));
        // A pooler may rename nothing, but the marker travels with the session.
        assert!(shares(&first, &seen(11, Some("t")), "t"));
        // A separate session: another pid, and the marker unset there.
        assert!(!shares(&first, &seen(11, None), "t"));
        assert!(!shares(&first, &seen(11, Some("")), "t"));
    }

    #[test]
    fn a_session_that_moves_or_forgets_is_refused() {
        let first = seen(10, Some("t"));
        assert_eq!(moved(&first, &seen(10, Some("t")), "t"), None);
        let m = moved(&first, &seen(12, Some("t")), "t").unwrap();
        assert!(m.contains("10, then 12"), "{m}");
        assert!(moved(&first, &seen(10, None), "t").is_some());
    }

    #[test]
    fn the_refusal_says_what_to_do() {
        let e = SessionError::Shared {
            url: "the target URL",
            evidence: "x".into(),
        }
        .to_string();
        assert!(
            e.starts_with(
                "the target URL goes through a pooler in transaction mode (PgBouncer pool_mode=transaction?): \
                 pgshepherd needs one session for its lock and migrations; use pool_mode=session or a direct URL"
            ),
            "{e}"
        );
    }
}
