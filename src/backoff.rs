//! Retry delays: one schedule for every "try again later" in pgshepherd (a
//! migration that hit `lock_timeout`, a webhook that answered 503, a state
//! database that is away).
//!
//! Invariants, for every attempt `n` (1-based; 0 counts as 1):
//! - the nominal delay is `min(max, first * 2^(n-1))`: it never shrinks from one
//!   attempt to the next, never exceeds `max`, and never overflows;
//! - jitter spreads the retries of callers that failed together (they would
//!   otherwise retry in lockstep) within bounds the caller chose: [`Jitter::Equal`]
//!   keeps at least half the nominal delay, [`Jitter::Proportional`] stays within
//!   a fraction either side of it;
//! - a delay the other side asked for (an HTTP `Retry-After`) replaces the
//!   schedule, held within `[first, suggested_max]`: never below `first`, so a
//!   receiver answering "retry now" is not hammered in a loop, never past
//!   `suggested_max`, so "retry tomorrow" cannot park a retry for a day.
//!
//! Pure arithmetic: the random draw is an argument of [`Backoff::delay_at`], so
//! every rule is unit-tested without time or I/O.

use std::time::Duration;

/// How the delay varies around its nominal value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// Uniform in `[d/2, d]` ("equal jitter"): spread out, yet each retry waits at
    /// least half its nominal delay.
    Equal,
    /// Uniform in `[d * (1 - f), d * (1 + f)]` for `f` in `[0, 1]`; may exceed `max`
    /// by the fraction.
    Proportional(f64),
    /// Exactly the nominal delay.
    None,
}

/// An exponential retry schedule. See the module documentation for its rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay before the first retry.
    pub first: Duration,
    /// The cap of the schedule's nominal delay.
    pub max: Duration,
    pub jitter: Jitter,
    /// The longest server-suggested delay honoured (defaults to `max`).
    pub suggested_max: Duration,
}

impl Backoff {
    /// `first` doubling up to `max`, with equal jitter.
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            jitter: Jitter::Equal,
            suggested_max: max,
        }
    }

    pub const fn with_jitter(self, jitter: Jitter) -> Backoff {
        Backoff { jitter, ..self }
    }

    /// Honour server-suggested delays up to `limit` (which may exceed `max`).
    pub const fn with_suggested_max(self, limit: Duration) -> Backoff {
        Backoff {
            suggested_max: limit,
            ..self
        }
    }

    /// `min(max, first * 2^(attempt-1))`, saturating rather than overflowing.
    pub fn nominal(&self, attempt: u32) -> Duration {
        let doublings = attempt.max(1) - 1;
        let nanos = 1u128
            .checked_shl(doublings)
            .and_then(|factor| self.first.as_nanos().checked_mul(factor));
        let d = match nanos {
            Some(n) => from_nanos_saturating(n),
            None if self.first.is_zero() => Duration::ZERO,
            None => Duration::MAX,
        };
        d.min(self.max)
    }

    /// The delay before retry number `attempt` (1-based), with jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_at(attempt, unit_random())
    }

    /// The delay before retry `attempt`: `suggested` held within
    /// `[first, suggested_max]` when the other side named one, else
    /// [`Backoff::delay`].
    pub fn delay_or_suggested(&self, attempt: u32, suggested: Option<Duration>) -> Duration {
        match suggested {
            Some(s) => self.clamp_suggested(s),
            None => self.delay(attempt),
        }
    }

    /// A server-suggested delay within `[first, suggested_max]` (a `suggested_max`
    /// below `first` yields `first`).
    pub fn clamp_suggested(&self, suggested: Duration) -> Duration {
        suggested.min(self.suggested_max).max(self.first)
    }

    /// [`Backoff::delay`] for a given draw `unit` in `[0, 1]` (values outside are
    /// clamped): 0 gives the shortest delay the jitter allows, 1 the longest.
    pub fn delay_at(&self, attempt: u32, unit: f64) -> Duration {
        let d = self.nominal(attempt);
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        match self.jitter {
            Jitter::None => d,
            Jitter::Equal => {
                let fixed = d / 2;
                fixed + scale(d - fixed, unit)
            }
            Jitter::Proportional(f) => {
                let f = if f.is_nan() { 0.0 } else { f.clamp(0.0, 1.0) };
                scale(d, 1.0 - f + 2.0 * f * unit)
            }
        }
    }
}

/// `d * k` for `k >= 0`, in whole nanoseconds, saturating at `Duration::MAX`
/// (`Duration::mul_f64` panics there instead).
fn scale(d: Duration, k: f64) -> Duration {
    let nanos = (d.as_nanos() as f64 * k).max(0.0);
    let secs = nanos / 1e9;
    if secs >= u64::MAX as f64 {
        return Duration::MAX;
    }
    Duration::new(secs as u64, (nanos % 1e9) as u32)
}

fn from_nanos_saturating(nanos: u128) -> Duration {
    let secs = nanos / 1_000_000_000;
    match u64::try_from(secs) {
        Ok(secs) => Duration::new(secs, (nanos % 1_000_000_000) as u32),
        Err(_) => Duration::MAX,
    }
}

/// A draw in `[0, 1]`. Spreading retries needs no cryptographic quality; a v4
/// UUID is random enough and already a dependency.
fn unit_random() -> f64 {
    let n = (uuid::Uuid::new_v4().as_u128() >> 64) as u64;
    n as f64 / u64::MAX as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn nominal_doubles_from_first_up_to_the_cap() {
        let b = Backoff::new(MS(500), S(60));
        assert_eq!(b.nominal(0), MS(500), "attempt 0 counts as 1");
        assert_eq!(b.nominal(1), MS(500));
        assert_eq!(b.nominal(2), S(1));
        assert_eq!(b.nominal(3), S(2));
        let mut previous = Duration::ZERO;
        for n in 1..200u32 {
            let d = b.nominal(n);
            assert!(d >= previous, "the delay shrank at attempt {n}");
            assert!(d <= b.max);
            if previous > Duration::ZERO && previous * 2 <= b.max {
                assert_eq!(d, previous * 2, "attempt {n} does not double");
            }
            previous = d;
        }
        assert_eq!(previous, b.max);
    }

    #[test]
    fn nominal_never_overflows() {
        assert_eq!(Backoff::new(MS(500), S(60)).nominal(u32::MAX), S(60));
        assert_eq!(Backoff::new(Duration::MAX, S(60)).nominal(u32::MAX), S(60));
        let uncapped = Backoff::new(S(1), Duration::MAX);
        assert_eq!(uncapped.nominal(u32::MAX), Duration::MAX);
        assert_eq!(
            uncapped
                .with_jitter(Jitter::Proportional(0.25))
                .delay_at(u32::MAX, 1.0),
            Duration::MAX
        );
    }

    #[test]
    fn an_uncapped_schedule_keeps_doubling_exactly() {
        let b = Backoff::new(Duration::from_nanos(1), Duration::MAX);
        assert_eq!(b.nominal(34), Duration::from_nanos(1 << 33));
        assert_eq!(b.nominal(64), Duration::from_nanos(1 << 63));
        assert_eq!(
            Backoff::new(Duration::ZERO, S(1)).nominal(u32::MAX),
            Duration::ZERO
        );
    }

    #[test]
    fn a_first_delay_above_the_cap_is_held_to_the_cap() {
        let b = Backoff::new(S(600), S(60));
        assert_eq!(b.nominal(1), S(60));
        assert!(b.delay(1) <= S(60));
    }

    #[test]
    fn equal_jitter_keeps_half_the_nominal_delay() {
        let b = Backoff::new(S(1), S(300));
        for n in 1..=15u32 {
            let d = b.nominal(n);
            assert_eq!(b.delay_at(n, 0.0), d / 2, "attempt {n}");
            assert_eq!(b.delay_at(n, 1.0), d, "attempt {n}");
            assert_eq!(b.delay_at(n, 0.5), d / 2 + (d - d / 2) / 2, "attempt {n}");
        }
        // Draws outside [0, 1] (and NaN) stay within the bounds.
        assert_eq!(b.delay_at(1, -3.0), MS(500));
        assert_eq!(b.delay_at(1, 7.0), S(1));
        assert_eq!(b.delay_at(1, f64::NAN), MS(500));
        assert_eq!(Backoff::new(Duration::ZERO, S(1)).delay(5), Duration::ZERO);
    }

    #[test]
    fn proportional_jitter_stays_within_its_fraction() {
        let b = Backoff::new(MS(100), S(10)).with_jitter(Jitter::Proportional(0.25));
        assert_eq!(b.delay_at(1, 0.0), MS(75));
        assert_eq!(b.delay_at(1, 0.5), MS(100));
        assert_eq!(b.delay_at(1, 1.0), MS(125));
        // Around the cap, not capped after the jitter.
        assert_eq!(b.delay_at(30, 1.0), MS(12_500));
    }

    #[test]
    fn no_jitter_is_the_nominal_delay() {
        let b = Backoff::new(MS(100), S(5)).with_jitter(Jitter::None);
        assert_eq!(
            (1..=8).map(|n| b.delay_at(n, 0.3)).collect::<Vec<_>>(),
            [100, 200, 400, 800, 1600, 3200, 5000, 5000].map(MS)
        );
    }

    #[test]
    fn random_draws_use_the_whole_jitter_range() {
        let b = Backoff::new(S(1), S(300));
        for n in [1u32, 4, 15] {
            let d = b.nominal(n);
            let samples: Vec<Duration> = (0..500).map(|_| b.delay(n)).collect();
            assert!(
                samples.iter().all(|s| *s >= d / 2 && *s <= d),
                "attempt {n}"
            );
            let mid = d * 3 / 4;
            assert!(
                samples.iter().any(|s| *s < mid) && samples.iter().any(|s| *s > mid),
                "attempt {n}: the draws do not spread"
            );
        }
    }

    #[test]
    fn a_suggested_delay_replaces_the_schedule_within_bounds() {
        let b = Backoff::new(S(1), S(300)).with_suggested_max(S(3600));
        // Honoured as asked, even past the schedule's cap.
        assert_eq!(b.delay_or_suggested(1, Some(S(7))), S(7));
        assert_eq!(b.delay_or_suggested(9, Some(S(1200))), S(1200));
        // "Now" is raised to the first delay; "tomorrow" is cut to the limit.
        assert_eq!(b.delay_or_suggested(1, Some(Duration::ZERO)), S(1));
        assert_eq!(b.delay_or_suggested(1, Some(S(86_400))), S(3600));
        assert_eq!(b.delay_or_suggested(1, Some(Duration::MAX)), S(3600));
        // Without a suggestion, the schedule.
        let d = b.delay_or_suggested(3, None);
        assert!(d >= S(2) && d <= S(4), "{d:?}");
    }

    #[test]
    fn the_suggestion_limit_defaults_to_the_cap_and_never_undercuts_first() {
        let b = Backoff::new(S(2), S(30));
        assert_eq!(b.clamp_suggested(S(90)), S(30));
        let odd = b.with_suggested_max(S(1));
        assert_eq!(odd.clamp_suggested(S(90)), S(2));
        assert_eq!(odd.clamp_suggested(Duration::ZERO), S(2));
    }
}
