//! Notifications end to end: real `pgshepherd daemon` processes, real webhook
//! receivers on loopback (tests/common/receiver.rs), signatures checked by a
//! verifier written from the Standard Webhooks specification rather than by
//! pgshepherd's own code.
//!
//! Each scenario drives a run through the daemon and then asks what the
//! receivers saw, what `GET /v1/runs/{id}` says about each notification, and
//! what `/metrics` and the daemon's log show.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::daemon::{ADMIN, APPROVER, Api, Daemon, Env, READER, SUBMITTER, SUBMITTER2, soak_plan};
use common::receiver::{self, Receiver, Reply, Request};
use serde_json::{Value, json};

const MINUTE: Duration = Duration::from_secs(60);
const SETTINGS: &str = "lease_timeout: 5s\npoll_interval: 200ms";
/// Fast retries, so that a test waits seconds, not minutes.
const DELIVERY: &str =
    "notifications: {min_backoff: 200ms, max_backoff: 2s, max_age: 24h, poll_interval: 200ms}\n";
/// The plan name `plan_dir` writes.
const PLAN_NAME: &str = "daemon-test";

// --- plans ---

/// A plan that succeeds after a short soak, notifying `channels`.
fn succeeding_plan(dir: &Path, channels: &[&str]) -> (PathBuf, PathBuf) {
    soak_plan(
        dir,
        "main",
        "500ms",
        "SELECT 1",
        1,
        &format!("notify:\n  channels: [{}]\n", channels.join(", ")),
    )
}

/// A plan whose check breaches on its first sample with rollback `hold`: the
/// run ends `needs_human`.
fn held_plan(dir: &Path, notify: &str) -> (PathBuf, PathBuf) {
    soak_plan(
        dir,
        "main",
        "5s",
        "SELECT 5",
        1,
        &format!("rollback:\n  strategy: hold\n{notify}"),
    )
}

// --- config ---

/// `NAME: {kind: generic, url: "URL", ...}` under `channels:`.
fn generic(name: &str, url: &str, extra: &str) -> String {
    format!("  {name}: {{kind: generic, url: \"{url}\"{extra}}}\n")
}

fn secrets(list: &[&str]) -> String {
    let quoted: Vec<String> = list.iter().map(|s| format!("\"{s}\"")).collect();
    format!(", secret: [{}]", quoted.join(", "))
}

/// A receiver that is not listening yet, and an environment whose one signed
/// generic channel `hooks` (request timeout `timeout`) points at it.
async fn down_receiver_env(timeout: &str) -> (Receiver, String, Env) {
    let hooks = Receiver::reserve();
    let secret = receiver::new_secret();
    let mut env = Env::new(&["main"], SETTINGS).await;
    env.set_extra_config(&format!(
        "channels:\n{}{DELIVERY}",
        generic(
            "hooks",
            &hooks.url("/hook"),
            &format!("{}, timeout: {timeout}", secrets(&[&secret]))
        )
    ));
    (hooks, secret, env)
}

// --- the API ---

async fn view(api: &Api, run: &str) -> Value {
    let (status, v) = api.get(READER, &format!("/v1/runs/{run}")).await;
    assert_eq!(status, 200, "{v}");
    v
}

/// The run's notifications to `channel`, oldest first.
fn notes(view: &Value, channel: &str) -> Vec<Value> {
    view["notifications"]
        .as_array()
        .unwrap_or_else(|| panic!("no notifications in the run view: {view}"))
        .iter()
        .filter(|n| n["channel"] == channel)
        .cloned()
        .collect()
}

/// Poll the run view until `done` holds for it.
async fn wait_view(api: &Api, run: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let v = view(api, run).await;
        if done(&v) {
            return v;
        }
        assert!(
            started.elapsed() < MINUTE,
            "{what}: not within a minute; notifications: {:#}\nescalation: {:#}",
            v["notifications"],
            v["escalation"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Until no notification of `channel` is pending any more.
async fn wait_settled(api: &Api, run: &str, channel: &str) -> Vec<Value> {
    let v = wait_view(api, run, &format!("{channel} settled"), |v| {
        let n = notes(v, channel);
        !n.is_empty() && n.iter().all(|n| n["status"] != "pending")
    })
    .await;
    notes(&v, channel)
}

async fn metrics(daemon: &Daemon) -> String {
    let r = reqwest::Client::new()
        .get(format!("{}/metrics", daemon.url))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of the sample `name{channel="CHANNEL"}` in a Prometheus text.
fn sample(metrics: &str, name: &str, channel: &str) -> Option<f64> {
    let prefix = format!("{name}{{channel=\"{channel}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

/// The `retry_in_ms` of each "will retry" line the daemon logged for the
/// notification `id`, in order.
fn retry_delays_logged(daemon: &Daemon, id: &str) -> Vec<u64> {
    daemon
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["notification"] == id)
        .filter_map(|l| l["retry_in_ms"].as_u64())
        .collect()
}

fn ts(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}")))
        .unwrap_or_else(|e| panic!("{v}: {e}"))
        .with_timezone(&Utc)
}

// --- what receivers saw ---

/// Notification kinds (`run.X`) in the order of their first arrival.
fn kinds_in_order(requests: &[Request]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    requests
        .iter()
        .filter(|r| seen.insert(r.key.clone()))
        .map(|r| r.kind())
        .collect()
}

/// Webhook ids in the order of their first arrival.
fn ids_in_order(requests: &[Request]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    requests
        .iter()
        .filter(|r| seen.insert(r.key.clone()))
        .map(|r| r.key.clone())
        .collect()
}

/// Notices go one at a time per run and channel: every attempt at one comes
/// before the first attempt at the next, and the last attempt is the 2xx.
fn assert_one_at_a_time(requests: &[Request]) {
    let ids = ids_in_order(requests);
    let mut position = 0;
    for id in &ids {
        let attempts: Vec<&Request> = requests.iter().filter(|r| &r.key == id).collect();
        for a in &attempts {
            assert_eq!(
                a.seq - requests[0].seq,
                position,
                "{id} was attempted out of turn:\n{}",
                receiver::summary(requests)
            );
            position += 1;
        }
        assert!(
            attempts.last().unwrap().delivered(),
            "{id} was retried after it was delivered, or never delivered:\n{}",
            receiver::summary(requests)
        );
    }
}

/// The run's notices as a simple successful run gives them: it starts with the
/// submission, ends with the success, and the change comes before the soak.
fn assert_success_story(kinds: &[String]) {
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("run.submitted"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("run.succeeded"),
        "{kinds:?}"
    );
    let at = |k: &str| {
        kinds
            .iter()
            .position(|x| x == k)
            .unwrap_or_else(|| panic!("no {k} in {kinds:?}"))
    };
    assert!(
        at("run.migration_applied") < at("run.soak_started"),
        "{kinds:?}"
    );
    let unique: BTreeSet<&String> = kinds.iter().collect();
    assert_eq!(unique.len(), kinds.len(), "a kind twice: {kinds:?}");
}

fn assert_contains_none(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(!s.is_empty());
        if let Some(at) = text.find(s.as_str()) {
            let from = text[..at]
                .char_indices()
                .rev()
                .nth(120)
                .map_or(0, |(i, _)| i);
            panic!(
                "{what} contains the secret {s:?}: …{}…",
                &text[from..(at + s.len()).min(text.len())]
            );
        }
    }
}

// --- the independent verifier ---

#[test]
fn the_independent_verifier_accepts_the_published_vector_and_nothing_else() {
    // The example of the Standard Webhooks / Svix documentation and test suites.
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (id, t, body) = (
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        br#"{"test": 2432232314}"#,
    );
    let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    let now = 1614265330;
    receiver::verify_at(secret, id, t, good, body, now).unwrap();
    // One good signature among others (a rotation) is enough.
    receiver::verify_at(secret, id, t, &format!("v1,Zm9v {good}"), body, now).unwrap();
    // Anything else fails: another secret, id, timestamp, body or version, an
    // old or future timestamp.
    let other = receiver::new_secret();
    assert!(receiver::verify_at(&other, id, t, good, body, now).is_err());
    assert!(receiver::verify_at(secret, "msg_other", t, good, body, now).is_err());
    assert!(receiver::verify_at(secret, id, "1614265331", good, body, now + 1).is_err());
    assert!(receiver::verify_at(secret, id, t, good, br#"{"test":2432232314}"#, now).is_err());
    assert!(receiver::verify_at(secret, id, t, &good.replace("v1,", "v2,"), body, now).is_err());
    assert!(receiver::verify_at(secret, id, t, good, body, now + 301).is_err());
    assert!(receiver::verify_at(secret, id, t, good, body, now - 301).is_err());
    receiver::verify_at(secret, id, t, good, body, now + 299).unwrap();
}

// --- scenarios ---

/// 1. A succeeding run notifies a signed generic channel whose secret is being
/// rotated: every request carries one valid signature per secret (each checked
/// alone by the independent verifier), the notices arrive in the run's order
/// each under its own webhook-id, the payload is `{type, timestamp, data}`, and
/// the run view shows each one delivered on the first attempt.
#[tokio::test(flavor = "multi_thread")]
async fn a_signed_generic_channel_gets_every_notice_in_order_under_a_rotated_secret() {
    let hooks = Receiver::start().await;
    let (new, old) = (receiver::new_secret(), receiver::new_secret());
    let mut env = Env::new(&["main"], SETTINGS).await;
    env.set_extra_config(&format!(
        "channels:\n{}{DELIVERY}",
        generic(
            "hooks",
            &hooks.url("/hook"),
            &format!("{}, timeout: 2s", secrets(&[&new, &old]))
        )
    ));
    let work = common::scratch_dir();
    let (plan, set) = succeeding_plan(work.path(), &["hooks"]);
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let run = api.submit(SUBMITTER, &plan, &set).await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    let delivered = wait_settled(&api, &run, "hooks").await;
    let requests = hooks.requests();

    // Every notice once, first time, in order, each its own id.
    assert_eq!(
        requests.len(),
        delivered.len(),
        "{}",
        receiver::summary(&requests)
    );
    let ids: Vec<&str> = requests.iter().map(|r| r.id()).collect();
    assert!(
        ids.iter().all(|id| !id.is_empty()),
        "a request without webhook-id"
    );
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "{ids:?}"
    );
    let kinds = kinds_in_order(&requests);
    assert_success_story(&kinds);
    let mut previous: Option<DateTime<Utc>> = None;
    for (r, n) in requests.iter().zip(&delivered) {
        // The view lists the same notifications in the same order.
        assert_eq!(r.id(), n["id"], "{n}");
        assert_eq!(r.kind(), format!("run.{}", n["event"].as_str().unwrap()));
        assert_eq!(n["status"], "delivered", "{n}");
        assert_eq!(n["attempts"], 1, "{n}");
        assert_eq!(n["last_status"], 200, "{n}");
        assert!(n["delivered_at"].is_string(), "{n}");
        assert!(n["title"].as_str().is_some_and(|t| !t.is_empty()), "{n}");

        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hook");
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{:?}",
            r.headers
        );
        // Signed with both secrets: either one alone verifies.
        let sigs = r.header("webhook-signature").unwrap_or_default();
        assert_eq!(
            sigs.split(' ').count(),
            2,
            "two v1 signatures expected: {sigs}"
        );
        receiver::verify(&new, r).unwrap_or_else(|e| panic!("new secret, {}: {e}", r.id()));
        receiver::verify(&old, r).unwrap_or_else(|e| panic!("old secret, {}: {e}", r.id()));
        assert!(receiver::verify(&receiver::new_secret(), r).is_err());

        let p = r.json();
        assert_eq!(
            p["type"],
            format!("run.{}", p["data"]["event"].as_str().unwrap()),
            "{p}"
        );
        let at = ts(&p["timestamp"]);
        assert!(
            previous.is_none_or(|t| t <= at),
            "timestamps go backwards: {p}"
        );
        previous = Some(at);
        assert_eq!(p["data"]["run_id"], run.as_str(), "{p}");
        assert_eq!(p["data"]["target"], "main", "{p}");
        assert_eq!(p["data"]["plan"], PLAN_NAME, "{p}");
    }
    let m = metrics(&daemon).await;
    assert_eq!(
        sample(&m, "pgshepherd_notifications_delivered_total", "hooks"),
        Some(delivered.len() as f64),
        "{m}"
    );
    assert_eq!(
        sample(&m, "pgshepherd_notifications_retries_total", "hooks"),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, "pgshepherd_channel_disabled", "hooks"),
        Some(0.0)
    );
}

/// 2. The receiver is down for the whole run, then comes back and fails the
/// first attempt of everything: every notice still arrives, in the run's
/// order, and each retry carries the same webhook-id and the same body.
#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_was_down_gets_everything_in_order_under_the_same_ids() {
    let (hooks, secret, env) = down_receiver_env("2s").await;
    let work = common::scratch_dir();
    let (plan, set) = succeeding_plan(work.path(), &["hooks"]);
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let run = api.submit(SUBMITTER, &plan, &set).await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(
        row["outcome"], "succeeded",
        "a dead receiver must not hold up a run: {row}"
    );

    // Still down: everything waits, the first one has been tried and failed.
    let v = wait_view(&api, &run, "the first notice tried", |v| {
        notes(v, "hooks")
            .first()
            .is_some_and(|n| n["attempts"].as_i64() >= Some(1) && n["last_error"].is_string())
    })
    .await;
    let waiting = notes(&v, "hooks");
    assert!(
        waiting.iter().all(|n| n["status"] == "pending"),
        "{waiting:#?}"
    );
    assert!(hooks.requests().is_empty());
    assert!(
        waiting.iter().all(|n| n["next_attempt_at"].is_string()),
        "{waiting:#?}"
    );
    let m = metrics(&daemon).await;
    assert_eq!(
        sample(&m, "pgshepherd_notifications_pending", "hooks"),
        Some(waiting.len() as f64),
        "{m}"
    );

    hooks.fail_first_attempts(1, Reply::status(500));
    hooks.listen().await;
    let delivered = wait_settled(&api, &run, "hooks").await;
    let requests = hooks.requests();
    assert!(
        delivered.iter().all(|n| n["status"] == "delivered"),
        "{delivered:#?}"
    );

    // Each notice: one 500, then delivered, same id, same bytes.
    let ids = ids_in_order(&requests);
    let expected: Vec<&str> = delivered
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, expected, "{}", receiver::summary(&requests));
    for id in &ids {
        let attempts: Vec<&Request> = requests.iter().filter(|r| &r.key == id).collect();
        assert!(
            attempts.len() >= 2,
            "{id} arrived once:\n{}",
            receiver::summary(&requests)
        );
        assert_eq!(attempts[0].status, 500);
        for a in &attempts {
            assert_eq!(a.id(), id.as_str());
            assert_eq!(a.body, attempts[0].body, "{id}: a retry changed the body");
            receiver::verify(&secret, a).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }
    assert_one_at_a_time(&requests);
    assert_success_story(&kinds_in_order(&requests));
    // Notices in the order of the run's events: their timestamps never go back.
    let stamps: Vec<DateTime<Utc>> = ids
        .iter()
        .map(|id| ts(&requests.iter().find(|r| &r.key == id).unwrap().json()["timestamp"]))
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    for n in &delivered {
        assert!(n["attempts"].as_i64() >= Some(2), "{n}");
    }
    let m = metrics(&daemon).await;
    assert!(
        sample(&m, "pgshepherd_notifications_retries_total", "hooks").unwrap() >= ids.len() as f64,
        "{m}"
    );
    assert_eq!(
        sample(&m, "pgshepherd_notifications_pending", "hooks").unwrap_or(0.0),
        0.0,
        "{m}"
    );
}

/// 3. SIGKILL right after the run's last state change, while the receiver is
/// down: the `succeeded` notice was written with that change, and a new daemon
/// on the same state database sends it, byte for byte, under the outbox row's id.
#[tokio::test(flavor = "multi_thread")]
async fn killed_right_after_the_run_finished_the_final_notice_still_arrives_as_enqueued() {
    let (hooks, secret, env) = down_receiver_env("1s").await;
    let work = common::scratch_dir();
    let (plan, set) = succeeding_plan(work.path(), &["hooks"]);
    let mut daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    env.wait_for_event(&run, "run_finished", MINUTE).await;
    daemon.kill9();

    let outbox: Vec<(String, String, String, String)> = env
        .state
        .client()
        .await
        .query(
            "SELECT msg_id, kind, status, body FROM notifications WHERE run_id = $1 AND channel = 'hooks' ORDER BY id",
            &[&run],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let last = outbox.last().expect("nothing in the outbox");
    assert_eq!(last.1, "succeeded", "{outbox:?}");
    assert!(outbox.iter().all(|n| n.2 == "pending"), "{outbox:?}");

    hooks.listen().await;
    let daemon = env.start("d2").await;
    let final_id = last.0.clone();
    let requests = hooks
        .wait_until("the succeeded notice", MINUTE, |rs| {
            rs.iter().any(|r| r.key == final_id && r.delivered())
        })
        .await;
    let got = requests
        .iter()
        .find(|r| r.key == final_id && r.delivered())
        .unwrap();
    assert_eq!(got.kind(), "run.succeeded");
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        last.3,
        "not the body that was enqueued"
    );
    receiver::verify(&secret, got).unwrap();
    // And every other one, as enqueued, in order.
    assert_eq!(
        ids_in_order(&requests),
        outbox.iter().map(|n| n.0.clone()).collect::<Vec<_>>(),
        "{}",
        receiver::summary(&requests)
    );
    for (id, _, _, body) in &outbox {
        for r in requests.iter().filter(|r| &r.key == id) {
            assert_eq!(&String::from_utf8_lossy(&r.body), body, "{id}");
        }
    }
    let delivered = wait_settled(&Api::new(&daemon), &run, "hooks").await;
    assert!(
        delivered.iter().all(|n| n["status"] == "delivered"),
        "{delivered:#?}"
    );
}

/// 3b. SIGKILL while a delivery is on the wire (the receiver has the request
/// and has not answered yet): nobody knows whether it arrived, so the next
/// daemon sends it again once the dead one's claim expires, under the same
/// webhook-id and with the same body, and everything after it follows in order.
#[tokio::test(flavor = "multi_thread")]
async fn killed_mid_delivery_the_notice_is_sent_again_under_the_same_id() {
    let hooks = Receiver::start().await;
    // The first attempt at the first notice is never answered.
    hooks.script(|r| (r.seq == 0).then(|| Reply::status(200).held()));
    let mut env = Env::new(&["main"], SETTINGS).await;
    env.set_extra_config(&format!(
        "channels:\n{}{DELIVERY}",
        generic("hooks", &hooks.url("/hook"), ", timeout: 2s")
    ));
    let work = common::scratch_dir();
    let (plan, set) = succeeding_plan(work.path(), &["hooks"]);
    let mut daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    hooks
        .wait_until("the first request", MINUTE, |rs| !rs.is_empty())
        .await;
    daemon.kill9();
    let killed_at = Instant::now();

    let daemon = env.start("d2").await;
    let api = Api::new(&daemon);
    env.wait_finished(&run, MINUTE).await;
    let delivered = wait_settled(&api, &run, "hooks").await;
    assert!(
        delivered.iter().all(|n| n["status"] == "delivered"),
        "{delivered:#?}"
    );
    let requests = hooks.requests();
    let first: Vec<&Request> = requests
        .iter()
        .filter(|r| r.key == requests[0].key)
        .collect();
    assert_eq!(first.len(), 2, "{}", receiver::summary(&requests));
    assert_eq!(first[0].kind(), "run.submitted");
    // Sent again by the next daemon, not retried by the dead one before it
    // died (its request timeout is 2 s; it was killed as the request arrived).
    assert!(first[1].at > killed_at, "{}", receiver::summary(&requests));
    assert_eq!(first[1].body, first[0].body, "the resent notice changed");
    assert_eq!(delivered[0]["id"], first[0].id());
    // After the resend, each of the others once, in order.
    let rest = &requests[1..];
    assert_eq!(
        rest[0].key,
        first[0].key,
        "{}",
        receiver::summary(&requests)
    );
    assert_one_at_a_time(rest);
    assert_eq!(
        ids_in_order(rest),
        delivered
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    );
    assert_success_story(&kinds_in_order(rest));
}

/// 4a. A 429 with `Retry-After: 2` delays that notice's retry by 2 s, and only
/// the notice: the run finishes meanwhile, and the notices after it wait their
/// turn.
#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured_without_delaying_the_run() {
    let hooks = Receiver::start().await;
    // The first notice is refused with 429 until the run has finished: a run
    // held up by its notices would never finish.
    let run_finished = Arc::new(AtomicBool::new(false));
    let refusing = run_finished.clone();
    hooks.script(move |r| {
        (r.kind() == "run.submitted" && !refusing.load(Ordering::SeqCst))
            .then(|| Reply::status(429).retry_after("2"))
    });
    let mut env = Env::new(&["main"], SETTINGS).await;
    env.set_extra_config(&format!(
        "channels:\n{}{DELIVERY}",
        generic("hooks", &hooks.url("/hooks"), ", timeout: 2s"),
    ));
    let work = common::scratch_dir();
    let (plan, set) = succeeding_plan(work.path(), &["hooks"]);
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let run = api.submit(SUBMITTER, &plan, &set).await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    run_finished.store(true, Ordering::SeqCst);
    let finished = ts(&env.wait_for_event(&run, "run_finished", MINUTE).await["ts"]);

    let hooked = wait_settled(&api, &run, "hooks").await;
    let requests = hooks.requests();
    let submitted: Vec<&Request> = requests
        .iter()
        .filter(|r| r.kind() == "run.submitted")
        .collect();
    // Refused at least once, then delivered once the run had finished.
    let (refused, last) = submitted.split_at(submitted.len() - 1);
    assert!(!refused.is_empty(), "{}", receiver::summary(&requests));
    assert!(refused.iter().all(|r| r.status == 429));
    assert!(last[0].delivered(), "{}", receiver::summary(&requests));
    assert!(
        finished < last[0].wall,
        "the run finished at {finished}, after the delivery at {}",
        last[0].wall
    );
    // Each retry waited the receiver's 2 s: the daemon scheduled it exactly
    // that far out (its log says so), and it did not come sooner.
    for (refusal, retry) in submitted.iter().zip(&submitted[1..]) {
        let gap = retry.at - refusal.at;
        assert!(
            gap >= Duration::from_secs(2),
            "retried {gap:?} after a Retry-After of 2 s"
        );
    }
    let scheduled = retry_delays_logged(&daemon, submitted[0].id());
    assert_eq!(
        scheduled,
        vec![2000; refused.len()],
        "the retries the daemon scheduled (ms)"
    );
    assert_one_at_a_time(&requests);
    assert_success_story(&kinds_in_order(&requests));
    assert!(
        hooked.iter().all(|n| n["status"] == "delivered"),
        "{hooked:#?}"
    );
    assert_eq!(hooked[0]["attempts"], submitted.len(), "{:#}", hooked[0]);
    assert_eq!(hooked[0]["event"], "submitted", "{:#}", hooked[0]);
    assert!(
        hooked[1..].iter().all(|n| n["attempts"] == 1),
        "{hooked:#?}"
    );
    let m = metrics(&daemon).await;
    assert_eq!(
        sample(&m, "pgshepherd_notifications_retries_total", "hooks"),
        Some(refused.len() as f64),
        "{m}"
    );
    assert_eq!(
        sample(&m, "pgshepherd_notifications_delivered_total", "hooks"),
        Some(hooked.len() as f64),
        "{m}"
    );
}

/// 4b. A 410 disables its channel: that notice is `failed`, every later one
/// `dropped` without being sent, another channel carries on, `/metrics` and the
/// log say so, and the log never shows a channel URL. The 410 comes back after
/// a second, as from a real endpoint, so later notices are already waiting
/// when it does.
#[tokio::test(flavor = "multi_thread")]
async fn a_410_disables_the_channel_and_later_notices_are_dropped_unsent() {
    let hooks = Receiver::start().await;
    let gone = Receiver::start().await;
    gone.set_default(Reply::status(410).after(Duration::from_secs(1)));
    let hooks_url = hooks.url("/hooks/KEEPME");
    let gone_url = gone.url("/gone/GONEPATH");
    let mut env = Env::new(&["main"], SETTINGS).await;
    env.set_extra_config(&format!(
        "channels:\n{}{}{DELIVERY}",
        generic("hooks", &hooks_url, ", timeout: 5s"),
        generic("gone", &gone_url, ", timeout: 5s"),
    ));
    let work = common::scratch_dir();
    let (plan, set) = succeeding_plan(work.path(), &["hooks", "gone"]);
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let run = api.submit(SUBMITTER, &plan, &set).await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");

    let hooked = wait_settled(&api, &run, "hooks").await;
    assert!(
        hooked.iter().all(|n| n["status"] == "delivered"),
        "{hooked:#?}"
    );
    let gone_notes = wait_settled(&api, &run, "gone").await;
    assert_eq!(gone_notes.len(), hooked.len(), "{gone_notes:#?}");
    let sent = gone.requests();
    assert_eq!(
        sent.len(),
        1,
        "only the first notice may reach a 410 receiver: {}\n{gone_notes:#?}",
        receiver::summary(&sent)
    );
    assert_eq!(gone_notes[0]["status"], "failed", "{:#}", gone_notes[0]);
    assert_eq!(gone_notes[0]["last_status"], 410, "{:#}", gone_notes[0]);
    for n in &gone_notes[1..] {
        assert_eq!(n["status"], "dropped", "{gone_notes:#?}");
        assert_eq!(n["attempts"], 0, "{gone_notes:#?}");
    }
    let m = metrics(&daemon).await;
    assert_eq!(
        sample(&m, "pgshepherd_channel_disabled", "gone"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "pgshepherd_channel_disabled", "hooks"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "pgshepherd_notifications_failed_total", "gone"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "pgshepherd_notifications_dropped_total", "gone"),
        Some((gone_notes.len() - 1) as f64),
        "{m}"
    );

    let log = daemon.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("disabled") && l.contains("\"gone\"")),
        "the log does not say that channel gone was disabled:\n{log}"
    );
    assert_contains_none(
        "the daemon log",
        &log,
        &[
            hooks_url.clone(),
            gone_url.clone(),
            "KEEPME".into(),
            "GONEPATH".into(),
        ],
    );
}

/// 5. A receiver that does not answer holds up neither the run, which finishes
/// while that receiver still has its first notice, nor another channel, which
/// has everything before the slow one is sent its second notice. Answered at
/// last, the slow one gets the rest, in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_receiver_holds_up_neither_the_run_nor_another_channel() {
    let slow = Receiver::start().await;
    slow.set_default(Reply::status(200).held());
    let fast = Receiver::start().await;
    let mut env = Env::new(&["main"], SETTINGS).await;
    env.set_extra_config(&format!(
        "channels:\n{}{}{DELIVERY}",
        generic("slow", &slow.url("/slow"), ", timeout: 10s"),
        generic("fast", &fast.url("/fast"), ", timeout: 10s"),
    ));
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);

    let work = common::scratch_dir();
    let (plan, set) = succeeding_plan(work.path(), &["slow", "fast"]);
    let run = api.submit(SUBMITTER, &plan, &set).await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    let v = view(&api, &run).await;
    assert!(
        notes(&v, "slow").iter().all(|n| n["status"] == "pending"),
        "the slow channel's notices: {:#}",
        v["notifications"]
    );

    let fast_done = fast
        .wait_until("everything on the fast channel", MINUTE, |rs| {
            rs.iter()
                .any(|r| r.kind() == "run.succeeded" && r.delivered())
        })
        .await;
    let slow_so_far = slow.requests();
    assert!(
        slow_so_far.iter().all(|r| r.kind() == "run.submitted"),
        "the slow channel had more than its first notice when the fast one finished: {}",
        receiver::summary(&slow_so_far)
    );
    assert_success_story(&kinds_in_order(&fast_done));
    assert_one_at_a_time(&fast_done);
    let v = view(&api, &run).await;
    assert_eq!(notes(&v, "fast").len(), fast_done.len());
    assert!(notes(&v, "fast").iter().all(|n| n["status"] == "delivered"));

    // The slow one is not skipped: its second notice comes once the first is
    // answered.
    slow.release();
    let released_at = Instant::now();
    let slowed = slow
        .wait_until("everything on the slow channel", MINUTE, |rs| {
            rs.iter()
                .any(|r| r.kind() == "run.succeeded" && r.delivered())
        })
        .await;
    assert_success_story(&kinds_in_order(&slowed));
    let second = slowed.iter().find(|r| r.kind() != "run.submitted").unwrap();
    assert!(second.at > released_at, "{}", receiver::summary(&slowed));
    let settled = wait_settled(&api, &run, "slow").await;
    assert!(
        settled.iter().all(|n| n["status"] == "delivered"),
        "{settled:#?}"
    );
}

/// The config of the escalation tests: plan channel `hooks`, levels `pager1`
/// (then `first_delay` until level 2) and `pager2` (then `second_delay` until
/// the next pass).
fn escalation_config(
    hooks: &Receiver,
    p1: &Receiver,
    p2: &Receiver,
    first_delay: &str,
    second_delay: &str,
    repeat: u32,
) -> String {
    format!(
        "channels:\n{}{}{}\
         escalation:\n  oncall: {{levels: [{{channels: [pager1], delay: {first_delay}}}, {{channels: [pager2], delay: {second_delay}}}], repeat: {repeat}, on_breach: false}}\n\
         {DELIVERY}",
        generic("hooks", &hooks.url("/hooks"), ", timeout: 2s"),
        generic("pager1", &p1.url("/pager1"), ", timeout: 2s"),
        generic("pager2", &p2.url("/pager2"), ", timeout: 2s"),
    )
}

/// Receivers for the plan's channel and two pager levels, an environment whose
/// policy `oncall` pages them (see [`escalation_config`]), and a plan that ends
/// needs_human under that policy on target `main`; `other` is a second target
/// for [`Escalating::timer_turn`].
struct Escalating {
    hooks: Receiver,
    p1: Receiver,
    p2: Receiver,
    env: Env,
    _work: tempfile::TempDir,
    plan: PathBuf,
    set: PathBuf,
}

const ESCALATED: &str = "notify:\n  channels: [hooks]\n  escalation: oncall\n";

async fn escalating(first_delay: &str, second_delay: &str, repeat: u32) -> Escalating {
    let (hooks, p1, p2) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let mut env = Env::new(&["main", "other"], SETTINGS).await;
    env.set_extra_config(&escalation_config(
        &hooks,
        &p1,
        &p2,
        first_delay,
        second_delay,
        repeat,
    ));
    let work = common::scratch_dir();
    let (plan, set) = held_plan(work.path(), ESCALATED);
    Escalating {
        hooks,
        p1,
        p2,
        env,
        _work: work,
        plan,
        set,
    }
}

impl Escalating {
    /// When the pages of `run` to `channel` were enqueued (the outbox rows'
    /// `created_at`: the database's clock, in the transaction that moved the
    /// escalation's timer), oldest first.
    async fn paged_at(&self, run: &str, channel: &str) -> Vec<DateTime<Utc>> {
        self.env
            .state
            .client()
            .await
            .query(
                "SELECT created_at FROM notifications \
                  WHERE run_id = $1 AND channel = $2 AND kind = 'escalation' ORDER BY id",
                &[&run, &channel],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// The escalation's `next_at` minus the last page's `created_at`, in ms:
    /// the delay the timer was set to when it paged.
    async fn timer_set_to_ms(&self, run: &str) -> f64 {
        self.env
            .state
            .query_i64(&format!(
                "SELECT (extract(epoch FROM e.next_at - max(n.created_at)) * 1000)::bigint \
                   FROM escalations e JOIN notifications n ON n.run_id = e.run_id AND n.kind = 'escalation' \
                  WHERE e.run_id = '{run}' GROUP BY e.next_at"
            ))
            .await as f64
    }

    /// Move `run`'s escalation timer to now, as if its delay had passed.
    async fn make_due(&self, run: &str) {
        self.env
            .state
            .execute(&format!(
                "UPDATE escalations SET next_at = now() WHERE run_id = '{run}'"
            ))
            .await;
    }

    /// A barrier on the escalation timer: a run on `other` that needs a person
    /// under the same policy, and its first page. The timer takes every due
    /// escalation in one query, oldest first, so once that page is enqueued any
    /// escalation that was due when this was called has been paged too.
    async fn timer_turn(&self, api: &Api) {
        let work = common::scratch_dir();
        let (plan, set) = soak_plan(
            work.path(),
            "other",
            "5s",
            "SELECT 5",
            1,
            &format!("rollback:\n  strategy: hold\n{ESCALATED}"),
        );
        let run = api.submit(SUBMITTER, &plan, &set).await;
        common::eventually("the barrier run's first page", || async {
            (!self.paged_at(&run, "pager1").await.is_empty()).then_some(())
        })
        .await;
    }
}

fn pages(requests: &[Request], run: &str) -> Vec<Request> {
    let mut seen = BTreeSet::new();
    requests
        .iter()
        .filter(|r| {
            r.kind() == "run.escalation"
                && r.json()["data"]["run_id"] == run
                && r.delivered()
                && seen.insert(r.key.clone())
        })
        .cloned()
        .collect()
}

/// 6. A run that needs a person pages level 1, then level 2 two seconds later;
/// an ack stops the paging (the policy's second pass never comes) and tells
/// both levels it was acknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn escalation_pages_level_after_level_until_acknowledged() {
    // A second pass, an hour after level 2, so that an ack has something to
    // stop; the test makes it due once the ack is in.
    let esc = escalating("2s", "1h", 1).await;
    let Escalating {
        hooks, p1, p2, env, ..
    } = &esc;
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let run = api.submit(SUBMITTER, &esc.plan, &esc.set).await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "needs_human", "{row}");

    let first = p1
        .wait_delivered("level 1 paged", MINUTE, |r| r.kind() == "run.escalation")
        .await;
    let second = p2
        .wait_delivered("level 2 paged", MINUTE, |r| r.kind() == "run.escalation")
        .await;
    // Level 2 was paged no sooner than level 1's 2 s delay after level 1.
    let (at1, at2) = (
        esc.paged_at(&run, "pager1").await,
        esc.paged_at(&run, "pager2").await,
    );
    let gap = at2[0] - at1[0];
    eprintln!("level 2 paged {gap} after level 1");
    assert!(
        gap >= chrono::Duration::seconds(2),
        "level 2 paged {gap} after level 1, with a delay of 2 s"
    );
    for (page, level) in [(&first, 1), (&second, 2)] {
        let p = page.json();
        assert_eq!(p["data"]["run_id"], run.as_str(), "{p}");
        assert_eq!(p["data"]["escalation"]["policy"], "oncall", "{p}");
        assert_eq!(p["data"]["escalation"]["level"], level, "{p}");
        assert_eq!(p["data"]["escalation"]["levels"], 2, "{p}");
        assert_eq!(p["data"]["escalation"]["trigger"], "needs_human", "{p}");
        assert_eq!(p["data"]["severity"], "critical", "{p}");
    }
    // The plan's channel hears of the run, not the pages.
    assert!(
        hooks
            .requests()
            .iter()
            .any(|r| r.kind() == "run.needs_human")
    );
    assert!(
        hooks
            .requests()
            .iter()
            .all(|r| r.kind() != "run.escalation")
    );
    let v = view(&api, &run).await;
    assert_eq!(v["escalation"]["policy"], "oncall", "{v:#}");
    assert_eq!(v["escalation"]["status"], "active", "{:#}", v["escalation"]);
    assert_eq!(
        v["escalation"]["trigger"], "needs_human",
        "{:#}",
        v["escalation"]
    );
    // Both levels paged; next: level 1 of the second pass, level 2's delay on.
    assert_eq!(
        v["escalation"]["paged"],
        json!(["pager1", "pager2"]),
        "{:#}",
        v["escalation"]
    );
    assert_eq!(v["escalation"]["next_level"], 1, "{:#}", v["escalation"]);
    assert_eq!(v["escalation"]["pass"], 2, "{:#}", v["escalation"]);
    assert!(
        v["escalation"]["next_at"].is_string(),
        "{:#}",
        v["escalation"]
    );
    assert_eq!(esc.timer_set_to_ms(&run).await, 3_600_000.0);

    let (status, body) = api
        .post(SUBMITTER, &format!("/v1/runs/{run}/ack"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let v = view(&api, &run).await;
    assert_eq!(
        v["escalation"]["status"], "acknowledged",
        "{:#}",
        v["escalation"]
    );
    assert_eq!(
        v["escalation"]["acked_by"], "alice",
        "{:#}",
        v["escalation"]
    );
    assert!(
        v["escalation"]["acked_at"].is_string(),
        "{:#}",
        v["escalation"]
    );
    for (pager, name) in [(p1, "pager1"), (p2, "pager2")] {
        let ack = pager
            .wait_delivered(&format!("{name} told of the ack"), MINUTE, |r| {
                r.kind() == "run.acknowledged"
            })
            .await;
        assert_eq!(ack.json()["data"]["run_id"], run.as_str());
    }
    hooks
        .wait_delivered("hooks told of the ack", MINUTE, |r| {
            r.kind() == "run.acknowledged"
        })
        .await;

    // The second pass falls due, and the timer turns: nothing is paged for
    // this run.
    esc.make_due(&run).await;
    esc.timer_turn(&api).await;
    assert_eq!(esc.paged_at(&run, "pager1").await.len(), 1);
    assert_eq!(esc.paged_at(&run, "pager2").await.len(), 1);
    assert_eq!(
        pages(&p1.requests(), &run).len(),
        1,
        "{}",
        receiver::summary(&p1.requests())
    );
    let v = view(&api, &run).await;
    assert_eq!(
        v["escalation"]["status"], "acknowledged",
        "{:#}",
        v["escalation"]
    );
    for n in notes(&v, "pager1").iter().chain(&notes(&v, "pager2")) {
        assert_eq!(n["status"], "delivered", "{n}");
    }
}

/// 6b. SIGKILL right after level 1 was paged, with level 2 due an hour later;
/// the hour passes (the test moves the timer) while no daemon runs, and a new
/// daemon on the same state database pages level 2 once, and not level 1 again:
/// the timer is in the database, not in the dead process (a timer restarted
/// from scratch would wait another hour).
#[tokio::test(flavor = "multi_thread")]
async fn killed_after_level_one_the_restarted_daemon_pages_level_two_once_on_time() {
    let esc = escalating("1h", "1h", 0).await;
    let Escalating { p1, p2, env, .. } = &esc;
    let mut daemon = env.start("d1").await;
    let run = Api::new(&daemon)
        .submit(SUBMITTER, &esc.plan, &esc.set)
        .await;
    p1.wait_delivered("level 1 paged", MINUTE, |r| r.kind() == "run.escalation")
        .await;
    daemon.kill9();
    // Level 2 is due level 1's delay after level 1 was paged.
    assert_eq!(esc.timer_set_to_ms(&run).await, 3_600_000.0);
    esc.make_due(&run).await;
    let due: DateTime<Utc> = env
        .state
        .client()
        .await
        .query_one(
            "SELECT next_at FROM escalations WHERE run_id = $1 AND next_level = 1",
            &[&run],
        )
        .await
        .expect("the escalation row, next level 2")
        .get(0);

    let daemon = env.start("d2").await;
    let second = p2
        .wait_delivered("level 2 paged", MINUTE, |r| r.kind() == "run.escalation")
        .await;
    assert_eq!(second.json()["data"]["escalation"]["level"], 2);
    // Not before it was due.
    let at2 = esc.paged_at(&run, "pager2").await;
    assert!(at2[0] >= due, "level 2 paged at {}, due at {due}", at2[0]);

    // Once: the policy is exhausted, and a turn of the timer later, each level
    // has exactly its one page.
    let api = Api::new(&daemon);
    let v = wait_view(&api, &run, "the escalation exhausted", |v| {
        v["escalation"]["status"] == "exhausted"
    })
    .await;
    esc.timer_turn(&api).await;
    assert_eq!(esc.paged_at(&run, "pager1").await.len(), 1);
    assert_eq!(esc.paged_at(&run, "pager2").await.len(), 1);
    assert_eq!(
        pages(&p2.requests(), &run).len(),
        1,
        "{}",
        receiver::summary(&p2.requests())
    );
    let paged: BTreeSet<&str> = v["escalation"]["paged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(paged, BTreeSet::from(["pager1", "pager2"]));
}

/// 7. Slack, Discord and Teams channels get their services' native payloads,
/// unsigned; a channel's `events` and `min_severity` filters hold.
#[tokio::test(flavor = "multi_thread")]
async fn slack_discord_and_teams_get_native_payloads_unsigned() {
    let (slack, discord, teams) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let mut env = Env::new(&["main"], SETTINGS).await;
    env.set_extra_config(&format!(
        "channels:\n\
         \x20 chat: {{kind: slack, url: \"{}\", events: [needs_human, succeeded], min_severity: info}}\n\
         \x20 disc: {{kind: discord, url: \"{}\"}}\n\
         \x20 team: {{kind: teams, url: \"{}\"}}\n\
         \x20 loud: {{kind: discord, url: \"{}\", min_severity: critical}}\n{DELIVERY}",
        slack.url("/services/T000/B000/SECRETPATH"),
        discord.url("/api/webhooks/1234/DISCORDTOKEN"),
        teams.url("/workflows/abc/triggers/manual/paths/invoke?api-version=1&sig=TEAMSSIG"),
        discord.url("/api/webhooks/5678/CRITICALONLY"),
    ));
    let work = common::scratch_dir();
    let (plan, set) = succeeding_plan(work.path(), &["chat", "disc", "team", "loud"]);
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let run = api.submit(SUBMITTER, &plan, &set).await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    let chat = wait_settled(&api, &run, "chat").await;
    let disc = wait_settled(&api, &run, "disc").await;
    let team = wait_settled(&api, &run, "team").await;

    // The filters: Slack only hears of the success, `loud` of nothing (a
    // success is not critical).
    assert!(notes(&view(&api, &run).await, "loud").is_empty());
    assert!(
        discord
            .requests()
            .iter()
            .all(|r| r.path != "/api/webhooks/5678/CRITICALONLY")
    );
    assert_eq!(chat.len(), 1, "{chat:#?}");
    assert_eq!(chat[0]["event"], "succeeded");
    for n in chat.iter().chain(&disc).chain(&team) {
        assert_eq!(n["status"], "delivered", "{n}");
    }
    let (s, d, t) = (slack.requests(), discord.requests(), teams.requests());
    assert_eq!(s.len(), 1, "{}", receiver::summary(&s));
    assert_eq!(d.len(), disc.len(), "{}", receiver::summary(&d));
    assert_eq!(t.len(), team.len(), "{}", receiver::summary(&t));
    assert!(d.len() >= 4);
    for r in s.iter().chain(&d).chain(&t) {
        assert_eq!(r.method, "POST");
        assert!(
            r.header("webhook-signature").is_none(),
            "a chat webhook got a signature: {:?}",
            r.headers
        );
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{:?}",
            r.headers
        );
    }
    assert_eq!(s[0].path, "/services/T000/B000/SECRETPATH");
    assert_eq!(d[0].path, "/api/webhooks/1234/DISCORDTOKEN");
    assert_eq!(t[0].path, "/workflows/abc/triggers/manual/paths/invoke");
    assert_eq!(t[0].query.as_deref(), Some("api-version=1&sig=TEAMSSIG"));

    // Slack: `text` (the notification line) and Block Kit `blocks`.
    let p = s[0].json();
    let text = p["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text: {p:#}"));
    assert!(text.contains(&run), "{p:#}");
    let blocks = p["blocks"]
        .as_array()
        .unwrap_or_else(|| panic!("no blocks: {p:#}"));
    assert_eq!(blocks[0]["type"], "header", "{p:#}");
    assert_eq!(blocks[0]["text"]["type"], "plain_text", "{p:#}");
    assert!(blocks.iter().all(|b| b["type"].is_string()), "{p:#}");
    assert!(blocks.len() <= 50, "Slack takes at most 50 blocks: {p:#}");

    // Discord: `content`, one embed, and nothing that could ping.
    for r in &d {
        let p = r.json();
        assert!(
            p["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty() && c.chars().count() <= 2000),
            "{p:#}"
        );
        let embeds = p["embeds"]
            .as_array()
            .unwrap_or_else(|| panic!("no embeds: {p:#}"));
        assert_eq!(embeds.len(), 1, "{p:#}");
        assert!(
            embeds[0]["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{p:#}"
        );
        assert!(embeds[0]["fields"].is_array(), "{p:#}");
        assert_eq!(p["allowed_mentions"], json!({"parse": []}), "{p:#}");
    }
    assert!(
        d.iter()
            .any(|r| r.json()["content"].as_str().unwrap().contains(&run))
    );

    // Teams: a message with one Adaptive Card attachment.
    for r in &t {
        let p = r.json();
        assert_eq!(p["type"], "message", "{p:#}");
        let attachments = p["attachments"]
            .as_array()
            .unwrap_or_else(|| panic!("no attachments: {p:#}"));
        assert_eq!(attachments.len(), 1, "{p:#}");
        assert_eq!(
            attachments[0]["contentType"], "application/vnd.microsoft.card.adaptive",
            "{p:#}"
        );
        let card = &attachments[0]["content"];
        assert_eq!(card["type"], "AdaptiveCard", "{p:#}");
        assert!(card["version"].is_string(), "{p:#}");
        assert!(
            card["body"].as_array().is_some_and(|b| !b.is_empty()),
            "{p:#}"
        );
    }
    assert!(t.iter().any(|r| r.body_contains(&run)));
}

/// 8. A plan naming a channel or a policy the daemon does not define is
/// refused, nothing is submitted, and the error points at the name.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_naming_an_unknown_channel_or_policy_is_refused_at_the_name() {
    let hooks = Receiver::start().await;
    let mut env = Env::new(&["main"], SETTINGS).await;
    env.set_extra_config(&format!(
        "channels:\n{}escalation:\n  oncall: {{levels: [{{channels: [hooks], delay: 2s}}]}}\n",
        generic("hooks", &hooks.url("/hook"), "")
    ));
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);

    // Block and flow lists: the position is the name's own.
    for notify in [
        "notify:\n  channels:\n    - hooks\n    - nosuch\n  escalation: nopolicy\n",
        "notify: {channels: [hooks, nosuch], escalation: nopolicy}\n",
    ] {
        let work = common::scratch_dir();
        let (plan, set) = succeeding_plan(work.path(), &["hooks"]);
        let text = std::fs::read_to_string(&plan).unwrap();
        let text = text.replace("notify:\n  channels: [hooks]\n", notify);
        std::fs::write(&plan, &text).unwrap();
        let at = |name: &str| {
            text.lines()
                .enumerate()
                .find_map(|(i, l)| l.find(name).map(|c| (i as u64 + 1, c as u64 + 1)))
                .unwrap()
        };
        let (status, body) = api
            .post(SUBMITTER, "/v1/runs", common::daemon::bundle(&plan, &set))
            .await;
        assert_eq!(status, 422, "{body}");
        let errors = body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"));
        for (name, what) in [("nosuch", "channel"), ("nopolicy", "polic")] {
            let (line, column) = at(name);
            let e = errors
                .iter()
                .find(|e| e["message"].as_str().unwrap_or_default().contains(name))
                .unwrap_or_else(|| panic!("no error about {name}: {body:#}"));
            assert_eq!(e["file"], "plan.yaml", "{e}");
            assert_eq!(
                (e["line"].as_u64(), e["column"].as_u64()),
                (Some(line), Some(column)),
                "{name} in\n{text}\n{e}"
            );
            assert!(e["message"].as_str().unwrap().contains(what), "{e}");
        }
        assert_eq!(errors.len(), 2, "{body:#}");

        // The client prints them as FILE:LINE:COLUMN and exits 2.
        let out = std::process::Command::new(common::pgshepherd_bin())
            .arg("submit")
            .arg(&plan)
            .args(["--server", &daemon.url, "--token", SUBMITTER])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        for name in ["nosuch", "nopolicy"] {
            let (line, column) = at(name);
            assert!(
                stderr.contains(&format!("plan.yaml:{line}:{column}")),
                "{name}:\n{stderr}"
            );
        }
    }
    let (_, runs) = api.get(READER, "/v1/runs").await;
    let listed = runs
        .as_array()
        .or(runs["runs"].as_array())
        .map_or(0, |a| a.len());
    assert_eq!(listed, 0, "something was submitted: {runs}");
    assert_eq!(env.state.query_i64("SELECT count(*) FROM runs").await, 0);
}

/// 9. After a run that used every kind of channel, failed deliveries, a dead
/// receiver, an escalation and an ack: no signing secret, URL, secret path
/// segment or token appears in the log, the API's answers or `/metrics`.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_leave_the_daemon() {
    let hooks = Receiver::start().await;
    let pager = Receiver::start().await;
    let (slack, discord, teams) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let down = Receiver::reserve();
    // Slack fails the first attempt of each message, quoting the request line
    // (as some proxies do): the error must not carry the URL into the view.
    slack.fail_first_attempts(
        1,
        Reply::status(500).body("no healthy upstream for POST /services/T000/B000/SECRETPATH"),
    );
    let (s1, s2, s3) = (
        receiver::new_secret(),
        receiver::new_secret(),
        receiver::new_secret(),
    );
    let urls = [
        hooks.url("/hook/HOOKPATH"),
        pager.url("/page/PAGERPATH"),
        slack.url("/services/T000/B000/SECRETPATH"),
        discord.url("/api/webhooks/1234/DISCORDTOKEN"),
        teams.url("/workflows/abc/invoke?sig=TEAMSSIG"),
        down.url("/down/DOWNSECRET"),
    ];
    let mut env = Env::new(&["main"], SETTINGS).await;
    env.set_extra_config(&format!(
        "channels:\n{}{}\
         \x20 chat: {{kind: slack, url: \"{}\"}}\n\
         \x20 disc: {{kind: discord, url: \"{}\"}}\n\
         \x20 team: {{kind: teams, url: \"{}\"}}\n{}\
         escalation:\n  oncall: {{levels: [{{channels: [pager], delay: 1s}}]}}\n{DELIVERY}",
        generic("hooks", &urls[0], &secrets(&[&s1, &s2])),
        generic("pager", &urls[1], &secrets(&[&s3])),
        urls[2],
        urls[3],
        urls[4],
        generic(
            "down",
            &urls[5],
            &format!("{}, timeout: 1s", secrets(&[&s1]))
        ),
    ));
    let work = common::scratch_dir();
    let (plan, set) = held_plan(
        work.path(),
        "notify:\n  channels: [hooks, chat, disc, team, down]\n  escalation: oncall\n",
    );
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let run = api.submit(SUBMITTER, &plan, &set).await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "needs_human", "{row}");
    pager
        .wait_delivered("the page", MINUTE, |r| r.kind() == "run.escalation")
        .await;
    let (status, body) = api
        .post(APPROVER, &format!("/v1/runs/{run}/ack"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    for ch in ["hooks", "chat", "disc", "team", "pager"] {
        let settled = wait_settled(&api, &run, ch).await;
        assert!(
            settled.iter().all(|n| n["status"] == "delivered"),
            "{ch}: {settled:#?}"
        );
    }
    // The dead receiver has been tried (and failed) more than once.
    let v = wait_view(&api, &run, "the dead channel retried", |v| {
        notes(v, "down")
            .first()
            .is_some_and(|n| n["attempts"].as_i64() >= Some(2))
    })
    .await;
    let chat = notes(&v, "chat");
    assert!(
        chat.iter().all(|n| n["attempts"].as_i64() >= Some(2)),
        "{chat:#?}"
    );
    for r in slack
        .requests()
        .iter()
        .chain(&discord.requests())
        .chain(&teams.requests())
    {
        assert!(r.header("webhook-signature").is_none());
    }

    let mut leaks: Vec<String> = urls.to_vec();
    for s in [&s1, &s2, &s3] {
        leaks.push(s.clone());
        leaks.push(s.trim_start_matches("whsec_").to_string());
    }
    for piece in [
        "HOOKPATH",
        "PAGERPATH",
        "SECRETPATH",
        "DISCORDTOKEN",
        "TEAMSSIG",
        "DOWNSECRET",
    ] {
        leaks.push(piece.to_string());
    }
    for token in [SUBMITTER, SUBMITTER2, APPROVER, READER, ADMIN] {
        leaks.push(token.to_string());
    }
    let (_, runs) = api.get(READER, "/v1/runs").await;
    let (_, events) = api.get(READER, &format!("/v1/runs/{run}/events")).await;
    let view_text = view(&api, &run).await.to_string();
    assert!(
        view_text.contains("\"chat\""),
        "the view names channels: {view_text}"
    );
    assert_contains_none("GET /v1/runs/{id}", &view_text, &leaks);
    assert_contains_none("GET /v1/runs", &runs.to_string(), &leaks);
    assert_contains_none("GET /v1/runs/{id}/events", &events.to_string(), &leaks);
    let m = metrics(&daemon).await;
    assert!(m.contains("channel=\"down\""), "{m}");
    assert_contains_none("/metrics", &m, &leaks);
    let log = daemon.log_text();
    assert!(
        log.contains("\"down\""),
        "nothing logged about the dead channel:\n{log}"
    );
    assert_contains_none("the daemon log", &log, &leaks);
    // The client's rendering of the run, too.
    let out = std::process::Command::new(common::pgshepherd_bin())
        .args(["status", &run, "--server", &daemon.url])
        .env("PGSHEPHERD_TOKEN", READER)
        .output()
        .unwrap();
    // 4: the run needs a human.
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown.contains("chat"), "{shown}");
    assert_contains_none("pgshepherd status", &shown, &leaks);
    // The database's copy of the config is the only place the secrets live:
    // the outbox holds bodies, not URLs.
    let stored: i64 = env
        .state
        .query_i64(&format!(
            "SELECT count(*) FROM notifications WHERE body LIKE '%SECRETPATH%' OR body LIKE '%{}%'",
            s1.trim_start_matches("whsec_")
        ))
        .await;
    assert_eq!(stored, 0);
}
