//! Talking to PostgreSQL: connection strings, advisory locks, throwaway clusters,
//! and keeping pgshepherd's own rollbacks out of the statistics it judges.

pub mod cluster;
pub mod dsn;
pub mod lock;
pub mod stats;

pub use dsn::Dsn;
pub use lock::TargetLock;

/// SQLSTATE of an error from the server, if it came from the server.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// The server's message with its detail and hint, without the driver's wrapping.
pub fn server_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => e.to_string(),
    }
}
