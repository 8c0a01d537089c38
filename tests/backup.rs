//! The pre-change backup against a real server: pg_dump, the manifest, read-back
//! verification catching truncation and bit flips, retention, and an atomic restore.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use pgshepherd::plan::{BackupFormat, BackupSettings};
use pgshepherd::steps::backup::{
    self, ArchiveFormat, Backup, BackupError, Manifest, VerifyProblem,
};
use sha2::{Digest, Sha256};

use common::TestDb;

fn settings(format: BackupFormat, jobs: u32) -> BackupSettings {
    BackupSettings {
        enabled: true,
        format,
        jobs,
        compression: 0,
        keep: 3,
        expect_tables: Vec::new(),
    }
}

/// An orders database: a table with enough rows that the archive's middle is table
/// data, a second schema with a quoted name, an empty table and a large object.
async fn seed(db: &TestDb) {
    db.execute(
        r#"
        CREATE TABLE orders (id int PRIMARY KEY, note text NOT NULL);
        INSERT INTO orders SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 20000) g;
        CREATE SCHEMA "Sales";
        CREATE TABLE "Sales"."Line Items" (order_id int REFERENCES orders (id), qty int);
        INSERT INTO "Sales"."Line Items" SELECT g, g % 5 FROM generate_series(1, 100) g;
        CREATE TABLE empty_audit (at timestamptz);
        SELECT lo_from_bytea(4242, 'a large object');
        "#,
    )
    .await;
}

async fn take(db: &TestDb, dir: &Path, run_id: &str, s: &BackupSettings) -> Backup {
    backup::take(
        common::binaries(),
        &db.dsn,
        s,
        dir,
        "orders-db",
        run_id,
        &[1, 2, 3],
        &|_| {},
    )
    .await
    .unwrap_or_else(|e| panic!("backup failed: {e}"))
}

fn sha256_of(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap();
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    hex::encode(Sha256::digest(&buf))
}

fn flip_byte(path: &Path, at: u64) {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x01]).unwrap();
}

fn problems(err: BackupError) -> Vec<VerifyProblem> {
    match err {
        BackupError::VerifyFailed { problems, .. } => problems,
        other => panic!("expected a verification failure, got: {other}"),
    }
}

#[tokio::test]
async fn take_and_verify_writes_a_complete_manifest() {
    let db = common::fresh_db().await;
    seed(&db).await;
    let dir = common::scratch_dir();
    let seen = Mutex::new(Vec::new());
    let s = settings(BackupFormat::Custom, 1);
    let b = backup::take(
        common::binaries(),
        &db.dsn,
        &s,
        dir.path(),
        "orders-db",
        "run-42",
        &[1, 2, 3],
        &|n| seen.lock().unwrap().push(n),
    )
    .await
    .unwrap();

    let m = &b.manifest;
    assert_eq!(m.target, "orders-db");
    assert_eq!(m.run_id, "run-42");
    assert_eq!(m.format, ArchiveFormat::Custom);
    assert_eq!(m.compression, 0);
    assert_eq!(m.applied_versions, vec![1, 2, 3]);
    assert!(
        m.server_version.starts_with(|c: char| c.is_ascii_digit()),
        "{}",
        m.server_version
    );
    assert_eq!(
        m.tables,
        vec![
            r#""Sales"."Line Items""#,
            "public.empty_audit",
            "public.orders"
        ]
    );
    assert!((chrono::Utc::now() - m.created_at).num_seconds() < 60);

    // Layout: BACKUP_DIR/<target>/<timestamp>-<run_id>.dump next to its manifest.
    let target_dir = fs::canonicalize(dir.path().join("orders-db")).unwrap();
    assert_eq!(b.path, m.path);
    assert_eq!(b.path.parent().unwrap(), target_dir);
    let file_name = b.path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(file_name.ends_with("-run-42.dump"), "{file_name}");
    assert_eq!(
        b.manifest_path,
        target_dir.join(file_name.replace(".dump", ".manifest.json"))
    );

    // The recorded size and hash are the file's, and the manifest on disk round-trips.
    assert_eq!(m.size_bytes, fs::metadata(&b.path).unwrap().len());
    assert_eq!(m.sha256, sha256_of(&b.path));
    let on_disk: Manifest = serde_json::from_slice(&fs::read(&b.manifest_path).unwrap()).unwrap();
    assert_eq!(&on_disk, m);
    assert_eq!(Backup::load(&b.manifest_path).unwrap().manifest, *m);
    assert_eq!(
        seen.lock().unwrap().last(),
        Some(&m.size_bytes),
        "progress ends at the archive size"
    );

    let v = backup::verify(common::binaries(), &b, &[]).await.unwrap();
    assert_eq!(v.tables_checked, 3);
    assert_eq!(v.sha256, m.sha256);
    let v = backup::verify(
        common::binaries(),
        &b,
        &["orders".into(), r#""Sales"."Line Items""#.into()],
    )
    .await
    .unwrap();
    assert_eq!(v.tables_checked, 2);
}

#[tokio::test]
async fn a_truncated_archive_is_caught() {
    let db = common::fresh_db().await;
    seed(&db).await;
    let dir = common::scratch_dir();
    let b = take(&db, dir.path(), "r1", &settings(BackupFormat::Custom, 1)).await;
    let f = fs::OpenOptions::new().write(true).open(&b.path).unwrap();
    f.set_len(b.manifest.size_bytes / 2).unwrap();
    drop(f);
    // pg_restore --list alone is fooled: the table of contents is at the front.
    let list = std::process::Command::new(&common::binaries().pg_restore)
        .arg("--list")
        .arg(&b.path)
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "the TOC of a truncated archive still lists"
    );

    let err = backup::verify(common::binaries(), &b, &[])
        .await
        .unwrap_err();
    let message = err.to_string();
    let problems = problems(err);
    assert!(
        problems.iter().any(|p| matches!(p, VerifyProblem::ChecksumMismatch { actual_size, .. } if *actual_size == b.manifest.size_bytes / 2)),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, VerifyProblem::ReadBackFailed { .. })),
        "{problems:?}"
    );
    assert!(message.contains("truncated"), "{message}");
}

#[tokio::test]
async fn a_single_flipped_byte_is_caught() {
    let db = common::fresh_db().await;
    seed(&db).await;
    let dir = common::scratch_dir();
    let b = take(&db, dir.path(), "r1", &settings(BackupFormat::Custom, 1)).await;
    flip_byte(&b.path, b.manifest.size_bytes / 2);

    let err = backup::verify(common::binaries(), &b, &[])
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("sha256 mismatch") && message.contains("corrupted or modified in place"),
        "{message}"
    );
    assert!(matches!(
        problems(err)[0],
        VerifyProblem::ChecksumMismatch { .. }
    ));
}

#[tokio::test]
async fn a_missing_expected_table_is_caught() {
    let db = common::fresh_db().await;
    seed(&db).await;
    let dir = common::scratch_dir();
    let b = take(&db, dir.path(), "r1", &settings(BackupFormat::Custom, 1)).await;

    let err = backup::verify(
        common::binaries(),
        &b,
        &["public.orders".into(), "public.invoices".into()],
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("public.invoices"), "{err}");
    assert_eq!(
        problems(err),
        vec![VerifyProblem::MissingTables {
            tables: vec!["public.invoices".into()]
        }]
    );

    // A table the manifest says existed at backup time but whose data is not in the
    // archive (here: edited into the manifest) fails the default check too.
    let mut edited = b.clone();
    edited.manifest.tables.push("public.ghost".into());
    let err = backup::verify(common::binaries(), &edited, &[])
        .await
        .unwrap_err();
    assert_eq!(
        problems(err),
        vec![VerifyProblem::MissingTables {
            tables: vec!["public.ghost".into()]
        }]
    );
}

#[tokio::test]
async fn retention_keeps_the_newest_n() {
    let db = common::fresh_db().await;
    db.execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await;
    let dir = common::scratch_dir();
    // Taken one after the other, so their `created_at` stamps (what pruning
    // orders by) increase.
    let mut taken = Vec::new();
    for i in 0..4 {
        taken.push(
            take(
                &db,
                dir.path(),
                &format!("run-{i}"),
                &settings(BackupFormat::Custom, 1),
            )
            .await,
        );
    }
    assert!(
        taken
            .windows(2)
            .all(|w| w[0].manifest.created_at < w[1].manifest.created_at)
    );
    // Somebody else's file in the target directory is never touched.
    fs::write(dir.path().join("orders-db/README"), "not a backup").unwrap();

    let mut removed = backup::prune(dir.path(), &taken[3], 2).await.unwrap();
    removed.sort();
    let mut expected = vec![
        taken[0].path.clone(),
        taken[0].manifest_path.clone(),
        taken[1].path.clone(),
        taken[1].manifest_path.clone(),
    ];
    expected.sort();
    assert_eq!(removed, expected);
    for b in &taken[2..] {
        assert!(b.path.exists() && b.manifest_path.exists());
    }
    assert!(dir.path().join("orders-db/README").exists());
    assert!(
        backup::prune(dir.path(), &taken[3], 2)
            .await
            .unwrap()
            .is_empty(),
        "pruning is idempotent"
    );
}

/// Issue 10: `run --database-url` points one plan (one target name) at any
/// database, so retention must go by the database, not by the target name: a
/// `keep: 1` backup of `ky` must not delete the only backup of `kx`, nor a backup
/// written before manifests recorded their database.
#[tokio::test]
async fn retention_never_deletes_another_databases_backups() {
    let kx = common::fresh_db().await;
    let ky = common::fresh_db().await;
    kx.execute("CREATE TABLE t (id int)").await;
    ky.execute("CREATE TABLE t (id int)").await;
    let dir = common::scratch_dir();
    let s = settings(BackupFormat::Custom, 1);

    let only_kx = take(&kx, dir.path(), "kx-1", &s).await;
    let kx_id = only_kx
        .manifest
        .database
        .clone()
        .expect("a fresh manifest records its database");
    assert_eq!(kx_id.name, kx.name);
    // The harness's role is a superuser, and PUBLIC may read pg_control_system()
    // anyway: the cluster is known by its system identifier, not its address.
    let system_identifier = kx_id
        .system_identifier
        .clone()
        .expect("system identifier read");
    assert!(kx_id.server.is_none());
    assert!(
        system_identifier.parse::<u64>().is_ok(),
        "{system_identifier}"
    );

    // A backup from before the identity was recorded: the same manifest without
    // the `database` key, as the previous version wrote it. It still loads.
    let legacy = take(&kx, dir.path(), "legacy-1", &s).await;
    let mut text: serde_json::Value =
        serde_json::from_slice(&fs::read(&legacy.manifest_path).unwrap()).unwrap();
    text.as_object_mut().unwrap().remove("database");
    fs::write(
        &legacy.manifest_path,
        serde_json::to_vec_pretty(&text).unwrap(),
    )
    .unwrap();
    assert_eq!(
        Backup::load(&legacy.manifest_path)
            .unwrap()
            .manifest
            .database,
        None
    );

    // Two backups of ky under the same target name, keep 1.
    let old_ky = take(&ky, dir.path(), "ky-1", &s).await;
    let new_ky = take(&ky, dir.path(), "ky-2", &s).await;
    let ky_id = new_ky.manifest.database.clone().unwrap();
    assert_eq!(
        ky_id.system_identifier, kx_id.system_identifier,
        "one cluster"
    );
    assert_ne!(ky_id, kx_id, "two databases");

    let mut removed = backup::prune(dir.path(), &new_ky, 1).await.unwrap();
    removed.sort();
    let mut expected = vec![old_ky.path.clone(), old_ky.manifest_path.clone()];
    expected.sort();
    assert_eq!(removed, expected, "only ky's older backup goes");
    for kept in [&only_kx, &legacy, &new_ky] {
        assert!(
            kept.path.exists() && kept.manifest_path.exists(),
            "{}",
            kept.path.display()
        );
    }
    // Pruning from kx's side, keep 1: kx has one identified backup; the legacy one
    // (whose database is unknown) stays too.
    assert!(
        backup::prune(dir.path(), &only_kx, 1)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(legacy.manifest_path.exists());
}

#[tokio::test]
async fn restore_brings_back_the_backup_and_removes_later_objects() {
    let db = common::fresh_db().await;
    seed(&db).await;
    let acl_before = db.query_i64("SELECT hashtext(nspacl::text || nspowner::regrole::text)::bigint FROM pg_namespace WHERE nspname = 'public'").await;
    let dir = common::scratch_dir();
    let b = take(&db, dir.path(), "r1", &settings(BackupFormat::Custom, 1)).await;

    // After the backup: a row lost, a row added, a new table, a new index, a new schema.
    db.execute(
        "DELETE FROM \"Sales\".\"Line Items\" WHERE order_id = 7;
         DELETE FROM orders WHERE id = 7;
         INSERT INTO orders VALUES (20001, 'written after the backup');
         CREATE TABLE created_later (id int);
         CREATE INDEX idx_orders_note ON orders (note);
         CREATE SCHEMA scratch; CREATE TABLE scratch.x (id int);
         CREATE PUBLICATION orders_pub FOR TABLE orders;
         SELECT lo_from_bytea(4343, 'a later large object');",
    )
    .await;

    let report = backup::restore(common::binaries(), &db.dsn, &b, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(report.tables, 3);
    assert_eq!(report.sha256, b.manifest.sha256);

    assert_eq!(
        db.query_i64("SELECT count(*) FROM orders WHERE id = 7")
            .await,
        1,
        "the deleted row is back"
    );
    assert_eq!(
        db.query_i64("SELECT count(*) FROM orders WHERE id = 20001")
            .await,
        0,
        "later writes are lost"
    );
    assert_eq!(db.row_count("orders").await, 20000);
    assert_eq!(db.row_count(r#""Sales"."Line Items""#).await, 100);
    assert!(db.table_exists("empty_audit").await);
    assert!(
        !db.table_exists("created_later").await,
        "a table created after the backup is gone"
    );
    assert!(
        !db.index_exists("idx_orders_note").await,
        "an index created after the backup is gone"
    );
    assert!(db.index_exists("orders_pkey").await);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'scratch'")
            .await,
        0
    );
    assert_eq!(
        db.query_i64("SELECT length(lo_get(4242))::bigint").await,
        14,
        "large objects come back"
    );
    let acl_after = db.query_i64("SELECT hashtext(nspacl::text || nspowner::regrole::text)::bigint FROM pg_namespace WHERE nspname = 'public'").await;
    assert_eq!(
        acl_before, acl_after,
        "public is recreated as initdb makes it"
    );
}

#[tokio::test]
async fn restore_refuses_a_tampered_archive_and_changes_nothing() {
    let db = common::fresh_db().await;
    seed(&db).await;
    let dir = common::scratch_dir();
    let b = take(&db, dir.path(), "r1", &settings(BackupFormat::Custom, 1)).await;
    db.execute("CREATE TABLE created_later (id int)").await;
    flip_byte(&b.path, b.manifest.size_bytes / 2);

    let err = backup::restore(common::binaries(), &db.dsn, &b, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::Tampered { .. }), "{err}");
    assert!(err.to_string().starts_with("refusing to restore"), "{err}");
    assert!(
        db.table_exists("created_later").await,
        "nothing was touched"
    );
}

#[tokio::test]
async fn a_restore_that_fails_midway_changes_nothing() {
    let db = common::fresh_db().await;
    seed(&db).await;
    let dir = common::scratch_dir();
    let mut b = take(&db, dir.path(), "r1", &settings(BackupFormat::Custom, 1)).await;
    db.execute("CREATE TABLE created_later (id int); DELETE FROM \"Sales\".\"Line Items\" WHERE order_id <= 10; DELETE FROM orders WHERE id <= 10")
        .await;

    // An archive cut short when it was written, with a manifest that matches it: the
    // checksum passes, pg_restore dies in the middle of the data.
    let f = fs::OpenOptions::new().write(true).open(&b.path).unwrap();
    f.set_len(b.manifest.size_bytes * 2 / 3).unwrap();
    drop(f);
    b.manifest.size_bytes = fs::metadata(&b.path).unwrap().len();
    b.manifest.sha256 = sha256_of(&b.path);

    let err = backup::restore(common::binaries(), &db.dsn, &b, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::RestoreFailed { .. }), "{err}");
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    assert!(
        db.table_exists("created_later").await,
        "the schema drop was rolled back"
    );
    assert_eq!(
        db.row_count("orders").await,
        19990,
        "no partial data was committed"
    );
}

#[tokio::test]
async fn a_restore_blocked_by_a_lock_gives_up_and_changes_nothing() {
    let db = common::fresh_db().await;
    seed(&db).await;
    let dir = common::scratch_dir();
    let b = take(&db, dir.path(), "r1", &settings(BackupFormat::Custom, 1)).await;
    db.execute("CREATE TABLE created_later (id int)").await;

    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE orders IN ACCESS SHARE MODE")
        .await
        .unwrap();
    // The lock is held until the end of the test: the restore can only return
    // by giving up on it.
    let err = common::within(
        "the restore behind a lock",
        backup::restore(common::binaries(), &db.dsn, &b, Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, BackupError::RestoreLockTimeout { .. }),
        "{err}"
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert!(
        db.table_exists("created_later").await,
        "nothing was changed"
    );
}

#[tokio::test]
async fn directory_format_with_two_jobs() {
    let db = common::fresh_db().await;
    seed(&db).await;
    let dir = common::scratch_dir();
    let b = take(&db, dir.path(), "r1", &settings(BackupFormat::Directory, 2)).await;
    assert_eq!(b.manifest.format, ArchiveFormat::Directory);
    assert_eq!(b.manifest.jobs, 2);
    assert!(b.path.is_dir() && b.path.to_string_lossy().ends_with("-r1.dir"));
    assert!(b.manifest.files.iter().any(|f| f.name == "toc.dat"));
    assert_eq!(
        b.manifest.size_bytes,
        b.manifest.files.iter().map(|f| f.size_bytes).sum::<u64>()
    );
    for f in &b.manifest.files {
        assert_eq!(f.sha256, sha256_of(&b.path.join(&f.name)), "{}", f.name);
    }
    backup::verify(common::binaries(), &b, &[]).await.unwrap();

    db.execute("CREATE TABLE created_later (id int); TRUNCATE orders CASCADE")
        .await;
    backup::restore(common::binaries(), &db.dsn, &b, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(db.row_count("orders").await, 20000);
    assert!(!db.table_exists("created_later").await);

    // A flipped byte in the biggest data file is named in the verdict.
    let biggest = b
        .manifest
        .files
        .iter()
        .filter(|f| f.name != "toc.dat")
        .max_by_key(|f| f.size_bytes)
        .unwrap();
    flip_byte(&b.path.join(&biggest.name), biggest.size_bytes / 2);
    let err = backup::verify(common::binaries(), &b, &[])
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("changed {}", biggest.name)),
        "{err}"
    );

    assert!(backup::prune(dir.path(), &b, 1).await.unwrap().is_empty());
}

#[tokio::test]
async fn errors_never_show_the_password() {
    let dir = common::scratch_dir();
    // Nothing listens on port 1.
    let dsn = "postgres://app:hunter2-secret@127.0.0.1:1/orders"
        .parse()
        .unwrap();
    let err = backup::take(
        common::binaries(),
        &dsn,
        &settings(BackupFormat::Custom, 1),
        dir.path(),
        "orders-db",
        "r1",
        &[],
        &|_| {},
    )
    .await
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("postgres://app@127.0.0.1:1/orders"),
        "{message}"
    );
    assert!(
        !message.contains("hunter2") && !format!("{err:?}").contains("hunter2"),
        "{message}"
    );
}
