//! Backups and journals are private whatever the umask: real `pgshepherd run`s
//! (custom and directory archives) started with umask 000, then every file under
//! the backup directory is 0600 and every directory 0700.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `pgshepherd run --now` of `plan` against `url`, with umask 000 in the child:
/// the most permissive there is, so any file created with the umask's default
/// mode would come out world-readable (and writable).
async fn run_with_open_umask(plan: &Path, url: &str, backups: &Path) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(common::pgshepherd_bin());
    cmd.arg("run")
        .arg(plan)
        .arg("--database-url")
        .arg(url)
        .arg("--backup-dir")
        .arg(backups)
        .arg("--now");
    // SAFETY: umask is async-signal-safe and touches nothing but the process's
    // own umask, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    cmd.output().await.expect("running pgshepherd")
}

/// Every path under `root` (itself included) with its permission bits.
fn modes(root: &Path) -> Vec<(PathBuf, bool, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        out.push((
            path.clone(),
            meta.is_dir(),
            meta.permissions().mode() & 0o777,
        ));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_journals_and_state_snapshots_are_private_whatever_the_umask() {
    let work = common::scratch_dir();
    // Not created beforehand: pgshepherd creates it, and everything in it.
    let backups = work.path().join("backups");
    for (target, backup) in [
        ("custom-db", "backup:\n  format: custom\n"),
        ("dir-db", "backup:\n  format: directory\n  jobs: 2\n"),
    ] {
        let db = common::fresh_db().await;
        db.execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, email text); \
             INSERT INTO accounts SELECT g, 'user' || g FROM generate_series(1, 200) g;",
        )
        .await;
        let dir = work.path().join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let plan = common::one_table_plan(&dir, target, "1s", backup);
        let out = run_with_open_umask(&plan, &db.url, &backups).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{target}: {stderr}");
    }

    let all = modes(&backups);
    let loose: Vec<String> = all
        .iter()
        .filter(|(_, is_dir, mode)| *mode != if *is_dir { 0o700 } else { 0o600 })
        .map(|(p, is_dir, mode)| {
            format!(
                "{} {} {mode:o}",
                if *is_dir { "dir " } else { "file" },
                p.display()
            )
        })
        .collect();
    assert!(
        loose.is_empty(),
        "not private (files 600, directories 700):\n{}",
        loose.join("\n")
    );

    // The walk saw what it should have: both archives (the directory one with
    // pg_dump's own files in it), their manifests, the journals and the state
    // snapshots.
    let names: Vec<String> = all
        .iter()
        .map(|(p, _, _)| p.strip_prefix(&backups).unwrap().display().to_string())
        .collect();
    let count = |pred: &dyn Fn(&str) -> bool| names.iter().filter(|n| pred(n)).count();
    assert_eq!(
        count(&|n| n.starts_with("custom-db/") && n.ends_with(".dump")),
        1,
        "{names:?}"
    );
    assert_eq!(
        count(&|n| n.starts_with("dir-db/") && n.ends_with(".dir")),
        1,
        "{names:?}"
    );
    assert!(
        count(&|n| n.contains(".dir/") && n.ends_with("toc.dat")) == 1,
        "{names:?}"
    );
    assert_eq!(count(&|n| n.ends_with(".manifest.json")), 2, "{names:?}");
    assert_eq!(
        count(&|n| n.starts_with("journal/") && n.ends_with(".jsonl")),
        2,
        "{names:?}"
    );
    assert_eq!(count(&|n| n.ends_with(".state.json")), 2, "{names:?}");
}
