//! The state database: its schema (created and upgraded here with refinery), the
//! leases through which one daemon at a time drives a run, and the fenced writes
//! of a run's checkpoints and events.
//!
//! Fencing: every write of a run's state names the lease it was made under
//! (`owner`, `epoch`). Claiming a run increments its epoch, so a daemon that lost
//! its lease (paused, partitioned, presumed dead) can never write again: its next
//! write matches no row and the run's task is stopped.

use std::time::Duration;

use deadpool_postgres::{
    ClientWrapper, Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod,
};
use serde_json::Value;

use crate::notify::config::NotifyConfig;
use crate::notify::outbox;
use crate::notify::progress::Progress;
use crate::pg::Dsn;
use crate::plan::RollbackStrategy;
use crate::run::checkpoint::Checkpoint;
use crate::run::event::{Event, EventKind, Outcome};
use crate::run::lifecycle::{self, Input, Rules, Transition};

mod embedded {
    refinery::embed_migrations!("src/daemon/schema");
}

/// Serialises schema upgrades of replicas starting at once (refinery itself
/// does not lock).
const SCHEMA_LOCK: i64 = 0x7067_7368_6570_0001;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to the state database {dsn}: {message}")]
    Connect { dsn: String, message: String },
    /// `state_database` goes through a pooler that shares server sessions:
    /// the schema lock and upgrade (and the daemon name's lock) need one.
    #[error(transparent)]
    NotASession(crate::pg::session::SessionError),
    #[error("while upgrading the state database schema: {0}")]
    Schema(String),
    #[error("state database: {0}")]
    Pool(String),
    #[error("state database: {0}")]
    Query(String),
    /// The state database did not answer in time (see [`crate::daemon::deadline`]).
    #[error("the state database did not answer {what} within {} ms; its idle connections were closed", .after.as_millis())]
    Deadline { what: &'static str, after: Duration },
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Query(crate::pg::server_message(&e))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Pool(crate::pg::dsn::redact_text(&crate::pg::error_text(&e)))
    }
}

/// Connect, bring the schema up to date, and return a pool whose connections
/// cannot hang the daemon on a silent network: `op_timeout` (see
/// [`crate::daemon::deadline::op_timeout`]) bounds connecting, unacknowledged
/// writes (`tcp_user_timeout`), each statement on the server
/// (`statement_timeout`) and a transaction left open by a client that vanished
/// (`idle_in_transaction_session_timeout`); TCP keepalives find a dead idle
/// connection.
pub async fn open(
    dsn: &Dsn,
    max_connections: usize,
    op_timeout: Duration,
) -> Result<Pool, StoreError> {
    let connect_err = |e: tokio_postgres::Error| StoreError::Connect {
        dsn: dsn.to_string(),
        message: crate::pg::server_message(&e),
    };
    let mut client = dsn
        .connect("pgshepherd schema", &[])
        .await
        .map_err(connect_err)?;
    // Behind a transaction-mode pooler the schema lock would stay held by a
    // pooled server session, and the next start would wait for it forever.
    if let Err(e) =
        crate::pg::session::check(&client, dsn, op_timeout, "the state_database URL").await
    {
        return Err(if e.is_pooler() {
            StoreError::NotASession(e)
        } else {
            StoreError::Connect {
                dsn: dsn.to_string(),
                message: e.to_string(),
            }
        });
    }
    client
        .execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(connect_err)?;
    let migrated = embedded::migrations::runner()
        .run_async(&mut client)
        .await
        .map_err(|e| StoreError::Schema(crate::pg::error_text(&e)));
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])
        .await;
    migrated?;

    let config = pool_config(dsn, op_timeout);
    let manager = Manager::from_config(
        config,
        dsn.tls_connector(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    // Server-side limits, set on each new connection rather than through the
    // startup `options` (which a pooler such as PgBouncer refuses): a statement
    // or a transaction cut off by a client deadline ends on the server too,
    // releasing the rows it locked.
    let ms = op_timeout.as_millis();
    let limits =
        format!("SET statement_timeout = {ms}; SET idle_in_transaction_session_timeout = {ms}");
    let post_create = Hook::async_fn(move |client: &mut ClientWrapper, _| {
        let limits = limits.clone();
        Box::pin(async move {
            match tokio::time::timeout(op_timeout, client.batch_execute(&limits)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(HookError::Backend(e)),
                Err(_) => Err(HookError::message(
                    "the state database did not answer while a connection was being set up",
                )),
            }
        })
    });
    Pool::builder(manager)
        .max_size(max_connections)
        .wait_timeout(Some(op_timeout))
        .create_timeout(Some(op_timeout))
        .post_create(post_create)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Pool(e.to_string()))
}

/// The pooled connections' network settings (see [`open`]); the DSN's own win,
/// but for a keepalive idle time longer than ours.
fn pool_config(dsn: &Dsn, op_timeout: Duration) -> tokio_postgres::Config {
    let mut config = dsn.config().clone();
    config.application_name("pgshepherd daemon");
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(op_timeout);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(op_timeout);
    }
    // An idle connection whose path died is found within about 5 s + 3 x 1 s.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(5).min(config.get_keepalives_idle()));
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(1));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
    config
}

/// Which daemon drives a run, under which fencing epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub run_id: String,
    pub owner: String,
    pub epoch: i64,
}

/// A run this daemon has just claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub lease: Lease,
    pub target: String,
    pub plan_path: String,
    pub bundle: Value,
    pub checkpoint: Value,
    pub abort_requested_by: Option<String>,
    /// The previous owner, when this claim is a takeover.
    pub previous_owner: Option<String>,
}

/// Claim up to `limit` runs that are ready: the oldest open run of each target
/// (one active run per target, in submission order, after the undos asked for
/// before it: see [`crate::daemon::undo::store::claim`]), approved when approval is
/// required, and either never claimed or with an expired lease. A target whose
/// last run needs a human and is not acknowledged starts nothing new.
pub async fn claim(
    pool: &Pool,
    node: &str,
    lease_timeout: Duration,
    limit: i64,
) -> Result<Vec<Claimed>, StoreError> {
    if limit <= 0 {
        return Ok(Vec::new());
    }
    let client = pool.get().await?;
    let lease_ms = lease_timeout.as_millis() as i64;
    let rows = client
        .query(
            "WITH ready AS (
                 SELECT r.id, r.owner AS previous_owner
                   FROM runs r
                  WHERE r.phase IN ('queued', 'active')
                    AND (r.owner IS NULL OR r.lease_until < now())
                    AND NOT EXISTS (SELECT 1 FROM runs o
                                     WHERE o.target = r.target
                                       AND o.phase <> 'finished'
                                       AND o.seq < r.seq)
                    AND NOT EXISTS (SELECT 1 FROM runs a
                                     WHERE a.target = r.target
                                       AND a.phase = 'active'
                                       AND a.id <> r.id)
                    -- An undo asked for before this run was submitted goes
                    -- first (their places come from one sequence); a running
                    -- undo holds the target.
                    AND (r.phase = 'active'
                         OR NOT EXISTS (SELECT 1 FROM undos u
                                         WHERE u.target = r.target
                                           AND u.phase <> 'finished'
                                           AND (u.seq < r.seq OR u.phase = 'active')))
                    -- A run that ended needing a human may have left the
                    -- target changed: nothing new starts there until someone
                    -- has acknowledged it.
                    AND (r.phase = 'active'
                         OR NOT EXISTS (SELECT 1 FROM runs h
                                         WHERE h.target = r.target
                                           AND h.outcome = 'needs_human'
                                           AND h.acked_by IS NULL))
                  ORDER BY r.seq
                  LIMIT $3
                  FOR UPDATE SKIP LOCKED)
             UPDATE runs r
                SET owner = $1,
                    epoch = r.epoch + 1,
                    lease_until = now() + $2 * interval '1 millisecond',
                    phase = 'active',
                    started_at = coalesce(r.started_at, now()),
                    updated_at = now()
               FROM ready
              WHERE r.id = ready.id
          RETURNING r.id, r.epoch, r.target, r.plan_path, r.bundle, r.checkpoint,
                    r.abort_requested_by, ready.previous_owner",
            &[&node, &(lease_ms as f64), &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| claimed(r, node, r.get(7))).collect())
}

/// A claimed run from a `RETURNING id, epoch, target, plan_path, bundle,
/// checkpoint, abort_requested_by` row.
fn claimed(r: &tokio_postgres::Row, node: &str, previous_owner: Option<String>) -> Claimed {
    Claimed {
        lease: Lease {
            run_id: r.get(0),
            owner: node.to_string(),
            epoch: r.get(1),
        },
        target: r.get(2),
        plan_path: r.get(3),
        bundle: r.get(4),
        checkpoint: r.get(5),
        abort_requested_by: r.get(6),
        previous_owner,
    }
}

/// Take back, under new epochs, the runs leased to `node` that this process
/// does not drive (`driving`), without waiting for their leases to expire. Only
/// for a process holding the name's lock ([`crate::daemon::name_lock`]): the
/// process that held those leases is gone. The new epoch fences it all the same.
pub async fn take_back(
    pool: &Pool,
    node: &str,
    lease_timeout: Duration,
    driving: &[String],
    limit: i64,
) -> Result<Vec<Claimed>, StoreError> {
    if limit <= 0 {
        return Ok(Vec::new());
    }
    let client = pool.get().await?;
    let lease_ms = lease_timeout.as_millis() as f64;
    let rows = client
        .query(
            "WITH mine AS (
                 SELECT id FROM runs
                  WHERE owner = $1 AND phase = 'active' AND NOT (id = ANY($3))
                  ORDER BY seq
                  LIMIT $4
                  FOR UPDATE SKIP LOCKED)
             UPDATE runs r
                SET epoch = r.epoch + 1,
                    lease_until = now() + $2 * interval '1 millisecond',
                    updated_at = now()
               FROM mine
              WHERE r.id = mine.id
          RETURNING r.id, r.epoch, r.target, r.plan_path, r.bundle, r.checkpoint,
                    r.abort_requested_by",
            &[&node, &lease_ms, &driving, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| claimed(r, node, Some(node.to_string())))
        .collect())
}

/// What renewing a lease found.
#[derive(Debug, Clone)]
pub struct Renewed {
    pub run_id: String,
    /// Still ours: the lease was extended.
    pub held: bool,
    /// Not held because this daemon finished the run under this epoch (its
    /// task has not been reaped yet): nothing was lost.
    pub finished: bool,
    pub abort_requested_by: Option<String>,
}

/// Extend every lease this daemon holds; report the ones it has lost and the
/// abort requests made since.
pub async fn renew(
    pool: &Pool,
    leases: &[Lease],
    lease_timeout: Duration,
) -> Result<Vec<Renewed>, StoreError> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let client = pool.get().await?;
    let ids: Vec<&str> = leases.iter().map(|l| l.run_id.as_str()).collect();
    let epochs: Vec<i64> = leases.iter().map(|l| l.epoch).collect();
    let owner = &leases[0].owner;
    let lease_ms = lease_timeout.as_millis() as f64;
    let rows = client
        .query(
            "WITH l(id, epoch) AS (SELECT * FROM unnest($1::text[], $2::bigint[])),
                  renewed AS (
                      UPDATE runs r
                         SET lease_until = now() + $4 * interval '1 millisecond'
                        FROM l
                       WHERE r.id = l.id AND r.epoch = l.epoch AND r.owner = $3
                         AND r.phase = 'active'
                   RETURNING r.id, r.abort_requested_by)
             SELECT l.id, renewed.id IS NOT NULL, renewed.abort_requested_by,
                    coalesce(r.phase = 'finished' AND r.epoch = l.epoch, false)
               FROM l LEFT JOIN renewed ON renewed.id = l.id
                      LEFT JOIN runs r ON r.id = l.id",
            &[&ids, &epochs, owner, &lease_ms],
        )
        .await?;
    Ok(leases
        .iter()
        .map(|l| {
            let row = rows.iter().find(|r| r.get::<_, &str>(0) == l.run_id);
            Renewed {
                run_id: l.run_id.clone(),
                held: row.is_some_and(|r| r.get(1)),
                finished: row.is_some_and(|r| r.get(3)),
                abort_requested_by: row.and_then(|r| r.get(2)),
            }
        })
        .collect())
}

/// Give a run back (graceful shutdown): another daemon may claim it at once.
pub async fn release(pool: &Pool, lease: &Lease) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE runs SET owner = NULL, lease_until = NULL, updated_at = now()
              WHERE id = $1 AND owner = $2 AND epoch = $3 AND phase = 'active'",
            &[&lease.run_id, &lease.owner, &lease.epoch],
        )
        .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("run {run_id} is no longer ours (epoch {epoch} was superseded)")]
    Fenced { run_id: String, epoch: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Append `events` and, when given, replace the checkpoint, in one transaction
/// under the lease. A batch with no checkpoint commits without waiting for its
/// WAL flush: events are the record, the checkpoint is what recovery trusts,
/// and a later checkpoint commit makes everything before it durable.
pub async fn write(
    pool: &Pool,
    lease: &Lease,
    events: &[Event],
    checkpoint: Option<&Checkpoint>,
    notify: &NotifyConfig,
    progress: Option<&mut Progress>,
) -> Result<(), WriteError> {
    let mut client = pool.get().await.map_err(StoreError::from)?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    if checkpoint.is_none() {
        tx.batch_execute("SET LOCAL synchronous_commit = off")
            .await
            .map_err(StoreError::from)?;
    }
    let held = tx
        .query_opt(
            "SELECT 1 FROM runs WHERE id = $1 AND owner = $2 AND epoch = $3 FOR UPDATE",
            &[&lease.run_id, &lease.owner, &lease.epoch],
        )
        .await
        .map_err(StoreError::from)?;
    if held.is_none() {
        return Err(WriteError::Fenced {
            run_id: lease.run_id.clone(),
            epoch: lease.epoch,
        });
    }
    append_events(&tx, &lease.run_id, events, notify, progress).await?;
    if let Some(cp) = checkpoint {
        let exit_code = events.iter().rev().find_map(|e| match &e.kind {
            EventKind::RunFinished { exit_code, .. } => Some(*exit_code),
            _ => None,
        });
        save_checkpoint(&tx, &lease.run_id, cp, exit_code).await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// Append a run's events and, in the same transaction, the notifications they
/// give rise to (see [`crate::notify::outbox`]).
pub async fn append_events(
    client: &impl deadpool_postgres::GenericClient,
    run_id: &str,
    events: &[Event],
    notify: &NotifyConfig,
    progress: Option<&mut Progress>,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let batch = serde_json::to_value(events).map_err(|e| StoreError::Query(e.to_string()))?;
    client
        .execute(
            "INSERT INTO events (run_id, ts, name, event)
             SELECT $1, (e->>'ts')::timestamptz, e->>'event', e
               FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS x(e, n)
              ORDER BY n",
            &[&run_id, &batch],
        )
        .await?;
    outbox::enqueue_for_events(client, notify, run_id, events, progress).await?;
    Ok(())
}

async fn save_checkpoint(
    client: &impl deadpool_postgres::GenericClient,
    run_id: &str,
    cp: &Checkpoint,
    exit_code: Option<i32>,
) -> Result<(), StoreError> {
    let json = serde_json::to_value(cp).map_err(|e| StoreError::Query(e.to_string()))?;
    let ended = cp.state.outcome();
    let finished = ended.is_some();
    let outcome = ended.map(|(o, _)| o.as_str());
    let reason = ended.and_then(|(_, r)| r.map(str::to_string));
    let exit_code = exit_code.or_else(|| ended.map(|(o, _)| o.exit_code()));
    client
        .execute(
            "UPDATE runs
                SET checkpoint = $2, state_name = $3,
                    phase = CASE WHEN $4 THEN 'finished' ELSE phase END,
                    outcome = $5, reason = $6, exit_code = $7,
                    finished_at = CASE WHEN $4 THEN now() END,
                    owner = CASE WHEN $4 THEN NULL ELSE owner END,
                    lease_until = CASE WHEN $4 THEN NULL ELSE lease_until END,
                    updated_at = now()
              WHERE id = $1",
            &[
                &run_id,
                &json,
                &cp.state.name(),
                &finished,
                &outcome,
                &reason,
                &exit_code,
            ],
        )
        .await?;
    Ok(())
}

/// Finish a run that no daemon has started (aborted while queued): one
/// transaction, and only if it is still unclaimed. Returns false when it was not.
pub async fn finish_unclaimed(
    pool: &Pool,
    run_id: &str,
    reason: &str,
    actor: &str,
    notify: &NotifyConfig,
) -> Result<bool, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT checkpoint FROM runs
              WHERE id = $1 AND phase IN ('queued', 'pending_approval', 'rehearsing')
                AND owner IS NULL
              FOR UPDATE",
            &[&run_id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    // The stop goes through the lifecycle like any other: only a run that has
    // not changed anything can end `stopped`.
    let state = serde_json::from_value::<Checkpoint>(row.get(0)).map(|cp| cp.state);
    let rules = Rules {
        strategy: RollbackStrategy::Hold,
    };
    let input = Input::Abort {
        reason: reason.to_string(),
    };
    let Ok(Transition { next, .. }) = state
        .map_err(|_| ())
        .and_then(|s| lifecycle::transition(&s, input, rules).map_err(|_| ()))
    else {
        return Ok(false);
    };
    let now = chrono::Utc::now();
    let events = [
        Event {
            ts: now,
            run_id: run_id.to_string(),
            step: None,
            kind: EventKind::AbortRequested {
                requested_by: actor.to_string(),
            },
        },
        Event {
            ts: now,
            run_id: run_id.to_string(),
            step: None,
            kind: EventKind::RunFinished {
                outcome: Outcome::Stopped,
                reason: Some(reason.to_string()),
                exit_code: Outcome::Stopped.exit_code(),
                applied: Vec::new(),
                backup: None,
                journal: None,
            },
        },
    ];
    append_events(&tx, run_id, &events, notify, None).await?;
    let cp = Checkpoint {
        state: next,
        facts: Default::default(),
    };
    tx.execute(
        "UPDATE runs SET abort_requested_by = $2, abort_requested_at = now() WHERE id = $1",
        &[&run_id, &actor],
    )
    .await?;
    save_checkpoint(&tx, run_id, &cp, None).await?;
    tx.commit().await?;
    Ok(true)
}

/// Record this daemon as alive (for `GET /healthz` and operators).
pub async fn register_daemon(pool: &Pool, node: &str) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO daemons (name, started_at, seen_at, version)
             VALUES ($1, now(), now(), $2)
             ON CONFLICT (name) DO UPDATE SET started_at = now(), seen_at = now(), version = $2",
            &[&node, &env!("CARGO_PKG_VERSION")],
        )
        .await?;
    Ok(())
}

pub async fn seen(pool: &Pool, node: &str) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "UPDATE daemons SET seen_at = now() WHERE name = $1",
            &[&node],
        )
        .await?;
    Ok(())
}
