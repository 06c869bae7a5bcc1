//! The Open Inference Protocol against `/predict`, side by side: the same
//! hadr-host (2-active, digits) answering 1-row requests written three ways
//! (hadr's `/predict` JSON, v2 infer with binary tensors both ways, v2 infer
//! with JSON tensors), in alternating rounds so a noisy neighbour hurts all
//! alike. Reports the median of each and its ratio to `/predict`.
//!
//! Run: `scripts/build-guest && cargo bench -p hadr-host --bench v2`
//! Knobs (env): HADR_BENCH_ROUNDS (3), HADR_BENCH_SECONDS (5),
//! HADR_BENCH_CONNECTIONS (16), HADR_BENCH_ROWS (1).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{env, median_of, repo, start};
use hadr_tools::loadtest::payload::{requests, Protocol};
use hadr_tools::loadtest::{run_plan, LoadReport, Model, Plan};

fn main() {
    let rounds = env("HADR_BENCH_ROUNDS", 3) as usize;
    let seconds = env("HADR_BENCH_SECONDS", 5);
    let connections = env("HADR_BENCH_CONNECTIONS", 16) as usize;
    let rows = env("HADR_BENCH_ROWS", 1) as usize;

    let dir = std::env::temp_dir().join(format!("hadr-bench-v2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let topology = common::unsaturable_two_active(&dir);
    let mut cmd = Command::new(PathBuf::from(env!("CARGO_BIN_EXE_hadr-host")));
    cmd.args([
        "serve",
        topology.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
    .args(["--admin-listen", "127.0.0.1:0", "--state-dir"])
    .arg(dir.join("state"))
    .env("HADR_LOG", "warn");
    let hadr = start(cmd, "hadr-host ready: router ");
    let base = hadr.url.trim_end_matches("/predict").to_string();

    let cases = repo().join("models/digits.cases.json");
    let ways = [
        (
            "/predict JSON",
            Protocol::Predict,
            format!("{base}/predict"),
        ),
        (
            "v2 binary",
            Protocol::V2Binary,
            format!("{base}/v2/models/digits/infer"),
        ),
        (
            "v2 JSON",
            Protocol::V2Json,
            format!("{base}/v2/models/digits/infer"),
        ),
    ];
    let client = common::client_runtime();
    let mut results: Vec<(&str, LoadReport)> = Vec::new();
    for round in 0..rounds {
        for (name, protocol, url) in &ways {
            let plan = Plan {
                url: url.parse().unwrap(),
                bodies: requests(&cases, rows, *protocol, "float_input").unwrap(),
                model: Model::Closed {
                    users: connections,
                    spawn_rate: 0.0,
                },
                duration: Duration::from_secs(seconds),
                warmup: Duration::from_secs(1),
                timeout: Duration::from_secs(30),
            };
            let report = client.block_on(run_plan(&plan, None)).unwrap();
            common::checked(round, name, &report);
            results.push((name, report));
        }
    }
    println!("\n{rows} row(s) per request, {connections} connections, {rounds} x {seconds} s rounds (medians), hadr-host 2-active digits\n");
    println!("| request | req/s | p50 µs | p99 µs | req/s vs /predict |");
    println!("|---|---|---|---|---|");
    let baseline = median_of(&results, "/predict JSON", |r| r.rps);
    for (name, _, _) in &ways {
        let rps = median_of(&results, name, |r| r.rps);
        let p50 = median_of(&results, name, |r| r.p50_us as f64);
        let p99 = median_of(&results, name, |r| r.p99_us as f64);
        println!(
            "| {name} | {rps:.0} | {p50:.0} | {p99:.0} | {:.2} |",
            rps / baseline
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
