//! `pgshepherd rehearse`: prove a plan's down scripts on a scratch copy of its
//! target (see `docs/rehearsal.md`).

use std::path::PathBuf;

use crate::config::Config;
use crate::pg::Dsn;
use crate::pg::cluster::PgBinaries;
use crate::rehearse::copy::{Place, on_copy};
use crate::rehearse::scratch;
use crate::run::EventKind;
use crate::run::journal::Emitter;
use crate::steps::backup::Backup;

#[derive(Debug, Clone, clap::Args)]
pub struct RehearseArgs {
    /// The plan file.
    pub plan: PathBuf,
    /// The target database, copied and never changed.
    #[arg(long, env = "PGSHEPHERD_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Config file whose `targets` define the plan's target.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Rehearse in this existing database instead of a new one on the target's
    /// server; everything in it is replaced by the copy, and it is not dropped.
    #[arg(long)]
    pub scratch_url: Option<String>,
    /// Fill the scratch database from this backup (its manifest,
    /// `<stem>.manifest.json`, as `backup_written` names it) instead of a
    /// fresh pg_dump of the target.
    #[arg(long)]
    pub from_backup: Option<PathBuf>,
    /// Keep the scratch database afterwards (its name is printed).
    #[arg(long)]
    pub keep: bool,
    /// JSON lines of events on stdout, ending with `rehearsal_finished`.
    #[arg(long)]
    pub json: bool,
}

/// Rehearse and return the exit code: 0 identical, 4 differences (or a script
/// that failed, or migrations that do not re-apply), 2 invalid input, 1
/// environment.
pub async fn rehearse_plan(args: RehearseArgs) -> i32 {
    let run_id = super::run::new_run_id();
    let events = Emitter::new(&run_id, None, args.json, true);
    // The event's human line (stderr) says the reason and each difference.
    let finish = |exit: i32, passed: bool, differences, reason: Option<String>| {
        events.emit(
            None,
            EventKind::RehearsalFinished {
                passed,
                differences,
                reason,
                requires_approval: None,
            },
        );
        exit
    };
    let plan = match crate::plan::load(&args.plan) {
        Ok(p) => p,
        Err(d) => return finish(2, false, Vec::new(), Some(d.to_string())),
    };
    let config = match args.config.as_deref().map(Config::load).transpose() {
        Ok(c) => c,
        Err(d) => return finish(2, false, Vec::new(), Some(d.to_string())),
    };
    let target =
        match super::run::resolve_target(&plan, args.database_url.as_deref(), config.as_ref()) {
            Ok(d) => d,
            Err(e) => return finish(2, false, Vec::new(), Some(e.to_string())),
        };
    let given: Option<Dsn> = match args.scratch_url.as_deref().map(str::parse).transpose() {
        Ok(d) => d,
        Err(e) => return finish(2, false, Vec::new(), Some(format!("--scratch-url: {e}"))),
    };
    if let Some(s) = &given
        && same_database(s, &target)
    {
        let reason = "--scratch-url names the target itself; a rehearsal replaces everything in its scratch database";
        return finish(2, false, Vec::new(), Some(reason.into()));
    }
    let from_backup = match args.from_backup.as_deref().map(Backup::load).transpose() {
        Ok(b) => b,
        Err(e) => return finish(2, false, Vec::new(), Some(format!("--from-backup: {e}"))),
    };
    let bins = match PgBinaries::locate_client() {
        Ok(b) => b,
        Err(e) => return finish(1, false, Vec::new(), Some(e.to_string())),
    };
    let name = scratch::scratch_name(&target, &run_id);
    let place = match &given {
        Some(d) => Place::Given(d),
        None => Place::New {
            server: &target,
            name: &name,
            keep: args.keep,
        },
    };
    let done = on_copy(
        &bins,
        &target,
        &plan.target,
        &plan,
        place,
        &run_id,
        from_backup.as_ref(),
    )
    .await;
    if let (Some(kept), true) = (&done.scratch, args.keep) {
        crate::output::note(format!("scratch database kept: {kept}"));
    }
    if let Some(e) = done.drop_failed {
        crate::output::note(format!("warning: {e}"));
    }
    match done.result {
        Err(e) => finish(e.exit_code(), false, Vec::new(), Some(e.to_string())),
        Ok(r) => {
            let passed = r.passed();
            finish(
                if passed { 0 } else { 4 },
                passed,
                r.differences,
                r.reapply_failed,
            )
        }
    }
}

/// Whether two connection strings name the same database on the same server
/// (as written: an alias or another address for the same host is not seen).
fn same_database(a: &Dsn, b: &Dsn) -> bool {
    a.dbname() == b.dbname()
        && a.config().get_hosts() == b.config().get_hosts()
        && a.config().get_ports() == b.config().get_ports()
}
