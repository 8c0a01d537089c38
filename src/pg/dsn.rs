//! Connection strings that never print their password.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::{RootCertError, ServerVerification};

/// A target's connection string. `Display` and `Debug` redact the password, so a
/// `Dsn` can be logged, put in events and errors without leaking it.
///
/// tokio-postgres knows `sslmode` only up to `require` and no `sslrootcert`:
/// pgshepherd takes its TLS parameters out of the string before tokio-postgres
/// parses the rest, and keeps them here.
#[derive(Clone)]
pub struct Dsn {
    config: Config,
    tls: TlsSettings,
}

/// libpq's TLS parameters as pgshepherd applies them (see [`TlsSettings::resolve`]).
#[derive(Clone, Debug)]
struct TlsSettings {
    /// `sslmode` as written (libpq's name), for the tools' `PGSSLMODE`.
    mode: &'static str,
    /// The root certificate file libpq would use: `sslrootcert`, or
    /// `~/.postgresql/root.crt`, whether it exists or not (the tools get it in
    /// `PGSSLROOTCERT`, so they look where pgshepherd looked).
    root_cert: Option<PathBuf>,
    /// Set when the server's certificate is authenticated.
    verification: Option<ServerVerification>,
}

/// A connection string that pgshepherd cannot use. The string is never echoed,
/// not even redacted: a malformed string is exactly where a redactor can be
/// fooled.
#[derive(Debug, thiserror::Error)]
pub enum DsnError {
    #[error("invalid database URL (not shown, it may hold a password): {0}")]
    Parse(tokio_postgres::Error),
    #[error(
        "invalid database URL: sslmode must be one of disable, prefer, require, verify-ca, verify-full"
    )]
    SslMode,
    #[error(
        "sslmode={mode} needs a root certificate: set sslrootcert=... or put it in ~/.postgresql/root.crt ({})",
        default.as_ref().map_or_else(|| "no home directory is known".to_string(), |p| format!("{} does not exist", p.display()))
    )]
    NoRootCert {
        mode: &'static str,
        default: Option<PathBuf>,
    },
    #[error(
        "sslrootcert=system (the system's trusted roots) is not supported: give the path of a PEM file with the CA certificates to trust (the system's bundle is usually /etc/ssl/certs/ca-certificates.crt)"
    )]
    SystemRoots,
    #[error(
        "{0} is not supported: pgshepherd does not present client certificates; authenticate with a password"
    )]
    ClientCert(&'static str),
    #[error(transparent)]
    RootCert(#[from] RootCertError),
}

impl FromStr for Dsn {
    type Err = DsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rest, params) = take_tls_params(s);
        let mut config = Config::from_str(&rest).map_err(DsnError::Parse)?;
        let tls = TlsSettings::resolve(params, std::env::home_dir())?;
        config.ssl_mode(match tls.mode {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            // A certificate can only be verified on a TLS connection: never
            // fall back to plain text.
            _ => SslMode::Require,
        });
        Ok(Dsn { config, tls })
    }
}

/// The TLS parameters pgshepherd handles itself, as found in a connection
/// string (the last of each wins, as in libpq).
#[derive(Debug, Default, PartialEq)]
struct TlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    /// The first client certificate parameter seen (refused).
    client_cert: Option<&'static str>,
}

impl TlsParams {
    /// Keep `value` if `key` is one of ours; false if tokio-postgres should see it.
    fn take(&mut self, key: &str, value: String) -> bool {
        match key {
            "sslmode" => self.sslmode = Some(value),
            "sslrootcert" => self.sslrootcert = Some(value),
            "sslcert" => {
                self.client_cert.get_or_insert("sslcert");
            }
            "sslkey" => {
                self.client_cert.get_or_insert("sslkey");
            }
            _ => return false,
        }
        true
    }
}

impl TlsSettings {
    /// libpq's rules: `verify-ca` checks that the server's certificate chains to a
    /// root certificate of `sslrootcert` (default `~/.postgresql/root.crt`, which
    /// must then exist), `verify-full` also that it names the host; `prefer` and
    /// `require` check the chain as `verify-ca` does when the root certificate
    /// file exists, and only encrypt otherwise; `disable` is plain text.
    fn resolve(params: TlsParams, home: Option<PathBuf>) -> Result<TlsSettings, DsnError> {
        if let Some(param) = params.client_cert {
            return Err(DsnError::ClientCert(param));
        }
        let mode = match params.sslmode.as_deref().unwrap_or("prefer") {
            "disable" => "disable",
            "prefer" => "prefer",
            "require" => "require",
            "verify-ca" => "verify-ca",
            "verify-full" => "verify-full",
            _ => return Err(DsnError::SslMode),
        };
        let explicit = match params.sslrootcert {
            Some(p) if p == "system" => return Err(DsnError::SystemRoots),
            Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
            _ => None,
        };
        let default = home.map(|h| h.join(".postgresql").join("root.crt"));
        let root_cert = explicit.clone().or(default.clone());
        let verification = match mode {
            "disable" => None,
            "verify-ca" | "verify-full" => {
                let path = match (&explicit, &default) {
                    (Some(p), _) => p,
                    (None, Some(d)) if d.exists() => d,
                    (None, _) => return Err(DsnError::NoRootCert { mode, default }),
                };
                Some(ServerVerification::load(path, mode)?)
            }
            // libpq checks the chain in these modes too when the file exists
            // (and ignores a file that does not).
            _ => match &root_cert {
                Some(p) if p.exists() => Some(ServerVerification::load(p, mode)?),
                _ => None,
            },
        };
        Ok(TlsSettings {
            mode,
            root_cert,
            verification,
        })
    }
}

/// Split a connection string (URL or key/value) into what tokio-postgres
/// parses and pgshepherd's TLS parameters. Anything this scan does not
/// understand is left in place for tokio-postgres to refuse.
fn take_tls_params(s: &str) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    for prefix in ["postgres://", "postgresql://"] {
        if let Some(rest) = s.strip_prefix(prefix) {
            return (take_url_params(s, prefix.len(), rest, &mut params), params);
        }
    }
    (take_keyword_params(s, &mut params), params)
}

fn take_url_params(s: &str, prefix_len: usize, rest: &str, params: &mut TlsParams) -> String {
    // tokio-postgres ends the credentials at the first `@`, so a `?` in a
    // password does not start the query string.
    let after_credentials = rest.find('@').map_or(0, |i| i + 1);
    let Some(q) = rest[after_credentials..].find('?') else {
        return s.to_string();
    };
    let query_start = prefix_len + after_credentials + q + 1;
    let decode = |v: &str| {
        percent_encoding::percent_decode_str(v)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    let mut kept = Vec::new();
    for pair in s[query_start..].split('&') {
        let taken = match pair.split_once('=') {
            Some((k, v)) => match (decode(k), decode(v)) {
                (Some(k), Some(v)) => params.take(&k, v),
                _ => false,
            },
            None => false,
        };
        if !taken {
            kept.push(pair);
        }
    }
    let head = &s[..query_start - 1];
    if kept.is_empty() {
        head.to_string()
    } else {
        format!("{head}?{}", kept.join("&"))
    }
}

/// The key/value form, scanned as tokio-postgres scans it: `key = value`,
/// values bare (up to whitespace) or single-quoted, `\` escaping a character.
fn take_keyword_params(s: &str, params: &mut TlsParams) -> String {
    let mut kept = String::with_capacity(s.len());
    let mut it = s.char_indices().peekable();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    let pos = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        it.peek().map_or(s.len(), |&(i, _)| i)
    };
    loop {
        skip_ws(&mut it);
        let start = pos(&mut it);
        while it
            .next_if(|&(_, c)| !c.is_whitespace() && c != '=')
            .is_some()
        {}
        let key = &s[start..pos(&mut it)];
        if key.is_empty() {
            kept.push_str(&s[start..]);
            return kept;
        }
        skip_ws(&mut it);
        if it.next_if(|&(_, c)| c == '=').is_none() {
            kept.push_str(&s[start..]);
            return kept;
        }
        skip_ws(&mut it);
        let quoted = it.next_if(|&(_, c)| c == '\'').is_some();
        let mut value = String::new();
        let mut closed = !quoted;
        while let Some(&(_, c)) = it.peek() {
            if quoted && c == '\'' {
                it.next();
                closed = true;
                break;
            }
            if !quoted && c.is_whitespace() {
                break;
            }
            it.next();
            if c == '\\' {
                if let Some((_, escaped)) = it.next() {
                    value.push(escaped);
                }
            } else {
                value.push(c);
            }
        }
        if !closed || (!quoted && value.is_empty()) {
            kept.push_str(&s[start..]);
            return kept;
        }
        let end = pos(&mut it);
        if !params.take(key, value) {
            kept.push_str(&s[start..end]);
            kept.push(' ');
        }
    }
}

impl Dsn {
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or("postgres")
    }

    pub fn user(&self) -> Option<&str> {
        self.config.get_user()
    }

    pub fn password(&self) -> Option<&[u8]> {
        self.config.get_password()
    }

    /// The same server and credentials with another database name.
    pub fn with_dbname(&self, dbname: &str) -> Dsn {
        let mut config = self.config.clone();
        config.dbname(dbname);
        Dsn {
            config,
            tls: self.tls.clone(),
        }
    }

    fn first_host(&self) -> (String, u16) {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        (host, port)
    }

    /// Environment for libpq tools (pg_dump, pg_restore, psql): everything but the
    /// password goes in PG* variables; the password in PGPASSWORD, never argv.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let (host, port) = self.first_host();
        let mut env = vec![
            ("PGHOST", host),
            ("PGPORT", port.to_string()),
            ("PGDATABASE", self.dbname().to_string()),
            ("PGCONNECT_TIMEOUT", "10".to_string()),
            ("PGSSLMODE", self.tls.mode.to_string()),
        ];
        if let Some(root_cert) = &self.tls.root_cert {
            env.push(("PGSSLROOTCERT", root_cert.display().to_string()));
        }
        if let Some(u) = self.user() {
            env.push(("PGUSER", u.to_string()));
        }
        if let Some(p) = self.password() {
            env.push(("PGPASSWORD", String::from_utf8_lossy(p).into_owned()));
        }
        env
    }

    /// The connection parameters the tools get as `--dbname` that the
    /// environment cannot carry: libpq has no variables for keepalives, and
    /// without them a pg_dump whose network path went silent would wait forever.
    /// Nothing secret: the password stays in `PGPASSWORD`.
    pub fn libpq_conninfo(&self) -> String {
        let mut config = self.config.clone();
        keep_alive(&mut config);
        let quoted = self.dbname().replace('\\', "\\\\").replace('\'', "\\'");
        format!(
            "dbname='{quoted}' keepalives=1 keepalives_idle={} keepalives_interval={} \
             keepalives_count={} tcp_user_timeout={}",
            config.get_keepalives_idle().as_secs().max(1),
            config
                .get_keepalives_interval()
                .unwrap_or_default()
                .as_secs()
                .max(1),
            config.get_keepalives_retries().unwrap_or(5),
            config
                .get_tcp_user_timeout()
                .copied()
                .unwrap_or_default()
                .as_millis(),
        )
    }

    /// The TLS connector for this server: it authenticates the server's
    /// certificate when the connection string says so (see [`TlsSettings`]).
    pub fn tls_connector(&self) -> MakeRustlsConnect {
        crate::tls::postgres_connector(self.tls.verification.as_ref())
    }

    /// Connect with an `application_name` (so pgshepherd's own sessions can be told
    /// apart in pg_stat_activity) and extra `-c` options.
    pub async fn connect(
        &self,
        application_name: &str,
        options: &[(&str, &str)],
    ) -> Result<Client, tokio_postgres::Error> {
        let mut config = self.config.clone();
        config.application_name(application_name);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        keep_alive(&mut config);
        if !options.is_empty() {
            let opts: Vec<String> = options.iter().map(|(k, v)| format!("-c {k}={v}")).collect();
            config.options(opts.join(" "));
        }
        // libpq's sslmode: `disable` is plain; the others negotiate TLS, `prefer`
        // (the default) falling back to plain when the server has none.
        if config.get_ssl_mode() == SslMode::Disable {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                // The error surfaces on the client's next call; nothing to do here.
                let _ = connection.await;
            });
            return Ok(client);
        }
        let (client, connection) = config.connect(self.tls_connector()).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// A network path that goes silent without a reset (a firewall or NAT that
/// forgot the connection) would leave a query waiting forever: keepalives find
/// a dead idle connection within about 10 s + 5 x 2 s, and `tcp_user_timeout`
/// fails one whose sent data stays unacknowledged for 30 s. Neither cuts a long
/// statement short: the server's kernel acknowledges the query and answers the
/// keepalives while the statement runs. The DSN's own settings win.
fn keep_alive(config: &mut Config) {
    use std::time::Duration;
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(10).min(config.get_keepalives_idle()));
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(2));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(5);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(30));
    }
}

impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (host, port) = self.first_host();
        match self.user() {
            Some(u) => write!(f, "postgres://{u}@{host}:{port}/{}", self.dbname()),
            None => write!(f, "postgres://{host}:{port}/{}", self.dbname()),
        }
    }
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dsn({self})")
    }
}

/// Hide passwords in free text that may quote a connection string (a parser's
/// error message, say): the password of every `scheme://user:password@host`
/// (up to the last `@` of the authority) and the value of every `password=`
/// (quoted or not, in key/value strings and URL query strings).
pub fn redact_text(s: &str) -> String {
    redact_keyword(&redact_userinfo(s))
}

fn redact_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        let after = &rest[i + 3..];
        let end = after
            .find(|c: char| {
                c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"' || c == '\''
            })
            .unwrap_or(after.len());
        let authority = &after[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon]);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn redact_keyword(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.to_ascii_lowercase().find("password=") {
        out.push_str(&rest[..i + "password=".len()]);
        let value = &rest[i + "password=".len()..];
        let end = match value.chars().next() {
            Some(q @ ('\'' | '"')) => value[1..].find(q).map_or(value.len(), |n| n + 2),
            _ => value
                .find(|c: char| c == '&' || c.is_whitespace() || c == '"' || c == ',')
                .unwrap_or(value.len()),
        };
        out.push_str("***");
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_never_shows_the_password() {
        let dsn: Dsn = "postgres://app:s3cret@db.example:6432/orders"
            .parse()
            .unwrap();
        assert_eq!(dsn.to_string(), "postgres://app@db.example:6432/orders");
        assert!(!format!("{dsn:?}").contains("s3cret"));
        let kv: Dsn = "host=localhost user=app password=s3cret dbname=x"
            .parse()
            .unwrap();
        assert!(!kv.to_string().contains("s3cret"));
    }

    #[test]
    fn unparsable_dsns_are_never_echoed() {
        for bad in [
            "postgres://u:hunter2@h:notaport/db",
            "postgres://h:notaport/db?password=hunter2",
            "host=x password='hun ter2' port=abc",
        ] {
            let err = bad.parse::<Dsn>().unwrap_err().to_string();
            assert!(!err.contains("hunter2") && !err.contains("ter2"), "{err}");
        }
    }

    #[test]
    fn tls_parameters_are_taken_out_of_both_forms() {
        let (rest, p) = take_tls_params(
            "postgres://u:p?w@h:5432/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca%20dir%2Froot.crt",
        );
        assert_eq!(rest, "postgres://u:p?w@h:5432/db?application_name=x");
        assert_eq!(p.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(p.sslrootcert.as_deref(), Some("/etc/ca dir/root.crt"));
        let (rest, p) = take_tls_params("postgres://h/db?sslmode=require");
        assert_eq!(rest, "postgres://h/db");
        assert_eq!(p.sslmode.as_deref(), Some("require"));
        let (rest, p) = take_tls_params(
            "host=h sslrootcert = '/ca/it\\'s root.crt' password='a b' sslmode=verify-ca dbname=d",
        );
        assert_eq!(rest, "host=h password='a b' dbname=d ");
        assert_eq!(p.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(p.sslrootcert.as_deref(), Some("/ca/it's root.crt"));
        // What the scan does not understand is left for tokio-postgres to refuse.
        let (rest, _) = take_tls_params("host=h sslmode='verify-full");
        assert_eq!(rest, "host=h sslmode='verify-full");
        let (_, p) = take_tls_params("postgres://h/db?sslkey=/k");
        assert_eq!(p.client_cert, Some("sslkey"));
    }

    #[test]
    fn tls_settings_follow_libpq() {
        let home = tempfile::tempdir().unwrap();
        let params = |mode: &str, root: Option<&str>| TlsParams {
            sslmode: Some(mode.to_string()),
            sslrootcert: root.map(str::to_string),
            client_cert: None,
        };
        let resolve = |p| TlsSettings::resolve(p, Some(home.path().to_path_buf()));
        // No root certificate anywhere: verify-* refuses, require only encrypts.
        let err = resolve(params("verify-full", None))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("sslmode=verify-full needs a root certificate: set sslrootcert=... or put it in ~/.postgresql/root.crt"),
            "{err}"
        );
        let require = resolve(params("require", None)).unwrap();
        assert!(require.verification.is_none());
        assert_eq!(
            require.root_cert,
            Some(home.path().join(".postgresql/root.crt"))
        );
        assert!(matches!(
            resolve(params("verify-ca", Some("system"))),
            Err(DsnError::SystemRoots)
        ));
        assert!(matches!(
            resolve(params("verify-all", None)),
            Err(DsnError::SslMode)
        ));
        // A root certificate file that cannot serve is named.
        let missing = home.path().join("missing.crt");
        let err = resolve(params("verify-ca", Some(missing.to_str().unwrap())))
            .unwrap_err()
            .to_string();
        assert!(err.contains(missing.to_str().unwrap()), "{err}");
        let garbage = home.path().join("garbage.crt");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let err = resolve(params("verify-full", Some(garbage.to_str().unwrap())))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(garbage.to_str().unwrap()) && err.contains("no usable certificate"),
            "{err}"
        );
        // With require, a root certificate file is used when it exists (libpq's
        // compatibility rule), so the garbage file fails there too.
        assert!(resolve(params("require", Some(garbage.to_str().unwrap()))).is_err());
        let err = "postgres://u:hunter2@h/db?sslmode=verify-full&sslcert=/c"
            .parse::<Dsn>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sslcert is not supported") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn the_tools_get_the_same_tls_settings() {
        let dsn: Dsn =
            "postgres://app:s3cret@db.example/orders?sslmode=disable&sslrootcert=/ca/root.crt"
                .parse()
                .unwrap();
        let env = dsn.libpq_env();
        assert!(env.contains(&("PGSSLMODE", "disable".to_string())));
        assert!(env.contains(&("PGSSLROOTCERT", "/ca/root.crt".to_string())));
        assert_eq!(dsn.config().get_ssl_mode(), SslMode::Disable);
        assert_eq!(dsn.to_string(), "postgres://app@db.example:5432/orders");
    }

    #[test]
    fn the_tools_get_keepalives_and_no_password_in_their_arguments() {
        let dsn: Dsn = "postgres://app:s3cret@db.example/o'rders?keepalives_idle=4"
            .parse()
            .unwrap();
        assert_eq!(
            dsn.libpq_conninfo(),
            "dbname='o\\'rders' keepalives=1 keepalives_idle=4 keepalives_interval=2 \
             keepalives_count=5 tcp_user_timeout=30000"
        );
    }

    #[test]
    fn free_text_redaction_covers_the_awkward_cases() {
        let cases = [
            (
                "postgres://u:pw@h:notaport/db",
                "postgres://u:***@h:notaport/db",
            ),
            ("postgres://u:hun@ter2@h/db", "postgres://u:***@h/db"),
            (
                "postgres://h/db?sslmode=require&password=hunter2&x=1",
                "postgres://h/db?sslmode=require&password=***&x=1",
            ),
            (
                "host=x password=pw port=abc",
                "host=x password=*** port=abc",
            ),
            (
                "host=x password='hun ter2' port=abc",
                "host=x password=*** port=abc",
            ),
            (
                "invalid type: string \"postgres://app:s3cret@db/x\", expected",
                "invalid type: string \"postgres://app:***@db/x\", expected",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact_text(input), want, "{input}");
        }
    }
}
