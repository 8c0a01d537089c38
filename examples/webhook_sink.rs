//! A fast webhook receiver for benchmarks: it answers every POST with one status
//! (200 unless `--status`) and an empty body, and appends one line per POST to a
//! file:
//!
//! ```text
//! <unix epoch nanoseconds at arrival> <webhook-id header, or -> <body length in bytes>
//! ```
//!
//! ```text
//! cargo run --release --example webhook_sink -- --listen 127.0.0.1:8790 --out /tmp/arrivals
//! ```
//!
//! "Arrival" is when the handler runs: the request's head and whole body have
//! been read, the answer has not been written yet (it follows at once). The clock
//! is the system's wall clock, so the stamps compare with PostgreSQL's `now()` on
//! the same machine.
//!
//! Lines go to an in-memory buffer that is written out at least every 100 ms, and
//! once more on SIGTERM or SIGINT before exiting, so a stopped sink loses none of
//! the requests it answered. The file is opened for appending: a sink restarted
//! with the same `--out` continues it. Anything other than POST gets 405 and is
//! not recorded (a GET is a cheap readiness probe). Used by `benches/notify_load.sh`.
//!
//! Keep-alive is on (hyper's default), so a sender with a connection pool pays for
//! connection set-up once per connection, not per webhook. Nothing is verified
//! (signatures, JSON): the sink is meant to cost as little as possible next to
//! the sender it measures.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8790.
    #[arg(long)]
    listen: SocketAddr,
    /// File the arrival lines are appended to (created when missing).
    #[arg(long)]
    out: PathBuf,
    /// Status answered to every POST.
    #[arg(long, default_value_t = 200)]
    status: u16,
}

struct Sink {
    /// Lines not yet written to the file; `None` once the sink is closing: a
    /// request arriving after the last flush is answered 503 and not recorded, so
    /// every request answered with `--status` has its line in the file.
    pending: Mutex<Option<Vec<u8>>>,
    status: StatusCode,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(200..=599).contains(&args.status) {
        bail!("--status must be 200..=599, not {}", args.status);
    }
    let status = StatusCode::from_u16(args.status)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .with_context(|| format!("opening {}", args.out.display()))?;
    let sink = Arc::new(Sink {
        pending: Mutex::new(Some(Vec::with_capacity(1 << 16))),
        status,
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let app = Router::new().fallback(receive).with_state(sink.clone());

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    eprintln!(
        "webhook_sink: listening on {}, answering {}, appending to {}",
        args.listen,
        status.as_u16(),
        args.out.display()
    );

    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let why = loop {
        tokio::select! {
            _ = tick.tick() => flush(&sink, &mut file)?,
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };
    // Stop accepting connections, then write out everything recorded so far and
    // close the buffer (later requests on open connections get 503, unrecorded).
    // A request whose line is in the buffer but whose answer was not written yet
    // is recorded although its sender sees a broken connection (and retries).
    server.abort();
    let _ = server.await;
    let last = sink
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    file.write_all(&last).context("writing the arrival lines")?;
    file.sync_all().ok();
    eprintln!("webhook_sink: {why}: flushed, exiting");
    Ok(())
}

fn flush(sink: &Sink, file: &mut std::fs::File) -> anyhow::Result<()> {
    let chunk = {
        let mut pending = sink.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.as_mut() {
            Some(p) if !p.is_empty() => std::mem::replace(p, Vec::with_capacity(1 << 16)),
            _ => return Ok(()),
        }
    };
    file.write_all(&chunk)
        .context("writing the arrival lines")?;
    Ok(())
}

async fn receive(
    State(sink): State<Arc<Sink>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED;
    }
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // Header values are visible ASCII on the wire; anything else (or a space,
    // which would break the line's columns) is recorded as "?".
    let id = match headers.get("webhook-id").map(|v| v.to_str()) {
        None => "-",
        Some(Ok(v)) if !v.is_empty() && !v.contains(char::is_whitespace) => v,
        Some(_) => "?",
    };
    let mut pending = sink.pending.lock().unwrap_or_else(|e| e.into_inner());
    match pending.as_mut() {
        Some(p) => {
            let _ = writeln!(p, "{ns} {id} {}", body.len());
            sink.status
        }
        None => StatusCode::SERVICE_UNAVAILABLE,
    }
}
