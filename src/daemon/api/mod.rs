//! The daemon's HTTP API (axum): bearer-token auth with roles, the audit trail,
//! submissions, run views, control actions and the event stream.
//!
//! - [`routes`]: the route table, and the middleware every request passes through
//!   (metrics, audit of mutating and refused requests, panic containment).
//! - [`auth`]: bearer tokens checked against the config's sha256 digests; roles.
//! - [`audit`]: one `audit` row and one log line per mutating or refused request.
//! - [`bundle`]: the submitted plan bundle: its limits, canonical form and checksum,
//!   and how it compiles back into a [`crate::plan::Plan`] (also used by workers).
//! - [`submit`]: `POST /v1/runs`.
//! - [`runs`]: `GET /v1/runs`, `GET /v1/runs/{id}`; [`view`] builds their JSON.
//! - [`control`]: approve, abort, ack (of a run, or of its pending undo).
//! - [`undo`]: `POST /v1/runs/{id}/undo`.
//! - [`runbook`](mod@runbook): `GET /v1/runs/{id}/runbook`, the run's on-call document.
//! - [`events`]: a run's events as JSON or Server-Sent Events.
//! - [`series`]: one soak check's samples for a chart, downsampled.
//! - [`health`]: `GET /healthz`, `GET /metrics`.
//! - [`openapi`]: `GET /openapi.json`, derived from the handlers and their types;
//!   [`schema`]: the few schemas no type derives (a run event, text enums).
//! - [`error`]: every failure as JSON `{"error": ...}` with its status (and
//!   `errors`, every problem located, with a 422).
//!
//! The web page ([`crate::web`]) is mounted into the same router; its session
//! cookie authenticates API requests too (see [`auth`]).
//!
//! The full reference for users is docs/api.md.

pub mod audit;
pub mod auth;
pub mod bundle;
pub mod control;
pub mod error;
pub mod events;
pub mod health;
pub mod openapi;
pub mod routes;
pub mod runbook;
pub mod runs;
pub mod schema;
pub mod series;
pub mod submit;
pub mod undo;
pub mod view;

pub use error::ApiError;
pub use routes::{ROUTES, RouteSpec, router, router_until};
