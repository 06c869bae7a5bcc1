//! What the HTTP benchmarks share: starting a server process and reading its
//! ready line, knobs from the environment, medians, the repository's files.

#![allow(dead_code, reason = "each benchmark uses a different subset")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use hadr_tools::loadtest::LoadReport;

/// A server process, killed when dropped; `url` is its `/predict`.
pub struct Server {
    child: Child,
    pub url: String,
}

impl Server {
    /// Its process id (for `/proc/<pid>/stat`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` and waits for the stdout line `<ready_prefix><base url> ...`.
pub fn start(mut command: Command, ready_prefix: &str) -> Server {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting a server");
    let line = hadr_tools::spawn::first_line(&mut child);
    let base = line
        .trim()
        .strip_prefix(ready_prefix)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("server did not start: {line:?}"))
        .to_string();
    Server {
        child,
        url: format!("{base}/predict"),
    }
}

/// A numeric knob from the environment.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The two servers a benchmark compares, hadr and the native baseline,
/// from one build profile so that neither gets a better compiler: by
/// default the bench's own (`release`); with `HADR_BENCH_PROFILE=production`
/// the binaries `cargo build --profile production -p hadr-host -p
/// hadr-native-baseline` made, which is how hadr is served (whole-program
/// optimisation: see the profile in Cargo.toml).
pub fn servers() -> (PathBuf, PathBuf) {
    let own = PathBuf::from(env!("CARGO_BIN_EXE_hadr-host"));
    let (hadr, build) = match std::env::var("HADR_BENCH_PROFILE") {
        Ok(profile) if profile != "release" => {
            let dir = own.parent().and_then(Path::parent).unwrap().join(&profile);
            let build =
                format!("cargo build --profile {profile} -p hadr-host -p hadr-native-baseline");
            (dir.join("hadr-host"), build)
        }
        _ => (
            own,
            "cargo build --release -p hadr-native-baseline".to_string(),
        ),
    };
    let native = hadr.with_file_name("hadr-native-baseline");
    for exe in [&hadr, &native] {
        assert!(
            exe.is_file(),
            "{} is missing: build it first: {build}",
            exe.display()
        );
    }
    eprintln!(
        "servers under test: {} and {}",
        hadr.display(),
        native.display()
    );
    (hadr, native)
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A model's cases file.
pub fn cases(model: &str) -> serde_json::Value {
    let path = repo().join(format!("models/{model}.cases.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The median (sorts `values`).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// The median over the rounds named `name` of one figure of their reports.
pub fn median_of(results: &[(&str, LoadReport)], name: &str, f: fn(&LoadReport) -> f64) -> f64 {
    let mut v: Vec<f64> = results
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, r)| f(r))
        .collect();
    median(&mut v)
}

/// Writes the article's 2-active topology (default model and guest) into
/// `dir` with thresholds `connections` cannot reach, so a benchmark measures
/// serving, not shedding; returns its path.
pub fn unsaturable_two_active(dir: &std::path::Path) -> PathBuf {
    let topology = dir.join("2-active.json");
    std::fs::write(
        &topology,
        serde_json::json!({
            "predict1": {"status": true, "load": 0, "max_load": 64},
            "predict2": {"status": true, "load": 0, "max_load": 64},
            "predict3": {"status": false, "load": 0, "max_load": 64},
        })
        .to_string(),
    )
    .unwrap();
    topology
}

/// The load generator's runtime: one thread, so it takes one core's share
/// of the machine however many the server has.
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The load generator's runtime as `hadr-host loadtest` runs it: two
/// worker threads, unpinned, so a server that leaves CPU idle (one waiting
/// for its batches to fill) is not held back by a client stuck on one
/// thread.
pub fn two_thread_client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Checks a round's report (every request answered 200) and prints it.
pub fn checked(round: usize, name: &str, report: &LoadReport) {
    eprintln!(
        "round {round} {name:>14}: {:>8.0} req/s  p50 {:>5} µs  p99 {:>6} µs  statuses {:?}",
        report.rps, report.p50_us, report.p99_us, report.by_status
    );
    assert_eq!(report.ok, report.requests, "{name} answered non-200s");
}

/// The repository's default model and guest, loaded and compiled for
/// `runtime` (the in-process benchmarks build deployments from them).
pub fn default_model_and_guest(
    runtime: &hadr_server::sandbox::engine::HostRuntime,
) -> (
    std::sync::Arc<hadr_server::sandbox::nn::LoadedModel>,
    std::sync::Arc<hadr_server::sandbox::deployment::CompiledModule>,
) {
    let defaults = hadr_server::serve::repo_defaults();
    let model = hadr_server::sandbox::nn::LoadedModel::from_file(
        &defaults.model,
        hadr_server::sandbox::nn::DEFAULT_MODEL_BUDGET,
    )
    .unwrap();
    let module = hadr_server::sandbox::deployment::CompiledModule::from_file(
        runtime,
        &defaults.module,
        None,
    )
    .unwrap();
    (std::sync::Arc::new(model), std::sync::Arc::new(module))
}
