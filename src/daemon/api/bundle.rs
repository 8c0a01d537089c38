//! The submitted plan bundle: the plan text plus every file of its migration set,
//! which is all a daemon needs to run the plan (it never reads the submitter's
//! disk). Stored once in `runs.bundle` and immutable from then on.
//!
//! The stored form is normalised: files sorted by name, each with the sha256 of
//! its content. `bundle_sha256` is the sha256 of the normalised bundle serialised
//! as compact JSON with the keys in this order:
//! `{"plan":{"path","content"},"migrations":{"name","files":[{"name","content","sha256"}]}}`.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::migrations::MigrationSet;
use crate::plan::tree::{self, Node, Value};
use crate::plan::{self, Diagnostic, Diagnostics, MigrationSource, Plan};

/// Most migration files one bundle may carry.
pub const MAX_FILES: usize = 1000;
/// Longest plan path or file name accepted.
pub const MAX_NAME_LEN: usize = 1024;

/// The body of `POST /v1/runs`: a plan and every file of its migration set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SubmitRequest, example = json!({
    "plan": {
        "path": "plans/job-summaries.yaml",
        "content": "name: job-summaries\ntarget: jobs\nmigrations: ../migrations/job_summaries\n..."
    },
    "migrations": {
        "name": "job_summaries",
        "files": [
            {"name": "V1__add_index.sql", "content": "CREATE INDEX ..."},
            {"name": "V1__add_index.down.sql", "content": "DROP INDEX ..."}
        ]
    }
}))]
pub struct Bundle {
    pub plan: PlanFile,
    pub migrations: MigrationFiles,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// The plan's path as the submitter gave it; it names the plan in messages
    /// and locates the migration directory in them (`migrations:` is relative to it).
    pub path: String,
    /// The plan's YAML (at most 1 MiB).
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrationFiles {
    /// The set's name in the target's history table: the last component of the
    /// plan's `migrations:` directory.
    pub name: String,
    #[schema(max_items = 1000)] // MAX_FILES (the attribute takes a literal)
    pub files: Vec<BundleFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleFile {
    /// The file's path within the set, e.g. `V2__add_index.down.sql` or
    /// `sql/V20__add_fk.sql` (names joined by `/`).
    pub name: String,
    pub content: String,
    /// Lowercase hex sha256 of `content`: optional when submitting (checked when
    /// given), always present once stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A bundle refused before its plan is even compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("the bundle has {0} migration files; at most {MAX_FILES} are accepted")]
    TooManyFiles(usize),
    #[error(
        "`plan.path` must be a non-empty path of at most {MAX_NAME_LEN} characters without control characters"
    )]
    BadPlanPath,
    #[error(
        "`migrations.name` {0:?} must be a non-empty name without `/`, `\\` or control characters"
    )]
    BadSetName(String),
    #[error(
        "migration file name {0:?} must be a path within the set: names joined by `/` (no `..`, not absolute, not hidden, no `\\`, no control characters)"
    )]
    BadFileName(String),
    #[error("migration file {0} is in the bundle twice")]
    DuplicateFile(String),
    #[error(
        "migration file {name}: the given sha256 {given} does not match its content ({actual})"
    )]
    ChecksumMismatch {
        name: String,
        given: String,
        actual: String,
    },
}

impl BundleError {
    /// The refusal as a located problem, like a plan's: in the plan's file (the
    /// bundle is the plan's), position unknown. A bad `plan.path` has no file.
    pub fn diagnostic(&self, plan_path: &str) -> Diagnostic {
        let file = match self {
            BundleError::BadPlanPath => "",
            _ => plan_path,
        };
        Diagnostic::new(file, 0, 0, self.to_string())
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn plain(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && !s.chars().any(char::is_control)
}

impl Bundle {
    /// The bundle of a plan loaded from disk: its text and every script of its set.
    pub fn from_plan(path: &Path, content: String, set: &MigrationSet) -> Bundle {
        let files = set
            .migrations
            .iter()
            .flat_map(|m| std::iter::once(&m.up).chain(&m.down).chain(&m.verify))
            .map(|s| BundleFile {
                name: s.file.clone(),
                content: s.sql.clone(),
                sha256: Some(s.checksum.clone()),
            })
            .collect();
        Bundle {
            plan: PlanFile {
                path: path.display().to_string(),
                content,
            },
            migrations: MigrationFiles {
                name: set.name.clone(),
                files,
            },
        }
    }

    /// Check the bundle's shape and bring it into its stored form.
    pub fn normalise(mut self) -> Result<Bundle, BundleError> {
        if self.migrations.files.len() > MAX_FILES {
            return Err(BundleError::TooManyFiles(self.migrations.files.len()));
        }
        if !plain(&self.plan.path) {
            return Err(BundleError::BadPlanPath);
        }
        let set = &self.migrations.name;
        if !plain(set) || set.contains(['/', '\\']) {
            return Err(BundleError::BadSetName(set.clone()));
        }
        let mut seen = BTreeSet::new();
        for f in &mut self.migrations.files {
            // `sql/V20__x.sql`: a set's files may sit in subdirectories (as
            // Flyway's do); never `..`, absolute or hidden.
            if !plain(&f.name) || !crate::migrations::set::is_relative_path(&f.name) {
                return Err(BundleError::BadFileName(f.name.clone()));
            }
            if !seen.insert(f.name.clone()) {
                return Err(BundleError::DuplicateFile(f.name.clone()));
            }
            let actual = sha256_hex(f.content.as_bytes());
            if let Some(given) = &f.sha256
                && !given.eq_ignore_ascii_case(&actual)
            {
                return Err(BundleError::ChecksumMismatch {
                    name: f.name.clone(),
                    given: given.clone(),
                    actual,
                });
            }
            f.sha256 = Some(actual);
        }
        self.migrations.files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(self)
    }

    /// sha256 of the canonical serialisation (see the module docs); meaningful
    /// for a normalised bundle.
    pub fn sha256(&self) -> String {
        // Serialising plain structs of strings cannot fail.
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        sha256_hex(&bytes)
    }

    /// Compile the bundle into a plan, exactly as `pgshepherd check` compiles the
    /// plan file and its migration directory: every problem at once, each located
    /// in the file it concerns (migration files as `<plan dir>/<migrations>/<file>`).
    pub fn compile(&self) -> Result<Plan, Diagnostics> {
        let path = Path::new(&self.plan.path);
        let text = &self.plan.content;
        let root = if text.len() as u64 <= plan::load::MAX_PLAN_BYTES {
            tree::parse(text).ok()
        } else {
            None
        };
        let migrations_at = root
            .as_ref()
            .and_then(|r| entry(r, "migrations").and_then(located));
        let dir = migrations_at
            .as_ref()
            .map(|(value, ..)| path.parent().unwrap_or(Path::new("")).join(value));

        let mut problems = Vec::new();
        let (line, column) = migrations_at.as_ref().map_or((0, 0), |m| (m.1, m.2));
        if let Some(named) = dir.as_deref().and_then(last_component)
            && named != self.migrations.name
        {
            problems.push(Diagnostic::new(
                path,
                line,
                column,
                format!(
                    "`migrations` names the directory {named:?}, but the submitted migration set is {:?}",
                    self.migrations.name
                ),
            ));
        }
        let files = self
            .migrations
            .files
            .iter()
            .map(|f| (f.name.clone(), f.content.clone()))
            .collect();
        // What loaded still goes to the plan's rules (a rollback strategy's needs),
        // so that a submission reports every problem at once, as `check` does.
        let loaded = MigrationSet::load_files(self.migrations.name.clone(), dir, files);
        let set = match loaded.problems.is_empty() {
            true => loaded.set,
            false => {
                for d in loaded.problems {
                    if d.line == 0 {
                        // About the set as a whole: point at where the plan names it,
                        // as `check` does.
                        problems.push(Diagnostic::new(
                            path,
                            line,
                            column,
                            format!("`migrations`: {}", d.message),
                        ));
                    } else {
                        problems.push(d);
                    }
                }
                loaded.set
            }
        };
        match plan::load_str(path, text, MigrationSource::Given(set)) {
            Ok(plan) if problems.is_empty() => Ok(plan),
            Ok(_) => Err(Diagnostics(sorted(path, problems))),
            Err(Diagnostics(mut more)) => {
                problems.append(&mut more);
                Err(Diagnostics(sorted(path, problems)))
            }
        }
    }

    /// The names the plan gives for what the daemon's config defines, with their
    /// positions, from one parse of the plan text (also when it does not compile).
    pub fn names(&self) -> Names {
        if self.plan.content.len() as u64 > plan::load::MAX_PLAN_BYTES {
            return Names::default();
        }
        let Ok(root) = tree::parse(&self.plan.content) else {
            return Names::default();
        };
        let notify = entry(&root, "notify");
        Names {
            target: entry(&root, "target").and_then(located),
            channels: match notify.and_then(|n| entry(n, "channels")).map(|n| &n.value) {
                Some(Value::Seq(items)) => items.iter().filter_map(located).collect(),
                _ => Vec::new(),
            },
            escalation: notify
                .and_then(|n| entry(n, "escalation"))
                .and_then(located),
        }
    }
}

/// A string value in the plan and its line and column.
pub type Located = (String, u32, u32);

/// See [`Bundle::names`].
#[derive(Debug, Default, PartialEq)]
pub struct Names {
    pub target: Option<Located>,
    /// `notify.channels`
    pub channels: Vec<Located>,
    /// `notify.escalation`
    pub escalation: Option<Located>,
}

fn entry<'a>(map: &'a Node, key: &str) -> Option<&'a Node> {
    let Value::Map(entries) = &map.value else {
        return None;
    };
    entries.iter().find_map(|(k, v)| match &k.value {
        Value::Str(k) if k == key => Some(v),
        _ => None,
    })
}

fn located(node: &Node) -> Option<Located> {
    match &node.value {
        Value::Str(s) => Some((s.clone(), node.line, node.column)),
        _ => None,
    }
}

fn last_component(dir: &Path) -> Option<String> {
    dir.file_name().and_then(|n| n.to_str()).map(str::to_owned)
}

/// Plan-file problems first, in file order, then the others by file (as `check`).
pub fn sorted(plan: &Path, mut d: Vec<Diagnostic>) -> Vec<Diagnostic> {
    d.sort_by(|a, b| {
        let other = |x: &Diagnostic| x.file != plan;
        (other(a), &a.file, a.line, a.column).cmp(&(other(b), &b.file, b.line, b.column))
    });
    d.dedup();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = "name: p\ntarget: app\nmigrations: ../sets/jobs\nsoak:\n  duration: 10m\n  checks:\n    - {name: c, builtin: deadlocks_per_second, max: 0}\n";

    fn bundle(plan: &str, files: &[(&str, &str)]) -> Bundle {
        Bundle {
            plan: PlanFile {
                path: "plans/p.yaml".into(),
                content: plan.into(),
            },
            migrations: MigrationFiles {
                name: "jobs".into(),
                files: files
                    .iter()
                    .map(|(n, c)| BundleFile {
                        name: n.to_string(),
                        content: c.to_string(),
                        sha256: None,
                    })
                    .collect(),
            },
        }
    }

    #[test]
    fn a_good_bundle_compiles_and_its_checksum_ignores_file_order() {
        let files = [
            ("V1__t.sql", "CREATE TABLE t (c int);"),
            ("V1__t.down.sql", "DROP TABLE t;"),
        ];
        let a = bundle(PLAN, &files).normalise().unwrap();
        let mut reversed = files;
        reversed.reverse();
        let b = bundle(PLAN, &reversed).normalise().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.sha256(), b.sha256());
        assert_eq!(a.migrations.files[0].name, "V1__t.down.sql");
        let plan = a.compile().unwrap();
        assert_eq!(plan.migrations.labels(), ["V1__t"]);
        assert_eq!(plan.migrations.name, "jobs");
    }

    #[test]
    fn problems_name_the_files_as_check_does() {
        let b = bundle(
            &format!("{PLAN}colour: blue\n"),
            &[("V1__t.sql", ""), ("V1__t.down.sql", "DROP TABLE t;")],
        );
        let d = b.compile().unwrap_err().0;
        let shown: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert!(
            shown[0].starts_with("plans/p.yaml:8:1: unknown key `colour`"),
            "{shown:#?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("plans/../sets/jobs/V1__t.sql:")),
            "{shown:#?}"
        );
    }

    #[test]
    fn a_flyway_folder_compiles_as_check_compiles_it() {
        // A file in a subdirectory is part of the set.
        let files = [
            ("V1__t.sql", "CREATE TABLE t (c int);"),
            ("V1__t.down.sql", "DROP TABLE t;"),
            ("sql/V2__u.sql", "CREATE TABLE u (c int);"),
            ("sql/V2__u.down.sql", "DROP TABLE u;"),
        ];
        let plan = bundle(PLAN, &files).normalise().unwrap().compile().unwrap();
        assert_eq!(plan.migrations.labels(), ["V1__t", "V2__u"]);
        assert_eq!(plan.migrations.migrations[1].up.file, "sql/V2__u.sql");
        // A repeatable is refused by name, and the missing down script is
        // reported in the same answer.
        let files = [
            ("V1__t.sql", "CREATE TABLE t (c int);"),
            ("R__views.sql", "CREATE VIEW v AS SELECT 1;"),
        ];
        let d = bundle(PLAN, &files)
            .normalise()
            .unwrap()
            .compile()
            .unwrap_err()
            .0;
        let shown: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert!(
            shown.iter().any(|s| s.starts_with(
                "plans/../sets/jobs/R__views.sql:1:1: R__views.sql is a Flyway repeatable migration"
            )),
            "{shown:#?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.contains("but V1__t has no V1__t.down.sql")),
            "{shown:#?}"
        );
    }

    #[test]
    fn an_empty_set_points_at_the_migrations_line() {
        let d = bundle(PLAN, &[]).compile().unwrap_err().0;
        assert_eq!((d[0].line, d[0].column), (3, 13), "{d:?}");
        assert!(d[0].message.starts_with("`migrations`: "), "{d:?}");
    }

    #[test]
    fn the_set_name_must_match_the_plans_directory() {
        let mut b = bundle(
            PLAN,
            &[("V1__t.sql", "SELECT 1;"), ("V1__t.down.sql", "SELECT 1;")],
        );
        b.migrations.name = "other".into();
        let d = b.compile().unwrap_err().0;
        assert!(d.iter().any(|d| d.message.contains("\"other\"")), "{d:?}");
    }

    #[test]
    fn shape_errors_are_refused_before_compiling() {
        for name in [
            "../V1__t.sql",
            "/V1__t.sql",
            "a//V1__t.sql",
            ".x/V1__t.sql",
            "a\\V1__t.sql",
        ] {
            assert!(
                matches!(
                    bundle(PLAN, &[(name, "x")]).normalise(),
                    Err(BundleError::BadFileName(_))
                ),
                "{name}"
            );
        }
        // A set's files may sit in subdirectories, as Flyway's do.
        assert!(bundle(PLAN, &[("sql/V1__t.sql", "x")]).normalise().is_ok());
        let files = [("V1__t.sql", "x"), ("V1__t.sql", "y")];
        assert!(matches!(
            bundle(PLAN, &files).normalise(),
            Err(BundleError::DuplicateFile(_))
        ));
        let mut b = bundle(PLAN, &[("V1__t.sql", "x")]);
        b.migrations.files[0].sha256 = Some("00".into());
        assert!(matches!(
            b.normalise(),
            Err(BundleError::ChecksumMismatch { .. })
        ));
        let mut b = bundle(PLAN, &[]);
        b.plan.path = String::new();
        assert_eq!(b.normalise(), Err(BundleError::BadPlanPath));
    }

    #[test]
    fn a_refusal_is_located_in_the_plans_file() {
        let e = BundleError::DuplicateFile("V1__t.sql".into());
        let d = e.diagnostic("plans/p.yaml");
        assert_eq!(
            (d.file.to_str(), d.line, d.column),
            (Some("plans/p.yaml"), 0, 0)
        );
        assert_eq!(d.message, e.to_string());
        assert_eq!(
            BundleError::BadPlanPath.diagnostic("\u{7}").file.to_str(),
            Some("")
        );
    }

    #[test]
    fn names_are_found_with_their_positions() {
        let b = bundle(PLAN, &[]);
        assert_eq!(b.names().target, Some(("app".into(), 2, 9)));
        assert!(b.names().channels.is_empty());
        let b = bundle(
            "name: p\ntarget: app\nnotify:\n  channels: [chat, 3, pager]\n  escalation: oncall\n",
            &[],
        );
        let names = b.names();
        assert_eq!(
            names.channels,
            [("chat".into(), 4, 14), ("pager".into(), 4, 23)]
        );
        assert_eq!(names.escalation, Some(("oncall".into(), 5, 15)));
    }
}
