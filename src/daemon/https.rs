//! HTTPS on the daemon's `listen` address (`tls: {cert, key}` in the config):
//! the same router and the same `axum::serve` as plain HTTP, over a listener
//! that hands axum connections whose TLS handshake has already completed.
//!
//! Invariants:
//! - One client's handshake never delays another's: each runs in its own task,
//!   bounded by [`HANDSHAKE_TIMEOUT`], at most [`MAX_HANDSHAKES_PER_PEER`] per
//!   client address and [`MAX_HANDSHAKES`] in all (a connection past either is
//!   closed at once, never queued behind the others); only finished
//!   handshakes reach axum. A
//!   failed one is logged at debug (port scanners and plain-HTTP clients would
//!   flood a higher level) with the peer address and rustls's reason, nothing
//!   the client sent.
//! - The certificate is looked up per handshake ([`CurrentCertificate`]), so a
//!   reload (SIGHUP) changes what new connections see without touching open
//!   ones, runs, or the listener. A pair that fails to load is never installed.

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsSettings;
use crate::tls::ServerKeyError;

/// How long a client has to complete its handshake before it is dropped (a
/// connection that never speaks holds a task and a descriptor until then).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once (each holds a task and a descriptor until
/// it completes or [`HANDSHAKE_TIMEOUT`] passes). A connection past it is
/// closed at once rather than left to wait.
const MAX_HANDSHAKES: usize = 512;

/// Handshakes in progress at once from one address: one host that opens
/// connections and never completes them cannot take the others' share.
const MAX_HANDSHAKES_PER_PEER: usize = 8;

/// Handshaken connections waiting for axum to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// The certificate and key new handshakes get, replaceable while serving.
pub struct CurrentCertificate {
    settings: TlsSettings,
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for CurrentCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentCertificate")
            .field("cert", &self.settings.cert)
            .field("key", &self.settings.key)
            .finish_non_exhaustive()
    }
}

impl CurrentCertificate {
    /// Serving the pair loaded with the config.
    pub fn new(settings: &TlsSettings) -> Arc<CurrentCertificate> {
        Arc::new(CurrentCertificate {
            current: RwLock::new(Arc::clone(&settings.loaded)),
            settings: settings.clone(),
        })
    }

    /// Read the certificate and key files again; on success new handshakes use
    /// them, on failure the pair served so far stays. Returns the fingerprint
    /// of the certificate now served.
    pub fn reload(&self) -> Result<String, ServerKeyError> {
        let loaded = crate::tls::load_server_key(&self.settings.cert, &self.settings.key)?;
        let fingerprint = crate::tls::fingerprint(&loaded);
        // The lock is held only to swap or clone an Arc, never across I/O; a
        // panic while holding it cannot leave a half-written value.
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = loaded;
        Ok(fingerprint)
    }

    /// The fingerprint of the certificate now served.
    pub fn fingerprint(&self) -> String {
        crate::tls::fingerprint(&self.current())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The certificate file's path (for messages).
    pub fn cert_path(&self) -> &std::path::Path {
        &self.settings.cert
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The server side of rustls (ring provider, TLS 1.2 and 1.3) with the
/// certificate of `certificate`, speaking HTTP/1.1 only (as the router is built).
pub fn server_config(certificate: Arc<CurrentCertificate>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the ring provider supports the default TLS versions")
    .with_no_client_auth()
    .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// An [`axum::serve::Listener`] yielding TLS connections: a task accepts TCP
/// connections and runs each handshake in a task of its own. It stops once the
/// listener is dropped (axum drops it when a graceful shutdown begins).
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, accepted) = mpsc::channel(ACCEPTED_BACKLOG);
        tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), tx));
        Ok(TlsListener { accepted, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accept loop only ends once this receiver is gone: never here.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let per_peer = PerPeer::default();
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = tcp.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(connection) => connection,
            Err(e) => {
                accept_error(e).await;
                continue;
            }
        };
        // Dropping the stream closes the connection.
        let Some(peer_slot) = per_peer.take(peer.ip()) else {
            tracing::debug!(%peer, "TLS handshakes in progress from this address at their limit; closed");
            continue;
        };
        let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            tracing::warn!(%peer, "{MAX_HANDSHAKES} TLS handshakes in progress; connection closed");
            continue;
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let handshake = async {
                if speaks_plain_http(&stream).await {
                    refuse_plain_http(stream, peer).await;
                    return None;
                }
                Some(acceptor.accept(stream).await)
            };
            let handshaken = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await;
            drop((permit, peer_slot));
            match handshaken {
                Ok(Some(Ok(tls))) => {
                    // Err: the server is shutting down; the connection closes.
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Some(Err(e))) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Ok(None) => {}
                Err(_) => tracing::debug!(%peer, "TLS handshake not completed in time"),
            }
        });
    }
}

/// Handshakes in progress per client address.
#[derive(Default, Clone)]
struct PerPeer(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

/// One handshake of one address in progress; released when dropped.
struct PeerSlot {
    table: PerPeer,
    ip: std::net::IpAddr,
}

impl PerPeer {
    fn take(&self, ip: std::net::IpAddr) -> Option<PeerSlot> {
        let mut table = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = table.entry(ip).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut table = self.table.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = table.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                table.remove(&self.ip);
            }
        }
    }
}

/// Whether the client's first byte is a letter (an HTTP method) rather than
/// a TLS record (0x16): someone typed `http://` for an HTTPS daemon.
async fn speaks_plain_http(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0].is_ascii_uppercase())
}

/// Answer a plain-HTTP request on the TLS port with a 400 that says what to
/// do, as a person at a browser or curl would need, then close. Nothing the
/// client sent is echoed back.
async fn refuse_plain_http(mut stream: TcpStream, peer: SocketAddr) {
    use tokio::io::AsyncWriteExt;
    tracing::debug!(%peer, "plain HTTP on the HTTPS port; answered 400");
    let body = "This pgshepherd daemon serves HTTPS on this address: use https://, not http://.\n";
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // The request is not read: closing with unread data may reset the
    // connection, so shut the write side down first and let the client read.
    if stream.write_all(reply.as_bytes()).await.is_ok() {
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 1024];
        // Drain what the client sent (bounded by the handshake timeout above).
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
            if n == 0 {
                break;
            }
        }
    }
}

/// What axum's own TCP listener does on an accept error: a connection that
/// died before being accepted is nothing; anything else (out of descriptors,
/// usually) is logged and retried after a pause, not in a tight loop.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept a connection; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// SIGHUP: re-read the certificate and key (when serving HTTPS). Registered
/// before the daemon reports itself ready, so that a reload sent from then on
/// never meets the default action (which would end the process). Returns a
/// task that handles signals until `shutdown`.
pub fn reload_on_sighup(
    certificate: Option<Arc<CurrentCertificate>>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = hangup.recv() => if received.is_none() { return },
            }
            let Some(certificate) = &certificate else {
                tracing::info!(
                    "SIGHUP: nothing to reload (no `tls` in the config; other settings need a restart)"
                );
                continue;
            };
            match certificate.reload() {
                Ok(fingerprint) => tracing::info!(
                    cert = %certificate.cert_path().display(),
                    sha256 = %fingerprint,
                    "SIGHUP: TLS certificate reloaded; new connections use it"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    sha256 = %certificate.fingerprint(),
                    "SIGHUP: TLS certificate not reloaded; still serving the previous one"
                ),
            }
        }
    }))
}
