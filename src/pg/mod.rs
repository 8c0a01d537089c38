//! Talking to PostgreSQL: connection strings, advisory locks, refusing a pooler
//! that shares server sessions, throwaway clusters,
//! its errors in words, and keeping pgshepherd's own rollbacks out of the
//! statistics it judges.

pub mod cluster;
pub mod dsn;
pub mod error;
pub mod lock;
pub mod session;
pub mod stats;

pub use dsn::Dsn;
pub use error::{error_text, server_message, sqlstate};
pub use lock::TargetLock;
