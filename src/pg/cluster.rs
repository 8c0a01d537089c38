//! A throwaway PostgreSQL cluster for the demo and the tests.
//!
//! [`PgBinaries::locate`] finds the server and client tools; [`TempCluster::start`]
//! runs `initdb` into a temporary directory and starts a postmaster on a free
//! loopback port with durability switched off (`fsync=off`): nothing in it is worth
//! keeping. Start-up takes a fraction of a second: initdb runs once per PostgreSQL
//! build and its pristine result is cached in the temp directory and copied (see
//! `pristine_data_dir`).
//!
//! Invariants:
//! - A cluster never outlives the process that started it. [`Drop`] stops it and
//!   deletes its directory; when the process dies without unwinding (a cluster kept
//!   in a `static` by a test binary, a killed demo), a detached reaper shell notices
//!   the parent is gone, stops the postmaster and deletes the directory.
//! - PostgreSQL refuses to run as root, so when the effective uid is 0 `initdb` and
//!   `postgres` run as the `postgres` user (set directly on the child, no `su`/`sudo`)
//!   and the cluster directory is handed to that user.
//! - Authentication is `trust` on loopback and on a socket inside the cluster
//!   directory: the cluster has no password, so there is nothing secret to log.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::pg::Dsn;

/// How to install the tools, shown whenever they cannot be found.
const INSTALL_HINT: &str = "install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`; \
     Fedora/RHEL: `dnf install postgresql-server`; macOS: `brew install postgresql`) \
     or put the directory holding initdb, pg_ctl and postgres on PATH \
     (e.g. `export PATH=/usr/lib/postgresql/16/bin:$PATH`)";

/// The superuser `initdb -U` creates; the cluster trusts it on loopback.
pub const SUPERUSER: &str = "postgres";

/// How long `start` waits for the postmaster to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits for an immediate shutdown before sending SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Free-port races (another process binds the port between our probe and the
/// postmaster's bind) are retried this many times with a new port.
const PORT_ATTEMPTS: u32 = 5;
/// Names the one directory to take the PostgreSQL binaries from.
pub const BINDIR_ENV: &str = "PGSHEPHERD_PG_BINDIR";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb, pg_ctl and postgres in {searched}); {INSTALL_HINT}"
    )]
    NotFound { searched: String },
    #[error(
        "found the PostgreSQL server in {bindir} but no {tool} next to it or on PATH; \
         install the client tools (Debian/Ubuntu: `apt-get install postgresql-client`) or put them on PATH"
    )]
    ClientToolMissing { tool: &'static str, bindir: PathBuf },
    #[error(
        "running as root, and PostgreSQL refuses to run as root, but there is no `postgres` user to run \
         it as; create one (`useradd --system --user-group postgres`) or run as an ordinary user"
    )]
    NoPostgresUser,
    #[error("while {context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("initdb into {data_dir} failed ({status}): {output}")]
    Initdb {
        data_dir: PathBuf,
        status: ExitStatus,
        output: String,
    },
    #[error("the throwaway PostgreSQL server did not start (log {log_file}): {log_tail}")]
    Start { log_file: PathBuf, log_tail: String },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

/// Where the PostgreSQL tools live. The server tools always come from one
/// directory (`bindir`); the client tools come from the same directory when it has
/// them (a pg_dump older than the server refuses to dump it), else from PATH.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    pub bindir: PathBuf,
    pub initdb: PathBuf,
    pub pg_ctl: PathBuf,
    pub postgres: PathBuf,
    pub pg_dump: PathBuf,
    pub pg_restore: PathBuf,
    pub psql: PathBuf,
}

impl PgBinaries {
    /// Find a directory holding `initdb`, `pg_ctl` and `postgres`: the one named
    /// by `PGSHEPHERD_PG_BINDIR` if set (and only that one, to pin a version), else
    /// first on PATH, then `pg_config --bindir`, then the highest
    /// `/usr/lib/postgresql/*/bin` (and `/usr/pgsql-*/bin` on RHEL-like systems).
    pub fn locate() -> Result<PgBinaries, ClusterError> {
        let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        if let Some(pinned) = std::env::var_os(BINDIR_ENV).map(PathBuf::from) {
            if !has_server_tools(&pinned) {
                return Err(ClusterError::NotFound {
                    searched: format!("{} ({BINDIR_ENV})", pinned.display()),
                });
            }
            return Self::in_dir(resolve_bindir(&pinned), &path_dirs);
        }
        let mut searched: Vec<String> = vec!["PATH".into()];

        let from_path = path_dirs
            .iter()
            .find(|d| has_server_tools(d))
            .map(|d| resolve_bindir(d));
        let bindir = from_path
            .or_else(|| {
                searched.push("`pg_config --bindir`".into());
                pg_config_bindir().filter(|d| has_server_tools(d))
            })
            .or_else(|| {
                searched.push("/usr/lib/postgresql/*/bin".into());
                searched.push("/usr/pgsql-*/bin".into());
                highest_versioned_bindir()
            })
            .ok_or_else(|| ClusterError::NotFound {
                searched: searched.join(", "),
            })?;
        Self::in_dir(bindir, &path_dirs)
    }

    /// The client tools a run needs (pg_dump, pg_restore, psql), on a host that
    /// may have no server installed (a daemon host with `postgresql-client` only).
    /// Prefers a full installation ([`PgBinaries::locate`]) so the tools match;
    /// otherwise `PGSHEPHERD_PG_BINDIR`, PATH, then `pg_config --bindir`. The
    /// server fields then point at tools that may not exist.
    pub fn locate_client() -> Result<PgBinaries, ClusterError> {
        if let Ok(full) = Self::locate() {
            return Ok(full);
        }
        let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        let has_client = |d: &Path| {
            ["pg_dump", "pg_restore", "psql"]
                .iter()
                .all(|t| is_executable(&d.join(t)))
        };
        let dir = match std::env::var_os(BINDIR_ENV).map(PathBuf::from) {
            Some(pinned) => Some(pinned).filter(|d| has_client(d)),
            None => path_dirs
                .iter()
                .find(|d| has_client(d))
                .cloned()
                .or_else(|| pg_config_bindir().filter(|d| has_client(d))),
        };
        match dir {
            Some(dir) => Self::in_dir(dir, &path_dirs),
            None => Err(ClusterError::NotFound {
                searched: format!(
                    "{BINDIR_ENV}, PATH, `pg_config --bindir` (for pg_dump, pg_restore and psql)"
                ),
            }),
        }
    }

    fn in_dir(bindir: PathBuf, path_dirs: &[PathBuf]) -> Result<PgBinaries, ClusterError> {
        let client = |tool: &'static str| -> Result<PathBuf, ClusterError> {
            let beside = bindir.join(tool);
            if is_executable(&beside) {
                return Ok(beside);
            }
            path_dirs
                .iter()
                .map(|d| d.join(tool))
                .find(|p| is_executable(p))
                .ok_or_else(|| ClusterError::ClientToolMissing {
                    tool,
                    bindir: bindir.clone(),
                })
        };
        Ok(PgBinaries {
            initdb: bindir.join("initdb"),
            pg_ctl: bindir.join("pg_ctl"),
            postgres: bindir.join("postgres"),
            pg_dump: client("pg_dump")?,
            pg_restore: client("pg_restore")?,
            psql: client("psql")?,
            bindir,
        })
    }
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn has_server_tools(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|t| is_executable(&dir.join(t)))
}

/// `/usr/local/bin/initdb` is often a symlink into the real bindir, which also
/// holds the matching client tools; prefer that directory.
fn resolve_bindir(dir: &Path) -> PathBuf {
    fs::canonicalize(dir.join("initdb"))
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|real| has_server_tools(real))
        .unwrap_or_else(|| dir.to_path_buf())
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(dir.trim()))
}

fn highest_versioned_bindir() -> Option<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    let mut scan = |parent: &Path, prefix: &str| {
        let Ok(entries) = fs::read_dir(parent) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(version) = name.strip_prefix(prefix) else {
                continue;
            };
            let key: Vec<u32> = version.split('.').map(|p| p.parse().unwrap_or(0)).collect();
            let bin = entry.path().join("bin");
            if has_server_tools(&bin) {
                found.push((key, bin));
            }
        }
    };
    scan(Path::new("/usr/lib/postgresql"), "");
    scan(Path::new("/usr"), "pgsql-");
    found
        .into_iter()
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, p)| p)
}

/// The uid/gid to run the server as, when we are root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

fn run_as() -> Result<Option<RunAs>, ClusterError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    // SAFETY: getpwnam is given a NUL-terminated name; the returned record is only
    // read immediately, before any other call that could overwrite it.
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if pw.is_null() {
        return Err(ClusterError::NoPostgresUser);
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some(RunAs { uid, gid }))
}

fn chown(path: &Path, who: RunAs) -> Result<(), ClusterError> {
    std::os::unix::fs::chown(path, Some(who.uid), Some(who.gid)).map_err(io_err(format!(
        "handing {} to the postgres user",
        path.display()
    )))
}

fn command_as(program: &Path, who: Option<RunAs>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    // The server tools refuse to run from a directory they cannot read.
    cmd.current_dir(cwd).stdin(Stdio::null());
    if let Some(who) = who {
        // std drops supplementary groups when changing uid from root.
        cmd.uid(who.uid).gid(who.gid);
        cmd.env("USER", SUPERUSER).env("LOGNAME", SUPERUSER);
    }
    cmd
}

/// A running throwaway cluster. Dropping it stops the server and deletes its files.
#[derive(Debug)]
pub struct TempCluster {
    root: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    pid: u32,
    postmaster: Option<Child>,
    reaper: Option<Child>,
}

impl TempCluster {
    /// `initdb` into a new temporary directory and start a postmaster listening on
    /// a free 127.0.0.1 port (and a socket inside that directory). Returns once the
    /// server accepts connections.
    pub fn start(bins: &PgBinaries) -> Result<TempCluster, ClusterError> {
        let started = Instant::now();
        let who = run_as()?;
        let root = tempfile::Builder::new()
            .prefix("pgshepherd-cluster-")
            .tempdir()
            .map_err(io_err(
                "creating a temporary directory for the throwaway cluster",
            ))?
            .keep();
        // From here on the directory is ours to delete, including on every error path.
        let mut cluster = TempCluster {
            data_dir: root.join("data"),
            socket_dir: root.join("socket"),
            log_file: root.join("postgres.log"),
            root,
            port: 0,
            pid: 0,
            postmaster: None,
            reaper: None,
        };
        cluster.init(bins, who)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match cluster.launch(bins, who) {
                Ok(()) => break,
                Err(Launch::PortTaken) if attempt < PORT_ATTEMPTS => continue,
                Err(Launch::PortTaken) => {
                    return Err(ClusterError::Start {
                        log_file: cluster.log_file.clone(),
                        log_tail: format!(
                            "no free port after {PORT_ATTEMPTS} attempts: {}",
                            cluster.log_tail()
                        ),
                    });
                }
                Err(Launch::Failed(e)) => return Err(e),
            }
        }
        cluster.reaper = spawn_reaper(cluster.pid, &cluster.root);
        tracing::info!(
            port = cluster.port,
            pid = cluster.pid,
            data_dir = %cluster.data_dir.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "started throwaway PostgreSQL cluster"
        );
        Ok(cluster)
    }

    fn init(&mut self, bins: &PgBinaries, who: Option<RunAs>) -> Result<(), ClusterError> {
        fs::create_dir(&self.socket_dir)
            .map_err(io_err(format!("creating {}", self.socket_dir.display())))?;
        // Trust authentication: keep other local users away from the socket.
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("restricting {}", self.root.display())))?;
        if let Some(who) = who {
            chown(&self.root, who)?;
            chown(&self.socket_dir, who)?;
        }
        if std::env::var_os(NO_CACHE_ENV).is_none() {
            match pristine_data_dir(bins, who) {
                Ok(template) => match copy_tree(&template, &self.data_dir, who) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        tracing::debug!(error = %e, "copying the cached initdb result failed; running initdb");
                        let _ = fs::remove_dir_all(&self.data_dir);
                    }
                },
                Err(e) => tracing::debug!(error = %e, "no cached initdb result; running initdb"),
            }
        }
        initdb(bins, who, &self.root, &self.data_dir)
    }

    fn launch(&mut self, bins: &PgBinaries, who: Option<RunAs>) -> Result<(), Launch> {
        self.port =
            free_port().map_err(|e| Launch::Failed(io_err("finding a free loopback port")(e)))?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(|e| {
                Launch::Failed(io_err(format!("opening {}", self.log_file.display()))(e))
            })?;
        let log_len = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log
            .try_clone()
            .map_err(|e| Launch::Failed(io_err("duplicating the log file handle")(e)))?;
        let mut cmd = command_as(&bins.postgres, who, &self.root);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(&self.socket_dir)
            // Throwaway data: durability buys nothing and costs seconds per test.
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args([
                "-c",
                "max_connections=200",
                "-c",
                "log_min_messages=warning",
            ])
            .stdout(log)
            .stderr(log_err)
            // Our own process group: a Ctrl-C meant for the test runner must not
            // race the orderly stop in Drop (or the reaper).
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| {
            Launch::Failed(io_err(format!("starting {}", bins.postgres.display()))(e))
        })?;
        self.pid = child.id();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(_status)) = child.try_wait() {
                let new_log = self.log_since(log_len);
                if new_log.contains("could not bind") || new_log.contains("Address already in use")
                {
                    return Err(Launch::PortTaken);
                }
                return Err(Launch::Failed(ClusterError::Start {
                    log_file: self.log_file.clone(),
                    log_tail: tail(&new_log, 20),
                }));
            }
            if self.postmaster_ready()
                && TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok()
            {
                self.postmaster = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Launch::Failed(ClusterError::Start {
                    log_file: self.log_file.clone(),
                    log_tail: format!(
                        "not ready after {}s: {}",
                        START_TIMEOUT.as_secs(),
                        tail(&self.log_since(log_len), 20)
                    ),
                }));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The 8th line of postmaster.pid is the postmaster's status; "ready" means it
    /// accepts connections (PostgreSQL 10+).
    fn postmaster_ready(&self) -> bool {
        fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .map(|s| s.lines().nth(7).map(str::trim) == Some("ready"))
            .unwrap_or(false)
    }

    fn log_since(&self, offset: u64) -> String {
        let mut buf = String::new();
        if let Ok(mut f) = fs::File::open(&self.log_file) {
            let _ = f.seek(SeekFrom::Start(offset));
            let _ = f.read_to_string(&mut buf);
        }
        buf
    }

    /// The last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log_since(0), 20)
    }

    /// Connection string for `dbname` as the superuser over loopback TCP.
    pub fn dsn(&self, dbname: &str) -> Dsn {
        let quoted = dbname.replace('\\', "\\\\").replace('\'', "\\'");
        format!(
            "host=127.0.0.1 port={} user={SUPERUSER} dbname='{quoted}'",
            self.port
        )
        .parse()
        .expect("a key-value connection string built from a port and a quoted name parses")
    }

    /// `postgres://postgres@127.0.0.1:PORT/dbname`.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@127.0.0.1:{}/{}",
            self.port,
            percent_encode(dbname)
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Stop the server (immediate shutdown: the data is thrown away anyway) and
    /// delete the cluster directory.
    pub fn stop(mut self) -> Result<(), ClusterError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), ClusterError> {
        if let Some(mut child) = self.postmaster.take() {
            // SAFETY: kill with a pid we spawned and still own (not yet reaped).
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGQUIT) };
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        let removed = if self.root.exists() {
            fs::remove_dir_all(&self.root)
                .map_err(io_err(format!("deleting {}", self.root.display())))
        } else {
            Ok(())
        };
        if let Some(mut reaper) = self.reaper.take() {
            let _ = reaper.kill();
            let _ = reaper.wait();
        }
        if removed.is_ok() {
            tracing::debug!(port = self.port, "stopped throwaway PostgreSQL cluster");
        }
        removed
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "could not clean up the throwaway PostgreSQL cluster");
        }
    }
}

/// Set to skip the cached initdb result and run initdb for every cluster.
pub const NO_CACHE_ENV: &str = "PGSHEPHERD_NO_INITDB_CACHE";

const INITDB_ARGS: [&str; 8] = [
    "-A",
    "trust",
    "-U",
    SUPERUSER,
    "-E",
    "UTF8",
    "--locale=C",
    "--no-sync",
];

fn initdb(
    bins: &PgBinaries,
    who: Option<RunAs>,
    cwd: &Path,
    data_dir: &Path,
) -> Result<(), ClusterError> {
    let out = command_as(&bins.initdb, who, cwd)
        .arg("-D")
        .arg(data_dir)
        .args(INITDB_ARGS)
        .env_remove("PGDATA")
        .output()
        .map_err(io_err(format!("running {}", bins.initdb.display())))?;
    if !out.status.success() {
        let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        return Err(ClusterError::Initdb {
            data_dir: data_dir.to_path_buf(),
            status: out.status,
            output: tail(&output, 20),
        });
    }
    Ok(())
}

/// A pristine initdb result, made once per PostgreSQL build and copied for each
/// cluster: copying 40 MB takes about 0.1 s where initdb takes 0.7-2 s of CPU, which
/// adds up when every test process (nextest) starts its own cluster. It lives in
/// `$TMPDIR/pgshepherd-initdb-<uid>-<key>` (the key covers the server binary and the
/// initdb arguments), is only ever published complete (built aside, then renamed
/// into place), and may be deleted at any time; `PGSHEPHERD_NO_INITDB_CACHE=1`
/// skips it.
fn pristine_data_dir(bins: &PgBinaries, who: Option<RunAs>) -> Result<PathBuf, ClusterError> {
    use sha2::{Digest, Sha256};
    let meta = fs::metadata(&bins.postgres)
        .map_err(io_err(format!("reading {}", bins.postgres.display())))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    let mut key = Sha256::new();
    key.update(bins.postgres.as_os_str().as_encoded_bytes());
    key.update(
        format!(
            "{}:{}:{:?}:{}",
            meta.len(),
            modified.as_nanos(),
            INITDB_ARGS,
            who.is_some()
        )
        .as_bytes(),
    );
    let key = hex::encode(&key.finalize()[..8]);
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let cache = std::env::temp_dir().join(format!("pgshepherd-initdb-{uid}-{key}"));
    let data = cache.join("data");
    if data.join("PG_VERSION").is_file() {
        return Ok(data);
    }
    let building = tempfile::Builder::new()
        .prefix(&format!("pgshepherd-initdb-{uid}-{key}-building-"))
        .tempdir()
        .map_err(io_err("creating a directory for the initdb cache"))?;
    if let Some(who) = who {
        chown(building.path(), who)?;
    }
    initdb(bins, who, building.path(), &building.path().join("data"))?;
    let built = building.keep();
    if let Err(e) = fs::rename(&built, &cache) {
        // Another process published first (the target exists and is not empty): use theirs.
        let _ = fs::remove_dir_all(&built);
        if !data.join("PG_VERSION").is_file() {
            return Err(io_err(format!(
                "publishing the initdb cache {}",
                cache.display()
            ))(e));
        }
    }
    Ok(data)
}

/// Copy a data directory, keeping modes (PostgreSQL insists on 0700/0750) and
/// handing everything to the server's user.
fn copy_tree(from: &Path, to: &Path, who: Option<RunAs>) -> Result<(), ClusterError> {
    let ctx = || format!("copying {} to {}", from.display(), to.display());
    fs::create_dir(to).map_err(io_err(ctx()))?;
    let mode = fs::metadata(from).map_err(io_err(ctx()))?.permissions();
    fs::set_permissions(to, mode).map_err(io_err(ctx()))?;
    if let Some(who) = who {
        chown(to, who)?;
    }
    for entry in fs::read_dir(from).map_err(io_err(ctx()))? {
        let entry = entry.map_err(io_err(ctx()))?;
        let kind = entry.file_type().map_err(io_err(ctx()))?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target, who)?;
        } else if kind.is_file() {
            fs::copy(entry.path(), &target).map_err(io_err(ctx()))?;
            if let Some(who) = who {
                chown(&target, who)?;
            }
        } else {
            return Err(io_err(ctx())(io::Error::other(format!(
                "{} is neither a file nor a directory",
                entry.path().display()
            ))));
        }
    }
    Ok(())
}

enum Launch {
    PortTaken,
    Failed(ClusterError),
}

fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A detached shell that outlives us only to clean up after us: it polls our pid,
/// and once we are gone without having stopped the cluster (a clean Drop kills the
/// reaper after its own cleanup), sends the postmaster SIGQUIT (immediate shutdown) and deletes the
/// directory. It runs in its own session so signals aimed at the test runner's
/// process group do not take it down with us. Best effort: failure to spawn only
/// costs the leak protection, so it is logged, not returned.
fn spawn_reaper(postmaster_pid: u32, root: &Path) -> Option<Child> {
    const SCRIPT: &str = r#"
parent=$1; pm=$2; root=$3
while kill -0 "$parent" 2>/dev/null; do sleep 1; done
kill -QUIT "$pm" 2>/dev/null
i=0
while kill -0 "$pm" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1 2>/dev/null || sleep 1; i=$((i+1)); done
kill -KILL "$pm" 2>/dev/null
rm -rf "$root"
"#;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(SCRIPT)
        .arg("pgshepherd-cluster-reaper")
        .arg(std::process::id().to_string())
        .arg(postmaster_pid.to_string())
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(child) => Some(child),
        Err(e) => {
            tracing::warn!(error = %e, "could not start the cleanup watcher; a killed process may leak its throwaway cluster");
            None
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    #[test]
    fn urls_are_percent_encoded_and_logs_trimmed() {
        assert_eq!(percent_encode("app db/1"), "app%20db%2F1");
        assert_eq!(tail("a\n\nb\nc\n", 2), "b\nc");
    }

    #[test]
    fn not_found_says_how_to_install() {
        let e = ClusterError::NotFound {
            searched: "PATH".into(),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("apt-get install postgresql") && msg.contains("PATH"),
            "{msg}"
        );
    }

    fn alive(pid: u32) -> bool {
        // SAFETY: signal 0 only checks for existence.
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }

    #[tokio::test]
    async fn starts_fast_serves_connections_and_cleans_up_on_stop() {
        let bins = PgBinaries::locate().unwrap();
        let started = Instant::now();
        let cluster = TempCluster::start(&bins).unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "start took {took:?}");
        eprintln!("throwaway cluster started in {took:?}");

        let client = cluster
            .dsn("postgres")
            .connect("cluster-test", &[])
            .await
            .unwrap();
        let fsync: String = client.query_one("SHOW fsync", &[]).await.unwrap().get(0);
        assert_eq!(fsync, "off");
        let user: String = client
            .query_one("SELECT current_user", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(user, SUPERUSER);
        assert_eq!(
            cluster.url("db"),
            format!("postgres://postgres@127.0.0.1:{}/db", cluster.port())
        );
        assert!(cluster.data_dir().join("PG_VERSION").exists());
        drop(client);

        let (pid, root) = (cluster.pid(), cluster.root.clone());
        assert!(alive(pid));
        cluster.stop().unwrap();
        assert!(!alive(pid), "the postmaster is gone");
        assert!(!root.exists(), "the cluster directory is gone");
    }

    /// A process that dies without running Drop (SIGKILL) must not leak its cluster:
    /// re-run this test binary as that process, kill it, and watch the reaper work.
    #[test]
    fn a_killed_owner_does_not_leak_its_cluster() {
        if std::env::var_os("PGSHEPHERD_CLUSTER_TEST_CHILD").is_some() {
            let cluster = TempCluster::start(&PgBinaries::locate().unwrap()).unwrap();
            println!("CLUSTER {} {}", cluster.pid(), cluster.root.display());
            std::thread::sleep(Duration::from_secs(120));
            return;
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "pg::cluster::tests::a_killed_owner_does_not_leak_its_cluster",
                "--nocapture",
            ])
            .env("PGSHEPHERD_CLUSTER_TEST_CHILD", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = io::BufReader::new(child.stdout.take().unwrap());
        let line = stdout
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("CLUSTER "))
            .expect("the child reports its cluster");
        let mut parts = line.split_whitespace().skip(1);
        let pid: u32 = parts.next().unwrap().parse().unwrap();
        let root = PathBuf::from(parts.next().unwrap());
        assert!(alive(pid) && root.exists());

        child.kill().unwrap();
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while (alive(pid) || root.exists()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!alive(pid), "the reaper stopped the orphaned postmaster");
        assert!(!root.exists(), "the reaper deleted {}", root.display());
    }
}
