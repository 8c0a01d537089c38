//! Maintenance windows: a 5-field crontab expression, an IANA zone and a duration.
//! (Stub: the plan helper replaces this with the real implementation.)

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone)]
pub struct Window {
    /// The 5-field expression as written in the plan.
    pub cron: String,
    pub timezone: Tz,
    pub duration: Duration,
}

impl Window {
    /// The window containing `now`, as (opened, closes), if one is open.
    pub fn current(&self, _now: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        unimplemented!()
    }

    /// The next `n` openings strictly after `after`, in the window's zone.
    pub fn next_openings(&self, _after: DateTime<Utc>, _n: usize) -> Vec<DateTime<Tz>> {
        unimplemented!()
    }
}
