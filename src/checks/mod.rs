//! Soak checks: SQL, HTTP and built-in PostgreSQL signals, and the verdict rules
//! that turn their samples into decisions.
//!
//! - [`sampler`]: one [`Sampler`] per check, `prime()` then `sample()` each interval.
//! - [`sql`], [`http`], [`builtin`]: the sources; [`session`] is the read-only,
//!   time-boxed connection SQL checks and builtins share; [`visibility`]: checks
//!   that count other sessions need the role to see them.
//! - [`verdict`]: [`CheckState`] turns observations into [`Assessment`]s and
//!   [`Verdict`]s.
//! - [`explain`]: the EXPLAIN gate's rules: plans in short form and the verdict
//!   on a query's plans before and after the change.

pub mod builtin;
pub mod explain;
pub mod http;
pub mod sampler;
pub mod session;
pub mod sql;
pub mod verdict;
pub mod visibility;

pub use sampler::Sampler;
pub use verdict::{Assessment, Bound, CheckState, Counts, Observation, Rule, Verdict};
