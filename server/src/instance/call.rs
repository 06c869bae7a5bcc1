//! One call in one sandbox slot: what a call is asked ([`Input`], made
//! ready for a deployment as `Prepared`), what it gives back ([`Answer`]),
//! and the slot's repair after a fault. Knows nothing of the instance's
//! counters or role; [`super::Instance`] records what happened.

use std::sync::Arc;
use std::time::Instant;

use crate::bindings::hadr::predictor::types::{ErrorKind, PredictError, Tensor};
use crate::oip;
use crate::sandbox::deployment::Deployment;
use crate::sandbox::engine::HostRuntime;
use crate::sandbox::live::{CallError, Live, Predicted};

/// What a prediction is asked for.
#[derive(Debug, Clone)]
pub enum Input {
    /// The client's request body.
    Body(bytes::Bytes),
    /// The example of whichever deployment answers (`GET /predict`): the
    /// request that deployment's smoke test proved it takes, so a canary or
    /// a retry on another version is asked its own example.
    Example,
    /// An Open Inference Protocol request: its tensors as the client sent
    /// them are fitted to the model of whichever deployment answers, like
    /// the example, and its answer is encoded as it asks.
    Tensors(Arc<oip::InferRequest>),
}

/// An input made ready for one deployment.
pub(super) enum Prepared {
    Body(bytes::Bytes),
    /// The inputs fitted to the deployment's model, and the request (for
    /// the answer's encoding).
    Tensors(Vec<Tensor>, Arc<oip::InferRequest>),
    /// The bodies of a merged batch, in order.
    Batch(Vec<bytes::Bytes>),
}

impl Input {
    pub(super) fn for_deployment(self, deployment: &Deployment) -> Result<Prepared, CallError> {
        match self {
            Input::Body(body) => Ok(Prepared::Body(body)),
            Input::Example => Ok(Prepared::Body(deployment.example.clone())),
            Input::Tensors(request) => oip::fit(&request.inputs, deployment.model.graph.info())
                .map(|fitted| Prepared::Tensors(fitted, request))
                .map_err(|e| {
                    CallError::Rejected(PredictError {
                        kind: ErrorKind::InvalidInput,
                        message: e.0,
                    })
                }),
        }
    }
}

/// What a call gives back.
#[derive(Debug)]
pub enum Answer {
    /// For `/predict`: the guest's JSON, with `model`, `instance` and
    /// `version` added.
    Json(Vec<u8>),
    /// For `/v2/.../infer`: the response, encoded as the request asked,
    /// naming the version that ran it (a canary's, when the canary
    /// answered).
    Infer(oip::Encoded),
}

impl Answer {
    /// The JSON of a `/predict` answer (an infer answer is empty JSON: it
    /// is never asked of one).
    pub fn into_json(self) -> Vec<u8> {
        match self {
            Answer::Json(json) => json,
            Answer::Infer(_) => b"{}".to_vec(),
        }
    }
}

/// A guest's answer before the host adds who answered.
pub(super) enum Reply {
    Json(Predicted),
    /// The model's outputs, and the request they answer.
    Tensors(Vec<Tensor>, Arc<oip::InferRequest>),
    /// One answer (or refusal) per request of a merged batch, in order.
    Batch(crate::sandbox::live::BatchReplies),
}

/// The sandbox in `slot`, taken first if there is none (or it was built
/// from another version): a warm spare from the deployment's pool when it
/// has one (refilled in the background), else one built now.
pub(super) async fn live<'a>(
    slot: &'a mut Option<Live>,
    deployment: &Arc<Deployment>,
    runtime: &Arc<HostRuntime>,
    name: &str,
) -> Result<&'a mut Live, CallError> {
    if slot
        .as_ref()
        .is_some_and(|l| l.version() != deployment.version)
    {
        *slot = None;
    }
    match slot {
        Some(live) => Ok(live),
        // Boxed: building a sandbox is the rare path; inline, its future
        // would enlarge every call's future, which is moved at each await.
        None => Ok(slot.insert(Box::pin(deployment.sandbox_for(runtime, name)).await.0?)),
    }
}

/// Runs one call in the slot, building the sandbox first if there is none.
/// A call that poisons its sandbox drops it and puts a replacement in its
/// place at once: a warm spare (the pool is refilled in the background), or,
/// with the pool empty, a sandbox built cold. Returns whether it was
/// replaced.
pub(super) async fn call(
    slot: &mut Option<Live>,
    deployment: &Arc<Deployment>,
    runtime: &Arc<HostRuntime>,
    name: &str,
    input: &Prepared,
) -> (Result<Reply, CallError>, bool) {
    let live = match live(slot, deployment, runtime, name).await {
        Ok(live) => live,
        Err(e) => return (Err(e), false),
    };
    let outcome = match input {
        Prepared::Body(body) => live.predict(body).await.map(Reply::Json),
        Prepared::Tensors(tensors, request) => live
            .infer(tensors)
            .await
            .map(|outputs| Reply::Tensors(outputs, request.clone())),
        Prepared::Batch(bodies) => live.predict_batch(bodies).await.map(Reply::Batch),
    };
    let Err(e) = &outcome else {
        return (outcome, false);
    };
    if !e.poisons_the_store() {
        return (outcome, false);
    }
    let faulted = Instant::now();
    // Dropped before its replacement is built: its memory and its place in
    // the pooling allocator go to the replacement.
    *slot = None;
    let (replacement, warm) = Box::pin(deployment.sandbox_for(runtime, name)).await;
    *slot = replacement.ok();
    let replaced = slot.is_some();
    tracing::warn!(instance = name, error = %e, replaced, from_warm_pool = warm,
        replaced_in = ?faulted.elapsed(), "instance faulted; its sandbox was dropped and replaced");
    (outcome, replaced)
}
