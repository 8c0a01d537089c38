//! The soak: every check sampled at each interval, each sample judged by the
//! verdict rules, until the duration is over or a verdict fires. The same loop
//! measures baselines before the migration and confirms a rollback afterwards.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::checks::Sampler;
use crate::checks::verdict::{CheckState, Observation, Verdict, num};
use crate::pg::Dsn;
use crate::plan::Check;
use crate::run::driver::{Finished, Lifecycle};
use crate::run::event::{CheckPlan, CheckTally, Decision, EventKind, Step};
use crate::run::lifecycle::Input;
use crate::steps::cadence::Cadence;
use crate::steps::context::StepContext;

/// How a soak (or a confirmation period) ended.
#[derive(Debug, Clone)]
pub enum SoakEnd {
    /// The full duration ran, no verdict fired and every check has its min_samples.
    Passed,
    /// A rule fired (breach, hold) or a check lacked valid samples at the end.
    Verdict(Verdict),
    /// The operator stopped the run; a cut-short soak never passes.
    Aborted,
    /// The run's lifecycle ended the run while a tick was being recorded.
    RunEnded(Finished),
}

/// Why the baselines could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("aborted by the operator while measuring baselines")]
    Aborted,
    #[error(
        "no valid baseline sample for {} (its thresholds are relative to the baseline)",
        .checks.join(", ")
    )]
    Missing { checks: Vec<String> },
}

/// Where a soak stands after a sample tick: persisted with the run state so that
/// the soak's position, each check's counts and streaks, and any verdict survive
/// the process (a resumed soak continues from here instead of starting over).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SoakProgress {
    /// Time since the soak started, at the last tick.
    pub elapsed_ms: u64,
    pub samples_taken: u32,
    pub samples_planned: u32,
    pub checks: Vec<CheckState>,
}

#[derive(Debug, Clone)]
pub struct SoakResult {
    pub end: SoakEnd,
    pub elapsed: Duration,
    pub tallies: Vec<CheckTally>,
}

/// The plan's checks with their samplers and baselines.
pub struct Monitor {
    checks: Vec<Check>,
    samplers: Vec<Option<Sampler>>,
    baselines: Vec<Option<f64>>,
}

impl Monitor {
    pub fn new(checks: &[Check], dsn: &Dsn) -> Monitor {
        Monitor {
            checks: checks.to_vec(),
            samplers: checks.iter().map(|c| Some(Sampler::new(c, dsn))).collect(),
            baselines: vec![None; checks.len()],
        }
    }

    /// Baselines measured by an earlier process (a resumed run).
    pub fn restore_baselines(&mut self, baselines: &[Option<f64>]) {
        for (slot, b) in self.baselines.iter_mut().zip(baselines) {
            *slot = *b;
        }
    }

    /// Each check's baseline in plan order, to persist.
    pub fn baseline_values(&self) -> Vec<Option<f64>> {
        self.baselines.clone()
    }

    pub fn baselines(&self) -> impl Iterator<Item = (&str, Option<f64>)> {
        self.checks
            .iter()
            .map(|c| c.name.as_str())
            .zip(self.baselines.iter().copied())
    }

    async fn prime(&mut self) {
        let mut set = JoinSet::new();
        for (i, slot) in self.samplers.iter_mut().enumerate() {
            if let Some(mut s) = slot.take() {
                set.spawn(async move {
                    s.prime().await;
                    (i, s)
                });
            }
        }
        while let Some(Ok((i, s))) = set.join_next().await {
            self.samplers[i] = Some(s);
        }
    }

    /// Sample every check concurrently; a sampler that panicked yields an
    /// inconclusive observation and is rebuilt.
    async fn sample_all(&mut self, dsn: &Dsn) -> Vec<(Observation, Duration)> {
        let mut set = JoinSet::new();
        for (i, slot) in self.samplers.iter_mut().enumerate() {
            let mut s = slot
                .take()
                .unwrap_or_else(|| Sampler::new(&self.checks[i], dsn));
            set.spawn(async move {
                let started = Instant::now();
                let obs = s.sample().await;
                (i, s, obs, started.elapsed())
            });
        }
        let mut out = vec![
            (
                Observation::inconclusive("the sampler failed unexpectedly"),
                Duration::ZERO
            );
            self.checks.len()
        ];
        while let Some(joined) = set.join_next().await {
            if let Ok((i, s, obs, took)) = joined {
                self.samplers[i] = Some(s);
                out[i] = (obs, took);
            }
        }
        out
    }

    /// Measure each check's baseline before the change: the median of `samples`
    /// valid values taken one interval apart. Fails when a check whose thresholds
    /// are relative to the baseline has no valid value: missing data is never a pass.
    pub async fn measure_baseline(
        &mut self,
        ctx: &StepContext<'_>,
        samples: u32,
        interval: Duration,
    ) -> Result<(), BaselineError> {
        self.prime().await;
        let mut values: Vec<Vec<f64>> = vec![Vec::new(); self.checks.len()];
        let mut seen: Vec<Vec<serde_json::Value>> = vec![Vec::new(); self.checks.len()];
        for _ in 0..samples {
            if !ctx.sleep(interval).await {
                return Err(BaselineError::Aborted);
            }
            for (i, (obs, _)) in self.sample_all(ctx.dsn).await.into_iter().enumerate() {
                seen[i].push(observation_json(&obs));
                if let Observation::Value(v) = obs
                    && v.is_finite()
                {
                    values[i].push(v);
                }
            }
        }
        let mut missing = Vec::new();
        for (i, check) in self.checks.iter().enumerate() {
            let baseline = median(&mut values[i]);
            self.baselines[i] = baseline;
            ctx.emit(
                Step::Baseline,
                EventKind::BaselineMeasured {
                    check: check.name.clone(),
                    baseline,
                    valid_samples: values[i].len() as u32,
                    samples: std::mem::take(&mut seen[i]),
                },
            );
            if baseline.is_none() && check.thresholds.needs_baseline() {
                missing.push(check.name.clone());
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(BaselineError::Missing { checks: missing })
        }
    }

    pub fn check_plans(&self) -> Vec<CheckPlan> {
        self.checks
            .iter()
            .zip(&self.baselines)
            .map(|(c, b)| CheckPlan {
                check: c.name.clone(),
                source: c.source.describe(),
                thresholds: c.thresholds.clone(),
                baseline: *b,
                consecutive: c.consecutive,
                min_samples: c.min_samples,
                on_inconclusive: c.on_inconclusive,
                max_inconclusive: c.max_inconclusive,
            })
            .collect()
    }

    /// Watch the checks for `duration`, one sample per check every `interval`
    /// (`floor(duration / interval)` samples). Returns as soon as a verdict fires.
    ///
    /// The confirmation after a rollback (`step == Step::Confirm`) is shorter than a
    /// soak, so its rules are tightened to what it can observe: one valid sample
    /// per check suffices, but `consecutive` and `max_inconclusive` are capped so
    /// that a check breaching (or inconclusive) on every sample always fails it.
    ///
    /// `resume` continues a soak persisted by an earlier process at its next
    /// sample, with every check's counts and streaks as they were; the time
    /// nobody watched does not count as soaked. Nor does time this process was
    /// blocked (a stalled state database, a paused process): the missed samples
    /// are not taken in a burst, the schedule moves later instead, so samples stay
    /// about an interval apart and the soak ends later ([`Cadence`]). `checkpoint`: the run's
    /// lifecycle, which records each tick's progress before the next sample.
    pub async fn watch(
        &mut self,
        ctx: &StepContext<'_>,
        step: Step,
        duration: Duration,
        interval: Duration,
        resume: Option<&SoakProgress>,
        checkpoint: Option<&Lifecycle<'_>>,
    ) -> SoakResult {
        let ticks = sample_count(duration, interval);
        let confirming = step == Step::Confirm;
        let fresh: Vec<CheckState> = self
            .checks
            .iter()
            .zip(&self.baselines)
            .map(|(c, b)| {
                let mut c = c.clone();
                if confirming {
                    c.min_samples = 1;
                    c.consecutive = c.consecutive.clamp(1, ticks.max(1));
                    c.max_inconclusive = c.max_inconclusive.min(ticks.saturating_sub(1));
                }
                CheckState::new(&c, *b)
            })
            .collect();
        let (mut states, first_tick, already_elapsed) = match resume {
            Some(p) if p.checks.len() == fresh.len() => (
                p.checks.clone(),
                p.samples_taken + 1,
                Duration::from_millis(p.elapsed_ms),
            ),
            _ => (fresh, 1, Duration::ZERO),
        };
        let min_samples = confirming.then_some(1);
        let mut cost: Vec<(Duration, u32)> = vec![(Duration::ZERO, 0); self.checks.len()];
        // A verdict that fired just before the process stopped is acted on now,
        // not when the soak would have ended.
        let already = states
            .iter()
            .filter_map(|s| s.decided().cloned())
            .min_by_key(|v| !matches!(v, Verdict::Breach { .. }));
        if let Some(verdict) = already {
            self.emit_verdict(ctx, step, &verdict);
            return SoakResult {
                end: SoakEnd::Verdict(verdict),
                elapsed: already_elapsed,
                tallies: tally(&self.checks, &states, &cost, min_samples),
            };
        }
        self.prime().await;
        // A resumed soak counts on from where it was: its clock starts as if the
        // elapsed part had just been watched.
        let started = Instant::now()
            .checked_sub(already_elapsed)
            .unwrap_or_else(Instant::now);
        let at = |since: Duration| tokio::time::Instant::from_std(started + since);
        // Elapsed times below are watched time: a stall moves the schedule later
        // instead of being made up by a burst of samples (see `cadence`).
        let mut cadence = Cadence::new(interval);
        for tick in first_tick..=ticks {
            let due = cadence.due(tick);
            let aborted = ctx.aborted()
                || tokio::select! {
                    _ = tokio::time::sleep_until(at(due)) => false,
                    _ = ctx.abort_requested() => true,
                };
            if aborted {
                return SoakResult {
                    end: SoakEnd::Aborted,
                    elapsed: cadence.watched(started.elapsed()),
                    tallies: tally(&self.checks, &states, &cost, min_samples),
                };
            }
            let woke = cadence.fired(due, started.elapsed());
            if !woke.unwatched.is_zero() {
                ctx.events.progress(&format!(
                    "  {} sampling was blocked for {:.1}s: not counted as watched, the {} ends later",
                    step_label(step),
                    woke.late.as_secs_f64(),
                    step_label(step)
                ));
                tracing::warn!(
                    run_id = ctx.run_id,
                    step = step_label(step),
                    late_ms = woke.late.as_millis() as u64,
                    "sampling was blocked; the time it missed does not count as watched, \
                     so the {} ends later",
                    step_label(step)
                );
            }
            let late = woke.late;
            let samples = self.sample_all(ctx.dsn).await;
            let elapsed = cadence.watched(started.elapsed());
            let mut fired: Vec<Verdict> = Vec::new();
            let mut line = Vec::new();
            for (i, (obs, took)) in samples.into_iter().enumerate() {
                cost[i].0 += took;
                cost[i].1 += 1;
                let assessment = states[i].observe(&obs);
                line.push(progress_cell(&assessment));
                if let Some(v) = &assessment.verdict {
                    fired.push(v.clone());
                }
                ctx.emit(
                    step,
                    EventKind::CheckSample {
                        elapsed_s: round3(elapsed.as_secs_f64()),
                        sample_ms: round3(took.as_secs_f64() * 1000.0),
                        late_ms: Some(round3(late.as_secs_f64() * 1000.0)),
                        assessment,
                    },
                );
            }
            if let Some(life) = checkpoint {
                let progress = Box::new(SoakProgress {
                    elapsed_ms: elapsed.as_millis() as u64,
                    samples_taken: tick,
                    samples_planned: ticks,
                    checks: states.clone(),
                });
                if let Err(finished) = life.apply(Input::SoakTick { progress }).await {
                    return SoakResult {
                        end: SoakEnd::RunEnded(finished),
                        elapsed,
                        tallies: tally(&self.checks, &states, &cost, min_samples),
                    };
                }
            }
            ctx.events.progress(&format!(
                "  {} {:>4}s/{}s  {}",
                step_label(step),
                elapsed.as_secs(),
                duration.as_secs(),
                line.join("  ")
            ));
            // A breach outranks a hold: the change demonstrably hurts, so undo it.
            fired.sort_by_key(|v| !matches!(v, Verdict::Breach { .. }));
            if let Some(verdict) = fired.into_iter().next() {
                self.emit_verdict(ctx, step, &verdict);
                return SoakResult {
                    end: SoakEnd::Verdict(verdict),
                    elapsed,
                    tallies: tally(&self.checks, &states, &cost, min_samples),
                };
            }
        }
        // Wait out the remainder so a soak lasts its full duration, watched.
        let end = cadence.when_watched(duration);
        let aborted = ctx.aborted()
            || tokio::select! {
                _ = tokio::time::sleep_until(at(end)) => false,
                _ = ctx.abort_requested() => true,
            };
        if aborted {
            return SoakResult {
                end: SoakEnd::Aborted,
                elapsed: cadence.watched(started.elapsed()),
                tallies: tally(&self.checks, &states, &cost, min_samples),
            };
        }
        cadence.fired(end, started.elapsed());
        let elapsed = cadence.watched(started.elapsed());
        for state in &states {
            if let Some(verdict) = state.finish() {
                self.emit_verdict(ctx, step, &verdict);
                return SoakResult {
                    end: SoakEnd::Verdict(verdict),
                    elapsed,
                    tallies: tally(&self.checks, &states, &cost, min_samples),
                };
            }
        }
        SoakResult {
            end: SoakEnd::Passed,
            elapsed,
            tallies: tally(&self.checks, &states, &cost, min_samples),
        }
    }

    fn emit_verdict(&self, ctx: &StepContext<'_>, step: Step, verdict: &Verdict) {
        let source = self
            .checks
            .iter()
            .find(|c| c.name == verdict.check())
            .map(|c| c.source.describe())
            .unwrap_or_default();
        let decision = match verdict {
            Verdict::Hold { .. } => Decision::HoldForHuman,
            _ if step == Step::Confirm => Decision::RollbackUnhealthy,
            _ => Decision::RollBack,
        };
        ctx.emit(
            step,
            EventKind::CheckVerdict {
                check: verdict.check().to_string(),
                source,
                message: verdict.message(),
                decision,
                verdict: verdict.clone(),
            },
        );
    }
}

fn tally(
    checks: &[Check],
    states: &[CheckState],
    cost: &[(Duration, u32)],
    min_samples: Option<u32>,
) -> Vec<CheckTally> {
    states
        .iter()
        .zip(cost)
        .zip(checks)
        .map(|((s, (total, n)), c)| CheckTally {
            check: c.name.clone(),
            valid: s.counts().valid_samples,
            inconclusive: s.counts().inconclusive_samples,
            min_samples: min_samples.unwrap_or(c.min_samples),
            mean_sample_ms: if *n == 0 {
                0.0
            } else {
                total.as_secs_f64() * 1000.0 / f64::from(*n)
            },
        })
        .collect()
}

/// `floor(duration / interval)` in whole nanoseconds, as `check` computes it, so
/// that a plan promised N samples gets N.
pub fn sample_count(duration: Duration, interval: Duration) -> u32 {
    if interval.is_zero() {
        return 0;
    }
    u32::try_from(duration.as_nanos() / interval.as_nanos()).unwrap_or(u32::MAX)
}

fn step_label(step: Step) -> &'static str {
    match step {
        Step::Confirm => "confirm",
        _ => "soak",
    }
}

fn progress_cell(a: &crate::checks::verdict::Assessment) -> String {
    let value = a.value.map(num).unwrap_or_else(|| "-".into());
    let flag = if !a.valid {
        "inconclusive".to_string()
    } else if a.breaching {
        format!("BREACH {}x", a.counts.breaches_in_a_row)
    } else {
        "ok".into()
    };
    format!("{}={} {}", a.check, value, flag)
}

fn observation_json(obs: &Observation) -> serde_json::Value {
    match obs {
        Observation::Value(v) if v.is_finite() => serde_json::json!({ "value": v }),
        Observation::Value(v) => serde_json::json!({ "inconclusive": format!("value is {v}") }),
        Observation::Failed { value, reason } => {
            serde_json::json!({ "failed": reason, "value": value })
        }
        Observation::Inconclusive { reason } => serde_json::json!({ "inconclusive": reason }),
    }
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn sample_count_is_exact_for_decimal_intervals() {
        use super::sample_count;
        use std::time::Duration;
        let ms = Duration::from_millis;
        assert_eq!(sample_count(ms(1200), ms(400)), 3);
        assert_eq!(sample_count(ms(600), ms(200)), 3);
        assert_eq!(sample_count(ms(999), ms(1000)), 0);
        assert_eq!(sample_count(ms(8000), ms(1000)), 8);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}
