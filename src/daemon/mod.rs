//! The daemon: submitted runs kept in the state database, driven by whichever
//! daemon holds each run's lease, controlled through the HTTP API.
//!
//! - [`store`]: the state database (schema, leases with fencing, checkpoints, events).
//! - [`deadline`]: deadlines on state-database operations (a silent network).
//! - [`scheduler`]: claims runs, renews leases, relays abort requests, takes over.
//! - [`worker`]: drives one claimed run from its persisted checkpoint.
//! - [`name_lock`]: which live process is daemon `name` (its runs are taken back
//!   at once after a restart).
//! - [`rehearsal`]: rehearses runs whose plan says `rehearsal: required`
//!   before they may be approved.
//! - [`undo`]: undos of runs' captured data changes asked for through the API.
//! - [`retention`]: prunes old events, samples, notifications and audit rows.
//! - [`api`]: the HTTP API (axum), its auth and its audit trail.
//! - [`https`]: HTTPS on the same listener (`tls:`), its certificate reloaded on SIGHUP.
//! - [`metrics`]: Prometheus text for `GET /metrics`.
//! - [`systemd`]: `sd_notify` readiness, watchdog and stopping messages.

pub mod api;
pub mod deadline;
pub mod https;
pub mod metrics;
pub mod name_lock;
pub mod rehearsal;
pub mod retention;
pub mod rounds;
pub mod scheduler;
pub mod shared;
pub mod store;
pub mod systemd;
pub mod undo;
pub mod worker;

pub use shared::Shared;

use std::future::IntoFuture;

use axum::serve::ListenerExt;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;

/// `pgshepherd daemon --config FILE`: serve until SIGTERM; returns the exit code.
pub async fn run(config_path: &std::path::Path) -> i32 {
    crate::tls::install_crypto_provider();
    let config = match crate::config::Config::load(config_path) {
        Ok(c) => c,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            return 2;
        }
    };
    crate::logging::init(&config.log);
    let Some(state_dsn) = config.state_database.clone() else {
        eprintln!(
            "{}: `state_database` is required for the daemon",
            config_path.display()
        );
        return 2;
    };
    let listen = config
        .listen
        .clone()
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let node = config.daemon.name.clone().unwrap_or_else(default_node_name);
    // Runs write in short transactions; each notification channel's worker and
    // the escalation timer hold a connection only while claiming or recording.
    let pool_size = (config.daemon.max_active_runs as usize / 8).clamp(8, 64)
        + (config.notify.channels.len() + 1).min(16);
    let op_timeout = deadline::op_timeout(config.daemon.lease_timeout);
    let pool = match open_with_retry(&state_dsn, pool_size, op_timeout).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the state database");
            eprintln!("error: {e}");
            return 1;
        }
    };
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%listen, error = %e, "cannot listen");
            eprintln!("error: cannot listen on {listen}: {e}");
            return 1;
        }
    };
    let registered = deadline::bounded(
        &pool,
        op_timeout,
        "registering this daemon",
        store::register_daemon(&pool, &node),
    );
    if let Err(e) = registered.await {
        eprintln!("error: {e}");
        return 1;
    }
    let shared = std::sync::Arc::new(Shared::new(config, pool, node.clone()));
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or(listen);
    tracing::info!(node = %node, listen = %local, "pgshepherd daemon started");

    // Shutdown is one token: the scheduler, the delivery workers and the API's
    // event streams all watch it; the tracker knows when the first two are done.
    let shutdown = CancellationToken::new();
    let background = TaskTracker::new();
    background.spawn(scheduler::run(shared.clone(), shutdown.clone()));
    background.spawn(crate::notify::outbox::run(
        shared.outbox.clone(),
        shutdown.clone(),
    ));
    background.spawn(retention::run(shared.clone(), shutdown.clone()));
    background.spawn(undo::worker::run(shared.clone(), shutdown.clone()));
    background.spawn(rehearsal::run(shared.clone(), shutdown.clone()));
    background.close();
    let certificate = shared
        .config
        .tls
        .as_ref()
        .map(https::CurrentCertificate::new);
    let router = api::router_until(shared.clone(), shutdown.clone())
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = match &certificate {
        None => tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .into_future(),
        ),
        Some(certificate) => {
            let listener = match https::TlsListener::new(
                listener,
                https::server_config(certificate.clone()),
            ) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: cannot listen on {local}: {e}");
                    return 1;
                }
            };
            tracing::info!(
                cert = %certificate.cert_path().display(),
                sha256 = %certificate.fingerprint(),
                "serving HTTPS"
            );
            // `tap_io` does nothing to a connection: axum derives `ConnectInfo`
            // (the peer address the API logs and audits) from any listener
            // wrapped so, and from no other listener but its own TCP one.
            tokio::spawn(
                axum::serve(listener.tap_io(|_| ()), router)
                    .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                    .into_future(),
            )
        }
    };
    let _reloader = match https::reload_on_sighup(certificate, shutdown.clone()) {
        Ok(task) => task,
        Err(e) => {
            eprintln!("error: cannot handle SIGHUP: {e}");
            return 1;
        }
    };
    systemd::ready();
    // A scheduler that stopped turning (wedged on something) gets the daemon
    // restarted by systemd; a slow state database alone does not (the loop
    // still turns, logging its errors).
    let probe = shared.clone();
    let stall = (probe.config.daemon.poll_interval * 4).max(std::time::Duration::from_secs(60));
    systemd::spawn_watchdog(move || probe.scheduler_alive(stall));

    crate::cli::run::wait_for_stop_signal().await;
    tracing::info!("stop requested: no new runs; active runs stop at their next checkpoint");
    systemd::stopping();
    shutdown.cancel();
    // The scheduler returns once every run parked at a checkpoint (or
    // `shutdown_timeout` cut them off) and their leases are released; deliveries
    // already on the wire finish (each within its channel's timeout) and the rest
    // stay in the outbox for the next start or another replica.
    background.wait().await;
    // Open event streams would hold a graceful shutdown forever: give requests
    // in flight a moment, then close.
    if tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .is_err()
    {
        tracing::info!("closing the API's remaining connections");
    }
    tracing::info!("pgshepherd daemon stopped");
    0
}

/// The daemon's default `listen` address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8750";

fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}-{}", std::process::id())
}

/// The state database may still be starting (both are often started together):
/// retry for a while before giving up.
async fn open_with_retry(
    dsn: &crate::pg::Dsn,
    pool_size: usize,
    op_timeout: std::time::Duration,
) -> Result<deadpool_postgres::Pool, store::StoreError> {
    let started = std::time::Instant::now();
    let retry = Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(5),
    );
    let mut attempt = 0;
    loop {
        attempt += 1;
        match store::open(dsn, pool_size, op_timeout).await {
            Ok(p) => return Ok(p),
            Err(e @ store::StoreError::Connect { .. })
                if started.elapsed() < std::time::Duration::from_secs(30) =>
            {
                tracing::warn!(error = %e, "state database not reachable yet; retrying");
                tokio::time::sleep(retry.delay(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
