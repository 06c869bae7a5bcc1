//! The two apps, one per kind of listener, and the JSON answer every route
//! writes. The public app ([`PublicApp`]: the router's listener and each
//! instance's port) and the admin app ([`AdminApp`]) share only the router
//! and the state writer: neither can reach the other's routes.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::admission::Admission;
use crate::instance::Instance;
use crate::metrics::Metrics;
use crate::rollout::Rollouts;
use crate::routing::router::Router;
use crate::state::sync::StateSync;

/// What the public routes (`/predict`, `/v2`, `/topology`, `/metrics`,
/// health) share.
pub struct PublicApp {
    /// The topology's router (the admin app holds the same one).
    pub router: Arc<Router>,
    /// Largest accepted request body, in bytes.
    pub max_body: usize,
    /// Where runtime facts are persisted: a fault is committed before its
    /// answer goes out.
    pub state: Arc<StateSync>,
    /// The topology generation (shown as `X-Hadr-Topology-Generation`).
    pub generation: u64,
    /// `/metrics`, and the request counters it serves.
    pub metrics: Arc<Metrics>,
    /// Set on SIGTERM for `--drain`: `/readyz` answers 503 so balancers stop
    /// sending, while every request that still arrives is served.
    pub draining: Arc<AtomicBool>,
}

impl PublicApp {
    /// The limit every public request body is read within.
    pub fn body_limit(&self) -> super::body::Limit {
        super::body::Limit {
            bytes: self.max_body,
            flag: "--max-body",
        }
    }
}

/// What the operator's routes (`/admin/...`) share.
pub struct AdminApp {
    /// The topology's router: chaos finds its instance there, demotion
    /// resets its roles.
    pub router: Arc<Router>,
    /// Where runtime facts are persisted.
    pub state: Arc<StateSync>,
    /// Deploys, canaries and rollbacks.
    pub rollouts: Arc<Rollouts>,
    /// Largest upload to `PUT /admin/blobs`, in bytes.
    pub max_upload: usize,
    /// The bearer token admin requests must carry.
    pub admin_token: String,
}

/// Which public listener a request arrived on.
#[derive(Clone)]
pub enum Scope {
    /// The router's listener: requests are routed by load.
    Router,
    /// An instance's own port: requests go to that instance.
    Instance(Arc<Instance>),
}

/// Which app a listener serves, and for a public one, in which scope.
#[derive(Clone)]
pub enum Service {
    /// The router's listener or an instance's own port.
    Public(Arc<PublicApp>, Scope),
    /// The admin listener: operator routes behind a token.
    Admin(Arc<AdminApp>),
}

/// The connection policy of a group of listeners.
#[derive(Clone)]
pub struct Connections {
    /// Open connections allowed in the group, in all and per client address
    /// (the public listeners share one; the admin listener has its own, so
    /// a flood on one cannot lock the other out).
    pub admission: Arc<Admission>,
    /// How long an answer's write may make no progress before the
    /// connection is closed (the client is not reading).
    pub write_timeout: Duration,
    /// How long a client may go without completing a request's headers
    /// (idle keep-alive included) before its connection is closed; it is
    /// closed within twice this.
    pub header_timeout: Duration,
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
