//! Rollouts: deploy, canary, promote, abort and rollback, with no failed
//! request.
//!
//! A deploy names a guest module and/or a model (uploaded beforehand as
//! content-addressed blobs) and the instances to switch. Everything slow or
//! fallible happens before any instance changes: the module is compiled (or
//! taken from the compiled cache) and must be a component of the predictor
//! world, the model must load, and each new deployment must pass a smoke
//! test (instantiate, `init`, one prediction of its example). Only then the
//! chosen instances swap their [`Serving`] value: new requests go to the new
//! version, calls already running finish on the old one, each instance's
//! sandbox is rebuilt for the new version before it is needed, and the old
//! deployment is kept (its warm pool drained) for `rollback`.
//!
//! A canary sends a share of each chosen instance's requests to the new
//! version. Its calls are counted; when its error rate passes the
//! threshold (after a minimum number of calls) it stops taking traffic at
//! once and is aborted, and the event is recorded. `promote` makes it the
//! deployment in force; `abort` drops it.
//!
//! Every change is written to the state store and flushed before it is
//! acknowledged. One rollout runs at a time.
//!
//! May use: `metrics` (its rollout counter), `instance`, `serving`,
//! `sandbox`, `state`, `topology`, `shutdown`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use hadr_state::{BlobStore, Event, EventKind, StateStore};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::instance::Instance;
use crate::sandbox::compiled_cache::CompiledCache;
use crate::sandbox::deployment::{CompiledModule, Deployment, ModuleError, SmokeTestError};
use crate::sandbox::engine::HostRuntime;
use crate::sandbox::live::CallError;
use crate::sandbox::nn::{LoadedModel, ModelError};
use crate::serving::{now_rfc3339, Canary, InForce, Serving, Source};
use crate::state::sync::StateSync;

/// Which instances a rollout applies to: `"all"`, `"p1,p2"` or `["p1", "p2"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Targets {
    /// Every instance (`"all"`, or left out).
    #[default]
    All,
    /// These, by name.
    Some(Vec<String>),
}

impl Serialize for Targets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Targets::All => s.serialize_str("all"),
            Targets::Some(names) => names.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Targets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        // An untagged enum's `expecting` is its whole error message.
        #[serde(
            untagged,
            expecting = "not instances: \"all\", names separated by commas, or a list of names"
        )]
        enum Raw {
            Word(String),
            List(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "all" => Ok(Targets::All),
            Raw::Word(w) => Ok(Targets::Some(
                w.split(',').map(|n| n.trim().to_string()).collect(),
            )),
            Raw::List(l) => Ok(Targets::Some(l)),
        }
    }
}

/// A model to deploy: the name guests load it by, and its blob.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// The name it is served as.
    pub name: String,
    /// Hex SHA-256 of the uploaded ONNX file.
    pub digest: String,
}

/// `POST /admin/deploy`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// Hex SHA-256 of the uploaded guest module (else each instance keeps its own).
    #[serde(default)]
    pub module: Option<String>,
    /// The model to serve (else each instance keeps its own).
    #[serde(default)]
    pub model: Option<ModelRef>,
    /// The instances to switch: `"all"` or a list of names.
    #[serde(default)]
    pub to: Targets,
    /// Send only this percentage of requests to the new version.
    #[serde(default)]
    pub canary: Option<u8>,
    /// The request body the smoke test predicts (else the model's example).
    #[serde(default)]
    pub example: Option<serde_json::Value>,
    /// A canary whose error rate passes this is aborted (default 0.05).
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    /// ... once it has had at least this many calls (default 20).
    #[serde(default)]
    pub min_calls: Option<u64>,
}

/// Why a rollout was refused (nothing changed), or why its change could
/// not be saved. The variants that wrap a cause keep it as their `source`.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The request cannot be carried out as asked (422): impossible canary
    /// settings, no instance named, a canary over mixed versions.
    #[error("{0}")]
    Invalid(String),
    /// A blob it names was never uploaded (422).
    #[error("no {what} with digest {digest} was uploaded (PUT /admin/blobs/<digest> first)")]
    NotUploaded {
        /// `module` or `model`.
        what: &'static str,
        /// The digest asked for.
        digest: String,
    },
    /// An uploaded blob could not be read back (422: upload it again).
    #[error("the uploaded {what} could not be read")]
    Blob {
        /// `module` or `model`.
        what: &'static str,
        /// Why.
        #[source]
        source: hadr_state::blobs::BlobError,
    },
    /// The module is not a predictor this host can run (422).
    #[error("the module was refused")]
    Module(#[source] ModuleError),
    /// The model cannot be served (422).
    #[error("the model was refused")]
    Model(#[source] ModelError),
    /// The new version failed its smoke test (422).
    #[error("version {version} failed its smoke test, nothing was changed")]
    SmokeTest {
        /// The version tested.
        version: String,
        /// What went wrong.
        #[source]
        source: SmokeTestError,
    },
    /// The version's warm spares could not be built (422).
    #[error("its warm pool could not be filled")]
    WarmPool(#[source] CallError),
    /// The version a rollback returns to cannot start (422).
    #[error("the previous version cannot start")]
    PreviousCannotStart(#[source] CallError),
    /// An instance named does not exist (404).
    #[error("no instance `{0}` in this topology")]
    UnknownInstance(String),
    /// The request conflicts with the state (409): a canary already runs,
    /// there is none, or nothing to roll back to.
    #[error("{0}")]
    Conflict(String),
    /// The state store failed before anything changed (500).
    #[error("the state store failed")]
    Storage(#[source] hadr_state::StateError),
    /// The change is in force but was not saved (500).
    #[error("the change is in force but was not saved")]
    Unsaved(#[source] hadr_state::StateError),
    /// The new version's example could not be saved for restarts (500).
    #[error("the example could not be saved")]
    SaveExample(#[source] hadr_state::blobs::BlobError),
    /// A task of the rollout failed (a panic; 500).
    #[error("the {0} failed")]
    Task(&'static str, #[source] tokio::task::JoinError),
}

/// What a rollout did.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutOutcome {
    /// What happened.
    pub action: Action,
    /// Instance name → the version it serves now.
    pub instances: HashMap<String, String>,
    /// The canary's version and share, while one runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
}

/// What a rollout did, as its answer names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Action {
    /// A new version is in force.
    #[serde(rename = "deployed")]
    Deployed,
    /// A canary takes its share.
    #[serde(rename = "canary")]
    Canary,
    /// The canary is in force.
    #[serde(rename = "promoted")]
    Promoted,
    /// The canary was dropped.
    #[serde(rename = "aborted")]
    Aborted,
    /// The previous version is back in force.
    #[serde(rename = "rolled back")]
    RolledBack,
    /// Every chosen instance already served the version: nothing changed,
    /// so a retried deploy does not make the version its own previous.
    #[serde(rename = "unchanged")]
    Unchanged,
}

/// No rollout runs, nor can one start, while this lives (see
/// [`Rollouts::settle`]).
pub struct Settled<'a>(#[allow(dead_code)] tokio::sync::MutexGuard<'a, Option<Active>>);

/// The running canary.
struct Active {
    canary: Arc<Canary>,
    instances: Vec<Arc<Instance>>,
}

/// Applies rollouts to a host's instances.
pub struct Rollouts {
    runtime: Arc<HostRuntime>,
    instances: Vec<Arc<Instance>>,
    blobs: BlobStore,
    cache: Arc<CompiledCache>,
    store: Arc<StateStore>,
    state: Arc<StateSync>,
    warm_pool: usize,
    applied: Arc<crate::metrics::RolloutCount>,
    /// Held for the whole of a rollout: one at a time.
    active: Mutex<Option<Active>>,
}

/// Where a rollout's helpers are.
pub struct RolloutParts {
    /// The engine and linker.
    pub runtime: Arc<HostRuntime>,
    /// Every instance.
    pub instances: Vec<Arc<Instance>>,
    /// Uploaded modules and models.
    pub blobs: BlobStore,
    /// The compiled-module cache.
    pub cache: Arc<CompiledCache>,
    /// The state store (events).
    pub store: Arc<StateStore>,
    /// Instance records.
    pub state: Arc<StateSync>,
    /// Warm spares per new deployment.
    pub warm_pool: usize,
    /// Counts rollouts for `/metrics`.
    pub applied: Arc<crate::metrics::RolloutCount>,
}

impl Rollouts {
    /// Rollouts over `parts.instances`.
    pub fn new(parts: RolloutParts) -> Self {
        Self {
            runtime: parts.runtime,
            instances: parts.instances,
            blobs: parts.blobs,
            cache: parts.cache,
            store: parts.store,
            state: parts.state,
            warm_pool: parts.warm_pool,
            applied: parts.applied,
            active: Mutex::new(None),
        }
    }

    /// Waits up to `limit` for the rollout in progress, if any, to finish,
    /// and holds off any other while the guard lives: a stopping host takes
    /// it before its last commit. `None` if one still runs after `limit`.
    pub async fn settle(&self, limit: std::time::Duration) -> Option<Settled<'_>> {
        tokio::time::timeout(limit, self.active.lock())
            .await
            .ok()
            .map(Settled)
    }

    /// The uploaded blobs.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Validates a new version and switches the chosen instances to it (or
    /// starts a canary). Refuses with the reason, changing nothing, when
    /// the version is not fit to serve.
    pub async fn deploy(
        self: &Arc<Self>,
        req: DeployRequest,
    ) -> Result<RolloutOutcome, RolloutError> {
        if req.module.is_none() && req.model.is_none() {
            return Err(RolloutError::Invalid(
                "nothing to deploy: give a module, a model, or both".into(),
            ));
        }
        let mut active = self.active.lock().await;
        if let Some(a) = active.as_ref() {
            return Err(RolloutError::Conflict(format!(
                "a canary of version {} is running: promote or abort it first",
                a.canary.deployment.version
            )));
        }
        validate_canary(&req)?;
        let mut targets = self.targets(&req.to)?;
        if let Some(m) = &req.model {
            targets = serving_model(targets, &m.name, &req.to)?;
        }
        let module = match &req.module {
            Some(digest) => Some(self.compile(digest).await?),
            None => None,
        };
        let model = match &req.model {
            Some(m) => Some(self.load_model(m).await?),
            None => None,
        };
        let example = req
            .example
            .as_ref()
            .map(|v| Bytes::from(serde_json::to_vec(v).expect("JSON serialises")));
        // One deployment per distinct (module, model) the targets end up on.
        let mut built: HashMap<String, Arc<Deployment>> = HashMap::new();
        let mut plan = Vec::new();
        // Instances that already serve the version they would get, with the
        // example they would get: left as they are (swapping would make the
        // version its own previous, and a rollback a no-op that loses the
        // real previous one).
        let mut unchanged = HashMap::new();
        let mut kept = Vec::new();
        for instance in &targets {
            let now = instance.deployment();
            let module = module.clone().unwrap_or_else(|| now.module.clone());
            let (model, example) = match &model {
                Some(m) => (m.clone(), example.clone()),
                None => (
                    now.model.clone(),
                    example.clone().or(Some(now.example.clone())),
                ),
            };
            let version = crate::sandbox::deployment::version(&module.digest, &model.digest);
            if version == now.version && example.as_ref().is_none_or(|e| *e == now.example) {
                unchanged.insert(instance.name().to_string(), version);
                kept.push(instance.clone());
                continue;
            }
            let deployment = match built.get(&version) {
                Some(d) => d.clone(),
                // Another instance serves it already: one deployment (one
                // pool, one loaded model) per version. Not for a canary,
                // whose end drains its deployment's pool.
                None => match self
                    .in_force(&version, &model.name, &example)
                    .filter(|_| req.canary.is_none())
                {
                    Some(d) => {
                        built.insert(version, d.clone());
                        d
                    }
                    None => {
                        let d = Arc::new(Deployment::new(module, model, self.warm_pool, example));
                        smoke_test(&d, &self.runtime).await.map_err(|source| {
                            RolloutError::SmokeTest {
                                version: version.clone(),
                                source,
                            }
                        })?;
                        built.insert(version, d.clone());
                        d
                    }
                },
            };
            plan.push((instance.clone(), deployment));
        }
        if let Some(name) = unchanged.keys().next().filter(|_| req.canary.is_some()) {
            return Err(RolloutError::Conflict(format!(
                "instance `{name}` already serves version {}: a canary of it would change nothing",
                unchanged[name]
            )));
        }
        // The version asked for is the one wanted from now on: versions held
        // since the start (see `Held`) are let go, as by a swap.
        let released = kept.iter().filter(|i| release_held(i)).count();
        if plan.is_empty() {
            if released > 0 {
                self.state
                    .commit_all()
                    .await
                    .map_err(RolloutError::Unsaved)?;
            }
            tracing::info!(detail = %describe(&unchanged), released, "deploy left every instance as it was: each already serves the version");
            return Ok(RolloutOutcome {
                action: Action::Unchanged,
                instances: unchanged,
                canary: None,
            });
        }
        for deployment in built.values() {
            self.save_example(deployment).await?;
            deployment
                .fill_pool(&self.runtime)
                .await
                .map_err(RolloutError::WarmPool)?;
        }
        let mut outcome = match req.canary {
            Some(percent) => self.start_canary(&mut active, plan, percent, &req).await,
            None => self.switch(plan, EventKind::Deploy).await,
        }?;
        outcome.instances.extend(unchanged);
        Ok(outcome)
    }

    /// Makes the running canary the deployment in force.
    pub async fn promote(&self) -> Result<RolloutOutcome, RolloutError> {
        let mut active = self.active.lock().await;
        if active
            .as_ref()
            .is_some_and(|a| a.canary.tripped.load(Ordering::Acquire))
        {
            return Err(RolloutError::Conflict(
                "the canary failed its error-rate check and is being aborted: it cannot be promoted".into(),
            ));
        }
        let Some(a) = active.take() else {
            return Err(RolloutError::Conflict("no canary is running".into()));
        };
        let plan = a
            .instances
            .iter()
            .map(|i| (i.clone(), a.canary.deployment.clone()))
            .collect();
        a.canary.trip.notify_one();
        self.switch(plan, EventKind::Promote).await
    }

    /// Drops the running canary; `reason` is recorded.
    pub async fn abort(&self, reason: &str) -> Result<RolloutOutcome, RolloutError> {
        let mut active = self.active.lock().await;
        let Some(a) = active.take() else {
            return Err(RolloutError::Conflict("no canary is running".into()));
        };
        self.end_canary(a, EventKind::Abort, reason).await
    }

    /// Returns the chosen instances to their previous deployment.
    pub async fn rollback(&self, to: &Targets) -> Result<RolloutOutcome, RolloutError> {
        let active = self.active.lock().await;
        if active.is_some() {
            return Err(RolloutError::Conflict(
                "a canary is running: abort or promote it before rolling back".into(),
            ));
        }
        let targets = self.targets(to)?;
        let mut plan = Vec::new();
        let mut without = Vec::new();
        for instance in &targets {
            match instance.serving().previous.clone() {
                Some(previous) => plan.push((instance.clone(), previous.deployment)),
                None => without.push(instance.name()),
            }
        }
        if !without.is_empty() {
            let with: Vec<&str> = plan.iter().map(|(i, _)| i.name()).collect();
            return Err(RolloutError::Conflict(no_previous(&without, &with)));
        }
        for (_, deployment) in &plan {
            deployment
                .fill_pool(&self.runtime)
                .await
                .map_err(RolloutError::PreviousCannotStart)?;
        }
        self.switch(plan, EventKind::Rollback).await
    }

    /// Instances and the recent events, for `GET /admin/deployments`.
    pub fn events(&self, n: usize) -> Result<Vec<Event>, RolloutError> {
        self.store.events(n).map_err(RolloutError::Storage)
    }

    /// Keeps the example in the blob store, where a restart finds it by the
    /// digest the state records.
    async fn save_example(&self, deployment: &Deployment) -> Result<(), RolloutError> {
        let (blobs, example) = (self.blobs.clone(), deployment.example.clone());
        tokio::task::spawn_blocking(move || blobs.put(&example))
            .await
            .map_err(|e| RolloutError::Task("example writer's thread", e))?
            .map(drop)
            .map_err(RolloutError::SaveExample)
    }

    /// The deployment an instance serves in force as `version` under the
    /// model name `model` (the version names only the bytes), with
    /// `example` when one is asked for.
    fn in_force(
        &self,
        version: &str,
        model: &str,
        example: &Option<Bytes>,
    ) -> Option<Arc<Deployment>> {
        self.instances.iter().map(|i| i.deployment()).find(|d| {
            d.version == version
                && d.model.name == model
                && example.as_ref().is_none_or(|e| *e == d.example)
        })
    }

    fn targets(&self, to: &Targets) -> Result<Vec<Arc<Instance>>, RolloutError> {
        match to {
            Targets::All => Ok(self.instances.clone()),
            Targets::Some(names) if names.iter().all(|n| n.trim().is_empty()) => Err(
                RolloutError::Invalid("no instance named: give `all` or instance names".into()),
            ),
            Targets::Some(names) => {
                let mut chosen: Vec<Arc<Instance>> = Vec::new();
                for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
                    let instance = self
                        .instances
                        .iter()
                        .find(|i| i.name() == name)
                        .ok_or_else(|| RolloutError::UnknownInstance(name.to_string()))?;
                    // Naming one twice must not make it its own previous version.
                    if !chosen.iter().any(|c| Arc::ptr_eq(c, instance)) {
                        chosen.push(instance.clone());
                    }
                }
                Ok(chosen)
            }
        }
    }

    async fn compile(&self, digest: &str) -> Result<Arc<CompiledModule>, RolloutError> {
        let bytes = self.blob(digest, "module")?;
        let (runtime, cache) = (self.runtime.clone(), self.cache.clone());
        let path = PathBuf::from(format!("upload {}", short(digest)));
        tokio::task::spawn_blocking(move || {
            CompiledModule::from_bytes(&runtime, &bytes, &path, Some(&cache))
        })
        .await
        .map_err(|e| RolloutError::Task("compiler's thread", e))?
        .map(Arc::new)
        .map_err(RolloutError::Module)
    }

    async fn load_model(&self, m: &ModelRef) -> Result<Arc<LoadedModel>, RolloutError> {
        let bytes = self.blob(&m.digest, "model")?;
        let name = m.name.clone();
        let path = PathBuf::from(format!("upload {} (served as `{name}`)", short(&m.digest)));
        let budget = self.runtime.limits().max_model_bytes;
        tokio::task::spawn_blocking(move || LoadedModel::from_bytes(name, &path, &bytes, budget))
            .await
            .map_err(|e| RolloutError::Task("model loader's thread", e))?
            .map(Arc::new)
            .map_err(RolloutError::Model)
    }

    fn blob(&self, digest: &str, what: &'static str) -> Result<Vec<u8>, RolloutError> {
        match self.blobs.get(digest) {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(RolloutError::NotUploaded {
                what,
                digest: digest.to_string(),
            }),
            Err(source) => Err(RolloutError::Blob { what, source }),
        }
    }

    /// Puts each planned deployment in force, keeping the old one as
    /// previous, rebuilds the sandboxes, then saves and records it.
    async fn switch(
        &self,
        plan: Vec<(Arc<Instance>, Arc<Deployment>)>,
        kind: EventKind,
    ) -> Result<RolloutOutcome, RolloutError> {
        let mut instances = HashMap::new();
        for (instance, deployment) in &plan {
            let serving = instance.serving();
            let old = serving.current.clone();
            let returning = serving
                .previous
                .as_ref()
                .filter(|p| Arc::ptr_eq(&p.deployment, deployment));
            let current = match returning {
                Some(p) if kind == EventKind::Rollback => InForce {
                    since: now_rfc3339(),
                    ..p.clone()
                },
                _ => InForce::now(deployment.clone(), Source::Deploy),
            };
            // A new example for the version in force changes what it is
            // smoke-tested and `GET /predict` answered with, not the
            // version: the one before stays the rollback target.
            let previous = if old.deployment.version == deployment.version {
                serving.previous.clone()
            } else {
                Some(old)
            };
            instance.set_serving(Serving {
                current,
                previous,
                canary: None,
                held: Default::default(),
            });
            instances.insert(instance.name().to_string(), deployment.version.clone());
        }
        self.after_swap(&plan).await;
        let detail = describe(&instances);
        self.commit(kind, &detail).await?;
        tracing::info!(?kind, %detail, "rollout applied");
        Ok(RolloutOutcome {
            action: match kind {
                EventKind::Deploy => Action::Deployed,
                EventKind::Promote => Action::Promoted,
                _ => Action::RolledBack,
            },
            instances,
            canary: None,
        })
    }

    /// Rebuilds each swapped instance's sandboxes, and drains the pools of
    /// deployments now only kept for rollback.
    async fn after_swap(&self, plan: &[(Arc<Instance>, Arc<Deployment>)]) {
        for (instance, _) in plan {
            if let Err(e) = instance.refresh().await {
                tracing::warn!(instance = instance.name(), error = %e, "could not pre-build the new sandbox; the next request will");
            }
        }
        for instance in &self.instances {
            if let Some(p) = &instance.serving().previous {
                let in_use = self
                    .instances
                    .iter()
                    .any(|i| Arc::ptr_eq(&i.deployment(), &p.deployment));
                if !in_use {
                    p.deployment.drain_pool();
                }
            }
        }
    }

    async fn start_canary(
        self: &Arc<Self>,
        active: &mut Option<Active>,
        plan: Vec<(Arc<Instance>, Arc<Deployment>)>,
        percent: u8,
        req: &DeployRequest,
    ) -> Result<RolloutOutcome, RolloutError> {
        let deployment = plan[0].1.clone();
        if plan.iter().any(|(_, d)| !Arc::ptr_eq(d, &deployment)) {
            return Err(RolloutError::Invalid(
                "a canary needs every chosen instance to end up on the same module and model"
                    .into(),
            ));
        }
        let canary = Arc::new(Canary::new(
            deployment.clone(),
            percent,
            req.max_error_rate.unwrap_or(0.05),
            req.min_calls.unwrap_or(20),
        ));
        let instances: Vec<Arc<Instance>> = plan.iter().map(|(i, _)| i.clone()).collect();
        for instance in &instances {
            let serving = instance.serving();
            instance.set_serving(Serving {
                canary: Some(canary.clone()),
                ..(*serving).clone()
            });
            if let Err(e) = instance.refresh().await {
                tracing::warn!(instance = instance.name(), error = %e, "could not pre-build the canary sandbox");
            }
        }
        let detail = format!(
            "canary of version {} at {percent}% on {}",
            deployment.version,
            names(&instances)
        );
        // Owned (abortable, watched) before it is saved, so a failed save
        // never leaves a canary nobody can stop.
        *active = Some(Active {
            canary: canary.clone(),
            instances: instances.clone(),
        });
        self.watch(canary.clone());
        self.commit(EventKind::Canary, &detail).await?;
        tracing::info!(%detail, "canary started");
        Ok(RolloutOutcome {
            action: Action::Canary,
            instances: instances
                .iter()
                .map(|i| (i.name().to_string(), i.deployment().version.clone()))
                .collect(),
            canary: Some(format!("{} at {percent}%", deployment.version)),
        })
    }

    /// Aborts `canary` when it trips, unless it has ended by then.
    fn watch(self: &Arc<Self>, canary: Arc<Canary>) {
        let this = self.clone();
        tokio::spawn(async move {
            canary.trip.notified().await;
            let mut active = this.active.lock().await;
            let still = active
                .as_ref()
                .is_some_and(|a| Arc::ptr_eq(&a.canary, &canary));
            if !still {
                return;
            }
            let a = active.take().expect("checked above");
            let (calls, errors) = canary.counts();
            let reason = format!(
                "its error rate passed {:.1}% ({errors} errors in {calls} calls)",
                canary.max_error_rate * 100.0
            );
            if let Err(e) = this.end_canary(a, EventKind::AutoAbort, &reason).await {
                tracing::error!(error = %e, "could not record the canary's automatic abort");
            }
        });
    }

    async fn end_canary(
        &self,
        a: Active,
        kind: EventKind,
        reason: &str,
    ) -> Result<RolloutOutcome, RolloutError> {
        a.canary.tripped.store(true, Ordering::Release);
        for instance in &a.instances {
            let serving = instance.serving();
            instance.set_serving(Serving {
                canary: None,
                ..(*serving).clone()
            });
            if let Err(e) = instance.refresh().await {
                tracing::warn!(instance = instance.name(), error = %e, "could not drop the canary sandbox");
            }
        }
        a.canary.deployment.drain_pool();
        a.canary.trip.notify_one();
        let detail = format!(
            "canary of version {} on {} aborted: {reason}",
            a.canary.deployment.version,
            names(&a.instances)
        );
        self.commit(kind, &detail).await?;
        tracing::warn!(%detail, "canary ended");
        Ok(RolloutOutcome {
            action: Action::Aborted,
            instances: a
                .instances
                .iter()
                .map(|i| (i.name().to_string(), i.deployment().version.clone()))
                .collect(),
            canary: None,
        })
    }

    /// Records the event and flushes every instance record.
    async fn commit(&self, kind: EventKind, detail: &str) -> Result<(), RolloutError> {
        let event = Event {
            at: now_rfc3339(),
            kind,
            detail: detail.into(),
        };
        self.applied.inc();
        self.store
            .push_event(&event)
            .map_err(RolloutError::Unsaved)?;
        self.state.commit_all().await.map_err(RolloutError::Unsaved)
    }
}

/// Refuses impossible canary settings before anything is compiled.
fn validate_canary(req: &DeployRequest) -> Result<(), RolloutError> {
    let refuse = |m: String| Err(RolloutError::Invalid(m));
    if let Some(percent) = req.canary {
        if percent == 0 || percent > 100 {
            return refuse(format!(
                "a canary takes 1 to 100 percent of requests, not {percent}"
            ));
        }
    }
    if let Some(rate) = req.max_error_rate {
        if !(0.0..=1.0).contains(&rate) {
            return refuse(format!(
                "max_error_rate is a share between 0 and 1, not {rate}"
            ));
        }
    }
    if req.min_calls == Some(0) {
        return refuse("min_calls must be at least 1".into());
    }
    Ok(())
}

/// Runs a deployment's smoke test on the blocking pool: a guest that spins
/// until its deadline must not hold a request worker meanwhile.
async fn smoke_test(
    deployment: &Arc<Deployment>,
    runtime: &Arc<HostRuntime>,
) -> Result<(), SmokeTestError> {
    let (deployment, runtime) = (deployment.clone(), runtime.clone());
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(deployment.smoke_test(&runtime)))
        .await
        .map_err(SmokeTestError::Thread)?
}

/// The first 12 hex digits of a digest, for messages.
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn names(instances: &[Arc<Instance>]) -> String {
    instances
        .iter()
        .map(|i| i.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a rollback is refused when some of its instances have no previous deployment, and, when
/// others have one (a deploy that went `--to` some instances), how to roll back those.
fn no_previous(without: &[&str], with: &[&str]) -> String {
    let (s, has) = if without.len() == 1 {
        ("", "has")
    } else {
        ("s", "have")
    };
    let mut message = format!(
        "instance{s} `{}` {has} no previous deployment to roll back to",
        without.join("`, `")
    );
    if !with.is_empty() {
        let (them, with) = (
            if without.len() == 1 { "it" } else { "them" },
            with.join(","),
        );
        message += &format!(
            " (a deploy did not switch {them}, or a start could not restore the previous one); \
             roll back the others with --to {with} (`\"to\": \"{with}\"`)"
        );
    }
    message
}

/// Lets go of the versions `instance` holds since the start; whether it held
/// any.
fn release_held(instance: &Arc<Instance>) -> bool {
    let serving = instance.serving();
    if serving.held.deployed.is_none() && serving.held.previous.is_none() {
        return false;
    }
    tracing::info!(instance = instance.name(), held = ?serving.held, "versions held since the start are let go: the deploy asked for the one in force");
    instance.set_serving(Serving {
        held: Default::default(),
        ..(*serving).clone()
    });
    true
}

/// The targets of a model deploy: a model replaces the model of its name, so
/// `all` means every instance serving a model of that name, and a named
/// instance serving another model is refused (it would answer for its own
/// model's name with this one).
fn serving_model(
    targets: Vec<Arc<Instance>>,
    name: &str,
    to: &Targets,
) -> Result<Vec<Arc<Instance>>, RolloutError> {
    if let Some(other) = targets.iter().find(|i| i.model_name() != name) {
        if matches!(to, Targets::Some(_)) {
            return Err(RolloutError::Invalid(format!(
                "instance `{}` serves the model `{}`, not `{name}`: a model replaces the one of its name",
                other.name(),
                other.model_name()
            )));
        }
    }
    let mut served: Vec<String> = targets.iter().map(|i| i.model_name()).collect();
    let chosen: Vec<_> = targets
        .into_iter()
        .filter(|i| i.model_name() == name)
        .collect();
    if chosen.is_empty() {
        served.sort();
        served.dedup();
        return Err(RolloutError::Invalid(format!(
            "no instance serves a model named `{name}`; this topology serves {}",
            served
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(chosen)
}

fn describe(instances: &HashMap<String, String>) -> String {
    let mut pairs: Vec<_> = instances
        .iter()
        .map(|(n, v)| format!("{n} → {v}"))
        .collect();
    pairs.sort();
    pairs.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_all_a_word_or_a_list() {
        let read = |json: &str| -> Targets {
            let req: DeployRequest = serde_json::from_str(json).unwrap();
            req.to
        };
        assert!(matches!(read(r#"{"module": "x"}"#), Targets::All));
        assert!(matches!(
            read(r#"{"module": "x", "to": "all"}"#),
            Targets::All
        ));
        assert!(
            matches!(read(r#"{"module": "x", "to": "p1,p2"}"#), Targets::Some(v) if v == ["p1", "p2"])
        );
        assert!(
            matches!(read(r#"{"module": "x", "to": ["p3"]}"#), Targets::Some(v) if v == ["p3"])
        );
    }

    #[test]
    fn a_refused_rollback_names_what_can_be_rolled_back() {
        assert_eq!(
            no_previous(&["p1"], &[]),
            "instance `p1` has no previous deployment to roll back to"
        );
        assert_eq!(
            no_previous(&["p2", "p3"], &["p1"]),
            "instances `p2`, `p3` have no previous deployment to roll back to (a deploy did not \
             switch them, or a start could not restore the previous one); roll back the others \
             with --to p1 (`\"to\": \"p1\"`)"
        );
    }
}
