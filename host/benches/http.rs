//! `POST /predict` throughput and latency: hadr-host (2-active, digits)
//! against the native baseline (same model through tract behind hyper),
//! driven by the same load generator on loopback, in the same run.
//!
//! The two servers are measured in alternating rounds (hadr, native, hadr,
//! native, …) so that a noisy neighbour hurts both alike; the report gives the
//! median of each and their ratio.
//!
//! Run: `scripts/build-guest && cargo build --release -p hadr-native-baseline &&
//!       cargo bench -p hadr-host --bench http`
//! The published figures compare the production builds, as served:
//! `cargo build --profile production -p hadr-host -p hadr-native-baseline &&
//!  HADR_BENCH_PROFILE=production cargo bench -p hadr-host --bench http`.
//! Knobs (env): HADR_BENCH_PROFILE (release), HADR_BENCH_ROUNDS (3),
//! HADR_BENCH_SECONDS (5), HADR_BENCH_CONNECTIONS (16), HADR_BENCH_ROWS (1).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{env, median_of, repo, start};
use hadr_tools::loadtest::{run, LoadReport, LoadSpec};

fn body(rows: usize) -> Vec<u8> {
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("models/digits.cases.json")).unwrap())
            .unwrap();
    let inputs: Vec<_> = (0..rows)
        .map(|i| cases["cases"][i]["input"].clone())
        .collect();
    serde_json::to_vec(&serde_json::json!({ "inputs": inputs })).unwrap()
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let rounds = env("HADR_BENCH_ROUNDS", 3) as usize;
    let seconds = env("HADR_BENCH_SECONDS", 5);
    let connections = env("HADR_BENCH_CONNECTIONS", 16) as usize;
    let rows = env("HADR_BENCH_ROWS", 1) as usize;

    let (hadr_exe, native_exe) = common::servers();

    // 2-active with free ports and a threshold that 16 connections cannot
    // saturate: this measures the serving path, not load shedding.
    let dir = std::env::temp_dir().join(format!("hadr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let topology = common::unsaturable_two_active(&dir);

    let hadr_with = |offload_above: &str| {
        let mut cmd = Command::new(&hadr_exe);
        cmd.args([
            "serve",
            topology.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--offload-above", offload_above])
        .args(["--admin-listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.join(format!("state-{offload_above}")))
        .env("HADR_LOG", "warn");
        start(cmd, "hadr-host ready: router ")
    };
    // The default keeps short predictions on the request's task; the variant
    // moves every prediction to the blocking pool, to show what a hop costs.
    let hadr = hadr_with("1ms");
    let hadr_offload = hadr_with("0s");
    let mut native_cmd = Command::new(&native_exe);
    native_cmd.args(["--listen", "127.0.0.1:0"]);
    let native = start(native_cmd, "native baseline ready: ");

    let body = body(rows);
    let client = common::client_runtime();
    let spec = |url: &str| LoadSpec {
        url: url.parse().unwrap(),
        body: body.clone().into(),
        connections,
        duration: Duration::from_secs(seconds),
        warmup: Duration::from_secs(1),
    };
    let mut results: Vec<(&str, LoadReport)> = Vec::new();
    for round in 0..rounds {
        for (name, server) in [
            ("hadr", &hadr),
            ("native", &native),
            ("hadr-offload", &hadr_offload),
        ] {
            let report = client.block_on(run(&spec(&server.url))).unwrap();
            common::checked(round, name, &report);
            results.push((name, report));
        }
    }
    let pick = |name: &str, f: fn(&LoadReport) -> f64| median_of(&results, name, f);
    let (h_rps, n_rps) = (pick("hadr", |r| r.rps), pick("native", |r| r.rps));
    let (h_p50, n_p50) = (
        pick("hadr", |r| r.p50_us as f64),
        pick("native", |r| r.p50_us as f64),
    );
    let (h_p99, n_p99) = (
        pick("hadr", |r| r.p99_us as f64),
        pick("native", |r| r.p99_us as f64),
    );
    let o_rps = pick("hadr-offload", |r| r.rps);
    let o_p50 = pick("hadr-offload", |r| r.p50_us as f64);
    let o_p99 = pick("hadr-offload", |r| r.p99_us as f64);
    println!("\nPOST /predict, {rows} row(s), {connections} connections, {rounds} x {seconds} s rounds (medians)\n");
    println!("| server | req/s | p50 µs | p99 µs |");
    println!("|---|---|---|---|");
    println!("| hadr-host 2-active (wasm) | {h_rps:.0} | {h_p50:.0} | {h_p99:.0} |");
    println!("| native baseline (tract + hyper) | {n_rps:.0} | {n_p50:.0} | {n_p99:.0} |");
    println!(
        "| hadr-host, every call on the blocking pool (--offload-above 0s) | {o_rps:.0} | {o_p50:.0} | {o_p99:.0} |"
    );
    println!(
        "| **ratio hadr / native** | **{:.2}** | {:.2} | {:.2} |",
        h_rps / n_rps,
        h_p50 / n_p50,
        h_p99 / n_p99
    );
    println!(
        "| ratio offloaded / native | {:.2} | {:.2} | {:.2} |",
        o_rps / n_rps,
        o_p50 / n_p50,
        o_p99 / n_p99
    );
    let _ = std::fs::remove_dir_all(&dir);
}
