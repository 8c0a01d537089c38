//! Row counts and checksums for a rehearsal whose migrations capture data
//! (`-- pgshepherd:capture`): their undo is the captured rows given back, and
//! the catalog alone cannot tell whether that worked. Recorded on the scratch
//! copy before the migrations run, compared after they were undone.
//!
//! Every ordinary table of the copy is summed, not only the captured ones: a
//! migration that captures the wrong table, or a down script that also
//! damages data, changes a table nobody named. Each table's sum is one
//! sequential scan in constant memory:
//! - a row's hash is `md5` of the row's text (`ROW(r.*)::text`), which tells a NULL
//!   (an empty field) from an empty string (`""`) and covers every column the
//!   table has now;
//! - the table's checksum is `count(*)` and the `numeric` sum of the first 64
//!   bits of every row's hash: independent of row order (no sort, however
//!   large the table), never overflowing, and a multiset sum, so two equal rows
//!   count twice. Two different tables summing to the same value needs a 64-bit
//!   collision across the changed rows.
//!
//! A sum says that rows differ, not how many. For the captured tables the
//! row hashes themselves are kept in the copy (in the `pgshepherd` schema,
//! which the catalog fingerprint leaves out), so that a difference counts the
//! rows that are not as they were.

use tokio_postgres::Client;

use crate::rehearse::diff::{Change, Difference};
use crate::rehearse::fingerprint::ObjectKind;

/// One table's rows before the migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRows {
    /// `schema.table`, quoted where needed.
    pub name: String,
    pub rows: i64,
    /// The sum of the rows' 64-bit hashes, as text (a `numeric`).
    pub checksum: String,
    /// A captured table: where its row hashes are kept.
    pub hashes: Option<String>,
}

/// The rows of every ordinary table of a database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataFingerprint {
    pub tables: Vec<TableRows>,
}

/// Ordinary tables outside the system's and pgshepherd's schemas, not owned
/// by an extension, with whether `captured` names them.
const TABLES: &str = "SELECT format('%I.%I', n.nspname, c.relname),
        c.oid = ANY (SELECT to_regclass(x)::oid FROM unnest($1::text[]) AS x)
   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind = 'r' AND c.relpersistence <> 't'
    AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgshepherd')
    AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
    AND NOT EXISTS (SELECT FROM pg_depend d
                     WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                       AND d.deptype = 'e')
  ORDER BY 1";

/// The row hashes `h` of table `name` (quoted). `ROW(alias.*)`, not a bare
/// alias: a column named like the alias would win over the whole row.
fn hashes_of(name: &str) -> String {
    format!("SELECT md5(ROW(pgshepherd_row.*)::text) AS h FROM ONLY {name} pgshepherd_row")
}

/// The sum of a set of row hashes `h` (see the module documentation).
const SUM: &str =
    "count(*)::bigint, coalesce(sum(('x' || left(h, 16))::bit(64)::bigint::numeric), 0)::text";

/// Record the rows of every table; `captured` (the capture directives' table
/// names) keep their row hashes for [`compare`].
pub async fn record(
    client: &Client,
    captured: &[String],
) -> Result<DataFingerprint, tokio_postgres::Error> {
    let captured: Vec<String> = captured.to_vec();
    let tables = client.query(TABLES, &[&captured]).await?;
    let mut out = DataFingerprint::default();
    for (i, row) in tables.iter().enumerate() {
        let name: String = row.get(0);
        let is_captured: bool = row.get(1);
        let (hashes, source) = if is_captured {
            let kept = format!("pgshepherd.rehearsal_rows_{i}");
            client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS {kept};
                     CREATE TABLE {kept} AS {}",
                    hashes_of(&name)
                ))
                .await?;
            (Some(kept.clone()), kept)
        } else {
            (None, format!("({}) r", hashes_of(&name)))
        };
        let sums = client
            .query_one(&format!("SELECT {SUM} FROM {source}"), &[])
            .await?;
        out.tables.push(TableRows {
            name,
            rows: sums.get(0),
            checksum: sums.get(1),
            hashes,
        });
    }
    Ok(out)
}

/// `schema.table` (quoted where needed, as [`record`] names tables) of each
/// table name as a capture directive writes it; `None` for one that does not
/// exist (yet).
pub async fn resolve(
    client: &Client,
    names: &[String],
) -> Result<Vec<Option<String>>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for n in names {
        let row = client
            .query_one(
                "SELECT (SELECT format('%I.%I', ns.nspname, c.relname)
                           FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
                          WHERE c.oid = to_regclass($1))",
                &[n],
            )
            .await?;
        out.push(row.get(0));
    }
    Ok(out)
}

/// What differs from `before` in the tables that still exist (a table the
/// down scripts dropped is the catalog's difference). `undone(table,
/// captured)` names what was undone for that table ("V4").
pub async fn compare(
    client: &Client,
    before: &DataFingerprint,
    undone: impl Fn(&str, bool) -> String,
) -> Result<Vec<Difference>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for t in &before.tables {
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&t.name])
            .await?
            .get(0);
        if !exists {
            continue;
        }
        let now = format!("({}) r", hashes_of(&t.name));
        let sums = client
            .query_one(&format!("SELECT {SUM} FROM {now}"), &[])
            .await?;
        let (rows, checksum): (i64, String) = (sums.get(0), sums.get(1));
        if rows == t.rows && checksum == t.checksum {
            continue;
        }
        let differ = match &t.hashes {
            // A changed row is one hash gone and another come: the larger side
            // counts the rows that are not as they were.
            Some(kept) => {
                let counts = client
                    .query_one(
                        &format!(
                            "SELECT (SELECT count(*) FROM (SELECT h FROM {kept}
                                                            EXCEPT ALL SELECT h FROM {now}) gone),
                                    (SELECT count(*) FROM (SELECT h FROM {now}
                                                            EXCEPT ALL SELECT h FROM {kept}) came)"
                        ),
                        &[],
                    )
                    .await?;
                let (gone, came): (i64, i64) = (counts.get(0), counts.get(1));
                Some(gone.max(came) as u64)
            }
            None => None,
        };
        out.push(Difference {
            kind: ObjectKind::Table,
            object: t.name.clone(),
            change: Change::Rows {
                differ,
                rows_before: t.rows as u64,
                rows_after: rows as u64,
                undone: undone(&t.name, t.hashes.is_some()),
                captured: t.hashes.is_some(),
            },
            changed_by: None,
        });
    }
    Ok(out)
}
