//! `run --config`: the plan names a target, the config defines it, `${VAR}` fills
//! in the secret, and the secret never shows up anywhere.

mod common;

#[tokio::test(flavor = "multi_thread")]
async fn run_resolves_the_plans_target_from_the_config_and_never_prints_its_password() {
    let db = common::fresh_db().await;
    // Roles are cluster-wide: one per test database. The harness cluster trusts
    // loopback connections, so the password is carried but not needed.
    let role = format!("deployer_{}", db.name);
    db.execute(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'correct-horse-battery' SUPERUSER"
    ))
    .await;
    let dir = common::scratch_dir();
    let plan = common::one_table_plan(dir.path(), "orders", "1s", "");
    let config = dir.path().join("pgshepherd.yaml");
    let port = common::cluster().port();
    std::fs::write(
        &config,
        format!(
            "targets:\n  orders:\n    dsn: postgres://{role}:${{ORDERS_DB_PASSWORD}}@127.0.0.1:{port}/{}\nbackup_dir: {}\n",
            db.name,
            dir.path().join("backups").display()
        ),
    )
    .unwrap();
    let run = |env_password: Option<&str>| {
        let mut cmd = std::process::Command::new(common::pgshepherd_bin());
        cmd.arg("run")
            .arg(&plan)
            .arg("--config")
            .arg(&config)
            .args(["--now", "--json"]);
        cmd.env_remove("PGSHEPHERD_DATABASE_URL");
        match env_password {
            Some(p) => cmd.env("ORDERS_DB_PASSWORD", p),
            None => cmd.env_remove("ORDERS_DB_PASSWORD"),
        };
        cmd.output().unwrap()
    };

    // An unset variable is an input error, named, before anything runs.
    let out = run(None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ORDERS_DB_PASSWORD is not set"));

    let out = run(Some("correct-horse-battery"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(db.table_exists("t").await);
    let journal = std::fs::read_dir(dir.path().join("backups/journal")).unwrap();
    let mut everything = format!("{stdout}{stderr}");
    for entry in journal {
        everything.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    for entry in std::fs::read_dir(dir.path().join("backups/orders")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            everything.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    assert!(
        everything.contains(&format!("{role}@127.0.0.1")),
        "the target is named without its password"
    );
    assert!(
        !everything.contains("correct-horse-battery"),
        "the password leaked"
    );

    // An unknown target is refused with the list of known ones.
    std::fs::write(
        &config,
        "targets:\n  billing:\n    dsn: postgres://x@127.0.0.1:1/x\n",
    )
    .unwrap();
    let out = run(Some("x"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("targets: billing"));
}
