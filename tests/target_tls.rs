//! A target that only accepts TLS connections: pgshepherd and the tools it runs
//! (pg_dump, pg_restore) follow the URL's `sslmode`, and with `verify-ca` /
//! `verify-full` authenticate the server against `sslrootcert`.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use pgshepherd::daemon::store;
use pgshepherd::pg::Dsn;
use pgshepherd::pg::cluster::TempCluster;

use common::certs::{make_ca, path, sign_server_cert};

/// The common name of the clusters' certificates.
const SERVER_CN: &str = "pgshepherd test server";

/// A cluster of its own refusing plain TCP, with the certificate `make_cert`
/// writes into its data directory (`server.crt`, `server.key`).
async fn tls_only_cluster(make_cert: impl FnOnce(&Path)) -> TempCluster {
    let cluster = TempCluster::start(common::binaries()).expect("start a cluster");
    let data = cluster.data_dir().to_path_buf();
    make_cert(&data);
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

/// `pgshepherd run --now --json` of `plan` against `url`.
fn run(plan: &Path, url: &str, backups: &Path) -> Output {
    Command::new(common::pgshepherd_bin())
        .arg("run")
        .arg(plan)
        .args(["--now", "--json", "--database-url", url])
        .arg("--backup-dir")
        .arg(backups)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// pg_dump (schema only) with the connection settings pgshepherd gives it.
fn pg_dump(url: &str) -> Output {
    let dsn: Dsn = url.parse().unwrap();
    Command::new(&common::binaries().pg_dump)
        .envs(dsn.libpq_env())
        .args(["--schema-only", "--file", "/dev/null"])
        .output()
        .unwrap()
}

async fn table_exists(cluster: &TempCluster, dbname: &str) -> bool {
    let admin = cluster
        .dsn(dbname)
        .connect("pgshepherd test", &[])
        .await
        .unwrap();
    admin
        .query_one("SELECT to_regclass('t') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_against_a_tls_only_target_and_refuses_plain_connections() {
    let dir = common::scratch_dir();
    let ca = make_ca(dir.path(), "ca");
    // The server's certificate is signed by the test CA for 127.0.0.1.
    let cluster = tls_only_cluster(|data| {
        sign_server_cert(data, &ca, "IP:127.0.0.1,DNS:localhost", SERVER_CN)
    })
    .await;
    let plan = common::one_table_plan(dir.path(), "db", "1s", "");
    let backups = dir.path().join("backups");
    let plain = run(
        &plan,
        &format!("{}?sslmode=disable", cluster.url("postgres")),
        &backups,
    );
    assert_eq!(plain.status.code(), Some(1), "{}", text(&plain));
    let tls = run(
        &plan,
        &format!("{}?sslmode=require", cluster.url("postgres")),
        &backups,
    );
    assert_eq!(tls.status.code(), Some(0), "{}", text(&tls));
    // The backup went through TLS too (pg_dump got PGSSLMODE).
    assert!(String::from_utf8_lossy(&tls.stdout).contains("\"event\":\"backup_verified\""));
    assert!(table_exists(&cluster, "postgres").await);

    // verify-full with the CA: pgshepherd's connections and pg_dump's, pg_restore's
    // (the backup is verified by restoring it) authenticate the server.
    cluster
        .dsn("postgres")
        .connect("pgshepherd test", &[])
        .await
        .unwrap()
        .batch_execute("CREATE DATABASE verified")
        .await
        .unwrap();
    let verified = run(
        &plan,
        &format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            cluster.url("verified"),
            path(&ca)
        ),
        &backups,
    );
    assert_eq!(verified.status.code(), Some(0), "{}", text(&verified));
    assert!(String::from_utf8_lossy(&verified.stdout).contains("\"event\":\"backup_verified\""));
    assert!(table_exists(&cluster, "verified").await);

    // The daemon's state database: its schema session and its pooled
    // connections authenticate the server the same way.
    let state: Dsn = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        cluster.url("postgres"),
        path(&ca)
    )
    .parse()
    .unwrap();
    let pool = store::open(&state, 2, Duration::from_secs(10))
        .await
        .unwrap();
    let ssl: bool = pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_a_server_whose_certificate_does_not_verify() {
    let dir = common::scratch_dir();
    let ca = make_ca(dir.path(), "ca");
    // An impostor: a certificate from another CA, and for another name.
    let other_ca = make_ca(dir.path(), "other-ca");
    let cluster =
        tls_only_cluster(|data| sign_server_cert(data, &other_ca, "DNS:other.example", SERVER_CN))
            .await;
    let url = |mode: &str, root: &Path| {
        format!(
            "{}?sslmode={mode}&sslrootcert={}",
            cluster.url("postgres"),
            path(root)
        )
    };

    // Not signed by the CA trusted: refused before anything changes.
    let plan = common::one_table_plan(dir.path(), "db", "1s", "");
    let refused = run(&plan, &url("verify-full", &ca), &dir.path().join("backups"));
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused)
            .contains("the server's certificate could not be verified (sslmode=verify-full"),
        "{}",
        text(&refused)
    );
    assert!(!table_exists(&cluster, "postgres").await);
    let state: Dsn = url("verify-full", &ca).parse().unwrap();
    let Err(err) = store::open(&state, 2, Duration::from_secs(10)).await else {
        panic!("the state database's certificate does not verify, yet it was opened");
    };
    assert!(err.to_string().contains("could not be verified"), "{err}");
    // pg_dump, with the settings pgshepherd gives it, refuses it too.
    for mode in ["verify-ca", "verify-full"] {
        let dump = pg_dump(&url(mode, &ca));
        assert!(!dump.status.success());
        assert!(
            String::from_utf8_lossy(&dump.stderr).contains("certificate verify failed"),
            "{}",
            text(&dump)
        );
    }

    // Signed by the CA trusted, but not for the host connected to (127.0.0.1):
    // verify-full refuses, verify-ca (the chain only) accepts; pg_dump agrees.
    let err = url("verify-full", &other_ca)
        .parse::<Dsn>()
        .unwrap()
        .connect("pgshepherd test", &[])
        .await
        .unwrap_err();
    let message = pgshepherd::pg::server_message(&err);
    assert!(
        message.contains("could not be verified") && message.contains("not valid for name"),
        "{message}"
    );
    let dump = pg_dump(&url("verify-full", &other_ca));
    assert!(
        String::from_utf8_lossy(&dump.stderr).contains("does not match host name"),
        "{}",
        text(&dump)
    );
    url("verify-ca", &other_ca)
        .parse::<Dsn>()
        .unwrap()
        .connect("pgshepherd test", &[])
        .await
        .unwrap();
    let dump = pg_dump(&url("verify-ca", &other_ca));
    assert!(dump.status.success(), "{}", text(&dump));
}
