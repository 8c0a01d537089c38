//! Connection strings that never print their password.

use std::fmt;
use std::str::FromStr;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};

/// A target's connection string. `Display` and `Debug` redact the password, so a
/// `Dsn` can be logged, put in events and errors without leaking it.
#[derive(Clone)]
pub struct Dsn {
    config: Config,
}

/// A connection string that does not parse. It is never echoed, not even
/// redacted: a malformed string is exactly where a redactor can be fooled.
#[derive(Debug, thiserror::Error)]
#[error("invalid database URL (not shown, it may hold a password): {source}")]
pub struct DsnError {
    source: tokio_postgres::Error,
}

impl FromStr for Dsn {
    type Err = DsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Config::from_str(s)
            .map(|config| Dsn { config })
            .map_err(|source| DsnError { source })
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
        Dsn { config }
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
            (
                "PGSSLMODE",
                ssl_mode_name(self.config.get_ssl_mode()).to_string(),
            ),
        ];
        if let Some(u) = self.user() {
            env.push(("PGUSER", u.to_string()));
        }
        if let Some(p) = self.password() {
            env.push(("PGPASSWORD", String::from_utf8_lossy(p).into_owned()));
        }
        env
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
        // libpq's sslmode: `disable` is plain; `prefer` (the default) and `require`
        // negotiate TLS, `prefer` falling back to plain when the server has none.
        if config.get_ssl_mode() == SslMode::Disable {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                // The error surfaces on the client's next call; nothing to do here.
                let _ = connection.await;
            });
            return Ok(client);
        }
        let (client, connection) = config.connect(crate::tls::postgres_connector()).await?;
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

fn ssl_mode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Require => "require",
        _ => "prefer",
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
