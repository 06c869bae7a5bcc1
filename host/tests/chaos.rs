//! Real faults inside a guest, armed through the admin listener: the faulted
//! sandbox is replaced from the warm pool and the request is retried, so the
//! client never sees the fault; a request that faults twice gets its own error.

mod common;

use common::{cases, chaos, free_ports, get, inputs, post, request_with, Host, ADMIN_TOKEN};
use hyper::{Method, StatusCode};

fn row() -> Vec<u8> {
    inputs(&[cases("digits")["cases"][0]["input"].clone()])
}

/// The background clients' answers: how many were 200, and the others.
async fn tally<F: 'static>(mut clients: tokio::task::JoinSet<(u64, Vec<F>)>) -> (u64, Vec<F>) {
    let (mut ok, mut failed) = (0, Vec::new());
    while let Some(result) = clients.join_next().await {
        let (o, f) = result.unwrap();
        ok += o;
        failed.extend(f);
    }
    (ok, failed)
}

/// `n` predictions through the router, each answered with 200.
async fn all_answered(host: &Host, n: usize, context: &str) {
    for _ in 0..n {
        let (s, _, b) = post(host.router, "/predict", row()).await;
        assert_eq!(s, StatusCode::OK, "{context}: {b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_is_replaced_and_retried_without_the_client_noticing() {
    let host = Host::start(&free_ports("2-active.json"), &["--deadline", "200ms"]);
    for (k, fault) in ["trap", "hang", "oom"].into_iter().enumerate() {
        for name in ["predict1", "predict2"] {
            let (s, _, b) = chaos(&host, name, fault).await;
            assert_eq!(s, StatusCode::OK, "{b}");
            assert_eq!(b["armed"], fault);
        }
        // Both actives are armed: the first request faults on one and is
        // retried on the other (which faults too), so send two: the second
        // finds both replaced. Every client answer is checked.
        for _ in 0..4 {
            let (s, _, b) = post(host.router, "/predict", row()).await;
            if s != StatusCode::OK {
                assert!(
                    b["message"]
                        .as_str()
                        .unwrap()
                        .contains("failed on two instances"),
                    "{fault}: {b}"
                );
            }
        }
        let t = host.topology().await;
        for name in ["predict1", "predict2"] {
            assert_eq!(t[name]["traps"], k as u64 + 1, "{fault}: {t}");
            assert_eq!(t[name]["respawns"], k as u64 + 1, "{fault}: {t}");
        }
    }
    let (s, _, _) = get(host.router, "/healthz").await;
    assert_eq!(s, StatusCode::OK);
    // The replacements came from the warm pool, initialised for no instance
    // in particular: each answers as the instance whose place it took.
    for name in ["predict1", "predict2"] {
        let (s, _, b) = post(host.instance_addr(name).await, "/predict", row()).await;
        assert_eq!(
            (s, b["instance"].as_str()),
            (StatusCode::OK, Some(name)),
            "{b}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_fault_is_invisible_to_the_client() {
    // A deadline long enough that growing to the memory cap (64 MiB) always
    // hits the cap first, even on a loaded machine.
    let host = Host::start(&free_ports("2-active.json"), &["--deadline", "1s"]);
    for fault in ["trap", "hang", "oom"] {
        let (s, _, b) = chaos(&host, "predict1", fault).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        all_answered(&host, 3, fault).await;
    }
    let t = host.topology().await;
    assert_eq!(t["predict1"]["traps"], 3, "{t}");
    assert_eq!(t["predict1"]["respawns"], 3, "{t}");
    // The last fault was the oom: a trap, with when it happened.
    let last = &t["predict1"]["last_fault"];
    let error = last["error"].as_str().unwrap();
    assert!(error.contains("trapped: wasm trap"), "{t}");
    // The public view names the trap, not the guest's internals.
    assert!(!error.contains("backtrace") && !error.contains('\n'), "{t}");
    assert!(last["at"].as_str().unwrap().ends_with('Z'), "{t}");
    assert!(t["predict2"].get("last_fault").is_none(), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_faults_twice_gets_its_own_error_and_the_rest_keep_serving() {
    let host = Host::start(&free_ports("2-active.json"), &[]);
    for name in ["predict1", "predict2"] {
        let (s, _, _) = chaos(&host, name, "trap").await;
        assert_eq!(s, StatusCode::OK);
    }
    // Whichever active it reaches traps, and so does the retry on the other.
    let (s, _, b) = post(host.router, "/predict", row()).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{b}");
    assert_eq!(b["error"], "instance_fault");
    let message = b["message"].as_str().unwrap();
    assert!(
        message.contains("failed on two instances (predict"),
        "{message}"
    );
    // Bounded: both were replaced from the pool and serve the next requests.
    all_answered(&host, 4, "after both faults").await;
    let t = host.topology().await;
    assert_eq!(t["predict1"]["respawns"], 1, "{t}");
    assert_eq!(t["predict2"]["respawns"], 1, "{t}");
    assert_eq!(
        t["predict3"]["role"], "standby",
        "a fault is no reason to promote: {t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_without_the_token_are_refused_and_change_nothing() {
    let host = Host::start(&free_ports("single.json"), &[]);
    let body = serde_json::json!({"instance": "predict1", "fault": "trap"}).to_string();
    for auth in [None, Some("Bearer wrong"), Some("test-admin-token")] {
        let (s, h, b) = request_with(
            host.admin,
            Method::POST,
            "/admin/chaos",
            body.clone().into(),
            auth,
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{auth:?}: {b}");
        assert_eq!(h["www-authenticate"], "Bearer");
    }
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let (s, _, b) = request_with(
        host.admin,
        Method::GET,
        "/admin/deployments",
        Default::default(),
        Some(&format!("bearer {ADMIN_TOKEN}")),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Nothing was armed: the next prediction succeeds.
    let row = inputs(&[cases("digits")["cases"][0]["input"].clone()]);
    let (s, _, b) = post(host.router, "/predict", row).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // The public listener has no admin route.
    let (s, _, _) = post(host.router, "/admin/chaos", body).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, b) = chaos(&host, "nobody", "trap").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let (s, _, b) = chaos(&host, "predict1", "meteor").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
}

/// Issue 3, acceptance 1: steady load from 8 clients while 200 faults of all
/// three kinds are injected across the instances, one after another: no
/// client request fails, and every fault is counted and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: 200 faults under load take tens of seconds"]
async fn two_hundred_faults_under_load_fail_no_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    // A deadline no healthy call of the background load comes near on a
    // loaded machine, so the traps counted are exactly the faults armed.
    let host = Host::start(&free_ports("3-active.json"), &["--deadline", "250ms"]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (addr, stop) = (host.router, stop.clone());
        clients.spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            // Bounded: stops when the drill ends, or after 20 000 requests.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (s, _, b) = post(addr, "/predict", row()).await;
                if s == StatusCode::OK {
                    ok += 1;
                } else {
                    failed.push((s, b));
                }
            }
            (ok, failed)
        });
    }
    let names = ["predict1", "predict2", "predict3"];
    let faults = ["trap", "hang", "oom"];
    let traps = |t: &serde_json::Value| -> u64 {
        names.iter().map(|n| t[n]["traps"].as_u64().unwrap()).sum()
    };
    for k in 0..200u64 {
        let (s, _, b) = chaos(&host, names[k as usize % 3], faults[(k / 3) as usize % 3]).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        // Wait (bounded) until the load has run into this fault before
        // arming the next.
        let bound = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while traps(&host.topology().await) < k + 1 {
            assert!(tokio::time::Instant::now() < bound, "fault {k} never fired");
            tokio::time::sleep(common::POLL).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = tally(clients).await;
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(3)]
    );
    let t = host.topology().await;
    let fired: u64 = names
        .iter()
        .map(|n| t[n]["faults_fired"].as_u64().unwrap())
        .sum();
    assert_eq!(fired, 200, "every armed fault fired: {t}");
    assert_eq!(traps(&t), 200, "{t}");
    for n in names {
        assert_eq!(t[n]["respawns"], t[n]["traps"], "every fault replaced: {t}");
        assert!(t[n]["traps"].as_u64().unwrap() >= 66, "{t}");
    }
    eprintln!("200 faults under load: {ok} requests, all answered 200");
}

/// Without HADR_ADMIN_TOKEN, a token is generated into the state directory
/// with mode 0600, kept across restarts, and is the one the host accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: restarts a hadr-host process"]
async fn a_generated_admin_token_is_private_and_kept() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    let dir = common::TempDir::new("token");
    let topology = dir.write("t.json", &free_ports("single.json"));
    let state = dir.0.join("state");
    let start = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hadr-host"))
            .args([
                "serve",
                topology.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args([
                "--admin-listen",
                "127.0.0.1:0",
                "--state-dir",
                state.to_str().unwrap(),
            ])
            .env_remove("HADR_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let admin: std::net::SocketAddr = line
            .split_whitespace()
            .last()
            .unwrap()
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        (child, admin)
    };
    let (mut first, _) = start();
    let path = state.join("admin-token");
    let token = std::fs::read_to_string(&path).unwrap();
    assert_eq!(token.len(), 64, "256 random bits in hex");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    first.kill().unwrap();
    first.wait().unwrap();

    let (mut second, admin) = start();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        token,
        "the token must survive a restart"
    );
    let body = serde_json::json!({"instance": "predict1", "fault": "trap"}).to_string();
    let auth = format!("Bearer {token}");
    let (s, _, b) = request_with(
        admin,
        Method::POST,
        "/admin/chaos",
        body.into(),
        Some(&auth),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    second.kill().unwrap();
    second.wait().unwrap();

    // A token others can read is refused, saying how to fix it.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_hadr-host"))
        .args([
            "serve",
            topology.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--admin-listen", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .env_remove("HADR_ADMIN_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("readable by others") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("readable by others").count(),
        1,
        "said once: {stderr}"
    );
    // An empty token file is replaced by a new private token.
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (mut third, _) = start();
    let renewed = std::fs::read_to_string(&path).unwrap();
    assert_eq!(renewed.len(), 64, "{renewed:?}");
    assert_ne!(renewed, token);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    third.kill().unwrap();
    third.wait().unwrap();
}

/// Issue 3, acceptance 2: a query of death (an input the guest always traps
/// on, or one it always spins on past the deadline) gets its own error
/// within the deadline plus a margin, costs the two sandboxes it hit (both
/// respawned), and other clients keep getting 200 throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_of_death_gets_its_own_error_and_the_others_keep_serving() {
    use common::{hanging_row, safe_and_deadly_rows};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let topology = common::with_faulty_guest("3-active.json", &[]);
    let deadline = Duration::from_millis(250);
    let host = Host::start(&topology, &["--deadline", "250ms"]);
    let (safe, deadly) = safe_and_deadly_rows();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (addr, stop, body) = (
            host.router,
            stop.clone(),
            inputs(std::slice::from_ref(&safe)),
        );
        clients.spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (s, _, b) = post(addr, "/predict", body.clone()).await;
                if s == StatusCode::OK {
                    ok += 1;
                } else {
                    failed.push((s, b));
                }
            }
            (ok, failed)
        });
    }
    let respawns = |t: &serde_json::Value| -> u64 {
        ["predict1", "predict2", "predict3"]
            .iter()
            .map(|n| t[n]["respawns"].as_u64().unwrap())
            .sum()
    };
    // Always traps: the guest's own bug on this input.
    let before = respawns(&host.topology().await);
    let started = Instant::now();
    let (s, _, b) = post(host.router, "/predict", inputs(&[deadly])).await;
    let took = started.elapsed();
    assert_own_error(s, &b, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(respawns(&host.topology().await), before + 2);
    eprintln!("always-trapping request answered in {took:?}");
    // Always loops past the deadline: the faulty guest spins on this input.
    let before = respawns(&host.topology().await);
    let started = Instant::now();
    let (s, _, b) = post(host.router, "/predict", inputs(&[hanging_row(&safe)])).await;
    let took = started.elapsed();
    assert_own_error(s, &b, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(respawns(&host.topology().await), before + 2);
    eprintln!("always-looping request answered in {took:?} (deadline {deadline:?})");
    // Two deadlines at least; and a bound that catches a hang, not a speed
    // claim: two deadlines plus a loaded machine's stalls.
    // (An epoch tick is 5 ms, so each deadline may fire up to a tick early.)
    assert!(took >= deadline * 2 - Duration::from_millis(10), "{took:?}");
    assert!(took < deadline * 2 + Duration::from_secs(10), "{took:?}");
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = tally(clients).await;
    assert!(ok > 0);
    assert!(
        failed.is_empty(),
        "other clients failed: {:?}",
        &failed[..failed.len().min(3)]
    );
}

/// A request that faulted on two instances got `status` and says so.
fn assert_own_error(status: StatusCode, body: &serde_json::Value, expected: StatusCode) {
    assert_eq!(status, expected, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("failed on two instances"), "{body}");
}

/// Two faults armed at once on an instance with two sandboxes: one is
/// armed, the other refused, as one after the other would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_faults_armed_at_once_arm_one() {
    let topology = common::with_fields("single.json", &[("concurrency", 2.into())]);
    let host = Host::start(&topology, &[]);
    let (a, b) = tokio::join!(
        chaos(&host, "predict1", "trap"),
        chaos(&host, "predict1", "hang")
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "{} / {}",
        a.2,
        b.2
    );
}

/// A second fault armed before the first has fired is refused with 409, not
/// lost; `/topology` shows the armed one until a call fires it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_fault_is_refused_until_the_first_fires() {
    let host = Host::start(&free_ports("single.json"), &[]);
    let (s, _, b) = chaos(&host, "predict1", "trap").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let t = host.topology().await;
    assert_eq!(t["predict1"]["armed_fault"], "trap", "{t}");
    let (s, _, b) = chaos(&host, "predict1", "hang").await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(b["error"], "fault_armed");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("`trap` fault is already armed"),
        "{b}"
    );
    // One request fires it (and is retried on the replacement: 200).
    let (s, _, b) = post(host.router, "/predict", row()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let t = host.topology().await;
    assert_eq!(t["predict1"]["faults_fired"], 1, "{t}");
    assert!(t["predict1"].get("armed_fault").is_none(), "{t}");
    let (s, _, b) = chaos(&host, "predict1", "hang").await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

/// 200 injections sent at 10 a second into one instance under load: each
/// refused with 409 while the previous is still armed is sent again, so
/// exactly 200 faults fire, and the retries on the other instances fail no
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: 200 faults under load take tens of seconds"]
async fn two_hundred_injections_at_ten_a_second_fire_exactly_two_hundred_faults() {
    let host = Host::start(&free_ports("3-active.json"), &["--deadline", "250ms"]);
    let load = common::Load::start(host.router, 4, vec![row().into()]);
    let p1 = host.instance_addr("predict1").await;
    let faults = ["trap", "hang", "oom"];
    let started = tokio::time::Instant::now();
    let bound = started + std::time::Duration::from_secs(120);
    let mut refused = 0;
    for k in 0..200u32 {
        tokio::time::sleep_until(started + std::time::Duration::from_millis(100) * k).await;
        loop {
            let (s, _, b) = chaos(&host, "predict1", faults[k as usize % 3]).await;
            if s == StatusCode::OK {
                break;
            }
            assert_eq!(s, StatusCode::CONFLICT, "{b}");
            assert!(
                tokio::time::Instant::now() < bound,
                "injection {k} never taken"
            );
            refused += 1;
            // Whatever the background load is doing, one request on the
            // instance's own port fires the armed fault (and is retried
            // there on the replacement).
            let (s, _, b) = post(p1, "/predict", row()).await;
            assert_eq!(s, StatusCode::OK, "{b}");
        }
    }
    // The last one fires on the next request to predict1: send it there.
    let (s, _, b) = post(p1, "/predict", row()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let answers = load.stop().await;
    assert_eq!(common::failures(&answers), Vec::<String>::new());
    let t = host.topology().await;
    assert_eq!(t["predict1"]["faults_fired"], 200, "{t}");
    assert_eq!(t["predict1"]["traps"], 200, "{t}");
    eprintln!("200 faults fired; {refused} injections refused while one was armed");
}

/// `predict1`'s sandboxes in a `/topology` answer.
fn sandboxes(t: &serde_json::Value) -> serde_json::Value {
    t["predict1"]["sandboxes"].clone()
}

/// Arms a hang in `predict1`, sends it a request on its own port, and hangs
/// up once the call runs.
async fn hang_up_on_an_armed_hang(host: &Host) {
    all_answered(host, 1, "before the fault").await;
    let (s, _, b) = chaos(host, "predict1", "hang").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let addr = host.instance_addr("predict1").await;
    let client = common::send_unread(addr, &row()).await;
    host.wait_for("the call to start", |t| sandboxes(t)["busy"] == 1)
        .await;
    drop(client);
}

/// A client that hangs up while its call runs on the blocking pool
/// (`--offload-above 0s`) leaves nothing behind: the call goes on to its
/// armed hang, and the replacement of the faulted sandbox goes back to the
/// instance; the fault counts as fired, replaced and failed, as if the
/// client had waited for its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_on_an_offloaded_call_loses_no_sandbox_and_no_count() {
    let host = Host::start(
        &free_ports("single.json"),
        // The hang holds the call for the deadline: time enough for hyper
        // to see the client gone and drop the request.
        &["--deadline", "2s", "--offload-above", "0s"],
    );
    hang_up_on_an_armed_hang(&host).await;
    // The counts land on the call's thread, some after the sandbox is back.
    host.wait_for("the hang to end and be counted", |t| {
        sandboxes(t)["busy"] == 0
            && sandboxes(t)["idle"] == 1
            && ["faults_fired", "respawns", "traps", "failed"]
                .iter()
                .all(|counter| t["predict1"][counter] == 1)
    })
    .await;
    let t = host.topology().await;
    assert_eq!(t["predict1"]["broken"], false, "{t}");
    assert!(t["predict1"].get("armed_fault").is_none(), "{t}");
    all_answered(&host, 2, "after the hang").await;
}

/// The same hang-up with the call on the request's own task (the default
/// for short calls): hyper drops the request, and the call with it, in the
/// middle of the hang. The fault fired all the same: it is counted, no longer
/// reported as armed, and the next one can be armed (it used to stay
/// "armed" until a restart, every new fault refused with 409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_on_a_faulting_call_leaves_no_fault_armed() {
    let host = Host::start(
        &free_ports("single.json"),
        // The call stays on the request's task however long the first ones
        // took on a loaded machine.
        &["--deadline", "2s", "--offload-above", "1h"],
    );
    hang_up_on_an_armed_hang(&host).await;
    host.wait_for("the dropped call to free its place", |t| {
        sandboxes(t)["busy"] == 0
    })
    .await;
    let t = host.topology().await;
    // Dropped mid-way, with its sandbox: not replaced, not given back (a
    // call that ran to its deadline would have been replaced).
    assert_eq!(sandboxes(&t)["idle"], 0, "{t}");
    assert_eq!(t["predict1"]["respawns"], 0, "{t}");
    assert!(t["predict1"].get("armed_fault").is_none(), "{t}");
    assert_eq!(t["predict1"]["faults_fired"], 1, "{t}");
    let (s, _, b) = chaos(&host, "predict1", "trap").await;
    assert_eq!(s, StatusCode::OK, "a new fault can be armed: {b}");
    all_answered(&host, 2, "after the hang").await;
}

/// A request waits for a free sandbox at most `--queue-timeout`: behind a
/// call that hangs until its deadline it gets 503 with `Retry-After`, long
/// before that deadline, and counts as no failure of the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_behind_a_hung_call_is_refused_at_the_queue_timeout() {
    use common::{hanging_row, safe_and_deadly_rows};
    use std::time::{Duration, Instant};

    let topology = common::with_faulty_guest("single.json", &[]);
    let host = Host::start(
        &topology,
        &[
            "--deadline",
            "4s",
            "--concurrency",
            "1",
            "--queue-timeout",
            "200ms",
        ],
    );
    let p1 = host.instance_addr("predict1").await;
    let (safe, _) = safe_and_deadly_rows();
    let hung = tokio::spawn(post(p1, "/predict", inputs(&[hanging_row(&safe)])));
    host.wait_for("the hanging call to hold the only sandbox", |t| {
        t["predict1"]["sandboxes"]["busy"] == 1
    })
    .await;
    let before = host.topology().await;
    let started = Instant::now();
    let (s, headers, b) = post(p1, "/predict", inputs(std::slice::from_ref(&safe))).await;
    let waited = started.elapsed();
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert_eq!(b["error"], "queue_timeout", "{b}");
    assert_eq!(headers["retry-after"], "1");
    assert!(
        !hung.is_finished(),
        "answered only once the hung call ended"
    );
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    let after = host.topology().await;
    assert_eq!(after["predict1"]["failed"], before["predict1"]["failed"]);
    let (s, _, b) = hung.await.unwrap();
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{b}");
    let (s, _, b) = post(p1, "/predict", inputs(&[safe])).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    host.wait_for("every load back to 0", |t| t["predict1"]["load"] == 0)
        .await;
}

/// Calls whose clients hang up before `--deadline` still count: the call
/// dropped on its request's task counts its time, so the next calls run
/// off the task, where they finish after their clients are gone and count
/// as the traps they are (a canary that hangs is then aborted too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_calls_whose_clients_hung_up_still_count() {
    use common::{hanging_row, safe_and_deadly_rows};
    use std::time::Duration;

    let topology = common::with_faulty_guest("single.json", &[]);
    let host = Host::start(&topology, &["--deadline", "1s", "--concurrency", "2"]);
    let p1 = host.instance_addr("predict1").await;
    let (safe, _) = safe_and_deadly_rows();
    const SENT: usize = 3;
    for _ in 0..SENT {
        let hung = post(p1, "/predict", inputs(&[hanging_row(&safe)]));
        let gave_up = tokio::time::timeout(Duration::from_millis(300), hung).await;
        assert!(gave_up.is_err(), "a hanging call was answered: {gave_up:?}");
    }
    host.wait_for("the hung calls to count as traps", |t| {
        t["predict1"]["traps"].as_u64().unwrap() >= 1
    })
    .await;
    host.wait_for("every sandbox free and load 0", |t| {
        t["predict1"]["sandboxes"]["busy"] == 0 && t["predict1"]["load"] == 0
    })
    .await;
    let (s, _, b) = post(p1, "/predict", inputs(&[safe])).await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

/// An offloaded call whose client hung up still holds its sandbox, so it
/// keeps its request's unit of load until it ends: the router passes over
/// an instance whose only sandbox is busy with such a call. Before, the
/// load went back to 0 with the request, and the router sent half of the
/// next requests to wait behind the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_client_hung_up_keeps_its_load_until_it_ends() {
    use common::{hanging_row, safe_and_deadly_rows, send_unread, slow_row};

    let topology = common::with_faulty_guest("2-active.json", &[]);
    let host = Host::start(&topology, &["--deadline", "4s", "--concurrency", "1"]);
    let p1 = host.instance_addr("predict1").await;
    // A call of 300 ms teaches predict1 that its calls are long: the next
    // one runs on the blocking pool, where it outlives its request.
    let (s, _, b) = post(p1, "/predict", inputs(&[slow_row()])).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (safe, _) = safe_and_deadly_rows();
    let client = send_unread(p1, &inputs(&[hanging_row(&safe)])).await;
    let busy = |t: &serde_json::Value| t["predict1"]["sandboxes"]["busy"] == 1;
    host.wait_for("the hanging call to hold predict1's sandbox", busy)
        .await;
    drop(client);
    // Time for the host to see the hang-up (the request's own unit of load
    // counts until then), well inside the call's 4 s.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    host.wait_for("predict1's load to count the call alone", |t| {
        t["predict1"]["load"] == 1 && t["predict2"]["load"] == 0
    })
    .await;
    for _ in 0..4 {
        let (s, _, b) = post(host.router, "/predict", inputs(std::slice::from_ref(&safe))).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(
            b["instance"], "predict2",
            "routed behind the hung call: {b}"
        );
    }
    let t = host.topology().await;
    assert!(
        busy(&t),
        "the hung call ended before the requests: the test proved nothing: {t}"
    );
    assert_eq!(t["predict1"]["load"], 1, "{t}");
    host.wait_for("the call's end to release its load", |t| {
        t["predict1"]["sandboxes"]["busy"] == 0 && t["predict1"]["load"] == 0
    })
    .await;
}
