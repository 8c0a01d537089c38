//! Command implementations behind the thin binary.

pub mod check;
pub mod run;
pub mod undo;
