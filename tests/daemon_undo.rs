//! Undo through the daemon (issue 11 §2, §4): `POST /v1/runs/{id}/undo` and
//! `pgshepherd undo RUN` give back what a finished run's captured migration
//! changed, as a change to the target: approved per the run's plan (four eyes),
//! run under the target's lock, announced on the run's channels, recorded in
//! the run's events and view; and a daemon killed with SIGKILL in the middle of
//! an undo leaves the target untouched, the undo running again to completion
//! after the restart.
//!
//! Real PostgreSQL, real daemon processes, real HTTP on loopback, a real
//! webhook receiver. Tests wait for events and for pg_stat_activity, never for
//! time.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::{ADMIN, APPROVER, Api, Env, READER, SUBMITTER, plan_dir};
use common::receiver::{Receiver, Request};
use serde_json::{Value, json};

const MINUTE: Duration = Duration::from_secs(60);
const SETTINGS: &str = "lease_timeout: 3s\npoll_interval: 200ms";
const DELIVERY: &str =
    "notifications: {min_backoff: 200ms, max_backoff: 2s, max_age: 24h, poll_interval: 200ms}\n";

const SCHEMA: &str = "
CREATE TABLE companies (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE users (id int PRIMARY KEY, company_id int NOT NULL REFERENCES companies,
                    email text NOT NULL UNIQUE, name text);
INSERT INTO companies VALUES (1, 'A'), (2, 'B'), (3, 'C');
INSERT INTO users VALUES (1, 1, 'u1@a', 'one'), (2, 1, 'u2@a', 'two'), (3, 2, 'u3@b', 'three'),
                         (4, 2, 'u4@b', 'four'), (5, 2, 'u5@b', 'five'), (6, 3, 'u6@c', 'six');
";

/// Merge company B (2) into A (1), capturing what it changes.
const MERGE: &str = "-- pgshepherd:capture public.companies, public.users

UPDATE users SET company_id = 1 WHERE company_id = 2;
DELETE FROM companies WHERE id = 2;
";

/// Every row of both tables, in key order.
const SNAPSHOT: &str = "SELECT (SELECT string_agg(c::text, ';' ORDER BY id) FROM companies c) || ' | ' || \
     (SELECT string_agg(u::text, ';' ORDER BY id) FROM users u)";

/// The undo's session on the target, waiting on a row lock: it is inside its
/// transaction, part of the way through.
const UNDO_BLOCKED: &str = "SELECT count(*) = 1 FROM pg_stat_activity \
     WHERE application_name LIKE 'pgshepherd undo %' AND wait_event_type = 'Lock'";

/// The merge plan on `target`: a short soak, notifying `hooks` when given,
/// needing approval when `approval`.
fn merge_plan(dir: &Path, target: &str, approval: bool, notify: bool) -> (PathBuf, PathBuf) {
    let mut tail = String::from(
        "backup:\n  enabled: false\nrollback:\n  strategy: hold\n\
         statement_timeout: 30m\nlock:\n  acquire_timeout: 10m\n  lock_timeout: 10m\n\
         soak:\n  duration: 500ms\n  interval: 250ms\n  baseline_samples: 1\n  checks:\n    \
         - name: one\n      sql: SELECT 1\n      max: 1\n      min_samples: 1\n      consecutive: 1\n",
    );
    if approval {
        tail.push_str("approval:\n  required: true\n");
    }
    if notify {
        tail.push_str("notify:\n  channels: [hooks]\n");
    }
    plan_dir(dir, target, &[("V1__merge_b_into_a.sql", MERGE)], &tail)
}

async fn snapshot(client: &tokio_postgres::Client) -> String {
    client.query_one(SNAPSHOT, &[]).await.unwrap().get(0)
}

/// Events of the run with `request` = `undo` named `name`.
fn undo_events<'a>(events: &'a [Value], undo: i64, name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == name && e["request"] == undo)
        .collect()
}

fn kinds(requests: &[Request]) -> Vec<String> {
    requests.iter().map(|r| r.kind()).collect()
}

/// 1. Undo through the API with approval and notifications: the submitter of
/// the undo cannot approve it, an approver does, the undo runs (`pgshepherd undo
/// RUN` against the daemon follows it to its end), the merge is given back
/// while what users wrote since stays, and the run's channel hears that the
/// undo needs approval, was approved, started and finished with its counts.
#[tokio::test(flavor = "multi_thread")]
async fn an_undo_through_the_daemon_is_approved_run_under_the_lock_and_announced() {
    let hooks = Receiver::start().await;
    let mut env = Env::new(&["main"], SETTINGS).await;
    env.set_extra_config(&format!(
        "channels:\n  hooks: {{kind: generic, url: \"{}\"}}\n{DELIVERY}",
        hooks.url("/hook")
    ));
    let target = env.target("main").client().await;
    target.batch_execute(SCHEMA).await.unwrap();
    let before = snapshot(&target).await;
    let work = common::scratch_dir();
    let (plan, set) = merge_plan(work.path(), "main", true, true);
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let run = api.submit(SUBMITTER, &plan, &set).await;
    let undo_path = format!("/v1/runs/{run}/undo");

    // Not finished (waiting for approval): nothing to undo yet.
    let (status, body) = api.post(SUBMITTER, &undo_path, json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("only a finished run can be undone"),
        "{body}"
    );
    let (status, _) = api
        .post(APPROVER, &format!("/v1/runs/{run}/approve"), json!({}))
        .await;
    assert_eq!(status, 200);
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    let merged = snapshot(&target).await;
    assert_ne!(merged, before);

    // Users work on: rename a moved user (a column the merge did not change),
    // add a user to the merged company.
    target
        .batch_execute(
            "UPDATE users SET name = 'three (renamed)' WHERE id = 3;
             INSERT INTO users VALUES (7, 1, 'u7@a', 'seven');",
        )
        .await
        .unwrap();

    // Refused without changing anything: a read-only token, a bad body, a
    // version the run did not capture.
    let (status, body) = api.post(READER, &undo_path, json!({})).await;
    assert_eq!(status, 403, "{body}");
    for bad in [
        json!({"mode": "force"}),
        json!({"versions": "1"}),
        json!({"where": " "}),
        json!({"whereas": "x"}),
    ] {
        let (status, body) = api.post(SUBMITTER, &undo_path, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (status, body) = api
        .post(SUBMITTER, &undo_path, json!({"versions": [9]}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("V9"), "{body}");

    // The client command asks the daemon (no database given) and follows the
    // undo to its end; meanwhile the undo waits for approval. Erin asks: her
    // admin token holds the approve role, and still may not approve her own.
    let client = tokio::process::Command::new(common::pgshepherd_bin())
        .args([
            "undo",
            &run,
            "--mode",
            "merge",
            "--json",
            "--server",
            &daemon.url,
        ])
        .env("PGSHEPHERD_TOKEN", ADMIN)
        .env_remove("PGSHEPHERD_DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let requested = env.wait_for_event(&run, "undo_requested", MINUTE).await;
    assert_eq!(requested["requires_approval"], true, "{requested}");
    assert_eq!(requested["requested_by"], "erin", "{requested}");
    let undo = requested["request"].as_i64().unwrap();

    // One open undo per run; the one who asked cannot approve it.
    let (status, body) = api.post(SUBMITTER, &undo_path, json!({})).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = api
        .post(ADMIN, &format!("/v1/runs/{run}/approve"), json!({}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("four eyes"),
        "{body}"
    );
    // Nothing has happened to the target.
    assert_eq!(
        env.event_names(&run)
            .await
            .iter()
            .filter(|n| *n == "undo_started")
            .count(),
        0
    );

    let (status, view) = api
        .post(APPROVER, &format!("/v1/runs/{run}/approve"), json!({}))
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["undos"][0]["approved_by"], "bob", "{view}");

    let out = common::within(
        "pgshepherd undo through the daemon",
        client.wait_with_output(),
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "undo_finished", "{last}");
    assert_eq!(last["outcome"], "reverted", "{last}");
    assert_eq!(last["request"], undo, "{last}");
    assert!(stderr.contains("waits for approval"), "{stderr}");

    // The merge is given back; users' writes stay.
    let expected =
        before.replace("(3,2,u3@b,three)", "(3,2,u3@b,\"three (renamed)\")") + ";(7,1,u7@a,seven)";
    assert_eq!(
        snapshot(&target).await,
        expected,
        "company B and its users are back exactly, with the rename and the new user kept"
    );
    // Recorded on the target, by whom and approved by whom.
    let who: String = target
        .query_one(
            "SELECT undone_by FROM pgshepherd.undos ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(who.contains("erin") && who.contains("bob"), "{who}");

    // The run's events and view tell the story.
    let events = env.events(&run).await;
    for name in [
        "undo_requested",
        "undo_approved",
        "undo_started",
        "undo_finished",
    ] {
        assert_eq!(undo_events(&events, undo, name).len(), 1, "{name}");
    }
    let finished = undo_events(&events, undo, "undo_finished")[0];
    assert_eq!(
        finished["tables"]["public.users"]["reverted"], 3,
        "{finished}"
    );
    assert_eq!(
        finished["tables"]["public.companies"]["reverted"], 1,
        "{finished}"
    );
    let (_, view) = api.get(READER, &format!("/v1/runs/{run}")).await;
    let u = &view["undos"][0];
    assert_eq!(u["phase"], "finished", "{u}");
    assert_eq!(u["outcome"], "reverted", "{u}");
    assert_eq!(u["exit_code"], 0, "{u}");
    assert_eq!(u["mode"], "merge", "{u}");
    assert_eq!(u["attempts"], 1, "{u}");
    assert_eq!(u["report"]["total"]["reverted"], 4, "{u}");
    // `pgshepherd logs RUN` shows the undo.
    let logs = common::output_within(
        "pgshepherd logs",
        std::process::Command::new(common::pgshepherd_bin())
            .args(["logs", &run, "--server", &daemon.url])
            .env("PGSHEPHERD_TOKEN", READER),
    );
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains(&format!("undo #{undo} reverted")), "{logs}");

    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", daemon.url))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("pgshepherd_undos_finished_total{target=\"main\",outcome=\"reverted\"} 1"),
        "{metrics}"
    );

    // Announced on the run's channel: needs approval, approved, started,
    // finished with the counts.
    let delivered = hooks
        .wait_until("the undo's notices", MINUTE, |rs| {
            rs.iter()
                .any(|r| r.delivered() && r.kind() == "run.undo_finished")
        })
        .await;
    let kinds = kinds(&delivered);
    let at = |k: &str| {
        kinds
            .iter()
            .rposition(|x| x == k)
            .unwrap_or_else(|| panic!("no {k} in {kinds:?}"))
    };
    assert!(at("run.approval_needed") < at("run.approved"), "{kinds:?}");
    assert!(at("run.approved") < at("run.undo_started"), "{kinds:?}");
    assert!(
        at("run.undo_started") < at("run.undo_finished"),
        "{kinds:?}"
    );
    let end = delivered
        .iter()
        .find(|r| r.kind() == "run.undo_finished")
        .unwrap()
        .json();
    let text = end.to_string();
    assert!(text.contains("reverted"), "{text}");
    assert_eq!(end["data"]["run_id"], run.as_str(), "{end}");
}

/// 2. Kill -9 of the daemon in the middle of an undo: the undo is inside its
/// transaction (it re-inserted the merged company and waits on a user row a
/// session of the test holds) when the daemon is killed. The target is
/// untouched; the daemon restarted under its name takes the undo back at once
/// (attempt 2), ends the dead daemon's target session, and runs it to
/// completion once the row is free.
#[tokio::test(flavor = "multi_thread")]
async fn killed_in_the_middle_of_an_undo_the_target_is_untouched_and_the_undo_runs_again() {
    // A long lease: the restarted daemon must take the undo back at once, under
    // its name's lock, not after the dead process's lease has run out.
    let env = Env::new(&["main"], "lease_timeout: 60s\npoll_interval: 200ms").await;
    let target = env.target("main").client().await;
    target.batch_execute(SCHEMA).await.unwrap();
    let before = snapshot(&target).await;
    let work = common::scratch_dir();
    let (plan, set) = merge_plan(work.path(), "main", false, false);
    let mut daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let run = api.submit(SUBMITTER, &plan, &set).await;
    let row = env.wait_finished(&run, MINUTE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    let merged = snapshot(&target).await;

    // A user's transaction holds one of the moved rows.
    let user = env.target("main").client().await;
    user.batch_execute("BEGIN; SELECT * FROM users WHERE id = 4 FOR UPDATE")
        .await
        .unwrap();

    let (status, undo) = api
        .post(SUBMITTER, &format!("/v1/runs/{run}/undo"), json!({}))
        .await;
    assert_eq!(status, 202, "{undo}");
    // No approval needed: queued, or already taken by the undo worker.
    assert!(
        ["queued", "active"].contains(&undo["phase"].as_str().unwrap()),
        "{undo}"
    );
    assert_eq!(undo["requires_approval"], false, "{undo}");
    let id = undo["id"].as_i64().unwrap();
    env.wait_for_event(&run, "undo_started", MINUTE).await;
    let dsn = &env.target("main").dsn;
    common::wait_for_sql(dsn, "the undo waiting on the user's row", UNDO_BLOCKED).await;
    let first_pid: i32 = target
        .query_one(
            // The session found waiting above (another short-lived one of the
            // daemon's may carry the same name for a moment).
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pgshepherd undo %' \
               AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let state = env.state.client().await;
    let lease_until: chrono::DateTime<chrono::Utc> = state
        .query_one("SELECT lease_until FROM undos WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    daemon.kill9();

    // Untouched: the half-done undo is invisible and never commits.
    assert_eq!(snapshot(&target).await, merged);
    let recorded: i64 = target
        .query_one("SELECT count(*) FROM pgshepherd.undos", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 0);

    // The restarted daemon claims it again once the lease has run out.
    let daemon = env.start("d1").await;
    let events = env
        .wait_for_events(&run, "the second attempt", |events| {
            undo_events(events, id, "undo_started")
                .iter()
                .any(|e| e["attempt"] == 2)
        })
        .await;
    assert!(undo_events(&events, id, "undo_finished").is_empty());
    let again = undo_events(&events, id, "undo_started")
        .into_iter()
        .find(|e| e["attempt"] == 2)
        .unwrap();
    let again_at = chrono::DateTime::parse_from_rfc3339(again["ts"].as_str().unwrap()).unwrap();
    assert!(
        again_at < lease_until,
        "taken back only after the dead process's lease ran out ({lease_until}): {again}"
    );
    // The dead daemon's session was ended; the new one waits on the same row.
    common::wait_for_sql(
        dsn,
        "the second attempt waiting on the user's row, the first one gone",
        &format!(
            "SELECT count(*) = 1 AND bool_and(pid <> {first_pid}) FROM pg_stat_activity \
             WHERE application_name LIKE 'pgshepherd undo %' AND wait_event_type = 'Lock'"
        ),
    )
    .await;
    assert_eq!(snapshot(&target).await, merged, "still untouched");

    // The user's transaction ends; the undo completes.
    user.batch_execute("COMMIT").await.unwrap();
    let events = env
        .wait_for_events(&run, "the undo's end", |events| {
            !undo_events(events, id, "undo_finished").is_empty()
        })
        .await;
    let finished = undo_events(&events, id, "undo_finished")[0];
    assert_eq!(finished["outcome"], "reverted", "{finished}");
    assert_eq!(finished["attempt"], 2, "{finished}");
    assert_eq!(snapshot(&target).await, before, "fully undone");

    let api = Api::new(&daemon);
    let (_, view) = api.get(READER, &format!("/v1/runs/{run}")).await;
    let u = &view["undos"][0];
    assert_eq!(u["outcome"], "reverted", "{u}");
    assert_eq!(u["attempts"], 2, "{u}");
    assert_eq!(u["report"]["total"]["reverted"], 4, "{u}");
    assert!(u["owner"].is_null(), "{u}");
}

/// 3. An undo queues with the target's runs as a run would: asked for while
/// another run is soaking on the target, it starts only once that run has
/// finished; a run submitted after it starts only once the undo has finished.
#[tokio::test(flavor = "multi_thread")]
async fn an_undo_waits_for_the_active_run_and_the_next_run_waits_for_it() {
    let env = Env::new(&["main"], SETTINGS).await;
    let target = env.target("main").client().await;
    target.batch_execute(SCHEMA).await.unwrap();
    let before = snapshot(&target).await;
    let work = common::scratch_dir();
    let (plan, set) = merge_plan(work.path(), "main", false, false);
    let daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let merge = api.submit(SUBMITTER, &plan, &set).await;
    assert_eq!(
        env.wait_finished(&merge, MINUTE).await["outcome"],
        "succeeded"
    );

    // Another change soaks on the target for an hour.
    let soaking_plan = common::one_table_plan(
        &work.path().join("soaking"),
        "main",
        "1h",
        "backup:\n  enabled: false\nrollback:\n  confirm: 0s\n",
    );
    let soaking_set = work.path().join("soaking/migrations");
    let soaking = api.submit(SUBMITTER, &soaking_plan, &soaking_set).await;
    env.wait_for_event(&soaking, "soak_started", MINUTE).await;

    let (status, undo) = api
        .post(SUBMITTER, &format!("/v1/runs/{merge}/undo"), json!({}))
        .await;
    assert_eq!(status, 202, "{undo}");
    assert_eq!(undo["phase"], "queued", "{undo}");
    let id = undo["id"].as_i64().unwrap();
    let next_plan = common::one_table_plan(
        &work.path().join("next"),
        "main",
        "500ms",
        "backup:\n  enabled: false\n",
    );
    let next = api
        .submit(SUBMITTER, &next_plan, &work.path().join("next/migrations"))
        .await;

    // The soaking run ends (aborted: rolled back); then the undo, then the next run.
    let (status, _) = api
        .post(APPROVER, &format!("/v1/runs/{soaking}/abort"), json!({}))
        .await;
    assert_eq!(status, 202);
    let next_row = env.wait_finished(&next, MINUTE).await;
    assert_eq!(next_row["outcome"], "succeeded", "{next_row}");
    let soaking_row = env.run_row(&soaking).await;
    assert_eq!(soaking_row["outcome"], "rolled_back", "{soaking_row}");
    let (_, view) = api.get(READER, &format!("/v1/runs/{merge}")).await;
    let u = &view["undos"][0];
    assert_eq!(u["id"], id);
    assert_eq!(u["outcome"], "reverted", "{u}");
    let at = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("{v}"))).unwrap()
    };
    assert!(
        at(&soaking_row["finished_at"]) <= at(&u["started_at"]),
        "the undo started before the soaking run finished: {soaking_row} {u}"
    );
    assert!(
        at(&u["finished_at"]) <= at(&next_row["started_at"]),
        "the next run started before the undo finished: {u} {next_row}"
    );
    // The undo gave the merge back; the next run's table is there.
    let now = snapshot(&target).await;
    assert_eq!(now, before);
}

/// 4. SIGTERM while an undo waits for the target's lock (held by another
/// session): the daemon exits at once, the undo gives its lease back untouched,
/// and the next daemon runs it once the lock is free.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_an_undo_waits_for_the_lock_gives_it_back_for_the_next_daemon() {
    let env = Env::new(&["main"], "lease_timeout: 60s\npoll_interval: 200ms").await;
    let target = env.target("main").client().await;
    target.batch_execute(SCHEMA).await.unwrap();
    let before = snapshot(&target).await;
    let work = common::scratch_dir();
    let (plan, set) = merge_plan(work.path(), "main", false, false);
    let mut daemon = env.start("d1").await;
    let api = Api::new(&daemon);
    let run = api.submit(SUBMITTER, &plan, &set).await;
    assert_eq!(
        env.wait_finished(&run, MINUTE).await["outcome"],
        "succeeded"
    );
    let merged = snapshot(&target).await;

    // Someone else holds pgshepherd's lock on the target.
    let holder = env.target("main").client().await;
    holder
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&pgshepherd::pg::lock::LOCK_KEY],
        )
        .await
        .unwrap();
    let (status, undo) = api
        .post(SUBMITTER, &format!("/v1/runs/{run}/undo"), json!({}))
        .await;
    assert_eq!(status, 202, "{undo}");
    let id = undo["id"].as_i64().unwrap();
    let busy = env.wait_for_event(&run, "lock_busy", MINUTE).await;
    assert_eq!(busy["step"], "undo", "{busy}");

    assert_eq!(daemon.sigterm(MINUTE), Some(0));
    let state = env.state.client().await;
    let row = state
        .query_one(
            "SELECT phase, owner, attempts FROM undos WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (phase, owner, attempts): (String, Option<String>, i32) =
        (row.get(0), row.get(1), row.get(2));
    assert_eq!((phase.as_str(), owner, attempts), ("active", None, 1));
    assert_eq!(snapshot(&target).await, merged, "untouched");

    let _daemon = env.start("d2").await;
    let events = env
        .wait_for_events(&run, "the undo started again", |events| {
            undo_events(events, id, "undo_started").len() == 2
        })
        .await;
    assert!(undo_events(&events, id, "undo_finished").is_empty());
    holder
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&pgshepherd::pg::lock::LOCK_KEY],
        )
        .await
        .unwrap();
    let events = env
        .wait_for_events(&run, "the undo's end", |events| {
            !undo_events(events, id, "undo_finished").is_empty()
        })
        .await;
    let finished = undo_events(&events, id, "undo_finished")[0];
    assert_eq!(finished["outcome"], "reverted", "{finished}");
    assert_eq!(finished["attempt"], 2, "{finished}");
    assert_eq!(snapshot(&target).await, before);
}
