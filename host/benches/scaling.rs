//! How serving scales with cores and concurrency: the single and 2-active
//! topologies (digits, 1 row per request, thresholds out of reach) with one
//! call at a time per instance (`--concurrency 1`), with two, and with
//! dynamic batching and one sandbox per core, against the native baseline (one model call per
//! request), on 1 and 2 cores (`taskset`) and at 16 and 64 connections, all
//! in the same run. Beside them runs the HTTP floor (the native server with
//! `--http-floor`: a fixed answer, no parsing, no model), which bounds every
//! ratio over native reachable on this machine with this client.
//!
//! Each server is a separate process pinned with `taskset`; its CPU time per
//! request comes from `/proc/<pid>/stat` (user + system) over the round, so
//! machines with more cores can extrapolate. The load generator is
//! unpinned: one thread on the 1-core runs, where it has the other core to
//! itself; two on the 2-core runs, as `hadr-host loadtest` runs it, where it
//! shares the cores with the server (one thread would leave a server that
//! waits for its batches to fill with idle CPU it could not use). On a
//! 2-core machine those 1-core runs already use both cores, so the 1-core
//! runs are measured a second time with the client (two threads, as on 2
//! cores) pinned to the server's core: the whole run on one core against the
//! whole run on two, the fair 1 → 2 core comparison here. The
//! client's CPU per request is measured too (this process's, over the
//! round): on a 2-core machine it decides how much a second core can give.
//!
//! Run: `scripts/build-guest && cargo build --release -p hadr-native-baseline &&
//!       cargo bench -p hadr-host --bench scaling`
//! The published figures compare the production builds, as served:
//! `cargo build --profile production -p hadr-host -p hadr-native-baseline &&
//!  HADR_BENCH_PROFILE=production cargo bench -p hadr-host --bench scaling`.
//! Knobs (env): HADR_BENCH_PROFILE (release), HADR_BENCH_ROUNDS (1),
//! HADR_BENCH_SECONDS (4), HADR_BENCH_MODEL (digits; or placement, the
//! article's forest).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{env, median_of, start, Server};
use hadr_tools::loadtest::{run, LoadReport, LoadSpec};

/// A server under test: its name in the table and how to start it.
struct Contender {
    name: String,
    command: Command,
    ready: &'static str,
}

/// CPU time (user + system) process `pid` has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// The native server answering a fixed answer without parsing or running
/// the model (`--http-floor`): what no server can pass on this HTTP stack,
/// machine and client, so it bounds every ratio over native that is
/// reachable here.
const FLOOR: &str = "HTTP floor (native, no model)";

/// The 1-core runs again with the client confined to the server's core:
/// the whole run on one core, against the 2-core runs' whole run on two.
/// (In the plain 1-core runs the client has the other core to itself, so on
/// a 2-core machine they already use both cores.)
const CLIENT_ON_IT: &str = "1 core(s), client on it";

/// Pins the calling thread (and the threads it starts later) to `cpus`.
fn pin(cpus: &rustix::thread::CpuSet) {
    rustix::thread::sched_setaffinity(None, cpus).expect("pinning the client");
}

/// The dynamic batching the batched contenders run with.
const BATCH: &str = r#"{"max_requests": 32, "max_delay": "200us"}"#;

/// The model served, from `HADR_BENCH_MODEL`: `digits` (the default
/// guest's MLP) or `placement` (the article's 512-tree forest, sent as rows
/// of its 21 vectorised features so that the native server can read them).
struct Model {
    name: String,
    /// The `.onnx` file, for the topology entries and the native server.
    path: PathBuf,
    /// One request's row.
    row: serde_json::Value,
}

fn model() -> Model {
    let name = std::env::var("HADR_BENCH_MODEL").unwrap_or_else(|_| "digits".into());
    let cases = common::cases(&name);
    let field = match name.as_str() {
        "digits" => "input",
        "placement" => "vector",
        other => panic!("HADR_BENCH_MODEL={other}: use digits or placement"),
    };
    Model {
        path: common::repo().join(format!("models/{name}.onnx")),
        row: cases["cases"][0][field].clone(),
        name,
    }
}

fn topology(
    dir: &Path,
    name: &str,
    entries: &[(&str, bool)],
    model: &Path,
    batch: bool,
) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    let map: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(n, active)| {
            let mut entry = serde_json::json!({
                "status": active, "load": 0, "max_load": 256, "model": model,
            });
            if batch {
                entry["batch"] = serde_json::from_str(BATCH).unwrap();
            }
            (n.to_string(), entry)
        })
        .collect();
    std::fs::write(&path, serde_json::Value::Object(map).to_string()).unwrap();
    path
}

/// Sandboxes per instance a batched topology runs with: one per core among
/// its actives (two merged calls time-slicing one core make smaller batches).
fn per_core(cores: usize, actives: usize) -> usize {
    (cores / actives).max(1)
}

/// A result's key: hadr's `label` topology on `cores` cores at
/// `connections`, unbatched at concurrency 2, batched at [`per_core`].
fn hadr_key(cores: usize, label: &str, batched: bool, connections: usize) -> String {
    let actives = if label == "single" { 1 } else { 2 };
    let (concurrency, suffix) = match batched {
        true => (per_core(cores, actives), ", batched"),
        false => (2, ""),
    };
    format!("{cores} core(s) | hadr {label}, concurrency {concurrency}{suffix} | {connections}")
}

fn main() {
    let rounds = env("HADR_BENCH_ROUNDS", 1) as usize;
    let seconds = env("HADR_BENCH_SECONDS", 4);
    let (hadr_exe, native_exe) = common::servers();
    let model = model();
    let dir = std::env::temp_dir().join(format!("hadr-scaling-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let two = [("predict1", true), ("predict2", true), ("predict3", false)];
    let topologies = [
        (
            "single",
            topology(&dir, "single", &[("predict1", true)], &model.path, false),
        ),
        (
            "2-active",
            topology(&dir, "2-active", &two, &model.path, false),
        ),
    ];
    // With how many actives share the cores.
    let batched = [
        (
            "single",
            topology(
                &dir,
                "single-batched",
                &[("predict1", true)],
                &model.path,
                true,
            ),
            1,
        ),
        (
            "2-active",
            topology(&dir, "2-active-batched", &two, &model.path, true),
            2,
        ),
    ];

    let mut contenders = Vec::new();
    for cpus in ["0", "0,1"] {
        let cores = cpus.split(',').count();
        let runs = topologies
            .iter()
            .flat_map(|(label, path)| {
                [
                    (*label, path, "1".to_string(), ""),
                    (*label, path, "2".to_string(), ""),
                ]
            })
            // Batched: one sandbox per core among the actives (per_core).
            .chain(batched.iter().map(|(label, path, actives)| {
                let per_core = per_core(cores, *actives).to_string();
                (*label, path, per_core, ", batched")
            }));
        for (label, path, concurrency, batched) in runs {
            let mut command = Command::new("taskset");
            command
                .args(["-c", cpus])
                .arg(&hadr_exe)
                .args(["serve", path.to_str().unwrap(), "--listen", "127.0.0.1:0"])
                .args([
                    "--admin-listen",
                    "127.0.0.1:0",
                    "--concurrency",
                    &concurrency,
                ])
                .arg("--state-dir")
                .arg(dir.join(format!("state-{cores}-{label}-{concurrency}{batched}")))
                .env("HADR_LOG", "warn");
            contenders.push(Contender {
                name: format!("{cores} core(s) | hadr {label}, concurrency {concurrency}{batched}"),
                command,
                ready: "hadr-host ready: router ",
            });
        }
        for (label, flags) in [("native baseline", &[][..]), (FLOOR, &["--http-floor"][..])] {
            let mut command = Command::new("taskset");
            command
                .args(["-c", cpus])
                .arg(&native_exe)
                .args(flags)
                .args(["--listen", "127.0.0.1:0", "--model"])
                .arg(&model.path);
            contenders.push(Contender {
                name: format!("{cores} core(s) | {label}"),
                command,
                ready: "native baseline ready: ",
            });
        }
    }
    let servers: Vec<(String, Server)> = contenders
        .into_iter()
        .map(|c| (c.name, start(c.command, c.ready)))
        .collect();

    let body: bytes::Bytes = serde_json::to_vec(&serde_json::json!({"inputs": [model.row]}))
        .unwrap()
        .into();
    // One client thread beside a 1-core server (it has the other core to
    // itself), two beside a 2-core one, and two on a 1-core server's core.
    let one_thread = common::client_runtime();
    let two_threads = common::two_thread_client_runtime();
    let all_cores = rustix::thread::sched_getaffinity(None).unwrap();
    let mut core_0 = rustix::thread::CpuSet::new();
    core_0.set(0);
    let on_core_0 = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(move || pin(&core_0))
        .enable_all()
        .build()
        .unwrap();
    // Every server as it is measured: the 1-core ones twice.
    let runs: Vec<(String, &Server)> = servers
        .iter()
        .flat_map(|(name, server)| {
            let shared = name
                .starts_with("1 core")
                .then(|| (name.replacen("1 core(s)", CLIENT_ON_IT, 1), server));
            std::iter::once((name.clone(), server)).chain(shared)
        })
        .collect();
    // (key, report, server CPU µs/request, client CPU µs/request)
    let mut results: Vec<(String, LoadReport, f64, f64)> = Vec::new();
    for round in 0..rounds {
        for connections in [16usize, 64] {
            for (name, server) in &runs {
                let spec = LoadSpec {
                    url: server.url.parse().unwrap(),
                    body: body.clone(),
                    connections,
                    duration: Duration::from_secs(seconds),
                    warmup: Duration::from_secs(1),
                };
                let pid = server.pid();
                let before = cpu_seconds(pid);
                // The client runs in this process (its runtimes' threads).
                let client_before = cpu_seconds(std::process::id());
                let report = if name.starts_with(CLIENT_ON_IT) {
                    pin(&core_0);
                    let report = on_core_0.block_on(run(&spec));
                    pin(&all_cores);
                    report
                } else if name.starts_with("1 core") {
                    one_thread.block_on(run(&spec))
                } else {
                    two_threads.block_on(run(&spec))
                }
                .unwrap();
                let cpu = cpu_seconds(pid) - before;
                let client_cpu = cpu_seconds(std::process::id()) - client_before;
                // The warm-up's requests are not in the report: count its
                // CPU share at the report's rate.
                let total = report.requests as f64 * (seconds as f64 + 1.0) / seconds as f64;
                let cpu_us = cpu * 1e6 / total.max(1.0);
                let client_us = client_cpu * 1e6 / total.max(1.0);
                let key = format!("{name} | {connections}");
                eprintln!(
                    "round {round} {key}: {:>7.0} req/s p99 {:>6} µs cpu {cpu_us:.1} µs/req client {client_us:.1} µs/req {:?}",
                    report.rps, report.p99_us, report.by_status
                );
                assert_eq!(report.ok, report.requests, "{key} answered non-200s");
                results.push((key, report, cpu_us, client_us));
            }
        }
    }
    let reports: Vec<(&str, LoadReport)> = results
        .iter()
        .map(|(k, r, _, _)| (k.as_str(), r.clone()))
        .collect();
    let cpu_of = |key: &str, client: bool| {
        let mut v: Vec<f64> = results
            .iter()
            .filter(|(k, _, _, _)| k == key)
            .map(|(_, _, server, client_us)| if client { *client_us } else { *server })
            .collect();
        common::median(&mut v)
    };
    println!(
        "\nPOST /predict, {}, 1 row, {rounds} x {seconds} s rounds (medians); ratio = req/s over the native baseline's on the same cores and connections\n",
        model.name
    );
    // Each round's ratio on its own: how far the machine moved during the
    // run, which a ratio of medians hides.
    let ratio_by_round = |key: &str, native: &str| {
        let rps_of = |name: &str| -> Vec<f64> {
            results
                .iter()
                .filter(|(k, ..)| k == name)
                .map(|(_, r, ..)| r.rps)
                .collect()
        };
        let ratios: Vec<f64> = rps_of(key)
            .iter()
            .zip(rps_of(native))
            .map(|(h, n)| h / n)
            .collect();
        let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{low:.2}–{high:.2}")
    };
    println!(
        "| cores | server | connections | req/s | ratio | ratio by round | p99 µs | p99 ratio | CPU µs/request | client CPU µs/request |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, _) in &runs {
        let cores = name.split(" |").next().unwrap();
        for connections in [16usize, 64] {
            let key = format!("{name} | {connections}");
            let native = format!("{cores} | native baseline | {connections}");
            let rps = median_of(&reports, &key, |r| r.rps);
            let p99 = median_of(&reports, &key, |r| r.p99_us as f64);
            let n_rps = median_of(&reports, &native, |r| r.rps);
            let n_p99 = median_of(&reports, &native, |r| r.p99_us as f64);
            println!(
                "| {name} | {connections} | {rps:.0} | {:.2} | {} | {p99:.0} | {:.2} | {:.1} | {:.1} |",
                rps / n_rps,
                ratio_by_round(&key, &native),
                p99 / n_p99,
                cpu_of(&key, false),
                cpu_of(&key, true)
            );
        }
    }
    // 2 cores over 1, in both layouts of the 1-core runs. With the client
    // on the other core, a 2-core machine's 1-core runs already use both
    // cores, so a cheap server (native, the floor) gains little from the
    // second; with the client on the server's core, the whole run goes from
    // one core to two.
    for (one_core, layout) in [
        ("1 core(s)", "client on the other core"),
        (CLIENT_ON_IT, "client on the server's cores"),
    ] {
        println!("\n2 cores / 1 core, {layout} in the 1-core runs:");
        // `one` and `two`: result keys of the 1-core (plain layout) and 2-core runs.
        let gain = |what: &str, one: String, two: String| {
            let one = one.replacen("1 core(s)", one_core, 1);
            let rps = |key: &str| median_of(&reports, key, |r| r.rps);
            println!("{what}: x{:.2}", rps(&two) / rps(&one));
        };
        for connections in [16usize, 64] {
            for server in ["native baseline", FLOOR] {
                let key = |cores: usize| format!("{cores} core(s) | {server} | {connections}");
                gain(
                    &format!("{server}, {connections} connections"),
                    key(1),
                    key(2),
                );
            }
            for label in ["single", "2-active"] {
                for batched in [false, true] {
                    let key = |cores: usize| hadr_key(cores, label, batched, connections);
                    let what = match batched {
                        true => format!("hadr {label}, batched, {connections} connections"),
                        false => format!("hadr {label}, {connections} connections"),
                    };
                    gain(&what, key(1), key(2));
                }
            }
        }
    }
    println!("\nBatching ({BATCH}) against the same topology unbatched (concurrency 2), 2 cores:");
    for label in ["single", "2-active"] {
        for connections in [16usize, 64] {
            let key = |batched: &str| hadr_key(2, label, !batched.is_empty(), connections);
            let p99 = |k: &str| median_of(&reports, k, |r| r.p99_us as f64);
            let rps = |k: &str| median_of(&reports, k, |r| r.rps);
            println!(
                "{label}, {connections} connections: req/s x{:.2}, p99 {:.0} -> {:.0} µs (x{:.2})",
                rps(&key(", batched")) / rps(&key("")),
                p99(&key("")),
                p99(&key(", batched")),
                p99(&key(", batched")) / p99(&key(""))
            );
        }
    }
    println!("\nThe ceiling: the HTTP floor over the native baseline (no server passes it here):");
    for cores in [1usize, 2] {
        for connections in [16usize, 64] {
            let rps = |server: &str| {
                let key = format!("{cores} core(s) | {server} | {connections}");
                median_of(&reports, &key, |r| r.rps)
            };
            println!(
                "{cores} core(s), {connections} connections: x{:.2}",
                rps(FLOOR) / rps("native baseline")
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
