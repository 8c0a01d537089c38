//! Everything before the change: the window, the low-traffic gate, the lock, the
//! baselines (and the EXPLAIN gate's plans) and the verified backup. Each wait honours the operator's stop, and
//! nothing here touches the target's schema or data.

use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::migrations::history::{self, HistoryError};
use crate::pg::TargetLock;
use crate::pg::lock::LockError;
use crate::run::event::{EventKind, Step};
use crate::run::lifecycle::Input;
use crate::run::runner::{Phase, Runner, history_stop};
use crate::steps::backup::{self, Backup, BackupError};
use crate::steps::gate::GateEnd;
use crate::steps::soak::Monitor;

/// Why the backup step failed.
#[derive(Debug, thiserror::Error)]
pub enum TakeBackupError {
    #[error("pg_dump and pg_restore were not found; install the PostgreSQL client tools")]
    NoTools,
    #[error(transparent)]
    Backup(#[from] BackupError),
}

impl Runner<'_> {
    /// Prepare the change. `Ok(None)`: the window closed first, wait for the
    /// next opening; `Ok(Some)`: locked, baselines measured, backup verified,
    /// inside the window.
    pub(crate) async fn prepare(&mut self) -> Phase<Option<(TargetLock, Monitor)>> {
        let plan = self.ctx.plan;
        self.check_deadline().await?;
        // Window: the migration may only start inside it.
        if let Some(window) = plan.window.as_ref().filter(|_| !self.opts.now) {
            if window.current(Utc::now()).is_none() {
                self.life.apply(Input::WindowClosed).await?;
                let Some(opens) = window.next_openings(Utc::now(), 1).into_iter().next() else {
                    return Err(self.stop("the window never opens".into()).await);
                };
                if let Some(deadline) = plan.deadline
                    && opens.with_timezone(&Utc) >= deadline
                {
                    let reason = format!(
                        "the next window opens at {}, after the plan's deadline {}",
                        opens.to_rfc3339_opts(SecondsFormat::Secs, false),
                        deadline.to_rfc3339_opts(SecondsFormat::Secs, true)
                    );
                    return Err(self.stop(reason).await);
                }
                self.ctx.emit(
                    Step::Window,
                    EventKind::WaitingForWindow {
                        cron: window.cron.clone(),
                        timezone: window.timezone.name().to_string(),
                        opens_at: opens.to_rfc3339_opts(SecondsFormat::Secs, false),
                    },
                );
                let wait = (opens.with_timezone(&Utc) - Utc::now())
                    .to_std()
                    .unwrap_or_default();
                if !self.ctx.sleep(wait).await {
                    let reason = "aborted while waiting for the window".to_string();
                    return Err(self.end(Input::Abort { reason }).await);
                }
            }
            let closes = window
                .current(Utc::now())
                .map(|(_, c)| c.to_rfc3339_opts(SecondsFormat::Secs, true));
            self.ctx
                .emit(Step::Window, EventKind::WindowOpen { closes_at: closes });
        }
        // The low-traffic gate: wait for quiet before touching anything.
        if let Some(gate) = &plan.gate {
            let window_closes = plan
                .window
                .as_ref()
                .filter(|_| !self.opts.now)
                .and_then(|w| w.current(Utc::now()))
                .map(|(_, c)| c.with_timezone(&Utc));
            let give_up_at = match (window_closes, plan.deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match crate::steps::gate::wait_for_low_traffic(&self.ctx, gate, give_up_at).await {
                GateEnd::Open => {}
                GateEnd::Aborted => {
                    let reason = "aborted while waiting for low traffic".to_string();
                    return Err(self.end(Input::Abort { reason }).await);
                }
                GateEnd::GaveUp(reason) => {
                    if self.window_closed() && self.past_deadline().is_none() {
                        self.life.apply(Input::WindowClosed).await?;
                        return Ok(None);
                    }
                    return Err(self.stop(format!("low-traffic gate: {reason}")).await);
                }
            }
        }

        // Lock: from here on, only this run changes the target.
        self.life.apply(Input::WindowOpen).await?;
        let lock = self.lock().await?;
        // Someone may have migrated between preflight and the lock: look again.
        match history::read(lock.client(), &plan.migrations.name)
            .await
            .map_err(HistoryError::Query)
            .and_then(|rows| history::reconcile(&plan.migrations, &rows))
        {
            Ok(s) if s.applied == self.starting => {}
            Ok(s) => {
                let reason = format!(
                    "the target changed while waiting for the lock (now at {:?}); run again",
                    s.applied
                );
                return Err(self.stop(reason).await);
            }
            Err(e) => return Err(self.end(history_stop(e)).await),
        }
        let starting = self.starting.clone();
        self.ctx.events.set_fact(|f| f.starting = Some(starting));

        // Baseline, before anything (including the backup's load) disturbs it.
        self.life.apply(Input::LockTaken).await?;
        let mut monitor = Monitor::new(&plan.soak.checks, self.ctx.dsn);
        if let Err(e) = monitor
            .measure_baseline(&self.ctx, plan.soak.baseline_samples, plan.soak.interval)
            .await
        {
            return Err(self.stop(format!("baseline: {e}")).await);
        }
        let baselines = monitor.baseline_values();
        self.ctx.events.set_fact(|f| f.baselines = Some(baselines));

        // The EXPLAIN gate's plans from before the change, with the baselines
        // (before the backup's load disturbs the execution times).
        if !plan.explain.is_empty() {
            match crate::steps::explain::before(&self.ctx).await {
                Ok(measured) => self.ctx.events.set_fact(|f| f.explain_before = measured),
                Err(e) => {
                    let input = Input::Stop {
                        exit_code: e.exit_code(),
                        reason: e.to_string(),
                    };
                    return Err(self.end(input).await);
                }
            }
        }

        // Backup: only a verified one lets the migration start.
        if plan.backup.enabled {
            self.life.apply(Input::BackupStarting).await?;
            // A stop request cancels the backup: dropping it kills pg_dump, and
            // whatever it had written is removed.
            let taken = tokio::select! {
                taken = self.take_backup() => taken,
                _ = self.ctx.abort_requested() => {
                    let removed = backup::cancel(self.ctx.dsn, &self.ctx.backup_dir, &self.opts.target, self.ctx.run_id).await;
                    let reason = format!(
                        "aborted during the backup; nothing was changed ({} partial file(s) removed)",
                        removed.len()
                    );
                    return Err(self.end(Input::Abort { reason }).await);
                }
            };
            match taken {
                Ok(b) => {
                    let manifest = b.manifest_path.clone();
                    self.ctx
                        .events
                        .set_fact(|f| f.backup_manifest = Some(manifest));
                    self.life.note_backup(Some(b.path.display().to_string()));
                    self.backup = Some(b);
                }
                Err(e) => {
                    let reason = e.to_string();
                    self.ctx.emit(
                        Step::Backup,
                        EventKind::BackupFailed {
                            reason: reason.clone(),
                        },
                    );
                    return Err(self.stop(format!("backup: {reason}")).await);
                }
            }
        }
        // pgshepherd's own bookkeeping: created before the first migration so that
        // nothing between the last abort check and the first migration can fail.
        if let Err(e) = lock.client().batch_execute(history::CREATE).await {
            let reason = format!(
                "cannot create pgshepherd.history: {}",
                crate::pg::server_message(&e)
            );
            return Err(self.stop(reason).await);
        }
        if self.ctx.aborted() {
            let reason = "aborted before migrating".to_string();
            return Err(self.end(Input::Abort { reason }).await);
        }
        self.check_deadline().await?;
        if self.window_closed() {
            // Nothing changed: let go of the target and wait for the next opening.
            drop(lock);
            self.ctx.events.progress(
                "  the window closed before the migration could start; waiting for the next opening",
            );
            self.life.apply(Input::WindowClosed).await?;
            return Ok(None);
        }
        Ok(Some((lock, monitor)))
    }

    /// Stop before any change, on purpose or by circumstance (exit 5).
    async fn stop(&self, reason: String) -> crate::run::Finished {
        self.stop_before_change(reason).await
    }

    fn window_closed(&self) -> bool {
        self.ctx
            .plan
            .window
            .as_ref()
            .filter(|_| !self.opts.now)
            .is_some_and(|w| w.current(Utc::now()).is_none())
    }

    fn past_deadline(&self) -> Option<DateTime<Utc>> {
        self.ctx.plan.deadline.filter(|d| Utc::now() >= *d)
    }

    async fn check_deadline(&self) -> Phase<()> {
        let Some(deadline) = self.past_deadline() else {
            return Ok(());
        };
        let reason = format!(
            "the plan's deadline {} passed before the migration could start",
            deadline.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        Err(self.stop(reason).await)
    }

    /// Take the per-target lock, waiting up to the plan's `acquire_timeout`.
    async fn lock(&mut self) -> Phase<TargetLock> {
        let acquired = tokio::select! {
            acquired = self.try_lock() => acquired,
            _ = self.ctx.abort_requested() => {
                let reason = "aborted while waiting for the lock".to_string();
                return Err(self.end(Input::Abort { reason }).await);
            }
        };
        match acquired {
            Ok(lock) => Ok(lock),
            Err(e @ LockError::Connect { .. }) => Err(self
                .end(Input::Stop {
                    reason: e.to_string(),
                    exit_code: 1,
                })
                .await),
            Err(e) => Err(self.stop(e.to_string()).await),
        }
    }

    async fn take_backup(&self) -> Result<Backup, TakeBackupError> {
        let plan = self.ctx.plan;
        let Some(bins) = self.ctx.bins else {
            return Err(TakeBackupError::NoTools);
        };
        self.ctx.emit(
            Step::Backup,
            EventKind::BackupStarted {
                format: plan.backup.format,
                compression: plan.backup.compression,
                directory: self.ctx.backup_dir.display().to_string(),
            },
        );
        let started = Instant::now();
        let last = std::sync::Mutex::new(Instant::now());
        let events = self.ctx.events;
        let progress = |bytes: u64| {
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed().as_secs_f64() >= 1.0 {
                *last = Instant::now();
                events.progress(&format!("  backup {:.1} MB written", bytes as f64 / 1e6));
            }
        };
        let backup = backup::take(
            bins,
            self.ctx.dsn,
            &plan.backup,
            &self.ctx.backup_dir,
            &self.opts.target,
            self.ctx.run_id,
            &self.starting,
            &progress,
        )
        .await?;
        self.ctx.emit(
            Step::Backup,
            EventKind::BackupWritten {
                path: backup.path.display().to_string(),
                size_bytes: backup.manifest.size_bytes,
                sha256: backup.manifest.sha256.clone(),
                duration_ms: started.elapsed().as_millis() as u64,
            },
        );
        let verify_started = Instant::now();
        let verified = backup::verify(bins, &backup, &plan.backup.expect_tables).await?;
        self.ctx.emit(
            Step::Backup,
            EventKind::BackupVerified {
                path: backup.path.display().to_string(),
                manifest: backup.manifest_path.display().to_string(),
                sha256: backup.manifest.sha256.clone(),
                tables: verified.tables_checked,
                duration_ms: verify_started.elapsed().as_millis() as u64,
            },
        );
        match backup::prune(&self.ctx.backup_dir, &backup, plan.backup.keep).await {
            Ok(removed) if !removed.is_empty() => self.ctx.emit(
                Step::Backup,
                EventKind::BackupPruned {
                    removed: removed.iter().map(|p| p.display().to_string()).collect(),
                },
            ),
            Ok(_) => {}
            Err(e) => self
                .ctx
                .events
                .progress(&format!("  warning: pruning old backups failed: {e}")),
        }
        Ok(backup)
    }
}
