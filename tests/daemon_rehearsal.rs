//! `rehearsal: required` under the daemon: a submitted run is rehearsed on a
//! scratch copy of its target (up, down, up, catalog compared) before anyone
//! may approve it. A good change is rehearsed, approved and runs; a change
//! whose down script forgets an index is refused approval, with the difference
//! in the run's view, in `pgshepherd status` and in the approval message the
//! run's channel receives; the target is never touched by a rehearsal.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::{APPROVER, Api, Env, READER, SUBMITTER, plan_dir, soak_yaml};
use common::receiver::Receiver;
use serde_json::{Value, json};

const MINUTE: Duration = Duration::from_secs(60);
const SETTINGS: &str = "lease_timeout: 3s\npoll_interval: 200ms";
const DELIVERY: &str =
    "notifications: {min_backoff: 200ms, max_backoff: 2s, max_age: 24h, poll_interval: 200ms}\n";

/// The target's own data: the copy has something to dump, and a table a
/// test can lock to hold the rehearsal's `pg_dump`.
const SEED: &str = "CREATE TABLE seed (id int PRIMARY KEY);
INSERT INTO seed SELECT generate_series(1, 100);";

/// V1 creates `t`, V2 indexes `seed`; V2's down script drops the index unless
/// `forget_index`.
fn plan(dir: &Path, forget_index: bool) -> (PathBuf, PathBuf) {
    let down = if forget_index {
        "SELECT 1;\n"
    } else {
        "DROP INDEX idx_seed_id;\n"
    };
    let migrations: &[(&str, &str)] = &[
        ("V1__t.sql", "CREATE TABLE t (id int);\n"),
        ("V1__t.down.sql", "DROP TABLE t;\n"),
        (
            "V2__seed_index.sql",
            "CREATE INDEX idx_seed_id ON seed (id);\n",
        ),
        ("V2__seed_index.down.sql", down),
    ];
    let tail = format!(
        "rehearsal: required\napproval:\n  required: true\nbackup:\n  enabled: false\n{}\
         rollback:\n  strategy: down\n  confirm: 500ms\nnotify:\n  channels: [hooks]\n",
        soak_yaml("500ms", "250ms", "SELECT 1", 1)
    );
    plan_dir(dir, "main", migrations, &tail)
}

async fn env_with_hooks(hooks: &Receiver) -> Env {
    let mut env = Env::new(&["main"], SETTINGS).await;
    env.set_extra_config(&format!(
        "channels:\n  hooks: {{kind: generic, url: \"{}\"}}\n{DELIVERY}",
        hooks.url("/hook")
    ));
    env.target("main").execute(SEED).await;
    env
}

/// What a rehearsal must never leave on the target: pgshepherd's history, the
/// migrations' objects.
async fn assert_untouched(env: &Env) {
    let target = env.target("main");
    assert!(!target.table_exists("t").await);
    assert!(!target.index_exists("idx_seed_id").await);
    assert_eq!(
        target
            .query_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgshepherd'")
            .await,
        0
    );
    assert_eq!(target.query_i64("SELECT count(*) FROM seed").await, 100);
}

async fn approve(api: &Api, run: &str) -> (u16, Value) {
    api.post(APPROVER, &format!("/v1/runs/{run}/approve"), json!({}))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_change_is_rehearsed_then_approved_and_runs() {
    let hooks = Receiver::start().await;
    let env = env_with_hooks(&hooks).await;
    let work = common::scratch_dir();
    let (plan, set) = plan(work.path(), false);

    // Hold the rehearsal's pg_dump behind a lock on the target's table, so
    // that the run is seen while it is being rehearsed.
    let holder = env.target("main").client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE seed IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let run = api.submit(SUBMITTER, &plan, &set).await;
    env.wait_for_event(&run, "rehearsal_started", MINUTE).await;
    env.target("main")
        .wait_for(
            "the rehearsal's pg_dump waiting for the lock",
            "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() \
               AND application_name LIKE 'pgshepherd%' AND wait_event_type = 'Lock')",
        )
        .await;
    let (_, view) = api.get(READER, &format!("/v1/runs/{run}")).await;
    assert_eq!(view["phase"], "rehearsing", "{view}");
    assert_eq!(view["state"], "rehearsing", "{view}");
    assert_eq!(view["rehearsal"]["status"], "running", "{view}");
    assert_eq!(view["rehearsal"]["owner"], "d1", "{view}");
    let (status, body) = approve(&api, &run).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("is being rehearsed on a scratch copy"),
        "{body}"
    );
    holder.batch_execute("COMMIT").await.unwrap();

    let finished = env.wait_for_event(&run, "rehearsal_finished", MINUTE).await;
    assert_eq!(finished["passed"], true, "{finished}");
    assert_untouched(&env).await;
    let (_, view) = api.get(READER, &format!("/v1/runs/{run}")).await;
    assert_eq!(view["phase"], "pending_approval", "{view}");
    assert_eq!(view["state"], "created", "{view}");
    assert_eq!(view["rehearsal"]["status"], "passed", "{view}");
    assert_eq!(
        view["rehearsal"]["summary"],
        "rehearsal passed on a scratch copy: up, down, up, catalog identical"
    );
    // The approval request says so.
    hooks
        .wait_delivered("the approval request", MINUTE, |r| {
            r.kind() == "run.approval_needed"
                && r.body_contains(
                    "rehearsal passed on a scratch copy: up, down, up, catalog identical",
                )
        })
        .await;
    // No scratch database is left on the server.
    assert_eq!(
        env.target("main")
            .query_i64(&format!(
                "SELECT count(*) FROM pg_database WHERE datname LIKE '%rehearsal_{run}'"
            ))
            .await,
        0
    );

    let (status, body) = approve(&api, &run).await;
    assert_eq!(status, 200, "{body}");
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    assert!(env.target("main").index_exists("idx_seed_id").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_script_that_forgets_an_index_is_refused_approval_with_the_difference() {
    let hooks = Receiver::start().await;
    let env = env_with_hooks(&hooks).await;
    let work = common::scratch_dir();
    let (plan, set) = plan(work.path(), true);
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let run = api.submit(SUBMITTER, &plan, &set).await;

    let finished = env.wait_for_event(&run, "rehearsal_finished", MINUTE).await;
    assert_eq!(finished["passed"], false, "{finished}");
    let forgot = "index `idx_seed_id` still exists after V2__seed_index's down script";

    // The view.
    let (_, view) = api.get(READER, &format!("/v1/runs/{run}")).await;
    assert_eq!(view["phase"], "rehearsing", "{view}");
    assert_eq!(view["state"], "rehearsal_failed", "{view}");
    let rehearsal = &view["rehearsal"];
    assert_eq!(rehearsal["status"], "failed", "{view}");
    assert_eq!(rehearsal["differences"][0]["message"], forgot, "{view}");
    assert_eq!(rehearsal["differences"][0]["kind"], "index", "{view}");
    assert_eq!(rehearsal["differences"][0]["change"], "left", "{view}");

    // Approval is refused, with the difference.
    let (status, body) = approve(&api, &run).await;
    assert_eq!(status, 409, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(forgot) && error.contains("Abort it"),
        "{error}"
    );

    // The approval message names it.
    let message = hooks
        .wait_delivered("the refused approval request", MINUTE, |r| {
            r.kind() == "run.approval_needed"
        })
        .await;
    assert!(
        message.body_contains("approval refused"),
        "{}",
        message.json()
    );
    assert!(message.body_contains("idx_seed_id"), "{}", message.json());

    // `pgshepherd status` shows it.
    let out = common::output_within(
        "pgshepherd status",
        std::process::Command::new(common::pgshepherd_bin()).args([
            "status",
            &run,
            "--server",
            &daemon.url,
            "--token",
            READER,
        ]),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("rehearsal failed on a scratch copy") && text.contains(forgot),
        "{text}"
    );

    // The run's page shows the difference and offers no approval.
    let browser = common::browser::Browser::start().await;
    browser.sign_in(&daemon.url, APPROVER).await;
    browser.open_run(&daemon.url, &run).await;
    browser.find_text("#rehearsal-differences li", forgot).await;
    browser.find("#rehearsal-failed").await;
    browser
        .find_text("#timeline [data-step=rehearsal]", "1 difference")
        .await;
    assert!(browser.find_all("#approve").await.is_empty());
    browser.screenshot("rehearsal-failed").await;

    // The target was never touched; the run can only be aborted.
    assert_untouched(&env).await;
    let (status, body) = api
        .post(SUBMITTER, &format!("/v1/runs/{run}/abort"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "stopped", "{row}");
    assert_untouched(&env).await;
}

/// A daemon that dies during a rehearsal leaves it to be redone: the same
/// daemon restarted under its name takes it back at once and rehearses again
/// from the start (attempt 2), in a fresh scratch database.
#[tokio::test(flavor = "multi_thread")]
async fn a_rehearsal_cut_off_by_a_crash_is_redone_after_the_restart() {
    let hooks = Receiver::start().await;
    let env = env_with_hooks(&hooks).await;
    let work = common::scratch_dir();
    let (plan, set) = plan(work.path(), false);
    let holder = env.target("main").client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE seed IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let run = api.submit(SUBMITTER, &plan, &set).await;
    env.wait_for_event(&run, "rehearsal_started", MINUTE).await;
    let waiting = "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() \
                   AND application_name LIKE 'pgshepherd%' AND wait_event_type = 'Lock')";
    env.target("main")
        .wait_for("the first attempt's pg_dump waiting for the lock", waiting)
        .await;
    daemon.kill9();

    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    env.wait_for_events(&run, "a second rehearsal attempt", |events| {
        events
            .iter()
            .any(|e| e["event"] == "rehearsal_started" && e["attempt"] == 2)
    })
    .await;
    holder.batch_execute("COMMIT").await.unwrap();
    let finished = env.wait_for_event(&run, "rehearsal_finished", MINUTE).await;
    assert_eq!(finished["passed"], true, "{finished}");
    let (_, view) = api.get(READER, &format!("/v1/runs/{run}")).await;
    assert_eq!(view["phase"], "pending_approval", "{view}");
    assert_eq!(view["rehearsal"]["attempts"], 2, "{view}");
    // One result, recorded once.
    let names = env.event_names(&run).await;
    assert_eq!(
        names.iter().filter(|n| *n == "rehearsal_finished").count(),
        1,
        "{names:?}"
    );
    assert_untouched(&env).await;
}
