//! SQL checks: the user's SELECT, read-only and time-boxed, must yield exactly one
//! finite number.
//!
//! The query is wrapped as
//!
//! ```sql
//! SELECT (q.v)::float8 FROM (
//! <user query>
//! ) AS q(v) LIMIT 2
//! ```
//!
//! so any numeric type (int, bigint, numeric, real, a numeric string) becomes a
//! float8 on the server, and so the shapes that must never pass are told apart:
//! no row, more than one row, NULL, NaN, infinity, a value that is not a number
//! (the cast fails), more than one column (the user query is described once per
//! connection). The newlines keep a trailing `-- comment` from swallowing the
//! wrapper. A data-modifying CTE cannot hide in a subquery, and anything else
//! that writes is refused by the read-only transaction (see `session`).

use std::time::Duration;

use crate::checks::session::ReadOnlySession;
use crate::checks::verdict::{Observation, num};
use crate::pg::Dsn;

pub struct SqlSampler {
    session: ReadOnlySession,
    /// The user's query without trailing `;` and whitespace.
    query: String,
    wrapped: String,
    /// The user query was described as one column on the current connection.
    shape_checked: bool,
}

impl SqlSampler {
    pub fn new(query: &str, dsn: &Dsn, timeout: Duration) -> Self {
        let query = strip_terminator(query).to_string();
        let wrapped = format!("SELECT (q.v)::float8 FROM (\n{query}\n) AS q(v) LIMIT 2");
        SqlSampler {
            session: ReadOnlySession::new(dsn, timeout),
            query,
            wrapped,
            shape_checked: false,
        }
    }

    pub async fn sample(&mut self) -> Observation {
        if !self.session.is_connected() {
            self.shape_checked = false;
        }
        let describe = (!self.shape_checked).then_some(self.query.as_str());
        let read = match self.session.read(&self.wrapped, describe).await {
            Ok(read) => read,
            Err(e) => return Observation::inconclusive(e.to_string()),
        };
        if let Some(columns) = read.described_columns {
            if columns != 1 {
                return Observation::inconclusive(format!(
                    "query returns {columns} columns; a check query must return exactly one"
                ));
            }
            self.shape_checked = true;
        }
        match read.rows.as_slice() {
            [] => Observation::inconclusive("query returned no row"),
            [row] => match row.try_get::<_, Option<f64>>(0) {
                Ok(Some(v)) if v.is_nan() => Observation::inconclusive("query returned NaN"),
                Ok(Some(v)) if v.is_infinite() => {
                    Observation::inconclusive(format!("query returned {}", num(v)))
                }
                Ok(Some(v)) => Observation::Value(v),
                Ok(None) => Observation::inconclusive("query returned NULL"),
                Err(e) => Observation::inconclusive(format!(
                    "cannot read the value: {}",
                    crate::pg::server_message(&e)
                )),
            },
            _ => Observation::inconclusive(
                "query returned more than one row; a check query must return exactly one",
            ),
        }
    }
}

fn strip_terminator(query: &str) -> &str {
    query
        .trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_semicolons_and_whitespace_are_dropped() {
        assert_eq!(strip_terminator("  SELECT 1 ;\n ;\n"), "SELECT 1");
        assert_eq!(strip_terminator("SELECT ';'"), "SELECT ';'");
    }

    #[test]
    fn the_wrapper_survives_a_trailing_comment() {
        let dsn: Dsn = "postgres://u@localhost/db".parse().unwrap();
        let s = SqlSampler::new("SELECT 1 -- one;", &dsn, Duration::from_secs(1));
        assert_eq!(
            s.wrapped,
            "SELECT (q.v)::float8 FROM (\nSELECT 1 -- one\n) AS q(v) LIMIT 2"
        );
    }
}
