//! The `pgshepherd` binary: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pgshepherd::{cli, client};

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
    /// Give back the rows a run's migrations changed (captured with
    /// `-- pgshepherd:capture`), keeping what users wrote since.
    ///
    /// With --database-url or --config/--target it works on that database;
    /// without, it asks the daemon at --server, which runs it under the run's
    /// plan (approval, the target's queue and lock, notifications) and follows
    /// it to its end.
    ///
    /// Exit codes: 0 everything reverted; 4 conflicts left (skip-conflicts,
    /// merge); 5 refused, nothing changed; 2 invalid input; 1 environment.
    Undo(cli::undo::UndoArgs),
    /// Print the plan's rollback plan for the person on call (Markdown or HTML):
    /// what changes (each migration's SQL), how to tell it is unhealthy (each
    /// check's threshold and query, the EXPLAIN gate), how to undo it by hand in
    /// order, how to verify the undo, and who gets paged.
    ///
    /// With --run, the run's id and verified backup (archive, sha256) are filled
    /// in from its journal; without, they are placeholders in angle brackets.
    /// Connection strings never appear: commands read $PGSHEPHERD_DATABASE_URL.
    ///
    /// Exit codes: 0 printed; 2 invalid plan, config or run id, or no journal
    /// of the run; 1 the run's state cannot be read.
    Runbook(cli::runbook::RunbookArgs),
    /// Prove the plan's down scripts on a scratch copy of its target: run the
    /// pending migrations up, down newest first, compare the catalog with the
    /// original, and up again. The target itself is only read.
    ///
    /// Exit codes: 0 identical; 4 differences, a script that failed, or
    /// migrations that do not re-apply; 2 invalid input; 1 environment.
    Rehearse(cli::rehearse::RehearseArgs),
    /// The long-running service: the HTTP API and the runs submitted to it.
    ///
    /// State lives in PostgreSQL (`state_database`); several replicas may share one.
    Daemon {
        /// The daemon config (listen, state_database, targets, tokens, ...).
        #[arg(long)]
        config: PathBuf,
    },
    /// Submit a plan to the daemon; prints the run id.
    ///
    /// The plan is checked locally first, as `check` does (exit 2 on errors,
    /// nothing sent), then sent with every script of its migration set.
    Submit {
        /// The plan file (its `migrations:` directory is read relative to it).
        plan: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one run, or every open run.
    ///
    /// `status RUN` of a finished run exits with the run's exit code (0 succeeded,
    /// 3 rolled back, 4 needs a human, 5 stopped); of any other run, 0.
    Status {
        /// A run id (12 hex digits, as `submit` and `list` print them).
        run: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List runs, newest first.
    List {
        /// Only runs in these phases (comma-separated: pending_approval, queued,
        /// active, finished; `open` for all but finished).
        #[arg(long)]
        phase: Option<String>,
        /// Only runs on this target.
        #[arg(long)]
        target: Option<String>,
        /// At most this many runs [default: 100, at most 1000].
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A run's events, or follow them live.
    ///
    /// With --follow, stream them until the run finishes and exit with the run's
    /// exit code (0, 3, 4 or 5), reconnecting if the connection breaks.
    Logs {
        /// The run id.
        run: String,
        /// Keep streaming (Server-Sent Events) until the run finishes.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve a run waiting for approval, or its undo (approve role; not the
    /// submitter, not who asked for the undo).
    Approve {
        /// The run id.
        run: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Abort a run.
    ///
    /// A run that has not started stops at once; otherwise the daemon driving it
    /// stops it (nothing changed yet) or rolls it back per the plan. Of a
    /// finished run, calls off its undo that has not started.
    Abort {
        /// The run id.
        run: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Acknowledge a run (stops its escalation).
    Ack {
        /// The run id.
        run: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// How client commands reach the daemon. Exit codes: 0 ok; 2 the daemon refused
/// the request (invalid plan, bad token, no role, no such run, conflict); 1 the
/// daemon is unreachable or failed.
#[derive(clap::Args)]
struct ClientArgs {
    /// The daemon's URL.
    #[arg(long, env = "PGSHEPHERD_SERVER", default_value = client::DEFAULT_SERVER)]
    server: String,
    /// Bearer token (prefer the environment variable: arguments are visible to
    /// other users of the machine).
    #[arg(long, env = "PGSHEPHERD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// An https:// daemon's certificate authority (PEM): trusted instead of the
    /// system's roots.
    #[arg(long, env = "PGSHEPHERD_CA_CERT", value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// Print the daemon's JSON on stdout (JSON lines for `logs`).
    #[arg(long)]
    json: bool,
}

impl ClientArgs {
    fn options(self) -> client::ClientOptions {
        client::ClientOptions {
            server: self.server,
            token: self.token,
            ca_cert: self.ca_cert,
            json: self.json,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon installs its own subscriber from its config (format, level);
    // every other command logs warnings and errors to stderr, so that stdout
    // stays the command's output alone (`--json`).
    if !matches!(cli.command, Command::Daemon { .. }) {
        pgshepherd::logging::init_cli();
    }
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
        Command::Undo(args) => runtime().block_on(cli::undo::undo(args)),
        Command::Runbook(args) => cli::runbook::runbook(&args),
        Command::Rehearse(args) => runtime().block_on(cli::rehearse::rehearse_plan(args)),
        Command::Daemon { config } => runtime().block_on(pgshepherd::daemon::run(&config)),
        Command::Submit { plan, client: args } => {
            runtime().block_on(client::submit::submit(&args.options(), &plan))
        }
        Command::Status { run, client: args } => {
            runtime().block_on(client::show::status(&args.options(), run.as_deref()))
        }
        Command::List {
            phase,
            target,
            limit,
            client: args,
        } => {
            let filter = client::show::ListFilter {
                phase,
                target,
                limit,
            };
            runtime().block_on(client::show::list(&args.options(), &filter))
        }
        Command::Logs {
            run,
            follow,
            client: args,
        } => runtime().block_on(client::logs::logs(&args.options(), &run, follow)),
        Command::Approve { run, client: args } => runtime().block_on(client::control::control(
            &args.options(),
            client::control::Action::Approve,
            &run,
        )),
        Command::Abort { run, client: args } => runtime().block_on(client::control::control(
            &args.options(),
            client::control::Action::Abort,
            &run,
        )),
        Command::Ack { run, client: args } => runtime().block_on(client::control::control(
            &args.options(),
            client::control::Action::Ack,
            &run,
        )),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the async runtime")
}
