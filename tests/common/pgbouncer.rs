//! A real PgBouncer in front of the test cluster, in the pool mode a test asks
//! for: started on a free 127.0.0.1 port with a generated ini in a temporary
//! directory, killed on drop.
//!
//! ```ignore
//! let bouncer = PgBouncer::start(PoolMode::Transaction);
//! let url = bouncer.route(&db.url); // the same database, through the pooler
//! ```
//!
//! PgBouncer refuses to run as root, so when the tests run as root it runs as
//! the `postgres` user, like the cluster itself (see `pgshepherd::pg::cluster`).
//! Clients are trusted (the cluster trusts loopback too: there is no secret to
//! keep), and `ignore_startup_parameters = options`, which pgshepherd needs
//! (it sends startup `options`; docs/operations.md). A missing `pgbouncer`
//! fails the test with how to install it: .ci/run installs it.
#![allow(dead_code)]

use std::fs;
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{cluster, free_port};

/// How many times a start is tried with a new port (another process may bind
/// the free port between our probe and PgBouncer's bind).
const PORT_ATTEMPTS: u32 = 5;
/// How many times a starting PgBouncer's port is tried before giving up, and
/// the pause between two tries: about 30 s in all, a hang detector.
const READY_ATTEMPTS: u32 = 600;
const READY_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PoolMode {
    Session,
    Transaction,
    Statement,
}

impl PoolMode {
    fn name(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

pub struct PgBouncer {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    /// A PgBouncer in `mode` forwarding every database to the test cluster,
    /// accepting connections once this returns.
    pub fn start(mode: PoolMode) -> PgBouncer {
        let binary = binary();
        let upstream = cluster().port();
        let dir = tempfile::Builder::new()
            .prefix("pgshepherd-pgbouncer-")
            .tempdir()
            .expect("creating a directory for pgbouncer");
        let who = run_as();
        if let Some((uid, gid)) = who {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("handing pgbouncer's directory to the postgres user");
        }
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let ini = write_config(dir.path(), mode, port, upstream, who);
            let mut cmd = Command::new(&binary);
            cmd.arg(&ini)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some((uid, gid)) = who {
                cmd.uid(uid).gid(gid);
            }
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            if wait_ready(&mut child, port) {
                return PgBouncer { port, child, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
            let log = fs::read_to_string(dir.path().join("pgbouncer.log")).unwrap_or_default();
            // Only a lost race for the port is worth another try.
            if !log.contains("Address already in use") {
                panic!("pgbouncer did not start; its log:\n{log}");
            }
        }
        panic!("pgbouncer found no free port in {PORT_ATTEMPTS} attempts");
    }

    /// `url` (a `postgres://user@127.0.0.1:PORT/db` URL of the test cluster)
    /// through this PgBouncer.
    pub fn route(&self, url: &str) -> String {
        url.replace(
            &format!("127.0.0.1:{}/", cluster().port()),
            &format!("127.0.0.1:{}/", self.port),
        )
    }

    /// PgBouncer's log so far, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // Its server connections close with it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `pgbouncer` binary: on PATH, or where Debian puts it (/usr/sbin, often
/// not on a user's PATH).
fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("pgbouncer"));
    on_path
        .chain([
            PathBuf::from("/usr/sbin/pgbouncer"),
            PathBuf::from("/usr/bin/pgbouncer"),
        ])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "these tests need PgBouncer and found no `pgbouncer` on PATH, in /usr/sbin or /usr/bin; \
                 install it (Debian/Ubuntu: `apt-get install pgbouncer`; .ci/run does)"
            )
        })
}

fn write_config(
    dir: &Path,
    mode: PoolMode,
    port: u16,
    upstream: u16,
    who: Option<(u32, u32)>,
) -> PathBuf {
    let users = dir.join("users.txt");
    fs::write(&users, "\"postgres\" \"\"\n").expect("writing pgbouncer's auth file");
    let ini = dir.join("pgbouncer.ini");
    let text = format!(
        "[databases]\n\
         * = host=127.0.0.1 port={upstream}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {users}\n\
         pool_mode = {mode}\n\
         ignore_startup_parameters = options\n\
         logfile = {log}\n\
         pidfile = {pid}\n",
        users = users.display(),
        mode = mode.name(),
        log = dir.join("pgbouncer.log").display(),
        pid = dir.join("pgbouncer.pid").display(),
    );
    fs::write(&ini, text).expect("writing pgbouncer.ini");
    if let Some((uid, gid)) = who {
        for f in [&users, &ini] {
            std::os::unix::fs::chown(f, Some(uid), Some(gid)).expect("chown pgbouncer's files");
        }
    }
    ini
}

/// Whether PgBouncer accepts connections on `port` before it exits or the
/// attempts run out.
fn wait_ready(child: &mut Child, port: u16) -> bool {
    for _ in 0..READY_ATTEMPTS {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return true;
        }
        std::thread::sleep(READY_PAUSE);
    }
    false
}

/// The `postgres` user's uid and gid when running as root (PgBouncer refuses
/// root), else `None`.
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    // SAFETY: a NUL-terminated name; the record is read at once, before any
    // other call could overwrite it.
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root and PgBouncer refuses root, but there is no `postgres` user to run it as"
    );
    // SAFETY: pw is non-null and points to a valid passwd record.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}
