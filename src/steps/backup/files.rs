//! File-system work of backups: safe path components, hashing, durable directory
//! entries. All of it blocks, so async code reaches it through [`blocking`].

use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use super::error::io_err;
use super::{BackupError, FileDigest};

/// Read size for pg_dump's stdout and for hashing files.
pub(super) const CHUNK: usize = 1 << 20;

/// Run blocking file-system work (directory scans, deletions, fsyncs, hashing) on
/// tokio's blocking pool, so that it never stalls the worker threads that drive
/// other runs' soaks and the API. `context` names the work in the error.
pub(super) async fn blocking<T, F>(context: impl Into<String>, work: F) -> Result<T, BackupError>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let context = context.into();
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(io_err(context)),
        Err(e) => Err(io_err(context)(io::Error::other(e))),
    }
}

/// A target or run id as one safe path component: anything but `[A-Za-z0-9._-]`
/// becomes `_`, and `.`/`..` cannot escape the backup directory.
pub(super) fn path_component(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        cleaned.replace('.', "_") + "_"
    } else {
        cleaned
    }
}

/// Make a new directory entry durable. Best effort: some filesystems refuse.
pub(super) fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

pub(super) fn dir_size(path: &Path) -> u64 {
    fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

pub(super) fn sha256_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((size, hex::encode(hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

/// Hash every file of a directory archive, `workers` at a time, sorted by name.
pub(super) fn hash_dir_files(dir: &Path, workers: usize) -> io::Result<Vec<FileDigest>> {
    let mut names: Vec<String> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                entry.path().display()
            )));
        }
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let workers = workers.clamp(1, names.len().max(1));
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<io::Result<FileDigest>>> = (0..names.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(name) = names.get(i) else {
                            return done;
                        };
                        let digest =
                            sha256_file(&dir.join(name)).map(|(size_bytes, sha256)| FileDigest {
                                name: name.clone(),
                                size_bytes,
                                sha256,
                            });
                        done.push((i, digest));
                    }
                })
            })
            .collect();
        for h in handles {
            for (i, d) in h.join().expect("hashing thread panicked") {
                results[i] = Some(d);
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.expect("every file was hashed"))
        .collect()
}

pub(super) fn combined_sha256(files: &[FileDigest]) -> String {
    let mut hasher = Sha256::new();
    for f in files {
        hasher.update(format!("{}  {}\n", f.sha256, f.name).as_bytes());
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_components_cannot_escape() {
        assert_eq!(path_component("orders-db"), "orders-db");
        assert_eq!(path_component("../etc"), ".._etc");
        assert_eq!(path_component(".."), "___");
        assert_eq!(path_component(""), "_");
        assert_eq!(path_component("a/b c"), "a_b_c");
    }
}
