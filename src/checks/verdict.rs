//! The verdict rules: how a check's samples become a decision.
//!
//! Pure logic, no I/O: a [`CheckState`] is fed one [`Observation`] per sample and
//! answers with an [`Assessment`] that explains itself (value, thresholds, baseline,
//! streaks, and the [`Verdict`] when a rule fires). The soak persists assessments as
//! events; the messages are written for the on-call who reads them in chat.
//!
//! Invariants (see `Check` and `InconclusivePolicy` in the plan model):
//! - Missing data is never a pass. NULL, no row, NaN, infinity, an error or a timeout
//!   is inconclusive: it never counts as a valid sample, never resets and never
//!   advances a breach streak. Too many in a row hand the decision to the check's
//!   `on_inconclusive` policy, and a soak whose check collected fewer than
//!   `min_samples` valid samples does not pass ([`Verdict::InsufficientSamples`]).
//! - A baseline-relative threshold without a usable baseline cannot say "fine": a
//!   value that crosses no absolute bound is then inconclusive, not a pass.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;
use serde::ser::SerializeStruct;

use crate::plan::model::{Check, Delta, InconclusivePolicy};

/// One sample as the sampler saw it, before any threshold is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// A measured number. NaN and infinities are not values: the state treats
    /// them as inconclusive.
    Value(f64),
    /// A valid sample that breaches regardless of thresholds (e.g. an HTTP status
    /// not in `expect_status`); `value` is what was measured anyway, if anything.
    Failed { value: Option<f64>, reason: String },
    /// No usable number: NULL, no row, NaN, an error, a timeout. `reason` says which.
    Inconclusive { reason: String },
}

impl Observation {
    pub fn inconclusive(reason: impl Into<String>) -> Self {
        Observation::Inconclusive {
            reason: reason.into(),
        }
    }

    pub fn failed(value: Option<f64>, reason: impl Into<String>) -> Self {
        Observation::Failed {
            value,
            reason: reason.into(),
        }
    }

    /// The number carried by the observation, if it is a finite one.
    pub fn value(&self) -> Option<f64> {
        match self {
            Observation::Value(v) | Observation::Failed { value: Some(v), .. } => finite(*v),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Observation::Value(_) => "value",
            Observation::Failed { .. } => "failed",
            Observation::Inconclusive { .. } => "inconclusive",
        }
    }
}

/// `{"kind": "value", "value": 0.61}`, `{"kind": "failed", "value": 12.5, "reason": ...}`,
/// `{"kind": "inconclusive", "reason": ...}`. A non-finite value serializes as null
/// (JSON has no NaN), so the kind is always explicit.
impl Serialize for Observation {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Observation", 3)?;
        s.serialize_field("kind", self.kind())?;
        match self {
            Observation::Value(v) => s.serialize_field("value", &finite(*v))?,
            Observation::Failed { value, reason } => {
                s.serialize_field("value", &value.and_then(finite))?;
                s.serialize_field("reason", reason)?;
            }
            Observation::Inconclusive { reason } => s.serialize_field("reason", reason)?,
        }
        s.end()
    }
}

/// The serialized form read back (events in the client): a null value is a
/// non-finite one.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum ObservationRepr {
    Value { value: Option<f64> },
    Failed { value: Option<f64>, reason: String },
    Inconclusive { reason: String },
}

impl<'de> Deserialize<'de> for Observation {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match ObservationRepr::deserialize(deserializer)? {
            ObservationRepr::Value { value } => Observation::Value(value.unwrap_or(f64::NAN)),
            ObservationRepr::Failed { value, reason } => Observation::Failed { value, reason },
            ObservationRepr::Inconclusive { reason } => Observation::Inconclusive { reason },
        })
    }
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Observation::Value(v) => f.write_str(&num(*v)),
            Observation::Failed {
                value: Some(v),
                reason,
            } => write!(f, "failed with {}: {reason}", num(*v)),
            Observation::Failed {
                value: None,
                reason,
            } => write!(f, "failed: {reason}"),
            Observation::Inconclusive { reason } => write!(f, "inconclusive: {reason}"),
        }
    }
}

/// What a sample counts as, before the rules look at streaks.
enum Judged {
    /// A valid sample; the reason is set for a failure.
    Valid(Option<String>),
    /// No usable number, and why.
    Inconclusive(String),
}

/// Which rule a bound or a verdict comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    Min,
    Max,
    MaxIncrease,
    MaxDecrease,
    /// A failed sample (e.g. unexpected HTTP status): breaches whatever the thresholds.
    Failed,
    /// Too many inconclusive samples in a row under `on_inconclusive: breach`.
    Inconclusive,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Min => "min",
            Rule::Max => "max",
            Rule::MaxIncrease => "max_increase",
            Rule::MaxDecrease => "max_decrease",
            Rule::Failed => "failed",
            Rule::Inconclusive => "inconclusive",
        }
    }
}

/// One effective threshold, with the baseline arithmetic already done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bound {
    pub rule: Rule,
    /// The value a sample must not go below (`min`, `max_decrease`) or above
    /// (`max`, `max_increase`).
    pub limit: f64,
    /// Human form: "max 0.5", "baseline 3.0 + 20% = 3.6".
    pub text: String,
}

impl Bound {
    fn is_crossed_by(&self, v: f64) -> bool {
        match self.rule {
            Rule::Min | Rule::MaxDecrease => v < self.limit,
            Rule::Max | Rule::MaxIncrease => v > self.limit,
            Rule::Failed | Rule::Inconclusive => false,
        }
    }
}

/// Running counts of a check's samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Every sample observed, whatever its kind.
    pub total_samples: u32,
    /// Values and failures: the samples that count towards `min_samples`.
    pub valid_samples: u32,
    pub inconclusive_samples: u32,
    pub breaches_in_a_row: u32,
    pub inconclusive_in_a_row: u32,
}

/// What a rule decided. Each variant carries what the on-call needs to understand
/// it without opening the plan; [`Verdict::message`] says it in one line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Roll back per the plan's strategy: `consecutive` breaching samples in a row
    /// (rule min / max / max_increase / max_decrease / failed), or more than
    /// `max_inconclusive` inconclusive ones in a row under `on_inconclusive: breach`
    /// (rule inconclusive).
    Breach {
        check: String,
        rule: Rule,
        /// The bound(s) the last sample crossed ("max 0.5"); `None` for failed and
        /// inconclusive, whose `reason` explains them.
        threshold: Option<String>,
        /// The numeric limit of the first bound crossed.
        limit: Option<f64>,
        /// The last sample's value, if it had one.
        value: Option<f64>,
        baseline: Option<f64>,
        /// Breaching (or inconclusive, for rule inconclusive) samples in a row.
        in_a_row: u32,
        /// What the rule needed in a row: `consecutive`, or `max_inconclusive + 1`.
        needed: u32,
        reason: Option<String>,
    },
    /// Stop without rolling back and hand the run to a human: more than
    /// `max_inconclusive` inconclusive samples in a row under `on_inconclusive: hold`.
    Hold {
        check: String,
        inconclusive_in_a_row: u32,
        max_inconclusive: u32,
        /// Why the last sample was inconclusive.
        reason: String,
    },
    /// The soak ended (or was cut short) before the check had `min_samples` valid samples.
    InsufficientSamples {
        check: String,
        valid_samples: u32,
        min_samples: u32,
        total_samples: u32,
        inconclusive_samples: u32,
        /// Why the last inconclusive sample was inconclusive, if there was one.
        last_inconclusive_reason: Option<String>,
    },
}

impl Verdict {
    pub fn check(&self) -> &str {
        match self {
            Verdict::Breach { check, .. }
            | Verdict::Hold { check, .. }
            | Verdict::InsufficientSamples { check, .. } => check,
        }
    }

    /// One line for logs, events and chat, e.g.
    /// "unknown_cancel_reason_share breached max 0.5 with 0.61 (3 in a row, consecutive 3)".
    pub fn message(&self) -> String {
        match self {
            Verdict::Breach {
                check,
                rule: Rule::Inconclusive,
                in_a_row,
                needed,
                reason,
                ..
            } => format!(
                "{check} breached rule inconclusive: {in_a_row} inconclusive samples in a row \
                 (max_inconclusive {}), last: {}",
                needed.saturating_sub(1),
                reason.as_deref().unwrap_or("unknown")
            ),
            Verdict::Breach {
                check,
                rule: Rule::Failed,
                value,
                in_a_row,
                needed,
                reason,
                ..
            } => {
                let with = value
                    .map(|v| format!(" with {}", num(v)))
                    .unwrap_or_default();
                format!(
                    "{check} failed{with}: {} ({in_a_row} in a row, consecutive {needed})",
                    reason.as_deref().unwrap_or("unknown")
                )
            }
            Verdict::Breach {
                check,
                rule,
                threshold,
                value,
                in_a_row,
                needed,
                ..
            } => {
                let threshold = threshold
                    .clone()
                    .unwrap_or_else(|| rule.as_str().to_string());
                let value = value.map(num).unwrap_or_else(|| "no value".to_string());
                format!(
                    "{check} breached {threshold} with {value} ({in_a_row} in a row, consecutive {needed})"
                )
            }
            Verdict::Hold {
                check,
                inconclusive_in_a_row,
                max_inconclusive,
                reason,
            } => format!(
                "{check} is held for a human: {inconclusive_in_a_row} inconclusive samples in a row \
                 (max_inconclusive {max_inconclusive}), last: {reason}"
            ),
            Verdict::InsufficientSamples {
                check,
                valid_samples,
                min_samples,
                total_samples,
                inconclusive_samples,
                last_inconclusive_reason,
            } => {
                let last = last_inconclusive_reason
                    .as_deref()
                    .map(|r| format!(", last: {r}"))
                    .unwrap_or_default();
                format!(
                    "{check} has {valid_samples} valid samples, min_samples is {min_samples} \
                     ({total_samples} taken, {inconclusive_samples} inconclusive{last})"
                )
            }
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// What one sample meant for its check. An event payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    pub check: String,
    pub observation: Observation,
    /// The sample's finite value, if it had one (a failure may carry one too).
    pub value: Option<f64>,
    /// Counted as a valid sample (a finite value that could be judged, or a failure).
    pub valid: bool,
    pub breaching: bool,
    /// Why the sample failed or is inconclusive (including a NaN value or a missing
    /// baseline); `None` for a plain value.
    pub reason: Option<String>,
    /// The bounds this sample crossed; empty unless it breached on a threshold.
    pub crossed: Vec<Bound>,
    /// Every bound in force, in one line: "min 0.0; max 0.5; baseline 3.0 + 20% = 3.6".
    pub thresholds: String,
    /// Every bound in force, as numbers.
    pub bounds: Vec<Bound>,
    pub baseline: Option<f64>,
    pub counts: Counts,
    /// Set on every sample for which a rule fires (not only the first).
    pub verdict: Option<Verdict>,
}

impl Assessment {
    /// One line for logs: "share = 0.61 (breaching max 0.5; 2 in a row, consecutive 3)".
    pub fn summary(&self) -> String {
        if let Some(v) = &self.verdict {
            return v.message();
        }
        let c = &self.counts;
        match (&self.observation, self.valid) {
            (_, false) => format!(
                "{} inconclusive: {} ({} in a row)",
                self.check,
                self.reason.as_deref().unwrap_or("unknown"),
                c.inconclusive_in_a_row
            ),
            (Observation::Failed { .. }, true) => format!(
                "{} {} ({} in a row)",
                self.check, self.observation, c.breaches_in_a_row
            ),
            _ if self.breaching => {
                let crossed: Vec<&str> = self.crossed.iter().map(|b| b.text.as_str()).collect();
                format!(
                    "{} = {} (breaching {}; {} in a row)",
                    self.check,
                    self.value.map(num).unwrap_or_default(),
                    crossed.join(" and "),
                    c.breaches_in_a_row
                )
            }
            _ => format!(
                "{} = {} (within {})",
                self.check,
                self.value.map(num).unwrap_or_default(),
                self.thresholds
            ),
        }
    }
}

/// The verdict rules' memory for one check over one soak (or one confirmation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckState {
    check: String,
    consecutive: u32,
    min_samples: u32,
    policy: InconclusivePolicy,
    max_inconclusive: u32,
    baseline: Option<f64>,
    bounds: Vec<Bound>,
    /// Baseline-relative thresholds that cannot be evaluated for want of a baseline.
    unevaluable: Vec<String>,
    thresholds_text: String,
    counts: Counts,
    last_inconclusive_reason: Option<String>,
    /// The first Breach or Hold, kept so `finish` reports it even if the caller
    /// kept sampling.
    decided: Option<Verdict>,
}

impl CheckState {
    /// `baseline` is the check's value before the migration (the soak computes it
    /// from `baseline_samples`); only used by `max_increase` / `max_decrease`. A
    /// non-finite baseline counts as none.
    pub fn new(check: &Check, baseline: Option<f64>) -> Self {
        let baseline = baseline.and_then(finite);
        let t = &check.thresholds;
        let mut bounds = Vec::new();
        let mut unevaluable = Vec::new();
        if let Some(min) = t.min {
            bounds.push(Bound {
                rule: Rule::Min,
                limit: min,
                text: format!("min {}", num(min)),
            });
        }
        if let Some(max) = t.max {
            bounds.push(Bound {
                rule: Rule::Max,
                limit: max,
                text: format!("max {}", num(max)),
            });
        }
        for (rule, delta) in [
            (Rule::MaxIncrease, t.max_increase),
            (Rule::MaxDecrease, t.max_decrease),
        ] {
            let Some(delta) = delta else { continue };
            match baseline {
                Some(b) => bounds.push(relative_bound(rule, b, delta)),
                None => unevaluable.push(format!("{} {}", rule.as_str(), delta_text(delta))),
            }
        }
        let mut texts: Vec<String> = bounds.iter().map(|b| b.text.clone()).collect();
        texts.extend(unevaluable.iter().map(|u| format!("{u} (no baseline)")));
        CheckState {
            check: check.name.clone(),
            consecutive: check.consecutive.max(1),
            min_samples: check.min_samples,
            policy: check.on_inconclusive,
            max_inconclusive: check.max_inconclusive,
            baseline,
            bounds,
            unevaluable,
            thresholds_text: texts.join("; "),
            counts: Counts::default(),
            last_inconclusive_reason: None,
            decided: None,
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn baseline(&self) -> Option<f64> {
        self.baseline
    }

    pub fn bounds(&self) -> &[Bound] {
        &self.bounds
    }

    /// The first Breach or Hold reached so far.
    pub fn decided(&self) -> Option<&Verdict> {
        self.decided.as_ref()
    }

    /// Judge one sample.
    pub fn observe(&mut self, observation: &Observation) -> Assessment {
        self.counts.total_samples += 1;
        let value = observation.value();
        let mut crossed = Vec::new();
        let judged = match observation {
            Observation::Value(v) if v.is_nan() => Judged::Inconclusive("value is NaN".to_string()),
            Observation::Value(v) if v.is_infinite() => {
                Judged::Inconclusive(format!("value is {}", num(*v)))
            }
            Observation::Value(v) => {
                crossed = self
                    .bounds
                    .iter()
                    .filter(|b| b.is_crossed_by(*v))
                    .cloned()
                    .collect();
                if crossed.is_empty() && !self.unevaluable.is_empty() {
                    Judged::Inconclusive(format!(
                        "no baseline to evaluate {} against (value {})",
                        self.unevaluable.join(" and "),
                        num(*v)
                    ))
                } else {
                    Judged::Valid(None)
                }
            }
            Observation::Failed { reason, .. } => Judged::Valid(Some(reason.clone())),
            Observation::Inconclusive { reason } => Judged::Inconclusive(reason.clone()),
        };

        let (valid, breaching, reason, verdict) = match judged {
            Judged::Valid(reason) => {
                let breaching = reason.is_some() || !crossed.is_empty();
                self.counts.valid_samples += 1;
                self.counts.inconclusive_in_a_row = 0;
                self.counts.breaches_in_a_row = if breaching {
                    self.counts.breaches_in_a_row + 1
                } else {
                    0
                };
                let verdict = (breaching && self.counts.breaches_in_a_row >= self.consecutive)
                    .then(|| self.breach_verdict(value, &crossed, reason.clone()));
                (true, breaching, reason, verdict)
            }
            Judged::Inconclusive(reason) => {
                // Set aside: the breach streak neither resets nor advances.
                self.counts.inconclusive_samples += 1;
                self.counts.inconclusive_in_a_row += 1;
                self.last_inconclusive_reason = Some(reason.clone());
                let verdict = (self.counts.inconclusive_in_a_row > self.max_inconclusive)
                    .then(|| self.inconclusive_verdict(value, &reason))
                    .flatten();
                (false, false, Some(reason), verdict)
            }
        };
        if self.decided.is_none() {
            self.decided = verdict.clone();
        }
        Assessment {
            check: self.check.clone(),
            observation: observation.clone(),
            value,
            valid,
            breaching,
            reason,
            crossed,
            thresholds: self.thresholds_text.clone(),
            bounds: self.bounds.clone(),
            baseline: self.baseline,
            counts: self.counts,
            verdict,
        }
    }

    /// The check's verdict at the end of a soak, or when the soak is cut short: the
    /// first Breach / Hold reached, else `InsufficientSamples` when fewer than
    /// `min_samples` valid samples were collected, else `None` (the check passed).
    pub fn finish(&self) -> Option<Verdict> {
        if let Some(v) = &self.decided {
            return Some(v.clone());
        }
        (self.counts.valid_samples < self.min_samples).then(|| Verdict::InsufficientSamples {
            check: self.check.clone(),
            valid_samples: self.counts.valid_samples,
            min_samples: self.min_samples,
            total_samples: self.counts.total_samples,
            inconclusive_samples: self.counts.inconclusive_samples,
            last_inconclusive_reason: self.last_inconclusive_reason.clone(),
        })
    }

    fn breach_verdict(
        &self,
        value: Option<f64>,
        crossed: &[Bound],
        failure: Option<String>,
    ) -> Verdict {
        let (rule, threshold, limit) = match (failure.is_some(), crossed.first()) {
            (false, Some(first)) => {
                let texts: Vec<&str> = crossed.iter().map(|b| b.text.as_str()).collect();
                (first.rule, Some(texts.join(" and ")), Some(first.limit))
            }
            _ => (Rule::Failed, None, None),
        };
        Verdict::Breach {
            check: self.check.clone(),
            rule,
            threshold,
            limit,
            value,
            baseline: self.baseline,
            in_a_row: self.counts.breaches_in_a_row,
            needed: self.consecutive,
            reason: failure,
        }
    }

    fn inconclusive_verdict(&self, value: Option<f64>, reason: &str) -> Option<Verdict> {
        match self.policy {
            InconclusivePolicy::Breach => Some(Verdict::Breach {
                check: self.check.clone(),
                rule: Rule::Inconclusive,
                threshold: None,
                limit: None,
                value,
                baseline: self.baseline,
                in_a_row: self.counts.inconclusive_in_a_row,
                needed: self.max_inconclusive + 1,
                reason: Some(reason.to_string()),
            }),
            InconclusivePolicy::Hold => Some(Verdict::Hold {
                check: self.check.clone(),
                inconclusive_in_a_row: self.counts.inconclusive_in_a_row,
                max_inconclusive: self.max_inconclusive,
                reason: reason.to_string(),
            }),
            // Keep soaking; `min_samples` at `finish` is what protects the verdict.
            InconclusivePolicy::Ignore => None,
        }
    }
}

/// `max_increase` / `max_decrease` turned into a limit. A percentage is of
/// |baseline|, so a negative baseline still moves the limit the right way; with a
/// zero baseline any percentage allows no change at all (any increase breaches
/// `max_increase`), which is the honest reading of "20% more than nothing".
fn relative_bound(rule: Rule, baseline: f64, delta: Delta) -> Bound {
    let amount = match delta {
        Delta::Absolute(a) => a.abs(),
        Delta::Percent(p) => baseline.abs() * p.abs() / 100.0,
    };
    let (sign, limit) = if rule == Rule::MaxIncrease {
        ('+', baseline + amount)
    } else {
        ('-', baseline - amount)
    };
    Bound {
        rule,
        limit,
        text: format!(
            "baseline {} {sign} {} = {}",
            num(baseline),
            delta_text(delta),
            num(limit)
        ),
    }
}

fn delta_text(delta: Delta) -> String {
    match delta {
        Delta::Absolute(a) => num(a.abs()),
        Delta::Percent(p) => format!("{}%", trim(p.abs())),
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// A number for humans: at most six decimals, trailing zeros trimmed but one kept
/// ("3.0", "0.61", "3.6" rather than 3.5999999999999996).
pub fn num(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "infinity" } else { "-infinity" }.to_string();
    }
    if v != 0.0 && v.abs() < 1e-4 {
        return format!("{v:e}");
    }
    let s = trim(v);
    if s.contains('.') { s } else { format!("{s}.0") }
}

/// Like [`num`] without forcing a decimal ("20" for a percentage).
fn trim(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::plan::model::{CheckSource, Thresholds};

    fn check(thresholds: Thresholds) -> Check {
        Check {
            name: "share".to_string(),
            source: CheckSource::Sql {
                query: "SELECT 1".to_string(),
            },
            thresholds,
            consecutive: 3,
            min_samples: 2,
            on_inconclusive: InconclusivePolicy::Breach,
            max_inconclusive: 2,
            timeout: Duration::from_secs(1),
        }
    }

    fn max(m: f64) -> Thresholds {
        Thresholds {
            max: Some(m),
            ..Default::default()
        }
    }

    #[test]
    fn a_state_persisted_mid_soak_continues_exactly_where_it_was() {
        let mut live = CheckState::new(&check(max(0.5)), Some(0.2));
        for o in [v(0.7), inc("NULL"), v(0.8)] {
            live.observe(&o);
        }
        let text = serde_json::to_string(&live).unwrap();
        let mut restored: CheckState = serde_json::from_str(&text).unwrap();
        assert_eq!(restored, live);
        // The breach streak (2 of 3) carries over: the next breaching sample fires.
        let (a, b) = (live.observe(&v(0.9)), restored.observe(&v(0.9)));
        assert_eq!(a, b);
        assert!(
            matches!(b.verdict, Some(Verdict::Breach { in_a_row: 3, .. })),
            "{b:?}"
        );
    }

    fn v(x: f64) -> Observation {
        Observation::Value(x)
    }

    fn inc(reason: &str) -> Observation {
        Observation::inconclusive(reason)
    }

    fn feed(state: &mut CheckState, obs: &[Observation]) -> Vec<Assessment> {
        obs.iter().map(|o| state.observe(o)).collect()
    }

    #[test]
    fn max_breaches_after_consecutive_samples_and_says_why() {
        let mut s = CheckState::new(
            &Check {
                name: "unknown_cancel_reason_share".into(),
                ..check(max(0.5))
            },
            None,
        );
        let a = feed(&mut s, &[v(0.61), v(0.7)]);
        assert!(a.iter().all(|a| a.breaching && a.verdict.is_none()));
        assert_eq!(a[1].counts.breaches_in_a_row, 2);
        assert_eq!(a[1].crossed[0].text, "max 0.5");
        let third = s.observe(&v(0.61));
        let verdict = third.verdict.clone().expect("third breach in a row fires");
        assert_eq!(
            verdict.message(),
            "unknown_cancel_reason_share breached max 0.5 with 0.61 (3 in a row, consecutive 3)"
        );
        match &verdict {
            Verdict::Breach {
                rule,
                limit,
                value,
                in_a_row,
                needed,
                ..
            } => {
                assert_eq!(
                    (*rule, *limit, *value, *in_a_row, *needed),
                    (Rule::Max, Some(0.5), Some(0.61), 3, 3)
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.finish(), Some(verdict));
    }

    #[test]
    fn value_equal_to_a_limit_does_not_breach() {
        let mut s = CheckState::new(
            &check(Thresholds {
                min: Some(1.0),
                max: Some(2.0),
                ..Default::default()
            }),
            None,
        );
        assert!(!s.observe(&v(1.0)).breaching);
        assert!(!s.observe(&v(2.0)).breaching);
    }

    #[test]
    fn min_breaches_below() {
        let mut s = CheckState::new(
            &Check {
                consecutive: 1,
                ..check(Thresholds {
                    min: Some(10.0),
                    ..Default::default()
                })
            },
            None,
        );
        let a = s.observe(&v(9.5));
        assert!(a.breaching);
        assert_eq!(a.crossed[0].rule, Rule::Min);
        assert_eq!(
            a.verdict.unwrap().message(),
            "share breached min 10.0 with 9.5 (1 in a row, consecutive 1)"
        );
    }

    #[test]
    fn a_good_sample_resets_the_breach_streak() {
        let mut s = CheckState::new(&check(max(0.5)), None);
        let a = feed(&mut s, &[v(0.9), v(0.9), v(0.1), v(0.9), v(0.9)]);
        assert_eq!(a[2].counts.breaches_in_a_row, 0);
        assert!(a.iter().all(|a| a.verdict.is_none()));
        assert_eq!(a[4].counts.breaches_in_a_row, 2);
        assert!(s.observe(&v(0.9)).verdict.is_some());
    }

    #[test]
    fn inconclusive_samples_neither_reset_nor_advance_the_breach_streak() {
        let mut s = CheckState::new(&check(max(0.5)), None);
        let a = feed(
            &mut s,
            &[v(0.9), v(0.9), inc("query returned NULL"), inc("timeout")],
        );
        assert_eq!(a[3].counts.breaches_in_a_row, 2);
        assert_eq!(a[3].counts.valid_samples, 2);
        assert_eq!(a[3].counts.inconclusive_in_a_row, 2);
        assert!(
            a.iter().all(|a| a.verdict.is_none()),
            "2 inconclusive are within max_inconclusive 2"
        );
        let third = s.observe(&v(0.9));
        assert_eq!(
            third.counts.inconclusive_in_a_row, 0,
            "a valid sample resets the inconclusive streak"
        );
        assert!(matches!(
            third.verdict,
            Some(Verdict::Breach {
                rule: Rule::Max,
                in_a_row: 3,
                ..
            })
        ));
    }

    #[test]
    fn inconclusive_policy_breach_fires_once_max_inconclusive_is_exceeded() {
        let mut s = CheckState::new(&check(max(0.5)), Some(0.1));
        let a = feed(&mut s, &[inc("a"), inc("b")]);
        assert!(a.iter().all(|a| a.verdict.is_none() && !a.valid));
        let a = s.observe(&inc("query returned no row"));
        let verdict = a.verdict.unwrap();
        assert!(matches!(
            verdict,
            Verdict::Breach {
                rule: Rule::Inconclusive,
                in_a_row: 3,
                needed: 3,
                ..
            }
        ));
        assert_eq!(
            verdict.message(),
            "share breached rule inconclusive: 3 inconclusive samples in a row (max_inconclusive 2), last: query returned no row"
        );
    }

    #[test]
    fn inconclusive_policy_hold() {
        let mut s = CheckState::new(
            &Check {
                on_inconclusive: InconclusivePolicy::Hold,
                max_inconclusive: 0,
                ..check(max(0.5))
            },
            None,
        );
        let a = s.observe(&inc("connection refused"));
        let verdict = a.verdict.unwrap();
        assert_eq!(
            verdict,
            Verdict::Hold {
                check: "share".into(),
                inconclusive_in_a_row: 1,
                max_inconclusive: 0,
                reason: "connection refused".into()
            }
        );
        assert!(verdict.message().contains("held for a human"));
        // The first decision sticks even if the caller keeps sampling.
        feed(&mut s, &[v(0.1), v(0.1), v(0.1)]);
        assert_eq!(s.finish(), Some(verdict));
    }

    #[test]
    fn inconclusive_policy_ignore_only_min_samples_protects() {
        let mut s = CheckState::new(
            &Check {
                on_inconclusive: InconclusivePolicy::Ignore,
                ..check(max(0.5))
            },
            None,
        );
        let a = feed(&mut s, &[inc("x"), inc("x"), inc("x"), inc("x"), v(0.1)]);
        assert!(a.iter().all(|a| a.verdict.is_none()));
        assert_eq!(a[3].counts.inconclusive_in_a_row, 4);
        let verdict = s.finish().expect("1 valid sample < min_samples 2");
        assert!(matches!(
            verdict,
            Verdict::InsufficientSamples {
                valid_samples: 1,
                min_samples: 2,
                total_samples: 5,
                inconclusive_samples: 4,
                ..
            }
        ));
        assert_eq!(
            verdict.message(),
            "share has 1 valid samples, min_samples is 2 (5 taken, 4 inconclusive, last: x)"
        );
        s.observe(&v(0.2));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn a_soak_cut_short_or_empty_does_not_pass() {
        let s = CheckState::new(&check(max(0.5)), None);
        assert!(matches!(
            s.finish(),
            Some(Verdict::InsufficientSamples {
                valid_samples: 0,
                total_samples: 0,
                ..
            })
        ));
        let mut s = CheckState::new(
            &Check {
                min_samples: 0,
                ..check(max(0.5))
            },
            None,
        );
        assert_eq!(s.finish(), None, "min_samples 0 asks for nothing");
        s.observe(&inc("x"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn breaching_streak_in_progress_at_finish_is_not_a_verdict() {
        let mut s = CheckState::new(&check(max(0.5)), None);
        feed(&mut s, &[v(0.1), v(0.9), v(0.9)]);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn nan_and_infinity_are_inconclusive_never_values() {
        let mut s = CheckState::new(
            &Check {
                consecutive: 1,
                ..check(Thresholds {
                    min: Some(0.0),
                    max: Some(1.0),
                    ..Default::default()
                })
            },
            None,
        );
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let a = s.observe(&v(x));
            assert!(!a.valid && !a.breaching, "{x}");
            assert_eq!(a.value, None);
        }
        let a = s.observe(&v(f64::NAN));
        assert_eq!(a.reason.as_deref(), Some("value is NaN"));
        assert!(matches!(
            a.verdict,
            Some(Verdict::Breach {
                rule: Rule::Inconclusive,
                ..
            })
        ));
        assert_eq!(s.counts().valid_samples, 0);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(
            json["observation"],
            serde_json::json!({"kind": "value", "value": null})
        );
    }

    #[test]
    fn failed_breaches_regardless_of_thresholds_and_counts_as_valid() {
        let mut s = CheckState::new(
            &Check {
                consecutive: 2,
                ..check(max(1000.0))
            },
            None,
        );
        let a = s.observe(&Observation::failed(
            Some(12.5),
            "HTTP status 503, expected one of [200]",
        ));
        assert!(a.valid && a.breaching);
        assert_eq!(a.counts.valid_samples, 1);
        assert_eq!(a.value, Some(12.5));
        let a = s.observe(&Observation::failed(
            Some(12.0),
            "HTTP status 503, expected one of [200]",
        ));
        let verdict = a.verdict.unwrap();
        assert!(matches!(
            verdict,
            Verdict::Breach {
                rule: Rule::Failed,
                in_a_row: 2,
                ..
            }
        ));
        assert_eq!(
            verdict.message(),
            "share failed with 12.0: HTTP status 503, expected one of [200] (2 in a row, consecutive 2)"
        );
    }

    #[test]
    fn failure_and_threshold_breaches_share_one_streak() {
        let mut s = CheckState::new(
            &Check {
                consecutive: 2,
                ..check(max(100.0))
            },
            None,
        );
        s.observe(&v(150.0));
        let a = s.observe(&Observation::failed(None, "HTTP status 500"));
        assert!(matches!(
            a.verdict,
            Some(Verdict::Breach {
                rule: Rule::Failed,
                ..
            })
        ));
    }

    #[test]
    fn percent_increase_is_relative_to_the_baseline() {
        let t = Thresholds {
            max_increase: Some(Delta::Percent(20.0)),
            ..Default::default()
        };
        let mut s = CheckState::new(
            &Check {
                consecutive: 1,
                ..check(t)
            },
            Some(3.0),
        );
        assert_eq!(s.bounds()[0].text, "baseline 3.0 + 20% = 3.6");
        assert!((s.bounds()[0].limit - 3.6).abs() < 1e-9);
        assert!(!s.observe(&v(3.5)).breaching);
        let a = s.observe(&v(3.7));
        assert_eq!(a.baseline, Some(3.0));
        assert_eq!(
            a.verdict.unwrap().message(),
            "share breached baseline 3.0 + 20% = 3.6 with 3.7 (1 in a row, consecutive 1)"
        );
    }

    #[test]
    fn absolute_increase_and_decrease() {
        let t = Thresholds {
            max_increase: Some(Delta::Absolute(5.0)),
            max_decrease: Some(Delta::Absolute(2.0)),
            ..Default::default()
        };
        let mut s = CheckState::new(
            &Check {
                consecutive: 1,
                ..check(t)
            },
            Some(10.0),
        );
        assert_eq!(
            s.observe(&v(9.0)).thresholds,
            "baseline 10.0 + 5.0 = 15.0; baseline 10.0 - 2.0 = 8.0"
        );
        assert!(!s.observe(&v(15.0)).breaching);
        assert_eq!(s.observe(&v(15.1)).crossed[0].rule, Rule::MaxIncrease);
        let a = s.observe(&v(7.9));
        assert_eq!(a.crossed[0].rule, Rule::MaxDecrease);
        assert!(matches!(
            a.verdict,
            Some(Verdict::Breach {
                rule: Rule::MaxDecrease,
                limit: Some(8.0),
                ..
            })
        ));
    }

    #[test]
    fn percent_decrease_and_negative_baseline() {
        let t = Thresholds {
            max_decrease: Some(Delta::Percent(50.0)),
            ..Default::default()
        };
        let s = CheckState::new(&check(t.clone()), Some(100.0));
        assert_eq!(s.bounds()[0].limit, 50.0);
        let s = CheckState::new(&check(t), Some(-10.0));
        assert_eq!(s.bounds()[0].limit, -15.0, "a percentage is of |baseline|");
        assert_eq!(s.bounds()[0].text, "baseline -10.0 - 50% = -15.0");
    }

    #[test]
    fn zero_baseline_percent_allows_no_change_absolute_still_works() {
        let pct = Thresholds {
            max_increase: Some(Delta::Percent(20.0)),
            ..Default::default()
        };
        let mut s = CheckState::new(
            &Check {
                consecutive: 1,
                ..check(pct)
            },
            Some(0.0),
        );
        assert_eq!(s.bounds()[0].text, "baseline 0.0 + 20% = 0.0");
        assert!(!s.observe(&v(0.0)).breaching);
        assert!(s.observe(&v(0.01)).breaching);
        let abs = Thresholds {
            max_increase: Some(Delta::Absolute(0.5)),
            ..Default::default()
        };
        let mut s = CheckState::new(
            &Check {
                consecutive: 1,
                ..check(abs)
            },
            Some(0.0),
        );
        assert!(!s.observe(&v(0.5)).breaching);
        assert!(s.observe(&v(0.6)).breaching);
    }

    #[test]
    fn a_missing_baseline_makes_relative_thresholds_inconclusive_not_passing() {
        let t = Thresholds {
            max: Some(100.0),
            max_increase: Some(Delta::Percent(20.0)),
            ..Default::default()
        };
        for baseline in [None, Some(f64::NAN)] {
            let mut s = CheckState::new(
                &Check {
                    consecutive: 1,
                    ..check(t.clone())
                },
                baseline,
            );
            assert_eq!(s.baseline(), None);
            let a = s.observe(&v(5.0));
            assert!(!a.valid);
            assert_eq!(a.thresholds, "max 100.0; max_increase 20% (no baseline)");
            assert!(
                a.reason
                    .unwrap()
                    .contains("no baseline to evaluate max_increase 20%")
            );
            // An absolute bound that is crossed is still a breach.
            let a = s.observe(&v(500.0));
            assert!(a.valid && a.breaching);
            assert!(a.verdict.is_some());
        }
    }

    #[test]
    fn several_bounds_crossed_are_all_named() {
        let t = Thresholds {
            max: Some(1.0),
            max_increase: Some(Delta::Absolute(1.0)),
            ..Default::default()
        };
        let mut s = CheckState::new(
            &Check {
                consecutive: 1,
                ..check(t)
            },
            Some(0.5),
        );
        let a = s.observe(&v(2.0));
        assert_eq!(a.crossed.len(), 2);
        assert_eq!(
            a.verdict.unwrap().message(),
            "share breached max 1.0 and baseline 0.5 + 1.0 = 1.5 with 2.0 (1 in a row, consecutive 1)"
        );
    }

    #[test]
    fn consecutive_zero_is_treated_as_one() {
        let mut s = CheckState::new(
            &Check {
                consecutive: 0,
                ..check(max(0.5))
            },
            None,
        );
        assert!(s.observe(&v(0.9)).verdict.is_some());
    }

    #[test]
    fn assessment_serializes_everything_an_event_needs() {
        let t = Thresholds {
            max: Some(0.5),
            max_increase: Some(Delta::Percent(20.0)),
            ..Default::default()
        };
        let mut s = CheckState::new(&check(t), Some(0.25));
        let a = s.observe(&v(0.61));
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["check"], "share");
        assert_eq!(
            json["observation"],
            serde_json::json!({"kind": "value", "value": 0.61})
        );
        assert_eq!(json["breaching"], true);
        assert_eq!(json["baseline"], 0.25);
        assert_eq!(json["thresholds"], "max 0.5; baseline 0.25 + 20% = 0.3");
        assert_eq!(json["bounds"][1]["rule"], "max_increase");
        assert_eq!(json["bounds"][1]["limit"], 0.3);
        assert_eq!(json["counts"]["breaches_in_a_row"], 1);
        assert_eq!(json["counts"]["total_samples"], 1);
        assert_eq!(json["verdict"], serde_json::Value::Null);
        assert!(
            a.summary()
                .contains("breaching max 0.5 and baseline 0.25 + 20% = 0.3"),
            "{}",
            a.summary()
        );
        feed(&mut s, &[v(0.61), v(0.61)]);
        let verdict = serde_json::to_value(s.finish().unwrap()).unwrap();
        assert_eq!(verdict["verdict"], "breach");
        assert_eq!(verdict["rule"], "max");
        let failed = serde_json::to_value(Observation::failed(None, "HTTP status 500")).unwrap();
        assert_eq!(
            failed,
            serde_json::json!({"kind": "failed", "value": null, "reason": "HTTP status 500"})
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(3.0), "3.0");
        assert_eq!(num(3.0 * 1.2), "3.6");
        assert_eq!(num(0.61), "0.61");
        assert_eq!(num(-0.0), "0.0");
        assert_eq!(num(1e-7), "1e-7");
        assert_eq!(num(f64::NAN), "NaN");
        assert_eq!(delta_text(Delta::Percent(12.5)), "12.5%");
    }
}
