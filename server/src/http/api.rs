//! Routes and request handling.
//!
//! The router's listener serves `POST /predict` (routed by load),
//! `GET /predict`, `GET /topology`, `GET /metrics`, `GET /healthz` and
//! `GET /readyz`. An instance's own port serves `POST` and `GET /predict`
//! straight to that instance (like the article's predictor servers),
//! `GET /healthz` and `GET /readyz`. Both also speak the Open Inference
//! Protocol under `/v2` ([`super::v2`]), through the same
//! [`super::call::call`].
//!
//! `GET /predict` predicts the deployment's example (the request its smoke
//! test sends), as the article's router answered `GET` with a built-in
//! candidate: the article's Locust file load-tests with it. It goes through
//! routing, load counting, the sandbox and metrics like any request.
//!
//! `/healthz` says the process serves; `/readyz` is 200 only while a request
//! could be taken now (on the router: some instance that takes traffic is
//! under its threshold and has a working sandbox; on an instance's port:
//! that instance), 503 otherwise, for load balancers and Kubernetes.
//!
//! The body limit is checked against `Content-Length` before a byte of the
//! body is read, and enforced again while reading (for chunked bodies), so an
//! oversized upload costs the host neither time nor memory.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use super::app::Scope;
use super::app::{json, PublicApp};
use super::body;
use super::call::{call, readyz};
use super::error::ApiError;
use crate::instance::{Input, Instance, InstanceReport};
use crate::routing::router::{Router, Want};

/// Answers one request on a public listener; never fails (errors become
/// JSON answers).
pub async fn handle(
    app: Arc<PublicApp>,
    target: Scope,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = super::route(req.uri().path());
    if path == "/predict" && (req.method() == Method::POST || req.method() == Method::GET) {
        let started = std::time::Instant::now();
        let mut served_by = None;
        let response = predict(&app, &target, req, &mut served_by)
            .await
            .unwrap_or_else(ApiError::into_response);
        let instance = served_by.as_ref().map(|i: &Arc<Instance>| i.name());
        app.metrics
            .observe(instance, response.status().as_u16(), started.elapsed());
        return Ok(response);
    }
    let response = match (path, &target) {
        ("/predict", _) => Err(not_allowed("POST, GET, HEAD")),
        ("/topology", Scope::Router) if req.method() == Method::GET => {
            let mut response = json(StatusCode::OK, &topology(&app.router));
            response
                .headers_mut()
                .insert("x-hadr-topology-generation", app.generation.into());
            Ok(response)
        }
        ("/healthz", _) if req.method() == Method::GET => {
            Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
        }
        ("/readyz", _) if req.method() == Method::GET => readyz(&app, &target),
        ("/metrics", Scope::Router) if req.method() == Method::GET => {
            let mut response = Response::new(Full::new(Bytes::from(app.metrics.render())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(response)
        }
        ("/topology" | "/metrics", Scope::Router) | ("/healthz" | "/readyz", _) => {
            Err(not_allowed("GET, HEAD"))
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no route {path}; this listener serves {}",
                match target {
                    Scope::Router =>
                        "POST /predict, GET /predict, GET /topology, GET /metrics, GET /healthz, GET /readyz and the Open Inference Protocol under /v2",
                    Scope::Instance(_) =>
                        "POST /predict, GET /predict, GET /healthz, GET /readyz and the Open Inference Protocol under /v2",
                }
            ),
        )),
    };
    let response = match response {
        Err(refused) => Err(body::refuse(req, app.body_limit(), refused).await),
        ok => ok,
    };
    Ok(response.unwrap_or_else(ApiError::into_response))
}

/// Answers `POST /predict` (and `GET`, with the deployment's example);
/// `served_by` is set to the instance that ran the call (the last one, after
/// a retry).
async fn predict(
    app: &PublicApp,
    target: &Scope,
    req: Request<Incoming>,
    served_by: &mut Option<Arc<Instance>>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let model = requested_model(req.uri().query());
    let body = match *req.method() {
        Method::GET => Input::Example,
        _ => Input::Body(body::read(req, app.body_limit()).await?),
    };
    let want = Want {
        model: model.as_deref(),
        version: None,
    };
    match (want.model, target) {
        (Some(model), _) => {
            let served = match target {
                Scope::Router => app.router.models().iter().any(|m| m == model),
                Scope::Instance(i) => i.serves_model(model),
            };
            if !served {
                // Only a miss builds the lists its 404 names.
                super::v2::serving(app, target, want)?;
            }
        }
        (None, Scope::Router) if app.router.models().len() > 1 => {
            return Err(model_required(app.router.models()))
        }
        (None, _) => {}
    }
    let out = call(app, target, want, body, served_by).await?;
    let mut response = Response::new(Full::new(Bytes::from(out.into_json())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// The model a `/predict` URL names (`?model=NAME`), if any.
fn requested_model(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == "model")
        .map(|(_, name)| name.into_owned())
}

/// 400 for a `/predict` on a router that serves several models and a URL
/// that names none: sent to any instance, a request would be answered by
/// whichever model it reached.
fn model_required(models: &[String]) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "model_required",
        format!(
            "this router serves several models ({}): name one with /predict?model=NAME, or use POST /v2/models/NAME/infer or the port of an instance serving it",
            models.join(", ")
        ),
    )
}

fn not_allowed(allow: &'static str) -> ApiError {
    ApiError::method_not_allowed(allow)
}

/// The live topology in the article's shape, with hadr's extra fields.
fn topology(router: &Router) -> serde_json::Map<String, serde_json::Value> {
    router
        .instances()
        .iter()
        .map(|i| {
            let report: InstanceReport = i.report();
            (
                i.name().to_string(),
                serde_json::to_value(report).expect("a report serialises"),
            )
        })
        .collect()
}
