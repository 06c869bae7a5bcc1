//! tract's built-in `TreeEnsembleClassifier` against hadr-trees', in one run,
//! on `models/breast_cancer.onnx` (20 trees) and, when present,
//! `models/placement.onnx` (512 trees), for batches of 1, 26 (the mean batch
//! when 64 connections are served batched on 2 cores) and 64 rows; and
//! hadr-trees with its block kernel against the same crate forced to walk
//! (`HADR_TREES_KERNEL=walk`), the baseline of the bitset kernels.
//! Both plans are built the way the host builds them (symbolic batch,
//! `into_optimized`), single-threaded.
//!
//! tract's op costs ~70 ms a row on the placement forest, far too slow for
//! criterion's minimum of 10 samples at 64 rows, so that pair is timed by hand
//! with a few runs. A table of µs/row and tract/hadr ratios closes the run.
//!
//! `cargo bench -p hadr-trees --bench forest` (about a minute).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use serde_json::Value;
use tract_onnx::prelude::*;

type Plan = Arc<TypedRunnableModel>;

/// What one measurement is of: (model, implementation, rows per call).
type Key = (String, &'static str, usize);

thread_local! {
    /// Total time and calls measured for each key (criterion's warm-up included).
    static TOTALS: RefCell<BTreeMap<Key, (Duration, u64)>> = const { RefCell::new(BTreeMap::new()) };
}

fn record(key: Key, elapsed: Duration, calls: u64) {
    TOTALS.with(|t| {
        let mut t = t.borrow_mut();
        let entry = t.entry(key).or_insert((Duration::ZERO, 0));
        entry.0 += elapsed;
        entry.1 += calls;
    });
}

/// Mean seconds per call for each key.
fn means() -> BTreeMap<Key, f64> {
    TOTALS.with(|t| {
        t.borrow()
            .iter()
            .map(|(k, (d, n))| (k.clone(), d.as_secs_f64() / (*n).max(1) as f64))
            .collect()
    })
}

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// Builds a plan with `framework`, as the host does.
fn plan(framework: &tract_onnx::Onnx, path: &PathBuf, width: usize) -> Plan {
    let mut model = framework
        .clone()
        .with_ignore_value_info(true)
        .model_for_path(path)
        .unwrap();
    let batch = model.symbols.sym("batch");
    model
        .set_input_fact(0, f32::fact(&[batch.to_dim(), width.to_dim()]).into())
        .unwrap();
    model.into_optimized().unwrap().into_runnable().unwrap()
}

/// The first `n` case rows (cycled if the file has fewer) as an `[n, F]` tensor.
fn batch(cases: &[Vec<f32>], n: usize) -> Tensor {
    let width = cases[0].len();
    let flat: Vec<f32> = cases.iter().cycle().take(n).flatten().copied().collect();
    tract_ndarray::Array2::from_shape_vec((n, width), flat)
        .unwrap()
        .into_tensor()
}

/// Case rows from a cases file (`input`, or `vector` for placement).
fn case_rows(name: &str) -> Vec<Vec<f32>> {
    let text = std::fs::read(models_dir().join(format!("{name}.cases.json"))).unwrap();
    let cases: Value = serde_json::from_slice(&text).unwrap();
    cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let v = c.get("input").or_else(|| c.get("vector")).unwrap();
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn run_once(plan: &Plan, input: &Tensor) {
    black_box(plan.run(tvec!(input.clone().into())).unwrap());
}

/// Times `runs` calls by hand (after one warm-up call).
fn time_by_hand(key: Key, plan: &Plan, input: &Tensor, runs: u32) {
    run_once(plan, input);
    let start = Instant::now();
    for _ in 0..runs {
        run_once(plan, input);
    }
    let elapsed = start.elapsed();
    println!(
        "{:<40} {:>12.1} µs/call ({runs} calls, timed by hand)",
        format!("{}/{}/{}", key.0, key.1, key.2),
        elapsed.as_secs_f64() * 1e6 / runs as f64
    );
    record(key, elapsed, runs as u64);
}

/// Benches one model with both implementations.
fn bench_model(c: &mut Criterion, name: &str, slow_tract: bool, quick: bool) {
    let path = models_dir().join(format!("{name}.onnx"));
    if !path.exists() {
        println!("skipping {name}: {} not found", path.display());
        return;
    }
    let cases = case_rows(name);
    let width = cases[0].len();
    // "walk" forces the root-to-leaf walks that the bitset kernels replace
    // for blocks of rows on CPUs with AVX2 or AVX-512 (the kernel is chosen
    // when the plan is built). `HADR_TREES_KERNEL` set for the run picks the
    // kernel of "hadr" (e.g. `avx2` on an AVX-512 machine).
    let chosen = std::env::var_os("HADR_TREES_KERNEL");
    std::env::set_var("HADR_TREES_KERNEL", "walk");
    let walk = plan(&hadr_trees::onnx(), &path, width);
    match &chosen {
        Some(kernel) => std::env::set_var("HADR_TREES_KERNEL", kernel),
        None => std::env::remove_var("HADR_TREES_KERNEL"),
    }
    let plans = [
        ("tract", plan(&tract_onnx::onnx(), &path, width)),
        ("hadr", plan(&hadr_trees::onnx(), &path, width)),
        ("walk", walk),
    ];
    let mut group = c.benchmark_group(name);
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    for rows in [1usize, 26, 64] {
        let input = batch(&cases, rows);
        group.throughput(Throughput::Elements(rows as u64));
        for (which, plan) in &plans {
            let key = (name.to_string(), *which, rows);
            if *which == "tract" && slow_tract {
                let runs = if quick {
                    1
                } else if rows == 1 {
                    20
                } else {
                    2
                };
                time_by_hand(key, plan, &input, runs);
                continue;
            }
            group.bench_function(BenchmarkId::new(*which, rows), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        run_once(plan, &input);
                    }
                    let elapsed = start.elapsed();
                    record(key.clone(), elapsed, iters);
                    elapsed
                })
            });
        }
    }
    group.finish();
}

/// The closing table: µs per row for each implementation and their ratio.
fn report() {
    let means = means();
    println!(
        "\n{:<15} {:>5} {:>16} {:>16} {:>10} {:>16} {:>10}",
        "model", "rows", "tract µs/row", "hadr µs/row", "tract/hadr", "walk µs/row", "hadr/walk"
    );
    for ((model, which, rows), tract) in &means {
        if *which != "tract" {
            continue;
        }
        let hadr = means.get(&(model.clone(), "hadr", *rows));
        let walk = means.get(&(model.clone(), "walk", *rows));
        if let (Some(hadr), Some(walk)) = (hadr, walk) {
            let per_row = |secs: f64| secs * 1e6 / *rows as f64;
            println!(
                "{model:<15} {rows:>5} {:>16.2} {:>16.3} {:>9.0}x {:>16.3} {:>9.2}x",
                per_row(*tract),
                per_row(*hadr),
                tract / hadr,
                per_row(*walk),
                hadr / walk
            );
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; without it (cargo test --benches) run
    // everything once, quickly, as a smoke test.
    let quick = !std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default().configure_from_args();
    bench_model(&mut c, "breast_cancer", false, quick);
    bench_model(&mut c, "placement", true, quick);
    c.final_summary();
    report();
}
