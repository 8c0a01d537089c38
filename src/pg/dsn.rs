//! Connection strings that never print their password.

use std::fmt;
use std::str::FromStr;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

/// A target's connection string. `Display` and `Debug` redact the password, so a
/// `Dsn` can be logged, put in events and errors without leaking it.
#[derive(Clone)]
pub struct Dsn {
    config: Config,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid database URL {redacted}: {source}")]
pub struct DsnError {
    redacted: String,
    source: tokio_postgres::Error,
}

impl FromStr for Dsn {
    type Err = DsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Config::from_str(s)
            .map(|config| Dsn { config })
            .map_err(|source| DsnError {
                redacted: redact_text(s),
                source,
            })
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
        if !options.is_empty() {
            let opts: Vec<String> = options.iter().map(|(k, v)| format!("-c {k}={v}")).collect();
            config.options(opts.join(" "));
        }
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            // The error surfaces on the client's next call; nothing to do here.
            let _ = connection.await;
        });
        Ok(client)
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

/// Best-effort redaction of a connection string that failed to parse.
pub fn redact_text(s: &str) -> String {
    if let Some((scheme, rest)) = s.split_once("://") {
        if let Some((userinfo, after)) = rest.split_once('@') {
            let user = userinfo.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}:***@{after}");
        }
        return s.to_string();
    }
    s.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
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
    fn unparsable_dsn_errors_are_redacted() {
        assert_eq!(
            redact_text("postgres://u:pw@h:notaport/db"),
            "postgres://u:***@h:notaport/db"
        );
        assert_eq!(
            redact_text("host=x password=pw port=abc"),
            "host=x password=*** port=abc"
        );
    }
}
