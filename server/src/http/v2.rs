//! The Open Inference Protocol (KServe v2, Triton's HTTP/REST), on the
//! router's listener and on each instance's port, next to `/predict`:
//!
//! | route | answer |
//! |---|---|
//! | `GET /v2/health/live` | 200 while the process serves |
//! | `GET /v2/health/ready` | 200 while a request could be taken now (as `/readyz`) |
//! | `GET /v2` | server metadata, extensions `binary_tensor_data` |
//! | `GET /v2/models/{name}[/versions/{v}]` | model metadata, read from the ONNX model |
//! | `GET /v2/models/{name}[/versions/{v}]/ready` | 200 while an instance serving it can take a request |
//! | `POST /v2/models/{name}[/versions/{v}]/infer` | inference, JSON or binary tensors both ways |
//!
//! A model's name is its topology entry's model file stem (`digits` for
//! `models/digits.onnx`); its versions are the deployment versions in force.
//! An infer request goes through [`super::call::call`], exactly as `/predict`
//! does: routing among the instances serving that model (each model keeps
//! its own actives and standby), load counting, the sandbox, deadlines, the
//! retry, a canary's share (unless the URL pins a version) and `/metrics`.
//! The guest's typed `infer` export runs it; [`crate::oip`] parses, checks
//! and encodes the tensors.
//!
//! Errors are `{"error": "..."}`: 400 for a request that is not the
//! protocol's or does not fit the model, 404 for an unknown model or
//! version, 501 for a guest without `infer`, 503 with `Retry-After` when
//! saturated, 504 past the deadline, 500 for a fault.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::app::Scope;
use super::app::{json, PublicApp};
use super::body;
use super::call::{call, instance_ready, not_draining, readyz};
use super::error::ApiError;
use crate::instance::{Answer, Input, Instance};
use crate::oip;
use crate::routing::router::Want;

/// The header that says where the JSON of a binary body ends.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Answers one `/v2` request; never fails (errors become `{"error"}`).
pub async fn handle(
    app: &PublicApp,
    scope: &Scope,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let decoded = decode_segments(&path);
    let segments: Vec<&str> = decoded.iter().map(|s| s.as_ref()).collect();
    let method = req.method().clone();
    let started = std::time::Instant::now();
    // Taken by the one route that reads the body; a refusal elsewhere reads
    // it first (see `body::refuse`).
    let mut req = Some(req);
    let outcome = match (segments.as_slice(), &method) {
        (["v2"], &Method::GET) => Ok(json(StatusCode::OK, &server_metadata())),
        (["v2", "health", "live"], &Method::GET) => {
            Ok(json(StatusCode::OK, &serde_json::json!({"live": true})))
        }
        (["v2", "health", "ready"], &Method::GET) => readyz(app, scope),
        (["v2"] | ["v2", "health", "live" | "ready"], _) => {
            Err(ApiError::method_not_allowed("GET, HEAD"))
        }
        (["v2", "models", name, rest @ ..], _) => {
            let (version, rest) = match rest {
                ["versions", v, rest @ ..] => (Some(*v), rest),
                rest => (None, rest),
            };
            let want = Want {
                model: Some(name),
                version,
            };
            match (rest, &method) {
                ([], &Method::GET) => model_metadata(app, scope, want),
                (["ready"], &Method::GET) => model_ready(app, scope, want),
                (["infer"], &Method::POST) => {
                    let mut served_by = None;
                    let req = req.take().expect("only this route takes the request");
                    let response = infer(app, scope, want, req, &mut served_by).await;
                    let status = match &response {
                        Ok(r) => r.status(),
                        Err(e) => e.status,
                    };
                    let instance = served_by.as_ref().map(|i: &Arc<Instance>| i.name());
                    app.metrics
                        .observe(instance, status.as_u16(), started.elapsed());
                    response
                }
                ([] | ["ready"], _) => Err(ApiError::method_not_allowed("GET, HEAD")),
                (["infer"], _) => Err(ApiError::method_not_allowed("POST")),
                _ => Err(not_found(&path)),
            }
        }
        _ => Err(not_found(&path)),
    };
    let outcome = match (outcome, req) {
        (Err(refused), Some(req)) => Err(body::refuse(req, app.body_limit(), refused).await),
        (outcome, _) => outcome,
    };
    outcome.unwrap_or_else(ApiError::into_v2_response)
}

/// The path's segments, percent-decoded one by one (clients such as
/// tritonclient quote a model's name into the URL: `my%20model` is the
/// model `my model`). A segment that does not decode to UTF-8 is kept as
/// sent, so it names no model and gets the 404 that lists them.
fn decode_segments(path: &str) -> Vec<std::borrow::Cow<'_, str>> {
    path.trim_matches('/')
        .split('/')
        .map(|segment| {
            percent_encoding::percent_decode_str(segment)
                .decode_utf8()
                .unwrap_or(std::borrow::Cow::Borrowed(segment))
        })
        .collect()
}

fn not_found(path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {path}; the Open Inference Protocol routes are GET /v2, GET /v2/health/live, GET /v2/health/ready, GET /v2/models/{{name}}[/versions/{{v}}][/ready] and POST /v2/models/{{name}}[/versions/{{v}}]/infer"
        ),
    )
}

#[derive(Serialize)]
struct ServerMetadata {
    name: &'static str,
    version: &'static str,
    extensions: [&'static str; 1],
}

fn server_metadata() -> ServerMetadata {
    ServerMetadata {
        name: "hadr",
        version: env!("CARGO_PKG_VERSION"),
        extensions: ["binary_tensor_data"],
    }
}

/// The instances of this listener that serve `want`'s model (any version):
/// 404 naming the models there are when none does.
pub(super) fn serving<'a>(
    app: &'a PublicApp,
    scope: &'a Scope,
    want: Want,
) -> Result<Vec<&'a Arc<Instance>>, ApiError> {
    let in_scope: Vec<&Arc<Instance>> = match scope {
        Scope::Router => app.router.instances().iter().collect(),
        Scope::Instance(i) => vec![i],
    };
    let model = want.model.unwrap_or_default();
    let serving: Vec<_> = in_scope
        .iter()
        .copied()
        .filter(|i| i.serves_model(model))
        .collect();
    if serving.is_empty() {
        let mut names: Vec<String> = in_scope.iter().map(|i| i.model_name()).collect();
        names.sort();
        names.dedup();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_model",
            format!(
                "unknown model `{model}`; this listener serves {}",
                names.join(", ")
            ),
        ));
    }
    let Some(version) = want.version else {
        return Ok(serving);
    };
    let pinned: Vec<_> = serving.iter().copied().filter(|i| want.admits(i)).collect();
    if pinned.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_version",
            format!(
                "model `{model}` has no version `{version}` in force; its versions are {}",
                versions(&serving).join(", ")
            ),
        ));
    }
    Ok(pinned)
}

/// The distinct versions in force among `instances`, in topology order.
fn versions(instances: &[&Arc<Instance>]) -> Vec<String> {
    let mut versions: Vec<String> = Vec::new();
    for i in instances {
        let v = i.deployment().version.clone();
        if !versions.contains(&v) {
            versions.push(v);
        }
    }
    versions
}

#[derive(Serialize)]
struct ModelMetadata<'a> {
    name: &'a str,
    versions: Vec<String>,
    platform: &'static str,
    inputs: Vec<oip::TensorMetadata>,
    outputs: Vec<oip::TensorMetadata>,
}

fn model_metadata(
    app: &PublicApp,
    scope: &Scope,
    want: Want,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let instances = serving(app, scope, want)?;
    let deployment = instances[0].deployment();
    let (inputs, outputs) = oip::tensor_metadata(deployment.model.graph.info());
    Ok(json(
        StatusCode::OK,
        &ModelMetadata {
            name: want.model.unwrap_or_default(),
            versions: versions(&instances),
            platform: "onnx",
            inputs,
            outputs,
        },
    ))
}

fn model_ready(
    app: &PublicApp,
    scope: &Scope,
    want: Want,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let instances = serving(app, scope, want)?;
    not_draining(app)?;
    let ready = match scope {
        // As `/readyz` on this port: a working sandbox, whatever the load.
        Scope::Instance(i) => instance_ready(i),
        // Any role counts: on the router a standby would be promoted.
        Scope::Router => instances.iter().any(|i| i.can_take()),
    };
    if ready {
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({"name": want.model, "ready": true}),
        ))
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!(
                "no instance serving model `{}` can take a request now (saturated or without a working sandbox)",
                want.model.unwrap_or_default()
            ),
        ))
    }
}

/// `POST .../infer`: read, parse, run through [`call`] (whose instance
/// encodes the answer). The body is read before any refusal (see
/// [`body::refuse`]): one refused with its body unread closes the
/// connection, and the close of a socket with unread bytes resets it, so
/// the client could lose the answer.
async fn infer(
    app: &PublicApp,
    scope: &Scope,
    want: Want<'_>,
    req: Request<Incoming>,
    served_by: &mut Option<Arc<Instance>>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    // Refused from the URL and headers alone: answered once the body is
    // read (or at once, to a client waiting for `100 Continue`).
    let early = serving(app, scope, want).and_then(|i| Ok((i, header_length(&req)?)));
    let (instances, header_length) = match early {
        Ok(early) => early,
        Err(refused) => return Err(body::refuse(req, app.body_limit(), refused).await),
    };
    let body = body::read(req, app.body_limit()).await?;
    let request = oip::parse_request(&body, header_length).map_err(|e| bad_request(e.0))?;
    drop(body);
    // Outputs the model does not have are refused before it runs (the
    // encoder checks again against what actually ran).
    if !request.outputs.is_empty() {
        let declared = instances[0].deployment();
        let (_, outputs) = oip::tensor_metadata(declared.model.graph.info());
        oip::check_requested(&request.outputs, &outputs).map_err(|e| bad_request(e.0))?;
    }
    let input = Input::Tensors(Arc::new(request));
    let answer = call(app, scope, want, input, served_by)
        .await
        .map_err(|e| match e.status {
            // The protocol (and Triton) say 400 for input that does not fit.
            StatusCode::UNPROCESSABLE_ENTITY => ApiError {
                status: StatusCode::BAD_REQUEST,
                ..e
            },
            _ => e,
        })?;
    let Answer::Infer(encoded) = answer else {
        unreachable!("tensors in, tensors out");
    };
    let mut response = Response::new(Full::new(Bytes::from(encoded.body)));
    let headers = response.headers_mut();
    match encoded.header_length {
        Some(n) => {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(HEADER_LENGTH, n.into());
        }
        None => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    Ok(response)
}

/// `Inference-Header-Content-Length`, if given: one byte count (given
/// twice, which one would frame the body?).
fn header_length(req: &Request<Incoming>) -> Result<Option<usize>, ApiError> {
    let mut lengths = req.headers().get_all(HEADER_LENGTH).iter();
    match (lengths.next(), lengths.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map(Some)
            .ok_or_else(|| bad_request("Inference-Header-Content-Length is not a byte count")),
        (Some(_), Some(_)) => Err(bad_request(
            "Inference-Header-Content-Length is given twice; give one",
        )),
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

#[cfg(test)]
mod tests {
    use super::decode_segments;

    #[test]
    fn segments_are_percent_decoded_one_by_one() {
        assert_eq!(
            decode_segments("/v2/models/my%20model/versions/v%2F1/infer"),
            ["v2", "models", "my model", "versions", "v/1", "infer"]
        );
        // Not UTF-8 once decoded: kept as sent.
        assert_eq!(decode_segments("/v2/models/a%FF"), ["v2", "models", "a%FF"]);
    }
}
