//! The deployment lifetime: one guest module and one model, compiled, checked
//! and immutable.
//!
//! A [`Deployment`] is everything an instance needs that does not change
//! while it serves: the compiled component, pre-linked against the host's
//! imports (an `InstancePre`, its optional `chaos` export looked up once),
//! the model's shared tract graph, a version id derived from both digests,
//! and the example its smoke test predicts.
//! Because it never changes, swapping versions is swapping one `Arc` for
//! another (see [`crate::rollout`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime::{Store, StoreLimitsBuilder};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_nn::wit::WasiNnCtx;
use wasmtime_wasi_nn::{Backend, Registry};

use wasmtime::component::InstancePre;

use crate::bindings::batch::{BatchPredictor, BatchPredictorIndices};
use crate::bindings::drillable::{Drillable, DrillableIndices};
use crate::bindings::hadr::predictor::types::{InstanceConfig, TensorInfo};
use crate::bindings::rows::{RowsPredictor, RowsPredictorIndices};
use crate::bindings::tensors::{TensorPredictor, TensorPredictorIndices};
use crate::bindings::{Predictor, PredictorIndices};
use crate::sandbox::compiled_cache::{CacheOutcome, CompiledCache};
use crate::sandbox::engine::{ticks_duration, HostRuntime, InstanceState};
use crate::sandbox::guest_log::{GuestLog, LogName};
use crate::sandbox::live::{CallError, Live, Predicted};
use crate::sandbox::nn::{GraphRegistry, LoadedModel, TractBackend};

/// Why a deployment failed its smoke test.
#[derive(Debug, thiserror::Error)]
pub enum SmokeTestError {
    /// Its sandbox did not start (instantiation or `init`).
    #[error("its sandbox did not start")]
    Start(#[source] CallError),
    /// Its example prediction failed.
    #[error("its smoke prediction failed")]
    Predict(#[source] CallError),
    /// Its answer is not one the host can send.
    #[error("its smoke prediction's answer cannot be sent")]
    Answer(#[source] predict_core::BadAnswer),
    /// The thread that ran it failed.
    #[error("the smoke test's thread failed")]
    Thread(#[source] tokio::task::JoinError),
}

/// Why a guest module was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The file could not be read.
    #[error("cannot read guest module {path}: {source}")]
    Read {
        /// The module file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a WebAssembly component wasmtime can compile.
    #[error("{path} is not a WebAssembly component: {message}")]
    NotComponent {
        /// The module file (or the uploaded blob).
        path: PathBuf,
        /// wasmtime's explanation.
        message: String,
    },
    /// A component, but not of the predictor world (wrong exports, or imports
    /// the host does not give).
    #[error(
        "{path} is not a predictor component (world hadr:predictor/predictor-guest): {message}"
    )]
    WrongWorld {
        /// The module file.
        path: PathBuf,
        /// What does not match.
        message: String,
    },
}

/// A compiled guest module, ready to instantiate quickly.
pub struct CompiledModule {
    /// Where it came from (a file, or the blob it was uploaded as).
    pub path: PathBuf,
    /// Hex SHA-256 of the module.
    pub digest: String,
    /// Whether it came from the compiled cache.
    pub cache: CacheOutcome,
    instance_pre: InstancePre<InstanceState>,
    predictor: PredictorIndices,
    /// The optional `chaos` export, when the guest has one.
    chaos: Option<DrillableIndices>,
    /// The optional `tensors` export (`/v2/.../infer`), when the guest has one.
    tensors: Option<TensorPredictorIndices>,
    /// The optional `batch` export (merged batches), when the guest has one.
    batch: Option<BatchPredictorIndices>,
    /// The optional `rows` export (`/predict` parsed on the host), when the
    /// guest has one.
    rows: Option<RowsPredictorIndices>,
}

impl CompiledModule {
    /// Reads, compiles (or loads from `cache`) and pre-links a guest component.
    pub fn from_file(
        runtime: &HostRuntime,
        path: &Path,
        cache: Option<&CompiledCache>,
    ) -> Result<Self, ModuleError> {
        let bytes = std::fs::read(path).map_err(|source| ModuleError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(runtime, &bytes, path, cache)
    }

    /// Compiles (or loads from `cache`) and pre-links a guest component;
    /// `path` names it in errors.
    pub fn from_bytes(
        runtime: &HostRuntime,
        bytes: &[u8],
        path: &Path,
        cache: Option<&CompiledCache>,
    ) -> Result<Self, ModuleError> {
        let digest = hadr_state::blobs::digest(bytes);
        let not_component = |e: wasmtime::Error| ModuleError::NotComponent {
            path: path.to_owned(),
            message: format!("{e:#}"),
        };
        let (component, cache) = match cache {
            Some(cache) => cache
                .component(runtime.engine(), &digest, bytes)
                .map_err(not_component)?,
            None => (
                wasmtime::component::Component::from_binary(runtime.engine(), bytes)
                    .map_err(not_component)?,
                CacheOutcome::Uncached,
            ),
        };
        let wrong_world = |e: wasmtime::Error| ModuleError::WrongWorld {
            path: path.to_owned(),
            message: format!("{e:#}"),
        };
        let instance_pre = runtime
            .linker()
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        let predictor = PredictorIndices::new(&instance_pre).map_err(wrong_world)?;
        let chaos = DrillableIndices::new(&instance_pre)
            .inspect_err(|e| {
                tracing::info!(path = %path.display(), reason = %format!("{e:#}"),
                    "the guest has no usable hadr:predictor/chaos export: drills inject trap and hang from the host")
            })
            .ok();
        let tensors = TensorPredictorIndices::new(&instance_pre)
            .inspect_err(|e| {
                tracing::info!(path = %path.display(), reason = %format!("{e:#}"),
                    "the guest has no usable hadr:predictor/tensors export: /v2 infer requests to it are answered 501")
            })
            .ok();
        let batch = BatchPredictorIndices::new(&instance_pre)
            .inspect_err(|e| {
                tracing::info!(path = %path.display(), reason = %format!("{e:#}"),
                    "the guest has no usable hadr:predictor/batch export: an instance that batches calls predict once per request")
            })
            .ok();
        let rows = RowsPredictorIndices::new(&instance_pre)
            .inspect_err(|e| {
                tracing::info!(path = %path.display(), reason = %format!("{e:#}"),
                    "the guest has no usable hadr:predictor/rows export: it parses its own /predict bodies")
            })
            .ok();
        Ok(Self {
            path: path.to_owned(),
            digest,
            cache,
            instance_pre,
            predictor,
            chaos,
            tensors,
            batch,
            rows,
        })
    }
}

/// One module serving one model: immutable once built, plus its warm pool.
pub struct Deployment {
    /// The guest.
    pub module: Arc<CompiledModule>,
    /// The model it serves.
    pub model: Arc<LoadedModel>,
    /// `<module digest>-<model digest>`, shortened: shown in every answer.
    pub version: String,
    /// The request body its smoke test predicts.
    pub example: Bytes,
    /// Its SHA-256, hashed once: the state records it with every flush.
    pub example_digest: String,
    registry: GraphRegistry,
    pool: WarmPool,
}

/// Ready sandboxes of a deployment, waiting to replace a faulted instance:
/// instantiated, initialised and warmed by one prediction of the example
/// (which also proves each one works), so taking one costs a pop.
struct WarmPool {
    spares: Mutex<Vec<Live>>,
    target: usize,
    refilling: AtomicBool,
    /// Drained: kept only for rollback, so faults must not refill it.
    retired: AtomicBool,
}

/// An instantiated sandbox not yet initialised.
struct Spare {
    store: Store<InstanceState>,
    predictor: Predictor,
    chaos: Option<Drillable>,
    tensors: Option<TensorPredictor>,
    batch: Option<BatchPredictor>,
    rows: Option<RowsPredictor>,
    log: LogName,
}

impl Deployment {
    /// Pairs a compiled module with a loaded model, with room for `spares`
    /// warm instances (filled by [`Deployment::fill_pool`]). Its smoke test
    /// predicts `example`, or a row of zeros when there is none.
    pub fn new(
        module: Arc<CompiledModule>,
        model: Arc<LoadedModel>,
        spares: usize,
        example: Option<Bytes>,
    ) -> Self {
        let version = version(&module.digest, &model.digest);
        let registry = GraphRegistry::new([model.as_ref()]);
        let example = example.unwrap_or_else(|| {
            let zeros = vec![0.0f32; model.graph.features()];
            Bytes::from(serde_json::to_vec(&serde_json::json!({ "inputs": [zeros] })).unwrap())
        });
        // Initialised spares serve whichever instance takes them: `init`
        // says nothing about the instance.
        Self {
            module,
            model,
            version,
            example_digest: hadr_state::blobs::digest(&example),
            example,
            registry,
            pool: WarmPool {
                spares: Mutex::new(Vec::with_capacity(spares)),
                target: spares,
                refilling: AtomicBool::new(false),
                retired: AtomicBool::new(false),
            },
        }
    }

    /// A fresh, initialised instance in its own `Store`.
    pub async fn instantiate(
        &self,
        runtime: &HostRuntime,
        instance: &str,
    ) -> Result<Live, CallError> {
        self.spawn(runtime)
            .await?
            .init(self, runtime, instance)
            .await
    }

    /// A warm spare for `instance`, if the pool has one: nothing in it is
    /// instance-specific but its log name.
    pub fn take_spare(&self, instance: &str) -> Option<Live> {
        let spare = self
            .pool
            .spares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()?;
        spare.log.set(instance);
        Some(spare)
    }

    /// A sandbox for `instance`: a warm spare when the pool has one, else
    /// one built now; either way the pool is topped up in the background.
    /// Says whether it came from the pool.
    pub async fn sandbox_for(
        self: &Arc<Self>,
        runtime: &Arc<HostRuntime>,
        instance: &str,
    ) -> (Result<Live, CallError>, bool) {
        let taken = match self.take_spare(instance) {
            Some(spare) => (Ok(spare), true),
            None => (self.instantiate(runtime, instance).await, false),
        };
        self.refill_in_background(runtime);
        taken
    }

    /// Runs its example through a fresh sandbox: instantiation, `init` and
    /// one prediction must all succeed, with an answer the host can send (a
    /// JSON object not writing the fields the host adds). Says why when not.
    pub async fn smoke_test(&self, runtime: &HostRuntime) -> Result<(), SmokeTestError> {
        let mut live = self
            .instantiate(runtime, "smoke-test")
            .await
            .map_err(SmokeTestError::Start)?;
        let answer = live
            .predict(&self.example)
            .await
            .map_err(SmokeTestError::Predict)?;
        check_answer(&answer).map_err(SmokeTestError::Answer)
    }

    /// Drops every spare (a deployment kept only for rollback needs none),
    /// and keeps faults from refilling the pool until [`Deployment::fill_pool`]
    /// is called again.
    pub fn drain_pool(&self) {
        self.pool.retired.store(true, Ordering::Release);
        self.pool
            .spares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Spares waiting in the pool.
    pub fn spares(&self) -> usize {
        self.pool
            .spares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Fills the pool up to its target, on this thread (and puts a drained
    /// deployment back in service).
    pub async fn fill_pool(&self, runtime: &HostRuntime) -> Result<(), CallError> {
        self.pool.retired.store(false, Ordering::Release);
        self.top_up(runtime).await
    }

    /// Adds spares up to the target, unless the pool is drained meanwhile.
    async fn top_up(&self, runtime: &HostRuntime) -> Result<(), CallError> {
        while self.spares() < self.pool.target && !self.pool.retired.load(Ordering::Acquire) {
            let spare = self.ready_spare(runtime).await?;
            self.pool
                .spares
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(spare);
        }
        if self.pool.retired.load(Ordering::Acquire) {
            // Drained while a spare was being built: do not keep it.
            self.drain_pool();
        }
        Ok(())
    }

    /// Refills the pool in a task of its own, off the request path; at most
    /// one refill runs at a time. Must be called within the tokio runtime
    /// (guest calls always are, offloaded ones through `block_on`).
    pub fn refill_in_background(self: &Arc<Self>, runtime: &Arc<HostRuntime>) {
        if self.pool.retired.load(Ordering::Acquire)
            || self.pool.refilling.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (deployment, runtime) = (self.clone(), runtime.clone());
        tokio::spawn(async move {
            if let Err(e) = deployment.top_up(&runtime).await {
                tracing::error!(error = %e, version = %deployment.version, "refilling the warm pool failed");
            }
            deployment.pool.refilling.store(false, Ordering::Release);
        });
    }

    /// A sandbox for the pool: initialised under a placeholder name and
    /// warmed by predicting the example. A refusal of the example still
    /// leaves a working sandbox; a fault does not.
    async fn ready_spare(&self, runtime: &HostRuntime) -> Result<Live, CallError> {
        let mut live = self
            .spawn(runtime)
            .await?
            .init(self, runtime, "spare")
            .await?;
        match live.predict(&self.example).await {
            Ok(answer) => check_answer(&answer)
                .map(|()| live)
                .map_err(CallError::from),
            Err(CallError::Rejected(_)) => Ok(live),
            Err(fault) => Err(fault),
        }
    }

    /// Instantiates a sandbox: own linear memory, own WASI context (no
    /// directories, environment or sockets; stdout and stderr into the host
    /// log), memory cap and deadline from `runtime`. The guests rely on the
    /// empty environment, arguments and directories: wasi-libc would free
    /// those lists with an allocator other than the one that made them
    /// (guests/shared/alloc.rs).
    async fn spawn(&self, runtime: &HostRuntime) -> Result<Spare, CallError> {
        let limits = runtime.limits();
        let log = LogName::new("spare");
        let wasi = WasiCtxBuilder::new()
            .stdout(GuestLog::new(log.clone(), "stdout"))
            .stderr(GuestLog::new(log.clone(), "stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let nn = WasiNnCtx::new(
            [Backend::from(TractBackend {
                budget: limits.max_model_bytes,
                guest_loads: limits.guest_models,
            })],
            Registry::from(self.registry.clone()),
        );
        let state = InstanceState {
            wasi,
            table: Default::default(),
            nn,
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.max_memory)
                .trap_on_grow_failure(false)
                .build(),
            budget: Default::default(),
            tensors: crate::sandbox::nn::tensors::GuestTensors::new(limits.max_memory),
        };
        let mut store = Store::new(runtime.engine(), state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(crate::sandbox::engine::on_tick);
        crate::sandbox::engine::start_call(&mut store, limits.deadline_ticks());
        let deadline = ticks_duration(runtime.limits().deadline_ticks());
        let instantiating = |e| CallError::from_wasmtime("instantiating", e, deadline);
        let module = &self.module;
        let instance = module
            .instance_pre
            .instantiate_async(&mut store)
            .await
            .map_err(instantiating)?;
        let predictor = module
            .predictor
            .load(&mut store, &instance)
            .map_err(instantiating)?;
        // Each optional export the guest has, bound in this store (the
        // bindings' types differ, their `load` is the same).
        macro_rules! bind {
            ($export:ident) => {
                module
                    .$export
                    .as_ref()
                    .map(|e| e.load(&mut store, &instance))
                    .transpose()
                    .map_err(instantiating)?
            };
        }
        let (chaos, tensors, batch, rows) =
            (bind!(chaos), bind!(tensors), bind!(batch), bind!(rows));
        Ok(Spare {
            store,
            predictor,
            chaos,
            tensors,
            batch,
            rows,
            log,
        })
    }
}

impl Spare {
    /// Gives the sandbox its instance's name and configuration.
    async fn init(
        mut self,
        deployment: &Deployment,
        runtime: &HostRuntime,
        instance: &str,
    ) -> Result<Live, CallError> {
        self.log.set(instance);
        let config = instance_config(&deployment.model);
        let ticks = runtime.limits().deadline_ticks();
        crate::sandbox::engine::start_call(&mut self.store, ticks);
        let deadline = ticks_duration(ticks);
        crate::sandbox::live::within(deadline, self.predictor.call_init(&mut self.store, &config))
            .await?
            .map_err(|e| CallError::from_wasmtime("initialising", e, deadline))?
            .map_err(CallError::Init)?;
        Ok(Live::new(
            self.store,
            self.predictor,
            crate::sandbox::live::Optional {
                chaos: self.chaos,
                tensors: self.tensors,
                batch: self.batch,
                rows: self.rows.map(|bound| crate::sandbox::live::HostRows {
                    bound,
                    features: deployment.model.graph.features(),
                    max_values: runtime.limits().max_memory
                        / crate::sandbox::rows::JSON_BYTES_PER_VALUE,
                }),
            },
            ticks,
            deployment.version.clone(),
            self.log,
        ))
    }
}

/// What a guest is told about its model at `init`.
fn instance_config(model: &LoadedModel) -> InstanceConfig {
    let info = model.graph.info();
    let tensors = |list: &[crate::sandbox::nn::TensorInfo]| {
        list.iter()
            .map(|t| TensorInfo {
                name: t.name.clone(),
                datatype: t.datatype.to_string(),
                shape: t.shape.clone(),
            })
            .collect()
    };
    InstanceConfig {
        model: model.name.clone(),
        inputs: tensors(&info.inputs),
        outputs: tensors(&info.outputs),
        metadata: info.metadata.clone(),
    }
}

/// Whether the host can send `answer` (with its origin fields added).
fn check_answer(answer: &Predicted) -> Result<(), predict_core::BadAnswer> {
    let origin = predict_core::Origin {
        model: "",
        instance: "",
        version: "",
    };
    answer.with_origin(origin).map(drop)
}

/// A deployment's version: 8 hex digits of each digest.
pub fn version(module_digest: &str, model_digest: &str) -> String {
    format!("{}-{}", &module_digest[..8], &model_digest[..8])
}
