//! The page routes, mounted into the API's router (so they share its metrics,
//! audit trail, timeouts and panic containment):
//!
//! - `GET /`: the runs list; `GET /runs/{id}`: one run; `GET
//!   /runs/{id}/runbook`: its runbook (notifications link here). Without a
//!   session each redirects to the sign-in form, which comes back after.
//! - `GET /signin`, `POST /signin` (form field `token`), `POST /signout`.
//! - `GET /assets/{file}`: the built-in scripts and styles.
//!
//! Every answer of the daemon, the API's JSON and errors included
//! ([`protective_headers`], the router's outermost layer), carries a
//! Content-Security-Policy that allows scripts, styles and connections from
//! this origin only (no inline code at all) and no framing, plus `nosniff` and
//! `no-referrer`, and is `no-store` unless it says otherwise (assets): pages
//! hold their session's CSRF token, and the JSON the page fetches with its
//! cookie is per user while a shared cache keys on the URL alone. Over TLS,
//! HSTS too.

use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION, REFERRER_POLICY, SET_COOKIE,
    STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use crate::daemon::api::auth::{ActorSlot, identify};
use crate::daemon::api::error::{AuditDetail, NotAudited};
use crate::daemon::api::routes::{RouteSpec, spec};
use crate::daemon::api::view::valid_run_id;
use crate::daemon::shared::SharedRef;
use crate::web::pages::{self, Viewer};
use crate::web::session::{self, CSRF_HEADER, Session, SessionAuth};
use crate::web::{assets, transport};

pub const RUNS_PAGE: RouteSpec = spec("GET", "/", "page_runs");
pub const SIGNIN_FORM: RouteSpec = spec("GET", "/signin", "page_signin");
pub const SIGNIN: RouteSpec = spec("POST", "/signin", "signin");
pub const SIGNOUT: RouteSpec = spec("POST", "/signout", "signout");
pub const RUN_PAGE: RouteSpec = spec("GET", "/runs/{id}", "page_run");
pub const RUNBOOK_PAGE: RouteSpec = spec("GET", "/runs/{id}/runbook", "page_runbook");
pub const ASSET: RouteSpec = spec("GET", "/assets/{file}", "asset");

/// The web page's routes (for metrics and the audit trail; the API's own are
/// [`crate::daemon::api::ROUTES`]). Sign-in and sign-out are audited every time.
pub const PAGES: &[RouteSpec] = &[
    RUNS_PAGE,
    SIGNIN_FORM,
    SIGNIN,
    SIGNOUT,
    RUN_PAGE,
    RUNBOOK_PAGE,
    ASSET,
];

/// Allows this origin's scripts, styles, images and connections only: no
/// inline script or style, no plugins, no `<base>`, forms post here only, and
/// no page may frame these.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The page routes, to be merged into the API's router.
pub fn router() -> Router<SharedRef> {
    Router::new()
        .route(RUNS_PAGE.path, get(runs_page))
        .route(SIGNIN_FORM.path, get(signin_form).post(signin))
        .route(SIGNOUT.path, post(signout))
        .route(RUN_PAGE.path, get(run_page))
        .route(RUNBOOK_PAGE.path, get(runbook_page))
        .route(ASSET.path, get(asset))
}

/// The headers of every answer (see the module comment); the API's router
/// applies this outermost, so 404s, 405s, panics and timeouts get them too.
pub async fn protective_headers(
    State(shared): State<SharedRef>,
    mut response: Response,
) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        HeaderName::from_static("content-security-policy"),
        CONTENT_SECURITY_POLICY,
    );
    set(headers, X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, REFERRER_POLICY, "no-referrer");
    set(headers, X_FRAME_OPTIONS, "DENY");
    if !headers.contains_key(CACHE_CONTROL) {
        set(headers, CACHE_CONTROL, "no-store");
    }
    // Served over TLS by the daemon itself: the browser must not try plain
    // HTTP for this host again (where the cookie would not be sent, but a
    // man in the middle could serve a page of its own).
    if transport::secure_transport(&shared) {
        set(headers, STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    }
    response
}

fn html(status: StatusCode, body: String) -> Response {
    (status, [(CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// 303 to `location` (a path of ours).
fn see_other(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// The sign-in form, coming back to `path` after.
fn to_signin(path: &str) -> Response {
    see_other(&format!(
        "/signin?next={}",
        utf8_percent_encode(path, NON_ALPHANUMERIC)
    ))
}

/// Where to go after signing in: a path on this site, or `/`. Never another
/// site (`//host`, `/\host`, a scheme), whatever the query said.
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

fn session_of(shared: &SharedRef, headers: &HeaderMap) -> Option<Session> {
    match session::from_headers(shared, headers) {
        SessionAuth::Valid(s) => Some(s),
        SessionAuth::None | SessionAuth::Ended => None,
    }
}

async fn runs_page(State(shared): State<SharedRef>, headers: HeaderMap) -> Response {
    match session_of(&shared, &headers) {
        Some(session) => html(StatusCode::OK, pages::runs(Viewer { session: &session })),
        None => to_signin("/"),
    }
}

#[derive(Debug, Deserialize)]
struct RunPagePath {
    id: String,
}

/// A run page's id and the session viewing it, or what to answer instead: 400
/// for a malformed path, the sign-in form (coming back to `/runs/{id}{rest}`)
/// without a session, 404 for an id that cannot be a run's.
fn run_page_access(
    shared: &SharedRef,
    headers: &HeaderMap,
    path: Result<Path<RunPagePath>, PathRejection>,
    rest: &str,
) -> Result<(String, Session), Box<Response>> {
    let Ok(Path(RunPagePath { id })) = path else {
        return Err(Box::new(html(
            StatusCode::BAD_REQUEST,
            pages::error(None, 400, "malformed path"),
        )));
    };
    let Some(session) = session_of(shared, headers) else {
        return Err(Box::new(to_signin(&format!("/runs/{id}{rest}"))));
    };
    if !valid_run_id(&id) {
        return Err(Box::new(html(
            StatusCode::NOT_FOUND,
            pages::error(
                Some(Viewer { session: &session }),
                404,
                "a run id is 12 lowercase hex digits",
            ),
        )));
    }
    Ok((id, session))
}

async fn run_page(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    path: Result<Path<RunPagePath>, PathRejection>,
) -> Response {
    match run_page_access(&shared, &headers, path, "") {
        Ok((id, session)) => html(
            StatusCode::OK,
            pages::run(Viewer { session: &session }, &id),
        ),
        Err(answer) => *answer,
    }
}

async fn runbook_page(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    path: Result<Path<RunPagePath>, PathRejection>,
) -> Response {
    let (id, session) = match run_page_access(&shared, &headers, path, "/runbook") {
        Ok(access) => access,
        Err(answer) => return *answer,
    };
    let viewer = || Viewer { session: &session };
    match crate::daemon::api::runbook::document(&shared, &id).await {
        Ok(document) => html(
            StatusCode::OK,
            pages::runbook(viewer(), &id, &document.html_body()),
        ),
        Err(e) => {
            if e.status.is_server_error() {
                tracing::error!(run_id = %id, error = %e.message, "runbook page failed");
            }
            html(
                e.status,
                pages::error(Some(viewer()), e.status.as_u16(), &e.message),
            )
        }
    }
}

#[derive(Debug, Deserialize)]
struct SigninQuery {
    next: Option<String>,
}

async fn signin_form(
    State(shared): State<SharedRef>,
    query: Result<Query<SigninQuery>, QueryRejection>,
) -> Response {
    let next = local_path(query.as_ref().ok().and_then(|q| q.next.as_deref()));
    html(
        StatusCode::OK,
        pages::signin(&next, transport::plain_http_on_non_loopback(&shared), None),
    )
}

#[derive(Deserialize)]
struct SigninForm {
    token: String,
    next: Option<String>,
}

// Not Debug: the form holds a token.
async fn signin(
    State(shared): State<SharedRef>,
    actor: Option<Extension<ActorSlot>>,
    headers: HeaderMap,
    form: Result<Form<SigninForm>, FormRejection>,
) -> Response {
    let warning = transport::plain_http_on_non_loopback(&shared);
    // A sign-in from another site would sign the browser in as the other
    // site's token (login CSRF).
    if let Err(why) = session::same_origin(&headers) {
        let mut r = html(
            StatusCode::FORBIDDEN,
            pages::signin(
                "/",
                warning,
                Some("This sign-in came from another site and was refused."),
            ),
        );
        r.extensions_mut().insert(AuditDetail(why.to_string()));
        return r;
    }
    let Ok(Form(form)) = form else {
        return html(
            StatusCode::BAD_REQUEST,
            pages::signin("/", warning, Some("Send the form with a token.")),
        );
    };
    let next = local_path(form.next.as_deref());
    let presented = form.token.trim();
    let Some(token) = identify(&shared.config.tokens, presented).filter(|_| !presented.is_empty())
    else {
        // Counted with the API's other 401s (one audit row per source and
        // minute); the token itself goes nowhere.
        let mut r = html(
            StatusCode::UNAUTHORIZED,
            pages::signin(&next, warning, Some("That token is not valid.")),
        );
        r.extensions_mut().insert(AuditDetail(
            "web sign-in with a token that is not valid".into(),
        ));
        return r;
    };
    if let Some(Extension(slot)) = &actor {
        slot.set(&token.name);
    }
    // A session this browser had is replaced, not left behind.
    if let SessionAuth::Valid(old) = session::from_headers(&shared, &headers) {
        shared.web.remove(&old);
    }
    let created = match shared.web.create(token) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "web sign-in failed");
            return html(
                StatusCode::INTERNAL_SERVER_ERROR,
                pages::error(
                    None,
                    500,
                    "could not create a session (the daemon logged why)",
                ),
            );
        }
    };
    let mut r = see_other(&next);
    let cookie = session::set_cookie(
        &created.id,
        created.session.remaining,
        transport::secure_transport(&shared),
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r.extensions_mut()
        .insert(AuditDetail("signed in to the web page".into()));
    r
}

#[derive(Deserialize)]
struct SignoutForm {
    csrf: Option<String>,
}

async fn signout(
    State(shared): State<SharedRef>,
    actor: Option<Extension<ActorSlot>>,
    headers: HeaderMap,
    form: Result<Form<SignoutForm>, FormRejection>,
) -> Response {
    let secure = transport::secure_transport(&shared);
    let session = session_of(&shared, &headers);
    if let (Some(session), Some(Extension(slot))) = (&session, &actor) {
        slot.set(&session.token.name);
    }
    let refuse = |why: String| {
        let mut r = html(
            StatusCode::FORBIDDEN,
            pages::error(
                session.as_ref().map(|session| Viewer { session }),
                403,
                "This sign-out did not come from this page and was refused.",
            ),
        );
        r.extensions_mut().insert(AuditDetail(why));
        r
    };
    // First, whether or not there is a session: another site's form posted
    // here carries no cookie (SameSite=Strict), and the answer's cookie
    // clearing would still sign the browser out.
    if let Err(why) = session::same_origin(&headers) {
        return refuse(why.to_string());
    }
    let mut r = see_other("/signin");
    match &session {
        Some(session) => {
            // The form carries the CSRF token as a field; a script may send
            // the header instead. Either way the same check as the API's.
            let presented = form
                .as_ref()
                .ok()
                .and_then(|Form(f)| f.csrf.clone())
                .or_else(|| {
                    headers
                        .get(CSRF_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            if !crate::daemon::api::auth::constant_time_eq(
                presented.as_bytes(),
                session.csrf.as_bytes(),
            ) {
                return refuse("sign-out without this session's CSRF token".into());
            }
            shared.web.remove(session);
            r.extensions_mut().insert(AuditDetail("signed out".into()));
        }
        // Nothing to end (the cookie is gone, expired or from before a
        // restart): the browser forgets it, and nothing is audited, since
        // anyone may send this as often as they like.
        None => {
            r.extensions_mut().insert(NotAudited);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(secure)) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

#[derive(Debug, Deserialize)]
struct AssetPath {
    file: String,
}

#[derive(Debug, Deserialize)]
struct AssetQuery {
    v: Option<String>,
}

async fn asset(
    path: Result<Path<AssetPath>, PathRejection>,
    query: Result<Query<AssetQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Some((asset, hash)) = path.ok().and_then(|Path(p)| assets::find(&p.file)) else {
        return (
            StatusCode::NOT_FOUND,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such asset",
        )
            .into_response();
    };
    let etag = format!("\"{hash}\"");
    // The URL names this very content: it never changes.
    let cache = if query.as_ref().ok().and_then(|q| q.v.as_deref()) == Some(hash) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let matches = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().trim_start_matches("W/") == etag);
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(ETAG, v);
    }
    h.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_next_stays_on_this_site() {
        assert_eq!(local_path(Some("/runs/0123456789ab")), "/runs/0123456789ab");
        assert_eq!(local_path(Some("/?phase=active")), "/?phase=active");
        for evil in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "evil",
            "/\nx",
            "",
        ] {
            assert_eq!(local_path(Some(evil)), "/", "{evil:?}");
        }
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn web_pages_are_all_classified() {
        for p in PAGES {
            assert_eq!(p.mutating, p.method == "POST", "{p:?}");
        }
    }
}
