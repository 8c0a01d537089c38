//! Shapes a [`Notice`] into the JSON body each channel kind takes.
//!
//! Chat receivers reject a payload over their limits instead of cutting it
//! (Slack `invalid_blocks`, Discord 400, Teams 413), and a rejected notice is a
//! notice nobody sees. So every user-derived string is cut to fit here, counted
//! in the receiver's unit: chars for Slack and Discord, bytes of serialized JSON
//! for Teams. Nothing is made up: what does not fit is cut with "…" or counted
//! ("…and N more"), never paraphrased.

use chrono::SecondsFormat;
use serde_json::{Value, json};

use crate::notify::config::ChannelKind;
use crate::notify::{EscalationStep, Fact, Notice, Severity};

// Receiver limits, in chars.
const SLACK_HEADER_MAX: usize = 150;
const SLACK_TEXT_MAX: usize = 3000;
const SLACK_FIELD_MAX: usize = 2000;
const SLACK_FIELDS_MAX: usize = 10;
const DISCORD_CONTENT_MAX: usize = 2000;
const DISCORD_TITLE_MAX: usize = 256;
const DISCORD_DESCRIPTION_MAX: usize = 4096;
const DISCORD_FIELDS_MAX: usize = 25;
const DISCORD_NAME_MAX: usize = 256;
const DISCORD_VALUE_MAX: usize = 1024;
const DISCORD_FOOTER_MAX: usize = 2048;
/// Title, description, field names and values and footer together.
const DISCORD_EMBED_MAX: usize = 6000;
/// Kept back from the facts for the "…and N more" field. The parts before the
/// facts take at most 5418 chars (title 256, severity, three values of 1024,
/// field names, footer 2048).
const DISCORD_MORE: usize = 40;
/// Workflows webhooks refuse cards over about 28 KB. This caps the text, in
/// bytes of JSON; the structure around it stays well inside the other 2 KB.
const TEAMS_TEXT_MAX: usize = 26_000;
/// Bytes of `{"title":"","value":""},` charged per fact.
const TEAMS_FACT_OVERHEAD: usize = 32;

/// The JSON body to POST to a channel of this kind for this notice.
pub fn render(kind: ChannelKind, notice: &Notice) -> Value {
    match kind {
        ChannelKind::Generic => generic(notice),
        ChannelKind::Slack => slack(notice),
        ChannelKind::Discord => discord(notice),
        ChannelKind::Teams => teams(notice),
    }
}

/// `s` cut to at most `max_chars` chars, the last of them "…" when anything
/// was cut. Cuts between chars, never inside one.
fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().nth(max_chars).is_none() {
        return s.to_owned();
    }
    if max_chars == 0 {
        return String::new();
    }
    let kept: String = s.chars().take(max_chars - 1).collect();
    kept.trim_end().to_owned() + "…"
}

/// What is left of a payload-wide size limit, in the receiver's unit.
struct Budget {
    left: usize,
    cost: fn(&str) -> usize,
}

impl Budget {
    fn chars(limit: usize) -> Budget {
        Budget {
            left: limit,
            cost: |s| s.chars().count(),
        }
    }

    /// Bytes once serialized as a JSON string, quotes aside: escapes count.
    fn json_bytes(limit: usize) -> Budget {
        let cost = |s: &str| serde_json::to_string(s).map_or(s.len(), |j| j.len() - 2);
        Budget { left: limit, cost }
    }

    fn take(&mut self, s: &str, max_chars: usize) -> String {
        self.take_at_most(s, max_chars, usize::MAX)
    }

    /// `s` cut to `max_chars` chars and to `max_cost` or what is left, charged.
    fn take_at_most(&mut self, s: &str, max_chars: usize, max_cost: usize) -> String {
        let limit = max_cost.min(self.left);
        let fits = |n| (self.cost)(&truncate(s, n)) <= limit;
        let (mut lo, mut hi) = (0, max_chars.min(s.chars().count()));
        if !fits(hi) {
            // The longest cut that fits: `lo` only ever holds one that was checked.
            while lo < hi {
                let mid = (lo + hi).div_ceil(2);
                (lo, hi) = if fits(mid) { (mid, hi) } else { (lo, mid - 1) };
            }
        }
        let out = truncate(s, hi);
        self.left -= (self.cost)(&out);
        out
    }
}

fn timestamp(n: &Notice) -> String {
    n.ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn escalation_line(e: &EscalationStep) -> String {
    let (level, of, policy, pass) = (e.level, e.levels, &e.policy, e.pass);
    let trigger = e.trigger.as_str();
    format!("Escalation level {level} of {of} (policy {policy}, pass {pass}), on {trigger}")
}

/// The one line a phone notification shows.
fn headline(n: &Notice) -> String {
    let line = format!("[{}] {} (run {})", n.severity.as_str(), title(n), n.run_id);
    match &n.escalation {
        Some(e) => format!("{line} — {}", escalation_line(e)),
        None => line,
    }
}

/// Receivers refuse empty titles; the kind of notice is the next best thing.
fn title(n: &Notice) -> &str {
    if n.title.trim().is_empty() {
        n.kind.as_str()
    } else {
        &n.title
    }
}

/// Discord refuses empty field values and Teams shows nothing for them.
fn nonempty(s: &str) -> &str {
    if s.trim().is_empty() { "—" } else { s }
}

fn is_http_url(s: &str) -> bool {
    let scheme = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    (scheme.starts_with("http://") || scheme.starts_with("https://"))
        && !s.contains(char::is_whitespace)
}

/// Queries and URLs read best as code, where markup inside them is not markup.
/// A check's SQL (`sql: SELECT ...`, as the soak and breach notices give it) is
/// code whatever the check is called.
fn looks_like_code(f: &Fact) -> bool {
    const SQL: &[&str] = &[
        "SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "EXPLAIN", "SHOW",
    ];
    let label = f.label.to_ascii_lowercase();
    let first = f
        .value
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    ["query", "sql", "url"].iter().any(|w| label.contains(w))
        || f.value.starts_with(crate::plan::CheckSource::SQL_PREFIX)
        || is_http_url(&f.value)
        || SQL.contains(&first.as_str())
}

/// `s` on one line without backticks, so it can sit between two of them.
fn code_text(s: &str) -> String {
    s.replace('`', "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn generic(n: &Notice) -> Value {
    let facts: Vec<Value> = n
        .facts
        .iter()
        .map(|f| json!({"label": f.label, "value": f.value}))
        .collect();
    let escalation = n.escalation.as_ref().map(|e| {
        json!({"policy": e.policy, "level": e.level, "levels": e.levels, "pass": e.pass,
               "trigger": e.trigger.as_str()})
    });
    json!({
        "type": format!("run.{}", n.kind.as_str()),
        "timestamp": timestamp(n),
        "data": {
            "run_id": n.run_id, "target": n.target, "plan": n.plan,
            "event": n.kind.as_str(), "severity": n.severity.as_str(),
            "title": n.title, "summary": n.summary,
            "next_step": n.next_step, "runbook": n.runbook,
            "facts": facts, "escalation": escalation,
        },
    })
}

/// `s` escaped for mrkdwn (`&`, `<`, `>` are Slack's control characters) and
/// cut to `max` chars of escaped text without splitting an entity.
fn slack_fit(s: &str, max: usize) -> String {
    let escaped = s
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    if escaped.chars().count() <= max {
        return escaped;
    }
    let (mut out, mut used) = (String::new(), 0);
    for c in s.chars() {
        let mut buf = [0; 4];
        let piece = match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            _ => c.encode_utf8(&mut buf),
        };
        let len = piece.chars().count();
        if used + len + 1 > max {
            break; // the 1 is for "…"
        }
        out.push_str(piece);
        used += len;
    }
    if max == 0 {
        out
    } else {
        out.trim_end().to_owned() + "…"
    }
}

fn slack_code(s: &str, max: usize) -> String {
    let code = code_text(s);
    if code.is_empty() {
        "—".into()
    } else {
        format!("`{}`", slack_fit(&code, max - 2))
    }
}

fn mrkdwn(text: String) -> Value {
    json!({"type": "mrkdwn", "text": text})
}

fn slack(n: &Notice) -> Value {
    let section = |text| json!({"type": "section", "text": mrkdwn(text)});
    // plain_text is not parsed, so the header is not escaped.
    let header = json!({"type": "plain_text", "text": truncate(title(n), SLACK_HEADER_MAX)});
    let mut blocks = vec![json!({"type": "header", "text": header})];
    if let Some(e) = &n.escalation {
        let line = slack_fit(&escalation_line(e), SLACK_TEXT_MAX - 2);
        blocks.push(section(format!("*{line}*")));
    }
    if !n.summary.trim().is_empty() {
        blocks.push(section(slack_fit(&n.summary, SLACK_TEXT_MAX)));
    }
    let shown = &n.facts[..n.facts.len().min(SLACK_FIELDS_MAX)];
    let fields: Vec<Value> = shown
        .iter()
        .map(|f| {
            let label = slack_fit(nonempty(&f.label), 200);
            let max = SLACK_FIELD_MAX - label.chars().count() - 3;
            let value = match looks_like_code(f) {
                true => slack_code(&f.value, max),
                false => slack_fit(nonempty(&f.value), max),
            };
            mrkdwn(format!("*{label}*\n{value}"))
        })
        .collect();
    if !fields.is_empty() {
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    if n.facts.len() > shown.len() {
        let hidden = n.facts.len() - shown.len();
        blocks.push(section(format!("…and {hidden} more facts")));
    }
    let mut lines = Vec::new();
    if let Some(next) = &n.next_step {
        lines.push(format!("*Next step:* {}", slack_fit(next, 2000)));
    }
    if let Some(url) = &n.runbook {
        let link = match is_http_url(url) && url.len() <= 800 && !url.contains(['<', '>', '|']) {
            true => format!("<{}|Runbook>", url.replace('&', "&amp;")),
            false => slack_code(url, 800),
        };
        lines.push(format!("*Runbook:* {link}"));
    }
    if !lines.is_empty() {
        blocks.push(section(lines.join("\n")));
    }
    let (sev, kind) = (n.severity.as_str(), n.kind.as_str());
    let [target, plan, run] = [&n.target, &n.plan, &n.run_id].map(|s| slack_code(s, 300));
    let context = format!("*{sev}* · {kind} · target {target} · plan {plan} · run {run}");
    blocks.push(json!({"type": "context", "elements": [mrkdwn(context)]}));
    json!({"text": slack_fit(&headline(n), SLACK_TEXT_MAX), "blocks": blocks})
}

/// A Discord field whose name and value are both charged to the embed.
fn discord_field(b: &mut Budget, name: &str, value: &str, inline: bool) -> Value {
    let name = b.take(name, DISCORD_NAME_MAX);
    json!({"name": name, "value": b.take(nonempty(value), DISCORD_VALUE_MAX), "inline": inline})
}

fn discord(n: &Notice) -> Value {
    let mut b = Budget::chars(DISCORD_EMBED_MAX);
    let title = b.take(title(n), DISCORD_TITLE_MAX);
    let mut head = vec![discord_field(&mut b, "Severity", n.severity.as_str(), true)];
    if let Some(e) = &n.escalation {
        let line = escalation_line(e);
        head.push(discord_field(&mut b, "Escalation", &line, false));
    }
    let mut tail = Vec::new();
    if let Some(next) = &n.next_step {
        tail.push(discord_field(&mut b, "Next step", next, false));
    }
    if let Some(runbook) = &n.runbook {
        tail.push(discord_field(&mut b, "Runbook", runbook, false));
    }
    let footer = format!("{} · {} · {}", n.target, n.plan, n.run_id);
    let footer = b.take(&footer, DISCORD_FOOTER_MAX);
    // The summary leaves the facts what they need, up to 2000 chars.
    let need: usize = n
        .facts
        .iter()
        .map(|f| f.label.len().min(256) + f.value.len().min(1024))
        .sum();
    let max = DISCORD_DESCRIPTION_MAX.min(b.left.saturating_sub(need.min(2000) + DISCORD_MORE));
    let description = b.take(&n.summary, max);

    let mut slots = DISCORD_FIELDS_MAX - head.len() - tail.len();
    if n.facts.len() > slots {
        slots -= 1; // for the "…and N more" field
    }
    let mut facts = Vec::new();
    for f in n.facts.iter().take(slots) {
        // Invariant: `b.left >= DISCORD_MORE` before and after each fact.
        let room = b.left - DISCORD_MORE;
        if room < 8 {
            break;
        }
        let name = b.take(nonempty(&f.label), DISCORD_NAME_MAX.min(room / 2));
        let max = DISCORD_VALUE_MAX.min(b.left - DISCORD_MORE);
        let code = looks_like_code(f) && !code_text(&f.value).is_empty();
        let value = if code {
            b.left -= 2;
            format!("`{}`", b.take(&code_text(&f.value), max - 2))
        } else {
            b.take(nonempty(&f.value), max)
        };
        let inline = !code && value.chars().count() <= 40;
        facts.push(json!({"name": name, "value": value, "inline": inline}));
    }
    let hidden = n.facts.len() - facts.len();
    if hidden > 0 {
        let more = format!("…and {hidden} more");
        facts.push(discord_field(&mut b, "More facts", &more, false));
    }
    let fields: Vec<Value> = head.into_iter().chain(facts).chain(tail).collect();
    let colour = match n.severity {
        Severity::Info => 0x3498DB,
        Severity::Warning => 0xF1C40F,
        Severity::Critical => 0xE74C3C,
    };
    let mut embed = json!({
        "title": title, "color": colour, "fields": fields,
        "footer": {"text": footer}, "timestamp": timestamp(n),
    });
    if !description.is_empty() {
        embed["description"] = json!(description); // Discord refuses an empty one
    }
    json!({
        "content": truncate(&headline(n), DISCORD_CONTENT_MAX),
        "embeds": [embed],
        // Nothing in a notice may ping: `@everyone` in a plan name stays text.
        "allowed_mentions": {"parse": []},
    })
}

fn text_block(text: String) -> Value {
    json!({"type": "TextBlock", "text": text, "wrap": true})
}

fn teams(n: &Notice) -> Value {
    let mut b = Budget::json_bytes(TEAMS_TEXT_MAX);
    let colour = match n.severity {
        Severity::Info => "default",
        Severity::Warning => "warning",
        Severity::Critical => "attention",
    };
    let title = b.take(title(n), 500);
    let (sev, kind) = (n.severity.as_str(), n.kind.as_str());
    let context = format!(
        "{sev} · {kind} · target {} · plan {} · run {}",
        n.target, n.plan, n.run_id
    );
    let mut body = vec![
        json!({"type": "TextBlock", "text": title, "weight": "bolder", "size": "medium",
               "wrap": true, "color": colour}),
        json!({"type": "TextBlock", "text": b.take(&context, 1000), "isSubtle": true,
               "spacing": "none", "wrap": true}),
    ];
    if let Some(e) = &n.escalation {
        let line = b.take(&escalation_line(e), 1000);
        let block = json!({"type": "TextBlock", "text": line, "weight": "bolder",
                           "color": "attention", "wrap": true});
        body.push(block);
    }
    // A cut URL is a broken link: the action only carries one that fits whole.
    let url = n
        .runbook
        .as_deref()
        .filter(|u| is_http_url(u) && (b.cost)(u) <= 2048);
    b.left -= url.map_or(0, b.cost);
    let actions: Vec<Value> = url
        .map(|u| json!({"type": "Action.OpenUrl", "title": "Runbook", "url": u}))
        .into_iter()
        .collect();
    let mut tail = Vec::new();
    if let Some(next) = &n.next_step {
        tail.push(format!("Next step: {}", b.take(next, 2000)));
    }
    if let (Some(runbook), None) = (&n.runbook, url) {
        tail.push(format!("Runbook: {}", b.take(runbook, 2000)));
    }
    // The summary leaves the facts what they need, up to 12 KB.
    let need: usize = n
        .facts
        .iter()
        .map(|f| f.label.len() + f.value.len() + TEAMS_FACT_OVERHEAD)
        .sum();
    if !n.summary.trim().is_empty() {
        let max = b.left.saturating_sub(need.min(12_000) + 100);
        body.push(text_block(b.take_at_most(&n.summary, 10_000, max)));
    }
    let mut facts = Vec::new();
    for f in &n.facts {
        // Invariant: `b.left >= 100` after each fact, for the "…and N more" line.
        let room = b.left.saturating_sub(TEAMS_FACT_OVERHEAD + 100);
        if room < 16 {
            break;
        }
        b.left -= TEAMS_FACT_OVERHEAD;
        let name = b.take_at_most(nonempty(&f.label), 200, room / 2);
        let value = b.take_at_most(nonempty(&f.value), 2000, b.left - 100);
        facts.push(json!({"title": name, "value": value}));
    }
    if !facts.is_empty() {
        body.push(json!({"type": "FactSet", "facts": facts}));
    }
    if facts.len() < n.facts.len() {
        let more = format!("…and {} more facts", n.facts.len() - facts.len());
        body.push(json!({"type": "TextBlock", "text": more, "isSubtle": true, "wrap": true}));
    }
    body.extend(tail.into_iter().map(text_block));
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
                "actions": actions,
            },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::NoticeKind;
    use chrono::TimeZone;

    const QUERY: &str =
        "SELECT count(*) FROM `pg_stat_activity` WHERE state <> 'idle' AND x < 5 & y > 2";

    fn breach() -> Notice {
        let facts = [
            ("value", "412"),
            ("threshold", "max 250"),
            ("baseline", "180"),
            ("breaching", "3 of 3 consecutive"),
            ("query", QUERY),
        ];
        Notice {
            kind: NoticeKind::Breach,
            severity: Severity::Critical,
            ts: chrono::Utc.with_ymd_and_hms(2025, 3, 4, 5, 6, 7).unwrap(),
            run_id: "r-7f3a".into(),
            target: "orders-db".into(),
            plan: "add-orders-index".into(),
            title: "Breach on orders-db: p99_ms 412 > max 250".into(),
            summary: "p99_ms above max 250 for 3 of 3 samples; rolling back V7 & V8 <now>.".into(),
            next_step: Some("Watch the rollback: pgshepherd status r-7f3a".into()),
            runbook: Some("https://runbooks.example.com/pgshepherd?x=1&y=2#breach".into()),
            facts: facts.into_iter().map(|(l, v)| Fact::new(l, v)).collect(),
            escalation: Some(EscalationStep {
                policy: "db-oncall".into(),
                level: 2,
                levels: 3,
                pass: 1,
                trigger: NoticeKind::Breach,
            }),
        }
    }

    /// Over every limit, in multi-byte text that JSON escapes ('"').
    fn huge() -> Notice {
        let mut n = breach();
        n.summary = "é".repeat(10_000);
        n.facts = (0..40)
            .map(|i| Fact::new(format!("fact {i}"), "日\"".repeat(1000)))
            .collect();
        n
    }

    fn chars(v: &Value) -> usize {
        v.as_str().unwrap().chars().count()
    }

    #[test]
    fn truncate_cuts_between_chars_and_marks_the_cut() {
        assert_eq!(truncate("héllo", 5), "héllo");
        assert_eq!(truncate("日本語のテキスト", 4), "日本語…");
        assert_eq!(truncate("🦀🦀🦀", 2), "🦀…");
        assert_eq!(truncate("abc", 0), "");
        assert_eq!(truncate(&"ü".repeat(300), 256).chars().count(), 256);
    }

    #[test]
    fn generic_carries_every_field() {
        let v = render(ChannelKind::Generic, &breach());
        assert_eq!(
            (&v["type"], &v["timestamp"]),
            (&json!("run.breach"), &json!("2025-03-04T05:06:07.000Z"))
        );
        let d = &v["data"];
        assert_eq!(
            [&d["run_id"], &d["target"], &d["plan"]],
            ["r-7f3a", "orders-db", "add-orders-index"]
        );
        assert_eq!([&d["event"], &d["severity"]], ["breach", "critical"]);
        assert_eq!(d["facts"][4], json!({"label": "query", "value": QUERY}));
        assert_eq!(d["facts"].as_array().unwrap().len(), 5);
        let e =
            json!({"policy": "db-oncall", "level": 2, "levels": 3, "pass": 1, "trigger": "breach"});
        assert_eq!(d["escalation"], e);
        let mut quiet = breach();
        (quiet.next_step, quiet.runbook, quiet.escalation) = (None, None, None);
        let d = &render(ChannelKind::Generic, &quiet)["data"];
        assert!(d["next_step"].is_null() && d["runbook"].is_null() && d["escalation"].is_null());
    }

    #[test]
    fn slack_escapes_user_text_and_shows_severity_and_escalation() {
        let v = render(ChannelKind::Slack, &breach());
        let text = v["text"].as_str().unwrap();
        assert!(text.starts_with("[critical] Breach on orders-db: p99_ms 412 &gt; max 250"));
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        let all = v.to_string();
        assert!(all.contains("*Escalation level 2 of 3 (policy db-oncall, pass 1), on breach*"));
        assert!(all.contains("V7 &amp; V8 &lt;now&gt;"));
        let fields = blocks.iter().find_map(|b| b["fields"].as_array()).unwrap();
        assert_eq!(fields[0]["text"], "*value*\n412");
        let query = "*query*\n`SELECT count(*) FROM pg_stat_activity WHERE state &lt;&gt; 'idle' \
                     AND x &lt; 5 &amp; y &gt; 2`";
        assert_eq!(fields[4]["text"], query);
        // A check's SQL is code whatever the check is called.
        let mut started = breach();
        started.facts = vec![Fact::new(
            "cancellations",
            "sql: SELECT count(*) FROM jobs WHERE status = 'cancelled' AND a < b",
        )];
        let v = render(ChannelKind::Slack, &started);
        let fields = v["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|b| b["fields"].as_array())
            .unwrap();
        assert_eq!(
            fields[0]["text"],
            "*cancellations*\n`sql: SELECT count(*) FROM jobs WHERE status = 'cancelled' AND a &lt; b`"
        );
        let v = render(ChannelKind::Discord, &started);
        let field = v["embeds"][0]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "cancellations")
            .unwrap();
        assert_eq!(
            field["value"],
            "`sql: SELECT count(*) FROM jobs WHERE status = 'cancelled' AND a < b`"
        );
        assert!(
            all.contains("<https://runbooks.example.com/pgshepherd?x=1&amp;y=2#breach|Runbook>")
        );
        let context = &blocks.last().unwrap()["elements"][0]["text"];
        assert!(
            context
                .as_str()
                .unwrap()
                .starts_with("*critical* · breach · target `orders-db`")
        );
    }

    #[test]
    fn slack_holds_its_limits_and_counts_what_does_not_fit() {
        let v = render(ChannelKind::Slack, &huge());
        let blocks = v["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 50);
        assert!(chars(&blocks[0]["text"]["text"]) <= SLACK_HEADER_MAX);
        let fields = blocks.iter().find_map(|b| b["fields"].as_array()).unwrap();
        assert_eq!(fields.len(), SLACK_FIELDS_MAX);
        assert!(fields.iter().all(|f| chars(&f["text"]) <= SLACK_FIELD_MAX));
        let texts: Vec<&Value> = blocks
            .iter()
            .map(|b| &b["text"]["text"])
            .filter(|t| t.is_string())
            .collect();
        assert!(texts.iter().all(|t| chars(t) <= SLACK_TEXT_MAX));
        assert!(texts.contains(&&json!("…and 30 more facts")));
    }

    #[test]
    fn discord_embed_fits_every_limit() {
        for n in [breach(), huge()] {
            let v = render(ChannelKind::Discord, &n);
            assert!(chars(&v["content"]) <= DISCORD_CONTENT_MAX);
            assert_eq!(v["allowed_mentions"], json!({"parse": []}));
            let e = &v["embeds"][0];
            assert_eq!(
                (&e["color"], &e["timestamp"]),
                (&json!(0xE74C3C), &json!("2025-03-04T05:06:07.000Z"))
            );
            let (title, description) = (chars(&e["title"]), chars(&e["description"]));
            assert!(title <= DISCORD_TITLE_MAX && description <= DISCORD_DESCRIPTION_MAX);
            let mut total = title + description + chars(&e["footer"]["text"]);
            let fields = e["fields"].as_array().unwrap();
            assert!(fields.len() <= DISCORD_FIELDS_MAX);
            for f in fields {
                let (name, value) = (chars(&f["name"]), chars(&f["value"]));
                assert!((1..=DISCORD_NAME_MAX).contains(&name), "{f}");
                assert!((1..=DISCORD_VALUE_MAX).contains(&value), "{f}");
                assert!(f["inline"].is_boolean());
                total += name + value;
            }
            assert!(total <= DISCORD_EMBED_MAX, "{total}");
            assert_eq!(
                fields[0],
                json!({"name": "Severity", "value": "critical", "inline": true})
            );
            assert_eq!(
                fields[1]["value"],
                escalation_line(n.escalation.as_ref().unwrap())
            );
            assert_eq!(e["footer"]["text"], "orders-db · add-orders-index · r-7f3a");
        }
        let fields = render(ChannelKind::Discord, &breach())["embeds"][0]["fields"].clone();
        let sql = "`SELECT count(*) FROM pg_stat_activity WHERE state <> 'idle' AND x < 5 & y > 2`";
        assert!(fields.as_array().unwrap().iter().any(|f| f["value"] == sql));
        let fields = render(ChannelKind::Discord, &huge())["embeds"][0]["fields"].clone();
        assert!(
            fields
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["name"] == "More facts")
        );
    }

    #[test]
    fn severity_shows_in_every_kind() {
        let mut n = breach();
        (n.severity, n.escalation) = (Severity::Warning, None);
        let generic = render(ChannelKind::Generic, &n);
        assert_eq!(generic["data"]["severity"], "warning");
        let slack = render(ChannelKind::Slack, &n);
        assert!(slack["text"].as_str().unwrap().starts_with("[warning] "));
        let context = &slack["blocks"].as_array().unwrap().last().unwrap()["elements"][0];
        assert!(context["text"].as_str().unwrap().starts_with("*warning*"));
        let discord = render(ChannelKind::Discord, &n);
        assert_eq!(discord["embeds"][0]["color"], 0xF1C40F);
        assert_eq!(discord["embeds"][0]["fields"][0]["value"], "warning");
        let teams = render(ChannelKind::Teams, &n);
        assert_eq!(
            teams["attachments"][0]["content"]["body"][0]["color"],
            "warning"
        );
        n.severity = Severity::Info;
        assert_eq!(
            render(ChannelKind::Discord, &n)["embeds"][0]["color"],
            0x3498DB
        );
        assert_eq!(
            render(ChannelKind::Teams, &n)["attachments"][0]["content"]["body"][0]["color"],
            "default"
        );
    }

    #[test]
    fn teams_card_has_the_adaptive_shape_and_stays_small() {
        let v = render(ChannelKind::Teams, &breach());
        assert_eq!(v["type"], "message");
        let a = &v["attachments"][0];
        assert_eq!(a["contentType"], "application/vnd.microsoft.card.adaptive");
        assert!(a["contentUrl"].is_null());
        let card = &a["content"];
        assert_eq!([&card["type"], &card["version"]], ["AdaptiveCard", "1.4"]);
        let body = card["body"].as_array().unwrap();
        assert_eq!(
            [&body[0]["color"], &body[0]["weight"], &body[0]["size"]],
            ["attention", "bolder", "medium"]
        );
        let facts = body.iter().find(|b| b["type"] == "FactSet").unwrap();
        assert_eq!(
            facts["facts"][1],
            json!({"title": "threshold", "value": "max 250"})
        );
        let text = |prefix: &str| {
            body.iter()
                .any(|b| b["text"].as_str().is_some_and(|t| t.starts_with(prefix)))
        };
        assert!(
            text("Next step: ") && text("Escalation level 2 of 3") && text("critical · breach")
        );
        let runbook =
            json!({"type": "Action.OpenUrl", "title": "Runbook", "url": breach().runbook});
        assert_eq!(card["actions"], json!([runbook]));

        let big = render(ChannelKind::Teams, &huge()).to_string();
        assert!(big.len() < 28_000, "{}", big.len());
        assert!(big.contains("more facts"));
    }
}
