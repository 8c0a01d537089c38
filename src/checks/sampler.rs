//! One sampler per check: the source-specific code behind a single
//! `sample() -> Observation` that never fails, never panics on I/O and never
//! passes on missing data.

use std::time::{Duration, Instant};

use crate::checks::builtin::BuiltinSampler;
use crate::checks::http::HttpSampler;
use crate::checks::sql::SqlSampler;
use crate::checks::verdict::Observation;
use crate::pg::Dsn;
use crate::plan::model::{Check, CheckSource};

/// Takes samples of one check. Holds its connection (opened lazily, re-opened after
/// a failure) and, for rate signals, the previous counter reading, so keep one per
/// check for the whole soak.
pub struct Sampler {
    source: Source,
    last_took: Option<Duration>,
}

enum Source {
    Sql(SqlSampler),
    Http(HttpSampler),
    Builtin(BuiltinSampler),
}

impl Sampler {
    /// `dsn` is the watched database (unused by HTTP checks). Connects nothing yet.
    pub fn new(check: &Check, dsn: &Dsn) -> Sampler {
        let source = match &check.source {
            CheckSource::Sql { query } => Source::Sql(SqlSampler::new(query, dsn, check.timeout)),
            CheckSource::Http(probe) => Source::Http(HttpSampler::new(probe, check.timeout)),
            CheckSource::Builtin(signal) => {
                Source::Builtin(BuiltinSampler::new(*signal, dsn, check.timeout))
            }
        };
        Sampler {
            source,
            last_took: None,
        }
    }

    /// Rate signals take their first counter reading, so the first `sample` is
    /// already a rate; a no-op for everything else. Call it right before sampling
    /// starts (a long gap only averages the first rate over a longer period);
    /// calling it again starts a fresh rate, e.g. after the migration ran.
    pub async fn prime(&mut self) {
        if let Source::Builtin(b) = &mut self.source {
            b.prime().await;
        }
    }

    /// One observation. Connection failures, timeouts and unusable results are
    /// `Inconclusive` with a reason; the call itself never fails.
    pub async fn sample(&mut self) -> Observation {
        let started = Instant::now();
        let observation = match &mut self.source {
            Source::Sql(s) => s.sample().await,
            Source::Http(h) => h.sample().await,
            Source::Builtin(b) => b.sample().await,
        };
        self.last_took = Some(started.elapsed());
        observation
    }

    /// How long the last `sample` took, connecting included: the check's own cost
    /// on the soak (and, for SQL and builtins, roughly on the watched server).
    pub fn last_took(&self) -> Option<Duration> {
        self.last_took
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The soak samples checks concurrently in spawned tasks.
    #[test]
    fn samplers_and_their_futures_are_send() {
        fn is_send<T: Send + 'static>(_: &T) {}
        let dsn: Dsn = "postgres://u@localhost/db".parse().unwrap();
        let check = Check {
            name: "x".into(),
            source: CheckSource::Sql {
                query: "SELECT 1".into(),
            },
            thresholds: Default::default(),
            consecutive: 1,
            min_samples: 1,
            on_inconclusive: crate::plan::model::InconclusivePolicy::Breach,
            max_inconclusive: 0,
            timeout: Duration::from_secs(1),
        };
        let mut sampler = Sampler::new(&check, &dsn);
        let fut = async move {
            sampler.prime().await;
            sampler.sample().await
        };
        is_send(&fut);
    }
}
