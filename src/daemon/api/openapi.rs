//! `GET /openapi.json`: the OpenAPI 3.1 description of every route (no auth, so
//! that tools can discover the API). The document is written by hand in
//! `openapi.json` next to this file; a test keeps it in step with the router.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The OpenAPI document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> Response {
    let mut response = DOCUMENT.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::DOCUMENT;
    use crate::daemon::api::ROUTES;

    #[test]
    fn the_document_describes_every_route_and_nothing_else() {
        let doc: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
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
                assert!(
                    op["responses"]["401"].is_object(),
                    "{} {}",
                    r.method,
                    r.path
                );
                assert!(
                    op["responses"]["403"].is_object(),
                    "{} {}",
                    r.method,
                    r.path
                );
            }
        }
        assert_eq!(described, ROUTES.len());
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        // Every $ref resolves.
        let text = DOCUMENT;
        for piece in text.split("\"$ref\": \"#/").skip(1) {
            let target = piece.split('"').next().unwrap();
            let mut node = &doc;
            for part in target.split('/') {
                node = &node[part];
            }
            assert!(!node.is_null(), "dangling $ref #/{target}");
        }
    }
}
