//! HTTP: listeners, request handling and the error → status mapping.
//!
//! - [`server`]: accept loops over hyper's HTTP/1 connections, with graceful
//!   shutdown and `TCP_NODELAY`.
//! - [`api`]: the routes (`POST /predict`, `GET /topology`, `GET /healthz`)
//!   and the body limit, enforced before the body is read.
//! - [`error`]: every failure as a status code and a JSON body
//!   `{"error": "<code>", "message": "<what was wrong>"}`.

pub mod admin;
pub mod api;
pub mod error;
pub mod server;

pub use api::{App, Target};
pub use error::ApiError;
