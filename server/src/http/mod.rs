//! HTTP: listeners, request handling and the error → status mapping.
//!
//! - [`server`]: accept loops over hyper's HTTP/1 connections, with graceful
//!   shutdown and `TCP_NODELAY`; [`admission`]: the connection caps (per
//!   listener group and per client address) and the write timeout;
//!   [`heads`]: the header timeout, counted per connection.
//! - [`api`]: the public routes (`/predict`, `/topology`, `/metrics`,
//!   `/healthz`, `/readyz`); [`v2`]: the Open Inference Protocol on the
//!   same listeners; both run requests through [`call`]; [`admin`]: the
//!   operator's routes.
//! - [`body`]: reading a body within its byte limit (enforced before the body
//!   is read when `Content-Length` says so) and a time limit.
//! - [`error`]: every failure as a status code and a JSON body
//!   `{"error": "<code>", "message": "<what was wrong>"}`; [`unparsed`]: the
//!   same body for the answers hyper gives requests it cannot parse.
//!
//! Owns both listeners' apps. May use every layer below it: `rollout`,
//! `metrics`, `state`, `routing`, `instance`, `serving`, `sandbox`, `oip`,
//! `shutdown`.

pub mod admin;
pub mod admission;
pub mod api;
pub mod app;
pub mod body;
pub mod call;
pub mod error;
mod heads;
pub mod server;
mod unparsed;
pub mod v2;

pub use app::{AdminApp, Connections, PublicApp, Service};
pub use error::ApiError;

/// The route a path names: one trailing slash is not part of it
/// (`/predict/` is `/predict`, as `/v2/…/infer/` is `/v2/…/infer`), so a
/// client that adds one is served rather than told there is no such route.
pub(crate) fn route(path: &str) -> &str {
    match path.strip_suffix('/') {
        Some(route) if !route.is_empty() => route,
        _ => path,
    }
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn one_trailing_slash_is_not_part_of_the_route() {
        assert_eq!(route("/predict/"), "/predict");
        assert_eq!(route("/predict"), "/predict");
        assert_eq!(route("/admin/deploy/"), "/admin/deploy");
        assert_eq!(route("/"), "/");
        // Only one: `//` is no route hadr serves, and must not become one.
        assert_eq!(route("/predict//"), "/predict/");
    }
}
