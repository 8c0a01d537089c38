//! Backup overhead: a bare `pg_dump -Fc` (default gzip compression) against
//! pgshepherd's backup *including* its full verification (take + verify: sha256
//! re-read, TOC check, every data block read back).
//!
//! ```text
//! cargo run --release --example backup_bench                # throwaway cluster, 512 MB
//! cargo run --release --example backup_bench -- --size-mb 1024 --rounds 3
//! cargo run --release --example backup_bench -- --database-url postgres://u@host/db  # existing data, no fill
//! ```
//!
//! The generated table holds md5 hex text (one ~1 KB row per id): as poorly
//! compressible as a dump gets in practice (COPY prints bytea as hex too), gzip
//! shrinks it to about half. Both sides dump the same database from a warm cache, on
//! the same disk, and both sync their output (pg_dump does by default). Rounds
//! alternate the contenders; the best time of each is reported.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use pgshepherd::pg::Dsn;
use pgshepherd::pg::cluster::{PgBinaries, TempCluster};
use pgshepherd::plan::{BackupFormat, BackupSettings};
use pgshepherd::steps::backup;

#[derive(Parser)]
struct Args {
    /// Benchmark this database as it is (nothing is written to it) instead of a
    /// throwaway cluster filled with generated data.
    #[arg(long)]
    database_url: Option<String>,
    /// Size of the generated table, in MB.
    #[arg(long, default_value_t = 512)]
    size_mb: u64,
    /// Rounds per contender (alternating); the best round counts.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Also time a bare `pg_dump -Fc -Z0`, pgshepherd with gzip level 6, and the
    /// directory format with 2 jobs.
    #[arg(long)]
    variants: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bins = PgBinaries::locate()?;
    let scratch = tempfile::Builder::new()
        .prefix("pgshepherd-backup-bench-")
        .tempdir()?;

    let _cluster;
    let dsn: Dsn = match &args.database_url {
        Some(url) => url.parse()?,
        None => {
            let cluster = TempCluster::start(&bins)?;
            let dsn = cluster.dsn("bench");
            fill(&cluster.dsn("postgres"), &dsn, args.size_mb).await?;
            _cluster = cluster;
            dsn
        }
    };
    let client = dsn.connect("backup-bench", &[]).await?;
    let db_size: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .get(0);
    // Warm the cache so neither contender pays for the first read.
    for row in client
        .query(
            "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables",
            &[],
        )
        .await?
    {
        let table: String = row.get(0);
        client
            .simple_query(&format!("SELECT count(*) FROM {table}"))
            .await?;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "database {} ({} MB), {} cores, load average {}, {}",
        dsn,
        db_size >> 20,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        Command::new(&bins.pg_dump)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?,
    );

    let ours = BackupSettings {
        enabled: true,
        format: BackupFormat::Custom,
        jobs: 1,
        compression: 0,
        keep: 1,
        expect_tables: Vec::new(),
    };
    let mut contenders: Vec<(&str, Contender)> = vec![
        (
            "bare pg_dump -Fc (gzip, default level)",
            Contender::Bare(None),
        ),
        (
            "pgshepherd take+verify, -Fc -Z0 (default)",
            Contender::Ours(ours.clone()),
        ),
    ];
    if args.variants {
        contenders.push(("bare pg_dump -Fc -Z0", Contender::Bare(Some(0))));
        contenders.push((
            "pgshepherd take+verify, -Fc -Z6",
            Contender::Ours(BackupSettings {
                compression: 6,
                ..ours.clone()
            }),
        ));
        contenders.push((
            "pgshepherd take+verify, -Fd -j2 -Z0",
            Contender::Ours(BackupSettings {
                format: BackupFormat::Directory,
                jobs: 2,
                ..ours.clone()
            }),
        ));
    }

    let mut best: Vec<Option<(Duration, u64, String)>> = vec![None; contenders.len()];
    for round in 1..=args.rounds {
        for (i, (name, settings)) in contenders.iter().enumerate() {
            let (took, size, detail) = match settings {
                Contender::Bare(level) => bare_pg_dump(&bins, &dsn, scratch.path(), *level)?,
                Contender::Ours(s) => pgshepherd_backup(&bins, &dsn, s, scratch.path()).await?,
            };
            println!(
                "round {round}: {name:<45} {:>7.2} s  {:>6} MB  {detail}",
                took.as_secs_f64(),
                size >> 20
            );
            if best[i].as_ref().is_none_or(|(b, _, _)| took < *b) {
                best[i] = Some((took, size, detail));
            }
        }
    }

    println!();
    let bare = best[0].as_ref().expect("ran").0;
    for ((name, _), b) in contenders.iter().zip(&best) {
        let (took, size, _) = b.as_ref().expect("ran");
        println!(
            "best: {name:<45} {:>7.2} s  {:>6} MB  ratio to bare pg_dump {:.2}",
            took.as_secs_f64(),
            size >> 20,
            took.as_secs_f64() / bare.as_secs_f64()
        );
    }
    Ok(())
}

/// `CREATE DATABASE bench` with one table of md5 hex text, about `size_mb` MB.
async fn fill(admin: &Dsn, dsn: &Dsn, size_mb: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    admin
        .connect("backup-bench", &[])
        .await?
        .batch_execute("CREATE DATABASE bench")
        .await?;
    let client = dsn.connect("backup-bench", &[]).await?;
    client
        .batch_execute("CREATE TABLE payload (id bigint PRIMARY KEY, body text NOT NULL)")
        .await?;
    // 30 md5 digests (960 hex chars) per row stay below the TOAST threshold, so
    // the table is plain heap: no pglz, no out-of-line storage.
    let rows = size_mb * 1024 * 1024 / 1024;
    let batch = 50_000u64;
    let mut from = 1u64;
    while from <= rows {
        let to = (from + batch - 1).min(rows);
        client
            .batch_execute(&format!(
                "INSERT INTO payload
                 SELECT g, (SELECT string_agg(md5(g::text || ':' || i || ':' || random()::text), '') FROM generate_series(1, 30) i)
                   FROM generate_series({from}, {to}) g"
            ))
            .await?;
        from = to + 1;
    }
    client.batch_execute("VACUUM ANALYZE payload").await?;
    eprintln!(
        "filled {rows} rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

enum Contender {
    /// `pg_dump -Fc -f FILE`, with `-Z<level>` when given (else pg_dump's default).
    Bare(Option<u8>),
    /// pgshepherd's take + verify.
    Ours(BackupSettings),
}

fn bare_pg_dump(
    bins: &PgBinaries,
    dsn: &Dsn,
    dir: &Path,
    compression: Option<u8>,
) -> anyhow::Result<(Duration, u64, String)> {
    let out = dir.join("bare.dump");
    let started = Instant::now();
    let status = Command::new(&bins.pg_dump)
        .envs(dsn.libpq_env())
        .arg("-Fc")
        .args(compression.map(|c| format!("-Z{c}")))
        .arg("-f")
        .arg(&out)
        .stdin(Stdio::null())
        .status()
        .context("running pg_dump")?;
    let took = started.elapsed();
    if !status.success() {
        bail!("pg_dump failed: {status}");
    }
    let size = std::fs::metadata(&out)?.len();
    std::fs::remove_file(&out)?;
    Ok((took, size, "no verification".into()))
}

async fn pgshepherd_backup(
    bins: &PgBinaries,
    dsn: &Dsn,
    settings: &BackupSettings,
    dir: &Path,
) -> anyhow::Result<(Duration, u64, String)> {
    let started = Instant::now();
    let b = backup::take(bins, dsn, settings, dir, "bench", "bench", &[], &|_| {}).await?;
    let took_dump = started.elapsed();
    let v = backup::verify(bins, &b, &[]).await?;
    let took = started.elapsed();
    let size = b.manifest.size_bytes;
    let path = &b.path;
    if path.is_dir() {
        std::fs::remove_dir_all(path)?;
    } else {
        std::fs::remove_file(path)?;
    }
    std::fs::remove_file(&b.manifest_path)?;
    Ok((
        took,
        size,
        format!(
            "take {:.2} s + verify {:.2} s (sha256 {:.2} s | read-back {:.2} s | toc {:.2} s, concurrent)",
            took_dump.as_secs_f64(),
            (took - took_dump).as_secs_f64(),
            v.checksum_ms as f64 / 1000.0,
            v.read_back_ms as f64 / 1000.0,
            v.toc_ms as f64 / 1000.0
        ),
    ))
}
