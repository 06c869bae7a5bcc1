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
//! With a `"batch"` entry, requests to the version in force that arrive
//! together are merged into one guest call ([`batch`]); each request still
//! holds its own load, its own answer and its own failure.
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
//! longer than `offload_above` (see [`crate::sandbox::engine::Limits`], default 1 ms)
//! move to the blocking pool so they cannot stall the accept loop or other
//! instances.
//!
//! Owns the instance lifetime. May use: `serving`, `sandbox`, `oip`,
//! `topology`.

mod batch;
mod call;
mod fine_timer;
pub mod load;
pub mod report;
mod stats;

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hadr_state::InstanceRecord;
use tokio::runtime::Handle;

use crate::bindings::drillable::exports::hadr::predictor::chaos::Fault;
use crate::bindings::hadr::predictor::types::{ErrorKind, PredictError};
use crate::oip;
use crate::sandbox::deployment::Deployment;
use crate::sandbox::engine::HostRuntime;
use crate::sandbox::sandboxes::{Elasticity, Sandboxes, Taken};
use crate::serving::Canary;
use crate::topology::InstanceSpec;
use batch::{Batch, Batcher, Delivery, Joined};
use call::{call, live, Prepared, Reply};
use load::Load;
use stats::Stats;

pub use crate::sandbox::live::{CallError, Live};
pub use crate::serving::{Held, InForce, Serving, Source};
pub use call::{Answer, Input};
pub use load::Role;
pub use report::{BatchReport, CanaryReport, HeldReport, InstanceReport, LastFault, SandboxReport};

/// Which of an instance's sandbox sets a call runs in. Named rather than
/// borrowed, so that a call offloaded to the blocking pool can give its
/// sandbox back after the request that started it is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// The version in force's.
    Current,
    /// The canary's.
    Canary,
}

/// An offloaded call's outcome on its way back to its request. Dropped
/// unclaimed (the request was dropped while the call ran: its client hung
/// up), a failure still counts in the instance's counters (`failed`,
/// `traps`, the last fault), and a canary's call still counts for the
/// canary (see [`Instance::record_unclaimed`]): a canary that fails only
/// for clients that gave up waiting is still aborted.
struct Unclaimed {
    instance: Arc<Instance>,
    /// The canary's deployment the call ran on, if it ran on one.
    canary: Option<Arc<Deployment>>,
    outcome: Option<Result<Reply, CallError>>,
}

impl Unclaimed {
    fn claim(mut self) -> Result<Reply, CallError> {
        self.outcome.take().expect("an outcome is claimed once")
    }
}

impl Drop for Unclaimed {
    fn drop(&mut self) {
        let Some(outcome) = &self.outcome else {
            return;
        };
        if let Err(e) = outcome {
            self.instance.stats.count(Err(e));
        }
        if let Some(deployment) = &self.canary {
            self.instance.record_unclaimed(deployment, outcome);
        }
    }
}

/// An offloaded call's unit of its instance's load. The request's lease
/// counts the call while the request waits for it; a request that goes away
/// first (its client hung up) hands that unit to the call, which holds its
/// sandbox until it ends: without it, the router would take an instance
/// whose sandboxes are all busy with such calls for an idle one.
#[derive(Debug, Default)]
struct Handover(AtomicU8);

impl Handover {
    const WAITING: u8 = 0;
    const ENDED: u8 = 1;
    const ABANDONED: u8 = 2;

    /// The request went away: the call takes over its unit of load, unless
    /// it has ended. Counted before it is handed over, so the call's end
    /// never releases a unit not yet counted.
    fn abandon(&self, load: &Load) {
        load.add();
        let handed = self.0.compare_exchange(
            Self::WAITING,
            Self::ABANDONED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if handed.is_err() {
            load.release();
        }
    }

    /// The call ended: gives back the unit it took over, if it did.
    fn end(&self, load: &Load) {
        if self.0.swap(Self::ENDED, Ordering::AcqRel) == Self::ABANDONED {
            load.release();
        }
    }
}

/// A request waiting for its offloaded call: dropped before the call's
/// outcome arrives, it hands its unit of load to the call ([`Handover`]).
struct Waiting<'a> {
    load: &'a Load,
    handover: Option<Arc<Handover>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(handover) = &self.handover {
            handover.abandon(self.load);
        }
    }
}

/// Ends an offloaded call's [`Handover`] however its thread leaves it.
struct CallEnds(Arc<Instance>, Arc<Handover>);

impl Drop for CallEnds {
    fn drop(&mut self) {
        self.1.end(&self.0.load);
    }
}

/// A call on its request's task while it runs. Dropped there (the client
/// hung up mid-call), it counts the time the call had run in the
/// instance's cost, which nothing else would: calls that keep outliving
/// their clients (a version that hangs, clients that time out before
/// `--deadline`) then move to the blocking pool, where each one finishes
/// and counts, failures and a canary's verdicts included ([`Unclaimed`]).
struct OnTask<'a> {
    stats: &'a Stats,
    started: Instant,
}

impl Drop for OnTask<'_> {
    fn drop(&mut self) {
        self.stats.cost(self.started.elapsed());
    }
}

/// When a request's wait for a place in a sandbox set ends: set at its
/// first wait, `--queue-timeout` later, and shared by its later waits (a
/// canary's request falling back to the version in force), so the bound is
/// per request; but the version in force's run that judges a canary's
/// fault waits on a budget of its own, as the caller's retry does. A
/// request that never waits never reads the clock. A batch follower's wait
/// for its leader's merged call is not a wait for a place.
#[derive(Debug, Default)]
struct QueueBudget(std::sync::OnceLock<Instant>);

impl QueueBudget {
    fn until(&self, limit: Duration) -> Instant {
        *self.0.get_or_init(|| Instant::now() + limit)
    }
}

/// A canary call's own verdict on the canary, when no call on the version
/// in force can be compared with it: an answer is a success, a fault a
/// failure; a refusal says nothing (the input may be at fault).
fn canary_failed<T>(outcome: &Result<T, CallError>) -> Option<bool> {
    match outcome {
        Ok(_) => Some(false),
        Err(e) if e.is_instance_fault() => Some(true),
        Err(_) => None,
    }
}

/// What [`broken_verdict`] decides from: a call's end and the instance then.
/// What costs a lock or a second read of what the instance serves is asked
/// only when the verdict needs it: most calls succeed and change nothing.
struct BrokenInputs<L, F> {
    /// Which set the call ran in.
    slot: Slot,
    /// Whether the call faulted and left no sandbox in its place.
    faulted: bool,
    /// The version in force's sandboxes idle or busy after the call (the
    /// idle list's lock): asked only after a fault.
    sandboxes_left: L,
    /// The flag now.
    broken: bool,
    /// Whether the call ran on the version in force: asked only when the
    /// flag would change.
    in_force: F,
}

/// What a call's end says of an instance's `broken` flag: `Some` to set it
/// to, `None` to leave it. See [`Instance::broken_after`].
fn broken_verdict(
    inputs: BrokenInputs<impl FnOnce() -> usize, impl FnOnce() -> bool>,
) -> Option<bool> {
    if inputs.slot != Slot::Current {
        return None;
    }
    let broken = match inputs.faulted {
        false => Some(false),
        true => ((inputs.sandboxes_left)() == 0).then_some(true),
    };
    broken
        .filter(|&b| b != inputs.broken)
        .filter(|_| (inputs.in_force)())
}

/// A topology entry at run time.
///
/// Its fields, by lifetime: the entry as configured (fixed); what it serves
/// (swapped whole by rollouts); its sandboxes (taken and put back per
/// call); what the router reads (role and load); its counters (kept across
/// restarts by the state store).
pub struct Instance {
    /// Its topology entry.
    spec: InstanceSpec,
    /// The host's engine and limits, to build sandboxes.
    runtime: Arc<HostRuntime>,
    /// The port its direct listener bound (0 until bound).
    bound_port: AtomicU16,
    /// What it serves: read once per call, without a lock.
    serving: ArcSwap<Serving>,
    /// The sandboxes of the version in force.
    sandboxes: Sandboxes,
    /// The canary's sandboxes, while a canary runs.
    canary_sandboxes: Sandboxes,
    /// Merges requests to the version in force into batches, when the
    /// entry asks for it (a canary's requests run one by one).
    batcher: Option<Batcher>,
    /// Its role and in-flight load.
    load: Load,
    /// Its counters.
    stats: Stats,
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
        self.instance.load.release();
    }
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
        let sandboxes = Sandboxes::new(elasticity);
        sandboxes.set_in_force(&current.deployment.version);
        Self {
            batcher: spec.batch.map(Batcher::new),
            spec,
            runtime,
            serving: ArcSwap::from_pointee(Serving {
                current,
                previous: None,
                canary: None,
                held: Default::default(),
            }),
            load: Load::new(role),
            stats: Stats::default(),
            bound_port: AtomicU16::new(0),
            sandboxes,
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
        crate::sandbox::nn::registry::model_name(&self.spec.model)
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
        self.sandboxes
            .set_in_force(&serving.current.deployment.version);
        if let Some(canary) = &serving.canary {
            self.canary_sandboxes
                .set_in_force(&canary.deployment.version);
        }
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

    /// Builds a sandbox again for an instance whose last fault left it
    /// none ([`Self::is_broken`]): no request need come for it to be ready
    /// again, which matters on its own port, where a balancer that saw it
    /// unready sends none. Never waits for a place: with every one taken,
    /// the calls holding them rebuild a sandbox or say it is still broken.
    /// `None` if there was nothing to do.
    pub async fn repair(&self) -> Option<Result<(), CallError>> {
        if !self.is_broken() {
            return None;
        }
        let deployment = self.deployment();
        let taken = self.sandboxes.try_take(&deployment.version)?;
        Some(self.build_in(&self.sandboxes, taken, &deployment).await)
    }

    /// One sandbox of `deployment` in `set`, built if none is idle.
    async fn ready(&self, set: &Sandboxes, deployment: &Arc<Deployment>) -> Result<(), CallError> {
        let taken = set.take(&deployment.version).await;
        self.build_in(set, taken, deployment).await
    }

    /// Builds a sandbox of `deployment` in `taken` if it holds none and
    /// gives it back to `set`. A working sandbox of the version in force
    /// clears `broken`, before it is given back: a call may take it at once,
    /// fault, and find the instance broken again.
    async fn build_in(
        &self,
        set: &Sandboxes,
        mut taken: Taken,
        deployment: &Arc<Deployment>,
    ) -> Result<(), CallError> {
        let built = live(&mut taken.live, deployment, &self.runtime, self.name())
            .await
            .map(drop);
        let in_force =
            std::ptr::eq(set, &self.sandboxes) && Arc::ptr_eq(deployment, &self.deployment());
        if built.is_ok() && in_force {
            self.stats.broken.store(false, Ordering::Relaxed);
        }
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
        self.load.role()
    }

    /// Requests in flight or waiting for it.
    pub fn load(&self) -> usize {
        self.load.load()
    }

    /// Its last fault could not be repaired: it has no working sandbox.
    pub fn is_broken(&self) -> bool {
        self.stats.broken.load(Ordering::Relaxed)
    }

    /// Whether it could take a request now, whatever its role: under its
    /// threshold with a working sandbox.
    pub fn can_take(&self) -> bool {
        !self.is_broken() && self.load() < self.spec.max_load
    }

    /// Turns a standby into a promoted active; `true` if this call did it.
    pub fn promote(&self) -> bool {
        let promoted = self.load.change_role(Role::Standby, Role::Promoted);
        if promoted {
            self.stats.promotions.fetch_add(1, Ordering::Relaxed);
        }
        promoted
    }

    /// Returns a promoted standby to standby; `true` if this call did it.
    pub fn demote(&self) -> bool {
        self.load.change_role(Role::Promoted, Role::Standby)
    }

    /// Times it has been promoted since start (and before, as persisted).
    pub fn promotions(&self) -> u64 {
        self.stats.promotions.load(Ordering::Relaxed)
    }

    /// Takes up where a previous run left off: `role` as recovery decided,
    /// counters, last fault and deployment date as saved.
    pub fn restore(&self, role: Role, saved: &InstanceRecord) {
        self.load.set_role(role);
        self.stats.restore(saved);
    }

    /// What the state store keeps of it.
    pub fn state_record(&self) -> InstanceRecord {
        let (deployment, previous) = self.serving().records();
        let mut record = InstanceRecord {
            role: self.role().into(),
            broken: false,
            served: 0,
            failed: 0,
            traps: 0,
            respawns: 0,
            promotions: 0,
            last_fault: None,
            deployment: Some(deployment),
            previous,
        };
        self.stats.fill(&mut record);
        record
    }

    /// Records the port its direct listener actually bound.
    pub fn set_bound_port(&self, port: u16) {
        self.bound_port.store(port, Ordering::Release);
    }

    /// Claims one unit of load if it is under its threshold.
    pub fn try_lease(self: &Arc<Self>) -> Option<Lease> {
        self.load.try_claim(self.spec.max_load).then(|| Lease {
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
        // Claimed first: two arms at once on two sandboxes arm one fault.
        let claim = self
            .stats
            .armed
            .claim(fault)
            .map_err(CallError::AlreadyArmed)?;
        let deployment = self.deployment();
        let mut taken = self.sandboxes.take(&deployment.version).await;
        let outcome = match live(&mut taken.live, &deployment, &self.runtime, self.name()).await {
            Ok(live) => live.arm(fault, &self.stats.armed).await,
            Err(e) => Err(e),
        };
        match &outcome {
            Ok(()) => claim.keep(),
            Err(e) if e.is_instance_fault() => taken.live = None,
            Err(_) => {}
        }
        self.sandboxes.put_back(taken);
        outcome
    }

    /// Runs one prediction in this instance, waiting for its turn; a
    /// canary, if one runs, takes its share.
    pub async fn predict(self: &Arc<Self>, input: Input) -> Result<Answer, CallError> {
        self.predict_on(input, true, true, None).await
    }

    /// Runs one prediction on the deployment in force if it is `version`
    /// (a request that names its version), never a canary: a deploy that
    /// replaced it since the request was routed refuses the request
    /// ([`CallError::VersionGone`]) rather than answer with another version.
    pub async fn predict_pinned(
        self: &Arc<Self>,
        input: Input,
        version: &str,
    ) -> Result<Answer, CallError> {
        self.predict_on(input, false, true, Some(version)).await
    }

    /// Runs one prediction on the deployment in force (if it is `pinned`,
    /// when given), never a canary and never merged into a batch: for a
    /// retry, since a request that already faulted must not poison others.
    pub async fn predict_alone(
        self: &Arc<Self>,
        input: Input,
        pinned: Option<&str>,
    ) -> Result<Answer, CallError> {
        self.predict_on(input, false, false, pinned).await
    }

    /// A canary call that fails for any reason is answered by the version in
    /// force, on this instance, and it counts against the canary unless the
    /// version in force fails the request the same way: bad input is the
    /// client's, and so is a request that faults both
    /// ([`Self::after_canary_fault`]).
    async fn predict_on(
        self: &Arc<Self>,
        body: Input,
        canary: bool,
        batched: bool,
        pinned: Option<&str>,
    ) -> Result<Answer, CallError> {
        // One read of what the instance serves: the version in force, and
        // the canary if this request goes to it.
        let (deployment, chosen) = {
            let serving = self.serving.load();
            if let Some(version) = pinned.filter(|v| *v != serving.current.deployment.version) {
                return Err(CallError::VersionGone(version.to_owned()));
            }
            let chosen = serving
                .canary
                .as_ref()
                .filter(|c| canary && c.pick())
                .cloned();
            (serving.current.deployment.clone(), chosen)
        };
        let queue = QueueBudget::default();
        match chosen {
            None => {
                self.run(Slot::Current, deployment, body, batched, &queue)
                    .await
            }
            // Boxed: inline, a canary's three possible calls would enlarge
            // every request's future, which is moved at each await.
            Some(canary) => Box::pin(self.run_canary(canary, body, batched, &queue)).await,
        }
    }

    /// One call on the canary `canary`: see [`Self::predict_on`].
    async fn run_canary(
        self: &Arc<Self>,
        canary: Arc<Canary>,
        body: Input,
        batched: bool,
        queue: &QueueBudget,
    ) -> Result<Answer, CallError> {
        let outcome = self
            .run(
                Slot::Canary,
                canary.deployment.clone(),
                body.clone(),
                false,
                queue,
            )
            .await;
        let refused = match outcome {
            Ok(answer) => {
                canary.record(false);
                return Ok(answer);
            }
            Err(e) if e.is_instance_fault() => {
                return self.after_canary_fault(&canary, e, body).await;
            }
            // Never ran: no verdict on the canary. The version in force
            // takes it if a place is free now (its wait is spent).
            Err(CallError::Queued(_)) => {
                return self
                    .run(Slot::Current, self.deployment(), body, batched, queue)
                    .await;
            }
            Err(refused) => refused,
        };
        // A refusal: the version in force's answer to the same request says
        // whether the input or the canary is at fault.
        let stable = self
            .run(Slot::Current, self.deployment(), body, batched, queue)
            .await;
        let both_bad_input =
            refused.is_bad_input() && matches!(&stable, Err(e) if e.is_bad_input());
        canary.record(!both_bad_input);
        stable
    }

    /// A canary's fault. One that arose in its guest call (a trap, a call
    /// past its deadline) is judged by the version in force's answer to the
    /// same request, run alone (a request that faulted must not poison a
    /// batch) and with a queue wait of its own (the request's may be spent):
    /// - it answers, or refuses the input: the canary is at fault, and the
    ///   client gets that answer;
    /// - it faults in its guest call too: the request is at fault (a query
    ///   of death), and a client sending such requests must not abort a
    ///   rollout. No verdict, and the second fault is the answer, not
    ///   retried again;
    /// - it could not run (no sandbox built, no place in time): nothing to
    ///   compare. The canary is blamed and the caller retries its fault
    ///   elsewhere, as for any fault; so is a canary that could not build
    ///   a sandbox, whatever the request.
    async fn after_canary_fault(
        self: &Arc<Self>,
        canary: &Canary,
        fault: CallError,
        body: Input,
    ) -> Result<Answer, CallError> {
        if !fault.arose_in_the_call() {
            canary.record(true);
            return Err(fault);
        }
        let stable = self
            .run(
                Slot::Current,
                self.deployment(),
                body,
                false,
                &QueueBudget::default(),
            )
            .await;
        match stable {
            Err(e) if e.arose_in_the_call() => Err(CallError::FaultedTwice {
                instance: self.name().to_owned(),
                fault: Box::new(e),
            }),
            stable => {
                canary.record(true);
                match stable {
                    Err(e) if e.is_instance_fault() || e.never_reached_the_guest() => Err(fault),
                    stable => stable,
                }
            }
        }
    }

    /// One call in a sandbox of `deployment` from `slot`'s set, waiting for
    /// a place; merged into a batch with others when `batched` and the
    /// entry batches.
    async fn run(
        self: &Arc<Self>,
        slot: Slot,
        deployment: Arc<Deployment>,
        input: Input,
        batched: bool,
        queue: &QueueBudget,
    ) -> Result<Answer, CallError> {
        // Input that does not fit this version's model is the client's
        // error: refused before the sandbox, and counted nowhere.
        let prepared = input.for_deployment(&deployment)?;
        match (&self.batcher, prepared) {
            (Some(batcher), Prepared::Body(body)) if batched => {
                self.run_batched(batcher, &deployment, body, queue).await
            }
            (_, prepared) => self.run_alone(slot, &deployment, prepared, queue).await,
        }
    }

    /// One call on its own, waiting for a place.
    async fn run_alone(
        self: &Arc<Self>,
        slot: Slot,
        deployment: &Arc<Deployment>,
        prepared: Prepared,
        queue: &QueueBudget,
    ) -> Result<Answer, CallError> {
        let taken = self.take(slot, deployment, queue).await?;
        self.run_taken(slot, taken, deployment, prepared).await
    }

    /// A place in `slot`'s set for a call to `deployment`, waited for until
    /// the request's `--queue-timeout` runs out (see [`QueueBudget`]): a
    /// request must not queue without bound behind calls that hang until
    /// their deadlines.
    async fn take(
        &self,
        slot: Slot,
        deployment: &Deployment,
        queue: &QueueBudget,
    ) -> Result<Taken, CallError> {
        let set = self.set(slot);
        if let Some(taken) = set.try_take(&deployment.version) {
            return Ok(taken);
        }
        let limit = self.runtime.limits().queue_timeout;
        set.take_until(&deployment.version, queue.until(limit))
            .await
            .ok_or(CallError::Queued(limit))
    }

    /// One call on its own in the place `taken` holds.
    async fn run_taken(
        self: &Arc<Self>,
        slot: Slot,
        taken: Taken,
        deployment: &Arc<Deployment>,
        prepared: Prepared,
    ) -> Result<Answer, CallError> {
        let started = Instant::now();
        // Boxed: every level of async fns above is moved per request, and
        // rustc keeps each one's arguments twice (rust-lang/rust#62958); on
        // the heap, the sandbox call no longer grows the futures above it
        // (see `http::api`'s `a_request_future_stays_small`).
        let outcome = Box::pin(self.execute(slot, taken, deployment, prepared))
            .await
            .and_then(|reply| self.answer(deployment, reply));
        self.stats
            .record(outcome.as_ref().map(drop), started.elapsed());
        outcome
    }

    /// One request through the batcher (see [`batch`]): it leads a batch,
    /// joins one, or runs on its own; a request whose merged call faulted
    /// runs again on its own. Batches run in the version in force's
    /// sandboxes.
    async fn run_batched(
        self: &Arc<Self>,
        batcher: &Batcher,
        deployment: &Arc<Deployment>,
        body: bytes::Bytes,
        queue: &QueueBudget,
    ) -> Result<Answer, CallError> {
        let slot = Slot::Current;
        let answer = match batcher.join(&deployment.version, body.clone()) {
            // Waiting on its leader's merged call is not queueing: a batch
            // a request poisoned must not cost the others their place in
            // the runs that follow (they rerun with a wait of their own).
            Joined::Follower(answer) => answer,
            Joined::Alone => {
                return self
                    .run_alone(slot, deployment, Prepared::Body(body), queue)
                    .await
            }
            Joined::Leader(lead) => {
                let set = self.set(slot);
                // Held while the batch fills: a leader whose client hangs up
                // meanwhile gives the sandbox back unused.
                let held = set.hold(self.take(slot, deployment, queue).await?);
                let batch = lead.close().await;
                let taken = held.into_taken();
                if batch.followers.is_empty() {
                    return self
                        .run_taken(slot, taken, deployment, Prepared::Body(body))
                        .await;
                }
                // The merged call runs on a task of its own: the leader's
                // client hanging up must not cancel the others' answers.
                let (own, answer) = tokio::sync::oneshot::channel();
                let instance = self.clone();
                let deployment = deployment.clone();
                tokio::spawn(
                    async move { instance.run_merged(batch, own, taken, deployment).await },
                );
                answer
            }
        };
        match answer.await {
            Ok(reply) => {
                let outcome = reply
                    .map_err(CallError::Rejected)
                    .and_then(|answer| self.answer(deployment, Reply::Json(answer)));
                self.stats.count(outcome.as_ref().map(drop));
                outcome
            }
            // The merged call faulted, or its task is gone: alone.
            Err(_) => {
                self.run_alone(slot, deployment, Prepared::Body(body), queue)
                    .await
            }
        }
    }

    /// Runs a closed batch as one call in the place `taken` holds and sends
    /// each request its answer (the leader's through `own`); if the call
    /// faults, drops every channel, so each request runs again on its own.
    async fn run_merged(
        self: &Arc<Self>,
        batch: Batch,
        own: tokio::sync::oneshot::Sender<Delivery>,
        taken: Taken,
        deployment: Arc<Deployment>,
    ) {
        let Some(batcher) = &self.batcher else {
            return;
        };
        let requests = batch.bodies.len();
        let started = Instant::now();
        let reply = self
            .execute(
                Slot::Current,
                taken,
                &deployment,
                Prepared::Batch(batch.bodies),
            )
            .await;
        self.stats.cost(started.elapsed());
        match reply {
            Ok(Reply::Batch(replies)) => {
                batcher.count(requests, false);
                let listeners = std::iter::once(own).chain(batch.followers);
                for (listener, reply) in listeners.zip(replies) {
                    // A request whose client went away no longer listens.
                    let _ = listener.send(reply);
                }
            }
            Ok(_) => unreachable!("a batch is answered with a batch"),
            Err(e) => {
                batcher.count(requests, true);
                // A call that failed in the instance, as an unbatched one
                // counts it (its requests' own runs count apart).
                self.stats.count(Err(&e));
                tracing::warn!(instance = self.name(), requests, error = %e,
                    "a merged batch failed; its requests run again one by one");
            }
        }
    }

    /// Runs `prepared` in the sandbox `taken` holds a place for: on this
    /// task, or on the blocking pool for an instance whose calls have been
    /// taking longer than `offload_above`. Records what the call did to its
    /// sandbox and gives the sandbox back to `slot`'s set.
    ///
    /// An offloaded call finishes on its own thread: if the request waiting
    /// for it is dropped meanwhile (its client hung up), the sandbox still
    /// goes back and the call still counts (see [`Unclaimed`]). A call on
    /// the request's task dropped at one of its awaits drops its sandbox
    /// with it: a store left in the middle of a call is not reused.
    async fn execute(
        self: &Arc<Self>,
        slot: Slot,
        mut taken: Taken,
        deployment: &Arc<Deployment>,
        prepared: Prepared,
    ) -> Result<Reply, CallError> {
        let offload_above = self.runtime.limits().offload_above.as_micros() as u64;
        if self.stats.cost_us.load(Ordering::Relaxed) < offload_above {
            let on_task = OnTask {
                stats: &self.stats,
                started: Instant::now(),
            };
            let outcome = call(
                &mut taken.live,
                deployment,
                &self.runtime,
                self.name(),
                &prepared,
            )
            .await;
            std::mem::forget(on_task);
            return self.finish(slot, deployment, taken, outcome);
        }
        let instance = self.clone();
        let handle = Handle::current();
        let handover = Arc::new(Handover::default());
        let mut waiting = Waiting {
            load: &self.load,
            handover: Some(handover.clone()),
        };
        // Made here, so that a closure dropped without running (the runtime
        // shutting down) still ends the handover.
        let ends = CallEnds(instance.clone(), handover);
        let offloaded = tokio::task::spawn_blocking({
            let deployment = deployment.clone();
            move || {
                let _ends = ends;
                let outcome = handle.block_on(call(
                    &mut taken.live,
                    &deployment,
                    &instance.runtime,
                    instance.name(),
                    &prepared,
                ));
                let outcome = Some(instance.finish(slot, &deployment, taken, outcome));
                let canary = (slot == Slot::Canary).then_some(deployment);
                Unclaimed {
                    instance,
                    canary,
                    outcome,
                }
            }
        })
        .await;
        waiting.handover = None;
        match offloaded {
            Ok(unclaimed) => unclaimed.claim(),
            Err(e) => {
                // The sandbox went down with the thread.
                self.stats
                    .after_call(false, self.broken_after(slot, deployment, true));
                Err(CallError::Trap(format!("the call's thread failed: {e}")))
            }
        }
    }

    /// After a call: gives its sandbox (or the replacement of a faulted one)
    /// back to `slot`'s set, and records what the call did to it.
    fn finish(
        &self,
        slot: Slot,
        deployment: &Deployment,
        taken: Taken,
        (outcome, replaced): (Result<Reply, CallError>, bool),
    ) -> Result<Reply, CallError> {
        self.set(slot).put_back(taken);
        if slot == Slot::Canary && self.serving.load().canary.is_none() {
            // The canary ended while this call ran (its request may be gone
            // by now): free its sandboxes.
            self.canary_sandboxes.clear();
        }
        let faulted = matches!(&outcome, Err(e) if e.is_instance_fault()) && !replaced;
        self.stats
            .after_call(replaced, self.broken_after(slot, deployment, faulted));
        outcome
    }

    /// What a call on `deployment` that `faulted` (lost its sandbox, none built in its place)
    /// says of `broken`: a success clears it; a fault sets it only if no sandbox is idle and no
    /// other place is taken, and otherwise says nothing (a taken place may be the repair loop's
    /// failing build, whose verdict stands). A canary's call says nothing of the version in
    /// force, nor does a call that ran on the version a deploy just replaced: its success must
    /// not clear what the new version's calls found.
    fn broken_after(&self, slot: Slot, deployment: &Deployment, faulted: bool) -> Option<bool> {
        broken_verdict(BrokenInputs {
            slot,
            faulted,
            sandboxes_left: || self.sandboxes.idle() + self.sandboxes.busy(),
            broken: self.is_broken(),
            in_force: || self.serving.load().current.deployment.version == deployment.version,
        })
    }

    /// Counts a canary call whose request went away (see [`Unclaimed`]) for
    /// the canary of `deployment`, if it still runs ([`canary_failed`]): an
    /// answer for it, a fault against it. With no request left to run on
    /// the version in force, a fault cannot be told from the request's own
    /// as [`Self::run_canary`] tells it; a refusal is not counted.
    fn record_unclaimed(&self, deployment: &Arc<Deployment>, outcome: &Result<Reply, CallError>) {
        let serving = self.serving.load();
        let canary = serving
            .canary
            .as_ref()
            .filter(|c| Arc::ptr_eq(&c.deployment, deployment));
        if let (Some(canary), Some(failed)) = (canary, canary_failed(outcome)) {
            canary.record(failed);
        }
    }

    /// The sandboxes of `slot`.
    fn set(&self, slot: Slot) -> &Sandboxes {
        match slot {
            Slot::Current => &self.sandboxes,
            Slot::Canary => &self.canary_sandboxes,
        }
    }

    /// A guest's reply as the client's answer: `/predict`'s JSON with who
    /// answered added, or the infer response encoded as it asks. Here, so
    /// that an answer that cannot be sent counts as what it is: a guest's
    /// malformed outputs as a failure, a client's impossible ask as a
    /// refusal, never as served.
    fn answer(&self, deployment: &Deployment, reply: Reply) -> Result<Answer, CallError> {
        match reply {
            Reply::Json(answer) => {
                let origin = predict_core::Origin {
                    model: &deployment.model.name,
                    instance: self.name(),
                    version: &deployment.version,
                };
                Ok(Answer::Json(answer.with_origin(origin)?))
            }
            Reply::Tensors(outputs, request) => {
                let origin = oip::Origin {
                    model: &deployment.model.name,
                    version: &deployment.version,
                    id: request.id.as_deref(),
                };
                oip::encode_response(origin, &outputs, &request.outputs, request.binary_output)
                    .map(Answer::Infer)
                    .map_err(|e| match e {
                        oip::EncodeError::Malformed(m) => {
                            CallError::BadAnswer(predict_core::BadAnswer(m))
                        }
                        oip::EncodeError::Refused(message) => CallError::Rejected(PredictError {
                            kind: ErrorKind::InvalidInput,
                            message,
                        }),
                    })
            }
            Reply::Batch(_) => unreachable!("a merged batch is answered request by request"),
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
            held: (serving.held.deployed.is_some() || serving.held.previous.is_some()).then(|| {
                HeldReport {
                    deployed: serving.held.deployed.as_ref().map(|d| d.version.clone()),
                    previous: serving.held.previous.as_ref().map(|d| d.version.clone()),
                }
            }),
            canary: serving.canary.as_ref().map(|c| CanaryReport {
                version: c.deployment.version.clone(),
                percent: c.percent,
            }),
            served: self.stats.served.load(Ordering::Relaxed),
            failed: self.stats.failed.load(Ordering::Relaxed),
            traps: self.stats.traps.load(Ordering::Relaxed),
            respawns: self.stats.respawns.load(Ordering::Relaxed),
            promotions: self.stats.promotions.load(Ordering::Relaxed),
            broken: self.stats.broken.load(Ordering::Relaxed),
            sandboxes: SandboxReport {
                concurrency: self.sandboxes.concurrency(),
                busy: self.sandboxes.busy() + self.canary_sandboxes.busy(),
                idle: self.sandboxes.idle() + self.canary_sandboxes.idle(),
            },
            batching: self.batcher.as_ref().map(|b| {
                let spec = b.spec();
                let (batches, batched_requests, poisoned) = b.counters();
                BatchReport {
                    max_requests: spec.max_requests,
                    max_delay_us: spec.max_delay.as_micros() as u64,
                    wait: spec.wait,
                    batches,
                    batched_requests,
                    poisoned,
                }
            }),
            armed_fault: self.stats.armed(),
            faults_fired: self.stats.armed.fired(),
            last_fault: self.stats.last_fault(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// One case of [`broken_verdict`]: its inputs, its verdict, and how
    /// often it asked whether the call ran on the version in force.
    #[derive(Debug)]
    struct Case {
        slot: Slot,
        faulted: bool,
        left: usize,
        broken: bool,
        in_force: bool,
        verdict: Option<bool>,
        /// Times it asked whether the call ran on the version in force.
        asked: usize,
        /// Times it counted the sandboxes left (a lock).
        counted: usize,
    }

    fn every_case() -> Vec<Case> {
        let mut cases = Vec::new();
        for slot in [Slot::Current, Slot::Canary] {
            for faulted in [false, true] {
                for left in 0..3 {
                    for broken in [false, true] {
                        for in_force in [false, true] {
                            let (asked, counted) = (Cell::new(0), Cell::new(0));
                            let verdict = broken_verdict(BrokenInputs {
                                slot,
                                faulted,
                                sandboxes_left: || {
                                    counted.set(counted.get() + 1);
                                    left
                                },
                                broken,
                                in_force: || {
                                    asked.set(asked.get() + 1);
                                    in_force
                                },
                            });
                            let (asked, counted) = (asked.get(), counted.get());
                            cases.push(Case {
                                slot,
                                faulted,
                                left,
                                broken,
                                in_force,
                                verdict,
                                asked,
                                counted,
                            });
                        }
                    }
                }
            }
        }
        cases
    }

    #[test]
    fn only_calls_on_the_version_in_force_change_broken() {
        for case in every_case() {
            if case.slot == Slot::Canary || !case.in_force {
                assert_eq!(case.verdict, None, "{case:?}");
            }
        }
    }

    #[test]
    fn a_success_clears_broken_and_only_a_fault_leaving_nothing_sets_it() {
        for case in every_case() {
            if case.slot != Slot::Current || !case.in_force {
                continue;
            }
            let expected = match (case.faulted, case.left) {
                (false, _) => case.broken.then_some(false),
                (true, 0) => (!case.broken).then_some(true),
                // A sandbox is still idle or busy (perhaps the repair
                // loop's build): its verdict stands.
                (true, _) => None,
            };
            assert_eq!(case.verdict, expected, "{case:?}");
        }
    }

    #[test]
    fn sandboxes_are_counted_only_after_a_fault_on_the_version_in_force() {
        for case in every_case() {
            let needed = case.slot == Slot::Current && case.faulted;
            assert_eq!(case.counted, usize::from(needed), "{case:?}");
        }
    }

    #[test]
    fn what_is_served_is_read_only_when_the_flag_would_change() {
        for case in every_case() {
            let would_change = case.slot == Slot::Current
                && match case.faulted {
                    false => case.broken,
                    true => case.left == 0 && !case.broken,
                };
            assert_eq!(case.asked, usize::from(would_change), "{case:?}");
        }
    }

    #[test]
    fn a_handed_over_unit_of_load_is_released_once_whichever_ends_first() {
        // The request goes away, then the call ends; and the other way round.
        for abandoned_first in [true, false] {
            let load = Load::new(Role::Active);
            assert!(load.try_claim(10), "the request's lease");
            let handover = Handover::default();
            if abandoned_first {
                handover.abandon(&load);
                load.release(); // the lease, dropped with the request
                assert_eq!(load.load(), 1, "the call still runs");
                handover.end(&load);
            } else {
                handover.end(&load);
                handover.abandon(&load);
                load.release();
            }
            assert_eq!(load.load(), 0, "abandoned first: {abandoned_first}");
        }
    }

    #[test]
    fn a_request_that_waits_to_the_end_hands_nothing_over() {
        let load = Load::new(Role::Active);
        assert!(load.try_claim(10));
        let handover = Arc::new(Handover::default());
        let mut waiting = Waiting {
            load: &load,
            handover: Some(handover.clone()),
        };
        handover.end(&load);
        waiting.handover = None;
        drop(waiting);
        load.release();
        assert_eq!(load.load(), 0);
    }
}
