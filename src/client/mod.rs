//! The CLI side of the daemon's HTTP API: `submit`, `status`, `list`, `logs`,
//! `approve`, `abort`, `ack` and `undo RUN` (without a database).
//!
//! - [`http`]: the connection to the daemon and how its answers become exit codes.
//! - [`submit`]: check a plan locally, pack it with its migrations, submit it.
//! - [`show`]: `status` and `list`.
//! - [`logs`]: a run's events, once or followed (Server-Sent Events).
//! - [`control`]: `approve`, `abort`, `ack`.
//! - [`undo`]: `undo RUN` through the daemon, followed to its end.
//! - [`render`]: human-readable lines from the API's JSON.
//!
//! Exit codes: 0 ok; 2 when the daemon refuses the request (400, 401, 403, 404,
//! 409, 413, 422: nothing was changed); 1 when it cannot be reached or fails
//! (5xx). `status RUN` of a finished run and `logs --follow` exit with the run's
//! own exit code (0, 3, 4 or 5). See docs/api.md.

pub mod control;
pub mod http;
pub mod logs;
pub mod render;
pub mod show;
pub mod submit;
pub mod undo;

/// Where the client looks for the daemon without `--server` or
/// `PGSHEPHERD_SERVER`: the daemon's default `listen` address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8750";

/// What every client command takes.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The daemon's base URL, e.g. `http://127.0.0.1:8750`.
    pub server: String,
    /// The bearer token; `None` sends none (and the daemon answers 401).
    pub token: Option<String>,
    /// PEM certificates (a private CA) that alone authenticate an `https://`
    /// daemon, instead of the system's trusted roots (`--ca-cert`).
    pub ca_cert: Option<std::path::PathBuf>,
    /// Print the daemon's JSON on stdout instead of human-readable text.
    pub json: bool,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_server_is_the_daemons_default_listen_address() {
        assert_eq!(
            super::DEFAULT_SERVER,
            format!("http://{}", crate::daemon::DEFAULT_LISTEN)
        );
    }
}
