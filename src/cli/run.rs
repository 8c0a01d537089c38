//! `pgshepherd run`: one plan's whole lifecycle in the foreground.

use std::path::PathBuf;

use tokio::sync::watch;

use crate::config::Config;
use crate::pg::Dsn;
use crate::pg::cluster::PgBinaries;
use crate::pg::dsn::DsnError;
use crate::plan::Plan;
use crate::run::journal::{Emitter, Journal};
use crate::run::{RunOptions, Runner};

#[derive(Debug, Clone)]
pub struct RunArgs {
    pub plan: PathBuf,
    pub database_url: Option<String>,
    pub config: Option<PathBuf>,
    pub backup_dir: Option<PathBuf>,
    pub now: bool,
    pub json: bool,
    pub dry_run: bool,
}

/// Run the plan and return the process exit code.
pub async fn run(args: RunArgs) -> i32 {
    let json = args.json;
    let plan = match crate::plan::load(&args.plan) {
        Ok(p) => p,
        Err(diagnostics) => return refused(json, 2, &diagnostics.to_string()),
    };
    if plan.approval.required {
        crate::output::note(
            "note: the plan requires approval, which only the daemon enforces (`pgshepherd submit`); `run` goes ahead without it",
        );
    }
    let config = match args.config.as_deref().map(Config::load).transpose() {
        Ok(c) => c,
        Err(diagnostics) => return refused(json, 2, &diagnostics.to_string()),
    };
    let dsn = match resolve_target(&plan, args.database_url.as_deref(), config.as_ref()) {
        Ok(d) => d,
        Err(e) => return refused(json, 2, &format!("error: {e}")),
    };
    let backup_dir = args
        .backup_dir
        .or_else(|| config.as_ref().and_then(|c| c.backup_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("pgshepherd-backups"));
    let opts = RunOptions {
        target: plan.target.clone(),
        backup_dir,
        now: args.now,
        dry_run: args.dry_run,
    };
    execute(&plan, &dsn, opts, args.json, None).await
}

/// Why `run` has no database to run the plan against.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// `--database-url` does not parse.
    #[error(transparent)]
    Url(#[from] DsnError),
    #[error(
        "no database for target {target:?}: pass --database-url URL, or --config FILE with targets.{target}.dsn"
    )]
    NoDatabase { target: String },
    #[error(transparent)]
    NotDefined(#[from] crate::config::UnknownTarget),
}

/// Which database the plan runs against: `--database-url` (or the environment
/// variable PGSHEPHERD_DATABASE_URL) wins; otherwise the plan's target in `--config`.
pub fn resolve_target(
    plan: &Plan,
    url: Option<&str>,
    config: Option<&Config>,
) -> Result<Dsn, TargetError> {
    if let Some(url) = url {
        return Ok(url.parse::<Dsn>()?);
    }
    let Some(config) = config else {
        return Err(TargetError::NoDatabase {
            target: plan.target.clone(),
        });
    };
    Ok(config.target(&plan.target)?)
}

/// Execute a loaded plan with a fresh run id, a journal under the backup
/// directory, and Ctrl-C / SIGTERM wired to the run's abort signal.
pub async fn execute(
    plan: &Plan,
    dsn: &Dsn,
    opts: RunOptions,
    json: bool,
    observer: Option<crate::run::journal::Observer>,
) -> i32 {
    let run_id = new_run_id();
    let journal = match Journal::create(&opts.backup_dir.join("journal"), &run_id) {
        Ok(j) => Some(j),
        Err(e) => {
            let reason = format!(
                "error: cannot create the run journal under {}: {e}",
                opts.backup_dir.display()
            );
            return refused(json, 1, &reason);
        }
    };
    let mut events = Emitter::new(&run_id, journal, json, true);
    if let Some(o) = observer {
        events = events.observe(o);
    }
    let bins = PgBinaries::locate_client().ok();
    let (abort_tx, abort_rx) = watch::channel(false);
    let signals = tokio::spawn(async move {
        wait_for_stop_signal().await;
        crate::output::note(
            "stop requested: finishing the current step; a run that changed the target rolls back per its plan",
        );
        let _ = abort_tx.send(true);
    });
    let finished = Runner::new(plan, dsn, bins.as_ref(), opts, &events, abort_rx)
        .run()
        .await;
    signals.abort();
    finished.exit_code
}

pub async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Short, unique enough for one target's history and easy to read aloud.
pub fn new_run_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..12].to_string()
}

/// A run refused before it started: the reason on stderr and, with `--json`, the
/// `run_finished` line the event stream always ends with. Returns `exit_code`.
pub fn refused(json: bool, exit_code: i32, reason: &str) -> i32 {
    crate::output::note(reason);
    if json {
        let events = Emitter::new(&new_run_id(), None, true, false);
        events.emit(
            None,
            crate::run::EventKind::RunFinished {
                outcome: crate::run::Outcome::Stopped,
                reason: Some(reason.to_string()),
                exit_code,
                applied: Vec::new(),
                backup: None,
                journal: None,
            },
        );
    }
    exit_code
}
