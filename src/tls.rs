//! TLS: rustls with the `ring` provider, for outgoing HTTPS (HTTP checks,
//! webhooks), for connections to PostgreSQL targets, and the certificate and key
//! the daemon serves HTTPS with ([`load_server_key`]; the listener is
//! `daemon::https`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Install the process-wide crypto provider once, before any TLS client is built.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider is already installed, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The TLS connector for PostgreSQL. Without `verification` it has libpq's
/// `sslmode=prefer` / `require` semantics: the connection is encrypted, the
/// server's certificate is not authenticated (the handshake signatures are still
/// verified). With it, the certificate must chain to one of its root
/// certificates (`verify-ca`), and name the host connected to (`verify-full`).
pub fn postgres_connector(verification: Option<&ServerVerification>) -> MakeRustlsConnect {
    install_crypto_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .dangerous();
    let config = match verification {
        None => builder.with_custom_certificate_verifier(Arc::new(EncryptOnly(provider))),
        Some(v) => builder.with_custom_certificate_verifier(Arc::new(v.clone())),
    }
    .with_no_client_auth();
    MakeRustlsConnect::new(config)
}

/// Why a server certificate and key (`tls: {cert, key}` of the daemon's config)
/// cannot serve. Names the files and the problem, never their content.
#[derive(Debug, thiserror::Error)]
pub enum ServerKeyError {
    #[error("cannot read the certificate file {}: {source}", path.display())]
    ReadCert {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the private key file {}: {source}", path.display())]
    ReadKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the certificate file {} is not valid PEM: {problem}", path.display())]
    CertPem {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("the certificate file {} holds no certificate (no BEGIN CERTIFICATE block)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("the certificate in {} cannot be parsed: {message}", path.display())]
    BadCertificate { path: PathBuf, message: String },
    #[error("the private key file {} is not valid PEM: {problem}", path.display())]
    KeyPem {
        path: PathBuf,
        problem: &'static str,
    },
    #[error(
        "the private key file {} holds no private key (no BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error(
        "the private key in {} is encrypted: give an unencrypted key (`openssl pkey -in KEY -out KEY.plain`), readable only by the daemon's user",
        path.display()
    )]
    EncryptedKey { path: PathBuf },
    #[error("the private key in {} is not supported (RSA, ECDSA P-256/P-384 and Ed25519 are): {message}", path.display())]
    UnsupportedKey { path: PathBuf, message: String },
    #[error("the private key in {} does not match the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
}

impl ServerKeyError {
    /// Whether the problem lies in the key file (else in the certificate file):
    /// the config error points at that key's value.
    pub fn in_key_file(&self) -> bool {
        matches!(
            self,
            ServerKeyError::ReadKey { .. }
                | ServerKeyError::KeyPem { .. }
                | ServerKeyError::NoKey { .. }
                | ServerKeyError::EncryptedKey { .. }
                | ServerKeyError::UnsupportedKey { .. }
                | ServerKeyError::Mismatch { .. }
        )
    }
}

/// What is wrong with a PEM file, without quoting any of it (a key file's
/// lines are secret).
fn pem_problem(e: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { .. } => "a block has no END line",
        Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        Error::Base64Decode(_) => "a block is not valid base64",
        Error::SectionTooLarge => "a block is too large",
        _ => "unreadable",
    }
}

/// The certificate chain of `cert` (PEM: the server's certificate first, then
/// any intermediates) with the private key of `key` (PEM: PKCS#8, PKCS#1 or
/// SEC1), checked to belong together. Both may name one file holding both.
pub fn load_server_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, ServerKeyError> {
    let cert_pem = std::fs::read(cert).map_err(|source| ServerKeyError::ReadCert {
        path: cert.to_path_buf(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerKeyError::CertPem {
            path: cert.to_path_buf(),
            problem: pem_problem(&e),
        })?;
    if chain.is_empty() {
        return Err(ServerKeyError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let key_pem = std::fs::read(key).map_err(|source| ServerKeyError::ReadKey {
        path: key.to_path_buf(),
        source,
    })?;
    let private = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        // rustls-pki-types reads unencrypted keys only; an encrypted one is
        // simply "not found", which would send the operator looking elsewhere.
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            let text = String::from_utf8_lossy(&key_pem);
            return Err(
                if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED")
                {
                    ServerKeyError::EncryptedKey {
                        path: key.to_path_buf(),
                    }
                } else {
                    ServerKeyError::NoKey {
                        path: key.to_path_buf(),
                    }
                },
            );
        }
        Err(e) => {
            return Err(ServerKeyError::KeyPem {
                path: key.to_path_buf(),
                problem: pem_problem(&e),
            });
        }
    };
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| ServerKeyError::UnsupportedKey {
            path: key.to_path_buf(),
            message: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    // Every key type the ring provider loads knows its public key, so
    // "unknown" never hides a mismatch here.
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(rustls::Error::InconsistentKeys(_)) => Err(ServerKeyError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }),
        Err(e) => Err(ServerKeyError::BadCertificate {
            path: cert.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// The SHA-256 fingerprint of the end-entity certificate, as hex: what
/// `openssl x509 -noout -fingerprint -sha256` prints (without its colons), so an
/// operator can tell which certificate is being served.
pub fn fingerprint(key: &CertifiedKey) -> String {
    let der = key.cert.first().map(|c| c.as_ref()).unwrap_or_default();
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(der))
}

/// How a PostgreSQL server's certificate is authenticated (libpq's
/// `sslmode=verify-ca` / `verify-full`, and `require` when a root certificate
/// file exists): against the root certificates of one PEM file, read once when
/// the connection string is parsed.
#[derive(Clone)]
pub struct ServerVerification {
    root_cert: PathBuf,
    sslmode: &'static str,
    check_name: bool,
    webpki: Arc<WebPkiServerVerifier>,
}

/// A root certificate file that cannot serve. Names the file, nothing else of
/// the connection string.
#[derive(Debug, thiserror::Error)]
pub enum RootCertError {
    #[error("could not read the root certificate file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the root certificate file {} is not valid PEM: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error("the root certificate file {} holds no usable certificate: {message}", path.display())]
    NoCertificate { path: PathBuf, message: String },
}

impl ServerVerification {
    /// Read the root certificates (PEM, one or more) from `root_cert`. The host
    /// name is checked for `sslmode` `verify-full` only; the mode also goes in
    /// the error a certificate that does not verify gives.
    pub fn load(root_cert: &Path, sslmode: &'static str) -> Result<Self, RootCertError> {
        let pem = std::fs::read(root_cert).map_err(|source| RootCertError::Read {
            path: root_cert.to_path_buf(),
            source,
        })?;
        let mut roots = RootCertStore::empty();
        let mut skipped = Vec::new();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| RootCertError::Pem {
                path: root_cert.to_path_buf(),
                message: e.to_string(),
            })?;
            if let Err(e) = roots.add(cert) {
                skipped.push(e.to_string());
            }
        }
        // A bundle may hold certificates webpki cannot use (libpq's OpenSSL
        // would); the file only fails if none is left to trust.
        if roots.is_empty() {
            let message = if skipped.is_empty() {
                "no BEGIN CERTIFICATE block".to_string()
            } else {
                skipped.join("; ")
            };
            return Err(RootCertError::NoCertificate {
                path: root_cert.to_path_buf(),
                message,
            });
        }
        install_crypto_provider();
        let webpki = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| RootCertError::NoCertificate {
            path: root_cert.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(ServerVerification {
            root_cert: root_cert.to_path_buf(),
            sslmode,
            check_name: sslmode == "verify-full",
            webpki,
        })
    }
}

impl fmt::Debug for ServerVerification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerVerification")
            .field("root_cert", &self.root_cert)
            .field("sslmode", &self.sslmode)
            .finish()
    }
}

/// Why a server's certificate was refused, in words that say so and name the
/// root certificate file (rustls alone prints `invalid peer certificate:
/// UnknownIssuer`).
#[derive(Debug, thiserror::Error)]
#[error(
    "the server's certificate could not be verified (sslmode={mode}, root certificates from {}): {cause}",
    root_cert.display()
)]
struct NotVerified {
    mode: &'static str,
    root_cert: PathBuf,
    cause: String,
}

fn cause_text(cause: &CertificateError) -> String {
    match cause {
        CertificateError::UnknownIssuer => {
            "it is not signed by a certificate authority of that file (UnknownIssuer)".to_string()
        }
        CertificateError::Expired => "it has expired".to_string(),
        CertificateError::NotValidYet => "it is not valid yet".to_string(),
        CertificateError::NotValidForName => {
            "it is not valid for the host name connected to".to_string()
        }
        other => other.to_string(),
    }
}

impl ServerCertVerifier for ServerVerification {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => Ok(verified),
            // webpki checks the name only once the chain has verified (and
            // nothing after it that pgshepherd uses: no revocation lists), so for
            // `verify-ca` a wrong name alone is the chain verified.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            // rustls prints a certificate error of its own as a bare variant name
            // (`invalid peer certificate: UnknownIssuer`); only `Other` carries a
            // message of pgshepherd's (at the cost of a `handshake_failure` alert
            // rather than `unknown_ca` in the server's log).
            Err(rustls::Error::InvalidCertificate(cause)) => {
                Err(rustls::Error::Other(OtherError(Arc::new(NotVerified {
                    mode: self.sslmode,
                    root_cert: self.root_cert.clone(),
                    cause: cause_text(&cause),
                }))))
            }
            Err(other) => Err(other),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Accepts any server certificate, as libpq does below `verify-ca`.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
