//! The admin listener: operator actions, behind a bearer token.
//!
//! Only `--admin-listen` serves these routes; the public listeners have none.
//! Every admin request must carry `Authorization: Bearer <token>`; anything
//! else gets 401 and changes nothing.
//!
//! - `POST /admin/chaos {"instance": "predict1", "fault": "trap" | "hang" | "oom"}`
//!   arms a real fault inside that instance's guest for its next call.
//! - `PUT /admin/blobs/<sha256>`: uploads a guest module or a model; the body
//!   must hash to the digest in the path.
//! - `POST /admin/deploy` ([`crate::rollout::DeployRequest`]): validates and
//!   switches instances to a new version, or starts a canary.
//! - `POST /admin/deploy/promote`, `POST /admin/deploy/abort`: end a canary.
//! - `POST /admin/rollback {"to": "all" | [names]}`: back to the previous version.
//! - `POST /admin/demote`: every promoted standby back to standby, at once.
//! - `GET /admin/deployments`: what each instance serves, and recent events.
//!
//! `hadr-host deploy` and `hadr-host rollback` are clients of these routes.

use bytes::Bytes;
use hadr_state::blobs::BlobError;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::admission::Proof;
use super::app::{json, AdminApp};
use super::body::{self, Limit};
use super::error::ApiError;
use crate::bindings::drillable::exports::hadr::predictor::chaos::Fault;
use crate::rollout::{DeployRequest, RolloutError, RolloutOutcome, Targets};

/// Admin requests other than uploads are small JSON documents.
const ADMIN_BODY: Limit = Limit {
    bytes: 64 * 1024,
    flag: "the admin listener's fixed limit",
};

/// Runs a rollout in its own task: once its request has been read, it
/// completes (swap, event, state) whatever the client does; a client that
/// hangs up only misses the answer. (Run on the connection's task, a hang-up
/// would drop it halfway: swapped, with no event and no canary watcher.)
async fn whole<F>(rollout: F) -> Result<RolloutOutcome, RolloutError>
where
    F: std::future::Future<Output = Result<RolloutOutcome, RolloutError>> + Send + 'static,
{
    tokio::spawn(rollout)
        .await
        .unwrap_or_else(|e| Err(RolloutError::Task("rollout's task", e)))
}

/// Answers one admin request.
pub async fn handle(
    app: &AdminApp,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    authorize(app, &req)?;
    // The operator's connection: a newcomer at the cap may not close it.
    if let Some(proof) = req.extensions().get::<Proof>() {
        proof.prove();
    }
    let path = super::route(req.uri().path()).to_string();
    match (req.method(), path.as_str()) {
        (&Method::POST, "/admin/chaos") => chaos(app, req).await,
        (&Method::POST, "/admin/demote") => {
            let demoted = app.router.demote_all();
            if let Err(e) = app.state.commit().await {
                tracing::error!(error = %e, "could not persist a demotion");
            }
            tracing::warn!(instances = ?demoted, "admin: promoted standbys returned to standby");
            Ok(json(StatusCode::OK, &serde_json::json!({ "demoted": demoted })))
        }
        (&Method::PUT, p) if p.starts_with("/admin/blobs/") => upload(app, req).await,
        (&Method::POST, "/admin/deploy") => {
            let request: DeployRequest = read_json(req).await?;
            let rollouts = app.rollouts.clone();
            outcome(whole(async move { rollouts.deploy(request).await }).await)
        }
        (&Method::POST, "/admin/deploy/promote") => {
            let rollouts = app.rollouts.clone();
            outcome(whole(async move { rollouts.promote().await }).await)
        }
        (&Method::POST, "/admin/deploy/abort") => {
            let rollouts = app.rollouts.clone();
            outcome(whole(async move { rollouts.abort("aborted by an operator").await }).await)
        }
        (&Method::POST, "/admin/rollback") => {
            let request: RollbackRequest = read_json(req).await?;
            let rollouts = app.rollouts.clone();
            outcome(whole(async move { rollouts.rollback(&request.to).await }).await)
        }
        (&Method::GET, "/admin/deployments") => deployments(app),
        (_, "/admin/chaos" | "/admin/demote" | "/admin/deploy" | "/admin/deploy/promote" | "/admin/deploy/abort" | "/admin/rollback") => {
            Err(ApiError::method_not_allowed("POST"))
        }
        (_, "/admin/deployments") => Err(ApiError::method_not_allowed("GET, HEAD")),
        (_, p) if p.starts_with("/admin/blobs/") => Err(ApiError::method_not_allowed("PUT")),
        (_, path) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no admin route {path}; this listener serves POST /admin/chaos, POST /admin/demote, PUT /admin/blobs/<sha256>, POST /admin/deploy[/promote|/abort], POST /admin/rollback, GET /admin/deployments"),
        )),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    #[serde(default)]
    to: Targets,
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let body = body::read(req, ADMIN_BODY).await?;
    let body: &[u8] = if body.is_empty() { b"{}" } else { &body };
    parse_json(body)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", e))
}

/// Parses an admin body; a wrong value's error names its field (`field `canary.percent`: …`).
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body))
        .map_err(|e| crate::errors::field_error(&e))
}

fn outcome(
    result: Result<RolloutOutcome, RolloutError>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    match result {
        Ok(done) => Ok(json(StatusCode::OK, &done)),
        Err(e) => {
            let (status, code) = match &e {
                RolloutError::Invalid(_)
                | RolloutError::NotUploaded { .. }
                | RolloutError::Module(_)
                | RolloutError::Model(_)
                | RolloutError::SmokeTest { .. }
                | RolloutError::WarmPool(_)
                | RolloutError::PreviousCannotStart(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "refused")
                }
                RolloutError::UnknownInstance(_) => (StatusCode::NOT_FOUND, "unknown_instance"),
                RolloutError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
                // A name that is no digest is the client's mistake; a blob
                // damaged on disk is uploaded again; the disk failing is ours.
                RolloutError::Blob {
                    source: BlobError::BadDigest(_),
                    ..
                } => (StatusCode::BAD_REQUEST, "malformed_request"),
                RolloutError::Blob {
                    source: BlobError::Damaged { .. },
                    ..
                } => (StatusCode::UNPROCESSABLE_ENTITY, "blob_unreadable"),
                RolloutError::Blob { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "blob_unreadable"),
                RolloutError::Storage(_)
                | RolloutError::Unsaved(_)
                | RolloutError::SaveExample(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "state_not_saved")
                }
                RolloutError::Task(..) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            };
            let message = crate::errors::with_causes(&e);
            tracing::warn!(error = %message, "rollout refused");
            Err(ApiError::new(status, code, message))
        }
    }
}

/// `PUT /admin/blobs/<sha256>`: stores the body if it hashes to the digest.
async fn upload(app: &AdminApp, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    let digest = req
        .uri()
        .path()
        .trim_start_matches("/admin/blobs/")
        .to_string();
    app.rollouts
        .blobs()
        .path(&digest)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_request", e.to_string()))?;
    let limit = Limit {
        bytes: app.max_upload,
        flag: "--max-upload",
    };
    let body = body::read(req, limit).await?;
    // Hashing up to --max-upload bytes holds a thread for a second or so:
    // not one of the workers that answer predictions during the deploy.
    let (actual, body) =
        tokio::task::spawn_blocking(move || (hadr_state::blobs::digest(&body), body))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
    if actual != digest {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "digest_mismatch",
            format!("the body's SHA-256 is {actual}, not {digest}: the upload was damaged"),
        ));
    }
    let store = app.rollouts.blobs().clone();
    tokio::task::spawn_blocking(move || store.put(&body))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "state_not_saved",
                e.to_string(),
            )
        })?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "digest": digest }),
    ))
}

/// `GET /admin/deployments`.
fn deployments(app: &AdminApp) -> Result<Response<Full<Bytes>>, ApiError> {
    let instances: serde_json::Map<String, serde_json::Value> = app
        .router
        .instances()
        .iter()
        .map(|i| {
            let r = i.report();
            let value = serde_json::json!({
                "version": r.version,
                "source": r.source,
                "since": r.since,
                "previous_version": r.previous_version,
                "held": r.held,
                "canary": r.canary,
            });
            (i.name().to_string(), value)
        })
        .collect();
    let events = app.rollouts.events(50).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "state_unreadable",
            e.to_string(),
        )
    })?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "instances": instances, "events": events }),
    ))
}

fn authorize(app: &AdminApp, req: &Request<Incoming>) -> Result<(), ApiError> {
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        // The scheme is case-insensitive (RFC 9110 §11.1): `bearer` is `Bearer`.
        .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token));
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

async fn chaos(app: &AdminApp, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    let body = body::read(req, ADMIN_BODY).await?;
    let request: ChaosRequest = parse_json(&body).map_err(|e| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_value_in_a_body_names_its_field() {
        let e = parse_json::<ChaosRequest>(br#"{"instance": "p1", "fault": "flood"}"#)
            .err()
            .unwrap();
        assert!(
            e.starts_with("field `fault`: unknown variant `flood`"),
            "{e}"
        );
        let e = parse_json::<crate::rollout::DeployRequest>(
            br#"{"model": {"name": "m", "digest": 7}}"#,
        )
        .err()
        .unwrap();
        assert!(e.starts_with("field `model.digest`: invalid type"), "{e}");
        for to in ["null", "5", "{}", r#"["p1", 5]"#] {
            let body = format!(r#"{{"to": {to}}}"#);
            let e = parse_json::<RollbackRequest>(body.as_bytes())
                .err()
                .unwrap();
            assert!(
                e.starts_with("field `to`: not instances: \"all\""),
                "{to}: {e}"
            );
        }
        // A syntax error names no field: there is none to name.
        for body in [
            &br#"{"instance": "p1""#[..],
            br#"{"instance": "p1",}"#,
            br#"{"model": {"name": "m",}}"#,
        ] {
            let e = parse_json::<crate::rollout::DeployRequest>(body)
                .err()
                .unwrap();
            assert!(!e.starts_with("field"), "{e}");
        }
        let e = parse_json::<ChaosRequest>(br#"{"instance": "p1""#)
            .err()
            .unwrap();
        assert!(e.starts_with("EOF while parsing"), "{e}");
    }
}
