//! Bearer tokens. The config keeps only each token's sha256; a presented token is
//! hashed and compared with every configured digest in constant time, so neither
//! the position of the first differing byte nor which token matched shows in the
//! response time. The token itself is never logged, stored or echoed.
//!
//! A request without an `Authorization` header may instead carry the web page's
//! session cookie (see [`crate::web::session`]): it authenticates as the token
//! that signed in, with the same roles. A cookie is sent by the browser on its
//! own, so every request it authenticates that could change something must also
//! prove it comes from the page: the session's CSRF token in `X-CSRF-Token`, and
//! no foreign `Origin`. A bearer token is never sent by a browser unasked and
//! needs neither.

use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

use crate::config::{Role, Token};
use crate::daemon::api::error::ApiError;
use crate::daemon::shared::SharedRef;
use crate::web::session::SessionAuth;

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name: the actor in the audit trail and in `submitted_by` etc.
    pub name: String,
    token: Token,
    /// The web session that authenticated the request, if one did (not a
    /// bearer token).
    session: Option<crate::web::session::Session>,
}

impl Caller {
    /// See [`Token::has`]: every token reads, `admin` does everything.
    pub fn has(&self, role: Role) -> bool {
        self.token.has(role)
    }

    /// 403 unless the caller has `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.has(role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token {:?} lacks the `{}` role this request needs",
                self.name,
                role_name(role)
            )))
        }
    }

    /// Still signed in: always for a bearer token (checked per request); for
    /// a web session, while it lives (not signed out, expired or dropped).
    pub fn still_signed_in(&self, shared: &crate::daemon::shared::Shared) -> bool {
        self.session
            .as_ref()
            .is_none_or(|s| shared.web.is_live(&shared.config.tokens, s))
    }

    #[cfg(test)]
    pub fn for_tests(name: &str, roles: &[Role]) -> Caller {
        Caller {
            name: name.to_string(),
            token: Token {
                name: name.to_string(),
                sha256: [0; 32],
                roles: roles.to_vec(),
            },
            session: None,
        }
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Read => "read",
        Role::Submit => "submit",
        Role::Approve => "approve",
        Role::Admin => "admin",
    }
}

/// Where the route middleware learns who made a request, once a handler's
/// [`Caller`] extractor has authenticated it (the audit row's `actor`).
#[derive(Debug, Clone, Default)]
pub struct ActorSlot(pub Arc<Mutex<Option<String>>>);

impl ActorSlot {
    pub fn set(&self, name: &str) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(name.to_string());
        }
    }

    pub fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|s| s.clone())
    }
}

/// Why a request is not authenticated (the 401 message; contains no token text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthenticated {
    Missing,
    Malformed,
    Unknown,
    /// A session cookie that is unknown, expired, signed out, or whose token is
    /// no longer configured.
    SessionEnded,
}

impl Unauthenticated {
    pub fn message(self) -> &'static str {
        match self {
            Unauthenticated::Missing => {
                "authentication required: send `Authorization: Bearer <token>`"
            }
            Unauthenticated::Malformed => "the Authorization header must be `Bearer <token>`",
            Unauthenticated::Unknown => "the bearer token is not valid",
            Unauthenticated::SessionEnded => {
                "the web session has ended (expired, signed out or the daemon restarted); sign in again at /signin"
            }
        }
    }
}

/// The token presented in `Authorization: Bearer <token>`.
pub fn bearer(headers: &HeaderMap) -> Result<&str, Unauthenticated> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(Unauthenticated::Missing);
    };
    let value = value.to_str().map_err(|_| Unauthenticated::Malformed)?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(Unauthenticated::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Unauthenticated::Malformed);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Unauthenticated::Missing);
    }
    Ok(token)
}

/// The configured token whose digest is sha256(`presented`). Every digest is
/// compared in full, with no early exit, whichever matches.
pub fn identify<'a>(tokens: &'a [Token], presented: &str) -> Option<&'a Token> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for token in tokens {
        if constant_time_eq(&token.sha256, &digest) {
            found = Some(token);
        }
    }
    found
}

/// `a == b`, in a time that depends only on the lengths: every byte is
/// compared, with no early exit. The one comparison of secrets in the daemon
/// (token digests here, session CSRF tokens in [`crate::web::session`]).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl FromRequestParts<SharedRef> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &SharedRef) -> Result<Caller, ApiError> {
        let unauthorized =
            |why: Unauthenticated| ApiError::new(StatusCode::UNAUTHORIZED, why.message());
        let mut web_session = None;
        let token = match bearer(&parts.headers) {
            Ok(t) => identify(&shared.config.tokens, t)
                .ok_or(Unauthenticated::Unknown)
                .map_err(unauthorized)?
                .clone(),
            // No Authorization header at all: the web page's session, if any.
            Err(Unauthenticated::Missing) => {
                match crate::web::session::from_request(parts, shared) {
                    SessionAuth::None => return Err(unauthorized(Unauthenticated::Missing)),
                    SessionAuth::Ended => return Err(unauthorized(Unauthenticated::SessionEnded)),
                    SessionAuth::Valid(session) => {
                        if let Some(slot) = parts.extensions.get::<ActorSlot>() {
                            slot.set(&session.token.name);
                        }
                        // Checked after the actor is known, so that the audit
                        // row of a forged request names whose session it rode.
                        crate::web::session::check_forgery(parts, &session)
                            .map_err(|forgery| ApiError::forbidden(forgery.to_string()))?;
                        let token = session.token.clone();
                        web_session = Some(session);
                        token
                    }
                }
            }
            Err(why) => return Err(unauthorized(why)),
        };
        if let Some(slot) = parts.extensions.get::<ActorSlot>() {
            slot.set(&token.name);
        }
        Ok(Caller {
            name: token.name.clone(),
            token,
            session: web_session,
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn token(name: &str, secret: &str, roles: &[Role]) -> Token {
        Token {
            name: name.into(),
            sha256: Sha256::digest(secret.as_bytes()).into(),
            roles: roles.to_vec(),
        }
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_parses_the_scheme_case_insensitively() {
        assert_eq!(bearer(&headers("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(&headers("bearer   abc ")), Ok("abc"));
        assert_eq!(bearer(&HeaderMap::new()), Err(Unauthenticated::Missing));
        assert_eq!(bearer(&headers("Bearer ")), Err(Unauthenticated::Malformed));
        assert_eq!(
            bearer(&headers("Basic dTpw")),
            Err(Unauthenticated::Malformed)
        );
        assert_eq!(bearer(&headers("abc")), Err(Unauthenticated::Malformed));
    }

    #[test]
    fn identify_finds_the_token_by_digest_only() {
        let tokens = [
            token("alice", "alice-secret-0123456789", &[Role::Submit]),
            token("bob", "bob-secret-0123456789", &[Role::Approve]),
        ];
        assert_eq!(
            identify(&tokens, "bob-secret-0123456789").map(|t| t.name.as_str()),
            Some("bob")
        );
        assert!(identify(&tokens, "bob-secret-012345678").is_none());
        assert!(identify(&tokens, "").is_none());
        assert!(identify(&[], "x").is_none());
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn roles_follow_the_config_rules() {
        let reader = Caller::for_tests("r", &[Role::Read]);
        assert!(reader.has(Role::Read) && !reader.has(Role::Submit));
        let admin = Caller::for_tests("a", &[Role::Admin]);
        assert!(admin.has(Role::Approve) && admin.has(Role::Submit));
        let e = reader.require(Role::Approve).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(e.message.contains("`approve`"));
    }
}
