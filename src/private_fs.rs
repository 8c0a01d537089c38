//! Files only the operator can read.
//!
//! A backup archive is a full copy of a production database; its manifest, the
//! run journal and the state snapshot name tables, versions and failures. So
//! every file pgshepherd writes under the backup directory is created `0600`
//! and every directory it creates there `0700`, whatever the process umask (a
//! umask can only take bits away, and `0022` or `0002` would leave a dump
//! readable by every local user). Modes are set explicitly after creation, so
//! the result is exact, and a file or directory left looser by an older version
//! is tightened when it is written again.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file pgshepherd writes under the backup directory.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory pgshepherd creates or writes into under the backup
/// directory.
pub const DIR_MODE: u32 = 0o700;

/// Create `dir` (and missing parents, `0700` less the umask) and make `dir`
/// itself exactly `0700`, also when it already existed.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot make {} private (mode 0700): {e}", dir.display()),
        )
    })
}

/// Open `path` with `options` (which must write or append) as a private file:
/// created `0600`, and an existing file (a leftover temp file, a journal from an
/// older version) made `0600` before anything is written to it.
pub fn open(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let file = options.mode(FILE_MODE).open(path)?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Write `bytes` to `path` (created or truncated) as a private file.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = open(
        path,
        OpenOptions::new().write(true).create(true).truncate(true),
    )?;
    file.write_all(bytes)
}

/// Make `dir` `0700` and every regular file directly in it `0600`: for what
/// another program wrote with the umask (pg_dump's directory format).
pub fn restrict_dir(dir: &Path) -> io::Result<()> {
    fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::set_permissions(entry.path(), Permissions::from_mode(FILE_MODE))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_and_existing_paths_end_up_private() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("a/b");
        create_dir_all(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        create_dir_all(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "an existing directory is tightened");

        let file = dir.join("f");
        write(&file, b"x").unwrap();
        assert_eq!(mode(&file), 0o600);
        fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        write(&file, b"y").unwrap();
        assert_eq!(mode(&file), 0o600, "an existing file is tightened");

        let loose = dir.join("loose");
        fs::write(&loose, b"z").unwrap();
        fs::set_permissions(&loose, Permissions::from_mode(0o666)).unwrap();
        fs::set_permissions(&dir, Permissions::from_mode(0o777)).unwrap();
        restrict_dir(&dir).unwrap();
        assert_eq!((mode(&dir), mode(&loose)), (0o700, 0o600));
    }
}
