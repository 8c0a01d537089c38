//! Giving captured rows back, keeping what users changed since.
//!
//! Everything happens in one transaction on the target's lock session, statement
//! by statement in reverse capture order (so foreign keys hold as they did), each
//! statement's rows set-based:
//! - a row the migration **updated** gets its before image back if it is still as
//!   the migration left it (`merge`: if users did not change since any column the
//!   migration changed; only those columns are set back);
//! - a row it **inserted** is deleted if it is still as the migration left it;
//! - a row it **deleted** is inserted again if its key (and every other unique
//!   key) is free.
//!
//! Anything else is a conflict (users changed it) or already gone (users deleted
//! a row the migration updated or inserted). `refuse` rolls everything back when
//! there is any conflict; a dry run always rolls back, so its report is exactly
//! what the real undo would do at that moment. A committed undo is recorded in
//! `pgshepherd.undos`, marks the captured rows it reverted (a second undo skips
//! them) and the history rows of its versions (`last_undo`).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Client;

/// What to do about rows users changed after the migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Change nothing if anything conflicts.
    Refuse,
    /// Revert what does not conflict; leave conflicting rows as users left them.
    SkipConflicts,
    /// Per column: revert what the migration changed and users did not.
    Merge,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Refuse => "refuse",
            Mode::SkipConflicts => "skip-conflicts",
            Mode::Merge => "merge",
        }
    }
}

/// One undo: which run, which of its versions (all captured ones when empty).
#[derive(Debug, Clone)]
pub struct Request {
    pub run_id: String,
    pub versions: Vec<i64>,
    pub mode: Mode,
    /// An SQL predicate over the change records (`table_name`, `op`, `key`,
    /// `before`, `after`, `version`): only matching changes are undone.
    pub predicate: Option<String>,
    pub dry_run: bool,
    /// Recorded with the undo: who asked for it.
    pub who: String,
    /// `lock_timeout` for the undo's statements.
    pub lock_timeout: std::time::Duration,
    /// Also remove the versions' history rows when the undo commits: a
    /// rollback's undo of a migration that has no down script, after which the
    /// version is no longer applied.
    pub forget: bool,
}

/// Per table, what became of its captured changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Counts {
    pub reverted: u64,
    pub conflicts: u64,
    pub already_gone: u64,
    /// Left out by the predicate.
    pub filtered_out: u64,
    /// Reverted by an earlier undo.
    pub already_undone: u64,
}

/// A change that was not reverted because users changed the row since.
#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    pub table: String,
    pub version: i64,
    pub operation: String,
    pub key: Value,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// The row as it is now; `null` when a re-insert found its key taken by
    /// nothing visible (another unique key).
    pub current: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub migration_set: String,
    pub versions: Vec<i64>,
    pub tables: BTreeMap<String, Counts>,
    pub conflicts: Vec<Conflict>,
    /// The changes were applied (not a dry run, not refused).
    pub committed: bool,
    /// The row in `pgshepherd.undos`, when committed.
    pub undo_id: Option<i64>,
}

impl Report {
    pub fn total(&self) -> Counts {
        let mut t = Counts::default();
        for c in self.tables.values() {
            t.reverted += c.reverted;
            t.conflicts += c.conflicts;
            t.already_gone += c.already_gone;
            t.filtered_out += c.filtered_out;
            t.already_undone += c.already_undone;
        }
        t
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    #[error("run {run_id} has no captured changes on this database (nothing to undo)")]
    NothingCaptured { run_id: String },
    #[error(
        "run {run_id} has no captured changes for {} that are still applied (captured and applied: {})",
        list(.asked),
        if .known.is_empty() { "none".to_string() } else { list(.known) }
    )]
    NoSuchVersion {
        run_id: String,
        asked: Vec<i64>,
        known: Vec<i64>,
    },
    #[error("the --where predicate does not work: {}", crate::pg::server_message(.0))]
    Predicate(tokio_postgres::Error),
    #[error("the undo failed and changed nothing: {}", crate::pg::server_message(.0))]
    Query(#[from] tokio_postgres::Error),
}

impl UndoError {
    /// 2 for what the command line asked wrongly, 5 when the target refused
    /// (a lock, a constraint: nothing changed), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            UndoError::NothingCaptured { .. }
            | UndoError::NoSuchVersion { .. }
            | UndoError::Predicate(_) => 2,
            UndoError::Query(e) if e.as_db_error().is_some() => 5,
            UndoError::Query(_) => 1,
        }
    }
}

fn list(versions: &[i64]) -> String {
    versions
        .iter()
        .map(|v| format!("V{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Undo on `client` (which holds the target's lock), in one transaction.
pub async fn undo(client: &Client, req: &Request) -> Result<Report, UndoError> {
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = 0",
            req.lock_timeout.as_millis().max(1)
        ))
        .await?;
    let result = undo_in_transaction(client, req).await;
    let commit = matches!(&result, Ok(r) if r.committed);
    let end = if commit { "COMMIT" } else { "ROLLBACK" };
    let ended = client.batch_execute(end).await;
    if !commit {
        crate::pg::stats::publish_own(client).await;
    }
    let report = result?;
    ended?;
    Ok(report)
}

async fn undo_in_transaction(client: &Client, req: &Request) -> Result<Report, UndoError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('pgshepherd.captured_changes') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Err(UndoError::NothingCaptured {
            run_id: req.run_id.clone(),
        });
    }
    // Versions this run captured and that are still applied by it (a version
    // its own rollback undid has nothing left to give back).
    let rows = client
        .query(
            "SELECT DISTINCT c.migration_set, c.version FROM pgshepherd.captured_changes c \
             JOIN pgshepherd.history h ON h.migration_set = c.migration_set \
              AND h.version = c.version AND h.run_id = c.run_id AND h.state = 'applied' \
             WHERE c.run_id = $1 ORDER BY c.version",
            &[&req.run_id],
        )
        .await?;
    if rows.is_empty() {
        return Err(UndoError::NothingCaptured {
            run_id: req.run_id.clone(),
        });
    }
    let set: String = rows[0].get(0);
    let known: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    let versions = if req.versions.is_empty() {
        known.clone()
    } else {
        let missing: Vec<i64> = req
            .versions
            .iter()
            .copied()
            .filter(|v| !known.contains(v))
            .collect();
        if !missing.is_empty() {
            return Err(UndoError::NoSuchVersion {
                run_id: req.run_id.clone(),
                asked: missing,
                known,
            });
        }
        req.versions.clone()
    };

    let mut tables: BTreeMap<String, Counts> = BTreeMap::new();
    // Changes not undone yet, per table: what the predicate leaves out is the
    // difference with what it selects.
    let mut open: HashMap<String, u64> = HashMap::new();
    for row in client
        .query(
            "SELECT table_name, count(*) FILTER (WHERE undone_by IS NOT NULL), \
                    count(*) FILTER (WHERE undone_by IS NULL) \
             FROM pgshepherd.captured_changes \
             WHERE run_id = $1 AND migration_set = $2 AND version = ANY($3) GROUP BY 1",
            &[&req.run_id, &set, &versions],
        )
        .await?
    {
        let table: String = row.get(0);
        open.insert(table.clone(), row.get::<_, i64>(2) as u64);
        tables.entry(table).or_default().already_undone = row.get::<_, i64>(1) as u64;
    }
    // The changes to undo, under the names the predicate may use.
    let predicate = req.predicate.as_deref().unwrap_or("true");
    let work = format!(
        "CREATE TEMP TABLE pgshepherd_undo ON COMMIT DROP AS \
         SELECT id, statement, table_name, op, key, before, after, version, \
                NULL::text AS outcome, NULL::jsonb AS current \
           FROM (SELECT id, statement, table_name, op, key, before, after, version \
                   FROM pgshepherd.captured_changes \
                  WHERE run_id = $1 AND migration_set = $2 AND version = ANY($3) \
                    AND undone_by IS NULL) AS change \
          WHERE ({predicate})"
    );
    client
        .execute(&work, &[&req.run_id, &set, &versions])
        .await
        .map_err(UndoError::Predicate)?;
    // A temporary table has no statistics until it is analysed: without them
    // the planner joins a million changes with nested loops.
    client
        .batch_execute(
            "CREATE UNIQUE INDEX ON pgshepherd_undo (id); \
             CREATE INDEX ON pgshepherd_undo (statement, op); ANALYZE pgshepherd_undo",
        )
        .await?;

    let statements = client
        .query(
            "SELECT statement, table_name, to_regclass(table_name)::text, \
                    array_agg(DISTINCT op), (array_agg(key))[1] \
               FROM pgshepherd_undo GROUP BY statement, table_name ORDER BY statement DESC",
            &[],
        )
        .await?;
    let mut shapes: HashMap<String, Shape> = HashMap::new();
    for row in &statements {
        let statement: i64 = row.get(0);
        let table_name: String = row.get(1);
        let Some(rel) = row.get::<_, Option<String>>(2) else {
            // The table is gone: so is every row of it.
            mark_rest(client, statement, "gone").await?;
            continue;
        };
        let ops: Vec<String> = row.get(3);
        let key: Value = row.get(4);
        if !shapes.contains_key(&table_name) {
            let shape = Shape::read(client, &rel, &key).await?;
            shapes.insert(table_name.clone(), shape);
        }
        let shape = &shapes[&table_name];
        // Deletes first, re-inserts last: an UPDATE that moved a row to a new
        // key is undone by freeing the new key before taking the old one again.
        for op in ["INSERT", "UPDATE", "DELETE"] {
            if ops.iter().any(|o| o == op) {
                client
                    .execute(&shape.revert_sql(op, req.mode), &[&statement])
                    .await?;
                client
                    .execute(&shape.classify_sql(op), &[&statement])
                    .await?;
            }
        }
    }

    let mut total_conflicts = 0;
    for row in client
        .query(
            "SELECT table_name, outcome, count(*) FROM pgshepherd_undo GROUP BY 1, 2",
            &[],
        )
        .await?
    {
        let counts = tables.entry(row.get(0)).or_default();
        let n = row.get::<_, i64>(2) as u64;
        match row.get::<_, Option<String>>(1).as_deref() {
            Some("reverted") => counts.reverted += n,
            Some("conflict") => {
                counts.conflicts += n;
                total_conflicts += n;
            }
            _ => counts.already_gone += n,
        }
    }
    for (table, counts) in tables.iter_mut() {
        let decided = counts.reverted + counts.conflicts + counts.already_gone;
        counts.filtered_out = open
            .get(table)
            .copied()
            .unwrap_or(0)
            .saturating_sub(decided);
    }
    let conflicts = client
        .query(
            "SELECT table_name, version, op, key, before, after, current \
               FROM pgshepherd_undo WHERE outcome = 'conflict' ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| Conflict {
            table: r.get(0),
            version: r.get(1),
            operation: r.get(2),
            key: r.get(3),
            before: r.get(4),
            after: r.get(5),
            current: r.get(6),
        })
        .collect();
    let mut report = Report {
        migration_set: set,
        versions,
        tables,
        conflicts,
        committed: false,
        undo_id: None,
    };
    if req.dry_run || (req.mode == Mode::Refuse && total_conflicts > 0) {
        return Ok(report);
    }
    let counts = serde_json::to_value(&report.tables).unwrap_or(Value::Null);
    let undo_id: i64 = client
        .query_one(
            "INSERT INTO pgshepherd.undos (run_id, migration_set, versions, mode, predicate, undone_by, counts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[
                &req.run_id,
                &report.migration_set,
                &report.versions,
                &req.mode.as_str(),
                &req.predicate,
                &req.who,
                &counts,
            ],
        )
        .await?
        .get(0);
    client
        .execute(
            "UPDATE pgshepherd.captured_changes c SET undone_by = $1 \
               FROM pgshepherd_undo w WHERE w.id = c.id AND w.outcome = 'reverted'",
            &[&undo_id],
        )
        .await?;
    client
        .execute(
            "UPDATE pgshepherd.history SET last_undo = $1 \
              WHERE migration_set = $2 AND version = ANY($3) AND run_id = $4",
            &[
                &undo_id,
                &report.migration_set,
                &report.versions,
                &req.run_id,
            ],
        )
        .await?;
    if req.forget {
        client
            .execute(
                "DELETE FROM pgshepherd.history \
                  WHERE migration_set = $1 AND version = ANY($2) AND run_id = $3",
                &[&report.migration_set, &report.versions, &req.run_id],
            )
            .await?;
    }
    report.committed = true;
    report.undo_id = Some(undo_id);
    Ok(report)
}

impl Report {
    /// Write the conflicts, one JSON object per line, to `dir/NAME.conflicts.jsonl`
    /// (0600: they hold row data); `None` when there are none.
    pub fn write_conflicts(
        &self,
        dir: &std::path::Path,
        name: &str,
    ) -> std::io::Result<Option<std::path::PathBuf>> {
        if self.conflicts.is_empty() {
            return Ok(None);
        }
        let mut text = String::new();
        for c in &self.conflicts {
            text.push_str(&serde_json::to_string(c).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        crate::private_fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.conflicts.jsonl"));
        crate::private_fs::write(&path, text.as_bytes())?;
        Ok(Some(path))
    }
}

/// Mark the changes of `statement` not yet decided as `outcome`.
async fn mark_rest(client: &Client, statement: i64, outcome: &str) -> Result<(), UndoError> {
    client
        .execute(
            "UPDATE pgshepherd_undo SET outcome = $2 WHERE statement = $1 AND outcome IS NULL",
            &[&statement, &outcome],
        )
        .await?;
    Ok(())
}

/// What the undo statements need to know of a table now.
struct Shape {
    /// `schema.table`, quoted as PostgreSQL prints a regclass.
    rel: String,
    /// The key columns, as the captured key names them.
    key: Vec<String>,
    /// Columns a re-insert writes (not generated).
    insertable: Vec<String>,
    /// Columns an update may set (not generated, not `GENERATED ALWAYS` identity).
    updatable: Vec<String>,
}

impl Shape {
    async fn read(client: &Client, rel: &str, key: &Value) -> Result<Shape, UndoError> {
        let rows = client
            .query(
                "SELECT attname::text, attgenerated = '', attgenerated = '' AND attidentity <> 'a' \
                   FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 \
                    AND NOT attisdropped ORDER BY attnum",
                &[&rel],
            )
            .await?;
        let mut insertable = Vec::new();
        let mut updatable = Vec::new();
        for r in &rows {
            let name: String = r.get(0);
            if r.get::<_, bool>(1) {
                insertable.push(name.clone());
            }
            if r.get::<_, bool>(2) {
                updatable.push(name);
            }
        }
        let key = key
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        Ok(Shape {
            rel: rel.to_string(),
            key,
            insertable,
            updatable,
        })
    }

    /// `t` is the table's row, `k` the change's key as a row of the table.
    fn key_match(&self, row: &str, key: &str) -> String {
        self.key
            .iter()
            .map(|c| format!("{row}.{c} = {key}.{c}", c = ident(c)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The statement that reverts the undecided `op` changes of statement `$1`
    /// and marks them `reverted`.
    fn revert_sql(&self, op: &str, mode: Mode) -> String {
        let rel = &self.rel;
        let undecided = format!("w.statement = $1 AND w.op = '{op}' AND w.outcome IS NULL");
        let done = match op {
            "UPDATE" => {
                let sets: Vec<String> = self
                    .updatable
                    .iter()
                    .map(|c| {
                        format!(
                            "{c} = CASE WHEN w.after -> {l} IS DISTINCT FROM w.before -> {l} \
                             THEN b.{c} ELSE t.{c} END",
                            c = ident(c),
                            l = literal(c)
                        )
                    })
                    .collect();
                let unchanged = match mode {
                    Mode::Merge => "NOT EXISTS (SELECT FROM jsonb_each(w.after) a \
                         WHERE a.value IS DISTINCT FROM w.before -> a.key \
                           AND to_jsonb(t) -> a.key IS DISTINCT FROM a.value)"
                        .to_string(),
                    _ => "to_jsonb(t) = w.after".to_string(),
                };
                format!(
                    "UPDATE {rel} AS t SET {} \
                       FROM pgshepherd_undo w, jsonb_populate_record(NULL::{rel}, w.key) k, \
                            jsonb_populate_record(NULL::{rel}, w.before) b \
                      WHERE {undecided} AND {} AND {unchanged} RETURNING w.id",
                    sets.join(", "),
                    self.key_match("t", "k"),
                )
            }
            "INSERT" => format!(
                "DELETE FROM {rel} AS t \
                  USING pgshepherd_undo w, jsonb_populate_record(NULL::{rel}, w.key) k \
                  WHERE {undecided} AND {} AND to_jsonb(t) = w.after RETURNING w.id",
                self.key_match("t", "k"),
            ),
            _ => {
                let cols: Vec<String> = self.insertable.iter().map(|c| ident(c)).collect();
                let values: Vec<String> = cols.iter().map(|c| format!("b.{c}")).collect();
                let key_json: Vec<String> = self
                    .key
                    .iter()
                    .map(|c| format!("{}, {}", literal(c), ident(c)))
                    .collect();
                // Any unique key taken (the primary key or another) leaves the
                // row out, and so a conflict.
                let inserted = format!(
                    "INSERT INTO {rel} AS t ({}) OVERRIDING SYSTEM VALUE \
                     SELECT {} FROM pgshepherd_undo w, jsonb_populate_record(NULL::{rel}, w.before) b \
                      WHERE {undecided} \
                     ON CONFLICT DO NOTHING RETURNING jsonb_build_object({}) AS key",
                    cols.join(", "),
                    values.join(", "),
                    key_json.join(", "),
                );
                return format!(
                    "WITH done AS ({inserted}) UPDATE pgshepherd_undo w SET outcome = 'reverted' \
                       FROM done WHERE {undecided} AND w.key = done.key"
                );
            }
        };
        format!(
            "WITH done AS ({done}) UPDATE pgshepherd_undo SET outcome = 'reverted' \
              WHERE id IN (SELECT id FROM done)"
        )
    }

    /// The statement that decides the `op` changes of statement `$1` still
    /// undecided: a row that is still there (changed since) or whose key is
    /// taken is a conflict, with the row as it is now; a row that is not there
    /// any more is gone (a re-insert that found no row in the way conflicts
    /// with another unique key).
    fn classify_sql(&self, op: &str) -> String {
        let rel = &self.rel;
        let missing = if op == "DELETE" { "conflict" } else { "gone" };
        format!(
            "UPDATE pgshepherd_undo w \
                SET current = now.row, \
                    outcome = CASE WHEN now.row IS NULL THEN '{missing}' ELSE 'conflict' END \
               FROM (SELECT w2.id, (SELECT to_jsonb(t) FROM {rel} t \
                                     WHERE {}) AS row \
                       FROM pgshepherd_undo w2, jsonb_populate_record(NULL::{rel}, w2.key) k \
                      WHERE w2.statement = $1 AND w2.op = '{op}' AND w2.outcome IS NULL) now \
              WHERE w.id = now.id",
            self.key_match("t", "k"),
        )
    }
}

/// A quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    crate::migrations::history::literal(s)
}
