//! The sampling clock of the soak, the confirmation and the gate: when each
//! sample is due, and how much of the time since the start was watched.
//!
//! Pure arithmetic on durations since the start: no I/O and no clock reads. The
//! caller asks when the next sample is due, sleeps until then, and tells the clock
//! when it actually woke.
//!
//! Invariants:
//! - Sample `n` (from 1) is due `n` intervals after the start, plus all the time
//!   that was not watched before it. The schedule only ever moves later.
//! - A tick that fires more than [`Cadence::slack`] (a quarter interval) after it
//!   was due was blocked: a stalled state database, a checkpoint write waiting, a
//!   paused process, a sample that overran. Nobody watched the time since it was
//!   due, so all of it is unwatched: it does not count as soaked, and the
//!   schedule moves later by as much. The missed samples are not made up back to
//!   back (a `consecutive: 4` breach out of four samples taken within milliseconds
//!   would judge one instant four times); the soak takes its planned samples and
//!   ends later instead, as a resumed soak does for the time the process was down.
//! - A tick late by at most the slack is timer and scheduling jitter: the schedule
//!   keeps its place and the delay counts as watched, so jitter neither drifts the
//!   schedule nor lengthens the soak.
//! - Hence consecutive wake-ups are at least `interval - slack` (three quarters of
//!   an interval) apart, and at the wake-up of sample `n` the watched time is
//!   between `n` intervals and `n` intervals plus the slack.

use std::time::Duration;

/// The schedule of one soak, confirmation or gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cadence {
    interval: Duration,
    /// Time since the start that nobody watched: how much later than `n`
    /// intervals sample `n` is now due.
    unwatched: Duration,
}

/// What the clock made of one wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// How long after it was due the tick fired.
    pub late: Duration,
    /// The part of `late` that does not count as watched: all of it when it is
    /// more than the slack, otherwise none.
    pub unwatched: Duration,
}

impl Cadence {
    pub fn new(interval: Duration) -> Cadence {
        Cadence {
            interval,
            unwatched: Duration::ZERO,
        }
    }

    /// The lateness tolerated as jitter: a quarter interval.
    pub fn slack(&self) -> Duration {
        self.interval / 4
    }

    /// When sample `n` (from 1) is due, since the start.
    pub fn due(&self, n: u32) -> Duration {
        self.unwatched
            .saturating_add(self.interval.saturating_mul(n))
    }

    /// When the watched time reaches `watched` if nothing blocks from now on,
    /// since the start: the end of a soak of that duration.
    pub fn when_watched(&self, watched: Duration) -> Duration {
        self.unwatched.saturating_add(watched)
    }

    /// The tick due at `due` (from [`Cadence::due`] or
    /// [`Cadence::when_watched`]) fired at `now`, both since the start. A tick
    /// late by more than the slack moves the schedule later by its lateness.
    pub fn fired(&mut self, due: Duration, now: Duration) -> Tick {
        let late = now.saturating_sub(due);
        let unwatched = if late > self.slack() {
            late
        } else {
            Duration::ZERO
        };
        self.unwatched = self.unwatched.saturating_add(unwatched);
        Tick { late, unwatched }
    }

    /// Time watched by `now` (since the start): everything but the unwatched part.
    pub fn watched(&self, now: Duration) -> Duration {
        now.saturating_sub(self.unwatched)
    }

    /// All the unwatched time so far.
    pub fn unwatched(&self) -> Duration {
        self.unwatched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn on_time_ticks_are_one_interval_apart_and_all_watched() {
        let mut c = Cadence::new(ms(1000));
        for n in 1..=5 {
            assert_eq!(c.due(n), ms(1000) * n);
            let tick = c.fired(c.due(n), c.due(n));
            assert_eq!(tick.unwatched, Duration::ZERO);
        }
        assert_eq!(c.watched(ms(5000)), ms(5000));
        assert_eq!(c.when_watched(ms(5500)), ms(5500));
    }

    #[test]
    fn jitter_within_the_slack_keeps_the_schedule_and_counts_as_watched() {
        let mut c = Cadence::new(ms(1000));
        let tick = c.fired(c.due(3), ms(3250));
        assert_eq!(
            tick,
            Tick {
                late: ms(250),
                unwatched: Duration::ZERO
            }
        );
        assert_eq!(c.due(4), ms(4000));
        assert_eq!(c.watched(ms(3250)), ms(3250));
    }

    #[test]
    fn a_stall_is_not_watched_and_moves_the_schedule_instead_of_bursting() {
        // The process was paused for 3.2 s just before sample 3 was due.
        let mut c = Cadence::new(ms(1000));
        let tick = c.fired(c.due(3), ms(6200));
        assert_eq!(tick.late, ms(3200));
        assert_eq!(tick.unwatched, ms(3200));
        // Sample 3 is taken now and counts as three intervals watched; sample 4
        // is due a full interval later, not at once.
        assert_eq!(c.watched(ms(6200)), ms(3000));
        assert_eq!(c.due(4), ms(7200));
        // An 8 s soak ends 3.2 s later than planned.
        assert_eq!(c.when_watched(ms(8000)), ms(11200));
        assert_eq!(c.unwatched(), ms(3200));
    }

    #[test]
    fn just_over_the_slack_is_unwatched_in_full() {
        let mut c = Cadence::new(ms(400));
        let tick = c.fired(c.due(1), ms(501));
        assert_eq!(tick.unwatched, ms(101));
        assert_eq!(c.due(2), ms(901));
    }

    #[test]
    fn a_late_end_of_the_soak_does_not_count_as_soaked() {
        let mut c = Cadence::new(ms(1000));
        let end = c.when_watched(ms(2500));
        let tick = c.fired(end, ms(4500));
        assert_eq!(tick.unwatched, ms(2000));
        assert_eq!(c.watched(ms(4500)), ms(2500));
    }

    proptest! {
        /// Whatever the delays (jitter, stalls, slow samples), consecutive
        /// wake-ups are at least three quarters of an interval apart, and at the
        /// wake-up of sample n between n intervals and n intervals plus the slack
        /// have been watched.
        #[test]
        fn samples_are_spaced_and_watched_time_is_never_overstated(
            interval_ms in 1u64..5_000,
            delays in proptest::collection::vec(0u64..20_000, 1..40),
        ) {
            let interval = ms(interval_ms);
            let mut c = Cadence::new(interval);
            let mut last_wake: Option<Duration> = None;
            for (i, delay) in delays.iter().enumerate() {
                let n = i as u32 + 1;
                // Small delays are common; big ones are stalls.
                let delay = if delay % 3 == 0 { ms(*delay) } else { ms(delay % (interval_ms / 4 + 1)) };
                let due = c.due(n);
                let wake = due + delay;
                if let Some(prev) = last_wake {
                    prop_assert!(wake >= prev);
                    prop_assert!(wake - prev >= interval - interval / 4,
                        "wake-ups {prev:?} and {wake:?} closer than 3/4 of {interval:?}");
                }
                c.fired(due, wake);
                let watched = c.watched(wake);
                prop_assert!(watched >= interval * n, "{watched:?} < {n} x {interval:?}");
                prop_assert!(watched <= interval * n + c.slack());
                prop_assert_eq!(c.unwatched() + watched, wake);
                last_wake = Some(wake);
            }
        }
    }
}
