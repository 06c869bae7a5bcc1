//! The sandbox: one wasmtime `Store` with a predictor bound in it, and why a
//! call into it can fail.
//!
//! A [`Live`] sandbox runs one call at a time under its epoch deadline. After
//! any failure but a refusal ([`CallError::Rejected`]) its store is poisoned:
//! the caller drops it. Faults for drills are armed here: inside a guest that
//! exports `chaos`, else committed by the host through the deadline.
//!
//! It uses only the bindings, the guest log and the host runtime's types;
//! deployments build sandboxes and instances call them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::Store;

use crate::bindings::batch::BatchPredictor;
use crate::bindings::drillable::exports::hadr::predictor::chaos::Fault;
use crate::bindings::drillable::Drillable;
use crate::bindings::hadr::predictor::types::{ErrorKind, PredictError, Tensor};
use crate::bindings::rows::RowsPredictor;
use crate::bindings::tensors::TensorPredictor;
use crate::bindings::Predictor;
use crate::sandbox::engine::{hard_limit, start_call, InstanceState};
use crate::sandbox::guest_log::LogName;
use crate::sandbox::nn::tensors::Unhanded;
use crate::sandbox::rows;

/// Runs one guest call bounded in wall time by [`hard_limit`] of its
/// `deadline`, counted from the call's first wait ([`crate::bounded`]);
/// past it the call is dropped ([`CallError::Unresponsive`]). The first
/// poll runs until the guest yields at an epoch tick or waits in a host
/// call: its WebAssembly is bounded by the deadline's ticks, and the
/// synchronous host calls in it (wasi-nn's `compute`) are out of any
/// timer's reach.
pub(crate) async fn within<T>(
    deadline: Duration,
    call: impl std::future::Future<Output = T>,
) -> Result<T, CallError> {
    let limit = hard_limit(deadline);
    crate::bounded(limit, call)
        .await
        .ok_or(CallError::Unresponsive(limit))
}

/// Why a call produced no prediction.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The guest refused the request (bad input) or its model failed; the
    /// instance is healthy.
    #[error("{}", .0.message)]
    Rejected(PredictError),
    /// The guest trapped (panic, out of memory, bug): the store was dropped.
    #[error("the instance trapped: {0}")]
    Trap(String),
    /// The call ran past its deadline and was interrupted: the store was dropped.
    #[error("the call ran past its deadline of {0:?} and was stopped")]
    Deadline(Duration),
    /// A fresh instance could not be built.
    #[error("the instance could not start: {0}")]
    Instantiate(String),
    /// A fresh instance's `init` refused its configuration.
    #[error("the instance refused its configuration: {}", .0.message)]
    Init(PredictError),
    /// A fault is already armed in this sandbox and has not fired yet: a
    /// second one is refused rather than silently replacing it.
    #[error("a `{0}` fault is already armed in this instance and has not fired yet (its next call fires it); arm the next one after that (see `armed_fault` in /topology)")]
    AlreadyArmed(&'static str),
    /// The guest does not export `chaos`, and the host cannot inject this
    /// fault from outside.
    #[error("this guest does not export hadr:predictor/chaos, so `{0}` cannot be armed in it; the host injects only `trap` and `hang` from outside")]
    NotDrillable(&'static str),
    /// The call did not return within the host's wall-clock bound (it was
    /// blocked outside WebAssembly, where its deadline cannot reach it): the
    /// store was dropped.
    #[error("the guest did not return within {0:?} (blocked outside WebAssembly, where its deadline cannot interrupt it) and was stopped")]
    Unresponsive(Duration),
    /// The version the request named is no longer in force: a deploy
    /// replaced it after the request was routed.
    #[error("version `{0}` is no longer in force: a deploy replaced it while the request was on its way (GET /v2/models/NAME lists the versions in force)")]
    VersionGone(String),
    /// Every sandbox of the instance stayed busy with other calls for this
    /// long (`--queue-timeout`): the request was not run. Not the
    /// instance's fault, and counted nowhere but in the answers' statuses.
    #[error("every sandbox of this instance stayed busy with other calls for {0:?} (--queue-timeout), so the request was not run; retry later")]
    Queued(Duration),
    /// The guest does not export `tensors`, so it cannot take `/v2` infer
    /// requests.
    #[error("this instance's guest does not export hadr:predictor/tensors, so it takes only /predict, not Open Inference Protocol infer requests")]
    NoTensors,
    /// The guest's answer is not a JSON object the host can add its origin
    /// fields to.
    #[error("{0}")]
    BadAnswer(#[from] predict_core::BadAnswer),
    /// The request faulted on an instance's canary and again, alone, on the
    /// version in force: the request's own fault (a query of death), not the
    /// canary's. Answered like the second fault, and not retried again.
    #[error("the request failed on instance {instance}'s canary and again on its version in force, so it is not retried again: {}", .fault.summary())]
    FaultedTwice {
        /// The instance both calls ran on.
        instance: String,
        /// The version in force's fault.
        fault: Box<CallError>,
    },
}

/// A fault the host committed in a guest's call (through its epoch
/// deadline), for a guest without the `chaos` export.
#[derive(Debug, thiserror::Error)]
#[error("a trap injected by the host (chaos drill)")]
struct InjectedTrap;

impl CallError {
    /// Classifies a failed guest call; `deadline` is the one it ran under
    /// (an epoch interrupt says only that some deadline passed).
    pub(crate) fn from_wasmtime(doing: &str, e: wasmtime::Error, deadline: Duration) -> Self {
        // A trap's message is its reason, then (for the host's log) the
        // wasm backtrace; see `summary`.
        if e.is::<InjectedTrap>() {
            return CallError::Trap(format!("{InjectedTrap}\n{e:#}"));
        }
        match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => CallError::Deadline(deadline),
            // wasmtime's Display already begins "wasm trap: ".
            Some(trap) => CallError::Trap(format!("{trap}\n{e:#}")),
            None => CallError::Instantiate(format!("{doing}: {e:#}")),
        }
    }

    /// What clients and `/topology` are told: the message without a trap's
    /// wasm backtrace (which names the guest's internals; the host's log
    /// keeps it).
    pub fn summary(&self) -> String {
        match self {
            CallError::Trap(full) => {
                let reason = full.lines().next().unwrap_or_default();
                format!("the instance trapped: {reason}")
            }
            other => other.to_string(),
        }
    }

    /// Whether the instance itself failed (its sandbox was replaced), so the
    /// request may succeed elsewhere.
    pub fn is_instance_fault(&self) -> bool {
        matches!(
            self,
            CallError::Trap(_)
                | CallError::Deadline(_)
                | CallError::Unresponsive(_)
                | CallError::Instantiate(_)
                | CallError::Init(_)
        )
    }

    /// Whether the fault arose inside a guest call that ran (a trap, a
    /// deadline, a guest blocked outside WebAssembly), which the request
    /// itself may have caused; not a sandbox that could not be built.
    pub fn arose_in_the_call(&self) -> bool {
        matches!(
            self,
            CallError::Trap(_) | CallError::Deadline(_) | CallError::Unresponsive(_)
        )
    }

    /// Whether the store must be dropped after this failure: anything but
    /// the guest's own refusal, or a call the host refused before entering
    /// the guest.
    pub fn poisons_the_store(&self) -> bool {
        !matches!(self, CallError::Rejected(_)) && !self.never_reached_the_guest()
    }

    /// Whether the host refused the call before it entered a guest (no
    /// `tensors` export, no place in time, the version gone): neither the
    /// instance's fault nor the client's bad input.
    pub fn never_reached_the_guest(&self) -> bool {
        matches!(
            self,
            CallError::NoTensors | CallError::Queued(_) | CallError::VersionGone(_)
        )
    }

    /// Whether the guest said the request itself was bad (not the instance).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, CallError::Rejected(e)
            if matches!(e.kind, ErrorKind::MalformedRequest | ErrorKind::InvalidInput))
    }
}

/// Where an instance reports the chaos fault armed in one of its
/// sandboxes, and counts those that fired: claimed before the fault is
/// armed, cleared when a call starts with it (it fires in that call, even if
/// the call's request goes away before the call ends), or when the sandbox
/// holding it is dropped first (a deploy replaced it), so an instance never
/// reports, and refuses a new fault for, a fault no sandbox holds any more.
#[derive(Debug, Clone, Default)]
pub struct ArmedFault(Arc<Reported>);

#[derive(Debug, Default)]
struct Reported {
    armed: Mutex<Option<&'static str>>,
    fired: AtomicU64,
}

impl ArmedFault {
    /// The fault armed and not fired yet.
    pub fn get(&self) -> Option<&'static str> {
        *self.lock()
    }

    /// Faults that fired: calls that started with one armed.
    pub fn fired(&self) -> u64 {
        self.0.fired.load(Ordering::Relaxed)
    }

    /// No fault armed any more (it never fired: its claim was given up,
    /// or its sandbox dropped).
    fn clear(&self) {
        *self.lock() = None;
    }

    /// The armed fault fired: a call started with it. Counted first, so
    /// that a reader never sees it neither armed nor fired.
    fn fire(&self) {
        self.0.fired.fetch_add(1, Ordering::Relaxed);
        self.clear();
    }

    /// Claims the report for `fault` before it is armed, so that two arms
    /// racing cannot both pass; `Err` names the fault already armed. The
    /// claim is given up when dropped unless [`Claim::keep`] says the fault
    /// was armed.
    pub fn claim(&self, fault: Fault) -> Result<Claim<'_>, &'static str> {
        let mut armed = self.lock();
        if let Some(already) = *armed {
            return Err(already);
        }
        *armed = Some(fault_name(fault));
        Ok(Claim(Some(self)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<&'static str>> {
        self.0.armed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A claim on an [`ArmedFault`] while its fault is being armed.
#[derive(Debug)]
pub struct Claim<'a>(Option<&'a ArmedFault>);

impl Claim<'_> {
    /// The fault was armed: it is reported until it fires or its sandbox
    /// is dropped.
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(report) = self.0 {
            report.clear();
        }
    }
}

/// A guest's optional exports, as bound in one store.
pub(crate) struct Optional {
    /// Its own fault injection (`chaos`).
    pub(crate) chaos: Option<Drillable>,
    /// Its typed `infer` (`tensors`).
    pub(crate) tensors: Option<TensorPredictor>,
    /// Its merged batches (`batch`).
    pub(crate) batch: Option<BatchPredictor>,
    /// Its `predict-rows` (`rows`): the host then parses `/predict` bodies
    /// and writes the answers.
    pub(crate) rows: Option<HostRows>,
}

/// A guest's `predict-rows`, and what the host needs to call it.
pub(crate) struct HostRows {
    pub(crate) bound: RowsPredictor,
    /// Values per row of the model's `[batch, features]` input.
    pub(crate) features: usize,
    /// Most values one answer may hold, so that the JSON the host writes
    /// for a guest stays within the guest's memory cap, as the JSON the
    /// guest wrote itself did.
    pub(crate) max_values: usize,
}

/// A running sandbox: its store and the predictor bound in it.
pub struct Live {
    store: Store<InstanceState>,
    predictor: Predictor,
    /// What the guest exports beyond `predict`.
    optional: Optional,
    /// A fault the host commits in the next call (guests without `chaos`).
    injected: Option<Fault>,
    /// The fault armed for the next call (either way), until it fires, and
    /// where it is reported (cleared if this sandbox is dropped first).
    armed: Option<(Fault, ArmedFault)>,
    deadline_ticks: u64,
    version: String,
    pub(crate) log: LogName,
}

/// Most deadlines one merged call may run for (a deadline per request, up
/// to this many). Two: a healthy batch of requests that each take most of
/// a deadline is not taken for a hung call, and a hung request holds the
/// others of its batch for two deadlines of running (about four in wall
/// time, throttled) before they run again on their own; with four, a
/// client saw 9 s at the default 1 s deadline.
const MERGED_DEADLINES: usize = 2;

/// A merged batch's answers, one per request in order: each the guest's
/// answer or its refusal of that request.
pub type BatchReplies = Vec<Result<Predicted, PredictError>>;

/// A `/predict` answer, before the host adds who answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Predicted {
    /// JSON the guest wrote: read once more when the origin is added, to
    /// check that it is one object that leaves the origin fields alone.
    Guest(Vec<u8>),
    /// JSON the host wrote from the guest's scores (`rows`): known to be
    /// such an object, so the origin is added without reading it again.
    Host(predict_core::Written),
}

impl Predicted {
    /// The answer with `"model"`, `"instance"` and `"version"` first; a
    /// guest's JSON that is not one object, or writes those fields itself,
    /// is a bad answer.
    pub fn with_origin(
        &self,
        origin: predict_core::Origin<'_>,
    ) -> Result<Vec<u8>, predict_core::BadAnswer> {
        match self {
            Predicted::Guest(json) => predict_core::with_origin(origin, json),
            Predicted::Host(written) => Ok(written.with_origin(origin)),
        }
    }
}

impl Live {
    pub(crate) fn new(
        store: Store<InstanceState>,
        predictor: Predictor,
        optional: Optional,
        deadline_ticks: u64,
        version: String,
        log: LogName,
    ) -> Self {
        Self {
            store,
            predictor,
            optional,
            injected: None,
            armed: None,
            deadline_ticks,
            version,
            log,
        }
    }

    /// The deployment version it was built from.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether `/predict` bodies are parsed, and answers written, on the
    /// host (the guest exports `rows`).
    pub fn parses_on_host(&self) -> bool {
        self.optional.rows.is_some()
    }

    /// Hands `/predict` bodies back to the guest's own `predict` and
    /// `predict-batch`: for checking that both paths answer alike, and for
    /// measuring one against the other.
    pub fn parse_in_guest(&mut self) {
        self.optional.rows = None;
    }

    /// The fault the next call fires, if one is armed.
    pub fn armed(&self) -> Option<Fault> {
        self.armed.as_ref().map(|(fault, _)| *fault)
    }

    /// How long one call may run.
    fn deadline(&self) -> Duration {
        crate::sandbox::engine::ticks_duration(self.deadline_ticks)
    }

    /// Arms a chaos fault for the next `predict`: inside the guest when it
    /// exports `chaos`, else from the host (trap and hang only). `report`,
    /// which the caller claimed for it, is cleared if this sandbox is
    /// dropped before the fault fires.
    pub async fn arm(&mut self, fault: Fault, report: &ArmedFault) -> Result<(), CallError> {
        if let Some(armed) = self.armed() {
            return Err(CallError::AlreadyArmed(fault_name(armed)));
        }
        let Some(chaos) = &self.optional.chaos else {
            if matches!(fault, Fault::Oom) {
                return Err(CallError::NotDrillable("oom"));
            }
            self.injected = Some(fault);
            self.armed = Some((fault, report.clone()));
            return Ok(());
        };
        start_call(&mut self.store, self.deadline_ticks);
        let deadline = self.deadline();
        within(
            deadline,
            chaos
                .hadr_predictor_chaos()
                .call_arm(&mut self.store, fault),
        )
        .await?
        .map_err(|e| CallError::from_wasmtime("arming a fault", e, deadline))?;
        self.armed = Some((fault, report.clone()));
        Ok(())
    }

    /// A call dropped at its wall-clock bound ([`within`]): if its guest
    /// was seen running WebAssembly for a long call's ticks, it was spinning
    /// there, throttled to half its time (see `engine::on_tick`), and ran
    /// out of wall time before its budget of running ticks: a deadline, not
    /// a guest blocked outside WebAssembly, which no tick ever sees.
    fn unanswered(&self, e: CallError, deadline: Duration) -> CallError {
        match e {
            CallError::Unresponsive(_) if self.store.data().budget.ran_long() => {
                CallError::Deadline(deadline)
            }
            e => e,
        }
    }

    /// Starts a guest call of `ticks` budget: the armed fault (if any)
    /// fires in it. Returns the call's deadline.
    fn begin(&mut self, ticks: u64) -> Duration {
        start_call(&mut self.store, ticks);
        // Counted as fired here, not when the call ends: a call whose
        // request goes away is dropped mid-way, and its fault fired all
        // the same.
        if let Some((_, report)) = self.armed.take() {
            report.fire();
        }
        if let Some(fault) = self.injected.take() {
            self.inject(fault);
        }
        crate::sandbox::engine::ticks_duration(ticks)
    }

    /// One prediction, interrupted at the deadline. An `Err` other than
    /// [`CallError::Rejected`] means the store is poisoned and must be dropped.
    pub async fn predict(&mut self, body: &[u8]) -> Result<Predicted, CallError> {
        if let Some(host_rows) = &self.optional.rows {
            let parsed = rows::parse(body, host_rows.features).map_err(CallError::Rejected)?;
            let scores = self.predict_rows(&parsed, self.deadline_ticks).await?;
            let answer = rows::answer(&scores, 0..parsed.rows).map_err(CallError::Rejected)?;
            return Ok(Predicted::Host(answer));
        }
        let deadline = self.begin(self.deadline_ticks);
        match within(deadline, self.predictor.call_predict(&mut self.store, body))
            .await
            .map_err(|e| self.unanswered(e, deadline))?
        {
            Ok(Ok(out)) => Ok(Predicted::Guest(out)),
            Ok(Err(refused)) => Err(CallError::Rejected(refused)),
            Err(e) => Err(CallError::from_wasmtime("calling predict", e, deadline)),
        }
    }

    /// Several requests in one call, under one deadline and the same faults
    /// as [`Live::predict`]: merged into one model call by a guest that
    /// exports `batch`, else one `predict` each. An `Err` means the store is
    /// poisoned (no request was answered); a refused request is its own
    /// `Err` inside the `Ok`.
    pub async fn predict_batch(&mut self, bodies: &[Bytes]) -> Result<BatchReplies, CallError> {
        if let Some(features) = self.optional.rows.as_ref().map(|r| r.features) {
            return self.predict_merged_rows(bodies, features).await;
        }
        if self.optional.batch.is_none() {
            let mut replies = Vec::with_capacity(bodies.len());
            for body in bodies {
                match self.predict(body).await {
                    Ok(answer) => replies.push(Ok(answer)),
                    Err(CallError::Rejected(refused)) => replies.push(Err(refused)),
                    Err(e) => return Err(e),
                }
            }
            return Ok(replies);
        }
        // A merged call does the work of several: its deadline grows with
        // them, up to MERGED_DEADLINES deadlines, so a healthy batch is not
        // taken for a hung call and a hung one still holds the others little.
        let ticks = self.deadline_ticks * bodies.len().clamp(1, MERGED_DEADLINES) as u64;
        let deadline = self.begin(ticks);
        let Some(batch) = &self.optional.batch else {
            unreachable!("checked above");
        };
        // The bindings take owned bodies: this guest reads them all itself.
        let owned: Vec<Vec<u8>> = bodies.iter().map(|b| b.to_vec()).collect();
        let call = batch
            .hadr_predictor_batch()
            .call_predict_batch(&mut self.store, &owned);
        match within(deadline, call)
            .await
            .map_err(|e| self.unanswered(e, deadline))?
        {
            Ok(replies) if replies.len() == bodies.len() => Ok(replies
                .into_iter()
                .map(|reply| reply.map(Predicted::Guest))
                .collect()),
            Ok(replies) => Err(CallError::Trap(format!(
                "the guest answered {} of a batch of {} requests",
                replies.len(),
                bodies.len()
            ))),
            Err(e) => Err(CallError::from_wasmtime(
                "calling predict-batch",
                e,
                deadline,
            )),
        }
    }

    /// A merged batch through `predict-rows`: each body parsed on the host
    /// (one the parser refuses fails alone), the rows of the others run as
    /// one call under the grown deadline of a merged call, and each answered
    /// from its own rows; if the guest refuses the merged rows, each body
    /// runs on its own, under its own deadline as a request alone would (as
    /// after a merged call that faults), so one input the model cannot take
    /// fails only its own request.
    async fn predict_merged_rows(
        &mut self,
        bodies: &[Bytes],
        features: usize,
    ) -> Result<BatchReplies, CallError> {
        let parsed: Vec<_> = bodies.iter().map(|b| rows::parse(b, features)).collect();
        let readable: Vec<&predict_core::Batch> = parsed.iter().flatten().collect();
        let merged = if readable.len() > 1 {
            let all = predict_core::Batch {
                rows: readable.iter().map(|b| b.rows).sum(),
                features,
                data: readable.iter().flat_map(|b| &b.data).copied().collect(),
            };
            let ticks = self.deadline_ticks * readable.len().min(MERGED_DEADLINES) as u64;
            match self.predict_rows(&all, ticks).await {
                Ok(scores) => Some(scores),
                Err(CallError::Rejected(_)) => None,
                Err(fault) => return Err(fault),
            }
        } else {
            None
        };
        let mut replies = Vec::with_capacity(bodies.len());
        let mut first = 0;
        for body in parsed {
            let reply = match (body, &merged) {
                (Err(refused), _) => Err(refused),
                (Ok(body), Some(all)) => {
                    first += body.rows;
                    rows::answer(all, first - body.rows..first).map(Predicted::Host)
                }
                (Ok(body), None) => match self.predict_rows(&body, self.deadline_ticks).await {
                    Ok(own) => rows::answer(&own, 0..body.rows).map(Predicted::Host),
                    Err(CallError::Rejected(refused)) => Err(refused),
                    Err(fault) => return Err(fault),
                },
            };
            replies.push(reply);
        }
        Ok(replies)
    }

    /// One `predict-rows` call of `ticks` budget on rows the host parsed;
    /// the scores are checked to fit them.
    async fn predict_rows(
        &mut self,
        batch: &predict_core::Batch,
        ticks: u64,
    ) -> Result<rows::Scores, CallError> {
        let count = u32::try_from(batch.rows).map_err(|_| {
            CallError::Rejected(PredictError {
                kind: ErrorKind::InvalidInput,
                message: format!("a request holds at most {} rows", u32::MAX),
            })
        })?;
        let state = self.store.data_mut();
        let input = rows::hand(&mut state.table, &mut state.tensors, batch)
            .map_err(|e| unhanded(e, batch.rows))?;
        let deadline = self.begin(ticks);
        let Some(host_rows) = &self.optional.rows else {
            unreachable!("called only for a guest that exports rows");
        };
        let max_values = host_rows.max_values;
        let call =
            host_rows
                .bound
                .hadr_predictor_rows()
                .call_predict_rows(&mut self.store, input, count);
        match within(deadline, call)
            .await
            .map_err(|e| self.unanswered(e, deadline))?
        {
            Ok(Ok(handed)) => {
                let table = &mut self.store.data_mut().table;
                rows::take(table, handed, batch.rows, max_values).map_err(|e| match e {
                    rows::Unread::Refused(refused) => CallError::Rejected(refused),
                    rows::Unread::Bad(bad) => CallError::BadAnswer(bad),
                })
            }
            Ok(Err(refused)) => Err(CallError::Rejected(refused)),
            Err(e) => Err(CallError::from_wasmtime(
                "calling predict-rows",
                e,
                deadline,
            )),
        }
    }

    /// One typed inference (`/v2/.../infer`), under the same deadline and
    /// faults as [`Live::predict`].
    pub async fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, CallError> {
        if self.optional.tensors.is_none() {
            return Err(CallError::NoTensors);
        }
        // The tensors are copied into the guest's memory (`--max-memory`, which
        // also holds its stack and heap), and the guest makes its wasi-nn
        // tensors of them: too large, they could only trap it, and the
        // request is at fault, not the guest.
        let bytes = inputs
            .iter()
            .map(|t| t.data.len())
            .fold(0, usize::saturating_add);
        let room = self.store.data().tensors.cap() / GUEST_MEMORY_SHARE;
        if bytes > room {
            return Err(CallError::Rejected(PredictError {
                kind: ErrorKind::InvalidInput,
                message: format!(
                    "the request's tensors take {bytes} bytes, more than the {room} bytes (1/{GUEST_MEMORY_SHARE} of --max-memory) a sandbox takes into its memory: send fewer rows a request"
                ),
            }));
        }
        // The same budget, yields and wall-clock bound as `predict`: a
        // spinning infer must not hold a worker thread, nor a blocked one
        // its sandbox.
        let deadline = self.begin(self.deadline_ticks);
        let Some(tensors) = &self.optional.tensors else {
            unreachable!("checked above");
        };
        let call = tensors
            .hadr_predictor_tensors()
            .call_infer(&mut self.store, inputs);
        match within(deadline, call)
            .await
            .map_err(|e| self.unanswered(e, deadline))?
        {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(refused)) => Err(CallError::Rejected(refused)),
            Err(e) => Err(CallError::from_wasmtime("calling infer", e, deadline)),
        }
    }

    /// Makes the next call fail at its first epoch check, as a guest that
    /// trapped or spun would: a trap at once, or a hang that holds the call
    /// (asleep, not spinning) until its deadline interrupts it. Either way
    /// the store is dropped afterwards, like any faulted one.
    fn inject(&mut self, fault: Fault) {
        let until = Instant::now() + self.deadline();
        self.store.set_epoch_deadline(0);
        self.store.epoch_deadline_callback(move |_| match fault {
            Fault::Hang if Instant::now() < until => Ok(wasmtime::UpdateDeadline::YieldCustom(
                0,
                Box::pin(tokio::time::sleep_until(until.into())),
            )),
            Fault::Hang => Ok(wasmtime::UpdateDeadline::Interrupt),
            _ => Err(InjectedTrap.into()),
        });
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some((_, reported)) = &self.armed {
            reported.clear();
        }
    }
}

/// The share of `--max-memory` a request's tensors may take in a guest's
/// memory: the guest also holds its stack (1 MiB for a Rust guest), its heap
/// and its copies of them, and a request that does not fit traps it. Measured
/// with the generic guest at 2 MiB: 768,000 bytes of inputs fit, 844,800
/// trapped; a quarter (524,288) leaves room for a copy.
const GUEST_MEMORY_SHARE: usize = 4;

/// Why `rows` rows could not be handed to the guest. Rows that take more
/// bytes than one sandbox's tensors may hold are the request's own fault:
/// refused as invalid input before any guest code ran, so the sandbox is
/// kept and counts nothing, and a merged batch runs its requests alone. The
/// cap reached because of tensors the guest kept is the guest's: a trap,
/// and its sandbox is replaced.
fn unhanded(e: Unhanded, rows: usize) -> CallError {
    match e {
        Unhanded::OverCap(over) if over.tensor > over.cap => CallError::Rejected(PredictError {
            kind: ErrorKind::InvalidInput,
            message: format!(
                "the request's {rows} rows take {} bytes as a tensor, more than the {} bytes a sandbox's tensors may hold (--max-memory): send fewer rows a request",
                over.tensor, over.cap
            ),
        }),
        e => CallError::Trap(e.to_string()),
    }
}

/// A fault's name, as the admin API and `/topology` write it.
pub fn fault_name(fault: Fault) -> &'static str {
    match fault {
        Fault::Trap => "trap",
        Fault::Hang => "hang",
        Fault::Oom => "oom",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::nn::tensors::TensorsOverCap;

    #[test]
    fn an_interrupted_call_names_the_deadline_it_ran_under() {
        let deadline = Duration::from_millis(250);
        let interrupted = wasmtime::Error::from(wasmtime::Trap::Interrupt);
        let e = CallError::from_wasmtime("initialising", interrupted, deadline);
        assert!(matches!(e, CallError::Deadline(d) if d == deadline));
        assert!(e.to_string().contains("250ms"), "{e}");
        let injected = wasmtime::Error::from(InjectedTrap);
        let e = CallError::from_wasmtime("calling predict", injected, deadline);
        assert!(matches!(&e, CallError::Trap(m) if m.contains("injected by the host")));
        let other = wasmtime::Error::msg("no such export");
        let e = CallError::from_wasmtime("instantiating", other, deadline);
        assert!(matches!(&e, CallError::Instantiate(m) if m.starts_with("instantiating")));
    }

    #[test]
    fn rows_over_the_cap_alone_are_the_requests_fault_and_a_kept_tensor_the_guests() {
        let over = |held, tensor| {
            Unhanded::OverCap(TensorsOverCap {
                held,
                tensor,
                cap: 100,
            })
        };
        let e = unhanded(over(120, 120), 3);
        assert!(e.is_bad_input() && !e.poisons_the_store(), "{e:?}");
        assert!(e.to_string().contains("3 rows take 120 bytes"), "{e}");
        let e = unhanded(over(120, 60), 3);
        assert!(
            matches!(&e, CallError::Trap(m) if m.contains("over its cap")),
            "{e:?}"
        );
        assert!(e.poisons_the_store());
    }

    #[test]
    fn a_fault_is_reported_from_its_claim_until_it_fires_and_counted_once() {
        let report = ArmedFault::default();
        report.claim(Fault::Trap).unwrap().keep();
        assert_eq!(report.get(), Some("trap"));
        assert_eq!(report.claim(Fault::Hang).unwrap_err(), "trap");
        report.fire();
        assert_eq!((report.get(), report.fired()), (None, 1));
        // A claim given up before its fault was armed: nothing reported,
        // nothing fired.
        drop(report.claim(Fault::Hang).unwrap());
        assert_eq!((report.get(), report.fired()), (None, 1));
    }
}
