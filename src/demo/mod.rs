//! `pgshepherd demo`: the example plan end to end on a throwaway cluster.
//!
//! The scenario: a job runner writes `job_execution_summaries`; the cancellations
//! dashboard needs an index on `results->>'cancel_reason'`. Right after the
//! migration the plan's EXPLAIN gate checks that the dashboard query really uses
//! it (and records how much faster the query became). While the plan soaks, a
//! simulated job runner keeps inserting cancelled jobs.
//!
//! With `--breach` the job runner's new release starts storing whole stack traces
//! as cancel reasons once the soak begins. Without the index that is harmless; with
//! it every such insert fails ("index row size exceeds btree maximum"), the failed
//! transactions show up in the built-in `rollbacks_per_second` signal, the check
//! breaches, pgshepherd drops the index with the down script, the inserts succeed
//! again and the confirmation period sees healthy numbers. Nothing in the verdict
//! code knows this is a demo: a real measurement crosses a real threshold.

mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cli::run::execute;
use crate::pg::Dsn;
use crate::pg::cluster::{ClusterError, PgBinaries, TempCluster};
use crate::pg::dsn::DsnError;
use crate::plan::Diagnostics;
use crate::run::{EventKind, RunOptions};

const SEED: &str = include_str!("seed.sql");
const PLAN: &str = include_str!("../../plans/job-summaries-cancel-reason.yaml");
const MIGRATIONS: [(&str, &str); 3] = [
    (
        "V1__cancel_reason_index.sql",
        include_str!("../../migrations/job_summaries/V1__cancel_reason_index.sql"),
    ),
    (
        "V1__cancel_reason_index.down.sql",
        include_str!("../../migrations/job_summaries/V1__cancel_reason_index.down.sql"),
    ),
    (
        "V1__cancel_reason_index.verify.sql",
        include_str!("../../migrations/job_summaries/V1__cancel_reason_index.verify.sql"),
    ),
];
const INDEX: &str = "idx_job_summaries_cancel_reason";

/// Why the demo could not run or did not end well; printed after `demo: `.
#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The scratch directory.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Url(#[from] DsnError),
    #[error("{}", crate::pg::server_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// `dsn` is the redacted connection string.
    #[error("cannot connect to {dsn}: {}", crate::pg::server_message(.source))]
    Connect {
        dsn: String,
        source: tokio_postgres::Error,
    },
    #[error("seeding job_execution_summaries: {}", crate::pg::server_message(.0))]
    Seed(tokio_postgres::Error),
    #[error("writing the example plan: {0}")]
    WriteExample(std::io::Error),
    #[error(transparent)]
    Plan(#[from] Diagnostics),
    #[error("{0} rows are missing after the run")]
    RowsMissing(i64),
}

pub struct DemoArgs {
    pub breach: bool,
    pub database_url: Option<String>,
    pub json: bool,
}

pub async fn run(args: DemoArgs) -> i32 {
    let json = args.json;
    let mut started = false;
    match demo(args, &mut started).await {
        Ok(code) => code,
        // Failures before the run (no binaries, no cluster) still end the `--json`
        // stream with `run_finished`; after the run, the stream has ended.
        Err(e) if !started => crate::cli::run::refused(json, 1, &format!("demo: {e}")),
        Err(e) => {
            crate::output::note(format_args!("demo: {e}"));
            1
        }
    }
}

async fn demo(args: DemoArgs, started: &mut bool) -> Result<i32, DemoError> {
    let bins = PgBinaries::locate()?;
    let work = tempfile::Builder::new()
        .prefix("pgshepherd-demo-")
        .tempdir()?;
    let (_cluster, dsn) = match &args.database_url {
        Some(url) => (None, url.parse::<Dsn>()?),
        None => {
            crate::output::note("[demo] starting a throwaway PostgreSQL cluster");
            let cluster = TempCluster::start(&bins)?;
            let admin = cluster
                .dsn("postgres")
                .connect("pgshepherd demo", &[])
                .await?;
            admin.batch_execute("CREATE DATABASE jobs").await?;
            let dsn = cluster.dsn("jobs");
            (Some(cluster), dsn)
        }
    };
    let client = dsn
        .connect("pgshepherd demo", &[])
        .await
        .map_err(|source| DemoError::Connect {
            dsn: dsn.to_string(),
            source,
        })?;
    client.batch_execute(SEED).await.map_err(DemoError::Seed)?;
    let rows_before = count(&client).await?;
    let cancelled: i64 = client
        .query_one(
            "SELECT count(*) FILTER (WHERE results ->> 'cancel_reason' IS NULL) FROM job_execution_summaries WHERE status = 'cancelled'",
            &[],
        )
        .await?
        .get(0);
    crate::output::note(format_args!(
        "[demo] {dsn}: job_execution_summaries has {rows_before} rows, {cancelled} cancelled jobs without a cancel_reason"
    ));

    let plan_path = write_example(work.path()).map_err(DemoError::WriteExample)?;
    let mut plan = crate::plan::load(&plan_path)?;
    shorten_for_demo(&mut plan);
    // The dashboard query is the one the plan's EXPLAIN gate judges.
    let dashboard_query = plan
        .explain
        .first()
        .map(|q| q.sql.clone())
        .unwrap_or_default();

    let writer = writer::JobRunner::start(dsn.clone(), args.breach);
    let on_event = {
        let writer = Arc::clone(&writer);
        Box::new(move |event: &crate::run::Event| {
            // Said at the moment it happens, so that the breach that follows is
            // not unexplained.
            if let EventKind::SoakStarted { .. } = event.kind
                && writer.release_new_version()
            {
                crate::output::note(
                    "[demo] the job runner's new release starts writing now: its cancel reasons are whole stack traces (about 4 kB)",
                );
            }
        })
    };
    let backup_dir = match &args.database_url {
        Some(_) => PathBuf::from("pgshepherd-demo-backups"),
        None => work.path().join("backups"),
    };
    let opts = RunOptions {
        target: "jobs".into(),
        backup_dir,
        now: true,
        dry_run: false,
    };
    *started = true;
    let code = execute(&plan, &dsn, opts, args.json, Some(on_event)).await;
    let stats = writer.stop().await;

    let rows_after = count(&client).await?;
    let index_exists: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("public.{INDEX}")],
        )
        .await?
        .get(0);
    crate::output::note(format_args!(
        "[demo] the simulated job runner committed {} inserts ({} failed){}",
        stats.committed,
        stats.failed,
        stats
            .last_error
            .as_ref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default()
    ));
    let lost = rows_before + stats.committed as i64 - rows_after;
    crate::output::note(format_args!(
        "[demo] rows: {rows_before} before, {rows_after} after; {}",
        if lost == 0 {
            "no row lost".to_string()
        } else {
            format!("{lost} ROWS MISSING")
        }
    ));
    if index_exists {
        crate::output::note(format_args!(
            "[demo] {INDEX} exists; the dashboard query's plan:"
        ));
        for line in explain(&client, &dashboard_query).await? {
            crate::output::note(format_args!("         {line}"));
        }
    } else {
        crate::output::note(format_args!("[demo] {INDEX} does not exist"));
    }
    if lost != 0 {
        return Err(DemoError::RowsMissing(lost));
    }
    Ok(code)
}

/// The example as shipped, written where `plan::load` can read it with its
/// migration set beside it, exactly like a checkout of this repository.
fn write_example(dir: &Path) -> std::io::Result<PathBuf> {
    let plans = dir.join("plans");
    let set = dir.join("migrations/job_summaries");
    std::fs::create_dir_all(&plans)?;
    std::fs::create_dir_all(&set)?;
    for (name, text) in MIGRATIONS {
        std::fs::write(set.join(name), text)?;
    }
    let path = plans.join("job-summaries-cancel-reason.yaml");
    std::fs::write(&path, PLAN)?;
    Ok(path)
}

/// An hour of soak becomes a few seconds; everything else is the plan as written.
fn shorten_for_demo(plan: &mut crate::plan::Plan) {
    plan.soak.duration = Duration::from_secs(8);
    plan.soak.interval = Duration::from_secs(1);
    plan.soak.baseline_samples = 2;
    plan.rollback.confirm = Duration::from_secs(4);
    for check in &mut plan.soak.checks {
        check.min_samples = check.min_samples.min(4);
        check.consecutive = check.consecutive.min(2);
        check.timeout = check.timeout.min(Duration::from_secs(1));
    }
}

async fn count(client: &tokio_postgres::Client) -> Result<i64, tokio_postgres::Error> {
    client
        .query_one("SELECT count(*) FROM job_execution_summaries", &[])
        .await
        .map(|r| r.get(0))
}

async fn explain(
    client: &tokio_postgres::Client,
    query: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client.query(&format!("EXPLAIN {query}"), &[]).await?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}
