//! The per-target advisory lock. Holding a [`TargetLock`] is the only way to get a
//! connection that may change a target, so two runs can never interleave.
//!
//! The lock is taken by polling `pg_try_advisory_lock`, never by a blocking
//! `pg_advisory_lock`: a session queued on an advisory lock can deadlock with a
//! concurrent `CREATE INDEX CONCURRENTLY`, which waits for every older transaction.
//!
//! A session-level lock is only a lock on a connection that is one server
//! session: before asking for it, the connection is checked with
//! [`crate::pg::session::check`], which refuses a pooler in transaction or
//! statement mode (the lock would be taken by a pooled server session, shared
//! with other clients, and outlive this connection).

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;

use crate::pg::Dsn;
use crate::pg::session::{self, SessionError};

/// Advisory lock key: "pgsh" in ASCII. Advisory locks are per database, so this is
/// one lock per target database.
pub const LOCK_KEY: i64 = 0x7067_7368;

/// The session holding the lock, as far as pg_stat_activity tells.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Holder {
    pub pid: i32,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub since: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let app = if self.application_name.is_empty() {
            "an unnamed session"
        } else {
            &self.application_name
        };
        write!(f, "{app} (pid {}", self.pid)?;
        if let Some(addr) = &self.client_addr {
            write!(f, " from {addr}")?;
        }
        if let Some(since) = &self.since {
            write!(f, ", connected since {since}")?;
        }
        write!(f, ")")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot connect to the target {dsn}: {}", crate::pg::server_message(.source))]
    Connect {
        dsn: String,
        source: tokio_postgres::Error,
    },
    #[error(
        "the target is locked by {holder}; waited {waited:?}. Another pgshepherd run is changing this database: wait for it to finish, or stop it"
    )]
    Busy { holder: Holder, waited: Duration },
    #[error(
        "the target is locked by another session (it left before it could be identified); waited {waited:?}"
    )]
    BusyUnknown { waited: Duration },
    #[error("while taking the advisory lock: {}", crate::pg::server_message(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("the target did not answer within {} s while the lock was being taken", .after.as_secs())]
    NoAnswer { after: Duration },
    /// The lock would not be a lock: the URL goes through a pooler that shares
    /// server sessions. Retrying cannot help.
    #[error(transparent)]
    NotASession(#[from] SessionError),
}

impl LockError {
    /// The URL goes through a pooler that shares server sessions: no attempt
    /// at the lock can work through it.
    pub fn is_pooler(&self) -> bool {
        matches!(self, LockError::NotASession(e) if e.is_pooler())
    }
}

/// How long one statement of the lock's own (polling, identifying the holder,
/// checking the session) may go unanswered: these are instant on a live server,
/// so a longer wait means the network path or the server is frozen.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connecting for the lock, handshake included (the TCP connect alone has
/// its own 10 s `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// `query` within [`ANSWER_TIMEOUT`].
async fn answered<T>(
    query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, LockError> {
    match tokio::time::timeout(ANSWER_TIMEOUT, query).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(LockError::NoAnswer {
            after: ANSWER_TIMEOUT,
        }),
    }
}

/// A session-level advisory lock on one target database, held on a dedicated
/// connection for as long as this value lives. Dropping the value closes the
/// connection, which releases the lock even if `release` is never called.
pub struct TargetLock {
    client: Client,
    pid: i32,
}

impl TargetLock {
    /// Poll `pg_try_advisory_lock` every 250 ms until it succeeds or `timeout` has
    /// passed. `on_busy` is told who holds it the first time it is found taken.
    pub async fn acquire(
        dsn: &Dsn,
        application_name: &str,
        timeout: Duration,
        mut on_busy: impl FnMut(&Holder),
    ) -> Result<TargetLock, LockError> {
        // `connect_timeout` bounds the TCP connect only: a server (or a path)
        // that accepts and then stays silent would hold the handshake forever.
        let client =
            match tokio::time::timeout(CONNECT_TIMEOUT, dsn.connect(application_name, &[])).await {
                Ok(connected) => connected.map_err(|source| LockError::Connect {
                    dsn: dsn.to_string(),
                    source,
                })?,
                Err(_) => {
                    return Err(LockError::NoAnswer {
                        after: CONNECT_TIMEOUT,
                    });
                }
            };
        // Before the lock is ever asked for: behind a pooler in transaction
        // mode it would be taken by whichever pooled server session ran the
        // statement, and stay held there after this connection is gone.
        session::check(&client, dsn, ANSWER_TIMEOUT, "the target URL").await?;
        let pid: i32 = answered(client.query_one("SELECT pg_backend_pid()", &[]))
            .await?
            .get(0);
        let started = Instant::now();
        let mut told = false;
        loop {
            let got: bool =
                answered(client.query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY]))
                    .await?
                    .get(0);
            if got {
                return Ok(TargetLock { client, pid });
            }
            let holder = answered(holder(&client)).await?;
            if !told && let Some(h) = &holder {
                on_busy(h);
                told = true;
            }
            if started.elapsed() >= timeout {
                let waited = started.elapsed();
                return Err(match holder {
                    Some(holder) => LockError::Busy { holder, waited },
                    None => LockError::BusyUnknown { waited },
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The locked session. Everything that changes the target goes through it.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the locked session still answers (within [`ANSWER_TIMEOUT`]) and
    /// is still the same server session. A connection whose network path went
    /// silent is not closed, only mute: the lock it holds on the server is of
    /// no use to this process; nor is one held by a server session this
    /// connection no longer reaches.
    pub async fn answers(&self) -> bool {
        if self.client.is_closed() {
            return false;
        }
        match answered(self.client.simple_query("SELECT pg_backend_pid()")).await {
            Ok(messages) => messages.iter().any(|m| {
                matches!(m, tokio_postgres::SimpleQueryMessage::Row(row)
                    if row.get(0) == Some(self.pid.to_string().as_str()))
            }),
            Err(_) => false,
        }
    }

    /// Backend pid of the locked session (so checks can tell it apart).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub async fn release(self) -> Result<(), tokio_postgres::Error> {
        self.client
            .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
            .await
            .map(|_| ())
    }
}

/// Who holds the lock in the current database, if anyone.
pub async fn holder(client: &Client) -> Result<Option<Holder>, tokio_postgres::Error> {
    // A bigint key is stored as classid = high 32 bits, objid = low 32 bits, objsubid = 1.
    let row = client
        .query_opt(
            "SELECT a.pid, coalesce(a.application_name, ''), host(a.client_addr),
                    to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND l.classid = ($1::bigint >> 32)::oid AND l.objid = ($1::bigint & 4294967295)::oid AND l.objsubid = 1
              LIMIT 1",
            &[&LOCK_KEY],
        )
        .await?;
    Ok(row.map(|r| Holder {
        pid: r.get(0),
        application_name: r.get(1),
        client_addr: r.get(2),
        since: r.get(3),
    }))
}

/// Terminate the sessions on the target named `application_name` other than
/// the caller's: what a process that lost a run or an undo (killed, lease
/// expired) left behind, still holding the lock or running a statement. The
/// new owner owns the work now, so those sessions are stale; ending one rolls
/// back its open transaction. Best effort and bounded by [`ANSWER_TIMEOUT`] (a
/// target that does not answer must not hold up the caller's retries): without
/// the privilege, the lock wait still works once the server notices the old
/// client is gone. Returns how many were ended.
///
/// A terminated backend lingers while it rolls back; this waits (within the
/// same bound) until those sessions are gone, so that the caller's new session
/// is the only one of that name from then on.
pub async fn end_stale_sessions(dsn: &Dsn, application_name: &str) -> usize {
    let end = async {
        let client = dsn.connect("pgshepherd takeover", &[]).await?;
        let rows = client
            .query(
                // In the select list, not the WHERE clause: the filter must be
                // applied before anything is terminated.
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE application_name = $1 AND pid <> pg_backend_pid()",
                &[&application_name],
            )
            .await?;
        let pids: Vec<i32> = rows
            .iter()
            .filter(|r| r.get::<_, bool>(1))
            .map(|r| r.get(0))
            .collect();
        while !pids.is_empty()
            && client
                .query_one(
                    "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = ANY($1))",
                    &[&pids],
                )
                .await?
                .get::<_, bool>(0)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok::<_, tokio_postgres::Error>(pids.len())
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, end).await {
        Ok(Ok(ended)) => ended,
        _ => 0,
    }
}
