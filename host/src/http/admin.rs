//! The admin listener: operator actions, behind a bearer token.
//!
//! Only `--admin-listen` serves these routes; the public listeners have none.
//! Every admin request must carry `Authorization: Bearer <token>`; anything
//! else gets 401 and changes nothing.
//!
//! - `POST /admin/chaos {"instance": "predict1", "fault": "trap" | "hang" | "oom"}`
//!   arms a real fault inside that instance's guest for its next call.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::api::{json, App};
use super::error::ApiError;
use crate::bindings::exports::hadr::predictor::chaos::Fault;

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// Answers one admin request.
pub async fn handle(app: &App, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    authorize(app, &req)?;
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/admin/chaos") => chaos(app, req).await,
        (_, "/admin/chaos") => Err(ApiError::method_not_allowed("POST")),
        (_, path) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no admin route {path}; this listener serves POST /admin/chaos"),
        )),
    }
}

fn authorize(app: &App, req: &Request<Incoming>) -> Result<(), ApiError> {
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare digests so the time taken does not depend on where they differ.
    let matches = given.is_some_and(|given| {
        Sha256::digest(given.as_bytes()) == Sha256::digest(app.admin_token.as_bytes())
    });
    if matches {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin routes need `Authorization: Bearer <token>` (HADR_ADMIN_TOKEN, or the admin-token file in the state directory)",
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChaosRequest {
    instance: String,
    fault: FaultName,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum FaultName {
    Trap,
    Hang,
    Oom,
}

async fn chaos(app: &App, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    let body = Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_request", e.to_string()))?
        .to_bytes();
    let request: ChaosRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            format!("expected {{\"instance\": \"<name>\", \"fault\": \"trap\" | \"hang\" | \"oom\"}}: {e}"),
        )
    })?;
    let instance = app.router.get(&request.instance).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_instance",
            format!("no instance `{}` in this topology", request.instance),
        )
    })?;
    let (fault, name) = match request.fault {
        FaultName::Trap => (Fault::Trap, "trap"),
        FaultName::Hang => (Fault::Hang, "hang"),
        FaultName::Oom => (Fault::Oom, "oom"),
    };
    instance.arm(fault).await?;
    // Acknowledged only once the state as of now is durable: an operator
    // reading the answer can rely on the counters the drill starts from.
    app.state.commit().await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "state_not_saved",
            format!("the fault was armed, but the state could not be saved: {e}"),
        )
    })?;
    tracing::warn!(
        instance = instance.name(),
        fault = name,
        "chaos: fault armed for the next call"
    );
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"instance": instance.name(), "armed": name}),
    ))
}
