//! API failures. Every one is answered as JSON `{"error": "..."}` (plus `errors`
//! with located problems for an invalid plan), never as a bare status line.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::daemon::store::StoreError;
use crate::plan::Diagnostic;

/// What the audit trail records about a response (set by handlers and errors,
/// read by the route middleware). Never contains a token.
#[derive(Debug, Clone)]
pub struct AuditDetail(pub String);

/// The run a response concerns, when the path does not name it (a submission).
#[derive(Debug, Clone)]
pub struct AuditRun(pub String);

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Located problems (422 for an invalid plan), as `check --json` reports them.
    pub errors: Vec<Diagnostic>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            errors: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn no_such_run(id: &str) -> ApiError {
        ApiError::not_found(format!("no run {id}"))
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    /// An invalid submission: every problem, located.
    pub fn invalid(errors: Vec<Diagnostic>) -> ApiError {
        let n = errors.len();
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!(
                "the plan is invalid ({n} problem{}); nothing was submitted",
                if n == 1 { "" } else { "s" }
            ),
            errors,
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    fn body(&self) -> Value {
        let mut body = json!({ "error": self.message });
        if !self.errors.is_empty() {
            body["errors"] = self.errors.iter().map(diagnostic_json).collect();
        }
        body
    }
}

/// One located problem, with the same fields as `pgshepherd check --json`.
pub fn diagnostic_json(d: &Diagnostic) -> Value {
    json!({
        "file": d.file.display().to_string(),
        "line": d.line,
        "column": d.column,
        "message": d.message,
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), error = %self.message, "api request failed");
        }
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pgshepherd\""),
            );
        }
        let detail = match self.errors.first() {
            Some(first) => format!("{}; first: {first}", self.message),
            None => self.message,
        };
        response.extensions_mut().insert(AuditDetail(detail));
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Pool(_) | StoreError::Connect { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::from(e).into()
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthorized_carries_the_bearer_challenge_and_json() {
        let r = ApiError::unauthorized("no token").into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(
            r.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .contains("json")
        );
    }

    #[test]
    fn invalid_lists_every_problem() {
        let e = ApiError::invalid(vec![
            Diagnostic::new("p.yaml", 3, 1, "unknown key `x`"),
            Diagnostic::new("m/V1__a.sql", 1, 1, "empty"),
        ]);
        let body = e.body();
        assert_eq!(body["errors"].as_array().unwrap().len(), 2);
        assert_eq!(body["errors"][0]["file"], "p.yaml");
        assert_eq!(body["errors"][0]["line"], 3);
        assert!(body["error"].as_str().unwrap().contains("2 problems"));
    }
}
