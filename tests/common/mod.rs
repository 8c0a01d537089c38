//! Shared integration-test harness: one throwaway PostgreSQL cluster per test
//! process, a fresh database per test.
//!
//! Use it with `mod common;` at the top of a test file:
//!
//! ```ignore
//! #[tokio::test]
//! async fn adds_the_index() {
//!     let db = common::fresh_db().await;
//!     db.execute("CREATE TABLE t (id int)").await;
//!     assert!(db.table_exists("t").await);
//! }
//! ```
//!
//! The cluster starts lazily on first use (about a second) and lives in a static,
//! so under `cargo test` every test thread of a binary shares it, and under nextest
//! (one process per test) each process gets its own. Statics are never dropped:
//! the cluster's reaper stops it and deletes its directory once the test process
//! has exited. Databases are never reused between tests, so tests may run in
//! parallel and leave whatever they like behind.
//!
//! The helpers panic with the SQL that failed: they are for tests only.
//!
//! Tests wait for events, never for time: [`eventually`] polls for a state,
//! [`within`] bounds a future that must finish, [`wait_for_sql`] polls the
//! database. Their one deadline, [`PATIENCE`], only turns a hang into a failure
//! that says what was awaited; no test asserts that anything happens sooner.

#![allow(dead_code)]

pub mod browser;
pub mod certs;
pub mod daemon;
pub mod live_run;
pub mod pgbouncer;
pub mod proxy;
pub mod receiver;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use pgshepherd::pg::Dsn;
use pgshepherd::pg::cluster::{PgBinaries, TempCluster};
use tokio_postgres::Client;
use tokio_postgres::types::Type;

/// How long a test waits for something before it fails. Far longer than
/// anything takes on a loaded machine: it is a hang detector, not a speed check.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Between two looks at a state being waited for.
const POLL: Duration = Duration::from_millis(50);

/// Poll `probe` until it returns `Some`; panics naming `what` after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what} after {PATIENCE:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `future`'s output; panics naming `what` if it has not finished after
/// [`PATIENCE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not finished after {PATIENCE:?}"))
}

/// A loopback port nothing listens on right now (for a server a test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("finding a free loopback port")
}

/// Run `command` to the end and return its output (stdout and stderr
/// captured); kills it and panics naming `what` if it is still running after
/// [`PATIENCE`].
pub fn output_within(what: &str, command: &mut std::process::Command) -> std::process::Output {
    use std::process::Stdio;
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let pid = child.id() as i32;
    let (done, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match output.recv_timeout(PATIENCE) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{what}: still running after {PATIENCE:?}; killed")
        }
    }
}

/// Poll `sql` (one boolean) on `dsn` over one connection until it is true.
pub async fn wait_for_sql(dsn: &Dsn, what: &str, sql: &str) {
    let client = dsn
        .connect("pgshepherd-test-probe", &[])
        .await
        .unwrap_or_else(|e| panic!("connecting to wait for {what}: {e}"));
    eventually(what, || async {
        let row = client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", db_error(&e)));
        row.get::<_, bool>(0).then_some(())
    })
    .await
}

static BINARIES: OnceLock<PgBinaries> = OnceLock::new();
static CLUSTER: OnceLock<TempCluster> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(1);

/// The PostgreSQL tools the cluster runs on (pg_dump, pg_restore, psql too).
pub fn binaries() -> &'static PgBinaries {
    BINARIES.get_or_init(|| {
        PgBinaries::locate().unwrap_or_else(|e| panic!("integration tests need PostgreSQL: {e}"))
    })
}

/// This process's throwaway cluster, started on first use.
pub fn cluster() -> &'static TempCluster {
    CLUSTER.get_or_init(|| {
        TempCluster::start(binaries())
            .unwrap_or_else(|e| panic!("could not start the test PostgreSQL cluster: {e}"))
    })
}

/// The `pgshepherd` binary built for these tests.
pub fn pgshepherd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pgshepherd"))
}

/// The smallest runnable plan, written into `dir`: one migration (`V1__t`, which
/// creates table `t`; its down script drops it), one check that never breaches
/// (`SELECT 1`, max 1), a soak of `soak` sampled every 500 ms. `extra` adds more
/// top-level keys. Returns the plan's path.
#[allow(dead_code)]
pub fn one_table_plan(dir: &Path, target: &str, soak: &str, extra: &str) -> PathBuf {
    let set = dir.join("migrations");
    std::fs::create_dir_all(&set).unwrap();
    std::fs::write(set.join("V1__t.sql"), "CREATE TABLE t (id int);\n").unwrap();
    std::fs::write(set.join("V1__t.down.sql"), "DROP TABLE t;\n").unwrap();
    let plan = dir.join("plan.yaml");
    let text = format!(
        "name: one-table\ntarget: {target}\nmigrations: migrations\nsoak:\n  duration: {soak}\n  interval: 500ms\n  \
         baseline_samples: 1\n  checks:\n    - name: one\n      sql: SELECT 1\n      max: 1\n      min_samples: 1\n      \
         consecutive: 1\n{extra}"
    );
    std::fs::write(&plan, text).unwrap();
    plan
}

/// SQL (one statement, no trailing `;`) that keeps its session busy until the
/// test calls [`TestDb::release`] with the same `name`: a migration or down
/// script that is "in the middle" for exactly as long as the test needs, where
/// a `pg_sleep` would guess. Needs [`TestDb::prepare_release`] first. It polls
/// a table rather than waiting on a lock, so no `lock_timeout` can end it.
pub fn held_until_released(name: &str) -> String {
    format!(
        "DO $$ BEGIN WHILE NOT EXISTS (SELECT FROM test_release WHERE name = '{name}') LOOP \
         PERFORM pg_sleep(0.05); END LOOP; END $$"
    )
}

/// A temporary directory deleted when the returned value is dropped.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("pgshepherd-test-")
        .tempdir()
        .expect("creating a scratch directory")
}

/// A database of its own for one test.
pub struct TestDb {
    pub name: String,
    pub dsn: Dsn,
    pub url: String,
}

/// Create a new, empty database (a copy of `template0`) with a name unique in this
/// process, derived from the test's name where the harness tells us (thread name).
pub async fn fresh_db() -> TestDb {
    let cluster = cluster();
    let name = unique_name();
    let admin = cluster
        .dsn("postgres")
        .connect("pgshepherd-test", &[])
        .await
        .unwrap_or_else(|e| panic!("connecting to the test cluster: {e}"));
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\" TEMPLATE template0"))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {}", db_error(&e)));
    TestDb {
        dsn: cluster.dsn(&name),
        url: cluster.url(&name),
        name,
    }
}

fn unique_name() -> String {
    let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
    let thread = std::thread::current();
    let hint: String = thread
        .name()
        .unwrap_or("test")
        .rsplit("::")
        .next()
        .unwrap_or("test")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut name = format!("t{n}_{hint}");
    // PostgreSQL truncates identifiers to 63 bytes; two long test names sharing a
    // prefix would collide after truncation, so truncate ourselves (ASCII only).
    name.truncate(63);
    name
}

fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

impl TestDb {
    /// A new connection to this database (`application_name` `pgshepherd-test`).
    pub async fn client(&self) -> Client {
        self.dsn
            .connect("pgshepherd-test", &[])
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.name))
    }

    /// Run one or more statements (simple query protocol).
    pub async fn execute(&self, sql: &str) {
        self.client()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", db_error(&e)));
    }

    /// The first column of the only row of `sql`, an integer (smallint, int, bigint).
    pub async fn query_i64(&self, sql: &str) -> i64 {
        let row = self
            .client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", db_error(&e)));
        let column_type = row.columns()[0].type_().clone();
        let value: Option<i64> = match column_type {
            Type::INT8 => row.get(0),
            Type::INT4 => row.get::<_, Option<i32>>(0).map(i64::from),
            Type::INT2 => row.get::<_, Option<i16>>(0).map(i64::from),
            other => {
                panic!("{sql}: query_i64 needs an integer column, got {other}; cast it (::bigint)")
            }
        };
        value.unwrap_or_else(|| panic!("{sql}: returned NULL"))
    }

    /// Whether a table (ordinary or partitioned) called `name` is visible
    /// (`schema.table` or a name on the search path).
    pub async fn table_exists(&self, name: &str) -> bool {
        self.relation_exists(name, &["r", "p"]).await
    }

    /// Whether an index called `name` exists (`schema.index` or on the search path).
    pub async fn index_exists(&self, name: &str) -> bool {
        self.relation_exists(name, &["i", "I"]).await
    }

    async fn relation_exists(&self, name: &str, kinds: &[&str]) -> bool {
        let sql = "SELECT EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass($1) AND relkind::text = ANY($2))";
        let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
        self.client()
            .await
            .query_one(sql, &[&name, &kinds])
            .await
            .unwrap_or_else(|e| panic!("checking whether {name} exists: {}", db_error(&e)))
            .get(0)
    }

    /// Poll `sql` (one boolean) until it is true; see [`wait_for_sql`].
    pub async fn wait_for(&self, what: &str, sql: &str) {
        wait_for_sql(&self.dsn, what, sql).await
    }

    /// Create the table [`held_until_released`] polls.
    pub async fn prepare_release(&self) {
        self.execute("CREATE TABLE test_release (name text PRIMARY KEY)")
            .await;
    }

    /// Wait until some session of this database runs [`held_until_released`]
    /// for `name`.
    pub async fn wait_held(&self, name: &str) {
        self.wait_for(
            &format!("a session held at `{name}`"),
            &format!(
                "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() \
                   AND pid <> pg_backend_pid() AND state = 'active' \
                   AND query LIKE '%test_release WHERE name = ''{name}''%')"
            ),
        )
        .await
    }

    /// Let the sessions held at `name` go on.
    pub async fn release(&self, name: &str) {
        self.execute(&format!("INSERT INTO test_release VALUES ('{name}')"))
            .await;
    }

    /// `SELECT count(*) FROM table` (`table` is spliced in as written).
    pub async fn row_count(&self, table: &str) -> i64 {
        self.query_i64(&format!("SELECT count(*) FROM {table}"))
            .await
    }
}
