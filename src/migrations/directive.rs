//! The `-- pgshepherd:` directives of a migration script: `no-transaction` as
//! the first line, `capture schema.table, ...` in an up script's header (the
//! comment and blank lines before the first statement). Any other
//! `-- pgshepherd:` line is refused, so a typo cannot silently run `CREATE INDEX
//! CONCURRENTLY` inside a transaction. Also: which statement of a script changes
//! rows, for `check`'s warning about data changes nothing could undo.

use std::path::Path;

use crate::plan::Diagnostic;

/// The first line that makes a script run outside a transaction.
pub const NO_TRANSACTION: &str = "-- pgshepherd:no-transaction";

/// The header directive naming the tables whose changed rows are captured.
pub const CAPTURE: &str = "-- pgshepherd:capture";

/// What a script's directives say.
#[derive(Debug)]
pub(crate) struct Directives {
    /// `false` when the first line is [`NO_TRANSACTION`].
    pub transactional: bool,
    /// The tables of [`CAPTURE`], lowercase, as written.
    pub capture: Vec<String>,
}

/// The directives of `sql` (the file at `path`; `up_script` when it is an up
/// script), and every problem with them.
pub(crate) fn read(path: &Path, sql: &str, up_script: bool) -> (Directives, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let mut transactional = true;
    let mut capture: Vec<String> = Vec::new();
    // The header: the comment and blank lines before the first statement.
    let mut in_header = true;
    for (i, line) in sql.lines().enumerate() {
        let line = if i == 0 {
            line.trim_start_matches('\u{feff}')
        } else {
            line
        };
        let trimmed = line.trim();
        let Some(comment) = trimmed.strip_prefix("--") else {
            in_header &= trimmed.is_empty();
            continue;
        };
        let directive = comment.trim_start();
        if !directive.to_ascii_lowercase().starts_with("pgshepherd") {
            continue;
        }
        let column = line.chars().take_while(|c| c.is_whitespace()).count() as u32 + 1;
        let at = |offset: usize, message: String| {
            Diagnostic::new(path, i as u32 + 1, column + offset as u32, message)
        };
        if i == 0 && trimmed == NO_TRANSACTION {
            transactional = false;
            continue;
        }
        if let Some(list) = trimmed.strip_prefix(CAPTURE) {
            let offset = CAPTURE.len();
            if !up_script {
                diagnostics.push(at(0, format!("`{CAPTURE}` belongs in an up script (it says which rows the migration changes)")));
            } else if !in_header {
                diagnostics.push(at(
                    0,
                    format!("`{CAPTURE}` only counts in the header, before the first statement"),
                ));
            } else {
                diagnostics.extend(capture_tables(list, &mut capture, |o, m| at(offset + o, m)));
            }
            continue;
        }
        let message = if directive.to_ascii_lowercase().replace(' ', "")
            == "pgshepherd:no-transaction"
        {
            if i == 0 {
                format!("write the directive exactly as `{NO_TRANSACTION}`")
            } else {
                format!("`{NO_TRANSACTION}` only counts on the first line of the file")
            }
        } else {
            format!(
                "unknown directive `{trimmed}`; the directives are `{NO_TRANSACTION}` on the first line \
                 and `{CAPTURE} schema.table, ...` in the header"
            )
        };
        diagnostics.push(at(0, message));
    }
    if !transactional && !capture.is_empty() {
        diagnostics.push(Diagnostic::new(
            path,
            1,
            1,
            format!(
                "a no-transaction migration cannot capture its changes (capture happens inside the \
                 migration's transaction): remove `{NO_TRANSACTION}` or the capture directive"
            ),
        ));
    }
    (
        Directives {
            transactional,
            capture,
        },
        diagnostics,
    )
}

/// The tables of a capture directive's `list` (after the directive itself),
/// added to `tables`; `at(offset in list, message)` places a problem.
fn capture_tables(
    list: &str,
    tables: &mut Vec<String>,
    at: impl Fn(usize, String) -> Diagnostic,
) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    if !list.starts_with(char::is_whitespace) || list.trim().is_empty() {
        problems.push(at(
            0,
            format!(
                "write `{CAPTURE} schema.table, schema.other`: at least one table, after a space"
            ),
        ));
        return problems;
    }
    let mut offset = 0;
    for item in list.split(',') {
        let start = offset + (item.len() - item.trim_start().len());
        offset += item.len() + 1;
        let name = item.trim();
        if !is_table_name(name) {
            problems.push(at(start, format!(
                "`{name}` is not a table name: write schema.table or table, letters, digits and _ (quoted names are not supported)"
            )));
        } else if tables.iter().any(|t| t.eq_ignore_ascii_case(name)) {
            problems.push(at(start, format!("table `{name}` is named twice")));
        } else {
            tables.push(name.to_ascii_lowercase());
        }
    }
    problems
}

/// The first statement of `sql` that changes rows: its keyword (uppercase) and
/// 1-based line. Statements that start with INSERT, UPDATE, DELETE, MERGE or
/// TRUNCATE, and WITH / DO / COPY statements that contain one (or COPY ... FROM).
pub(crate) fn first_data_change(sql: &str) -> Option<(&'static str, u32)> {
    const CHANGES: [&str; 5] = ["insert", "update", "delete", "merge", "truncate"];
    let mut searched = 0;
    for statement in crate::migrations::split::statements(sql) {
        let lower = statement.to_ascii_lowercase();
        let words: Vec<&str> = lower
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        let found = match words.first().copied() {
            Some(first) if CHANGES.contains(&first) => Some(first),
            Some("with" | "do") => words.iter().copied().find(|w| CHANGES.contains(w)),
            Some("copy") if words.contains(&"from") => Some("copy"),
            _ => None,
        };
        let at = sql[searched..]
            .find(statement.lines().next().unwrap_or_default())
            .map_or(searched, |i| searched + i);
        searched = at;
        if let Some(word) = found {
            let line = sql[..at].matches('\n').count() as u32 + 1;
            let keyword = ["INSERT", "UPDATE", "DELETE", "MERGE", "TRUNCATE", "COPY"]
                .into_iter()
                .find(|k| k.eq_ignore_ascii_case(word))?;
            return Some((keyword, line));
        }
    }
    None
}

/// `table` or `schema.table`, each part an unquoted identifier.
fn is_table_name(name: &str) -> bool {
    let ident = |p: &str| {
        p.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    let parts: Vec<&str> = name.split('.').collect();
    (1..=2).contains(&parts.len()) && parts.iter().all(|p| ident(p))
}
