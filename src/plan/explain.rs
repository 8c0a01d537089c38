//! The `explain` section: the queries the change is for, compiled into
//! [`ExplainQuery`]s, or every problem at its `line:column`.
//!
//! What pgshepherd runs on the live target must be a single read-only query:
//! with `analyze: true` it is executed, before and after the change. The server
//! refuses writes anyway (the EXPLAIN runs in a READ ONLY transaction), but a
//! plan that asks for one is wrong, and `check` says so offline. Row locks are
//! not writes to PostgreSQL (`SELECT ... FOR UPDATE` runs in a read-only
//! transaction), so they are refused here. The rules are in
//! docs/plan-reference.md#explain.

use std::collections::HashMap;

use super::compile::{checked_name, defaults};
use super::model::ExplainQuery;
use super::tree::{Node, Value};
use super::walk::{Pos, Section, Sink};
use crate::migrations::split;

pub const EXPLAIN_KEYS: &[&str] = &[
    "name",
    "sql",
    "expect_index",
    "max_cost_ratio",
    "analyze",
    "max_time_ratio",
    "timeout",
];

/// Words that make a query write (or create a table: `SELECT ... INTO`).
const WRITING_WORDS: &[&str] = &["INSERT", "UPDATE", "DELETE", "MERGE", "INTO"];

/// The `explain` section; `Some(vec![])` when the plan has none.
pub fn compile(sink: &mut Sink, top: &Section) -> Option<Vec<ExplainQuery>> {
    if !top.has("explain") {
        return Some(Vec::new());
    }
    let node = top.get(sink, "explain")?;
    let items = match &node.value {
        Value::Seq(items) if items.is_empty() => {
            sink.error(
                Pos::of(node),
                "`explain` is empty; list at least one query, or remove the key",
            );
            return None;
        }
        Value::Seq(items) => items,
        other => {
            sink.error(
                Pos::of(node),
                format!(
                    "`explain` must be a list of queries (each with name and sql), found {}",
                    other.kind()
                ),
            );
            return None;
        }
    };
    let mut names: HashMap<String, Pos> = HashMap::new();
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match entry(sink, item, i, &mut names) {
            Some(q) => out.push(q),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn entry(
    sink: &mut Sink,
    node: &Node,
    index: usize,
    names: &mut HashMap<String, Pos>,
) -> Option<ExplainQuery> {
    let path = format!("explain[{index}]");
    let s = Section::open(sink, node, &path, Pos::of(node), EXPLAIN_KEYS)?;
    let before = sink.diagnostics.len();

    s.require(sink, "name");
    let name = s.string(sink, "name").and_then(|n| {
        let pos = n.pos;
        let name = checked_name(sink, &s.name("name"), n)?;
        if let Some(first) = names.get(&name) {
            sink.error(
                pos,
                format!(
                    "duplicate explain name `{name}` (first used at {}:{}); explain names must be unique",
                    first.line, first.column
                ),
            );
            return None;
        }
        names.insert(name.clone(), pos);
        Some(name)
    });
    s.require(sink, "sql");
    let sql = s
        .string(sink, "sql")
        .and_then(|q| match read_only_select(&q.value) {
            Ok(statement) => Some(statement),
            Err(e) => {
                sink.error(q.pos, format!("`{}` {e}", s.name("sql")));
                None
            }
        });
    let expect_index = s.string(sink, "expect_index").and_then(|i| {
        let v = i.value.trim();
        if v.contains('.') || v.chars().any(char::is_whitespace) {
            sink.error(
                i.pos,
                format!(
                    "`{}` {:?} must be an index name without its schema: EXPLAIN names indexes \
                     unqualified",
                    s.name("expect_index"),
                    i.value
                ),
            );
            return None;
        }
        Some(v.to_string())
    });
    let max_cost_ratio = ratio(sink, &s, "max_cost_ratio");
    let analyze = s.bool(sink, "analyze");
    let max_time_ratio = ratio(sink, &s, "max_time_ratio");
    let analyze_v = analyze.as_ref().is_some_and(|a| a.value);
    if s.has("max_time_ratio") && analyze.is_some() == s.has("analyze") && !analyze_v {
        sink.error(
            s.key_pos("max_time_ratio"),
            format!(
                "`{}` needs `analyze: true`: without it the query is only planned, never executed, \
                 so it has no execution time to compare",
                s.name("max_time_ratio")
            ),
        );
    }
    let timeout = s.duration(sink, "timeout", true);

    if sink.diagnostics.len() != before {
        return None;
    }
    Some(ExplainQuery {
        name: name?,
        sql: sql?,
        expect_index,
        max_cost_ratio,
        analyze: analyze_v,
        max_time_ratio,
        timeout: timeout.map_or(defaults::EXPLAIN_TIMEOUT, |t| t.value),
    })
}

/// A ratio after / before: a number greater than 0.
fn ratio(sink: &mut Sink, s: &Section, key: &str) -> Option<f64> {
    let r = s.number(sink, key)?;
    if r.value <= 0.0 {
        sink.error(
            r.pos,
            format!(
                "`{}` must be greater than 0 (after / before; 1.5 allows 50% more), found {}",
                s.name(key),
                r.value
            ),
        );
        return None;
    }
    Some(r.value)
}

/// Why an `explain` query is not a single read-only SELECT; read after "`sql` ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainSqlError {
    #[error("must be exactly one SELECT statement, found {0} statements")]
    Statements(usize),
    #[error(
        "must be a SELECT (or WITH ... SELECT), found {}",
        if .0.is_empty() { "something else".to_string() } else { format!("`{}`", .0) }
    )]
    NotASelect(String),
    #[error(
        "must be a read-only SELECT, but `{0}` writes (with `analyze: true` the query is \
         executed on the target); double-quote it if it is a column name"
    )]
    Writes(String),
    #[error(
        "must not lock rows (`FOR {0}`): a read-only transaction still takes row locks, and \
         they would block the application's writes"
    )]
    LocksRows(String),
}

/// The one statement of `sql` (trimmed, without its `;`) when it is a
/// read-only SELECT.
pub fn read_only_select(sql: &str) -> Result<String, ExplainSqlError> {
    let statements = split::statements(sql);
    let [statement] = statements.as_slice() else {
        return Err(ExplainSqlError::Statements(statements.len()));
    };
    let words = split::words(statement);
    match words.first().map(String::as_str) {
        Some("SELECT" | "WITH") => {}
        first => {
            return Err(ExplainSqlError::NotASelect(
                first.unwrap_or_default().to_string(),
            ));
        }
    }
    for pair in words.windows(2) {
        if pair[0] == "FOR" && matches!(pair[1].as_str(), "UPDATE" | "SHARE" | "NO" | "KEY") {
            return Err(ExplainSqlError::LocksRows(pair[1].clone()));
        }
    }
    if let Some(w) = words.iter().find(|w| WRITING_WORDS.contains(&w.as_str())) {
        return Err(ExplainSqlError::Writes(w.clone()));
    }
    Ok(statement.clone())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::migrations::MigrationSet;
    use crate::plan::MigrationSource;
    use crate::plan::load::load_str;

    const MINIMAL: &str = "name: p\ntarget: app\nmigrations: jobs\nsoak:\n  duration: 10m\n  checks:\n    - name: c\n      builtin: deadlocks_per_second\n      max: 0\n";

    fn compile(extra: &str) -> Result<Vec<ExplainQuery>, Vec<String>> {
        let set = MigrationSet::from_files(
            "jobs",
            None,
            vec![
                ("V1__a.sql".to_string(), "CREATE TABLE t (c int);".into()),
                ("V1__a.down.sql".to_string(), "DROP TABLE t;".into()),
            ],
        )
        .unwrap();
        load_str(
            Path::new("plan.yaml"),
            &format!("{MINIMAL}{extra}"),
            MigrationSource::Given(set),
        )
        .map(|p| p.explain)
        .map_err(|d| d.0.iter().map(|d| d.to_string()).collect())
    }

    /// The only diagnostic is at `line:col` and contains `needle`.
    fn assert_only_error(extra: &str, line: u32, col: u32, needle: &str) {
        let all = compile(extra).expect_err("the plan should be refused");
        assert_eq!(all.len(), 1, "{all:#?}");
        let prefix = format!("plan.yaml:{line}:{col}: ");
        assert!(
            all[0].starts_with(&prefix) && all[0].contains(needle),
            "expected {needle:?} at {line}:{col}, got {all:#?}"
        );
    }

    #[test]
    fn a_plan_without_explain_has_no_queries() {
        assert_eq!(compile("").unwrap(), vec![]);
    }

    #[test]
    fn an_entry_with_every_key() {
        let q = compile(
            "explain:\n  - name: dashboard\n    sql: SELECT count(*) FROM t WHERE c = 1;\n    \
             expect_index: idx_t_c\n    max_cost_ratio: 1.5\n    analyze: true\n    max_time_ratio: 2\n    timeout: 5s\n",
        )
        .unwrap();
        assert_eq!(
            q,
            vec![ExplainQuery {
                name: "dashboard".into(),
                sql: "SELECT count(*) FROM t WHERE c = 1".into(),
                expect_index: Some("idx_t_c".into()),
                max_cost_ratio: Some(1.5),
                analyze: true,
                max_time_ratio: Some(2.0),
                timeout: Duration::from_secs(5),
            }]
        );
    }

    #[test]
    fn defaults_plan_only_with_the_default_timeout() {
        let q = compile("explain:\n  - name: q\n    sql: SELECT 1\n").unwrap();
        assert!(!q[0].analyze && q[0].expect_index.is_none() && q[0].max_cost_ratio.is_none());
        assert_eq!(q[0].timeout, defaults::EXPLAIN_TIMEOUT);
        assert_eq!(crate::plan::duration::format(q[0].timeout), "30s");
    }

    #[test]
    fn the_query_must_be_one_read_only_select() {
        assert_only_error(
            "explain:\n  - name: q\n    sql: SELECT 1; SELECT 2\n",
            12,
            10,
            "`explain[0].sql` must be exactly one SELECT statement, found 2 statements",
        );
        assert_only_error(
            "explain:\n  - name: q\n    sql: DELETE FROM t\n",
            12,
            10,
            "must be a SELECT (or WITH ... SELECT), found `DELETE`",
        );
        assert_only_error(
            "explain:\n  - name: q\n    sql: WITH gone AS (DELETE FROM t RETURNING c) SELECT count(*) FROM gone\n",
            12,
            10,
            "`DELETE` writes",
        );
        assert_only_error(
            "explain:\n  - name: q\n    sql: SELECT * INTO copy FROM t\n",
            12,
            10,
            "`INTO` writes",
        );
        assert_only_error(
            "explain:\n  - name: q\n    sql: SELECT * FROM t FOR SHARE\n",
            12,
            10,
            "must not lock rows (`FOR SHARE`)",
        );
        assert_only_error(
            "explain:\n  - name: q\n    sql: \"  \"\n",
            12,
            10,
            "must not be empty",
        );
        // Words inside strings, quoted names and comments are not code.
        compile(
            "explain:\n  - name: q\n    sql: \"SELECT \\\"update\\\" FROM t WHERE c = 'delete' -- into\"\n",
        )
        .unwrap();
    }

    #[test]
    fn ratios_are_positive_and_the_time_ratio_needs_analyze() {
        assert_only_error(
            "explain:\n  - name: q\n    sql: SELECT 1\n    max_cost_ratio: 0\n",
            13,
            21,
            "`explain[0].max_cost_ratio` must be greater than 0",
        );
        assert_only_error(
            "explain:\n  - name: q\n    sql: SELECT 1\n    max_cost_ratio: fast\n",
            13,
            21,
            "must be a number",
        );
        assert_only_error(
            "explain:\n  - name: q\n    sql: SELECT 1\n    max_time_ratio: 1.2\n",
            13,
            5,
            "`explain[0].max_time_ratio` needs `analyze: true`",
        );
        assert_only_error(
            "explain:\n  - name: q\n    sql: SELECT 1\n    analyze: false\n    max_time_ratio: 1.2\n",
            14,
            5,
            "needs `analyze: true`",
        );
        // A broken `analyze` is reported once, not again as a missing one.
        assert_only_error(
            "explain:\n  - name: q\n    sql: SELECT 1\n    analyze: yes\n    max_time_ratio: 1.2\n",
            13,
            14,
            "must be true or false",
        );
    }

    #[test]
    fn names_are_well_formed_and_unique() {
        assert_only_error(
            "explain:\n  - name: q\n    sql: SELECT 1\n  - name: q\n    sql: SELECT 2\n",
            13,
            11,
            "duplicate explain name `q` (first used at 11:11)",
        );
        assert_only_error(
            "explain:\n  - name: my query\n    sql: SELECT 1\n",
            11,
            11,
            "may only contain letters, digits",
        );
        assert_only_error(
            "explain:\n  - sql: SELECT 1\n",
            11,
            5,
            "missing required key `name` in `explain[0]`",
        );
    }

    #[test]
    fn the_section_is_a_non_empty_list_of_known_keys() {
        assert_only_error("explain: []\n", 10, 10, "`explain` is empty");
        assert_only_error(
            "explain:\n  name: q\n",
            11,
            3,
            "`explain` must be a list of queries",
        );
        assert_only_error(
            "explain:\n  - name: q\n    sql: SELECT 1\n    expect_idx: i\n",
            13,
            5,
            "unknown key `expect_idx` in `explain[0]`; did you mean `expect_index`?",
        );
        assert_only_error(
            "explain:\n  - name: q\n    sql: SELECT 1\n    expect_index: public.i\n",
            13,
            19,
            "must be an index name without its schema",
        );
    }
}
