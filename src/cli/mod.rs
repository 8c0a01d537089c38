//! Command implementations behind the thin binary.

pub mod check;
pub mod rehearse;
pub mod run;
pub mod runbook;
pub mod undo;
