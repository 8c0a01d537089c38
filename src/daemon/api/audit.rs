//! The audit trail: every mutating request (submit, approve, abort, ack), whatever
//! its outcome, and every refused request (403), as one `audit` row and one log
//! line. Rows name the actor by token name; no token text ever reaches them.
//!
//! Requests without an authenticated actor (a 401, a sign-in refused as
//! cross-site or malformed) are counted, not written one by one: anyone can
//! send thousands, and each would have been a row. Each source address and
//! status gets at most one row per minute (per daemon), whose `count` says how
//! many requests it stands for; the action and detail are those of the first.
//! Every one is still a log line.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::daemon::shared::Shared;

/// One audit row of anonymous requests per source address and status stands
/// for this long at most.
pub const UNAUTHENTICATED_WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once; past this, the rest share the source `other`
/// (a scan from a whole network must not grow the map without bound).
const MAX_SOURCES: usize = 10_000;

/// Longest `detail` kept; a long list of plan errors is cut, not stored whole.
const MAX_DETAIL: usize = 2000;
/// The row is written before the response leaves, but a slow or lost state
/// database must not hold every answer (401s included) for the pool's timeouts.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Record one request. A failure to write the row is logged, never turned into a
/// failure of the request it describes (which has already been answered).
pub async fn record(
    shared: &Shared,
    actor: &str,
    action: &str,
    run_id: Option<&str>,
    status: u16,
    detail: &str,
) {
    let detail = truncate(detail, MAX_DETAIL);
    tracing::info!(actor, action, run_id, status, detail, "api audit");
    let write = async {
        let client = shared.pool.get().await.map_err(WriteError::Pool)?;
        client
            .execute(
                "INSERT INTO audit (actor, action, run_id, status, detail) VALUES ($1, $2, $3, $4, $5)",
                &[&actor, &action, &run_id, &i32::from(status), &detail],
            )
            .await
            .map_err(WriteError::Query)
    };
    let written = with_timeout(write).await;
    if let Err(error) = written {
        tracing::error!(actor, action, run_id, status, %error, "could not write the audit row");
    }
}

/// The open anonymous rows of this daemon, by source address and status.
#[derive(Default)]
pub struct Unauthenticated {
    windows: Mutex<HashMap<(String, u16), Window>>,
}

struct Window {
    started: Instant,
    /// The audit row, once inserted.
    row: Option<i64>,
    /// A request is inserting the row; it adds what was counted meanwhile.
    inserting: bool,
    /// Counted, not yet added to the row.
    unflushed: i32,
}

/// What one request must write after counting itself.
enum Flush {
    Insert(i32),
    Add(i64, i32),
    /// Another request's write carries this one's count.
    Nothing,
}

impl Unauthenticated {
    /// Count one request from `source` answered `status`; the caller writes
    /// what it is told to.
    fn count(&self, source: &str, status: u16) -> Flush {
        let Ok(mut windows) = self.windows.lock() else {
            return Flush::Insert(1);
        };
        let key = (source.to_string(), status);
        if windows.len() >= MAX_SOURCES && !windows.contains_key(&key) {
            windows.retain(|_, w| w.inserting || w.started.elapsed() < UNAUTHENTICATED_WINDOW);
        }
        let key = if windows.len() >= MAX_SOURCES && !windows.contains_key(&key) {
            ("other".to_string(), status)
        } else {
            key
        };
        let window = windows.entry(key).or_insert_with(Window::new);
        // A window whose row is still being inserted is not replaced: the
        // inserter adds what it counted.
        if !window.inserting && window.started.elapsed() >= UNAUTHENTICATED_WINDOW {
            *window = Window::new();
        }
        window.unflushed += 1;
        window.take()
    }

    /// The row of `source`'s window for `status` was inserted (`row`) or could
    /// not be (`None`): what else to add to it.
    fn inserted(&self, source: &str, status: u16, row: Option<i64>) -> Flush {
        let Ok(mut windows) = self.windows.lock() else {
            return Flush::Nothing;
        };
        let key = (source.to_string(), status);
        let Some(window) = windows.get_mut(&key).filter(|w| w.inserting) else {
            return Flush::Nothing;
        };
        window.inserting = false;
        window.row = row;
        window.take()
    }
}

impl Window {
    fn new() -> Window {
        Window {
            started: Instant::now(),
            row: None,
            inserting: false,
            unflushed: 0,
        }
    }

    fn take(&mut self) -> Flush {
        if self.unflushed == 0 || self.inserting {
            return Flush::Nothing;
        }
        let n = std::mem::take(&mut self.unflushed);
        match self.row {
            Some(row) => Flush::Add(row, n),
            None => {
                self.inserting = true;
                Flush::Insert(n)
            }
        }
    }
}

/// Record one request from `source` that no actor was authenticated for,
/// answered `status` (see the module comment).
pub async fn record_unauthenticated(
    shared: &Shared,
    source: Option<IpAddr>,
    action: &str,
    status: u16,
    detail: &str,
) {
    let source = source.map_or_else(|| "unknown".to_string(), |a| a.to_string());
    let detail = truncate(detail, MAX_DETAIL);
    tracing::info!(actor = "anonymous", action, status, %source, detail, "api audit");
    let mut flush = shared.unauthenticated.count(&source, status);
    loop {
        let written = match flush {
            Flush::Nothing => return,
            Flush::Insert(n) => {
                let row = with_timeout(async {
                    let client = shared.pool.get().await.map_err(WriteError::Pool)?;
                    client
                        .query_one(
                            "INSERT INTO audit (actor, action, status, detail, source, count)
                             VALUES ('anonymous', $1, $5, $2, $3, $4) RETURNING id",
                            &[&action, &detail, &source, &n, &i32::from(status)],
                        )
                        .await
                        .map(|r| r.get::<_, i64>(0))
                        .map_err(WriteError::Query)
                })
                .await;
                let next =
                    shared
                        .unauthenticated
                        .inserted(&source, status, row.as_ref().ok().copied());
                let result = row.map(|_| ());
                flush = next;
                result
            }
            Flush::Add(row, n) => {
                flush = Flush::Nothing;
                with_timeout(async {
                    let client = shared.pool.get().await.map_err(WriteError::Pool)?;
                    client
                        .execute(
                            "UPDATE audit SET count = count + $2 WHERE id = $1",
                            &[&row, &n],
                        )
                        .await
                        .map(|_| ())
                        .map_err(WriteError::Query)
                })
                .await
            }
        };
        if let Err(error) = written {
            tracing::error!(actor = "anonymous", action, status, %source, %error, "could not write the audit row");
        }
    }
}

/// Why an audit row was not written (it is logged instead).
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("{}", crate::pg::error_text(.0))]
    Pool(deadpool_postgres::PoolError),
    #[error("{}", crate::pg::server_message(.0))]
    Query(tokio_postgres::Error),
    #[error("the state database did not answer within {}s", WRITE_TIMEOUT.as_secs())]
    Timeout,
}

async fn with_timeout<T>(
    write: impl Future<Output = Result<T, WriteError>>,
) -> Result<T, WriteError> {
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or(Err(WriteError::Timeout))
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::{Flush, Unauthenticated, truncate};

    #[test]
    fn one_insert_per_source_then_counts_added_to_it() {
        let u = Unauthenticated::default();
        assert!(matches!(u.count("a", 401), Flush::Insert(1)));
        // While the row is being inserted, others only count.
        assert!(matches!(u.count("a", 401), Flush::Nothing));
        assert!(matches!(u.count("a", 401), Flush::Nothing));
        assert!(matches!(u.count("b", 401), Flush::Insert(1)));
        // The inserter adds what was counted meanwhile.
        assert!(matches!(u.inserted("a", 401, Some(7)), Flush::Add(7, 2)));
        assert!(matches!(u.count("a", 401), Flush::Add(7, 1)));
        // A failed insert is retried by the next request, with its count only.
        assert!(matches!(u.inserted("b", 401, None), Flush::Nothing));
        assert!(matches!(u.count("b", 401), Flush::Insert(1)));
        // Another status from the same source is a row of its own.
        assert!(matches!(u.count("a", 403), Flush::Insert(1)));
    }

    #[test]
    fn truncates_on_a_character_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }
}
