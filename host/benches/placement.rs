//! The article's own model (`models/placement.onnx`, a 512-tree forest) in
//! hadr, measured two ways:
//!
//! - `model`: one prediction through hadr's tract backend (tract with
//!   hadr-trees' ensemble ops, the plan every sandbox shares), one row and a
//!   batch of 64, each call timed on its own. Printed as one JSON line;
//!   `scripts/bench-placement` runs it in alternation with onnxruntime on the
//!   same rows and reports the ratio.
//! - `http`: `POST /predict` throughput of the 2-active topology serving the
//!   placement model (the article's body, a list of one record, through the
//!   placement guest) against the same topology serving digits (one row), in
//!   alternating rounds of the same load generator.
//!
//! Run: `scripts/build-guest && cargo bench -p hadr-host --bench placement`
//! Knobs (env): HADR_BENCH_PART (all | model | http), HADR_BENCH_ITERS
//! (20000), HADR_BENCH_ROUNDS (3), HADR_BENCH_SECONDS (5),
//! HADR_BENCH_CONNECTIONS (16).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{cases, env, median, median_of, repo, start, Server};
use hadr_server::sandbox::nn::LoadedModel;
use hadr_tools::loadtest::{run, LoadReport, LoadSpec};

/// Median and mean of `calls` timed calls of `f`, after a warm-up, in µs.
fn time_calls(calls: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..calls.min(2000) {
        f();
    }
    let mut times: Vec<f64> = (0..calls)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    (median(&mut times), mean)
}

/// One row and 64 rows through the shared plan, as in `bench_onnxruntime.py`.
fn model_part() {
    let iters = env("HADR_BENCH_ITERS", 20_000) as usize;
    let model = LoadedModel::from_file(
        &repo().join("models/placement.onnx"),
        hadr_server::sandbox::nn::DEFAULT_MODEL_BUDGET,
    )
    .unwrap();
    let doc = cases("placement");
    let vectors: Vec<Vec<f32>> = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| serde_json::from_value(c["vector"].clone()).unwrap())
        .collect();
    let one = vectors[0].clone();
    let rows = 64;
    let batch: Vec<f32> = (0..rows)
        .flat_map(|i| vectors[i % vectors.len()].clone())
        .collect();
    let graph = &model.graph;
    let (one_median, one_mean) = time_calls(iters, || {
        graph.run(1, &one).unwrap();
    });
    let calls = (iters / rows).max(20);
    let (b_median, b_mean) = time_calls(calls, || {
        graph.run(rows, &batch).unwrap();
    });
    let result = serde_json::json!({
        "runtime": "hadr tract backend (tract 0.23.9 + hadr-trees)",
        "model": "placement.onnx",
        "threads": 1,
        "single_row": {"iters": iters, "median_us": one_median, "mean_us": one_mean},
        "batch": {
            "rows": rows,
            "iters": calls,
            "median_us_per_row": b_median / rows as f64,
            "mean_us_per_row": b_mean / rows as f64,
        },
    });
    println!("{result}");
}

/// `hadr-host serve` on a 2-active topology of `model` with `module`, its
/// thresholds raised so that the load measures serving, not shedding.
fn serve(dir: &Path, model: &str, module: Option<PathBuf>) -> Server {
    let entry = |active: bool| {
        let mut e = serde_json::json!({"status": active, "load": 0, "max_load": 64,
            "model": repo().join(format!("models/{model}.onnx"))});
        if let Some(m) = &module {
            e["module"] = serde_json::json!(m);
        }
        e
    };
    let topology = dir.join(format!("{model}.json"));
    let shape = serde_json::json!({
        "predict1": entry(true), "predict2": entry(true), "predict3": entry(false),
    });
    std::fs::write(&topology, shape.to_string()).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_hadr-host"));
    command
        .arg("serve")
        .arg(&topology)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(dir.join(format!("state-{model}")))
        .env("HADR_LOG", "warn");
    start(command, "hadr-host ready: router ")
}

fn http_part() {
    let rounds = env("HADR_BENCH_ROUNDS", 3) as usize;
    let seconds = env("HADR_BENCH_SECONDS", 5);
    let connections = env("HADR_BENCH_CONNECTIONS", 16) as usize;
    let dir = std::env::temp_dir().join(format!("hadr-bench-placement-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let guest = repo().join("guests/target/wasm32-wasip2/release/hadr_guest_placement.wasm");
    let placement = serve(&dir, "placement", Some(guest));
    let digits = serve(&dir, "digits", None);
    let placement_body = serde_json::to_vec(&cases("placement")["example"]).unwrap();
    let digits_body =
        serde_json::to_vec(&serde_json::json!({"inputs": [cases("digits")["cases"][0]["input"]]}))
            .unwrap();
    let client = common::client_runtime();
    let mut results: Vec<(&str, LoadReport)> = Vec::new();
    for round in 0..rounds {
        for (name, server, body) in [
            ("digits", &digits, &digits_body),
            ("placement", &placement, &placement_body),
        ] {
            let spec = LoadSpec {
                url: server.url.parse().unwrap(),
                body: body.clone().into(),
                connections,
                duration: Duration::from_secs(seconds),
                warmup: Duration::from_secs(1),
            };
            let report = client.block_on(run(&spec)).unwrap();
            common::checked(round, name, &report);
            results.push((name, report));
        }
    }
    let pick = |name: &str, f: fn(&LoadReport) -> f64| median_of(&results, name, f);
    println!("\n2-active, POST /predict, {connections} connections, {rounds} x {seconds} s rounds (medians)\n");
    println!("| model | req/s | p50 µs | p99 µs |");
    println!("|---|---|---|---|");
    for name in ["digits", "placement"] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} |",
            pick(name, |r| r.rps),
            pick(name, |r| r.p50_us as f64),
            pick(name, |r| r.p99_us as f64)
        );
    }
    println!(
        "| **ratio placement / digits** | **{:.2}** | | |",
        pick("placement", |r| r.rps) / pick("digits", |r| r.rps)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let part = std::env::var("HADR_BENCH_PART").unwrap_or_else(|_| "all".into());
    if matches!(part.as_str(), "all" | "model") {
        model_part();
    }
    if matches!(part.as_str(), "all" | "http") {
        http_part();
    }
}
