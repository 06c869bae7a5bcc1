//! The `serve` flags: parsed by clap for the `hadr-host serve` command and
//! for the tests' in-process hosts, so both read the same defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{repo_defaults, ServeOptions};
use crate::sandbox::engine::Limits;
use crate::topology::Defaults;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The topology file (the article's format; see topologies/). Optional
    /// fields per entry: "port", "host", "max_load", "concurrency", "model",
    /// "module", and "batch" ({"max_requests": 32, "max_delay": "200us"}:
    /// merge requests that arrive together into one guest call; add
    /// "wait": "full-delay" to wait out the delay for requests to join).
    pub topology: PathBuf,
    /// Address of the router's listener. Instance ports bind on the same IP.
    #[arg(long, default_value = "127.0.0.1:8000", env = "HADR_LISTEN")]
    pub listen: SocketAddr,
    /// Largest request body accepted (e.g. 1MiB, 512KiB); larger bodies get 413
    /// before they are read.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub max_body: usize,
    /// Longest one prediction may run in its sandbox before it is stopped
    /// (504). Counted in running time: time the machine gave other work is
    /// not spent, and a call still running after 20 ms is throttled to
    /// half a core, so a guest spinning forever is stopped after about
    /// twice this in wall time (a merged batch: after up to twice that).
    #[arg(long, default_value = "1s", value_parser = parse_nonzero_duration)]
    pub deadline: Duration,
    /// Most linear memory one sandbox may use (e.g. 64MiB); an instance
    /// holds up to `concurrency` sandboxes, plus a canary's and warm
    /// spares, so size a host's memory by those.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub max_memory: usize,
    /// Predictions that have recently taken longer than this run on a blocking
    /// thread instead of the request's task, so they cannot stall other
    /// requests; shorter ones stay on the task (a thread hop costs about as
    /// much as a small prediction). 0s: always offload.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    pub offload_above: Duration,
    /// Longest a request waits for a free sandbox of its instance while
    /// every one is busy with other calls; past it the request is refused
    /// with 503 and Retry-After (code `queue_timeout`) instead of queueing
    /// behind calls that may hang until their deadlines. Default: the
    /// host's wall-clock bound on one call, 2 × --deadline + 1s (3s), so
    /// a request waiting behind its `max_load` of healthy calls is served
    /// as in the article. 0s: never wait. The bound is per request, a
    /// canary's fallback to the version in force included.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub queue_timeout: Option<Duration>,
    /// Model for entries that name none. [default: models/digits.onnx in this repository]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Guest component for entries that name none.
    /// [default: the generic guest built from guests/predictor/ in this repository]
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Warm spare instances kept ready per deployment: a faulted instance is
    /// replaced by one at once, and the pool is refilled in the background.
    #[arg(long, default_value_t = 2)]
    pub warm_pool: usize,
    /// Address of the admin listener (POST /admin/chaos), which needs
    /// `Authorization: Bearer <token>`.
    #[arg(long, default_value = "127.0.0.1:8001", env = "HADR_ADMIN_LISTEN")]
    pub admin_listen: SocketAddr,
    /// State directory: runtime facts in a sled database (<state-dir>/db:
    /// roles, promotions, counters, last faults, deployments), so a restart,
    /// even after kill -9, continues where the last run stopped. The topology
    /// file decides the shape (instances, active or standby); the state keeps
    /// the facts (a promoted standby stays promoted); conflicts are logged at
    /// start. The admin token is read from HADR_ADMIN_TOKEN, or from
    /// <state-dir>/admin-token, generated there (mode 0600) at first start.
    /// One host per state directory.
    #[arg(long, default_value = "state-data", env = "HADR_STATE_DIR")]
    pub state_dir: PathBuf,
    /// How often per-request counters are written to the state directory
    /// (promotions and chaos faults are written at once).
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub state_interval: Duration,
    /// Open connections allowed over the router's and the instances' listeners
    /// (the admin listener has its own cap of 64, 16 per client address); at
    /// the cap the host stops accepting until one closes (clients wait in the
    /// kernel's backlog). Lowered at start, with a warning, to fit the
    /// open-file limit (the soft RLIMIT_NOFILE is first raised to the hard
    /// one), so the admin listener always has its descriptors. Worst-case
    /// request-body memory is this times --max-body.
    #[arg(long, default_value_t = 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// Host memory one model may claim: each constant it carries, their
    /// sum, and each tensor whose size the file fixes (a symbolic batch
    /// counts as 1). Checked on the ONNX graph before tract folds anything,
    /// at start and at every deploy; a model over it is refused (422 on
    /// deploy) with the tensor named.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub max_model_bytes: usize,
    /// Most calls one instance runs at once, each in its own sandbox (own
    /// store, memory and deadline), where its topology entry does not set
    /// "concurrency". Default: the machine's cores shared among the active
    /// entries served here, rounded up, and at least 2 (so the actives
    /// together use every core, and one hung call never holds a whole
    /// instance). `max_load` still counts requests in flight or waiting, as
    /// in the article. An entry that batches fills its batches best with one
    /// sandbox per core it should use (two merged calls time-slicing a core
    /// make smaller batches).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub concurrency: Option<usize>,
    /// Sandboxes beyond the one an instance keeps are dropped after idling
    /// this long (they come back from the warm pool on demand).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub sandbox_idle: Duration,
    /// An instance that idles past --sandbox-idle keeps no sandbox at all;
    /// its next request pays one instantiation (from the warm pool, about
    /// 0.1 ms; see `cargo bench --bench recovery`).
    #[arg(long)]
    pub scale_to_zero: bool,
    /// Let guests give wasi-nn model bytes of their own (`load`). Off by
    /// default: guests serve the models deployed by the operator, by name,
    /// and a guest's own model would reach the ONNX parser unchecked by a
    /// deploy. Even allowed, it is held to --max-model-bytes.
    #[arg(long)]
    pub allow_guest_models: bool,
    /// Open connections one client address may hold on the public listeners;
    /// further connections from it are closed at once, so one slow or
    /// hostile client cannot take every place. Behind a balancer every
    /// connection comes from its address: raise this to --max-connections.
    #[arg(long, default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections_per_client: usize,
    /// Closes a connection whose client reads nothing of an answer for this
    /// long (a client pipelining requests without reading the answers would
    /// otherwise hold its place forever).
    #[arg(long, default_value = "10s", value_parser = parse_nonzero_duration)]
    pub write_timeout: Duration,
    /// Closes a connection whose client completes no request's headers for
    /// this long (an idle keep-alive connection, or one sending its headers
    /// slowly to hold a place); it is closed within twice this.
    #[arg(long, default_value = "10s", value_parser = parse_nonzero_duration)]
    pub header_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Largest guest module or model `hadr-host deploy` may upload.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub max_upload: usize,
    /// A promoted standby returns to standby once the actives have carried
    /// the load alone (each under its threshold, none broken, no new
    /// promotion) for this long. POST /admin/demote does it at once.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub promotion_cooldown: Duration,
    /// Serve only these entries of the topology (comma-separated): one
    /// process per entry, each on its own machine (the entry's "host"),
    /// behind a balancer such as HAProxy (`hadr-host export haproxy`). This
    /// process's router then routes among its own entries only.
    #[arg(long, value_delimiter = ',')]
    pub only: Option<Vec<String>>,
    /// On SIGTERM, first answer /readyz with 503 for this long while still
    /// serving, so a balancer's health checks take the host out before it
    /// stops accepting (behind the generated HAProxy config, 500ms is ample:
    /// checks every 100 ms, down after 2). 0s: stop at once.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
}

impl ServeArgs {
    /// Model and guest for entries that name none: the flags, else the
    /// repository's defaults.
    pub fn defaults(&self) -> Defaults {
        let repo = repo_defaults();
        Defaults {
            model: self.model.clone().unwrap_or(repo.model),
            module: self.module.clone().unwrap_or(repo.module),
        }
    }

    /// What [`super::Host::start`] needs.
    pub fn options(self) -> ServeOptions {
        let defaults = self.defaults();
        let args = self;
        ServeOptions {
            topology: args.topology,
            listen: args.listen,
            max_body: args.max_body,
            max_connections: args.max_connections,
            max_connections_per_client: args.max_connections_per_client,
            concurrency: args.concurrency.map(|c| c.max(1)),
            write_timeout: args.write_timeout,
            header_timeout: args.header_timeout,
            limits: Limits {
                deadline: args.deadline,
                max_memory: args.max_memory,
                offload_above: args.offload_above,
                max_model_bytes: args.max_model_bytes as u64,
                guest_models: args.allow_guest_models,
                concurrency: 1,
                keep_idle: usize::from(!args.scale_to_zero),
                idle_after: args.sandbox_idle,
                queue_timeout: args
                    .queue_timeout
                    .unwrap_or_else(|| crate::sandbox::engine::hard_limit(args.deadline)),
            },
            defaults,
            grace: args.grace,
            admin_listen: args.admin_listen,
            warm_pool: args.warm_pool,
            state_dir: args.state_dir,
            state_interval: args.state_interval,
            max_upload: args.max_upload,
            only: args.only,
            promotion_cooldown: args.promotion_cooldown,
        }
    }
}

/// A byte size such as `64KiB` or `1MiB`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = s.parse().map_err(|e: String| e)?;
    usize::try_from(size.as_u64()).map_err(|e| e.to_string())
}

/// A duration such as `10s` or `500ms`, above zero.
pub fn parse_nonzero_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".into()),
        parsed => parsed.map_err(|e| e.to_string()),
    }
}
