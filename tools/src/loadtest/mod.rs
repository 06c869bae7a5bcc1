//! The load generator behind `hadr-host loadtest`, the drills and the
//! benchmarks.
//!
//! Two models, because they answer different questions:
//! - **closed** (Locust's model): `users` clients, started at `spawn_rate`
//!   per second, each sending its next request as soon as its last answer
//!   arrived. It measures what the system does for a fixed population; a
//!   slow server slows the clients down with it.
//! - **open**: requests go out on a schedule, at a rate ramped from `from`
//!   to `to` requests per second, whether or not earlier ones were
//!   answered, and each latency is measured from the moment the request was
//!   *due*. A slow server cannot hide behind slow clients (coordinated
//!   omission), so the rate at the first failure is the capacity.
//!
//! Every outcome goes into a [`Recorder`]: an HDR histogram of latencies,
//! counts by status, a 100 ms timeline, and the first failure with the rate
//! offered at that moment.
//!
//! A leaf of `hadr-tools`: uses no other tool.

mod client;
pub mod payload;
mod record;
pub mod report;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Uri;
use serde::Serialize;

pub use record::{describe, FirstFailure, NoAnswer, Outcome, Recorder, Tick, BUCKET, NO_ANSWER};
pub use report::InstanceRow;

/// How load is offered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "model", rename_all = "lowercase")]
pub enum Model {
    /// `users` clients in closed loops, started at `spawn_rate` per second.
    Closed {
        /// Concurrent clients.
        users: usize,
        /// Clients started per second (0: all at once).
        spawn_rate: f64,
    },
    /// A schedule ramped linearly from `from` to `to` requests per second.
    Open {
        /// Rate at the start.
        from: f64,
        /// Rate at the end.
        to: f64,
        /// Requests in flight at most; a request due beyond it fails as
        /// "no answer" (the server is not keeping up).
        max_in_flight: usize,
    },
}

/// One load test.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where to POST, e.g. `http://127.0.0.1:8000/predict`.
    pub url: Uri,
    /// Requests, sent in turn.
    pub bodies: Vec<payload::Payload>,
    /// How load is offered.
    pub model: Model,
    /// How long to measure.
    pub duration: Duration,
    /// How long to send before measuring (open model: at the `from` rate).
    pub warmup: Duration,
    /// A request not answered within this counts as failed.
    pub timeout: Duration,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// How load was offered.
    pub model: Model,
    /// Requests answered (or failed) during the measured window.
    pub requests: u64,
    /// Of those, answered 200.
    pub ok: u64,
    /// Of those, anything else.
    pub failed: u64,
    /// Outcomes by status (0: no answer).
    pub by_status: std::collections::BTreeMap<u16, u64>,
    /// Requests with no HTTP answer (refused, reset, timed out, not sent).
    pub transport_errors: u64,
    /// Those, by why.
    pub no_answer: std::collections::BTreeMap<NoAnswer, u64>,
    /// Measured window in seconds.
    pub seconds: f64,
    /// Answers per second.
    pub rps: f64,
    /// 200 answers per second.
    pub goodput: f64,
    /// The best rate of 200s over a whole second.
    pub peak_goodput: f64,
    /// The first failure, and the rate offered then.
    pub first_failure: Option<FirstFailure>,
    /// Latency percentiles in microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// The run in 100 ms buckets (warm-up included).
    pub timeline: Vec<Tick>,
    /// Per instance, from the target's `/topology` (the article's second
    /// table), when the target has one: load as read after the run; served,
    /// failed and traps during it (warm-up included).
    pub instances: Vec<InstanceRow>,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The URL has no host or port.
    #[error("the URL {0} needs a host and port, e.g. http://127.0.0.1:8000/predict")]
    Url(Uri),
    /// Nothing answered at the address.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    /// The plan cannot run.
    #[error("{0}")]
    Plan(String),
}

/// Live figures for a progress display: (elapsed, answers, failures,
/// answers per second over the last second, p99 µs over the last second).
pub type Progress = dyn Fn(Duration, u64, u64, f64, u64) + Send + Sync;

/// Runs `plan`, calling `progress` about four times a second.
pub async fn run_plan(
    plan: &Plan,
    progress: Option<Arc<Progress>>,
) -> Result<LoadReport, LoadError> {
    if plan.bodies.is_empty() {
        return Err(LoadError::Plan("no request bodies to send".into()));
    }
    let authority = plan
        .url
        .authority()
        .ok_or_else(|| LoadError::Url(plan.url.clone()))?
        .to_string();
    client::connect(&authority)
        .await
        .map_err(|e| LoadError::Connect(authority.clone(), e))?;
    // The article's table shows what this test sent, not the host's totals.
    let before = report::instances(&plan.url).await;
    let start = Instant::now();
    let recorder = Arc::new(Mutex::new(Recorder::new(start, plan.warmup)));
    let end = start + plan.warmup + plan.duration;
    let ticker = progress.map(|p| tokio::spawn(report_progress(recorder.clone(), start, p)));
    match plan.model {
        Model::Closed { users, spawn_rate } => {
            client::closed(plan, &authority, users, spawn_rate, start, end, &recorder).await
        }
        Model::Open {
            from,
            to,
            max_in_flight,
        } => {
            client::open(
                plan,
                &authority,
                (from, to),
                max_in_flight,
                start,
                end,
                &recorder,
            )
            .await
        }
    }
    if let Some(t) = ticker {
        t.abort();
    }
    let instances = report::since(&before, report::instances(&plan.url).await);
    let recorder = recorder.lock().unwrap_or_else(|p| p.into_inner());
    Ok(summarise(plan, &recorder, instances))
}

fn summarise(plan: &Plan, r: &Recorder, instances: Vec<InstanceRow>) -> LoadReport {
    let seconds = plan.duration.as_secs_f64();
    let requests: u64 = r.by_status().values().sum();
    let ok = r.by_status().get(&200).copied().unwrap_or(0);
    LoadReport {
        model: plan.model,
        requests,
        ok,
        failed: requests - ok,
        by_status: r.by_status().clone(),
        transport_errors: r.by_status().get(&NO_ANSWER).copied().unwrap_or(0),
        no_answer: r.no_answer().clone(),
        seconds,
        rps: requests as f64 / seconds,
        goodput: ok as f64 / seconds,
        peak_goodput: r.peak_goodput(),
        first_failure: r.first_failure().cloned(),
        p50_us: r.quantile(0.5),
        p90_us: r.quantile(0.9),
        p99_us: r.quantile(0.99),
        p999_us: r.quantile(0.999),
        timeline: r.timeline(),
        instances,
    }
}

async fn report_progress(recorder: Arc<Mutex<Recorder>>, start: Instant, progress: Arc<Progress>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (answers, failed, rate, p99) = {
            let r = recorder.lock().unwrap_or_else(|p| p.into_inner());
            let (answers, _, failed) = r.live();
            let timeline = r.timeline();
            let last: Vec<&Tick> = timeline.iter().rev().skip(1).take(10).collect();
            let rate = last.iter().map(|t| t.answers).sum::<u64>() as f64
                / (last.len().max(1) as f64 * BUCKET.as_secs_f64());
            let p99 = last.iter().map(|t| t.p99_us).max().unwrap_or(0);
            (answers, failed, rate, p99)
        };
        progress(start.elapsed(), answers, failed, rate, p99);
    }
}

/// The closed-loop run the benchmarks use: `connections` clients at once.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Full URL, e.g. `http://127.0.0.1:8000/predict`.
    pub url: Uri,
    /// The JSON body of every request.
    pub body: Bytes,
    /// Concurrent connections (closed loop: one request in flight each).
    pub connections: usize,
    /// How long to measure.
    pub duration: Duration,
    /// How long to send before measuring (not recorded).
    pub warmup: Duration,
}

/// Runs a [`LoadSpec`].
pub async fn run(spec: &LoadSpec) -> Result<LoadReport, LoadError> {
    let plan = Plan {
        url: spec.url.clone(),
        bodies: vec![spec.body.clone().into()],
        model: Model::Closed {
            users: spec.connections.max(1),
            spawn_rate: 0.0,
        },
        duration: spec.duration,
        warmup: spec.warmup,
        timeout: Duration::from_secs(30),
    };
    run_plan(&plan, None).await
}
