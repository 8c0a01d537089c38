//! The `pgshepherd` binary: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pgshepherd::cli;

/// Carries a PostgreSQL change from "approved" to "done or safely undone":
/// verified backup, migration inside a maintenance window, a monitored soak and
/// automatic rollback when a threshold is breached.
///
/// Exit codes: 0 succeeded, 1 internal or environment error, 2 invalid input,
/// 3 rolled back (verified), 4 needs a human, 5 stopped before changing anything.
#[derive(Parser)]
#[command(name = "pgshepherd", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate plans and their migration sets offline (no database needed).
    Check {
        /// Plan files.
        #[arg(required = true)]
        plans: Vec<PathBuf>,
        /// One JSON object per plan on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run one plan's whole lifecycle in the foreground, without a daemon.
    Run {
        plan: PathBuf,
        /// The target database (overrides the plan's target in --config).
        #[arg(long, env = "PGSHEPHERD_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Config file whose `targets` define the plan's target.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where backups and run journals go [default: ./pgshepherd-backups].
        #[arg(long)]
        backup_dir: Option<PathBuf>,
        /// Start now, ignoring the plan's maintenance window.
        #[arg(long)]
        now: bool,
        /// JSON lines of events on stdout (human progress stays on stderr).
        #[arg(long)]
        json: bool,
        /// Check against the live target and print what would happen; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The example scenario end to end on a throwaway PostgreSQL cluster.
    Demo {
        /// Make a soak check breach for real, and watch the automatic rollback.
        #[arg(long)]
        breach: bool,
        /// Use this existing database instead of a throwaway cluster (the result stays).
        #[arg(long)]
        database_url: Option<String>,
        /// JSON lines of events on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The long-running service (not in this build yet).
    Daemon {
        #[arg(long)]
        config: PathBuf,
    },
    /// Submit a plan to the daemon (not in this build yet).
    Submit {
        plan: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one run, or all active runs (not in this build yet).
    Status {
        run: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List runs (not in this build yet).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A run's events (not in this build yet).
    Logs {
        run: String,
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve a run (not in this build yet).
    Approve {
        run: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Abort a run (not in this build yet).
    Abort {
        run: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Acknowledge a run's escalation (not in this build yet).
    Ack {
        run: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(clap::Args)]
struct ClientArgs {
    /// The daemon's URL.
    #[arg(long, env = "PGSHEPHERD_SERVER")]
    server: Option<String>,
    /// Bearer token.
    #[arg(long, env = "PGSHEPHERD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Check { plans, json } => cli::check::run(&plans, json),
        Command::Run {
            plan,
            database_url,
            config,
            backup_dir,
            now,
            json,
            dry_run,
        } => {
            let args = cli::run::RunArgs {
                plan,
                database_url,
                config,
                backup_dir,
                now,
                json,
                dry_run,
            };
            runtime().block_on(cli::run::run(args))
        }
        Command::Demo {
            breach,
            database_url,
            json,
        } => runtime().block_on(pgshepherd::demo::run(pgshepherd::demo::DemoArgs {
            breach,
            database_url,
            json,
        })),
        Command::Daemon { .. }
        | Command::Submit { .. }
        | Command::Status { .. }
        | Command::List { .. }
        | Command::Logs { .. }
        | Command::Approve { .. }
        | Command::Abort { .. }
        | Command::Ack { .. } => {
            eprintln!(
                "error: the daemon and its client commands are not in this build yet; use `pgshepherd run PLAN`"
            );
            1
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the async runtime")
}
