//! `pgshepherd logs RUN [--follow]`: the run's events, one human line each (as
//! `pgshepherd run` prints them) or, with `--json`, one JSON object per line.
//!
//! `--follow` reads the Server-Sent Events stream and exits with the run's exit
//! code after `run_finished`. A broken connection (a daemon restarting, a
//! replica going away) is resumed with `Last-Event-ID`: no event is lost or
//! printed twice.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::ACCEPT;
use serde::Deserialize;
use serde_json::Value;

use crate::client::ClientOptions;
use crate::client::http::{Api, Failure, check_run_id};
use crate::client::render;
use crate::client::show::{fetch_run, run_exit_code};
use crate::output;
use crate::run::event::{Event, EventKind};

/// Events per page when not following.
const PAGE: usize = 1000;
/// While following: how often, and how long apart, to try again to reach the daemon.
const RECONNECT_ATTEMPTS: u32 = 30;
const RECONNECT_WAIT: Duration = Duration::from_secs(2);

fn print(options: &ClientOptions, event: &Value) {
    if options.json {
        output::line(event);
    } else if let Some(line) = render::event_line(event) {
        output::line(line);
    }
}

pub async fn logs(options: &ClientOptions, id: &str, follow: bool) -> i32 {
    let result = if follow {
        follow_events(options, id).await
    } else {
        all_events(options, id).await
    };
    result.unwrap_or_else(|f| f.report())
}

async fn all_events(options: &ClientOptions, id: &str) -> Result<i32, Failure> {
    check_run_id(id)?;
    let api = Api::new(options)?;
    let mut after = 0i64;
    loop {
        let (events, full) = events_page(&api, id, &mut after).await?;
        for e in &events {
            print(options, e);
        }
        if !full {
            return Ok(0);
        }
    }
}

/// One page of run `id`'s stored events after sequence number `after`, which
/// moves past them, and whether the page was full (more may follow at once).
pub(super) async fn events_page(
    api: &Api,
    id: &str,
    after: &mut i64,
) -> Result<(Vec<Value>, bool), Failure> {
    let (_, page) = api
        .json(
            Method::GET,
            &format!("/v1/runs/{id}/events?after={after}&limit={PAGE}"),
            None,
        )
        .await?;
    let events = page.as_array().cloned().unwrap_or_default();
    for e in &events {
        *after = e["seq"].as_i64().unwrap_or(*after).max(*after);
    }
    let full = events.len() >= PAGE;
    Ok((events, full))
}

async fn follow_events(options: &ClientOptions, id: &str) -> Result<i32, Failure> {
    check_run_id(id)?;
    let api = Api::new(options)?;
    let mut last: Option<i64> = None;
    let mut failures = 0u32;
    loop {
        let mut request = api
            .request(Method::GET, api.url(&format!("/v1/runs/{id}/events"))?)
            .header(ACCEPT, "text/event-stream");
        if let Some(seq) = last {
            request = request.header("Last-Event-ID", seq.to_string());
        }
        let broke = match api.send(request).await {
            Ok(mut response) => {
                failures = 0;
                let mut parser = SseParser::default();
                let mut broke = None;
                loop {
                    match response.chunk().await {
                        Ok(Some(bytes)) => {
                            for message in parser.feed(&bytes) {
                                if message.event == "error" {
                                    eprintln!(
                                        "warning: the daemon ended the stream: {}",
                                        message.data
                                    );
                                    continue;
                                }
                                let Ok(event) = serde_json::from_str::<Value>(&message.data) else {
                                    continue;
                                };
                                print(options, &event);
                                if let Some(seq) = message.id.and_then(|i| i.parse().ok()) {
                                    last = Some(seq);
                                }
                                if let Ok(Event {
                                    kind: EventKind::RunFinished { exit_code, .. },
                                    ..
                                }) = Event::deserialize(&event)
                                {
                                    return Ok(exit_code);
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            broke = Some(api.unreachable(&e));
                            break;
                        }
                    }
                }
                broke
            }
            Err(f @ Failure::Refused { status, .. }) if status.is_client_error() => return Err(f),
            Err(f @ Failure::Usage(_)) => return Err(f),
            Err(f) => Some(f),
        };
        match broke {
            Some(f) => {
                failures += 1;
                if failures > RECONNECT_ATTEMPTS {
                    return Err(f);
                }
                if failures == 1 {
                    eprintln!("warning: {}; reconnecting", message_of(&f));
                }
                tokio::time::sleep(RECONNECT_WAIT).await;
            }
            None => {
                // The stream ended without `run_finished` (the daemon stopped, or
                // the run finished before the cursor): ask the run itself.
                let view = fetch_run(options, id).await?;
                if view["phase"] == "finished" {
                    return Ok(run_exit_code(&view));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn message_of(f: &Failure) -> String {
    match f {
        Failure::Usage(m) | Failure::Unreachable(m) => m.clone(),
        Failure::Refused {
            status, message, ..
        } => format!("{message} (HTTP {})", status.as_u16()),
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseMessage {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Incremental `text/event-stream` parsing (the subset the daemon sends:
/// `id`, `event`, `data`, comments), tolerant of chunks split anywhere and of
/// `\r\n` line ends.
#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
    current: SseMessage,
    has_data: bool,
}

impl SseParser {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseMessage> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                let message = std::mem::take(&mut self.current);
                if std::mem::take(&mut self.has_data) {
                    out.push(message);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "id" => self.current.id = Some(value.to_string()),
                "event" => self.current.event = value.to_string(),
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_across_chunks() {
        let mut p = SseParser::default();
        let stream = ": keep-alive\n\nid: 4\nevent: run_submitted\ndata: {\"a\":1}\n\nid: 5\r\nevent: run_finished\r\ndata: {}\r\n\r\n";
        let mut got = Vec::new();
        for chunk in stream.as_bytes().chunks(7) {
            got.extend(p.feed(chunk));
        }
        assert_eq!(
            got,
            [
                SseMessage {
                    id: Some("4".into()),
                    event: "run_submitted".into(),
                    data: "{\"a\":1}".into()
                },
                SseMessage {
                    id: Some("5".into()),
                    event: "run_finished".into(),
                    data: "{}".into()
                },
            ]
        );
    }

    #[test]
    fn multi_line_data_is_joined() {
        let mut p = SseParser::default();
        let got = p.feed(b"data: a\ndata: b\n\n");
        assert_eq!(got[0].data, "a\nb");
    }
}
