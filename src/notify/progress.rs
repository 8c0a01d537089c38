//! Soak progress messages: at each channel's cadence, where the soak stands
//! and each check's latest value against its thresholds.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::checks::verdict::{Assessment, num};
use crate::notify::notices::{RunMeta, secs};
use crate::notify::{Fact, Notice, NoticeKind, Severity};
use crate::run::event::{Event, EventKind};

/// Soak progress notices at each channel's cadence, from the run's check
/// samples. Held in memory by whoever writes the run's events: after a restart
/// the count starts again from the next sample (a progress notice may be
/// skipped, never sent twice for one stretch).
#[derive(Debug, Default)]
pub struct Progress {
    /// (channel, cadence)
    cadences: Vec<(String, Duration)>,
    duration_s: Option<f64>,
    last_elapsed: Option<f64>,
    latest: BTreeMap<String, Assessment>,
    /// Set when `observe` produced notices, until `take_enqueued`.
    produced: bool,
}

impl Progress {
    pub fn new(cadences: Vec<(String, Duration)>) -> Progress {
        Progress {
            cadences,
            ..Progress::default()
        }
    }

    /// Feed one event; returns the channels due a progress notice, with what it
    /// will say.
    pub fn observe(&mut self, event: &Event) -> Vec<(String, ProgressPoint)> {
        if self.cadences.is_empty() {
            // No channel wants progress: nothing to keep per sample.
            return Vec::new();
        }
        match &event.kind {
            EventKind::SoakStarted { duration_s, .. } => {
                self.duration_s = Some(*duration_s);
                self.last_elapsed = Some(0.0);
                self.latest.clear();
                Vec::new()
            }
            EventKind::CheckSample {
                elapsed_s,
                assessment,
                ..
            } if event.step == Some(crate::run::event::Step::Soak) => {
                self.latest
                    .insert(assessment.check.clone(), assessment.clone());
                let Some(prev) = self
                    .last_elapsed
                    .replace(elapsed_s.max(self.last_elapsed.unwrap_or(0.0)))
                else {
                    return Vec::new();
                };
                let due: Vec<String> = self
                    .cadences
                    .iter()
                    .filter(|(_, every)| {
                        let c = every.as_secs_f64();
                        c > 0.0 && (elapsed_s / c).floor() > (prev / c).floor()
                    })
                    .map(|(ch, _)| ch.clone())
                    .collect();
                if due.is_empty() {
                    return Vec::new();
                }
                self.produced = true;
                let point = self.point(event.ts, *elapsed_s);
                due.into_iter().map(|ch| (ch, point.clone())).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Whether progress notices were produced since the last call.
    pub fn take_enqueued(&mut self) -> bool {
        std::mem::take(&mut self.produced)
    }

    fn point(&self, ts: DateTime<Utc>, elapsed_s: f64) -> ProgressPoint {
        let breaching: Vec<&str> = self
            .latest
            .values()
            .filter(|a| a.breaching)
            .map(|a| a.check.as_str())
            .collect();
        ProgressPoint {
            ts,
            elapsed_s,
            duration_s: self.duration_s,
            breaching: breaching.iter().map(|s| s.to_string()).collect(),
            facts: self
                .latest
                .values()
                .map(|a| {
                    let value = a.value.map(num).unwrap_or_else(|| {
                        a.reason.clone().unwrap_or_else(|| "no value".to_string())
                    });
                    Fact::new(&a.check, format!("{value} ({})", a.thresholds))
                })
                .collect(),
        }
    }
}

/// Where a soak stood when a progress notice fell due.
#[derive(Debug, Clone)]
pub struct ProgressPoint {
    ts: DateTime<Utc>,
    elapsed_s: f64,
    duration_s: Option<f64>,
    breaching: Vec<String>,
    facts: Vec<Fact>,
}

impl ProgressPoint {
    pub fn notice(&self, run: &RunMeta) -> Notice {
        let of = self
            .duration_s
            .map(|d| format!(" of {}", secs(d)))
            .unwrap_or_default();
        let health = if self.breaching.is_empty() {
            "every check within bounds".to_string()
        } else {
            format!("breaching now: {}", self.breaching.join(", "))
        };
        Notice {
            kind: NoticeKind::SoakProgress,
            severity: Severity::Info,
            ts: self.ts,
            run_id: run.run_id.clone(),
            target: run.target.clone(),
            plan: run.plan.clone(),
            title: format!("Soaking {}{of} on {}", secs(self.elapsed_s), run.target),
            summary: format!("Run {}: {health}.", run.run_id),
            next_step: None,
            runbook: None,
            facts: self.facts.clone(),
            escalation: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::notices::tests::{event, run};
    use crate::run::event::Step;

    #[test]
    fn progress_comes_once_per_cadence_per_channel() {
        let mut p = Progress::new(vec![
            ("fast".into(), Duration::from_secs(10)),
            ("slow".into(), Duration::from_secs(30)),
        ]);
        let start = event(
            Some(Step::Soak),
            EventKind::SoakStarted {
                duration_s: 60.0,
                interval_s: 5.0,
                checks: Vec::new(),
            },
        );
        assert!(p.observe(&start).is_empty());
        let mut due = Vec::new();
        for tick in 1..=12 {
            let assessment = Assessment {
                check: "c".into(),
                observation: crate::checks::verdict::Observation::Value(1.0),
                value: Some(1.0),
                valid: true,
                breaching: false,
                reason: None,
                crossed: Vec::new(),
                thresholds: "max 5.0".into(),
                bounds: Vec::new(),
                baseline: None,
                counts: Default::default(),
                verdict: None,
            };
            let sample = event(
                Some(Step::Soak),
                EventKind::CheckSample {
                    elapsed_s: tick as f64 * 5.0,
                    sample_ms: 1.0,
                    late_ms: None,
                    assessment,
                },
            );
            for (ch, point) in p.observe(&sample) {
                assert_eq!(point.notice(&run()).kind, NoticeKind::SoakProgress);
                due.push((tick * 5, ch));
            }
        }
        let fast: Vec<u32> = due.iter().filter(|d| d.1 == "fast").map(|d| d.0).collect();
        let slow: Vec<u32> = due.iter().filter(|d| d.1 == "slow").map(|d| d.0).collect();
        assert_eq!(fast, [10, 20, 30, 40, 50, 60]);
        assert_eq!(slow, [30, 60]);
        assert!(p.take_enqueued());
        assert!(!p.take_enqueued());
    }
}
