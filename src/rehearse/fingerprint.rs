//! A catalog fingerprint: what a database's schema looks like, read from its
//! system catalogs into one sorted structure that two runs can compare.
//!
//! A rehearsal fingerprints a copy of the target, runs the migrations up and
//! down, and fingerprints it again; [`crate::rehearse::diff`] says what the down
//! scripts failed to give back. So the fingerprint records what a down script
//! is responsible for and nothing that changes on its own:
//! - schemas, extensions, types (enum, domain, composite, range), tables,
//!   columns (type, default, nullability, generated, identity, collation,
//!   position), constraints (definition, validated), indexes (definition,
//!   validity), triggers, functions (signature, attributes, a hash of the
//!   body), views and materialized views (definition), sequences (options and
//!   owner, not their current value), comments; owners and privileges of
//!   schemas, tables, views, sequences, types and functions.
//! - Not: sequence values (`nextval` is not transactional, so no down script
//!   can give numbers back), row counts or data, statistics, storage
//!   (tablespaces, OIDs, relfilenodes), policies, publications, event
//!   triggers, roles. `docs/rehearsal.md` keeps the list users read.
//!
//! Invariants:
//! - Deterministic: objects are keyed by kind and name in a `BTreeMap`, every
//!   multi-valued attribute is aggregated in a stated order, and the whole read
//!   runs in one repeatable-read, read-only transaction with `search_path` set
//!   to `public`, so the server's deparsed text (`pg_get_indexdef`, ...) does
//!   not depend on the connecting role's settings.
//! - pgshepherd's own schema (`pgshepherd`: history, captures) and objects that
//!   belong to an extension are left out: the first changes on every run by
//!   design, the second is the extension's business (the extension itself and
//!   its version are recorded).
//! - Names are as a DBA writes them: quoted where needed, schema-qualified
//!   except for `public`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, SimpleQueryMessage};

/// The kinds of object a fingerprint records. The order is the order a report
/// lists differences in: containers before what they contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    Schema,
    Extension,
    Type,
    Table,
    Column,
    Constraint,
    Index,
    Trigger,
    Function,
    View,
    Sequence,
    Comment,
}

impl ObjectKind {
    /// The word a DBA uses for it.
    pub fn word(self) -> &'static str {
        match self {
            ObjectKind::Schema => "schema",
            ObjectKind::Extension => "extension",
            ObjectKind::Type => "type",
            ObjectKind::Table => "table",
            ObjectKind::Column => "column",
            ObjectKind::Constraint => "constraint",
            ObjectKind::Index => "index",
            ObjectKind::Trigger => "trigger",
            ObjectKind::Function => "function",
            ObjectKind::View => "view",
            ObjectKind::Sequence => "sequence",
            ObjectKind::Comment => "comment",
        }
    }

    /// Kinds whose objects contain others ([`CatalogObject::parent`] names one
    /// of them): a table that is missing is reported once, not once per column.
    pub fn is_container(self) -> bool {
        matches!(
            self,
            ObjectKind::Table | ObjectKind::View | ObjectKind::Type | ObjectKind::Sequence
        )
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// Which object: its kind and its name (`customer.loyalty_tier` for a column,
/// `customer.customer_email_key` for a constraint, `f(integer)` for a function,
/// `column loyalty_tier of table customer` for a comment).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectId {
    pub kind: ObjectKind,
    pub name: String,
}

/// What the fingerprint knows about one object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogObject {
    /// The table, view or type it belongs to, by name (columns, constraints,
    /// indexes, triggers).
    pub parent: Option<String>,
    /// Attribute name → value; `None` where the catalog has none (no default,
    /// no comment, default privileges).
    pub attributes: BTreeMap<String, Option<String>>,
}

/// A database's catalog, as far as a down script is responsible for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    pub objects: BTreeMap<ObjectId, CatalogObject>,
}

impl Fingerprint {
    /// The object `kind` `name`, if recorded.
    pub fn get(&self, kind: ObjectKind, name: &str) -> Option<&CatalogObject> {
        self.objects.get(&ObjectId {
            kind,
            name: name.to_string(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FingerprintError {
    #[error("while reading the {what} of the database for its fingerprint: {}", crate::pg::server_message(.source))]
    Query {
        what: &'static str,
        source: tokio_postgres::Error,
    },
    #[error(
        "while reading the {what} of the database for its fingerprint: {name} is recorded twice"
    )]
    Duplicate { what: &'static str, name: String },
}

/// Schemas pgshepherd looks at: not the system's, not its own.
const USER_SCHEMA: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgshepherd') \
                           AND n.nspname !~ '^pg_(toast|temp_)'";

/// `schema.` for a name outside `public` (quoted where needed), nothing in it;
/// `format('%s', NULL)` is the empty string.
const NSP: &str = "nullif(quote_ident(n.nspname) || '.', 'public.')";

/// Not a member of an extension: `class` is the catalog `oid` lives in.
fn not_extension_member(class: &str, oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT FROM pg_depend e WHERE e.classid = '{class}'::regclass \
         AND e.objid = {oid} AND e.deptype = 'e')"
    )
}

/// One query per kind. Each returns `name`, `parent`, then one text column per
/// attribute, named as the report names it; the SQL decides the words.
fn queries(server_version: u32) -> Vec<(ObjectKind, &'static str, String)> {
    let relation = |kinds: &str| {
        format!(
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ({kinds}) AND {USER_SCHEMA} AND {}",
            not_extension_member("pg_class", "c.oid")
        )
    };
    // SQL-standard bodies (`BEGIN ATOMIC`, PostgreSQL 14) leave prosrc empty.
    let body = if server_version >= 140000 {
        "coalesce(pg_get_function_sqlbody(p.oid), p.prosrc)"
    } else {
        "p.prosrc"
    };
    vec![
        (
            ObjectKind::Schema,
            "schemas",
            format!(
                "SELECT quote_ident(n.nspname), NULL, n.nspowner::regrole::text AS owner, \
                   n.nspacl::text AS privileges \
                 FROM pg_namespace n WHERE {USER_SCHEMA} AND {}",
                not_extension_member("pg_namespace", "n.oid")
            ),
        ),
        (
            ObjectKind::Extension,
            "extensions",
            "SELECT quote_ident(x.extname), NULL, x.extversion AS version, \
               x.extnamespace::regnamespace::text AS schema \
             FROM pg_extension x"
                .to_string(),
        ),
        (
            ObjectKind::Type,
            "types",
            format!(
                "SELECT format('%s%I', {NSP}, t.typname), NULL, \
                   CASE t.typtype WHEN 'e' THEN 'enum' WHEN 'd' THEN 'domain' \
                     WHEN 'c' THEN 'composite' WHEN 'r' THEN 'range' END AS kind, \
                   CASE t.typtype \
                     WHEN 'e' THEN (SELECT string_agg(quote_literal(enumlabel), ', ' ORDER BY enumsortorder) \
                                    FROM pg_enum WHERE enumtypid = t.oid) \
                     WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod) \
                     WHEN 'c' THEN (SELECT string_agg(quote_ident(a.attname) || ' ' \
                                      || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum) \
                                    FROM pg_attribute a \
                                    WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) \
                     WHEN 'r' THEN (SELECT format_type(rngsubtype, NULL) FROM pg_range WHERE rngtypid = t.oid) \
                   END AS definition, \
                   t.typdefault AS default, \
                   CASE WHEN t.typtype = 'd' THEN \
                     CASE WHEN t.typnotnull THEN 'NOT NULL' ELSE 'nullable' END END AS nullability, \
                   t.typowner::regrole::text AS owner, t.typacl::text AS privileges \
                 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
                 WHERE {USER_SCHEMA} AND {} AND (t.typtype IN ('e', 'd', 'r') \
                   OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))",
                not_extension_member("pg_type", "t.oid")
            ),
        ),
        (
            ObjectKind::Table,
            "tables",
            format!(
                "SELECT format('%s%I', {NSP}, c.relname), NULL, \
                   CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table' \
                     ELSE 'foreign table' END AS kind, \
                   CASE c.relpersistence WHEN 'u' THEN 'unlogged' ELSE 'logged' END AS persistence, \
                   (SELECT string_agg(i.inhparent::regclass::text, ', ' ORDER BY i.inhseqno) \
                    FROM pg_inherits i WHERE i.inhrelid = c.oid) AS \"inherits from\", \
                   CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END AS \"partition bound\", \
                   CASE WHEN c.relrowsecurity THEN 'enabled' ELSE 'disabled' END AS \"row level security\", \
                   array_to_string(c.reloptions, ', ') AS \"storage parameters\", \
                   c.relowner::regrole::text AS owner, c.relacl::text AS privileges \
                 {}",
                relation("'r', 'p', 'f'")
            ),
        ),
        (
            ObjectKind::Column,
            "columns",
            format!(
                "SELECT format('%s%I.%I', {NSP}, c.relname, a.attname), format('%s%I', {NSP}, c.relname), \
                   format_type(a.atttypid, a.atttypmod) AS type, \
                   CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END AS default, \
                   CASE WHEN a.attnotnull THEN 'NOT NULL' ELSE 'nullable' END AS nullability, \
                   CASE WHEN a.attgenerated = 's' \
                     THEN 'always as (' || pg_get_expr(d.adbin, d.adrelid) || ') stored' END AS generated, \
                   CASE a.attidentity WHEN 'a' THEN 'generated always' \
                     WHEN 'd' THEN 'generated by default' END AS identity, \
                   CASE WHEN a.attcollation <> t.typcollation \
                     THEN a.attcollation::regcollation::text END AS collation, \
                   row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum)::text AS position \
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                   JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid \
                   LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                 WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'f') \
                   AND {USER_SCHEMA} AND {}",
                not_extension_member("pg_class", "c.oid")
            ),
        ),
        (
            // `NOT VALID` is the `validated` attribute's fact, not the
            // definition's: one difference says it once.
            ObjectKind::Constraint,
            "constraints",
            format!(
                "SELECT format('%s%I.%I', {NSP}, c.relname, k.conname), format('%s%I', {NSP}, c.relname), \
                   regexp_replace(pg_get_constraintdef(k.oid), ' NOT VALID$', '') AS definition, \
                   CASE WHEN k.convalidated THEN 'yes' ELSE 'no' END AS validated \
                 FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE {USER_SCHEMA} AND {} \
                 UNION ALL \
                 SELECT format('%s%I.%I', {NSP}, t.typname, k.conname), format('%s%I', {NSP}, t.typname), \
                   regexp_replace(pg_get_constraintdef(k.oid), ' NOT VALID$', ''), CASE WHEN k.convalidated THEN 'yes' ELSE 'no' END \
                 FROM pg_constraint k JOIN pg_type t ON t.oid = k.contypid \
                   JOIN pg_namespace n ON n.oid = t.typnamespace \
                 WHERE {USER_SCHEMA} AND {}",
                not_extension_member("pg_class", "c.oid"),
                not_extension_member("pg_type", "t.oid")
            ),
        ),
        (
            // An index that implements a primary key, unique or exclusion
            // constraint is the constraint's: reporting both would say one
            // thing twice.
            ObjectKind::Index,
            "indexes",
            format!(
                "SELECT format('%s%I', {NSP}, i.relname), format('%s%I', {NSP}, c.relname), \
                   pg_get_indexdef(i.oid) AS definition, \
                   CASE WHEN x.indisvalid THEN 'valid' ELSE 'INVALID' END AS validity \
                 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
                   JOIN pg_class c ON c.oid = x.indrelid JOIN pg_namespace n ON n.oid = i.relnamespace \
                 WHERE {USER_SCHEMA} AND {} AND NOT EXISTS (SELECT FROM pg_constraint k \
                   WHERE k.conindid = x.indexrelid AND k.conrelid = x.indrelid AND k.contype IN ('p', 'u', 'x'))",
                not_extension_member("pg_class", "c.oid")
            ),
        ),
        (
            ObjectKind::Trigger,
            "triggers",
            format!(
                "SELECT format('%s%I.%I', {NSP}, c.relname, g.tgname), format('%s%I', {NSP}, c.relname), \
                   pg_get_triggerdef(g.oid) AS definition, \
                   CASE g.tgenabled WHEN 'O' THEN 'enabled' WHEN 'D' THEN 'disabled' \
                     WHEN 'R' THEN 'enabled on replicas only' ELSE 'enabled always' END AS enabled \
                 FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE NOT g.tgisinternal AND {USER_SCHEMA} AND {}",
                not_extension_member("pg_class", "c.oid")
            ),
        ),
        (
            ObjectKind::Function,
            "functions",
            format!(
                "SELECT format('%s%I(%s)', {NSP}, p.proname, pg_get_function_identity_arguments(p.oid)), NULL, \
                   CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' \
                     WHEN 'w' THEN 'window function' ELSE 'function' END AS kind, \
                   pg_get_function_result(p.oid) AS returns, \
                   l.lanname AS language, \
                   CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable' \
                     ELSE 'volatile' END AS volatility, \
                   CASE WHEN p.proisstrict THEN 'strict' ELSE 'called on null input' END AS strictness, \
                   CASE WHEN p.prosecdef THEN 'security definer' ELSE 'security invoker' END AS security, \
                   array_to_string(p.proconfig, ', ') AS settings, \
                   left(encode(sha256(convert_to({body}, 'UTF8')), 'hex'), 16) AS \"body hash\", \
                   p.proowner::regrole::text AS owner, p.proacl::text AS privileges \
                 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                   JOIN pg_language l ON l.oid = p.prolang \
                 WHERE {USER_SCHEMA} AND {}",
                not_extension_member("pg_proc", "p.oid")
            ),
        ),
        (
            ObjectKind::View,
            "views",
            format!(
                "SELECT format('%s%I', {NSP}, c.relname), NULL, \
                   CASE c.relkind WHEN 'v' THEN 'view' ELSE 'materialized view' END AS kind, \
                   pg_get_viewdef(c.oid, true) AS definition, \
                   c.relowner::regrole::text AS owner, c.relacl::text AS privileges \
                 {}",
                relation("'v', 'm'")
            ),
        ),
        (
            // Identity columns' sequences are the column's identity attribute.
            ObjectKind::Sequence,
            "sequences",
            format!(
                "SELECT format('%s%I', {NSP}, c.relname), NULL, \
                   format_type(s.seqtypid, NULL) AS type, s.seqstart::text AS start, \
                   s.seqincrement::text AS increment, s.seqmin::text AS minimum, \
                   s.seqmax::text AS maximum, s.seqcache::text AS cache, \
                   CASE WHEN s.seqcycle THEN 'yes' ELSE 'no' END AS cycle, \
                   (SELECT format('%s.%I', d.refobjid::regclass, a.attname) FROM pg_depend d \
                      JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                      AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'a') AS \"owned by\", \
                   c.relowner::regrole::text AS owner, c.relacl::text AS privileges \
                 FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE {USER_SCHEMA} AND {} AND NOT EXISTS (SELECT FROM pg_depend d \
                   WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'i')",
                not_extension_member("pg_class", "c.oid")
            ),
        ),
        (
            // Objects created by users have OIDs from 16384 (FirstNormalObjectId)
            // on; the system's own comments are below.
            ObjectKind::Comment,
            "comments",
            "SELECT pg_describe_object(d.classoid, d.objoid, d.objsubid), NULL, d.description AS text \
             FROM pg_description d, LATERAL pg_identify_object(d.classoid, d.objoid, d.objsubid) o \
             WHERE d.objoid >= 16384 \
               AND coalesce(o.schema, '') NOT IN ('pg_catalog', 'information_schema', 'pgshepherd') \
               AND coalesce(o.schema, '') !~ '^pg_(toast|temp_)' \
               AND NOT EXISTS (SELECT FROM pg_depend e WHERE e.classid = d.classoid \
                 AND e.objid = d.objoid AND e.deptype = 'e')"
                .to_string(),
        ),
    ]
}

/// Read `client`'s database's fingerprint. Read-only; one snapshot.
pub async fn read(client: &Client) -> Result<Fingerprint, FingerprintError> {
    let query = |what: &'static str| move |source| FingerprintError::Query { what, source };
    client
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL search_path = public",
        )
        .await
        .map_err(query("catalog"))?;
    let result = read_in_transaction(client).await;
    // COMMIT, not ROLLBACK: nothing was written, and pgshepherd's own
    // rollbacks must not show in `rollbacks_per_second` (see `pg::stats`).
    let end = client.batch_execute("COMMIT").await;
    let fingerprint = result?;
    end.map_err(query("catalog"))?;
    Ok(fingerprint)
}

async fn read_in_transaction(client: &Client) -> Result<Fingerprint, FingerprintError> {
    let version: u32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|source| FingerprintError::Query {
            what: "server version",
            source,
        })?
        .get::<_, i32>(0)
        .try_into()
        .unwrap_or_default();
    let mut fingerprint = Fingerprint::default();
    for (kind, what, sql) in queries(version) {
        let messages = client
            .simple_query(&sql)
            .await
            .map_err(|source| FingerprintError::Query { what, source })?;
        for message in messages {
            let SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            let name = row.get(0).unwrap_or_default().to_string();
            let object = CatalogObject {
                parent: row.get(1).map(str::to_string),
                attributes: row
                    .columns()
                    .iter()
                    .enumerate()
                    .skip(2)
                    .map(|(i, column)| (column.name().to_string(), row.get(i).map(str::to_string)))
                    .collect(),
            };
            let id = ObjectId { kind, name };
            if fingerprint.objects.contains_key(&id) {
                return Err(FingerprintError::Duplicate {
                    what,
                    name: id.name,
                });
            }
            fingerprint.objects.insert(id, object);
        }
    }
    Ok(fingerprint)
}
