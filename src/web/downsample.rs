//! Downsampling a check's samples for a chart, on the server: an hour's soak at
//! a 1 s interval is 3,600 samples per check, more than a chart has pixels.
//!
//! Pure, no I/O. Invariants:
//! - every breaching sample is kept, whatever `target`: it is what the on-call
//!   looks for, and a min/max envelope could hide one;
//! - every inconclusive sample is kept too (a min/max envelope would hide it:
//!   it has no value), except inside a stretch of them: of consecutive
//!   inconclusive samples the first and the last are kept, which draws the
//!   stretch, so that a target down for hours does not send every one of its
//!   samples (the series reports how many there were);
//! - of the other samples at most `target` are kept: the samples are cut into
//!   `target / 2` buckets of consecutive samples, and of each bucket the lowest
//!   and the highest value are kept (so the envelope of the line, spikes
//!   included, survives);
//! - points keep their order, and every point kept is a real sample (its seq,
//!   time and value as measured, never an average).

use serde::Serialize;
use utoipa::ToSchema;

/// What a sample was, as a chart marks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A valid value within every threshold.
    Ok,
    /// A valid sample that crossed a threshold, or failed (an HTTP status not
    /// expected, say).
    Breach,
    /// No usable value (NULL, no row, NaN, an error, a timeout); never a pass.
    Inconclusive,
}

/// One sample of a check, as a chart needs it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Point {
    /// The sample event's `seq` (its place in the run's events).
    pub seq: i64,
    /// Seconds since the soak started.
    pub t: f64,
    /// The measured value; null when inconclusive (or a failure without one).
    pub value: Option<f64>,
    pub kind: Kind,
    /// Breaching samples in a row up to and including this one.
    pub in_a_row: u32,
}

/// At most `target` ok samples of `points` (min and max per bucket), every
/// breach, and the inconclusive samples but for the inside of a stretch of
/// them, in order. `target` below 2 is taken as 2.
pub fn downsample(points: &[Point], target: usize) -> Vec<Point> {
    let target = target.max(2);
    if points.len() <= target {
        return points.to_vec();
    }
    let buckets = target / 2;
    let n = points.len();
    let mut kept = Vec::with_capacity(target + 16);
    for b in 0..buckets {
        let bucket = &points[b * n / buckets..(b + 1) * n / buckets];
        let mut low: Option<(usize, f64)> = None;
        let mut high: Option<(usize, f64)> = None;
        for (i, p) in bucket.iter().enumerate() {
            let (Kind::Ok, Some(v)) = (p.kind, p.value) else {
                continue;
            };
            if low.is_none_or(|(_, l)| v < l) {
                low = Some((i, v));
            }
            if high.is_none_or(|(_, h)| v > h) {
                high = Some((i, v));
            }
        }
        let (low, high) = (low.map(|l| l.0), high.map(|h| h.0));
        let start = b * n / buckets;
        kept.extend(
            bucket
                .iter()
                .enumerate()
                .filter(|(i, p)| match p.kind {
                    Kind::Ok => Some(*i) == low || Some(*i) == high,
                    Kind::Breach => true,
                    Kind::Inconclusive => !inside_inconclusive_stretch(points, start + i),
                })
                .map(|(_, p)| p.clone()),
        );
    }
    kept
}

/// Whether `points[i]` has an inconclusive sample on both sides.
fn inside_inconclusive_stretch(points: &[Point], i: usize) -> bool {
    let inconclusive = |j: usize| points.get(j).is_some_and(|p| p.kind == Kind::Inconclusive);
    i > 0 && inconclusive(i - 1) && inconclusive(i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An hour at 1 s: a slow wave, breaches scattered (a prime stride and a
    /// run of five), inconclusive samples scattered on another stride.
    fn hour() -> Vec<Point> {
        (0..3600)
            .map(|i| {
                let kind = if i % 97 == 13 || (2000..2005).contains(&i) {
                    Kind::Breach
                } else if i % 211 == 5 {
                    Kind::Inconclusive
                } else {
                    Kind::Ok
                };
                let value = match kind {
                    Kind::Inconclusive => None,
                    Kind::Breach => Some(500.0 + i as f64),
                    Kind::Ok => Some(100.0 + 50.0 * (i as f64 / 300.0).sin()),
                };
                Point {
                    seq: 10 + i as i64,
                    t: i as f64,
                    value,
                    kind,
                    in_a_row: u32::from(kind == Kind::Breach),
                }
            })
            .collect()
    }

    #[test]
    fn web_downsampling_keeps_every_breach_and_scattered_inconclusive_sample() {
        let all = hour();
        let special = all.iter().filter(|p| p.kind != Kind::Ok).count();
        let breaches = all.iter().filter(|p| p.kind == Kind::Breach).count();
        assert!(breaches > 30 && special > breaches, "{breaches} {special}");
        for n in [2, 10, 300, 601, 1000] {
            let kept = downsample(&all, n);
            assert!(kept.len() <= n + special, "{n}: {}", kept.len());
            let ok = kept.iter().filter(|p| p.kind == Kind::Ok).count();
            assert!(ok <= n, "{n}: {ok} ok samples");
            for p in all.iter().filter(|p| p.kind != Kind::Ok) {
                assert!(kept.contains(p), "{n}: sample {} dropped", p.seq);
            }
            assert!(kept.windows(2).all(|w| w[0].seq < w[1].seq), "{n}: order");
            // Every point kept is a real sample.
            assert!(kept.iter().all(|p| all.contains(p)));
        }
    }

    #[test]
    fn web_downsampling_draws_a_long_inconclusive_stretch_by_its_ends() {
        // A target down for most of a day at 1 s, a breach in the middle of it.
        let mut all = hour();
        for (i, p) in all.iter_mut().enumerate().skip(1000).take(2000) {
            p.kind = if i == 2500 {
                Kind::Breach
            } else {
                Kind::Inconclusive
            };
            p.value = (i == 2500).then_some(900.0);
        }
        let kept = downsample(&all, 300);
        let inside: Vec<&Point> = kept
            .iter()
            .filter(|p| (1000..3000).contains(&(p.t as usize)))
            .collect();
        // The ends of both stretches around the breach, and the breach.
        let ts: Vec<usize> = inside.iter().map(|p| p.t as usize).collect();
        assert_eq!(ts, [1000, 2499, 2500, 2501, 2999], "{ts:?}");
        assert!(kept.len() <= 300 + 80, "{}", kept.len());
    }

    #[test]
    fn web_downsampling_keeps_the_envelope() {
        let all = hour();
        let kept = downsample(&all, 300);
        let ok = |ps: &[Point]| -> (f64, f64) {
            ps.iter()
                .filter(|p| p.kind == Kind::Ok)
                .filter_map(|p| p.value)
                .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
        };
        assert_eq!(ok(&kept), ok(&all));
        // A single spike among flat samples survives.
        let mut flat: Vec<Point> = (0..3600)
            .map(|i| Point {
                seq: i,
                t: i as f64,
                value: Some(1.0),
                kind: Kind::Ok,
                in_a_row: 0,
            })
            .collect();
        flat[1234].value = Some(9.0);
        assert!(downsample(&flat, 100).iter().any(|p| p.value == Some(9.0)));
    }

    #[test]
    fn web_downsampling_leaves_short_series_alone() {
        let all: Vec<Point> = hour().into_iter().take(250).collect();
        assert_eq!(downsample(&all, 300), all);
        assert!(downsample(&[], 300).is_empty());
    }
}
