//! The one human rendering of events: `pgshepherd run`'s progress on stderr,
//! `pgshepherd logs` and the daemon's log lines all print these lines. Every
//! event kind has a text (the match is exhaustive, and a test renders one of
//! each); [`worth_a_line`] decides which are printed where a run is followed.

use crate::checks::verdict::num;
use crate::run::event::{Event, EventKind};

/// `[HH:MM:SS] text` for an event worth a line, else `None`.
pub fn human(event: &Event) -> Option<String> {
    worth_a_line(&event.kind).then(|| format!("[{}] {}", event.ts.format("%H:%M:%S"), text(event)))
}

/// Whether an event gets a line of its own: not a sample within its bounds
/// (the soak's progress line and the verdict cover those), nor a dry run's
/// report (printed on its own).
pub fn worth_a_line(kind: &EventKind) -> bool {
    match kind {
        EventKind::CheckSample { assessment, .. } => !assessment.valid || assessment.breaching,
        EventKind::DryRun { .. } => false,
        _ => true,
    }
}

/// The event in words, without its time.
pub fn text(event: &Event) -> String {
    use EventKind::*;
    match &event.kind {
        RunStarted {
            plan_name,
            database,
            pending,
            applied,
            rollback_strategy,
            dry_run,
            journal,
            ..
        } => {
            let at = applied
                .last()
                .map(|v| format!("V{v}"))
                .unwrap_or_else(|| "nothing applied".into());
            format!(
                "run {} {}plan {plan_name} on {database} (at {at}; pending: {}; rollback: {}){}",
                event.run_id,
                if *dry_run { "(dry run) " } else { "" },
                if pending.is_empty() {
                    "none".to_string()
                } else {
                    pending.join(", ")
                },
                rollback_strategy.as_str(),
                journal
                    .as_ref()
                    .map(|j| format!("\n         journal: {j}"))
                    .unwrap_or_default()
            )
        }
        WaitingForWindow {
            cron,
            timezone,
            opens_at,
        } => format!("waiting for the window ({cron} {timezone}): opens {opens_at}"),
        WindowOpen { closes_at } => format!(
            "window open{}",
            closes_at
                .as_ref()
                .map(|c| format!(" until {c}"))
                .unwrap_or_default()
        ),
        LockBusy { holder } => format!("target locked by {holder}; waiting"),
        LockAcquired { waited_ms } => format!("lock acquired ({waited_ms} ms)"),
        BaselineMeasured {
            check,
            baseline,
            valid_samples,
            ..
        } => format!(
            "baseline {check} = {} ({valid_samples} valid samples)",
            baseline.map(num).unwrap_or_else(|| "none".into())
        ),
        BackupStarted {
            format,
            compression,
            directory,
        } => {
            format!(
                "backup started ({}, compression {compression}) into {directory}",
                format.as_str()
            )
        }
        BackupWritten {
            path,
            size_bytes,
            sha256,
            duration_ms,
        } => format!(
            "backup written: {path} ({:.1} MB, sha256 {}…, {:.1}s)",
            *size_bytes as f64 / 1e6,
            &sha256[..sha256.len().min(12)],
            *duration_ms as f64 / 1000.0
        ),
        BackupVerified {
            tables,
            duration_ms,
            ..
        } => format!(
            "backup verified: checksum, table of contents ({tables} tables) and every data block read back ({:.1}s)",
            *duration_ms as f64 / 1000.0
        ),
        BackupFailed { reason } => format!("BACKUP FAILED: {reason}"),
        BackupPruned { removed } => format!("pruned {} old backup(s)", removed.len()),
        MigrationStarted {
            file,
            transactional,
            ..
        } => {
            format!(
                "applying {file}{}",
                if *transactional {
                    ""
                } else {
                    " (no transaction)"
                }
            )
        }
        MigrationRetry { version, retry } => format!(
            "V{version}: {} — attempt {}/{} in {} ms",
            retry.error,
            retry.attempt + 1,
            retry.of,
            retry.wait_ms
        ),
        MigrationApplied { report, .. } => format!(
            "applied {} in {} ms ({} attempt{}){}",
            report.file,
            report.duration_ms,
            report.attempts,
            if report.attempts == 1 { "" } else { "s" },
            if report.cleaned_invalid_indexes.is_empty() {
                String::new()
            } else {
                format!(
                    "; dropped INVALID {}",
                    report.cleaned_invalid_indexes.join(", ")
                )
            }
        ),
        MigrationFailed { error, .. } => format!("MIGRATION FAILED: {error}"),
        VerifyPassed {
            file, duration_ms, ..
        } => format!("verified by {file} ({duration_ms} ms)"),
        VerifyFailed { error, .. } => format!("VERIFY FAILED: {error}"),
        SoakStarted {
            duration_s,
            interval_s,
            checks,
        } => format!(
            "soak started: {}s, a sample every {}s of {}",
            duration_s,
            interval_s,
            checks
                .iter()
                .map(|c| c.check.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        CheckSample { assessment, .. } => assessment.summary(),
        CheckVerdict {
            message,
            source,
            decision,
            ..
        } => format!(
            "VERDICT ({}): {message}\n         measured by {source}",
            decision.as_str()
        ),
        SoakFinished { passed, reason, .. } => match (passed, reason) {
            (true, _) => "soak passed".into(),
            (false, Some(r)) => format!("soak failed: {r}"),
            (false, None) => "soak failed".into(),
        },
        RollbackStarted {
            strategy,
            undo,
            cause,
        } => format!(
            "ROLLING BACK ({}): {} — {cause}",
            strategy.as_str(),
            undo.iter()
                .rev()
                .map(|v| format!("V{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        RollbackRetry { version, retry } => format!(
            "undo V{version}: {} — attempt {}/{}",
            retry.error,
            retry.attempt + 1,
            retry.of
        ),
        RollbackStepDone { report, .. } => {
            format!("undone by {} in {} ms", report.file, report.duration_ms)
        }
        BackupRestored {
            path,
            duration_ms,
            extension_owner_changes,
            snapshot,
            discarded_writes,
            sequences_advanced,
            stall_ms,
            analyze_ms,
            ..
        } => {
            let mut line = format!("restored {path} ({duration_ms} ms");
            if let Some(stall) = stall_ms {
                line.push_str(&format!("; writers blocked {stall} ms"));
            }
            line.push(')');
            for change in extension_owner_changes {
                line.push_str(&format!("; {change}"));
            }
            let more = "\n         ";
            match discarded_writes {
                Some(d) => line.push_str(&format!("{more}{}", crate::steps::backup::describe_discarded(d))),
                None => line.push_str(&format!("{more}rows written since the backup: not counted (its manifest predates the count)")),
            }
            if let Some(s) = snapshot {
                line.push_str(&format!(
                    "{more}the database as it was before the restore: {} (manifest {})",
                    s.path, s.manifest
                ));
            }
            if !sequences_advanced.is_empty() {
                line.push_str(&format!(
                    "{more}sequences kept from going backwards: {}",
                    sequences_advanced
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            line.push_str(&match analyze_ms {
                Some(ms) => format!("{more}analyzed in {ms} ms"),
                None => format!(
                    "{more}ANALYZE failed: the restored tables have no planner statistics yet"
                ),
            });
            line
        }
        RollbackFinished {
            applied,
            at_starting_version,
            ..
        } => format!(
            "rollback finished: target at {} ({})",
            applied
                .last()
                .map(|v| format!("V{v}"))
                .unwrap_or_else(|| "no version".into()),
            if *at_starting_version {
                "its starting version"
            } else {
                "NOT its starting version"
            }
        ),
        RollbackFailed { reason } => format!("ROLLBACK FAILED: {reason}"),
        DryRun { .. } => "dry run report".to_string(),
        RunSubmitted {
            plan_name,
            target,
            submitted_by,
            requires_approval,
            rehearsal_required,
            ..
        } => format!(
            "submitted plan {plan_name} for {target} by {submitted_by}{}",
            match (rehearsal_required, requires_approval) {
                (true, true) => "; rehearsing on a scratch copy, then waiting for approval",
                (true, false) => "; rehearsing on a scratch copy first",
                (false, true) => "; waiting for approval",
                (false, false) => "",
            }
        ),
        RunApproved { approved_by } => format!("approved by {approved_by}"),
        AbortRequested { requested_by } => format!("abort requested by {requested_by}"),
        Acknowledged { acked_by } => format!("acknowledged by {acked_by}"),
        RunResumed {
            owner,
            epoch,
            from_state,
            detail,
        } => format!("taken by {owner} (epoch {epoch}) at {from_state}: {detail}"),
        GateStarted {
            check,
            consecutive,
            interval_s,
        } => format!(
            "low-traffic gate: waiting for {consecutive} healthy samples of {} every {interval_s}s",
            check.check
        ),
        GateOpen { samples, waited_s } => {
            format!("low-traffic gate open after {samples} samples ({waited_s:.1}s)")
        }
        GateClosed { reason } => format!("low-traffic gate never opened: {reason}"),
        ExplainMeasured {
            name,
            phase,
            analyze,
            plan,
            error,
            duration_ms,
        } => format!(
            "explain{} {name} {} the change: {} ({duration_ms} ms)",
            if *analyze { " analyze" } else { "" },
            phase.as_str(),
            match (plan, error) {
                (Some(p), _) => p.short(),
                (None, e) => format!("no plan ({})", e.as_deref().unwrap_or("unknown")),
            }
        ),
        ExplainChecked { result, decision } => match decision {
            None if result.passed => format!(
                "EXPLAIN gate: {name} passed: {}",
                result.figures(),
                name = result.name
            ),
            _ => format!(
                "EXPLAIN GATE FAILED ({}): {}",
                decision.map_or("failed", |d| d.as_str()),
                result.message()
            ),
        },
        UndoRequested {
            request,
            requested_by,
            versions,
            mode,
            predicate,
            dry_run,
            requires_approval,
        } => format!(
            "undo #{request}{} asked for by {requested_by}: {}, mode {}{}{}",
            if *dry_run { " (dry run)" } else { "" },
            undo_versions(versions),
            mode.as_str(),
            undo_predicate(predicate),
            if *requires_approval {
                "; waits for approval by someone else"
            } else {
                "; queued"
            }
        ),
        UndoApproved {
            request,
            approved_by,
        } => format!("undo #{request} approved by {approved_by}; queued"),
        UndoStarted {
            database,
            versions,
            mode,
            predicate,
            dry_run,
            request,
            attempt,
        } => format!(
            "undo{}{} of run {} on {database}: {}, mode {}{}{}",
            request.map(|r| format!(" #{r}")).unwrap_or_default(),
            if *dry_run { " (dry run)" } else { "" },
            event.run_id,
            undo_versions(versions),
            mode.as_str(),
            undo_predicate(predicate),
            match attempt {
                Some(n) if *n > 1 => format!(
                    " (attempt {n}: the daemon driving the last one stopped before it ended; \
                     that attempt changed nothing)"
                ),
                _ => String::new(),
            }
        ),
        UndoFinished {
            outcome,
            exit_code,
            dry_run,
            tables,
            conflicts_file,
            reason,
            request,
            ..
        } => {
            let per_table: Vec<String> = tables
                .iter()
                .map(|(t, c)| {
                    format!(
                        "{t}: {} reverted, {} conflict(s), {} already gone, {} left out by --where, {} undone before",
                        c.reverted, c.conflicts, c.already_gone, c.filtered_out, c.already_undone
                    )
                })
                .collect();
            format!(
                "undo{} {}{outcome} (exit {exit_code}){}{}{}",
                request.map(|r| format!(" #{r}")).unwrap_or_default(),
                if *dry_run {
                    "(dry run, nothing changed): "
                } else {
                    ""
                },
                reason
                    .as_ref()
                    .map(|r| format!(" — {r}"))
                    .unwrap_or_default(),
                per_table
                    .iter()
                    .map(|l| format!("\n  {l}"))
                    .collect::<String>(),
                conflicts_file
                    .as_ref()
                    .map(|f| format!("\n  conflicts, row by row: {f}"))
                    .unwrap_or_default()
            )
        }
        RehearsalStarted { scratch, attempt } => format!(
            "rehearsing on the scratch copy {scratch}{}",
            if *attempt > 1 {
                format!(" (attempt {attempt}: the earlier one was interrupted)")
            } else {
                String::new()
            }
        ),
        RehearsalFinished {
            passed,
            differences,
            reason,
            requires_approval,
        } => format!(
            "rehearsal {}{}{}",
            match (passed, differences.len(), requires_approval) {
                (true, _, Some(true)) =>
                    "passed: the down scripts gave back the catalog as it was; waiting for approval"
                        .to_string(),
                (true, _, _) =>
                    "passed: the down scripts gave back the catalog as it was".to_string(),
                (false, 0, _) => "failed".to_string(),
                (false, n, _) => format!("failed: {n} difference(s)"),
            },
            reason
                .as_ref()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default(),
            differences
                .iter()
                .map(|d| format!("\n  {}", d.describe(crate::rehearse::diff::AFTER_DOWN)))
                .collect::<String>()
        ),
        RunFinished {
            outcome,
            reason,
            exit_code,
            journal,
            ..
        } => format!(
            "run {}: {}{} (exit {exit_code}){}",
            event.run_id,
            outcome.as_str(),
            reason
                .as_ref()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default(),
            journal
                .as_ref()
                .map(|j| format!("\n         journal: {j}"))
                .unwrap_or_default()
        ),
    }
}

/// The versions an undo covers, in words.
fn undo_versions(versions: &[i64]) -> String {
    if versions.is_empty() {
        "every captured version".to_string()
    } else {
        versions
            .iter()
            .map(|v| format!("V{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn undo_predicate(predicate: &Option<String>) -> String {
    predicate
        .as_ref()
        .map(|p| format!(", only changes where {p}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::event::samples;

    #[test]
    fn every_event_kind_has_words() {
        for event in samples::events() {
            let text = text(&event);
            assert!(
                text.len() > 8 && !text.contains("{}"),
                "{}: {text:?}",
                event.kind.name()
            );
        }
    }

    #[test]
    fn a_breaching_sample_gets_a_line_and_a_sample_within_bounds_does_not() {
        let mut events = samples::events();
        let sample = events
            .iter_mut()
            .find(|e| e.kind.name() == "check_sample")
            .unwrap();
        assert_eq!(
            human(sample).unwrap(),
            "[10:11:12] p99_ms breached max 250 with 312.0 (3 in a row, consecutive 3)"
        );
        if let EventKind::CheckSample { assessment, .. } = &mut sample.kind {
            assessment.breaching = false;
            assessment.verdict = None;
        }
        assert_eq!(human(sample), None);
    }

    #[test]
    fn the_end_of_a_run_says_how_and_why() {
        let end = samples::events()
            .into_iter()
            .find(|e| e.kind.name() == "run_finished")
            .unwrap();
        assert_eq!(
            human(&end).unwrap(),
            "[10:11:12] run 0123456789ab: rolled_back — p99 breached; rolled back and confirmed healthy (exit 3)"
        );
    }
}
