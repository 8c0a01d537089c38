//! Keeping pgshepherd's own rollbacks out of the statistics it judges.
//!
//! `rollbacks_per_second` is the change of `pg_stat_database.xact_rollback`,
//! which counts every transaction of the database that ended in a rollback,
//! pgshepherd's own included: a verify script (always rolled back), a migration
//! attempt that hit `lock_timeout` and is retried, a failed statement of a
//! no-transaction migration, the same for down scripts before a confirmation.
//! These all happen on the locked session before the soak (or the confirmation)
//! takes its first counter reading, so they would be outside every rate it
//! judges, were it not for when PostgreSQL publishes them: since version 15 a
//! backend publishes its counters at most once a second, and one that goes idle
//! right after (as the locked session does for the whole soak) holds them back
//! for up to 10 s. A verify script's rollback then lands in the middle of the
//! soak, as if the application had rolled back.
//!
//! Hence [`publish_own`] after each of them: it asks the server to publish the
//! session's pending counters now. The server does so before it answers, so
//! once it returns they are in `pg_stat_database`, before any later reading.
//! This is the sound way round: subtracting our own rollbacks from a rate would
//! need to know in which interval the server publishes them, which nothing tells.
//!
//! PostgreSQL 14 and older have no such request (`pg_stat_force_next_flush()`
//! is new in 15): there the statistics collector publishes on its own schedule.

use tokio_postgres::Client;

/// `pg_stat_force_next_flush()` only sets a flag: the flush happens when the
/// session goes idle after that statement, before the server answers it.
const PUBLISH_SQL: &str = "SELECT pg_stat_force_next_flush()";

/// Whether the server has `pg_stat_force_next_flush()`. Asked rather than tried:
/// calling a missing function fails, and a failed statement is a rolled-back
/// transaction itself.
const SUPPORTED_SQL: &str = "SELECT current_setting('server_version_num')::int >= 150000";

/// Publish the session's pending statistics now (PostgreSQL 15 and later), so
/// that the rollbacks it just caused are counted before any later reading of
/// `pg_stat_database`. Best effort: an error (a dead connection) is for the
/// caller's next statement to report.
pub async fn publish_own(client: &Client) {
    let supported = client
        .query_one(SUPPORTED_SQL, &[])
        .await
        .and_then(|row| row.try_get::<_, bool>(0))
        .unwrap_or(false);
    if supported {
        let _ = client.batch_execute(PUBLISH_SQL).await;
    }
}
