//! Acceptance: state survives `kill -9`. A host killed under load and
//! restarted on the same state directory, five times in a row, comes back
//! with its promoted standby still promoted, counters at least what was
//! persisted before the kill, and the same deployment. A clean stop loses
//! nothing; a conflict between file and state is explained; a damaged state
//! directory is refused with a way out.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{cases, chaos, inputs, post, try_post, with_fields, Host, TempDir};
use hyper::StatusCode;

/// 2-active with a threshold of one request per instance, so a few
/// concurrent requests are enough to promote the standby.
fn topology() -> String {
    with_fields("2-active.json", &[("max_load", 1.into())])
}

const NAMES: [&str; 3] = ["predict1", "predict2", "predict3"];

fn one_row() -> Bytes {
    inputs(&[cases("digits")["cases"][0]["input"].clone()]).into()
}

/// Concurrent big batches until the standby is promoted (bounded).
async fn promote_the_standby(host: &Host) {
    let row = cases("digits")["cases"][0]["input"].clone();
    let big = Bytes::from(inputs(&vec![row; 10_000]));
    for _ in 0..20 {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let (addr, body) = (host.router, big.clone());
            tasks.spawn(async move { try_post(addr, body).await });
        }
        while tasks.join_next().await.is_some() {}
        if host.topology().await["predict3"]["role"] == "promoted" {
            return;
        }
    }
    panic!("the standby was never promoted");
}

/// Clients posting one row each, in a loop, until stopped; counts 200s.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    tasks: tokio::task::JoinSet<()>,
}

impl Load {
    fn start(host: &Host, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (addr, stop, ok) = (host.router, stop.clone(), ok.clone());
            tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match try_post(addr, one_row()).await {
                        Some(StatusCode::OK) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(_) => {}
                        None => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            });
        }
        Self { stop, ok, tasks }
    }

    /// Waits (bounded) until `n` more requests have succeeded.
    async fn wait_for(&self, n: usize) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ok.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the load stopped succeeding");
            tokio::time::sleep(common::POLL).await;
        }
    }

    async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Per instance: served and traps.
fn counters(topology: &serde_json::Value) -> HashMap<&'static str, (u64, u64)> {
    NAMES
        .iter()
        .map(|n| {
            let i = &topology[*n];
            (
                *n,
                (i["served"].as_u64().unwrap(), i["traps"].as_u64().unwrap()),
            )
        })
        .collect()
}

/// Posts until the first 200 (bounded); returns how long after `since` it came.
async fn first_ok(host: &Host, since: Instant) -> Duration {
    for _ in 0..1000 {
        if try_post(host.router, one_row()).await == Some(StatusCode::OK) {
            return since.elapsed();
        }
    }
    panic!("the restarted host never answered 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: kills and restarts hadr-host processes"]
async fn kill_9_under_load_five_times_loses_no_persisted_state() {
    let state = TempDir::new("recovery");
    let topology = topology();
    let extra = ["--max-body", "16MiB", "--deadline", "30s"];
    let mut floor: HashMap<&str, (u64, u64)> = HashMap::new();
    let mut version = None;
    for round in 1..=5 {
        let started = Instant::now();
        let mut host = Host::start_in(&topology, Some(&state.0), &extra);
        let ready = first_ok(&host, started).await;
        let t = host.topology().await;
        if round == 1 {
            promote_the_standby(&host).await;
            version = Some(t["predict1"]["version"].clone());
        } else {
            assert_eq!(t["predict3"]["role"], "promoted", "round {round}: {t}");
            assert_eq!(t["predict3"]["status"], true);
            assert!(t["predict3"]["promotions"].as_u64() >= Some(1), "{t}");
            for name in NAMES {
                assert_eq!(Some(&t[name]["version"]), version.as_ref(), "{name}");
                let (served, traps) = counters(&t)[name];
                let (was_served, was_traps) = floor[name];
                assert!(
                    served >= was_served && traps >= was_traps,
                    "round {round}: {name} came back with served {served}, traps {traps}; \
                     at least {was_served} and {was_traps} were persisted"
                );
            }
        }
        let load = Load::start(&host, 3);
        load.wait_for(30).await;
        // Everything up to this snapshot is durable once the chaos call is
        // acknowledged: that is the floor the next round must find.
        let snapshot = host.topology().await;
        let (status, _, body) = chaos(&host, "predict1", "trap").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        floor = counters(&snapshot);
        load.wait_for(30).await;
        host.child().kill().unwrap();
        host.child().wait().unwrap();
        load.stop().await;
        let served: u64 = floor.values().map(|c| c.0).sum();
        eprintln!(
            "round {round}: first 200 {:.0} ms after spawn; killed with {served} served persisted",
            ready.as_secs_f64() * 1e3
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: kills and restarts hadr-host processes"]
async fn a_clean_stop_saves_every_counter() {
    let state = TempDir::new("clean-stop");
    let topology = with_fields("2-active.json", &[]);
    let mut host = Host::start_in(&topology, Some(&state.0), &["--state-interval", "1h"]);
    for _ in 0..25 {
        let (status, _, body) = post(host.router, "/predict", one_row()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let pid = host.pid().to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(term.success());
    assert_eq!(host.child().wait().unwrap().code(), Some(0));
    // With an hour between periodic writes, only the final flush can have
    // saved these.
    let host = Host::start_in(&topology, Some(&state.0), &[]);
    let t = host.topology().await;
    let served: u64 = NAMES
        .iter()
        .map(|n| t[*n]["served"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 25, "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: kills and restarts hadr-host processes"]
async fn the_file_wins_a_role_conflict_and_the_log_says_so() {
    let state = TempDir::new("conflict");
    let host = Host::start_in(&with_fields("2-active.json", &[]), Some(&state.0), &[]);
    drop(host);
    // predict1 becomes a standby in the file, predict3 active.
    let mut file: serde_json::Value =
        serde_json::from_str(&with_fields("2-active.json", &[])).unwrap();
    file["predict1"]["status"] = false.into();
    file["predict3"]["status"] = true.into();
    let log = state.0.join("second-start.log");
    let host = Host::start_with(&file.to_string(), Some(&state.0), Some(&log), &[]);
    let t = host.topology().await;
    assert_eq!(t["predict1"]["role"], "standby", "{t}");
    assert_eq!(t["predict3"]["role"], "active", "{t}");
    drop(host);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains(
            "instance `predict1` was active, the topology file makes it a standby: the file wins"
        ),
        "{log}"
    );
    assert!(log.contains("instance `predict3` was a standby"), "{log}");
}

#[test]
#[ignore = "full suite: kills and restarts hadr-host processes"]
fn a_damaged_state_directory_is_refused_with_a_way_out() {
    let dir = TempDir::new("damaged");
    let state = dir.0.join("state");
    std::fs::create_dir_all(state.join("db")).unwrap();
    for file in ["conf", "db"] {
        std::fs::write(state.join("db").join(file), vec![0xA5u8; 4096]).unwrap();
    }
    let topology = dir.write("topology.json", &with_fields("single.json", &[]));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hadr-host"))
        .args(["serve", topology.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("state directory {}", state.join("db").display())),
        "{stderr}"
    );
    assert!(stderr.contains("move the directory aside"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        Path::new(&state).exists(),
        "the damaged directory must be left for inspection"
    );
}

/// What a `kill -9` leaves half written in `blobs/` and `compiled/`, and
/// blobs no deployment uses, are removed at the next start; what is in force
/// stays and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: kills and restarts hadr-host processes"]
async fn a_restart_removes_half_written_and_unused_files() {
    let state = TempDir::new("garbage");
    let topology = with_fields("2-active.json", &[]);
    let host = Host::start_in(&topology, Some(&state.0), &[]);
    drop(host); // kill -9
    let (blobs, compiled) = (state.0.join("blobs"), state.0.join("compiled"));
    let in_force = |dir: &Path| std::fs::read_dir(dir).unwrap().count();
    let (kept_blobs, kept_compiled) = (in_force(&blobs), in_force(&compiled));
    assert!(
        kept_blobs >= 2 && kept_compiled >= 1,
        "{kept_blobs} blobs, {kept_compiled} compiled"
    );
    let junk = [
        blobs.join(format!(".{}.4242.0.tmp", "a".repeat(64))),
        blobs.join("b".repeat(64)),
        compiled.join(format!("{}-0123456789abcdef.4242.tmp", "c".repeat(64))),
        compiled.join(format!("{}-0123456789abcdef.cwasm", "d".repeat(64))),
    ];
    for path in &junk {
        std::fs::write(path, b"left over").unwrap();
    }
    let host = Host::start_in(&topology, Some(&state.0), &[]);
    for path in &junk {
        assert!(!path.exists(), "{} is still there", path.display());
    }
    assert_eq!(in_force(&blobs), kept_blobs);
    assert_eq!(in_force(&compiled), kept_compiled);
    let (status, _, body) = post(host.router, "/predict", one_row()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
