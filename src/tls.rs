//! TLS for outgoing HTTPS (HTTP checks, later webhooks): rustls with the `ring`
//! provider, installed once per process before any client is built.

use std::sync::Once;

pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider is already installed, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
