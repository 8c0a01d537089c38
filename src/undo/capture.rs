//! Capturing the rows a migration changes, so they can be given back later.
//!
//! A migration whose header names tables (`-- pgshepherd:capture public.users`)
//! runs with three statement-level triggers on each of them, created inside the
//! migration's own transaction right before its SQL and dropped right after it,
//! before the COMMIT: other sessions never see them, they never fire for anybody
//! else's writes, and a migration that fails takes them (and what they recorded)
//! with it. Each trigger reads the statement's transition tables and writes one
//! row per changed row. An UPDATE that changes a row's key is recorded as the
//! DELETE of the old key and the INSERT of the new one. A `TRUNCATE` of a
//! captured table is refused (no trigger sees its rows): the migration fails and
//! changes nothing.
//!
//! The layout keeps the per-row record small, because its cost is what a
//! captured migration pays (docs/performance.md "Capture and undo"):
//! - `pgshepherd.captures`: one row per captured migration (run, set, version,
//!   when, kept until when, and its transaction id: a row whose `xmin` is still
//!   that id was not changed since, which spares the undo comparing images);
//! - `pgshepherd.capture_statements`: one row per capturing statement (its
//!   number, which is the undo order, the table, its key columns, the row count,
//!   and whether an undo reverted all of it);
//! - `pgshepherd.captured_rows`: per changed row only the statement, the
//!   operation and the images — the full row before (UPDATE, DELETE), the full
//!   row after (INSERT), and for an UPDATE only the columns it changed, with
//!   their new values. It is partitioned per capture (`captured_rows_ID`), so
//!   dropping an expired capture is a `DROP TABLE`, not a delete of its rows;
//! - `pgshepherd.undone_rows`: the keys of rows a partial undo (a `--where`, or
//!   conflicts left) reverted, so that a later undo skips them;
//! - the view `pgshepherd.captured_changes` puts them together as one change
//!   per row, with the names a `--where` predicate uses ([`change_columns`]).
//!
//! A captured table needs a key to find its rows again: its primary key, or else
//! a unique index on NOT NULL columns (not partial, no expression). [`KEY_QUERY`]
//! is the one definition, used by preflight and by the triggers' setup alike.

use std::time::Duration;

use tokio_postgres::Client;

use crate::migrations::history;

/// The key columns of the table `{rel}` (a regclass expression) as a text
/// array, or NULL when it has none that identifies its rows.
const KEY_QUERY: &str = "SELECT array_agg(a.attname::text ORDER BY k.ord) \
     FROM (SELECT i.indkey FROM pg_index i \
            WHERE i.indrelid = {rel} AND i.indisunique AND i.indisvalid AND i.indpred IS NULL \
              AND i.indexprs IS NULL \
              AND NOT EXISTS (SELECT FROM pg_attribute n WHERE n.attrelid = i.indrelid \
                               AND n.attnum = ANY (i.indkey::int2[]) AND NOT n.attnotnull) \
            ORDER BY i.indisprimary DESC, i.indexrelid LIMIT 1) x, \
          unnest(x.indkey::int2[]) WITH ORDINALITY k(attnum, ord) \
     JOIN pg_attribute a ON a.attrelid = {rel} AND a.attnum = k.attnum";

/// Where a captured row's context comes from, as SQL expressions over
/// `pgshepherd.captured_rows r`: joined rows in the view, literals in the undo's
/// selection of one statement's rows.
pub(crate) struct Origin<'a> {
    pub run_id: &'a str,
    pub migration_set: &'a str,
    pub version: &'a str,
    pub table_name: &'a str,
    pub captured_at: &'a str,
    /// The key as jsonb (see [`key_of_row`]).
    pub key: &'a str,
    pub undone_by: &'a str,
}

/// The changes as the undo and a `--where` predicate see them: one row per
/// changed row, with `table_name`, `op` (`INSERT`, `UPDATE`, `DELETE`), `key`,
/// `before` and `after` (full images; NULL where the row did not exist),
/// `changed` (an UPDATE's changed columns with their new values), `version`,
/// `run_id`, `migration_set`, `statement`, `captured_at`, `undone_by`, and
/// `capture` and `row_id` (which record it is, for the undo's bookkeeping).
/// The one definition of these columns: the view `pgshepherd.captured_changes`
/// and the undo's per-statement selection are both built from it.
pub(crate) fn change_columns(o: &Origin) -> String {
    format!(
        "r.capture, r.statement, r.ctid AS row_id, {run_id} AS run_id, \
         {migration_set} AS migration_set, {version} AS version, {table_name} AS table_name, \
         CASE r.op WHEN 'I' THEN 'INSERT' WHEN 'U' THEN 'UPDATE' ELSE 'DELETE' END AS op, \
         {key} AS key, r.before, \
         CASE r.op WHEN 'U' THEN r.before || r.after ELSE r.after END AS after, \
         CASE r.op WHEN 'U' THEN r.after END AS changed, \
         {captured_at} AS captured_at, {undone_by} AS undone_by",
        run_id = o.run_id,
        migration_set = o.migration_set,
        version = o.version,
        table_name = o.table_name,
        key = o.key,
        captured_at = o.captured_at,
        undone_by = o.undone_by,
    )
}

/// A captured row's key as jsonb, given its key columns as SQL text-array
/// expression `columns` and, when known, as names (a literal key is built
/// without a subquery).
pub(crate) fn key_of_row(columns: Option<&[String]>) -> String {
    let image = "coalesce(r.before, r.after)";
    match columns {
        Some(cols) => {
            let pairs: Vec<String> = cols
                .iter()
                .map(|c| format!("{l}, {image} -> {l}", l = history::literal(c)))
                .collect();
            format!("jsonb_build_object({})", pairs.join(", "))
        }
        None => format!(
            "CASE WHEN cardinality(s.key_columns) = 1 \
                  THEN jsonb_build_object(s.key_columns[1], {image} -> s.key_columns[1]) \
                  ELSE (SELECT jsonb_object_agg(k, {image} -> k) FROM unnest(s.key_columns) k) END"
        ),
    }
}

/// Which undo reverted a row of a statement an earlier undo reverted only in
/// part, given the row's key expression.
pub(crate) fn undone_row(key: &str) -> String {
    format!(
        "(SELECT u.undo FROM pgshepherd.undone_rows u \
           WHERE u.statement = r.statement AND u.key = {key})"
    )
}

fn changes_view() -> String {
    let key = key_of_row(None);
    let undone_by = format!(
        "CASE WHEN s.undone_by IS NOT NULL THEN s.undone_by WHEN s.partly_undone THEN {} END",
        undone_row(&key)
    );
    format!(
        "CREATE OR REPLACE VIEW pgshepherd.captured_changes AS SELECT {} \
           FROM pgshepherd.captured_rows r \
           JOIN pgshepherd.capture_statements s ON s.statement = r.statement \
           JOIN pgshepherd.captures c ON c.id = r.capture",
        change_columns(&Origin {
            run_id: "c.run_id",
            migration_set: "c.migration_set",
            version: "c.version",
            table_name: "s.table_name",
            captured_at: "c.captured_at",
            key: &key,
            undone_by: &undone_by,
        })
    )
}

/// Column types compared with `IS DISTINCT FROM` when an UPDATE's changed
/// columns are picked; any other type is compared by its text form, which works
/// for every type (some, like `json` or `point`, have no equality operator).
const DIRECT_COMPARE: &str = "'bool', 'int2', 'int4', 'int8', 'float4', 'float8', 'numeric', \
     'text', 'varchar', 'bpchar', 'name', 'uuid', 'date', 'time', 'timestamp', 'timestamptz', \
     'interval', 'bytea', 'jsonb', 'oid', 'char'";

/// How long captured changes are kept when the plan does not say.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(30 * 86_400);

/// pgshepherd's capture objects on the target, created (idempotently) in the
/// migration's transaction before the triggers; `history::CREATE` first, as the
/// undo marks the history rows it reverted.
fn schema_sql() -> String {
    let key_query = KEY_QUERY.replace("{rel}", "rel");
    format!(
        "{history}
CREATE TABLE IF NOT EXISTS pgshepherd.captures (
    id            bigserial   PRIMARY KEY,
    run_id        text        NOT NULL,
    migration_set text        NOT NULL,
    version       bigint      NOT NULL,
    tables        text[]      NOT NULL,
    captured_at   timestamptz NOT NULL DEFAULT now(),
    keep_until    timestamptz,
    xid           xid8        NOT NULL
);
CREATE INDEX IF NOT EXISTS captures_run ON pgshepherd.captures (run_id, migration_set, version);
CREATE TABLE IF NOT EXISTS pgshepherd.capture_statements (
    statement     bigint      PRIMARY KEY,
    capture       bigint      NOT NULL REFERENCES pgshepherd.captures ON DELETE CASCADE,
    table_name    text        NOT NULL,
    trigger_op    text        NOT NULL,
    key_columns   text[]      NOT NULL,
    rows          bigint      NOT NULL,
    undone_by     bigint,
    partly_undone boolean     NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS capture_statements_capture ON pgshepherd.capture_statements (capture);
CREATE TABLE IF NOT EXISTS pgshepherd.captured_rows (
    capture       bigint      NOT NULL,
    statement     bigint      NOT NULL,
    op            \"char\"      NOT NULL,
    before        jsonb,
    after         jsonb
) PARTITION BY LIST (capture);
CREATE TABLE IF NOT EXISTS pgshepherd.undone_rows (
    statement     bigint      NOT NULL REFERENCES pgshepherd.capture_statements ON DELETE CASCADE,
    key           jsonb       NOT NULL,
    undo          bigint      NOT NULL,
    PRIMARY KEY (statement, key)
);
CREATE SEQUENCE IF NOT EXISTS pgshepherd.capture_statement;
CREATE TABLE IF NOT EXISTS pgshepherd.undos (
    id            bigserial   PRIMARY KEY,
    run_id        text        NOT NULL,
    migration_set text        NOT NULL,
    versions      bigint[]    NOT NULL,
    mode          text        NOT NULL,
    predicate     text,
    undone_by     text        NOT NULL,
    undone_at     timestamptz NOT NULL DEFAULT now(),
    counts        jsonb       NOT NULL
);
ALTER TABLE pgshepherd.history ADD COLUMN IF NOT EXISTS last_undo bigint;
{changes};

-- Runs the capture query the trigger was created with (TG_ARGV[2]) for one
-- statement, then records the statement when it changed any row. The join
-- pairing old and new rows wants memory rather than disk. JIT is off: the
-- planner has no statistics for transition tables, overestimates the join
-- quadratically, and would compile (a fifth of a second) for statements of a
-- few thousand rows.
CREATE OR REPLACE FUNCTION pgshepherd.capture_rows() RETURNS trigger
LANGUAGE plpgsql SET work_mem = '256MB' SET jit = off AS $fn$
DECLARE
    stmt bigint := nextval('pgshepherd.capture_statement');
    n    bigint;
BEGIN
    EXECUTE TG_ARGV[2] USING stmt;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        INSERT INTO pgshepherd.capture_statements
            (statement, capture, table_name, trigger_op, key_columns, rows)
        VALUES (stmt, TG_ARGV[0]::bigint, format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME),
                TG_OP, TG_ARGV[1]::text[], n);
    END IF;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION pgshepherd.capture_refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'pgshepherd:capture: TRUNCATE of %.% cannot be captured (no trigger sees its rows); use DELETE',
        TG_TABLE_SCHEMA, TG_TABLE_NAME;
END
$fn$;

-- Drops the captures kept long enough, each with its partition of rows.
CREATE OR REPLACE FUNCTION pgshepherd.drop_expired_captures() RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    cap     bigint;
    dropped bigint := 0;
BEGIN
    FOR cap IN SELECT id FROM pgshepherd.captures WHERE keep_until < now() ORDER BY id LOOP
        EXECUTE format('DROP TABLE IF EXISTS pgshepherd.captured_rows_%s', cap);
        DELETE FROM pgshepherd.captures WHERE id = cap;
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$fn$;

CREATE OR REPLACE FUNCTION pgshepherd.capture_start(run text, mset text, ver bigint, tables text[], keep interval)
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    t      text;
    rel    regclass;
    keys   text[];
    cap    bigint;
    part   text;
    same   text;
    diff   text;
    ins    text;
    del    text;
    upd    text;
BEGIN
    PERFORM pgshepherd.drop_expired_captures();
    INSERT INTO pgshepherd.captures (run_id, migration_set, version, tables, keep_until, xid)
    VALUES (run, mset, ver, tables, now() + keep, pg_current_xact_id()) RETURNING id INTO cap;
    PERFORM set_config('pgshepherd.capture', cap::text, true);
    part := format('pgshepherd.captured_rows_%s', cap);
    EXECUTE format('CREATE TABLE %s PARTITION OF pgshepherd.captured_rows FOR VALUES IN (%s)', part, cap);
    FOREACH t IN ARRAY tables LOOP
        rel := to_regclass(t);
        IF rel IS NULL THEN
            RAISE EXCEPTION 'pgshepherd:capture: table % does not exist (capture names tables that exist before the migration)', t;
        END IF;
        {key_query} INTO keys;
        IF keys IS NULL THEN
            RAISE EXCEPTION 'pgshepherd:capture: table % has no primary key or unique key on NOT NULL columns, so its rows cannot be found again', rel;
        END IF;
        SELECT string_agg(format('o.%I = n.%I', k, k), ' AND ') INTO same FROM unnest(keys) k;
        -- An UPDATE's changed columns with their new values; '{{}}' when it
        -- changed none (such a row is not recorded).
        SELECT string_agg(format(
                   CASE WHEN a.atttypid::regtype::text IN ({DIRECT_COMPARE})
                        THEN 'CASE WHEN o.%1$I IS DISTINCT FROM n.%1$I THEN jsonb_build_object(%2$L, n.%1$I) ELSE ''{{}}'' END'
                        ELSE 'CASE WHEN o.%1$I::text IS DISTINCT FROM n.%1$I::text THEN jsonb_build_object(%2$L, n.%1$I) ELSE ''{{}}'' END'
                   END, a.attname, a.attname), ' || ' ORDER BY a.attnum)
          INTO diff
          FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped;
        ins := format('INSERT INTO %s SELECT %s, $1, ''I'', NULL, to_jsonb(n) FROM pgshepherd_new n', part, cap);
        del := format('INSERT INTO %s SELECT %s, $1, ''D'', to_jsonb(o), NULL FROM pgshepherd_old o', part, cap);
        -- Old and new rows paired by key; a row whose key changed appears
        -- unpaired on both sides: the DELETE of its old key, the INSERT of its
        -- new one. OFFSET 0 keeps each image built once.
        upd := format($q$INSERT INTO %1$s
            SELECT %2$s, $1, op, b, a FROM (
                SELECT CASE WHEN o.%3$I IS NULL THEN 'I' WHEN n.%3$I IS NULL THEN 'D' ELSE 'U' END AS op,
                       CASE WHEN o.%3$I IS NULL THEN NULL ELSE to_jsonb(o) END AS b,
                       CASE WHEN o.%3$I IS NULL THEN to_jsonb(n) WHEN n.%3$I IS NULL THEN NULL ELSE %4$s END AS a
                  FROM pgshepherd_old o FULL JOIN pgshepherd_new n ON %5$s OFFSET 0) x
             WHERE a IS DISTINCT FROM '{{}}'::jsonb$q$, part, cap, keys[1], diff, same);
        EXECUTE format('CREATE TRIGGER pgshepherd_capture_insert AFTER INSERT ON %s
            REFERENCING NEW TABLE AS pgshepherd_new
            FOR EACH STATEMENT EXECUTE FUNCTION pgshepherd.capture_rows(%L, %L, %L)', rel, cap, keys, ins);
        EXECUTE format('CREATE TRIGGER pgshepherd_capture_update AFTER UPDATE ON %s
            REFERENCING OLD TABLE AS pgshepherd_old NEW TABLE AS pgshepherd_new
            FOR EACH STATEMENT EXECUTE FUNCTION pgshepherd.capture_rows(%L, %L, %L)', rel, cap, keys, upd);
        EXECUTE format('CREATE TRIGGER pgshepherd_capture_delete AFTER DELETE ON %s
            REFERENCING OLD TABLE AS pgshepherd_old
            FOR EACH STATEMENT EXECUTE FUNCTION pgshepherd.capture_rows(%L, %L, %L)', rel, cap, keys, del);
        EXECUTE format('CREATE TRIGGER pgshepherd_capture_truncate BEFORE TRUNCATE ON %s
            FOR EACH STATEMENT EXECUTE FUNCTION pgshepherd.capture_refuse_truncate()', rel);
    END LOOP;
END
$fn$;

-- Drops the triggers. A capture of many statements gets its rows indexed by
-- statement for the undo, which reads them a statement at a time (built once
-- over all of them, cheaper than maintained per row); for a few statements a
-- scan of the partition each is cheaper than building it.
CREATE OR REPLACE FUNCTION pgshepherd.capture_stop(tables text[]) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    t   text;
    trg text;
    cap bigint := current_setting('pgshepherd.capture')::bigint;
BEGIN
    FOREACH t IN ARRAY tables LOOP
        FOREACH trg IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
            EXECUTE format('DROP TRIGGER pgshepherd_capture_%s ON %s', trg, to_regclass(t));
        END LOOP;
    END LOOP;
    IF (SELECT count(*) FROM pgshepherd.capture_statements WHERE capture = cap) > 16 THEN
        EXECUTE format('CREATE INDEX ON pgshepherd.captured_rows_%s (statement, op)', cap);
    END IF;
END
$fn$;",
        history = history::CREATE,
        changes = changes_view(),
    )
}

/// SQL that starts capturing `tables` for `version` of `set` in `run_id`, run
/// in the migration's transaction right before its SQL; the capture is kept for
/// `keep` (forever when `None`), and expired captures are dropped first.
pub(crate) fn start_sql(
    tables: &[String],
    run_id: &str,
    set: &str,
    version: i64,
    keep: Option<Duration>,
) -> String {
    let keep = match keep {
        Some(d) => format!("interval '{} seconds'", d.as_secs()),
        None => "NULL".to_string(),
    };
    format!(
        "{};\nSELECT pgshepherd.capture_start({}, {}, {version}, {}, {keep});",
        schema_sql(),
        history::literal(run_id),
        history::literal(set),
        array(tables)
    )
}

/// SQL that stops capturing `tables`, run in the migration's transaction right
/// after its SQL, before the COMMIT.
pub(crate) fn stop_sql(tables: &[String]) -> String {
    format!("SELECT pgshepherd.capture_stop({})", array(tables))
}

fn array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|t| history::literal(t)).collect();
    format!("ARRAY[{}]::text[]", quoted.join(", "))
}

/// Why a table named in a capture directive cannot be captured, found before
/// anything changes.
#[derive(Debug, thiserror::Error)]
pub enum KeyProblem {
    #[error(
        "{label} captures {table}, which has no primary key or unique key on NOT NULL columns: \
         its rows could not be found again to undo them; add a key or drop the table from \
         `-- pgshepherd:capture`"
    )]
    NoKey { label: String, table: String },
    #[error("cannot look up the key of {table}: {}", crate::pg::server_message(.source))]
    Query {
        table: String,
        source: tokio_postgres::Error,
    },
}

/// Each captured table of `migrations` that exists now must have a key. A table
/// that does not exist yet (an earlier migration of the run creates it) is
/// checked when its migration starts.
pub async fn check_keys(
    client: &Client,
    migrations: &[&crate::migrations::Migration],
) -> Result<(), KeyProblem> {
    let sql = format!(
        "SELECT to_regclass($1) IS NULL, ({})",
        KEY_QUERY.replace("{rel}", "to_regclass($1)")
    );
    for m in migrations {
        for table in &m.up.capture {
            let row =
                client
                    .query_one(&sql, &[table])
                    .await
                    .map_err(|source| KeyProblem::Query {
                        table: table.clone(),
                        source,
                    })?;
            let missing: bool = row.get(0);
            let keys: Option<Vec<String>> = row.get(1);
            if !missing && keys.is_none() {
                return Err(KeyProblem::NoKey {
                    label: m.label(),
                    table: table.clone(),
                });
            }
        }
    }
    Ok(())
}
