//! The daemon keeps working when the state database or a target goes away
//! underneath it: every session is terminated and new connections are refused,
//! as during a restart, until the daemon has demonstrably run into the outage.

mod common;

use std::future::Future;
use std::time::Duration;

use common::TestDb;
use common::daemon::{Api, Env, ONE_TABLE, SUBMITTER, plan_dir, soak_yaml};

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
