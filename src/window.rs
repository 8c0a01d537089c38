//! Maintenance windows: a 5-field crontab expression, an IANA zone and a duration.
//!
//! A window *opens* at every time the expression matches, read as wall-clock time
//! in the window's zone, and stays open for `duration` of elapsed (real) time. A
//! migration only *starts* inside an open window; the soak that follows may run
//! past the window's end.
//!
//! ## Crontab dialect
//! Standard (Vixie/cronie) crontab: `minute hour day-of-month month day-of-week`,
//! with `*`, lists `a,b`, ranges `a-b`, steps `*/n`, `a-b/n` and `a/n` (= `a-max/n`),
//! month names `JAN`-`DEC`, day names `SUN`-`SAT`, day-of-week 0-7 where both 0 and
//! 7 are Sunday, and the macros `@yearly`, `@annually`, `@monthly`, `@weekly`,
//! `@daily`, `@midnight`, `@hourly`. As in cron, when both day fields are
//! restricted (neither starts with `*`), a day matches if *either* does
//! (`0 2 1 * MON` = the 1st of every month and every Monday).
//!
//! The `cron` crate evaluates the schedule, but it wants a seconds field, numbers
//! Sunday as 1, and always ANDs the day fields. So each field is parsed here into an
//! explicit set and handed over in the crate's own terms; an OR of the day fields
//! becomes two schedules whose openings are merged.
//!
//! ## Daylight saving time
//! The crate is driven in "naive" local time (its `Utc` zone used as a calendar
//! without transitions); each matching local time is then placed in the real zone:
//! - a local time that does not exist (skipped by a spring-forward, e.g. 02:30 on
//!   2026-03-29 in Europe/Berlin) opens the window at the first instant after the
//!   gap (03:00 CEST), so a daily or weekly window is not silently lost; several
//!   matches inside one gap collapse into that single opening;
//! - a local time that exists twice (repeated by a fall-back, e.g. 02:30 on
//!   2026-10-25 in Europe/Berlin) opens the window once, at the first occurrence
//!   (02:30 CEST = 00:30 UTC), as cron runs such jobs once;
//! - `duration` is elapsed time, so a 2h window that straddles a transition is
//!   still open for exactly two hours, whatever the wall clock shows.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use cron::{Schedule, ScheduleIterator};

/// The longest window a plan may declare.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a window cannot be built. Each message is a complete sentence for the plan
/// author; the plan compiler prefixes it with `` `window.cron`: ``.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("window duration must be greater than 0")]
    ZeroDuration,
    #[error(
        "window duration {} is longer than 7 days; a window that long is not a window",
        crate::plan::duration::format(*.0)
    )]
    TooLong(Duration),
    #[error("cron expression {cron:?} never matches a date (before the year 2100)")]
    NeverMatches { cron: String },
    #[error("@reboot is not a schedule; a window needs times at which it opens")]
    Reboot,
    #[error(
        "unknown cron macro {0:?}; use @yearly, @monthly, @weekly, @daily or @hourly, or 5 fields"
    )]
    UnknownMacro(String),
    /// 6 or 7 fields: a Quartz-style expression with seconds or years.
    #[error(
        "cron expression {text:?} has {fields} fields; windows use standard 5-field crontab \
         (minute hour day-of-month month day-of-week) without seconds or years, e.g. \"0 2 * * 1-5\""
    )]
    NotCrontab { text: String, fields: usize },
    #[error(
        "cron expression {text:?} has {fields} field{}; expected 5 (minute hour day-of-month month day-of-week), \
         e.g. \"0 2 * * 1-5\"",
        if *.fields == 1 { "" } else { "s" }
    )]
    FieldCount { text: String, fields: usize },
    #[error("{field} field {text:?}: {problem}")]
    Field {
        field: &'static str,
        text: String,
        problem: FieldProblem,
    },
    #[error("cron expression {text:?} is not valid: {source}")]
    Invalid {
        text: String,
        source: cron::error::Error,
    },
}

/// What is wrong inside one crontab field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    #[error("empty list item")]
    EmptyItem,
    #[error("step {0:?} is not a positive whole number")]
    BadStep(String),
    #[error("a step of 0 never advances")]
    ZeroStep,
    #[error("range {base} runs backwards; split it, e.g. {from}-{max},{min}-{to}")]
    Backwards {
        base: String,
        from: u32,
        to: u32,
        min: u32,
        max: u32,
    },
    #[error("missing value in range")]
    MissingValue,
    /// `value` as written when it does not even fit a number, else the number.
    #[error("{value} is out of range {min}-{max}")]
    OutOfRange { value: String, min: u32, max: u32 },
    #[error("{0:?} is not a number (crontab allows digits, *, ',', '-' and '/')")]
    NotANumber(String),
    #[error("{token:?} is neither a number {min}-{max} nor a name {first}-{last}")]
    NotANumberOrName {
        token: String,
        min: u32,
        max: u32,
        first: &'static str,
        last: &'static str,
    },
}

#[derive(Debug, Clone)]
pub struct Window {
    /// The 5-field expression as written in the plan.
    pub cron: String,
    pub timezone: Tz,
    pub duration: Duration,
    /// One schedule, or two when the day fields are ORed (see the module docs).
    schedules: Vec<Schedule>,
}

impl Window {
    /// Build a window from a standard 5-field crontab expression (or macro), a zone
    /// and a duration (> 0, at most 7 days). The error is a complete sentence for
    /// the plan author.
    pub fn new(cron: &str, timezone: Tz, duration: Duration) -> Result<Window, WindowError> {
        if duration.is_zero() {
            return Err(WindowError::ZeroDuration);
        }
        if duration > MAX_DURATION {
            return Err(WindowError::TooLong(duration));
        }
        let schedules = compile_cron(cron)?;
        let window = Window {
            cron: cron.to_string(),
            timezone,
            duration,
            schedules,
        };
        if window.openings_after(Utc::now()).next().is_none() {
            return Err(WindowError::NeverMatches {
                cron: cron.to_string(),
            });
        }
        Ok(window)
    }

    /// The window containing `now`, as (opened, closes), if one is open.
    ///
    /// The interval is half-open: open at `opened`, closed at `closes`. When openings
    /// overlap (e.g. hourly with a 2h duration), `opened` is the earliest opening
    /// still open and `closes` is when the last one opened so far closes.
    pub fn current(&self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let duration = TimeDelta::from_std(self.duration).ok()?;
        let mut first = None;
        let mut last = None;
        for opening in self.openings_after(now - duration) {
            let opening = opening.with_timezone(&Utc);
            if opening > now {
                break;
            }
            first.get_or_insert(opening);
            last = Some(opening);
        }
        Some((first?, last? + duration))
    }

    /// The next `n` openings strictly after `after`, in the window's zone.
    pub fn next_openings(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Tz>> {
        self.openings_after(after).take(n).collect()
    }

    /// Every opening strictly after `after`, ascending, without repeats.
    fn openings_after(&self, after: DateTime<Utc>) -> Openings<'_> {
        // Start the naive walk early enough that the UTC offset of any matching
        // local time (DST moves clocks by at most 2h anywhere) cannot hide an
        // opening; the `> after` filter drops what is too early.
        let start = after.with_timezone(&self.timezone).naive_local() - TimeDelta::hours(3);
        let start = Utc.from_utc_datetime(&start);
        Openings {
            tz: self.timezone,
            after,
            last: None,
            heads: self
                .schedules
                .iter()
                .map(|s| (s.after(&start), None))
                .collect(),
        }
    }
}

/// Merges the naive-local-time iterators of the schedules and places each match in
/// the real zone.
struct Openings<'a> {
    tz: Tz,
    after: DateTime<Utc>,
    last: Option<DateTime<Tz>>,
    /// Each schedule's iterator with its peeked next match.
    heads: Vec<(ScheduleIterator<'a, Utc>, Option<DateTime<Utc>>)>,
}

impl Openings<'_> {
    fn next_naive(&mut self) -> Option<NaiveDateTime> {
        for (iter, peeked) in &mut self.heads {
            if peeked.is_none() {
                *peeked = iter.next();
            }
        }
        let min = self.heads.iter().filter_map(|(_, p)| *p).min()?;
        for (_, peeked) in &mut self.heads {
            if *peeked == Some(min) {
                *peeked = None;
            }
        }
        Some(min.naive_utc())
    }
}

impl Iterator for Openings<'_> {
    type Item = DateTime<Tz>;

    fn next(&mut self) -> Option<DateTime<Tz>> {
        loop {
            let local = self.next_naive()?;
            // `place` is non-decreasing in `local`, so skipping repeats of the last
            // value is enough to deduplicate gap collapses.
            let at = place(self.tz, local);
            if at.with_timezone(&Utc) <= self.after || Some(at) == self.last {
                continue;
            }
            self.last = Some(at);
            return Some(at);
        }
    }
}

/// The instant a wall-clock time stands for in `tz`: the first occurrence of a
/// repeated time, the end of the gap for a skipped one.
fn place(tz: Tz, local: NaiveDateTime) -> DateTime<Tz> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(at) => at,
        LocalResult::Ambiguous(a, b) => a.min(b),
        LocalResult::None => first_instant_at_or_after(tz, local),
    }
}

/// The earliest instant whose wall-clock time in `tz` is at or after `local`:
/// for a time inside a spring-forward gap, the transition itself.
fn first_instant_at_or_after(tz: Tz, local: NaiveDateTime) -> DateTime<Tz> {
    // UTC offsets lie within -12h..+14h, so the answer is inside this bracket, and
    // wall-clock time only moves forward inside it (one transition at most).
    let mut lo = (local - TimeDelta::hours(26)).and_utc().timestamp();
    let mut hi = (local + TimeDelta::hours(26)).and_utc().timestamp();
    let wall = |secs: i64| tz.timestamp_opt(secs, 0).single().map(|t| t.naive_local());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if wall(mid).is_some_and(|w| w >= local) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    tz.timestamp_opt(hi, 0)
        .single()
        .unwrap_or_else(|| Utc.timestamp_opt(hi, 0).unwrap().with_timezone(&tz))
}

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for `min`, `min + 1`, ... (three-letter, case-insensitive).
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
};
/// 0-7 with both 0 and 7 for Sunday, as in crontab(5).
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
};

/// Day names in the cron crate's terms, indexed by crontab day number 0-6.
const CRATE_DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Turn a crontab expression into the cron crate's schedules.
fn compile_cron(expr: &str) -> Result<Vec<Schedule>, WindowError> {
    let text = expr.trim();
    let expanded = match text {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        "@reboot" => return Err(WindowError::Reboot),
        t if t.starts_with('@') => return Err(WindowError::UnknownMacro(t.to_string())),
        t => t,
    };
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    match fields.len() {
        5 => {}
        6 | 7 => {
            return Err(WindowError::NotCrontab {
                text: text.to_string(),
                fields: fields.len(),
            });
        }
        n => {
            return Err(WindowError::FieldCount {
                text: text.to_string(),
                fields: n,
            });
        }
    }
    let minute = render_numbers(fields[0], &parse_field(fields[0], &MINUTE)?);
    let hour = render_numbers(fields[1], &parse_field(fields[1], &HOUR)?);
    let dom = render_numbers(fields[2], &parse_field(fields[2], &DAY_OF_MONTH)?);
    let month = render_numbers(fields[3], &parse_field(fields[3], &MONTH)?);
    let dow_days: Vec<u32> = {
        let mut days: Vec<u32> = parse_field(fields[4], &DAY_OF_WEEK)?
            .into_iter()
            .map(|d| d % 7)
            .collect();
        days.sort_unstable();
        days.dedup();
        days
    };
    let dow = if fields[4] == "*" {
        "*".to_string()
    } else {
        dow_days
            .iter()
            .map(|&d| CRATE_DAYS[d as usize])
            .collect::<Vec<_>>()
            .join(",")
    };

    // crontab(5): if both day fields are restricted (neither starts with `*`), a day
    // matches when either field matches.
    let either = !fields[2].starts_with('*') && !fields[4].starts_with('*');
    let sources = if either {
        vec![
            format!("0 {minute} {hour} {dom} {month} *"),
            format!("0 {minute} {hour} * {month} {dow}"),
        ]
    } else {
        vec![format!("0 {minute} {hour} {dom} {month} {dow}")]
    };
    sources
        .iter()
        .map(|s| {
            Schedule::from_str(s).map_err(|source| WindowError::Invalid {
                text: text.to_string(),
                source,
            })
        })
        .collect()
}

fn render_numbers(original: &str, values: &[u32]) -> String {
    if original == "*" {
        return "*".into();
    }
    values
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The values a crontab field selects, ascending, or an error naming the field.
fn parse_field(text: &str, spec: &FieldSpec) -> Result<Vec<u32>, WindowError> {
    let fail = |problem: FieldProblem| WindowError::Field {
        field: spec.name,
        text: text.to_string(),
        problem,
    };
    let mut out = std::collections::BTreeSet::new();
    for item in text.split(',') {
        if item.is_empty() {
            return Err(fail(FieldProblem::EmptyItem));
        }
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| fail(FieldProblem::BadStep(step.to_string())))?;
                if step == 0 {
                    return Err(fail(FieldProblem::ZeroStep));
                }
                (base, Some(step))
            }
            None => (item, None),
        };
        let (lo, hi) = if base == "*" {
            (spec.min, spec.max)
        } else if let Some((a, b)) = base.split_once('-') {
            let (a, b) = (value(a, spec).map_err(fail)?, value(b, spec).map_err(fail)?);
            if a > b {
                return Err(fail(FieldProblem::Backwards {
                    base: base.to_string(),
                    from: a,
                    to: b,
                    min: spec.min,
                    max: spec.max,
                }));
            }
            (a, b)
        } else {
            let a = value(base, spec).map_err(fail)?;
            // `a/n` means from a to the end of the range, as in cronie.
            if step.is_some() {
                (a, spec.max)
            } else {
                (a, a)
            }
        };
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            out.insert(v);
            v += step;
        }
    }
    Ok(out.into_iter().collect())
}

fn value(token: &str, spec: &FieldSpec) -> Result<u32, FieldProblem> {
    if token.is_empty() {
        return Err(FieldProblem::MissingValue);
    }
    let out_of_range = |value: String| FieldProblem::OutOfRange {
        value,
        min: spec.min,
        max: spec.max,
    };
    if token.bytes().all(|b| b.is_ascii_digit()) {
        let n: u32 = token.parse().map_err(|_| out_of_range(token.to_string()))?;
        if n < spec.min || n > spec.max {
            return Err(out_of_range(n.to_string()));
        }
        return Ok(n);
    }
    if let Some(i) = spec
        .names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(token))
    {
        return Ok(spec.min + i as u32);
    }
    if spec.names.is_empty() {
        Err(FieldProblem::NotANumber(token.to_string()))
    } else {
        Err(FieldProblem::NotANumberOrName {
            token: token.to_string(),
            min: spec.min,
            max: spec.max,
            first: spec.names[0],
            last: spec.names[spec.names.len() - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Datelike, Timelike, Weekday};

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn window(cron: &str, tz: &str, duration: &str) -> Window {
        Window::new(
            cron,
            tz.parse().unwrap(),
            crate::plan::duration::parse(duration).unwrap(),
        )
        .unwrap()
    }

    fn rfc(ts: &[DateTime<Tz>]) -> Vec<String> {
        ts.iter().map(|t| t.to_rfc3339()).collect()
    }

    #[test]
    fn weekday_mornings_in_berlin() {
        let w = window("0 2 * * 1-5", "Europe/Berlin", "2h");
        // Friday 2026-11-20 10:00 UTC: next are Mon..Fri of the following week.
        let next = w.next_openings(utc("2026-11-20T10:00:00Z"), 5);
        assert_eq!(
            rfc(&next),
            [
                "2026-11-23T02:00:00+01:00",
                "2026-11-24T02:00:00+01:00",
                "2026-11-25T02:00:00+01:00",
                "2026-11-26T02:00:00+01:00",
                "2026-11-27T02:00:00+01:00",
            ]
        );
    }

    #[test]
    fn day_of_week_numbers_follow_crontab() {
        let after = utc("2026-06-01T00:00:00Z"); // a Monday
        let days = |cron: &str| -> Vec<Weekday> {
            window(cron, "UTC", "1h")
                .next_openings(after, 7)
                .iter()
                .map(|t| t.weekday())
                .collect()
        };
        use Weekday::*;
        assert_eq!(days("0 12 * * 0"), [Sun; 7]);
        assert_eq!(days("0 12 * * 7"), [Sun; 7]);
        assert_eq!(days("0 12 * * 1"), [Mon; 7]);
        assert_eq!(days("0 12 * * 6"), [Sat; 7]);
        assert_eq!(days("0 12 * * 1-5"), [Mon, Tue, Wed, Thu, Fri, Mon, Tue]);
        assert_eq!(
            days("0 12 * * MON-FRI"),
            [Mon, Tue, Wed, Thu, Fri, Mon, Tue]
        );
        assert_eq!(
            days("0 12 * * mon,wed"),
            [Mon, Wed, Mon, Wed, Mon, Wed, Mon]
        );
        assert_eq!(days("0 12 * * 5-7"), [Fri, Sat, Sun, Fri, Sat, Sun, Fri]);
        assert_eq!(days("0 12 * * 0-6"), [Mon, Tue, Wed, Thu, Fri, Sat, Sun]);
        assert_eq!(days("0 12 * * */2"), [Tue, Thu, Sat, Sun, Tue, Thu, Sat]);
        assert_eq!(days("0 12 * * 1-5/2"), [Mon, Wed, Fri, Mon, Wed, Fri, Mon]);
        assert_eq!(days("0 12 * * SAT,0"), [Sat, Sun, Sat, Sun, Sat, Sun, Sat]);
    }

    #[test]
    fn restricted_day_fields_are_ored_like_cron() {
        let w = window("0 3 1 * 1", "UTC", "1h");
        let next = w.next_openings(utc("2026-06-01T12:00:00Z"), 6);
        let dates: Vec<String> = next
            .iter()
            .map(|t| t.format("%m-%d %a").to_string())
            .collect();
        assert_eq!(
            dates,
            [
                "06-08 Mon",
                "06-15 Mon",
                "06-22 Mon",
                "06-29 Mon",
                "07-01 Wed",
                "07-06 Mon"
            ]
        );
        // With a star-prefixed day field the other one alone decides (AND).
        let w = window("0 3 */1 * 1", "UTC", "1h");
        assert!(
            w.next_openings(utc("2026-06-01T12:00:00Z"), 5)
                .iter()
                .all(|t| t.weekday() == Weekday::Mon)
        );
        // ... and a step written from `*` still restricts: Mondays on odd days.
        let w = window("0 2 */2 * MON", "UTC", "1h");
        let openings = w.next_openings(utc("2026-12-01T00:00:00Z"), 5);
        assert!(
            openings
                .iter()
                .all(|t| t.weekday() == Weekday::Mon && t.day() % 2 == 1),
            "{openings:?}"
        );
    }

    #[test]
    fn a_rare_window_lists_fewer_openings_than_asked() {
        // February 29 on a Sunday, up to the year 2100 (docs/plan-reference.md).
        let w = window("0 2 29 2 */7", "UTC", "1h");
        let years: Vec<i32> = w
            .next_openings(utc("2026-12-01T00:00:00Z"), 5)
            .iter()
            .map(|t| t.year())
            .collect();
        assert_eq!(years, [2032, 2060, 2088]);
    }

    #[test]
    fn refuses_non_crontab_expressions() {
        let err = |cron: &str| {
            Window::new(cron, Tz::UTC, Duration::from_secs(3600))
                .unwrap_err()
                .to_string()
        };
        assert!(
            err("0 0 2 * * 1-5").contains("6 fields"),
            "{}",
            err("0 0 2 * * 1-5")
        );
        assert!(err("0 0 2 * * 1-5 2026").contains("7 fields"));
        assert!(err("0 2 * *").contains("4 fields"));
        assert!(err("60 2 * * *").contains("minute field"));
        assert!(err("0 24 * * *").contains("out of range 0-23"));
        assert!(err("0 2 * * 8").contains("day-of-week"));
        assert!(err("0 2 ? * 1").contains("day-of-month"));
        assert!(err("0 2 * * FRI-MON").contains("runs backwards"));
        assert!(err("*/0 2 * * *").contains("step of 0"));
        assert!(err("0 2 30 2 *").contains("never matches"));
        assert!(err("@reboot").contains("@reboot"));
        assert!(Window::new("0 2 * * *", Tz::UTC, Duration::ZERO).is_err());
        assert!(Window::new("0 2 * * *", Tz::UTC, Duration::from_secs(8 * 86_400)).is_err());
    }

    #[test]
    fn macros_expand() {
        let w = window("@daily", "UTC", "1h");
        assert_eq!(
            rfc(&w.next_openings(utc("2026-06-01T12:00:00Z"), 1)),
            ["2026-06-02T00:00:00+00:00"]
        );
        let w = window("@weekly", "UTC", "1h");
        assert_eq!(
            w.next_openings(utc("2026-06-01T12:00:00Z"), 1)[0].weekday(),
            Weekday::Sun
        );
    }

    #[test]
    fn spring_forward_opens_at_the_end_of_the_gap() {
        // Europe/Berlin skips 02:00-03:00 on 2026-03-29.
        let w = window("30 2 * * *", "Europe/Berlin", "1h");
        let next = w.next_openings(utc("2026-03-27T12:00:00Z"), 3);
        assert_eq!(
            rfc(&next),
            [
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00"
            ]
        );
        // Several matches inside one gap collapse into one opening.
        let w = window("*/20 2 * * *", "Europe/Berlin", "10m");
        let next = w.next_openings(utc("2026-03-28T23:00:00Z"), 2);
        assert_eq!(
            rfc(&next),
            ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"]
        );
        // America/New_York skips 02:00-03:00 on 2026-03-08.
        let w = window("30 2 * * *", "America/New_York", "1h");
        let next = w.next_openings(utc("2026-03-07T12:00:00Z"), 3);
        assert_eq!(
            rfc(&next),
            [
                "2026-03-08T03:00:00-04:00",
                "2026-03-09T02:30:00-04:00",
                "2026-03-10T02:30:00-04:00"
            ]
        );
    }

    #[test]
    fn fall_back_opens_once_at_the_first_occurrence() {
        // Europe/Berlin repeats 02:00-03:00 on 2026-10-25.
        let w = window("30 2 * * *", "Europe/Berlin", "2h");
        let next = w.next_openings(utc("2026-10-24T12:00:00Z"), 2);
        assert_eq!(
            rfc(&next),
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
        );
        // Asking from inside the repeated hour does not reopen it.
        let next = w.next_openings(utc("2026-10-25T01:10:00Z"), 1);
        assert_eq!(rfc(&next), ["2026-10-26T02:30:00+01:00"]);
        // The duration is elapsed time: opened 00:30 UTC, closes 02:30 UTC (03:30 CET).
        let (opened, closes) = w.current(utc("2026-10-25T02:00:00Z")).unwrap();
        assert_eq!(
            (opened, closes),
            (utc("2026-10-25T00:30:00Z"), utc("2026-10-25T02:30:00Z"))
        );
        assert!(w.current(utc("2026-10-25T02:30:00Z")).is_none());
        // America/New_York repeats 01:00-02:00 on 2026-11-01.
        let w = window("30 1 * * *", "America/New_York", "1h");
        let next = w.next_openings(utc("2026-10-31T12:00:00Z"), 2);
        assert_eq!(
            rfc(&next),
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
        );
    }

    #[test]
    fn current_looks_back_by_the_duration() {
        let w = window("0 22 * * *", "Europe/Berlin", "4h");
        // 23:30 Berlin on 2026-06-10 (21:30 UTC): opened 22:00 (20:00 UTC).
        let (opened, closes) = w.current(utc("2026-06-10T21:30:00Z")).unwrap();
        assert_eq!(opened, utc("2026-06-10T20:00:00Z"));
        assert_eq!(closes, utc("2026-06-11T00:00:00Z"));
        // Past midnight, still inside.
        assert!(w.current(utc("2026-06-10T23:59:59Z")).is_some());
        // Opening instant is inside, closing instant is not.
        assert!(w.current(utc("2026-06-10T20:00:00Z")).is_some());
        assert!(w.current(utc("2026-06-11T00:00:00Z")).is_none());
        assert!(w.current(utc("2026-06-10T19:59:59Z")).is_none());
    }

    #[test]
    fn overlapping_openings_extend_the_current_window() {
        let w = window("0 * * * *", "UTC", "90m");
        let (opened, closes) = w.current(utc("2026-06-10T10:20:00Z")).unwrap();
        assert_eq!(opened, utc("2026-06-10T09:00:00Z"));
        assert_eq!(closes, utc("2026-06-10T11:30:00Z"));
    }

    #[test]
    fn next_openings_are_strictly_after() {
        let w = window("0 2 * * *", "UTC", "1h");
        let next = w.next_openings(utc("2026-06-10T02:00:00Z"), 1);
        assert_eq!(next[0].day(), 11);
        assert_eq!(next[0].hour(), 2);
    }
}
