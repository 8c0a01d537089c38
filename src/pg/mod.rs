//! Talking to PostgreSQL: connection strings, advisory locks, throwaway clusters.

pub mod cluster;
pub mod dsn;

pub use dsn::Dsn;
