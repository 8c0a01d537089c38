//! The status page the daemon serves at `/` on its `listen` address: watch runs
//! and their soaks, approve, abort and acknowledge from a browser. Nothing to
//! deploy besides the daemon and nothing fetched from elsewhere: the pages are
//! small HTML shells and the scripts and styles are built into the binary.
//!
//! - [`routes`]: the pages' routes (mounted into the API's router), sign-in and
//!   sign-out, and the headers every page carries (CSP and friends).
//! - [`session`]: sign-in sessions (cookie, expiry, CSRF token) and the
//!   cross-site checks the API applies to cookie-authenticated requests.
//! - [`transport`]: whether the page travels over TLS (the cookie's `Secure`).
//! - [`pages`]: the HTML shells, every value in them escaped.
//! - [`assets`]: the built-in JS, CSS and icon, with content-hash caching.
//! - [`downsample`]: a check's samples thinned for a chart (the series route).
//!
//! The page does nothing the API does not: its scripts call the same routes
//! (`/v1/runs`, `/v1/runs/{id}/events`, approve, abort, ack) with the session
//! cookie, so roles and four eyes are decided in one place. docs/web.md is the
//! user's guide.

pub mod assets;
pub mod downsample;
pub mod pages;
pub mod routes;
pub mod session;
pub mod transport;

pub use routes::{PAGES, router};
