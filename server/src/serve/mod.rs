//! `hadr-host serve`: from a topology file to listening sockets.
//!
//! Start-up does all the slow and fallible work before the first socket is
//! bound: parse the topology, load every model once, compile every guest
//! module once, pair them into deployments, and build every instance's
//! sandbox. A broken file, model or guest therefore stops start-up with a
//! message naming it, instead of failing the first request.
//!
//! Then it opens the state directory and takes up where the last run left
//! off (see [`crate::state::recovery`] for which of file and state wins), saves the
//! reconciled state, and only then binds its sockets.
//!
//! Owns the process lifetime of a host. May use every other module.

pub mod args;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hadr_state::{BlobStore, DeploymentRecord, StateError, StateStore};
use tokio::net::TcpListener;

use crate::http::admission::{self, Admission, AtCap};
use crate::http::app::Scope;
use crate::http::{server, AdminApp, Connections, PublicApp, Service};
use crate::instance::{CallError, Held, InForce, Instance, Serving, Source};
use crate::rollout::{RolloutParts, Rollouts};
use crate::routing::router::Router;
use crate::sandbox::compiled_cache::{CacheOutcome, CompiledCache};
use crate::sandbox::deployment::{CompiledModule, Deployment, ModuleError};
use crate::sandbox::engine::{HostRuntime, Limits};
use crate::sandbox::nn::registry::model_name;
use crate::sandbox::nn::{LoadedModel, ModelError};
use crate::shutdown::Shutdown;
use crate::state::recovery;
use crate::state::sync::StateSync;
use crate::topology::{Defaults, Topology, TopologyError};

/// Everything `serve` needs to know.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The topology file.
    pub topology: PathBuf,
    /// Where the router listens.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Open connections allowed over the public listeners (lowered at start
    /// to fit the open-file limit).
    pub max_connections: usize,
    /// Open connections one client address may hold on the public listeners.
    pub max_connections_per_client: usize,
    /// How long an answer's write may make no progress (the client is not
    /// reading) before its connection is closed.
    pub write_timeout: Duration,
    /// How long a client may go without completing a request's headers
    /// (idle keep-alive included) before its connection is closed.
    pub header_timeout: Duration,
    /// Per-instance limits (`limits.concurrency` is set at start from
    /// `concurrency`).
    pub limits: Limits,
    /// Calls one instance runs at once where its entry does not say;
    /// `None`: the cores shared among the actives served here.
    pub concurrency: Option<usize>,
    /// Model and module for entries that name none.
    pub defaults: Defaults,
    /// How long in-flight requests may take to finish on shutdown.
    pub grace: Duration,
    /// Warm spares kept ready per deployment.
    pub warm_pool: usize,
    /// Where the admin listener listens.
    pub admin_listen: SocketAddr,
    /// The state directory: the sled database (`db/`) and the generated
    /// admin token.
    pub state_dir: PathBuf,
    /// How often per-request counters are written to the state store.
    pub state_interval: Duration,
    /// Largest module or model accepted by `PUT /admin/blobs`, in bytes.
    pub max_upload: usize,
    /// How long the actives must carry the load alone before a promoted
    /// standby returns to standby.
    pub promotion_cooldown: Duration,
    /// Serve only these entries (`--only`): one process per entry, each on
    /// its own machine, behind a balancer. `None`: all of them.
    pub only: Option<Vec<String>>,
}

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The topology file is wrong.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// A model did not load.
    #[error("{file}: instance `{instance}`: field `model`: {source}")]
    Model {
        /// The topology file.
        file: PathBuf,
        /// The first instance naming it.
        instance: String,
        /// Why it did not load.
        source: ModelError,
    },
    /// Two different model files share a name.
    #[error("{0}: models {1} and {2} would both be served as `{3}`: rename one of the files")]
    ModelName(PathBuf, PathBuf, PathBuf, String),
    /// A guest module was refused.
    #[error("{file}: instance `{instance}`: field `module`: {source}")]
    Module {
        /// The topology file.
        file: PathBuf,
        /// The first instance naming it.
        instance: String,
        /// Why it was refused.
        source: ModuleError,
    },
    /// An instance's sandbox could not be built.
    #[error("{0}: instance `{1}` could not start: {2}")]
    Instance(PathBuf, String, #[source] CallError),
    /// The admin token could not be read or written.
    // The cause last: told with its causes, it is then not repeated.
    #[error(
        "admin token in {0} (set HADR_ADMIN_TOKEN, or fix the state directory's permissions): {1}"
    )]
    AdminToken(PathBuf, #[source] std::io::Error),
    /// The state directory cannot be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// More instances, or sandboxes, than one process can reserve.
    #[error(
        "{file}: {count} instances with {sandboxes} sandboxes (concurrency × 2 + 2 each); one \
         process serves at most {MAX_INSTANCES} instances and {MAX_SANDBOXES} sandboxes (each \
         reserves WebAssembly address space up front): lower `concurrency`, or spread the \
         topology over hosts with \"host\" and `serve --only`"
    )]
    TooManyInstances {
        /// The topology file.
        file: PathBuf,
        /// Its instances (after `--only`).
        count: usize,
        /// The sandboxes they reserve.
        sandboxes: usize,
    },
    /// The engine could not be created.
    #[error("cannot create the WebAssembly engine: {0:#}")]
    Engine(wasmtime::Error),
    /// Two listeners of the process would share an address.
    #[error("{0}")]
    Clash(String),
    /// A socket could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

impl StartError {
    /// Whether the operator's input (file, model, guest, address) is at fault.
    pub fn is_config(&self) -> bool {
        !matches!(self, StartError::Engine(_))
    }
}

/// A host with every listener bound, not yet serving.
pub struct Host {
    /// The router both apps share; its background tasks (standby return,
    /// idle sandbox trimming) run beside the listeners.
    router: Arc<Router>,
    /// What the router's listener and each instance's port serve.
    public: Arc<PublicApp>,
    /// What the admin listener serves.
    admin: Arc<AdminApp>,
    /// The public listeners' shared connection cap.
    public_connections: Connections,
    /// The admin listener's own connection cap.
    admin_connections: Connections,
    router_listener: TcpListener,
    admin_listener: TcpListener,
    instance_listeners: Vec<(Arc<Instance>, TcpListener)>,
    grace: Duration,
    promotion_cooldown: Duration,
    state: Arc<StateSync>,
    _runtime: Arc<HostRuntime>,
}

impl Host {
    /// Builds every deployment and instance and binds every listener.
    pub async fn start(options: &ServeOptions) -> Result<Self, StartError> {
        let mut topology = Topology::load(&options.topology, &options.defaults)?;
        // The whole file, served here or not: `--only` must neither drop
        // the state of the entries another process serves nor change the
        // file's generation.
        let file = topology.clone();
        if let Some(only) = &options.only {
            topology = topology.only(only)?;
            tracing::info!(entries = ?only, "serving only these entries of the topology (--only)");
        }
        let mut limits = options.limits;
        limits.concurrency = options.concurrency.unwrap_or_else(|| {
            let actives = topology.instances.iter().filter(|i| i.active).count();
            crate::sandbox::engine::default_concurrency(actives)
        });
        tracing::info!(
            concurrency = limits.concurrency,
            "calls each instance runs at once (where its entry does not say)"
        );
        let sandboxes = crate::sandbox::engine::sandboxes_for(
            topology
                .instances
                .iter()
                .map(|i| i.concurrency.unwrap_or(limits.concurrency)),
        );
        if topology.instances.len() > MAX_INSTANCES || sandboxes > MAX_SANDBOXES {
            return Err(StartError::TooManyInstances {
                file: topology.path.clone(),
                count: topology.instances.len(),
                sandboxes,
            });
        }
        let store = Arc::new(open_state(&options.state_dir)?);
        let runtime = Arc::new(HostRuntime::new(limits, sandboxes).map_err(StartError::Engine)?);
        let mut library = Library {
            runtime: runtime.clone(),
            blobs: BlobStore::new(options.state_dir.join("blobs")),
            cache: Arc::new(CompiledCache::new(
                options.state_dir.join("compiled"),
                store.clone(),
                runtime.engine(),
            )),
            spares: options.warm_pool,
            by_version: HashMap::new(),
        };
        let files = build_deployments(&mut library, &topology)?;
        let generation = restore_marks(&store, &file)?;
        let mut instances = Vec::new();
        for spec in &topology.instances {
            let file = files[&(spec.module.clone(), spec.model.clone())].clone();
            let saved = store.instance(&spec.name)?;
            let outcome = recovery::reconcile(spec, &file.version, saved.as_ref());
            for conflict in &outcome.conflicts {
                tracing::warn!(state = %store.path().display(), "{conflict}");
            }
            let serving = library.serving(spec.name.as_str(), file, saved.as_ref(), &outcome);
            let instance = Instance::new(spec.clone(), runtime.clone(), serving.current.clone());
            instance.set_serving(serving);
            instance.restore(outcome.role, &outcome.saved);
            if saved.is_some() {
                tracing::info!(instance = instance.name(), role = ?outcome.role,
                    served = outcome.saved.served, traps = outcome.saved.traps,
                    version = %instance.deployment().version, "instance state restored");
            }
            instances.push(Arc::new(instance));
        }
        forget_missing(&store, &file)?;
        let events = store.events(1)?;
        if let Some(ended) =
            recovery::canary_ended_by_restart(&events, crate::serving::now_rfc3339())
        {
            tracing::warn!(detail = %ended.detail, "the canary the last run left open has ended");
            store.push_event(&ended)?;
        }
        let mut filled: Vec<Arc<Deployment>> = Vec::new();
        for instance in &instances {
            let deployment = instance.deployment();
            if !filled.iter().any(|d| Arc::ptr_eq(d, &deployment)) {
                deployment.fill_pool(&runtime).await.map_err(|e| {
                    StartError::Instance(topology.path.clone(), "(warm pool)".into(), e)
                })?;
                filled.push(deployment);
            }
            instance.warm_up().await.map_err(|e| {
                StartError::Instance(topology.path.clone(), instance.name().to_string(), e)
            })?;
        }
        let state = Arc::new(StateSync::new(
            store.clone(),
            instances.clone(),
            options.state_interval,
        ));
        state.commit_all().await?;
        collect_garbage(&store, &library, files.values());
        let applied = Arc::new(crate::metrics::RolloutCount::default());
        let metrics = Arc::new(crate::metrics::Metrics::new(
            instances.clone(),
            applied.clone(),
        ));
        let rollouts = Arc::new(Rollouts::new(RolloutParts {
            runtime: runtime.clone(),
            instances: instances.clone(),
            blobs: library.blobs.clone(),
            cache: library.cache.clone(),
            store,
            state: state.clone(),
            warm_pool: options.warm_pool,
            applied,
        }));
        // Each instance with a port of its own, and the address it listens on.
        let ports: Vec<(&Arc<Instance>, SocketAddr)> = instances
            .iter()
            .filter_map(|i| {
                let port = i.spec().port?;
                let ip = i.spec().host.unwrap_or(options.listen.ip());
                Some((i, SocketAddr::new(ip, port)))
            })
            .collect();
        let named: Vec<(&str, SocketAddr)> = ports.iter().map(|(i, a)| (i.name(), *a)).collect();
        check_listeners(
            &options.topology,
            options.listen,
            options.admin_listen,
            &named,
        )
        .map_err(StartError::Clash)?;
        // Every address configured before any listener is bound: a listener bound while
        // another waits would take connections it does not answer.
        let mut addrs = vec![(options.listen, "router".to_string())];
        addrs.extend(
            named
                .iter()
                .map(|(name, a)| (*a, format!("instance `{name}`"))),
        );
        addrs.push((options.admin_listen, "admin".into()));
        let mut waited = Vec::new();
        for (addr, what) in addrs {
            if !waited.contains(&addr.ip()) {
                wait_for_address(addr, what).await?;
                waited.push(addr.ip());
            }
        }
        let router_listener = bind(options.listen, "router".into()).await?;
        let mut instance_listeners = Vec::new();
        for (instance, addr) in ports {
            let listener = bind(addr, format!("instance `{}`", instance.name())).await?;
            let bound = listener.local_addr().map_or(addr.port(), |a| a.port());
            instance.set_bound_port(bound);
            instance_listeners.push((instance.clone(), listener));
        }
        let admin_listener = bind(options.admin_listen, "admin".into()).await?;
        warn_if_exposed(admin_listener.local_addr().ok());
        let max_connections = connection_cap(options.max_connections, instance_listeners.len() + 2);
        let router = Arc::new(Router::new(instances).with_state(state.clone()));
        let public = Arc::new(PublicApp {
            router: router.clone(),
            max_body: options.max_body,
            state: state.clone(),
            generation,
            metrics,
            draining: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        });
        let admin = Arc::new(AdminApp {
            router: router.clone(),
            state: state.clone(),
            rollouts,
            max_upload: options.max_upload,
            admin_token: admin_token(&options.state_dir)?,
        });
        let public_connections = Connections {
            admission: Admission::new(
                max_connections,
                options.max_connections_per_client,
                AtCap::Wait,
            ),
            write_timeout: options.write_timeout,
            header_timeout: options.header_timeout,
        };
        let admin_connections = Connections {
            admission: Admission::new(
                ADMIN_CONNECTIONS,
                ADMIN_CONNECTIONS_PER_CLIENT,
                AtCap::EvictUnproven,
            ),
            write_timeout: options.write_timeout,
            header_timeout: options.header_timeout,
        };
        Ok(Self {
            router,
            public,
            admin,
            public_connections,
            admin_connections,
            router_listener,
            admin_listener,
            instance_listeners,
            grace: options.grace,
            promotion_cooldown: options.promotion_cooldown,
            state,
            _runtime: runtime,
        })
    }

    /// Set while the host drains before stopping (`/readyz` answers 503).
    pub fn draining(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.public.draining.clone()
    }

    /// The router's bound address.
    pub fn router_addr(&self) -> SocketAddr {
        self.router_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Each instance listener's name and bound address.
    pub fn instance_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.instance_listeners
            .iter()
            .filter_map(|(i, l)| Some((i.name().to_string(), l.local_addr().ok()?)))
            .collect()
    }

    /// Serves until `shutdown` fires and in-flight requests have finished,
    /// then writes the final state.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), StateError> {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(self.state.clone().run(shutdown.clone()));
        let (router, cooldown, stop) = (
            self.router.clone(),
            self.promotion_cooldown,
            shutdown.clone(),
        );
        tasks.spawn(async move { router.return_standbys(cooldown, stop).await });
        let (router, stop) = (self.router.clone(), shutdown.clone());
        tasks.spawn(async move { router.trim_idle_sandboxes(stop).await });
        let (router, stop) = (self.router.clone(), shutdown.clone());
        tasks.spawn(async move { router.repair_broken(stop).await });
        let public = |scope| Service::Public(self.public.clone(), scope);
        for (instance, listener) in self.instance_listeners {
            tasks.spawn(server::serve(
                listener,
                self.public_connections.clone(),
                public(Scope::Instance(instance)),
                shutdown.clone(),
                self.grace,
            ));
        }
        tasks.spawn(server::serve(
            self.admin_listener,
            self.admin_connections,
            Service::Admin(self.admin.clone()),
            shutdown.clone(),
            self.grace,
        ));
        tasks.spawn(server::serve(
            self.router_listener,
            self.public_connections,
            public(Scope::Router),
            shutdown,
            self.grace,
        ));
        while tasks.join_next().await.is_some() {}
        // A rollout runs in its own task, which the runtime's end would drop
        // halfway (swapped, with no event): let it finish, then hold the
        // lock so none starts before the last commit.
        let rollouts = self.admin.rollouts.clone();
        let settled = rollouts.settle(SETTLE_ROLLOUT).await;
        if settled.is_none() {
            tracing::warn!(waited = ?SETTLE_ROLLOUT, "a rollout is still running; stopping without it (it may be in force without its event)");
        }
        self.state.commit().await?;
        tracing::info!("state flushed");
        Ok(())
    }
}

/// Removes from `blobs/` and `compiled/` what no instance's deployment (in
/// force or kept for rollback) uses, and what a `kill -9` left half
/// written; keeps the topology file's deployments (`files`: their compiled
/// modules and their module, model and example blobs), which every start
/// builds and copies whatever serves (removed after two deploys, each start
/// compiled and wrote them again).
/// Runs at start, before any rollout can upload.
fn collect_garbage<'a>(
    store: &StateStore,
    library: &Library,
    files: impl Iterator<Item = &'a Arc<Deployment>> + Clone,
) {
    let records = match store.instances() {
        Ok(records) => records,
        Err(e) => {
            tracing::warn!(error = %e, "garbage collection skipped: cannot read the instances' records");
            return;
        }
    };
    let deployments: Vec<&DeploymentRecord> = records
        .iter()
        .flat_map(|(_, r)| r.deployment.iter().chain(&r.previous))
        .collect();
    let modules = deployments
        .iter()
        .map(|d| d.module_digest.clone())
        .chain(files.clone().map(|d| d.module.digest.clone()))
        .collect();
    let blobs: std::collections::HashSet<String> = deployments
        .iter()
        .flat_map(|d| [d.module_digest.clone(), d.model_digest.clone()])
        .chain(deployments.iter().filter_map(|d| d.example_digest.clone()))
        .chain(files.flat_map(|d| {
            [
                d.module.digest.clone(),
                d.model.digest.clone(),
                d.example_digest.clone(),
            ]
        }))
        .collect();
    match (library.blobs.retain(&blobs), library.cache.retain(&modules)) {
        (Ok(0), Ok(0)) => {}
        (Ok(b), Ok(c)) => tracing::info!(
            blobs = b,
            compiled = c,
            "removed unused and half-written files from the state directory"
        ),
        (b, c) => {
            tracing::warn!(blobs = ?b.err(), compiled = ?c.err(), "garbage collection failed; the files stay")
        }
    }
}

/// How long a stopping host waits for a rollout in progress to finish.
const SETTLE_ROLLOUT: Duration = Duration::from_secs(30);

/// The most instances one process serves.
pub const MAX_INSTANCES: usize = 1024;

/// The most sandboxes one process reserves. The pooling allocator reserves
/// address space for each up front, about 8 GiB; past about 12,000 (3,000
/// instances of one call at a time) the reservation fails with an `mmap`
/// error, so the limit is a configuration error well below that.
pub const MAX_SANDBOXES: usize = 6144;

/// Open connections allowed on the admin listener, apart from the public cap.
const ADMIN_CONNECTIONS: usize = 64;

/// Admin connections one address may hold: a stranger without the token
/// cannot take the operator's places.
const ADMIN_CONNECTIONS_PER_CLIENT: usize = 16;

/// `--max-connections`, lowered if needed so that every connection the host
/// may hold, the admin listener's included, fits under the open-file limit
/// (raised to its hard limit first): the operator then still gets in when
/// the public listeners are full.
fn connection_cap(wanted: usize, listeners: usize) -> usize {
    let open_files = admission::raise_open_files();
    let cap = admission::fitting_cap(wanted, open_files, ADMIN_CONNECTIONS, listeners);
    if cap < wanted {
        tracing::warn!(
            max_connections = wanted,
            lowered_to = cap,
            open_files,
            "--max-connections lowered to fit the open-file limit (RLIMIT_NOFILE); raise the hard limit to allow more"
        );
    }
    cap
}

/// The admin API is plain HTTP with a bearer token: say so when it listens
/// beyond loopback.
fn warn_if_exposed(admin: Option<SocketAddr>) {
    if let Some(addr) = admin.filter(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            %addr,
            "the admin listener is not on loopback: its bearer token crosses the network in clear; \
             reach it through a tunnel or an encrypting mesh"
        );
    }
}

/// Opens the sled database in `<state_dir>/db`, creating it on first start.
fn open_state(state_dir: &Path) -> Result<StateStore, StartError> {
    std::fs::create_dir_all(state_dir).map_err(|e| {
        StartError::State(StateError::Storage {
            path: state_dir.to_owned(),
            message: format!("cannot create it: {e}"),
        })
    })?;
    Ok(StateStore::open(&state_dir.join("db"))?)
}

/// Saves the topology mark; returns the topology generation.
fn restore_marks(store: &StateStore, topology: &Topology) -> Result<u64, StartError> {
    let saved = store.topology()?;
    let mark = recovery::next_mark(topology, saved.as_ref());
    if saved.as_ref() != Some(&mark) {
        tracing::info!(
            generation = mark.generation,
            "topology shape is new to this state directory"
        );
    }
    store.put_topology(&mark)?;
    tracing::info!(state = %store.path().display(), generation = mark.generation, "state directory open");
    Ok(mark.generation)
}

/// Forgets saved instances the topology file no longer lists.
fn forget_missing(store: &StateStore, file: &Topology) -> Result<(), StartError> {
    for (name, _) in store.instances()? {
        if !file.instances.iter().any(|i| i.name == name) {
            tracing::warn!(instance = %name, "the saved state has an instance the topology file no longer lists: its record is dropped");
            store.remove_instance(&name)?;
        }
    }
    Ok(())
}

/// Builds deployments once per version, from files or from saved blobs.
struct Library {
    runtime: Arc<HostRuntime>,
    blobs: BlobStore,
    cache: Arc<CompiledCache>,
    spares: usize,
    by_version: HashMap<String, Arc<Deployment>>,
}

impl Library {
    /// What `name` serves after a restart: the deployment a `deploy` put in
    /// force if it can be rebuilt, else the file's; and the one before. What
    /// cannot be rebuilt is held (see [`Held`]): its record and files stay.
    fn serving(
        &mut self,
        name: &str,
        file: Arc<Deployment>,
        saved: Option<&hadr_state::InstanceRecord>,
        outcome: &recovery::Restored,
    ) -> Serving {
        let since = saved
            .and_then(|s| s.deployment.as_ref())
            .filter(|d| d.version == file.version)
            .map(|d| d.since.clone());
        let from_file = InForce {
            since: since.unwrap_or_else(|| InForce::now(file.clone(), Source::Topology).since),
            deployment: file.clone(),
            source: Source::Topology,
        };
        let mut held = Held::default();
        let current = match &outcome.deployed {
            None => from_file,
            Some(record) => match self.rebuild(record, &file) {
                Ok(d) => {
                    if d.version == file.version {
                        tracing::info!(instance = name, version = %d.version, since = %record.since,
                            "serving the version put in force by `hadr-host deploy`, which the topology file names too");
                    } else {
                        // A warning: an operator who edited the file's model and restarted
                        // expects the file's model, and gets the deployed one.
                        tracing::warn!(instance = name, version = %d.version, since = %record.since,
                            file_version = %file.version,
                            "serving the version put in force by `hadr-host deploy`, not the one the topology file names: a deploy outlives restarts (`hadr-host rollback` returns to the previous version; `hadr-host deploy --model` and `--module` put the file's in force)");
                    }
                    InForce {
                        deployment: d,
                        source: Source::Deploy,
                        since: record.since.clone(),
                    }
                }
                Err(e) => {
                    tracing::warn!(instance = name, version = %record.version, error = %e,
                        "the deployed version cannot be restored; serving the topology file's meanwhile (its record and files are kept: a start that can rebuild it serves it again, a deploy or rollback lets it go)");
                    held.deployed = Some(record.clone());
                    from_file
                }
            },
        };
        let previous = outcome.previous.as_ref().and_then(|record| {
            let source = record.source;
            self.rebuild(record, &file)
                .map(|d| InForce {
                    deployment: d,
                    source,
                    since: record.since.clone(),
                })
                .map_err(|e| {
                    tracing::warn!(instance = name, version = %record.version, error = %e,
                    "the previous deployment cannot be restored; rollback will not be possible until a start can rebuild it (its record and files are kept)");
                    held.previous = Some(record.clone());
                })
                .ok()
        });
        Serving {
            current,
            previous,
            canary: None,
            held,
        }
    }

    /// The example a record names, from the blob store.
    fn saved_example(&self, record: &DeploymentRecord) -> Option<bytes::Bytes> {
        let digest = record.example_digest.as_deref()?;
        match self.blobs.get(digest) {
            Ok(found) => found.map(bytes::Bytes::from),
            Err(e) => {
                tracing::warn!(version = %record.version, error = %e, "the saved example cannot be read");
                None
            }
        }
    }

    /// A deployment rebuilt from its saved module and model blobs, with its
    /// saved example (in a record older than that, the topology file's
    /// when the model is the file's: a zero row may not be a request the
    /// guest takes).
    fn rebuild(
        &mut self,
        record: &DeploymentRecord,
        file: &Deployment,
    ) -> Result<Arc<Deployment>, String> {
        // The version names only the bytes: the model's name must match too.
        let built = self
            .by_version
            .get(&record.version)
            .filter(|d| d.model.name == record.model);
        if let Some(d) = built {
            if record
                .example_digest
                .as_ref()
                .is_none_or(|e| *e == d.example_digest)
            {
                return Ok(d.clone());
            }
            // The version with an example of its own: the same module and
            // model, its saved example.
            if let Some(example) = self.saved_example(record) {
                return Ok(Arc::new(Deployment::new(
                    d.module.clone(),
                    d.model.clone(),
                    self.spares,
                    Some(example),
                )));
            }
            return Ok(d.clone());
        }
        let blob = |digest: &str, what: &str| match self.blobs.get(digest) {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(format!("its {what} blob {digest} is missing")),
            Err(e) => Err(e.to_string()),
        };
        let module_bytes = blob(&record.module_digest, "module")?;
        let model_bytes = blob(&record.model_digest, "model")?;
        let path = self
            .blobs
            .path(&record.module_digest)
            .map_err(|e| e.to_string())?;
        let module =
            CompiledModule::from_bytes(&self.runtime, &module_bytes, &path, Some(&self.cache))
                .map_err(|e| e.to_string())?;
        let path = self
            .blobs
            .path(&record.model_digest)
            .map_err(|e| e.to_string())?;
        let budget = self.runtime.limits().max_model_bytes;
        let model = LoadedModel::from_bytes(record.model.clone(), &path, &model_bytes, budget)
            .map_err(|e| e.to_string())?;
        tracing::info!(version = %record.version, cache = ?module.cache, "deployed version rebuilt from the blob store");
        let example = self
            .saved_example(record)
            .or_else(|| (record.model_digest == file.model.digest).then(|| file.example.clone()));
        let deployment = Arc::new(Deployment::new(
            Arc::new(module),
            Arc::new(model),
            self.spares,
            example,
        ));
        self.by_version
            .insert(record.version.clone(), deployment.clone());
        Ok(deployment)
    }
}

/// The admin token: `HADR_ADMIN_TOKEN` if set, else the one saved in the
/// state directory, else a new random one saved there with mode 0600. A
/// saved token readable by others is refused (anyone who can read it can
/// deploy); an empty file is replaced. The file is written beside, synced
/// and renamed into place, so a crash never leaves a half-written token.
fn admin_token(state_dir: &Path) -> Result<String, StartError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

    if let Some(token) = std::env::var("HADR_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        return Ok(token);
    }
    let path = state_dir.join("admin-token");
    let fail = |e| StartError::AdminToken(path.clone(), e);
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => {
            let mode = std::fs::metadata(&path).map_err(fail)?.mode();
            if mode & 0o077 != 0 {
                return Err(fail(std::io::Error::other(format!(
                    "it is readable by others (mode {:o}); run `chmod 600 {}` or set HADR_ADMIN_TOKEN",
                    mode & 0o777,
                    path.display()
                ))));
            }
            return Ok(token.trim().to_string());
        }
        Ok(_) => {
            tracing::warn!(path = %path.display(), "the admin token file is empty; writing a new token")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| fail(std::io::Error::other(e.to_string())))?;
    let token = hadr_state::blobs::hex(&bytes);
    std::fs::create_dir_all(state_dir).map_err(fail)?;
    let temporary = state_dir.join("admin-token.tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(fail)?;
    std::io::Write::write_all(&mut file, token.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&temporary, &path).map_err(fail)?;
    std::fs::File::open(state_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(fail)?;
    tracing::info!(path = %path.display(), "generated the admin token");
    Ok(token)
}

/// Refuses two listeners of this process on one address (a fixed port on the same IP, or on
/// an unspecified IP, which takes every address): binding the second would fail with "address
/// in use" and send the operator looking for another process.
fn check_listeners(
    file: &Path,
    router: SocketAddr,
    admin: SocketAddr,
    instances: &[(&str, SocketAddr)],
) -> Result<(), String> {
    // An unspecified IPv4 address takes every IPv4 address; an unspecified IPv6 one, every
    // address of both families (Linux's default, `bindv6only` off).
    let covers = |any: std::net::IpAddr, ip: std::net::IpAddr| {
        any.is_unspecified() && (any.is_ipv6() || ip.is_ipv4())
    };
    let clash = |a: SocketAddr, b: SocketAddr| {
        a.port() != 0
            && a.port() == b.port()
            && (a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip()))
    };
    if clash(router, admin) {
        return Err(format!(
            "--admin-listen {admin} and --listen {router} share an address: give the admin \
             listener its own port"
        ));
    }
    for (name, addr) in instances {
        for (flag, other) in [("--listen", router), ("--admin-listen", admin)] {
            if clash(*addr, other) {
                return Err(format!(
                    "{}: instance `{name}`: field `port`: {addr} is also this process's {flag} \
                     ({other}): give the entry another port",
                    file.display()
                ));
            }
        }
    }
    Ok(())
}

/// How long a listener waits for its address to be configured on the machine.
const ADDRESS_WAIT: Duration = Duration::from_secs(30);

/// Binds a listener whose address [`wait_for_address`] found configured.
async fn bind(addr: SocketAddr, what: String) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, what, source })
}

/// Waits until `addr`'s IP is configured, by binding it on any port (its scope kept) and
/// letting that go; an error names `addr` itself, the address the operator gave.
async fn wait_for_address(addr: SocketAddr, what: String) -> Result<(), StartError> {
    let mut probe = addr;
    probe.set_port(0);
    match bind_with(probe, what, ADDRESS_WAIT, TcpListener::bind).await {
        Ok(_) => Ok(()),
        Err(StartError::Bind { what, source, .. }) => Err(StartError::Bind { addr, what, source }),
        Err(e) => Err(e),
    }
}

/// Binds `addr` with `bind`, waiting up to `wait` while the address is not configured on the
/// machine yet: at boot the network may bring it up a moment after the service starts. Past
/// that it is the operator's (a wrong "host", a unit on the wrong machine): exit code 2, which
/// systemd does not restart, rather than a full start-up again every restart.
async fn bind_with<L, F>(
    addr: SocketAddr,
    what: String,
    wait: Duration,
    bind: impl Fn(SocketAddr) -> F,
) -> Result<L, StartError>
where
    F: std::future::Future<Output = std::io::Result<L>>,
{
    let until = tokio::time::Instant::now() + wait;
    let mut told = false;
    loop {
        match bind(addr).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrNotAvailable
                    && tokio::time::Instant::now() < until =>
            {
                if !std::mem::replace(&mut told, true) {
                    tracing::warn!(ip = %addr.ip(), listener = %what, ?wait,
                        "the address is not configured on this machine (yet?): waiting for it");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(source) => return Err(StartError::Bind { addr, what, source }),
            Ok(listener) => return Ok(listener),
        }
    }
}

type DeploymentKey = (PathBuf, PathBuf);

/// Loads each distinct model and compiles each distinct module of the file
/// once (keeping a copy of each in the blob store, so a later rollback to
/// them survives the files changing), then pairs them as the topology asks.
fn build_deployments(
    library: &mut Library,
    topology: &Topology,
) -> Result<HashMap<DeploymentKey, Arc<Deployment>>, StartError> {
    let mut models: HashMap<PathBuf, Arc<LoadedModel>> = HashMap::new();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    let mut modules: HashMap<PathBuf, Arc<CompiledModule>> = HashMap::new();
    let mut deployments = HashMap::new();
    for spec in &topology.instances {
        if !models.contains_key(&spec.model) {
            let model = load_model(library, topology, spec)?;
            if let Some(other) = names.insert(model.name.clone(), spec.model.clone()) {
                return Err(StartError::ModelName(
                    topology.path.clone(),
                    other,
                    spec.model.clone(),
                    model.name,
                ));
            }
            models.insert(spec.model.clone(), Arc::new(model));
        }
        if !modules.contains_key(&spec.module) {
            let module = compile_module(library, topology, spec)?;
            modules.insert(spec.module.clone(), Arc::new(module));
        }
        let key = (spec.module.clone(), spec.model.clone());
        if let std::collections::hash_map::Entry::Vacant(slot) = deployments.entry(key) {
            let deployment = Arc::new(Deployment::new(
                modules[&spec.module].clone(),
                models[&spec.model].clone(),
                library.spares,
                crate::topology::example_beside(&spec.model),
            ));
            // Its record names the example by digest, like a deploy's: a
            // restart after the file changed rebuilds it from the copy.
            keep_copy(library, &deployment.example, &spec.model);
            library
                .by_version
                .insert(deployment.version.clone(), deployment.clone());
            slot.insert(deployment);
        }
    }
    Ok(deployments)
}

fn load_model(
    library: &Library,
    topology: &Topology,
    spec: &crate::topology::InstanceSpec,
) -> Result<LoadedModel, StartError> {
    let started = std::time::Instant::now();
    let fail = |source| StartError::Model {
        file: topology.path.clone(),
        instance: spec.name.clone(),
        source,
    };
    let bytes = std::fs::read(&spec.model).map_err(|source| {
        fail(ModelError::Read {
            path: spec.model.clone(),
            source,
        })
    })?;
    let budget = library.runtime.limits().max_model_bytes;
    let model = LoadedModel::from_bytes(model_name(&spec.model), &spec.model, &bytes, budget)
        .map_err(fail)?;
    keep_copy(library, &bytes, &spec.model);
    tracing::info!(model = %model.name, path = %spec.model.display(), features = model.graph.features(),
        outputs = ?model.graph.info().outputs.iter().map(|o| &o.name).collect::<Vec<_>>(), took = ?started.elapsed(), "model loaded");
    Ok(model)
}

fn compile_module(
    library: &Library,
    topology: &Topology,
    spec: &crate::topology::InstanceSpec,
) -> Result<CompiledModule, StartError> {
    let started = std::time::Instant::now();
    let fail = |source| StartError::Module {
        file: topology.path.clone(),
        instance: spec.name.clone(),
        source,
    };
    let bytes = std::fs::read(&spec.module).map_err(|source| {
        fail(ModuleError::Read {
            path: spec.module.clone(),
            source,
        })
    })?;
    let module =
        CompiledModule::from_bytes(&library.runtime, &bytes, &spec.module, Some(&library.cache))
            .map_err(fail)?;
    keep_copy(library, &bytes, &spec.module);
    let cache = match &module.cache {
        CacheOutcome::Hit => "hit",
        CacheOutcome::Miss => "miss (compiled and cached)",
        CacheOutcome::Rebuilt(_) => "rebuilt",
        CacheOutcome::Uncached => "off",
    };
    tracing::info!(path = %spec.module.display(), digest = &module.digest[..12], cache,
        took = ?started.elapsed(), "guest module ready");
    Ok(module)
}

/// Keeps a copy of a file's bytes in the blob store; a failure only costs
/// the ability to roll back to it after a restart, so it is logged.
fn keep_copy(library: &Library, bytes: &[u8], path: &Path) {
    if let Err(e) = library.blobs.put(bytes) {
        tracing::warn!(path = %path.display(), error = %e, "could not keep a copy in the blob store");
    }
}

/// Where the default guest and model live in this repository.
pub fn repo_defaults() -> Defaults {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Defaults {
        model: root.join("models/digits.onnx"),
        module: root.join(DEFAULT_GUEST),
    }
}

/// The default guest, relative to the repository root, as the README's build
/// step leaves it.
pub const DEFAULT_GUEST: &str = "guests/target/wasm32-wasip2/release/hadr_guest_predictor.wasm";

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::ErrorKind::{AddrInUse, AddrNotAvailable};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A binder that fails with `kind` `failures` times, then binds; and how often it was called.
    fn flaky(
        kind: std::io::ErrorKind,
        failures: usize,
    ) -> (
        Arc<AtomicUsize>,
        impl Fn(SocketAddr) -> std::future::Ready<std::io::Result<()>>,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let bind = move |_| {
            let n = counted.fetch_add(1, Ordering::Relaxed);
            std::future::ready(match n < failures {
                true => Err(std::io::Error::from(kind)),
                false => Ok(()),
            })
        };
        (calls, bind)
    }

    fn addr() -> SocketAddr {
        "127.0.0.2:8000".parse().unwrap()
    }

    #[test]
    fn listeners_of_one_process_never_share_an_address() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let file = Path::new("t.json");
        let (router, admin) = (a("127.0.0.1:8000"), a("127.0.0.1:8001"));
        assert!(check_listeners(file, router, admin, &[("p1", a("127.0.0.1:9696"))]).is_ok());
        // Another IP, or any port (0), is another address.
        assert!(check_listeners(file, router, admin, &[("p1", a("127.0.0.2:8000"))]).is_ok());
        assert!(check_listeners(file, a("127.0.0.1:0"), a("127.0.0.1:0"), &[]).is_ok());
        let e = check_listeners(file, router, admin, &[("p1", a("127.0.0.1:8001"))]).unwrap_err();
        assert_eq!(
            e,
            "t.json: instance `p1`: field `port`: 127.0.0.1:8001 is also this process's \
             --admin-listen (127.0.0.1:8001): give the entry another port"
        );
        let e = check_listeners(
            file,
            a("0.0.0.0:8000"),
            admin,
            &[("p1", a("127.0.0.2:8000"))],
        );
        assert!(e.unwrap_err().contains("also this process's --listen"));
        let e = check_listeners(file, router, a("127.0.0.1:8000"), &[]).unwrap_err();
        assert!(e.contains("share an address"), "{e}");
        // 0.0.0.0 takes IPv4 addresses only; [::] both families.
        let v6 = [("p1", a("[::1]:8000"))];
        assert!(check_listeners(file, a("0.0.0.0:8000"), admin, &v6).is_ok());
        let v4 = [("p1", a("127.0.0.2:8000"))];
        assert!(check_listeners(file, a("[::]:8000"), admin, &v4).is_err());
    }

    /// An address the network brings up a moment later is waited for; one that never comes is
    /// a configuration error (exit 2) once the wait is over, and a taken port is one at once.
    #[tokio::test(start_paused = true)]
    async fn a_listener_waits_a_bounded_time_for_its_address() {
        let (calls, bind) = flaky(AddrNotAvailable, 3);
        bind_with(addr(), "router".into(), ADDRESS_WAIT, bind)
            .await
            .expect("bound on the fourth try");
        assert_eq!(calls.load(Ordering::Relaxed), 4);

        let started = tokio::time::Instant::now();
        let (calls, bind) = flaky(AddrNotAvailable, usize::MAX);
        let e = bind_with(addr(), "router".into(), ADDRESS_WAIT, bind)
            .await
            .unwrap_err();
        assert!(matches!(&e, StartError::Bind { source, .. } if source.kind() == AddrNotAvailable));
        assert!(e.is_config());
        assert!(started.elapsed() >= ADDRESS_WAIT, "{:?}", started.elapsed());
        assert!(calls.load(Ordering::Relaxed) > 100);

        let (calls, bind) = flaky(AddrInUse, usize::MAX);
        let e = bind_with(addr(), "router".into(), ADDRESS_WAIT, bind)
            .await
            .unwrap_err();
        assert!(matches!(&e, StartError::Bind { source, .. } if source.kind() == AddrInUse));
        assert_eq!(
            calls.load(Ordering::Relaxed),
            1,
            "a taken port is not waited for"
        );
    }
}
