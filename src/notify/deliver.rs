//! One HTTP attempt at delivering a notification, and what it means for the next
//! one: delivered, retry (when), the endpoint is gone, or the receiver will never
//! take this message.
//!
//! Channel URLs are secrets (Slack, Discord and Teams put the credential in the
//! path or query), so no string made here contains the URL: reqwest's errors are
//! stripped of it, and anything that could still echo it (an error source, a
//! response body) is scrubbed.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use tokio::time::{Instant, timeout_at};

use crate::backoff::Backoff;
use crate::notify::config::{ChannelKind, DeliverySettings};
use crate::notify::sign;

/// At most this much of a response body is read: receivers answer webhooks with a
/// few bytes, and a large answer is read only to quote its start in an error.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Errors are stored with the notification and shown by the API: keep them short.
const MAX_ERROR_CHARS: usize = 300;
/// How much of an error response's body an error quotes.
const BODY_EXCERPT_CHARS: usize = 200;
/// A Retry-After longer than this is taken as this ([`backoff`]): a receiver that
/// asks for a day would otherwise let the notification expire unsent.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One attempt: what to send, where, and how long to wait for it.
pub struct Attempt<'a> {
    pub kind: ChannelKind,
    pub url: &'a str,
    /// The rendered notification, JSON.
    pub body: &'a [u8],
    /// The Standard Webhooks id, the same on every attempt (`generic` only).
    pub msg_id: &'a str,
    /// Signing secrets, `generic` channels only; empty = unsigned.
    pub secrets: &'a [Vec<u8>],
    /// The whole attempt: connecting, sending and reading the answer.
    pub timeout: Duration,
}

/// What an attempt came to. `error` strings are one line, at most 300 characters,
/// and never contain the URL.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// 2xx.
    Delivered { status: u16 },
    /// Try again later: network error, timeout, 408, 425, 429, 5xx. `retry_after`
    /// is the receiver's Retry-After on a 429 or 503 (seconds or HTTP-date), as
    /// asked; [`backoff`] bounds it.
    Retry {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
    /// 410 Gone: the receiver says this endpoint is gone for good; the channel gets
    /// disabled.
    Gone { status: u16, error: String },
    /// Any other 4xx, and 3xx (redirects are not followed): this notification will
    /// never be accepted as it is; do not retry.
    Rejected { status: u16, error: String },
}

/// A client for deliveries: redirects are not followed (the Standard Webhooks
/// advice: a moved endpoint should be reconfigured, and following would send the
/// payload, signed, somewhere nobody configured), connecting gives up after 5 s,
/// proxies as reqwest's defaults. Build it once and share it: it owns the
/// connection pool.
pub fn client() -> reqwest::Client {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .user_agent(concat!("pgshepherd/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        // Building fails only when TLS cannot be set up, and the ring provider was
        // just installed: falling back to a default client would follow redirects.
        .expect("the webhook HTTP client builds with the ring TLS provider installed")
}

/// POST the notification once. Never fails: every outcome is a [`Delivery`].
pub async fn send(client: &reqwest::Client, attempt: &Attempt<'_>) -> Delivery {
    // One deadline for connecting, sending and reading the answer, so a receiver
    // that trickles its response cannot hold a delivery worker longer than this.
    // (Bounded so that an absurd timeout cannot overflow the clock.)
    let deadline = Instant::now() + attempt.timeout.min(Duration::from_secs(24 * 3600));
    let mut request = client
        .post(attempt.url)
        .header(CONTENT_TYPE, "application/json")
        .body(attempt.body.to_vec());
    if attempt.kind == ChannelKind::Generic {
        // A fresh timestamp (and so signature) per attempt: receivers reject old
        // timestamps to stop replays, and a retry may come hours later.
        let timestamp = Utc::now().timestamp();
        request = request
            .header("webhook-id", attempt.msg_id)
            .header("webhook-timestamp", timestamp.to_string());
        if !attempt.secrets.is_empty() {
            request = request.header(
                "webhook-signature",
                sign::signature(attempt.secrets, attempt.msg_id, timestamp, attempt.body),
            );
        }
    }
    let timed_out = || Delivery::Retry {
        status: None,
        error: format!("timed out after {}", shown_duration(attempt.timeout)),
        retry_after: None,
    };
    let mut response = match timeout_at(deadline, request.send()).await {
        Err(_) => return timed_out(),
        Ok(Err(e)) if e.is_timeout() => return timed_out(),
        Ok(Err(e)) => {
            return Delivery::Retry {
                status: None,
                error: finish(transport_error(e), attempt.url),
                retry_after: None,
            };
        }
        Ok(Ok(r)) => r,
    };
    let status = response.status();
    let code = status.as_u16();
    let retry_after = if matches!(code, 429 | 503) {
        response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
    } else {
        None
    };
    // Read the answer even after a 2xx: a body left unread keeps the connection
    // out of the pool. Its content does not matter then.
    let body = timeout_at(deadline, read_capped(&mut response)).await;
    if status.is_success() {
        return Delivery::Delivered { status: code };
    }
    let mut error = format!("HTTP {code}");
    if let Some(reason) = status.canonical_reason() {
        error.push(' ');
        error.push_str(reason);
    }
    if status.is_redirection() {
        // Not the Location header: it may carry a credential as the URL does.
        error.push_str(" (redirects are not followed: update the channel's url)");
    }
    match body {
        Ok(Ok(bytes)) => {
            let excerpt = one_line(&String::from_utf8_lossy(&bytes), BODY_EXCERPT_CHARS);
            if !excerpt.is_empty() {
                error.push_str(": ");
                error.push_str(&excerpt);
            }
        }
        Ok(Err(e)) => {
            error.push_str(" (reading the body failed: ");
            error.push_str(&transport_error(e));
            error.push(')');
        }
        Err(_) => error.push_str(" (timed out reading the body)"),
    }
    let error = finish(error, attempt.url);
    match code {
        408 | 425 | 429 | 500.. => Delivery::Retry {
            status: Some(code),
            error,
            retry_after,
        },
        410 => Delivery::Gone {
            status: code,
            error,
        },
        _ => Delivery::Rejected {
            status: code,
            error,
        },
    }
}

/// The retry schedule of deliveries: the delay before retry number `attempt`
/// (1-based) is `d = min(max_backoff, min_backoff * 2^(attempt-1))` with "equal
/// jitter", uniform in `[d/2, d]`, so the retries of notifications that failed
/// together spread out, yet each waits at least half its nominal delay. A
/// receiver's Retry-After replaces it, raised to `min_backoff` (a receiver that
/// keeps saying "now" is not hammered in a loop) and cut to an hour.
pub fn backoff(settings: &DeliverySettings) -> Backoff {
    Backoff::new(settings.min_backoff, settings.max_backoff).with_suggested_max(MAX_RETRY_AFTER)
}

/// A `Retry-After` value as a delay from `now`: delay-seconds or an HTTP-date
/// (IMF-fixdate, and the obsolete RFC 850 and asctime forms that HTTP/1.1 still
/// asks recipients to accept). A date in the past is no delay; [`backoff`] bounds
/// the rest. `None` when it is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "a very long time".
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds));
    }
    let at = http_date(value)?;
    let now = DateTime::<Utc>::from(now);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

fn http_date(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(d) = DateTime::parse_from_rfc2822(value) {
        return Some(d.with_timezone(&Utc));
    }
    // RFC 850 ("Sunday, 06-Nov-94 08:49:37 GMT") and asctime ("Sun Nov  6 08:49:37 1994").
    let asctime = value.split_whitespace().collect::<Vec<_>>().join(" ");
    NaiveDateTime::parse_from_str(value, "%A, %d-%b-%y %H:%M:%S GMT")
        .or_else(|_| NaiveDateTime::parse_from_str(&asctime, "%a %b %e %H:%M:%S %Y"))
        .ok()
        .map(|d| d.and_utc())
}

/// A reqwest error without the URL, named by kind, with its causes.
fn transport_error(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "body error"
    } else if e.is_builder() {
        "cannot build the request"
    } else {
        "request failed"
    };
    // reqwest's and hyper's outer layers ("error sending request", "client error
    // (Connect)") say nothing the kind and the causes do not.
    let e = e.without_url();
    let mut causes: Vec<String> = Vec::new();
    let mut next: Option<&dyn std::error::Error> = Some(&e);
    while let Some(err) = next {
        let text = err.to_string();
        let noise = text.starts_with("error sending request") || text.starts_with("client error");
        if !noise && !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        next = err.source();
    }
    if causes.is_empty() {
        causes.push(e.to_string());
    }
    format!("{kind}: {}", causes.join(": "))
}

/// The last pass over an error: whatever echoes the URL (a cause, a receiver
/// quoting the request line) loses it, then one line, capped.
fn finish(error: String, url: &str) -> String {
    let mut secrets: Vec<String> = vec![url.to_string(), url.trim_end_matches('/').to_string()];
    if let Ok(parsed) = reqwest::Url::parse(url) {
        secrets.push(parsed.as_str().to_string());
        if parsed.path().len() > 1 {
            secrets.push(parsed.path().to_string());
        }
        if let Some(q) = parsed.query() {
            secrets.push(q.to_string());
        }
    }
    // Longest first, so the full URL goes before its path does.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut error = error;
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        error = error.replace(s.as_str(), "<url>");
    }
    one_line(&error, MAX_ERROR_CHARS)
}

/// Control characters and runs of whitespace become one space; at most `max`
/// characters, the last one `…` when cut.
fn one_line(text: &str, max: usize) -> String {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect();
    let line = words.join(" ");
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

async fn read_capped(response: &mut reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_RESPONSE_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_RESPONSE_BYTES {
            break;
        }
    }
    Ok(body)
}

fn shown_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// The URL of every test receiver carries a fake credential, as Slack's do.
    const PATH: &str = "/services/T000/SECRETXYZ";
    const SECRET_PIECE: &str = "SECRETXYZ";

    /// A receiver that takes one request and answers it with `response` (raw
    /// HTTP); it hands back the request it read.
    async fn receiver(response: String) -> (String, tokio::task::JoinHandle<Request>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{PATH}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let request = read_request(&mut socket).await;
            socket.write_all(response.as_bytes()).await.unwrap();
            socket.shutdown().await.ok();
            request
        });
        (url, task)
    }

    fn answer(status: &str, headers: &[&str], body: &str) -> String {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: {}\r\n",
            body.len()
        );
        for h in headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.push_str(body);
        out
    }

    struct Request {
        head: String,
        body: Vec<u8>,
    }

    impl Request {
        fn header(&self, name: &str) -> Option<String> {
            self.head.lines().skip(1).find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        }
    }

    async fn read_request(socket: &mut tokio::net::TcpStream) -> Request {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the request was complete");
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let request = Request {
                head,
                body: Vec::new(),
            };
            let length: usize = request
                .header("content-length")
                .map(|v| v.parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Request {
                    body: buf[end + 4..end + 4 + length].to_vec(),
                    ..request
                };
            }
        }
    }

    fn attempt<'a>(kind: ChannelKind, url: &'a str, secrets: &'a [Vec<u8>]) -> Attempt<'a> {
        Attempt {
            kind,
            url,
            body: br#"{"text":"Breach on orders-db"}"#,
            msg_id: "msg_0123456789abcdefghijklmnop",
            secrets,
            timeout: Duration::from_secs(2),
        }
    }

    fn error_of(d: &Delivery) -> &str {
        match d {
            Delivery::Delivered { .. } => "",
            Delivery::Retry { error, .. }
            | Delivery::Gone { error, .. }
            | Delivery::Rejected { error, .. } => error,
        }
    }

    /// What every error must be, whatever the outcome.
    fn assert_clean(d: &Delivery) {
        let e = error_of(d);
        assert!(!e.contains(SECRET_PIECE), "the URL leaked: {e:?}");
        assert!(!e.contains("127.0.0.1:"), "the URL leaked: {e:?}");
        assert!(e.chars().count() <= MAX_ERROR_CHARS, "{e:?}");
        assert!(!e.contains('\n') && !e.contains('\r'), "{e:?}");
    }

    #[tokio::test]
    async fn a_2xx_is_delivered_with_standard_webhooks_headers_that_verify() {
        let (url, task) = receiver(answer("202 Accepted", &[], "ok")).await;
        let secrets = vec![vec![1u8; 32], vec![2u8; 24]];
        let a = attempt(ChannelKind::Generic, &url, &secrets);
        let before = Utc::now().timestamp();
        assert_eq!(
            send(&client(), &a).await,
            Delivery::Delivered { status: 202 }
        );
        let request = task.await.unwrap();

        assert!(request.head.starts_with(&format!("POST {PATH} HTTP/1.1")));
        assert_eq!(
            request.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            request.header("user-agent").unwrap(),
            concat!("pgshepherd/", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(request.body, a.body);
        assert_eq!(request.header("webhook-id").as_deref(), Some(a.msg_id));
        let ts: i64 = request
            .header("webhook-timestamp")
            .unwrap()
            .parse()
            .unwrap();
        assert!((before..=before + 2).contains(&ts), "{ts} vs {before}");

        // Verify as a receiver would, straight from the header and the raw body.
        let header = request.header("webhook-signature").unwrap();
        let sigs: Vec<&str> = header.split(' ').collect();
        assert_eq!(sigs.len(), 2, "{header}");
        for (secret, sig) in secrets.iter().zip(sigs) {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
            mac.update(format!("{}.{ts}.", a.msg_id).as_bytes());
            mac.update(&request.body);
            let expected = STANDARD.encode(mac.finalize().into_bytes());
            assert_eq!(sig, format!("v1,{expected}"));
        }
    }

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    #[tokio::test]
    async fn an_unsigned_generic_channel_still_sends_id_and_timestamp() {
        let (url, task) = receiver(answer("200 OK", &[], "")).await;
        let a = attempt(ChannelKind::Generic, &url, &[]);
        assert_eq!(
            send(&client(), &a).await,
            Delivery::Delivered { status: 200 }
        );
        let request = task.await.unwrap();
        assert_eq!(request.header("webhook-id").as_deref(), Some(a.msg_id));
        assert!(request.header("webhook-timestamp").is_some());
        assert_eq!(request.header("webhook-signature"), None);
    }

    #[tokio::test]
    async fn slack_discord_and_teams_get_no_webhook_headers() {
        let (url, task) = receiver(answer("200 OK", &[], "ok")).await;
        let secrets = vec![vec![1u8; 32]];
        let a = attempt(ChannelKind::Slack, &url, &secrets);
        assert_eq!(
            send(&client(), &a).await,
            Delivery::Delivered { status: 200 }
        );
        let request = task.await.unwrap();
        assert_eq!(
            request.header("content-type").as_deref(),
            Some("application/json")
        );
        for h in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            assert_eq!(request.header(h), None, "{h}");
        }
    }

    #[tokio::test]
    async fn a_500_is_retried_quoting_the_answer() {
        let (url, _task) = receiver(answer(
            "500 Internal Server Error",
            &[],
            "db down\n  try later",
        ))
        .await;
        let d = send(&client(), &attempt(ChannelKind::Generic, &url, &[])).await;
        assert_eq!(
            d,
            Delivery::Retry {
                status: Some(500),
                error: "HTTP 500 Internal Server Error: db down try later".into(),
                retry_after: None,
            }
        );
        assert_clean(&d);
    }

    #[tokio::test]
    async fn a_429_waits_as_long_as_retry_after_says() {
        let (url, _task) = receiver(answer(
            "429 Too Many Requests",
            &["Retry-After: 7"],
            "slow down",
        ))
        .await;
        let d = send(&client(), &attempt(ChannelKind::Slack, &url, &[])).await;
        let Delivery::Retry {
            status: Some(429),
            retry_after,
            ..
        } = &d
        else {
            panic!("{d:?}");
        };
        assert_eq!(*retry_after, Some(Duration::from_secs(7)));
        assert_clean(&d);
    }

    #[tokio::test]
    async fn a_503_with_an_http_date_waits_until_then() {
        let at = Utc::now() + chrono::Duration::seconds(120);
        let header = format!("Retry-After: {}", at.format("%a, %d %b %Y %H:%M:%S GMT"));
        let (url, _task) = receiver(answer("503 Service Unavailable", &[&header], "")).await;
        let d = send(&client(), &attempt(ChannelKind::Discord, &url, &[])).await;
        let Delivery::Retry {
            status: Some(503),
            retry_after: Some(wait),
            error,
        } = &d
        else {
            panic!("{d:?}");
        };
        assert!(
            (Duration::from_secs(115)..=Duration::from_secs(121)).contains(wait),
            "{wait:?}"
        );
        assert_eq!(error, "HTTP 503 Service Unavailable");
    }

    #[tokio::test]
    async fn retry_after_is_ignored_on_other_statuses() {
        let (url, _task) = receiver(answer("502 Bad Gateway", &["Retry-After: 7"], "")).await;
        let d = send(&client(), &attempt(ChannelKind::Teams, &url, &[])).await;
        assert!(
            matches!(
                d,
                Delivery::Retry {
                    status: Some(502),
                    retry_after: None,
                    ..
                }
            ),
            "{d:?}"
        );
    }

    #[tokio::test]
    async fn retryable_4xx_statuses_are_retried() {
        for status in ["408 Request Timeout", "425 Too Early"] {
            let (url, _task) = receiver(answer(status, &[], "")).await;
            let d = send(&client(), &attempt(ChannelKind::Generic, &url, &[])).await;
            assert!(
                matches!(
                    d,
                    Delivery::Retry {
                        status: Some(_),
                        ..
                    }
                ),
                "{d:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_410_means_the_endpoint_is_gone() {
        let (url, _task) = receiver(answer("410 Gone", &[], "channel_is_archived")).await;
        let d = send(&client(), &attempt(ChannelKind::Slack, &url, &[])).await;
        assert_eq!(
            d,
            Delivery::Gone {
                status: 410,
                error: "HTTP 410 Gone: channel_is_archived".into()
            }
        );
    }

    #[tokio::test]
    async fn a_400_is_rejected_with_the_start_of_the_body_and_no_url() {
        // The receiver quotes the request path back, credential and all; the
        // excerpt is long and spread over lines.
        let body = format!(
            "{{\"error\": \"invalid_blocks\",\n\"path\": \"{PATH}\",\n\"detail\": \"{}\"}}",
            "x".repeat(1000)
        );
        let (url, _task) = receiver(answer("400 Bad Request", &[], &body)).await;
        let d = send(&client(), &attempt(ChannelKind::Slack, &url, &[])).await;
        let Delivery::Rejected { status: 400, error } = &d else {
            panic!("{d:?}");
        };
        assert!(
            error.starts_with("HTTP 400 Bad Request: {\"error\": \"invalid_blocks\", \"path\": \""),
            "{error}"
        );
        assert!(error.ends_with('…'), "{error}");
        assert!(
            error.chars().count() <= 20 + BODY_EXCERPT_CHARS + 10,
            "{error}"
        );
        assert_clean(&d);
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_and_rejected() {
        let location = format!("Location: http://127.0.0.1:9{PATH}");
        let (url, _task) = receiver(answer("301 Moved Permanently", &[&location], "")).await;
        let d = send(&client(), &attempt(ChannelKind::Generic, &url, &[])).await;
        assert!(matches!(d, Delivery::Rejected { status: 301, .. }), "{d:?}");
        assert!(error_of(&d).contains("redirects are not followed"), "{d:?}");
        assert_clean(&d);
    }

    #[tokio::test]
    async fn a_huge_answer_is_read_no_further_than_64_kb() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{PATH}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            read_request(&mut socket).await;
            // Claims 100 MB, sends 1 MB, then stalls: a capped reader is done long
            // before the deadline.
            let head = "HTTP/1.1 400 Bad Request\r\ncontent-length: 100000000\r\n\r\n";
            socket.write_all(head.as_bytes()).await.unwrap();
            let _ = socket.write_all(&vec![b'a'; 1 << 20]).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let started = std::time::Instant::now();
        let d = send(&client(), &attempt(ChannelKind::Generic, &url, &[])).await;
        assert!(matches!(d, Delivery::Rejected { status: 400, .. }), "{d:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_receiver_that_never_answers_times_out_within_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{PATH}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(socket);
        });
        let mut a = attempt(ChannelKind::Generic, &url, &[]);
        a.timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let d = send(&client(), &a).await;
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(290), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(300 + 700), "{elapsed:?}");
        assert_eq!(
            d,
            Delivery::Retry {
                status: None,
                error: "timed out after 300ms".into(),
                retry_after: None
            }
        );
    }

    #[tokio::test]
    async fn a_body_that_never_ends_is_cut_by_the_same_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{PATH}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            read_request(&mut socket).await;
            let head = "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 1000\r\n\r\npartial";
            socket.write_all(head.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let mut a = attempt(ChannelKind::Generic, &url, &[]);
        a.timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let d = send(&client(), &a).await;
        assert!(started.elapsed() < Duration::from_millis(1000));
        assert_eq!(
            d,
            Delivery::Retry {
                status: Some(500),
                error: "HTTP 500 Internal Server Error (timed out reading the body)".into(),
                retry_after: None
            }
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried_without_the_url() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}{PATH}?token=SECRETXYZ");
        let d = send(&client(), &attempt(ChannelKind::Generic, &url, &[])).await;
        let Delivery::Retry {
            status: None,
            error,
            retry_after: None,
        } = &d
        else {
            panic!("{d:?}");
        };
        assert!(
            error.starts_with("cannot connect: ") && error.to_lowercase().contains("refused"),
            "{error}"
        );
        assert_clean(&d);
    }

    #[test]
    fn errors_are_scrubbed_of_the_url_and_kept_short() {
        let url = "https://hooks.slack.com/services/T000/B000/SECRETXYZ";
        let e = finish(
            format!(
                "failed for {url} and again for /services/T000/B000/SECRETXYZ\n{}",
                "y".repeat(400)
            ),
            url,
        );
        assert!(!e.contains("SECRETXYZ"), "{e}");
        assert!(
            e.starts_with("failed for <url> and again for <url> y"),
            "{e}"
        );
        assert_eq!(e.chars().count(), MAX_ERROR_CHARS);
        let teams = "https://prod.westeurope.logic.azure.com/workflows/1/triggers/manual/paths/invoke?sig=SECRETXYZ";
        assert!(!finish("echo sig=SECRETXYZ".to_string(), teams).contains("SECRETXYZ"));
    }

    #[test]
    fn retry_after_in_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("86400", now),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in ["", "-1", "1.5", "7s", "soon", "0x10"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_as_an_http_date_in_every_form() {
        // 1994-11-06T08:49:00Z, 37 s before the date in RFC 9110's examples.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_740);
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                parse_retry_after(form, now),
                Some(Duration::from_secs(37)),
                "{form}"
            );
        }
        let later = now + Duration::from_secs(600);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", later),
            Some(Duration::ZERO),
            "a date in the past is no wait"
        );
        let much_earlier = now - Duration::from_secs(86_400);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", much_earlier),
            Some(Duration::from_secs(86_400 + 37))
        );
        assert_eq!(
            parse_retry_after("Sun, 31 Nov 1994 08:49:37 GMT", now),
            None
        );
    }

    #[test]
    fn deliveries_back_off_with_equal_jitter_up_to_max_backoff() {
        let settings = DeliverySettings::default();
        let (min, max) = (settings.min_backoff, settings.max_backoff);
        let b = backoff(&settings);
        for n in 1..=15u32 {
            let nominal = (min * 2u32.pow(n - 1)).min(max);
            assert_eq!(b.delay_at(n, 0.0), nominal / 2, "attempt {n}");
            assert_eq!(b.delay_at(n, 1.0), nominal, "attempt {n}");
            let d = b.delay_or_suggested(n, None);
            assert!(d >= nominal / 2 && d <= nominal, "attempt {n}: {d:?}");
        }
    }

    #[test]
    fn a_retry_after_is_honoured_past_max_backoff_but_within_an_hour_and_never_below_min() {
        let settings = DeliverySettings {
            min_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            ..DeliverySettings::default()
        };
        let b = backoff(&settings);
        let after = |v: &str| b.delay_or_suggested(1, parse_retry_after(v, SystemTime::now()));
        assert_eq!(after("7"), Duration::from_secs(7));
        assert_eq!(after("600"), Duration::from_secs(600));
        assert_eq!(after("86400"), MAX_RETRY_AFTER);
        assert_eq!(after("99999999999999999999999"), MAX_RETRY_AFTER);
        assert_eq!(after("0"), Duration::from_secs(2));
        let past = b.delay_or_suggested(
            1,
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", SystemTime::now()),
        );
        assert_eq!(past, Duration::from_secs(2));
    }
}
