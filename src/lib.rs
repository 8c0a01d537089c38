//! pgshepherd carries a PostgreSQL change from "approved" to "done or safely undone".
//!
//! - [`plan`]: the plan model, YAML parsing and validation with `file:line:col`.
//! - [`migrations`]: migration sets (up / down / verify scripts), history on the target.
//! - [`window`]: maintenance windows (5-field cron + IANA zone + duration).
//! - [`checks`]: soak checks (SQL, HTTP, built-in signals) and the verdict rules.
//! - [`steps`]: backup, the low-traffic gate, migrate, soak, rollback.
//! - [`run`]: the run lifecycle (one transition function), its runner and its events.
//! - [`pg`]: connection strings, the per-target advisory lock, refusing poolers that
//!   share server sessions, throwaway clusters.
//! - [`daemon`]: the service: state database, leases and takeover, scheduler, HTTP API.
//! - [`config`]: the daemon's config file (targets, tokens, logs, leases).
//! - [`tls`]: TLS for target connections.
//! - [`cli`]: command implementations behind the binary.
//! - [`client`]: the CLI side of the daemon's HTTP API (`submit`, `status`, `logs`, ...).
//! - [`logging`]: log output (JSON lines with span fields, or human) on stderr.
//! - [`backoff`]: the one retry schedule (exponential, jitter, cap, Retry-After).
//! - [`output`]: what commands print, written so that a closed pipe is no panic.
//! - [`private_fs`]: backups and journals are created 0600 in 0700 directories.
//! - [`runbook`]: the on-call document of a plan and its run (`pgshepherd runbook`).
//! - [`undo`]: capturing the rows a migration changes and giving them back.
//! - [`web`]: the status page the daemon serves at `/`: sign-in sessions, pages,
//!   built-in assets, chart downsampling.
//! - [`rehearse`]: catalog fingerprints and their differences, for proving a change's
//!   down scripts on a copy.

pub mod backoff;
pub mod checks;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod logging;
pub mod migrations;
pub mod notify;
pub mod output;
pub mod pg;
pub mod plan;
pub mod private_fs;
pub mod rehearse;
pub mod run;
pub mod runbook;
pub mod steps;
pub mod tls;
pub mod undo;
pub mod web;
pub mod window;
