//! Stage two of plan loading: the located YAML tree to a validated [`Plan`], or
//! every problem found, each at the `line:column` of the value it concerns.
//!
//! Every rule here is documented in docs/plan-reference.md; keep the two in step.
//! Beyond types and ranges the compiler refuses plans whose soak can never decide
//! the way the author expects: a check without a threshold, `min > max`, a
//! `consecutive` or `min_samples` the soak can never reach, a threshold that can
//! never hold (or never breach) for a signal that is never negative, a rollback
//! that cannot work (`down` without every down script, `restore` without a backup
//! or without `allow_data_loss: true`), and settings that silently do nothing
//! (`lock_timeout` not below `statement_timeout`, a `confirm` shorter than one
//! interval).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use chrono_tz::Tz;

use super::diagnostic::Diagnostic;
use super::duration;
use super::model::*;
use super::suggest;
use super::tree::{Node, Value};
use super::walk::{At, Pos, Section, Sink, describe};
use crate::migrations::MigrationSet;
use crate::window::{self, Window};

pub const TOP_KEYS: &[&str] = &[
    "name",
    "target",
    "migrations",
    "statement_timeout",
    "lock",
    "window",
    "backup",
    "soak",
    "rollback",
    "notify",
];
pub const LOCK_KEYS: &[&str] = &[
    "acquire_timeout",
    "lock_timeout",
    "retries",
    "backoff",
    "max_backoff",
];
pub const WINDOW_KEYS: &[&str] = &["cron", "timezone", "duration"];
pub const BACKUP_KEYS: &[&str] = &[
    "enabled",
    "format",
    "jobs",
    "compression",
    "keep",
    "expect_tables",
];
pub const SOAK_KEYS: &[&str] = &["duration", "interval", "baseline_samples", "checks"];
pub const CHECK_KEYS: &[&str] = &[
    "name",
    "sql",
    "http",
    "builtin",
    "min",
    "max",
    "max_increase",
    "max_decrease",
    "consecutive",
    "min_samples",
    "on_inconclusive",
    "max_inconclusive",
    "timeout",
];
pub const HTTP_KEYS: &[&str] = &["url", "expect_status", "json_pointer"];
pub const ROLLBACK_KEYS: &[&str] = &["strategy", "allow_data_loss", "confirm"];
pub const NOTIFY_KEYS: &[&str] = &["channels", "escalation"];

/// Defaults, in one place so that the reference documentation can be checked against them.
pub mod defaults {
    use std::time::Duration;

    pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
    pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const LOCK_TIMEOUT: Duration = Duration::from_secs(2);
    pub const RETRIES: u32 = 5;
    pub const BACKOFF: Duration = Duration::from_millis(500);
    pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
    pub const BACKUP_JOBS: u32 = 1;
    pub const BACKUP_COMPRESSION: u8 = 0;
    pub const BACKUP_KEEP: u32 = 5;
    pub const INTERVAL: Duration = Duration::from_secs(10);
    pub const BASELINE_SAMPLES: u32 = 3;
    pub const CONSECUTIVE: u32 = 3;
    pub const MAX_INCONCLUSIVE: u32 = 2;
    /// The per-sample timeout is `min(interval, CHECK_TIMEOUT)`.
    pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
    pub const CONFIRM: Duration = Duration::from_secs(30);
}

/// Longest plan and check names, so that they fit in events, metrics and chat messages.
const MAX_NAME_LEN: usize = 100;

/// Where the plan's migration set comes from.
pub enum MigrationSource {
    /// Read the directory named by `migrations:`, relative to the plan file's directory.
    Directory,
    /// Already loaded (e.g. files submitted with the plan); `migrations:` still names it.
    Given(MigrationSet),
}

/// Compile a parsed plan. `file` is the plan's path as given, used in diagnostics
/// and to resolve the migration directory.
pub fn compile(file: &Path, root: &Node, source: MigrationSource) -> Result<Plan, Vec<Diagnostic>> {
    let mut sink = Sink::new(file);
    let plan = compile_plan(&mut sink, file, root, source);
    match plan {
        Some(plan) if sink.diagnostics.is_empty() => Ok(plan),
        _ => {
            let mut d = sink.diagnostics;
            if d.is_empty() {
                // Unreachable by construction; never let a broken plan through silently.
                d.push(Diagnostic::new(file, 0, 0, "the plan is invalid"));
            }
            Err(d)
        }
    }
}

fn compile_plan(
    sink: &mut Sink,
    file: &Path,
    root: &Node,
    source: MigrationSource,
) -> Option<Plan> {
    if root.value == Value::Null {
        sink.error(
            Pos { line: 1, column: 1 },
            "the plan is empty; see docs/plan-reference.md for the format",
        );
        return None;
    }
    let top = Section::open(sink, root, "", Pos::of(root), TOP_KEYS)?;

    top.require(sink, "name");
    let name = top
        .string(sink, "name")
        .and_then(|n| checked_name(sink, "name", n));
    top.require(sink, "target");
    let target = top.string(sink, "target").and_then(|t| {
        if t.value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            sink.error(
                t.pos,
                format!(
                    "`target` {:?} must be a target name from the daemon config (no spaces)",
                    t.value
                ),
            );
            return None;
        }
        Some(t.value)
    });
    top.require(sink, "migrations");
    let migrations_at = top.string(sink, "migrations");
    let statement_timeout = top.duration(sink, "statement_timeout", true);
    let lock = compile_lock(
        sink,
        &top,
        statement_timeout
            .as_ref()
            .map_or(defaults::STATEMENT_TIMEOUT, |s| s.value),
    );
    let window = compile_window(sink, &top);
    let backup = compile_backup(sink, &top);
    top.require(sink, "soak");
    let (soak, timing) = match top.section(sink, "soak", SOAK_KEYS) {
        Some(s) => compile_soak(sink, &s),
        None => (None, None),
    };
    let interval = timing.map(|t| t.interval);
    let rollback = compile_rollback(sink, &top, backup.as_ref(), interval);
    let notify = compile_notify(sink, &top);

    let migrations = migrations_at
        .as_ref()
        .and_then(|at| load_migrations(sink, file, at, source));
    if let (Some(set), Some((rollback, strategy_pos))) = (&migrations, &rollback)
        && rollback.strategy == RollbackStrategy::Down
    {
        let pos = strategy_pos
            .or(migrations_at.as_ref().map(|m| m.pos))
            .unwrap_or(top.pos);
        let how = if strategy_pos.is_some() {
            ""
        } else {
            " (the default)"
        };
        for m in set.migrations.iter().filter(|m| m.down.is_none()) {
            sink.error(
                pos,
                format!(
                    "rollback strategy `down`{how} needs a down script for every migration, but {} has no \
                     {}.down.sql; add it, or choose strategy `restore` or `hold`",
                    m.label(),
                    m.label()
                ),
            );
        }
    }

    Some(Plan {
        path: file.to_path_buf(),
        name: name?,
        target: target?,
        migrations: migrations?,
        lock: lock?,
        statement_timeout: statement_timeout.map_or(defaults::STATEMENT_TIMEOUT, |s| s.value),
        backup: backup?,
        window: window?,
        soak: soak?,
        rollback: rollback?.0,
        notify: notify?,
        approval: Default::default(),
        deadline: None,
        gate: None,
    })
}

/// Plan and check names: letters, digits, `-` and `_`.
fn checked_name(sink: &mut Sink, what: &str, name: At<String>) -> Option<String> {
    let ok = name
        .value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        sink.error(
            name.pos,
            format!(
                "`{what}` {:?} may only contain letters, digits, '-' and '_'",
                name.value
            ),
        );
        return None;
    }
    if name.value.len() > MAX_NAME_LEN {
        sink.error(
            name.pos,
            format!("`{what}` is longer than {MAX_NAME_LEN} characters"),
        );
        return None;
    }
    Some(name.value)
}

fn load_migrations(
    sink: &mut Sink,
    file: &Path,
    at: &At<String>,
    source: MigrationSource,
) -> Option<MigrationSet> {
    let result = match source {
        MigrationSource::Given(set) => return Some(set),
        MigrationSource::Directory => {
            let base = file.parent().unwrap_or(Path::new(""));
            let dir = base.join(&at.value);
            if !dir.exists() {
                sink.error(
                    at.pos,
                    format!(
                        "migration directory {:?} does not exist (looked for {})",
                        at.value,
                        dir.display()
                    ),
                );
                return None;
            }
            if !dir.is_dir() {
                sink.error(
                    at.pos,
                    format!(
                        "`migrations` {:?} is not a directory ({})",
                        at.value,
                        dir.display()
                    ),
                );
                return None;
            }
            MigrationSet::from_dir(&dir)
        }
    };
    match result {
        Ok(set) => Some(set),
        Err(diagnostics) => {
            for d in diagnostics {
                if d.line == 0 {
                    // About the set as a whole: point at where the plan names it.
                    sink.error(at.pos, format!("`migrations`: {}", d.message));
                } else {
                    sink.diagnostics.push(d);
                }
            }
            None
        }
    }
}

fn compile_lock(
    sink: &mut Sink,
    top: &Section,
    statement_timeout: Duration,
) -> Option<LockSettings> {
    let Some(s) = top
        .has("lock")
        .then(|| top.section(sink, "lock", LOCK_KEYS))
    else {
        return Some(LockSettings {
            acquire_timeout: defaults::ACQUIRE_TIMEOUT,
            lock_timeout: defaults::LOCK_TIMEOUT,
            retries: defaults::RETRIES,
            backoff: defaults::BACKOFF,
            max_backoff: defaults::MAX_BACKOFF,
        });
    };
    let s = s?;
    let acquire_timeout = s.duration(sink, "acquire_timeout", false);
    let lock_timeout = s.duration(sink, "lock_timeout", true);
    let retries = s.uint(sink, "retries", 0, 1000);
    let backoff = s.duration(sink, "backoff", false);
    let max_backoff = s.duration(sink, "max_backoff", false);

    let lock_timeout_v = lock_timeout
        .as_ref()
        .map_or(defaults::LOCK_TIMEOUT, |l| l.value);
    if lock_timeout_v >= statement_timeout {
        sink.error(
            lock_timeout.as_ref().map_or(s.pos, |l| l.pos),
            format!(
                "`lock.lock_timeout` ({}) must be shorter than `statement_timeout` ({}); otherwise the statement \
                 timeout fires first and lock retries never happen",
                duration::format(lock_timeout_v),
                duration::format(statement_timeout)
            ),
        );
    }
    let backoff_v = backoff.as_ref().map_or(defaults::BACKOFF, |b| b.value);
    let max_backoff_v = max_backoff
        .as_ref()
        .map_or(defaults::MAX_BACKOFF, |b| b.value);
    if max_backoff_v < backoff_v {
        let pos = max_backoff
            .as_ref()
            .or(backoff.as_ref())
            .map_or(s.pos, |b| b.pos);
        sink.error(
            pos,
            format!(
                "`lock.max_backoff` ({}) must be at least `lock.backoff` ({})",
                duration::format(max_backoff_v),
                duration::format(backoff_v)
            ),
        );
    }
    // Invalid values fall back to defaults here; `compile` returns no plan anyway.
    Some(LockSettings {
        acquire_timeout: acquire_timeout.map_or(defaults::ACQUIRE_TIMEOUT, |a| a.value),
        lock_timeout: lock_timeout_v,
        retries: retries.map_or(defaults::RETRIES, |r| r.value),
        backoff: backoff_v,
        max_backoff: max_backoff_v,
    })
}

/// `Some(None)` when the plan has no window (any time).
fn compile_window(sink: &mut Sink, top: &Section) -> Option<Option<Window>> {
    if !top.has("window") {
        return Some(None);
    }
    let s = top.section(sink, "window", WINDOW_KEYS)?;
    let present = [
        s.require(sink, "cron"),
        s.require(sink, "timezone"),
        s.require(sink, "duration"),
    ];
    let cron = s.string(sink, "cron");
    let tz = s
        .string(sink, "timezone")
        .and_then(|tz| match tz.value.parse::<Tz>() {
            Ok(z) => Some(z),
            Err(_) => {
                let hint = match suggest::closest(
                    &tz.value,
                    chrono_tz::TZ_VARIANTS.iter().map(|z| z.name()),
                ) {
                    Some(z) => format!("; did you mean `{z}`?"),
                    None => " (use an IANA name like Europe/Berlin, America/New_York or UTC)"
                        .to_string(),
                };
                sink.error(
                    tz.pos,
                    format!("`window.timezone`: unknown time zone {:?}{hint}", tz.value),
                );
                None
            }
        });
    let duration = s.duration(sink, "duration", true).filter(|d| {
        if d.value > window::MAX_DURATION {
            sink.error(
                d.pos,
                format!(
                    "`window.duration` {} is longer than the maximum of 7 days",
                    duration::format(d.value)
                ),
            );
            return false;
        }
        true
    });
    let cron = cron?;
    // Validate the expression even when the zone or duration is broken, so that
    // its errors show up in the same run.
    let built = Window::new(
        &cron.value,
        tz.unwrap_or(Tz::UTC),
        duration
            .as_ref()
            .map_or(Duration::from_secs(3600), |d| d.value),
    );
    match built {
        Ok(w) if present.iter().all(|p| *p) && tz.is_some() && duration.is_some() => Some(Some(w)),
        Ok(_) => None,
        Err(e) => {
            sink.error(cron.pos, format!("`window.cron`: {e}"));
            None
        }
    }
}

fn compile_backup(sink: &mut Sink, top: &Section) -> Option<BackupSettings> {
    let defaults = BackupSettings {
        enabled: true,
        format: BackupFormat::Custom,
        jobs: defaults::BACKUP_JOBS,
        compression: defaults::BACKUP_COMPRESSION,
        keep: defaults::BACKUP_KEEP,
        expect_tables: Vec::new(),
    };
    if !top.has("backup") {
        return Some(defaults);
    }
    let s = top.section(sink, "backup", BACKUP_KEYS)?;
    let enabled = s.bool(sink, "enabled");
    let format = s.choice(sink, "format", &["custom", "directory"]);
    let jobs = s.uint(sink, "jobs", 1, 64);
    let compression = s.uint(sink, "compression", 0, 9);
    let keep = s.uint(sink, "keep", 1, 10_000);
    let expect_tables = s.string_list(sink, "expect_tables");

    let format_v = match format.as_ref().map(|f| f.value) {
        Some("directory") => BackupFormat::Directory,
        _ => BackupFormat::Custom,
    };
    if let Some(j) = &jobs
        && j.value > 1
        && format_v != BackupFormat::Directory
    {
        sink.error(
            j.pos,
            format!(
                "`backup.jobs: {}` needs `backup.format: directory`; pg_dump runs parallel jobs only for the \
                 directory format",
                j.value
            ),
        );
    }
    // Invalid values fall back to defaults here; `compile` returns no plan anyway.
    Some(BackupSettings {
        enabled: enabled.is_none_or(|e| e.value),
        format: format_v,
        jobs: jobs.map_or(defaults.jobs, |j| j.value),
        compression: compression.map_or(defaults.compression, |c| c.value as u8),
        keep: keep.map_or(defaults.keep, |k| k.value),
        expect_tables: expect_tables.map_or(Vec::new(), |t| {
            t.value.into_iter().map(|t| t.value).collect()
        }),
    })
}

/// The soak settings, and its timing whenever that is valid (even if a check is not),
/// so that the rollback rules can still be checked against the interval.
fn compile_soak(sink: &mut Sink, s: &Section) -> (Option<SoakSettings>, Option<Timing>) {
    s.require(sink, "duration");
    let duration = s.duration(sink, "duration", true);
    let interval = s.duration(sink, "interval", true);
    let baseline_samples = s.uint(sink, "baseline_samples", 1, 10_000);
    let interval_v = interval.as_ref().map_or(defaults::INTERVAL, |i| i.value);
    let mut timing_ok = s.has("interval") == interval.is_some();
    if let Some(d) = &duration
        && interval_v > d.value
    {
        let (pos, whose) = match &interval {
            Some(i) => (i.pos, ""),
            None => (d.pos, " (the default)"),
        };
        sink.error(
            pos,
            format!(
                "`soak.interval` {}{whose} is longer than `soak.duration` {}: not a single sample would be taken",
                duration::format(interval_v),
                duration::format(d.value)
            ),
        );
        timing_ok = false;
    }
    let timing = match (&duration, timing_ok) {
        (Some(d), true) => Some(Timing {
            duration: d.value,
            interval: interval_v,
        }),
        _ => None,
    };

    s.require(sink, "checks");
    let mut checks = Vec::new();
    let mut checks_ok = true;
    if let Some(node) = s.get(sink, "checks") {
        match &node.value {
            Value::Seq(items) if items.is_empty() => {
                sink.error(
                    Pos::of(node),
                    "`soak.checks` is empty; a soak needs at least one check",
                );
                checks_ok = false;
            }
            Value::Seq(items) => {
                let mut names: HashMap<String, Pos> = HashMap::new();
                for (i, item) in items.iter().enumerate() {
                    match compile_check(sink, item, i, timing, interval_v, &mut names) {
                        Some(c) => checks.push(c),
                        None => checks_ok = false,
                    }
                }
            }
            other => {
                sink.error(
                    Pos::of(node),
                    format!(
                        "`soak.checks` must be a list of checks, found {}",
                        other.kind()
                    ),
                );
                checks_ok = false;
            }
        }
    } else {
        checks_ok = false;
    }

    let settings = timing.filter(|_| checks_ok).map(|t| SoakSettings {
        duration: t.duration,
        interval: t.interval,
        // An invalid value falls back to the default; `compile` returns no plan anyway.
        baseline_samples: baseline_samples.map_or(defaults::BASELINE_SAMPLES, |b| b.value),
        checks,
    });
    (settings, timing)
}

/// The soak's clock, known only when both are valid.
#[derive(Clone, Copy)]
struct Timing {
    duration: Duration,
    interval: Duration,
}

impl Timing {
    /// Samples one check can take during the soak.
    fn samples(self) -> u64 {
        (self.duration.as_nanos() / self.interval.as_nanos()).min(u128::from(u32::MAX)) as u64
    }

    fn explain(self) -> String {
        format!(
            "the soak takes only {} sample{} ({} / {})",
            self.samples(),
            if self.samples() == 1 { "" } else { "s" },
            duration::format(self.duration),
            duration::format(self.interval)
        )
    }
}

fn compile_check(
    sink: &mut Sink,
    node: &Node,
    index: usize,
    timing: Option<Timing>,
    interval: Duration,
    names: &mut HashMap<String, Pos>,
) -> Option<Check> {
    let path = format!("soak.checks[{index}]");
    let s = Section::open(sink, node, &path, Pos::of(node), CHECK_KEYS)?;
    let before = sink.diagnostics.len();

    s.require(sink, "name");
    let name = s.string(sink, "name").and_then(|n| {
        let pos = n.pos;
        let name = checked_name(sink, &format!("{path}.name"), n)?;
        if let Some(first) = names.get(&name) {
            sink.error(
                pos,
                format!(
                    "duplicate check name `{name}` (first used at {}:{}); check names must be unique",
                    first.line, first.column
                ),
            );
            return None;
        }
        names.insert(name.clone(), pos);
        Some(name)
    });
    let label = match &name {
        Some(n) => format!("check `{n}`"),
        None => format!("`{path}`"),
    };

    let source = compile_source(sink, &s, &label);

    let min = s.number(sink, "min");
    let max = s.number(sink, "max");
    let max_increase = delta(sink, &s, "max_increase");
    let max_decrease = delta(sink, &s, "max_decrease");
    let thresholds_written = ["min", "max", "max_increase", "max_decrease"]
        .iter()
        .any(|k| s.has(k));
    if !thresholds_written {
        sink.error(
            s.pos,
            format!(
                "{label} has no threshold, so it can never breach: set at least one of min, max, \
                 max_increase, max_decrease"
            ),
        );
    }
    if let (Some(lo), Some(hi)) = (&min, &max)
        && lo.value > hi.value
    {
        sink.error(
            lo.pos,
            format!(
                "{label}: `min` ({}) is greater than `max` ({}), so every sample would breach",
                lo.value, hi.value
            ),
        );
    }
    if let Some(CheckSource::Builtin(signal)) = &source {
        never_negative_rules(
            sink,
            &label,
            *signal,
            &min,
            &max,
            &max_increase,
            &max_decrease,
            thresholds_written,
        );
    }

    let consecutive = s.uint(sink, "consecutive", 1, u32::MAX);
    let min_samples = s.uint(sink, "min_samples", 1, u32::MAX);
    let on_inconclusive = s.choice(sink, "on_inconclusive", &["breach", "hold", "ignore"]);
    let max_inconclusive = s.uint(sink, "max_inconclusive", 0, u32::MAX);
    let timeout = s.duration(sink, "timeout", true);

    let consecutive_v = consecutive
        .as_ref()
        .map_or(defaults::CONSECUTIVE, |c| c.value);
    let samples = timing.map(Timing::samples);
    if let (Some(t), Some(n)) = (timing, samples) {
        if u64::from(consecutive_v) > n {
            let (pos, whose) = match &consecutive {
                Some(c) => (c.pos, ""),
                None => (s.pos, " (the default)"),
            };
            sink.error(
                pos,
                format!(
                    "{label}: `consecutive: {consecutive_v}`{whose} can never be reached, so the check can never \
                     breach: {}",
                    t.explain()
                ),
            );
        }
        if let Some(m) = &min_samples
            && u64::from(m.value) > n
        {
            sink.error(
                m.pos,
                format!(
                    "{label}: `min_samples: {}` can never be reached, so the soak can never pass: {}",
                    m.value,
                    t.explain()
                ),
            );
        }
    }
    let default_timeout = interval.min(defaults::CHECK_TIMEOUT);
    if let Some(t) = &timeout
        && t.value > interval
    {
        sink.error(
            t.pos,
            format!(
                "{label}: `timeout` {} is longer than `soak.interval` {}; a sample must finish before the next one",
                duration::format(t.value),
                duration::format(interval)
            ),
        );
    }

    if sink.diagnostics.len() != before {
        return None;
    }
    let on_inconclusive = match on_inconclusive.map(|o| o.value) {
        Some("hold") => InconclusivePolicy::Hold,
        Some("ignore") => InconclusivePolicy::Ignore,
        _ => InconclusivePolicy::Breach,
    };
    Some(Check {
        name: name?,
        source: source?,
        thresholds: Thresholds {
            min: min.map(|m| m.value),
            max: max.map(|m| m.value),
            max_increase: max_increase.map(|d| d.value),
            max_decrease: max_decrease.map(|d| d.value),
        },
        consecutive: consecutive_v,
        min_samples: min_samples.map_or_else(
            || samples.map_or(1, |n| (n / 2).clamp(1, u64::from(u32::MAX)) as u32),
            |m| m.value,
        ),
        on_inconclusive,
        max_inconclusive: max_inconclusive.map_or(defaults::MAX_INCONCLUSIVE, |m| m.value),
        timeout: timeout.map_or(default_timeout, |t| t.value),
    })
}

/// Built-in signals are rates, ages and counts: never negative.
#[allow(clippy::too_many_arguments)]
fn never_negative_rules(
    sink: &mut Sink,
    label: &str,
    signal: BuiltinSignal,
    min: &Option<At<f64>>,
    max: &Option<At<f64>>,
    max_increase: &Option<At<Delta>>,
    max_decrease: &Option<At<Delta>>,
    thresholds_written: bool,
) {
    let name = signal.as_str();
    if let Some(m) = max
        && m.value < 0.0
    {
        sink.error(
            m.pos,
            format!(
                "{label}: `max: {}` can never hold because {name} is never negative; every sample \
                 would breach",
                m.value
            ),
        );
    }
    // Thresholds that can never be crossed by a value >= 0.
    let vacuous_min = min.as_ref().is_some_and(|m| m.value <= 0.0);
    let vacuous_decrease = max_decrease
        .as_ref()
        .is_some_and(|d| matches!(d.value, Delta::Percent(p) if p >= 100.0));
    let effective = (min.is_some() && !vacuous_min)
        || max.is_some()
        || max_increase.is_some()
        || (max_decrease.is_some() && !vacuous_decrease);
    if thresholds_written && !effective {
        let pos = min
            .as_ref()
            .map(|m| m.pos)
            .or(max_decrease.as_ref().map(|d| d.pos));
        if let Some(pos) = pos {
            sink.error(
                pos,
                format!(
                    "{label} can never breach: {name} is never negative, so `min` <= 0 or a `max_decrease` of 100% \
                     or more is never crossed; add a `max` or `max_increase`"
                ),
            );
        }
    }
}

/// `5` (absolute) or `20%` (of the baseline), never negative.
fn delta(sink: &mut Sink, s: &Section, key: &str) -> Option<At<Delta>> {
    let node = s.get(sink, key)?;
    let pos = Pos::of(node);
    let parsed = match &node.value {
        Value::Int(n) => Ok(Delta::Absolute(*n as f64)),
        Value::Float(f) if f.is_finite() => Ok(Delta::Absolute(*f)),
        Value::Str(t) => match t.trim().strip_suffix('%').map(|n| n.trim().parse::<f64>()) {
            Some(Ok(p)) if p.is_finite() => Ok(Delta::Percent(p)),
            _ => Err(format!(
                "expected a number like 5 or a percentage like 20%, found {:?}",
                t
            )),
        },
        other => Err(format!(
            "expected a number like 5 or a percentage like 20%, found {}",
            describe(other)
        )),
    };
    match parsed {
        Ok(Delta::Absolute(v) | Delta::Percent(v)) if v < 0.0 => {
            sink.error(
                pos,
                format!(
                    "`{}` must not be negative (found {}); it is a distance from the baseline in the \
                     direction its name says",
                    s.name(key),
                    describe(&node.value)
                ),
            );
            None
        }
        Ok(d) => Some(At { value: d, pos }),
        Err(e) => {
            sink.error(pos, format!("`{}`: {e}", s.name(key)));
            None
        }
    }
}

fn compile_source(sink: &mut Sink, s: &Section, label: &str) -> Option<CheckSource> {
    let written: Vec<&str> = ["sql", "http", "builtin"]
        .into_iter()
        .filter(|k| s.has(k))
        .collect();
    match written.as_slice() {
        [] => {
            sink.error(
                s.pos,
                format!("{label} measures nothing: give it exactly one of sql, http or builtin"),
            );
            return None;
        }
        [_] => {}
        [first, second, ..] => {
            sink.error(
                s.key_pos(second),
                format!(
                    "{label} has both `{first}` and `{second}`; a check measures exactly one of sql, \
                     http or builtin"
                ),
            );
            return None;
        }
    }
    match written[0] {
        "sql" => {
            let q = s.string(sink, "sql")?;
            if let Err(e) = single_select(&q.value) {
                sink.error(q.pos, format!("{label}: `sql` {e}"));
                return None;
            }
            Some(CheckSource::Sql { query: q.value })
        }
        "http" => compile_http(sink, s, label).map(CheckSource::Http),
        _ => {
            let names: Vec<&'static str> = BuiltinSignal::ALL.iter().map(|b| b.as_str()).collect();
            let b = s.choice(sink, "builtin", &names)?;
            BuiltinSignal::parse(b.value).map(CheckSource::Builtin)
        }
    }
}

/// A check query is one read-only statement returning one value.
fn single_select(sql: &str) -> Result<(), String> {
    let statements = crate::migrations::split::statements(sql);
    if statements.len() != 1 {
        return Err(format!(
            "must be a single SELECT statement returning one number, found {} statements",
            statements.len()
        ));
    }
    let first_word: String = strip_leading_comments(&statements[0])
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase();
    if !matches!(first_word.as_str(), "SELECT" | "WITH" | "VALUES" | "TABLE") {
        return Err(format!(
            "must be a query (SELECT, WITH, VALUES or TABLE) returning one number, found {}",
            if first_word.is_empty() {
                "something else".to_string()
            } else {
                first_word
            }
        ));
    }
    Ok(())
}

fn strip_leading_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            return s;
        }
    }
}

fn compile_http(sink: &mut Sink, check: &Section, label: &str) -> Option<HttpProbe> {
    let s = check.section(sink, "http", HTTP_KEYS)?;
    let before = sink.diagnostics.len();
    s.require(sink, "url");
    let url = s
        .string(sink, "url")
        .and_then(|u| match reqwest::Url::parse(&u.value) {
            Ok(parsed)
                if matches!(parsed.scheme(), "http" | "https")
                    && parsed.host_str().is_some_and(|h| !h.is_empty()) =>
            {
                Some(u.value)
            }
            Ok(parsed) => {
                sink.error(
                    u.pos,
                    format!(
                        "{label}: `http.url` must be an http:// or https:// URL with a host, found \
                     scheme {:?}",
                        parsed.scheme()
                    ),
                );
                None
            }
            Err(e) => {
                sink.error(
                    u.pos,
                    format!("{label}: `http.url` {:?} is not a valid URL: {e}", u.value),
                );
                None
            }
        });
    let expect_status = match s.get(sink, "expect_status") {
        None => Some(vec![200]),
        Some(node) => {
            let items: Vec<&Node> = match &node.value {
                Value::Seq(items) if items.is_empty() => {
                    sink.error(
                        Pos::of(node),
                        format!("{label}: `http.expect_status` is empty; omit it for [200]"),
                    );
                    vec![]
                }
                Value::Seq(items) => items.iter().collect(),
                _ => vec![node],
            };
            let mut codes = Vec::new();
            for item in items {
                match &item.value {
                    Value::Int(n) if (100..=599).contains(n) => {
                        let code = *n as u16;
                        if !codes.contains(&code) {
                            codes.push(code);
                        }
                    }
                    other => sink.error(
                        Pos::of(item),
                        format!(
                            "{label}: `http.expect_status` entries must be HTTP status codes \
                             100-599, found {}",
                            describe(other)
                        ),
                    ),
                }
            }
            Some(codes)
        }
    };
    let json_pointer = s.string(sink, "json_pointer").and_then(|p| {
        if !p.value.starts_with('/') {
            sink.error(
                p.pos,
                format!("{label}: `http.json_pointer` {:?} must start with '/', like /latency/p99 (RFC 6901)", p.value),
            );
            return None;
        }
        Some(p.value)
    });
    if sink.diagnostics.len() != before {
        return None;
    }
    Some(HttpProbe {
        url: url?,
        expect_status: expect_status?,
        json_pointer,
    })
}

/// The rollback settings and where `strategy` is written (if it is).
fn compile_rollback(
    sink: &mut Sink,
    top: &Section,
    backup: Option<&BackupSettings>,
    interval: Option<Duration>,
) -> Option<(RollbackSettings, Option<Pos>)> {
    if !top.has("rollback") {
        return Some((
            RollbackSettings {
                strategy: RollbackStrategy::Down,
                allow_data_loss: false,
                confirm: defaults::CONFIRM,
            },
            None,
        ));
    }
    let s = top.section(sink, "rollback", ROLLBACK_KEYS)?;
    let before = sink.diagnostics.len();
    let strategy = s.choice(sink, "strategy", &["down", "restore", "hold"]);
    let allow_data_loss = s.bool(sink, "allow_data_loss");
    let confirm = s.duration(sink, "confirm", false);
    let strategy_v = match strategy.as_ref().map(|s| s.value) {
        Some("restore") => RollbackStrategy::Restore,
        Some("hold") => RollbackStrategy::Hold,
        _ => RollbackStrategy::Down,
    };
    let strategy_pos = strategy.as_ref().map(|s| s.pos);
    if strategy_v == RollbackStrategy::Restore {
        let pos = strategy_pos.unwrap_or(s.pos);
        if !allow_data_loss.as_ref().is_some_and(|a| a.value) {
            sink.error(
                pos,
                "rollback strategy `restore` replaces the database with the backup, losing every write made since; \
                 set `allow_data_loss: true` to accept that, or use `down` or `hold`",
            );
        }
        if backup.is_some_and(|b| !b.enabled) {
            sink.error(
                pos,
                "rollback strategy `restore` needs a backup, but `backup.enabled` is false",
            );
        }
    }
    if let (Some(c), Some(i)) = (&confirm, interval)
        && !c.value.is_zero()
        && c.value < i
    {
        sink.error(
            c.pos,
            format!(
                "`rollback.confirm` {} is shorter than `soak.interval` {}, so no confirmation sample would be \
                 taken; use 0s to skip confirmation, or at least {}",
                duration::format(c.value),
                duration::format(i),
                duration::format(i)
            ),
        );
    }
    if sink.diagnostics.len() != before {
        return None;
    }
    Some((
        RollbackSettings {
            strategy: strategy_v,
            allow_data_loss: allow_data_loss.is_some_and(|a| a.value),
            confirm: confirm.map_or(defaults::CONFIRM, |c| c.value),
        },
        strategy_pos,
    ))
}

fn compile_notify(sink: &mut Sink, top: &Section) -> Option<NotifySettings> {
    if !top.has("notify") {
        return Some(NotifySettings::default());
    }
    let s = top.section(sink, "notify", NOTIFY_KEYS)?;
    let before = sink.diagnostics.len();
    let channels = s.string_list(sink, "channels");
    let escalation = s.string(sink, "escalation");
    let mut names: Vec<String> = Vec::new();
    for c in channels.iter().flat_map(|c| &c.value) {
        if names.contains(&c.value) {
            sink.error(
                c.pos,
                format!("`notify.channels` lists {:?} twice", c.value),
            );
        } else {
            names.push(c.value.clone());
        }
    }
    if sink.diagnostics.len() != before {
        return None;
    }
    Some(NotifySettings {
        channels: names,
        escalation: escalation.map(|e| e.value),
    })
}
