//! Acceptance: a topology spread over processes behind a real HAProxy
//! (`hadr-host export haproxy`), each entry a `hadr-host serve --only
//! <entry>` on its own loopback address (127.0.N.2, .3, .4: separate
//! "machines" with no setup; nothing leaves 127.0.0.0/8). Under steady
//! load: `kill -9` of one active host, then of the other, fails no request
//! (the standby serves), and both rejoin; with the actives full the standby
//! takes the overflow, and with everything full the client gets HAProxy's
//! JSON 503 within the queue timeout, never a hang; a rolling restart and a
//! rolling deploy of every host fail nothing.
//!
//! HAProxy must be installed (`scripts/test` installs it as root with
//! apt-get); without it these tests fail and say so.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{cases, failures, inputs, repo, Answered, Load, TempDir};
use hadr_tools::fleet::haproxy;
use hadr_tools::fleet::local::{haproxy_exe, FleetOptions, Haproxy, LocalFleet};
use hadr_tools::spawn::Ports;
use hyper::StatusCode;

/// Generous bounds: the fleet shares two cores with the load and HAProxy.
const WITHIN: Duration = Duration::from_secs(15);

fn fleet(topology: &Path, network: u8, extra: &[&str]) -> Running {
    assert!(
        haproxy_exe().is_some(),
        "HAProxy is not installed: apt-get install -y haproxy (scripts/test does it as root)"
    );
    let dir = TempDir::new("fleet");
    let options = FleetOptions {
        exe: env!("CARGO_BIN_EXE_hadr-host").into(),
        network,
        drain: Duration::from_millis(500),
        max_body: 64 << 10,
        extra: extra.iter().map(|s| s.to_string()).collect(),
    };
    let fleet = LocalFleet::start(topology, &dir.0, &options).unwrap_or_else(|e| panic!("{e}"));
    Running { fleet, _dir: dir }
}

/// A fleet and its directory, dropped in that order: the hosts stop (and
/// write their state) before the directory is removed.
struct Running {
    fleet: LocalFleet,
    _dir: TempDir,
}

impl std::ops::Deref for Running {
    type Target = LocalFleet;
    fn deref(&self) -> &LocalFleet {
        &self.fleet
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut LocalFleet {
        &mut self.fleet
    }
}

fn digits_bodies() -> Vec<Bytes> {
    cases("digits")["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Bytes::from(inputs(&[c["input"].clone()])))
        .collect()
}

fn served_by(answers: &[Answered], instance: &str) -> usize {
    answers.iter().filter(|a| a.instance == instance).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: hadr-host processes behind a real HAProxy"]
async fn losing_both_active_hosts_fails_no_request_and_they_rejoin() {
    let mut fleet = fleet(&repo().join("topologies/fleet/2-active.json"), 21, &[]);
    // Each process serves its own entry only (`--only`).
    for host in &fleet.hosts {
        let (_, _, topology) = common::get(host.process.router, "/topology").await;
        let names: Vec<&String> = topology.as_object().unwrap().keys().collect();
        assert_eq!(names, [&host.name], "{topology}");
    }
    let load = Load::start(fleet.frontend, 3, digits_bodies());
    load.wait_for(150).await;

    tokio::task::block_in_place(|| fleet.host("predict1").process.kill());
    let one_down = load.count();
    load.wait_for(150).await;
    tokio::task::block_in_place(|| fleet.host("predict2").process.kill());
    load.wait_for(150).await;
    let both_down = load.count();
    load.wait_for(150).await;
    let restarting = load.count();

    tokio::task::block_in_place(|| {
        for name in ["predict1", "predict2"] {
            fleet.host(name).process.restart().unwrap();
            fleet.wait_up(name, WITHIN).unwrap();
        }
    });
    let rejoined = load.count();
    load.wait_for(300).await;
    let answers = load.stop().await;
    // Once the load counted every failure (stop 36), about 1 run in 8
    // lost one request here with `option redispatch 1`: HAProxy spent its 3
    // retries on the host killed that instant, before its health analysis
    // marked it down, and closed the client's connection instead of sending
    // its 503 (`SC--`, haproxy/haproxy#2375). `option redispatch 2` retries
    // the same server once after a turnaround, by when it is down; that
    // still lost one about 1 run in 8-10 (stop 41: 2 of 25, 1 of 10), and
    // `retries 5` none in 45.
    assert_eq!(
        failures(&answers),
        Vec::<String>::new(),
        "no request may fail"
    );
    let after_both = &answers[both_down + 20..restarting];
    assert!(
        after_both.iter().all(|a| a.instance == "predict3"),
        "with both actives gone the standby serves everything"
    );
    let one_gone = &answers[one_down + 20..both_down];
    assert!(
        served_by(one_gone, "predict2") > 0 && served_by(one_gone, "predict1") == 0,
        "with one active gone the other serves"
    );
    let back = &answers[rejoined + 50..];
    assert!(
        served_by(back, "predict1") > 0 && served_by(back, "predict2") > 0,
        "both actives take traffic again"
    );
    assert_eq!(
        served_by(back, "predict3"),
        0,
        "and the standby is spare again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: hadr-host processes behind a real HAProxy"]
async fn the_standby_takes_the_overflow_and_a_full_fleet_answers_503_at_once() {
    // Every entry takes one request at a time; requests are held by armed
    // hangs (`arm_hang`).
    let dir = TempDir::new("overflow");
    let path = dir.write("2-active.json", &placement_fleet(1).to_string());
    let fleet = fleet(&path, 22, &["--deadline", "4s"]);
    let body = Bytes::from(serde_json::to_vec(&cases("placement")["example"]).unwrap());
    let frontend = fleet.frontend;
    let post = || {
        let body = body.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            let (status, _, answer) = common::post(frontend, "/predict", body).await;
            (status, answer, sent.elapsed())
        })
    };
    arm_hang(&fleet, "predict1").await;
    arm_hang(&fleet, "predict2").await;
    let first = post();
    wait_loads(&fleet, |l| l[0] + l[1] == 1 && l[2] == 0).await;
    let second = post();
    wait_loads(&fleet, |l| l == [1, 1, 0]).await;

    // Both actives full: the standby answers.
    let (status, answer, _) = post().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["instance"], "predict3",
        "the overflow goes to the standby"
    );

    // Everything full: HAProxy's JSON 503 after its 1 s queue timeout.
    arm_hang(&fleet, "predict3").await;
    let third = post();
    wait_loads(&fleet, |l| l == [1, 1, 1]).await;
    let (status, answer, took) = post().await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["error"], "no_capacity", "{answer}");
    assert!(
        took < Duration::from_secs(3),
        "answered in {took:?}, not held"
    );

    for held in [first, second, third] {
        let (status, answer, took) = held.await.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "retried by the host after the hang: {answer}"
        );
        assert!(took >= Duration::from_secs(3), "it was held: {took:?}");
    }
}

/// 2-active running the article's placement model and guest, each entry
/// taking `max_load` requests at once.
fn placement_fleet(max_load: u32) -> serde_json::Value {
    let placement = repo().join("guests/target/wasm32-wasip2/release/hadr_guest_placement.wasm");
    let mut topology: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo().join("topologies/fleet/2-active.json")).unwrap(),
    )
    .unwrap();
    for entry in topology.as_object_mut().unwrap().values_mut() {
        entry["max_load"] = max_load.into();
        entry["model"] = repo()
            .join("models/placement.onnx")
            .to_string_lossy()
            .into_owned()
            .into();
        entry["module"] = placement.to_string_lossy().into_owned().into();
    }
    topology
}

/// Arms a hang of `name`'s next request through its admin API: the
/// placement guest has no `chaos` export, so the host holds the request,
/// asleep, until its deadline (then retries it once, and it succeeds).
async fn arm_hang(fleet: &LocalFleet, name: &str) {
    let host = fleet.hosts.iter().find(|h| h.name == name).unwrap();
    let auth = format!("Bearer {}", fleet.token);
    let body = serde_json::json!({"instance": name, "fault": "hang"}).to_string();
    let (status, _, answer) = common::request_with(
        host.process.admin,
        hyper::Method::POST,
        "/admin/chaos",
        body.into(),
        Some(&auth),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// The load of each host in `names`, from its own `/topology`.
async fn loads(fleet: &LocalFleet, names: &[&str]) -> Vec<u64> {
    let mut loads = Vec::new();
    for name in names {
        let h = fleet.hosts.iter().find(|h| h.name == *name).unwrap();
        let (_, _, topology) = common::get(h.process.router, "/topology").await;
        loads.push(topology[&h.name]["load"].as_u64().unwrap_or(0));
    }
    loads
}

/// Waits (bounded, polling) until every host's load satisfies `done`.
async fn wait_loads(fleet: &LocalFleet, done: impl Fn(&[u64]) -> bool) {
    let names: Vec<&str> = fleet.hosts.iter().map(|h| h.name.as_str()).collect();
    wait_loads_of(fleet, &names, done).await;
}

/// Waits (bounded, polling) until the loads of `names` satisfy `done`.
async fn wait_loads_of(fleet: &LocalFleet, names: &[&str], done: impl Fn(&[u64]) -> bool) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let now = loads(fleet, names).await;
        if done(&now) {
            return;
        }
        assert!(Instant::now() < deadline, "loads stayed {now:?}");
        tokio::time::sleep(common::POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: hadr-host processes behind a real HAProxy"]
async fn a_rolling_restart_and_a_rolling_deploy_fail_no_request() {
    let mut fleet = fleet(&repo().join("topologies/fleet/2-active.json"), 23, &[]);
    let load = Load::start(fleet.frontend, 3, digits_bodies());
    load.wait_for(150).await;
    for name in ["predict1", "predict2", "predict3"] {
        tokio::task::block_in_place(|| {
            let host = fleet.host(name);
            host.process.terminate();
            host.process.restart().unwrap();
            fleet.wait_up(name, WITHIN).unwrap();
        });
        load.wait_for(100).await;
    }
    let before_deploy = load.count();
    let old = load.snapshot().last().unwrap().version.clone();

    let deploy = tokio::task::spawn_blocking({
        let topology = fleet.topology.clone();
        let (port, token) = (fleet.admin_port.to_string(), fleet.token.clone());
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_hadr-host"))
                .args(["deploy", "--fleet"])
                .arg(&topology)
                .args(["--admin-port", &port, "--model"])
                .arg(format!(
                    "digits={}",
                    repo().join("models/digits-v2.onnx").display()
                ))
                .env("HADR_ADMIN_TOKEN", token)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        deploy.status.success(),
        "{}",
        String::from_utf8_lossy(&deploy.stderr)
    );
    load.wait_for(200).await;
    let answers = load.stop().await;
    assert_eq!(
        failures(&answers),
        Vec::<String>::new(),
        "no request may fail"
    );
    let last = &answers[answers.len() - 50..];
    let new_version = &last[0].version;
    assert_ne!(new_version, &old, "the deploy changed the version");
    assert!(
        last.iter().all(|a| &a.version == new_version),
        "every host serves it"
    );
    assert!(answers.len() > before_deploy);
    // A version the first host refuses stops the roll there: nothing changes.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_hadr-host"))
        .args(["deploy", "--fleet"])
        .arg(&fleet.topology)
        .args(["--admin-port", &fleet.admin_port.to_string(), "--model"])
        .arg(format!("digits={}", repo().join("README.md").display()))
        .env("HADR_ADMIN_TOKEN", &fleet.token)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the deploy stopped at host 127.0.23.2")
            && stderr.contains("hosts already switched: []")
            && stderr.contains("127.0.23.3")
            && stderr.contains("127.0.23.4"),
        "{stderr}"
    );
    let hosts: Vec<String> = String::from_utf8_lossy(&deploy.stdout)
        .matches("\"admin\"")
        .map(String::from)
        .collect();
    assert_eq!(
        hosts.len(),
        3,
        "one deploy per host: {}",
        String::from_utf8_lossy(&deploy.stdout)
    );
}

#[test]
#[ignore = "full suite: hadr-host processes behind a real HAProxy"]
fn the_exported_configuration_passes_haproxys_check_for_every_article_topology() {
    let haproxy = haproxy_exe().expect("HAProxy is not installed: apt-get install -y haproxy");
    let dir = TempDir::new("export");
    for topology in [
        "single",
        "2-active",
        "3-active",
        "fleet/single",
        "fleet/2-active",
        "fleet/3-active",
    ] {
        let path = repo().join("topologies").join(format!("{topology}.json"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hadr-host"))
            .args(["export", "haproxy"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{topology}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cfg = dir.write(
            &format!("{}.cfg", topology.replace('/', "-")),
            &String::from_utf8(out.stdout).unwrap(),
        );
        let check = std::process::Command::new(&haproxy)
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{topology}: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
}

/// A stand-in host on `listener` whose `/readyz` answers 200 after `delay`
/// (a host busy computing); counts the checks it answered.
fn slow_readyz(
    listener: tokio::net::TcpListener,
    delay: Duration,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = answered.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                tokio::time::sleep(delay).await;
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                if stream.write_all(ok).await.is_ok() {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    (answered, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: a real HAProxy"]
async fn a_readyz_answered_late_under_load_keeps_its_server_up() {
    let exe = haproxy_exe().expect("HAProxy is not installed: apt-get install -y haproxy");
    let dir = TempDir::new("slow-check");
    let ip = |k: u8| std::net::IpAddr::from([127, 0, 24, k]);
    // The stand-in binds its own port and keeps it: picked, let go and
    // bound again, it was once taken in between (AddrInUse).
    let listener = tokio::net::TcpListener::bind((ip(2), 0)).await.unwrap();
    let host = listener.local_addr().unwrap();
    let mut ports = Ports::default();
    let (frontend, stats) = (ports.pick(ip(1)).unwrap(), ports.pick(ip(1)).unwrap());
    let topology = dir.write(
        "slow.json",
        &serde_json::json!({"slow": {"status": true, "host": host.ip(), "port": host.port().to_string()}})
            .to_string(),
    );
    let topology = hadr_server::topology::Topology::load_shape(&topology).unwrap();
    let options = haproxy::Options {
        listen: frontend,
        max_body: 64 << 10,
        addresses: vec![],
        queue_timeout_ms: 1000,
        server_timeout_ms: 10_000,
    };
    let config = haproxy::config(&topology, &options).unwrap();
    drop(ports);
    // 300 ms: three times the check interval, well inside a 1 s check timeout.
    let (answered, server) = slow_readyz(listener, Duration::from_millis(300));
    let haproxy = Haproxy::start(&exe, &config, &dir.0, stats).unwrap();
    let watched = Instant::now();
    let mut seen = Vec::new();
    while watched.elapsed() < Duration::from_secs(2) {
        let states = tokio::task::block_in_place(|| haproxy.server_states());
        seen.extend(states.into_iter().map(|(_, _, status)| status));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(haproxy);
    server.abort();
    assert!(!seen.is_empty(), "HAProxy's stats never answered");
    // HAProxy starts a server at "UP 1/2" (one failed check from down), and
    // each passing check keeps or takes it to "UP".
    assert!(
        !seen.iter().any(|s| s.starts_with("DOWN")) && seen.last().unwrap() == "UP",
        "a check answered in 300 ms took the server down: {seen:?}"
    );
    let answered = answered.load(std::sync::atomic::Ordering::Relaxed);
    assert!(answered >= 3, "only {answered} checks were answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_counts_refused_connections_and_html_answers_as_failures() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // HAProxy's own 502 page: HTML, not JSON.
    let html = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let html_addr = html.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = html.accept().await {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let page = "<html><body><h1>502 Bad Gateway</h1></body></html>";
            let answer = format!(
                "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    // Nothing listens there once the port is released.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for (addr, expected) in [
        (html_addr, "502 Bad Gateway not JSON"),
        (refused, "no answer connect"),
    ] {
        let load = Load::start(addr, 2, digits_bodies());
        load.wait_for(10).await;
        let answers = load.stop().await;
        let failed = failures(&answers);
        assert_eq!(failed.len(), answers.len(), "{failed:?}");
        assert!(failed[0].starts_with(expected), "{failed:?}");
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: hadr-host processes behind a real HAProxy"]
async fn with_the_actives_down_the_standby_is_sent_at_most_its_max_load() {
    let dir = TempDir::new("standby-bound");
    let path = dir.write("2-active.json", &placement_fleet(1).to_string());
    let mut fleet = fleet(&path, 25, &["--deadline", "4s"]);
    tokio::task::block_in_place(|| {
        for name in ["predict1", "predict2"] {
            fleet.host(name).process.kill();
            fleet.wait_down(name, WITHIN).unwrap();
        }
        let short = Duration::from_millis(300);
        assert!(
            fleet.wait_down("predict", short).is_err(),
            "no entry is named so"
        );
    });
    let body = Bytes::from(serde_json::to_vec(&cases("placement")["example"]).unwrap());
    arm_hang(&fleet, "predict3").await;
    let frontend = fleet.frontend;
    let held = tokio::spawn(common::post(frontend, "/predict", body.clone()));
    wait_loads_of(&fleet, &["predict3"], |l| l == [1]).await;
    // The standby is at its max_load of 1: the next request waits in
    // HAProxy's queue and gets HAProxy's 503, never the host's own.
    let (status, headers, answer) = common::post(frontend, "/predict", body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(headers["retry-after"], "1", "as hadr's own 503 says");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("every server of the topology"),
        "the standby was sent a second request: {answer}"
    );
    held.abort();
}
