//! The daemon's configuration file (also read by `run --config` for its targets).
//! `${VAR}` in a string value expands from the environment; an unset variable is an
//! error, never an empty string.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::pg::Dsn;
use crate::plan::{Diagnostic, Diagnostics};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    state_database: Option<String>,
    backup_dir: Option<String>,
    #[serde(default)]
    targets: BTreeMap<String, RawTarget>,
    // Read by the daemon, notifications and escalation; accepted here so that one
    // file serves both `run --config` and `daemon --config`.
    tokens: Option<IgnoredAny>,
    channels: Option<IgnoredAny>,
    escalation: Option<IgnoredAny>,
    log: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    dsn: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub listen: Option<String>,
    pub state_database: Option<Dsn>,
    pub backup_dir: Option<PathBuf>,
    pub targets: BTreeMap<String, Dsn>,
}

impl Config {
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
            match expand_env(s).and_then(|s| s.parse::<Dsn>().map_err(|e| e.to_string())) {
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
        let backup_dir = match raw.backup_dir.as_deref().map(expand_env).transpose() {
            Ok(d) => d.map(PathBuf::from),
            Err(e) => {
                errors.push(Diagnostic::new(path, 0, 0, format!("backup_dir: {e}")));
                None
            }
        };
        let _ = (&raw.tokens, &raw.channels, &raw.escalation, &raw.log);
        if !errors.is_empty() {
            return Err(Diagnostics(errors));
        }
        Ok(Config {
            path: path.to_path_buf(),
            listen: raw.listen,
            state_database,
            backup_dir,
            targets,
        })
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_string()
}

/// Expand `${VAR}` from the environment. `$$` is a literal `$`.
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
            let name = &body[..end];
            let value = std::env::var(name)
                .map_err(|_| format!("environment variable {name} is not set"))?;
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
    use super::expand_env;

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
                .contains("PGSHEPHERD_NOT_SET_ANYWHERE")
        );
    }
}
