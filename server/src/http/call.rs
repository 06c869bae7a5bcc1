//! One public request on an instance, whatever its protocol: which
//! listener it came in on ([`Scope`]), the lease (routed by load on the
//! router, that instance on its own port), the canary's share, the one retry
//! after an instance fault; and whether a request could be taken now.
//! `/predict` ([`super::api`]) and the Open Inference Protocol
//! ([`super::v2`]) both go through [`call`].

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::app::{json, PublicApp, Scope};
use super::error::ApiError;
use crate::instance::{Answer, CallError, Input, Instance, Lease};
use crate::routing::router::Want;

/// `/readyz`: whether this listener should be sent requests now. Never
/// while draining (SIGTERM with `--drain`). On the router: some instance is
/// under its threshold with a working sandbox, a standby included (the
/// router promotes it for the request, as `/v2/models/{m}/ready` says; a
/// probe that failed then would take the host out of rotation exactly
/// when its standby could absorb the overflow, and a standby-only host
/// would never be ready). On an
/// instance's port: the instance has a working sandbox, whatever its load
/// and role; that is what a balancer health-checks, and a check that failed
/// under load would take capacity away exactly when it is needed (the
/// balancer's `maxconn` and hadr's 503 handle saturation).
pub(super) fn readyz(app: &PublicApp, target: &Scope) -> Result<Response<Full<Bytes>>, ApiError> {
    not_draining(app)?;
    let ready = match target {
        Scope::Instance(i) => instance_ready(i),
        Scope::Router => app.router.instances().iter().any(|i| i.can_take()),
    };
    if ready {
        Ok(json(StatusCode::OK, &serde_json::json!({"ready": true})))
    } else {
        let why_not = match target {
            Scope::Instance(i) => format!(
                "instance `{}` has no working sandbox: its last fault could not be repaired yet (a sandbox is built again every {:?} until one works)",
                i.name(),
                crate::routing::router::REPAIR_EVERY
            ),
            Scope::Router => "no instance can take a request now, a standby included (each is at its load threshold or without a working sandbox)".to_string(),
        };
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            why_not,
        ))
    }
}

/// 503 `draining` while the host drains before it stops: every readiness
/// check says so, whatever it checks.
pub(super) fn not_draining(app: &PublicApp) -> Result<(), ApiError> {
    if app.draining.load(std::sync::atomic::Ordering::Acquire) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the host is draining before it stops (SIGTERM with --drain); it still answers requests that arrive",
        ));
    }
    Ok(())
}

/// Whether an instance's own port is ready: it has a working sandbox,
/// whatever its load (see [`readyz`]).
pub(super) fn instance_ready(instance: &Instance) -> bool {
    !instance.is_broken()
}

/// Runs one request on an instance `want` admits: leased by load on the
/// router, on its own instance on an instance's port; a canary takes its
/// share unless `want` pins a version. One instance fault is retried (see
/// [`retry`]). Shared by `/predict` and the Open Inference Protocol.
pub(super) async fn call(
    app: &PublicApp,
    target: &Scope,
    want: Want<'_>,
    input: Input,
    served_by: &mut Option<Arc<Instance>>,
) -> Result<Answer, ApiError> {
    let lease = lease(app, target, want)?;
    *served_by = Some(lease.instance().clone());
    if lease.promoted() {
        // A promotion is acted on by operators: durable before it serves.
        if let Err(e) = app.state.commit().await {
            tracing::error!(error = %e, "could not persist a promotion");
        }
    }
    let instance = lease.instance();
    let outcome = match want.version {
        None => Instance::predict(instance, input.clone()).await,
        Some(version) => instance.predict_pinned(input.clone(), version).await,
    };
    match outcome {
        Ok(out) => Ok(out),
        // Boxed: the rare path, kept out of every request's future.
        Err(e) if e.is_instance_fault() => {
            Box::pin(retry(app, target, want, lease, input, e, served_by)).await
        }
        Err(e) => Err(e.into()),
    }
}

/// A request whose instance faulted is tried once more, on the deployment in
/// force (never a canary): elsewhere when the router can, else on the same
/// instance (whose sandbox was just replaced).
/// A second fault is the request's own answer, so a query of death costs
/// two sandboxes, never the topology.
async fn retry(
    app: &PublicApp,
    target: &Scope,
    want: Want<'_>,
    failed: Lease,
    body: Input,
    first: CallError,
    served_by: &mut Option<Arc<Instance>>,
) -> Result<Answer, ApiError> {
    let first_instance = failed.instance().clone();
    drop(failed);
    let second = match target {
        Scope::Router => app
            .router
            .acquire_where(Some(first_instance.name()), want)
            .ok()
            .or_else(|| first_instance.try_lease()),
        Scope::Instance(instance) => instance.try_lease(),
    };
    let Some(second) = second else {
        return Err(first.into());
    };
    tracing::info!(failed = first_instance.name(), retry = second.instance().name(), error = %first,
        "retrying a request whose instance faulted");
    *served_by = Some(second.instance().clone());
    if second.promoted() {
        if let Err(e) = app.state.commit().await {
            tracing::error!(error = %e, "could not persist a promotion");
        }
    }
    match second.instance().predict_alone(body, want.version).await {
        Ok(out) => Ok(out),
        Err(again) if again.is_instance_fault() => {
            let mut error = ApiError::from(again);
            let (first, second) = (first_instance.name(), second.instance().name());
            let failed = match first == second {
                true => format!("twice on instance {first}"),
                false => format!("on two instances ({first} and {second})"),
            };
            error.message = format!(
                "the request failed {failed}, so it is not retried again: {}",
                error.message
            );
            Err(error)
        }
        Err(again) => Err(again.into()),
    }
}

fn lease(app: &PublicApp, target: &Scope, want: Want) -> Result<Lease, ApiError> {
    match target {
        Scope::Router => app.router.acquire_where(None, want).map_err(|_| {
            match want.version {
                // Checked before the body was read; a deploy since has
                // replaced it everywhere: not a matter of load.
                Some(version) if !app.router.instances().iter().any(|i| want.admits(i)) => {
                    CallError::VersionGone(version.to_owned()).into()
                }
                _ => ApiError::saturated(),
            }
        }),
        Scope::Instance(instance) => instance.try_lease().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_capacity",
                format!(
                    "instance `{}` is at its load threshold of {}; retry later or use the router",
                    instance.name(),
                    instance.spec().max_load
                ),
            )
        }),
    }
}
