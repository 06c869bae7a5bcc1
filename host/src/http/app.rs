//! What every handler shares (the [`App`]), which listener a request came
//! in on ([`Target`]), and the JSON answer every route writes.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::instance::Instance;
use crate::router::Router;

/// What every handler shares: the router and the request limits.
pub struct App {
    /// The topology's router.
    pub router: Router,
    /// Largest accepted request body, in bytes.
    pub max_body: usize,
    /// Open connections allowed over the public listeners, in all and per
    /// client address.
    pub connections: Arc<super::admission::Admission>,
    /// Open connections allowed on the admin listener, apart from the public
    /// ones so that a flood there cannot lock the operator out.
    pub admin_connections: Arc<super::admission::Admission>,
    /// How long an answer's write may make no progress before the
    /// connection is closed (the client is not reading).
    pub write_timeout: std::time::Duration,
    /// The bearer token admin requests must carry.
    pub admin_token: String,
    /// Where runtime facts are persisted.
    pub state: Arc<crate::persistence::StateSync>,
    /// The topology generation (shown as `X-Hadr-Topology-Generation`).
    pub generation: u64,
    /// Deploys, canaries and rollbacks.
    pub rollouts: Arc<crate::rollout::Rollouts>,
    /// Largest upload to `PUT /admin/blobs`, in bytes.
    pub max_upload: usize,
    /// `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Set on SIGTERM for `--drain`: `/readyz` answers 503 so balancers stop
    /// sending, while every request that still arrives is served.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// Which listener a request arrived on.
#[derive(Clone)]
pub enum Target {
    /// The router's listener: requests are routed by load.
    Router,
    /// An instance's own port: requests go to that instance.
    Instance(Arc<Instance>),
    /// The admin listener: operator routes behind a token.
    Admin,
}

/// A JSON answer with `status`.
pub(crate) fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).expect("serialising a response cannot fail");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
