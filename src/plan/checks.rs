//! Compiling checks: the soak section and each check in it (also the
//! low-traffic gate's check, which [`compile_check`] compiles minus what a gate
//! cannot use). Part of stage two of plan loading (see `compile`).

use std::collections::HashMap;
use std::time::Duration;

use super::compile::{CHECK_KEYS, HTTP_KEYS, checked_name, defaults};
use super::duration;
use super::model::*;
use super::tree::{Node, Value};
use super::walk::{At, Pos, Section, Sink, describe};

/// The soak settings, and its timing whenever that is valid (even if a check is not),
/// so that the rollback rules can still be checked against the interval.
pub(super) fn compile_soak(sink: &mut Sink, s: &Section) -> (Option<SoakSettings>, Option<Timing>) {
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
                    let home = CheckHome::Soak { index: i, timing };
                    match compile_check(sink, item, home, interval_v, &mut names) {
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
pub(super) struct Timing {
    pub duration: Duration,
    pub interval: Duration,
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

/// Where a check is written. Soak checks and the gate's check share their keys and
/// rules, except where the gate has no use for them: there is no baseline before
/// the gate, and the gate's own `consecutive` decides when it opens.
#[derive(Clone, Copy)]
pub(super) enum CheckHome {
    /// Entry `index` of `soak.checks`; `timing` when the soak's clock is valid.
    Soak {
        index: usize,
        timing: Option<Timing>,
    },
    /// `gate.check`, written at `key`, with the gate's (possibly default) `consecutive`.
    Gate { consecutive: u32, key: Pos },
}

/// Keys of a check that only mean something to the soak's verdict rules.
const SOAK_ONLY_CHECK_KEYS: &[&str] = &[
    "consecutive",
    "min_samples",
    "on_inconclusive",
    "max_inconclusive",
];

/// Compile one check. `interval` is how often it is sampled (`soak.interval` or
/// `gate.interval`); `names` holds the names already used in the same list.
pub(super) fn compile_check(
    sink: &mut Sink,
    node: &Node,
    home: CheckHome,
    interval: Duration,
    names: &mut HashMap<String, Pos>,
) -> Option<Check> {
    let (path, timing, interval_key) = match home {
        CheckHome::Soak { index, timing } => {
            (format!("soak.checks[{index}]"), timing, "soak.interval")
        }
        CheckHome::Gate { .. } => ("gate.check".to_string(), None, "gate.interval"),
    };
    let pos = match home {
        CheckHome::Soak { .. } => Pos::of(node),
        // Like every other section, the gate's check is located at its key.
        CheckHome::Gate { key, .. } => key,
    };
    let s = Section::open(sink, node, &path, pos, CHECK_KEYS)?;
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
    let label = match (&name, home) {
        (Some(n), CheckHome::Soak { .. }) => format!("check `{n}`"),
        (Some(n), CheckHome::Gate { .. }) => format!("gate check `{n}`"),
        (None, _) => format!("`{path}`"),
    };

    let source = compile_source(sink, &s, &label);

    let min = s.number(sink, "min");
    let max = s.number(sink, "max");
    let max_increase = delta(sink, &s, "max_increase");
    let max_decrease = delta(sink, &s, "max_decrease");
    if let CheckHome::Gate { consecutive, .. } = home {
        for (key, d) in [
            ("max_increase", &max_increase),
            ("max_decrease", &max_decrease),
        ] {
            if let Some(d) = d {
                sink.error(
                    d.pos,
                    format!(
                        "{label}: `{key}` is relative to a baseline, and the gate has none: it decides \
                         before the baseline is measured; use an absolute `min` or `max`"
                    ),
                );
            }
        }
        for key in SOAK_ONLY_CHECK_KEYS.iter().filter(|k| s.has(k)) {
            sink.error(
                s.key_pos(key),
                format!(
                    "{label}: `{key}` has no effect on a gate, whose check does not breach: the gate opens \
                     after `gate.consecutive` ({consecutive}) healthy samples in a row, and a breaching or \
                     inconclusive sample starts the count again; remove it"
                ),
            );
        }
    }
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
                "{label}: `timeout` {} is longer than `{interval_key}` {}; a sample must finish before the next one",
                duration::format(t.value),
                duration::format(interval)
            ),
        );
    }

    if sink.diagnostics.len() != before {
        return None;
    }
    if let CheckHome::Gate { consecutive, .. } = home {
        // What the gate does, in the verdict rules' terms: one breaching sample or
        // one inconclusive sample starts the count again, and it takes
        // `consecutive` valid samples to open. Nothing ever breaches or holds.
        return Some(Check {
            name: name?,
            source: source?,
            thresholds: Thresholds {
                min: min.map(|m| m.value),
                max: max.map(|m| m.value),
                max_increase: None,
                max_decrease: None,
            },
            consecutive: 1,
            min_samples: consecutive,
            on_inconclusive: InconclusivePolicy::Ignore,
            max_inconclusive: 0,
            timeout: timeout.map_or(default_timeout, |t| t.value),
        });
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

/// Why a check's `sql` is not a single query; read after "`sql` ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum QueryShapeError {
    #[error("must be a single SELECT statement returning one number, found {0} statements")]
    Statements(usize),
    /// `first_word` is empty when the statement does not start with a word.
    #[error(
        "must be a query (SELECT, WITH, VALUES or TABLE) returning one number, found {}",
        if .first_word.is_empty() { "something else" } else { .first_word.as_str() }
    )]
    NotAQuery { first_word: String },
}

/// A check query is one read-only statement returning one value.
fn single_select(sql: &str) -> Result<(), QueryShapeError> {
    let statements = crate::migrations::split::statements(sql);
    if statements.len() != 1 {
        return Err(QueryShapeError::Statements(statements.len()));
    }
    let first_word: String = strip_leading_comments(&statements[0])
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase();
    if !matches!(first_word.as_str(), "SELECT" | "WITH" | "VALUES" | "TABLE") {
        return Err(QueryShapeError::NotAQuery { first_word });
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
