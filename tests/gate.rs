//! The low-traffic gate against a real PostgreSQL: each scenario loads a small plan
//! whose `gate` watches something in a fresh database, waits on the gate, and
//! asserts how the wait ended and the events that explain it.
//!
//! Some checks count their own calls in a session variable (`gate.n`): the
//! sampler keeps one read-only session and commits each sample, so
//! `set_config(..., false)` survives from one sample to the next and a query can
//! answer a scripted sequence without writing anything.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use common::TestDb;
use pgshepherd::plan::Plan;
use pgshepherd::run::journal::Emitter;
use pgshepherd::steps::StepContext;
use pgshepherd::steps::gate::{GateEnd, wait_for_low_traffic};
use serde_json::Value;
use tokio::sync::watch;

/// The `n`-th call of the check in its session (1, 2, 3, ...), as SQL.
const CALL_NUMBER: &str = "set_config('gate.n', (coalesce(nullif(current_setting('gate.n', true), ''), '0')::int + 1)::text, false)::int";

/// When the test asks the run to stop while the gate waits.
enum Abort {
    Never,
    /// Before the gate is even called.
    Before,
    /// As the `n`-th sample (1-based) is reported, from inside the event
    /// observer: the gate has not started another sample yet.
    AtSample(usize),
    /// When this future resolves (it watches the database for some state).
    When(Pin<Box<dyn Future<Output = ()> + Send>>),
}

/// A fresh database and a plan whose `gate:` section is `gate` (indented by two).
struct Scenario {
    _dir: tempfile::TempDir,
    db: TestDb,
    plan: Plan,
}

impl Scenario {
    async fn new(setup: &str, gate: &str) -> Scenario {
        let db = common::fresh_db().await;
        if !setup.is_empty() {
            db.execute(setup).await;
        }
        let dir = common::scratch_dir();
        let path = common::one_table_plan(dir.path(), "testdb", "2s", &format!("gate:\n{gate}"));
        let plan = pgshepherd::plan::load(&path).unwrap_or_else(|d| panic!("{d}"));
        assert!(plan.gate.is_some(), "the plan has no gate");
        Scenario {
            _dir: dir,
            db,
            plan,
        }
    }

    /// Wait on the plan's gate, asking it to stop as `abort` says.
    async fn wait(&self, give_up_at: Option<chrono::DateTime<Utc>>, abort: Abort) -> Waited {
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = events.clone();
        let (abort_tx, abort_rx) = watch::channel(false);
        let abort_tx = Arc::new(abort_tx);
        let abort_at_sample = match abort {
            Abort::AtSample(n) => Some(n),
            _ => None,
        };
        let samples = AtomicUsize::new(0);
        let stop = abort_tx.clone();
        let emitter = Emitter::new("gate-test", None, false, false).observe(Box::new(move |e| {
            let e = serde_json::to_value(e).unwrap();
            if e["event"] == "check_sample" {
                let n = samples.fetch_add(1, Ordering::SeqCst) + 1;
                if abort_at_sample == Some(n) {
                    stop.send_replace(true);
                }
            }
            sink.lock().unwrap().push(e)
        }));
        let ctx = StepContext {
            plan: &self.plan,
            dsn: &self.db.dsn,
            target: "testdb".into(),
            run_id: "gate-test",
            backup_dir: std::env::temp_dir(),
            bins: None,
            events: &emitter,
            abort: abort_rx,
        };
        match abort {
            Abort::Before => {
                abort_tx.send_replace(true);
            }
            Abort::When(signal) => {
                tokio::spawn(async move {
                    signal.await;
                    abort_tx.send_replace(true);
                });
            }
            Abort::Never | Abort::AtSample(_) => {}
        }
        let end = common::within(
            "the gate",
            wait_for_low_traffic(&ctx, self.plan.gate.as_ref().unwrap(), give_up_at),
        )
        .await;
        let events = std::mem::take(&mut *events.lock().unwrap());
        Waited { end, events }
    }
}

struct Waited {
    end: GateEnd,
    events: Vec<Value>,
}

impl Waited {
    fn named(&self, name: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == name).collect()
    }

    fn samples(&self) -> Vec<&Value> {
        self.named("check_sample")
    }

    /// The sequence of sample values (None for inconclusive ones).
    fn values(&self) -> Vec<Option<f64>> {
        self.samples().iter().map(|s| s["value"].as_f64()).collect()
    }

    fn reason(&self) -> String {
        match &self.end {
            GateEnd::GaveUp(reason) => reason.clone(),
            other => panic!(
                "expected the gate to give up, got {other:?}; events: {:#?}",
                self.events
            ),
        }
    }

    /// The k-th sample (1-based) was taken no earlier than k intervals after the
    /// gate started (its `elapsed_s`, on the gate's own clock, is read when the
    /// sample has been taken, and rounded to the millisecond).
    fn assert_on_schedule(&self, interval_s: f64) {
        for (k, s) in self.samples().iter().enumerate() {
            let elapsed = s["elapsed_s"].as_f64().unwrap();
            assert!(
                elapsed >= interval_s * (k + 1) as f64 - 0.0005,
                "sample {} at {elapsed}s: {:#?}",
                k + 1,
                self.samples()
            );
        }
    }

    /// Every event is tagged with the gate step, starts with `gate_started` and
    /// ends with `gate_open` or `gate_closed`, and no sample carries a verdict.
    fn assert_well_formed(&self, last: &str) {
        assert!(
            self.events.iter().all(|e| e["step"] == "gate"),
            "{:#?}",
            self.events
        );
        assert_eq!(self.events.first().unwrap()["event"], "gate_started");
        assert_eq!(self.named("gate_started").len(), 1);
        assert_eq!(
            self.events.last().unwrap()["event"],
            last,
            "{:#?}",
            self.events
        );
        assert!(
            self.samples().iter().all(|s| s["verdict"].is_null()),
            "a gate sample carried a verdict: {:#?}",
            self.samples()
        );
    }
}

/// An event's `ts`.
fn event_ts(e: &Value) -> chrono::DateTime<Utc> {
    chrono::DateTime::parse_from_rfc3339(e["ts"].as_str().unwrap_or_else(|| panic!("no ts: {e}")))
        .unwrap_or_else(|err| panic!("{e}: {err}"))
        .with_timezone(&Utc)
}

fn in_ms(ms: i64) -> Option<chrono::DateTime<Utc>> {
    Some(Utc::now() + chrono::Duration::milliseconds(ms))
}

#[tokio::test]
async fn a_quiet_target_opens_the_gate_after_exactly_n_samples() {
    let s = Scenario::new(
        "CREATE TABLE busy (id int);",
        "  check:\n    name: busy_rows\n    sql: SELECT count(*) FROM busy\n    max: 5\n  consecutive: 4\n  interval: 100ms\n",
    )
    .await;
    let w = s.wait(in_ms(120_000), Abort::Never).await;
    assert_eq!(w.end, GateEnd::Open, "{:#?}", w.events);
    assert_eq!(w.values(), [Some(0.0); 4]);
    w.assert_well_formed("gate_open");
    let open = w.named("gate_open")[0];
    assert_eq!(open["samples"], 4);
    // Four samples on the schedule, the first one interval after the start: the
    // k-th is taken no earlier than k intervals in, so the gate cannot open
    // sooner than four intervals (how much later depends on the machine).
    w.assert_on_schedule(0.1);
    assert!(open["waited_s"].as_f64().unwrap() >= 0.4, "{open}");
    let started = w.named("gate_started")[0];
    assert_eq!(started["consecutive"], 4);
    assert_eq!(started["interval_s"], 0.1);
    assert_eq!(started["check"]["check"], "busy_rows");
    assert_eq!(started["check"]["baseline"], Value::Null);
    assert!(
        w.samples()
            .iter()
            .all(|s| s["valid"] == true && s["breaching"] == false)
    );
}

#[tokio::test]
async fn a_breaching_sample_starts_the_count_again() {
    // Calls 1, 2, 3, 4, ... answer 1, 2, 0, 1: the second breaches max 1.
    let s = Scenario::new(
        "",
        &format!(
            "  check:\n    name: seq\n    sql: SELECT {CALL_NUMBER} % 3\n    max: 1\n  consecutive: 2\n  interval: 100ms\n"
        ),
    )
    .await;
    let w = s.wait(None, Abort::Never).await;
    assert_eq!(w.end, GateEnd::Open, "{:#?}", w.events);
    assert_eq!(w.values(), [Some(1.0), Some(2.0), Some(0.0), Some(1.0)]);
    let breaching: Vec<bool> = w
        .samples()
        .iter()
        .map(|s| s["breaching"].as_bool().unwrap())
        .collect();
    assert_eq!(breaching, [false, true, false, false]);
    assert_eq!(w.named("gate_open")[0]["samples"], 4);
    w.assert_well_formed("gate_open");
}

#[tokio::test]
async fn a_busy_target_keeps_the_gate_closed_until_the_give_up_point() {
    let s = Scenario::new(
        "CREATE TABLE busy (id int); INSERT INTO busy SELECT generate_series(1, 12);",
        "  check:\n    name: busy_rows\n    sql: SELECT count(*) FROM busy\n    max: 5\n  consecutive: 2\n  interval: 100ms\n",
    )
    .await;
    // Long enough for a first sample on a loaded machine (the reason quotes it);
    // nothing below depends on how many fit in.
    let give_up_at = Utc::now() + chrono::Duration::milliseconds(1500);
    let w = s.wait(Some(give_up_at), Abort::Never).await;
    let reason = w.reason();
    assert!(reason.contains("check `busy_rows`"), "{reason}");
    assert!(reason.contains("busy_rows = 12.0"), "{reason}");
    assert!(reason.contains("breaching max 5.0"), "{reason}");
    assert!(
        reason.contains("healthy at most 0 samples in a row of the 2 needed"),
        "{reason}"
    );
    assert!(reason.starts_with("did not open by "), "{reason}");
    // It gave up at the give-up point, not before: the gate_closed event is
    // stamped at or after it. And it did not sample past it: samples are due
    // every 100 ms from the start, and the 15th is due at the give-up point
    // itself, so at most 14 were taken (fewer on a loaded machine).
    // (Events are stamped to the millisecond.)
    let closed_at = event_ts(w.named("gate_closed")[0]);
    let give_up_ms = give_up_at.trunc_subsecs(3);
    assert!(
        closed_at >= give_up_ms,
        "closed at {closed_at}, give-up point {give_up_at}"
    );
    let n = w.samples().len();
    assert!((1..=14).contains(&n), "{n} samples");
    assert!(w.values().iter().all(|v| *v == Some(12.0)));
    assert!(w.samples().iter().all(|s| s["breaching"] == true));
    assert_eq!(w.named("gate_closed")[0]["reason"], reason.as_str());
    w.assert_well_formed("gate_closed");
}

#[tokio::test]
async fn the_gate_timeout_gives_up_too() {
    let s = Scenario::new(
        "CREATE TABLE busy (id int); INSERT INTO busy SELECT generate_series(1, 12);",
        "  check:\n    name: busy_rows\n    sql: SELECT count(*) FROM busy\n    max: 5\n  consecutive: 2\n  interval: 100ms\n  timeout: 500ms\n",
    )
    .await;
    // The window closes later than the timeout: the timeout decides.
    let w = s.wait(in_ms(10_000), Abort::Never).await;
    let reason = w.reason();
    assert!(
        reason.starts_with("did not open within `gate.timeout` (500ms)"),
        "{reason}"
    );
    // Not before the timeout (gate_started to gate_closed), and no sample past
    // it: the fifth is due at 500 ms, the timeout itself.
    let waited = event_ts(w.events.last().unwrap()) - event_ts(&w.events[0]);
    // (Both stamps are taken a moment after the clock they stand for.)
    assert!(waited >= chrono::Duration::milliseconds(490), "{waited}");
    assert!(w.samples().len() <= 4, "{:#?}", w.samples());
    w.assert_well_formed("gate_closed");
}

#[tokio::test]
async fn a_give_up_point_already_passed_takes_no_sample() {
    let s = Scenario::new(
        "",
        "  check: {name: one, sql: SELECT 1, max: 5}\n  interval: 100ms\n",
    )
    .await;
    let w = s.wait(in_ms(-1000), Abort::Never).await;
    let reason = w.reason();
    assert!(reason.contains("no sample was taken"), "{reason}");
    assert!(w.samples().is_empty());
    w.assert_well_formed("gate_closed");
}

#[tokio::test]
async fn a_failing_check_never_opens_the_gate() {
    let s = Scenario::new(
        "",
        "  check:\n    name: broken\n    sql: SELECT count(*) FROM no_such_table\n    max: 5\n  consecutive: 1\n  interval: 100ms\n",
    )
    .await;
    // One healthy sample would open this gate (consecutive 1); the reason
    // quotes the last sample, so a first one must fit in, even on a loaded machine.
    let w = s.wait(in_ms(1500), Abort::Never).await;
    let reason = w.reason();
    assert!(reason.contains("check `broken`"), "{reason}");
    assert!(reason.contains("broken inconclusive"), "{reason}");
    assert!(reason.contains("no_such_table"), "{reason}");
    assert!(!w.samples().is_empty(), "{:#?}", w.events);
    assert!(
        w.samples()
            .iter()
            .all(|s| s["valid"] == false && s["breaching"] == false),
        "{:#?}",
        w.samples()
    );
    w.assert_well_formed("gate_closed");
}

#[tokio::test]
async fn missing_data_starts_the_count_again() {
    // Calls 1, 2, 3, 4, ... answer 0, NULL, 0, 0. Were a NULL merely set aside
    // (as in the soak), the gate would open at the third sample; it must not.
    let s = Scenario::new(
        "",
        &format!(
            "  check:\n    name: gappy\n    sql: SELECT CASE {CALL_NUMBER} WHEN 2 THEN NULL ELSE 0 END\n    max: 1\n  \
             consecutive: 2\n  interval: 100ms\n"
        ),
    )
    .await;
    let w = s.wait(None, Abort::Never).await;
    assert_eq!(w.end, GateEnd::Open, "{:#?}", w.events);
    assert_eq!(w.values(), [Some(0.0), None, Some(0.0), Some(0.0)]);
    assert_eq!(w.samples()[1]["valid"], false);
    assert_eq!(w.named("gate_open")[0]["samples"], 4);
    w.assert_well_formed("gate_open");
}

#[tokio::test]
async fn an_abort_while_waiting_returns_promptly() {
    let s = Scenario::new(
        "CREATE TABLE busy (id int); INSERT INTO busy SELECT generate_series(1, 12);",
        "  check:\n    name: busy_rows\n    sql: SELECT count(*) FROM busy\n    max: 5\n  interval: 100ms\n",
    )
    .await;
    // The abort comes as the third sample is reported, between two samples.
    let w = s.wait(None, Abort::AtSample(3)).await;
    assert_eq!(w.end, GateEnd::Aborted, "{:#?}", w.events);
    // Promptly: no further sample was taken after the abort.
    assert_eq!(w.samples().len(), 3, "{:#?}", w.events);
    let closed = w.named("gate_closed");
    assert!(
        closed[0]["reason"].as_str().unwrap().contains("aborted"),
        "{closed:?}"
    );
    w.assert_well_formed("gate_closed");
}

#[tokio::test]
async fn an_abort_interrupts_a_slow_sample() {
    // The first sample (at 2 s) reads a table the test holds locked, so it cannot
    // finish before its 2 s statement timeout; the abort comes as soon as the
    // sample is seen waiting on that lock.
    let s = Scenario::new(
        "CREATE TABLE busy (id int);",
        "  check:\n    name: slow\n    sql: SELECT count(*) FROM busy\n    max: 5\n    timeout: 2s\n  interval: 2s\n",
    )
    .await;
    let holder = s.db.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let db = s.db.dsn.clone();
    let blocked = async move {
        common::wait_for_sql(
            &db,
            "the gate's sample waiting on the lock",
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() \
               AND wait_event_type = 'Lock' AND query LIKE '%FROM busy%')",
        )
        .await
    };
    let w = s.wait(None, Abort::When(Box::pin(blocked))).await;
    assert_eq!(w.end, GateEnd::Aborted, "{:#?}", w.events);
    // The sample never reported itself: it could only have ended by its
    // timeout, and the abort did not wait for that.
    assert!(w.samples().is_empty(), "{:#?}", w.events);
    holder.batch_execute("ROLLBACK").await.unwrap();
    w.assert_well_formed("gate_closed");
}

#[tokio::test]
async fn an_abort_before_the_gate_takes_no_sample() {
    let s = Scenario::new(
        "",
        "  check: {name: one, sql: SELECT 1, max: 5}\n  interval: 100ms\n",
    )
    .await;
    let w = s.wait(None, Abort::Before).await;
    assert_eq!(w.end, GateEnd::Aborted);
    assert!(w.samples().is_empty());
    w.assert_well_formed("gate_closed");
}

const GATED: &str = "tests/fixtures/plans/good/gated.yaml";
const GATE_ERRORS: &str = "tests/fixtures/plans/broken/gate-errors.yaml";

fn pgshepherd_check(plan: &str) -> std::process::Output {
    std::process::Command::new(common::pgshepherd_bin())
        .arg("check")
        .arg(plan)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

#[test]
fn a_plan_with_approval_deadline_and_gate_is_valid() {
    let out = pgshepherd_check(GATED);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let plan =
        pgshepherd::plan::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GATED))
            .unwrap_or_else(|d| panic!("{d}"));
    assert!(plan.approval.required);
    assert_eq!(
        plan.deadline.map(|d| d.to_rfc3339()),
        Some("2026-11-27T03:00:00+00:00".to_string())
    );
    let gate = plan.gate.unwrap();
    assert_eq!(gate.check.name, "active_sessions");
    assert_eq!(gate.check.thresholds.max, Some(20.0));
    assert_eq!(
        (gate.consecutive, gate.interval, gate.timeout),
        (6, Duration::from_secs(10), Some(Duration::from_secs(1800)))
    );
}

#[test]
fn every_gate_error_is_reported_at_its_own_position() {
    let out = pgshepherd_check(GATE_ERRORS);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let expected = [
        (
            "8:13",
            "`window.deadline` \"2026-11-27T04:00:00\" is a local time without a UTC offset",
        ),
        (
            "10:13",
            "`approval.required` must be true or false, found \"yes\"",
        ),
        (
            "15:19",
            "gate check `quiet`: `max_increase` is relative to a baseline",
        ),
        (
            "16:5",
            "gate check `quiet`: `consecutive` has no effect on a gate",
        ),
        (
            "17:16",
            "the gate can never open inside the window: it opens 1m40s after it starts",
        ),
        (
            "19:12",
            "`gate.timeout` 1m is too short for the gate ever to open",
        ),
    ];
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, (at, fragment)) in lines.iter().zip(expected) {
        let prefix = format!("{GATE_ERRORS}:{at}: ");
        assert!(
            line.starts_with(&prefix) && line.contains(fragment),
            "expected {prefix}...{fragment}..., got {line}"
        );
    }
}
