//! How fast a faulted instance is replaced, side by side in one run:
//!
//! 1. **Trap → replacement serving**: after a real guest trap, the time until
//!    a replacement sandbox has answered its first prediction, taking it from
//!    the warm pool against instantiating it cold. Reported as median and p99
//!    over many faults (HDR histogram), with the instantiation step alone.
//! 2. **Throughput under faults**: one instance answering predictions while
//!    every 20th call traps, with a warm pool of 2 against none, in
//!    alternating rounds.
//!
//! Run: `cargo bench -p hadr-host --bench recovery` (after scripts/build-guest).
//! Env: `HADR_BENCH_FAULTS` (default 2000), `HADR_BENCH_ROUNDS` (3),
//! `HADR_BENCH_SECONDS` (2).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hadr_server::bindings::drillable::exports::hadr::predictor::chaos::Fault;
use hadr_server::instance::{InForce, Input, Instance, Source};
use hadr_server::sandbox::deployment::{CompiledModule, Deployment};
use hadr_server::sandbox::engine::{HostRuntime, Limits};
use hadr_server::sandbox::nn::LoadedModel;
use hadr_server::topology::InstanceSpec;
use hdrhistogram::Histogram;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn body() -> Bytes {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/digits.cases.json");
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    serde_json::to_vec(&serde_json::json!({ "inputs": [cases["cases"][0]["input"]] }))
        .unwrap()
        .into()
}

fn micros(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e3
}

fn line(what: &str, h: &Histogram<u64>) {
    println!(
        "{what:<44} median {:>7.1} µs   p99 {:>7.1} µs   (n={})",
        micros(h, 0.5),
        micros(h, 0.99),
        h.len()
    );
}

fn main() {
    let runtime = Arc::new(HostRuntime::new(Limits::default(), 4).unwrap());
    let (model, module) = common::default_model_and_guest(&runtime);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let body = body();
    rt.block_on(replacement(&runtime, &module, &model, &body));
    rt.block_on(throughput(&runtime, &module, &model, &body));
}

/// Section 1: faults one at a time, warm and cold alternating.
async fn replacement(
    runtime: &Arc<HostRuntime>,
    module: &Arc<CompiledModule>,
    model: &Arc<LoadedModel>,
    body: &Bytes,
) {
    let faults = env("HADR_BENCH_FAULTS", 2000);
    let deployment = Deployment::new(module.clone(), model.clone(), 1, None);
    let histogram = || Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
    let (mut warm_total, mut cold_total) = (histogram(), histogram());
    let (mut warm_step, mut cold_step) = (histogram(), histogram());
    for i in 0..faults * 2 {
        let warm = i % 2 == 0;
        deployment.fill_pool(runtime).await.unwrap();
        let mut live = deployment.instantiate(runtime, "bench").await.unwrap();
        live.arm(Fault::Trap, &Default::default()).await.unwrap();
        assert!(live.predict(body).await.is_err(), "the armed trap fired");
        drop(live);
        let trapped = Instant::now();
        let mut replacement = if warm {
            deployment.take_spare("bench").unwrap()
        } else {
            deployment.instantiate(runtime, "bench").await.unwrap()
        };
        let ready = trapped.elapsed();
        replacement.predict(body).await.unwrap();
        let serving = trapped.elapsed();
        let (total, step) = if warm {
            (&mut warm_total, &mut warm_step)
        } else {
            (&mut cold_total, &mut cold_step)
        };
        total.record(serving.as_nanos() as u64).unwrap();
        step.record(ready.as_nanos() as u64).unwrap();
    }
    println!("## trap → replacement ({faults} faults each, alternating)");
    line("warm pool: trap → replacement answered", &warm_total);
    line("cold:      trap → replacement answered", &cold_total);
    line("warm pool: take a ready spare", &warm_step);
    line("cold:      instantiate + init", &cold_step);
    println!(
        "ratio cold/warm (median, trap → answered): {:.2}",
        micros(&cold_total, 0.5) / micros(&warm_total, 0.5)
    );
}

/// Section 2: one instance, a trap every 20th call, pool 2 against pool 0.
async fn throughput(
    runtime: &Arc<HostRuntime>,
    module: &Arc<CompiledModule>,
    model: &Arc<LoadedModel>,
    body: &Bytes,
) {
    let rounds = env("HADR_BENCH_ROUNDS", 3);
    let seconds = env("HADR_BENCH_SECONDS", 2);
    let spec = InstanceSpec {
        name: "bench".into(),
        active: true,
        port: None,
        host: None,
        max_load: 10,
        concurrency: None,
        batch: None,
        model: PathBuf::new(),
        module: PathBuf::new(),
    };
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds * 2 {
        let pool = if round % 2 == 0 { 2 } else { 0 };
        let deployment = Arc::new(Deployment::new(module.clone(), model.clone(), pool, None));
        deployment.fill_pool(runtime).await.unwrap();
        let instance = Arc::new(Instance::new(
            spec.clone(),
            runtime.clone(),
            InForce::now(deployment, Source::Topology),
        ));
        instance.warm_up().await.unwrap();
        let (mut ok, mut calls) = (0u64, 0u64);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(seconds) {
            calls += 1;
            if calls % 20 == 0 {
                instance.arm(Fault::Trap).await.unwrap();
            }
            if instance.predict(Input::Body(body.clone())).await.is_ok() {
                ok += 1;
            }
        }
        let rate = ok as f64 / started.elapsed().as_secs_f64();
        rates[usize::from(pool == 0)].push(rate);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (with, without) = (median(&mut rates[0]), median(&mut rates[1]));
    println!("## throughput, one instance, a trap every 20th call ({rounds} rounds each, alternating, {seconds} s)");
    println!("warm pool of 2: {with:>9.0} answers/s");
    println!("no warm pool:   {without:>9.0} answers/s");
    println!("ratio with/without: {:.2}", with / without);
}
