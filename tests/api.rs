//! The daemon's HTTP API, served in-process on a loopback port against a real
//! state database, driven over HTTP the way `curl` and the `pgshepherd` client
//! drive it. No run executes here (no scheduler): these are the API's promises —
//! auth and roles, four eyes, validation as `check` does it, control actions,
//! the event stream, and an audit trail without secrets. Every answer is checked
//! against the OpenAPI document the daemon serves (see [`conform`]).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgshepherd::config::Config;
use pgshepherd::daemon::Shared;
use pgshepherd::daemon::api::bundle::Bundle;
use pgshepherd::daemon::{api, store};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;

/// name, secret, roles. The first two are configured by sha256, the rest in plain.
const TOKENS: &[(&str, &str, &str)] = &[
    ("reader", "reader-secret-token-0001", "[read]"),
    ("alice", "alice-secret-token-0002", "[submit]"),
    ("carol", "carol-secret-token-0003", "[submit, approve]"),
    ("bob", "bob-secret-token-0004", "[approve]"),
    ("root", "root-secret-token-0005", "[admin]"),
];

fn secret(name: &str) -> &'static str {
    TOKENS.iter().find(|t| t.0 == name).unwrap().1
}

/// One daemon's API on a loopback port, with its own state database and plans.
struct Api {
    base: String,
    http: reqwest::Client,
    db: common::TestDb,
    dir: tempfile::TempDir,
    /// The OpenAPI document the daemon serves.
    doc: Value,
    /// `METHOD /template STATUS` of every answer checked against `doc`.
    checked: Mutex<BTreeSet<String>>,
}

async fn start() -> Api {
    start_with(None).await
}

/// With `stop`, the API is served by `router_until` (event streams end on it).
async fn start_with(stop: Option<tokio_util::sync::CancellationToken>) -> Api {
    pgshepherd::tls::install_crypto_provider();
    let db = common::fresh_db().await;
    let dir = common::scratch_dir();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut yaml = format!(
        "listen: {addr}\nstate_database: \"{}\"\ntargets:\n  jobs:\n    dsn: \"{}\"\ntokens:\n",
        db.url, db.url
    );
    for (i, (name, secret, roles)) in TOKENS.iter().enumerate() {
        if i < 2 {
            let digest = hex::encode(sha2::Sha256::digest(secret.as_bytes()));
            yaml.push_str(&format!(
                "  - {{name: {name}, sha256: {digest}, roles: {roles}}}\n"
            ));
        } else {
            yaml.push_str(&format!(
                "  - {{name: {name}, token: {secret}, roles: {roles}}}\n"
            ));
        }
    }
    let config_path = dir.path().join("pgshepherd.yaml");
    std::fs::write(&config_path, yaml).unwrap();
    let config = Config::load(&config_path).unwrap_or_else(|d| panic!("{d}"));
    let op_timeout = pgshepherd::daemon::deadline::op_timeout(config.daemon.lease_timeout);
    let pool = store::open(config.state_database.as_ref().unwrap(), 4, op_timeout)
        .await
        .unwrap();
    let shared = Arc::new(Shared::new(config, pool, "test-node".into()));
    let router = match stop {
        Some(stop) => api::router_until(shared, stop),
        None => api::router(shared),
    };
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let doc = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Api {
        base,
        http,
        db,
        dir,
        doc,
        checked: Mutex::default(),
    }
}

/// A status and the JSON body (Null when the body is not JSON).
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Send `request`; the answer must be as the served document describes it.
    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let request = request.build().unwrap();
        let method = request.method().clone();
        let path = request.url().path().to_string();
        let response = self.http.execute(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let answer = Answer {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        };
        if let Some(route) = route_of(method.as_str(), &path) {
            let content_type = answer
                .headers
                .get("content-type")
                .map_or("", |v| v.to_str().unwrap());
            if let Err(e) = self.documented(route, status, content_type, &answer.body) {
                panic!("{method} {path} -> {status}: {e}\nbody: {text}");
            }
            self.checked.lock().unwrap().insert(format!(
                "{} {} {}",
                route.method,
                route.path,
                status.as_u16()
            ));
        }
        answer
    }

    /// Whether the document lists `status` for `route` with `content_type`, and
    /// a JSON `body` fits the schema it gives.
    fn documented(
        &self,
        route: &api::RouteSpec,
        status: StatusCode,
        content_type: &str,
        body: &Value,
    ) -> Result<(), String> {
        let op = &self.doc["paths"][route.path][route.method.to_ascii_lowercase()];
        let mut response = &op["responses"][status.as_str()];
        if let Some(target) = response["$ref"].as_str() {
            response = resolve(&self.doc, target);
        }
        let content = response["content"]
            .as_object()
            .ok_or("the document does not list this status for the route")?;
        let (media, spec) = content
            .iter()
            .find(|(media, _)| content_type.starts_with(media.as_str()))
            .ok_or_else(|| format!("content type {content_type:?} is not documented"))?;
        if media == "application/json" {
            conform(&self.doc, &spec["schema"], body, "body")?;
        }
        Ok(())
    }

    async fn get(&self, who: &str, path: &str) -> Answer {
        self.send(self.http.get(self.url(path)).bearer_auth(secret(who)))
            .await
    }

    async fn post(&self, who: &str, path: &str, body: Option<&Value>) -> Answer {
        let mut r = self.http.post(self.url(path)).bearer_auth(secret(who));
        if let Some(b) = body {
            r = r.json(b);
        }
        self.send(r).await
    }

    /// The submission body of the plan at `plan` (loaded as `submit` loads it).
    fn bundle(&self, plan: &Path) -> Value {
        let loaded = pgshepherd::plan::load(plan).unwrap_or_else(|d| panic!("{d}"));
        let text = std::fs::read_to_string(plan).unwrap();
        serde_json::to_value(Bundle::from_plan(plan, text, &loaded.migrations)).unwrap()
    }

    /// A run of a plan whose V2 captures the rows it changes, submitted as
    /// `who` and finished `succeeded` as if a daemon had driven it (no run
    /// executes here). Returns its id.
    async fn finished_capture_run(&self, who: &str, sub: &str, extra: &str) -> String {
        let dir = self.dir.path().join(sub);
        let plan = common::one_table_plan(&dir, "jobs", "1s", extra);
        std::fs::write(
            dir.join("migrations/V2__fix.sql"),
            "-- pgshepherd:capture public.t
UPDATE t SET id = id + 1;
",
        )
        .unwrap();
        let body = self.bundle(&plan);
        let answer = self.post(who, "/v1/runs", Some(&body)).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
        let id = answer.body["id"].as_str().unwrap().to_string();
        self.db
            .execute(&format!(
                "UPDATE runs SET phase = 'finished', outcome = 'succeeded', exit_code = 0, \
                 state_name = 'finished', finished_at = now() WHERE id = '{id}'"
            ))
            .await;
        id
    }

    /// Write the one-table plan into a directory of its own and submit it as `who`.
    async fn submit(&self, who: &str, sub: &str, extra: &str) -> Answer {
        let dir = self.dir.path().join(sub);
        let plan = common::one_table_plan(&dir, "jobs", "1s", extra);
        let body = self.bundle(&plan);
        self.post(who, "/v1/runs", Some(&body)).await
    }

    async fn audit(&self) -> Vec<(String, String, Option<String>, i32, Option<String>)> {
        self.db
            .client()
            .await
            .query(
                "SELECT actor, action, run_id, status, detail FROM audit ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect()
    }

    /// The `count` of each audit row of unauthenticated requests, oldest first.
    async fn unauthenticated_counts(&self) -> Vec<i32> {
        self.db
            .client()
            .await
            .query(
                "SELECT count FROM audit WHERE actor = 'anonymous' AND status = 401 ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// No audit column and no event anywhere holds any token's text.
    async fn assert_no_secrets_stored(&self) {
        let client = self.db.client().await;
        let dump: String = client
            .query_one(
                "SELECT coalesce((SELECT string_agg(a::text, ' ') FROM audit a), '')
                     || coalesce((SELECT string_agg(e::text, ' ') FROM events e), '')
                     || coalesce((SELECT string_agg(r::text, ' ') FROM runs r), '')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        for (_, secret, _) in TOKENS {
            assert!(!dump.contains(secret), "a token was stored: {secret}");
        }
    }
}

/// The route `method path` was served by, if any (`{...}` matches one segment).
fn route_of(method: &str, path: &str) -> Option<&'static api::RouteSpec> {
    let segments: Vec<&str> = path.split('/').collect();
    api::ROUTES.iter().find(|r| {
        let parts: Vec<&str> = r.path.split('/').collect();
        r.method == method
            && parts.len() == segments.len()
            && parts
                .iter()
                .zip(&segments)
                .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()))
    })
}

fn resolve<'d>(doc: &'d Value, target: &str) -> &'d Value {
    let path = target.strip_prefix("#/").expect("a local $ref");
    let node = path.split('/').fold(doc, |node, part| &node[part]);
    assert!(!node.is_null(), "dangling $ref {target}");
    node
}

/// Whether `value` fits `schema` (a schema of the document `doc`): its types
/// (null included), required properties, properties of their own schemas, no
/// unknown property where `additionalProperties` is false, enums, minimums, array
/// items, `allOf`, `oneOf`, `$ref` and date-time strings. Not a full JSON Schema
/// validator: enough to catch a field renamed, dropped or retyped.
fn conform(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(target) = schema["$ref"].as_str() {
        return conform(doc, resolve(doc, target), value, at);
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        conform(doc, part, value, at)?;
    }
    if let Some(choices) = schema["oneOf"].as_array() {
        let fits = choices
            .iter()
            .filter(|c| conform(doc, c, value, at).is_ok())
            .count();
        if fits != 1 {
            return Err(format!("{at}: {value} fits {fits} of {choices:?}"));
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let is = |t: &str| match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        other => panic!("type {other} in the document"),
    };
    if !types.is_empty() && !types.iter().any(|t| is(t)) {
        return Err(format!("{at}: {value} is not of type {types:?}"));
    }
    match value {
        Value::String(s) if schema["format"] == "date-time" => {
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| format!("{at}: {s:?} is not a date-time: {e}"))?;
        }
        Value::Number(n) => {
            if let Some(min) = schema["minimum"].as_f64()
                && n.as_f64().unwrap() < min
            {
                return Err(format!("{at}: {n} is below {min}"));
            }
        }
        Value::Object(fields) => {
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap();
                if !fields.contains_key(name) {
                    return Err(format!("{at}: required `{name}` is missing"));
                }
            }
            for (name, v) in fields {
                match schema["properties"].get(name) {
                    Some(s) => conform(doc, s, v, &format!("{at}.{name}"))?,
                    None if schema["additionalProperties"] == false => {
                        return Err(format!("{at}: `{name}` is not in the schema"));
                    }
                    None => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    conform(doc, item, v, &format!("{at}[{i}]"))?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_as_the_served_document_says() {
    let api = start().await;
    // Generated for this daemon: its `servers` entry is where it listens.
    assert_eq!(api.doc["servers"][0]["url"], api.base.as_str());
    assert_eq!(
        api.send(api.http.get(api.url("/openapi.json"))).await.body,
        api.doc
    );

    assert_eq!(
        api.send(api.http.get(api.url("/healthz"))).await.status,
        StatusCode::OK
    );
    let metrics = api.send(api.http.get(api.url("/metrics"))).await;
    assert_eq!(metrics.status, StatusCode::UNAUTHORIZED);
    assert_eq!(api.get("reader", "/metrics").await.status, StatusCode::OK);

    let submitted = api
        .submit("carol", "a", "approval:\n  required: true\n")
        .await;
    assert_eq!(submitted.status, StatusCode::CREATED);
    let id = submitted.body["id"].as_str().unwrap().to_string();
    let run = |action: &str| format!("/v1/runs/{id}{action}");
    assert_eq!(api.get("reader", "/v1/runs").await.status, StatusCode::OK);
    assert_eq!(api.get("reader", &run("")).await.status, StatusCode::OK);
    assert_eq!(
        api.post("bob", &run("/approve"), None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.post("bob", &run("/approve"), None).await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        api.post("alice", &run("/ack"), None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.post("carol", &run("/abort"), None).await.status,
        StatusCode::OK
    );
    let events = api.get("reader", &run("/events")).await;
    assert_eq!(events.status, StatusCode::OK);
    // No soak has started (no run executes here): an empty series.
    let series = api
        .get("reader", &run("/checks/one/series?points=100"))
        .await;
    assert_eq!(series.status, StatusCode::OK);
    assert_eq!(series.body["samples"], 0);
    assert_eq!(
        api.get("reader", &run("/checks/one/series?points=x"))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    for format in ["", "?format=html"] {
        let runbook = api.get("reader", &run(&format!("/runbook{format}"))).await;
        assert_eq!(runbook.status, StatusCode::OK, "{format}");
    }
    assert_eq!(
        api.get("reader", &run("/runbook?format=pdf")).await.status,
        StatusCode::BAD_REQUEST
    );
    // The run's own document: its id in the commands, no placeholder for it.
    let text = api
        .http
        .get(api.url(&run("/runbook")))
        .bearer_auth(secret("reader"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(&format!("pgshepherd ack {id}")), "{text}");
    assert!(!text.contains("<RUN_ID>"), "{text}");
    let names: Vec<&str> = events
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "run_submitted",
            "run_approved",
            "acknowledged",
            "abort_requested",
            "run_finished"
        ]
    );
    let captured = api.finished_capture_run("carol", "c", "").await;
    let undo = api
        .post(
            "carol",
            &format!("/v1/runs/{captured}/undo"),
            Some(&json!({})),
        )
        .await;
    assert_eq!(undo.status, StatusCode::ACCEPTED, "{:?}", undo.body);
    let other = api.get("reader", "/v1/runs/0123456789ab").await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    let malformed = api.get("reader", "/v1/runs/XYZ/events").await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);

    let checked = api.checked.lock().unwrap().clone();
    for route in api::ROUTES {
        assert!(
            checked
                .iter()
                .any(|c| { c.starts_with(&format!("{} {} 2", route.method, route.path)) }),
            "no success of {} {} was checked: {checked:#?}",
            route.method,
            route.path
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_problem_is_a_422_with_located_errors() {
    let api = start().await;
    let plan = common::one_table_plan(&api.dir.path().join("b"), "jobs", "1s", "");
    let good = api.bundle(&plan);
    let plan_path = good["plan"]["path"].as_str().unwrap().to_string();

    let mut outside = good.clone();
    outside["migrations"]["files"][0]["name"] = json!("../x.sql");
    let mut mismatch = good.clone();
    mismatch["migrations"]["files"][0]["sha256"] = json!("00".repeat(32));
    let mut no_path = good.clone();
    no_path["plan"]["path"] = json!("");
    for (body, file, says) in [
        (
            &outside,
            plan_path.as_str(),
            "must be a path within the set",
        ),
        (&mismatch, plan_path.as_str(), "does not match its content"),
        (&no_path, "", "`plan.path` must be"),
    ] {
        let answer = api.post("alice", "/v1/runs", Some(body)).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
        let errors = answer.body["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            errors[0],
            json!({"file": file, "line": 0, "column": 0, "message": answer.body["error"]})
        );
        assert!(
            errors[0]["message"].as_str().unwrap().contains(says),
            "{errors:?}"
        );
    }
    assert_eq!(api.db.row_count("runs").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_valid_token_only_healthz_and_openapi_answer() {
    let api = start().await;

    let health = api.send(api.http.get(api.url("/healthz"))).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(
        health.body,
        json!({"status": "ok", "node": "test-node", "version": env!("CARGO_PKG_VERSION")})
    );

    let doc = api.send(api.http.get(api.url("/openapi.json"))).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3.1"));
    for route in api::ROUTES {
        assert!(
            doc.body["paths"][route.path][route.method.to_ascii_lowercase()].is_object(),
            "{} {} missing from openapi.json",
            route.method,
            route.path
        );
    }

    // No token, an unknown one, another scheme: 401 with the challenge, as JSON.
    for auth in [
        None,
        Some("Bearer not-a-configured-token"),
        Some("Basic YWxpY2U6eA=="),
    ] {
        let mut request = api.http.get(api.url("/v1/runs"));
        if let Some(a) = auth {
            request = request.header("authorization", a);
        }
        let answer = api.send(request).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(
            answer.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        assert!(answer.body["error"].is_string(), "{:?}", answer.body);
    }
    let metrics = api.send(api.http.get(api.url("/metrics"))).await;
    assert_eq!(metrics.status, StatusCode::UNAUTHORIZED);
    // A token that differs from a configured one in its last character only.
    let almost = format!("{}x", &secret("root")[..secret("root").len() - 1]);
    let answer = api
        .send(api.http.get(api.url("/v1/runs")).bearer_auth(&almost))
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    // Known tokens: every role reads; submitting needs `submit`.
    for (name, ..) in TOKENS {
        assert_eq!(
            api.get(name, "/v1/runs").await.status,
            StatusCode::OK,
            "{name}"
        );
    }
    let refused = api.submit("reader", "p", "").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body["error"].as_str().unwrap().contains("`submit`"));
    assert_eq!(
        api.submit("bob", "p", "").await.status,
        StatusCode::FORBIDDEN
    );

    let response = api
        .http
        .get(api.url("/metrics"))
        .bearer_auth(secret("reader"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );

    // Unknown routes and methods answer JSON too.
    let nothing = api.get("reader", "/v2/nothing").await;
    assert_eq!(nothing.status, StatusCode::NOT_FOUND);
    assert!(nothing.body["error"].is_string());
    let wrong = api
        .send(
            api.http
                .delete(api.url("/v1/runs"))
                .bearer_auth(secret("root")),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(wrong.body["error"].is_string());
    // The event stream's route too (it is routed apart: it has no timeout).
    let wrong = api
        .send(
            api.http
                .post(api.url("/v1/runs/0123456789ab/events"))
                .bearer_auth(secret("root")),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(wrong.body["error"].is_string(), "{:?}", wrong.body);

    // Every refusal is in the audit trail, by token name (or anonymous).
    let audit = api.audit().await;
    let count = |actor: &str, status: i32| {
        audit
            .iter()
            .filter(|a| a.0 == actor && a.3 == status)
            .count()
    };
    // The five 401s came from one address within a minute: one row counts them.
    assert_eq!(count("anonymous", 401), 1, "{audit:#?}");
    assert_eq!(api.unauthenticated_counts().await, [5]);
    assert_eq!(count("reader", 403), 1, "{audit:#?}");
    assert_eq!(count("bob", 403), 1, "{audit:#?}");
    assert!(
        audit
            .iter()
            .any(|a| a.0 == "reader" && a.1 == "submit" && a.3 == 403)
    );
    api.assert_no_secrets_stored().await;
}

/// A scan without a token: 200 refused requests, on several routes and over
/// many connections at once, leave one audit row per source address and minute
/// (one here, unless the scan straddled a minute), and its count says 200.
#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_requests_are_counted_not_written_one_by_one() {
    let api = start().await;
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..200usize {
        let http = reqwest::Client::new();
        let request = match i % 4 {
            0 => http.get(api.url("/v1/runs")),
            1 => http
                .get(api.url("/v1/runs/0123456789ab"))
                .bearer_auth("not-a-token"),
            2 => http.post(api.url("/v1/runs/0123456789ab/abort")),
            _ => http
                .get(api.url("/v1/runs/0123456789ab/events"))
                .header("authorization", "Basic dTpw"),
        };
        requests.spawn(async move { request.send().await.unwrap().status() });
    }
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::UNAUTHORIZED);
    }
    let counts = api.unauthenticated_counts().await;
    assert!(!counts.is_empty() && counts.len() <= 2, "{counts:?}");
    assert_eq!(counts.iter().sum::<i32>(), 200, "{counts:?}");
    let sources: Vec<String> = api
        .db
        .client()
        .await
        .query("SELECT DISTINCT source FROM audit WHERE status = 401", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sources, ["127.0.0.1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_plan_is_refused_with_the_same_errors_as_check() {
    let api = start().await;
    let dir = api.dir.path().join("bad");
    let plan = common::one_table_plan(&dir, "jobs", "1s", "colour: blue\nrollbak: {}\n");
    std::fs::write(dir.join("migrations/V2__empty.sql"), "-- nothing\n").unwrap();
    let text = std::fs::read_to_string(&plan).unwrap();
    let files: Vec<Value> = ["V1__t.sql", "V1__t.down.sql", "V2__empty.sql"]
        .iter()
        .map(|f| {
            json!({"name": f, "content": std::fs::read_to_string(dir.join("migrations").join(f)).unwrap()})
        })
        .collect();
    let body = json!({
        "plan": {"path": plan.display().to_string(), "content": text},
        "migrations": {"name": "migrations", "files": files},
    });
    let answer = api.post("alice", "/v1/runs", Some(&body)).await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{:?}",
        answer.body
    );

    let check = std::process::Command::new(common::pgshepherd_bin())
        .args(["check", "--json"])
        .arg(&plan)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(
        answer.body["errors"], report["errors"],
        "API and check disagree"
    );
    let errors = answer.body["errors"].as_array().unwrap();
    assert!(errors.len() >= 3, "{errors:#?}");
    assert_eq!(errors[0]["line"], 14, "{errors:#?}");
    assert_eq!(errors[0]["column"], 1);
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("unknown key `colour`")
    );

    // A target the daemon does not define: located at the plan's `target` value.
    let other = common::one_table_plan(&api.dir.path().join("other"), "orders", "1s", "");
    let answer = api
        .post("alice", "/v1/runs", Some(&api.bundle(&other)))
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    let e = &answer.body["errors"][0];
    assert_eq!(
        (e["line"].as_u64(), e["column"].as_u64()),
        (Some(2), Some(9)),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("unknown target `orders`"),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("jobs"), "{e}");

    // Not JSON, the wrong shape, too many files, too big: 4xx, never a crash.
    let garbage = api
        .send(
            api.http
                .post(api.url("/v1/runs"))
                .bearer_auth(secret("alice"))
                .header("content-type", "application/json")
                .body("{\"plan\": [1, 2"),
        )
        .await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
    assert!(
        garbage.body["error"]
            .as_str()
            .unwrap()
            .contains("not a valid submission")
    );
    let shape = api
        .post("alice", "/v1/runs", Some(&json!({"plan": "x", "extra": 1})))
        .await;
    assert_eq!(shape.status, StatusCode::BAD_REQUEST);
    let binary = api
        .send(
            api.http
                .post(api.url("/v1/runs"))
                .bearer_auth(secret("alice"))
                .body(vec![0xffu8, 0x00, 0xfe, 0x80]),
        )
        .await;
    assert_eq!(binary.status, StatusCode::BAD_REQUEST);
    let many: Vec<Value> = (1..=1001)
        .map(|i| json!({"name": format!("V{i}__x.sql"), "content": "SELECT 1;"}))
        .collect();
    let too_many = api
        .post(
            "alice",
            "/v1/runs",
            Some(&json!({"plan": {"path": "p.yaml", "content": "name: p"},
                         "migrations": {"name": "m", "files": many}})),
        )
        .await;
    assert_eq!(too_many.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        too_many.body["error"]
            .as_str()
            .unwrap()
            .contains("at most 1000")
    );
    let huge = api
        .send(
            api.http
                .post(api.url("/v1/runs"))
                .bearer_auth(secret("alice"))
                .header("content-type", "application/json")
                .body(vec![b' '; 9 * 1024 * 1024]),
        )
        .await;
    assert_eq!(huge.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(huge.body["error"].as_str().unwrap().contains("8 MiB"));

    // The daemon still serves, nothing was stored, every attempt was audited.
    assert_eq!(api.get("reader", "/healthz").await.status, StatusCode::OK);
    assert_eq!(api.db.row_count("runs").await, 0);
    let audit = api.audit().await;
    let submits: Vec<i32> = audit
        .iter()
        .filter(|a| a.1 == "submit")
        .map(|a| a.3)
        .collect();
    assert_eq!(submits, [422, 422, 400, 400, 400, 422, 413], "{audit:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn four_eyes_approval_abort_and_ack() {
    let api = start().await;
    let submitted = api
        .submit("carol", "a", "approval:\n  required: true\n")
        .await;
    assert_eq!(
        submitted.status,
        StatusCode::CREATED,
        "{:?}",
        submitted.body
    );
    let run = submitted.body.clone();
    let id = run["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 12);
    assert_eq!(
        submitted.headers["location"],
        format!("/v1/runs/{id}").as_str()
    );
    assert_eq!(run["phase"], "pending_approval");
    assert_eq!(run["state"], "created");
    assert_eq!(run["submitted_by"], "carol");
    assert_eq!(run["requires_approval"], true);
    assert_eq!(run["target"], "jobs");
    assert_eq!(run["plan"]["name"], "one-table");
    assert_eq!(run["plan"]["migration_set"], "migrations");
    assert_eq!(run["files"].as_array().unwrap().len(), 2);
    assert_eq!(run["bundle_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(run["epoch"], 0);
    assert!(run["checks"].as_array().unwrap().is_empty());
    assert!(
        !run.to_string().contains("postgres://"),
        "no DSN in a view: {run}"
    );

    // The submitter may not approve, even holding the approve role.
    let own = api
        .post("carol", &format!("/v1/runs/{id}/approve"), None)
        .await;
    assert_eq!(own.status, StatusCode::FORBIDDEN);
    assert!(
        own.body["error"].as_str().unwrap().contains("four eyes"),
        "{:?}",
        own.body
    );
    let reader = api
        .post("reader", &format!("/v1/runs/{id}/approve"), None)
        .await;
    assert_eq!(reader.status, StatusCode::FORBIDDEN);
    let approved = api
        .post("bob", &format!("/v1/runs/{id}/approve"), None)
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{:?}", approved.body);
    assert_eq!(approved.body["phase"], "queued");
    assert_eq!(approved.body["approved_by"], "bob");
    assert!(approved.body["approved_at"].is_string());
    let again = api
        .post("root", &format!("/v1/runs/{id}/approve"), None)
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(
        again.body["error"]
            .as_str()
            .unwrap()
            .contains("already approved by bob")
    );

    // Abort: a submit-only token may abort its own runs only.
    let foreign = api
        .post("alice", &format!("/v1/runs/{id}/abort"), None)
        .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    let aborted = api
        .post("carol", &format!("/v1/runs/{id}/abort"), None)
        .await;
    assert_eq!(aborted.status, StatusCode::OK, "{:?}", aborted.body);
    assert_eq!(aborted.body["phase"], "finished");
    assert_eq!(aborted.body["outcome"], "stopped");
    assert_eq!(aborted.body["exit_code"], 5);
    assert_eq!(aborted.body["abort_requested_by"], "carol");
    assert_eq!(aborted.body["reason"], "aborted by carol before it started");
    let twice = api
        .post("root", &format!("/v1/runs/{id}/abort"), None)
        .await;
    assert_eq!(twice.status, StatusCode::CONFLICT);
    assert!(
        twice.body["error"]
            .as_str()
            .unwrap()
            .contains("already finished")
    );

    // Ack: once, by anyone who may act on runs.
    assert_eq!(
        api.post("reader", &format!("/v1/runs/{id}/ack"), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let acked = api.post("alice", &format!("/v1/runs/{id}/ack"), None).await;
    assert_eq!(acked.status, StatusCode::OK);
    assert_eq!(acked.body["acked_by"], "alice");
    let reacked = api.post("bob", &format!("/v1/runs/{id}/ack"), None).await;
    assert_eq!(reacked.status, StatusCode::CONFLICT);
    assert!(
        reacked.body["error"]
            .as_str()
            .unwrap()
            .contains("already acknowledged by alice")
    );

    let events = api.get("reader", &format!("/v1/runs/{id}/events")).await;
    let names: Vec<&str> = events
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "run_submitted",
            "run_approved",
            "abort_requested",
            "run_finished",
            "acknowledged"
        ]
    );
    let first = &events.body[0];
    assert_eq!(first["submitted_by"], "carol");
    assert_eq!(first["requires_approval"], true);
    assert_eq!(first["bundle_sha256"], run["bundle_sha256"]);
    assert_eq!(first["run_id"], id.as_str());

    // Unknown and malformed ids.
    let missing = api
        .post("root", "/v1/runs/0123456789ab/approve", None)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get("reader", "/v1/runs/0123456789ab").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("reader", "/v1/runs/NOT-AN-ID").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.post("root", "/v1/runs/x'%3B--/abort", None)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    let audit = api.audit().await;
    let rows: Vec<(&str, &str, i32)> = audit
        .iter()
        .filter(|a| a.2.as_deref() == Some(id.as_str()))
        .map(|a| (a.0.as_str(), a.1.as_str(), a.3))
        .collect();
    assert_eq!(
        rows,
        [
            ("carol", "submit", 201),
            ("carol", "approve", 403),
            ("reader", "approve", 403),
            ("bob", "approve", 200),
            ("root", "approve", 409),
            ("alice", "abort", 403),
            ("carol", "abort", 200),
            ("root", "abort", 409),
            ("reader", "ack", 403),
            ("alice", "ack", 200),
            ("bob", "ack", 409),
        ],
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .all(|a| a.4.as_deref().is_some_and(|d| !d.is_empty())),
        "{audit:#?}"
    );
    api.assert_no_secrets_stored().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_are_listed_newest_first_and_filtered() {
    let api = start().await;
    let mut ids = Vec::new();
    for (i, extra) in ["", "approval:\n  required: true\n", ""].iter().enumerate() {
        let r = api.submit("root", &format!("r{i}"), extra).await;
        assert_eq!(r.status, StatusCode::CREATED);
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    let aborted = api
        .post("root", &format!("/v1/runs/{}/abort", ids[2]), None)
        .await;
    assert_eq!(aborted.status, StatusCode::OK);

    let all = api.get("reader", "/v1/runs").await;
    let listed: Vec<&str> = all.body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [&ids[2], &ids[1], &ids[0]]);
    assert!(
        all.body["runs"][0].get("files").is_none(),
        "lists are compact"
    );

    let open = api.get("reader", "/v1/runs?phase=open").await;
    assert_eq!(open.body["runs"].as_array().unwrap().len(), 2);
    let pending = api
        .get("reader", "/v1/runs?phase=pending_approval&target=jobs")
        .await;
    assert_eq!(pending.body["runs"][0]["id"], ids[1].as_str());
    assert_eq!(pending.body["runs"].as_array().unwrap().len(), 1);
    let elsewhere = api.get("reader", "/v1/runs?target=orders").await;
    assert!(elsewhere.body["runs"].as_array().unwrap().is_empty());
    let one = api.get("reader", "/v1/runs?limit=1").await;
    assert_eq!(one.body["runs"].as_array().unwrap().len(), 1);
    assert_eq!(
        api.get("reader", "/v1/runs?limit=0").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.get("reader", "/v1/runs?phase=running").await.status,
        StatusCode::BAD_REQUEST
    );
}

/// The raw SSE text of `GET /v1/runs/{id}/events` until the server ends it.
async fn sse(api: &Api, id: &str, last_event_id: Option<i64>) -> String {
    let mut request = api
        .http
        .get(api.url(&format!("/v1/runs/{id}/events")))
        .bearer_auth(secret("reader"))
        .header("accept", "text/event-stream");
    if let Some(l) = last_event_id {
        request = request.header("last-event-id", l.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    common::within("the stream of a finished run ending", response.text())
        .await
        .unwrap()
}

/// Follow `GET /v1/runs/{id}/events` in a task: the receiver resolves once the
/// first event has arrived (the stream is live), the task returns the raw SSE
/// text once the server ends the stream.
fn follow(
    api: &Api,
    id: &str,
) -> (
    tokio::sync::oneshot::Receiver<()>,
    tokio::task::JoinHandle<String>,
) {
    let url = api.url(&format!("/v1/runs/{id}/events"));
    let http = api.http.clone();
    let (first, following) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut response = http
            .get(url)
            .bearer_auth(secret("reader"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut text = Vec::new();
        let mut first = Some(first);
        while let Some(chunk) = response.chunk().await.unwrap() {
            text.extend_from_slice(&chunk);
            let so_far = String::from_utf8_lossy(&text);
            let one_event = so_far
                .find("data:")
                .is_some_and(|at| so_far[at..].contains("\n\n"));
            if one_event && let Some(first) = first.take() {
                let _ = first.send(());
            }
        }
        String::from_utf8(text).unwrap()
    });
    (following, task)
}

fn sse_ids_and_names(text: &str) -> Vec<(i64, String)> {
    text.split("\n\n")
        .filter(|block| block.contains("data:"))
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix(&format!("{name}: "))
                            .or_else(|| l.strip_prefix(&format!("{name}:")))
                    })
                    .unwrap_or_default()
                    .to_string()
            };
            let data: Value = serde_json::from_str(&field("data")).unwrap();
            let id: i64 = field("id").parse().unwrap();
            assert_eq!(data["seq"], id);
            assert_eq!(data["event"], field("event").as_str());
            (id, field("event"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn events_as_json_pages_and_as_a_stream_that_ends_with_the_run() {
    let api = start().await;
    let id = api.submit("alice", "e", "").await.body["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Follow the open run; abort it meanwhile: the stream delivers the abort and
    // the end, then closes.
    let (following, follower) = follow(&api, &id);
    common::within("the stream's first event", following)
        .await
        .expect("the stream ended before its first event");
    assert_eq!(
        api.post("alice", &format!("/v1/runs/{id}/abort"), None)
            .await
            .status,
        StatusCode::OK
    );
    let streamed = sse_ids_and_names(
        &common::within("the stream ending after run_finished", follower)
            .await
            .unwrap(),
    );
    let names: Vec<&str> = streamed.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["run_submitted", "abort_requested", "run_finished"]);

    // The finished run's stream, from the start and resumed after the first event.
    let all = sse_ids_and_names(&sse(&api, &id, None).await);
    assert_eq!(all, streamed);
    let resumed = sse_ids_and_names(&sse(&api, &id, Some(all[0].0)).await);
    assert_eq!(resumed, all[1..]);

    // JSON: `seq` is the cursor for `after`.
    let json = api.get("reader", &format!("/v1/runs/{id}/events")).await;
    let seqs: Vec<i64> = json
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, all.iter().map(|(s, _)| *s).collect::<Vec<_>>());
    let after = api
        .get(
            "reader",
            &format!("/v1/runs/{id}/events?after={}&limit=1", seqs[0]),
        )
        .await;
    assert_eq!(after.body.as_array().unwrap().len(), 1);
    assert_eq!(after.body[0]["seq"], seqs[1]);
    assert_eq!(
        api.get("reader", &format!("/v1/runs/{id}/events?after=-1"))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.get("reader", "/v1/runs/0123456789ab/events")
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // A check sample written by a worker shows up in the run's view, latest per check.
    let client = api.db.client().await;
    for (value, check) in [(1.0, "one"), (2.0, "one"), (7.0, "two")] {
        let event = json!({"ts": "2026-01-01T00:00:00.000Z", "run_id": id, "step": "soak",
                           "event": "check_sample", "check": check, "value": value, "valid": true,
                           "breaching": false, "counts": {"valid_samples": 1}});
        client
            .execute(
                "INSERT INTO events (run_id, ts, name, event) VALUES ($1, now(), 'check_sample', $2)",
                &[&id, &event],
            )
            .await
            .unwrap();
    }
    let view = api.get("reader", &format!("/v1/runs/{id}")).await.body;
    let checks: Vec<(String, f64)> = view["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_string(),
                c["value"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(checks, [("one".to_string(), 2.0), ("two".to_string(), 7.0)]);
    assert_eq!(view["step"], "soak");
}

/// The `pgshepherd` client commands against the in-process daemon.
#[tokio::test(flavor = "multi_thread")]
async fn the_client_commands_speak_to_the_daemon_with_their_exit_codes() {
    let api = start().await;
    let plan = common::one_table_plan(
        &api.dir.path().join("c"),
        "jobs",
        "1s",
        "approval:\n  required: true\n",
    );
    let cli = |token: &str, args: &[&str]| {
        let mut cmd = tokio::process::Command::new(common::pgshepherd_bin());
        cmd.args(args)
            .env("PGSHEPHERD_SERVER", &api.base)
            .env("PGSHEPHERD_TOKEN", token);
        async move {
            let out = cmd.output().await.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let plan_arg = plan.to_str().unwrap();

    let (code, stdout, stderr) = cli(secret("alice"), &["submit", plan_arg]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let id = stdout.trim().to_string();
    assert_eq!(id.len(), 12, "{stdout}");
    assert!(stderr.contains("waiting for approval"), "{stderr}");

    let (code, stdout, _) = cli(secret("reader"), &["status", &id]).await;
    assert_eq!(code, Some(0));
    assert!(stdout.contains("pending_approval"), "{stdout}");
    let (code, stdout, _) = cli(secret("reader"), &["status", &id, "--json"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap()["id"],
        id.as_str()
    );
    let (code, stdout, _) = cli(secret("reader"), &["list"]).await;
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("ID") && stdout.contains(&id), "{stdout}");

    // Refusals exit 2 with the daemon's message.
    let (code, _, stderr) = cli(secret("alice"), &["approve", &id]).await;
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("four eyes") || stderr.contains("`approve`"),
        "{stderr}"
    );
    let (code, _, stderr) = cli("wrong-token-wrong-token", &["status", &id]).await;
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("401") && !stderr.contains("wrong-token"),
        "{stderr}"
    );
    let (code, _, _) = cli(secret("reader"), &["status", "0123456789ab"]).await;
    assert_eq!(code, Some(2));

    let (code, stdout, stderr) = cli(secret("bob"), &["approve", &id]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("queued"), "{stdout}");
    let (code, _, stderr) = cli(secret("bob"), &["abort", &id]).await;
    assert_eq!(code, Some(0), "{stderr}");

    // A finished run: `status` and `logs --follow` exit with its exit code.
    let (code, stdout, _) = cli(secret("reader"), &["status", &id]).await;
    assert_eq!(code, Some(5), "{stdout}");
    assert!(stdout.contains("stopped"), "{stdout}");
    let (code, stdout, _) = cli(secret("reader"), &["logs", &id]).await;
    assert_eq!(code, Some(0));
    assert!(stdout.contains("approved by bob"), "{stdout}");
    assert!(stdout.contains("(exit 5)"), "{stdout}");
    let (code, stdout, _) = cli(secret("reader"), &["logs", &id, "--follow", "--json"]).await;
    assert_eq!(code, Some(5));
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "run_finished");

    // A local error is reported like `check`, before anything is sent.
    std::fs::write(
        &plan,
        format!("{}colour: blue\n", std::fs::read_to_string(&plan).unwrap()),
    )
    .unwrap();
    let (code, _, stderr) = cli(secret("alice"), &["submit", plan_arg]).await;
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains(&format!("{plan_arg}:16:1: unknown key `colour`")),
        "{stderr}"
    );

    // Nobody listening: exit 1.
    let mut cmd = tokio::process::Command::new(common::pgshepherd_bin());
    let out = cmd
        .args(["list", "--server", "http://127.0.0.1:1"])
        .env("PGSHEPHERD_TOKEN", secret("reader"))
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the daemon"));
}

#[tokio::test(flavor = "multi_thread")]
async fn aborting_an_active_run_is_a_request_its_daemon_acts_on() {
    let api = start().await;
    let id = api.submit("alice", "x", "").await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    // As if a daemon had claimed it.
    api.db
        .execute(&format!(
            "UPDATE runs SET phase = 'active', owner = 'other-node', epoch = 1, \
             lease_until = now() + interval '15 seconds', started_at = now() WHERE id = '{id}'"
        ))
        .await;
    let requested = api
        .post("alice", &format!("/v1/runs/{id}/abort"), None)
        .await;
    assert_eq!(
        requested.status,
        StatusCode::ACCEPTED,
        "{:?}",
        requested.body
    );
    assert_eq!(requested.body["phase"], "active");
    assert_eq!(requested.body["owner"], "other-node");
    assert_eq!(requested.body["abort_requested_by"], "alice");
    // Asking again changes nothing and records no second event.
    let again = api
        .post("root", &format!("/v1/runs/{id}/abort"), None)
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body["abort_requested_by"], "alice");
    let events = api.get("reader", &format!("/v1/runs/{id}/events")).await;
    let names: Vec<&str> = events
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["run_submitted", "abort_requested"]);
    // Acknowledging works whatever the phase.
    assert_eq!(
        api.post("bob", &format!("/v1/runs/{id}/ack"), None)
            .await
            .status,
        StatusCode::OK
    );
}

/// `POST /v1/runs/{id}/undo`: what no run could accept is a 400, a run that
/// is not finished or has nothing to undo a 409, a read-only token a 403; an
/// undo of a plan that requires approval waits for someone other than who asked
/// (four eyes, through `approve`), and can be called off (`abort`) before it
/// starts; a dry run needs no approval unless it carries a predicate. Every
/// answer as the document says.
#[tokio::test(flavor = "multi_thread")]
async fn undo_requests_are_checked_approved_with_four_eyes_and_called_off() {
    let api = start().await;
    let undo = |id: &str| format!("/v1/runs/{id}/undo");
    let id = api
        .finished_capture_run("alice", "a", "approval:\n  required: true\n")
        .await;

    assert_eq!(
        api.post("reader", &undo(&id), Some(&json!({})))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    for bad in [
        json!({"mode": "all"}),
        json!({"versions": [-1]}),
        json!({"versions": [1]}),
        json!({"where": ""}),
        json!({"dry_run": "yes"}),
        json!({"extra": 1}),
        json!([1]),
    ] {
        let answer = api.post("alice", &undo(&id), Some(&bad)).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {:?}",
            answer.body
        );
    }
    let not_json = api
        .send(
            api.http
                .post(api.url(&undo(&id)))
                .bearer_auth(secret("alice"))
                .body("mode=merge"),
        )
        .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        api.post("alice", &undo("0123456789ab"), Some(&json!({})))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // Not finished yet; nothing captured.
    let open = api.submit("alice", "open", "").await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = api.post("alice", &undo(&open), Some(&json!({}))).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(
        refused.body["error"]
            .as_str()
            .unwrap()
            .contains("only a finished run can be undone"),
        "{:?}",
        refused.body
    );
    api.db
        .execute(&format!(
            "UPDATE runs SET phase = 'finished', outcome = 'succeeded' WHERE id = '{open}'"
        ))
        .await;
    let nothing = api.post("alice", &undo(&open), Some(&json!({}))).await;
    assert_eq!(nothing.status, StatusCode::CONFLICT);
    assert!(
        nothing.body["error"]
            .as_str()
            .unwrap()
            .contains("captured no data changes"),
        "{:?}",
        nothing.body
    );

    // Carol (submit and approve) asks; she may not approve her own undo.
    let asked = api
        .post(
            "carol",
            &undo(&id),
            Some(&json!({"versions": [2], "mode": "skip-conflicts", "where": "op = 'U'"})),
        )
        .await;
    assert_eq!(asked.status, StatusCode::ACCEPTED, "{:?}", asked.body);
    assert_eq!(asked.body["phase"], "pending_approval");
    assert_eq!(asked.body["requested_by"], "carol");
    assert_eq!(asked.body["where"], "op = 'U'");
    assert_eq!(
        api.post("carol", &undo(&id), Some(&json!({}))).await.status,
        StatusCode::CONFLICT,
        "one open undo per run"
    );
    let own = api
        .post("carol", &format!("/v1/runs/{id}/approve"), None)
        .await;
    assert_eq!(own.status, StatusCode::FORBIDDEN);
    assert!(own.body["error"].as_str().unwrap().contains("four eyes"));
    // Alice submitted the run; the undo is carol's: alice may not call it off.
    assert_eq!(
        api.post("alice", &format!("/v1/runs/{id}/abort"), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let approved = api
        .post("bob", &format!("/v1/runs/{id}/approve"), None)
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{:?}", approved.body);
    assert_eq!(approved.body["undos"][0]["phase"], "queued");
    assert_eq!(approved.body["undos"][0]["approved_by"], "bob");
    assert_eq!(
        api.post("bob", &format!("/v1/runs/{id}/approve"), None)
            .await
            .status,
        StatusCode::CONFLICT
    );
    // Called off by who asked, before any daemon took it.
    let cancelled = api
        .post("carol", &format!("/v1/runs/{id}/abort"), None)
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{:?}", cancelled.body);
    let u = &cancelled.body["undos"][0];
    assert_eq!(
        (u["phase"].as_str(), u["outcome"].as_str()),
        (Some("finished"), Some("cancelled"))
    );
    assert_eq!(u["cancelled_by"], "carol");
    // A dry run needs no approval, unless it carries a predicate (SQL run on
    // the target).
    let dry_where = api
        .post(
            "alice",
            &undo(&id),
            Some(&json!({"dry_run": true, "where": "true"})),
        )
        .await;
    assert_eq!(dry_where.status, StatusCode::ACCEPTED);
    assert_eq!(dry_where.body["phase"], "pending_approval");
    assert_eq!(
        api.post("alice", &format!("/v1/runs/{id}/abort"), None)
            .await
            .status,
        StatusCode::OK
    );
    let dry = api
        .post("alice", &undo(&id), Some(&json!({"dry_run": true})))
        .await;
    assert_eq!(dry.status, StatusCode::ACCEPTED);
    assert_eq!(dry.body["phase"], "queued");
    assert_eq!(dry.body["requires_approval"], false);

    let events = api.get("reader", &format!("/v1/runs/{id}/events")).await;
    let names: Vec<&str> = events
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "run_submitted",
            "undo_requested",
            "undo_approved",
            "undo_finished",
            "undo_requested",
            "undo_finished",
            "undo_requested"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_the_daemon_ends_open_event_streams() {
    let stop = tokio_util::sync::CancellationToken::new();
    let api = start_with(Some(stop.clone())).await;
    let id = api.submit("alice", "s", "").await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (following, follower) = follow(&api, &id);
    common::within("the stream's first event", following)
        .await
        .expect("the stream ended before its first event");
    stop.cancel();
    let text = common::within("the stream ending when the daemon stops", follower)
        .await
        .unwrap();
    let names: Vec<String> = sse_ids_and_names(&text)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(names, ["run_submitted"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_state_database_is_503_not_a_crash() {
    let api = start().await;
    let admin = common::cluster()
        .dsn("postgres")
        .connect("pgshepherd-test", &[])
        .await
        .unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE \"{}\" WITH (FORCE)", api.db.name))
        .await
        .unwrap();
    let health = api.send(api.http.get(api.url("/healthz"))).await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health.body["status"], "unavailable");
    assert!(health.body["error"].is_string());
    let list = api.get("reader", "/v1/runs").await;
    assert!(list.status.is_server_error(), "{}", list.status);
    assert!(list.body["error"].is_string());
    // Still serving.
    let doc = api.send(api.http.get(api.url("/openapi.json"))).await;
    assert_eq!(doc.status, StatusCode::OK);
}
