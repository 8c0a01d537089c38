//! The daemon keeps working when the state database or a target goes away
//! underneath it: every session is terminated and new connections are refused,
//! as during a restart, until the daemon has demonstrably run into the outage.

mod common;

use std::future::Future;
use std::time::Duration;

use common::TestDb;
use common::daemon::{Api, Env, ONE_TABLE, SUBMITTER, plan_dir, soak_yaml};
use common::proxy::Proxy;

const MINUTE: Duration = Duration::from_secs(60);

/// Refuse new connections to `db` and terminate the existing ones until `over`
/// resolves.
async fn outage(db: &TestDb, over: impl Future<Output = ()>) {
    let admin = common::cluster()
        .dsn("postgres")
        .connect("pgshepherd-test outage", &[])
        .await
        .unwrap();
    let name = &db.name;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = '{name}' AND pid <> pg_backend_pid();"
        ))
        .await
        .unwrap();
    over.await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS true"
        ))
        .await
        .unwrap();
}

fn write_plan(dir: &std::path::Path, soak: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let tail = format!(
        "backup:\n  enabled: false\n{}rollback:\n  strategy: down\n  confirm: 1s\n",
        soak_yaml(soak, "500ms", "SELECT 1", 1)
    );
    plan_dir(dir, "main", ONE_TABLE, &tail)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_database_outage_mid_soak_delays_the_run_but_loses_nothing() {
    let env = Env::new(&["main"], "lease_timeout: 10s\npoll_interval: 300ms").await;
    let work = common::scratch_dir();
    let (plan, set) = write_plan(work.path(), "4s");
    let daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    env.wait_for_event(&run, "check_sample", MINUTE).await;
    // Down until the daemon has failed a write and said it retries.
    let retrying = || daemon.log_text().matches("retrying").count();
    let before = retrying();
    outage(&env.state, async {
        common::eventually("the daemon retrying its writes", || async {
            (retrying() > before).then_some(())
        })
        .await
    })
    .await;

    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    let events = env.events(&run).await;
    let finished = events
        .iter()
        .find(|e| e["event"] == "soak_finished")
        .unwrap();
    assert_eq!(finished["tallies"][0]["valid"], 8, "{finished}");
    assert!(
        daemon.log_text().contains("retrying"),
        "the daemon should have said it was retrying its writes"
    );
    // The daemon is still healthy and serving.
    let (status, _) = Api::new(&daemon)
        .get(common::daemon::READER, &format!("/v1/runs/{run}"))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_outage_mid_soak_is_inconclusive_never_a_pass_and_the_rollback_relocks() {
    let env = Env::new(&["main"], "lease_timeout: 10s\npoll_interval: 300ms").await;
    let work = common::scratch_dir();
    // Default missing-data rules: two inconclusive samples in a row are set aside,
    // more count as a breach.
    let (plan, set) = write_plan(work.path(), "20s");
    let daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    env.wait_for_event(&run, "check_sample", MINUTE).await;
    // Down until three samples in a row were inconclusive: a breach.
    outage(env.target("main"), async {
        env.wait_for_events(&run, "three inconclusive samples", |events| {
            events
                .iter()
                .filter(|e| {
                    e["event"] == "check_sample" && e["step"] == "soak" && e["valid"] == false
                })
                .count()
                >= 3
        })
        .await;
    })
    .await;

    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "rolled_back", "{row}");
    assert!(
        row["reason"].as_str().unwrap().contains("inconclusive"),
        "{row}"
    );
    // The lock session died with the outage; the rollback took the lock again and
    // undid the migration.
    assert!(!env.target("main").table_exists("t").await);
    let samples: Vec<serde_json::Value> = env
        .events(&run)
        .await
        .into_iter()
        .filter(|e| e["event"] == "check_sample" && e["step"] == "soak")
        .collect();
    assert!(
        samples.iter().any(|s| s["valid"] == false),
        "no inconclusive sample recorded"
    );
    drop(daemon);
}

/// The path to the state database goes silent, as through a firewall or NAT that
/// forgets its connections: nothing passes on the daemon's connections and
/// nothing closes them; new connections hang too until the path comes back,
/// and the old ones never do. The daemon must see it (a deadline, not an
/// error), say so, stop driving the run it can no longer fence, and once new
/// connections work take the run back under a new epoch and finish it.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_database_path_gone_silent_stops_the_run_and_a_new_epoch_finishes_it() {
    let upstream = common::cluster().port();
    let proxy = Proxy::start(upstream).await;
    let mut env = Env::new(&["main"], "lease_timeout: 3s\npoll_interval: 300ms").await;
    let routed = proxy.route(&env.state.url, upstream);
    env.set_state_url(&routed);
    let work = common::scratch_dir();
    let (plan, set) = write_plan(work.path(), "4s");
    let daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    env.wait_for_event(&run, "check_sample", MINUTE).await;
    let before = env.run_row(&run).await;
    assert_eq!(before["phase"], "active", "{before}");

    proxy.go_silent();
    // `/healthz` says the scheduler cannot reach the state database and that it
    // stopped the run whose lease it could not renew.
    let http = reqwest::Client::new();
    let health = common::eventually("/healthz reporting the stopped run", || async {
        let r = http
            .get(format!("{}/healthz", daemon.url))
            .send()
            .await
            .ok()?;
        if r.status() != 503 {
            return None;
        }
        let body: serde_json::Value = r.json().await.ok()?;
        (body["runs_stopped"] == 1).then_some(body)
    })
    .await;
    assert_eq!(health["status"], "unavailable", "{health}");
    assert!(
        health["error"].as_str().unwrap().contains("state database"),
        "{health}"
    );
    assert!(
        daemon.log_text().contains("leases expired without renewal"),
        "the log should say why the run was stopped"
    );
    // Not driven any more: its sessions on the target (lock, samplers) are gone.
    env.target("main")
        .wait_for(
            "the stopped run's target sessions to close",
            "SELECT NOT EXISTS (SELECT FROM pg_stat_activity
              WHERE application_name = 'pgshepherd-check'
                 OR application_name LIKE 'pgshepherd run %')",
        )
        .await;
    // Nothing was recorded for it meanwhile (the old connections are mute and
    // no new one gets through).
    let stopped = env.events(&run).await.len();

    proxy.come_back();
    let row = env.wait_finished(&run, common::PATIENCE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    let epoch_before = before["epoch"].as_i64().unwrap();
    assert!(row["epoch"].as_i64().unwrap() > epoch_before, "{row}");
    let events = env.events(&run).await;
    let resumed = events[stopped..]
        .iter()
        .find(|e| e["event"] == "run_resumed")
        .unwrap_or_else(|| panic!("no run_resumed after the path came back: {events:?}"));
    assert!(
        resumed["epoch"].as_i64().unwrap() > epoch_before,
        "{resumed}"
    );
    // And the daemon is healthy again.
    common::eventually("/healthz ok again", || async {
        let r = http
            .get(format!("{}/healthz", daemon.url))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}

/// The path to the target goes silent mid-soak: the run's lock session and its
/// samplers' connections stay open but nothing passes. Samples taken meanwhile
/// are inconclusive, never passes; once new connections work the samplers
/// reconnect and the soak carries on to its verdict.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_path_gone_silent_mid_soak_is_inconclusive_and_the_soak_carries_on() {
    let upstream = common::cluster().port();
    let proxy = Proxy::start(upstream).await;
    let mut env = Env::new(&["main"], "lease_timeout: 10s\npoll_interval: 300ms").await;
    let routed = proxy.route(&env.target("main").url, upstream);
    env.set_target_url("main", &routed);
    let work = common::scratch_dir();
    // Inconclusive samples do not end the soak (`ignore`): it only has to see
    // enough valid ones, before and after the silence.
    let tail = "backup:\n  enabled: false\nsoak:\n  duration: 5s\n  interval: 500ms\n  \
                baseline_samples: 1\n  checks:\n    - name: watched\n      sql: \"SELECT 1\"\n      \
                max: 1\n      min_samples: 2\n      consecutive: 1\n      timeout: 400ms\n      \
                on_inconclusive: ignore\nrollback:\n  strategy: down\n  confirm: 1s\n";
    let (plan, set) = plan_dir(work.path(), "main", ONE_TABLE, tail);
    let daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    let is_soak_sample =
        |e: &serde_json::Value| e["event"] == "check_sample" && e["step"] == "soak";
    env.wait_for_events(&run, "a soak sample", |events| {
        events.iter().any(is_soak_sample)
    })
    .await;

    proxy.go_silent();
    let silent = env
        .wait_for_events(&run, "an inconclusive soak sample", |events| {
            events
                .iter()
                .any(|e| is_soak_sample(e) && e["valid"] == false)
        })
        .await;
    let first_gap = silent
        .iter()
        .position(|e| is_soak_sample(e) && e["valid"] == false)
        .unwrap();

    proxy.come_back();
    // A valid sample after the inconclusive one: the samplers reconnected.
    env.wait_for_events(&run, "a valid soak sample after the silence", |events| {
        events[first_gap..]
            .iter()
            .any(|e| is_soak_sample(e) && e["valid"] == true)
    })
    .await;
    let row = env.wait_finished(&run, common::PATIENCE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    assert!(env.target("main").table_exists("t").await);
}

/// The path to the target goes silent mid-soak and the missing samples end the
/// soak (a breach): the run's lock session is open but mute, so the rollback
/// must not trust it. It takes the lock again on a new connection (ending the
/// mute session on the server first) once the path is back, and undoes the
/// migration.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_path_gone_silent_mid_soak_rolls_back_on_a_fresh_lock_session() {
    let upstream = common::cluster().port();
    let proxy = Proxy::start(upstream).await;
    let mut env = Env::new(&["main"], "lease_timeout: 10s\npoll_interval: 300ms").await;
    let routed = proxy.route(&env.target("main").url, upstream);
    env.set_target_url("main", &routed);
    let work = common::scratch_dir();
    let tail = "backup:\n  enabled: false\nsoak:\n  duration: 20s\n  interval: 500ms\n  \
                baseline_samples: 1\n  checks:\n    - name: watched\n      sql: \"SELECT 1\"\n      \
                max: 1\n      min_samples: 1\n      consecutive: 1\n      timeout: 400ms\n      \
                max_inconclusive: 0\nrollback:\n  strategy: down\n  confirm: 1s\n";
    let (plan, set) = plan_dir(work.path(), "main", ONE_TABLE, tail);
    let daemon = env.start("d1").await;
    let run = Api::new(&daemon).submit(SUBMITTER, &plan, &set).await;
    env.wait_for_event(&run, "check_sample", MINUTE).await;

    proxy.go_silent();
    env.wait_for_event(&run, "soak_finished", MINUTE).await;
    proxy.come_back();

    let row = env.wait_finished(&run, common::PATIENCE).await;
    assert_eq!(row["outcome"], "rolled_back", "{row}");
    assert!(
        row["reason"].as_str().unwrap().contains("inconclusive"),
        "{row}"
    );
    assert!(!env.target("main").table_exists("t").await);
    drop(daemon);
}

/// Reading `pgshepherd.history` on a connection whose path went silent ends with
/// a "did not answer" error after the lock's answer deadline, instead of waiting
/// for keepalives (issue 10: history reads on target connections).
#[tokio::test(flavor = "multi_thread")]
async fn a_history_read_on_a_silent_target_path_ends_with_no_answer() {
    let db = common::fresh_db().await;
    let upstream = common::cluster().port();
    let proxy = Proxy::start(upstream).await;
    let dsn: pgshepherd::pg::Dsn = proxy.route(&db.url, upstream).parse().unwrap();
    let client = dsn.connect("pgshepherd-test", &[]).await.unwrap();
    let read = pgshepherd::migrations::history::read(&client, "set").await;
    assert!(read.unwrap().is_empty(), "nothing applied yet");

    proxy.go_silent();
    let err = pgshepherd::migrations::history::read(&client, "set")
        .await
        .expect_err("a silent path cannot answer");
    let text = err.to_string();
    assert!(
        text.contains("did not answer") && text.contains("pgshepherd.history"),
        "{text}"
    );
}
