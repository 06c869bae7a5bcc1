//! Chaos drills: what the article measured by hand and what it only drew.
//!
//! `hadr-host drill a.json b.json ...` takes each topology in turn, in its
//! own state directory, through three phases, all under hadr's own load
//! generator in the open model (requests on a schedule, latency from when
//! each was due):
//!
//! 1. **capacity**: a ramp from a low rate to well past capacity; the rate
//!    at the first failed request is the topology's capacity (the article's
//!    "RPS at failure"). A watcher reads `/topology` meanwhile, for the peak
//!    load of each instance (the article's second table) and the moment a
//!    standby is promoted.
//! 2. **instance faults**: steady load at a share of that capacity while a
//!    real trap, then a real hang (stopped by the deadline), is armed in an
//!    active instance through the admin API. `/topology` is read before and
//!    after, so the served counts can be checked against the successes.
//! 3. **host crash**: steady load while the host is killed with SIGKILL and
//!    restarted on the same state directory.
//!
//! With `--fleet`, each topology runs as one process per entry on its own
//! loopback address behind a real HAProxy ([`crate::fleet::local`]): the load
//! goes through HAProxy, faults are armed on the host of the first active, and
//! the crash kills that whole host (one machine of the fleet), not all of them.
//!
//! For each fault it measures the failed requests in its window and their
//! share (failure impact), and the recovery time: from the fault to the
//! last 100 ms bucket with a failure or with throughput below 90% of its
//! level before the fault. Availability is the share of successful requests
//! over both fault phases. [`report`] writes `report.md`, `report.json`, and
//! [`charts`] `throughput.svg` and `latency.svg`.
//!
//! May use: `fleet`, `admin_client`, `loadtest`, `spawn`.

pub mod charts;
pub mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::admin_client::AdminClient;
use crate::fleet::local::{FleetOptions, LocalFleet};
use crate::loadtest::{self, LoadReport, Model, Plan, Tick, BUCKET};
pub use crate::spawn::{HostProcess, ProcessError};

/// How long each phase runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timing {
    /// The capacity ramp.
    pub ramp: Duration,
    /// The instance-fault phase.
    pub faults: Duration,
    /// The host-crash phase.
    pub crash: Duration,
    /// The ramp's top rate.
    pub ramp_to: f64,
}

impl Timing {
    /// The full drill: about 70 s per topology (20 s ramp, 30 s faults, 20 s
    /// crash and restart).
    pub fn full() -> Self {
        Self {
            ramp: Duration::from_secs(20),
            faults: Duration::from_secs(30),
            crash: Duration::from_secs(20),
            ramp_to: 25_000.0,
        }
    }

    /// `--quick`: about 15 s per topology.
    pub fn quick() -> Self {
        Self {
            ramp: Duration::from_secs(4),
            faults: Duration::from_secs(6),
            crash: Duration::from_secs(4),
            ramp_to: 20_000.0,
        }
    }
}

/// What to drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Topology files, drilled in this order.
    pub topologies: Vec<PathBuf>,
    /// Where state directories, logs and the report go.
    pub out: PathBuf,
    /// Phase lengths.
    pub timing: Timing,
    /// Steady load during faults, as a share of measured capacity.
    pub share: f64,
    /// The request bodies.
    pub bodies: Vec<bytes::Bytes>,
    /// Extra `serve` options (e.g. `--deadline 200ms`).
    pub serve_args: Vec<String>,
    /// Run each topology as a fleet behind HAProxy instead of one host.
    pub fleet: bool,
}

/// Why a drill could not run.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// A host could not be started.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A fleet could not be started.
    #[error(transparent)]
    Fleet(#[from] crate::fleet::local::FleetError),
    /// The load generator could not run.
    #[error(transparent)]
    Load(#[from] loadtest::LoadError),
    /// An admin call failed.
    #[error("admin call failed: {0}")]
    Admin(String),
    /// A report file could not be written.
    #[error("writing {0}: {1}")]
    Write(PathBuf, String),
}

/// One fault and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct FaultOutcome {
    /// `trap`, `hang` or `kill -9`.
    pub kind: String,
    /// Seconds into its phase.
    pub at_s: f64,
    /// Requests that failed while the fault's effect lasted (from the fault
    /// until it recovered).
    pub failed: u64,
    /// Requests answered while it lasted.
    pub requests: u64,
    /// Seconds from the fault until the first half second with no failure
    /// and throughput at 90% of its level before the fault (0: no visible
    /// effect at 100 ms resolution).
    pub recovery_s: f64,
    /// Failures from the fault to the next one (or the end of the phase),
    /// including any unrelated to it.
    pub window_failed: u64,
    /// Requests in that window.
    pub window_requests: u64,
}

/// One topology's results.
#[derive(Debug, Clone, Serialize)]
pub struct TopologyResult {
    /// Its name (the file stem).
    pub name: String,
    /// Whether it ran as a fleet (one process per entry behind HAProxy).
    pub fleet: bool,
    /// The ramp's report.
    pub capacity: LoadReport,
    /// RPS at first failure during the ramp (the article's figure), or the
    /// ramp's peak goodput when nothing failed.
    pub rps_at_first_failure: Option<f64>,
    /// Peak load seen per instance during the ramp.
    pub peak_load: BTreeMap<String, u64>,
    /// The offered rate when a standby was promoted during the ramp, if one was.
    pub promoted_at_rps: Option<f64>,
    /// Seconds into the instance-fault phase when a standby was promoted, if one was.
    pub promoted_during_faults_s: Option<f64>,
    /// The steady rate used for the fault phases.
    pub fault_rps: f64,
    /// The instance-fault phase's report.
    pub instance_faults: LoadReport,
    /// The host-crash phase's report.
    pub host_crash: LoadReport,
    /// Each fault's impact and recovery.
    pub faults: Vec<FaultOutcome>,
    /// Share of successful requests over both fault phases.
    pub availability: f64,
    /// Per instance, served during the instance-fault phase (from `/topology`).
    pub served_during_faults: BTreeMap<String, u64>,
    /// How long the restarted host took to print its ready line.
    pub restart_ready_ms: f64,
    /// Faults armed in the instance-fault phase.
    pub faults_armed: u64,
    /// Faults that fired in it (from `/topology`'s `faults_fired`): the
    /// faults a failure count can be blamed on.
    pub faults_fired: u64,
}

/// The drill's results.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// When it ran (RFC 3339).
    pub date: String,
    /// The machine it ran on (CPU model, cores, memory, kernel).
    pub machine: String,
    /// Phase lengths.
    pub timing: Timing,
    /// Steady load share during faults.
    pub share: f64,
    /// Per topology, in order.
    pub topologies: Vec<TopologyResult>,
}

/// Runs the drill and writes its report files into `options.out`.
pub async fn run(options: &DrillOptions) -> Result<DrillReport, DrillError> {
    let mut results = Vec::new();
    for path in &options.topologies {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "topology".into());
        tracing::info!(topology = %name, "drill: starting");
        results.push(drill_one(options, path, &name).await?);
    }
    let report = DrillReport {
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        machine: machine(),
        timing: options.timing,
        share: options.share,
        topologies: results,
    };
    report::write(&report, &options.out)?;
    Ok(report)
}

async fn drill_one(
    options: &DrillOptions,
    path: &Path,
    name: &str,
) -> Result<TopologyResult, DrillError> {
    let dir = options.out.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let mut rig = tokio::task::block_in_place(|| Rig::start(options, path, &dir))?;
    let url = rig.url();
    let views = rig.views();
    let timing = options.timing;

    // 1. Capacity.
    let watcher = Watcher::start(views.clone());
    let ramp = open(
        options,
        &url,
        (100.0, timing.ramp_to),
        timing.ramp,
        Duration::from_millis(500),
    )
    .await?;
    let (peak_load, promoted_after) = watcher.stop().await;
    let rps_at_first_failure = ramp.first_failure.as_ref().map(|f| f.rps);
    let capacity = rps_at_first_failure.unwrap_or(ramp.peak_goodput).max(10.0);
    let promoted_at_rps = promoted_after.map(|t| {
        let f = (t.as_secs_f64() - 0.5).max(0.0) / timing.ramp.as_secs_f64();
        100.0 + (timing.ramp_to - 100.0) * f.min(1.0)
    });
    let fault_rps = (capacity * options.share).max(10.0);
    settle(&views).await;

    // 2. Instance faults: a trap, then a hang, in the first active instance.
    let target = first_active(&views)
        .await
        .unwrap_or_else(|| "predict1".into());
    let admin = rig.admin(&target);
    let before = served(&views).await;
    let fired_before = fired(&views).await;
    let already_promoted = promoted(&views).await;
    let watcher = Watcher::start(views.clone());
    let phase = timing.faults;
    let injector = {
        let (admin, target) = (admin, target.clone());
        tokio::spawn(async move {
            let mut at = Vec::new();
            let started = Instant::now();
            for (k, fault) in ["trap", "hang"].into_iter().enumerate() {
                tokio::time::sleep_until((started + phase * (k as u32 + 1) / 3).into()).await;
                at.push((fault.to_string(), started.elapsed()));
                let body = serde_json::json!({"instance": target, "fault": fault});
                arm(&admin, body).await?;
            }
            Ok::<_, DrillError>(at)
        })
    };
    let instance_faults =
        open(options, &url, (fault_rps, fault_rps), phase, Duration::ZERO).await?;
    let injected = injector
        .await
        .map_err(|e| DrillError::Admin(e.to_string()))??;
    let (_, promoted_later) = watcher.stop().await;
    let promoted_during_faults_s = promoted_later
        .filter(|_| !already_promoted)
        .map(|t| t.as_secs_f64());
    let after = served(&views).await;
    let faults_fired = fired(&views).await.saturating_sub(fired_before);
    let served_during_faults = after
        .iter()
        .map(|(n, s)| (n.clone(), s - before.get(n).copied().unwrap_or(0)))
        .collect();
    let mut faults = outcomes(&instance_faults.timeline, &injected, phase);

    // 3. Host crash.
    let crash_phase = timing.crash;
    let crash_at = crash_phase / 3;
    let load = {
        let (options, url) = (options.clone(), url.clone());
        tokio::spawn(async move {
            open(
                &options,
                &url,
                (fault_rps, fault_rps),
                crash_phase,
                Duration::ZERO,
            )
            .await
        })
    };
    let started = Instant::now();
    tokio::time::sleep(crash_at).await;
    let killed_at = started.elapsed();
    let ready = tokio::task::block_in_place(|| rig.kill_and_restart(&target))?;
    let host_crash = load.await.map_err(|e| DrillError::Admin(e.to_string()))??;
    faults.extend(outcomes(
        &host_crash.timeline,
        &[("kill -9".to_string(), killed_at)],
        crash_phase,
    ));
    rig.stop();

    let ok = instance_faults.ok + host_crash.ok;
    let total = instance_faults.requests + host_crash.requests;
    Ok(TopologyResult {
        name: match options.fleet {
            true => format!("{name} (fleet)"),
            false => name.to_string(),
        },
        fleet: options.fleet,
        capacity: ramp,
        rps_at_first_failure,
        peak_load,
        promoted_at_rps,
        promoted_during_faults_s,
        fault_rps,
        instance_faults,
        host_crash,
        faults,
        availability: if total == 0 {
            0.0
        } else {
            ok as f64 / total as f64
        },
        served_during_faults,
        restart_ready_ms: ready.as_secs_f64() * 1e3,
        faults_armed: injected.len() as u64,
        faults_fired,
    })
}

/// CPU model, cores, memory and kernel, from /proc.
fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = read("/proc/sys/kernel/osrelease");
    format!(
        "{cpu}, {cores} cores available, {memory_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

/// An open-model run at `rates` for `duration`.
async fn open(
    options: &DrillOptions,
    url: &hyper::Uri,
    rates: (f64, f64),
    duration: Duration,
    warmup: Duration,
) -> Result<LoadReport, loadtest::LoadError> {
    let plan = Plan {
        url: url.clone(),
        bodies: options.bodies.iter().cloned().map(Into::into).collect(),
        model: Model::Open {
            from: rates.0,
            to: rates.1,
            max_in_flight: 512,
        },
        duration,
        warmup,
        timeout: Duration::from_secs(5),
    };
    loadtest::run_plan(&plan, None).await
}

/// A half second without failure or dip ends a fault's effect.
const CLEAN_BUCKETS: usize = 5;

/// Impact and recovery of each fault, from a phase's timeline (the
/// injector's clock and the load generator's start together).
fn outcomes(
    timeline: &[Tick],
    injected: &[(String, Duration)],
    phase: Duration,
) -> Vec<FaultOutcome> {
    let bucket = BUCKET.as_secs_f64();
    let index = |t: f64| ((t / bucket) as usize).min(timeline.len());
    let mut out = Vec::new();
    for (k, (kind, at)) in injected.iter().enumerate() {
        let start = at.as_secs_f64();
        let end = injected
            .get(k + 1)
            .map(|(_, next)| next.as_secs_f64())
            .unwrap_or(phase.as_secs_f64());
        let (from, to) = (index(start), index(end));
        // The level: median 200s per bucket over the second before the fault.
        let mut before: Vec<u64> = timeline[from.saturating_sub(10)..from]
            .iter()
            .map(|t| t.ok)
            .collect();
        before.sort_unstable();
        let level = before.get(before.len() / 2).copied().unwrap_or(0) as f64;
        let clean = |t: &Tick| t.failed == 0 && t.ok as f64 >= 0.9 * level;
        let recovered = (from..to)
            .find(|&i| timeline[i..(i + CLEAN_BUCKETS).min(to)].iter().all(clean))
            .unwrap_or(to);
        let effect = &timeline[from..recovered];
        let window = &timeline[from..to];
        out.push(FaultOutcome {
            kind: kind.clone(),
            at_s: start,
            failed: effect.iter().map(|t| t.failed).sum(),
            requests: effect.iter().map(|t| t.answers).sum(),
            recovery_s: if recovered == from {
                0.0
            } else {
                (recovered as f64 * bucket - start).max(0.0)
            },
            window_failed: window.iter().map(|t| t.failed).sum(),
            window_requests: window.iter().map(|t| t.answers).sum(),
        });
    }
    out
}

/// Every instance's row, from the `/topology` of each process (one host,
/// or each host of a fleet).
async fn instances(views: &[hyper::Uri]) -> Vec<loadtest::InstanceRow> {
    let mut rows = Vec::new();
    for url in views {
        rows.extend(loadtest::report::instances(url).await);
    }
    rows
}

/// Served counts per instance, from `/topology`.
async fn served(views: &[hyper::Uri]) -> BTreeMap<String, u64> {
    instances(views)
        .await
        .into_iter()
        .map(|i| (i.instance, i.served))
        .collect()
}

/// Chaos faults fired so far, over every instance.
async fn fired(views: &[hyper::Uri]) -> u64 {
    let mut total = 0;
    for url in views {
        if let Some(t) = loadtest::report::topology(url).await {
            total += t.as_object().map_or(0, |m| {
                m.values().filter_map(|i| i["faults_fired"].as_u64()).sum()
            });
        }
    }
    total
}

/// Arms a fault; while the previous one has not fired (409) tries again a
/// little later, so every fault the drill counts was really armed.
async fn arm(admin: &AdminClient, body: serde_json::Value) -> Result<(), DrillError> {
    for _ in 0..200 {
        match admin.post("/admin/chaos", body.clone()).await {
            Ok(_) => return Ok(()),
            Err(crate::admin_client::ClientError::Refused { status, .. })
                if status == hyper::StatusCode::CONFLICT =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(DrillError::Admin(e.to_string())),
        }
    }
    Err(DrillError::Admin(
        "the previous fault never fired: nothing reached the instance for 2 s".into(),
    ))
}

/// Whether a standby has been promoted.
async fn promoted(views: &[hyper::Uri]) -> bool {
    instances(views).await.iter().any(|i| i.role == "promoted")
}

/// The first instance that takes traffic.
async fn first_active(views: &[hyper::Uri]) -> Option<String> {
    instances(views)
        .await
        .into_iter()
        .find(|i| i.status)
        .map(|i| i.instance)
}

/// Waits (bounded) until no request is in flight, so the next phase starts clean.
async fn settle(views: &[hyper::Uri]) {
    for _ in 0..100 {
        if instances(views).await.iter().all(|r| r.load == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a drill runs against.
enum Rig {
    /// One host serving the whole topology.
    One(HostProcess),
    /// One host per entry behind HAProxy.
    Fleet(LocalFleet),
}

impl Rig {
    fn start(options: &DrillOptions, path: &Path, dir: &Path) -> Result<Self, DrillError> {
        if !options.fleet {
            let extra: Vec<&str> = options.serve_args.iter().map(String::as_str).collect();
            return Ok(Rig::One(HostProcess::start(path, dir, &extra)?));
        }
        let exe = std::env::current_exe().map_err(|source| ProcessError::Io {
            what: "finding this executable".into(),
            source,
        })?;
        let fleet = LocalFleet::start(
            path,
            dir,
            &FleetOptions {
                exe,
                network: 0,
                drain: Duration::from_millis(500),
                max_body: 64 << 10,
                extra: options.serve_args.clone(),
            },
        )?;
        Ok(Rig::Fleet(fleet))
    }

    /// Where the load goes.
    fn url(&self) -> hyper::Uri {
        let addr = match self {
            Rig::One(host) => host.router,
            Rig::Fleet(fleet) => fleet.frontend,
        };
        format!("http://{addr}/predict")
            .parse()
            .expect("a valid URL")
    }

    /// Each process's router, for `/topology`.
    fn views(&self) -> Vec<hyper::Uri> {
        let routers = match self {
            Rig::One(host) => vec![host.router],
            Rig::Fleet(fleet) => fleet.hosts.iter().map(|h| h.process.router).collect(),
        };
        routers
            .into_iter()
            .map(|r| format!("http://{r}/predict").parse().expect("a valid URL"))
            .collect()
    }

    /// The admin API of the process serving `instance`.
    fn admin(&self, instance: &str) -> AdminClient {
        let host = match self {
            Rig::One(host) => host,
            Rig::Fleet(fleet) => fleet
                .hosts
                .iter()
                .find(|h| h.name == instance)
                .map_or(&fleet.hosts[0].process, |h| &h.process),
        };
        AdminClient {
            url: format!("http://{}", host.admin)
                .parse()
                .expect("a valid URL"),
            token: host.token().to_string(),
            timeout: crate::admin_client::CALL_TIMEOUT,
        }
    }

    /// SIGKILL of the host (of a fleet: the host serving `instance`), then a
    /// restart; how long the restart took to be ready.
    fn kill_and_restart(&mut self, instance: &str) -> Result<Duration, DrillError> {
        match self {
            Rig::One(host) => Ok(host.kill_and_restart()?),
            Rig::Fleet(fleet) => {
                let ready = fleet.host(instance).process.kill_and_restart()?;
                fleet.wait_up(instance, Duration::from_secs(10))?;
                Ok(ready)
            }
        }
    }

    fn stop(self) {
        match self {
            Rig::One(host) => host.stop(),
            Rig::Fleet(fleet) => fleet.stop(),
        }
    }
}

/// Reads `/topology` every 50 ms: peak load per instance and when a
/// standby was first promoted.
struct Watcher {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(BTreeMap<String, u64>, Option<Duration>)>,
}

impl Watcher {
    fn start(views: Vec<hyper::Uri>) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let peak = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
            let mut promoted = None;
            loop {
                for row in instances(&views).await {
                    let mut peak = peak.lock().unwrap_or_else(|p| p.into_inner());
                    let seen = peak.entry(row.instance).or_default();
                    *seen = (*seen).max(row.load);
                    if row.role == "promoted" && promoted.is_none() {
                        promoted = Some(started.elapsed());
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stopped.changed() => break,
                }
            }
            let peak = peak.lock().unwrap_or_else(|p| p.into_inner()).clone();
            (peak, promoted)
        });
        Self { stop, task }
    }

    async fn stop(self) -> (BTreeMap<String, u64>, Option<Duration>) {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(t: f64, ok: u64, failed: u64) -> Tick {
        Tick {
            t,
            answers: ok + failed,
            ok,
            failed,
            p99_us: 100,
            offered: 100.0,
        }
    }

    #[test]
    fn recovery_ends_with_the_last_disturbed_bucket() {
        // 10 per bucket, a fault at 1.0 s: failures in two buckets, then a
        // slow bucket, then level again.
        let mut timeline: Vec<Tick> = (0..30).map(|i| tick(i as f64 / 10.0, 10, 0)).collect();
        timeline[10] = tick(1.0, 5, 5);
        timeline[11] = tick(1.1, 8, 2);
        timeline[12] = tick(1.2, 7, 0);
        let faults = outcomes(
            &timeline,
            &[("kill -9".into(), Duration::from_secs(1))],
            Duration::from_secs(3),
        );
        let f = &faults[0];
        assert_eq!((f.failed, f.requests), (7, 27));
        assert_eq!((f.window_failed, f.window_requests), (7, 197));
        assert!((f.recovery_s - 0.3).abs() < 1e-9, "{}", f.recovery_s);
    }

    #[test]
    fn an_invisible_fault_recovers_in_zero_despite_later_noise() {
        let mut timeline: Vec<Tick> = (0..30).map(|i| tick(i as f64 / 10.0, 10, 0)).collect();
        timeline[20] = tick(2.0, 9, 1);
        let faults = outcomes(
            &timeline,
            &[("trap".into(), Duration::from_secs(1))],
            Duration::from_secs(3),
        );
        assert_eq!((faults[0].failed, faults[0].recovery_s), (0, 0.0));
    }
}
