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
//! interval). The low-traffic gate's check is compiled by the same function as a
//! soak check, minus what a gate cannot use (baseline-relative thresholds, the
//! breach and inconclusive rules), and a gate that could never open before its
//! `timeout` or inside the window is refused.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use chrono_tz::Tz;

use super::checks::{CheckHome, compile_check, compile_soak};
use super::diagnostic::Diagnostic;
use super::duration;
use super::model::*;
use super::suggest;
use super::tree::{Node, Value};
use super::walk::{At, Pos, Section, Sink};
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
    "approval",
    "rehearsal",
    "gate",
    "explain",
];
pub const LOCK_KEYS: &[&str] = &[
    "acquire_timeout",
    "lock_timeout",
    "retries",
    "backoff",
    "max_backoff",
];
pub const WINDOW_KEYS: &[&str] = &["cron", "timezone", "duration", "deadline"];
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
pub const ROLLBACK_KEYS: &[&str] = &[
    "strategy",
    "allow_data_loss",
    "confirm",
    "data_conflicts",
    "keep_captured_changes",
];
pub const NOTIFY_KEYS: &[&str] = &["channels", "escalation"];
pub const APPROVAL_KEYS: &[&str] = &["required"];
pub const GATE_KEYS: &[&str] = &["check", "consecutive", "interval", "timeout"];

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
    /// Healthy gate samples in a row before the gate opens.
    pub const GATE_CONSECUTIVE: u32 = 3;
    pub const GATE_INTERVAL: Duration = Duration::from_secs(10);
    /// `statement_timeout` of each EXPLAIN of the EXPLAIN gate.
    pub const EXPLAIN_TIMEOUT: Duration = Duration::from_secs(30);
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
    let approval = compile_approval(sink, &top);
    let rehearsal = if top.has("rehearsal") {
        top.choice(sink, "rehearsal", &["required", "optional"])
            .map(|c| c.value == "required")
    } else {
        Some(false)
    };
    let gate = compile_gate(sink, &top, window.window.as_ref().and_then(|w| w.as_ref()));
    let backup = compile_backup(sink, &top);
    top.require(sink, "soak");
    let (soak, timing) = match top.section(sink, "soak", SOAK_KEYS) {
        Some(s) => compile_soak(sink, &s),
        None => (None, None),
    };
    let interval = timing.map(|t| t.interval);
    let rollback = compile_rollback(sink, &top, backup.as_ref(), interval);
    let notify = compile_notify(sink, &top);
    let explain = super::explain::compile(sink, &top);

    // The rollback rules are checked against the migrations that loaded even
    // when other files of the set have problems: `check` reports both at once.
    let loaded = migrations_at
        .as_ref()
        .and_then(|at| load_migrations(sink, file, at, source));
    if let (Some((set, _)), Some((rollback, strategy_pos))) = (&loaded, &rollback)
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
        // A captured migration is undone by giving its rows back.
        for m in set
            .migrations
            .iter()
            .filter(|m| m.down.is_none() && m.up.capture.is_empty())
        {
            sink.error(
                pos,
                format!(
                    "rollback strategy `down`{how} needs a down script (or `-- pgshepherd:capture`) for every \
                     migration, but {} has no {}.down.sql; add it, or choose strategy `restore` or `hold`",
                    m.label(),
                    m.label()
                ),
            );
        }
    }

    let migrations = loaded.and_then(|(set, complete)| complete.then_some(set));
    Some(Plan {
        path: file.to_path_buf(),
        name: name?,
        target: target?,
        migrations: migrations?,
        lock: lock?,
        statement_timeout: statement_timeout.map_or(defaults::STATEMENT_TIMEOUT, |s| s.value),
        backup: backup?,
        window: window.window?,
        deadline: window.deadline?,
        soak: soak?,
        rollback: rollback?.0,
        notify: notify?,
        approval: approval?,
        rehearsal_required: rehearsal?,
        gate: gate?,
        explain: explain?,
    })
}

/// Plan and check names: letters, digits, `-` and `_`.
pub(super) fn checked_name(sink: &mut Sink, what: &str, name: At<String>) -> Option<String> {
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

/// The set as far as it loaded, and whether it loaded without a problem (every
/// problem is in `sink`).
fn load_migrations(
    sink: &mut Sink,
    file: &Path,
    at: &At<String>,
    source: MigrationSource,
) -> Option<(MigrationSet, bool)> {
    let loaded = match source {
        MigrationSource::Given(set) => return Some((set, true)),
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
            MigrationSet::load_dir(&dir)
        }
    };
    let complete = loaded.problems.is_empty();
    for d in loaded.problems {
        if d.line == 0 {
            // About the set as a whole: point at where the plan names it.
            sink.error(at.pos, format!("`migrations`: {}", d.message));
        } else {
            sink.diagnostics.push(d);
        }
    }
    Some((loaded.set, complete))
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

/// The `window` section: when the migration may start, and by when at the latest.
/// Each is `None` when invalid (and reported), independently of the other, so
/// that a broken deadline does not hide the rules that need the window.
struct WindowSettings {
    /// `Some(None)` when the plan has no window (any time).
    window: Option<Option<Window>>,
    deadline: Option<Option<DateTime<Utc>>>,
}

fn compile_window(sink: &mut Sink, top: &Section) -> WindowSettings {
    if !top.has("window") {
        return WindowSettings {
            window: Some(None),
            deadline: Some(None),
        };
    }
    let Some(s) = top.section(sink, "window", WINDOW_KEYS) else {
        return WindowSettings {
            window: None,
            deadline: None,
        };
    };
    let deadline = match s.has("deadline") {
        true => deadline(sink, &s).map(Some),
        false => Some(None),
    };
    WindowSettings {
        window: compile_window_times(sink, &s),
        deadline,
    }
}

/// `cron`, `timezone` and `duration`.
fn compile_window_times(sink: &mut Sink, s: &Section) -> Option<Option<Window>> {
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

/// `window.deadline`: an RFC 3339 timestamp with its UTC offset. A timestamp
/// without one is refused rather than read in some zone: the plan is checked on
/// one machine and run on another, and "02:00" must mean the same instant on both.
fn deadline(sink: &mut Sink, s: &Section) -> Option<DateTime<Utc>> {
    let text = s.string(sink, "deadline")?;
    let t = text.value.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Some(d.with_timezone(&Utc));
    }
    let local = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .any(|f| NaiveDateTime::parse_from_str(t, f).is_ok());
    let date_only = NaiveDate::parse_from_str(t, "%Y-%m-%d").is_ok();
    let message = if local || date_only {
        let what = if date_only { "a date" } else { "a local time" };
        format!(
            "`window.deadline` {t:?} is {what} without a UTC offset; write the instant with its offset, \
             like 2026-11-23T04:00:00+01:00 or 2026-11-23T03:00:00Z"
        )
    } else {
        format!(
            "`window.deadline` {t:?} is not an RFC 3339 timestamp; write it like 2026-11-23T04:00:00+01:00 \
             or 2026-11-23T03:00:00Z"
        )
    };
    sink.error(text.pos, message);
    None
}

fn compile_approval(sink: &mut Sink, top: &Section) -> Option<ApprovalSettings> {
    if !top.has("approval") {
        return Some(ApprovalSettings::default());
    }
    let s = top.section(sink, "approval", APPROVAL_KEYS)?;
    let before = sink.diagnostics.len();
    let required = s.bool(sink, "required");
    if sink.diagnostics.len() != before {
        return None;
    }
    Some(ApprovalSettings {
        required: required.is_some_and(|r| r.value),
    })
}

/// `None` inside when the plan has no gate. `window` is the plan's window when it
/// is valid: a gate that needs longer than the window stays open can never open.
fn compile_gate(sink: &mut Sink, top: &Section, window: Option<&Window>) -> Option<Option<Gate>> {
    if !top.has("gate") {
        return Some(None);
    }
    let s = top.section(sink, "gate", GATE_KEYS)?;
    let before = sink.diagnostics.len();
    let consecutive = s.uint(sink, "consecutive", 1, 1000);
    let interval = s.duration(sink, "interval", true);
    let timeout = s.duration(sink, "timeout", true);
    let interval_v = interval
        .as_ref()
        .map_or(defaults::GATE_INTERVAL, |i| i.value);
    let consecutive_v = consecutive
        .as_ref()
        .map_or(defaults::GATE_CONSECUTIVE, |c| c.value);
    s.require(sink, "check");
    let check = s.get(sink, "check").and_then(|node| {
        compile_check(
            sink,
            node,
            CheckHome::Gate {
                consecutive: consecutive_v,
                key: s.key_pos("check"),
            },
            interval_v,
            &mut HashMap::new(),
        )
    });

    // The gate opens after `consecutive` healthy samples, the first one interval
    // after it starts; anything that ends the wait sooner makes it never open.
    let timing_ok =
        s.has("interval") == interval.is_some() && s.has("consecutive") == consecutive.is_some();
    let needed = interval_v.saturating_mul(consecutive_v);
    let explain = || {
        format!(
            "it opens {} after it starts at the earliest ({consecutive_v} healthy sample{}, one every {})",
            duration::format(needed),
            if consecutive_v == 1 { "" } else { "s" },
            duration::format(interval_v)
        )
    };
    // Point at what the author wrote that makes the gate too slow.
    let slow_pos = consecutive
        .as_ref()
        .map(|c| c.pos)
        .or(interval.as_ref().map(|i| i.pos))
        .unwrap_or(s.pos);
    if let Some(t) = &timeout
        && timing_ok
        && t.value <= needed
    {
        sink.error(
            t.pos,
            format!(
                "`gate.timeout` {} is too short for the gate ever to open: {}",
                duration::format(t.value),
                explain()
            ),
        );
    }
    if let Some(w) = window
        && timing_ok
        && w.duration <= needed
    {
        sink.error(
            slow_pos,
            format!(
                "the gate can never open inside the window: {}, but `window.duration` is {}",
                explain(),
                duration::format(w.duration)
            ),
        );
    }
    if sink.diagnostics.len() != before {
        return None;
    }
    Some(Some(Gate {
        check: check?,
        consecutive: consecutive_v,
        interval: interval_v,
        timeout: timeout.map(|t| t.value),
    }))
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
                data_conflicts: crate::undo::revert::Mode::Refuse,
                keep_captured_changes: Some(crate::undo::capture::DEFAULT_KEEP),
            },
            None,
        ));
    }
    let s = top.section(sink, "rollback", ROLLBACK_KEYS)?;
    let before = sink.diagnostics.len();
    let strategy = s.choice(sink, "strategy", &["down", "restore", "hold"]);
    let allow_data_loss = s.bool(sink, "allow_data_loss");
    let confirm = s.duration(sink, "confirm", false);
    let data_conflicts = s.choice(
        sink,
        "data_conflicts",
        &["refuse", "skip-conflicts", "merge"],
    );
    let keep_captured_changes = keep_captured_changes(sink, &s);
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
            data_conflicts: match data_conflicts.as_ref().map(|d| d.value) {
                Some("skip-conflicts") => crate::undo::revert::Mode::SkipConflicts,
                Some("merge") => crate::undo::revert::Mode::Merge,
                _ => crate::undo::revert::Mode::Refuse,
            },
            keep_captured_changes: keep_captured_changes
                .unwrap_or(Some(crate::undo::capture::DEFAULT_KEEP)),
        },
        strategy_pos,
    ))
}

/// `rollback.keep_captured_changes`: a duration of at least a day, or `forever`
/// (`Some(None)`); `None` when absent or wrong (reported).
fn keep_captured_changes(sink: &mut Sink, s: &Section) -> Option<Option<Duration>> {
    const KEY: &str = "keep_captured_changes";
    if !s.has(KEY) {
        return None;
    }
    if let Some(node) = s.get(sink, KEY)
        && matches!(&node.value, Value::Str(v) if v == "forever")
    {
        return Some(None);
    }
    let d = s.duration(sink, KEY, true)?;
    if d.value < Duration::from_secs(86_400) {
        sink.error(
            d.pos,
            format!(
                "`rollback.{KEY}` {} is shorter than a day: an undo is often needed days after the run; \
                 use at least 1d, or `forever`",
                duration::format(d.value)
            ),
        );
        return None;
    }
    Some(Some(d.value))
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

#[cfg(test)]
mod tests {
    //! The keys compiled here that have no home in `load`'s tests: `approval`,
    //! `window.deadline` and `gate`. Positions are those of MINIMAL plus `extra`
    //! appended from line 10.

    use std::path::Path;
    use std::time::Duration;

    use chrono::{TimeZone, Utc};

    use super::MigrationSource;
    use crate::migrations::MigrationSet;
    use crate::plan::load::load_str;
    use crate::plan::model::*;

    const MINIMAL: &str = "name: p\ntarget: app\nmigrations: jobs\nsoak:\n  duration: 10m\n  checks:\n    - name: c\n      builtin: deadlocks_per_second\n      max: 0\n";

    fn compile(extra: &str) -> Result<Plan, Vec<String>> {
        let set = MigrationSet::from_files(
            "jobs",
            None,
            vec![
                (
                    "V1__a.sql".to_string(),
                    "CREATE TABLE t (c int);".to_string(),
                ),
                ("V1__a.down.sql".to_string(), "DROP TABLE t;".to_string()),
            ],
        )
        .unwrap();
        load_str(
            Path::new("plan.yaml"),
            &format!("{MINIMAL}{extra}"),
            MigrationSource::Given(set),
        )
        .map_err(|d| d.0.iter().map(|d| d.to_string()).collect())
    }

    fn errors(extra: &str) -> Vec<String> {
        compile(extra).err().unwrap_or_default()
    }

    /// Exactly the diagnostics at `line:col`, each of which must contain `needle`
    /// (and there is at least one).
    fn assert_error(extra: &str, line: u32, col: u32, needle: &str) {
        let all = errors(extra);
        let prefix = format!("plan.yaml:{line}:{col}: ");
        assert!(
            all.iter()
                .any(|e| e.starts_with(&prefix) && e.contains(needle)),
            "no {needle:?} at {line}:{col} in {all:#?}"
        );
    }

    fn assert_only_error(extra: &str, line: u32, col: u32, needle: &str) {
        let all = errors(extra);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_error(extra, line, col, needle);
    }

    #[test]
    fn captured_changes_are_kept_thirty_days_unless_the_plan_says() {
        let keep = |extra: &str| compile(extra).unwrap().rollback.keep_captured_changes;
        assert_eq!(keep(""), Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(
            keep("rollback:\n  keep_captured_changes: 90d\n"),
            Some(Duration::from_secs(90 * 86_400))
        );
        assert_eq!(keep("rollback:\n  keep_captured_changes: forever\n"), None);
        assert_only_error(
            "rollback:\n  keep_captured_changes: 2h\n",
            11,
            26,
            "shorter than a day",
        );
        assert_only_error(
            "rollback:\n  keep_captured_changes: always\n",
            11,
            26,
            "keep_captured_changes",
        );
    }

    #[test]
    fn rehearsal_is_required_optional_or_absent() {
        assert!(!compile("").unwrap().rehearsal_required);
        assert!(!compile("rehearsal: optional\n").unwrap().rehearsal_required);
        assert!(compile("rehearsal: required\n").unwrap().rehearsal_required);
        assert_only_error(
            "rehearsal: requried\n",
            10,
            12,
            "`rehearsal` must be one of required, optional, found `requried`; did you mean `required`?",
        );
    }

    #[test]
    fn approval_defaults_to_not_required() {
        assert!(!compile("").unwrap().approval.required);
        assert!(!compile("approval: {}\n").unwrap().approval.required);
        assert!(
            compile("approval:\n  required: true\n")
                .unwrap()
                .approval
                .required
        );
    }

    #[test]
    fn bad_approval_settings_point_at_the_value() {
        assert_only_error(
            "approval:\n  required: yes\n",
            11,
            13,
            "`approval.required` must be true or false, found \"yes\"",
        );
        assert_only_error(
            "approval:\n  requird: true\n",
            11,
            3,
            "unknown key `requird` in `approval`; did you mean `required`?",
        );
        assert_only_error("approval: true\n", 10, 11, "`approval` must be a mapping");
        assert_only_error("approval:\n", 10, 1, "`approval` has no value");
        assert_only_error(
            "approve:\n  required: true\n",
            10,
            1,
            "did you mean `approval`?",
        );
    }

    fn window(deadline: &str) -> String {
        format!(
            "window:\n  cron: \"0 2 * * *\"\n  timezone: Europe/Berlin\n  duration: 2h\n  deadline: {deadline}\n"
        )
    }

    #[test]
    fn a_deadline_is_an_instant_with_its_offset() {
        let plan = compile(&window("2026-11-23T04:00:00+01:00")).unwrap();
        assert_eq!(
            plan.deadline,
            Some(Utc.with_ymd_and_hms(2026, 11, 23, 3, 0, 0).unwrap())
        );
        assert!(plan.window.is_some());
        let plan = compile(&window("\"2026-11-23T03:00:00.5Z\"")).unwrap();
        assert_eq!(
            plan.deadline.unwrap().timestamp_millis(),
            Utc.with_ymd_and_hms(2026, 11, 23, 3, 0, 0)
                .unwrap()
                .timestamp_millis()
                + 500
        );
        assert!(compile("").unwrap().deadline.is_none());
        assert!(
            compile(&window("x").replace("  deadline: x\n", ""))
                .unwrap()
                .deadline
                .is_none()
        );
    }

    #[test]
    fn a_deadline_without_an_offset_is_refused() {
        assert_only_error(
            &window("2026-11-23T04:00:00"),
            14,
            13,
            "`window.deadline` \"2026-11-23T04:00:00\" is a local time without a UTC offset",
        );
        assert_only_error(&window("2026-11-23 04:00"), 14, 13, "without a UTC offset");
        assert_only_error(
            &window("2026-11-23"),
            14,
            13,
            "is a date without a UTC offset",
        );
        assert_only_error(
            &window("next tuesday"),
            14,
            13,
            "is not an RFC 3339 timestamp",
        );
        assert_only_error(
            &window("2026-11-31T04:00:00Z"),
            14,
            13,
            "is not an RFC 3339 timestamp",
        );
        assert_only_error(&window("20261123"), 14, 13, "must be a string");
        assert_only_error(&window(""), 14, 3, "`window.deadline` has no value");
    }

    #[test]
    fn a_deadline_lives_in_the_window() {
        assert_only_error(
            "deadline: 2026-11-23T04:00:00+01:00\n",
            10,
            1,
            "unknown key `deadline`; `deadline` belongs in `window`",
        );
        // A broken window does not hide a broken deadline, nor the other way round.
        let all = errors(&window("tomorrow").replace("Europe/Berlin", "Europe/Berln"));
        assert_eq!(all.len(), 2, "{all:#?}");
        assert!(all[0].starts_with("plan.yaml:12:13: "), "{all:#?}");
        assert!(all[1].starts_with("plan.yaml:14:13: "), "{all:#?}");
    }

    const GATE: &str = "gate:\n  check:\n    name: busy\n    sql: SELECT count(*) FROM pg_stat_activity\n    max: 10\n";

    #[test]
    fn a_gate_gets_its_defaults() {
        let plan = compile(GATE).unwrap();
        let gate = plan.gate.expect("a gate");
        assert_eq!(gate.consecutive, 3);
        assert_eq!(gate.interval, Duration::from_secs(10));
        assert_eq!(gate.timeout, None);
        let c = &gate.check;
        assert_eq!(c.name, "busy");
        assert!(
            matches!(&c.source, CheckSource::Sql { query } if query.contains("pg_stat_activity"))
        );
        assert_eq!((c.thresholds.min, c.thresholds.max), (None, Some(10.0)));
        assert!(!c.thresholds.needs_baseline());
        // The gate's rules in the verdict rules' terms.
        assert_eq!(
            (c.consecutive, c.min_samples, c.max_inconclusive),
            (1, 3, 0)
        );
        assert_eq!(c.on_inconclusive, InconclusivePolicy::Ignore);
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert!(compile("").unwrap().gate.is_none());
    }

    #[test]
    fn a_gate_with_every_key() {
        let plan = compile(&format!(
            "{GATE}    timeout: 1s\n  consecutive: 5\n  interval: 2s\n  timeout: 10m\n"
        ))
        .unwrap();
        let gate = plan.gate.unwrap();
        assert_eq!(gate.consecutive, 5);
        assert_eq!(gate.interval, Duration::from_secs(2));
        assert_eq!(gate.timeout, Some(Duration::from_secs(600)));
        assert_eq!(gate.check.timeout, Duration::from_secs(1));
        assert_eq!(gate.check.min_samples, 5);
        // Any source a soak check has; the name may repeat a soak check's.
        let plan = compile(
            "gate:\n  check: {name: c, builtin: lock_waiting_sessions, max: 0}\n  interval: 500ms\n",
        )
        .unwrap();
        let gate = plan.gate.unwrap();
        assert!(matches!(
            gate.check.source,
            CheckSource::Builtin(BuiltinSignal::LockWaitingSessions)
        ));
        assert_eq!(gate.check.timeout, Duration::from_millis(500));
        let plan = compile(
            "gate:\n  check:\n    name: p99\n    http: {url: \"http://svc/metrics\", json_pointer: /p99}\n    min: 0\n    max: 250\n",
        )
        .unwrap();
        assert!(matches!(
            plan.gate.unwrap().check.source,
            CheckSource::Http(_)
        ));
    }

    #[test]
    fn a_gate_refuses_baseline_relative_thresholds() {
        // Line 15 is the first line after GATE.
        assert_only_error(
            &format!("{GATE}    max_increase: 20%\n"),
            15,
            19,
            "gate check `busy`: `max_increase` is relative to a baseline, and the gate has none",
        );
        assert_only_error(
            &format!("{GATE}    max_decrease: 2\n"),
            15,
            19,
            "`max_decrease` is relative to a baseline",
        );
        // Only relative thresholds: refused where they are written, not as "no threshold".
        let all = errors(
            "gate:\n  check:\n    name: busy\n    sql: SELECT 1\n    max_increase: 1\n    max_decrease: 1\n",
        );
        assert_eq!(all.len(), 2, "{all:#?}");
        assert!(all[0].starts_with("plan.yaml:14:19: "), "{all:#?}");
        assert!(all[1].starts_with("plan.yaml:15:19: "), "{all:#?}");
    }

    #[test]
    fn a_gate_check_refuses_the_soak_only_keys() {
        assert_only_error(
            &format!("{GATE}    consecutive: 2\n"),
            15,
            5,
            "gate check `busy`: `consecutive` has no effect on a gate",
        );
        let all = errors(&format!(
            "{GATE}    min_samples: 2\n    on_inconclusive: hold\n    max_inconclusive: 1\n"
        ));
        let positions: Vec<&str> = all.iter().map(|e| e.split(": ").next().unwrap()).collect();
        assert_eq!(
            positions,
            ["plan.yaml:15:5", "plan.yaml:16:5", "plan.yaml:17:5"],
            "{all:#?}"
        );
        assert!(all.iter().all(|e| e.contains("has no effect on a gate")));
    }

    #[test]
    fn a_gate_check_follows_the_soak_check_rules() {
        assert_only_error(
            "gate:\n  check:\n    name: busy\n    sql: SELECT 1\n",
            11,
            3,
            "gate check `busy` has no threshold",
        );
        assert_only_error(
            "gate:\n  check:\n    name: busy\n    max: 1\n",
            11,
            3,
            "gate check `busy` measures nothing",
        );
        assert_only_error(
            "gate:\n  check:\n    sql: SELECT 1\n    max: 1\n",
            11,
            3,
            "missing required key `name` in `gate.check`",
        );
        assert_only_error(
            "gate:\n  check:\n    name: busy\n    sql: DELETE FROM t\n    max: 1\n",
            13,
            10,
            "found DELETE",
        );
        assert_only_error(
            &format!("{GATE}    min: 20\n"),
            15,
            10,
            "`min` (20) is greater than `max` (10)",
        );
        assert_only_error(
            "gate:\n  check: {name: w, builtin: lock_waiting_sessions, max: -1}\n",
            11,
            57,
            "never negative",
        );
        assert_only_error(
            &format!("{GATE}    timeout: 11s\n"),
            15,
            14,
            "`timeout` 11s is longer than `gate.interval` 10s",
        );
        // The default per-sample timeout follows the gate's interval.
        let plan = compile(&format!("{GATE}  interval: 1s\n")).unwrap();
        assert_eq!(plan.gate.unwrap().check.timeout, Duration::from_secs(1));
    }

    #[test]
    fn bad_gate_settings_point_at_the_value() {
        // Line 15 is the first line after GATE.
        assert_only_error(
            &format!("{GATE}  consecutive: 0\n"),
            15,
            16,
            "`gate.consecutive` must be between 1 and 1000, found 0",
        );
        assert_only_error(
            &format!("{GATE}  consecutive: 1001\n"),
            15,
            16,
            "between 1 and 1000",
        );
        assert_only_error(
            &format!("{GATE}  interval: 0s\n"),
            15,
            13,
            "`gate.interval` must be greater than 0",
        );
        assert_only_error(
            &format!("{GATE}  timeout: 0s\n"),
            15,
            12,
            "`gate.timeout` must be greater than 0",
        );
        assert_only_error(&format!("{GATE}  timeout: 10\n"), 15, 12, "10 has no unit");
        assert_only_error("gate:\n", 10, 1, "`gate` has no value");
        assert_only_error("gate: on\n", 10, 7, "`gate` must be a mapping");
        assert_only_error(
            "gate:\n  consecutive: 2\n",
            10,
            1,
            "missing required key `check` in `gate`",
        );
        assert_only_error(
            "gate:\n  check: SELECT 1\n",
            11,
            10,
            "`gate.check` must be a mapping",
        );
    }

    #[test]
    fn misplaced_gate_keys_say_where_they_belong() {
        assert_error(
            &GATE.replace("  check:", "  checks:"),
            11,
            3,
            "unknown key `checks` in `gate`; did you mean `check`?",
        );
        assert_only_error(
            "gate:\n  sql: SELECT 1\n  check: {name: c, sql: SELECT 1, max: 1}\n",
            11,
            3,
            "unknown key `sql` in `gate`; `sql` belongs in `soak.checks[]` or `gate.check`",
        );
        assert_only_error(
            &format!("{GATE}    intervall: 1s\n"),
            15,
            5,
            "unknown key `intervall` in `gate.check`",
        );
        assert_only_error(
            "gate:\n  check: {name: c, http: {url: \"http://x\", status: 200}, max: 1}\n",
            11,
            44,
            "unknown key `status` in `gate.check.http`",
        );
    }

    #[test]
    fn a_gate_that_can_never_open_is_refused() {
        assert_only_error(
            &format!("{GATE}  consecutive: 5\n  interval: 2s\n  timeout: 10s\n"),
            17,
            12,
            "`gate.timeout` 10s is too short for the gate ever to open: it opens 10s after it starts at the earliest (5 healthy samples, one every 2s)",
        );
        assert!(
            compile(&format!(
                "{GATE}  consecutive: 5\n  interval: 2s\n  timeout: 11s\n"
            ))
            .is_ok()
        );
        // The default 3 x 10s against a 20s window: points at the gate, nothing was written.
        let short_window = "window:\n  cron: \"0 2 * * *\"\n  timezone: UTC\n  duration: 20s\n";
        assert_only_error(
            &format!("{short_window}{GATE}"),
            14,
            1,
            "the gate can never open inside the window: it opens 30s after it starts at the earliest (3 healthy \
             samples, one every 10s), but `window.duration` is 20s",
        );
        assert_only_error(
            &format!("{short_window}{GATE}  interval: 8s\n"),
            19,
            13,
            "can never open inside the window",
        );
        assert_only_error(
            &format!("{short_window}{GATE}  consecutive: 4\n  interval: 5s\n"),
            19,
            16,
            "can never open inside the window",
        );
        assert!(compile(&format!("{short_window}{GATE}  interval: 6s\n")).is_ok());
    }

    #[test]
    fn gate_errors_do_not_hide_other_errors() {
        let all = errors(&format!(
            "{GATE}    max_increase: 5%\n  interval: 1x\nstatement_timeout: 5 min\napproval:\n  required: 1\n"
        ));
        let positions: Vec<&str> = all.iter().map(|e| e.split(": ").next().unwrap()).collect();
        assert_eq!(
            positions,
            [
                "plan.yaml:15:19",
                "plan.yaml:16:13",
                "plan.yaml:17:20",
                "plan.yaml:19:13"
            ],
            "{all:#?}"
        );
    }
}
