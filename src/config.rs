//! The daemon's configuration file (also read by `run --config` for its targets).
//! `${VAR}` in a string value expands from the environment; an unset variable is an
//! error, never an empty string.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::pg::Dsn;
use crate::plan::{Diagnostic, Diagnostics};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    public_url: Option<String>,
    state_database: Option<String>,
    backup_dir: Option<String>,
    #[serde(default)]
    targets: BTreeMap<String, RawTarget>,
    #[serde(default)]
    tokens: Vec<RawToken>,
    #[serde(default)]
    channels: BTreeMap<String, crate::notify::config::RawChannel>,
    #[serde(default)]
    escalation: BTreeMap<String, crate::notify::config::RawPolicy>,
    notifications: Option<crate::notify::config::RawDelivery>,
    log: Option<RawLog>,
    daemon: Option<RawDaemon>,
    retention: Option<RawRetention>,
    tls: Option<RawTls>,
}

/// `tls: {cert, key}`: positions kept, so that a file that cannot serve is
/// reported at the value naming it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: serde_saphyr::Spanned<String>,
    key: serde_saphyr::Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    sha256: Option<String>,
    token: Option<String>,
    #[serde(default)]
    roles: Vec<Role>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    name: Option<String>,
    lease_timeout: Option<String>,
    poll_interval: Option<String>,
    max_active_runs: Option<u32>,
    shutdown_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    samples: Option<String>,
    events: Option<String>,
    notifications: Option<String>,
    audit: Option<String>,
    interval: Option<String>,
    batch: Option<u32>,
}

/// What a token may do. Every role may also read; `admin` may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Read,
    Submit,
    Approve,
    Admin,
}

/// An API token: only its sha256 is kept in memory.
#[derive(Clone)]
pub struct Token {
    pub name: String,
    pub sha256: [u8; 32],
    pub roles: Vec<Role>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

impl Token {
    pub fn has(&self, role: Role) -> bool {
        role == Role::Read || self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    #[default]
    Pretty,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter directive (`info`, `pgshepherd=debug`); `RUST_LOG` wins.
    pub level: String,
}

/// How the daemon schedules and leases runs.
#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// This daemon's name in leases and logs (default: hostname and pid).
    pub name: Option<String>,
    /// A run whose owner has not renewed its lease for this long is taken over.
    pub lease_timeout: std::time::Duration,
    /// How often the scheduler looks for work, renews leases and reads abort requests.
    pub poll_interval: std::time::Duration,
    /// Runs this daemon drives at once; more wait in the queue.
    pub max_active_runs: u32,
    /// On SIGTERM, how long in-flight steps get to reach a checkpoint.
    pub shutdown_timeout: std::time::Duration,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            name: None,
            lease_timeout: std::time::Duration::from_secs(15),
            poll_interval: std::time::Duration::from_secs(1),
            max_active_runs: 500,
            shutdown_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// How long the state database keeps what it no longer needs (see
/// docs/operations.md, "State database retention"). `None`: kept for ever
/// (`never` in the file). Rows of runs that are not finished are never pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Check samples (`check_sample` events) of runs finished longer ago.
    pub samples: Option<std::time::Duration>,
    /// Every other event of runs finished longer ago.
    pub events: Option<std::time::Duration>,
    /// Notifications no longer pending (delivered, failed, dropped) of runs
    /// finished longer ago.
    pub notifications: Option<std::time::Duration>,
    /// Audit rows older than this (except those of runs not yet finished).
    pub audit: Option<std::time::Duration>,
    /// How often the pruning task runs.
    pub interval: std::time::Duration,
    /// Rows deleted per statement (each in its own short transaction).
    pub batch: i64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        RetentionSettings {
            samples: Some(std::time::Duration::from_secs(14 * DAY)),
            events: Some(std::time::Duration::from_secs(90 * DAY)),
            notifications: Some(std::time::Duration::from_secs(30 * DAY)),
            audit: Some(std::time::Duration::from_secs(180 * DAY)),
            interval: std::time::Duration::from_secs(600),
            batch: 1000,
        }
    }
}

/// The certificate and key the daemon serves HTTPS with (`tls:`), loaded and
/// checked when the config is; the daemon re-reads the same files on SIGHUP.
#[derive(Clone)]
pub struct TlsSettings {
    /// PEM: the server's certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM: its private key (unencrypted).
    pub key: PathBuf,
    /// The pair as loaded with the config.
    pub loaded: std::sync::Arc<rustls::sign::CertifiedKey>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    dsn: String,
    rehearsal_dsn: Option<String>,
    #[serde(default)]
    require_approval: bool,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub listen: Option<String>,
    /// The address users reach the daemon at (`public_url`, no trailing `/`):
    /// notices link a run's own pages under it.
    pub public_url: Option<String>,
    pub state_database: Option<Dsn>,
    pub backup_dir: Option<PathBuf>,
    pub targets: BTreeMap<String, Dsn>,
    /// Targets whose runs always need a second person's approval, whatever the
    /// submitted plan says (`targets.NAME.require_approval: true`).
    pub approval_required: std::collections::BTreeSet<String>,
    /// Where the daemon makes the scratch databases of a target's rehearsals
    /// (`targets.NAME.rehearsal_dsn`): a server it may `CREATE DATABASE` on.
    /// A target without one is rehearsed on its own server. Secret-bearing
    /// like `targets`.
    pub rehearsal_servers: BTreeMap<String, Dsn>,
    pub tokens: Vec<Token>,
    pub log: LogSettings,
    pub daemon: DaemonSettings,
    /// What the daemon prunes from the state database, and when.
    pub retention: RetentionSettings,
    /// Channels, escalation policies and delivery settings.
    pub notify: crate::notify::config::NotifyConfig,
    /// HTTPS on `listen` (the API and the web page); `None`: plain HTTP.
    pub tls: Option<TlsSettings>,
}

/// A target name the config does not define.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}: target {target:?} is not defined (targets: {})",
    .config.display(),
    if .known.is_empty() { "none".to_string() } else { .known.join(", ") }
)]
pub struct UnknownTarget {
    pub config: PathBuf,
    pub target: String,
    /// The targets the config does define.
    pub known: Vec<String>,
}

impl Config {
    /// Whether the daemon serves HTTPS (so a session cookie can be `Secure`).
    pub fn serves_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The connection string of target `name`.
    pub fn target(&self, name: &str) -> Result<Dsn, UnknownTarget> {
        self.targets
            .get(name)
            .cloned()
            .ok_or_else(|| UnknownTarget {
                config: self.path.clone(),
                target: name.to_string(),
                known: self.targets.keys().cloned().collect(),
            })
    }

    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        let fail = |line: u32, col: u32, msg: String| {
            Diagnostics(vec![Diagnostic::new(path, line, col, msg)])
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(0, 0, format!("cannot read the config: {e}")))?;
        let raw: RawConfig = serde_saphyr::from_str(&text).map_err(|e| {
            let (line, col) = e
                .location()
                .map(|l| (l.line() as u32, l.column() as u32))
                .unwrap_or((0, 0));
            // The parser may quote the offending value, which can be a DSN.
            fail(
                line,
                col,
                crate::pg::dsn::redact_text(&first_line(&e.to_string())),
            )
        })?;
        let mut errors = Vec::new();
        let mut dsn = |what: &str, s: &str| -> Option<Dsn> {
            match expand_dsn(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    errors.push(Diagnostic::new(path, 0, 0, format!("{what}: {e}")));
                    None
                }
            }
        };
        let state_database = raw
            .state_database
            .as_deref()
            .and_then(|s| dsn("state_database", s));
        let targets = raw
            .targets
            .iter()
            .filter_map(|(name, t)| {
                dsn(&format!("targets.{name}.dsn"), &t.dsn).map(|d| (name.clone(), d))
            })
            .collect();
        let rehearsal_servers = raw
            .targets
            .iter()
            .filter_map(|(name, t)| {
                let d = t.rehearsal_dsn.as_deref()?;
                dsn(&format!("targets.{name}.rehearsal_dsn"), d).map(|d| (name.clone(), d))
            })
            .collect();
        let backup_dir = match raw.backup_dir.as_deref().map(expand_env).transpose() {
            Ok(d) => d.map(PathBuf::from),
            Err(e) => {
                errors.push(Diagnostic::new(path, 0, 0, format!("backup_dir: {e}")));
                None
            }
        };
        let public_url = raw.public_url.as_deref().and_then(|u| {
            check_public_url(u)
                .map_err(|m| errors.push(Diagnostic::new(path, 0, 0, format!("public_url: {m}"))))
                .ok()
        });
        let mut notify_errors = Vec::new();
        let mut notify = crate::notify::config::resolve(
            &raw.channels,
            &raw.escalation,
            raw.notifications.as_ref(),
            &mut notify_errors,
        );
        // Notices are built from the notification settings alone.
        notify.delivery.public_url = public_url.clone();
        errors.extend(
            notify_errors
                .into_iter()
                .map(|m| Diagnostic::new(path, 0, 0, m)),
        );
        let listen = match raw.listen.as_deref().map(expand_env).transpose() {
            Ok(l) => l,
            Err(e) => {
                errors.push(Diagnostic::new(path, 0, 0, format!("listen: {e}")));
                None
            }
        };
        let mut tokens = Vec::new();
        for (i, t) in raw.tokens.iter().enumerate() {
            let at =
                |m: String| Diagnostic::new(path, 0, 0, format!("tokens[{i}] ({}): {m}", t.name));
            let digest = match (&t.sha256, &t.token) {
                (Some(h), None) => match hex::decode(h.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                {
                    Some(d) => d,
                    None => {
                        errors.push(at(
                            "`sha256` must be 64 hex digits (sha256sum of the token)".into(),
                        ));
                        continue;
                    }
                },
                (None, Some(plain)) => match expand_env(plain) {
                    Ok(p) if p.len() >= 16 => {
                        <sha2::Sha256 as sha2::Digest>::digest(p.as_bytes()).into()
                    }
                    Ok(_) => {
                        errors.push(at("a token must be at least 16 characters".into()));
                        continue;
                    }
                    Err(e) => {
                        errors.push(at(e.to_string()));
                        continue;
                    }
                },
                _ => {
                    errors.push(at(
                        "give exactly one of `sha256` (recommended) or `token`".into()
                    ));
                    continue;
                }
            };
            if t.roles.is_empty() {
                errors.push(at(
                    "`roles` must list at least one of read, submit, approve, admin".into(),
                ));
            }
            if tokens.iter().any(|o: &Token| o.name == t.name) {
                errors.push(at(
                    "token names must be unique (they name actors in the audit trail)".into(),
                ));
            }
            tokens.push(Token {
                name: t.name.clone(),
                sha256: digest,
                roles: t.roles.clone(),
            });
        }
        let log = LogSettings {
            format: raw.log.as_ref().and_then(|l| l.format).unwrap_or_default(),
            level: raw
                .log
                .as_ref()
                .and_then(|l| l.level.clone())
                .unwrap_or_else(|| "info".into()),
        };
        let mut daemon = DaemonSettings::default();
        if let Some(d) = &raw.daemon {
            let mut duration = |key: &str, v: &Option<String>, slot: &mut std::time::Duration| {
                if let Some(v) = v {
                    match crate::plan::duration::parse(v) {
                        Ok(x) if !x.is_zero() => *slot = x,
                        Ok(_) => errors.push(Diagnostic::new(
                            path,
                            0,
                            0,
                            format!("daemon.{key} must be > 0"),
                        )),
                        Err(e) => {
                            errors.push(Diagnostic::new(path, 0, 0, format!("daemon.{key}: {e}")))
                        }
                    }
                }
            };
            duration("lease_timeout", &d.lease_timeout, &mut daemon.lease_timeout);
            duration("poll_interval", &d.poll_interval, &mut daemon.poll_interval);
            duration(
                "shutdown_timeout",
                &d.shutdown_timeout,
                &mut daemon.shutdown_timeout,
            );
            daemon.name = d.name.clone();
            if let Some(n) = d.max_active_runs {
                daemon.max_active_runs = n.max(1);
            }
            if daemon.poll_interval * 2 > daemon.lease_timeout {
                errors.push(Diagnostic::new(path, 0, 0, "daemon.poll_interval must be at most half of daemon.lease_timeout (leases are renewed every poll)".to_string()));
            }
        }
        let retention = resolve_retention(path, raw.retention.as_ref(), &mut errors);
        let tls = raw
            .tls
            .as_ref()
            .and_then(|t| resolve_tls(path, t, &mut errors));
        if !errors.is_empty() {
            return Err(Diagnostics(errors));
        }
        Ok(Config {
            path: path.to_path_buf(),
            listen,
            public_url,
            state_database,
            backup_dir,
            targets,
            approval_required: raw
                .targets
                .iter()
                .filter(|(_, t)| t.require_approval)
                .map(|(name, _)| name.clone())
                .collect(),
            rehearsal_servers,
            tokens,
            log,
            daemon,
            retention,
            notify,
            tls,
        })
    }
}

/// `tls:`: both files read and checked now, so that a daemon never starts (or
/// a config check never passes) with a pair that cannot serve.
fn resolve_tls(path: &Path, raw: &RawTls, errors: &mut Vec<Diagnostic>) -> Option<TlsSettings> {
    let at = |spanned: &serde_saphyr::Spanned<String>, msg: String| {
        let l = spanned.referenced;
        Diagnostic::new(path, l.line() as u32, l.column() as u32, msg)
    };
    let mut file =
        |key: &str, spanned: &serde_saphyr::Spanned<String>| match expand_env(&spanned.value) {
            Ok(p) if !p.trim().is_empty() => Some(PathBuf::from(p)),
            Ok(_) => {
                errors.push(at(spanned, format!("tls.{key} must name a PEM file")));
                None
            }
            Err(e) => {
                errors.push(at(spanned, format!("tls.{key}: {e}")));
                None
            }
        };
    let (cert, key) = (file("cert", &raw.cert), file("key", &raw.key));
    let (cert, key) = (cert?, key?);
    match crate::tls::load_server_key(&cert, &key) {
        Ok(loaded) => Some(TlsSettings { cert, key, loaded }),
        Err(e) => {
            let (name, spanned) = if e.in_key_file() {
                ("key", &raw.key)
            } else {
                ("cert", &raw.cert)
            };
            errors.push(at(spanned, format!("tls.{name}: {e}")));
            None
        }
    }
}

/// `retention:`: each age is a duration or `never`; defaults for what is absent.
fn resolve_retention(
    path: &Path,
    raw: Option<&RawRetention>,
    errors: &mut Vec<Diagnostic>,
) -> RetentionSettings {
    let mut settings = RetentionSettings::default();
    let Some(raw) = raw else {
        return settings;
    };
    let mut error = |msg: String| errors.push(Diagnostic::new(path, 0, 0, msg));
    let mut age = |key: &str, v: &Option<String>, slot: &mut Option<std::time::Duration>| {
        let Some(v) = v else { return };
        if v.trim() == "never" {
            *slot = None;
            return;
        }
        match crate::plan::duration::parse(v) {
            Ok(x) if !x.is_zero() => *slot = Some(x),
            Ok(_) => error(format!(
                "retention.{key} must be > 0 (or `never` to keep for ever)"
            )),
            Err(e) => error(format!("retention.{key}: {e}")),
        }
    };
    age("samples", &raw.samples, &mut settings.samples);
    age("events", &raw.events, &mut settings.events);
    age(
        "notifications",
        &raw.notifications,
        &mut settings.notifications,
    );
    age("audit", &raw.audit, &mut settings.audit);
    let mut interval = Some(settings.interval);
    age("interval", &raw.interval, &mut interval);
    match interval {
        Some(i) => settings.interval = i,
        None => errors.push(Diagnostic::new(
            path,
            0,
            0,
            "retention.interval must be a duration".to_string(),
        )),
    }
    if let Some(b) = raw.batch {
        settings.batch = i64::from(b.clamp(1, 100_000));
    }
    settings
}

/// `public_url`: an absolute `http(s)` URL (a path prefix is fine: the daemon
/// may sit behind a proxy under `/pgshepherd`) without query, fragment or
/// credentials, since run paths are appended to it. Returned without a
/// trailing `/`.
fn check_public_url(u: &str) -> Result<String, PublicUrlError> {
    let url =
        reqwest::Url::parse(u.trim()).map_err(|e| PublicUrlError::NotAbsolute(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(PublicUrlError::Scheme(url.scheme().to_string()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(PublicUrlError::QueryOrFragment);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(PublicUrlError::Credentials);
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Why `public_url` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicUrlError {
    #[error("not an absolute URL ({0}); write e.g. https://pgshepherd.example.com")]
    NotAbsolute(String),
    #[error("must be an http or https URL, not {0}:")]
    Scheme(String),
    #[error("must have no query (`?`) or fragment (`#`): run paths are appended to it")]
    QueryOrFragment,
    #[error("must not carry credentials: it is written into messages")]
    Credentials,
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_string()
}

/// Why `${VAR}` could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("unterminated ${{ (write ${{NAME}})")]
    Unterminated,
    #[error("environment variable {name} is not set")]
    NotSet { name: String },
}

/// A connection string of the configuration: `${VAR}` expanded, then parsed.
#[derive(Debug, thiserror::Error)]
enum DsnValueError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Dsn(#[from] crate::pg::dsn::DsnError),
}

fn expand_dsn(s: &str) -> Result<Dsn, DsnValueError> {
    Ok(expand_env(s)?.parse::<Dsn>()?)
}

/// Expand `${VAR}` from the environment. `$$` is a literal `$`.
pub fn expand_env(s: &str) -> Result<String, EnvError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or(EnvError::Unterminated)?;
            let name = &body[..end];
            let value = std::env::var(name).map_err(|_| EnvError::NotSet {
                name: name.to_string(),
            })?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{RawRetention, RetentionSettings, check_public_url, expand_env, resolve_retention};

    #[test]
    fn a_targets_rehearsal_dsn_is_read_expanded_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        // SAFETY: tests in this module are the only users of this variable name.
        unsafe { std::env::set_var("PGSHEPHERD_TEST_REHEARSE_PW", "s3cret-rehearse") };
        std::fs::write(
            &path,
            concat!(
                "public_url: https://pgshepherd.example.com/\n",
                "targets:\n",
                "  main:\n",
                "    dsn: postgres://u@db/main\n",
                "    rehearsal_dsn: \"postgres://r:${PGSHEPHERD_TEST_REHEARSE_PW}@scratch/postgres\"\n",
                "  other:\n",
                "    dsn: postgres://u@db/other\n",
            ),
        )
        .unwrap();
        let c = super::Config::load(&path).unwrap();
        assert_eq!(c.rehearsal_servers.len(), 1);
        let server = &c.rehearsal_servers["main"];
        assert_eq!(server.dbname(), "postgres");
        assert!(!format!("{server} {c:?}").contains("s3cret-rehearse"));
        assert_eq!(
            c.public_url.as_deref(),
            Some("https://pgshepherd.example.com")
        );
        assert_eq!(
            c.notify.delivery.public_url.as_deref(),
            Some("https://pgshepherd.example.com")
        );
        std::fs::write(
            &path,
            concat!(
                "public_url: https://x.example.com/?a=1\n",
                "targets:\n",
                "  main:\n",
                "    dsn: postgres://u@db/main\n",
                "    rehearsal_dsn: \"postgres://r:${PGSHEPHERD_TEST_NOT_SET_REHEARSE}@scratch/postgres\"\n",
            ),
        )
        .unwrap();
        let errors = super::Config::load(&path).unwrap_err().to_string();
        assert!(
            errors.contains("targets.main.rehearsal_dsn")
                && errors.contains("PGSHEPHERD_TEST_NOT_SET_REHEARSE")
                && errors.contains("public_url: must have no query"),
            "{errors}"
        );
    }

    #[test]
    fn public_url_is_an_http_url_without_query() {
        assert_eq!(
            check_public_url("https://pgshepherd.example.com/").unwrap(),
            "https://pgshepherd.example.com"
        );
        assert_eq!(
            check_public_url("http://ops.internal:8750/pgshepherd").unwrap(),
            "http://ops.internal:8750/pgshepherd"
        );
        for bad in [
            "pgshepherd.example.com",
            "ftp://x.example.com",
            "https://x.example.com/?a=1",
            "https://x.example.com/#top",
            "https://u:pw@x.example.com",
        ] {
            assert!(check_public_url(bad).is_err(), "{bad}");
        }
        let e = check_public_url("https://u:pw@x").unwrap_err();
        assert_eq!(e, super::PublicUrlError::Credentials);
        assert!(!e.to_string().contains("pw"));
    }

    #[test]
    fn retention_has_defaults_never_and_refuses_zero() {
        let path = std::path::Path::new("c.yaml");
        let mut errors = Vec::new();
        assert_eq!(
            resolve_retention(path, None, &mut errors),
            RetentionSettings::default()
        );
        let raw: RawRetention =
            serde_saphyr::from_str("samples: 1s\naudit: never\ninterval: 200ms\nbatch: 10")
                .unwrap();
        let r = resolve_retention(path, Some(&raw), &mut errors);
        assert!(errors.is_empty());
        assert_eq!(r.samples, Some(std::time::Duration::from_secs(1)));
        assert_eq!(r.audit, None);
        assert_eq!(r.events, RetentionSettings::default().events);
        assert_eq!((r.interval.as_millis(), r.batch), (200, 10));
        let raw: RawRetention = serde_saphyr::from_str("events: 0s\ninterval: never").unwrap();
        resolve_retention(path, Some(&raw), &mut errors);
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn a_tls_file_that_cannot_be_read_is_reported_at_its_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        let missing = dir.path().join("missing.pem");
        std::fs::write(
            &path,
            format!(
                "listen: 127.0.0.1:0\ntls:\n  cert: {m}\n  key: {m}\n",
                m = missing.display()
            ),
        )
        .unwrap();
        let errors = super::Config::load(&path).unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!((e.line, e.column), (3, 9), "{e}");
        assert!(
            e.message
                .starts_with("tls.cert: cannot read the certificate file"),
            "{e}"
        );
        let plain = dir.path().join("plain.yaml");
        std::fs::write(&plain, "listen: 127.0.0.1:0\n").unwrap();
        assert!(!super::Config::load(&plain).unwrap().serves_tls());
    }

    #[test]
    fn expands_set_variables_and_refuses_unset_ones() {
        // SAFETY: tests in this module are the only users of this variable name.
        unsafe { std::env::set_var("PGSHEPHERD_TEST_PW", "s3cret") };
        assert_eq!(
            expand_env("postgres://u:${PGSHEPHERD_TEST_PW}@h/db").unwrap(),
            "postgres://u:s3cret@h/db"
        );
        assert_eq!(
            expand_env("cost $$5 and $HOME").unwrap(),
            "cost $5 and $HOME"
        );
        assert!(
            expand_env("${PGSHEPHERD_NOT_SET_ANYWHERE}")
                .unwrap_err()
                .to_string()
                .contains("PGSHEPHERD_NOT_SET_ANYWHERE")
        );
        assert_eq!(
            expand_env("postgres://u:${PW@h/db")
                .unwrap_err()
                .to_string(),
            "unterminated ${ (write ${NAME})"
        );
    }
}
