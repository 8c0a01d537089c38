//! Whether the page travels over TLS: decides the cookie's `Secure` flag and the
//! sign-in page's warning. One place, so that when the daemon serves HTTPS
//! itself (`tls:` in the config) only [`secure_transport`] changes.

use std::net::{IpAddr, SocketAddr};

use crate::daemon::shared::Shared;

/// The daemon's own listener speaks TLS (`tls: {cert, key}` in the config).
/// Behind a proxy that terminates TLS it does not: see docs/web.md for HSTS.
pub fn secure_transport(shared: &Shared) -> bool {
    shared.config.serves_tls()
}

/// The page is served over plain HTTP on an address other hosts can reach: a
/// session cookie (and the token typed into the sign-in form) would cross the
/// network in clear. Said plainly on the sign-in page.
pub fn plain_http_on_non_loopback(shared: &Shared) -> bool {
    let listen = shared
        .config
        .listen
        .as_deref()
        .unwrap_or(crate::daemon::DEFAULT_LISTEN);
    !secure_transport(shared) && !is_loopback(listen)
}

/// `listen` (`host:port`) names only this machine: a loopback address, or
/// `localhost`. Anything else, a wildcard (`0.0.0.0`, `[::]`) included, is
/// reachable from elsewhere.
fn is_loopback(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return addr.ip().is_loopback();
    }
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn web_loopback_listen_addresses() {
        assert!(is_loopback("127.0.0.1:8750"));
        assert!(is_loopback("127.0.0.2:8750"));
        assert!(is_loopback("[::1]:8750"));
        assert!(is_loopback("localhost:8750"));
        assert!(!is_loopback("0.0.0.0:8750"));
        assert!(!is_loopback("[::]:8750"));
        assert!(!is_loopback("10.1.2.3:8750"));
        assert!(!is_loopback("db-admin.example.com:8750"));
    }
}
