//! HTTP checks: a GET with the check's timeout. The value is the latency in
//! milliseconds (request sent until the whole body arrived), or the number at
//! `json_pointer` in the JSON body when one is given.
//!
//! A status not in `expect_status` (2xx when the list is empty) is a *failed*
//! sample: it breaches whatever the thresholds say. No answer (connection refused,
//! timeout), a body that is not JSON, a pointer that is missing, null or not a
//! number are inconclusive: the probe learnt nothing about the service.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::{StatusCode, Url};

use crate::checks::session::{error_chain, ms};
use crate::checks::verdict::Observation;
use crate::plan::model::HttpProbe;

/// A body larger than this is not read further: a health endpoint returning
/// megabytes is a misconfiguration, and the soak must not buffer it per sample.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// One client for every HTTP check in the process: it owns the connection pool and
/// the TLS configuration, both expensive to build per check.
fn client() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            crate::tls::install_crypto_provider();
            reqwest::Client::builder()
                .user_agent(concat!("pgshepherd-check/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default()
        })
        .clone()
}

pub struct HttpSampler {
    probe: HttpProbe,
    /// The URL for messages, password replaced.
    shown_url: String,
    timeout: Duration,
    client: reqwest::Client,
}

impl HttpSampler {
    pub fn new(probe: &HttpProbe, timeout: Duration) -> Self {
        HttpSampler {
            shown_url: redact_url(&probe.url),
            probe: probe.clone(),
            timeout: timeout.max(Duration::from_millis(1)),
            client: client(),
        }
    }

    pub async fn sample(&mut self) -> Observation {
        let started = Instant::now();
        let response = match self
            .client
            .get(&self.probe.url)
            .timeout(self.timeout)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return Observation::Inconclusive {
                    reason: self.describe(e),
                };
            }
        };
        let status = response.status();
        let body = match read_capped(response).await {
            Ok(b) => b,
            Err(e) => {
                return Observation::Inconclusive {
                    reason: format!("{e} (status {status})"),
                };
            }
        };
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        if !self.expected(status) {
            let value = self.probe.json_pointer.is_none().then_some(latency_ms);
            return Observation::failed(
                value,
                format!("HTTP status {status}, {}", self.expected_text()),
            );
        }
        match &self.probe.json_pointer {
            None => Observation::Value(latency_ms),
            Some(pointer) => number_at(&body, pointer),
        }
    }

    fn expected(&self, status: StatusCode) -> bool {
        if self.probe.expect_status.is_empty() {
            status.is_success()
        } else {
            self.probe.expect_status.contains(&status.as_u16())
        }
    }

    fn expected_text(&self) -> String {
        match self.probe.expect_status.as_slice() {
            [] => "expected 2xx".to_string(),
            [one] => format!("expected {one}"),
            many => {
                let list: Vec<String> = many.iter().map(u16::to_string).collect();
                format!("expected one of {}", list.join(", "))
            }
        }
    }

    fn describe(&self, e: reqwest::Error) -> String {
        let (timeout, connect) = (e.is_timeout(), e.is_connect());
        // The URL is named once, redacted; reqwest's own message would repeat it in full.
        let chain = error_chain(&e.without_url());
        if timeout {
            format!(
                "GET {} timed out after {}",
                self.shown_url,
                ms(self.timeout)
            )
        } else if connect {
            format!("GET {}: cannot connect: {chain}", self.shown_url)
        } else {
            format!("GET {} failed: {chain}", self.shown_url)
        }
    }
}

/// Why a response body was not read; the sample adds the status.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("response body larger than {max} bytes", max = MAX_BODY_BYTES)]
    TooLarge,
    #[error("timed out while reading the response body")]
    Timeout,
    /// The error has its URL removed: messages name the URL once, redacted.
    #[error("cannot read the response body: {}", error_chain(.0))]
    Read(reqwest::Error),
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(BodyError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => return Err(BodyError::Timeout),
            Err(e) => return Err(BodyError::Read(e.without_url())),
        }
    }
}

fn number_at(body: &[u8], pointer: &str) -> Observation {
    let json: serde_json::Value = match serde_json::from_slice(body) {
        Ok(j) => j,
        Err(e) => return Observation::inconclusive(format!("response body is not JSON: {e}")),
    };
    match json.pointer(pointer) {
        None => Observation::inconclusive(format!("no value at JSON pointer {pointer}")),
        Some(serde_json::Value::Null) => {
            Observation::inconclusive(format!("JSON pointer {pointer} is null"))
        }
        Some(serde_json::Value::Number(n)) => match n.as_f64() {
            Some(v) => Observation::Value(v),
            None => Observation::inconclusive(format!(
                "JSON pointer {pointer} is not a representable number: {n}"
            )),
        },
        Some(other) => {
            let kind = match other {
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Array(_) => "an array",
                _ => "an object",
            };
            Observation::inconclusive(format!("JSON pointer {pointer} is {kind}, not a number"))
        }
    }
}

fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_pointer_values() {
        let body = br#"{"a": {"b": 1.5, "n": null, "s": "2", "t": true}, "l": [3]}"#;
        assert_eq!(number_at(body, "/a/b"), Observation::Value(1.5));
        assert_eq!(number_at(body, "/l/0"), Observation::Value(3.0));
        for (pointer, reason) in [
            ("/a/x", "no value at JSON pointer /a/x"),
            ("/a/n", "JSON pointer /a/n is null"),
            ("/a/s", "JSON pointer /a/s is a string, not a number"),
            ("/a/t", "JSON pointer /a/t is a boolean, not a number"),
            ("/a", "JSON pointer /a is an object, not a number"),
        ] {
            assert_eq!(number_at(body, pointer), Observation::inconclusive(reason));
        }
        assert!(
            matches!(number_at(b"<html>", "/a"), Observation::Inconclusive { reason } if reason.starts_with("response body is not JSON"))
        );
    }

    #[test]
    fn urls_in_messages_hide_passwords() {
        assert_eq!(
            redact_url("https://u:secret@h.example/health"),
            "https://u:***@h.example/health"
        );
        assert_eq!(redact_url("http://h:8080/x"), "http://h:8080/x");
    }
}
