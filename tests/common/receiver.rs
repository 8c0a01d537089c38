//! A webhook receiver for notification tests: a real HTTP server on 127.0.0.1
//! that records every request (arrival time, path, headers, raw body) and whose
//! answers a test changes while it runs: a status, a `Retry-After`, a delay
//! before answering, no answer until the test releases it, or a script deciding
//! per request (e.g. "the first attempt of every webhook-id gets 500").
//!
//! A receiver can be *reserved* first: its port is bound but nothing listens, so
//! a channel pointing at it sees "connection refused" until the test calls
//! [`Receiver::listen`]. [`Receiver::stop`] takes it down again.
//!
//! [`verify`] checks a Standard Webhooks signature. It is written from the
//! specification (<https://www.standardwebhooks.com/>) with the `hmac`, `sha2`
//! and `base64` crates, and shares nothing with pgshepherd's signing code: a
//! test that used the product to check the product would prove nothing.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::net::TcpSocket;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// One request as it arrived, and what the receiver answered.
#[derive(Debug, Clone)]
pub struct Request {
    /// 0-based arrival order across the receiver's life.
    pub seq: usize,
    pub at: Instant,
    pub wall: DateTime<Utc>,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What attempts are counted by: the `webhook-id`, or for unsigned chat
    /// payloads (which have none) the body's sha256.
    pub key: String,
    /// 1-based: how many times this receiver has seen `key`, this one included.
    pub attempt: u32,
    /// The status answered.
    pub status: u16,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The `webhook-id` header (generic channels).
    pub fn id(&self) -> &str {
        self.header("webhook-id").unwrap_or_default()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "request {} to {} is not JSON ({e}): {}",
                self.seq,
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `type` of a generic payload (`run.succeeded`), or "" for other shapes.
    pub fn kind(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    pub fn body_contains(&self, s: &str) -> bool {
        String::from_utf8_lossy(&self.body).contains(s)
    }

    pub fn delivered(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// How to answer one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Answer only once the test calls [`Receiver::release`].
    pub held: bool,
    pub body: String,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            retry_after: None,
            delay: Duration::ZERO,
            held: false,
            body: String::new(),
        }
    }

    /// Hold the answer until [`Receiver::release`] (for ever, if never): the
    /// sender is "mid-request" for exactly as long as the test needs.
    pub fn held(mut self) -> Reply {
        self.held = true;
        self
    }

    pub fn retry_after(mut self, value: &str) -> Reply {
        self.retry_after = Some(value.to_string());
        self
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn body(mut self, body: impl Into<String>) -> Reply {
        self.body = body.into();
        self
    }
}

type Script = Box<dyn Fn(&Request) -> Option<Reply> + Send + Sync>;

struct Behaviour {
    /// Answer to anything the script leaves alone.
    default: Reply,
    /// The first `n` attempts of every key get this reply.
    fail_first: Option<(u32, Reply)>,
    script: Option<Script>,
}

struct Inner {
    requests: Mutex<Vec<Request>>,
    attempts: Mutex<HashMap<String, u32>>,
    behaviour: Mutex<Behaviour>,
    /// Becomes true when the test releases held replies.
    released: watch::Sender<bool>,
}

struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

pub struct Receiver {
    addr: SocketAddr,
    inner: Arc<Inner>,
    /// The bound socket while nothing listens on it.
    reserved: Mutex<Option<TcpSocket>>,
    server: Mutex<Option<Server>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Receiver {
    /// A port of its own, bound but not listening: connecting to it is refused
    /// until [`Receiver::listen`].
    pub fn reserve() -> Receiver {
        let socket = TcpSocket::new_v4().expect("creating a socket");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("binding 127.0.0.1:0");
        let addr = socket.local_addr().unwrap();
        Receiver {
            addr,
            inner: Arc::new(Inner {
                requests: Mutex::new(Vec::new()),
                attempts: Mutex::new(HashMap::new()),
                behaviour: Mutex::new(Behaviour {
                    default: Reply::status(200),
                    fail_first: None,
                    script: None,
                }),
                released: watch::channel(false).0,
            }),
            reserved: Mutex::new(Some(socket)),
            server: Mutex::new(None),
        }
    }

    /// A receiver that is up, answering 200 to everything.
    pub async fn start() -> Receiver {
        let r = Receiver::reserve();
        r.listen().await;
        r
    }

    /// Start answering on the reserved port (again, after [`Receiver::stop`]).
    pub async fn listen(&self) {
        let socket = lock(&self.reserved).take();
        let listener = match socket {
            Some(s) => s.listen(1024).expect("listening on the reserved port"),
            None => {
                assert!(lock(&self.server).is_none(), "the receiver is already up");
                // Stopped before: bind the same port again.
                let s = TcpSocket::new_v4().unwrap();
                s.set_reuseaddr(true).unwrap();
                s.bind(self.addr)
                    .expect("binding the receiver's port again");
                s.listen(1024).unwrap()
            }
        };
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(self.inner.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        *lock(&self.server) = Some(Server { stop, task });
    }

    /// Stop listening and close connections (requests still being delayed are
    /// given a second, then cut).
    pub async fn stop(&self) {
        let server = lock(&self.server).take();
        if let Some(s) = server {
            let _ = s.stop.send(());
            let abort = s.task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), s.task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    // --- behaviour ---

    /// The status answered when nothing more specific applies (default 200).
    pub fn set_status(&self, status: u16) {
        lock(&self.inner.behaviour).default.status = status;
    }

    pub fn set_retry_after(&self, value: Option<&str>) {
        lock(&self.inner.behaviour).default.retry_after = value.map(str::to_string);
    }

    /// Wait this long before answering anything.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.inner.behaviour).default.delay = delay;
    }

    pub fn set_default(&self, reply: Reply) {
        lock(&self.inner.behaviour).default = reply;
    }

    /// The first `n` attempts of every webhook-id (or body, for unsigned
    /// payloads) get `reply`; later ones the default.
    pub fn fail_first_attempts(&self, n: u32, reply: Reply) {
        lock(&self.inner.behaviour).fail_first = Some((n, reply));
    }

    /// Decide per request (its `seq`, `key` and `attempt` are set, `status` is
    /// not yet); `None` falls back to `fail_first_attempts`, then to the default.
    pub fn script(&self, f: impl Fn(&Request) -> Option<Reply> + Send + Sync + 'static) {
        lock(&self.inner.behaviour).script = Some(Box::new(f));
    }

    /// Answer every held request, now and from now on.
    pub fn release(&self) {
        self.inner.released.send_replace(true);
    }

    // --- what arrived ---

    pub fn requests(&self) -> Vec<Request> {
        lock(&self.inner.requests).clone()
    }

    /// Requests answered with a 2xx, in arrival order.
    pub fn delivered(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.delivered())
            .collect()
    }

    /// Poll until `done` holds for the requests so far; panics after `timeout`
    /// with what did arrive.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Request]) -> bool,
    ) -> Vec<Request> {
        let started = Instant::now();
        loop {
            let requests = self.requests();
            if done(&requests) {
                return requests;
            }
            assert!(
                started.elapsed() < timeout,
                "receiver {}: {what}: not within {timeout:?}; got {}",
                self.addr,
                summary(&requests)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until a delivered (2xx) request satisfies `pred`; returns it.
    pub async fn wait_delivered(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Request) -> bool,
    ) -> Request {
        let all = self
            .wait_until(what, timeout, |rs| {
                rs.iter().any(|r| r.delivered() && pred(r))
            })
            .await;
        all.into_iter().find(|r| r.delivered() && pred(r)).unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(s) = lock(&self.server).take() {
            s.task.abort();
        }
    }
}

/// One line per request: seq, path, key, attempt, kind, status.
pub fn summary(requests: &[Request]) -> String {
    let lines: Vec<String> = requests
        .iter()
        .map(|r| {
            format!(
                "#{} {} {} attempt {} {} -> {}",
                r.seq,
                r.path,
                r.key,
                r.attempt,
                r.kind(),
                r.status
            )
        })
        .collect();
    format!("{} requests:\n  {}", requests.len(), lines.join("\n  "))
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let wall = Utc::now();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let key = headers
        .iter()
        .find(|(n, _)| n == "webhook-id")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| hex::encode(Sha256::digest(&body)));
    let mut request = Request {
        seq: 0,
        at,
        wall,
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers,
        body: body.to_vec(),
        key,
        attempt: 0,
        status: 0,
    };
    // Numbering, deciding and recording under one lock: `seq` is the arrival
    // order, and a script sees the request's real `seq`.
    let reply = {
        let mut requests = lock(&inner.requests);
        request.seq = requests.len();
        request.attempt = {
            let mut attempts = lock(&inner.attempts);
            let n = attempts.entry(request.key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let attempt = request.attempt;
        let b = lock(&inner.behaviour);
        let reply = b
            .script
            .as_ref()
            .and_then(|s| s(&request))
            .or_else(|| {
                b.fail_first
                    .as_ref()
                    .filter(|(n, _)| attempt <= *n)
                    .map(|(_, r)| r.clone())
            })
            .unwrap_or_else(|| b.default.clone());
        request.status = reply.status;
        requests.push(request);
        reply
    };
    if reply.held {
        let mut released = inner.released.subscribe();
        let _ = released.wait_for(|r| *r).await;
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = (
        StatusCode::from_u16(reply.status).expect("a valid status"),
        reply.body,
    )
        .into_response();
    if let Some(v) = reply.retry_after {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from_str(&v).unwrap());
    }
    response
}

// --- Standard Webhooks, from the specification ---

/// A fresh signing secret: `whsec_` and the standard base64 of 32 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// How far a `webhook-timestamp` may be from now (the specification's advice).
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// Whether `request` carries a valid signature for `secret` (`whsec_<base64>`),
/// now.
pub fn verify(secret: &str, request: &Request) -> Result<(), String> {
    let id = request.header("webhook-id").ok_or("no webhook-id header")?;
    let ts = request
        .header("webhook-timestamp")
        .ok_or("no webhook-timestamp header")?;
    let sig = request
        .header("webhook-signature")
        .ok_or("no webhook-signature header")?;
    verify_at(secret, id, ts, sig, &request.body, Utc::now().timestamp())
}

/// The verification itself: the timestamp is within [`TOLERANCE_SECS`] of
/// `now`, and one of the space-separated `v1,<base64>` signatures is the
/// HMAC-SHA256, keyed with the base64-decoded part of the secret after
/// `whsec_`, of `{id}.{timestamp}.{body}` (the raw body bytes).
pub fn verify_at(
    secret: &str,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
) -> Result<(), String> {
    let key = STANDARD
        .decode(
            secret
                .strip_prefix("whsec_")
                .ok_or("the secret lacks the whsec_ prefix")?,
        )
        .map_err(|e| format!("the secret is not base64: {e}"))?;
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| format!("webhook-timestamp {timestamp:?} is not unix seconds"))?;
    if (now - ts).abs() > TOLERANCE_SECS {
        return Err(format!(
            "webhook-timestamp {ts} is {}s away from now ({now})",
            now - ts
        ));
    }
    let mut signed = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    for candidate in signatures.split(' ').filter(|s| !s.is_empty()) {
        let Some(("v1", b64)) = candidate.split_once(',') else {
            continue;
        };
        let Ok(given) = STANDARD.decode(b64) else {
            continue;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(&signed);
        // Constant-time comparison, as the specification asks.
        if mac.verify_slice(&given).is_ok() {
            return Ok(());
        }
    }
    Err(format!(
        "no v1 signature in {signatures:?} matches this secret"
    ))
}
