//! Harness for daemon tests: a state database and target databases on the test
//! cluster, a config file with one token per role, real `pgshepherd daemon`
//! processes on free loopback ports (killed with SIGKILL or SIGTERM for real),
//! and a small HTTP client for the API.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{TestDb, free_port, fresh_db, pgshepherd_bin, scratch_dir};

/// Plain tokens (the config stores their sha256 for most of them).
pub const SUBMITTER: &str = "alice-submit-token-0001";
pub const SUBMITTER2: &str = "carol-submit-token-0003";
pub const APPROVER: &str = "bob-approve-token-00002";
pub const READER: &str = "dave-read-only-token-04";
pub const ADMIN: &str = "erin-admin-token-000005";

pub struct Env {
    pub state: TestDb,
    pub targets: Vec<(String, TestDb)>,
    pub dir: tempfile::TempDir,
    /// Extra YAML under `daemon:` (e.g. `lease_timeout: 3s`).
    daemon_settings: String,
    /// Extra top-level YAML (`channels:`, `escalation:`, `notifications:`),
    /// written before the `daemon:` section.
    extra_config: String,
    /// The daemons' `state_database` when it is not `state.url` (through a
    /// [`super::proxy::Proxy`], say).
    state_url: Option<String>,
    /// Targets reached at another URL than their database's (through a proxy).
    target_urls: Vec<(String, String)>,
    /// The daemons serve HTTPS with this certificate; clients trust its CA.
    https: Option<Https>,
}

/// `tls: {cert, key}` of the daemons' configs, and the CA clients trust.
#[derive(Clone)]
pub struct Https {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Https {
    /// A client that trusts only the CA (no system roots).
    pub fn client(&self) -> reqwest::Client {
        pgshepherd::tls::install_crypto_provider();
        let pem = std::fs::read(&self.ca).unwrap();
        reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
            .build()
            .unwrap()
    }
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

impl Env {
    /// A state database and one database per target name.
    pub async fn new(targets: &[&str], daemon_settings: &str) -> Env {
        let state = fresh_db().await;
        let mut dbs = Vec::new();
        for t in targets {
            dbs.push((t.to_string(), fresh_db().await));
        }
        Env {
            state,
            targets: dbs,
            dir: scratch_dir(),
            daemon_settings: daemon_settings.to_string(),
            extra_config: String::new(),
            state_url: None,
            target_urls: Vec::new(),
            https: None,
        }
    }

    /// The daemons started from now on reach target `name` at `url`.
    pub fn set_target_url(&mut self, name: &str, url: &str) {
        self.target_urls.push((name.to_string(), url.to_string()));
    }

    /// The daemons started from now on reach the state database at `url`.
    pub fn set_state_url(&mut self, url: &str) {
        self.state_url = Some(url.to_string());
    }

    /// Extra top-level YAML for the configs written from now on (`channels:`,
    /// `escalation:`, `notifications:`...), placed before `daemon:`.
    pub fn set_extra_config(&mut self, yaml: &str) {
        let mut yaml = yaml.to_string();
        if !yaml.is_empty() && !yaml.ends_with('\n') {
            yaml.push('\n');
        }
        self.extra_config = yaml;
    }

    /// The daemons started from now on serve HTTPS (`tls:` in their config)
    /// and are spoken to over it.
    pub fn serve_https(&mut self, https: Https) {
        self.https = Some(https);
    }

    pub fn target(&self, name: &str) -> &TestDb {
        &self.targets.iter().find(|(n, _)| n == name).unwrap().1
    }

    pub fn backups(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    /// Write the config for daemon `name` listening on `port`.
    pub fn config(&self, name: &str, port: u16) -> PathBuf {
        let mut targets = String::new();
        for (n, db) in &self.targets {
            let url = self
                .target_urls
                .iter()
                .rev()
                .find(|(t, _)| t == n)
                .map_or(db.url.as_str(), |(_, u)| u.as_str());
            targets.push_str(&format!("  {n}:\n    dsn: \"{url}\"\n"));
            // Targets named `guarded*` need approval whatever the plan says.
            if n.starts_with("guarded") {
                targets.push_str("    require_approval: true\n");
            }
        }
        let text = format!(
            "listen: 127.0.0.1:{port}\n\
             state_database: \"{state}\"\n\
             backup_dir: {backups}\n\
             targets:\n{targets}\
             tokens:\n\
             \x20 - {{name: alice, sha256: {a}, roles: [submit]}}\n\
             \x20 - {{name: carol, sha256: {c}, roles: [submit]}}\n\
             \x20 - {{name: bob, sha256: {b}, roles: [approve]}}\n\
             \x20 - {{name: dave, sha256: {d}, roles: [read]}}\n\
             \x20 - {{name: erin, token: {e}, roles: [admin]}}\n\
             log: {{format: json, level: \"info,pgshepherd=debug\"}}\n\
             {extra}{tls}\
             daemon:\n  name: {name}\n{settings}",
            state = self.state_url.as_deref().unwrap_or(&self.state.url),
            backups = self.backups().display(),
            a = sha256_hex(SUBMITTER),
            c = sha256_hex(SUBMITTER2),
            b = sha256_hex(APPROVER),
            d = sha256_hex(READER),
            e = ADMIN,
            extra = self.extra_config,
            tls = self.https.as_ref().map_or(String::new(), |h| format!(
                "tls: {{cert: \"{}\", key: \"{}\"}}\n",
                h.cert.display(),
                h.key.display()
            )),
            settings = self
                .daemon_settings
                .lines()
                .map(|l| format!("  {l}\n"))
                .collect::<String>(),
        );
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Start a daemon called `name` and wait until it answers `/healthz`.
    pub async fn start(&self, name: &str) -> Daemon {
        self.start_as(name, name).await
    }

    /// Start a process `label` (its config and log file) of daemon `name`: two
    /// processes with one `daemon.name`.
    pub async fn start_as(&self, label: &str, name: &str) -> Daemon {
        let port = free_port();
        let config = self.config(name, port);
        let config = {
            let own = self.dir.path().join(format!("{label}.yaml"));
            std::fs::rename(&config, &own).unwrap();
            own
        };
        let log = self.dir.path().join(format!("{label}.log"));
        let child = Command::new(pgshepherd_bin())
            .args(["daemon", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting pgshepherd daemon");
        let (scheme, client) = match &self.https {
            Some(h) => ("https", h.client()),
            None => ("http", reqwest::Client::new()),
        };
        let daemon = Daemon {
            child,
            name: name.to_string(),
            url: format!("{scheme}://127.0.0.1:{port}"),
            log,
            client,
        };
        daemon.wait_healthy().await;
        daemon
    }

    /// An event of `run_id` named `event` exists in the state database.
    pub async fn wait_for_event(&self, run_id: &str, event: &str, timeout: Duration) -> Value {
        let client = self.state.client().await;
        let started = Instant::now();
        loop {
            let row = client
                .query_opt(
                    "SELECT event FROM events WHERE run_id = $1 AND name = $2 ORDER BY id LIMIT 1",
                    &[&run_id, &event],
                )
                .await
                .unwrap();
            if let Some(row) = row {
                return row.get(0);
            }
            assert!(
                started.elapsed() < timeout,
                "no {event} event for run {run_id} within {timeout:?}; events so far: {:?}",
                self.event_names(run_id).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Poll the run's events until `done` holds for them; returns them.
    pub async fn wait_for_events(
        &self,
        run_id: &str,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let client = self.state.client().await;
        let what = format!("{what} (run {run_id})");
        super::eventually(&what, || async {
            let events: Vec<Value> = client
                .query(
                    "SELECT event FROM events WHERE run_id = $1 ORDER BY id",
                    &[&run_id],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            done(&events).then_some(events)
        })
        .await
    }

    /// Poll the run's row ([`Env::run_row`]) until `done` holds for it.
    pub async fn wait_for_row(
        &self,
        run_id: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let what = format!("{what} (run {run_id})");
        super::eventually(&what, || async {
            let row = self.run_row(run_id).await;
            done(&row).then_some(row)
        })
        .await
    }

    pub async fn event_names(&self, run_id: &str) -> Vec<String> {
        self.events(run_id)
            .await
            .iter()
            .map(|e| e["event"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub async fn events(&self, run_id: &str) -> Vec<Value> {
        let client = self.state.client().await;
        client
            .query(
                "SELECT event FROM events WHERE run_id = $1 ORDER BY id",
                &[&run_id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// The `runs` row as JSON.
    pub async fn run_row(&self, run_id: &str) -> Value {
        let client = self.state.client().await;
        client
            .query_one(
                "SELECT to_jsonb(r) - 'bundle' FROM runs r WHERE id = $1",
                &[&run_id],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Wait until the run is finished; returns its row.
    pub async fn wait_finished(&self, run_id: &str, timeout: Duration) -> Value {
        let started = Instant::now();
        loop {
            let row = self.run_row(run_id).await;
            if row["phase"] == "finished" {
                return row;
            }
            assert!(
                started.elapsed() < timeout,
                "run {run_id} not finished within {timeout:?}: {row}\nevents: {:?}",
                self.event_names(run_id).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub struct Daemon {
    child: Child,
    pub name: String,
    pub url: String,
    pub log: PathBuf,
    /// Speaks to this daemon (trusting its CA when it serves HTTPS).
    pub client: reqwest::Client,
}

impl Daemon {
    async fn wait_healthy(&self) {
        let started = Instant::now();
        loop {
            if let Ok(r) = self
                .client
                .get(format!("{}/healthz", self.url))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                started.elapsed() < super::PATIENCE,
                "daemon {} did not become healthy:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL: no chance to clean up anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit (at most `timeout`); returns the exit code.
    pub fn sigterm(&mut self, timeout: Duration) -> Option<i32> {
        self.send_sigterm();
        self.wait_exit(timeout)
    }

    /// SIGTERM, without waiting for anything.
    pub fn send_sigterm(&self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
    }

    /// Wait for the process to exit (at most `timeout`); returns the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if started.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The submission body for the plan at `plan` and its migration directory
/// `migrations` (every `.sql` file in it).
pub fn bundle(plan: &Path, migrations: &Path) -> Value {
    let mut files: Vec<Value> = std::fs::read_dir(migrations)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sql"))
        .map(|e| {
            json!({
                "name": e.file_name().to_string_lossy(),
                "content": std::fs::read_to_string(e.path()).unwrap(),
            })
        })
        .collect();
    files.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({
        "plan": {
            "path": plan.file_name().unwrap().to_string_lossy(),
            "content": std::fs::read_to_string(plan).unwrap(),
        },
        "migrations": {
            "name": migrations.file_name().unwrap().to_string_lossy(),
            "files": files,
        }
    })
}

/// A tiny API client.
pub struct Api {
    pub url: String,
    client: reqwest::Client,
}

impl Api {
    pub fn new(daemon: &Daemon) -> Api {
        Api {
            url: daemon.url.clone(),
            client: daemon.client.clone(),
        }
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Submit; panics unless accepted. Returns the run id.
    pub async fn submit(&self, token: &str, plan: &Path, migrations: &Path) -> String {
        let (status, body) = self.post(token, "/v1/runs", bundle(plan, migrations)).await;
        assert_eq!(status, 201, "submit refused: {body}");
        body["id"].as_str().unwrap().to_string()
    }
}

/// V1 creates table `t`; its down script drops it.
pub const ONE_TABLE: &[(&str, &str)] = &[
    ("V1__t.sql", "CREATE TABLE t (id int);\n"),
    ("V1__t.down.sql", "DROP TABLE t;\n"),
];

/// A plan in `dir` for `target` with the migration set `migrations` (file name,
/// content) in `dir/set`, and `tail` (backup, soak, rollback...) after the
/// name, target and migrations keys. Returns the plan and the set's directory.
pub fn plan_dir(
    dir: &Path,
    target: &str,
    migrations: &[(&str, &str)],
    tail: &str,
) -> (PathBuf, PathBuf) {
    let set = dir.join("set");
    std::fs::create_dir_all(&set).unwrap();
    for (name, content) in migrations {
        std::fs::write(set.join(name), content).unwrap();
    }
    let path = dir.join("plan.yaml");
    std::fs::write(
        &path,
        format!("name: daemon-test\ntarget: {target}\nmigrations: set\n{tail}"),
    )
    .unwrap();
    (path, set)
}

/// The one-table plan on `target` without a backup, soaking `soak` (samples
/// every 250 ms) with a check `check_sql` breaching above `max`, then `tail`
/// (rollback, notify, ...).
pub fn soak_plan(
    dir: &Path,
    target: &str,
    soak: &str,
    check_sql: &str,
    max: u32,
    tail: &str,
) -> (PathBuf, PathBuf) {
    let tail = format!(
        "backup:\n  enabled: false\n{}{tail}",
        soak_yaml(soak, "250ms", check_sql, max)
    );
    plan_dir(dir, target, ONE_TABLE, &tail)
}

/// A `soak:` section with one SQL check `watched` (breaching above `max`) that
/// decides on its first sample.
pub fn soak_yaml(duration: &str, interval: &str, check_sql: &str, max: u32) -> String {
    format!(
        "soak:\n  duration: {duration}\n  interval: {interval}\n  baseline_samples: 1\n  checks:\n    \
         - name: watched\n      sql: \"{check_sql}\"\n      max: {max}\n      min_samples: 1\n      consecutive: 1\n"
    )
}
