//! Can the target's role restore a backup of this database? Asked before anything
//! changes (preflight and `--dry-run`), because a `restore` rollback that fails is
//! discovered only after the migration, when the target is already changed.
//!
//! The answer follows what [`restore`](super::restore()) really runs, as the
//! target's role:
//! - its reset drops every user schema (`DROP SCHEMA ... CASCADE`: only the
//!   schema's owner may), unlinks every large object (its owner, unless
//!   `lo_compat_privileges`), drops every publication (its owner), and recreates
//!   `public` (`CREATE` on the database, and on PostgreSQL 15 and later
//!   `AUTHORIZATION pg_database_owner`, which only the database's owner may give);
//! - the archive's script then runs `CREATE EXTENSION IF NOT EXISTS` for every
//!   extension pg_dump dumped (a superuser, or a trusted extension and `CREATE`
//!   on the database; an extension in a schema the reset keeps is still there,
//!   and its `COMMENT ON EXTENSION` needs its owner), `ALTER ... OWNER TO` for every
//!   object (a member of the new owner, and, until the archive's GRANTs at its very
//!   end, the new owner needs `CREATE` on the schema: only the schema's owner has
//!   it then), and `CREATE EVENT TRIGGER` for event triggers, which the reset
//!   cannot drop (they belong to no schema), so any existing one fails the restore.
//!
//! A superuser passes every check but the last. The answer reads the live
//! database, not the archive (there is none yet at preflight): pg_dump dumps what
//! is there, so the two agree unless someone changes the database in between.
//!
//! Extensions the restore recreates are owned by the role that restores them
//! (PostgreSQL has no `ALTER EXTENSION ... OWNER TO`): [`Readiness::owner_changes`]
//! lists the ones whose owner will change, for the dry run and the run's events.

use std::fmt;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::BackupError;
use crate::pg::Dsn;

/// What a restore of this database by this role will need that it lacks, and what
/// it will change besides the data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// The role pgshepherd connects as.
    pub role: String,
    pub superuser: bool,
    /// Empty: the restore can work.
    pub problems: Vec<RestoreProblem>,
    pub owner_changes: Vec<ExtensionOwnerChange>,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.problems.is_empty()
    }

    /// Every problem, one per line, for a stop reason.
    pub fn explain(&self) -> String {
        self.problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// An extension the restore drops with its schema and creates again as the
/// restoring role: its owner becomes that role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtensionOwnerChange {
    pub extension: String,
    pub owner_before: String,
    pub owner_after: String,
}

impl fmt::Display for ExtensionOwnerChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "extension {} is owned by {} after a restore, by {} before (a restore creates it again)",
            self.extension, self.owner_after, self.owner_before
        )
    }
}

/// One reason a restore by this role would fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum RestoreProblem {
    /// CREATE SCHEMA (and trusted extensions) need CREATE on the database.
    NoCreateOnDatabase { role: String, database: String },
    /// The restore keeps the sequences' values in a temporary table.
    NoTempOnDatabase { role: String, database: String },
    /// PostgreSQL 15+: `CREATE SCHEMA public AUTHORIZATION pg_database_owner`.
    NotDatabaseOwner { role: String, database: String },
    /// DROP SCHEMA needs its owner.
    SchemaNotOwned {
        schema: String,
        owner: String,
        role: String,
    },
    /// The archive's CREATE EXTENSION would be refused.
    ExtensionNotCreatable {
        extension: String,
        role: String,
        why: String,
    },
    /// An extension the reset keeps (in pg_catalog) has a comment the archive
    /// sets again, which needs its owner.
    ExtensionNotOwned {
        extension: String,
        owner: String,
        role: String,
    },
    /// The archive's `ALTER ... OWNER TO owner` for these objects would be refused.
    OwnerNotMember {
        owner: String,
        role: String,
        objects: Vec<String>,
    },
    /// The new owner lacks CREATE on the schema while the archive is restored.
    OwnerCannotCreateInSchema {
        owner: String,
        schema: String,
        objects: Vec<String>,
    },
    LargeObjectsNotOwned {
        owner: String,
        role: String,
        count: i64,
    },
    PublicationNotOwned {
        publication: String,
        owner: String,
        role: String,
    },
    /// `CREATE PUBLICATION ... FOR ALL TABLES` needs a superuser.
    PublicationForAllTables { publication: String, role: String },
    /// The reset cannot drop it and the archive creates it again.
    EventTrigger { trigger: String },
}

/// At most this many object names in a message; the count says the rest.
const NAMED: usize = 5;

fn some(objects: &[String]) -> String {
    if objects.len() <= NAMED {
        objects.join(", ")
    } else {
        format!(
            "{} and {} more",
            objects[..NAMED].join(", "),
            objects.len() - NAMED
        )
    }
}

impl fmt::Display for RestoreProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use RestoreProblem::*;
        match self {
            NoCreateOnDatabase { role, database } => write!(
                f,
                "role {role} lacks CREATE on database {database} (the restore recreates its schemas)"
            ),
            NoTempOnDatabase { role, database } => write!(
                f,
                "role {role} lacks TEMPORARY on database {database} (the restore keeps the sequences' values \
                 in a temporary table, so that none goes backwards)"
            ),
            NotDatabaseOwner { role, database } => write!(
                f,
                "role {role} does not own database {database} (the restore recreates schema public owned by \
                 pg_database_owner, which only the database's owner may do)"
            ),
            SchemaNotOwned {
                schema,
                owner,
                role,
            } => write!(
                f,
                "schema {schema} is owned by {owner}, not by role {role} (the restore drops and recreates every \
                 schema; only its owner may drop it)"
            ),
            ExtensionNotCreatable {
                extension,
                role,
                why,
            } => write!(
                f,
                "extension {extension} cannot be created by role {role}: {why} (the restore drops it with its \
                 schema and creates it again)"
            ),
            ExtensionNotOwned {
                extension,
                owner,
                role,
            } => write!(
                f,
                "extension {extension} is owned by {owner}, not by role {role} (the restore sets its comment \
                 again, which only its owner may)"
            ),
            OwnerNotMember {
                owner,
                role,
                objects,
            } => write!(
                f,
                "role {role} is not a member of role {owner}, which owns {} (the restore gives them back to \
                 {owner}: GRANT {owner} TO {role})",
                some(objects)
            ),
            OwnerCannotCreateInSchema {
                owner,
                schema,
                objects,
            } => write!(
                f,
                "role {owner} owns {} but does not own schema {schema} (while the restore runs, only the \
                 schema's owner may create in it; its GRANTs are restored last)",
                some(objects)
            ),
            LargeObjectsNotOwned { owner, role, count } => write!(
                f,
                "{count} large object(s) are owned by {owner}, not by role {role} (the restore unlinks every \
                 large object)"
            ),
            PublicationNotOwned {
                publication,
                owner,
                role,
            } => write!(
                f,
                "publication {publication} is owned by {owner}, not by role {role} (the restore drops and \
                 recreates it)"
            ),
            PublicationForAllTables { publication, role } => write!(
                f,
                "publication {publication} is FOR ALL TABLES, which only a superuser may create, and role \
                 {role} is not one"
            ),
            EventTrigger { trigger } => write!(
                f,
                "event trigger {trigger} belongs to no schema, so the restore cannot drop it, and the archive \
                 creates it again (drop it before the run, or use rollback strategy down)"
            ),
        }
    }
}

/// The schemas the restore's reset drops (the same test as its RESET_SQL).
const DROPPED: &str = r"n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'";

/// pg_dump dumps objects created after initdb: OIDs from FirstNormalObjectId.
const FIRST_NORMAL_OID: &str = "16384";

/// Ask the database (as `client`'s role) what a restore of it would need. Reads
/// catalogs only; changes nothing.
pub async fn check_restore(client: &Client, dsn: &Dsn) -> Result<Readiness, BackupError> {
    let query = |context: &'static str| {
        move |source| BackupError::Query {
            dsn: dsn.to_string(),
            context,
            source,
        }
    };
    let row = client
        .query_one(
            "SELECT current_user::text, current_database()::text, r.rolsuper, \
                    has_database_privilege(current_database(), 'CREATE'), \
                    (SELECT pg_has_role(o.oid, 'MEMBER') FROM pg_catalog.pg_roles o \
                      WHERE o.rolname = 'pg_database_owner'), \
                    current_setting('lo_compat_privileges')::bool, \
                    has_database_privilege(current_database(), 'TEMPORARY') \
               FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(query("reading the role's privileges"))?;
    let role: String = row.get(0);
    let database: String = row.get(1);
    let superuser: bool = row.get(2);
    let create_on_db: bool = row.get(3);
    // NULL before PostgreSQL 15, which had no pg_database_owner.
    let db_owner: Option<bool> = row.get(4);
    let lo_compat: bool = row.get(5);
    let temp_on_db: bool = row.get(6);
    let mut r = Readiness {
        role: role.clone(),
        superuser,
        ..Readiness::default()
    };

    // Extensions first: their owner changes even for a superuser.
    let sql = format!(
        "SELECT e.extname::text, pg_get_userbyid(e.extowner)::text, pg_has_role(e.extowner, 'USAGE'), \
                ({DROPPED}) AS dropped, a.name IS NOT NULL AS available, \
                coalesce(v.superuser, true), coalesce(v.trusted, false), \
                obj_description(e.oid, 'pg_extension') IS NOT NULL \
           FROM pg_catalog.pg_extension e \
           JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
           LEFT JOIN pg_catalog.pg_available_extensions a ON a.name = e.extname \
           LEFT JOIN pg_catalog.pg_available_extension_versions v \
                  ON v.name = e.extname AND v.version = a.default_version \
          WHERE e.oid >= {FIRST_NORMAL_OID} ORDER BY 1"
    );
    for row in client
        .query(&sql, &[])
        .await
        .map_err(query("listing extensions"))?
    {
        let extension: String = row.get(0);
        let owner: String = row.get(1);
        let owned: bool = row.get(2);
        let dropped: bool = row.get(3);
        let available: bool = row.get(4);
        let needs_superuser: bool = row.get(5);
        let trusted: bool = row.get(6);
        let commented: bool = row.get(7);
        if !dropped {
            if !owned && !superuser && commented {
                r.problems.push(RestoreProblem::ExtensionNotOwned {
                    extension,
                    owner,
                    role: role.clone(),
                });
            }
            continue;
        }
        let why = if !available {
            Some("it is not installed on the server (no control file)".to_string())
        } else if superuser || !needs_superuser {
            None
        } else if !trusted {
            Some("it is not trusted, so only a superuser may create it".to_string())
        } else if !create_on_db {
            Some(format!(
                "it is trusted, but creating it needs CREATE on database {database}"
            ))
        } else {
            None
        };
        if let Some(why) = why {
            r.problems.push(RestoreProblem::ExtensionNotCreatable {
                extension: extension.clone(),
                role: role.clone(),
                why,
            });
        }
        if owner != role {
            r.owner_changes.push(ExtensionOwnerChange {
                extension,
                owner_before: owner,
                owner_after: role.clone(),
            });
        }
    }

    // Event triggers stop even a superuser's restore.
    for row in client
        .query(
            &format!(
                "SELECT evtname::text FROM pg_catalog.pg_event_trigger e \
                  WHERE e.oid >= {FIRST_NORMAL_OID} \
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                                     WHERE d.classid = 'pg_catalog.pg_event_trigger'::regclass \
                                       AND d.objid = e.oid AND d.deptype = 'e') ORDER BY 1"
            ),
            &[],
        )
        .await
        .map_err(query("listing event triggers"))?
    {
        r.problems.push(RestoreProblem::EventTrigger {
            trigger: row.get(0),
        });
    }
    if superuser {
        return Ok(r);
    }

    if !create_on_db {
        r.problems.push(RestoreProblem::NoCreateOnDatabase {
            role: role.clone(),
            database: database.clone(),
        });
    }
    if !temp_on_db {
        r.problems.push(RestoreProblem::NoTempOnDatabase {
            role: role.clone(),
            database: database.clone(),
        });
    }
    if db_owner == Some(false) {
        r.problems.push(RestoreProblem::NotDatabaseOwner {
            role: role.clone(),
            database: database.clone(),
        });
    }

    let sql = format!(
        "SELECT n.nspname::text, pg_get_userbyid(n.nspowner)::text FROM pg_catalog.pg_namespace n \
          WHERE {DROPPED} AND NOT pg_has_role(n.nspowner, 'USAGE') ORDER BY 1"
    );
    for row in client
        .query(&sql, &[])
        .await
        .map_err(query("listing schemas"))?
    {
        r.problems.push(RestoreProblem::SchemaNotOwned {
            schema: row.get(0),
            owner: row.get(1),
            role: role.clone(),
        });
    }

    // Objects the archive gives to another role: relations, routines and the
    // types that are objects of their own, outside extensions (whose members
    // the extension's script creates).
    let sql = format!(
        "WITH objects AS (
           SELECT c.relnamespace AS nsp, c.relowner AS owner, format('%I.%I', n.nspname, c.relname) AS name,
                  'pg_catalog.pg_class'::regclass AS classid, c.oid
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c') AND {DROPPED}
           UNION ALL
           SELECT p.pronamespace, p.proowner, format('%I.%I', n.nspname, p.proname),
                  'pg_catalog.pg_proc'::regclass, p.oid
             FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
            WHERE {DROPPED}
           UNION ALL
           SELECT t.typnamespace, t.typowner, format('%I.%I', n.nspname, t.typname),
                  'pg_catalog.pg_type'::regclass, t.oid
             FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
            WHERE t.typtype IN ('d', 'e', 'r', 'm') AND {DROPPED}
         )
         SELECT pg_get_userbyid(o.owner)::text, n.nspname::text,
                pg_has_role(o.owner, 'MEMBER'), pg_has_role(o.owner, n.nspowner, 'USAGE'),
                array_agg(o.name ORDER BY o.name)
           FROM objects o JOIN pg_catalog.pg_namespace n ON n.oid = o.nsp
          WHERE o.owner <> (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                             WHERE d.classid = o.classid AND d.objid = o.oid AND d.deptype = 'e')
          GROUP BY o.owner, n.nspname, n.nspowner ORDER BY 1, 2"
    );
    let mut not_member: Vec<(String, Vec<String>)> = Vec::new();
    for row in client
        .query(&sql, &[])
        .await
        .map_err(query("listing object owners"))?
    {
        let owner: String = row.get(0);
        let schema: String = row.get(1);
        let member: bool = row.get(2);
        let creates: bool = row.get(3);
        let objects: Vec<String> = row.get(4);
        if !member {
            match not_member.iter_mut().find(|(o, _)| *o == owner) {
                Some((_, all)) => all.extend(objects),
                None => not_member.push((owner, objects)),
            }
        } else if !creates {
            r.problems.push(RestoreProblem::OwnerCannotCreateInSchema {
                owner,
                schema,
                objects,
            });
        }
    }
    for (owner, objects) in not_member {
        r.problems.push(RestoreProblem::OwnerNotMember {
            owner,
            role: role.clone(),
            objects,
        });
    }

    if !lo_compat {
        for row in client
            .query(
                "SELECT pg_get_userbyid(lomowner)::text, count(*) FROM pg_catalog.pg_largeobject_metadata \
                  WHERE NOT pg_has_role(lomowner, 'USAGE') GROUP BY 1 ORDER BY 1",
                &[],
            )
            .await
            .map_err(query("listing large objects"))?
        {
            r.problems.push(RestoreProblem::LargeObjectsNotOwned {
                owner: row.get(0),
                role: role.clone(),
                count: row.get(1),
            });
        }
    }

    for row in client
        .query(
            "SELECT pubname::text, pg_get_userbyid(pubowner)::text, pg_has_role(pubowner, 'USAGE'), puballtables \
               FROM pg_catalog.pg_publication ORDER BY 1",
            &[],
        )
        .await
        .map_err(query("listing publications"))?
    {
        let publication: String = row.get(0);
        let owned: bool = row.get(2);
        if !owned {
            r.problems.push(RestoreProblem::PublicationNotOwned {
                publication: publication.clone(),
                owner: row.get(1),
                role: role.clone(),
            });
        }
        if row.get::<_, bool>(3) {
            r.problems.push(RestoreProblem::PublicationForAllTables {
                publication,
                role: role.clone(),
            });
        }
    }
    Ok(r)
}

/// The extensions whose owner a restore about to run will change; empty when that
/// cannot be read (a report, never a reason to hold a rollback back).
pub(super) async fn owner_changes(dsn: &Dsn) -> Vec<ExtensionOwnerChange> {
    let Ok(client) = dsn
        .connect(super::APPLICATION_NAME, &[("statement_timeout", "60s")])
        .await
    else {
        return Vec::new();
    };
    check_restore(&client, dsn)
        .await
        .map(|r| r.owner_changes)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_the_object_and_the_missing_privilege() {
        let p = RestoreProblem::ExtensionNotCreatable {
            extension: "pg_buffercache".into(),
            role: "app".into(),
            why: "it is not trusted, so only a superuser may create it".into(),
        };
        let text = p.to_string();
        assert!(
            text.contains("pg_buffercache") && text.contains("superuser"),
            "{text}"
        );
        let p = RestoreProblem::SchemaNotOwned {
            schema: "audit".into(),
            owner: "postgres".into(),
            role: "app".into(),
        };
        assert!(p.to_string().contains("schema audit is owned by postgres"));
        let p = RestoreProblem::OwnerNotMember {
            owner: "reporting".into(),
            role: "app".into(),
            objects: (1..=7).map(|i| format!("public.t{i}")).collect(),
        };
        let text = p.to_string();
        assert!(
            text.contains("public.t5 and 2 more") && !text.contains("t6"),
            "{text}"
        );
        let json = serde_json::to_value(RestoreProblem::EventTrigger {
            trigger: "ddl_log".into(),
        })
        .unwrap();
        assert_eq!(json["problem"], "event_trigger");
    }
}
