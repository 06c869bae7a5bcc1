//! The `hadr-host` command line: parse, set up logging, hand over to the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hadr_server::errors::with_causes;
use hadr_server::rollout::Targets;
use hadr_server::serve::args::{parse_size, ServeArgs};
use hadr_server::serve::{repo_defaults, Host, DEFAULT_GUEST};
use hadr_server::shutdown::Shutdown;
use hadr_tools::admin_client::{AdminClient, DeployPlan};
use hadr_tools::loadtest::{self, Model, Plan};

/// `println!`, except that a reader that went away (`hadr-host deploy … | head -2`) is not a
/// panic: what is left of the output is dropped, and the command still finishes its work. Any
/// other failure to write (a full disk) is told, and the exit status is 1.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        match writeln!(std::io::stdout().lock(), $($arg)*) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                eprintln!("hadr-host: cannot write to standard output: {e}");
                std::process::exit(1);
            }
            _ => {}
        }
    }};
}

/// mimalloc rather than glibc's malloc: requests are allocated on one
/// worker and often freed on another, which glibc pays for with arena locks
/// (measured in docs/benchmarks.md: about 1.8 µs of CPU a request).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// hadr: serve ML predictors as sandboxed WebAssembly instances in
/// high-availability topologies.
#[derive(Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a topology: one sandboxed predictor instance per entry, behind a
    /// load-aware router.
    ///
    /// The router answers POST /predict (the body the entry's guest reads:
    /// {"inputs": [[...], ...]} for the generic guest), GET /predict (the
    /// deployment's example), GET /topology, GET /metrics, GET /healthz and
    /// GET /readyz, and the Open Inference Protocol (KServe v2, Triton)
    /// under /v2. An entry with a "port" also answers /predict, /v2, /healthz
    /// and /readyz on that port directly. Entries with "status": false are
    /// standbys, promoted when every active is saturated. With --only, the
    /// process serves just those entries: one host of a fleet behind HAProxy
    /// (`hadr-host export haproxy`).
    ///
    /// Examples:
    ///   hadr-host serve topologies/2-active.json --listen 127.0.0.1:8000
    ///   hadr-host serve topologies/fleet/2-active.json --only predict1 --listen 127.0.0.2:8000 \
    ///     --admin-listen 127.0.0.2:8001 --drain 500ms --max-body 64KiB
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),
    /// Load-test a running predictor, in Locust's closed model (--users) or an
    /// open model on a schedule (--rate R or a ramp FROM..TO); prints the RPS
    /// at first failure, peak goodput, latency percentiles, status counts and
    /// what each instance served during the test.
    ///
    /// Examples:
    ///   hadr-host loadtest http://127.0.0.1:8000/predict --users 16 --duration 10s
    ///   hadr-host loadtest http://127.0.0.1:8000/predict --rate 1000..20000 --duration 20s
    #[command(verbatim_doc_comment)]
    Loadtest(LoadtestArgs),
    /// Deploy a new guest module and/or model to a running host, with no
    /// failed request.
    ///
    /// The host compiles and checks the new version off the request path (a
    /// component of the predictor world, a model that loads, a smoke
    /// prediction that succeeds) and only then switches the chosen instances;
    /// in-flight requests finish on the old version. Anything unfit is
    /// refused with the reason, and the old version keeps serving.
    ///
    /// Examples:
    ///   hadr-host deploy --module guest.wasm
    ///   hadr-host deploy --model digits=models/digits.onnx --to predict1,predict2
    ///   hadr-host deploy --module guest.wasm --canary 10    (then --promote or --abort)
    #[command(verbatim_doc_comment)]
    Deploy(DeployArgs),
    /// Drill topologies as the article did, and measure what it only drew.
    ///
    /// Each topology in turn, in its own state directory: a capacity ramp
    /// (RPS at first failure, peak load per instance, standby promotion), then
    /// steady load at a share of capacity while a real trap and a real hang are
    /// injected, then while the host is killed with SIGKILL and restarted.
    /// Writes report.md, report.json, throughput.svg and latency.svg.
    ///
    /// Examples:
    ///   hadr-host drill --quick                     (digits: topologies/{single,2-active,3-active}.json)
    ///   hadr-host drill --model placement           (the article's own predictor)
    ///   hadr-host drill --fleet --quick             (one process per entry behind HAProxy)
    ///   hadr-host drill topologies/single.json --cases models/digits.cases.json
    #[command(verbatim_doc_comment)]
    Drill(DrillArgs),
    /// Return instances to the deployment they served before the last deploy.
    ///
    /// Example: hadr-host rollback --to all
    Rollback(RollbackArgs),
    /// Print configuration for tools around hadr.
    #[command(subcommand)]
    Export(ExportCommand),
}

#[derive(Subcommand)]
enum ExportCommand {
    /// An HAProxy 2.6 configuration that routes a topology spread over hosts
    /// (each entry served by `hadr-host serve --only <entry>` on its "host")
    /// with the article's semantics: actives share by least connections, each
    /// sent at most its max_load at once; the standby takes the overflow when
    /// no active has a free slot or every active is down; health checks on
    /// /readyz every 100 ms; failed attempts retried elsewhere (predictions
    /// have no side effects). See docs/fleet.md.
    ///
    /// Example:
    ///   hadr-host export haproxy topologies/fleet/2-active.json > haproxy.cfg && haproxy -c -f haproxy.cfg
    #[command(verbatim_doc_comment)]
    Haproxy(HaproxyArgs),
}

#[derive(clap::Args)]
struct HaproxyArgs {
    /// The topology file; every entry needs a fixed "port" (and a "host"
    /// unless it runs on 127.0.0.1). Model and module files need not exist here.
    topology: PathBuf,
    /// Where HAProxy listens for clients.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// The hosts' --max-body (run them with the same): HAProxy buffers a
    /// whole request to retry it, and a larger body passes but is never
    /// retried. Larger buffers cost throughput (docs/fleet.md), so fleets
    /// run with smaller bodies than a lone host's 1MiB default.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    max_body: usize,
    /// Where HAProxy reaches an entry when that is not its host and port
    /// (a Kubernetes Service name, say): NAME=HOST:PORT, repeatable. Needed
    /// for an entry on 0.0.0.0 or ::, which HAProxy cannot reach as such.
    #[arg(long = "address", value_parser = parse_address)]
    addresses: Vec<(String, String)>,
    /// How long a request may wait for a free server before HAProxy answers
    /// 503 (everything at max_load).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    queue_timeout: Duration,
    /// The hosts' --deadline (run them with the same): HAProxy waits for an
    /// answer twice that plus 2 s (timeout server), since a host retries a
    /// request that runs into its deadline once.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    deadline: Duration,
}

fn parse_address(s: &str) -> Result<(String, String), String> {
    let (name, address) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=HOST:PORT, got `{s}`"))?;
    if name.is_empty() || !address.contains(':') {
        return Err(format!("expected NAME=HOST:PORT, got `{s}`"));
    }
    Ok((name.to_string(), address.to_string()))
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The running host's admin listener.
    #[arg(long, default_value = "http://127.0.0.1:8001", env = "HADR_ADMIN_URL")]
    admin: hyper::Uri,
    /// The admin token. A command line is visible to every user of the
    /// machine (`ps`): prefer HADR_ADMIN_TOKEN or --token-file.
    /// [default: HADR_ADMIN_TOKEN, else <state-dir>/admin-token]
    #[arg(long, env = "HADR_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the admin token (e.g. a copy of the host's
    /// <state-dir>/admin-token), read instead of --token.
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The host's state directory, where its generated admin token lives.
    #[arg(long, default_value = "state-data", env = "HADR_STATE_DIR")]
    state_dir: PathBuf,
    /// The longest one admin call may take, from connecting (itself at most
    /// 5 s) to the whole answer: a deploy uploads, compiles and smoke-tests
    /// first. Past it the host's state is unknown: check GET /admin/deployments.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

impl AdminArgs {
    fn client(&self) -> anyhow::Result<AdminClient> {
        let read = |path: &std::path::Path, missing: &str| {
            std::fs::read_to_string(path)
                .with_context(|| format!("{missing}cannot read {}", path.display()))
                .map(|t| t.trim().to_string())
        };
        let token = match (&self.token_file, &self.token) {
            (Some(path), _) => read(path, "--token-file: ")?,
            (None, Some(t)) if !t.is_empty() => t.clone(),
            _ => read(
                &self.state_dir.join("admin-token"),
                "no --token, --token-file or HADR_ADMIN_TOKEN, and ",
            )?,
        };
        if token.is_empty() {
            anyhow::bail!("the admin token is empty");
        }
        Ok(AdminClient {
            url: self.admin.clone(),
            token,
            timeout: self.timeout,
        })
    }
}

#[derive(clap::Args)]
struct DeployArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// The new guest component (.wasm).
    #[arg(long, conflicts_with_all = ["promote", "abort"])]
    module: Option<PathBuf>,
    /// The new model, as NAME=path.onnx (NAME is what guests load it by).
    #[arg(long, value_parser = parse_model, conflicts_with_all = ["promote", "abort"])]
    model: Option<(String, PathBuf)>,
    /// The instances to switch: `all`, or names separated by commas.
    #[arg(long, default_value = "all")]
    to: String,
    /// Send only this percentage of requests to the new version (a canary).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
    canary: Option<u8>,
    /// A canary whose error rate passes this share is aborted automatically.
    #[arg(long, default_value_t = 0.05)]
    abort_above: f64,
    /// ... once it has had at least this many calls.
    #[arg(long, default_value_t = 20)]
    min_calls: u64,
    /// A request body (JSON) for the smoke prediction.
    /// [default: the first case of <model>.cases.json beside the model, else a row of zeros]
    #[arg(long)]
    example: Option<PathBuf>,
    /// Make the running canary the deployment in force.
    #[arg(long, conflicts_with = "abort")]
    promote: bool,
    /// Drop the running canary.
    #[arg(long)]
    abort: bool,
    /// Roll the deploy across the hosts of this topology file, one host at a
    /// time (each distinct "host" address, its admin listener there on
    /// --admin-port, all with the same token), stopping at the first host
    /// that refuses. Instead of --admin.
    #[arg(long, conflicts_with_all = ["canary", "promote", "abort", "to"])]
    fleet: Option<PathBuf>,
    /// With --fleet: the port of every host's admin listener.
    #[arg(long, default_value_t = 8001, requires = "fleet")]
    admin_port: u16,
}

#[derive(clap::Args)]
struct DrillArgs {
    /// Topology files, drilled in this order.
    /// [default: topologies/single.json, 2-active.json, 3-active.json in this repository]
    topologies: Vec<PathBuf>,
    /// Where the report, charts, state directories and logs go.
    #[arg(long, default_value = "drill-report")]
    out: PathBuf,
    /// Short phases (about 15 s per topology) instead of the full drill (about 70 s).
    #[arg(long)]
    quick: bool,
    /// Steady load during faults, as a share of the measured capacity.
    #[arg(long, default_value_t = 0.5)]
    share: f64,
    /// The model drilled when no topology is named: `digits` (topologies/*.json) or
    /// `placement`, the article's own predictor (topologies/placement/*.json); its cases
    /// file models/<model>.cases.json gives the payloads.
    #[arg(long, default_value = "digits")]
    model: String,
    /// Payloads: a model's cases file. [default: models/<--model>.cases.json]
    #[arg(long)]
    cases: Option<PathBuf>,
    /// The per-call deadline the drilled hosts run with (a hang lasts this long).
    #[arg(long, default_value = "250ms")]
    deadline: String,
    /// Run each topology as a fleet: one `serve --only <entry>` process per
    /// entry on its own loopback address (127.0.0.2, .3, ...) behind a real
    /// HAProxy that the drill configures (`export haproxy`) and starts; the
    /// crash phase kills one whole host. Needs `haproxy` installed.
    #[arg(long)]
    fleet: bool,
}

#[derive(clap::Args)]
struct RollbackArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// The instances to roll back: `all`, or names separated by commas.
    #[arg(long, default_value = "all")]
    to: String,
}

fn parse_model(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=path.onnx, got `{s}`"))?;
    if name.is_empty() {
        return Err("the model name before `=` is empty".into());
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

fn targets(to: &str) -> Targets {
    if to == "all" {
        Targets::All
    } else {
        Targets::Some(to.split(',').map(|s| s.trim().to_string()).collect())
    }
}

#[derive(clap::Args)]
struct LoadtestArgs {
    /// URL to POST to, e.g. http://127.0.0.1:8000/predict.
    url: hyper::Uri,
    /// Closed model (Locust's): this many users, each sending its next
    /// request when its last answer arrives.
    #[arg(
        long,
        alias = "connections",
        default_value_t = 8,
        conflicts_with = "rate"
    )]
    users: usize,
    /// Users started per second (0: all at once).
    #[arg(long, default_value_t = 0.0)]
    spawn_rate: f64,
    /// Open model: requests per second on a schedule, `R` or a ramp `FROM..TO`;
    /// latency counts from when each request was due, so a slow server cannot
    /// hide the rate at which it first fails.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<(f64, f64)>,
    /// Open model: requests in flight at most; a request due beyond it fails.
    #[arg(long, default_value_t = 2000)]
    max_in_flight: usize,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long to send before measuring.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// A request not answered within this counts as failed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Payloads: a model's cases file; each request sends the next case(s).
    /// [default: models/digits.cases.json]
    #[arg(long, conflicts_with = "body")]
    cases: Option<PathBuf>,
    /// Rows per request when sending cases.
    #[arg(long, default_value_t = 1)]
    rows: usize,
    /// Payload: one JSON file sent as every request's body.
    #[arg(long)]
    body: Option<PathBuf>,
    /// How cases are sent: `predict` (hadr's /predict body), `v2-json` or
    /// `v2-binary` (Open Inference Protocol infer requests; point the URL at
    /// /v2/models/NAME/infer).
    #[arg(long, value_enum, default_value = "predict", conflicts_with = "body")]
    protocol: loadtest::payload::Protocol,
    /// The model input v2 requests fill with rows (records go to `records`).
    #[arg(long, default_value = "float_input")]
    v2_input: String,
    /// Print the report as JSON (the timeline included).
    #[arg(long)]
    json: bool,
    /// Also write the report as Markdown to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

fn parse_rate(s: &str) -> Result<(f64, f64), String> {
    let number = |v: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|r| *r > 0.0)
            .ok_or_else(|| format!("`{v}` is not a positive rate"))
    };
    match s.split_once("..") {
        Some((from, to)) => Ok((number(from)?, number(to)?)),
        None => number(s).map(|r| (r, r)),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hadr-host: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Loadtest(args) => loadtest(args).await.map_err(Failure::Other),
            Command::Deploy(args) => deploy(args).await,
            Command::Drill(args) => drill(args).await.map_err(Failure::Other),
            Command::Rollback(args) => rollback(args).await,
            Command::Export(ExportCommand::Haproxy(args)) => export_haproxy(args),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("hadr-host: {}", with_causes(e.as_ref()));
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("hadr-host: {}", with_causes(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// The operator's input is wrong: exit code 2.
    Config(anyhow::Error),
    /// Anything else: exit code 1.
    Other(anyhow::Error),
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HADR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let defaults = args.defaults();
    let drain = args.drain;
    let options = args.options();
    let host = match Host::start(&options).await {
        Ok(host) => host,
        Err(e) => {
            let mut err = anyhow::Error::new(e);
            // Only an error about the default guest itself: a busy port or
            // a topology naming its own guest has nothing to do with it.
            let about_default = format!("{err:#}").contains(&*defaults.module.to_string_lossy());
            if about_default && !defaults.module.is_file() {
                err = err.context(format!(
                    "the default guest {} is missing; build it with: \
                     scripts/build-guest \
                     (expected at {DEFAULT_GUEST})",
                    defaults.module.display()
                ));
            }
            let config = err
                .downcast_ref::<hadr_server::serve::StartError>()
                .is_none_or(|e| e.is_config());
            return Err(if config {
                Failure::Config(err)
            } else {
                Failure::Other(err)
            });
        }
    };
    let shutdown = Shutdown::new();
    shutdown
        .on_signals(drain, host.draining())
        .context("installing signal handlers")
        .map_err(Failure::Other)?;
    let router = host.router_addr();
    let admin = host.admin_addr();
    tracing::info!(%router, %admin, "router and admin listening");
    for (name, addr) in host.instance_addrs() {
        tracing::info!(instance = %name, %addr, "instance listening");
    }
    // One line on stdout for scripts and tests: where to send requests.
    out!("hadr-host ready: router http://{router} admin http://{admin}");
    host.run(shutdown)
        .await
        .context("saving state on the way out")
        .map_err(Failure::Other)?;
    tracing::info!("stopped");
    Ok(())
}

fn export_haproxy(args: HaproxyArgs) -> Result<(), Failure> {
    let topology = hadr_server::topology::Topology::load_shape(&args.topology)
        .map_err(|e| Failure::Config(e.into()))?;
    let options = hadr_tools::fleet::haproxy::Options {
        listen: args.listen,
        max_body: args.max_body,
        addresses: args.addresses,
        queue_timeout_ms: args.queue_timeout.as_millis() as u64,
        server_timeout_ms: hadr_tools::fleet::haproxy::server_timeout(args.deadline),
    };
    let config = hadr_tools::fleet::haproxy::config(&topology, &options)
        .map_err(|e| Failure::Config(e.into()))?;
    out!("{}", config.trim_end());
    Ok(())
}

async fn deploy_fleet(args: DeployArgs, topology: PathBuf) -> Result<(), Failure> {
    let client = args.admin.client().map_err(Failure::Config)?;
    let topology = hadr_server::topology::Topology::load_shape(&topology)
        .map_err(|e| Failure::Config(e.into()))?;
    if args.module.is_none() && args.model.is_none() {
        return Err(Failure::Config(anyhow::anyhow!(
            "nothing to deploy: give --module, --model, or both"
        )));
    }
    let plan = DeployPlan {
        module: args.module,
        model: args.model,
        to: Targets::All,
        canary: None,
        example: args.example,
        max_error_rate: None,
        min_calls: None,
    };
    let hosts = hadr_tools::fleet::rolling::hosts_for(&topology, &plan)
        .map_err(|e| Failure::Config(e.into()))?;
    if let (Some((name, _)), []) = (&plan.model, &hosts[..]) {
        return Err(Failure::Config(anyhow::anyhow!(
            "{}: no entry serves a model named `{name}` (a model replaces the model of its name)",
            topology.path.display()
        )));
    }
    let access = hadr_tools::fleet::rolling::Access {
        admin_port: args.admin_port,
        token: client.token,
        timeout: client.timeout,
    };
    match hadr_tools::fleet::rolling::deploy(&topology, &access, &plan).await {
        Ok(hosts) => {
            out!(
                "{}",
                serde_json::to_string_pretty(&hosts).expect("outcomes serialise")
            );
            Ok(())
        }
        Err(e) if e.is_operator_error() => Err(Failure::Config(e.into())),
        Err(e) => Err(Failure::Other(e.into())),
    }
}

async fn deploy(args: DeployArgs) -> Result<(), Failure> {
    if let Some(topology) = args.fleet.clone() {
        return deploy_fleet(args, topology).await;
    }
    let client = args.admin.client().map_err(Failure::Config)?;
    let outcome = if args.promote {
        client
            .post("/admin/deploy/promote", serde_json::json!({}))
            .await
    } else if args.abort {
        client
            .post("/admin/deploy/abort", serde_json::json!({}))
            .await
    } else {
        if args.module.is_none() && args.model.is_none() {
            return Err(Failure::Config(anyhow::anyhow!(
                "nothing to deploy: give --module, --model, or both (or --promote / --abort for a canary)"
            )));
        }
        let plan = DeployPlan {
            module: args.module,
            model: args.model,
            to: targets(&args.to),
            canary: args.canary,
            example: args.example,
            max_error_rate: Some(args.abort_above),
            min_calls: Some(args.min_calls),
        };
        client.deploy(&plan).await
    };
    report(outcome)
}

async fn drill(args: DrillArgs) -> anyhow::Result<()> {
    let model = repo_defaults().model;
    let root = model
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    let folder = match args.model.as_str() {
        "digits" => root.join("topologies"),
        other => root.join("topologies").join(other),
    };
    let topologies = if args.topologies.is_empty() {
        ["single", "2-active", "3-active"]
            .iter()
            .map(|n| folder.join(format!("{n}.json")))
            .collect()
    } else {
        args.topologies
    };
    let cases = match args.cases {
        Some(cases) => cases,
        None => in_source_tree(
            root.join("models")
                .join(format!("{}.cases.json", args.model)),
            "--cases FILE, a model's cases file",
        )?,
    };
    let options = hadr_tools::drill::DrillOptions {
        topologies,
        out: args.out.clone(),
        timing: if args.quick {
            hadr_tools::drill::Timing::quick()
        } else {
            hadr_tools::drill::Timing::full()
        },
        share: args.share,
        bodies: loadtest::payload::from_cases(&cases, 1)?,
        serve_args: vec!["--deadline".into(), args.deadline],
        fleet: args.fleet,
    };
    let report = hadr_tools::drill::run(&options).await?;
    out!("{}", hadr_tools::drill::report::markdown(&report));
    eprintln!("wrote {}", args.out.join("report.md").display());
    Ok(())
}

async fn rollback(args: RollbackArgs) -> Result<(), Failure> {
    let client = args.admin.client().map_err(Failure::Config)?;
    let to = match targets(&args.to) {
        Targets::All => serde_json::json!("all"),
        Targets::Some(names) => serde_json::json!(names),
    };
    report(
        client
            .post("/admin/rollback", serde_json::json!({ "to": to }))
            .await,
    )
}

/// Prints an admin answer; a refusal is exit code 2, an unreachable host 1.
fn report(
    outcome: Result<serde_json::Value, hadr_tools::admin_client::ClientError>,
) -> Result<(), Failure> {
    match outcome {
        Ok(value) => {
            out!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            Ok(())
        }
        Err(e) if e.is_operator_error() => Err(Failure::Config(anyhow::Error::new(e))),
        Err(e) => Err(Failure::Other(anyhow::Error::new(e))),
    }
}

/// A default file of the source tree this binary was built from, which an
/// installed `hadr-host` may not have beside it: a missing one says which
/// flag to give instead of only "no such file".
fn in_source_tree(path: PathBuf, instead: &str) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        path.exists(),
        "no payloads given, and the default {} is not there (defaults live in the source tree \
         hadr-host was built from): pass {instead}",
        path.display()
    );
    Ok(path)
}

async fn loadtest(args: LoadtestArgs) -> anyhow::Result<()> {
    let bodies = match &args.body {
        Some(path) => vec![bytes::Bytes::from(
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        )
        .into()],
        None => {
            let path = match &args.cases {
                Some(cases) => cases.clone(),
                None => in_source_tree(
                    repo_defaults().model.with_extension("cases.json"),
                    "--cases FILE, a model's cases file, or --body FILE, one request body",
                )?,
            };
            loadtest::payload::requests(&path, args.rows, args.protocol, &args.v2_input)?
        }
    };
    let model = match args.rate {
        Some((from, to)) => Model::Open {
            from,
            to,
            max_in_flight: args.max_in_flight,
        },
        None => Model::Closed {
            users: args.users,
            spawn_rate: args.spawn_rate,
        },
    };
    let plan = Plan {
        url: args.url,
        bodies,
        model,
        duration: args.duration,
        warmup: args.warmup,
        timeout: args.timeout,
    };
    let bar = progress_bar(args.warmup + args.duration);
    let shown = bar.clone();
    let progress: Arc<loadtest::Progress> = Arc::new(move |elapsed, answers, failed, rate, p99| {
        shown.set_position(elapsed.as_millis() as u64);
        shown.set_message(format!(
            "{rate:>7.0} req/s  {answers} answers  {failed} failed  p99 {p99} µs"
        ));
    });
    let report = loadtest::run_plan(&plan, Some(progress)).await?;
    bar.finish_and_clear();
    if args.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", loadtest::report::terminal(&report));
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, loadtest::report::markdown(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A bar on stderr (hidden when stderr is not a terminal).
fn progress_bar(total: Duration) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}
