//! HTTP load generator for the daemon's API: `concurrency` workers send GET
//! requests to one URL back to back (each waits for the whole answer before the
//! next request) for `seconds`, after an unmeasured warm-up.
//!
//! ```text
//! cargo run --release --example api_load -- \
//!     --url http://127.0.0.1:8750/v1/runs/3f9a1c2b7d40 --token T --concurrency 32 --seconds 20
//! ```
//!
//! Prints requests/s, latency percentiles (p50, p90, p99, max; nearest rank) of
//! the measured requests, and the number of errors (transport errors and any
//! status other than 2xx). With `--json`, the same as one JSON object on stdout
//! (the human summary then goes to stderr). Used by `benches/api_load.sh`.
//!
//! Latency is measured from just before the request is sent to the end of the
//! body. Keep-alive connections are reused (one reqwest client, one connection
//! per worker), so connection set-up is in the warm-up, not in the figures.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The URL to GET, e.g. http://127.0.0.1:8750/v1/runs/3f9a1c2b7d40.
    #[arg(long)]
    url: String,
    /// Bearer token (prefer the environment: command lines are visible to other users).
    #[arg(long, env = "PGSHEPHERD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Workers sending requests at the same time.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Measured duration.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Unmeasured warm-up before the measured part.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Per-request timeout (a request that times out counts as an error).
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Print the figures as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct Tally {
    /// Latencies of successful measured requests, in microseconds.
    ok_us: Vec<u64>,
    errors: u64,
    /// The first few distinct error messages.
    samples: Vec<String>,
    bytes: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.concurrency == 0 || args.seconds <= 0.0 {
        bail!("--concurrency and --seconds must be > 0");
    }
    pgshepherd::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(args.timeout))
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .context("building the HTTP client")?;

    // One request first: a wrong URL or token should fail loudly, not as 100 % errors.
    let mut probe = client.get(&args.url);
    if let Some(t) = &args.token {
        probe = probe.bearer_auth(t);
    }
    let r = probe
        .send()
        .await
        .with_context(|| format!("GET {}", args.url))?;
    if !r.status().is_success() {
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        bail!("GET {} answered {status}: {body}", args.url);
    }
    let body_len = r.bytes().await?.len();

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup.max(0.0));
    let end = measure_from + Duration::from_secs_f64(args.seconds);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let client = client.clone();
        let url = args.url.clone();
        let token = args.token.clone();
        workers.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let mut req = client.get(&url);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let result = match req.send().await {
                    Ok(r) if r.status().is_success() => r
                        .bytes()
                        .await
                        .map(|b| b.len() as u64)
                        .map_err(|e| format!("reading the body: {e}")),
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(e) => Err(format!("{e}")),
                };
                let done = Instant::now();
                // Count what was sent inside the measured period and finished by its end.
                if sent < measure_from || done > end {
                    continue;
                }
                match result {
                    Ok(n) => {
                        tally
                            .ok_us
                            .push(done.duration_since(sent).as_micros() as u64);
                        tally.bytes += n;
                    }
                    Err(e) => {
                        tally.errors += 1;
                        if tally.samples.len() < 5 && !tally.samples.contains(&e) {
                            tally.samples.push(e);
                        }
                        // A refused connection would otherwise spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            tally
        });
    }
    let mut all = Tally::default();
    while let Some(joined) = workers.join_next().await {
        let t = joined.context("a worker panicked")?;
        all.ok_us.extend(t.ok_us);
        all.errors += t.errors;
        all.bytes += t.bytes;
        for s in t.samples {
            if all.samples.len() < 5 && !all.samples.contains(&s) {
                all.samples.push(s);
            }
        }
    }
    let measured = args.seconds;
    all.ok_us.sort_unstable();
    let n = all.ok_us.len();
    let pct = |p: f64| -> f64 {
        if n == 0 {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
        all.ok_us[rank.min(n) - 1] as f64 / 1000.0
    };
    let mean = if n == 0 {
        f64::NAN
    } else {
        all.ok_us.iter().sum::<u64>() as f64 / n as f64 / 1000.0
    };
    let rps = n as f64 / measured;
    let summary = serde_json::json!({
        "url": args.url,
        "concurrency": args.concurrency,
        "seconds": measured,
        "requests": n,
        "errors": all.errors,
        "rps": (rps * 10.0).round() / 10.0,
        "mean_ms": round2(mean),
        "p50_ms": round2(pct(50.0)),
        "p90_ms": round2(pct(90.0)),
        "p99_ms": round2(pct(99.0)),
        "max_ms": round2(if n == 0 { f64::NAN } else { all.ok_us[n - 1] as f64 / 1000.0 }),
        "body_bytes": body_len,
        "error_samples": all.samples,
    });
    let human = format!(
        "concurrency {:>3}: {:>8.1} req/s  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  \
         ({} requests in {}s, {} errors, body {} bytes)",
        args.concurrency,
        rps,
        pct(50.0),
        pct(90.0),
        pct(99.0),
        if n == 0 {
            f64::NAN
        } else {
            all.ok_us[n - 1] as f64 / 1000.0
        },
        n,
        measured,
        all.errors,
        body_len,
    );
    if args.json {
        eprintln!("{human}");
        println!("{summary}");
    } else {
        println!("{human}");
        for s in &all.samples {
            println!("  error: {s}");
        }
    }
    Ok(())
}

fn round2(x: f64) -> serde_json::Value {
    if x.is_finite() {
        serde_json::json!((x * 100.0).round() / 100.0)
    } else {
        serde_json::Value::Null
    }
}
