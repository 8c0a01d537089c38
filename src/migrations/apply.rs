//! Applying and undoing one migration on a locked target.
//!
//! Transactional scripts run in one transaction together with their history row,
//! so a failure leaves the target exactly as it was. No-transaction scripts run
//! statement by statement between a `started` and an `applied` history row; a
//! failed `CREATE INDEX CONCURRENTLY` leaves an INVALID index behind, which is
//! found (by comparing with the invalid indexes that existed before) and dropped.
//!
//! Every attempt runs with `lock_timeout`, so a migration never queues behind a
//! long transaction while the application's queries queue behind it; a lock
//! timeout (or deadlock / serialization failure) is retried with backoff.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::backoff::{Backoff, Jitter};
use crate::migrations::history;
use crate::migrations::split::statements;
use crate::migrations::{Migration, Script};
use crate::pg::stats::publish_own;
use crate::pg::{TargetLock, server_message, sqlstate};
use crate::plan::LockSettings;

/// SQLSTATEs worth another attempt: lock_not_available, deadlock_detected,
/// serialization_failure.
pub const RETRYABLE: [&str; 3] = ["55P03", "40P01", "40001"];

/// Timeouts and retry rules for one script.
#[derive(Debug, Clone)]
pub struct Limits {
    pub lock: LockSettings,
    pub statement_timeout: Duration,
}

/// A failed attempt that will be retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retry {
    pub attempt: u32,
    pub of: u32,
    pub wait_ms: u64,
    pub error: String,
}

/// What a successful script did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScriptReport {
    pub file: String,
    pub checksum: String,
    pub transactional: bool,
    pub duration_ms: u64,
    pub attempts: u32,
    /// INVALID indexes left by failed attempts and dropped.
    pub cleaned_invalid_indexes: Vec<String>,
    /// Rows the script wrote, per table (transactional scripts only): a restore
    /// rollback leaves these out of the users' writes it reports discarded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<crate::steps::backup::TableWrites>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error(
    "{file} failed after {attempts} attempt(s): {message}{}",
    cleanup_note(.cleaned_invalid_indexes, .invalid_indexes_left)
)]
pub struct ScriptError {
    pub file: String,
    pub message: String,
    pub sqlstate: Option<String>,
    pub attempts: u32,
    /// Statements of a no-transaction script that completed before the failure.
    /// Zero means the target is as it was before this script.
    pub statements_done: usize,
    pub cleaned_invalid_indexes: Vec<String>,
    /// INVALID indexes left by the failure that could not be dropped: the target
    /// is not as it was, so the migration counts as partly applied.
    pub invalid_indexes_left: Vec<String>,
}

fn cleanup_note(cleaned: &[String], left: &[String]) -> String {
    let mut note = String::new();
    if !cleaned.is_empty() {
        note.push_str(&format!(" (dropped INVALID index {})", cleaned.join(", ")));
    }
    if !left.is_empty() {
        note.push_str(&format!(
            " (INVALID index {} could NOT be dropped)",
            left.join(", ")
        ));
    }
    note
}

impl ScriptError {
    fn new(script: &Script, e: &tokio_postgres::Error, attempts: u32) -> Self {
        ScriptError {
            file: script.file.clone(),
            message: server_message(e),
            sqlstate: sqlstate(e).map(str::to_string),
            attempts,
            statements_done: 0,
            cleaned_invalid_indexes: Vec::new(),
            invalid_indexes_left: Vec::new(),
        }
    }

    /// True when nothing of the failed script is left on the target.
    pub fn left_nothing(&self) -> bool {
        self.statements_done == 0 && self.invalid_indexes_left.is_empty()
    }
}

/// What to do with the history row, inside the script's transaction when there is one.
enum History<'a> {
    Record {
        set: &'a str,
        migration: &'a Migration,
        run_id: &'a str,
        /// How long the migration's captured changes are kept (`None`: forever).
        keep_captures: Option<Duration>,
    },
    Remove {
        set: &'a str,
        version: i64,
    },
}

/// Apply `m`'s up script and record it in the history.
pub async fn apply_up(
    lock: &TargetLock,
    set: &str,
    m: &Migration,
    run_id: &str,
    keep_captures: Option<Duration>,
    limits: &Limits,
    on_retry: &mut (dyn FnMut(&Retry) + Send),
) -> Result<ScriptReport, ScriptError> {
    let client = lock.client();
    let history = History::Record {
        set,
        migration: m,
        run_id,
        keep_captures,
    };
    if m.up.transactional {
        run_transactional(client, &m.up, limits, history, on_retry).await
    } else {
        history::record_started(client, set, m, run_id)
            .await
            .map_err(|e| ScriptError::new(&m.up, &e, 0))?;
        let result = run_statements(client, &m.up, limits, history, on_retry).await;
        if let Err(err) = &result
            && err.left_nothing()
        {
            // Nothing ran, so the intent row would only make the next run refuse.
            let _ = history::remove(client, set, m.version).await;
        }
        result
    }
}

/// Run `m`'s down script and remove its history row.
pub async fn apply_down(
    lock: &TargetLock,
    set: &str,
    m: &Migration,
    down: &Script,
    limits: &Limits,
    on_retry: &mut (dyn FnMut(&Retry) + Send),
) -> Result<ScriptReport, ScriptError> {
    let history = History::Remove {
        set,
        version: m.version,
    };
    if down.transactional {
        run_transactional(lock.client(), down, limits, history, on_retry).await
    } else {
        run_statements(lock.client(), down, limits, history, on_retry).await
    }
}

/// Run a verify script in a transaction that is always rolled back: it can look,
/// and fail, but never change anything. Like every rollback of pgshepherd's own,
/// it is published at once so that `rollbacks_per_second` does not count it
/// (see `pg::stats`).
pub async fn run_verify(
    lock: &TargetLock,
    script: &Script,
    limits: &Limits,
) -> Result<Duration, ScriptError> {
    let client = lock.client();
    let started = Instant::now();
    let result = async {
        client.batch_execute("BEGIN").await?;
        client
            .batch_execute(&set_timeouts("SET LOCAL", limits))
            .await?;
        client.batch_execute(&script.sql).await
    }
    .await;
    let _ = client.batch_execute("ROLLBACK").await;
    // Counted before the soak's first reading, not during the soak.
    publish_own(client).await;
    result
        .map(|_| started.elapsed())
        .map_err(|e| ScriptError::new(script, &e, 1))
}

fn set_timeouts(verb: &str, limits: &Limits) -> String {
    format!(
        "{verb} lock_timeout = {}; {verb} statement_timeout = {}",
        limits.lock.lock_timeout.as_millis().max(1),
        limits.statement_timeout.as_millis().max(1)
    )
}

async fn run_transactional(
    client: &Client,
    script: &Script,
    limits: &Limits,
    history: History<'_>,
    on_retry: &mut (dyn FnMut(&Retry) + Send),
) -> Result<ScriptReport, ScriptError> {
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            // Two round trips: the script inside its transaction, then the
            // history row together with the COMMIT. Capture starts right
            // before the script and stops right after it (see `undo::capture`).
            let (start, stop) = capture_sql(script, &history);
            let begin = format!(
                "BEGIN; {};\n{start}\n{}",
                set_timeouts("SET LOCAL", limits),
                script.sql
            );
            client.batch_execute(&begin).await?;
            let writes = crate::steps::backup::read_own_writes(client).await?;
            let finish = history_sql(&history, started);
            client
                .batch_execute(&format!("{stop}{finish};\nCOMMIT"))
                .await?;
            Ok(writes)
        }
        .await;
        match result {
            Ok(writes) => {
                // Published now, not when this session next goes idle (up to 10 s
                // later): a restore subtracts `writes` from counters that must
                // already hold them.
                publish_own(client).await;
                return Ok(ScriptReport {
                    writes,
                    ..report(script, started, attempt, Vec::new())
                });
            }
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                publish_own(client).await;
                if !should_retry(&e, attempt, &limits.lock, on_retry).await {
                    return Err(ScriptError::new(script, &e, attempt));
                }
            }
        }
    }
}

async fn run_statements(
    client: &Client,
    script: &Script,
    limits: &Limits,
    history: History<'_>,
    on_retry: &mut (dyn FnMut(&Retry) + Send),
) -> Result<ScriptReport, ScriptError> {
    let started = Instant::now();
    // Attempts of the script as a whole: 1 plus every retry of any statement.
    let mut attempts = 1;
    let mut cleaned = Vec::new();
    client
        .batch_execute(&set_timeouts("SET", limits))
        .await
        .map_err(|e| ScriptError::new(script, &e, 0))?;
    let invalid_before = invalid_indexes(client)
        .await
        .map_err(|e| ScriptError::new(script, &e, 0))?;
    let result = async {
        for (done, statement) in statements(&script.sql).iter().enumerate() {
            let mut attempt = 0;
            loop {
                attempt += 1;
                if attempt > 1 {
                    attempts += 1;
                }
                let Err(e) = client.batch_execute(statement).await else {
                    break;
                };
                let (dropped, left) = drop_new_invalid_indexes(client, &invalid_before).await;
                // The failed statement was a rolled-back transaction too.
                publish_own(client).await;
                cleaned.extend(dropped);
                if !should_retry(&e, attempt, &limits.lock, on_retry).await {
                    let mut err = ScriptError::new(script, &e, attempts);
                    err.statements_done = done;
                    err.cleaned_invalid_indexes = cleaned.clone();
                    err.invalid_indexes_left = left;
                    return Err(err);
                }
            }
        }
        client
            .batch_execute(&history_sql(&history, started))
            .await
            .map_err(|e| {
                let mut err = ScriptError::new(script, &e, attempts);
                err.statements_done = usize::MAX;
                err
            })
    }
    .await;
    let _ = client
        .batch_execute("RESET lock_timeout; RESET statement_timeout")
        .await;
    result.map(|()| report(script, started, attempts, cleaned))
}

/// The SQL that starts and stops capturing the tables an up script names; empty
/// for other scripts.
fn capture_sql(script: &Script, history: &History<'_>) -> (String, String) {
    match history {
        History::Record {
            set,
            migration,
            run_id,
            keep_captures,
        } if !script.capture.is_empty() => (
            crate::undo::capture::start_sql(
                &script.capture,
                run_id,
                set,
                migration.version,
                *keep_captures,
            ),
            format!("{};\n", crate::undo::capture::stop_sql(&script.capture)),
        ),
        _ => (String::new(), String::new()),
    }
}

fn history_sql(history: &History<'_>, started: Instant) -> String {
    match history {
        History::Record {
            set,
            migration,
            run_id,
            ..
        } => history::record_applied_sql(
            set,
            migration,
            run_id,
            started.elapsed().as_millis() as i64,
        ),
        History::Remove { set, version } => history::remove_sql(set, *version),
    }
}

fn report(script: &Script, started: Instant, attempts: u32, cleaned: Vec<String>) -> ScriptReport {
    ScriptReport {
        file: script.file.clone(),
        checksum: script.checksum.clone(),
        transactional: script.transactional,
        duration_ms: started.elapsed().as_millis() as u64,
        attempts,
        cleaned_invalid_indexes: cleaned,
        writes: Vec::new(),
    }
}

/// Sleep before the next attempt and return true, or return false when the error
/// is not retryable or the attempts are used up.
async fn should_retry(
    e: &tokio_postgres::Error,
    attempt: u32,
    lock: &LockSettings,
    on_retry: &mut (dyn FnMut(&Retry) + Send),
) -> bool {
    let retryable = sqlstate(e).is_some_and(|s| RETRYABLE.contains(&s));
    if !retryable || attempt > lock.retries {
        return false;
    }
    let wait = backoff(lock).delay(attempt);
    on_retry(&Retry {
        attempt,
        of: lock.retries + 1,
        wait_ms: wait.as_millis() as u64,
        error: server_message(e),
    });
    tokio::time::sleep(wait).await;
    true
}

/// The retry schedule of a migration that hit `lock_timeout`: from
/// `lock.backoff`, doubling, capped at `lock.max_backoff`, with ±25% jitter so
/// that several waiting runs do not retry in lockstep.
pub fn backoff(lock: &LockSettings) -> Backoff {
    Backoff::new(lock.backoff, lock.max_backoff).with_jitter(Jitter::Proportional(0.25))
}

/// INVALID indexes that no session is building right now. An index another
/// session's `CREATE INDEX CONCURRENTLY` or `REINDEX CONCURRENTLY` is still working
/// on is INVALID too, and is not ours to drop.
async fn invalid_indexes(client: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname)
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE NOT i.indisvalid
                AND i.indexrelid NOT IN (SELECT index_relid FROM pg_stat_progress_create_index)
                AND c.relname !~ '_cc(new|old)[0-9]*$'",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Drop the INVALID indexes that appeared since `before` (what a failed concurrent
/// build leaves), retrying a lock timeout twice. Returns (dropped, still there).
async fn drop_new_invalid_indexes(
    client: &Client,
    before: &[String],
) -> (Vec<String>, Vec<String>) {
    let Ok(now) = invalid_indexes(client).await else {
        return (Vec::new(), Vec::new());
    };
    let (mut dropped, mut left) = (Vec::new(), Vec::new());
    for name in now.into_iter().filter(|n| !before.contains(n)) {
        let mut ok = false;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
            }
            if client
                .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                .await
                .is_ok()
            {
                ok = true;
                break;
            }
        }
        if ok {
            dropped.push(name)
        } else {
            left.push(name)
        }
    }
    (dropped, left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock() -> LockSettings {
        LockSettings {
            acquire_timeout: Duration::from_secs(1),
            lock_timeout: Duration::from_secs(1),
            retries: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        }
    }

    #[test]
    fn backoff_doubles_with_a_quarter_of_jitter_either_way_and_is_capped() {
        let b = backoff(&lock());
        for (attempt, base) in [(1, 100), (2, 200), (3, 400), (4, 500), (9, 500)] {
            let base = Duration::from_millis(base);
            assert_eq!(b.delay_at(attempt, 0.0), base * 3 / 4, "attempt {attempt}");
            assert_eq!(b.delay_at(attempt, 1.0), base * 5 / 4, "attempt {attempt}");
            let d = b.delay(attempt);
            assert!(
                d >= base * 3 / 4 && d <= base * 5 / 4,
                "attempt {attempt}: {d:?}"
            );
        }
    }
}
