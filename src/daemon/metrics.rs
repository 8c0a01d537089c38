//! Prometheus text for `GET /metrics` (stub; being written).

use crate::run::event::Event;

#[derive(Default)]
pub struct Metrics {}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Every event of every run this daemon drives passes through here.
    pub fn observe_event(&self, _target: &str, _event: &Event) {}

    /// The run is no longer driven by this daemon: drop its per-run series.
    pub fn forget_run(&self, _run_id: &str) {}

    /// One API request answered.
    pub fn observe_api(&self, _route: &str, _status: u16, _seconds: f64) {}

    /// The exposition text; `runs_by_phase_state` comes from the state database
    /// as `(phase, state_name, count)`.
    pub fn render(&self, _runs_by_phase_state: &[(String, String, i64)]) -> String {
        String::new()
    }
}
