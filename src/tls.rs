//! TLS: rustls with the `ring` provider, for outgoing HTTPS (HTTP checks, later
//! webhooks) and for connections to PostgreSQL targets.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
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
