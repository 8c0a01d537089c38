//! Built-in PostgreSQL signals, read through the same read-only, time-boxed session
//! as SQL checks.
//!
//! - `deadlocks_per_second`, `rollbacks_per_second`: the change of
//!   `pg_stat_database.{deadlocks, xact_rollback}` for the current database between
//!   two readings, divided by the seconds between them. The first reading comes
//!   from `prime`; a counter that went backwards or a changed `stats_reset` means
//!   the statistics were reset, which is inconclusive (the next sample has a fresh
//!   base). These counters cannot tell sessions apart, so pgshepherd keeps its
//!   own rollbacks out of them instead: the checks end every read with COMMIT,
//!   a failed one too (see `session`), and the rollbacks of the locked session
//!   (a verify script, a migration retried after `lock_timeout`) are published
//!   at once, before the soak's first reading, instead of up to 10 s into it
//!   (see `pg::stats`).
//!   Since PostgreSQL 15 backends flush their statistics at most about once a
//!   second, so a rate over a short interval is lumpy but not lost.
//! - `longest_transaction_seconds`: the age of the oldest open transaction among
//!   other client sessions on the database; 0 when there is none, which is a real
//!   measurement, not missing data.
//! - `lock_waiting_sessions`: client sessions on the database waiting on a
//!   heavyweight lock (`wait_event_type = 'Lock'`) right now.
//!
//! Sessions whose `application_name` starts with `pgshepherd` are excluded from the
//! last two: the migration itself waiting on a lock is the lock step's business.
//! Both need to see other roles' sessions (`pg_read_all_stats`): a sample in which
//! some are hidden is inconclusive, and a run whose role lacks the privilege is
//! refused before it changes anything (see `visibility`).

use std::time::{Duration, Instant};

use crate::checks::session::{ReadError, ReadOnlySession};
use crate::checks::verdict::Observation;
use crate::pg::Dsn;
use crate::plan::model::BuiltinSignal;

const COUNTERS_SQL: &str = "SELECT deadlocks, xact_rollback, stats_reset::text \
     FROM pg_stat_database WHERE datname = current_database()";

// Each gauge query also counts the sessions on the database that the role cannot
// see (backend_type reads NULL only for those) and names the role: a sample with
// hidden sessions is inconclusive, not a 0 (see `visibility`).
const LONGEST_TRANSACTION_SQL: &str = "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)) \
       FILTER (WHERE backend_type = 'client backend' AND xact_start IS NOT NULL \
         AND coalesce(application_name, '') NOT LIKE 'pgshepherd%'), 0)::float8, \
       count(*) FILTER (WHERE backend_type IS NULL), current_user::text \
     FROM pg_stat_activity \
     WHERE datname = current_database() AND pid <> pg_backend_pid()";

const LOCK_WAITING_SQL: &str = "SELECT count(*) FILTER (WHERE backend_type = 'client backend' \
         AND wait_event_type = 'Lock' \
         AND coalesce(application_name, '') NOT LIKE 'pgshepherd%')::float8, \
       count(*) FILTER (WHERE backend_type IS NULL), current_user::text \
     FROM pg_stat_activity \
     WHERE datname = current_database() AND pid <> pg_backend_pid()";

/// How a person reads `signal` by hand (the runbook shows it): the query the
/// sampler runs, and for a rate the counter whose change per second is the value.
pub fn reading(signal: BuiltinSignal) -> (&'static str, Option<&'static str>) {
    match signal {
        BuiltinSignal::DeadlocksPerSecond => (COUNTERS_SQL, Some("pg_stat_database.deadlocks")),
        BuiltinSignal::RollbacksPerSecond => (COUNTERS_SQL, Some("pg_stat_database.xact_rollback")),
        BuiltinSignal::LongestTransactionSeconds => (LONGEST_TRANSACTION_SQL, None),
        BuiltinSignal::LockWaitingSessions => (LOCK_WAITING_SQL, None),
    }
}

/// Why a counter could not be read; worded as an inconclusive sample's reason.
#[derive(Debug, thiserror::Error)]
enum CounterError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("current database not found in pg_stat_database")]
    NoRow,
    #[error("cannot read {column}: {source}")]
    Column {
        column: &'static str,
        source: tokio_postgres::Error,
    },
}

/// One reading of a cumulative counter.
#[derive(Debug, Clone)]
struct Reading {
    value: i64,
    stats_reset: Option<String>,
    at: Instant,
}

pub struct BuiltinSampler {
    signal: BuiltinSignal,
    session: ReadOnlySession,
    last: Option<Reading>,
}

impl BuiltinSampler {
    pub fn new(signal: BuiltinSignal, dsn: &Dsn, timeout: Duration) -> Self {
        BuiltinSampler {
            signal,
            session: ReadOnlySession::new(dsn, timeout),
            last: None,
        }
    }

    fn is_rate(&self) -> bool {
        matches!(
            self.signal,
            BuiltinSignal::DeadlocksPerSecond | BuiltinSignal::RollbacksPerSecond
        )
    }

    /// Takes the first counter reading of a rate signal, so the first sample is
    /// already a rate. A failure here only means the first sample re-primes.
    pub async fn prime(&mut self) {
        if self.is_rate()
            && let Ok(reading) = self.read_counter().await
        {
            self.last = Some(reading);
        }
    }

    pub async fn sample(&mut self) -> Observation {
        match self.signal {
            BuiltinSignal::DeadlocksPerSecond | BuiltinSignal::RollbacksPerSecond => {
                self.sample_rate().await
            }
            BuiltinSignal::LongestTransactionSeconds => self.gauge(LONGEST_TRANSACTION_SQL).await,
            BuiltinSignal::LockWaitingSessions => self.gauge(LOCK_WAITING_SQL).await,
        }
    }

    async fn gauge(&mut self, sql: &str) -> Observation {
        let rows = match self.session.read(sql, None).await {
            Ok(read) => read.rows,
            Err(e) => return Observation::inconclusive(e.to_string()),
        };
        let Some(row) = rows.first() else {
            return Observation::inconclusive(format!("no row for {}", self.signal.as_str()));
        };
        let read = row
            .try_get::<_, f64>(0)
            .and_then(|v| Ok((v, row.try_get::<_, i64>(1)?, row.try_get::<_, String>(2)?)));
        match read {
            Ok((_, hidden, role)) if hidden > 0 => Observation::inconclusive(format!(
                "{hidden} session(s) on this database are hidden from role {role} \
                 (pg_stat_activity shows <insufficient privilege>), so {} cannot count them \
                 (GRANT {} TO {role})",
                self.signal.as_str(),
                crate::checks::visibility::PRIVILEGE,
            )),
            Ok((v, _, _)) => Observation::Value(v),
            Err(e) => {
                Observation::inconclusive(format!("cannot read {}: {e}", self.signal.as_str()))
            }
        }
    }

    async fn sample_rate(&mut self) -> Observation {
        let now = match self.read_counter().await {
            Ok(reading) => reading,
            Err(e) => return Observation::inconclusive(e.to_string()),
        };
        let Some(prev) = self.last.replace(now.clone()) else {
            return Observation::inconclusive(format!(
                "first reading of {} (value {}); a rate needs two",
                self.counter_name(),
                now.value
            ));
        };
        rate(self.counter_name(), &prev, &now)
    }

    fn counter_name(&self) -> &'static str {
        reading(self.signal)
            .1
            .unwrap_or("pg_stat_database.xact_rollback")
    }

    async fn read_counter(&mut self) -> Result<Reading, CounterError> {
        let read = self.session.read(COUNTERS_SQL, None).await?;
        let at = Instant::now();
        let row = read.rows.first().ok_or(CounterError::NoRow)?;
        let column = if self.signal == BuiltinSignal::DeadlocksPerSecond {
            0
        } else {
            1
        };
        let value: i64 = row.try_get(column).map_err(|source| CounterError::Column {
            column: self.counter_name(),
            source,
        })?;
        let stats_reset: Option<String> =
            row.try_get(2).map_err(|source| CounterError::Column {
                column: "stats_reset",
                source,
            })?;
        Ok(Reading {
            value,
            stats_reset,
            at,
        })
    }
}

fn rate(counter: &str, prev: &Reading, now: &Reading) -> Observation {
    if now.stats_reset != prev.stats_reset || now.value < prev.value {
        return Observation::inconclusive(format!(
            "{counter} was reset (from {} to {}, stats_reset {}); the next sample starts from here",
            prev.value,
            now.value,
            now.stats_reset.as_deref().unwrap_or("unknown")
        ));
    }
    let seconds = now.at.duration_since(prev.at).as_secs_f64();
    if seconds <= 0.0 {
        return Observation::inconclusive(format!("two readings of {counter} at the same instant"));
    }
    let per_second = (now.value - prev.value) as f64 / seconds;
    Observation::Value(per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(value: i64, reset: &str, at: Instant) -> Reading {
        Reading {
            value,
            stats_reset: Some(reset.to_string()),
            at,
        }
    }

    #[test]
    fn rate_is_delta_over_elapsed_seconds() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(4);
        let obs = rate("c", &reading(10, "r", t0), &reading(12, "r", t1));
        assert_eq!(obs, Observation::Value(0.5));
        assert_eq!(
            rate("c", &reading(10, "r", t0), &reading(10, "r", t1)),
            Observation::Value(0.0)
        );
    }

    #[test]
    fn a_counter_reset_is_inconclusive() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        assert!(matches!(
            rate("c", &reading(10, "r", t0), &reading(3, "r", t1)),
            Observation::Inconclusive { .. }
        ));
        assert!(matches!(
            rate("c", &reading(1, "r", t0), &reading(30, "r2", t1)),
            Observation::Inconclusive { .. }
        ));
        assert!(matches!(
            rate("c", &reading(1, "r", t0), &reading(2, "r", t0)),
            Observation::Inconclusive { .. }
        ));
    }
}
