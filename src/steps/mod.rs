//! The steps of a run: backup, migrate, soak, rollback.

pub mod backup;
pub mod cadence;
pub mod context;
pub mod gate;
pub mod migrate;
pub mod rollback;
pub mod soak;

pub use context::StepContext;
