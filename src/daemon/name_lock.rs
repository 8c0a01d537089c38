//! Which process is daemon `name` right now: the one holding a session-level
//! advisory lock on the name in the state database, on a connection of its own
//! kept open for the process's life.
//!
//! Why: a daemon restarted under the same `daemon.name` (systemd after a crash,
//! an OOM kill) finds its runs leased to that name until their leases expire.
//! Those runs are its own, and nobody drives them: the previous process is gone.
//! PostgreSQL proves it: a killed process's connections close with it, the
//! server ends their sessions, and the lock is free. So a process that takes the
//! name's lock may take back the runs leased under that name at once, with a new
//! epoch (see [`crate::daemon::store::take_back`]).
//!
//! Two live processes misconfigured with one name: the second never gets the
//! lock while the first's session lives, so it never takes the first's runs
//! early; it claims only expired leases, as any other daemon does. If the first
//! loses its lock connection (a state database restart) the second may get the
//! lock and take the runs back: the new epoch fences the first, whose next
//! write or renewal finds the run gone and stops it. Safe either way; the log
//! says so.

use std::time::Duration;

use tokio_postgres::Client;

use crate::daemon::store::StoreError;
use crate::pg::Dsn;

/// First key of the two-key advisory lock (`pgsh`): two-key locks never collide
/// with the one-key (bigint) locks of the schema upgrade or of a target's run.
const NAMESPACE: i32 = 0x7067_7368;

/// Connecting and asking for the lock are bounded: a state database that does
/// not answer only delays the fast takeover (the scheduler tries again next poll).
const TIMEOUT: Duration = Duration::from_secs(5);

/// What [`NameLock::hold`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Held since an earlier call: nothing to do.
    Kept,
    /// Just taken: runs still leased under the name belong to no live process.
    Taken,
    /// Another live session holds it: a process with the same name is running.
    Elsewhere,
}

pub struct NameLock {
    dsn: Dsn,
    name: String,
    client: Option<Client>,
}

impl NameLock {
    pub fn new(dsn: Dsn, name: &str) -> NameLock {
        NameLock {
            dsn,
            name: name.to_string(),
            client: None,
        }
    }

    /// Hold the name's lock, taking it if this process does not hold it yet (or
    /// any more: its connection closed).
    pub async fn hold(&mut self) -> Result<Held, StoreError> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(Held::Kept);
        }
        self.client = None;
        let attempt = async {
            let client = self
                .dsn
                .connect("pgshepherd daemon name", &[])
                .await
                .map_err(StoreError::from)?;
            let taken: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock($1, hashtext($2))",
                    &[&NAMESPACE, &self.name],
                )
                .await?
                .get(0);
            Ok::<_, StoreError>((client, taken))
        };
        let (client, taken) = tokio::time::timeout(TIMEOUT, attempt).await.map_err(|_| {
            StoreError::Query(format!(
                "no answer within {}s while taking the daemon name's lock",
                TIMEOUT.as_secs()
            ))
        })??;
        if !taken {
            // Closing this connection is all it takes to try again later.
            return Ok(Held::Elsewhere);
        }
        self.client = Some(client);
        Ok(Held::Taken)
    }
}
