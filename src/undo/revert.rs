//! Giving captured rows back, keeping what users changed since.
//!
//! Everything happens in one transaction on the target's lock session, statement
//! by statement in reverse capture order (so foreign keys hold as they did), each
//! statement's rows set-based, in one pass over them per operation:
//! - a row the migration **updated** gets its before image back if it is still as
//!   the migration left it (`merge`: if users did not change since any column the
//!   migration changed; only those columns are set back);
//! - a row it **inserted** is deleted if it is still as the migration left it;
//! - a row it **deleted** is inserted again if its key (and every other unique
//!   key) is free.
//!
//! Each reverting statement notes which captured rows it reverted (a temporary
//! table of their row ids); only when some were not is a second pass needed, to
//! sort the rest into conflicts (users changed the row) and already gone (users
//! deleted a row the migration updated or inserted). `refuse` rolls everything
//! back when there is any conflict; a dry run always rolls back, so its report is
//! exactly what the real undo would do at that moment. A committed undo is
//! recorded in `pgshepherd.undos`, marks what it reverted (a whole statement at
//! once, or row by row in `pgshepherd.undone_rows` when it reverted only part of
//! one; a second undo skips them) and the history rows of its versions
//! (`last_undo`).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Client;

use super::capture;

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

/// Give back the rows that migration `m` (of the set `set`), applied by run
/// `run_id`, changed in its captured tables, in `mode`, as a rollback does
/// before the migration's down script: without a down script the version's
/// history row goes too, in the same transaction (the version is no longer
/// applied). `None` when the migration changed no captured row. The caller
/// holds the database's lock on `client`; `who` is recorded with the undo.
/// What the rollback under `strategy: down` and a rehearsal both run.
pub async fn give_back(
    client: &Client,
    run_id: &str,
    set: &str,
    m: &crate::migrations::Migration,
    mode: Mode,
    lock_timeout: std::time::Duration,
    who: &str,
) -> Result<Option<Report>, UndoError> {
    let request = Request {
        run_id: run_id.to_string(),
        versions: vec![m.version],
        mode,
        predicate: None,
        dry_run: false,
        who: who.to_string(),
        lock_timeout,
        forget: m.down.is_none(),
    };
    match undo(client, &request).await {
        Ok(report) => Ok(Some(report)),
        // The migration changed no captured row: nothing to give back.
        Err(UndoError::NothingCaptured { .. } | UndoError::NoSuchVersion { .. }) => {
            if m.down.is_none() {
                crate::migrations::history::remove(client, set, m.version).await?;
            }
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Undo on `client` (which holds the target's lock), in one transaction.
pub async fn undo(client: &Client, req: &Request) -> Result<Report, UndoError> {
    // The joins of a large undo want memory rather than disk; JIT only adds its
    // compile time to statements planned from rough estimates.
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = 0; \
             SET LOCAL work_mem = '256MB'; SET LOCAL jit = off",
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

/// One capturing statement, as the undo walks them (newest first).
struct Statement {
    statement: i64,
    capture: i64,
    run_id: String,
    migration_set: String,
    version: i64,
    captured_at: String,
    table_name: String,
    /// `schema.table` as PostgreSQL prints it now; `None` when the table is gone.
    rel: Option<String>,
    trigger_op: String,
    key_columns: Vec<String>,
    rows: i64,
    fully_undone: bool,
    partly_undone: bool,
    /// Rows of it an earlier partial undo reverted.
    undone_rows: i64,
    /// Rows this undo reverted.
    reverted: i64,
    /// The migration's transaction id, when a row whose `xmin` is still that id
    /// is known unchanged since this statement: no later statement of the
    /// migration changed rows of the table, and the server has not gone through
    /// 2^31 transactions since (its 32-bit ids could have come round again).
    unchanged_xmin: Option<String>,
}

async fn undo_in_transaction(client: &Client, req: &Request) -> Result<Report, UndoError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('pgshepherd.capture_statements') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Err(UndoError::NothingCaptured {
            run_id: req.run_id.clone(),
        });
    }
    // Versions this run captured changes in and that are still applied by it
    // (a version its own rollback undid has nothing left to give back).
    let rows = client
        .query(
            "SELECT DISTINCT c.migration_set, c.version FROM pgshepherd.captures c \
             JOIN pgshepherd.history h ON h.migration_set = c.migration_set \
              AND h.version = c.version AND h.run_id = c.run_id AND h.state = 'applied' \
             WHERE c.run_id = $1 \
               AND EXISTS (SELECT FROM pgshepherd.capture_statements s WHERE s.capture = c.id) \
             ORDER BY c.version",
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
    let predicate = req.predicate.as_deref().unwrap_or("true");
    // A predicate that does not parse or names what the changes do not have
    // fails here, before anything changed.
    client
        .execute(
            &format!("SELECT FROM pgshepherd.captured_changes WHERE ({predicate}) LIMIT 0"),
            &[],
        )
        .await
        .map_err(UndoError::Predicate)?;
    client
        .batch_execute(
            "CREATE TEMP TABLE pgshepherd_reverted (statement bigint, row_id tid) ON COMMIT DROP; \
             CREATE TEMP TABLE pgshepherd_undecided (id bigserial, statement bigint, table_name text, \
                 version bigint, op text, key jsonb, before jsonb, after jsonb, current jsonb, \
                 outcome text) ON COMMIT DROP",
        )
        .await?;

    let mut statements: Vec<Statement> = client
        .query(
            "SELECT s.statement, s.capture, s.table_name, to_regclass(s.table_name)::text, \
                    s.trigger_op, s.key_columns, s.rows, s.undone_by IS NOT NULL, s.partly_undone, \
                    (SELECT count(*) FROM pgshepherd.undone_rows u WHERE u.statement = s.statement), \
                    c.version, c.captured_at::text, \
                    CASE WHEN pg_snapshot_xmax(pg_current_snapshot())::text::numeric \
                              - c.xid::text::numeric < 2147483648 \
                          AND NOT EXISTS (SELECT FROM pgshepherd.capture_statements l \
                                           WHERE l.capture = s.capture AND l.table_name = s.table_name \
                                             AND l.statement > s.statement) \
                         THEN xid(c.xid)::text END \
               FROM pgshepherd.capture_statements s JOIN pgshepherd.captures c ON c.id = s.capture \
              WHERE c.run_id = $1 AND c.migration_set = $2 AND c.version = ANY($3) \
              ORDER BY s.statement DESC",
            &[&req.run_id, &set, &versions],
        )
        .await?
        .iter()
        .map(|r| Statement {
            statement: r.get(0),
            capture: r.get(1),
            table_name: r.get(2),
            rel: r.get(3),
            trigger_op: r.get(4),
            key_columns: r.get(5),
            rows: r.get(6),
            fully_undone: r.get(7),
            partly_undone: r.get(8),
            undone_rows: r.get(9),
            run_id: req.run_id.clone(),
            migration_set: set.clone(),
            version: r.get(10),
            captured_at: r.get(11),
            unchanged_xmin: r.get(12),
            reverted: 0,
        })
        .collect();

    // A capture never analysed has no statistics: the planner would take its
    // million rows for one and join them with the table by index lookups, a
    // third slower than the hash or merge join it picks knowing the count.
    let mut captures: Vec<i64> = statements.iter().map(|s| s.capture).collect();
    captures.dedup();
    for capture in captures {
        let unanalysed: bool = client
            .query_one(
                "SELECT coalesce((SELECT reltuples < 0 FROM pg_class \
                                   WHERE oid = to_regclass(format('pgshepherd.captured_rows_%s', $1::bigint))), \
                                 false)",
                &[&capture],
            )
            .await?
            .get(0);
        if unanalysed {
            client
                .batch_execute(&format!("ANALYZE pgshepherd.captured_rows_{capture}"))
                .await?;
        }
    }
    let mut tables: BTreeMap<String, Counts> = BTreeMap::new();
    // Changes not undone yet, per table: what the predicate leaves out is the
    // difference with what this undo decided.
    let mut open: HashMap<String, u64> = HashMap::new();
    let mut shapes: HashMap<String, Shape> = HashMap::new();
    for st in statements.iter_mut() {
        let counts = tables.entry(st.table_name.clone()).or_default();
        let undone = if st.fully_undone {
            st.rows
        } else {
            st.undone_rows
        };
        counts.already_undone += undone as u64;
        *open.entry(st.table_name.clone()).or_default() += (st.rows - undone) as u64;
        if st.fully_undone {
            continue;
        }
        let Some(rel) = st.rel.clone() else {
            // The table is gone: so is every row of it.
            let gone: i64 = client
                .query_one(
                    &format!("SELECT count(*) FROM {} w", base(st, None, predicate)),
                    &[&st.capture, &st.statement],
                )
                .await?
                .get(0);
            counts.already_gone += gone as u64;
            continue;
        };
        if !shapes.contains_key(&rel) {
            shapes.insert(
                rel.clone(),
                Shape::read(client, &rel, &st.key_columns).await?,
            );
        }
        let shape = &shapes[&rel];
        // Deletes first, re-inserts last: an UPDATE that moved a row to a new
        // key is undone by freeing the new key before taking the old one again.
        let ops: Vec<&str> = match st.trigger_op.as_str() {
            "INSERT" => vec!["INSERT"],
            "DELETE" => vec!["DELETE"],
            _ => {
                let has = client
                    .query_one(
                        "SELECT EXISTS (SELECT FROM pgshepherd.captured_rows \
                                         WHERE capture = $1 AND statement = $2 AND op = 'I'), \
                                EXISTS (SELECT FROM pgshepherd.captured_rows \
                                         WHERE capture = $1 AND statement = $2 AND op = 'D')",
                        &[&st.capture, &st.statement],
                    )
                    .await?;
                let mut ops = Vec::new();
                if has.get::<_, bool>(0) {
                    ops.push("INSERT");
                }
                ops.push("UPDATE");
                if has.get::<_, bool>(1) {
                    ops.push("DELETE");
                }
                ops
            }
        };
        for op in &ops {
            st.reverted += client
                .execute(
                    &shape.revert_sql(
                        &base(st, Some(op), predicate),
                        op,
                        req.mode,
                        st.unchanged_xmin.as_deref(),
                    ),
                    &[&st.capture, &st.statement],
                )
                .await? as i64;
        }
        // Without a predicate and an earlier partial undo, a statement whose
        // rows were all reverted leaves nothing to decide.
        let everything = req.predicate.is_none() && !st.partly_undone && ops.len() == 1;
        if everything && st.reverted == st.rows {
            continue;
        }
        client.batch_execute("ANALYZE pgshepherd_reverted").await?;
        for op in &ops {
            client
                .execute(
                    &shape.classify_sql(&base(st, Some(op), predicate), op),
                    &[&st.capture, &st.statement],
                )
                .await?;
        }
    }
    for st in &statements {
        tables.entry(st.table_name.clone()).or_default().reverted += st.reverted as u64;
    }

    let mut total_conflicts = 0;
    for row in client
        .query(
            "SELECT table_name, outcome, count(*) FROM pgshepherd_undecided GROUP BY 1, 2",
            &[],
        )
        .await?
    {
        let counts = tables.entry(row.get(0)).or_default();
        let n = row.get::<_, i64>(2) as u64;
        match row.get::<_, Option<String>>(1).as_deref() {
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
               FROM pgshepherd_undecided WHERE outcome = 'conflict' ORDER BY statement, id",
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
    for st in statements.iter().filter(|s| s.reverted > 0) {
        mark_undone(client, st, undo_id).await?;
    }
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

/// Record that undo `undo_id` reverted `st`'s rows it reverted: the whole
/// statement at once when that is all of it, else row by row (a later undo
/// skips those).
async fn mark_undone(client: &Client, st: &Statement, undo_id: i64) -> Result<(), UndoError> {
    if !st.partly_undone && st.reverted == st.rows {
        client
            .execute(
                "UPDATE pgshepherd.capture_statements SET undone_by = $1 WHERE statement = $2",
                &[&undo_id, &st.statement],
            )
            .await?;
        return Ok(());
    }
    client
        .execute(
            &format!(
                "INSERT INTO pgshepherd.undone_rows (statement, key, undo) \
                 SELECT w.statement, w.key, $3 FROM pgshepherd_reverted rv \
                   JOIN {} w ON w.row_id = rv.row_id WHERE rv.statement = $2",
                base(st, None, "true")
            ),
            &[&st.capture, &st.statement, &undo_id],
        )
        .await?;
    client
        .execute(
            "UPDATE pgshepherd.capture_statements s SET partly_undone = true, \
                    undone_by = CASE WHEN (SELECT count(*) FROM pgshepherd.undone_rows u \
                                            WHERE u.statement = s.statement) = s.rows \
                                     THEN $1::bigint END \
              WHERE s.statement = $2",
            &[&undo_id, &st.statement],
        )
        .await?;
    Ok(())
}

/// The changes of statement `$2` of capture `$1` (which is `st`) not undone
/// yet that the predicate selects (of `op`, when given), as a subquery to name
/// `w`: the predicate sees the change's columns and nothing else. The
/// statement's context is written in as literals, so that the planner sees one
/// scan of its rows.
fn base(st: &Statement, op: Option<&str>, predicate: &str) -> String {
    let op = op
        .map(|o| format!(" AND r.op = '{}'", &o[..1]))
        .unwrap_or_default();
    let key = capture::key_of_row(Some(&st.key_columns));
    let undone_by = if st.partly_undone {
        capture::undone_row(&key)
    } else {
        "NULL::bigint".to_string()
    };
    let columns = capture::change_columns(&capture::Origin {
        run_id: &format!("{}::text", literal(&st.run_id)),
        migration_set: &format!("{}::text", literal(&st.migration_set)),
        version: &format!("{}::bigint", st.version),
        table_name: &format!("{}::text", literal(&st.table_name)),
        captured_at: &format!("{}::timestamptz", literal(&st.captured_at)),
        key: &key,
        undone_by: &undone_by,
    });
    format!(
        "(SELECT * FROM (SELECT {columns} FROM pgshepherd.captured_rows r \
                          WHERE r.capture = $1 AND r.statement = $2{op}) change \
           WHERE undone_by IS NULL AND ({predicate}))"
    )
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

/// What the undo statements need to know of a table now.
struct Shape {
    /// `schema.table`, quoted as PostgreSQL prints a regclass.
    rel: String,
    /// The key columns, as the capture names them.
    key: Vec<String>,
    /// Columns a re-insert writes (not generated).
    insertable: Vec<String>,
    /// Columns an update may set (not generated, not `GENERATED ALWAYS` identity).
    updatable: Vec<String>,
    /// Per column, the type a value read from an image as text is cast to;
    /// absent for types whose jsonb form is not their text form (arrays,
    /// composites, domains), which go through `jsonb_populate_record`.
    cast: HashMap<String, String>,
}

impl Shape {
    async fn read(client: &Client, rel: &str, key: &[String]) -> Result<Shape, UndoError> {
        let rows = client
            .query(
                "SELECT a.attname::text, a.attgenerated = '', \
                        a.attgenerated = '' AND a.attidentity <> 'a', \
                        CASE WHEN t.typcategory <> 'A' AND t.typtype NOT IN ('c', 'd') \
                             THEN a.atttypid::regtype::text END \
                   FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                  WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 \
                    AND NOT a.attisdropped ORDER BY a.attnum",
                &[&rel],
            )
            .await?;
        let mut insertable = Vec::new();
        let mut updatable = Vec::new();
        let mut cast = HashMap::new();
        for r in &rows {
            let name: String = r.get(0);
            if r.get::<_, bool>(1) {
                insertable.push(name.clone());
            }
            if r.get::<_, bool>(2) {
                updatable.push(name.clone());
            }
            if let Some(ty) = r.get::<_, Option<String>>(3) {
                cast.insert(name, ty);
            }
        }
        Ok(Shape {
            rel: rel.to_string(),
            key: key.to_vec(),
            insertable,
            updatable,
            cast,
        })
    }

    /// Column `col`'s value in the jsonb image `image`, typed. A cast from the
    /// text form costs a fraction of `jsonb_populate_record`, which a million
    /// rows feel.
    fn value(&self, image: &str, col: &str) -> String {
        match self.cast.get(col) {
            Some(ty) => format!("({image} ->> {})::{ty}", literal(col)),
            None => format!(
                "(jsonb_populate_record(NULL::{}, {image})).{}",
                self.rel,
                ident(col)
            ),
        }
    }

    /// The table's row `row` has the key in the jsonb image `image`.
    fn key_match(&self, row: &str, image: &str) -> String {
        self.key
            .iter()
            .map(|c| format!("{row}.{} = {}", ident(c), self.value(image, c)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The statement that reverts what it can of the `op` changes that
    /// [`base`] selects, and notes each reverted change in `pgshepherd_reverted`.
    fn revert_sql(&self, changes: &str, op: &str, mode: Mode, xmin: Option<&str>) -> String {
        let rel = &self.rel;
        // A row still in the version the migration wrote is unchanged without
        // comparing images.
        let untouched = xmin
            .map(|x| format!("t.xmin = '{x}'::xid OR "))
            .unwrap_or_default();
        let done = match op {
            "UPDATE" => {
                let sets: Vec<String> = self
                    .updatable
                    .iter()
                    .map(|c| {
                        format!(
                            "{c} = CASE WHEN w.changed ? {l} THEN {v} ELSE t.{c} END",
                            c = ident(c),
                            l = literal(c),
                            v = self.value("w.before", c)
                        )
                    })
                    .collect();
                let unchanged = match mode {
                    Mode::Merge => format!(
                        "({untouched}NOT EXISTS (SELECT FROM jsonb_each(w.changed) a \
                         WHERE to_jsonb(t) -> a.key IS DISTINCT FROM a.value))"
                    ),
                    // IS TRUE keeps the image out of the hash join's key: the
                    // planner would otherwise build one for every row of the
                    // table, not only for the rows the key matches.
                    _ => format!("({untouched}(to_jsonb(t) = w.after) IS TRUE)"),
                };
                format!(
                    "UPDATE {rel} AS t SET {} \
                       FROM {changes} w \
                      WHERE {} AND {unchanged} RETURNING w.row_id",
                    sets.join(", "),
                    self.key_match("t", "w.before"),
                )
            }
            "INSERT" => format!(
                "DELETE FROM {rel} AS t \
                  USING {changes} w \
                  WHERE {} AND ({untouched}(to_jsonb(t) = w.after) IS TRUE) RETURNING w.row_id",
                self.key_match("t", "w.after"),
            ),
            _ => {
                let cols: Vec<String> = self.insertable.iter().map(|c| ident(c)).collect();
                let values: Vec<String> = cols.iter().map(|c| format!("b.{c}")).collect();
                let key_json: Vec<String> = self
                    .key
                    .iter()
                    .map(|c| format!("{}, t.{}", literal(c), ident(c)))
                    .collect();
                // Any unique key taken (the primary key or another) leaves the
                // row out, and so a conflict.
                let inserted = format!(
                    "INSERT INTO {rel} AS t ({}) OVERRIDING SYSTEM VALUE \
                     SELECT {} FROM {changes} w, jsonb_populate_record(NULL::{rel}, w.before) b \
                     ON CONFLICT DO NOTHING RETURNING jsonb_build_object({}) AS key",
                    cols.join(", "),
                    values.join(", "),
                    key_json.join(", "),
                );
                return format!(
                    "WITH done AS ({inserted}) INSERT INTO pgshepherd_reverted \
                     SELECT $2, w.row_id FROM done JOIN {changes} w ON w.key = done.key"
                );
            }
        };
        format!("WITH done AS ({done}) INSERT INTO pgshepherd_reverted SELECT $2, row_id FROM done")
    }

    /// The statement that decides the `op` changes [`base`] selects that were
    /// not reverted: a row that is still there (changed since) or whose key is
    /// taken is a conflict, with the row as it is now; a row that is not there
    /// any more is gone (a re-insert that found no row in the way conflicts
    /// with another unique key).
    fn classify_sql(&self, changes: &str, op: &str) -> String {
        let rel = &self.rel;
        let missing = if op == "DELETE" { "conflict" } else { "gone" };
        format!(
            "INSERT INTO pgshepherd_undecided \
                 (statement, table_name, version, op, key, before, after, current, outcome) \
             SELECT statement, table_name, version, op, key, before, after, now, \
                    CASE WHEN now IS NULL THEN '{missing}' ELSE 'conflict' END \
               FROM (SELECT w.statement, w.table_name, w.version, w.op, w.key, w.before, w.after, \
                            (SELECT to_jsonb(t) FROM {rel} t WHERE {}) AS now \
                       FROM {} w \
                      WHERE NOT EXISTS (SELECT FROM pgshepherd_reverted r \
                                                WHERE r.statement = w.statement AND r.row_id = w.row_id) \
                     OFFSET 0) x",
            self.key_match("t", "w.key"),
            changes,
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
