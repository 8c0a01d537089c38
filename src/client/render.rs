//! Human-readable text from the API's JSON: one line per event worth a line (as
//! `pgshepherd run` prints on stderr), a run's status, a table of runs.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::run::event::Event;
use crate::run::render;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn n(v: &Value) -> String {
    match v {
        Value::Number(x) => match x.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            Some(f) => format!("{}", (f * 1000.0).round() / 1000.0),
            None => x.to_string(),
        },
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

fn versions(v: &Value) -> String {
    let list: Vec<String> = v
        .as_array()
        .map(|a| a.iter().map(|x| format!("V{}", n(x))).collect())
        .unwrap_or_default();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

fn time(ts: &Value) -> String {
    ts.as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc).format("%H:%M:%S").to_string())
        .unwrap_or_else(|| "--:--:--".into())
}

/// One event from the API as a line, or `None` for events not worth one (plain
/// samples): read back into the run's own [`Event`] type and rendered by the
/// one renderer `pgshepherd run` uses. An event this build does not know (from
/// a newer daemon) still gets a line with its name.
pub fn event_line(e: &Value) -> Option<String> {
    match Event::deserialize(e) {
        Ok(event) => render::human(&event),
        Err(_) => Some(format!(
            "[{}] {}{}",
            time(&e["ts"]),
            s(&e["event"]),
            e["step"]
                .as_str()
                .map(|step| format!(" ({step})"))
                .unwrap_or_default()
        )),
    }
}

fn when(v: &Value) -> String {
    v.as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| {
            t.with_timezone(&Utc)
                .format("%Y-%m-%d %H:%M:%SZ")
                .to_string()
        })
        .unwrap_or_else(|| "-".into())
}

/// `status RUN`: the run in a few labelled lines.
pub fn run_status(v: &Value) -> String {
    let mut out = vec![format!(
        "run {}: plan {} ({}) -> target {}",
        s(&v["id"]),
        s(&v["plan"]["name"]),
        s(&v["plan"]["path"]),
        s(&v["target"])
    )];
    let mut line = |label: &str, text: String| out.push(format!("  {label:<10} {text}"));
    line(
        "phase",
        format!(
            "{} (state {}{})",
            s(&v["phase"]),
            s(&v["state"]),
            v["step"]
                .as_str()
                .map(|st| format!(", step {st}"))
                .unwrap_or_default()
        ),
    );
    line(
        "submitted",
        format!("{} by {}", when(&v["submitted_at"]), s(&v["submitted_by"])),
    );
    if let Some(r) = v["rehearsal"].as_object() {
        let attempts = match r["attempts"].as_i64() {
            Some(a) if a > 1 => format!(" (attempt {a})"),
            _ => String::new(),
        };
        line(
            "rehearsal",
            match r["status"].as_str() {
                Some("pending") => "required; waiting for a daemon to rehearse it".into(),
                Some("running") => format!("running on a scratch copy{attempts}"),
                _ => s(&r["summary"]).to_string(),
            },
        );
        for d in r["differences"].as_array().into_iter().flatten() {
            line("", format!("- {}", s(&d["message"])));
        }
    }
    if v["requires_approval"].as_bool() == Some(true) {
        line(
            "approval",
            match v["approved_by"].as_str() {
                Some(by) => format!("approved by {by} at {}", when(&v["approved_at"])),
                None => "required; not approved yet".into(),
            },
        );
    }
    if let Some(by) = v["abort_requested_by"].as_str() {
        line(
            "abort",
            format!("requested by {by} at {}", when(&v["abort_requested_at"])),
        );
    }
    if let Some(p) = v["progress"].as_object() {
        line(
            "soak",
            format!(
                "{}/{} samples, {}s elapsed",
                n(&p["samples_taken"]),
                n(&p["samples_planned"]),
                p["elapsed_ms"].as_u64().unwrap_or(0) / 1000
            ),
        );
    }
    if let Some(applied) = v["applied"].as_array().filter(|a| !a.is_empty()) {
        line("applied", versions(&Value::Array(applied.clone())));
    }
    if let Some(cause) = v["cause"].as_str() {
        line("cause", cause.to_string());
    }
    for u in v["undos"].as_array().into_iter().flatten() {
        line("undo", undo_status(u));
    }
    for c in v["checks"].as_array().into_iter().flatten() {
        let counts = &c["counts"];
        let state = if c["valid"].as_bool() == Some(false) {
            format!(
                "inconclusive: {}",
                c["reason"].as_str().unwrap_or("unknown")
            )
        } else if c["breaching"].as_bool() == Some(true) {
            format!("BREACHING {} in a row", n(&counts["breaches_in_a_row"]))
        } else {
            "ok".into()
        };
        line(
            "check",
            format!(
                "{} = {} ({state}; {}; {} valid, {} inconclusive samples)",
                s(&c["check"]),
                n(&c["value"]),
                s(&c["thresholds"]),
                n(&counts["valid_samples"]),
                n(&counts["inconclusive_samples"])
            ),
        );
    }
    // The EXPLAIN gate's verdicts, read back into the run's own type so that
    // the figures read as `pgshepherd run` prints them.
    for r in v["facts"]["explain"].as_array().into_iter().flatten() {
        if let Ok(r) = crate::checks::explain::ExplainResult::deserialize(r) {
            line(
                "explain",
                if r.passed {
                    format!("{} passed: {}", r.name, r.figures())
                } else {
                    format!("{} FAILED: {}", r.name, r.failures.join("; "))
                },
            );
        }
    }
    if let Some(outcome) = v["outcome"].as_str() {
        line(
            "outcome",
            format!(
                "{outcome}{} (exit {}) at {}",
                v["reason"]
                    .as_str()
                    .map(|r| format!(" — {r}"))
                    .unwrap_or_default(),
                n(&v["exit_code"]),
                when(&v["finished_at"])
            ),
        );
    }
    if let Some(by) = v["acked_by"].as_str() {
        line("acked", format!("by {by} at {}", when(&v["acked_at"])));
    }
    if let Some(e) = v["escalation"].as_object() {
        let state = match e["status"].as_str() {
            Some("active") => format!(
                "paging: level {} next at {}",
                n(&e["next_level"]),
                when(&e["next_at"])
            ),
            Some("acknowledged") => format!(
                "acknowledged by {} at {}",
                s(&e["acked_by"]),
                when(&e["acked_at"])
            ),
            other => other.unwrap_or("-").to_string(),
        };
        line(
            "escalation",
            format!(
                "policy {} (on {}): {state}; paged {}",
                s(&e["policy"]),
                s(&e["trigger"]),
                e["paged"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .map(|c| s(c).to_string())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "nobody yet".into())
            ),
        );
    }
    for d in v["notifications"].as_array().into_iter().flatten() {
        let result = match d["status"].as_str() {
            Some("delivered") => format!("delivered {}", when(&d["delivered_at"])),
            Some("pending") if d["attempts"].as_i64() == Some(0) => "queued".to_string(),
            Some("pending") if d["last_error"].is_null() => "sending".to_string(),
            Some("pending") => format!(
                "retrying at {} (last: {})",
                when(&d["next_attempt_at"]),
                d["last_error"].as_str().unwrap_or("-")
            ),
            Some(other) => format!("{other}: {}", d["last_error"].as_str().unwrap_or("-")),
            None => "-".into(),
        };
        line(
            "notified",
            format!(
                "{} {} [{} attempt(s)] {result}",
                s(&d["channel"]),
                s(&d["event"]),
                n(&d["attempts"])
            ),
        );
    }
    if let Some(owner) = v["owner"].as_str() {
        line(
            "owner",
            format!(
                "{owner} (epoch {}, lease until {})",
                n(&v["epoch"]),
                when(&v["lease_until"])
            ),
        );
    }
    out.join("\n")
}

/// `list`: one line per run under a header, columns aligned.
pub fn run_table(runs: &[Value]) -> String {
    let header = [
        "ID",
        "PHASE",
        "STATE",
        "TARGET",
        "PLAN",
        "SUBMITTED",
        "BY",
        "OUTCOME",
    ];
    let rows: Vec<[String; 8]> = runs
        .iter()
        .map(|r| {
            [
                s(&r["id"]).to_string(),
                s(&r["phase"]).to_string(),
                s(&r["state"]).to_string(),
                s(&r["target"]).to_string(),
                s(&r["plan"]["name"]).to_string(),
                when(&r["submitted_at"]),
                s(&r["submitted_by"]).to_string(),
                r["outcome"].as_str().unwrap_or("-").to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let fmt = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![fmt(header.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| fmt(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

/// One undo of a run's view (`undos[]`) on a line.
pub fn undo_status(u: &Value) -> String {
    let what = match u["outcome"].as_str() {
        Some(outcome) => format!("{outcome} (exit {})", n(&u["exit_code"])),
        None => s(&u["phase"]).to_string(),
    };
    let report = &u["report"]["total"];
    let counts = if report.is_object() {
        format!(
            ", {} reverted, {} conflict(s), {} already gone",
            n(&report["reverted"]),
            n(&u["report"]["conflicts"]),
            n(&report["already_gone"])
        )
    } else {
        String::new()
    };
    format!(
        "#{} {what}{}: mode {}, asked for by {} at {}{}{counts}{}",
        n(&u["id"]),
        if u["dry_run"].as_bool() == Some(true) {
            " (dry run)"
        } else {
            ""
        },
        s(&u["mode"]),
        s(&u["requested_by"]),
        when(&u["requested_at"]),
        u["approved_by"]
            .as_str()
            .map(|a| format!(", approved by {a}"))
            .unwrap_or_default(),
        u["reason"]
            .as_str()
            .map(|r| format!(" — {r}"))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn events_read_like_run_prints_them() {
        for event in crate::run::event::samples::events() {
            let mut json = serde_json::to_value(&event).unwrap();
            json["seq"] = 7.into();
            assert_eq!(event_line(&json), render::human(&event));
        }
        let unknown = json!({"ts": "x", "event": "something_new", "step": "soak"});
        assert_eq!(
            event_line(&unknown).unwrap(),
            "[--:--:--] something_new (soak)"
        );
    }

    #[test]
    fn status_shows_the_explain_gates_verdicts() {
        let result = crate::run::event::samples::kinds()
            .into_iter()
            .find_map(|k| match k {
                crate::run::EventKind::ExplainChecked { result, .. } => Some(result),
                _ => None,
            })
            .unwrap();
        let v = json!({"id": "0123456789ab", "facts": {"explain": [result]}});
        let status = run_status(&v);
        assert!(
            status.contains(
                "explain    dashboard FAILED: index `idx_jobs_reason` is not used after the change"
            ),
            "{status}"
        );
    }

    #[test]
    fn the_table_aligns_columns() {
        let runs = [
            json!({"id": "0123456789ab", "phase": "queued", "state": "created", "target": "jobs",
                           "plan": {"name": "p"}, "submitted_at": "2026-03-01T10:11:12Z", "submitted_by": "alice",
                           "outcome": null}),
        ];
        let t = run_table(&runs);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("PHASE"), lines[1].find("queued"));
        assert!(lines[1].ends_with('-'));
    }
}
