//! `pgshepherd runbook`: print a plan's rollback plan for the person on call.
//!
//! Exit codes: 0 printed (a run's backup manifest that cannot be read is a
//! warning, and said in the document); 2 invalid input (the plan, the config, or
//! a run whose journal is not there); 1 the run's state cannot be read.

use std::path::PathBuf;

use crate::config::Config;
use crate::runbook::{Input, RecordError, RunRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Markdown,
    Html,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunbookArgs {
    /// The plan file (its `migrations:` directory is read relative to it).
    pub plan: PathBuf,
    /// Fill in this run's id and its verified backup (archive, sha256), read from
    /// its journal under the backup directory.
    #[arg(long, value_name = "RUN_ID")]
    pub run: Option<String>,
    /// Where the run wrote its journal [default: the config's backup_dir, else
    /// ./pgshepherd-backups, as `run` does].
    #[arg(long)]
    pub backup_dir: Option<PathBuf>,
    /// A daemon config: lists the levels of the plan's escalation policy.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "markdown")]
    pub format: Format,
}

pub fn runbook(args: &RunbookArgs) -> i32 {
    let plan = match crate::plan::load(&args.plan) {
        Ok(p) => p,
        Err(diagnostics) => {
            crate::output::note(diagnostics.to_string());
            return 2;
        }
    };
    let config = match args.config.as_deref().map(Config::load).transpose() {
        Ok(c) => c,
        Err(diagnostics) => {
            crate::output::note(diagnostics.to_string());
            return 2;
        }
    };
    let run = match &args.run {
        None => None,
        Some(run_id) => {
            let backup_dir = args
                .backup_dir
                .clone()
                .or_else(|| config.as_ref().and_then(|c| c.backup_dir.clone()))
                .unwrap_or_else(|| PathBuf::from("pgshepherd-backups"));
            match RunRecord::from_journal(&backup_dir, run_id) {
                Ok(r) => {
                    if let Some(why) = &r.backup_unreadable {
                        crate::output::note(format_args!("warning: {why}"));
                    }
                    Some(r)
                }
                Err(e) => {
                    crate::output::note(format_args!("error: {e}"));
                    return match e {
                        RecordError::State { .. } => 1,
                        RecordError::BadRunId { .. } | RecordError::NoJournal { .. } => 2,
                    };
                }
            }
        }
    };
    let document = crate::runbook::compose(&Input {
        plan: &plan,
        run: run.as_ref(),
        policies: config.as_ref().map(|c| &c.notify.policies),
    });
    let text = match args.format {
        Format::Markdown => document.markdown(),
        Format::Html => document.html(),
    };
    crate::output::line(text.trim_end());
    0
}
