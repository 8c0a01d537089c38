//! `run --dry-run`: what a run would do, checked against the live target, without
//! changing anything.

use serde_json::{Value, json};

use crate::migrations::Migration;
use crate::plan::RollbackStrategy;
use crate::steps::StepContext;
use crate::steps::backup::Readiness as RestoreReadiness;
use crate::steps::soak::Monitor;

/// What preflight found the live target's role lacking, for the report.
pub struct Readiness<'a> {
    /// For `restore`: what the role would lack to restore a backup.
    pub restore: Option<&'a RestoreReadiness>,
    /// Why checks that count other sessions could not see them (a run refuses).
    pub sessions: Option<&'a str>,
}

/// The pending migrations with their SQL and directives, the rollback strategy and
/// whether it can work (every down script exists; for `restore`, what the
/// target's role would lack to restore a backup), the checks with their
/// thresholds, whether the role can see what they count, the baseline each
/// check measures right now, and the EXPLAIN gate's rules with each query's
/// plan right now.
pub async fn report(
    ctx: &StepContext<'_>,
    pending: &[&Migration],
    applied: &[i64],
    ready: Readiness<'_>,
) -> Value {
    let restore = ready.restore;
    let plan = ctx.plan;
    let migrations: Vec<Value> = pending
        .iter()
        .map(|m| {
            json!({
                "version": m.version,
                "label": m.label(),
                "file": m.up.file,
                "checksum": m.up.checksum,
                "transactional": m.up.transactional,
                "sql": m.up.sql,
                "down_file": m.down.as_ref().map(|d| &d.file),
                "down_transactional": m.down.as_ref().map(|d| d.transactional),
                "verify_file": m.verify.as_ref().map(|v| &v.file),
            })
        })
        .collect();
    let missing_down: Vec<String> = pending
        .iter()
        .filter(|m| m.down.is_none() && m.up.capture.is_empty())
        .map(|m| m.label())
        .collect();
    let mut monitor = Monitor::new(&plan.soak.checks, ctx.dsn);
    let baseline_error = monitor
        .measure_baseline(ctx, plan.soak.baseline_samples, plan.soak.interval)
        .await
        .err()
        .map(|e| e.to_string());
    let checks: Vec<Value> = monitor
        .check_plans()
        .into_iter()
        .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
        .collect();
    let rollback_ready = match plan.rollback.strategy {
        RollbackStrategy::Down => missing_down.is_empty(),
        RollbackStrategy::Restore => {
            plan.backup.enabled
                && plan.rollback.allow_data_loss
                && restore.is_none_or(RestoreReadiness::ready)
        }
        RollbackStrategy::Hold => true,
    };
    ctx.events.progress(&format!(
        "  dry run: {} pending migration(s), rollback {} {}",
        pending.len(),
        plan.rollback.strategy.as_str(),
        if rollback_ready { "ready" } else { "NOT ready" }
    ));
    if let Some(readiness) = restore {
        for problem in &readiness.problems {
            ctx.events
                .progress(&format!("  restore NOT ready: {problem}"));
        }
        for change in &readiness.owner_changes {
            ctx.events.progress(&format!("  note: {change}"));
        }
    }
    if let Some(reason) = ready.sessions {
        ctx.events
            .progress(&format!("  checks NOT ready: {reason}"));
    }
    for m in pending {
        ctx.events.progress(&format!(
            "  would apply {}{}{}:\n{}",
            m.label(),
            if m.up.transactional {
                ""
            } else {
                " (no transaction)"
            },
            m.down
                .as_ref()
                .map(|d| format!(", undone by {}", d.file))
                .unwrap_or_else(|| ", NO down script".into()),
            indent(&m.up.sql)
        ));
    }
    for (check, (_, baseline)) in plan.soak.checks.iter().zip(monitor.baselines()) {
        let state = crate::checks::CheckState::new(check, baseline);
        let bounds: Vec<&str> = state.bounds().iter().map(|b| b.text.as_str()).collect();
        ctx.events.progress(&format!(
            "  would watch {} ({}): breach at {}, {} in a row; baseline now {}",
            check.name,
            check.source.describe().lines().next().unwrap_or_default(),
            if bounds.is_empty() {
                "no bound (no baseline)".to_string()
            } else {
                bounds.join(" or ")
            },
            check.consecutive,
            baseline
                .map(crate::checks::verdict::num)
                .unwrap_or_else(|| "not measurable".into()),
        ));
    }
    let explain = explain_report(ctx).await;
    json!({
        "applied": applied,
        "pending": migrations,
        "rollback": {
            "strategy": plan.rollback.strategy,
            "allow_data_loss": plan.rollback.allow_data_loss,
            "missing_down_scripts": missing_down,
            "ready": rollback_ready,
            "restore": restore,
            "confirm_s": plan.rollback.confirm.as_secs_f64(),
        },
        "backup": plan.backup,
        "lock": plan.lock,
        "statement_timeout_s": plan.statement_timeout.as_secs_f64(),
        "explain": explain,
        "soak": {
            "duration_s": plan.soak.duration.as_secs_f64(),
            "interval_s": plan.soak.interval.as_secs_f64(),
            "checks": checks,
            "baseline_error": baseline_error,
            "sessions_hidden": ready.sessions,
        },
    })
}

/// What the EXPLAIN gate would do, with each query's plan right now (planned
/// only: a dry run never executes the query, even for `analyze`).
async fn explain_report(ctx: &StepContext<'_>) -> Vec<Value> {
    let plan = ctx.plan;
    let now = crate::steps::explain::preview(ctx).await;
    let mut out = Vec::new();
    for (q, m) in plan.explain.iter().zip(now) {
        let mut rules = Vec::new();
        if let Some(i) = &q.expect_index {
            let now = match &m.plan {
                Some(p) if p.uses_index(i) => "used now",
                Some(_) => "not used now",
                None => "no plan now",
            };
            rules.push(format!("the plan must use index {i} ({now})"));
        }
        if let Some(r) = q.max_cost_ratio {
            rules.push(format!("total cost at most x{r} of the cost before"));
        }
        if let Some(r) = q.max_time_ratio {
            rules.push(format!("execution time at most x{r} of the time before"));
        }
        if q.analyze {
            rules.push("execution times recorded (EXPLAIN ANALYZE, read-only)".into());
        }
        if rules.is_empty() {
            rules.push("the query must still plan".into());
        }
        ctx.events.progress(&format!(
            "  would explain {} with the baselines and after the migrations, before the soak \
             (timeout {}); a failure rolls back: {}\n      now: {}",
            q.name,
            crate::plan::duration::format(q.timeout),
            rules.join("; "),
            m.short()
        ));
        out.push(json!({
            "name": q.name,
            "sql": q.sql,
            "expect_index": q.expect_index,
            "max_cost_ratio": q.max_cost_ratio,
            "analyze": q.analyze,
            "max_time_ratio": q.max_time_ratio,
            "timeout_s": q.timeout.as_secs_f64(),
            "index_used_now": q.expect_index.as_deref().and_then(|i| m.plan.as_ref().map(|p| p.uses_index(i))),
            "now": m,
        }));
    }
    out
}

fn indent(sql: &str) -> String {
    sql.lines()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
