//! The demo's simulated job runner: inserts a cancelled job every 50 ms.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::pg::Dsn;

pub struct JobRunner {
    /// Set when the soak starts: from then on, with `--breach`, cancel reasons are
    /// whole stack traces.
    new_version: AtomicBool,
    breach: bool,
    stop: AtomicBool,
    committed: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

pub struct Stats {
    pub committed: u64,
    pub failed: u64,
    pub last_error: Option<String>,
}

impl JobRunner {
    pub fn start(dsn: Dsn, breach: bool) -> Arc<JobRunner> {
        let runner = Arc::new(JobRunner {
            new_version: AtomicBool::new(false),
            breach,
            stop: AtomicBool::new(false),
            committed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
            task: Mutex::new(None),
        });
        let worker = Arc::clone(&runner);
        let handle = tokio::spawn(async move { worker.work(dsn).await });
        if let Ok(mut t) = runner.task.try_lock() {
            *t = Some(handle);
        }
        runner
    }

    /// The new release starts writing; `true` the first time, when (with
    /// `--breach`) its inserts start to differ, so the demo can say so.
    pub fn release_new_version(&self) -> bool {
        !self.new_version.swap(true, Ordering::SeqCst) && self.breach
    }

    pub async fn stop(&self) -> Stats {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.lock().await.take() {
            let _ = t.await;
        }
        Stats {
            committed: self.committed.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            last_error: self.last_error.lock().await.clone(),
        }
    }

    async fn work(&self, dsn: Dsn) {
        let Ok(client) = dsn.connect("demo job runner", &[]).await else {
            return;
        };
        let mut n: u64 = 0;
        while !self.stop.load(Ordering::SeqCst) {
            n += 1;
            let stack_traces = self.breach && self.new_version.load(Ordering::SeqCst);
            // Reasons: a fifth of cancellations carry none, as in the seed data.
            let sql = if stack_traces {
                // ~4 kB of hex: too random to compress, so it exceeds a btree entry's 2704 bytes.
                "INSERT INTO job_execution_summaries (job_name, status, results)
                 SELECT 'job-runner', 'cancelled',
                        jsonb_build_object('cancel_reason', 'Traceback: ' || string_agg(md5(random()::text), '' ORDER BY g))
                   FROM generate_series(1, 128) AS g"
            } else if n.is_multiple_of(5) {
                "INSERT INTO job_execution_summaries (job_name, status, results) VALUES ('job-runner', 'cancelled', '{}')"
            } else {
                "INSERT INTO job_execution_summaries (job_name, status, results)
                 VALUES ('job-runner', 'cancelled', '{\"cancel_reason\": \"user_request\"}')"
            };
            match client.execute(sql, &[]).await {
                Ok(_) => {
                    self.committed.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    self.failed.fetch_add(1, Ordering::SeqCst);
                    let msg = crate::pg::server_message(&e);
                    *self.last_error.lock().await = Some(msg);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
