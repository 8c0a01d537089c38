//! `sd_notify` without libsystemd: readiness, status, watchdog and stopping
//! messages for a `Type=notify` unit (see `systemd/pgshepherd.service`).
//!
//! The protocol is one datagram of newline-separated `KEY=value` assignments sent
//! to the socket named by `$NOTIFY_SOCKET`: a filesystem path, or `@name` for the
//! Linux abstract namespace. Outside systemd the variable is unset and every
//! function here is a no-op that returns `false`, so callers never need to ask
//! whether they run under systemd.
//!
//! Invariants:
//! - Nothing here blocks: the socket is non-blocking, and a message the manager
//!   cannot take right now is dropped (`false`) rather than stalling a runtime
//!   thread. A dropped watchdog ping is harmless (the next one comes at half the
//!   timeout); a dropped `READY=1` shows up as a start timeout, loudly.
//! - The watchdog pings only while the daemon reports itself healthy. A wedged
//!   scheduler must stop the pings so that systemd restarts the process and another
//!   replica (or the restarted one) takes its runs over; pinging from a timer alone
//!   would keep a dead daemon "alive" forever.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Send `state` (e.g. `"READY=1"`, or several assignments separated by `\n`) to
/// `$NOTIFY_SOCKET`. `false` when the variable is unset or the message could not be
/// sent.
pub fn notify(state: &str) -> bool {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Some(socket) = socket.to_str() else {
        tracing::warn!("NOTIFY_SOCKET is not valid UTF-8; not notifying systemd");
        return false;
    };
    match notify_to(socket, state) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(socket, error = %e, "sd_notify failed");
            false
        }
    }
}

/// Startup is complete: the state schema is migrated and the API listens.
pub fn ready() -> bool {
    notify("READY=1\nSTATUS=running")
}

/// Shutdown has begun (SIGTERM): systemd shows "deactivating", stops enforcing the
/// watchdog, and `TimeoutStopSec` bounds what is left.
pub fn stopping() -> bool {
    notify("STOPPING=1\nSTATUS=stopping: checkpointing in-flight runs")
}

/// Free-form one-line status shown by `systemctl status`. Newlines would start new
/// assignments, so they become spaces.
pub fn status(text: &str) -> bool {
    notify(&format!("STATUS={}", text.replace(['\n', '\r'], " ")))
}

/// Ask for more time to start or stop than `TimeoutStartSec` / `TimeoutStopSec`
/// allow, counted from now (e.g. while the state schema migration waits for another
/// replica's advisory lock).
pub fn extend_timeout(by: Duration) -> bool {
    notify(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()))
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, the convention of
/// `sd_watchdog_enabled`. `None` when the unit has no `WatchdogSec=`, or when
/// `$WATCHDOG_PID` names another process (we are a child that inherited the
/// environment, e.g. a pg_dump spawned by the daemon — not that these read it).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok()? != own_pid
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

/// Ping the watchdog every [`watchdog_interval`] while `health()` is true. `None`
/// (and nothing spawned) when the watchdog is not enabled. Must be called inside a
/// tokio runtime; the task runs until aborted or the runtime shuts down.
pub fn spawn_watchdog<F>(health: F) -> Option<tokio::task::JoinHandle<()>>
where
    F: Fn() -> bool + Send + 'static,
{
    let interval = watchdog_interval()?;
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        "systemd watchdog enabled"
    );
    Some(tokio::spawn(watchdog_loop(interval, health, notify)))
}

async fn watchdog_loop<F, S>(interval: Duration, health: F, send: S)
where
    F: Fn() -> bool,
    S: Fn(&str) -> bool,
{
    let mut tick = tokio::time::interval(interval);
    // After a stall, one late ping is enough; a burst would hide how long it was.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_healthy = true;
    loop {
        tick.tick().await;
        let healthy = health();
        if healthy {
            send("WATCHDOG=1");
        } else if was_healthy {
            tracing::error!(
                "daemon unhealthy: withholding the systemd watchdog ping so the service is restarted"
            );
        }
        if healthy && !was_healthy {
            tracing::warn!("daemon healthy again: resuming systemd watchdog pings");
        }
        was_healthy = healthy;
    }
}

/// Send one datagram to `socket` (`/path` or `@abstract`).
fn notify_to(socket: &str, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    let sent = if let Some(name) = socket.strip_prefix('@') {
        send_abstract(&sock, name, state.as_bytes())?
    } else if socket.starts_with('/') {
        sock.send_to(state.as_bytes(), socket)?
    } else {
        // e.g. `vsock:` addresses (systemd 254+) for VMs: not something a daemon on
        // a host meets.
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("unsupported NOTIFY_SOCKET address {socket:?}"),
        ));
    };
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to NOTIFY_SOCKET",
        ));
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn send_abstract(sock: &UnixDatagram, name: &str, msg: &[u8]) -> io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    sock.send_to_addr(msg, &addr)
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_sock: &UnixDatagram, _name: &str, _msg: &[u8]) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract socket addresses exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Environment variables are process-wide and tests run on parallel threads:
    /// every test here that touches them holds this lock.
    static ENV: Mutex<()> = Mutex::new(());

    fn receiver() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (dir, path, sock)
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// Runs `f` with `NOTIFY_SOCKET` set to `value` (or unset), restoring it after.
    fn with_notify_socket<T>(value: Option<&str>, f: impl FnOnce() -> T) -> T {
        let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let before = std::env::var_os("NOTIFY_SOCKET");
        // SAFETY: every test that reads or writes NOTIFY_SOCKET holds `ENV`.
        unsafe {
            match value {
                Some(v) => std::env::set_var("NOTIFY_SOCKET", v),
                None => std::env::remove_var("NOTIFY_SOCKET"),
            }
        }
        let out = f();
        // SAFETY: as above.
        unsafe {
            match before {
                Some(v) => std::env::set_var("NOTIFY_SOCKET", v),
                None => std::env::remove_var("NOTIFY_SOCKET"),
            }
        }
        out
    }

    #[test]
    fn without_notify_socket_every_message_is_a_noop() {
        with_notify_socket(None, || {
            assert!(!notify("READY=1"));
            assert!(!ready());
            assert!(!stopping());
            assert!(!status("x"));
        });
    }

    #[test]
    fn ready_status_and_stopping_reach_a_path_socket() {
        let (_dir, path, sock) = receiver();
        with_notify_socket(Some(path.to_str().unwrap()), || {
            assert!(ready());
            assert_eq!(recv(&sock), "READY=1\nSTATUS=running");
            assert!(status("3 runs\nactive"));
            assert_eq!(recv(&sock), "STATUS=3 runs active");
            assert!(extend_timeout(Duration::from_secs(2)));
            assert_eq!(recv(&sock), "EXTEND_TIMEOUT_USEC=2000000");
            assert!(stopping());
            assert!(recv(&sock).starts_with("STOPPING=1\n"));
        });
    }

    #[test]
    fn a_missing_socket_is_reported_as_false_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("nobody-listens.sock");
        with_notify_socket(Some(gone.to_str().unwrap()), || {
            assert!(!ready());
        });
        assert!(notify_to("relative/path", "READY=1").is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_namespace_sockets_are_addressed_with_an_at_sign() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("pgshepherd-test-{}-{}", std::process::id(), line!());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        notify_to(&format!("@{name}"), "WATCHDOG=1").unwrap();
        assert_eq!(recv(&sock), "WATCHDOG=1");
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_and_only_for_our_pid() {
        let me = 4242;
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, me),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("4242"), me),
            Some(Duration::from_secs(15))
        );
        // Inherited by a child: not ours to ping.
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("1"), me),
            None
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("x"), me),
            None
        );
        assert_eq!(watchdog_interval_from(None, None, me), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, me), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, me), None);
    }

    #[test]
    fn watchdog_interval_reads_the_environment() {
        let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let before = (
            std::env::var_os("WATCHDOG_USEC"),
            std::env::var_os("WATCHDOG_PID"),
        );
        // SAFETY: every test that reads or writes the watchdog variables holds `ENV`.
        unsafe {
            std::env::set_var("WATCHDOG_USEC", "2000000");
            std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        }
        let with_ours = watchdog_interval();
        // SAFETY: as above.
        unsafe { std::env::set_var("WATCHDOG_PID", "1") };
        let with_other = watchdog_interval();
        // SAFETY: as above.
        unsafe {
            for (k, v) in [("WATCHDOG_USEC", before.0), ("WATCHDOG_PID", before.1)] {
                match v {
                    Some(v) => std::env::set_var(k, v),
                    None => std::env::remove_var(k),
                }
            }
        }
        assert_eq!(with_ours, Some(Duration::from_secs(1)));
        assert_eq!(with_other, None);
    }

    #[tokio::test]
    async fn the_watchdog_pings_only_while_healthy() {
        let (_dir, path, sock) = receiver();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let h = healthy.clone();
        let target = path.to_str().unwrap().to_string();
        let task = tokio::spawn(watchdog_loop(
            Duration::from_millis(20),
            move || h.load(Ordering::SeqCst),
            move |state| notify_to(&target, state).is_ok(),
        ));
        let sock = Arc::new(sock);
        let rx = sock.clone();
        let first = tokio::task::spawn_blocking(move || recv(&rx))
            .await
            .unwrap();
        assert_eq!(first, "WATCHDOG=1");

        // Wedged: the pings stop. Drain what was sent before the flag flipped.
        healthy.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
        let rx = sock.clone();
        let silent = tokio::task::spawn_blocking(move || {
            rx.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 64];
            while rx.recv(&mut buf).is_ok() {}
            rx.set_nonblocking(false).unwrap();
            // 300 ms is about 15 intervals.
            rx.recv(&mut buf).is_err()
        });
        assert!(silent.await.unwrap(), "an unhealthy daemon must not ping");

        // Healthy again: the pings resume.
        healthy.store(true, Ordering::SeqCst);
        let rx = sock.clone();
        let again = tokio::task::spawn_blocking(move || recv(&rx))
            .await
            .unwrap();
        assert_eq!(again, "WATCHDOG=1");
        task.abort();
    }
}
