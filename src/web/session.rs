//! Web sessions: what the sign-in form trades a token for.
//!
//! A session is a random 256-bit id, sent to the browser as an `HttpOnly;
//! SameSite=Strict` cookie and kept in this daemon's memory only as the
//! sha256 of the id, mapped to the token that signed in (its name and digest,
//! not its text), an absolute expiry ([`SESSION_TTL`] after sign-in; using the
//! page does not extend it) and a CSRF token of its own. Sessions live in the
//! process: a restart, or another replica behind a load balancer, does not
//! know them, and the user signs in again (docs/web.md).
//!
//! Invariants:
//! - a session authenticates only while a configured token still has the name
//!   *and* digest it signed in with, and then with that token's roles as the
//!   config says now;
//! - a request a session authenticates that is not a GET/HEAD must carry the
//!   session's CSRF token in `X-CSRF-Token` and must not come from another
//!   origin ([`same_origin`]); otherwise it is refused (403) before any
//!   handler runs;
//! - neither a session id nor a CSRF token is ever logged, stored or echoed
//!   (the CSRF token goes only into the pages of its own session).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::header::{COOKIE, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::config::Token;
use crate::daemon::api::auth::constant_time_eq;
use crate::daemon::shared::Shared;

/// How long a session lasts after sign-in, whatever is done with it.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// Sessions kept at once for one token (by name): past it, that token's
/// oldest session is dropped. A token signing in in a loop (a script, or a
/// leaked read token) thus ends only its own sessions, never another token's.
pub const MAX_SESSIONS_PER_TOKEN: usize = 32;

/// Sessions kept at once, all tokens together: a backstop (many tokens, each
/// at its cap) on what the daemon holds; past it, the session closest to its
/// expiry is dropped.
pub const MAX_SESSIONS: usize = 10_000;

/// The cookie's name over plain HTTP.
pub const COOKIE_NAME: &str = "pgshepherd_session";

/// The cookie's name when the daemon serves TLS: browsers accept a `__Host-`
/// cookie only with `Secure`, `Path=/` and no `Domain`, so no other host of
/// the domain, nor plain HTTP, can set or shadow it.
pub const SECURE_COOKIE_NAME: &str = "__Host-pgshepherd_session";

/// The cookie's name over TLS (`secure`) or not.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure {
        SECURE_COOKIE_NAME
    } else {
        COOKIE_NAME
    }
}

/// The header that carries a session's CSRF token on requests that change
/// something.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A session could not be created: the operating system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw a random session id: {0}")]
pub struct RandomError(String);

/// One signed-in browser.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    digest: [u8; 32],
    csrf: String,
    expires: Instant,
}

/// A session that authenticated a request.
#[derive(Debug, Clone)]
pub struct Session {
    /// The configured token it stands for (as the config has it now).
    pub token: Token,
    /// Its CSRF token, for the pages it is shown.
    pub csrf: String,
    /// Left until it expires.
    pub remaining: Duration,
    /// sha256 of the session id: the key to sign it out.
    key: [u8; 32],
}

/// What a request's session cookie amounts to.
#[derive(Debug)]
pub enum SessionAuth {
    /// No session cookie.
    None,
    /// A cookie that names no live session (expired, signed out, forged, from
    /// before a restart, or its token was removed from the config).
    Ended,
    Valid(Session),
}

/// This daemon's sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

/// A new session: its cookie value (the id) and the session itself.
pub struct Created {
    pub id: String,
    pub session: Session,
}

fn random_token() -> Result<String, RandomError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| RandomError(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn key_of(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Sign `token` in for [`SESSION_TTL`].
    pub fn create(&self, token: &Token) -> Result<Created, RandomError> {
        self.create_for(token, SESSION_TTL)
    }

    fn create_for(&self, token: &Token, ttl: Duration) -> Result<Created, RandomError> {
        let id = random_token()?;
        let csrf = random_token()?;
        let key = key_of(&id);
        let entry = Entry {
            name: token.name.clone(),
            digest: token.sha256,
            csrf: csrf.clone(),
            expires: Instant::now() + ttl,
        };
        let mut entries = self.lock();
        let now = Instant::now();
        entries.retain(|_, e| e.expires > now);
        let own = entries.values().filter(|e| e.name == token.name).count();
        // Every session lives as long after its sign-in, so the one closest
        // to its expiry is the oldest.
        let oldest = |entries: &HashMap<[u8; 32], Entry>, own_only: bool| {
            entries
                .iter()
                .filter(|(_, e)| !own_only || e.name == token.name)
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| *k)
        };
        if own >= MAX_SESSIONS_PER_TOKEN
            && let Some(oldest) = oldest(&entries, true)
        {
            entries.remove(&oldest);
        } else if entries.len() >= MAX_SESSIONS
            && let Some(oldest) = oldest(&entries, false)
        {
            entries.remove(&oldest);
        }
        entries.insert(key, entry);
        Ok(Created {
            id,
            session: Session {
                token: token.clone(),
                csrf,
                remaining: ttl,
                key,
            },
        })
    }

    /// The live session whose id is `id`, against the configured `tokens`.
    pub fn find(&self, tokens: &[Token], id: &str) -> Option<Session> {
        self.find_key(tokens, key_of(id))
    }

    /// `session` still authenticates: not signed out, expired, dropped to
    /// make room, nor its token gone from `tokens`. An open event stream asks
    /// this at each poll, so that it does not outlive its session.
    pub fn is_live(&self, tokens: &[Token], session: &Session) -> bool {
        self.find_key(tokens, session.key).is_some()
    }

    fn find_key(&self, tokens: &[Token], key: [u8; 32]) -> Option<Session> {
        let mut entries = self.lock();
        let entry = entries.get(&key)?.clone();
        let now = Instant::now();
        let token = tokens
            .iter()
            .find(|t| t.name == entry.name && constant_time_eq(&t.sha256, &entry.digest));
        let (Some(token), true) = (token, entry.expires > now) else {
            entries.remove(&key);
            return None;
        };
        Some(Session {
            token: token.clone(),
            csrf: entry.csrf,
            remaining: entry.expires - now,
            key,
        })
    }

    /// Sign `session` out: its cookie no longer authenticates anything.
    pub fn remove(&self, session: &Session) {
        self.lock().remove(&session.key);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        // A panic while holding the lock leaves a consistent map (every
        // change is one insert or remove).
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The session the request's cookie names, if any (the cookie's name is the
/// one [`set_cookie`] gives it on this transport).
pub fn from_headers(shared: &Shared, headers: &HeaderMap) -> SessionAuth {
    let name = cookie_name(super::transport::secure_transport(shared));
    let Some(id) = cookie(headers, name).filter(|id| !id.is_empty()) else {
        return SessionAuth::None;
    };
    match shared.web.find(&shared.config.tokens, id) {
        Some(session) => SessionAuth::Valid(session),
        None => SessionAuth::Ended,
    }
}

/// [`from_headers`] for an extractor.
pub fn from_request(parts: &Parts, shared: &Shared) -> SessionAuth {
    from_headers(shared, &parts.headers)
}

/// Whether a request authenticated by `session` may go on: any GET or HEAD
/// may; anything else must come from this origin and carry the session's CSRF
/// token. The error is the 403's message (it names no secret).
/// Why a cookie-authenticated request was taken for a forgery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forgery {
    #[error("refused a cross-site request (Sec-Fetch-Site: {site})")]
    CrossSite { site: String },
    #[error("refused a request from origin {origin} to host {host}")]
    ForeignOrigin { origin: String, host: String },
    #[error("a request signed in by the web session must carry its CSRF token in `{CSRF_HEADER}`")]
    NoCsrfToken,
    #[error("the `{CSRF_HEADER}` header does not match this session's CSRF token")]
    WrongCsrfToken,
}

pub fn check_forgery(parts: &Parts, session: &Session) -> Result<(), Forgery> {
    if matches!(parts.method, Method::GET | Method::HEAD) {
        return Ok(());
    }
    same_origin(&parts.headers)?;
    let presented = parts
        .headers
        .get(CSRF_HEADER)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    if presented.is_empty() {
        return Err(Forgery::NoCsrfToken);
    }
    if !constant_time_eq(presented, session.csrf.as_bytes()) {
        return Err(Forgery::WrongCsrfToken);
    }
    Ok(())
}

/// A browser's request from another site is refused. Browsers say where a
/// request comes from in `Sec-Fetch-Site`, which no page can set: when it is
/// there it decides (`same-origin` or `none` pass). `Origin`, when it names an
/// origin, must also name the request's `Host`; it may be `null` only when
/// `Sec-Fetch-Site` vouches for the request (a form posted from a page served
/// with `Referrer-Policy: no-referrer` carries `Origin: null`). Requests with
/// neither header (curl, the CLI) pass. The scheme is not compared: behind a
/// proxy that terminates TLS the daemon sees plain HTTP (the proxy must pass
/// `Host` on: docs/web.md).
pub fn same_origin(headers: &HeaderMap) -> Result<(), Forgery> {
    let mut vouched = false;
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or_default();
        if !matches!(site, "same-origin" | "none") {
            return Err(Forgery::CrossSite {
                site: printable(site),
            });
        }
        vouched = true;
    }
    let Some(origin) = headers.get(ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    if origin == "null" && vouched {
        return Ok(());
    }
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !host.is_empty() && origin_matches_host(origin, host) {
        Ok(())
    } else {
        Err(Forgery::ForeignOrigin {
            origin: printable(origin),
            host: printable(host),
        })
    }
}

/// `origin` (`scheme://host[:port]`) names `host` (`host[:port]`), default
/// ports written or not.
fn origin_matches_host(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let normal = |a: &str| {
        let a = a.to_ascii_lowercase();
        a.strip_suffix(default_port).map(str::to_owned).unwrap_or(a)
    };
    !authority.contains('/') && normal(authority) == normal(host)
}

/// A header value as it may appear in a message: short, printable ASCII.
fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(100)
        .collect();
    if s.len() > 100 {
        out.push('…');
    }
    format!("{out:?}")
}

/// The `Set-Cookie` value that gives the browser session `id`, for `max_age`.
/// `Secure`, and named [`SECURE_COOKIE_NAME`], when the page is served over
/// TLS ([`super::transport`]).
pub fn set_cookie(id: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        cookie_name(secure),
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that makes the browser forget its session.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", Duration::ZERO, secure)
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;
    use crate::config::Role;

    fn token(name: &str, digest: u8, roles: &[Role]) -> Token {
        Token {
            name: name.into(),
            sha256: [digest; 32],
            roles: roles.to_vec(),
        }
    }

    fn parts(method: &str, headers: &[(&str, &str)]) -> Parts {
        let mut r = Request::builder()
            .method(method)
            .uri("/v1/runs/0123456789ab/approve");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap().into_parts().0
    }

    #[test]
    fn web_session_ids_are_random_and_kept_only_as_digests() {
        let sessions = Sessions::default();
        let dave = token("dave", 1, &[Role::Read]);
        let a = sessions.create(&dave).unwrap();
        let b = sessions.create(&dave).unwrap();
        assert_ne!(a.id, b.id);
        assert_ne!(a.session.csrf, b.session.csrf);
        // 32 bytes, base64url without padding.
        assert_eq!(a.id.len(), 43);
        assert_eq!(URL_SAFE_NO_PAD.decode(&a.id).unwrap().len(), 32);
        let entries = sessions.lock();
        assert!(!entries.contains_key(a.id.as_bytes()));
        assert!(entries.contains_key(&key_of(&a.id)));
    }

    #[test]
    fn web_session_follows_the_configured_token() {
        let sessions = Sessions::default();
        let dave = token("dave", 1, &[Role::Read]);
        let created = sessions.create(&dave).unwrap();
        let found = sessions
            .find(std::slice::from_ref(&dave), &created.id)
            .unwrap();
        assert_eq!(found.token.name, "dave");
        assert_eq!(found.csrf, created.session.csrf);
        assert!(found.remaining <= SESSION_TTL);
        // Roles as the config says now.
        let promoted = token("dave", 1, &[Role::Approve]);
        let found = sessions
            .find(std::slice::from_ref(&promoted), &created.id)
            .unwrap();
        assert!(found.token.has(Role::Approve));
        // A token of the same name with another secret is another token.
        let replaced = token("dave", 2, &[Role::Read]);
        assert!(sessions.find(&[replaced], &created.id).is_none());
        // ...and the session is gone for good.
        assert!(sessions.find(&[dave], &created.id).is_none());
        assert!(sessions.is_empty());
    }

    #[test]
    fn web_session_expires_and_signs_out() {
        let sessions = Sessions::default();
        let dave = token("dave", 1, &[Role::Read]);
        let expired = sessions.create_for(&dave, Duration::ZERO).unwrap();
        assert!(
            sessions
                .find(std::slice::from_ref(&dave), &expired.id)
                .is_none()
        );
        let live = sessions.create(&dave).unwrap();
        assert!(sessions.is_live(std::slice::from_ref(&dave), &live.session));
        sessions.remove(&live.session);
        assert!(!sessions.is_live(std::slice::from_ref(&dave), &live.session));
        assert!(
            sessions
                .find(std::slice::from_ref(&dave), &live.id)
                .is_none()
        );
        assert!(sessions.find(&[dave], "not-a-session").is_none());
    }

    #[test]
    fn web_sessions_are_bounded_per_token() {
        let sessions = Sessions::default();
        let bob = token("bob", 2, &[Role::Approve]);
        let bobs = sessions.create(&bob).unwrap();
        let dave = token("dave", 1, &[Role::Read]);
        let first = sessions.create_for(&dave, Duration::from_secs(10)).unwrap();
        for _ in 1..MAX_SESSIONS_PER_TOKEN {
            sessions.create(&dave).unwrap();
        }
        assert_eq!(sessions.len(), 1 + MAX_SESSIONS_PER_TOKEN);
        // A reader signing in again and again ends only its own oldest
        // sessions, never the approver's.
        let mut last = None;
        for _ in 0..3 * MAX_SESSIONS_PER_TOKEN {
            last = Some(sessions.create(&dave).unwrap());
        }
        assert_eq!(sessions.len(), 1 + MAX_SESSIONS_PER_TOKEN);
        let tokens = [bob, dave];
        assert!(sessions.find(&tokens, &first.id).is_none());
        assert!(sessions.find(&tokens, &last.unwrap().id).is_some());
        assert!(sessions.find(&tokens, &bobs.id).is_some());
    }

    #[test]
    fn web_sessions_are_bounded() {
        let sessions = Sessions::default();
        // As many tokens as it takes, each under its own cap.
        let tokens: Vec<Token> = (0..MAX_SESSIONS.div_ceil(MAX_SESSIONS_PER_TOKEN - 1))
            .map(|i| token(&format!("t{i}"), 1, &[Role::Read]))
            .collect();
        let first = sessions
            .create_for(&tokens[0], Duration::from_secs(10))
            .unwrap();
        let mut made = 1;
        'fill: for t in &tokens {
            for _ in 0..MAX_SESSIONS_PER_TOKEN - 1 {
                if made == MAX_SESSIONS {
                    break 'fill;
                }
                sessions.create(t).unwrap();
                made += 1;
            }
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        let extra = token("extra", 9, &[Role::Read]);
        let last = sessions.create(&extra).unwrap();
        assert_eq!(sessions.len(), MAX_SESSIONS);
        // The one closest to its expiry made room.
        assert!(sessions.find(&tokens, &first.id).is_none());
        assert!(sessions.find(&[extra], &last.id).is_some());
    }

    #[test]
    fn web_cookie_is_read_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("a=1; pgshepherd_session=abc ; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE_NAME), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
        let c = set_cookie("abc", Duration::from_secs(60), false);
        assert_eq!(
            c,
            "pgshepherd_session=abc; HttpOnly; SameSite=Strict; Path=/; Max-Age=60"
        );
        assert_eq!(
            set_cookie("abc", Duration::from_secs(60), true),
            "__Host-pgshepherd_session=abc; HttpOnly; SameSite=Strict; Path=/; Max-Age=60; Secure"
        );
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }

    #[test]
    fn web_forgery_needs_the_csrf_token_and_this_origin() {
        let sessions = Sessions::default();
        let bob = token("bob", 3, &[Role::Approve]);
        let s = sessions.create(&bob).unwrap().session;
        let csrf = s.csrf.clone();
        let host = ("host", "127.0.0.1:8750");
        // Reading needs no token.
        assert!(check_forgery(&parts("GET", &[host]), &s).is_ok());
        assert!(check_forgery(&parts("HEAD", &[]), &s).is_ok());
        // Changing does.
        let e = check_forgery(&parts("POST", &[host]), &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("x-csrf-token"), "{e}");
        let e = check_forgery(&parts("POST", &[host, ("x-csrf-token", "nope")]), &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not match"), "{e}");
        assert!(!e.contains(&csrf));
        assert!(check_forgery(&parts("POST", &[host, ("x-csrf-token", &csrf)]), &s).is_ok());
        // From this origin, with or without the default port.
        let same = ("origin", "http://127.0.0.1:8750");
        assert!(check_forgery(&parts("POST", &[host, same, ("x-csrf-token", &csrf)]), &s).is_ok());
        let evil = ("origin", "http://evil.example");
        let e = check_forgery(&parts("POST", &[host, evil, ("x-csrf-token", &csrf)]), &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("evil.example"), "{e}");
        let cross = ("sec-fetch-site", "cross-site");
        assert!(
            check_forgery(&parts("POST", &[host, cross, ("x-csrf-token", &csrf)]), &s).is_err()
        );
        let same_site = ("sec-fetch-site", "same-origin");
        assert!(
            check_forgery(
                &parts("POST", &[host, same_site, ("x-csrf-token", &csrf)]),
                &s
            )
            .is_ok()
        );
    }

    #[test]
    fn web_origin_is_compared_by_host_and_port() {
        assert!(origin_matches_host("http://example.com", "example.com"));
        assert!(origin_matches_host("https://example.com", "example.com"));
        assert!(origin_matches_host(
            "https://example.com:443",
            "Example.com"
        ));
        assert!(origin_matches_host(
            "http://example.com:80",
            "example.com:80"
        ));
        assert!(origin_matches_host("http://[::1]:8750", "[::1]:8750"));
        assert!(!origin_matches_host(
            "http://example.com:8080",
            "example.com"
        ));
        assert!(!origin_matches_host(
            "http://example.com.evil",
            "example.com"
        ));
        assert!(!origin_matches_host("null", "example.com"));
        assert!(!origin_matches_host("ftp://example.com", "example.com"));
        assert!(!origin_matches_host("http://example.com/x", "example.com"));
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, HeaderValue::from_static("http://a"));
        assert!(same_origin(&h).is_err(), "no Host header: refused");
        // `Origin: null` passes only when the browser vouches for the request.
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("a"));
        h.insert(ORIGIN, HeaderValue::from_static("null"));
        assert!(same_origin(&h).is_err());
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h).is_ok());
        h.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        assert!(same_origin(&h).is_err());
    }
}
