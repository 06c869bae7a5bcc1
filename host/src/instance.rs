//! The instance lifetime: one topology entry, up to `concurrency` sandboxes.
//!
//! An [`Instance`] is what the router sees: a name, a role (active, standby,
//! promoted), a live load counter and a threshold. Inside it sit its
//! [`Sandboxes`]: [`Live`] wasmtime stores with the bound predictor, each
//! running one call at a time, up to `concurrency` at once, taken from the
//! warm pool on demand and dropped after idling. Requests beyond that wait
//! their turn; the load counter counts them from the moment the router picks
//! the instance, exactly like the article's per-server `load`.
//!
//! After a trap the faulted store is poisoned, so it alone is dropped and
//! replaced at once from the deployment's warm pool; calls running in the
//! instance's other sandboxes go on.
//!
//! What an instance serves is one immutable [`Serving`] value behind an
//! `ArcSwap`: the deployment in force, the one before it (for rollback) and
//! a canary, if any. A request reads it once, without a lock; a deploy swaps
//! in a new value, and a sandbox built from an older version is replaced
//! the next time its slot is taken, so calls already running finish on the
//! version they started on.
//!
//! Short calls run on the request's own task: on two cores a hop to another
//! thread costs as much as a small prediction. Calls that have been taking
//! longer than `offload_above` (see [`crate::runtime::Limits`], default 1 ms)
//! move to the blocking pool so they cannot stall the accept loop or other
//! instances.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hadr_state::{FaultRecord, InstanceRecord};
use tokio::runtime::Handle;

use crate::bindings::drillable::exports::hadr::predictor::chaos::Fault;
use crate::bindings::hadr::predictor::types::{ErrorKind, PredictError, Tensor};
use crate::deployment::Deployment;
use crate::oip;
use crate::policy::Role;
use crate::runtime::HostRuntime;
pub use crate::sandbox::{CallError, Live};
use crate::sandboxes::{Elasticity, Sandboxes};
use crate::serving::now_rfc3339;
pub use crate::serving::{InForce, Serving, Source};
use crate::topology::InstanceSpec;

/// What a prediction is asked for.
#[derive(Debug, Clone)]
pub enum Input {
    /// The client's request body.
    Body(bytes::Bytes),
    /// The example of whichever deployment answers (`GET /predict`): the
    /// request that deployment's smoke test proved it takes, so a canary or
    /// a retry on another version is asked its own example.
    Example,
    /// Open Inference Protocol tensors as the client sent them: fitted to
    /// the model of whichever deployment answers, like the example.
    Tensors(Arc<[Tensor]>),
}

/// An input made ready for one deployment.
enum Prepared {
    Body(bytes::Bytes),
    Tensors(Vec<Tensor>),
}

impl Input {
    fn for_deployment(self, deployment: &Deployment) -> Result<Prepared, CallError> {
        match self {
            Input::Body(body) => Ok(Prepared::Body(body)),
            Input::Example => Ok(Prepared::Body(deployment.example.clone())),
            Input::Tensors(tensors) => oip::fit(&tensors, deployment.model.graph.info())
                .map(Prepared::Tensors)
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
    /// For `/v2/.../infer`: the model's outputs, and the version that ran
    /// them (a canary's, when the canary answered).
    Tensors {
        /// The outputs, in the model's order.
        outputs: Vec<Tensor>,
        /// The deployment version.
        version: String,
    },
}

impl Answer {
    /// The JSON of a `/predict` answer (an infer answer is empty JSON: it
    /// is never asked of one).
    pub fn into_json(self) -> Vec<u8> {
        match self {
            Answer::Json(json) => json,
            Answer::Tensors { .. } => b"{}".to_vec(),
        }
    }
}

/// A guest's answer before the host adds who answered.
enum Reply {
    Json(Vec<u8>),
    Tensors(Vec<Tensor>),
}

/// A topology entry at run time.
pub struct Instance {
    spec: InstanceSpec,
    runtime: Arc<HostRuntime>,
    serving: ArcSwap<Serving>,
    role: AtomicU8,
    load: AtomicUsize,
    served: AtomicU64,
    failed: AtomicU64,
    traps: AtomicU64,
    respawns: AtomicU64,
    promotions: AtomicU64,
    /// Its last fault could not be repaired: it has no working sandbox.
    broken: AtomicBool,
    /// The chaos fault armed in its sandbox and not fired yet (for `/topology`).
    armed: std::sync::Mutex<Option<&'static str>>,
    /// Chaos faults that fired (the calls that ran into an armed fault).
    faults_fired: AtomicU64,
    last_fault: std::sync::Mutex<Option<LastFault>>,
    /// Recent average call time in microseconds (exponentially weighted).
    cost_us: AtomicU64,
    bound_port: AtomicU16,
    /// The sandboxes of the version in force.
    sandboxes: Sandboxes,
    /// The canary's sandboxes, while a canary runs.
    canary_sandboxes: Sandboxes,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("name", &self.name())
            .finish()
    }
}

/// A counted claim on an instance: load is decremented when it drops.
pub struct Lease {
    instance: Arc<Instance>,
    promoted: bool,
}

impl Lease {
    /// The leased instance.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    /// Whether taking this lease promoted a standby (a change to persist
    /// before the request is answered).
    pub fn promoted(&self) -> bool {
        self.promoted
    }

    pub(crate) fn mark_promoted(&mut self) {
        self.promoted = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.instance.load.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What `/topology` shows of one instance.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceReport {
    /// The article's `status`: whether it takes routed traffic.
    pub status: bool,
    /// Requests in flight or waiting for it.
    pub load: usize,
    /// Its direct port, as the article writes it (a string), if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// active, standby or promoted.
    pub role: Role,
    /// Saturation threshold.
    pub max_load: usize,
    /// Model name.
    pub model: String,
    /// Deployment version in force.
    pub version: String,
    /// Where it came from: `topology` or `deploy`.
    pub source: Source,
    /// Since when it is in force (RFC 3339).
    pub since: String,
    /// The version `rollback` would return to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// A canary taking a share of requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryReport>,
    /// Predictions answered with 200.
    pub served: u64,
    /// Calls that failed in the instance (traps, deadlines, model failures).
    pub failed: u64,
    /// Traps (including deadlines) since start.
    pub traps: u64,
    /// Faulted sandboxes replaced (from the warm pool, or cold when it was empty).
    pub respawns: u64,
    /// Times it was promoted from standby.
    pub promotions: u64,
    /// Its last fault could not be repaired: the next call rebuilds its sandbox.
    pub broken: bool,
    /// Its sandboxes: how many may run at once, and how many do now.
    pub sandboxes: SandboxReport,
    /// A chaos fault armed and not fired yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub armed_fault: Option<&'static str>,
    /// Chaos faults fired since start.
    pub faults_fired: u64,
    /// The most recent fault, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_fault: Option<LastFault>,
}

/// An instance's sandboxes as `/topology` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SandboxReport {
    /// Most calls running at once.
    pub concurrency: usize,
    /// Sandboxes in a call now (the canary's included).
    pub busy: usize,
    /// Sandboxes ready and waiting for a call (the canary's included).
    pub idle: usize,
}

/// A canary as `/topology` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CanaryReport {
    /// Its version.
    pub version: String,
    /// The share of requests it takes, in percent.
    pub percent: u8,
}

/// A fault as `/topology` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LastFault {
    /// What happened.
    pub error: String,
    /// When, in RFC 3339 (UTC).
    pub at: String,
}

impl Instance {
    /// An instance for `spec`, serving `current`. Its sandbox is built on
    /// first use or by [`Instance::warm_up`].
    pub fn new(spec: InstanceSpec, runtime: Arc<HostRuntime>, current: InForce) -> Self {
        let role = if spec.active {
            Role::Active
        } else {
            Role::Standby
        };
        let limits = runtime.limits();
        let elasticity = Elasticity {
            concurrency: spec.concurrency.unwrap_or(limits.concurrency).max(1),
            keep_idle: limits.keep_idle,
            idle_after: limits.idle_after,
        };
        Self {
            spec,
            runtime,
            serving: ArcSwap::from_pointee(Serving {
                current,
                previous: None,
                canary: None,
            }),
            role: AtomicU8::new(role as u8),
            load: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            traps: AtomicU64::new(0),
            respawns: AtomicU64::new(0),
            promotions: AtomicU64::new(0),
            broken: AtomicBool::new(false),
            armed: std::sync::Mutex::new(None),
            faults_fired: AtomicU64::new(0),
            last_fault: std::sync::Mutex::new(None),
            cost_us: AtomicU64::new(0),
            bound_port: AtomicU16::new(0),
            sandboxes: Sandboxes::new(elasticity),
            canary_sandboxes: Sandboxes::new(elasticity),
        }
    }

    /// Its topology name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its topology entry.
    pub fn spec(&self) -> &InstanceSpec {
        &self.spec
    }

    /// The model name the Open Inference Protocol lists it under: its
    /// topology model's file stem, which a deploy does not change.
    pub fn model_name(&self) -> String {
        crate::nn::registry::model_name(&self.spec.model)
    }

    /// Whether it serves the model named `name` (see [`Instance::model_name`]).
    pub fn serves_model(&self, name: &str) -> bool {
        self.spec.model.file_stem() == Some(std::ffi::OsStr::new(name))
    }

    /// The deployment in force.
    pub fn deployment(&self) -> Arc<Deployment> {
        self.serving.load().current.deployment.clone()
    }

    /// What it serves now.
    pub fn serving(&self) -> Arc<Serving> {
        self.serving.load_full()
    }

    /// Swaps in what it serves. Requests that already read the old value
    /// finish on it; the next call on each slot rebuilds a stale sandbox.
    pub fn set_serving(&self, serving: Serving) {
        self.serving.store(Arc::new(serving));
    }

    /// Builds a sandbox for what it serves now, so the first requests after
    /// a swap find one ready. Waits for a place if every one is busy.
    pub async fn refresh(&self) -> Result<(), CallError> {
        let serving = self.serving();
        let main = self
            .ready(&self.sandboxes, &serving.current.deployment)
            .await;
        // The canary's sandboxes follow the canary whatever became of the
        // main ones.
        match &serving.canary {
            Some(c) => self.ready(&self.canary_sandboxes, &c.deployment).await?,
            None => self.canary_sandboxes.clear(),
        }
        main
    }

    /// One sandbox of `deployment` in `set`, built if none is idle.
    async fn ready(&self, set: &Sandboxes, deployment: &Arc<Deployment>) -> Result<(), CallError> {
        let mut taken = set.take(&deployment.version).await;
        let built = live(&mut taken.live, deployment, &self.runtime, self.name())
            .await
            .map(drop);
        set.put_back(taken);
        built
    }

    /// How long a sandbox beyond the one it keeps may idle.
    pub fn idle_after(&self) -> Duration {
        self.runtime.limits().idle_after
    }

    /// Drops the sandboxes that idled past their time (see
    /// [`Sandboxes::trim`]); returns how many.
    pub fn trim_idle(&self, now: Instant) -> usize {
        self.sandboxes.trim(now) + self.canary_sandboxes.trim(now)
    }

    /// Its current role.
    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Acquire))
    }

    /// Requests in flight or waiting for it.
    pub fn load(&self) -> usize {
        self.load.load(Ordering::Acquire)
    }

    /// Turns a standby into a promoted active; `true` if this call did it.
    pub fn promote(&self) -> bool {
        let promoted = self
            .role
            .compare_exchange(
                Role::Standby as u8,
                Role::Promoted as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if promoted {
            self.promotions.fetch_add(1, Ordering::Relaxed);
        }
        promoted
    }

    /// Returns a promoted standby to standby; `true` if this call did it.
    pub fn demote(&self) -> bool {
        self.role
            .compare_exchange(
                Role::Promoted as u8,
                Role::Standby as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Times it has been promoted since start (and before, as persisted).
    pub fn promotions(&self) -> u64 {
        self.promotions.load(Ordering::Relaxed)
    }

    /// Takes up where a previous run left off: `role` as recovery decided,
    /// counters, last fault and deployment date as saved.
    pub fn restore(&self, role: Role, saved: &InstanceRecord) {
        self.role.store(role as u8, Ordering::Release);
        self.served.store(saved.served, Ordering::Relaxed);
        self.failed.store(saved.failed, Ordering::Relaxed);
        self.traps.store(saved.traps, Ordering::Relaxed);
        self.respawns.store(saved.respawns, Ordering::Relaxed);
        self.promotions.store(saved.promotions, Ordering::Relaxed);
        *lock(&self.last_fault) = saved.last_fault.as_ref().map(|f| LastFault {
            error: f.error.clone(),
            at: f.at.clone(),
        });
    }

    /// What the state store keeps of it.
    pub fn state_record(&self) -> InstanceRecord {
        let report = self.report();
        let serving = self.serving();
        InstanceRecord {
            role: match report.role {
                Role::Active => hadr_state::Role::Active,
                Role::Standby => hadr_state::Role::Standby,
                Role::Promoted => hadr_state::Role::Promoted,
            },
            broken: report.broken,
            served: report.served,
            failed: report.failed,
            traps: report.traps,
            respawns: report.respawns,
            promotions: report.promotions,
            last_fault: report.last_fault.map(|f| FaultRecord {
                error: f.error,
                at: f.at,
            }),
            deployment: Some(serving.current.record()),
            previous: serving.previous.as_ref().map(InForce::record),
        }
    }

    /// Records the port its direct listener actually bound.
    pub fn set_bound_port(&self, port: u16) {
        self.bound_port.store(port, Ordering::Release);
    }

    /// Claims one unit of load if it is under its threshold.
    pub fn try_lease(self: &Arc<Self>) -> Option<Lease> {
        let max = self.spec.max_load;
        self.load
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                (l < max).then_some(l + 1)
            })
            .ok()
            .map(|_| Lease {
                instance: self.clone(),
                promoted: false,
            })
    }

    /// Builds the sandbox now rather than on the first request.
    pub async fn warm_up(&self) -> Result<(), CallError> {
        self.refresh().await
    }

    /// Arms a fault in one of its sandboxes (chaos drills): the next call
    /// takes that sandbox and fails inside it. Builds a sandbox first if
    /// none is idle; one fault at a time per instance.
    pub async fn arm(&self, fault: Fault) -> Result<(), CallError> {
        if let Some(armed) = *lock(&self.armed) {
            return Err(CallError::AlreadyArmed(armed));
        }
        let deployment = self.deployment();
        let mut taken = self.sandboxes.take(&deployment.version).await;
        let outcome = match live(&mut taken.live, &deployment, &self.runtime, self.name()).await {
            Ok(live) => live.arm(fault).await,
            Err(e) => Err(e),
        };
        match &outcome {
            Ok(()) => *lock(&self.armed) = Some(crate::sandbox::fault_name(fault)),
            Err(e) if e.is_instance_fault() => taken.live = None,
            Err(_) => {}
        }
        self.sandboxes.put_back(taken);
        outcome
    }

    /// Runs one prediction in this instance, waiting for its turn; a
    /// canary, if one runs, takes its share.
    pub async fn predict(&self, input: Input) -> Result<Answer, CallError> {
        self.predict_on(input, true).await
    }

    /// Runs one prediction on the deployment in force, never a canary (for
    /// retries: a request that already faulted goes to the known-good version).
    pub async fn predict_stable(&self, input: Input) -> Result<Answer, CallError> {
        self.predict_on(input, false).await
    }

    /// A canary call that fails for any reason is answered by the version in
    /// force: a fault through the caller's retry, anything else (a refusal,
    /// a model failure) here, and it counts against the canary unless the
    /// version in force refuses the request too (bad input is the client's).
    async fn predict_on(&self, body: Input, canary: bool) -> Result<Answer, CallError> {
        // One read of what the instance serves: the version in force, and
        // the canary if this request goes to it.
        let (deployment, chosen) = {
            let serving = self.serving.load();
            let chosen = serving
                .canary
                .as_ref()
                .filter(|c| canary && c.pick())
                .cloned();
            (serving.current.deployment.clone(), chosen)
        };
        let Some(canary) = chosen else {
            return self.run(&self.sandboxes, deployment, body).await;
        };
        let outcome = self
            .run(
                &self.canary_sandboxes,
                canary.deployment.clone(),
                body.clone(),
            )
            .await;
        if self.serving.load().canary.is_none() {
            // The canary ended while this call ran: free its sandboxes.
            self.canary_sandboxes.clear();
        }
        match &outcome {
            Ok(_) => canary.record(false),
            Err(e) if e.is_instance_fault() => canary.record(true),
            Err(refused) => {
                let stable = self.run(&self.sandboxes, self.deployment(), body).await;
                let both_bad_input =
                    refused.is_bad_input() && matches!(&stable, Err(e) if e.is_bad_input());
                canary.record(!both_bad_input);
                return stable;
            }
        }
        outcome
    }

    /// One call in a sandbox of `deployment` from `set`, waiting for a place.
    async fn run(
        &self,
        set: &Sandboxes,
        deployment: Arc<Deployment>,
        input: Input,
    ) -> Result<Answer, CallError> {
        // Input that does not fit this version's model is the client's
        // error: refused before the sandbox, and counted nowhere.
        let body = input.for_deployment(&deployment)?;
        let mut taken = set.take(&deployment.version).await;
        let started = Instant::now();
        let offload_above = self.runtime.limits().offload_above.as_micros() as u64;
        let outcome = if self.cost_us.load(Ordering::Relaxed) >= offload_above {
            let runtime = self.runtime.clone();
            let name = self.spec.name.clone();
            let handle = Handle::current();
            let deployment = deployment.clone();
            let offloaded = tokio::task::spawn_blocking(move || {
                let outcome =
                    handle.block_on(call(&mut taken.live, &deployment, &runtime, &name, &body));
                (taken, outcome)
            })
            .await;
            match offloaded {
                Ok((back, outcome)) => {
                    set.put_back(back);
                    outcome
                }
                Err(e) => {
                    let e = CallError::Trap(format!("the call's thread failed: {e}"));
                    (Err(e), false, false)
                }
            }
        } else {
            let outcome = call(
                &mut taken.live,
                &deployment,
                &self.runtime,
                self.name(),
                &body,
            )
            .await;
            set.put_back(taken);
            outcome
        };
        let (outcome, replaced, fired) = outcome;
        if replaced {
            self.respawns.fetch_add(1, Ordering::Relaxed);
        }
        if fired {
            self.faults_fired.fetch_add(1, Ordering::Relaxed);
            *lock(&self.armed) = None;
        }
        let broken = matches!(&outcome, Err(e) if e.is_instance_fault()) && !replaced;
        self.broken.store(broken, Ordering::Relaxed);
        let outcome = outcome.and_then(|reply| match reply {
            Reply::Json(answer) => {
                let origin = predict_core::Origin {
                    model: &deployment.model.name,
                    instance: self.name(),
                    version: &deployment.version,
                };
                Ok(Answer::Json(predict_core::with_origin(origin, &answer)?))
            }
            Reply::Tensors(outputs) => Ok(Answer::Tensors {
                outputs,
                version: deployment.version.clone(),
            }),
        });
        self.record(&outcome, started.elapsed());
        outcome
    }

    fn record(&self, outcome: &Result<Answer, CallError>, took: Duration) {
        let us = took.as_micros() as u64;
        let old = self.cost_us.load(Ordering::Relaxed);
        self.cost_us
            .store(old - old / 8 + us / 8, Ordering::Relaxed);
        match outcome {
            Ok(_) => {
                self.served.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.is_bad_input() || matches!(e, CallError::NoTensors) => {}
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if matches!(
                    e,
                    CallError::Trap(_) | CallError::Deadline(_) | CallError::Unresponsive(_)
                ) {
                    self.traps.fetch_add(1, Ordering::Relaxed);
                }
                let fault = LastFault {
                    error: e.summary(),
                    at: now_rfc3339(),
                };
                *lock(&self.last_fault) = Some(fault);
            }
        }
    }

    /// A snapshot for `/topology`.
    pub fn report(&self) -> InstanceReport {
        let role = self.role();
        let serving = self.serving();
        let port = match (self.spec.port, self.bound_port.load(Ordering::Acquire)) {
            (None, _) => None,
            (Some(p), 0) => Some(p.to_string()),
            (Some(_), bound) => Some(bound.to_string()),
        };
        InstanceReport {
            status: role.serves(),
            load: self.load(),
            port,
            role,
            max_load: self.spec.max_load,
            model: serving.current.deployment.model.name.clone(),
            version: serving.current.deployment.version.clone(),
            source: serving.current.source,
            since: serving.current.since.clone(),
            previous_version: serving
                .previous
                .as_ref()
                .map(|p| p.deployment.version.clone()),
            canary: serving.canary.as_ref().map(|c| CanaryReport {
                version: c.deployment.version.clone(),
                percent: c.percent,
            }),
            served: self.served.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            traps: self.traps.load(Ordering::Relaxed),
            respawns: self.respawns.load(Ordering::Relaxed),
            promotions: self.promotions.load(Ordering::Relaxed),
            broken: self.broken.load(Ordering::Relaxed),
            sandboxes: SandboxReport {
                concurrency: self.sandboxes.concurrency(),
                busy: self.sandboxes.busy() + self.canary_sandboxes.busy(),
                idle: self.sandboxes.idle() + self.canary_sandboxes.idle(),
            },
            armed_fault: *lock(&self.armed),
            faults_fired: self.faults_fired.load(Ordering::Relaxed),
            last_fault: lock(&self.last_fault).clone(),
        }
    }
}

/// Locks a mutex that guards plain data: a panic while it was held cannot
/// have left it half-written, so poisoning is ignored.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sandbox in `slot`, taken first if there is none (or it was built
/// from another version): a warm spare from the deployment's pool when it
/// has one (refilled in the background), else one built now.
async fn live<'a>(
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
        None => Ok(slot.insert(deployment.sandbox_for(runtime, name).await.0?)),
    }
}

/// Runs one call in the slot, building the sandbox first if there is none.
/// A call that poisons its sandbox drops it and puts a replacement in its
/// place at once: a warm spare (the pool is refilled in the background), or,
/// with the pool empty, a sandbox built cold. Returns whether it was
/// replaced, and whether the call fired an armed chaos fault.
async fn call(
    slot: &mut Option<Live>,
    deployment: &Arc<Deployment>,
    runtime: &Arc<HostRuntime>,
    name: &str,
    input: &Prepared,
) -> (Result<Reply, CallError>, bool, bool) {
    let live = match live(slot, deployment, runtime, name).await {
        Ok(live) => live,
        Err(e) => return (Err(e), false, false),
    };
    let fired = live.armed().is_some();
    let outcome = match input {
        Prepared::Body(body) => live.predict(body).await.map(Reply::Json),
        Prepared::Tensors(tensors) => live.infer(tensors).await.map(Reply::Tensors),
    };
    let Err(e) = &outcome else {
        return (outcome, false, fired);
    };
    if !e.poisons_the_store() {
        return (outcome, false, fired);
    }
    let faulted = Instant::now();
    let (replacement, warm) = deployment.sandbox_for(runtime, name).await;
    *slot = replacement.ok();
    let replaced = slot.is_some();
    tracing::warn!(instance = name, error = %e, replaced, from_warm_pool = warm,
        replaced_in = ?faulted.elapsed(), "instance faulted; its sandbox was dropped and replaced");
    (outcome, replaced, fired)
}
