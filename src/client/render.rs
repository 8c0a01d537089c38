//! Human-readable text from the API's JSON: one line per event worth a line (as
//! `pgshepherd run` prints on stderr), a run's status, a table of runs.

use chrono::{DateTime, Utc};
use serde_json::Value;

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

/// One event as a line, or `None` for events not worth one (plain samples).
pub fn event_line(e: &Value) -> Option<String> {
    let text = match s(&e["event"]) {
        "run_submitted" => format!(
            "submitted plan {} for {} by {}{}",
            s(&e["plan_name"]),
            s(&e["target"]),
            s(&e["submitted_by"]),
            if e["requires_approval"].as_bool() == Some(true) {
                "; waiting for approval"
            } else {
                ""
            }
        ),
        "run_approved" => format!("approved by {}", s(&e["approved_by"])),
        "abort_requested" => format!("abort requested by {}", s(&e["requested_by"])),
        "acknowledged" => format!("acknowledged by {}", s(&e["acked_by"])),
        "run_resumed" => format!(
            "taken by {} (epoch {}) at {}: {}",
            s(&e["owner"]),
            n(&e["epoch"]),
            s(&e["from_state"]),
            s(&e["detail"])
        ),
        "run_started" => format!(
            "run {} {}plan {} on {} (at {}; pending: {}; rollback: {})",
            s(&e["run_id"]),
            if e["dry_run"].as_bool() == Some(true) {
                "(dry run) "
            } else {
                ""
            },
            s(&e["plan_name"]),
            s(&e["database"]),
            e["applied"]
                .as_array()
                .and_then(|a| a.last())
                .map_or("nothing applied".to_string(), |v| format!("V{}", n(v))),
            e["pending"]
                .as_array()
                .filter(|a| !a.is_empty())
                .map_or("none".to_string(), |a| {
                    a.iter().map(s).collect::<Vec<_>>().join(", ")
                }),
            s(&e["rollback_strategy"])
        ),
        "waiting_for_window" => format!(
            "waiting for the window ({} {}): opens {}",
            s(&e["cron"]),
            s(&e["timezone"]),
            s(&e["opens_at"])
        ),
        "window_open" => match e["closes_at"].as_str() {
            Some(c) => format!("window open until {c}"),
            None => "window open".into(),
        },
        "lock_busy" => {
            let h = &e["holder"];
            format!(
                "target locked by {} (pid {}); waiting",
                match s(&h["application_name"]) {
                    "" => "an unnamed session",
                    app => app,
                },
                n(&h["pid"])
            )
        }
        "lock_acquired" => format!("lock acquired ({} ms)", n(&e["waited_ms"])),
        "baseline_measured" => format!(
            "baseline {} = {} ({} valid samples)",
            s(&e["check"]),
            n(&e["baseline"]),
            n(&e["valid_samples"])
        ),
        "backup_started" => format!(
            "backup started ({}, compression {}) into {}",
            s(&e["format"]),
            n(&e["compression"]),
            s(&e["directory"])
        ),
        "backup_written" => format!(
            "backup written: {} ({:.1} MB, sha256 {}…, {:.1}s)",
            s(&e["path"]),
            e["size_bytes"].as_f64().unwrap_or(0.0) / 1e6,
            s(&e["sha256"]).chars().take(12).collect::<String>(),
            e["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0
        ),
        "backup_verified" => format!(
            "backup verified: checksum, table of contents ({} tables) and every data block read back ({:.1}s)",
            n(&e["tables"]),
            e["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0
        ),
        "backup_failed" => format!("BACKUP FAILED: {}", s(&e["reason"])),
        "backup_pruned" => format!(
            "pruned {} old backup(s)",
            e["removed"].as_array().map_or(0, Vec::len)
        ),
        "migration_started" => format!(
            "applying {}{}",
            s(&e["file"]),
            if e["transactional"].as_bool() == Some(false) {
                " (no transaction)"
            } else {
                ""
            }
        ),
        "migration_retry" | "rollback_retry" => format!(
            "{}V{}: {} — attempt {}/{}",
            if s(&e["event"]) == "rollback_retry" {
                "undo "
            } else {
                ""
            },
            n(&e["version"]),
            s(&e["error"]),
            e["attempt"].as_u64().unwrap_or(0) + 1,
            n(&e["of"])
        ),
        "migration_applied" => format!(
            "applied {} in {} ms ({} attempt{})",
            s(&e["file"]),
            n(&e["duration_ms"]),
            n(&e["attempts"]),
            if e["attempts"].as_u64() == Some(1) {
                ""
            } else {
                "s"
            }
        ),
        "migration_failed" => format!("MIGRATION FAILED: {}: {}", s(&e["file"]), s(&e["message"])),
        "verify_passed" => format!(
            "verified by {} ({} ms)",
            s(&e["file"]),
            n(&e["duration_ms"])
        ),
        "verify_failed" => format!("VERIFY FAILED: {}: {}", s(&e["file"]), s(&e["message"])),
        "soak_started" => format!(
            "soak started: {}s, a sample every {}s of {}",
            n(&e["duration_s"]),
            n(&e["interval_s"]),
            e["checks"]
                .as_array()
                .map(|a| a
                    .iter()
                    .map(|c| s(&c["check"]))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ),
        "check_sample" => {
            let c = &e["counts"];
            if e["valid"].as_bool() == Some(false) {
                format!(
                    "{} inconclusive: {} ({} in a row)",
                    s(&e["check"]),
                    e["reason"].as_str().unwrap_or("unknown"),
                    n(&c["inconclusive_in_a_row"])
                )
            } else if e["breaching"].as_bool() == Some(true) {
                format!(
                    "{} = {} breaching ({}; {} in a row)",
                    s(&e["check"]),
                    n(&e["value"]),
                    s(&e["thresholds"]),
                    n(&c["breaches_in_a_row"])
                )
            } else {
                return None;
            }
        }
        "check_verdict" => format!(
            "VERDICT ({}): {}\n         measured by {}",
            s(&e["decision"]),
            s(&e["message"]),
            s(&e["source"])
        ),
        "soak_finished" => match (e["passed"].as_bool(), e["reason"].as_str()) {
            (Some(true), _) => "soak passed".into(),
            (_, Some(r)) => format!("soak failed: {r}"),
            _ => "soak failed".into(),
        },
        "rollback_started" => {
            let mut undo: Vec<String> = e["undo"]
                .as_array()
                .map(|a| a.iter().map(|v| format!("V{}", n(v))).collect())
                .unwrap_or_default();
            undo.reverse();
            format!(
                "ROLLING BACK ({}): {} — {}",
                s(&e["strategy"]),
                undo.join(", "),
                s(&e["cause"])
            )
        }
        "rollback_step_done" => {
            format!("undone by {} in {} ms", s(&e["file"]), n(&e["duration_ms"]))
        }
        "backup_restored" => format!("restored {} ({} ms)", s(&e["path"]), n(&e["duration_ms"])),
        "rollback_finished" => format!(
            "rollback finished: target at {} ({})",
            e["applied"]
                .as_array()
                .and_then(|a| a.last())
                .map_or("no version".to_string(), |v| format!("V{}", n(v))),
            if e["at_starting_version"].as_bool() == Some(true) {
                "its starting version"
            } else {
                "NOT its starting version"
            }
        ),
        "rollback_failed" => format!("ROLLBACK FAILED: {}", s(&e["reason"])),
        "gate_started" => format!(
            "low-traffic gate: waiting for {} healthy samples of {} every {}s",
            n(&e["consecutive"]),
            s(&e["check"]["check"]),
            n(&e["interval_s"])
        ),
        "gate_open" => format!(
            "low-traffic gate open after {} samples ({}s)",
            n(&e["samples"]),
            n(&e["waited_s"])
        ),
        "gate_closed" => format!("low-traffic gate never opened: {}", s(&e["reason"])),
        "run_finished" => format!(
            "run {}: {}{} (exit {})",
            s(&e["run_id"]),
            s(&e["outcome"]),
            e["reason"]
                .as_str()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default(),
            n(&e["exit_code"])
        ),
        "dry_run" => return None,
        other => match e["step"].as_str() {
            Some(step) => format!("{other} ({step})"),
            None => other.to_string(),
        },
    };
    Some(format!("[{}] {text}", time(&e["ts"])))
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn events_read_like_run_prints_them() {
        let e = json!({"ts": "2026-03-01T10:11:12.000Z", "run_id": "0123456789ab", "step": null,
                       "event": "run_finished", "outcome": "stopped", "reason": "aborted by bob before it started",
                       "exit_code": 5, "applied": [], "backup": null, "journal": null, "seq": 7});
        assert_eq!(
            event_line(&e).unwrap(),
            "[10:11:12] run 0123456789ab: stopped — aborted by bob before it started (exit 5)"
        );
        let sample = json!({"ts": "2026-03-01T10:11:12Z", "event": "check_sample", "check": "c",
                            "valid": true, "breaching": false, "value": 1.0, "counts": {}});
        assert_eq!(event_line(&sample), None);
        let breach = json!({"ts": "2026-03-01T10:11:12Z", "event": "check_sample", "check": "c",
                            "valid": true, "breaching": true, "value": 0.61, "thresholds": "max 0.5",
                            "counts": {"breaches_in_a_row": 2}});
        assert_eq!(
            event_line(&breach).unwrap(),
            "[10:11:12] c = 0.61 breaching (max 0.5; 2 in a row)"
        );
        let unknown = json!({"ts": "x", "event": "something_new", "step": "soak"});
        assert_eq!(
            event_line(&unknown).unwrap(),
            "[--:--:--] something_new (soak)"
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
