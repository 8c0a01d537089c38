//! The connection to the daemon. Every failure becomes a [`Failure`] that knows
//! its message and its exit code: 2 when the daemon refused the request (nothing
//! was changed), 1 when it could not be reached or failed.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use crate::client::ClientOptions;

/// How long to wait for the TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence on a response; event streams send a keep-alive every 15 s.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A request that did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// The command line is wrong (a malformed `--server` or run id).
    Usage(String),
    /// The daemon could not be reached, or the connection broke.
    Unreachable(String),
    /// The daemon answered with an error status.
    Refused {
        status: StatusCode,
        message: String,
        /// `file:line:column: message` of an invalid plan.
        errors: Vec<String>,
    },
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Unreachable(_) => 1,
            Failure::Refused { status, .. } if status.is_client_error() => 2,
            Failure::Refused { .. } => 1,
        }
    }

    /// Print to stderr (errors of an invalid plan one per line, like `check`);
    /// returns the exit code.
    pub fn report(&self) -> i32 {
        match self {
            Failure::Usage(m) => eprintln!("error: {m}"),
            Failure::Unreachable(m) => eprintln!("error: {m}"),
            Failure::Refused {
                status,
                message,
                errors,
            } => {
                for e in errors {
                    eprintln!("{e}");
                }
                eprintln!("error: {message} (HTTP {})", status.as_u16());
            }
        }
        self.exit_code()
    }
}

/// The certificates of `--ca-cert FILE`. Only they authenticate the daemon
/// then, as with curl's `--cacert`: a private CA is not mixed with the
/// hundreds of public ones.
fn ca_certificates(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, Failure> {
    let pem = std::fs::read(path)
        .map_err(|e| Failure::Usage(format!("cannot read --ca-cert {}: {e}", path.display())))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(Failure::Usage(format!(
            "--ca-cert {} holds no certificate (no BEGIN CERTIFICATE block)",
            path.display()
        ))),
        Err(e) => Err(Failure::Usage(format!(
            "--ca-cert {} is not a PEM certificate file: {e}",
            path.display()
        ))),
    }
}

/// The daemon at `--server`, with `--token`.
pub struct Api {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl Api {
    pub fn new(options: &ClientOptions) -> Result<Api, Failure> {
        let given = options.server.trim().trim_end_matches('/');
        // `--server host:port` means plain HTTP, as the daemon's `listen` is written.
        let base = if given.contains("://") {
            given.to_string()
        } else {
            format!("http://{given}")
        };
        let url = Url::parse(&base).map_err(|e| {
            Failure::Usage(format!("--server {:?} is not a URL: {e}", options.server))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(Failure::Usage(format!(
                "--server {:?} must be an http:// or https:// URL",
                options.server
            )));
        }
        crate::tls::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("pgshepherd/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT);
        if let Some(ca) = &options.ca_cert {
            builder = builder.tls_certs_only(ca_certificates(ca)?);
        }
        let client = builder
            .build()
            .map_err(|e| Failure::Unreachable(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Api {
            base,
            token: options.token.clone().filter(|t| !t.is_empty()),
            client,
        })
    }

    /// `path` (which starts with `/`) below the server's base URL.
    pub fn url(&self, path: &str) -> Result<Url, Failure> {
        Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| Failure::Usage(format!("bad URL {}{path}: {e}", self.base)))
    }

    pub fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, url);
        match &self.token {
            Some(t) => builder.bearer_auth(t),
            None => builder,
        }
    }

    /// Send, and turn a transport error or an error status into a [`Failure`].
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Failure> {
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.refused(response).await)
    }

    /// A JSON answer.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), Failure> {
        let mut request = self.request(method, self.url(path)?);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.send(request).await?;
        let status = response.status();
        let value = response.json::<Value>().await.map_err(|e| {
            Failure::Unreachable(format!(
                "the daemon's answer is not JSON: {}",
                e.without_url()
            ))
        })?;
        Ok((status, value))
    }

    pub fn unreachable(&self, e: &reqwest::Error) -> Failure {
        // reqwest's own layers ("error sending request for url (...)", "client
        // error (Connect)") say nothing the cause does not; keep the causes.
        let mut parts = Vec::new();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            let text = s.to_string();
            if !text.starts_with("client error") && !parts.contains(&text) {
                parts.push(text);
            }
            source = s.source();
        }
        if parts.is_empty() {
            parts.push(e.to_string());
        }
        let what = if e.is_timeout() {
            "no answer from the daemon at"
        } else {
            "cannot reach the daemon at"
        };
        Failure::Unreachable(format!("{what} {}: {}", self.base, parts.join(": ")))
    }

    async fn refused(&self, response: reqwest::Response) -> Failure {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let mut message = body["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let reason = status.canonical_reason().unwrap_or("error");
                let text = text.trim();
                if text.is_empty() {
                    reason.to_string()
                } else {
                    format!("{reason}: {}", text.chars().take(300).collect::<String>())
                }
            });
        if status == StatusCode::UNAUTHORIZED && self.token.is_none() {
            message.push_str(" (no token given: use --token or PGSHEPHERD_TOKEN)");
        }
        let errors = body["errors"]
            .as_array()
            .map(|a| a.iter().map(diagnostic_line).collect())
            .unwrap_or_default();
        Failure::Refused {
            status,
            message,
            errors,
        }
    }
}

/// `file:line:column: message`, as `check` prints it.
pub fn diagnostic_line(d: &Value) -> String {
    format!(
        "{}:{}:{}: {}",
        d["file"].as_str().unwrap_or("?"),
        d["line"].as_u64().unwrap_or(0),
        d["column"].as_u64().unwrap_or(0),
        d["message"].as_str().unwrap_or("")
    )
}

/// 2 unless `id` looks like a run id, before anything is sent.
pub fn check_run_id(id: &str) -> Result<(), Failure> {
    if crate::daemon::api::view::valid_run_id(id) {
        Ok(())
    } else {
        Err(Failure::Usage(format!(
            "{id:?} is not a run id (12 lowercase hex digits, as `submit` and `list` print them)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_exit_2_and_failures_exit_1() {
        let refused = |s: u16| Failure::Refused {
            status: StatusCode::from_u16(s).unwrap(),
            message: String::new(),
            errors: Vec::new(),
        };
        for s in [400, 401, 403, 404, 409, 413, 422] {
            assert_eq!(refused(s).exit_code(), 2, "{s}");
        }
        assert_eq!(refused(500).exit_code(), 1);
        assert_eq!(refused(503).exit_code(), 1);
        assert_eq!(Failure::Unreachable(String::new()).exit_code(), 1);
        assert_eq!(Failure::Usage(String::new()).exit_code(), 2);
    }

    #[test]
    fn server_urls_are_checked() {
        let opts = |s: &str| ClientOptions {
            server: s.into(),
            token: None,
            ca_cert: None,
            json: false,
        };
        assert!(Api::new(&opts("http://127.0.0.1:8750/")).is_ok());
        assert_eq!(
            Api::new(&opts("127.0.0.1:8750"))
                .unwrap()
                .url("/healthz")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8750/healthz"
        );
        assert!(matches!(
            Api::new(&opts("http://exa mple")),
            Err(Failure::Usage(_))
        ));
        assert!(matches!(Api::new(&opts("ftp://x")), Err(Failure::Usage(_))));
        let api = Api::new(&opts("https://ops.example/pgshepherd/")).unwrap();
        assert_eq!(
            api.url("/v1/runs").unwrap().as_str(),
            "https://ops.example/pgshepherd/v1/runs"
        );
    }

    #[test]
    fn diagnostics_print_like_check() {
        let d =
            serde_json::json!({"file": "p.yaml", "line": 3, "column": 1, "message": "unknown key"});
        assert_eq!(diagnostic_line(&d), "p.yaml:3:1: unknown key");
    }
}
