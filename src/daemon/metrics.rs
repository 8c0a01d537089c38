//! Prometheus text (exposition format 0.0.4) for `GET /metrics`.
//!
//! No metrics crate: the series are few and known, and a hand-written registry
//! keeps [`Metrics::observe_event`] — called for every event of every run this
//! daemon drives, hundreds of runs at once — to one uncontended lock and a few
//! hash lookups that allocate only the first time a label set is seen.
//!
//! Series (all names start with `pgshepherd_`):
//!
//! | series | type | labels |
//! |---|---|---|
//! | `build_info` | gauge | version |
//! | `runs` | gauge | phase, state (from the state database at scrape time) |
//! | `step_duration_seconds` | histogram | step |
//! | `check_value` | gauge | run_id, target, check (NaN while inconclusive) |
//! | `check_samples_total` | counter | target, check, result (`valid` / `inconclusive`) |
//! | `breaches_total` | counter | target, check |
//! | `rollbacks_total` | counter | target, strategy |
//! | `runs_finished_total` | counter | target, outcome |
//! | `api_requests_total` | counter | route, status |
//! | `api_request_duration_seconds` | histogram | route |
//! | `notifications_delivered_total`, `_failed_total`, `_retries_total`, `_dropped_total` | counter | channel |
//! | `notifications_pending` | gauge | channel (from the state database at scrape time) |
//! | `channel_disabled` | gauge | channel (1 after a 410 Gone) |
//!
//! Counters count what *this* daemon observed since it started; with several
//! replicas, sum them across instances. Per-run series (`check_value`) live until
//! [`Metrics::forget_run`], so their cardinality is bounded by the runs this daemon
//! drives.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};

use crate::checks::verdict::Verdict;
use crate::run::event::{Event, EventKind, Step};

/// Step durations range from a lock taken in milliseconds to a window awaited for
/// days; soaks are typically an hour.
const STEP_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
    86400.0, 259200.0, 604800.0,
];

/// API latencies, measured until the response head is ready (an event stream's
/// body keeps flowing after that; slow buckets are for a slow state database).
const API_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0,
];

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Per run: the step it is in and per-check values. Dropped by `forget_run`.
    runs: HashMap<String, RunSeries>,
    /// Per target, then per check.
    checks: HashMap<String, HashMap<String, CheckCounters>>,
    /// Per target, then per strategy / outcome name.
    rollbacks: HashMap<String, HashMap<&'static str, u64>>,
    finished: HashMap<String, HashMap<&'static str, u64>>,
    /// Per step name.
    step_durations: HashMap<String, Histogram>,
    /// Per route, then per status.
    api_requests: HashMap<String, HashMap<u16, u64>>,
    api_durations: HashMap<String, Histogram>,
}

struct RunSeries {
    target: String,
    /// The step the run is in and the time of its first event in that step.
    step: Option<(Step, DateTime<Utc>)>,
    /// The last sample of each check; NaN when it had no value.
    check_values: HashMap<String, f64>,
}

#[derive(Default)]
struct CheckCounters {
    valid: u64,
    inconclusive: u64,
    breaches: u64,
}

struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); one more than `bounds` for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// A poisoned lock only means another thread panicked mid-update of a counter;
    /// metrics must never take the daemon down with it.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every event of every run this daemon drives passes through here.
    pub fn observe_event(&self, target: &str, event: &Event) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let run = match inner.runs.get_mut(event.run_id.as_str()) {
            Some(r) => r,
            None => inner
                .runs
                .entry(event.run_id.clone())
                .or_insert_with(|| RunSeries {
                    target: target.to_string(),
                    step: None,
                    check_values: HashMap::new(),
                }),
        };

        // A step lasts from its first event until the first event of another step
        // (or the end of the run). Events without a step change nothing.
        if let Some(step) = event.step {
            match run.step {
                Some((current, _)) if current == step => {}
                previous => {
                    if let Some((prev, since)) = previous {
                        observe_step(&mut inner.step_durations, prev, since, event.ts);
                    }
                    run.step = Some((step, event.ts));
                }
            }
        }

        match &event.kind {
            EventKind::CheckSample { assessment, .. } => {
                let value = assessment.value.unwrap_or(f64::NAN);
                match run.check_values.get_mut(assessment.check.as_str()) {
                    Some(v) => *v = value,
                    None => {
                        run.check_values.insert(assessment.check.clone(), value);
                    }
                }
                let c = check_counters(&mut inner.checks, target, &assessment.check);
                if assessment.valid {
                    c.valid += 1;
                } else {
                    c.inconclusive += 1;
                }
            }
            EventKind::CheckVerdict { check, verdict, .. } => {
                if matches!(verdict, Verdict::Breach { .. }) {
                    check_counters(&mut inner.checks, target, check).breaches += 1;
                }
            }
            EventKind::RollbackStarted { strategy, .. } => {
                *by_target(&mut inner.rollbacks, target)
                    .entry(strategy.as_str())
                    .or_default() += 1;
            }
            EventKind::RunFinished { outcome, .. } => {
                if let Some((prev, since)) = run.step.take() {
                    observe_step(&mut inner.step_durations, prev, since, event.ts);
                }
                *by_target(&mut inner.finished, target)
                    .entry(outcome.as_str())
                    .or_default() += 1;
            }
            _ => {}
        }
    }

    /// The run is no longer driven by this daemon: drop its per-run series.
    pub fn forget_run(&self, run_id: &str) {
        self.lock().runs.remove(run_id);
    }

    /// One API request answered. `route` is the route template
    /// (`/v1/runs/{id}`), never the concrete path, to keep the label set bounded.
    pub fn observe_api(&self, route: &str, status: u16, seconds: f64) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        *by_target(&mut inner.api_requests, route)
            .entry(status)
            .or_default() += 1;
        match inner.api_durations.get_mut(route) {
            Some(h) => h.observe(seconds),
            None => {
                let mut h = Histogram::new(API_BUCKETS);
                h.observe(seconds);
                inner.api_durations.insert(route.to_string(), h);
            }
        }
    }

    /// The exposition text; `runs_by_phase_state` comes from the state database
    /// as `(phase, state_name, count)`.
    pub fn render(&self, runs_by_phase_state: &[(String, String, i64)]) -> String {
        let mut out = String::with_capacity(4096);
        let w = &mut out;

        family(
            w,
            "pgshepherd_build_info",
            "gauge",
            "The pgshepherd version of this daemon (always 1).",
        );
        sample(
            w,
            "pgshepherd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            "1",
        );

        family(
            w,
            "pgshepherd_runs",
            "gauge",
            "Runs in the state database by phase and state (all daemons).",
        );
        let mut runs: Vec<_> = runs_by_phase_state.iter().collect();
        runs.sort();
        for (phase, state, n) in runs {
            sample(
                w,
                "pgshepherd_runs",
                &[("phase", phase), ("state", state)],
                &n.to_string(),
            );
        }

        // Copy out under the lock, format after: a scrape must not hold up events.
        let snapshot = self.snapshot();

        family(
            w,
            "pgshepherd_step_duration_seconds",
            "histogram",
            "Time runs driven by this daemon spent in each step, from the step's first event to the next step's.",
        );
        for (step, h) in &snapshot.step_durations {
            histogram(w, "pgshepherd_step_duration_seconds", ("step", step), h);
        }

        family(
            w,
            "pgshepherd_check_value",
            "gauge",
            "The last sample of each check of each run this daemon drives (NaN when it was inconclusive).",
        );
        for (run_id, target, check, v) in &snapshot.check_values {
            sample(
                w,
                "pgshepherd_check_value",
                &[("run_id", run_id), ("target", target), ("check", check)],
                &float(*v),
            );
        }

        family(
            w,
            "pgshepherd_check_samples_total",
            "counter",
            "Check samples taken, valid or inconclusive (no usable number).",
        );
        for (target, check, c) in &snapshot.checks {
            for (result, n) in [("valid", c.0), ("inconclusive", c.1)] {
                sample(
                    w,
                    "pgshepherd_check_samples_total",
                    &[("target", target), ("check", check), ("result", result)],
                    &n.to_string(),
                );
            }
        }

        family(
            w,
            "pgshepherd_breaches_total",
            "counter",
            "Check verdicts that were a breach.",
        );
        for (target, check, c) in &snapshot.checks {
            if c.2 > 0 {
                sample(
                    w,
                    "pgshepherd_breaches_total",
                    &[("target", target), ("check", check)],
                    &c.2.to_string(),
                );
            }
        }

        family(
            w,
            "pgshepherd_rollbacks_total",
            "counter",
            "Rollbacks started, by strategy.",
        );
        for (target, strategy, n) in &snapshot.rollbacks {
            sample(
                w,
                "pgshepherd_rollbacks_total",
                &[("target", target), ("strategy", strategy)],
                &n.to_string(),
            );
        }

        family(
            w,
            "pgshepherd_runs_finished_total",
            "counter",
            "Runs finished by this daemon, by outcome.",
        );
        for (target, outcome, n) in &snapshot.finished {
            sample(
                w,
                "pgshepherd_runs_finished_total",
                &[("target", target), ("outcome", outcome)],
                &n.to_string(),
            );
        }

        family(
            w,
            "pgshepherd_api_requests_total",
            "counter",
            "HTTP API requests answered, by route template and status.",
        );
        for (route, status, n) in &snapshot.api_requests {
            sample(
                w,
                "pgshepherd_api_requests_total",
                &[("route", route), ("status", &status.to_string())],
                &n.to_string(),
            );
        }

        family(
            w,
            "pgshepherd_api_request_duration_seconds",
            "histogram",
            "HTTP API request durations, by route template.",
        );
        for (route, h) in &snapshot.api_durations {
            histogram(
                w,
                "pgshepherd_api_request_duration_seconds",
                ("route", route),
                h,
            );
        }

        out
    }

    /// The notification series: delivery counters per channel from `stats`, and
    /// the outbox's pending rows per channel (read from the state database at
    /// scrape time, so they cover every replica).
    pub fn render_notifications(
        &self,
        out: &mut String,
        stats: &crate::notify::outbox::DeliveryStats,
        pending: &[(String, i64)],
    ) {
        let w = out;
        let channels = stats.snapshot();
        type Counter = fn(&crate::notify::outbox::ChannelStats) -> u64;
        let counters: [(&str, &str, Counter); 4] = [
            (
                "pgshepherd_notifications_delivered_total",
                "Notifications a receiver accepted (2xx), by channel.",
                |s| s.delivered.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "pgshepherd_notifications_failed_total",
                "Notifications given up on (rejected, 410, or past max_age), by channel.",
                |s| s.failed.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "pgshepherd_notifications_retries_total",
                "Delivery attempts that will be retried (network error, timeout, 408/425/429/5xx), by channel.",
                |s| s.retries.load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "pgshepherd_notifications_dropped_total",
                "Notifications not sent because their channel is disabled, by channel.",
                |s| s.dropped.load(std::sync::atomic::Ordering::Relaxed),
            ),
        ];
        for (name, help, get) in counters {
            family(w, name, "counter", help);
            for (channel, s) in &channels {
                sample(w, name, &[("channel", channel)], &get(s).to_string());
            }
        }
        family(
            w,
            "pgshepherd_channel_disabled",
            "gauge",
            "1 while a channel is disabled because its receiver answered 410 Gone.",
        );
        for (channel, s) in &channels {
            let v = s.disabled.load(std::sync::atomic::Ordering::Relaxed);
            sample(
                w,
                "pgshepherd_channel_disabled",
                &[("channel", channel)],
                &v.to_string(),
            );
        }
        family(
            w,
            "pgshepherd_notifications_pending",
            "gauge",
            "Notifications waiting in the outbox (all replicas), by channel.",
        );
        for (channel, n) in pending {
            sample(
                w,
                "pgshepherd_notifications_pending",
                &[("channel", channel)],
                &n.to_string(),
            );
        }
    }

    fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        let mut s = Snapshot::default();
        for (run_id, run) in &inner.runs {
            for (check, v) in &run.check_values {
                s.check_values
                    .push((run_id.clone(), run.target.clone(), check.clone(), *v));
            }
        }
        for (target, checks) in &inner.checks {
            for (check, c) in checks {
                s.checks.push((
                    target.clone(),
                    check.clone(),
                    (c.valid, c.inconclusive, c.breaches),
                ));
            }
        }
        for (target, m) in &inner.rollbacks {
            for (strategy, n) in m {
                s.rollbacks.push((target.clone(), strategy, *n));
            }
        }
        for (target, m) in &inner.finished {
            for (outcome, n) in m {
                s.finished.push((target.clone(), outcome, *n));
            }
        }
        for (route, m) in &inner.api_requests {
            for (status, n) in m {
                s.api_requests.push((route.clone(), *status, *n));
            }
        }
        let hist = |h: &Histogram| HistogramSnapshot {
            bounds: h.bounds,
            counts: h.counts.clone(),
            sum: h.sum,
            count: h.count,
        };
        s.step_durations = inner
            .step_durations
            .iter()
            .map(|(k, h)| (k.clone(), hist(h)))
            .collect();
        s.api_durations = inner
            .api_durations
            .iter()
            .map(|(k, h)| (k.clone(), hist(h)))
            .collect();
        drop(inner);
        s.sort();
        s
    }
}

/// The series copied out of the lock, sorted for a stable exposition.
#[derive(Default)]
struct Snapshot {
    check_values: Vec<(String, String, String, f64)>,
    /// (target, check, (valid, inconclusive, breaches))
    checks: Vec<(String, String, (u64, u64, u64))>,
    rollbacks: Vec<(String, &'static str, u64)>,
    finished: Vec<(String, &'static str, u64)>,
    api_requests: Vec<(String, u16, u64)>,
    step_durations: Vec<(String, HistogramSnapshot)>,
    api_durations: Vec<(String, HistogramSnapshot)>,
}

impl Snapshot {
    fn sort(&mut self) {
        self.check_values
            .sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        self.checks.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        self.rollbacks.sort();
        self.finished.sort();
        self.api_requests.sort();
        self.step_durations.sort_by(|a, b| a.0.cmp(&b.0));
        self.api_durations.sort_by(|a, b| a.0.cmp(&b.0));
    }
}

struct HistogramSnapshot {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

fn observe_step(
    durations: &mut HashMap<String, Histogram>,
    step: Step,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) {
    // Events of one run come from one daemon at a time, but after a takeover the
    // clock is another machine's: a negative duration is skew, not data.
    let Ok(d) = (until - since).to_std() else {
        return;
    };
    let name = step_name(step);
    match durations.get_mut(name.as_str()) {
        Some(h) => h.observe(d.as_secs_f64()),
        None => {
            let mut h = Histogram::new(STEP_BUCKETS);
            h.observe(d.as_secs_f64());
            durations.insert(name, h);
        }
    }
}

/// The step's name as it appears in events (`soak`, `rollback`, ...). Taken from
/// serde so that a new step needs no change here; only computed at step changes.
fn step_name(step: Step) -> String {
    match serde_json::to_value(step) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{step:?}").to_lowercase(),
    }
}

fn check_counters<'a>(
    checks: &'a mut HashMap<String, HashMap<String, CheckCounters>>,
    target: &str,
    check: &str,
) -> &'a mut CheckCounters {
    let per_target = by_target(checks, target);
    if !per_target.contains_key(check) {
        per_target.insert(check.to_string(), CheckCounters::default());
    }
    per_target.get_mut(check).expect("inserted above")
}

/// The inner map for `key`, allocating the key only the first time it is seen.
fn by_target<'a, V: Default>(map: &'a mut HashMap<String, V>, key: &str) -> &'a mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), V::default());
    }
    map.get_mut(key).expect("inserted above")
}

fn family(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(w, "# TYPE {name} {kind}");
}

fn sample(w: &mut String, name: &str, labels: &[(&str, &str)], value: &str) {
    w.push_str(name);
    if !labels.is_empty() {
        w.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                w.push(',');
            }
            w.push_str(k);
            w.push_str("=\"");
            escape_label_into(w, v);
            w.push('"');
        }
        w.push('}');
    }
    w.push(' ');
    w.push_str(value);
    w.push('\n');
}

fn histogram(w: &mut String, name: &str, label: (&str, &str), h: &HistogramSnapshot) {
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (i, n) in h.counts.iter().enumerate() {
        cumulative += n;
        let le = h.bounds.get(i).map(|b| float(*b)).unwrap_or("+Inf".into());
        sample(w, &bucket, &[label, ("le", &le)], &cumulative.to_string());
    }
    sample(w, &format!("{name}_sum"), &[label], &float(h.sum));
    sample(w, &format!("{name}_count"), &[label], &h.count.to_string());
}

/// A float as Prometheus reads it (Go's ParseFloat): `NaN`, `+Inf`, `-Inf`, or a
/// plain decimal.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape_label_into(w: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => w.push_str("\\\\"),
            '"' => w.push_str("\\\""),
            '\n' => w.push_str("\\n"),
            c => w.push(c),
        }
    }
}

/// HELP text escapes backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::time::Duration;

    use chrono::TimeZone;

    use super::*;
    use crate::checks::verdict::{CheckState, Observation};
    use crate::plan::RollbackStrategy;
    use crate::plan::model::{Check, CheckSource, InconclusivePolicy, Thresholds};
    use crate::run::event::Outcome;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 2, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    fn event(run_id: &str, secs: i64, step: Option<Step>, kind: EventKind) -> Event {
        Event {
            ts: at(secs),
            run_id: run_id.to_string(),
            step,
            kind,
        }
    }

    fn share_check() -> Check {
        Check {
            name: "cancel_reason_share".to_string(),
            source: CheckSource::Sql {
                query: "SELECT 1".to_string(),
            },
            thresholds: Thresholds {
                max: Some(0.5),
                ..Default::default()
            },
            consecutive: 2,
            min_samples: 2,
            on_inconclusive: InconclusivePolicy::Breach,
            max_inconclusive: 5,
            timeout: Duration::from_secs(1),
        }
    }

    fn finished(run_id: &str, secs: i64, outcome: Outcome) -> Event {
        event(
            run_id,
            secs,
            None,
            EventKind::RunFinished {
                outcome,
                reason: None,
                exit_code: outcome.exit_code(),
                applied: vec![],
                backup: None,
                journal: None,
            },
        )
    }

    /// A breaching soak on "jobs": lock 2 s, soak 90 s with samples 0.2, NULL, 0.7,
    /// 0.8 (breach), rollback by down scripts for 10 s, rolled back.
    fn breaching_run(m: &Metrics, run_id: &str) {
        let mut state = CheckState::new(&share_check(), None);
        m.observe_event(
            "jobs",
            &event(
                run_id,
                0,
                Some(Step::Lock),
                EventKind::LockAcquired { waited_ms: 3 },
            ),
        );
        m.observe_event(
            "jobs",
            &event(
                run_id,
                2,
                Some(Step::Soak),
                EventKind::SoakStarted {
                    duration_s: 3600.0,
                    interval_s: 30.0,
                    checks: vec![],
                },
            ),
        );
        let samples = [
            Observation::Value(0.2),
            Observation::inconclusive("NULL"),
            Observation::Value(0.7),
            Observation::Value(0.8),
        ];
        for (i, o) in samples.iter().enumerate() {
            let assessment = state.observe(o);
            let verdict = assessment.verdict.clone();
            m.observe_event(
                "jobs",
                &event(
                    run_id,
                    2 + 30 * (i as i64 + 1),
                    Some(Step::Soak),
                    EventKind::CheckSample {
                        late_ms: None,
                        elapsed_s: 30.0 * (i as f64 + 1.0),
                        sample_ms: 1.5,
                        assessment,
                    },
                ),
            );
            if let Some(verdict) = verdict {
                m.observe_event(
                    "jobs",
                    &event(
                        run_id,
                        92,
                        Some(Step::Soak),
                        EventKind::CheckVerdict {
                            check: verdict.check().to_string(),
                            source: "SELECT 1".into(),
                            message: verdict.message(),
                            decision: crate::run::event::Decision::RollBack,
                            verdict,
                        },
                    ),
                );
            }
        }
        m.observe_event(
            "jobs",
            &event(
                run_id,
                92,
                Some(Step::Rollback),
                EventKind::RollbackStarted {
                    strategy: RollbackStrategy::Down,
                    cause: "breach".into(),
                    undo: vec![3],
                },
            ),
        );
        m.observe_event("jobs", &finished(run_id, 102, Outcome::RolledBack));
    }

    #[test]
    fn a_breaching_run_shows_up_in_every_series_it_touches() {
        let m = Metrics::new();
        breaching_run(&m, "r-1");
        m.observe_api("/v1/runs/{id}", 200, 0.004);
        m.observe_api("/v1/runs/{id}", 404, 0.002);
        let text = m.render(&[
            ("active".into(), "soaking".into(), 3),
            ("finished".into(), "rolled_back".into(), 1),
        ]);
        validate_exposition(&text);

        for line in [
            r#"pgshepherd_build_info{version="0.1.0"} 1"#,
            r#"pgshepherd_runs{phase="active",state="soaking"} 3"#,
            r#"pgshepherd_runs{phase="finished",state="rolled_back"} 1"#,
            r#"pgshepherd_check_value{run_id="r-1",target="jobs",check="cancel_reason_share"} 0.8"#,
            r#"pgshepherd_check_samples_total{target="jobs",check="cancel_reason_share",result="valid"} 3"#,
            r#"pgshepherd_check_samples_total{target="jobs",check="cancel_reason_share",result="inconclusive"} 1"#,
            r#"pgshepherd_breaches_total{target="jobs",check="cancel_reason_share"} 1"#,
            r#"pgshepherd_rollbacks_total{target="jobs",strategy="down"} 1"#,
            r#"pgshepherd_runs_finished_total{target="jobs",outcome="rolled_back"} 1"#,
            // Lock 0 → 2 s: in the 5 s bucket, not the 1 s one.
            r#"pgshepherd_step_duration_seconds_bucket{step="lock",le="1"} 0"#,
            r#"pgshepherd_step_duration_seconds_bucket{step="lock",le="5"} 1"#,
            r#"pgshepherd_step_duration_seconds_sum{step="lock"} 2"#,
            // Soak 2 → 92 s.
            r#"pgshepherd_step_duration_seconds_bucket{step="soak",le="60"} 0"#,
            r#"pgshepherd_step_duration_seconds_bucket{step="soak",le="120"} 1"#,
            r#"pgshepherd_step_duration_seconds_sum{step="soak"} 90"#,
            // Rollback 92 → 102 s, closed by run_finished.
            r#"pgshepherd_step_duration_seconds_sum{step="rollback"} 10"#,
            r#"pgshepherd_step_duration_seconds_count{step="rollback"} 1"#,
            r#"pgshepherd_api_requests_total{route="/v1/runs/{id}",status="200"} 1"#,
            r#"pgshepherd_api_requests_total{route="/v1/runs/{id}",status="404"} 1"#,
            r#"pgshepherd_api_request_duration_seconds_bucket{route="/v1/runs/{id}",le="0.0025"} 1"#,
            r#"pgshepherd_api_request_duration_seconds_bucket{route="/v1/runs/{id}",le="0.005"} 2"#,
            r#"pgshepherd_api_request_duration_seconds_count{route="/v1/runs/{id}"} 2"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing line {line}\n--- in ---\n{text}"
            );
        }
    }

    #[test]
    fn forget_run_drops_the_runs_check_values_but_keeps_the_counters() {
        let m = Metrics::new();
        breaching_run(&m, "r-1");
        breaching_run(&m, "r-2");
        m.forget_run("r-1");
        let text = m.render(&[]);
        validate_exposition(&text);
        assert!(!text.contains(r#"run_id="r-1""#), "{text}");
        assert!(text.contains(r#"run_id="r-2""#), "{text}");
        assert!(text.contains(
            r#"pgshepherd_check_samples_total{target="jobs",check="cancel_reason_share",result="valid"} 6"#
        ));
        assert!(
            text.contains(
                r#"pgshepherd_runs_finished_total{target="jobs",outcome="rolled_back"} 2"#
            )
        );
    }

    #[test]
    fn an_inconclusive_sample_makes_the_value_nan_not_the_last_good_one() {
        let m = Metrics::new();
        let mut state = CheckState::new(&share_check(), None);
        for o in [Observation::Value(0.2), Observation::inconclusive("NULL")] {
            m.observe_event(
                "jobs",
                &event(
                    "r-1",
                    1,
                    Some(Step::Soak),
                    EventKind::CheckSample {
                        late_ms: None,
                        elapsed_s: 1.0,
                        sample_ms: 1.0,
                        assessment: state.observe(&o),
                    },
                ),
            );
        }
        let text = m.render(&[]);
        validate_exposition(&text);
        assert!(text.contains(
            r#"pgshepherd_check_value{run_id="r-1",target="jobs",check="cancel_reason_share"} NaN"#
        ));
    }

    #[test]
    fn a_step_ends_at_the_first_event_of_another_step_only() {
        let m = Metrics::new();
        let lock = |secs| {
            event(
                "r-1",
                secs,
                Some(Step::Lock),
                EventKind::LockAcquired { waited_ms: 0 },
            )
        };
        m.observe_event("jobs", &lock(0));
        m.observe_event("jobs", &lock(40));
        // A step-less event (an approval) neither ends nor starts a step.
        m.observe_event(
            "jobs",
            &event(
                "r-1",
                50,
                None,
                EventKind::RunApproved {
                    approved_by: "alice".into(),
                },
            ),
        );
        m.observe_event("jobs", &finished("r-1", 70, Outcome::Stopped));
        // Nothing left to close: a second run_finished observes nothing.
        m.observe_event("jobs", &finished("r-1", 80, Outcome::Stopped));
        let text = m.render(&[]);
        validate_exposition(&text);
        assert!(text.contains(r#"pgshepherd_step_duration_seconds_sum{step="lock"} 70"#));
        assert!(text.contains(r#"pgshepherd_step_duration_seconds_count{step="lock"} 1"#));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.observe_api("/odd\"route\\with\nnewline", 500, 0.1);
        let text = m.render(&[("a\"b".into(), "c\\d".into(), 1)]);
        validate_exposition(&text);
        assert!(text.contains(r#"pgshepherd_runs{phase="a\"b",state="c\\d"} 1"#));
        assert!(text.contains(
            r#"pgshepherd_api_requests_total{route="/odd\"route\\with\nnewline",status="500"} 1"#
        ));
    }

    #[test]
    fn an_empty_registry_is_valid_exposition() {
        let text = Metrics::new().render(&[]);
        validate_exposition(&text);
        assert!(text.contains("# TYPE pgshepherd_step_duration_seconds histogram"));
    }

    #[test]
    fn floats_are_written_as_prometheus_reads_them() {
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(0.25), "0.25");
        assert_eq!(float(3600.0), "3600");
        assert_eq!(float(1e-7), "0.0000001");
    }

    /// A line-by-line parser of the text format 0.0.4, strict enough to catch what
    /// Prometheus would reject: metadata before samples, metric and label name
    /// syntax, quoting and escapes, float syntax, duplicate series, and histogram
    /// consistency (cumulative buckets ending in `+Inf` equal to `_count`).
    fn validate_exposition(text: &str) {
        assert!(
            text.ends_with('\n'),
            "the exposition must end with a newline"
        );
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut helps: HashSet<String> = HashSet::new();
        let mut seen: HashSet<String> = HashSet::new();
        // (family, labels without le) -> (last bucket count, +Inf count)
        let mut buckets: BTreeMap<(String, String), (f64, Option<f64>)> = BTreeMap::new();
        let mut counts: BTreeMap<(String, String), f64> = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let ctx = format!("line {}: {line:?}", n + 1);
            assert!(!line.is_empty(), "{ctx}: empty line");
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').expect(&ctx);
                assert!(valid_metric_name(name), "{ctx}");
                assert!(helps.insert(name.to_string()), "{ctx}: second HELP");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect(&ctx);
                assert!(valid_metric_name(name), "{ctx}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{ctx}"
                );
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "{ctx}: second TYPE"
                );
                continue;
            }
            assert!(!line.starts_with('#'), "{ctx}: unknown comment");
            let (name, labels, value) = parse_sample(line, &ctx);
            let family = types
                .keys()
                .filter(|f| {
                    name == **f
                        || (types[*f] == "histogram"
                            && ["_bucket", "_sum", "_count"]
                                .iter()
                                .any(|s| name == format!("{f}{s}")))
                })
                .max_by_key(|f| f.len())
                .unwrap_or_else(|| panic!("{ctx}: sample before its TYPE"))
                .clone();
            let key = format!("{name}{labels:?}");
            assert!(seen.insert(key), "{ctx}: duplicate series");
            if types[&family] == "counter" {
                assert!(name.ends_with("_total"), "{ctx}: counters end in _total");
                assert!(value >= 0.0, "{ctx}");
            }
            if types[&family] == "histogram" {
                let without_le: Vec<_> = labels.iter().filter(|(k, _)| k != "le").collect();
                let k = (family.clone(), format!("{without_le:?}"));
                if name.ends_with("_bucket") {
                    let le = &labels.iter().find(|(k, _)| k == "le").expect(&ctx).1;
                    let entry = buckets.entry(k).or_insert((0.0, None));
                    assert!(value >= entry.0, "{ctx}: buckets must be cumulative");
                    entry.0 = value;
                    if le == "+Inf" {
                        entry.1 = Some(value);
                    } else {
                        le.parse::<f64>().expect(&ctx);
                    }
                } else if name.ends_with("_count") {
                    counts.insert(k, value);
                }
            }
        }
        for (k, (_, inf)) in &buckets {
            assert_eq!(
                Some(*inf.as_ref().expect("a +Inf bucket")),
                counts.get(k).copied(),
                "{k:?}: +Inf bucket must equal _count"
            );
        }
        for name in types.keys() {
            assert!(helps.contains(name), "{name}: TYPE without HELP");
        }
    }

    fn valid_metric_name(s: &str) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn valid_label_name(s: &str) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    /// `name{k="v",...} value` → (name, labels with unescaped values, value).
    fn parse_sample(line: &str, ctx: &str) -> (String, Vec<(String, String)>, f64) {
        let name_end = line.find(['{', ' ']).expect(ctx);
        let name = &line[..name_end];
        assert!(valid_metric_name(name), "{ctx}: metric name");
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let eq = rest.find('=').expect(ctx);
                let key = &rest[..eq];
                assert!(valid_label_name(key), "{ctx}: label name {key:?}");
                rest = rest[eq + 1..].strip_prefix('"').expect(ctx);
                let mut value = String::new();
                let mut chars = rest.char_indices();
                let end = loop {
                    let (i, c) = chars
                        .next()
                        .unwrap_or_else(|| panic!("{ctx}: unterminated"));
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => panic!("{ctx}: bad escape {other:?}"),
                        },
                        '"' => break i,
                        '\n' => panic!("{ctx}: raw newline"),
                        c => value.push(c),
                    }
                };
                labels.push((key.to_string(), value));
                rest = &rest[end + 1..];
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                }
            }
            let mut names: Vec<_> = labels.iter().map(|(k, _)| k).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), labels.len(), "{ctx}: repeated label");
        }
        let value = rest.strip_prefix(' ').expect(ctx);
        assert!(!value.contains(' '), "{ctx}: timestamps are not written");
        let v = match value {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => {
                assert!(
                    v.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)),
                    "{ctx}: value {v:?}"
                );
                v.parse().unwrap_or_else(|_| panic!("{ctx}: value {v:?}"))
            }
        };
        (name.to_string(), labels, v)
    }
}
