//! `pgshepherd demo` as a user runs it: the real binary, its own throwaway cluster.

mod common;

use serde_json::Value;

struct Demo {
    code: i32,
    events: Vec<Value>,
    stderr: String,
}

async fn demo(args: &[&str]) -> Demo {
    let out = tokio::process::Command::new(common::pgshepherd_bin())
        .arg("demo")
        .arg("--json")
        .args(args)
        .output()
        .await
        .expect("run pgshepherd demo");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{stderr}"))
        })
        .collect();
    Demo {
        code: out.status.code().unwrap_or(-1),
        events,
        stderr,
    }
}

impl Demo {
    fn named(&self, name: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == name).collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_adds_the_index_the_dashboard_uses_and_exits_0() {
    let d = demo(&[]).await;
    assert_eq!(d.code, 0, "{}", d.stderr);
    let last = d.events.last().unwrap();
    assert_eq!(last["event"], "run_finished");
    assert_eq!(last["outcome"], "succeeded");
    assert_eq!(
        d.named("migration_applied")[0]["file"],
        "V1__cancel_reason_index.sql"
    );
    assert_eq!(d.named("backup_verified").len(), 1);
    assert!(d.stderr.contains("no row lost"), "{}", d.stderr);
    // Without --breach the new release writes what the old one did.
    assert!(!d.stderr.contains("new release"), "{}", d.stderr);
    // The dashboard query's plan uses the new index.
    assert!(
        d.stderr
            .contains("Index Scan on idx_job_summaries_cancel_reason"),
        "{}",
        d.stderr
    );
    // The plan's EXPLAIN gate saw the dashboard query use the index, cheaper
    // and (analyze) with its execution times before and after.
    let gate = d.named("explain_checked");
    assert_eq!(gate.len(), 1, "{}", d.stderr);
    assert_eq!(gate[0]["name"], "cancellations_dashboard");
    assert_eq!(gate[0]["passed"], true, "{}", gate[0]);
    assert_eq!(gate[0]["index_used_after"], true);
    assert!(gate[0]["cost_after"].as_f64().unwrap() < gate[0]["cost_before"].as_f64().unwrap());
    assert!(gate[0]["time_before_ms"].is_f64() && gate[0]["time_after_ms"].is_f64());
    // The NULL-safe share counts the cancelled jobs without a reason: about a fifth.
    let share: Vec<f64> = d
        .named("check_sample")
        .iter()
        .filter(|e| e["check"] == "unknown_cancel_reason_share")
        .filter_map(|e| e["value"].as_f64())
        .collect();
    assert!(
        !share.is_empty() && share.iter().all(|v| (0.15..0.25).contains(v)),
        "{share:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_breach_rolls_back_for_real_and_exits_3() {
    let d = demo(&["--breach"]).await;
    assert_eq!(d.code, 3, "{}", d.stderr);
    let last = d.events.last().unwrap();
    assert_eq!(last["outcome"], "rolled_back");
    let verdict = &d.named("check_verdict")[0];
    assert_eq!(verdict["check"], "rollbacks", "{verdict}");
    assert_eq!(verdict["decision"], "roll_back");
    assert!(
        verdict["verdict"]["value"].as_f64().unwrap()
            > verdict["verdict"]["limit"].as_f64().unwrap()
    );
    assert_eq!(d.named("rollback_finished")[0]["at_starting_version"], true);
    // The index is used: the gate passes, and it is the soak that breaches.
    assert_eq!(d.named("explain_checked")[0]["passed"], true);
    assert!(
        d.stderr
            .contains("idx_job_summaries_cancel_reason does not exist"),
        "{}",
        d.stderr
    );
    assert!(d.stderr.contains("no row lost"), "{}", d.stderr);
    // The demo says when the new release starts writing, before the breach.
    let released = d
        .stderr
        .find("[demo] the job runner's new release starts writing now")
        .unwrap_or_else(|| panic!("{}", d.stderr));
    let breached = d.stderr.find("VERDICT (roll_back)").unwrap_or(0);
    assert!(released < breached, "{}", d.stderr);
    // The failed inserts were the real cause: the btree entry limit.
    assert!(d.stderr.contains("index row"), "{}", d.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_on_an_existing_database_leaves_the_result_in_place() {
    let db = common::fresh_db().await;
    let dir = common::scratch_dir();
    let out = tokio::process::Command::new(common::pgshepherd_bin())
        .current_dir(dir.path())
        .args(["demo", "--database-url", &db.url])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(db.index_exists("idx_job_summaries_cancel_reason").await);
    assert!(db.row_count("job_execution_summaries").await >= 20_000);
}

#[test]
fn demo_without_postgresql_binaries_exits_1_and_says_how_to_install_them() {
    let empty = common::scratch_dir();
    let out = std::process::Command::new(common::pgshepherd_bin())
        .arg("demo")
        .env("PGSHEPHERD_PG_BINDIR", empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no PostgreSQL server binaries found"),
        "{stderr}"
    );
    assert!(stderr.contains("apt-get install postgresql"), "{stderr}");
}
