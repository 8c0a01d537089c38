//! `GET /openapi.json`: the OpenAPI 3.1 description of every route (no auth, so
//! that tools can discover the API). It is derived, not written: each handler's
//! `#[utoipa::path]` names its route (from [`ROUTES`](super::ROUTES)) and the
//! types it answers with, whose schemas are derived from the very structs the
//! handlers serialise. A response cannot change shape without the document
//! changing with it; a test keeps the document in step with the router.
//!
//! Two rules apply to every route, here rather than in each annotation: the
//! bearer token is required unless a route says `security()`, and every route
//! that requires it may answer 401, 403, 500 and 503.

use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::server::ServerBuilder;
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, ToResponse};

use crate::config::Config;
use crate::daemon::api::error::{
    BadRequest, Conflict, ErrorBody, Forbidden, InternalError, Invalid, NotFound, TooLarge,
    Unauthorized, Unavailable, ValidationError,
};
use crate::daemon::api::routes::OPENAPI;
use crate::daemon::api::{control, events, health, runbook, runs, series, submit, undo};

const DESCRIPTION: &str = "Submit PostgreSQL deployment plans, approve, abort and \
    acknowledge runs, undo their captured data changes, and follow their events. Every route but /healthz and /openapi.json \
    needs `Authorization: Bearer <token>`; tokens are defined (as sha256 digests) in the \
    daemon config with roles read, submit, approve and admin. The web page's session cookie \
    authenticates too (a POST then needs the session's `X-CSRF-Token`; see docs/web.md). Every error is JSON \
    `{\"error\": \"...\"}`; a 422 adds `errors`, every problem located. See docs/api.md.";

#[derive(OpenApi)]
#[openapi(
    info(title = "pgshepherd daemon API", version = "1", description = DESCRIPTION),
    paths(
        health::healthz,
        health::metrics,
        handler,
        submit::submit,
        runs::list,
        runs::show,
        events::events,
        control::approve,
        control::abort,
        control::ack,
        undo::undo,
        runbook::runbook,
        series::series,
    ),
    components(
        // Named by the error responses, which refer to their schemas by name.
        schemas(ErrorBody, ValidationError),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            TooLarge,
            Invalid,
            InternalError,
            Unavailable,
        ),
    ),
    security(("bearer" = [])),
    tags((name = "service"), (name = "runs"), (name = "control")),
    modifiers(&EveryRoute),
)]
struct ApiDoc;

/// The rules every route follows (see the module docs).
struct EveryRoute;

impl Modify for EveryRoute {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from the daemon config's `tokens` (the daemon keeps only its sha256).",
                    ))
                    .build(),
            ),
        );
        for item in doc.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                if !is_public(op) {
                    add(op, "401", Unauthorized::response().0);
                    add(op, "403", Forbidden::response().0);
                    add(op, "500", InternalError::response().0);
                    add(op, "503", Unavailable::response().0);
                }
            }
        }
    }
}

/// A route that says `security()`: no token needed.
fn is_public(op: &Operation) -> bool {
    op.security.as_ref().is_some_and(Vec::is_empty)
}

fn add(op: &mut Operation, status: &str, response: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(response)));
}

/// The document for a daemon listening on `listen` (its one `servers` entry).
pub fn document(listen: &str) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.servers = Some(vec![
        ServerBuilder::new()
            .url(format!("http://{listen}"))
            .description(Some("this daemon's `listen` address"))
            .build(),
    ]);
    doc
}

/// This document (no auth)
// The handler of `GET /openapi.json` for the daemon configured by `config`: the
// document is generated once, here, when the router is built. (The doc comment
// above is the operation's summary in the document.)
#[utoipa::path(
    get,
    path = OPENAPI.path,
    operation_id = "openapi",
    tag = "service",
    security(),
    responses((status = 200, description = "OpenAPI 3.1 document.", body = Object)),
)]
pub fn handler(
    config: &Config,
) -> impl Fn() -> std::future::Ready<Response> + Clone + Send + Sync + 'static {
    let listen = config
        .listen
        .as_deref()
        .unwrap_or(crate::daemon::DEFAULT_LISTEN);
    // Serialising the document's own types cannot fail.
    let body = Bytes::from(document(listen).to_json().unwrap_or_default());
    move || {
        std::future::ready(
            ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response(),
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::document;
    use crate::daemon::api::ROUTES;

    fn doc() -> Value {
        serde_json::to_value(document("127.0.0.1:8750")).unwrap()
    }

    #[test]
    fn the_document_describes_every_route_and_nothing_else() {
        let doc = doc();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = doc["paths"].as_object().unwrap();
        let mut described = 0;
        for (path, item) in paths {
            for method in ["get", "post", "put", "delete", "patch"] {
                if item.get(method).is_some() {
                    described += 1;
                    assert!(
                        ROUTES
                            .iter()
                            .any(|r| r.path == path && r.method.eq_ignore_ascii_case(method)),
                        "{method} {path} is documented but not served"
                    );
                }
            }
        }
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method.to_ascii_lowercase()];
            assert!(op.is_object(), "{} {} is not documented", r.method, r.path);
            assert!(op["operationId"].is_string(), "{} {}", r.method, r.path);
            let public = ["/healthz", "/openapi.json"].contains(&r.path);
            assert_eq!(
                op.get("security")
                    .is_some_and(|s| s == &serde_json::json!([])),
                public,
                "{} {}: only /healthz and /openapi.json are unauthenticated",
                r.method,
                r.path
            );
            if !public {
                for status in ["401", "403"] {
                    assert!(
                        op["responses"][status].is_object(),
                        "{} {}: {status}",
                        r.method,
                        r.path
                    );
                }
            }
        }
        assert_eq!(described, ROUTES.len());
        assert_eq!(doc["security"], serde_json::json!([{"bearer": []}]));
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn every_ref_resolves() {
        fn walk(node: &Value, doc: &Value, seen: &mut usize) {
            match node {
                Value::Object(o) => {
                    if let Some(Value::String(target)) = o.get("$ref") {
                        let path = target.strip_prefix("#/").expect("a local $ref");
                        let mut at = doc;
                        for part in path.split('/') {
                            at = &at[part];
                        }
                        assert!(!at.is_null(), "dangling $ref {target}");
                        *seen += 1;
                    }
                    o.values().for_each(|v| walk(v, doc, seen));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(v, doc, seen)),
                _ => {}
            }
        }
        let doc = doc();
        let mut seen = 0;
        walk(&doc, &doc, &mut seen);
        assert!(seen > 20, "only {seen} $refs: is the document complete?");
    }

    #[test]
    fn every_422_carries_located_errors() {
        let doc = doc();
        let invalid = &doc["components"]["responses"]["Invalid"]["content"]["application/json"]["schema"]
            ["$ref"];
        assert_eq!(invalid, "#/components/schemas/ValidationError");
        let schema = &doc["components"]["schemas"]["ValidationError"];
        assert_eq!(schema["required"], serde_json::json!(["error", "errors"]));
        let diagnostic = &doc["components"]["schemas"]["Diagnostic"]["required"];
        assert_eq!(
            diagnostic,
            &serde_json::json!(["file", "line", "column", "message"])
        );
    }

    #[test]
    fn limits_written_as_literals_match_the_code() {
        let doc = doc();
        let files = &doc["components"]["schemas"]["MigrationFiles"]["properties"]["files"];
        assert_eq!(files["maxItems"], crate::daemon::api::bundle::MAX_FILES);
    }

    #[test]
    fn the_server_is_the_listen_address() {
        let doc = serde_json::to_value(document("[::1]:9000")).unwrap();
        assert_eq!(doc["servers"][0]["url"], "http://[::1]:9000");
    }
}
