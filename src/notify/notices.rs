//! Which run events are worth a message, and what the message says.
//!
//! Each notice says what happened, to which target and plan, why, and what to do
//! next. The figures come from the event itself (a breach carries the value, the
//! threshold, the baseline, the counts and the query or URL that measured it), so
//! nobody has to open the plan to understand a page.

use chrono::{DateTime, Utc};

use crate::checks::verdict::{Verdict, num};
use crate::notify::{EscalationStep, Fact, Notice, NoticeKind, Severity};
use crate::run::event::{Decision, Event, EventKind, Outcome};

/// The run a notice is about.
#[derive(Debug, Clone)]
pub struct RunMeta {
    pub run_id: String,
    pub target: String,
    pub plan: String,
}

/// Whether this event can give rise to a notice (cheap; no run data needed).
/// Check samples are not: soak progress comes from [`Progress`].
pub fn is_notable(kind: &EventKind) -> bool {
    use EventKind::*;
    matches!(
        kind,
        RunSubmitted { .. }
            | RunApproved { .. }
            | WaitingForWindow { .. }
            | WindowOpen { .. }
            | BackupVerified { .. }
            | MigrationApplied { .. }
            | SoakStarted { .. }
            | CheckVerdict { .. }
            | ExplainChecked { .. }
            | RollbackStarted { .. }
            | BackupRestored { .. }
            | RollbackFailed { .. }
            | RunFinished { .. }
            | Acknowledged { .. }
            | RehearsalFinished {
                requires_approval: Some(_),
                ..
            }
            | UndoRequested { .. }
            | UndoApproved { .. }
            | UndoStarted {
                request: Some(_),
                ..
            }
            | UndoFinished {
                request: Some(_),
                ..
            }
    )
}

/// Where the runbook links of breach, rollback-failed and needs-human notices
/// point (every notice of the outbox is about a daemon run).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunbookLinks<'a> {
    /// `notifications.runbook_url`: the generic runbook, linked as `{url}#{section}`.
    pub generic: Option<&'a str>,
    /// The daemon's `public_url`: when set, notices link the run's own runbook
    /// page (`{public_url}/runs/{id}/runbook`) instead of the generic one, since
    /// the person paged needs the rollback plan of *this* change.
    pub public_url: Option<&'a str>,
}

/// The notices one event gives rise to (usually none or one; a submission that
/// needs approval gives two).
pub fn from_event(event: &Event, run: &RunMeta, runbook: RunbookLinks<'_>) -> Vec<Notice> {
    use EventKind::*;
    let n = |kind, severity, title: String, summary: String| Notice {
        kind,
        severity,
        ts: event.ts,
        run_id: run.run_id.clone(),
        target: run.target.clone(),
        plan: run.plan.clone(),
        title,
        summary,
        next_step: None,
        runbook: None,
        facts: Vec::new(),
        escalation: None,
    };
    let id = &run.run_id;
    let target = &run.target;
    let plan = &run.plan;
    let mut out = Vec::new();
    match &event.kind {
        RunSubmitted {
            submitted_by,
            requires_approval,
            bundle_sha256,
            rehearsal_required,
            ..
        } => {
            let mut s = n(
                NoticeKind::Submitted,
                Severity::Info,
                format!("Plan {plan} submitted for {target}"),
                format!(
                    "{submitted_by} submitted plan {plan} for {target} as run {id}.{}",
                    if *rehearsal_required {
                        " It is rehearsed on a scratch copy of the target first (up, down, up)."
                    } else {
                        ""
                    }
                ),
            );
            s.facts
                .push(Fact::new("bundle sha256", short(bundle_sha256)));
            out.push(s);
            // A run to be rehearsed asks for approval once it passed, with
            // the rehearsal's result (`rehearsal_finished` below).
            if *requires_approval && !*rehearsal_required {
                let mut a = n(
                    NoticeKind::ApprovalNeeded,
                    Severity::Warning,
                    format!("Approval needed: {plan} on {target}"),
                    format!(
                        "Run {id} waits for approval before it may change {target}. \
                         The approver must hold the approve role and must not be {submitted_by}."
                    ),
                );
                a.next_step = Some(format!(
                    "Review with `pgshepherd status {id}`, then `pgshepherd approve {id}` (or `pgshepherd abort {id}`)."
                ));
                out.push(a);
            }
        }
        // Through the daemon (`requires_approval` set): the result decides
        // whether anyone is asked to approve.
        RehearsalFinished {
            passed,
            differences,
            reason,
            requires_approval: Some(requires_approval),
        } => {
            if *passed && *requires_approval {
                let mut a = n(
                    NoticeKind::ApprovalNeeded,
                    Severity::Warning,
                    format!("Approval needed: {plan} on {target}"),
                    format!(
                        "Run {id} waits for approval before it may change {target}; {}. \
                         The approver must hold the approve role and must not be its submitter.",
                        crate::rehearse::rehearsal::PASSED
                    ),
                );
                a.next_step = Some(format!(
                    "Review with `pgshepherd status {id}`, then `pgshepherd approve {id}` (or `pgshepherd abort {id}`)."
                ));
                out.push(a);
            } else if !*passed {
                let mut f = n(
                    NoticeKind::ApprovalNeeded,
                    Severity::Warning,
                    format!("Rehearsal failed: {plan} on {target}; approval refused"),
                    format!(
                        "Run {id} was rehearsed on a scratch copy of {target}: up, down, up. {}. \
                         It cannot be approved; {target} was not touched.",
                        if differences.is_empty() {
                            "The rehearsal did not complete".to_string()
                        } else {
                            format!(
                                "The down scripts do not give back what the migrations took \
                                 ({} difference(s))",
                                differences.len()
                            )
                        }
                    ),
                );
                for d in differences {
                    f.facts.push(Fact::new(
                        "difference",
                        d.describe(crate::rehearse::diff::AFTER_DOWN),
                    ));
                }
                if let Some(r) = reason {
                    f.facts.push(Fact::new("reason", r.clone()));
                }
                f.next_step = Some(format!(
                    "Abort it with `pgshepherd abort {id}`, fix the down scripts and submit the plan again \
                     (`pgshepherd rehearse PLAN` tries it on a copy first)."
                ));
                out.push(f);
            }
        }
        RunApproved { approved_by } => out.push(n(
            NoticeKind::Approved,
            Severity::Info,
            format!("Approved: {plan} on {target}"),
            format!("{approved_by} approved run {id}; it runs in the next maintenance window."),
        )),
        WaitingForWindow {
            cron,
            timezone,
            opens_at,
        } => {
            let mut w = n(
                NoticeKind::WaitingForWindow,
                Severity::Info,
                format!("Waiting for the window: {plan} on {target}"),
                format!("Run {id} waits for its maintenance window, which opens at {opens_at}."),
            );
            w.facts
                .push(Fact::new("window", format!("{cron} ({timezone})")));
            w.facts.push(Fact::new("opens at", opens_at.clone()));
            out.push(w);
        }
        WindowOpen { closes_at } => out.push(n(
            NoticeKind::WindowOpened,
            Severity::Info,
            format!("Window open: {plan} on {target}"),
            match closes_at {
                Some(c) => {
                    format!("The maintenance window is open until {c}; run {id} starts its change.")
                }
                None => format!("Run {id} starts its change."),
            },
        )),
        BackupVerified {
            path,
            sha256,
            tables,
            duration_ms,
            ..
        } => {
            let mut b = n(
                NoticeKind::BackupVerified,
                Severity::Info,
                format!("Backup verified: {target}"),
                format!(
                    "The backup of {target} was read back and verified ({tables} tables) before the change."
                ),
            );
            b.facts.push(Fact::new("file", file_name(path)));
            b.facts.push(Fact::new("sha256", short(sha256)));
            b.facts.push(Fact::new("took", ms(*duration_ms)));
            out.push(b);
        }
        MigrationApplied {
            version, report, ..
        } => {
            let mut m = n(
                NoticeKind::MigrationApplied,
                Severity::Info,
                format!("Migration V{version} applied on {target}"),
                format!("{} applied to {target} (run {id}).", report.file),
            );
            m.facts.push(Fact::new("took", ms(report.duration_ms)));
            out.push(m);
        }
        SoakStarted {
            duration_s, checks, ..
        } => {
            let names: Vec<&str> = checks.iter().map(|c| c.check.as_str()).collect();
            let mut s = n(
                NoticeKind::SoakStarted,
                Severity::Info,
                format!("Soak started on {target}"),
                format!(
                    "The change is in; watching {} for {} before calling run {id} done. \
                     A breach rolls it back.",
                    names.join(", "),
                    secs(*duration_s)
                ),
            );
            for c in checks {
                s.facts.push(Fact::new(&c.check, c.source.clone()));
            }
            out.push(s);
        }
        CheckVerdict {
            source,
            message,
            verdict,
            decision,
            ..
        } => {
            let mut b = n(
                NoticeKind::Breach,
                Severity::Critical,
                format!("Breach on {target}: {}", verdict.check()),
                format!("{message}. Run {id} {}.", consequence(*decision)),
            );
            b.facts = verdict_facts(verdict);
            b.facts.push(Fact::new("measured by", source.clone()));
            link_runbook(&mut b, runbook, "breach");
            out.push(b);
        }
        // A query that fails the EXPLAIN gate is a breach like any check's.
        ExplainChecked {
            result,
            decision: Some(decision),
        } => {
            let mut b = n(
                NoticeKind::Breach,
                Severity::Critical,
                format!("Breach on {target}: explain {}", result.name),
                format!(
                    "The EXPLAIN gate failed after the migrations: {}. Run {id} {}.",
                    result.failures.join("; "),
                    consequence(*decision)
                ),
            );
            b.facts = explain_facts(result);
            link_runbook(&mut b, runbook, "breach");
            out.push(b);
        }
        RollbackStarted {
            strategy, cause, ..
        } => out.push(n(
            NoticeKind::RollbackStarted,
            Severity::Warning,
            format!("Rolling back {plan} on {target}"),
            format!(
                "Run {id} is rolling back ({}): {cause}",
                serde_json::to_value(strategy)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ),
        )),
        BackupRestored {
            path,
            snapshot,
            discarded_writes,
            sequences_advanced,
            stall_ms,
            ..
        } => {
            let discarded = match discarded_writes {
                Some(d) => crate::steps::backup::describe_discarded(d),
                None => "rows written since the backup: not counted".to_string(),
            };
            let kept = match snapshot {
                Some(s) => format!(
                    " The database as it was just before the restore is kept in {}.",
                    s.path
                ),
                None => String::new(),
            };
            let mut r = n(
                NoticeKind::BackupRestored,
                Severity::Warning,
                format!("Backup restored on {target}"),
                format!(
                    "Run {id} restored {target} from {}: {discarded}.{kept}",
                    file_name(path)
                ),
            );
            if let Some(s) = snapshot {
                r.facts.push(Fact::new("snapshot", s.path.clone()));
            }
            if let Some(ms) = stall_ms {
                r.facts.push(Fact::new("writers blocked", self::ms(*ms)));
            }
            if !sequences_advanced.is_empty() {
                r.facts.push(Fact::new(
                    "sequences moved forward",
                    sequences_advanced
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                ));
            }
            if discarded_writes.as_ref().is_some_and(|d| !d.is_empty()) {
                r.next_step = Some(format!(
                    "The discarded rows are in the snapshot: restore it into a scratch database \
                     (`pg_restore --dbname=SCRATCH FILE`) and re-apply what users wrote. See `pgshepherd logs {id}`."
                ));
            }
            out.push(r);
        }
        RollbackFailed { reason } => {
            let mut f = n(
                NoticeKind::RollbackFailed,
                Severity::Critical,
                format!("Rollback FAILED on {target}"),
                format!("Run {id} could not roll back: {reason}. {target} may be left changed."),
            );
            f.next_step = Some(format!(
                "Acknowledge with `pgshepherd ack {id}`, inspect with `pgshepherd status {id}` and `pgshepherd logs {id}`, and restore {target} by hand."
            ));
            link_runbook(&mut f, runbook, "rollback-failed");
            out.push(f);
        }
        RunFinished {
            outcome, reason, ..
        } => {
            let why = reason.clone().unwrap_or_default();
            match outcome {
                Outcome::Succeeded => out.push(n(
                    NoticeKind::Succeeded,
                    Severity::Info,
                    format!("Succeeded: {plan} on {target}"),
                    format!("Run {id} migrated {target} and the soak passed."),
                )),
                Outcome::RolledBack => {
                    let mut r = n(
                        NoticeKind::RollbackFinished,
                        Severity::Warning,
                        format!("Rolled back: {plan} on {target}"),
                        format!(
                            "Run {id} was undone and {target} verified back at its starting version: {why}"
                        ),
                    );
                    r.next_step = Some(format!(
                        "Nothing is urgent. Read why with `pgshepherd logs {id}` before resubmitting."
                    ));
                    out.push(r);
                }
                Outcome::Stopped => {
                    let mut s = n(
                        NoticeKind::Stopped,
                        Severity::Warning,
                        format!("Stopped: {plan} on {target}"),
                        format!("Run {id} stopped before changing anything: {why}"),
                    );
                    s.next_step = Some(format!(
                        "{target} is exactly as it was. Fix the cause, then resubmit."
                    ));
                    out.push(s);
                }
                Outcome::NeedsHuman => {
                    let mut h = n(
                        NoticeKind::NeedsHuman,
                        Severity::Critical,
                        format!("Needs a human: {plan} on {target}"),
                        format!(
                            "Run {id} stopped and needs a person: {why}. {target} may be changed."
                        ),
                    );
                    h.next_step = Some(format!(
                        "Acknowledge with `pgshepherd ack {id}`, then read `pgshepherd status {id}` and `pgshepherd logs {id}`."
                    ));
                    link_runbook(&mut h, runbook, "needs-human");
                    out.push(h);
                }
            }
        }
        Acknowledged { acked_by } => out.push(n(
            NoticeKind::Acknowledged,
            Severity::Info,
            format!("Acknowledged: {plan} on {target}"),
            format!("{acked_by} acknowledged run {id}; escalation stops."),
        )),
        // Undos through the daemon (`request` set); a rollback's own give-back
        // is told by the rollback's notices.
        UndoRequested {
            request,
            requested_by,
            dry_run,
            requires_approval: true,
            mode,
            predicate,
            ..
        } => {
            let mut a = n(
                NoticeKind::ApprovalNeeded,
                Severity::Warning,
                format!(
                    "Approval needed: undo{} of {plan} on {target}",
                    if *dry_run { " (dry run)" } else { "" }
                ),
                format!(
                    "{requested_by} asked to undo the data changes of run {id} on {target} \
                     (undo #{request}, mode {}). It waits for approval by someone with the \
                     approve role other than {requested_by}.",
                    mode.as_str()
                ),
            );
            if let Some(p) = predicate {
                a.facts.push(Fact::new("where", p.clone()));
            }
            a.next_step = Some(format!(
                "Review with `pgshepherd status {id}`, then `pgshepherd approve {id}` (or `pgshepherd abort {id}` to call it off)."
            ));
            out.push(a);
        }
        UndoApproved {
            request,
            approved_by,
        } => out.push(n(
            NoticeKind::Approved,
            Severity::Info,
            format!("Approved: undo of {plan} on {target}"),
            format!("{approved_by} approved undo #{request} of run {id}; it runs as soon as {target} is free."),
        )),
        UndoStarted {
            request: Some(request),
            mode,
            dry_run,
            attempt,
            ..
        } => {
            let again = match attempt {
                Some(n) if *n > 1 => format!(
                    " This is attempt {n}: the daemon running the previous one stopped before it ended, and that attempt changed nothing."
                ),
                _ => String::new(),
            };
            out.push(n(
                NoticeKind::UndoStarted,
                Severity::Info,
                format!(
                    "Undo{} started: {plan} on {target}",
                    if *dry_run { " (dry run)" } else { "" }
                ),
                format!(
                    "Undo #{request} of run {id} is giving back the rows its migrations changed on {target}, \
                     keeping what users wrote since (mode {}).{again}",
                    mode.as_str()
                ),
            ));
        }
        UndoFinished {
            request: Some(request),
            outcome,
            exit_code,
            dry_run,
            tables,
            conflicts,
            conflicts_file,
            reason,
            ..
        } => {
            let severity = if *exit_code == 0 {
                Severity::Info
            } else {
                Severity::Warning
            };
            let dry = if *dry_run { " (dry run, nothing changed)" } else { "" };
            let mut f = n(
                NoticeKind::UndoFinished,
                severity,
                format!("Undo {outcome}{dry}: {plan} on {target}"),
                format!(
                    "Undo #{request} of run {id} on {target}: {outcome}{}.",
                    reason.as_ref().map(|r| format!(" — {r}")).unwrap_or_default()
                ),
            );
            let mut total = crate::undo::revert::Counts::default();
            for c in tables.values() {
                total.reverted += c.reverted;
                total.already_gone += c.already_gone;
                total.filtered_out += c.filtered_out;
                total.already_undone += c.already_undone;
            }
            f.facts.push(Fact::new("reverted", total.reverted.to_string()));
            f.facts.push(Fact::new("conflicts", conflicts.to_string()));
            f.facts
                .push(Fact::new("already gone", total.already_gone.to_string()));
            if total.filtered_out > 0 {
                f.facts
                    .push(Fact::new("left out by where", total.filtered_out.to_string()));
            }
            if total.already_undone > 0 {
                f.facts.push(Fact::new(
                    "undone before",
                    total.already_undone.to_string(),
                ));
            }
            for (table, c) in tables {
                f.facts.push(Fact::new(
                    table,
                    format!("{} reverted, {} conflict(s)", c.reverted, c.conflicts),
                ));
            }
            if let Some(file) = conflicts_file {
                f.facts.push(Fact::new("conflicts file", file_name(file)));
            }
            if *conflicts > 0 {
                f.next_step = Some(format!(
                    "The conflicting rows were left as users left them; see `pgshepherd status {id}` \
                     and the conflicts file on the daemon's host."
                ));
            }
            out.push(f);
        }
        _ => {}
    }
    out
}

/// An escalation page: the notice that triggered it, re-addressed to a level.
pub fn page(trigger: &Notice, step: EscalationStep, now: DateTime<Utc>) -> Notice {
    let mut p = trigger.clone();
    p.kind = NoticeKind::Escalation;
    p.severity = Severity::Critical;
    p.ts = now;
    p.title = format!(
        "[page, level {} of {}] {}",
        step.level, step.levels, trigger.title
    );
    p.summary = format!(
        "{} Nobody has acknowledged yet (escalation policy {}, pass {}).",
        trigger.summary, step.policy, step.pass
    );
    p.next_step = Some(format!(
        "Acknowledge with `pgshepherd ack {}` to stop the paging.",
        trigger.run_id
    ));
    p.escalation = Some(step);
    p
}

/// What the run does about a verdict, from the decision its event records.
fn consequence(decision: Decision) -> &'static str {
    match decision {
        Decision::HoldForHuman => "is held for a human",
        Decision::RollbackUnhealthy => {
            "was already rolled back, but the target is still unhealthy: a person must look"
        }
        Decision::RollBack => "now applies its plan's rollback strategy",
    }
}

fn verdict_facts(verdict: &Verdict) -> Vec<Fact> {
    let mut facts = Vec::new();
    match verdict {
        Verdict::Breach {
            rule,
            threshold,
            value,
            baseline,
            in_a_row,
            needed,
            reason,
            ..
        } => {
            facts.push(Fact::new(
                "value",
                value.map(num).unwrap_or_else(|| "none".into()),
            ));
            facts.push(Fact::new(
                "threshold",
                threshold
                    .clone()
                    .unwrap_or_else(|| rule.as_str().to_string()),
            ));
            if let Some(b) = baseline {
                facts.push(Fact::new("baseline", num(*b)));
            }
            facts.push(Fact::new(
                "count",
                format!("{in_a_row} in a row (needed {needed})"),
            ));
            if let Some(r) = reason {
                facts.push(Fact::new("reason", r.clone()));
            }
        }
        Verdict::Hold {
            inconclusive_in_a_row,
            max_inconclusive,
            reason,
            ..
        } => {
            facts.push(Fact::new(
                "count",
                format!("{inconclusive_in_a_row} inconclusive in a row (max_inconclusive {max_inconclusive})"),
            ));
            facts.push(Fact::new("reason", reason.clone()));
        }
        Verdict::InsufficientSamples {
            valid_samples,
            min_samples,
            total_samples,
            ..
        } => {
            facts.push(Fact::new(
                "count",
                format!(
                    "{valid_samples} valid of {total_samples} samples (min_samples {min_samples})"
                ),
            ));
        }
    }
    facts
}

fn explain_facts(r: &crate::checks::explain::ExplainResult) -> Vec<Fact> {
    let mut facts = Vec::new();
    let figures = r.figures();
    if !figures.is_empty() {
        facts.push(Fact::new("measured", figures));
    }
    let mut limits = Vec::new();
    if let Some(i) = &r.expect_index {
        limits.push(format!("uses index {i}"));
    }
    if let Some(m) = r.max_cost_ratio {
        limits.push(format!("max_cost_ratio {m}"));
    }
    if let Some(m) = r.max_time_ratio {
        limits.push(format!("max_time_ratio {m}"));
    }
    if !limits.is_empty() {
        facts.push(Fact::new("threshold", limits.join(", ")));
    }
    facts.push(Fact::new("plan before", r.before.short()));
    facts.push(Fact::new("plan after", r.after.short()));
    facts.push(Fact::new("query", r.sql.clone()));
    facts
}

/// Point a notice that needs a person at a runbook: the run's own page when
/// the daemon knows its public address, else the generic runbook's `section`
/// plus where this run's runbook can be read (the API or the CLI).
fn link_runbook(notice: &mut Notice, links: RunbookLinks<'_>, section: &str) {
    let id = &notice.run_id;
    notice.runbook = Some(match (links.public_url, links.generic) {
        (Some(public), _) => format!("{}/runs/{id}/runbook", public.trim_end_matches('/')),
        (None, Some(b)) => format!("{}#{section}", b.trim_end_matches('#')),
        (None, None) => format!("pgshepherd docs/runbook.md#{section}"),
    });
    if links.public_url.is_none() {
        notice.facts.push(Fact::new(
            "this run's runbook",
            format!("`GET /v1/runs/{id}/runbook` or `pgshepherd runbook PLAN --run {id}`"),
        ));
    }
}

fn short(sha: &str) -> String {
    sha.chars().take(12).collect()
}

fn file_name(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

fn ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        secs(ms as f64 / 1000.0)
    }
}

/// "45s", "12m 5s", "1h 0m".
pub(crate) fn secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checks::verdict::Rule;
    use crate::run::event::Step;

    pub(crate) fn run() -> RunMeta {
        RunMeta {
            run_id: "0123456789ab".into(),
            target: "orders".into(),
            plan: "add-index".into(),
        }
    }

    pub(crate) fn event(step: Option<Step>, kind: EventKind) -> Event {
        Event {
            ts: Utc::now(),
            run_id: "0123456789ab".into(),
            step,
            kind,
        }
    }

    #[test]
    fn a_breach_says_what_why_and_with_which_figures() {
        let verdict = Verdict::Breach {
            check: "p99_ms".into(),
            rule: Rule::Max,
            threshold: Some("max 250.0".into()),
            limit: Some(250.0),
            value: Some(412.0),
            baseline: Some(180.0),
            in_a_row: 3,
            needed: 3,
            reason: None,
        };
        let e = event(
            Some(Step::Soak),
            EventKind::CheckVerdict {
                check: "p99_ms".into(),
                source: "sql: SELECT p99 FROM latency".into(),
                message: verdict.message(),
                decision: Decision::RollBack,
                verdict,
            },
        );
        let n = from_event(
            &e,
            &run(),
            RunbookLinks {
                generic: Some("https://wiki/runbook"),
                public_url: None,
            },
        );
        assert_eq!(n.len(), 1);
        let b = &n[0];
        assert_eq!(b.kind, NoticeKind::Breach);
        assert_eq!(b.severity, Severity::Critical);
        assert!(b.title.contains("orders") && b.title.contains("p99_ms"));
        assert!(b.summary.contains("rollback strategy"), "{}", b.summary);
        let fact = |l: &str| {
            b.facts
                .iter()
                .find(|f| f.label == l)
                .map(|f| f.value.clone())
        };
        assert_eq!(fact("value").as_deref(), Some("412.0"));
        assert_eq!(fact("threshold").as_deref(), Some("max 250.0"));
        assert_eq!(fact("baseline").as_deref(), Some("180.0"));
        assert_eq!(fact("count").as_deref(), Some("3 in a row (needed 3)"));
        assert_eq!(
            fact("measured by").as_deref(),
            Some("sql: SELECT p99 FROM latency")
        );
        assert_eq!(b.runbook.as_deref(), Some("https://wiki/runbook#breach"));
        assert_eq!(
            fact("this run's runbook").as_deref(),
            Some(
                "`GET /v1/runs/0123456789ab/runbook` or `pgshepherd runbook PLAN --run 0123456789ab`"
            )
        );
    }

    #[test]
    fn with_a_public_url_pages_link_the_runs_own_runbook_page() {
        let links = RunbookLinks {
            generic: Some("https://wiki/runbook"),
            public_url: Some("https://pgshepherd.example.com/"),
        };
        let page = "https://pgshepherd.example.com/runs/0123456789ab/runbook";
        let finished = |outcome| {
            event(
                None,
                EventKind::RunFinished {
                    outcome,
                    reason: Some("rollback strategy hold".into()),
                    exit_code: 4,
                    applied: vec![1],
                    backup: None,
                    journal: None,
                },
            )
        };
        let failed = event(
            Some(Step::Rollback),
            EventKind::RollbackFailed {
                reason: "down script failed".into(),
            },
        );
        let breach = crate::run::event::samples::events()
            .into_iter()
            .find(|e| e.kind.name() == "check_verdict")
            .unwrap();
        for e in [finished(Outcome::NeedsHuman), failed, breach] {
            let n = from_event(&e, &run(), links);
            assert_eq!(n.len(), 1, "{:?}", e.kind.name());
            assert_eq!(n[0].runbook.as_deref(), Some(page), "{:?}", n[0].kind);
            // The page is the run's runbook: no second pointer to it.
            assert!(n[0].facts.iter().all(|f| f.label != "this run's runbook"));
        }
        // Notices that need nobody carry no runbook.
        let ok = from_event(&finished(Outcome::Succeeded), &run(), links);
        assert_eq!(ok[0].runbook, None);
    }

    #[test]
    fn a_failed_explain_gate_pages_as_a_breach_with_both_plans() {
        let kind = crate::run::event::samples::kinds()
            .into_iter()
            .find(|k| k.name() == "explain_checked")
            .unwrap();
        let n = from_event(
            &event(Some(Step::Explain), kind.clone()),
            &run(),
            RunbookLinks::default(),
        );
        assert_eq!(n.len(), 1);
        let b = &n[0];
        assert_eq!(
            (b.kind, b.severity),
            (NoticeKind::Breach, Severity::Critical)
        );
        assert!(b.title.ends_with("explain dashboard"), "{}", b.title);
        assert!(
            b.summary
                .contains("index `idx_jobs_reason` is not used after the change")
                && b.summary.contains("rollback strategy"),
            "{}",
            b.summary
        );
        let fact = |l: &str| {
            b.facts
                .iter()
                .find(|f| f.label == l)
                .map(|f| f.value.as_str())
        };
        assert!(fact("plan before").unwrap().contains("Seq Scan on jobs"));
        assert!(
            fact("plan after")
                .unwrap()
                .starts_with("Aggregate (cost 560.00)")
        );
        assert_eq!(
            fact("threshold"),
            Some("uses index idx_jobs_reason, max_cost_ratio 1.5")
        );
        // A query that passed is no news.
        let EventKind::ExplainChecked { mut result, .. } = kind else {
            unreachable!()
        };
        result.passed = true;
        let passed = EventKind::ExplainChecked {
            result,
            decision: None,
        };
        assert!(
            from_event(
                &event(Some(Step::Explain), passed),
                &run(),
                RunbookLinks::default()
            )
            .is_empty()
        );
    }

    #[test]
    fn needs_human_names_the_next_step_and_a_submission_asks_for_approval() {
        let e = event(
            None,
            EventKind::RunFinished {
                outcome: Outcome::NeedsHuman,
                reason: Some("rollback strategy hold".into()),
                exit_code: 4,
                applied: vec![1],
                backup: None,
                journal: None,
            },
        );
        let n = from_event(&e, &run(), RunbookLinks::default());
        assert_eq!(n[0].kind, NoticeKind::NeedsHuman);
        assert!(
            n[0].next_step
                .as_deref()
                .unwrap()
                .contains("pgshepherd ack 0123456789ab")
        );
        assert_eq!(
            n[0].runbook.as_deref(),
            Some("pgshepherd docs/runbook.md#needs-human")
        );

        let s = event(
            None,
            EventKind::RunSubmitted {
                plan_name: "add-index".into(),
                target: "orders".into(),
                submitted_by: "alice".into(),
                bundle_sha256: "ab".repeat(32),
                requires_approval: true,
                rehearsal_required: false,
            },
        );
        let kinds: Vec<NoticeKind> = from_event(&s, &run(), RunbookLinks::default())
            .iter()
            .map(|n| n.kind)
            .collect();
        assert_eq!(kinds, [NoticeKind::Submitted, NoticeKind::ApprovalNeeded]);
        // Check samples are never notable on their own.
        assert!(!is_notable(&EventKind::LockAcquired { waited_ms: 1 }));
    }

    #[test]
    fn a_rehearsed_run_asks_for_approval_with_the_rehearsals_result() {
        let submitted = event(
            None,
            EventKind::RunSubmitted {
                plan_name: "add-index".into(),
                target: "orders".into(),
                submitted_by: "alice".into(),
                bundle_sha256: "ab".repeat(32),
                requires_approval: true,
                rehearsal_required: true,
            },
        );
        // Not at submission: the rehearsal comes first.
        let kinds: Vec<NoticeKind> = from_event(&submitted, &run(), RunbookLinks::default())
            .iter()
            .map(|n| n.kind)
            .collect();
        assert_eq!(kinds, [NoticeKind::Submitted]);

        let finished = |passed, differences| {
            event(
                None,
                EventKind::RehearsalFinished {
                    passed,
                    differences,
                    reason: None,
                    requires_approval: Some(passed),
                },
            )
        };
        let n = from_event(&finished(true, vec![]), &run(), RunbookLinks::default());
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].kind, NoticeKind::ApprovalNeeded);
        assert!(
            n[0].summary
                .contains("rehearsal passed on a scratch copy: up, down, up, catalog identical"),
            "{}",
            n[0].summary
        );

        let forgot = crate::rehearse::Difference {
            kind: crate::rehearse::ObjectKind::Index,
            object: "idx_rental_return_date".into(),
            change: crate::rehearse::Change::Left,
            changed_by: Some("V2__return_date_index".into()),
        };
        let n = from_event(
            &finished(false, vec![forgot]),
            &run(),
            RunbookLinks::default(),
        );
        assert_eq!(n.len(), 1);
        let f = &n[0];
        assert_eq!(
            (f.kind, f.severity),
            (NoticeKind::ApprovalNeeded, Severity::Warning)
        );
        assert!(f.title.contains("approval refused"), "{}", f.title);
        assert_eq!(
            f.facts[0].value,
            "index `idx_rental_return_date` still exists after V2__return_date_index's down script"
        );
        assert!(
            f.next_step
                .as_deref()
                .unwrap()
                .contains("pgshepherd abort 0123456789ab")
        );
        // `pgshepherd rehearse` (no daemon) sends no message.
        let cli = event(
            None,
            EventKind::RehearsalFinished {
                passed: false,
                differences: Vec::new(),
                reason: None,
                requires_approval: None,
            },
        );
        assert!(!is_notable(&cli.kind));
    }

    #[test]
    fn a_restore_says_what_it_discarded_and_where_the_snapshot_is() {
        let e = crate::run::event::samples::events()
            .into_iter()
            .find(|e| e.kind.name() == "backup_restored")
            .unwrap();
        assert!(is_notable(&e.kind));
        let n = from_event(&e, &run(), RunbookLinks::default());
        assert_eq!(n.len(), 1);
        let r = &n[0];
        assert_eq!(
            (r.kind, r.severity),
            (NoticeKind::BackupRestored, Severity::Warning)
        );
        assert!(
            r.summary.contains(
                "70 row write(s) since the backup discarded (public.rental: 67 inserted, 3 updated"
            ) && r
                .summary
                .contains("/backups/a.pre-restore-20260301T101112.000Z.dump"),
            "{}",
            r.summary
        );
        let fact = |l: &str| {
            r.facts
                .iter()
                .find(|f| f.label == l)
                .map(|f| f.value.clone())
        };
        assert_eq!(fact("writers blocked").as_deref(), Some("85 ms"));
        assert_eq!(
            fact("sequences moved forward").as_deref(),
            Some("public.rental_rental_id_seq 16049 → 16116")
        );
        assert!(r.next_step.as_deref().unwrap().contains("pg_restore"));
    }
}
