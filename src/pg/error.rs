//! A PostgreSQL error in words a user can act on.
//!
//! tokio-postgres's `Display` keeps only its own summary: an error from the
//! server prints as `db error`, a refused connection as `error connecting to
//! server`. The useful part (the server's message, `Connection refused`) is in
//! the error's source. Every message pgshepherd shows for such an error goes
//! through [`server_message`] (or [`error_text`] for an error that wraps one),
//! so that the cause is never only in a journal.

use std::error::Error;

/// SQLSTATE of an error from the server, if it came from the server.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// The server's message with its SQLSTATE, detail and hint (and pgshepherd's hint
/// where it knows what to do); for an error that did not come from the server,
/// the driver's summary followed by its causes.
pub fn server_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => describe_db(db.message(), db.code().code(), db.detail(), db.hint()),
        None => chain(e),
    }
}

/// `e` and its sources in one line, with [`server_message`] for the first
/// tokio-postgres error in the chain (which then ends the line: its own causes
/// are in it). For errors that wrap one: a pool's, a migration library's, a boxed
/// `dyn Error`.
pub fn error_text(e: &(dyn Error + 'static)) -> String {
    let mut out = String::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = match err.downcast_ref::<tokio_postgres::Error>() {
            Some(pg) => server_message(pg),
            None => err.to_string(),
        };
        // Wrappers often repeat their source's summary ("...: db error");
        // say each thing once.
        let summary = err
            .downcast_ref::<tokio_postgres::Error>()
            .map(ToString::to_string);
        if let Some(summary) = &summary
            && let Some(stripped) = out.strip_suffix(&format!(": {summary}"))
        {
            out.truncate(stripped.len());
        }
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        if summary.is_some() {
            break;
        }
        next = err.source();
    }
    out
}

/// `Display` of a driver error followed by each of its sources not already in
/// the text (`error connecting to server: Connection refused (os error 111)`).
fn chain(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The words of a server error: `message (SQLSTATE code); detail; hint: hint`,
/// plus pgshepherd's own hint for errors it knows the fix for.
pub(crate) fn describe_db(
    message: &str,
    code: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> String {
    let mut s = format!("{message} (SQLSTATE {code})");
    if let Some(d) = detail {
        s.push_str(&format!("; {d}"));
    }
    if let Some(h) = hint {
        s.push_str(&format!("; hint: {h}"));
    }
    if let Some(h) = pgshepherd_hint(message) {
        s.push_str(&format!("; {h}"));
    }
    s
}

/// What to do about an error whose cause is not in the database but in front of
/// it.
fn pgshepherd_hint(message: &str) -> Option<String> {
    // PgBouncer refuses, at connection time, every startup parameter it does not
    // track; pgshepherd sends `options` to set its sessions' timeouts
    // (statement_timeout, lock_timeout, ...). PostgreSQL itself accepts any.
    let parameter = message.strip_prefix("unsupported startup parameter: ")?;
    let parameter = parameter.trim();
    Some(format!(
        "this is a connection pooler such as PgBouncer refusing the startup parameter \
         `{parameter}` that pgshepherd sends: set `ignore_startup_parameters = {parameter}` \
         in pgbouncer.ini (PgBouncer then drops it, and with it pgshepherd's per-session \
         timeouts), or give pgshepherd a direct URL to the server"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_error_shows_the_servers_words() {
        let s = describe_db(
            "permission denied for table orders",
            "42501",
            Some("the role has no SELECT"),
            Some("GRANT SELECT"),
        );
        assert_eq!(
            s,
            "permission denied for table orders (SQLSTATE 42501); the role has no SELECT; hint: GRANT SELECT"
        );
    }

    #[test]
    fn pgbouncer_refusing_options_says_what_to_set() {
        let s = describe_db(
            "unsupported startup parameter: options",
            "08P01",
            None,
            None,
        );
        assert!(
            s.starts_with("unsupported startup parameter: options (SQLSTATE 08P01); "),
            "{s}"
        );
        assert!(s.contains("ignore_startup_parameters = options"), "{s}");
        assert!(s.contains("PgBouncer"), "{s}");
        // Another parameter gets its own name in the hint.
        let s = describe_db(
            "unsupported startup parameter: extra_float_digits",
            "08P01",
            None,
            None,
        );
        assert!(
            s.contains("ignore_startup_parameters = extra_float_digits"),
            "{s}"
        );
        // An ordinary error gets no pooler hint.
        let s = describe_db("database \"x\" does not exist", "3D000", None, None);
        assert!(!s.contains("PgBouncer"), "{s}");
    }

    #[test]
    fn a_driver_error_keeps_its_cause() {
        let e = "host=h port=notaport"
            .parse::<tokio_postgres::Config>()
            .unwrap_err();
        // The driver alone says only "invalid connection string".
        assert_eq!(e.to_string(), "invalid connection string");
        assert_eq!(
            server_message(&e),
            "invalid connection string: invalid value for option `port`"
        );
    }

    #[test]
    fn a_wrapped_driver_error_is_described_once() {
        let e = "host=h port=notaport"
            .parse::<tokio_postgres::Config>()
            .unwrap_err();
        let pool = deadpool_postgres::PoolError::Backend(e);
        assert_eq!(
            pool.to_string(),
            "Error occurred while creating a new object: invalid connection string"
        );
        assert_eq!(
            error_text(&pool),
            "Error occurred while creating a new object: invalid connection string: invalid value for option `port`"
        );
        let boxed: Box<dyn Error + Send + Sync> = Box::new(
            "host=h port=x"
                .parse::<tokio_postgres::Config>()
                .unwrap_err(),
        );
        assert_eq!(
            error_text(&*boxed),
            "invalid connection string: invalid value for option `port`"
        );
    }
}
