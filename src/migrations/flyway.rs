//! Flyway files pgshepherd does not run, recognised by name so that a team
//! arriving with a Flyway folder learns which Flyway feature a file uses and
//! what to do, instead of "not a migration file name" or, worse, nothing.
//!
//! Supported from Flyway: `V{version}__{description}.sql` (leading zeros are
//! fine: `V001` is version 1) anywhere in the folder tree. Refused, each by
//! name (docs/plan-reference.md, "Existing Flyway folders", says why):
//! - repeatable migrations `R__{description}.sql`: pgshepherd's rollback could
//!   not undo one (it has no down script, and re-running the previous text
//!   cannot drop a view column or a function it added), so a plan could not
//!   promise "rolled back to the starting version";
//! - SQL callbacks (`afterMigrate.sql`, `beforeEachMigrate__grants.sql`, ...):
//!   statements outside any migration, outside the history and outside every
//!   rollback;
//! - undo migrations `U{version}__...` (pgshepherd's undo is the `.down.sql`
//!   next to the up script), baseline migrations `B{version}__...`, and script
//!   configuration files `*.sql.conf` (pgshepherd's per-script setting is the
//!   `-- pgshepherd:no-transaction` first line).
//!
//! Flyway's built-in placeholders (`${flyway:defaultSchema}`, ...) are not
//! replaced either; a script that uses one is refused where it does (other
//! `${...}` text is left alone: PL/v8 template strings look the same).

/// Flyway's SQL callback events, as Flyway spells them. A callback file is
/// `{event}.sql` or `{event}__{description}.sql`.
const CALLBACK_EVENTS: &[&str] = &[
    "beforeMigrate",
    "beforeRepeatables",
    "beforeEachMigrate",
    "beforeEachMigrateStatement",
    "afterEachMigrateStatement",
    "afterEachMigrateStatementError",
    "afterEachMigrate",
    "afterEachMigrateError",
    "afterMigrate",
    "afterMigrateApplied",
    "afterVersioned",
    "afterMigrateError",
    "beforeUndo",
    "beforeEachUndo",
    "beforeEachUndoStatement",
    "afterEachUndoStatement",
    "afterEachUndoStatementError",
    "afterEachUndo",
    "afterEachUndoError",
    "afterUndo",
    "afterUndoError",
    "beforeClean",
    "afterClean",
    "afterCleanError",
    "beforeInfo",
    "afterInfo",
    "afterInfoError",
    "beforeValidate",
    "afterValidate",
    "afterValidateError",
    "beforeBaseline",
    "afterBaseline",
    "afterBaselineError",
    "beforeRepair",
    "afterRepair",
    "afterRepairError",
    "createSchema",
    "beforeConnect",
    "afterConnect",
];

/// Where the decision and the way out are written down.
const SEE: &str = "see \"Existing Flyway folders\" in docs/plan-reference.md";

/// A Flyway file pgshepherd refuses; each message names the Flyway feature and
/// what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "{file} is a Flyway repeatable migration (R__), which pgshepherd does not run: no rollback \
         could undo it (it has no down script). Make it a versioned migration \
         V{next}__{description}.sql with a .down.sql, and add a new version for each later \
         change; {SEE}"
    )]
    Repeatable {
        file: String,
        description: String,
        /// The version to suggest: after the set's last, in the order of the
        /// repeatables (Flyway applies them by description).
        next: i64,
    },
    #[error(
        "{file} is a Flyway SQL callback ({event}), which pgshepherd does not run: it would change \
         the target outside every migration, the history and the rollback. Move its statements \
         into the versioned migration that needs them (with their undo in its .down.sql), or run \
         it yourself after the run; {SEE}"
    )]
    Callback { file: String, event: &'static str },
    #[error(
        "{file} is a Flyway undo migration (U{version}): pgshepherd's undo of V{version} is the \
         file V{version}__{{name}}.down.sql next to its up script; rename it so"
    )]
    Undo { file: String, version: String },
    #[error(
        "{file} is a Flyway baseline migration (B{version}), which pgshepherd does not support: \
         keep the versioned migrations it stands for and migrate new targets from V1; {SEE}"
    )]
    Baseline { file: String, version: String },
    #[error(
        "{file} is a Flyway script configuration file, which pgshepherd does not read: for \
         executeInTransaction=false write `{}` as the first line of the script; {SEE}",
        crate::migrations::directive::NO_TRANSACTION
    )]
    ScriptConfig { file: String },
}

impl Refused {
    /// For a repeatable: suggest `version` as the versioned migration it becomes.
    pub fn suggest(&mut self, version: i64) {
        if let Refused::Repeatable { next, .. } = self {
            *next = version;
        }
    }
}

/// The Flyway feature `file` (a path within the set, `/`-separated) uses, when
/// its base name is one pgshepherd refuses. A repeatable's `next` is 0 until the
/// set's versions are known (see [`Refused::suggest`]).
pub fn refused(file: &str) -> Option<Refused> {
    let base = file.rsplit('/').next().unwrap_or(file);
    if base.ends_with(".sql.conf") {
        return Some(Refused::ScriptConfig {
            file: file.to_string(),
        });
    }
    let stem = base.strip_suffix(".sql")?;
    if let Some(description) = stem.strip_prefix("R__") {
        return Some(Refused::Repeatable {
            file: file.to_string(),
            description: description.to_string(),
            next: 0,
        });
    }
    let event_part = stem.split_once("__").map_or(stem, |(event, _)| event);
    if let Some(event) = CALLBACK_EVENTS.iter().find(|e| **e == event_part) {
        return Some(Refused::Callback {
            file: file.to_string(),
            event,
        });
    }
    // `U2__x`, `B5__x`: a prefix, digits (Flyway allows dots and underscores in
    // versions), then `__`.
    let (prefix, rest) = stem.split_at_checked(1)?;
    let (version, _) = rest.split_once("__")?;
    let versioned = !version.is_empty()
        && version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '_');
    match prefix {
        "U" if versioned => Some(Refused::Undo {
            file: file.to_string(),
            version: version.to_string(),
        }),
        "B" if versioned => Some(Refused::Baseline {
            file: file.to_string(),
            version: version.to_string(),
        }),
        _ => None,
    }
}

/// Each Flyway built-in placeholder in `sql`: its 1-based line and column, and
/// why it is refused.
pub fn placeholders(sql: &str) -> Vec<(u32, u32, String)> {
    const START: &str = "${flyway:";
    let mut found = Vec::new();
    for (i, line) in sql.lines().enumerate() {
        let mut from = 0;
        while let Some(at) = line[from..].find(START) {
            let start = from + at;
            let end = line[start..]
                .find('}')
                .map_or(line.len(), |e| start + e + 1);
            let text = &line[start..end];
            found.push((
                i as u32 + 1,
                line[..start].chars().count() as u32 + 1,
                format!(
                    "`{text}` is a Flyway placeholder, which pgshepherd does not replace (the \
                     script would reach PostgreSQL with it); write the value itself"
                ),
            ));
            from = end;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_flyway_placeholders_where_they_are() {
        let sql = "SELECT 1;\n  WHERE table_schema = '${flyway:defaultSchema}' AND x = '${flyway:user}'\n-- `${name}` stays\n";
        let found = placeholders(sql);
        assert_eq!(
            found.iter().map(|(l, c, _)| (*l, *c)).collect::<Vec<_>>(),
            [(2, 25), (2, 59)]
        );
        assert!(
            found[0]
                .2
                .starts_with("`${flyway:defaultSchema}` is a Flyway placeholder")
        );
        assert!(placeholders("SELECT '${x}';").is_empty());
    }

    #[test]
    fn names_each_flyway_feature() {
        let message = |f: &str| {
            refused(f)
                .map(|mut r| {
                    r.suggest(21);
                    r.to_string()
                })
                .unwrap_or_default()
        };
        assert!(
            message("R__create_functions.sql").starts_with(
                "R__create_functions.sql is a Flyway repeatable migration (R__), which pgshepherd does not run"
            ),
            "{}",
            message("R__create_functions.sql")
        );
        assert!(
            message("R__create_functions.sql")
                .contains("V21__create_functions.sql with a .down.sql")
        );
        assert!(message("sql/afterMigrate__last_updated.sql").starts_with(
            "sql/afterMigrate__last_updated.sql is a Flyway SQL callback (afterMigrate)"
        ));
        assert!(message("beforeMigrate.sql").contains("SQL callback (beforeMigrate)"));
        assert!(message("afterEachMigrate__grants.sql").contains("(afterEachMigrate)"));
        assert!(message("U2__add_index.sql").contains("undo migration (U2)"));
        assert!(message("U2__add_index.sql").contains("V2__{name}.down.sql"));
        assert!(message("B5__schema.sql").contains("baseline migration (B5)"));
        assert!(message("V3__idx.sql.conf").contains("-- pgshepherd:no-transaction"));
        // Not Flyway-only: left to the migration naming rules.
        for f in [
            "V1__a.sql",
            "init.sql",
            "Update__x.sql",
            "U__x.sql",
            "afterMigrateX.sql",
        ] {
            assert_eq!(refused(f), None, "{f}");
        }
    }
}
