//! Talking to PostgreSQL: connection strings, advisory locks, throwaway clusters,
//! and its errors in words.

pub mod cluster;
pub mod dsn;
pub mod error;
pub mod lock;

pub use dsn::Dsn;
pub use error::{error_text, server_message, sqlstate};
pub use lock::TargetLock;
