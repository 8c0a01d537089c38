//! API failures. Every one is answered as JSON `{"error": "..."}`; a 422 (a
//! submission refused for what it contains) also carries `errors`, every problem
//! located as `pgshepherd check --json` reports it. The bodies are the types
//! below, which the OpenAPI document is derived from.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::header::Header;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::{Content, Ref, RefOr};

use crate::daemon::store::StoreError;
use crate::plan::Diagnostic;

/// What the audit trail records about a response (set by handlers and errors,
/// read by the route middleware). Never contains a token.
#[derive(Debug, Clone)]
pub struct AuditDetail(pub String);

/// The response is not audited although its route is mutating: a sign-out
/// that had no session to end (anyone may send one, as often as they like).
#[derive(Debug, Clone, Copy)]
pub struct NotAudited;

/// The run a response concerns, when the path does not name it (a submission).
#[derive(Debug, Clone)]
pub struct AuditRun(pub String);

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Located problems: at least one in every 422, none in any other status
    /// (see [`ApiError::unprocessable`]).
    errors: Vec<Diagnostic>,
}

/// The body of every error but a 422.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: String,
}

/// The body of a 422: what was refused, and every problem located.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationError {
    pub error: String,
    pub errors: Vec<Problem>,
}

/// One located problem, with the same fields as `pgshepherd check --json`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Diagnostic)]
pub struct Problem {
    pub file: String,
    /// 1-based; 0 when unknown.
    pub line: u32,
    /// 1-based; 0 when unknown.
    pub column: u32,
    pub message: String,
}

impl From<&Diagnostic> for Problem {
    fn from(d: &Diagnostic) -> Problem {
        Problem {
            file: d.file.display().to_string(),
            line: d.line,
            column: d.column,
            message: d.message.clone(),
        }
    }
}

impl ApiError {
    /// Any status but 422, which carries located problems: see
    /// [`ApiError::unprocessable`] and [`ApiError::invalid`].
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        debug_assert_ne!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "a 422 is built with its located problems (ApiError::unprocessable)"
        );
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

    /// A submission refused for what it contains (422): `message` says what, and
    /// `errors` (never empty) locates each problem.
    pub fn unprocessable(message: impl Into<String>, errors: Vec<Diagnostic>) -> ApiError {
        debug_assert!(!errors.is_empty(), "a 422 locates at least one problem");
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
            errors,
        }
    }

    /// An invalid plan: every problem, located.
    pub fn invalid(errors: Vec<Diagnostic>) -> ApiError {
        let n = errors.len();
        ApiError::unprocessable(
            format!(
                "the plan is invalid ({n} problem{}); nothing was submitted",
                if n == 1 { "" } else { "s" }
            ),
            errors,
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The body: `ValidationError` for a 422, `Error` for any other status.
    fn body(&self) -> Body {
        if self.status == StatusCode::UNPROCESSABLE_ENTITY {
            Body::Invalid(ValidationError {
                error: self.message.clone(),
                errors: self.errors.iter().map(Problem::from).collect(),
            })
        } else {
            Body::Error(ErrorBody {
                error: self.message.clone(),
            })
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum Body {
    Invalid(ValidationError),
    Error(ErrorBody),
}

/// The error answers the OpenAPI document names once (`#/components/responses/`)
/// and every route refers to: a marker type each, with its description.
macro_rules! error_responses {
    ($($name:ident($body:ty): $description:literal,)*) => {$(
        #[doc = $description]
        pub struct $name;

        impl<'r> utoipa::ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
                (stringify!($name), json_response::<$body>($description).build().into())
            }
        }
    )*};
}

error_responses! {
    BadRequest(ErrorBody): "Malformed request: not JSON, wrong shape, bad run id or query parameter.",
    Forbidden(ErrorBody): "The token lacks the role, or the rule (four eyes, own runs only) refuses it.",
    NotFound(ErrorBody): "No such run.",
    Conflict(ErrorBody): "The run is not in a state that allows this (names the current state or who already did it).",
    TooLarge(ErrorBody): "The request body is larger than 8 MiB.",
    Invalid(ValidationError): "The submission is refused for what it contains: every problem, located.",
    InternalError(ErrorBody): "Internal error.",
    Unavailable(ErrorBody): "The state database is unavailable.",
}

/// No valid bearer token.
pub struct Unauthorized;

impl<'r> utoipa::ToResponse<'r> for Unauthorized {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        let response = json_response::<ErrorBody>(
            "No valid bearer token. Carries `WWW-Authenticate: Bearer`.",
        )
        .header("WWW-Authenticate", Header::default());
        ("Unauthorized", response.build().into())
    }
}

fn json_response<T: ToSchema>(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        Content::new(Some(Ref::from_schema_name(T::name()))),
    )
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
            StoreError::Pool(_) | StoreError::Connect { .. } | StoreError::Deadline { .. } => {
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
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(body["errors"].as_array().unwrap().len(), 2);
        assert_eq!(body["errors"][0]["file"], "p.yaml");
        assert_eq!(body["errors"][0]["line"], 3);
        assert!(body["error"].as_str().unwrap().contains("2 problems"));
    }
}
