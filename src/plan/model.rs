//! The validated plan model: what `compile` produces from the raw YAML once every
//! rule holds. Nothing downstream re-validates; a `Plan` that exists is runnable.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::migrations::MigrationSet;
use crate::window::Window;

/// A compiled deployment plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The plan file as given on the command line (or the submitted name).
    pub path: PathBuf,
    pub name: String,
    /// Name of the target in the config; `run --database-url` ignores it.
    pub target: String,
    pub migrations: MigrationSet,
    pub lock: LockSettings,
    /// `statement_timeout` for every migration statement.
    pub statement_timeout: Duration,
    pub backup: BackupSettings,
    /// When the migration may start; `None` means any time.
    pub window: Option<Window>,
    pub soak: SoakSettings,
    pub rollback: RollbackSettings,
    pub notify: NotifySettings,
    /// Whether a second person must approve a submitted run before it starts.
    pub approval: ApprovalSettings,
    /// `rehearsal: required`: the daemon rehearses a submitted run on a
    /// scratch copy (up, down, up, catalog compared) and refuses its approval
    /// until the rehearsal passed. `run` (no daemon) ignores it.
    pub rehearsal_required: bool,
    /// Give up (stopped) if the migration has not started by then. Written as
    /// `window.deadline`, always with a UTC offset.
    pub deadline: Option<chrono::DateTime<chrono::Utc>>,
    /// A low-traffic condition the target must meet before migrating.
    pub gate: Option<Gate>,
    /// The queries the change is for, whose plans are compared before and after
    /// it (the EXPLAIN gate); empty when the plan has no `explain` section.
    pub explain: Vec<ExplainQuery>,
}

/// One entry of the EXPLAIN gate: a read-only query whose plan is taken with
/// the baselines and again right after the migrations, before the soak.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExplainQuery {
    pub name: String,
    /// Exactly one SELECT (or WITH ... SELECT), without a trailing `;`.
    pub sql: String,
    /// An index the plan after the change must use (unqualified, as EXPLAIN names it).
    pub expect_index: Option<String>,
    /// Largest allowed total cost after / before.
    pub max_cost_ratio: Option<f64>,
    /// Run `EXPLAIN (ANALYZE)`: the query is executed (read-only, time-boxed)
    /// and its execution times recorded.
    pub analyze: bool,
    /// Largest allowed execution time after / before; only with `analyze`.
    pub max_time_ratio: Option<f64>,
    /// `statement_timeout` of each EXPLAIN.
    #[serde(with = "crate::plan::duration::serde_secs")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ApprovalSettings {
    /// The daemon holds the run until someone with the `approve` role, other than
    /// the submitter, approves it. `run` (no daemon) ignores it.
    pub required: bool,
}

/// Migrate only once `check` has stayed healthy for `consecutive` samples in a
/// row, one every `interval` (the soak's check machinery; a sample that breaches
/// or is inconclusive restarts the count).
#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    /// Absolute thresholds only (there is no baseline before the gate). Its
    /// verdict fields state the gate's rules: `consecutive` 1 and
    /// `max_inconclusive` 0 (one bad sample restarts the count), `min_samples` the
    /// gate's `consecutive`, `on_inconclusive` ignore (the gate never breaches).
    pub check: Check,
    pub consecutive: u32,
    #[serde(with = "crate::plan::duration::serde_secs")]
    pub interval: Duration,
    /// Give up (stopped) when the gate has not opened after this long; `None` waits
    /// as long as the window (or the deadline) allows.
    #[serde(with = "crate::plan::duration::serde_secs_opt", default)]
    pub timeout: Option<Duration>,
}

/// How pgshepherd takes the per-target advisory lock and how migrations avoid
/// queueing behind long transactions.
#[derive(Debug, Clone, Serialize)]
pub struct LockSettings {
    /// How long to poll `pg_try_advisory_lock` before giving up (stopped, exit 5).
    #[serde(with = "crate::plan::duration::serde_secs")]
    pub acquire_timeout: Duration,
    /// `lock_timeout` for each migration attempt.
    #[serde(with = "crate::plan::duration::serde_secs")]
    pub lock_timeout: Duration,
    /// Attempts after the first when a migration hits `lock_timeout`.
    pub retries: u32,
    /// First backoff between attempts; doubles each time, with jitter, capped at `max_backoff`.
    #[serde(with = "crate::plan::duration::serde_secs")]
    pub backoff: Duration,
    #[serde(with = "crate::plan::duration::serde_secs")]
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupFormat {
    Custom,
    Directory,
}

impl BackupFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupFormat::Custom => "custom",
            BackupFormat::Directory => "directory",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupSettings {
    /// `false` only when the plan says so explicitly; `restore` rollback needs a backup.
    pub enabled: bool,
    pub format: BackupFormat,
    /// Parallel pg_dump jobs (directory format only).
    pub jobs: u32,
    /// pg_dump compression level 0-9 (gzip). 0 by default: see docs/performance.md.
    pub compression: u8,
    /// Keep the last N backups per target.
    pub keep: u32,
    /// Tables (schema-qualified or not) whose data must be in the archive's table of
    /// contents. Empty means every ordinary table present at backup time.
    pub expect_tables: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakSettings {
    #[serde(with = "crate::plan::duration::serde_secs")]
    pub duration: Duration,
    #[serde(with = "crate::plan::duration::serde_secs")]
    pub interval: Duration,
    /// Valid samples per check taken before the migration to form its baseline.
    pub baseline_samples: u32,
    pub checks: Vec<Check>,
}

/// One monitored signal with its thresholds and its missing-data rules.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub source: CheckSource,
    pub thresholds: Thresholds,
    /// Breaching samples in a row before the verdict is a breach.
    pub consecutive: u32,
    /// Valid samples needed for the soak to pass.
    pub min_samples: u32,
    pub on_inconclusive: InconclusivePolicy,
    /// Inconclusive samples in a row that are tolerated before the policy acts.
    pub max_inconclusive: u32,
    /// Per-sample timeout (SQL statement_timeout, HTTP request timeout).
    #[serde(with = "crate::plan::duration::serde_secs")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckSource {
    /// A single SELECT returning one numeric value.
    Sql {
        query: String,
    },
    Http(HttpProbe),
    Builtin(BuiltinSignal),
}

impl CheckSource {
    /// How [`CheckSource::describe`] starts a query's description: messages show
    /// such a value as code whatever the check is called.
    pub const SQL_PREFIX: &'static str = "sql: ";

    /// What measured the value, for verdicts and messages ("the query or URL").
    pub fn describe(&self) -> String {
        match self {
            CheckSource::Sql { query } => format!("{}{}", Self::SQL_PREFIX, query.trim()),
            // Shown in events, the API and notifications: never a password.
            CheckSource::Http(p) => format!("http: {}", crate::pg::dsn::redact_text(&p.url)),
            CheckSource::Builtin(b) => format!("builtin: {}", b.as_str()),
        }
    }
}

/// What an HTTP check measures: the latency in milliseconds, or the number at
/// `json_pointer` in the response body when one is given. A status not in
/// `expect_status` is a failed (breaching) sample.
#[derive(Debug, Clone, Serialize)]
pub struct HttpProbe {
    pub url: String,
    pub expect_status: Vec<u16>,
    pub json_pointer: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BuiltinSignal {
    /// Δ pg_stat_database.deadlocks / s for the target database.
    DeadlocksPerSecond,
    /// Δ pg_stat_database.xact_rollback / s for the target database.
    RollbacksPerSecond,
    /// Age in seconds of the oldest open transaction (pgshepherd's own excluded).
    LongestTransactionSeconds,
    /// Sessions waiting on a lock right now (pgshepherd's own excluded).
    LockWaitingSessions,
}

impl BuiltinSignal {
    pub const ALL: [BuiltinSignal; 4] = [
        BuiltinSignal::DeadlocksPerSecond,
        BuiltinSignal::RollbacksPerSecond,
        BuiltinSignal::LongestTransactionSeconds,
        BuiltinSignal::LockWaitingSessions,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BuiltinSignal::DeadlocksPerSecond => "deadlocks_per_second",
            BuiltinSignal::RollbacksPerSecond => "rollbacks_per_second",
            BuiltinSignal::LongestTransactionSeconds => "longest_transaction_seconds",
            BuiltinSignal::LockWaitingSessions => "lock_waiting_sessions",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

/// A sample breaches when it is below `min`, above `max`, or further from the
/// baseline than `max_increase` / `max_decrease` allow. At least one is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Thresholds {
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub max_increase: Option<Delta>,
    pub max_decrease: Option<Delta>,
}

impl Thresholds {
    pub fn needs_baseline(&self) -> bool {
        self.max_increase.is_some() || self.max_decrease.is_some()
    }
}

/// A distance from the baseline: `5` (absolute) or `20%` (of the baseline).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delta {
    Absolute(f64),
    Percent(f64),
}

/// What an inconclusive sample (NULL, no row, NaN, error, timeout) does once more
/// than `max_inconclusive` arrive in a row. Within the tolerance it is set aside:
/// it never counts as a valid sample and never resets a breach streak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InconclusivePolicy {
    /// Treat the streak as a breach: roll back per the plan's strategy.
    Breach,
    /// Stop and hand the run to a human (needs_human) without rolling back.
    Hold,
    /// Keep soaking; only `min_samples` protects the verdict.
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackStrategy {
    /// Run down scripts in reverse order.
    Down,
    /// Restore the verified backup (needs `allow_data_loss: true`).
    Restore,
    /// Change nothing; page a human.
    Hold,
}

impl RollbackStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            RollbackStrategy::Down => "down",
            RollbackStrategy::Restore => "restore",
            RollbackStrategy::Hold => "hold",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RollbackSettings {
    pub strategy: RollbackStrategy,
    /// Required for `restore`: writes made after the backup are lost.
    pub allow_data_loss: bool,
    /// How long the soak checks re-run after a rollback to confirm it is healthy.
    #[serde(with = "crate::plan::duration::serde_secs")]
    pub confirm: Duration,
    /// For `down`: how a captured migration's rows are given back when users
    /// changed some since (`refuse`: nothing is reverted, the run needs a human).
    pub data_conflicts: crate::undo::revert::Mode,
    /// How long a captured migration's changes are kept on the target (`None`:
    /// until deleted by hand); expired ones are dropped when pgshepherd next
    /// captures on that database.
    #[serde(with = "crate::plan::duration::serde_secs_opt")]
    pub keep_captured_changes: Option<Duration>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NotifySettings {
    /// Channel names defined in the daemon config.
    pub channels: Vec<String>,
    /// Escalation policy name defined in the daemon config.
    pub escalation: Option<String>,
}
