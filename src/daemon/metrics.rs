//! `GET /metrics` in the Prometheus text format 0.0.4, through `prometheus-client`.
//!
//! [`Metrics::observe_event`] is called for every event of every run this daemon
//! drives, hundreds of runs at once. It keeps, per run, handles to that run's
//! series (the crate's counters and gauges are shared atomics), so an event
//! costs one uncontended lock, a hash lookup by `&str` and an atomic add; label
//! sets are built (and allocate) only the first time a run meets a check, a step
//! or an outcome. The series read from the state database (`runs`,
//! `notifications_pending`) and the delivery counters kept by the outbox are
//! written at scrape time.
//!
//! The crate appends `_total` to counters itself: they are registered without
//! it, so that the exposed names are the ones below. Series (all names start
//! with `pgshepherd_`):
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
//! | `undos_finished_total` | counter | target, outcome (undos through the API: reverted, conflicts_left, refused, failed) |
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::checks::verdict::Verdict;
use crate::notify::outbox::{ChannelStats, DeliveryStats};
use crate::run::event::{Event, EventKind, Step};

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

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

// Label sets; fields in the order they are exposed.

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunCheckLabels {
    run_id: String,
    target: String,
    check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SampleLabels {
    target: String,
    check: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    target: String,
    check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RollbackLabels {
    target: String,
    strategy: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    target: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UndoOutcomeLabels {
    target: String,
    outcome: String,
}

/// Route templates are `'static` (the route table's), so counting a request
/// allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatusLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseStateLabels {
    phase: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type Histograms<S> = Family<S, Histogram, fn() -> Histogram>;

pub struct Metrics {
    /// The series this daemon keeps between scrapes.
    registry: Registry,
    step_durations: Histograms<StepLabels>,
    check_value: Family<RunCheckLabels, FloatGauge>,
    check_samples: Family<SampleLabels, Counter>,
    breaches: Family<CheckLabels, Counter>,
    rollbacks: Family<RollbackLabels, Counter>,
    finished: Family<OutcomeLabels, Counter>,
    undos_finished: Family<UndoOutcomeLabels, Counter>,
    api_requests: Family<RouteStatusLabels, Counter>,
    api_durations: Histograms<RouteLabels>,
    /// Per run this daemon drives: its step and handles to its check series.
    /// Dropped by `forget_run`.
    runs: Mutex<HashMap<String, RunSeries>>,
}

struct RunSeries {
    target: String,
    /// The step the run is in and the time of its first event in that step.
    step: Option<(Step, DateTime<Utc>)>,
    checks: HashMap<String, CheckSeries>,
}

/// One check of one run: its series, looked up once.
struct CheckSeries {
    value: FloatGauge,
    valid: Counter,
    inconclusive: Counter,
    breaches: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        // Help texts without a final period: the crate adds one.
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "pgshepherd_build_info",
            "The pgshepherd version of this daemon (always 1)",
            build_info,
        );
        let step_durations: Histograms<StepLabels> =
            Family::new_with_constructor(|| Histogram::new(STEP_BUCKETS.iter().copied()));
        registry.register(
            "pgshepherd_step_duration_seconds",
            "Time runs driven by this daemon spent in each step, from the step's first event to the next step's",
            step_durations.clone(),
        );
        let check_value = Family::default();
        registry.register(
            "pgshepherd_check_value",
            "The last sample of each check of each run this daemon drives (NaN when it was inconclusive)",
            check_value.clone(),
        );
        let check_samples = Family::default();
        registry.register(
            "pgshepherd_check_samples",
            "Check samples taken, valid or inconclusive (no usable number)",
            check_samples.clone(),
        );
        let breaches = Family::default();
        registry.register(
            "pgshepherd_breaches",
            "Check verdicts that were a breach",
            breaches.clone(),
        );
        let rollbacks = Family::default();
        registry.register(
            "pgshepherd_rollbacks",
            "Rollbacks started, by strategy",
            rollbacks.clone(),
        );
        let finished = Family::default();
        registry.register(
            "pgshepherd_runs_finished",
            "Runs finished by this daemon, by outcome",
            finished.clone(),
        );
        let undos_finished = Family::default();
        registry.register(
            "pgshepherd_undos_finished",
            "Undos through the API finished by this daemon, by outcome",
            undos_finished.clone(),
        );
        let api_requests = Family::default();
        registry.register(
            "pgshepherd_api_requests",
            "HTTP API requests answered, by route template and status",
            api_requests.clone(),
        );
        let api_durations: Histograms<RouteLabels> =
            Family::new_with_constructor(|| Histogram::new(API_BUCKETS.iter().copied()));
        registry.register(
            "pgshepherd_api_request_duration_seconds",
            "HTTP API request durations, by route template",
            api_durations.clone(),
        );
        Metrics {
            registry,
            step_durations,
            check_value,
            check_samples,
            breaches,
            rollbacks,
            finished,
            undos_finished,
            api_requests,
            api_durations,
            runs: Mutex::new(HashMap::new()),
        }
    }

    /// A poisoned lock only means another thread panicked mid-update of a run's
    /// entry; metrics must never take the daemon down with it.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, RunSeries>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every event of every run this daemon drives passes through here.
    pub fn observe_event(&self, target: &str, event: &Event) {
        let mut runs = self.lock();
        let run = match runs.get_mut(event.run_id.as_str()) {
            Some(r) => r,
            None => runs
                .entry(event.run_id.clone())
                .or_insert_with(|| RunSeries {
                    target: target.to_string(),
                    step: None,
                    checks: HashMap::new(),
                }),
        };

        // A step lasts from its first event until the first event of another step
        // (or the end of the run). Events without a step change nothing.
        if let Some(step) = event.step {
            match run.step {
                Some((current, _)) if current == step => {}
                previous => {
                    if let Some((prev, since)) = previous {
                        self.observe_step(prev, since, event.ts);
                    }
                    run.step = Some((step, event.ts));
                }
            }
        }

        match &event.kind {
            EventKind::CheckSample { assessment, .. } => {
                let check = self.check(&event.run_id, run, &assessment.check);
                check.value.set(assessment.value.unwrap_or(f64::NAN));
                if assessment.valid {
                    check.valid.inc();
                } else {
                    check.inconclusive.inc();
                }
            }
            EventKind::CheckVerdict { check, verdict, .. } => {
                if matches!(verdict, Verdict::Breach { .. }) {
                    self.check(&event.run_id, run, check).breaches.inc();
                }
            }
            EventKind::RollbackStarted { strategy, .. } => {
                self.rollbacks
                    .get_or_create(&RollbackLabels {
                        target: target.to_string(),
                        strategy: strategy.as_str(),
                    })
                    .inc();
            }
            EventKind::RunFinished { outcome, .. } => {
                if let Some((prev, since)) = run.step.take() {
                    self.observe_step(prev, since, event.ts);
                }
                self.finished
                    .get_or_create(&OutcomeLabels {
                        target: target.to_string(),
                        outcome: outcome.as_str(),
                    })
                    .inc();
            }
            _ => {}
        }
    }

    /// The series of `check` in `run`, created (with every label set it needs)
    /// the first time the run meets the check.
    fn check<'r>(&self, run_id: &str, run: &'r mut RunSeries, check: &str) -> &'r CheckSeries {
        if !run.checks.contains_key(check) {
            let labels = CheckLabels {
                target: run.target.clone(),
                check: check.to_string(),
            };
            let sample = |result| SampleLabels {
                target: run.target.clone(),
                check: check.to_string(),
                result,
            };
            let series = CheckSeries {
                value: self.check_value.get_or_create_owned(&RunCheckLabels {
                    run_id: run_id.to_string(),
                    target: run.target.clone(),
                    check: check.to_string(),
                }),
                valid: self.check_samples.get_or_create_owned(&sample("valid")),
                inconclusive: self
                    .check_samples
                    .get_or_create_owned(&sample("inconclusive")),
                breaches: self.breaches.get_or_create_owned(&labels),
            };
            run.checks.insert(check.to_string(), series);
        }
        &run.checks[check]
    }

    fn observe_step(&self, step: Step, since: DateTime<Utc>, until: DateTime<Utc>) {
        // Events of one run come from one daemon at a time, but after a takeover the
        // clock is another machine's: a negative duration is skew, not data.
        let Ok(d) = (until - since).to_std() else {
            return;
        };
        self.step_durations
            .get_or_create(&StepLabels {
                step: step_name(step),
            })
            .observe(d.as_secs_f64());
    }

    /// An undo through the API ended with `outcome` on `target`.
    pub fn observe_undo(&self, target: &str, outcome: &str) {
        self.undos_finished
            .get_or_create(&UndoOutcomeLabels {
                target: target.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The run is no longer driven by this daemon: drop its per-run series.
    pub fn forget_run(&self, run_id: &str) {
        let Some(run) = self.lock().remove(run_id) else {
            return;
        };
        for check in run.checks.into_keys() {
            self.check_value.remove(&RunCheckLabels {
                run_id: run_id.to_string(),
                target: run.target.clone(),
                check,
            });
        }
    }

    /// One API request answered. `route` is the route template
    /// (`/v1/runs/{id}`), never the concrete path, to keep the label set bounded.
    pub fn observe_api(&self, route: &'static str, status: u16, seconds: f64) {
        self.api_requests
            .get_or_create(&RouteStatusLabels { route, status })
            .inc();
        if seconds.is_finite() {
            self.api_durations
                .get_or_create(&RouteLabels { route })
                .observe(seconds);
        }
    }

    /// The exposition text; `runs_by_phase_state` comes from the state database
    /// as `(phase, state_name, count)`.
    pub fn render(&self, runs_by_phase_state: &[(String, String, i64)]) -> String {
        let mut scrape = Registry::default();
        let runs = Family::<PhaseStateLabels, Gauge>::default();
        for (phase, state, n) in runs_by_phase_state {
            runs.get_or_create(&PhaseStateLabels {
                phase: phase.clone(),
                state: state.clone(),
            })
            .set(*n);
        }
        scrape.register(
            "pgshepherd_runs",
            "Runs in the state database by phase and state (all daemons)",
            runs,
        );
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &scrape);
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// The notification series: delivery counters per channel from `stats`, and
    /// the outbox's pending rows per channel (read from the state database at
    /// scrape time, so they cover every replica).
    pub fn render_notifications(
        &self,
        out: &mut String,
        stats: &DeliveryStats,
        pending: &[(String, i64)],
    ) {
        let channels = stats.snapshot();
        let mut scrape = Registry::default();
        type Read = fn(&ChannelStats) -> &AtomicU64;
        let counters: [(&str, &str, Read); 4] = [
            (
                "pgshepherd_notifications_delivered",
                "Notifications a receiver accepted (2xx), by channel",
                |s| &s.delivered,
            ),
            (
                "pgshepherd_notifications_failed",
                "Notifications given up on (rejected, 410, or past max_age), by channel",
                |s| &s.failed,
            ),
            (
                "pgshepherd_notifications_retries",
                "Delivery attempts that will be retried (network error, timeout, 408/425/429/5xx), by channel",
                |s| &s.retries,
            ),
            (
                "pgshepherd_notifications_dropped",
                "Notifications not sent because their channel is disabled, by channel",
                |s| &s.dropped,
            ),
        ];
        for (name, help, read) in counters {
            let family = Family::<ChannelLabels, Counter>::default();
            for (channel, s) in &channels {
                family
                    .get_or_create(&ChannelLabels {
                        channel: channel.clone(),
                    })
                    .inc_by(read(s).load(Ordering::Relaxed));
            }
            scrape.register(name, help, family);
        }
        let per_channel = |values: &mut dyn Iterator<Item = (String, i64)>| {
            let family = Family::<ChannelLabels, Gauge>::default();
            for (channel, n) in values {
                family.get_or_create(&ChannelLabels { channel }).set(n);
            }
            family
        };
        scrape.register(
            "pgshepherd_channel_disabled",
            "1 while a channel is disabled because its receiver answered 410 Gone",
            per_channel(
                &mut channels
                    .iter()
                    .map(|(c, s)| (c.clone(), s.disabled.load(Ordering::Relaxed) as i64)),
            ),
        );
        scrape.register(
            "pgshepherd_notifications_pending",
            "Notifications waiting in the outbox (all replicas), by channel",
            per_channel(&mut pending.iter().cloned()),
        );
        let _ = prometheus_text::encode(out, &scrape);
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
            r#"pgshepherd_step_duration_seconds_sum{step="lock"} 2.0"#,
            // Soak 2 → 92 s.
            r#"pgshepherd_step_duration_seconds_bucket{step="soak",le="60"} 0"#,
            r#"pgshepherd_step_duration_seconds_bucket{step="soak",le="120"} 1"#,
            r#"pgshepherd_step_duration_seconds_sum{step="soak"} 90.0"#,
            // Rollback 92 → 102 s, closed by run_finished.
            r#"pgshepherd_step_duration_seconds_sum{step="rollback"} 10.0"#,
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
        assert!(text.contains(r#"pgshepherd_step_duration_seconds_sum{step="lock"} 70.0"#));
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
        assert!(text.contains("# TYPE pgshepherd_build_info gauge"));
        // A family without series is left out; Prometheus needs no empty TYPE.
        assert!(!text.contains("pgshepherd_step_duration_seconds"), "{text}");
    }

    #[test]
    fn counters_are_exposed_under_their_names_with_total_once() {
        let m = Metrics::new();
        breaching_run(&m, "r-1");
        m.observe_api("/healthz", 200, 0.001);
        let mut text = m.render(&[("active".into(), "soaking".into(), 1)]);
        let stats = crate::notify::outbox::DeliveryStats::default();
        stats
            .channel("ops")
            .delivered
            .fetch_add(2, Ordering::Relaxed);
        m.render_notifications(&mut text, &stats, &[("ops".into(), 5)]);
        validate_exposition(&text);
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        let expected = [
            "pgshepherd_runs gauge",
            "pgshepherd_build_info gauge",
            "pgshepherd_step_duration_seconds histogram",
            "pgshepherd_check_value gauge",
            "pgshepherd_check_samples_total counter",
            "pgshepherd_breaches_total counter",
            "pgshepherd_rollbacks_total counter",
            "pgshepherd_runs_finished_total counter",
            "pgshepherd_api_requests_total counter",
            "pgshepherd_api_request_duration_seconds histogram",
            "pgshepherd_notifications_delivered_total counter",
            "pgshepherd_notifications_failed_total counter",
            "pgshepherd_notifications_retries_total counter",
            "pgshepherd_notifications_dropped_total counter",
            "pgshepherd_channel_disabled gauge",
            "pgshepherd_notifications_pending gauge",
        ];
        assert_eq!(types, expected, "{text}");
        for line in [
            r#"pgshepherd_notifications_delivered_total{channel="ops"} 2"#,
            r#"pgshepherd_notifications_failed_total{channel="ops"} 0"#,
            r#"pgshepherd_channel_disabled{channel="ops"} 0"#,
            r#"pgshepherd_notifications_pending{channel="ops"} 5"#,
            "# HELP pgshepherd_breaches_total Check verdicts that were a breach.",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
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
