//! The shipped unit file, `systemd/pgshepherd.service`: it says what the daemon
//! relies on (notify readiness, a watchdog, a stop timeout longer than the daemon's
//! own shutdown deadline), and `systemd-analyze verify` accepts it.
//!
//! `systemd-analyze` (Debian's `systemd` package; `.ci/run` installs it) is
//! required: without it the verification tests fail and say so, rather than
//! pass having checked nothing. It works as root in a container without
//! systemd as PID 1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/pgshepherd.service")
}

fn unit_text() -> String {
    std::fs::read_to_string(unit_path()).expect("systemd/pgshepherd.service is shipped")
}

/// `section -> key -> values` (a key may repeat), comments and blank lines skipped.
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "line {}: no continuation lines, keep the unit greppable",
            n + 1
        );
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_string());
            out.entry(name.to_string()).or_default();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not KEY=value: {line}", n + 1));
        let section = section
            .as_ref()
            .unwrap_or_else(|| panic!("line {}: a key outside any section", n + 1));
        out.get_mut(section)
            .unwrap()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    out
}

/// `60`, `60s`, `1min`, `30s` (the forms this unit uses).
fn systemd_seconds(v: &str) -> Duration {
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = num.parse().unwrap_or_else(|_| panic!("a time span: {v}"));
    match unit {
        "" | "s" | "sec" => Duration::from_secs(n),
        "min" | "m" => Duration::from_secs(n * 60),
        other => panic!("unexpected unit {other:?} in {v}"),
    }
}

#[test]
fn the_unit_declares_what_the_daemon_relies_on() {
    let text = unit_text();
    let unit = parse_unit(&text);
    let service = &unit["Service"];
    let one = |key: &str| -> &str {
        let values = service
            .get(key)
            .unwrap_or_else(|| panic!("[Service] has no {key}="));
        assert_eq!(values.len(), 1, "{key}= is set more than once");
        &values[0]
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("User"), "pgshepherd");
    assert_eq!(one("Group"), "pgshepherd");
    assert!(
        !service.contains_key("DynamicUser"),
        "backups must keep a stable owner"
    );
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert!(
        one("ExecStart").ends_with(" daemon --config /etc/pgshepherd/config.yaml"),
        "{}",
        one("ExecStart")
    );
    // The daemon handles SIGHUP (re-reads its TLS certificate); without a
    // handler SIGHUP would end it.
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert!(
        one("EnvironmentFile").starts_with('-'),
        "the env file is optional"
    );
    assert_eq!(one("StateDirectory"), "pgshepherd");
    assert_eq!(one("CapabilityBoundingSet"), "");

    // The watchdog pings every WatchdogSec/2; 30 s leaves room for a slow poll.
    let watchdog = systemd_seconds(one("WatchdogSec"));
    assert!(watchdog >= Duration::from_secs(10), "{watchdog:?}");

    // systemd must not SIGKILL the daemon while its runs still checkpoint.
    let stop = systemd_seconds(one("TimeoutStopSec"));
    let shutdown = pgshepherd::config::DaemonSettings::default().shutdown_timeout;
    assert!(
        stop > shutdown,
        "TimeoutStopSec {stop:?} must exceed the default shutdown_timeout {shutdown:?}"
    );

    for key in [
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "NoNewPrivileges",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictAddressFamilies",
        "RestrictNamespaces",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "SystemCallArchitectures",
        "ReadWritePaths",
    ] {
        one(key);
    }
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("RestrictAddressFamilies"), "AF_UNIX AF_INET AF_INET6");
    assert!(unit.contains_key("Install"));
}

/// What `systemd-analyze verify` said about a copy of the unit.
struct Verdict {
    success: bool,
    lines: Vec<String>,
}

fn verify(unit: &Path) -> Verdict {
    let out = match Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--generators=no"])
        .arg(unit)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "systemd-analyze is not on PATH, so the unit cannot be verified: install Debian's \
             `systemd` package (.ci/run does)"
        ),
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Verdict {
        success: out.status.success(),
        lines: text.lines().map(str::to_string).collect(),
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    // Verify a copy whose ExecStart names the binary just built (the installed path
    // does not exist here); everything else is the shipped file, byte for byte.
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_pgshepherd");
    let text: String = unit_text()
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                format!("ExecStart={bin} daemon --config /etc/pgshepherd/config.yaml\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let copy = dir.path().join("pgshepherd.service");
    std::fs::write(&copy, text).unwrap();

    let verdict = verify(&copy);
    let unit_name = copy.display().to_string();

    // Problems systemd found in the file itself are "PATH:LINE: message" (unknown
    // keys and unparsable values are only warnings, with exit status 0, so they are
    // looked for, not inferred from the status) or "pgshepherd.service: message".
    let about_unit: Vec<&String> = verdict
        .lines
        .iter()
        .filter(|l| l.starts_with(&format!("{unit_name}:")) || l.starts_with("pgshepherd.service:"))
        .collect();
    // The pgshepherd user does not exist on a build machine; some systemd versions
    // say so. That is an installation step (docs/operations.md), not a unit error.
    let tolerated = |l: &str| {
        let l = l.to_ascii_lowercase();
        (l.contains("user") || l.contains("group"))
            && (l.contains("resolve") || l.contains("not found") || l.contains("unknown"))
    };
    let errors: Vec<&&String> = about_unit.iter().filter(|l| !tolerated(l)).collect();
    assert!(
        errors.is_empty(),
        "systemd-analyze verify found problems in the unit:\n{}",
        verdict.lines.join("\n")
    );

    // A failure that is only about the missing pgshepherd user is tolerated;
    // any other failure fails the test, even one caused by the environment (a
    // verifier that cannot run has verified nothing).
    assert!(
        verdict.success || !about_unit.is_empty() && about_unit.iter().all(|l| tolerated(l)),
        "systemd-analyze verify failed:\n{}",
        verdict.lines.join("\n")
    );
    for l in &verdict.lines {
        eprintln!("systemd-analyze: {l}");
    }
}

#[test]
fn a_broken_copy_is_caught_so_the_check_above_means_something() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("pgshepherd.service");
    let text = unit_text().replace("WatchdogSec=30s", "WatchdogSec=thirty\nWatchdgoSec=30s");
    std::fs::write(&copy, text).unwrap();
    let verdict = verify(&copy);
    let unit_name = copy.display().to_string();
    let complaints = verdict
        .lines
        .iter()
        .filter(|l| l.starts_with(&format!("{unit_name}:")))
        .count();
    assert!(
        complaints >= 2,
        "expected the bad value and the misspelt key to be reported:\n{}",
        verdict.lines.join("\n")
    );
}
