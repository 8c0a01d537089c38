//! pgshepherd carries a PostgreSQL change from "approved" to "done or safely undone".
//!
//! - [`plan`]: the plan model, YAML parsing and validation with `file:line:col`.
//! - [`migrations`]: migration sets (up / down / verify scripts), history on the target.
//! - [`window`]: maintenance windows (5-field cron + IANA zone + duration).
//! - [`checks`]: soak checks (SQL, HTTP, built-in signals) and the verdict rules.
//! - [`steps`]: backup, migrate, soak, rollback.
//! - [`run`]: the run state machine, its executor and its events.
//! - [`pg`]: connection strings, the per-target advisory lock, throwaway clusters.
//! - [`cli`]: command implementations behind the binary.

pub mod checks;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod migrations;
pub mod pg;
pub mod plan;
pub mod run;
pub mod steps;
pub mod tls;
pub mod window;
