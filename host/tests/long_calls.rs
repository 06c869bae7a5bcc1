//! A long inference must not stall the accept loop or other instances: once an
//! instance's calls are known to be long they run on the blocking pool.

mod common;

use common::{get, inputs, post, Host};
use hyper::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: hadr-host processes with calls of seconds"]
async fn long_calls_on_every_instance_do_not_stall_the_host() {
    // A long call: three of the faulty guest's slow rows, 900 ms of
    // computing, however fast the host.
    let host = Host::process(
        &common::with_faulty_guest("2-active.json", &[]),
        &["--deadline", "60s"],
    );
    let big = bytes::Bytes::from(inputs(&vec![common::slow_row(); 3]));
    let small = inputs(&[common::safe_and_deadly_rows().0]);
    let p1 = host.instance_addr("predict1").await;
    let p2 = host.instance_addr("predict2").await;

    // Teach both instances that their calls are long.
    for addr in [p1, p2] {
        let (status, _, body) = post(addr, "/predict", big.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // One long call in flight on each instance: as many as the host has
    // worker threads. Wait until the host reports both in flight.
    let long: Vec<_> = [p1, p2]
        .into_iter()
        .map(|addr| {
            let big = big.clone();
            tokio::spawn(async move { post(addr, "/predict", big).await })
        })
        .collect();
    loop {
        let t = host.topology().await;
        if t["predict1"]["load"] == 1 && t["predict2"]["load"] == 1 {
            break;
        }
        assert!(
            !long.iter().all(|h| h.is_finished()),
            "the long calls ended before they were seen"
        );
        tokio::time::sleep(common::POLL).await;
    }

    // The router, the health check and the standby all answer meanwhile.
    let (status, _, _) = get(host.router, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    let p3 = host.instance_addr("predict3").await;
    let (status, _, body) = post(p3, "/predict", small).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        long.iter().any(|h| !h.is_finished()),
        "both long calls finished before the short requests: the test proved nothing; make them longer"
    );
    for h in long {
        let (status, _, body) = h.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// A row the faulty guest answers with `first` as its first value.
fn row_starting_with(first: f64) -> serde_json::Value {
    let (safe, _) = common::safe_and_deadly_rows();
    let mut row = safe;
    row[0] = serde_json::json!(first);
    row
}

/// Guests spinning in two instances (as many as the host has worker
/// threads) do not hold those threads: a third instance answers at once.
/// Calls run on the request's task here (`--offload-above` far above any
/// cost), as a fast instance's calls do: the runtime's own worker threads
/// are what a spinning guest could hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: hadr-host processes with calls of seconds"]
async fn spinning_guests_do_not_hold_the_hosts_threads() {
    spins_leave_the_host_a_thread("/predict", inputs(&[row_starting_with(-7.0)])).await;
}

/// The same through the Open Inference Protocol: an infer call runs under
/// the same budget and yields as a `/predict` call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: hadr-host processes with calls of seconds"]
async fn spinning_infers_do_not_hold_the_hosts_threads() {
    let row = row_starting_with(-7.0);
    let width = row.as_array().unwrap().len();
    let infer = serde_json::json!({"inputs": [
        {"name": "float_input", "shape": [1, width], "datatype": "FP32", "data": row}
    ]});
    spins_leave_the_host_a_thread("/v2/models/digits/infer", infer.to_string().into_bytes()).await;
}

/// Sends `spin` (a call the faulty guest spins on) to `path` on two of
/// three instances and checks that the third answers at once meanwhile,
/// and that both spins end at their deadline, within the host's bound.
async fn spins_leave_the_host_a_thread(path: &'static str, spin: Vec<u8>) {
    let topology = common::with_faulty_guest("3-active.json", &[]);
    let host = Host::process(&topology, &["--deadline", "4s", "--offload-above", "1h"]);
    let (safe, _) = common::safe_and_deadly_rows();
    let safe = inputs(&[safe]);
    let mut spinning = Vec::new();
    for name in ["predict1", "predict2"] {
        let addr = host.instance_addr(name).await;
        let spin = spin.clone();
        spinning.push(tokio::spawn(async move {
            let sent = std::time::Instant::now();
            (post(addr, path, spin).await, sent.elapsed())
        }));
    }
    let p3 = host.instance_addr("predict3").await;
    // Both spinning (seen from a /topology that must itself get a thread).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let t = tokio::time::timeout(std::time::Duration::from_secs(5), host.topology())
            .await
            .expect("/topology answered while guests spin");
        if t["predict1"]["load"] == 1 && t["predict2"]["load"] == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the spins never started: {t}"
        );
        tokio::time::sleep(common::POLL).await;
    }
    for k in 0..10 {
        let answer = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            post(p3, "/predict", safe.clone()),
        )
        .await;
        let (status, _, body) = answer.unwrap_or_else(|_| {
            panic!("request {k} to predict3 waited over 500 ms behind the spinning guests")
        });
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // A spin faults, is retried once on a fresh sandbox and faults again:
    // two calls, each within the host's wall-clock bound on any call (twice
    // the deadline and a second), with room for a loaded machine.
    let bound = hadr_server::sandbox::engine::hard_limit(std::time::Duration::from_secs(4)) * 2
        + std::time::Duration::from_secs(3);
    for s in spinning {
        let ((status, _, body), took) = s.await.unwrap();
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
        // Spinning, whichever bound stopped it: never "blocked outside".
        // (`/predict` says it in "message", the v2 protocol in "error".)
        let message = body["message"].as_str().or(body["error"].as_str()).unwrap();
        assert!(
            message.contains("ran past its deadline") && !message.contains("did not return"),
            "{body}"
        );
        assert!(
            took <= bound,
            "a spinning call took {took:?}, over {bound:?}"
        );
    }
}

/// A guest blocked in a WASI host call (asleep, outside WebAssembly, where
/// epochs cannot interrupt it) is stopped by the host's own timeout, its
/// sandbox replaced, and the instance serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: hadr-host processes with calls of seconds"]
async fn a_guest_blocked_outside_webassembly_is_stopped_by_the_host() {
    let topology = common::with_faulty_guest("single.json", &[]);
    let host = Host::process(&topology, &["--deadline", "300ms"]);
    let p1 = host.instance_addr("predict1").await;
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        post(p1, "/predict", inputs(&[row_starting_with(-8.0)])),
    )
    .await
    .expect("the blocked call was never stopped");
    let (status, _, body) = answer;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("did not return"),
        "{body}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let (safe, _) = common::safe_and_deadly_rows();
    let (status, _, body) = post(p1, "/predict", inputs(&[safe])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let t = host.topology().await;
    assert_eq!(
        t["predict1"]["respawns"], 2,
        "both attempts' sandboxes replaced: {t}"
    );
}
