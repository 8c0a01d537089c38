//! The daemon: submitted runs kept in the state database, driven by whichever
//! daemon holds each run's lease, controlled through the HTTP API.
//!
//! - [`store`]: the state database (schema, leases with fencing, checkpoints, events).
//! - [`scheduler`]: claims runs, renews leases, relays abort requests, takes over.
//! - [`worker`]: drives one claimed run from its persisted checkpoint.
//! - [`api`]: the HTTP API (axum), its auth and its audit trail.
//! - [`metrics`]: Prometheus text for `GET /metrics`.
//! - [`systemd`]: `sd_notify` readiness, watchdog and stopping messages.

pub mod api;
pub mod metrics;
pub mod scheduler;
pub mod shared;
pub mod store;
pub mod systemd;
pub mod worker;

pub use shared::Shared;
