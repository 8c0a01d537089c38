//! The steps of a run: backup, migrate, soak, rollback.

pub mod backup;
