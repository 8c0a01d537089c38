//! State database retention: with a tiny retention, the events, samples,
//! notifications and audit rows of a finished run go, and those of an active
//! run stay, however old.

mod common;

use std::time::Duration;

use common::daemon::{Api, Env, SUBMITTER, soak_plan};

const MINUTE: Duration = Duration::from_secs(60);
const SETTINGS: &str = "lease_timeout: 3s\npoll_interval: 300ms\nshutdown_timeout: 10s";
const RETENTION: &str = "retention:\n  samples: 1s\n  events: 2s\n  notifications: 1s\n  audit: 1s\n  interval: 200ms\n  batch: 3\n";

/// A notification row of `run` as a delivery worker leaves it.
async fn notification(env: &Env, run: &str, msg_id: &str, status: &str) {
    env.state
        .client()
        .await
        .execute(
            "INSERT INTO notifications (msg_id, run_id, channel, kind, severity, title, body, status)
             VALUES ($1, $2, 'ops', 'run_started', 'info', 't', '{}', $3)",
            &[&msg_id, &run, &status],
        )
        .await
        .unwrap();
}

async fn count(env: &Env, sql: &str, run: &str) -> i64 {
    env.state
        .client()
        .await
        .query_one(sql, &[&run])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn old_rows_of_finished_runs_go_and_active_runs_rows_stay() {
    let mut env = Env::new(&["long", "short"], SETTINGS).await;
    env.set_extra_config(RETENTION);
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let work = common::scratch_dir();

    // A run that stays active throughout: a ten-minute soak.
    let (plan, set) = soak_plan(&work.path().join("long"), "long", "10m", "SELECT 0", 1, "");
    let active = api.submit(SUBMITTER, &plan, &set).await;
    notification(&env, &active, "a-delivered", "delivered").await;
    env.wait_for_event(&active, "check_sample", MINUTE).await;

    // A short run that finishes; one of its notifications is still pending.
    let (plan, set) = soak_plan(&work.path().join("short"), "short", "1s", "SELECT 0", 1, "");
    let done = api.submit(SUBMITTER, &plan, &set).await;
    notification(&env, &done, "d-delivered", "delivered").await;
    notification(&env, &done, "d-failed", "failed").await;
    notification(&env, &done, "d-pending", "pending").await;
    let row = env.wait_finished(&done, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    assert!(count(&env, "SELECT count(*) FROM events WHERE run_id = $1", &done).await > 3);

    // The finished run's events (samples first), sent notifications and audit
    // rows go once older than their retention...
    common::eventually("the finished run's rows pruned", || async {
        let left = count(&env, "SELECT count(*) FROM events WHERE run_id = $1", &done).await
            + count(
                &env,
                "SELECT count(*) FROM notifications WHERE run_id = $1 AND status <> 'pending'",
                &done,
            )
            .await
            + count(&env, "SELECT count(*) FROM audit WHERE run_id = $1", &done).await;
        (left == 0).then_some(())
    })
    .await;
    let flags = env.run_row(&done).await;
    assert_eq!(
        (
            &flags["samples_pruned"],
            &flags["events_pruned"],
            &flags["notifications_pruned"]
        ),
        (&true.into(), &true.into(), &false.into()),
        "a pending notification keeps the run on the list: {flags}"
    );
    // ...but a pending notification is never deleted, and the run row stays.
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM notifications WHERE run_id = $1",
            &done
        )
        .await,
        1
    );
    assert_eq!(flags["outcome"], "succeeded");

    // The active run's rows, older than every retention by now, all stay.
    let row = env.run_row(&active).await;
    assert_eq!(row["phase"], "active", "{row}");
    let events = env.event_names(&active).await;
    assert_eq!(
        events.first().map(String::as_str),
        Some("run_submitted"),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e == "check_sample"), "{events:?}");
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM notifications WHERE run_id = $1",
            &active
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM audit WHERE run_id = $1",
            &active
        )
        .await,
        1
    );
}
