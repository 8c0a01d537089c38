//! Finding a migration set's files: a walk of its directory tree, as Flyway
//! scans it, that never skips a `.sql` file without a word.

use std::path::{Path, PathBuf};

use crate::plan::Diagnostic;

/// A walk of a set's directory tree: every `.sql` file (and Flyway `.sql.conf`
/// file, refused by name later) as a `/`-separated path relative to the set's
/// directory. Hidden files and directories are not walked (editor swap files,
/// `.git`); a hidden `.sql` file is noted in `hidden` for `check` to mention.
/// `ancestors` are the directories being walked, to refuse a symbolic link loop.
pub(super) struct Walk<'a> {
    pub found: &'a mut Vec<String>,
    pub hidden: &'a mut Vec<String>,
    pub diagnostics: &'a mut Vec<Diagnostic>,
    pub ancestors: Vec<PathBuf>,
}

impl Walk<'_> {
    /// Walk `dir`, whose path in the set is `rel` (empty for the set's own
    /// directory). `Err` only when the set's own directory cannot be read.
    pub fn walk(&mut self, dir: &Path, rel: &str) -> Result<(), Diagnostic> {
        let top = rel.is_empty();
        let cannot = |e: std::io::Error| {
            if top && e.kind() == std::io::ErrorKind::NotFound {
                format!("migration directory {} does not exist", dir.display())
            } else {
                format!("cannot read migration directory {}: {e}", dir.display())
            }
        };
        let fail = |message: String, diagnostics: &mut Vec<Diagnostic>| {
            if top {
                Err(Diagnostic::new(dir, 0, 0, message))
            } else {
                diagnostics.push(Diagnostic::new(dir, 0, 0, message));
                Ok(())
            }
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => return fail(cannot(e), self.diagnostics),
        };
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        if self.ancestors.contains(&canonical) {
            let message = format!(
                "{} leads back to a directory above it (a symbolic link loop); its files would be read twice",
                dir.display()
            );
            return fail(message, self.diagnostics);
        }
        self.ancestors.push(canonical);
        let result = self.entries(entries, rel, top);
        self.ancestors.pop();
        match result {
            Ok(()) => Ok(()),
            Err(e) => fail(cannot(e), self.diagnostics),
        }
    }

    fn entries(
        &mut self,
        entries: std::fs::ReadDir,
        rel: &str,
        top: bool,
    ) -> Result<(), std::io::Error> {
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let Ok(name) = entry.file_name().into_string() else {
                // A non-UTF-8 name cannot be a `V{n}__{name}.sql` file nor name one.
                let lossy = entry.file_name().to_string_lossy().into_owned();
                if path.is_dir() {
                    self.diagnostics.push(Diagnostic::new(&path, 0, 0, format!(
                        "directory {} has a name that is not valid UTF-8: its migration files could not be named; rename it",
                        path.display()
                    )));
                } else if lossy.to_ascii_lowercase().ends_with(".sql") {
                    self.diagnostics.push(Diagnostic::new(
                        &path,
                        1,
                        1,
                        "file name is not valid UTF-8",
                    ));
                }
                continue;
            };
            let rel_name = if top {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let is_dir = path.is_dir();
            let lower = name.to_ascii_lowercase();
            if name.starts_with('.') {
                if !is_dir && lower.ends_with(".sql") {
                    self.hidden.push(rel_name);
                }
                continue;
            }
            if is_dir {
                // A subdirectory's own problems are reported at it; the walk goes on.
                self.walk(&path, &rel_name)
                    .map_err(|d| std::io::Error::other(d.to_string()))?;
                continue;
            }
            if lower.ends_with(".sql") || lower.ends_with(".sql.conf") {
                self.found.push(rel_name);
            }
        }
        Ok(())
    }
}
