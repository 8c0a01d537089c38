//! The low-traffic gate: before taking the lock, wait until the gate's check has
//! been healthy for `consecutive` samples in a row, so that the migration starts
//! when the target is quiet rather than merely when the window opens.
//!
//! A sample is healthy when it is valid and crosses none of the check's bounds.
//! Missing data is never healthy: an inconclusive sample (NULL, no row, an error,
//! a timeout) starts the count again, exactly as a breaching one does. The gate
//! never breaches or holds; it only opens, or gives up.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::time::Instant;

use crate::checks::Sampler;
use crate::checks::verdict::{Assessment, CheckState, num};
use crate::plan::{Check, Gate, InconclusivePolicy};
use crate::run::event::{CheckPlan, EventKind, Step};
use crate::steps::cadence::Cadence;
use crate::steps::context::StepContext;

/// How waiting for the gate ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateEnd {
    /// `consecutive` healthy samples in a row, all before the give-up point.
    Open,
    /// The operator stopped the run while it waited.
    Aborted,
    /// `give_up_at` or `gate.timeout` came first; the reason names the check and
    /// its last sample.
    GaveUp(String),
}

/// Wait until `gate.check` is healthy (a valid sample that is not breaching its
/// thresholds) for `gate.consecutive` samples in a row, one sample every
/// `gate.interval`, the first one interval after the start; after a stall the
/// schedule moves later rather than catching up (see [`Cadence`]). Give up at `give_up_at`
/// (a wall-clock instant: window close or deadline, whichever the caller computes)
/// or after `gate.timeout`.
///
/// The streak starts from nothing on every call: a gate that gave up when a window
/// closed is judged afresh in the next window. The gate opens only when the sample
/// that completes the streak finishes before the give-up point, so a caller that
/// gets [`GateEnd::Open`] still has its window (or deadline) ahead of it.
pub async fn wait_for_low_traffic(
    ctx: &StepContext<'_>,
    gate: &Gate,
    give_up_at: Option<DateTime<Utc>>,
) -> GateEnd {
    let started = Instant::now();
    ctx.emit(
        Step::Gate,
        EventKind::GateStarted {
            check: check_plan(&gate.check),
            consecutive: gate.consecutive,
            interval_s: gate.interval.as_secs_f64(),
        },
    );
    let limit = Limit::new(started, gate.timeout, give_up_at);
    let mut wait = Wait {
        ctx,
        gate,
        started,
        samples: 0,
        streak: 0,
        best: 0,
        last: None,
    };
    let end = wait.run(&limit).await;
    match &end {
        GateEnd::Open => ctx.emit(
            Step::Gate,
            EventKind::GateOpen {
                samples: wait.samples,
                waited_s: round3(started.elapsed().as_secs_f64()),
            },
        ),
        GateEnd::Aborted => ctx.emit(
            Step::Gate,
            EventKind::GateClosed {
                reason: "aborted by the operator while waiting for the gate".into(),
            },
        ),
        GateEnd::GaveUp(reason) => ctx.emit(
            Step::Gate,
            EventKind::GateClosed {
                reason: reason.clone(),
            },
        ),
    }
    end
}

/// When the wait ends at the latest, and why.
struct Limit {
    /// The earlier of the two, on the monotonic clock.
    at: Option<Instant>,
    /// Whether `at` is the timeout (rather than `give_up_at`).
    is_timeout: bool,
    timeout: Option<Duration>,
    give_up_at: Option<DateTime<Utc>>,
}

impl Limit {
    fn new(
        started: Instant,
        timeout: Option<Duration>,
        give_up_at: Option<DateTime<Utc>>,
    ) -> Limit {
        let by_timeout = timeout.map(|t| started + t);
        // Sleep towards the wall-clock instant on the monotonic clock (tokio's
        // timers are monotonic); `passed` reads the wall clock as well, so the gate
        // never opens after `give_up_at` even if the system clock stepped forward.
        let by_clock =
            give_up_at.map(|at| started + (at - Utc::now()).to_std().unwrap_or(Duration::ZERO));
        let (at, is_timeout) = match (by_timeout, by_clock) {
            (Some(t), Some(c)) if t < c => (Some(t), true),
            (_, Some(c)) => (Some(c), false),
            (Some(t), None) => (Some(t), true),
            (None, None) => (None, false),
        };
        Limit {
            at,
            is_timeout,
            timeout,
            give_up_at,
        }
    }

    fn passed(&self) -> bool {
        self.at.is_some_and(|at| Instant::now() >= at)
            || self.give_up_at.is_some_and(|at| Utc::now() >= at)
    }

    fn describe(&self) -> String {
        match (self.is_timeout, self.timeout, self.give_up_at) {
            (true, Some(t), _) => format!(
                "within `gate.timeout` ({})",
                crate::plan::duration::format(t)
            ),
            (_, _, Some(at)) => format!("by {}", at.to_rfc3339_opts(SecondsFormat::Secs, true)),
            _ => "in time".to_string(),
        }
    }
}

struct Wait<'a, 'c> {
    ctx: &'a StepContext<'c>,
    gate: &'a Gate,
    started: Instant,
    samples: u32,
    /// Healthy samples in a row so far.
    streak: u32,
    /// The longest streak seen, for the give-up reason.
    best: u32,
    last: Option<Assessment>,
}

impl Wait<'_, '_> {
    async fn run(&mut self, limit: &Limit) -> GateEnd {
        let ctx = self.ctx;
        if ctx.aborted() {
            return GateEnd::Aborted;
        }
        if limit.passed() {
            return GateEnd::GaveUp(self.gave_up(limit));
        }
        let mut sampler = Sampler::new(&self.gate.check, ctx.dsn);
        // The verdict rules judge each sample against the bounds; the gate keeps
        // its own streak, so the state is told never to decide anything.
        let mut state = CheckState::new(&never_decides(&self.gate.check), None);
        tokio::select! {
            _ = sampler.prime() => {}
            _ = ctx.abort_requested() => return GateEnd::Aborted,
        }
        // Samples a full interval apart even after a stall: a streak of healthy
        // samples taken in a burst would say the target was quiet for
        // `consecutive` intervals when it was looked at only once.
        let mut cadence = Cadence::new(self.gate.interval);
        let mut tick: u32 = 0;
        loop {
            tick = tick.saturating_add(1);
            let due = cadence.due(tick);
            let next = self.started + due;
            let wake = limit.at.map_or(next, |l| l.min(next));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = ctx.abort_requested() => return GateEnd::Aborted,
            }
            if wake < next || limit.passed() {
                return GateEnd::GaveUp(self.gave_up(limit));
            }
            cadence.fired(due, self.started.elapsed());
            let taken = Instant::now();
            let observation = tokio::select! {
                o = sampler.sample() => o,
                _ = ctx.abort_requested() => return GateEnd::Aborted,
            };
            let took = taken.elapsed();
            let assessment = state.observe(&observation);
            self.samples += 1;
            let healthy = assessment.valid && !assessment.breaching;
            self.streak = if healthy { self.streak + 1 } else { 0 };
            self.best = self.best.max(self.streak);
            let elapsed = self.started.elapsed();
            ctx.events.progress(&format!(
                "  gate {:>4}s  {}  {}/{} healthy in a row",
                elapsed.as_secs(),
                cell(&assessment, healthy),
                self.streak,
                self.gate.consecutive
            ));
            ctx.emit(
                Step::Gate,
                EventKind::CheckSample {
                    elapsed_s: round3(elapsed.as_secs_f64()),
                    sample_ms: round3(took.as_secs_f64() * 1000.0),
                    late_ms: None,
                    assessment: assessment.clone(),
                },
            );
            self.last = Some(assessment);
            if limit.passed() {
                // The sample finished too late to be acted on.
                return GateEnd::GaveUp(self.gave_up(limit));
            }
            if self.streak >= self.gate.consecutive {
                return GateEnd::Open;
            }
        }
    }

    /// "did not open by 2026-11-23T03:00:00Z: check `busy` was healthy at most 1
    /// sample in a row of the 3 needed (12 samples); last sample: busy = 42.0
    /// (breaching max 10.0; 5 in a row)".
    fn gave_up(&self, limit: &Limit) -> String {
        let check = &self.gate.check.name;
        let needed = self.gate.consecutive;
        let last = match &self.last {
            None => "no sample was taken".to_string(),
            Some(a) => format!("last sample: {}", a.summary()),
        };
        format!(
            "did not open {}: check `{check}` was healthy at most {} sample{} in a row of the {needed} \
             needed ({} sample{} taken); {last}",
            limit.describe(),
            self.best,
            plural(self.best),
            self.samples,
            plural(self.samples),
        )
    }
}

/// The check as the gate's events show it: no baseline, and the rules the gate
/// applies (see `Gate` in the plan model).
fn check_plan(c: &Check) -> CheckPlan {
    CheckPlan {
        check: c.name.clone(),
        source: c.source.describe(),
        thresholds: c.thresholds.clone(),
        baseline: None,
        consecutive: c.consecutive,
        min_samples: c.min_samples,
        on_inconclusive: c.on_inconclusive,
        max_inconclusive: c.max_inconclusive,
    }
}

/// The same check with rules that never fire, so that no sample's assessment
/// carries a verdict: a breaching sample before the migration is a reason to
/// wait, not to roll anything back.
fn never_decides(c: &Check) -> Check {
    Check {
        consecutive: u32::MAX,
        min_samples: 0,
        on_inconclusive: InconclusivePolicy::Ignore,
        max_inconclusive: u32::MAX,
        ..c.clone()
    }
}

fn cell(a: &Assessment, healthy: bool) -> String {
    let value = a.value.map(num).unwrap_or_else(|| "-".into());
    let flag = if !a.valid {
        "inconclusive"
    } else if healthy {
        "ok"
    } else {
        "busy"
    };
    format!("{}={} {}", a.check, value, flag)
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
