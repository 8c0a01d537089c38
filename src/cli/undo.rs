//! `pgshepherd undo RUN`: give back the rows a run's migrations changed, keeping
//! what users wrote since (see [`crate::undo`]).
//!
//! With `--database-url` or `--config --target` it works on the database itself.
//! It is a change to the target like a run: it takes the target's lock (waiting
//! up to a minute for a run that holds it), works in one transaction, and says
//! what it did in words (stderr) and, with `--json`, as `undo_started` /
//! `undo_finished` events on stdout. Conflicts are written row by row to a JSON
//! lines file (0600: they hold row data) in the current directory.
//!
//! Without them it asks the daemon at `--server` ([`crate::client::undo`]),
//! which runs it under the run's plan: approval, the target's queue and lock,
//! notifications.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::pg::{Dsn, TargetLock};
use crate::run::event::{EventKind, Step};
use crate::run::journal::Emitter;
use crate::undo::outcome::UndoOutcome;
use crate::undo::revert::{self, Mode, Report, Request};

/// How long `undo` waits for the target's lock (a run may hold it).
const LOCK_WAIT: Duration = Duration::from_secs(60);
/// `lock_timeout` for the undo's statements on users' tables.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Give back the rows a run's migrations changed (captured with
/// `-- pgshepherd:capture`), keeping what users wrote since.
///
/// Exit codes: 0 everything reverted; 4 conflicts left (skip-conflicts, merge);
/// 5 refused, nothing changed; 2 invalid input; 1 environment.
#[derive(Debug, Clone, clap::Args)]
pub struct UndoArgs {
    /// The run whose captured changes to undo.
    #[arg(value_name = "RUN")]
    pub run_id: String,
    /// The target database.
    #[arg(long, env = "PGSHEPHERD_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Config file whose `targets` define --target.
    #[arg(long, requires = "target")]
    pub config: Option<PathBuf>,
    /// The target in --config.
    #[arg(long, requires = "config")]
    pub target: Option<String>,
    /// Only these versions (repeat the flag); every captured one by default.
    #[arg(long = "version", value_name = "V")]
    pub versions: Vec<i64>,
    /// What to do about rows users changed since the migration.
    #[arg(long, value_enum, default_value = "refuse")]
    pub mode: Mode,
    /// Only the changes matching this SQL predicate over `table_name`, `op`,
    /// `key`, `before`, `after` (jsonb) and `version`.
    #[arg(long = "where", value_name = "PREDICATE")]
    pub predicate: Option<String>,
    /// Report what would be undone; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// JSON lines of events on stdout.
    #[arg(long)]
    pub json: bool,
    /// Without --database-url or --config: the daemon's URL (the undo is asked
    /// of the daemon, which runs it as a change to the target).
    #[arg(long, env = "PGSHEPHERD_SERVER", default_value = crate::client::DEFAULT_SERVER)]
    pub server: String,
    /// Bearer token for the daemon (prefer the environment variable).
    #[arg(long, env = "PGSHEPHERD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Through an https:// daemon: its certificate authority (PEM), trusted
    /// instead of the system's roots.
    #[arg(long, env = "PGSHEPHERD_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Through the daemon: return once the undo is accepted instead of
    /// following it to its end.
    #[arg(long)]
    pub no_wait: bool,
}

/// Undo and return the exit code: 0 everything reverted, 4 conflicts left
/// (skip-conflicts, merge), 5 refused with nothing changed, 2 invalid input, 1
/// environment.
pub async fn undo(args: UndoArgs) -> i32 {
    if args.database_url.is_none() && args.config.is_none() {
        return through_daemon(args).await;
    }
    let events = Emitter::new(&args.run_id, None, args.json, true);
    let dsn = match resolve(&args) {
        Ok(d) => d,
        Err(e) => return finish(&events, &args, Finish::failed(2, e.to_string())),
    };
    events.emit(
        Some(Step::Undo),
        EventKind::UndoStarted {
            database: dsn.to_string(),
            versions: args.versions.clone(),
            mode: args.mode,
            predicate: args.predicate.clone(),
            dry_run: args.dry_run,
            request: None,
            attempt: None,
        },
    );
    let lock = match TargetLock::acquire(&dsn, "pgshepherd undo", LOCK_WAIT, |holder| {
        events.progress(&format!(
            "  waiting for the target's lock, held by {holder}"
        ))
    })
    .await
    {
        Ok(lock) => lock,
        Err(e) => {
            let reason = format!("could not take the target's lock; nothing changed: {e}");
            return finish(&events, &args, Finish::failed(5, reason));
        }
    };
    let request = Request {
        run_id: args.run_id.clone(),
        versions: args.versions.clone(),
        mode: args.mode,
        predicate: args.predicate.clone(),
        dry_run: args.dry_run,
        who: who(&dsn),
        lock_timeout: LOCK_TIMEOUT,
        forget: false,
    };
    let result = revert::undo(lock.client(), &request).await;
    drop(lock);
    match result {
        Ok(report) => {
            let file = match write_conflicts(&args.run_id, &report) {
                Ok(file) => file,
                Err(e) => {
                    events.progress(&format!("  cannot write the conflicts file: {e}"));
                    None
                }
            };
            finish(&events, &args, Finish::from_report(&args, report, file))
        }
        Err(e) => finish(&events, &args, Finish::failed(e.exit_code(), e.to_string())),
    }
}

/// No database given: ask the daemon, which runs the undo as a change to the
/// target (approval, queue, lock, notifications; see [`crate::daemon::undo`]).
async fn through_daemon(args: UndoArgs) -> i32 {
    let options = crate::client::ClientOptions {
        server: args.server,
        token: args.token,
        ca_cert: args.ca_cert,
        json: args.json,
    };
    let ask = crate::client::undo::UndoAsk {
        run_id: args.run_id,
        versions: args.versions,
        mode: args.mode,
        predicate: args.predicate,
        dry_run: args.dry_run,
        wait: !args.no_wait,
    };
    crate::client::undo::undo(&options, &ask).await
}

/// Why `undo` has no database to work on.
#[derive(Debug, thiserror::Error)]
enum TargetError {
    #[error("error: {0}")]
    Url(#[from] crate::pg::dsn::DsnError),
    #[error("error: pass --database-url URL, or --config FILE and --target NAME")]
    NoDatabase,
    #[error("{0}")]
    Config(crate::plan::Diagnostics),
    #[error(transparent)]
    NotDefined(#[from] crate::config::UnknownTarget),
}

fn resolve(args: &UndoArgs) -> Result<Dsn, TargetError> {
    if let Some(url) = &args.database_url {
        return Ok(url.parse::<Dsn>()?);
    }
    let (Some(path), Some(target)) = (&args.config, &args.target) else {
        return Err(TargetError::NoDatabase);
    };
    let config = Config::load(path).map_err(TargetError::Config)?;
    Ok(config.target(target)?)
}

/// Recorded with the undo: the database role and the operating-system user.
fn who(dsn: &Dsn) -> String {
    let os = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{} (os user {os})", dsn.user().unwrap_or("default role"))
}

/// The conflicts as JSON lines in the current directory, when there are any.
fn write_conflicts(run_id: &str, report: &Report) -> std::io::Result<Option<String>> {
    let tag = match report.undo_id {
        Some(id) => id.to_string(),
        None => format!("{}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ")),
    };
    let name = format!("pgshepherd-undo-{run_id}-{tag}");
    let path = report.write_conflicts(std::path::Path::new("."), &name)?;
    Ok(path.map(|p| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    }))
}

/// What `undo_finished` says.
struct Finish {
    outcome: UndoOutcome,
    report: Option<Report>,
    conflicts_file: Option<String>,
}

impl Finish {
    fn failed(exit_code: i32, reason: String) -> Finish {
        Finish {
            outcome: UndoOutcome::failed(exit_code, reason),
            report: None,
            conflicts_file: None,
        }
    }

    fn from_report(args: &UndoArgs, report: Report, conflicts_file: Option<String>) -> Finish {
        Finish {
            outcome: UndoOutcome::of(report.conflicts.len(), args.mode),
            report: Some(report),
            conflicts_file,
        }
    }
}

fn finish(events: &Emitter, args: &UndoArgs, f: Finish) -> i32 {
    let (versions, tables, conflicts, undo_id) = match &f.report {
        Some(r) => (
            r.versions.clone(),
            r.tables.clone(),
            r.conflicts.len() as u64,
            r.undo_id,
        ),
        None => (args.versions.clone(), Default::default(), 0, None),
    };
    events.emit(
        Some(Step::Undo),
        EventKind::UndoFinished {
            outcome: f.outcome.outcome.to_string(),
            exit_code: f.outcome.exit_code,
            dry_run: args.dry_run,
            mode: args.mode,
            versions,
            tables,
            conflicts,
            conflicts_file: f.conflicts_file,
            undo_id,
            reason: f.outcome.reason,
            request: None,
            attempt: None,
        },
    );
    f.outcome.exit_code
}
