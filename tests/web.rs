//! The web status page, end to end: a real `pgshepherd daemon` with real runs
//! (state and target databases on the test cluster), driven over HTTP for the
//! session and header rules, and through a real headless Chromium
//! (tests/common/browser.rs) for what a person does: sign in, watch the runs and
//! a soak, approve, abort, acknowledge; and for what an attacker tries: forged
//! requests and markup in plan names and SQL.
//!
//! Screenshots of the runs list and of a breached run are written to
//! target/web-screenshots/ (and to docs/img/ with `UPDATE_SCREENSHOTS=1`).

mod common;

use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, ORIGIN, SET_COOKIE};
use serde_json::{Value, json};

use common::browser::Browser;
use common::certs::{make_ca, sign_server_cert};
use common::daemon::{
    ADMIN, APPROVER, Api, Daemon, Env, Https, ONE_TABLE, READER, SUBMITTER, SUBMITTER2, plan_dir,
};

const SETTINGS: &str = "lease_timeout: 5s\npoll_interval: 200ms";

/// A plan on `target` creating table `t`, without a backup unless `backup`,
/// soaking `soak` every `interval` with the checks `checks` (YAML list items,
/// indented for `soak.checks`), rolled back by its down script.
fn plan(
    dir: &Path,
    target: &str,
    soak: &str,
    interval: &str,
    checks: &str,
    backup: bool,
) -> (PathBuf, PathBuf) {
    let backup = if backup {
        ""
    } else {
        "backup:\n  enabled: false\n"
    };
    let tail = format!(
        "{backup}soak:\n  duration: {soak}\n  interval: {interval}\n  baseline_samples: 1\n  checks:\n{checks}\
         rollback:\n  strategy: down\n  confirm: 500ms\n"
    );
    plan_dir(dir, target, ONE_TABLE, &tail)
}

/// Give the plan at `path` the name `name`.
fn named(path: PathBuf, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("name: daemon-test", &format!("name: {name}"), 1),
    )
    .unwrap();
    path
}

/// One SQL check, as a `soak.checks` item.
fn check(name: &str, sql: &str, max: u32, consecutive: u32) -> String {
    format!(
        "    - name: {name}\n      sql: \"{sql}\"\n      max: {max}\n      min_samples: 1\n      consecutive: {consecutive}\n"
    )
}

/// A plan that waits for approval (targets named `guarded*` require it) and
/// never gets further in these tests unless approved.
fn pending_plan(dir: &Path) -> (PathBuf, PathBuf) {
    plan(
        dir,
        "guarded",
        "1s",
        "250ms",
        &check("one", "SELECT 1", 1, 1),
        false,
    )
}

async fn start() -> (Env, Daemon, Api) {
    let env = Env::new(&["jobs", "guarded"], SETTINGS).await;
    let daemon = env.start("web").await;
    let api = Api::new(&daemon);
    (env, daemon, api)
}

/// An HTTP client that shows redirects instead of following them.
fn http() -> reqwest::Client {
    pgshepherd::tls::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// POST the sign-in form with `token` (and `extra` headers).
async fn post_signin(base: &str, token: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut r = http()
        .post(format!("{base}/signin"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("token={token}&next=%2F"));
    for (k, v) in extra {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

/// A signed-in session over HTTP: its cookie (`name=value`) and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

async fn session(base: &str, token: &str) -> Session {
    let r = post_signin(base, token, &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    let page = http()
        .get(format!("{base}/"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("<meta name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the page carries its session's CSRF token")
        .to_string();
    Session { cookie, csrf }
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_sessions_csrf_and_headers_over_http() {
    let (env, daemon, api) = start().await;
    let base = daemon.url.clone();
    let work = common::scratch_dir();
    let (plan_path, set) = pending_plan(work.path());
    let run = api.submit(SUBMITTER, &plan_path, &set).await;

    // Pages without a session send to the sign-in form, which comes back.
    let r = http().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(header(&r, "location"), "/signin?next=%2F");
    let r = http()
        .get(format!("{base}/runs/{run}/runbook"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "location"),
        format!("/signin?next=%2Fruns%2F{run}%2Frunbook")
    );

    // Every page: a strict CSP, no sniffing, no referrer, no framing, no cache.
    let r = http().get(format!("{base}/signin")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "content-security-policy"),
        "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    );
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
    assert_eq!(header(&r, "referrer-policy"), "no-referrer");
    assert_eq!(header(&r, "x-frame-options"), "DENY");
    assert_eq!(header(&r, "cache-control"), "no-store");
    let form = r.text().await.unwrap();
    // Served on loopback: no warning about plain HTTP.
    assert!(!form.contains("Not encrypted"), "{form}");

    // A wrong token: 401, counted with the API's other 401s, never written.
    let wrong = "not-a-token-at-all-9999";
    let r = post_signin(&base, wrong, &[]).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(header(&r, "set-cookie").is_empty());
    assert!(r.text().await.unwrap().contains("That token is not valid."));
    // A sign-in posted from another site is refused (login CSRF).
    let r = post_signin(&base, READER, &[("origin", "http://evil.example")]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(header(&r, "set-cookie").is_empty());

    // A good one: a strict, HttpOnly cookie for 12 hours (not Secure: plain HTTP).
    let r = post_signin(&base, READER, &[("origin", &base)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(header(&r, "location"), "/");
    let set = header(&r, "set-cookie");
    let (id, attributes) = set.split_once(';').unwrap();
    assert!(
        id.starts_with("pgshepherd_session=") && id.len() == 19 + 43,
        "{set}"
    );
    assert_eq!(
        attributes, " HttpOnly; SameSite=Strict; Path=/; Max-Age=43200",
        "{set}"
    );

    // The session authenticates the API as its token: reading works...
    let reader = session(&base, READER).await;
    let r = http()
        .get(format!("{base}/v1/runs"))
        .header(COOKIE, &reader.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // ...and the roles are the token's: a reader may not approve, CSRF or not.
    let approve = format!("{base}/v1/runs/{run}/approve");
    let r = http()
        .post(&approve)
        .header(COOKIE, &reader.cookie)
        .header("x-csrf-token", &reader.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // An approver's session: without the CSRF token, with a wrong one, or
    // from another origin, refused before anything happens.
    let bob = session(&base, APPROVER).await;
    let post = |extra: Vec<(&'static str, String)>| {
        let mut r = http().post(&approve).header(COOKIE, &bob.cookie);
        for (k, v) in extra {
            r = r.header(k, v);
        }
        r.send()
    };
    let r = post(vec![]).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("x-csrf-token"),
        "{body}"
    );
    let r = post(vec![("x-csrf-token", "forged".into())]).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = post(vec![
        ("x-csrf-token", bob.csrf.clone()),
        ("origin", "http://evil.example".into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // No cookie and no token at all: 401.
    let r = http().post(&approve).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(env.run_row(&run).await["phase"], "pending_approval");
    // With it, from this origin: approved, as bob.
    let r = post(vec![
        ("x-csrf-token", bob.csrf.clone()),
        (ORIGIN.as_str(), base.clone()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(env.run_row(&run).await["approved_by"], "bob");

    // The run's runbook as a page of the site.
    let r = http()
        .get(format!("{base}/runs/{run}/runbook"))
        .header(COOKIE, &reader.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(page.contains("<article class=\"runbook\">"), "{page}");
    assert!(page.contains(&format!("pgshepherd ack {run}")), "{page}");

    // Assets: immutable under their content hash, revalidated otherwise.
    let css = page
        .split("href=\"/assets/app.css?v=")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let r = http()
        .get(format!("{base}/assets/app.css?v={css}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(header(&r, "etag"), format!("\"{css}\""));
    assert!(header(&r, "content-type").starts_with("text/css"));
    let r = http()
        .get(format!("{base}/assets/app.css"))
        .header("if-none-match", format!("\"{css}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&r, "cache-control"), "no-cache");
    let r = http()
        .get(format!("{base}/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Signing out ends the session for good.
    let r = http()
        .post(format!("{base}/signout"))
        .header(COOKIE, &reader.cookie)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("csrf={}", reader.csrf))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(header(&r, "set-cookie").contains("Max-Age=0"));
    let r = http()
        .get(format!("{base}/v1/runs"))
        .header(COOKIE, &reader.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("sign in again"),
        "{body}"
    );

    // The audit trail: sign-ins and the approval by their actor, the failed
    // sign-in counted anonymously; no token and no session id anywhere.
    let client = env.state.client().await;
    let audit: Vec<(String, String, i32)> = client
        .query("SELECT actor, action, status FROM audit ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(
        audit.contains(&("anonymous".into(), "signin".into(), 401)),
        "{audit:?}"
    );
    assert!(
        audit.contains(&("dave".into(), "signin".into(), 303)),
        "{audit:?}"
    );
    assert!(
        audit.contains(&("bob".into(), "approve".into(), 200)),
        "{audit:?}"
    );
    assert!(
        audit.contains(&("bob".into(), "approve".into(), 403)),
        "{audit:?}"
    );
    assert!(
        audit.contains(&("dave".into(), "signout".into(), 303)),
        "{audit:?}"
    );
    let dump: String = client
        .query_one(
            "SELECT coalesce(string_agg(a::text, ' '), '') FROM audit a",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let log = daemon.log_text();
    for secret in [READER, APPROVER, wrong, &reader.csrf, &bob.csrf] {
        assert!(!dump.contains(secret), "audit holds {secret}");
        assert!(!log.contains(secret), "log holds {secret}");
    }
    for cookie in [&reader.cookie, &bob.cookie] {
        let id = cookie.split_once('=').unwrap().1;
        assert!(
            !dump.contains(id) && !log.contains(id),
            "a session id was written"
        );
    }
}

/// What anyone can send without a token leaves no audit row per request:
/// sign-outs without a session are not audited, refused sign-ins are counted
/// per source, status and minute like the API's 401s, and a path with a
/// trailing slash is no route (not a submit). Another site cannot sign a
/// browser out. Every answer, JSON and errors included, carries `no-store` and
/// `nosniff`.
#[tokio::test(flavor = "multi_thread")]
async fn anonymous_requests_are_counted_and_another_site_cannot_sign_out() {
    let (env, daemon, _api) = start().await;
    let base = daemon.url.clone();
    let dave = session(&base, READER).await;
    let signout = |cookie: Option<&str>, extra: &[(&'static str, &str)]| {
        let mut r = http()
            .post(format!("{base}/signout"))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("csrf=");
        if let Some(c) = cookie {
            r = r.header(COOKIE, c);
        }
        for (k, v) in extra {
            r = r.header(*k, *v);
        }
        r.send()
    };
    for _ in 0..50 {
        let r = signout(None, &[]).await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let r = post_signin(&base, READER, &[("origin", "http://evil.example")]).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = http()
            .post(format!("{base}/signin"))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("next=%2F")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = http()
            .post(format!("{base}/v1/runs/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    // Another site's form (no cookie: SameSite=Strict) and a forged one with
    // the cookie: refused, and the cookie is not cleared.
    for cookie in [None, Some(dave.cookie.as_str())] {
        for extra in [
            ("origin", "http://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ] {
            let r = signout(cookie, &[extra]).await.unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{cookie:?} {extra:?}");
            assert!(header(&r, "set-cookie").is_empty(), "{cookie:?} {extra:?}");
        }
    }
    let r = http()
        .get(format!("{base}/v1/runs"))
        .header(COOKIE, &dave.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "still signed in");
    // The JSON the page fetches with its cookie is per user: never cached.
    assert_eq!(header(&r, "cache-control"), "no-store");
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
    // Nor are errors, on page paths or not.
    for (method, path, status) in [
        (reqwest::Method::GET, "/runs/0123456789ab/nope", 404),
        (reqwest::Method::DELETE, "/signin", 405),
        (reqwest::Method::GET, "/v1/nothing", 404),
    ] {
        let r = http()
            .request(method, format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        assert_eq!(header(&r, "cache-control"), "no-store", "{path}");
        assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{path}");
        assert!(!header(&r, "content-security-policy").is_empty(), "{path}");
        // Plain HTTP: no HSTS.
        assert!(header(&r, "strict-transport-security").is_empty());
    }

    // The audit trail: no sign-out without a session, no 404; the refused
    // sign-ins (and cookie-less forged sign-outs) in a few counted rows.
    let audit: Vec<(String, String, i32, i32)> = env
        .state
        .client()
        .await
        .query(
            "SELECT actor, action, status, count FROM audit WHERE actor = 'anonymous' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let total = |status: i32| -> i32 { audit.iter().filter(|a| a.2 == status).map(|a| a.3).sum() };
    // One row per status, or two if the loop straddled a minute.
    assert!(audit.len() <= 4, "{audit:#?}");
    assert_eq!(total(403), 50 + 2, "{audit:#?}");
    assert_eq!(total(400), 50, "{audit:#?}");
    assert!(audit.iter().all(|a| a.2 == 403 || a.2 == 400), "{audit:#?}");
}

/// An event stream opened with a session cookie ends once the session does:
/// signing out (or expiry) ends what the browser can read, not only new
/// requests. The run is still open, so nothing else would end it.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_event_stream_ends_with_its_session() {
    let (_env, daemon, api) = start().await;
    let base = daemon.url.clone();
    let work = common::scratch_dir();
    let (plan_path, set) = pending_plan(work.path());
    let run = api.submit(SUBMITTER, &plan_path, &set).await;
    let dave = session(&base, READER).await;
    let mut stream = http()
        .get(format!("{base}/v1/runs/{run}/events"))
        .header(COOKIE, &dave.cookie)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    // The run's first event (submitted) arrives: the stream is open.
    let first = stream.chunk().await.unwrap().expect("an event");
    assert!(
        String::from_utf8_lossy(&first).contains("id: "),
        "{first:?}"
    );

    let r = http()
        .post(format!("{base}/signout"))
        .header(COOKIE, &dave.cookie)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("csrf={}", dave.csrf))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    // What is left of the stream (the rest of the run's events so far), then
    // its end.
    while stream.chunk().await.unwrap().is_some() {}
    assert_eq!(
        api.get(READER, &format!("/v1/runs/{run}")).await.1["phase"],
        "pending_approval",
        "the run is still open: the session's end ended the stream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn over_https_the_session_cookie_is_secure() {
    let work = common::scratch_dir();
    let ca = make_ca(work.path(), "ca");
    sign_server_cert(
        work.path(),
        &ca,
        "IP:127.0.0.1,DNS:localhost",
        "pgshepherd web",
    );
    let mut env = Env::new(&["jobs"], SETTINGS).await;
    let https = Https {
        cert: work.path().join("server.crt"),
        key: work.path().join("server.key"),
        ca,
    };
    env.serve_https(https.clone());
    let daemon = env.start("web").await;
    assert!(daemon.url.starts_with("https://"), "{}", daemon.url);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_only(
            reqwest::Certificate::from_pem_bundle(&std::fs::read(&https.ca).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let form = client
        .get(format!("{}/signin", daemon.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!form.contains("Not encrypted"), "{form}");
    let r = client
        .post(format!("{}/signin", daemon.url))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("token={READER}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    // Over TLS the daemon says so for a year, on every answer.
    assert_eq!(header(&r, "strict-transport-security"), "max-age=31536000");
    // A `__Host-` cookie: Secure, Path=/ and no Domain, or browsers drop it,
    // so no other host of the domain can set or shadow it.
    let set = header(&r, "set-cookie");
    let (id, attributes) = set.split_once(';').unwrap();
    assert!(id.starts_with("__Host-pgshepherd_session="), "{set}");
    assert_eq!(
        attributes, " HttpOnly; SameSite=Strict; Path=/; Max-Age=43200; Secure",
        "{set}"
    );
    let r = client
        .get(format!("{}/v1/runs", daemon.url))
        .header(COOKIE, id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the cookie signs in");
    assert_eq!(header(&r, "strict-transport-security"), "max-age=31536000");
    let r = client
        .get(format!("{}/nope", daemon.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&r, "strict-transport-security"), "max-age=31536000");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_series_route_serves_a_soaking_check_with_its_thresholds() {
    let (env, _daemon, api) = start().await;
    let work = common::scratch_dir();
    let (plan_path, set) = plan(
        work.path(),
        "jobs",
        "2s",
        "250ms",
        &check("steady", "SELECT 3", 5, 2),
        false,
    );
    let run = api.submit(SUBMITTER, &plan_path, &set).await;
    env.wait_finished(&run, common::PATIENCE).await;
    let (status, series) = api
        .get(
            READER,
            &format!("/v1/runs/{run}/checks/steady/series?points=4"),
        )
        .await;
    assert_eq!(status, 200, "{series}");
    assert_eq!(series["check"], "steady");
    assert_eq!(series["bounds"][0]["rule"], "max");
    assert_eq!(series["bounds"][0]["limit"], 5.0);
    assert_eq!(series["consecutive"], 2);
    assert_eq!(series["soak_duration_s"], 2.0);
    let samples = series["samples"].as_u64().unwrap();
    let points = series["points"].as_array().unwrap();
    assert!(samples > 4, "{series}");
    assert!(!points.is_empty() && points.len() <= 4, "{series}");
    assert!(
        points
            .iter()
            .all(|p| p["kind"] == "ok" && p["value"] == 3.0)
    );
    assert!(series["through"].as_i64().unwrap() >= points.last().unwrap()["seq"].as_i64().unwrap());

    let (status, _) = api
        .get(READER, &format!("/v1/runs/{run}/checks/nope/series"))
        .await;
    assert_eq!(status, 404);
    let (status, _) = api
        .get(
            READER,
            &format!("/v1/runs/{run}/checks/steady/series?points=1"),
        )
        .await;
    assert_eq!(status, 400);
    // Events without the samples: what the page's log reads.
    let (_, events) = api
        .get(
            READER,
            &format!("/v1/runs/{run}/events?exclude=check_sample"),
        )
        .await;
    let names: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"soak_finished") && !names.contains(&"check_sample"),
        "{names:?}"
    );
    let (_, view) = api.get(READER, &format!("/v1/runs/{run}")).await;
    let last = events.as_array().unwrap().last().unwrap()["seq"]
        .as_i64()
        .unwrap();
    assert_eq!(view["last_seq"].as_i64().unwrap(), last);
}

// ---- in a real browser ------------------------------------------------------

/// Also keep the screenshot in docs/img/ when asked to (`UPDATE_SCREENSHOTS=1`).
fn publish(shot: &Path) {
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::copy(shot, docs.join(shot.file_name().unwrap())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_signs_in_and_sees_the_runs_and_a_wrong_token_is_refused() {
    let (_env, daemon, api) = start().await;
    let work = common::scratch_dir();
    let (plan_path, set) = pending_plan(work.path());
    let run = api.submit(SUBMITTER, &plan_path, &set).await;

    let browser = Browser::start().await;
    browser.goto(&format!("{}/", daemon.url)).await;
    // Sent to the sign-in form.
    browser.find("body[data-page=signin] #token").await;
    assert!(browser.url().await.contains("/signin?next=%2F"));
    browser
        .find("#token")
        .await
        .send_keys("wrong-token-0000000")
        .await;
    browser
        .find("form.card button[type=submit]")
        .await
        .click()
        .await;
    let error = browser.find("#signin-error").await;
    assert_eq!(error.text().await, "That token is not valid.");
    assert!(
        browser
            .cookies()
            .await
            .iter()
            .all(|c| c["name"] != "pgshepherd_session")
    );

    browser.sign_in(&daemon.url, READER).await;
    let row = browser.find(&format!("tr[data-run='{run}']")).await;
    let text = row.text().await;
    assert!(
        text.contains("daemon-test") && text.contains("guarded"),
        "{text}"
    );
    assert!(
        text.contains("pending approval") && text.contains("alice"),
        "{text}"
    );
    assert!(
        browser
            .find("header .who")
            .await
            .text()
            .await
            .contains("dave")
    );
    let cookie = browser
        .cookies()
        .await
        .into_iter()
        .find(|c| c["name"] == "pgshepherd_session")
        .expect("the session cookie");
    assert_eq!(cookie["httpOnly"], json!(true));
    assert_eq!(cookie["sameSite"], json!("Strict"));
    assert_eq!(
        browser.execute("return document.cookie", json!([])).await,
        json!("")
    );

    // Filtering by phase keeps it in the address.
    browser
        .execute(
            "const s = document.getElementById('f-phase'); s.value = 'finished'; \
             s.dispatchEvent(new Event('change')); return 1",
            json!([]),
        )
        .await;
    browser.find("#runs-empty:not([hidden])").await;
    assert!(browser.url().await.ends_with("/?phase=finished"));
    browser.goto(&format!("{}/?phase=open", daemon.url)).await;
    browser.find(&format!("tr[data-run='{run}']")).await;

    // The session ends (signed out from elsewhere): the page says so at its
    // next refresh and offers the way back to where it was.
    let signed_out = browser
        .execute(
            "return fetch('/signout', {method: 'POST', headers: {'X-CSRF-Token': \
             document.querySelector('meta[name=csrf-token]').content}}).then(r => r.status)",
            json!([]),
        )
        .await;
    assert_eq!(signed_out, json!(200), "the redirect to /signin, followed");
    let again = browser.find("#banner #signin-again").await;
    assert_eq!(
        again.attribute("href").await.as_deref(),
        Some("/signin?next=%2F%3Fphase%3Dopen")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_page_charts_each_check_and_follows_new_samples_live() {
    let (env, daemon, api) = start().await;
    let work = common::scratch_dir();
    let checks = format!(
        "{}{}",
        check("latency_ms", "SELECT 40 + floor(random() * 20)", 100, 3),
        check("errors", "SELECT 0", 5, 2)
    );
    let (plan_path, set) = plan(work.path(), "jobs", "10m", "250ms", &checks, false);
    let run = api.submit(SUBMITTER, &plan_path, &set).await;
    env.wait_for_event(&run, "check_sample", common::PATIENCE)
        .await;

    let browser = Browser::start().await;
    browser.sign_in(&daemon.url, READER).await;
    browser.open_run(&daemon.url, &run).await;
    let charts = browser.find_all("figure.chart").await;
    assert_eq!(charts.len(), 2);
    for (name, limit) in [("latency_ms", "100"), ("errors", "5")] {
        let line = browser
            .find(&format!(
                "figure.chart[data-check='{name}'] svg line.threshold"
            ))
            .await;
        assert_eq!(line.attribute("data-limit").await.as_deref(), Some(limit));
        let label = browser
            .find(&format!(
                "figure.chart[data-check='{name}'] text.threshold-label"
            ))
            .await;
        assert_eq!(label.text().await, format!("max {limit}.0"));
    }
    // A new sample arrives through the event stream, without a reload.
    let marker = browser
        .execute("window.__notReloaded = true; return Number(document.querySelector(\"figure.chart[data-check='errors']\").dataset.samples)", json!([]))
        .await
        .as_u64()
        .unwrap();
    browser
        .wait_for(
            "a new sample of `errors` on the page",
            &format!("return Number(document.querySelector(\"figure.chart[data-check='errors']\").dataset.samples) > {marker}"),
        )
        .await;
    assert_eq!(
        browser
            .execute("return window.__notReloaded === true", json!([]))
            .await,
        json!(true)
    );
    assert_eq!(browser.find("#live").await.text().await, "● live");
    // The lifecycle so far: the soak running after a migration.
    let soak = browser.find("#timeline li[data-step=soak]").await;
    assert_eq!(
        soak.attribute("data-state").await.as_deref(),
        Some("running")
    );
    let migrate = browser.find("#timeline li[data-step=migrate]").await;
    assert_eq!(
        migrate.attribute("data-state").await.as_deref(),
        Some("done")
    );
    assert!(migrate.text().await.contains("applied V1"));
    browser.find("#runbook-link").await;
    browser.find_text("#log li", "soak 10m").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_and_four_eyes_decide_on_the_page_as_in_the_api() {
    let (env, daemon, api) = start().await;
    let work = common::scratch_dir();
    let (plan_path, set) = pending_plan(work.path());
    // erin (admin) submits: she may not approve her own run.
    let run = api.submit(ADMIN, &plan_path, &set).await;
    let base = daemon.url.clone();
    let browser = Browser::start().await;

    // A reader sees no approve button, and forging the request fails.
    browser.sign_in(&base, READER).await;
    browser.open_run(&base, &run).await;
    browser.find("#awaiting-approval").await;
    assert!(browser.find_all("#approve").await.is_empty());
    assert!(browser.find_all("#abort").await.is_empty());
    let forge = |csrf: &str| {
        format!(
            "return fetch('/v1/runs/{run}/approve', {{method: 'POST', credentials: 'same-origin', headers: {}}}).then(r => r.status)",
            if csrf.is_empty() {
                "{}".to_string()
            } else {
                format!("{{'X-CSRF-Token': '{csrf}'}}")
            }
        )
    };
    assert_eq!(browser.execute(&forge(""), json!([])).await, json!(403));
    assert_eq!(
        browser.execute(&forge("forged"), json!([])).await,
        json!(403)
    );
    // With the page's own token the API still refuses a reader.
    let own = "document.querySelector('meta[name=csrf-token]').content";
    let with_own = format!(
        "return fetch('/v1/runs/{run}/approve', {{method: 'POST', headers: {{'X-CSRF-Token': {own}}}}}).then(r => r.status)"
    );
    assert_eq!(browser.execute(&with_own, json!([])).await, json!(403));
    // And a plain POST with neither cookie nor token.
    let plain = http()
        .post(format!("{base}/v1/runs/{run}/approve"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::UNAUTHORIZED);
    browser.sign_out().await;

    // The submitter: told why, and refused even with a valid CSRF token.
    browser.sign_in(&base, ADMIN).await;
    browser.open_run(&base, &run).await;
    let note = browser.find("#four-eyes").await;
    assert!(note.text().await.contains("You submitted this run"));
    assert!(browser.find_all("#approve").await.is_empty());
    assert_eq!(browser.execute(&with_own, json!([])).await, json!(403));
    browser.sign_out().await;
    assert_eq!(env.run_row(&run).await["phase"], "pending_approval");

    // An approver approves from the page and the run proceeds.
    browser.sign_in(&base, APPROVER).await;
    browser.open_run(&base, &run).await;
    browser.find("#approve").await.click().await;
    browser.find_text("#action-result", "Approved.").await;
    env.wait_for_event(&run, "run_approved", common::PATIENCE)
        .await;
    env.wait_for_event(&run, "run_started", common::PATIENCE)
        .await;
    // The page follows it without a reload.
    browser
        .wait_for(
            "the page to show the run past its approval",
            "return !document.querySelector('#run-title + .status-line').textContent.includes('pending approval')",
        )
        .await;
    let row = env.run_row(&run).await;
    assert_eq!(row["approved_by"], "bob");
}

#[tokio::test(flavor = "multi_thread")]
async fn abort_with_a_confirmation_and_acknowledge_from_the_page() {
    let (env, daemon, api) = start().await;
    let work = common::scratch_dir();
    let (plan_path, set) = pending_plan(work.path());
    let run = api.submit(SUBMITTER, &plan_path, &set).await;
    let browser = Browser::start().await;
    browser.sign_in(&daemon.url, APPROVER).await;
    browser.open_run(&daemon.url, &run).await;

    browser.find("#ack").await.click().await;
    browser.find_text("#action-result", "Acknowledged").await;
    assert_eq!(env.run_row(&run).await["acked_by"], "bob");
    assert!(browser.find_all("#ack").await.is_empty());

    // Abort asks first, with the keyboard on the safe choice; "keep it
    // running" keeps it.
    browser.find("#abort").await.click().await;
    browser.find("#abort-confirmation").await;
    assert_eq!(
        browser
            .execute("return document.activeElement.id", json!([]))
            .await,
        json!("abort-cancel")
    );
    browser.find("#abort-cancel").await.click().await;
    browser.find("#abort").await.click().await;
    browser.find("#abort-confirm").await.click().await;
    browser
        .find_text("#action-result", "Abort requested.")
        .await;
    let row = env.wait_finished(&run, common::PATIENCE).await;
    assert_eq!(row["outcome"], "stopped");
    assert_eq!(row["abort_requested_by"], "bob");
    browser
        .find_text("#run-title + .status-line", "stopped")
        .await;
    browser
        .find("#timeline li[data-step=outcome][data-state=stopped]")
        .await;
    assert!(browser.find_all("#abort").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_names_and_sql_render_as_text_never_as_markup() {
    let (env, daemon, api) = start().await;
    let work = common::scratch_dir();
    let sql = "SELECT length('<script>window.__pwned = 1</script>') * 0";
    let (plan_path, set) = plan(
        work.path(),
        "jobs",
        "10m",
        "250ms",
        &check("tags", sql, 1, 1),
        false,
    );
    let run = api.submit(SUBMITTER, &plan_path, &set).await;
    env.wait_for_event(&run, "check_sample", common::PATIENCE)
        .await;
    // Plan names are validated on submit; the page must not rely on it.
    let evil = "<img src=x onerror=alert(1)>";
    env.state
        .client()
        .await
        .execute(
            "UPDATE runs SET plan_name = $1 WHERE id = $2",
            &[&evil, &run],
        )
        .await
        .unwrap();

    let browser = Browser::start().await;
    browser.sign_in(&daemon.url, READER).await;
    let cell = browser.find(&format!("tr[data-run='{run}'] td.plan")).await;
    assert_eq!(cell.text().await, evil);
    browser.open_run(&daemon.url, &run).await;
    assert_eq!(
        browser.find("#run-title .plan-name").await.text().await,
        evil
    );
    let source = browser.find("figure.chart[data-check=tags] .source").await;
    assert_eq!(source.text().await, format!("sql: {sql}"));
    browser
        .goto(&format!("{}/runs/{run}/runbook", daemon.url))
        .await;
    browser
        .find_text("article.runbook", "<script>window.__pwned")
        .await;

    for page in [
        format!("{}/", daemon.url),
        format!("{}/runs/{run}", daemon.url),
    ] {
        browser.goto(&page).await;
        browser.find_text("body", evil).await;
        // No dialog opened, no element injected, no script ran.
        assert_eq!(browser.dialog_text().await, None);
        let injected = browser
            .execute(
                "return document.querySelectorAll('img, main script, [onerror]').length + (window.__pwned ? 100 : 0)",
                json!([]),
            )
            .await;
        assert_eq!(injected, json!(0), "{page}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_breached_run_shows_its_verdict_marks_and_rollback() {
    let (env, daemon, api) = start().await;
    let work = common::scratch_dir();
    // While the migration's table exists, a wave between 10 and 90 with a
    // period of about 5 s, above 85 for about 0.8 s of it: two samples in a
    // row at 250 ms breach on its first crest (before the change and after
    // the rollback, 0: the baseline is low and the confirmation passes). A
    // companion check within its threshold has a sample without a value in
    // every 9 quarter-seconds (never two in a row: not a verdict).
    let checks = format!(
        "{}{}",
        check(
            "queue_depth",
            "SELECT CASE WHEN to_regclass('public.t') IS NULL THEN 0 \
             ELSE round((50 + 40 * sin(extract(epoch from clock_timestamp()) * 1.2))::numeric, 1) END",
            85,
            2
        ),
        check(
            "replication_lag_s",
            "SELECT CASE WHEN floor(extract(epoch from clock_timestamp()) * 4)::bigint % 9 = 0 \
             THEN NULL ELSE 0.4 + random() * 0.3 END",
            2,
            3
        )
    );
    let (plan_path, set) = plan(work.path(), "jobs", "10m", "250ms", &checks, true);
    let plan_path = named(plan_path, "jobs-partition-by-day");
    let run = api.submit(SUBMITTER, &plan_path, &set).await;
    let row = env.wait_finished(&run, common::PATIENCE).await;
    assert_eq!(row["outcome"], "rolled_back", "{row}");

    let browser = Browser::start().await;
    browser.sign_in(&daemon.url, READER).await;
    browser.open_run(&daemon.url, &run).await;
    let chart = browser
        .find("figure.chart.breached[data-check=queue_depth]")
        .await;
    let verdict = browser
        .find("figure.chart[data-check=queue_depth] .verdict")
        .await;
    let text = verdict.text().await;
    assert!(
        text.contains("queue_depth breached max 85.0 with"),
        "{text}"
    );
    assert!(text.contains("2 in a row, consecutive 2"), "{text}");
    let marks = browser
        .find_all("figure.chart[data-check=queue_depth] path.breach.mark")
        .await;
    assert!(marks.len() >= 2, "{} breach marks", marks.len());
    assert!(chart.text().await.contains("verdict at 2"));
    assert!(
        browser
            .find_all("figure.chart.breached[data-check=replication_lag_s]")
            .await
            .is_empty()
    );
    browser
        .find("#timeline li[data-step=soak][data-state=failed]")
        .await;
    browser
        .find("#timeline li[data-step=rollback][data-state=done]")
        .await;
    browser
        .find("#timeline li[data-step=confirm][data-state=done]")
        .await;
    browser
        .find("#timeline li[data-step=outcome][data-state=rolled_back]")
        .await;
    // The verified backup.
    let backup = browser.find("#backup").await.text().await;
    assert!(
        backup.contains("sha256") && backup.contains("verified"),
        "{backup}"
    );
    let written = env
        .wait_for_event(&run, "backup_written", common::PATIENCE)
        .await;
    assert!(
        backup.contains(written["sha256"].as_str().unwrap()),
        "{backup}"
    );
    publish(&browser.screenshot("breached-run").await);

    // The runs list with a run in each state, for its screenshot.
    let dir = common::scratch_dir();
    let (p, s) = pending_plan(dir.path());
    let done = api
        .submit(SUBMITTER, &named(p, "add-invoice-index"), &s)
        .await;
    let (status, _) = api
        .post(APPROVER, &format!("/v1/runs/{done}/approve"), json!({}))
        .await;
    assert_eq!(status, 200);
    env.wait_finished(&done, common::PATIENCE).await;
    let dir = common::scratch_dir();
    let (p, s) = plan(
        dir.path(),
        "jobs",
        "10m",
        "250ms",
        &check("errors", "SELECT 0", 5, 2),
        false,
    );
    let soaking = api
        .submit(SUBMITTER2, &named(p, "orders-status-not-null"), &s)
        .await;
    env.wait_for_event(&soaking, "check_sample", common::PATIENCE)
        .await;
    let dir = common::scratch_dir();
    let (p, s) = pending_plan(dir.path());
    api.submit(SUBMITTER, &named(p, "drop-legacy-sessions"), &s)
        .await;
    browser.goto(&format!("{}/", daemon.url)).await;
    browser
        .wait_for(
            "four runs listed",
            "return document.querySelectorAll('#runs-table tbody tr').length === 4",
        )
        .await;
    browser.find_text("#runs-table", "soak").await;
    publish(&browser.screenshot("runs-list").await);
}

/// `benches/web.sh` (ignored in the suite: it reports figures, asserts no
/// time): an hour's soak at a 1 s interval with four checks (3,600 samples
/// each, a breach every 500), written into the state database after a real
/// short run; then the series route's latency, and the run page's time from
/// navigation until every chart is drawn, in headless Chromium.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: run benches/web.sh"]
async fn chart_benchmark() {
    const SAMPLES: i32 = 3600;
    const ROUNDS: usize = 7;
    let (env, daemon, api) = start().await;
    let work = common::scratch_dir();
    let names = ["latency_ms", "errors", "locks", "replication_lag_s"];
    let checks: String = names.iter().map(|n| check(n, "SELECT 1", 100, 3)).collect();
    let (plan_path, set) = plan(work.path(), "jobs", "1s", "250ms", &checks, false);
    let run = api.submit(SUBMITTER, &plan_path, &set).await;
    env.wait_finished(&run, common::PATIENCE).await;
    // Each check's first real sample, copied SAMPLES times a second apart.
    let inserted = env
        .state
        .client()
        .await
        .execute(
            "WITH first AS (
                 SELECT DISTINCT ON (event->>'check') run_id, ts, name, event FROM events
                  WHERE run_id = $1 AND name = 'check_sample' ORDER BY event->>'check', id)
             INSERT INTO events (run_id, ts, name, event)
             SELECT run_id, ts + g * interval '1 second', name,
                    event || jsonb_build_object(
                        'elapsed_s', g::float8,
                        'value', 50 + 20 * sin(g / 60.0) + CASE WHEN g % 500 = 0 THEN 200 ELSE 0 END,
                        'breaching', g % 500 = 0)
               FROM first, generate_series(1, $2) AS g",
            &[&run, &SAMPLES],
        )
        .await
        .unwrap();
    assert_eq!(inserted, (SAMPLES as u64) * names.len() as u64);

    let mut series_ms = Vec::new();
    for _ in 0..ROUNDS {
        for name in names {
            let started = std::time::Instant::now();
            let (status, body) = api
                .get(
                    READER,
                    &format!("/v1/runs/{run}/checks/{name}/series?points=600"),
                )
                .await;
            series_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(status, 200, "{body}");
        }
    }

    let browser = Browser::start().await;
    browser.sign_in(&daemon.url, READER).await;
    let mut page_ms = Vec::new();
    let mut points = 0;
    for _ in 0..ROUNDS {
        browser.open_run(&daemon.url, &run).await;
        let loaded = browser
            .execute(
                "return performance.getEntriesByName('pgshepherd:loaded')[0].startTime",
                json!([]),
            )
            .await;
        page_ms.push(loaded.as_f64().unwrap());
        points = browser
            .execute(
                "return document.querySelectorAll('figure.chart svg .breach').length",
                json!([]),
            )
            .await
            .as_u64()
            .unwrap();
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "web bench: {} checks x {SAMPLES} samples; series route (points=600) median {:.1} ms, \
         max {:.1} ms over {} calls; run page navigation -> every chart drawn: median {:.0} ms, \
         max {:.0} ms over {ROUNDS} loads; breach marks drawn: {points}",
        names.len(),
        median(&mut series_ms),
        series_ms.last().unwrap(),
        series_ms.len(),
        median(&mut page_ms),
        page_ms.last().unwrap(),
    );
}
