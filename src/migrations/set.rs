//! A migration set: `V{n}__{name}.sql` with optional `.down.sql` and `.verify.sql`,
//! loaded from a directory or from submitted file contents.
//!
//! Loading reports every problem at once, each at the file it concerns:
//! - names: `V{version}__{name}.sql` (up), `.down.sql` (undo), `.verify.sql` (must
//!   succeed after the up script); version a positive integer, name letters,
//!   digits and `_`. The directory is read with its subdirectories (as Flyway
//!   scans its locations), a file named by its path within the set
//!   (`sql/V20__x.sql`). Any other `.sql` file is an error, Flyway's own kinds
//!   (`R__`, callbacks, ...) each by name (see `flyway`); files that do not end in
//!   `.sql` (README.md, ...) and hidden directories are ignored, hidden `.sql`
//!   files are left out with a warning;
//! - versions start at 1 and are consecutive: a gap names the missing versions, a
//!   duplicate names both files; a `.down.sql`/`.verify.sql` needs its up file;
//! - an up or verify script must contain a statement; a down script may be
//!   comments only (an explicit no-op undo) but not empty;
//! - the directives (see `directive`) are `-- pgshepherd:no-transaction` as the first line and
//!   `-- pgshepherd:capture schema.table, ...` in an up script's header (see
//!   `crate::undo`); any other `-- pgshepherd:` line is refused, so a typo cannot
//!   silently run `CREATE INDEX CONCURRENTLY` inside a transaction.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::plan::Diagnostic;

use super::directive::{self, first_data_change};
pub use super::directive::{CAPTURE, NO_TRANSACTION};
use super::flyway;
use super::scan::Walk;

/// Larger SQL files are refused rather than read into memory.
pub const MAX_SCRIPT_BYTES: u64 = 16 * 1024 * 1024;

/// One SQL file of a migration.
#[derive(Debug, Clone, Serialize)]
pub struct Script {
    /// File name within the set, e.g. `V2__add_index.down.sql`.
    pub file: String,
    pub sql: String,
    /// sha256 of the file content, lowercase hex.
    pub checksum: String,
    /// `false` when the first line is `-- pgshepherd:no-transaction`.
    pub transactional: bool,
    /// Tables whose row changes are captured while the script runs (header
    /// directive `-- pgshepherd:capture schema.table, ...`), lowercase, as written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capture: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    pub up: Script,
    pub down: Option<Script>,
    pub verify: Option<Script>,
}

impl Migration {
    /// `V3__add_index`, as people refer to it.
    pub fn label(&self) -> String {
        format!("V{}__{}", self.version, self.name)
    }
}

/// Versions strictly increasing with no gap or duplicate.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationSet {
    /// Identifies the set in the target's history table (the directory name by default).
    pub name: String,
    /// Where the files were read from, when they came from disk.
    pub dir: Option<PathBuf>,
    pub migrations: Vec<Migration>,
    /// Hidden `.sql` files found in the directory tree (`.V9__wip.sql`): not part
    /// of the set, and said so by `check` (never skipped without a word).
    #[serde(skip)]
    pub hidden: Vec<String>,
}

/// Which of a migration's scripts a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Up,
    Down,
    Verify,
}

/// A file name that follows the naming rule.
#[derive(Debug)]
struct Named {
    version: i64,
    name: String,
    kind: Kind,
}

impl MigrationSet {
    /// Read every `.sql` file of `dir` and its subdirectories; the set is named
    /// after the directory.
    pub fn from_dir(dir: &Path) -> Result<MigrationSet, Vec<Diagnostic>> {
        MigrationSet::load_dir(dir).into_result()
    }

    /// [`MigrationSet::from_dir`], keeping what loaded next to the problems, so
    /// that the rules about the set as a whole (a rollback strategy's needs) can
    /// be checked in the same run as the files (`check` reports everything at once).
    pub fn load_dir(dir: &Path) -> Loaded {
        let set_name = dir_name(dir);
        let mut found = Vec::new();
        let mut hidden = Vec::new();
        let mut diagnostics = Vec::new();
        let mut walked = Walk {
            found: &mut found,
            hidden: &mut hidden,
            diagnostics: &mut diagnostics,
            ancestors: Vec::new(),
        };
        if let Err(problem) = walked.walk(dir, "") {
            return Loaded {
                set: MigrationSet {
                    name: set_name,
                    dir: Some(dir.to_path_buf()),
                    migrations: Vec::new(),
                    hidden: Vec::new(),
                },
                problems: vec![problem],
            };
        }
        found.sort();
        let mut files = Vec::new();
        for name in found {
            let path = dir.join(&name);
            match read_script(&path) {
                Ok(text) => files.push((name, text)),
                Err(e) => diagnostics.push(Diagnostic::new(&path, 1, 1, e.to_string())),
            }
        }
        let mut loaded = MigrationSet::load_files(set_name, Some(dir.to_path_buf()), files);
        hidden.sort();
        loaded.set.hidden = hidden;
        if !diagnostics.is_empty() {
            diagnostics.append(&mut loaded.problems);
            sort(&mut diagnostics);
            loaded.problems = diagnostics;
        }
        loaded
    }

    /// Build a set from file names and contents (a directory's files, or files
    /// submitted with a plan); a name is the file's `/`-separated path within the
    /// set. Diagnostics name `dir/file`, or `name/file` without `dir`.
    pub fn from_files(
        name: impl Into<String>,
        dir: Option<PathBuf>,
        files: Vec<(String, String)>,
    ) -> Result<MigrationSet, Vec<Diagnostic>> {
        MigrationSet::load_files(name, dir, files).into_result()
    }

    /// [`MigrationSet::from_files`], keeping what loaded next to the problems.
    pub fn load_files(
        name: impl Into<String>,
        dir: Option<PathBuf>,
        files: Vec<(String, String)>,
    ) -> Loaded {
        let name = name.into();
        let base = dir.clone().unwrap_or_else(|| PathBuf::from(&name));
        let at = |file: &str| base.join(file);
        let mut diagnostics = Vec::new();

        let mut ups: BTreeMap<i64, Vec<(String, Named, String)>> = BTreeMap::new();
        let mut extras: Vec<(String, Named, String)> = Vec::new();
        let mut flyway_files = Vec::new();
        for (file, text) in files {
            if let Some(refused) = flyway::refused(&file) {
                flyway_files.push((file, refused));
                continue;
            }
            match parse_name(&file) {
                Ok(named) if named.kind == Kind::Up => ups
                    .entry(named.version)
                    .or_default()
                    .push((file, named, text)),
                Ok(named) => extras.push((file, named, text)),
                Err(e) => diagnostics.push(Diagnostic::new(at(&file), 1, 1, e.to_string())),
            }
        }

        // Flyway's own kinds, refused by name; a repeatable is told which version
        // it would be as a versioned migration.
        flyway_files.sort_by(|a, b| a.0.rsplit('/').next().cmp(&b.0.rsplit('/').next()));
        let mut next = ups.keys().next_back().map_or(1, |v| v + 1);
        for (file, mut refused) in flyway_files {
            if matches!(refused, flyway::Refused::Repeatable { .. }) {
                refused.suggest(next);
                next += 1;
            }
            diagnostics.push(Diagnostic::new(at(&file), 1, 1, refused.to_string()));
        }

        // Duplicates: every file of a shared version learns about the others.
        for files in ups.values().filter(|f| f.len() > 1) {
            for (file, named, _) in files {
                let others: Vec<&str> = files
                    .iter()
                    .map(|(f, ..)| f.as_str())
                    .filter(|f| f != file)
                    .collect();
                diagnostics.push(Diagnostic::new(
                    at(file),
                    1,
                    1,
                    format!(
                        "duplicate version {}: also {}",
                        named.version,
                        others.join(", ")
                    ),
                ));
            }
        }

        // Gaps: versions run 1, 2, 3, ... so that "the next migration" is never ambiguous.
        let mut expected = 1i64;
        for (version, files) in &ups {
            if *version != expected {
                let missing = if *version - 1 == expected {
                    format!("V{expected}")
                } else {
                    format!("V{expected} to V{}", version - 1)
                };
                let after = if expected == 1 {
                    "versions start at 1".to_string()
                } else {
                    format!(
                        "versions must be consecutive, and V{} is followed by V{version}",
                        expected - 1
                    )
                };
                diagnostics.push(Diagnostic::new(
                    at(&files[0].0),
                    1,
                    1,
                    format!("missing {missing}: {after}"),
                ));
            }
            expected = version + 1;
        }

        // Scripts, and extras paired with their up file (whose content may be broken:
        // the extra is still checked so that one run reports everything).
        let mut up_names: BTreeMap<i64, Vec<(String, String)>> = BTreeMap::new();
        let mut migrations: BTreeMap<(i64, String), Migration> = BTreeMap::new();
        for (file, named, text) in ups.into_values().flatten() {
            up_names
                .entry(named.version)
                .or_default()
                .push((named.name.clone(), file.clone()));
            match script(&at(&file), &file, text, Kind::Up) {
                Ok(up) => {
                    let m = Migration {
                        version: named.version,
                        name: named.name.clone(),
                        up,
                        down: None,
                        verify: None,
                    };
                    migrations.insert((named.version, named.name), m);
                }
                Err(mut d) => diagnostics.append(&mut d),
            }
        }
        for (file, named, text) in extras {
            let siblings = up_names
                .get(&named.version)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if !siblings.iter().any(|(n, _)| *n == named.name) {
                let up_file = format!("V{}__{}.sql", named.version, named.name);
                let hint = if siblings.is_empty() {
                    String::new()
                } else {
                    let others: Vec<&str> = siblings.iter().map(|(_, f)| f.as_str()).collect();
                    format!(" (V{} is {})", named.version, others.join(", "))
                };
                diagnostics.push(Diagnostic::new(
                    at(&file),
                    1,
                    1,
                    format!("{file} has no up script {up_file}{hint}"),
                ));
                continue;
            }
            match (
                script(&at(&file), &file, text, named.kind),
                migrations.get_mut(&(named.version, named.name)),
            ) {
                (Ok(s), Some(m)) if named.kind == Kind::Down => m.down = Some(s),
                (Ok(s), Some(m)) => m.verify = Some(s),
                (Ok(_), None) => {}
                (Err(mut d), _) => diagnostics.append(&mut d),
            }
        }

        if migrations.is_empty() && diagnostics.is_empty() {
            diagnostics.push(Diagnostic::new(
                &base,
                0,
                0,
                format!("migration set {name} has no migrations: expected files named like V1__create_table.sql"),
            ));
        }
        sort(&mut diagnostics);
        Loaded {
            set: MigrationSet {
                name,
                dir,
                migrations: migrations.into_values().collect(),
                hidden: Vec::new(),
            },
            problems: diagnostics,
        }
    }

    /// Everything `check` warns about: hidden `.sql` files left out of the set,
    /// then [`MigrationSet::undo_warnings`].
    pub fn warnings(&self) -> Vec<Diagnostic> {
        let at = |file: &str| match &self.dir {
            Some(dir) => dir.join(file),
            None => PathBuf::from(file),
        };
        let mut warnings: Vec<Diagnostic> = self
            .hidden
            .iter()
            .map(|file| {
                Diagnostic::new(
                    at(file),
                    1,
                    1,
                    format!(
                        "warning: {file} is hidden, so it is not part of the migration set; \
                         rename it without the leading `.` if it is a migration"
                    ),
                )
            })
            .collect();
        warnings.extend(self.undo_warnings());
        warnings
    }

    /// Warnings, not errors: migrations whose SQL changes rows but that nothing
    /// could undo, with neither a down script nor a capture directive.
    pub fn undo_warnings(&self) -> Vec<Diagnostic> {
        self.migrations
            .iter()
            .filter(|m| m.down.is_none() && m.up.capture.is_empty())
            .filter_map(|m| {
                let (keyword, line) = first_data_change(&m.up.sql)?;
                let path = match &self.dir {
                    Some(dir) => dir.join(&m.up.file),
                    None => PathBuf::from(&m.up.file),
                };
                Some(Diagnostic::new(path, line, 1, format!(
                    "warning: {} changes rows ({keyword}) but has neither a down script nor `{CAPTURE}`: \
                     no rollback or `pgshepherd undo` can give those rows back; name the tables it \
                     changes in `{CAPTURE} schema.table, ...` or write a .down.sql",
                    m.label()
                )))
            })
            .collect()
    }

    /// Labels like `V1__create_table`, in order.
    pub fn labels(&self) -> Vec<String> {
        self.migrations.iter().map(Migration::label).collect()
    }
}

/// A migration set as far as it loaded, and every problem found. `set` holds the
/// migrations whose files are fine; it is the set only when `problems` is empty.
#[derive(Debug)]
pub struct Loaded {
    pub set: MigrationSet,
    pub problems: Vec<Diagnostic>,
}

impl Loaded {
    pub fn into_result(self) -> Result<MigrationSet, Vec<Diagnostic>> {
        if self.problems.is_empty() {
            Ok(self.set)
        } else {
            Err(self.problems)
        }
    }
}
fn sort(d: &mut [Diagnostic]) {
    d.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
}

fn dir_name(dir: &Path) -> String {
    let named = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(str::to_owned);
    named(dir)
        .or_else(|| dir.canonicalize().ok().and_then(|p| named(&p)))
        .unwrap_or_else(|| "migrations".to_string())
}

/// Why a migration file could not be read; the diagnostic names the file.
#[derive(Debug, thiserror::Error)]
enum ReadScriptError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("file is larger than {} MiB", MAX_SCRIPT_BYTES / 1024 / 1024)]
    TooLarge,
    #[error("file is not valid UTF-8")]
    NotUtf8,
}

fn read_script(path: &Path) -> Result<String, ReadScriptError> {
    let meta = std::fs::metadata(path)?;
    if meta.len() > MAX_SCRIPT_BYTES {
        return Err(ReadScriptError::TooLarge);
    }
    let bytes = std::fs::read(path)?;
    String::from_utf8(bytes).map_err(|_| ReadScriptError::NotUtf8)
}

/// The file name shape every [`NameError`] repeats.
const SHAPE: &str = "expected V{version}__{name}.sql, .down.sql or .verify.sql";

/// Why a file name is not a migration's; each message starts from the file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum NameError {
    #[error("invalid file name {file:?}: {}", SHAPE)]
    Invalid { file: String },
    #[error("{file}: the extension must be lowercase .sql")]
    Extension { file: String },
    #[error("{file}: migration files start with an uppercase V ({})", SHAPE)]
    LowercaseV { file: String },
    #[error("{file} is not a migration file name: {}", SHAPE)]
    NotAMigration { file: String },
    #[error("{file}: missing `__` between the version and the name ({})", SHAPE)]
    NoSeparator { file: String },
    #[error(
        "{file}: the version {version:?} is not a positive integer ({})",
        SHAPE
    )]
    VersionNotInteger { file: String, version: String },
    #[error("{file}: the version {version} is too large")]
    VersionTooLarge { file: String, version: String },
    #[error("{file}: versions start at 1")]
    VersionZero { file: String },
    #[error("{file}: the name after `__` is empty ({})", SHAPE)]
    EmptyName { file: String },
    #[error(
        "{file}: the name {name:?} may only contain letters, digits and _{}",
        if .name.contains('.') { "; undo and verify scripts end in .down.sql and .verify.sql" } else { "" }
    )]
    BadName { file: String, name: String },
}

/// Check a file name against `V{version}__{name}{.sql|.down.sql|.verify.sql}`;
/// `file` is a path within the set, its last component the name.
fn parse_name(file: &str) -> Result<Named, NameError> {
    let file_name = || file.to_string();
    if !is_relative_path(file) {
        return Err(NameError::Invalid { file: file_name() });
    }
    let base = file.rsplit('/').next().unwrap_or(file);
    let (stem, kind) = if let Some(stem) = base.strip_suffix(".down.sql") {
        (stem, Kind::Down)
    } else if let Some(stem) = base.strip_suffix(".verify.sql") {
        (stem, Kind::Verify)
    } else if let Some(stem) = base.strip_suffix(".sql") {
        (stem, Kind::Up)
    } else {
        return Err(NameError::Extension { file: file_name() });
    };
    let rest = match stem.as_bytes().first() {
        Some(b'V') => &stem[1..],
        Some(b'v') => return Err(NameError::LowercaseV { file: file_name() }),
        _ => return Err(NameError::NotAMigration { file: file_name() }),
    };
    let Some((version, name)) = rest.split_once("__") else {
        return Err(NameError::NoSeparator { file: file_name() });
    };
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NameError::VersionNotInteger {
            file: file_name(),
            version: version.to_string(),
        });
    }
    let version: i64 = version.parse().map_err(|_| NameError::VersionTooLarge {
        file: file_name(),
        version: version.to_string(),
    })?;
    if version < 1 {
        return Err(NameError::VersionZero { file: file_name() });
    }
    if name.is_empty() {
        return Err(NameError::EmptyName { file: file_name() });
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(NameError::BadName {
            file: file_name(),
            name: name.to_string(),
        });
    }
    Ok(Named {
        version,
        name: name.to_string(),
        kind,
    })
}

/// `a/b.sql`: one or more plain names joined by `/`; no `.`, `..`, empty or
/// hidden component, no `\\`, not absolute. What a set's file may be called.
pub fn is_relative_path(file: &str) -> bool {
    !file.is_empty()
        && !file.contains('\\')
        && file
            .split('/')
            .all(|part| !part.is_empty() && !part.starts_with('.'))
}

/// Checksum the file and read its directives.
fn script(path: &Path, file: &str, sql: String, kind: Kind) -> Result<Script, Vec<Diagnostic>> {
    let (directives, mut diagnostics) = directive::read(path, &sql, kind == Kind::Up);
    for (line, column, message) in flyway::placeholders(&sql) {
        diagnostics.push(Diagnostic::new(path, line, column, message));
    }
    let statements = crate::migrations::split::statements(&sql);
    match kind {
        Kind::Up | Kind::Verify if statements.is_empty() => {
            let what = if kind == Kind::Up { "up script" } else { "verify script" };
            diagnostics.push(Diagnostic::new(path, 1, 1, format!("{what} {file} contains no SQL statement")));
        }
        Kind::Down if sql.trim_start_matches('\u{feff}').trim().is_empty() => diagnostics.push(Diagnostic::new(
            path,
            1,
            1,
            format!(
                "down script {file} is empty; write the undo, or a comment such as `-- nothing to undo` \
                 to make a no-op undo explicit"
            ),
        )),
        _ => {}
    }
    if !diagnostics.is_empty() {
        return Err(diagnostics);
    }
    let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
    Ok(Script {
        file: file.to_string(),
        sql,
        checksum,
        transactional: directives.transactional,
        capture: directives.capture,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect()
    }

    fn errors(list: &[(&str, &str)]) -> Vec<String> {
        MigrationSet::from_files("set", None, files(list))
            .unwrap_err()
            .into_iter()
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn loads_a_good_set_in_version_order() {
        let set = MigrationSet::from_files(
            "jobs",
            None,
            files(&[
                (
                    "V2__add_index.sql",
                    "-- pgshepherd:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (c);\n",
                ),
                ("V1__create.sql", "CREATE TABLE t (c int);\n"),
                (
                    "V2__add_index.down.sql",
                    "-- pgshepherd:no-transaction\nDROP INDEX CONCURRENTLY i;\n",
                ),
                ("V1__create.down.sql", "DROP TABLE t;\n"),
                ("V1__create.verify.sql", "SELECT 1 FROM t LIMIT 0;\n"),
            ]),
        )
        .unwrap();
        assert_eq!(set.labels(), ["V1__create", "V2__add_index"]);
        let v1 = &set.migrations[0];
        assert!(v1.up.transactional && v1.down.is_some() && v1.verify.is_some());
        let v2 = &set.migrations[1];
        assert!(
            !v2.up.transactional && !v2.down.as_ref().unwrap().transactional && v2.verify.is_none()
        );
        // sha256("CREATE TABLE t (c int);\n")
        assert_eq!(
            v1.up.checksum,
            hex::encode(Sha256::digest(b"CREATE TABLE t (c int);\n"))
        );
        assert_eq!(v1.up.checksum.len(), 64);
        assert!(
            v1.up
                .checksum
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn reports_a_gap_with_the_missing_version() {
        let e = errors(&[
            ("V1__a.sql", "SELECT 1;"),
            ("V2__b.sql", "SELECT 1;"),
            ("V4__d.sql", "SELECT 1;"),
        ]);
        assert_eq!(
            e,
            [
                "set/V4__d.sql:1:1: missing V3: versions must be consecutive, and V2 is followed by V4"
            ]
        );
        let e = errors(&[("V3__c.sql", "SELECT 1;")]);
        assert_eq!(
            e,
            ["set/V3__c.sql:1:1: missing V1 to V2: versions start at 1"]
        );
    }

    #[test]
    fn reports_both_files_of_a_duplicate() {
        let e = errors(&[("V1__a.sql", "SELECT 1;"), ("V1__b.sql", "SELECT 1;")]);
        assert_eq!(
            e,
            [
                "set/V1__a.sql:1:1: duplicate version 1: also V1__b.sql",
                "set/V1__b.sql:1:1: duplicate version 1: also V1__a.sql"
            ]
        );
        // V01 and V1 are the same version.
        assert_eq!(
            errors(&[("V01__a.sql", "SELECT 1;"), ("V1__b.sql", "SELECT 1;")]).len(),
            2
        );
    }

    #[test]
    fn refuses_bad_names_and_orphans() {
        let e = errors(&[
            ("V1__a.sql", "SELECT 1;"),
            ("V2_b.sql", "SELECT 1;"),
            ("v3__c.sql", "SELECT 1;"),
            ("V0__z.sql", "SELECT 1;"),
            ("Vx__y.sql", "SELECT 1;"),
            ("V1__a.up.sql", "SELECT 1;"),
            ("V1__a.SQL", "SELECT 1;"),
            ("init.sql", "SELECT 1;"),
            ("V1__other.down.sql", "SELECT 1;"),
            ("V9__nine.verify.sql", "SELECT 1;"),
        ]);
        let joined = e.join("\n");
        assert!(
            joined.contains("set/V2_b.sql:1:1: V2_b.sql: missing `__`"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "set/v3__c.sql:1:1: v3__c.sql: migration files start with an uppercase V"
            ),
            "{joined}"
        );
        assert!(
            joined.contains("set/V0__z.sql:1:1: V0__z.sql: versions start at 1"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "set/Vx__y.sql:1:1: Vx__y.sql: the version \"x\" is not a positive integer"
            ),
            "{joined}"
        );
        assert!(
            joined
                .contains("set/V1__a.up.sql:1:1: V1__a.up.sql: the name \"a.up\" may only contain"),
            "{joined}"
        );
        assert!(
            joined.contains("set/V1__a.SQL:1:1: V1__a.SQL: the extension must be lowercase .sql"),
            "{joined}"
        );
        assert!(
            joined.contains("set/init.sql:1:1: init.sql is not a migration file name"),
            "{joined}"
        );
        assert!(
            joined.contains("set/V1__other.down.sql:1:1: V1__other.down.sql has no up script V1__other.sql (V1 is V1__a.sql)"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "set/V9__nine.verify.sql:1:1: V9__nine.verify.sql has no up script V9__nine.sql"
            ),
            "{joined}"
        );
        assert_eq!(e.len(), 9, "{joined}");
    }

    #[test]
    fn directives_are_checked() {
        let e = errors(&[
            ("V1__a.sql", "-- pgshepherd:no-transactoin\nSELECT 1;"),
            ("V2__b.sql", "SELECT 1;\n  -- pgshepherd:no-transaction\n"),
            ("V3__c.sql", "--pgshepherd:no-transaction\nSELECT 1;"),
        ]);
        assert_eq!(
            e,
            [
                "set/V1__a.sql:1:1: unknown directive `-- pgshepherd:no-transactoin`; the directives are `-- pgshepherd:no-transaction` on the first line and `-- pgshepherd:capture schema.table, ...` in the header",
                "set/V2__b.sql:2:3: `-- pgshepherd:no-transaction` only counts on the first line of the file",
                "set/V3__c.sql:1:1: write the directive exactly as `-- pgshepherd:no-transaction`",
            ]
        );
        // Leading/trailing blanks on the first line are fine.
        let set = MigrationSet::from_files(
            "s",
            None,
            files(&[("V1__a.sql", "  -- pgshepherd:no-transaction  \nSELECT 1;")]),
        )
        .unwrap();
        assert!(!set.migrations[0].up.transactional);
    }

    #[test]
    fn capture_names_the_tables_in_the_header() {
        let set = MigrationSet::from_files(
            "s",
            None,
            files(&[(
                "V1__merge.sql",
                "-- merge B into A\n-- pgshepherd:capture public.Companies, users\n\nUPDATE users SET c = 1;\n",
            )]),
        )
        .unwrap();
        assert_eq!(set.migrations[0].up.capture, ["public.companies", "users"]);
        assert!(set.migrations[0].up.transactional);
    }

    #[test]
    fn data_changes_nothing_could_undo_are_warned_about() {
        let set = MigrationSet::from_files(
            "s",
            None,
            files(&[
                ("V1__t.sql", "CREATE TABLE t (id int);\n"),
                ("V2__fill.sql", "-- backfill\nALTER TABLE t ADD c int;\n\nWITH x AS (SELECT 1)\nUPDATE t SET c = 1;\n"),
                ("V3__kept.sql", "-- pgshepherd:capture t\nDELETE FROM t;\n"),
                ("V4__undone.sql", "INSERT INTO t VALUES (1);\n"),
                ("V4__undone.down.sql", "DELETE FROM t WHERE id = 1;\n"),
                ("V5__do.sql", "DO $$ BEGIN TRUNCATE t; END $$;\n"),
            ]),
        )
        .unwrap();
        let warnings: Vec<String> = set.undo_warnings().iter().map(|d| d.to_string()).collect();
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        assert!(
            warnings[0].starts_with("V2__fill.sql:4:1: warning: V2__fill changes rows (UPDATE)"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[1].starts_with("V5__do.sql:1:1: warning: V5__do changes rows (TRUNCATE)"),
            "{}",
            warnings[1]
        );
    }

    #[test]
    fn capture_directives_are_checked() {
        let e = errors(&[
            (
                "V1__a.sql",
                "-- pgshepherd:no-transaction\n-- pgshepherd:capture public.t\nSELECT 1;",
            ),
            (
                "V2__b.sql",
                "-- pgshepherd:capture public.t, x.y.z, public.T\nSELECT 1;",
            ),
            ("V3__c.sql", "-- pgshepherd:capture\nSELECT 1;"),
            ("V4__d.sql", "SELECT 1;\n-- pgshepherd:capture public.t\n"),
            (
                "V4__d.down.sql",
                "-- pgshepherd:capture public.t\nSELECT 1;",
            ),
        ]);
        assert_eq!(
            e,
            [
                "set/V1__a.sql:1:1: a no-transaction migration cannot capture its changes (capture happens inside the migration's transaction): remove `-- pgshepherd:no-transaction` or the capture directive",
                "set/V2__b.sql:1:33: `x.y.z` is not a table name: write schema.table or table, letters, digits and _ (quoted names are not supported)",
                "set/V2__b.sql:1:40: table `public.T` is named twice",
                "set/V3__c.sql:1:22: write `-- pgshepherd:capture schema.table, schema.other`: at least one table, after a space",
                "set/V4__d.down.sql:1:1: `-- pgshepherd:capture` belongs in an up script (it says which rows the migration changes)",
                "set/V4__d.sql:2:1: `-- pgshepherd:capture` only counts in the header, before the first statement",
            ]
        );
    }

    #[test]
    fn empty_scripts_are_refused() {
        let e = errors(&[
            ("V1__a.sql", "  \n"),
            (
                "V2__b.sql",
                "-- pgshepherd:no-transaction\n-- only a comment\n",
            ),
            ("V2__b.down.sql", ""),
            ("V2__b.verify.sql", "-- nothing\n"),
        ]);
        assert_eq!(e.len(), 4, "{e:?}");
        let joined = e.join("\n");
        assert!(
            joined.contains("set/V1__a.sql:1:1: up script V1__a.sql contains no SQL statement"),
            "{joined}"
        );
        assert!(
            joined.contains("set/V2__b.down.sql:1:1: down script V2__b.down.sql is empty"),
            "{joined}"
        );
        assert!(
            joined.contains(
                "set/V2__b.verify.sql:1:1: verify script V2__b.verify.sql contains no SQL"
            ),
            "{joined}"
        );
        // A comment-only down script is an explicit no-op undo.
        assert!(
            MigrationSet::from_files(
                "s",
                None,
                files(&[
                    ("V1__a.sql", "SELECT 1;"),
                    ("V1__a.down.sql", "-- nothing to undo\n")
                ])
            )
            .is_ok()
        );
    }

    #[test]
    fn an_empty_set_is_an_error() {
        let e = MigrationSet::from_files("s", None, vec![]).unwrap_err();
        assert_eq!((e[0].line, e[0].column), (0, 0));
        assert!(e[0].message.contains("has no migrations"));
    }

    #[test]
    fn from_dir_names_the_set_and_ignores_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let set_dir = dir.path().join("job_summaries");
        std::fs::create_dir(&set_dir).unwrap();
        std::fs::write(set_dir.join("V1__create.sql"), "CREATE TABLE t (c int);\n").unwrap();
        std::fs::write(set_dir.join("README.md"), "notes").unwrap();
        std::fs::write(set_dir.join(".V9__swap.sql"), "editor junk").unwrap();
        std::fs::create_dir(set_dir.join("archive")).unwrap();
        let set = MigrationSet::from_dir(&set_dir).unwrap();
        assert_eq!(set.name, "job_summaries");
        assert_eq!(set.dir.as_deref(), Some(set_dir.as_path()));
        assert_eq!(set.labels(), ["V1__create"]);
        // The hidden file is not part of the set, and `check` says so.
        assert_eq!(set.hidden, [".V9__swap.sql"]);
        let warnings: Vec<String> = set.warnings().iter().map(|d| d.to_string()).collect();
        assert_eq!(
            warnings,
            [format!(
                "{}:1:1: warning: .V9__swap.sql is hidden, so it is not part of the migration set; \
                 rename it without the leading `.` if it is a migration",
                set_dir.join(".V9__swap.sql").display()
            )]
        );

        // Subdirectories are read (as Flyway scans its locations); a file is named
        // by its path in the set; hidden directories are not.
        std::fs::create_dir_all(set_dir.join("archive/2024")).unwrap();
        std::fs::write(
            set_dir.join("archive/2024/V2__add.sql"),
            "ALTER TABLE t ADD d int;\n",
        )
        .unwrap();
        std::fs::write(set_dir.join("V2__add.down.sql"), "ALTER TABLE t DROP d;\n").unwrap();
        std::fs::create_dir(set_dir.join(".git")).unwrap();
        std::fs::write(set_dir.join(".git/V9__x.sql"), "junk").unwrap();
        let set = MigrationSet::from_dir(&set_dir).unwrap();
        assert_eq!(set.labels(), ["V1__create", "V2__add"]);
        assert_eq!(set.migrations[1].up.file, "archive/2024/V2__add.sql");
        assert_eq!(
            set.migrations[1].down.as_ref().unwrap().file,
            "V2__add.down.sql"
        );
        // A Flyway file in a subdirectory is refused by name, never skipped.
        std::fs::write(
            set_dir.join("archive/V3__idx.sql.conf"),
            "executeInTransaction=false\n",
        )
        .unwrap();
        let e = MigrationSet::from_dir(&set_dir).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].to_string().starts_with(&format!(
                "{}:1:1: archive/V3__idx.sql.conf is a Flyway script configuration file",
                set_dir.join("archive/V3__idx.sql.conf").display()
            )),
            "{}",
            e[0]
        );
        std::fs::remove_file(set_dir.join("archive/V3__idx.sql.conf")).unwrap();
        // What loaded is kept next to the problems.
        std::fs::write(set_dir.join("R__views.sql"), "CREATE VIEW v AS SELECT 1;\n").unwrap();
        let loaded = MigrationSet::load_dir(&set_dir);
        assert_eq!(loaded.set.labels(), ["V1__create", "V2__add"]);
        assert_eq!(loaded.problems.len(), 1);
        assert!(
            loaded.problems[0]
                .message
                .contains("V3__views.sql with a .down.sql"),
            "{}",
            loaded.problems[0]
        );
        std::fs::remove_file(set_dir.join("R__views.sql")).unwrap();

        let missing = MigrationSet::from_dir(&dir.path().join("nope")).unwrap_err();
        assert!(missing[0].message.contains("does not exist"));

        std::fs::write(set_dir.join("V3__bin.sql"), [0xff, 0xfe, 0x00]).unwrap();
        let e = MigrationSet::from_dir(&set_dir).unwrap_err();
        assert_eq!(
            e[0].to_string(),
            format!(
                "{}:1:1: file is not valid UTF-8",
                set_dir.join("V3__bin.sql").display()
            )
        );
    }
}
