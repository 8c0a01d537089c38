//! Capturing the rows a migration changes, so they can be given back later.
//!
//! A migration whose header names tables (`-- pgshepherd:capture public.users`)
//! runs with three statement-level triggers on each of them, created inside the
//! migration's own transaction right before its SQL and dropped right after it,
//! before the COMMIT: other sessions never see them, they never fire for anybody
//! else's writes, and a migration that fails takes them (and what they recorded)
//! with it. Each trigger reads the statement's transition tables and writes one
//! row per changed row to `pgshepherd.captured_changes`: the table, the key, the
//! operation, the before and after images as jsonb, and the statement's number
//! (the undo order). An UPDATE that changes a row's key is recorded as the DELETE
//! of the old key and the INSERT of the new one. A `TRUNCATE` of a captured table
//! is refused (no trigger sees its rows): the migration fails and changes nothing.
//!
//! A captured table needs a key to find its rows again: its primary key, or else
//! a unique index on NOT NULL columns (not partial, no expression). [`KEY_QUERY`]
//! is the one definition, used by preflight and by the triggers' setup alike.

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

/// pgshepherd's capture objects on the target, created (idempotently) in the
/// migration's transaction before the triggers; `history::CREATE` first, as the
/// undo marks the history rows it reverted.
fn schema_sql() -> String {
    let key_query = KEY_QUERY.replace("{rel}", "rel");
    format!(
        "{history}
CREATE TABLE IF NOT EXISTS pgshepherd.captured_changes (
    id            bigserial   PRIMARY KEY,
    run_id        text        NOT NULL,
    migration_set text        NOT NULL,
    version       bigint      NOT NULL,
    statement     bigint      NOT NULL,
    table_name    text        NOT NULL,
    op            text        NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE')),
    key           jsonb       NOT NULL,
    before        jsonb,
    after         jsonb,
    captured_at   timestamptz NOT NULL DEFAULT now(),
    undone_by     bigint
);
CREATE INDEX IF NOT EXISTS captured_changes_run
    ON pgshepherd.captured_changes (run_id, migration_set, version, statement);
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

CREATE OR REPLACE FUNCTION pgshepherd.capture_rows() RETURNS trigger
LANGUAGE plpgsql SET work_mem = '64MB' AS $fn$
DECLARE
    keys  text[] := TG_ARGV[0]::text[];
    tbl   text   := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);
    stmt  bigint := nextval('pgshepherd.capture_statement');
    key_n text;
    key_o text;
    same  text;
BEGIN
    SELECT string_agg(format('%L, n.%I', k, k), ', '),
           string_agg(format('%L, o.%I', k, k), ', '),
           string_agg(format('o.%I = n.%I', k, k), ' AND ')
      INTO key_n, key_o, same
      FROM unnest(keys) k;
    IF TG_OP = 'INSERT' THEN
        EXECUTE format($q$INSERT INTO pgshepherd.captured_changes
            (run_id, migration_set, version, statement, table_name, op, key, before, after)
            SELECT $1, $2, $3, $4, $5, 'INSERT', jsonb_build_object(%s), NULL, to_jsonb(n)
              FROM pgshepherd_new n$q$, key_n)
        USING TG_ARGV[1], TG_ARGV[2], TG_ARGV[3]::bigint, stmt, tbl;
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE format($q$INSERT INTO pgshepherd.captured_changes
            (run_id, migration_set, version, statement, table_name, op, key, before, after)
            SELECT $1, $2, $3, $4, $5, 'DELETE', jsonb_build_object(%s), to_jsonb(o), NULL
              FROM pgshepherd_old o$q$, key_o)
        USING TG_ARGV[1], TG_ARGV[2], TG_ARGV[3]::bigint, stmt, tbl;
    ELSE
        -- Old and new rows paired by key; a row whose key changed appears
        -- unpaired on both sides: the DELETE of its old key, the INSERT of its
        -- new one. Rows the statement left as they were are not recorded.
        -- Each image is built once (the materialized CTE keeps the planner
        -- from copying the expressions into the comparison).
        EXECUTE format($q$WITH pair AS MATERIALIZED (
                SELECT CASE WHEN o.%1$I IS NULL THEN 'INSERT' WHEN n.%1$I IS NULL THEN 'DELETE' ELSE 'UPDATE' END AS op,
                       CASE WHEN n.%1$I IS NULL THEN jsonb_build_object(%2$s) ELSE jsonb_build_object(%3$s) END AS key,
                       CASE WHEN o.%1$I IS NULL THEN NULL ELSE to_jsonb(o) END AS before,
                       CASE WHEN n.%1$I IS NULL THEN NULL ELSE to_jsonb(n) END AS after
                  FROM pgshepherd_old o FULL JOIN pgshepherd_new n ON %4$s)
            INSERT INTO pgshepherd.captured_changes
            (run_id, migration_set, version, statement, table_name, op, key, before, after)
            SELECT $1, $2, $3, $4, $5, op, key, before, after FROM pair
             WHERE before IS DISTINCT FROM after$q$,
            keys[1], key_o, key_n, same)
        USING TG_ARGV[1], TG_ARGV[2], TG_ARGV[3]::bigint, stmt, tbl;
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

CREATE OR REPLACE FUNCTION pgshepherd.capture_start(run text, mset text, ver bigint, tables text[])
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    t    text;
    rel  regclass;
    keys text[];
    args text;
BEGIN
    FOREACH t IN ARRAY tables LOOP
        rel := to_regclass(t);
        IF rel IS NULL THEN
            RAISE EXCEPTION 'pgshepherd:capture: table % does not exist (capture names tables that exist before the migration)', t;
        END IF;
        {key_query} INTO keys;
        IF keys IS NULL THEN
            RAISE EXCEPTION 'pgshepherd:capture: table % has no primary key or unique key on NOT NULL columns, so its rows cannot be found again', rel;
        END IF;
        args := format('%L, %L, %L, %L', keys, run, mset, ver);
        EXECUTE format('CREATE TRIGGER pgshepherd_capture_insert AFTER INSERT ON %s
            REFERENCING NEW TABLE AS pgshepherd_new
            FOR EACH STATEMENT EXECUTE FUNCTION pgshepherd.capture_rows(%s)', rel, args);
        EXECUTE format('CREATE TRIGGER pgshepherd_capture_update AFTER UPDATE ON %s
            REFERENCING OLD TABLE AS pgshepherd_old NEW TABLE AS pgshepherd_new
            FOR EACH STATEMENT EXECUTE FUNCTION pgshepherd.capture_rows(%s)', rel, args);
        EXECUTE format('CREATE TRIGGER pgshepherd_capture_delete AFTER DELETE ON %s
            REFERENCING OLD TABLE AS pgshepherd_old
            FOR EACH STATEMENT EXECUTE FUNCTION pgshepherd.capture_rows(%s)', rel, args);
        EXECUTE format('CREATE TRIGGER pgshepherd_capture_truncate BEFORE TRUNCATE ON %s
            FOR EACH STATEMENT EXECUTE FUNCTION pgshepherd.capture_refuse_truncate()', rel);
    END LOOP;
END
$fn$;

CREATE OR REPLACE FUNCTION pgshepherd.capture_stop(tables text[]) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    t   text;
    trg text;
BEGIN
    FOREACH t IN ARRAY tables LOOP
        FOREACH trg IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
            EXECUTE format('DROP TRIGGER pgshepherd_capture_%s ON %s', trg, to_regclass(t));
        END LOOP;
    END LOOP;
END
$fn$;",
        history = history::CREATE,
    )
}

/// SQL that starts capturing `tables` for `version` of `set` in `run_id`, run
/// in the migration's transaction right before its SQL.
pub(crate) fn start_sql(tables: &[String], run_id: &str, set: &str, version: i64) -> String {
    format!(
        "{};\nSELECT pgshepherd.capture_start({}, {}, {version}, {});",
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
