//! The daemon serving HTTPS itself (`tls: {cert, key}`): the API over TLS to a
//! client that trusts a private CA (the CLI with `--ca-cert` too), a 400 saying
//! "use https://" for plain HTTP on that port, a new certificate taken on SIGHUP while a run and
//! an event stream go on, a broken pair on SIGHUP refused, and a pair that
//! cannot serve refused when the config is loaded.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use common::certs::{make_ca, sign_server_cert};
use common::daemon::{Api, Env, Https, READER, SUBMITTER, plan_dir, soak_yaml};

/// The names the test certificates are valid for: the daemons listen on
/// 127.0.0.1 and are spoken to by address.
const SAN: &str = "IP:127.0.0.1,DNS:localhost";

/// The DER of the first certificate of the PEM file `crt`.
fn der_of(crt: &Path) -> Vec<u8> {
    let pem = std::fs::read(crt).unwrap();
    CertificateDer::pem_slice_iter(&pem)
        .next()
        .expect("a certificate")
        .unwrap()
        .as_ref()
        .to_vec()
}

/// A new TLS connection to `addr` trusting only `ca`: the end-entity
/// certificate the server presented (DER).
async fn presented_certificate(addr: &str, ca: &Path) -> Vec<u8> {
    presented_certificate_over(TcpStream::connect(addr).await.unwrap(), ca).await
}

/// A TCP connection to `addr` from the loopback address `from` (any of
/// 127.0.0.0/8 works on Linux: a second client address for the tests).
async fn from_address(from: &str, addr: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr.parse().unwrap()).await.unwrap()
}

/// The certificate the daemon presents on `tcp`.
async fn presented_certificate_over(tcp: TcpStream, ca: &Path) -> Vec<u8> {
    try_handshake(tcp, ca)
        .await
        .expect("a TLS handshake with the daemon")
}

/// The certificate the daemon presents on `tcp`, if the handshake completes.
async fn try_handshake(tcp: TcpStream, ca: &Path) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&std::fs::read(ca).unwrap()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .ok()?;
    Some(
        tls.get_ref().1.peer_certificates().expect("a certificate")[0]
            .as_ref()
            .to_vec(),
    )
}

/// Wait until the daemon's log holds `needle`; returns the log.
async fn log_shows(daemon: &common::daemon::Daemon, needle: &str) -> String {
    common::eventually(&format!("{needle:?} in the daemon's log"), || async {
        let log = daemon.log_text();
        log.contains(needle).then_some(log)
    })
    .await
}

fn sighup(daemon: &common::daemon::Daemon) {
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(daemon.pid(), libc::SIGHUP) }, 0);
}

/// Move the pair `from/server.{crt,key}` over `to/server.{crt,key}`, each file
/// replaced at once (as a deploy hook copying to a temporary name then
/// renaming would).
fn install_pair(from: &Path, to: &Path) {
    for f in ["server.crt", "server.key"] {
        std::fs::rename(from.join(f), to.join(f)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_https_and_takes_a_new_certificate_on_sighup_while_a_run_goes_on() {
    let work = common::scratch_dir();
    let dir = work.path();
    let ca = make_ca(dir, "ca");
    let live = dir.join("live");
    std::fs::create_dir_all(&live).unwrap();
    sign_server_cert(&live, &ca, SAN, "pgshepherd daemon first");
    let first = der_of(&live.join("server.crt"));

    let mut env = Env::new(&["main"], "").await;
    let https = Https {
        cert: live.join("server.crt"),
        key: live.join("server.key"),
        ca: ca.clone(),
    };
    env.serve_https(https.clone());
    let db = env.target("main");
    db.prepare_release().await;
    // Healthy means /healthz answered over HTTPS to a client trusting the CA.
    let daemon = env.start("d1").await;
    assert!(
        daemon.url.starts_with("https://127.0.0.1:"),
        "{}",
        daemon.url
    );
    let addr = daemon.url.trim_start_matches("https://").to_string();
    let api = Api::new(&daemon);
    let (status, body) = api.get(READER, "/v1/runs").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(presented_certificate(&addr, &ca).await, first);
    log_shows(&daemon, "serving HTTPS").await;

    // Plain HTTP on the TLS port gets no API answer, only a 400 saying to use
    // https; a client that speaks neither gets a failed handshake.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/v1/runs"))
        .bearer_auth(READER)
        .send()
        .await
        .expect("an answer to plain HTTP");
    assert_eq!(plain.status(), 400);
    let text = plain.text().await.unwrap();
    assert!(text.contains("use https://"), "{text}");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut garbage = TcpStream::connect(&addr).await.unwrap();
        garbage
            .write_all(b"\x00\x01not tls at all\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = garbage.read_to_end(&mut rest).await;
        assert!(!String::from_utf8_lossy(&rest).contains("/v1/runs"));
    }
    log_shows(&daemon, "TLS handshake failed").await;
    // A client that connects and never starts its handshake delays nobody.
    let silent = TcpStream::connect(&addr).await.unwrap();
    let (status, body) = api.get(READER, "/v1/runs").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(presented_certificate(&addr, &ca).await, first);
    drop(silent);
    // One address holding eight silent handshakes gets its ninth connection
    // closed at once; another address is served meanwhile.
    {
        use tokio::io::AsyncReadExt;
        let mut silent = Vec::new();
        for _ in 0..8 {
            silent.push(from_address("127.0.0.1", &addr).await);
        }
        // Accepted in the order they connected (one listening socket's
        // queue): the ninth meets eight handshakes in progress.
        let mut ninth = from_address("127.0.0.1", &addr).await;
        let mut byte = [0u8; 1];
        assert!(matches!(ninth.read(&mut byte).await, Ok(0) | Err(_)));
        log_shows(&daemon, "from this address at their limit").await;
        let other = from_address("127.0.0.2", &addr).await;
        assert_eq!(presented_certificate_over(other, &ca).await, first);
        drop(silent);
        // Once the daemon has seen them go, 127.0.0.1 is served again.
        common::eventually("a handshake from 127.0.0.1 again", || async {
            try_handshake(from_address("127.0.0.1", &addr).await, &ca).await
        })
        .await;
    }

    // A run held in its migration for as long as the rotation takes.
    let (plan, set) = plan_dir(
        &dir.join("plan"),
        "main",
        &[
            (
                "V1__t.sql",
                &format!(
                    "{}; CREATE TABLE t (id int);",
                    common::held_until_released("migrate")
                ),
            ),
            ("V1__t.down.sql", "DROP TABLE t;"),
        ],
        &format!(
            "backup:\n  enabled: false\n{}",
            soak_yaml("1s", "250ms", "SELECT 0", 1)
        ),
    );
    let run = api.submit(SUBMITTER, &plan, &set).await;
    db.wait_held("migrate").await;
    // An event stream opened on a connection made with the first certificate.
    let mut stream = daemon
        .client
        .get(format!("{}/v1/runs/{run}/events", daemon.url))
        .header("accept", "text/event-stream")
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);

    // Rotation: a new certificate (another name, another serial, another key)
    // over the old files, then SIGHUP.
    let next = dir.join("next");
    std::fs::create_dir_all(&next).unwrap();
    sign_server_cert(&next, &ca, SAN, "pgshepherd daemon second");
    install_pair(&next, &live);
    let second = der_of(&live.join("server.crt"));
    assert_ne!(first, second);
    sighup(&daemon);
    common::eventually("new connections presented the new certificate", || async {
        (presented_certificate(&addr, &ca).await == second).then_some(())
    })
    .await;
    log_shows(&daemon, "TLS certificate reloaded").await;

    // The run was never interrupted: released, it finishes in this process.
    db.release("migrate").await;
    let row = env.wait_finished(&run, common::PATIENCE).await;
    assert_eq!(row["outcome"], "succeeded", "{row}");
    assert!(db.table_exists("t").await);
    let names = env.event_names(&run).await;
    // Claimed once (`run_resumed` is every claim's event), migrated once.
    let count = |event: &str| names.iter().filter(|n| *n == event).count();
    assert_eq!(
        (count("run_resumed"), count("migration_started")),
        (1, 1),
        "{names:?}"
    );
    // The stream opened before the reload carried the run to its end.
    let mut text = String::new();
    while let Some(chunk) = common::within("the event stream", stream.chunk())
        .await
        .expect("the stream opened before the reload stays readable")
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: run_finished"), "{text}");

    // The CLI reaches the HTTPS daemon with --ca-cert, and refuses it without.
    let status = |extra: &[&str]| {
        common::output_within(
            "pgshepherd status",
            Command::new(common::pgshepherd_bin())
                .args(["status", &run, "--server", &daemon.url])
                .args(extra)
                .env("PGSHEPHERD_TOKEN", READER)
                .env_remove("PGSHEPHERD_CA_CERT"),
        )
    };
    let trusted = status(&["--ca-cert", ca.to_str().unwrap()]);
    assert_eq!(
        trusted.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let untrusted = status(&[]);
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");

    // A broken pair on SIGHUP (the key of another certificate): refused,
    // logged with the file and the problem, the second certificate served on.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    sign_server_cert(&broken, &ca, SAN, "pgshepherd daemon third");
    std::fs::rename(broken.join("server.key"), live.join("server.key")).unwrap();
    sighup(&daemon);
    let log = log_shows(&daemon, "TLS certificate not reloaded").await;
    let refusal = log
        .lines()
        .find(|l| l.contains("TLS certificate not reloaded"))
        .unwrap();
    assert!(refusal.contains("does not match"), "{refusal}");
    assert!(
        refusal.contains(&live.join("server.key").display().to_string()),
        "{refusal}"
    );
    assert!(!refusal.contains("PRIVATE KEY"), "{refusal}");
    assert_eq!(presented_certificate(&addr, &ca).await, second);
    // A client with no connection yet still gets its answers.
    let fresh = https.client();
    assert!(
        fresh
            .get(format!("{}/healthz", daemon.url))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );

    // Stopping is unchanged by TLS: SIGTERM ends the daemon cleanly.
    let mut daemon = daemon;
    assert_eq!(
        daemon.sigterm(common::PATIENCE),
        Some(0),
        "{}",
        daemon.log_text()
    );
}

/// The config `dir/NAME.yaml` with `tls:` naming `cert` and `key`: `cert` on
/// line 3, column 9; `key` on line 4, column 8.
fn tls_config(dir: &Path, name: &str, cert: &Path, key: &Path) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\ntls:\n  cert: {}\n  key: {}\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_pair_that_cannot_serve_is_a_config_error_at_its_key() {
    let work = common::scratch_dir();
    let dir = work.path();
    let ca = make_ca(dir, "ca");
    let (a, b) = (dir.join("a"), dir.join("b"));
    for (d, cn) in [(&a, "a"), (&b, "b")] {
        std::fs::create_dir_all(d).unwrap();
        sign_server_cert(d, &ca, SAN, cn);
    }
    let cases = [
        (
            "missing-key",
            a.join("server.crt"),
            dir.join("nowhere.key"),
            "4:8: tls.key: cannot read the private key file",
        ),
        (
            "mismatch",
            a.join("server.crt"),
            b.join("server.key"),
            "4:8: tls.key: the private key in",
        ),
        (
            "no-certificate",
            a.join("server.key"),
            a.join("server.key"),
            "3:9: tls.cert: the certificate file",
        ),
        (
            "certificate-as-key",
            a.join("server.crt"),
            a.join("server.crt"),
            "4:8: tls.key: the private key file",
        ),
    ];
    for (name, cert, key, expected) in cases {
        let config = tls_config(dir, name, &cert, &key);
        let out = common::output_within(
            "pgshepherd daemon with a bad tls pair",
            Command::new(common::pgshepherd_bin())
                .args(["daemon", "--config"])
                .arg(&config),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("{}:{expected}", config.display())),
            "{name}: expected {expected:?} in:\n{stderr}"
        );
        assert!(!stderr.contains("PRIVATE KEY-----"), "{name}: {stderr}");
    }
}
