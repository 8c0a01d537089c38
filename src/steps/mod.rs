//! The steps of a run: backup, migrate, the EXPLAIN gate, soak, rollback.

pub mod backup;
pub mod cadence;
pub mod context;
pub mod explain;
pub mod gate;
pub mod migrate;
pub mod rollback;
pub mod soak;

pub use context::StepContext;
