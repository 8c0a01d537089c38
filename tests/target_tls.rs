//! A target that only accepts TLS connections: pgshepherd and the tools it runs
//! (pg_dump, pg_restore) follow the URL's `sslmode`.

mod common;

use std::process::Command;

use pgshepherd::pg::cluster::TempCluster;

/// A cluster of its own with a self-signed certificate, refusing plain TCP.
async fn tls_only_cluster() -> TempCluster {
    let cluster = TempCluster::start(common::binaries()).expect("start a cluster");
    let data = cluster.data_dir().to_path_buf();
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(data.join("server.key"))
        .arg("-out")
        .arg(data.join("server.crt"))
        .output()
        .expect("run openssl");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
    )
    .unwrap();
    // Owned by the server's user with a private key mode, as PostgreSQL insists.
    let owner = std::fs::metadata(&data)
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    for f in ["server.key", "server.crt", "pg_hba.conf"] {
        std::os::unix::fs::chown(data.join(f), Some(owner), None).unwrap();
    }
    std::fs::set_permissions(
        data.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let admin = cluster
        .dsn("postgres")
        .connect("pgshepherd test", &[])
        .await
        .unwrap();
    admin
        .batch_execute("ALTER SYSTEM SET ssl = on")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    // The reload is asynchronous: wait until a new plain connection is refused.
    let plain = format!("{}?sslmode=disable", cluster.url("postgres"))
        .parse::<pgshepherd::pg::Dsn>()
        .unwrap();
    common::eventually("plain connections refused after the reload", || async {
        plain.connect("probe", &[]).await.is_err().then_some(())
    })
    .await;
    cluster
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_against_a_tls_only_target_and_refuses_plain_connections() {
    let cluster = tls_only_cluster().await;
    let dir = common::scratch_dir();
    let plan = common::one_table_plan(dir.path(), "db", "1s", "");
    let run = |sslmode: &str| {
        Command::new(common::pgshepherd_bin())
            .arg("run")
            .arg(&plan)
            .args([
                "--now",
                "--json",
                "--database-url",
                &format!("{}?sslmode={sslmode}", cluster.url("postgres")),
            ])
            .arg("--backup-dir")
            .arg(dir.path().join("backups"))
            .output()
            .unwrap()
    };
    let plain = run("disable");
    assert_eq!(
        plain.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let tls = run("require");
    assert_eq!(
        tls.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&tls.stderr)
    );
    // The backup went through TLS too (pg_dump got PGSSLMODE).
    assert!(String::from_utf8_lossy(&tls.stdout).contains("\"event\":\"backup_verified\""));
    let admin = cluster
        .dsn("postgres")
        .connect("pgshepherd test", &[])
        .await
        .unwrap();
    let exists: bool = admin
        .query_one("SELECT to_regclass('t') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(exists);
}
