//! Issue 12: dynamic batching. Requests that arrive together are merged into
//! one guest call and answered each with its own rows; a request that
//! poisons its batch (a trap, a hang past the deadline, input the guest
//! refuses) fails alone, through the router and on an instance's port.
//!
//! Each test sends `N` requests at once to an instance whose batch holds `N`
//! and waits its full delay, up to 1 s, for them, so the requests are merged
//! however slowly the machine runs them; the counters in `/topology` show
//! what was merged. By default a batch waits only while requests keep
//! arriving: requests that queue behind a busy sandbox are merged then.

mod common;

use bytes::Bytes;
use common::{cases, inputs, post, with_faulty_guest, with_fields, Host};
use hyper::StatusCode;

/// Requests sent at once in each test, and the batch size that holds them.
const N: usize = 6;

fn batching(max_requests: usize) -> (&'static str, serde_json::Value) {
    (
        "batch",
        serde_json::json!({"max_requests": max_requests, "max_delay": "1s", "wait": "full-delay"}),
    )
}

/// The generic guest batching `N` requests in one sandbox, and its port.
async fn batching_instance() -> (Host, std::net::SocketAddr) {
    let host = Host::start(
        &with_fields("single.json", &[batching(N), ("concurrency", 1.into())]),
        &[],
    );
    let port = host.instance_addr("predict1").await;
    (host, port)
}

/// `N - 1` digits cases the faulty guest answers (distinct, so a mixed-up
/// split shows), with their expected labels and probabilities.
fn safe_cases() -> Vec<serde_json::Value> {
    let all = cases("digits");
    all["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !common::faulty_traps_on(std::slice::from_ref(&c["input"])))
        .take(N - 1)
        .cloned()
        .collect()
}

/// Sends every body at once to `addr`; answers in the same order.
async fn all_at_once(addr: std::net::SocketAddr, bodies: Vec<Vec<u8>>) -> Vec<common::Answer> {
    let calls: Vec<_> = bodies
        .into_iter()
        .map(|body| tokio::spawn(async move { post(addr, "/predict", Bytes::from(body)).await }))
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    answers
}

/// Each safe case's answer is its own: the label and probabilities
/// scikit-learn gave for that row.
fn assert_own_answers(cases: &[serde_json::Value], answers: &[common::Answer]) {
    for (case, (status, _, answer)) in cases.iter().zip(answers) {
        assert_eq!(*status, StatusCode::OK, "{answer}");
        assert_eq!(answer["labels"][0], case["label"], "{answer}");
        let got = answer["outputs"][0].as_array().unwrap();
        for (g, w) in got.iter().zip(case["probabilities"].as_array().unwrap()) {
            let diff = (g.as_f64().unwrap() - w.as_f64().unwrap()).abs();
            assert!(diff <= 1e-5, "{answer} against {case}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_requests_are_answered_each_with_its_own_rows_and_a_refused_one_alone() {
    // The generic guest, through an instance's own port.
    let (host, port) = batching_instance().await;
    let cases = safe_cases();
    let mut bodies: Vec<Vec<u8>> = cases
        .iter()
        .map(|c| inputs(&[c["input"].clone()]))
        .collect();
    // Five features instead of 64: refused by the guest, inside the batch.
    bodies.push(inputs(&[serde_json::json!([1.0, 2.0, 3.0, 4.0, 5.0])]));
    let answers = all_at_once(port, bodies).await;
    assert_own_answers(&cases, &answers);
    let (status, _, refused) = &answers[N - 1];
    assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    let t = host.topology().await;
    let p1 = &t["predict1"];
    assert_eq!(p1["batching"]["wait"], "full-delay", "{t}");
    assert_eq!(p1["batching"]["batches"], 1, "one merged call: {t}");
    assert_eq!(p1["batching"]["batched_requests"], N, "{t}");
    assert_eq!(
        p1["batching"]["poisoned"], 0,
        "a refusal poisons nothing: {t}"
    );
    assert_eq!(p1["served"], N - 1, "{t}");
    assert_eq!(p1["failed"], 0, "bad input is the client's: {t}");
    assert_eq!(p1["load"], 0, "{t}");
    let metrics = common::get_text(host.router, "/metrics").await;
    assert!(
        metrics.contains(&format!(
            "hadr_instance_batched_requests_total{{instance=\"predict1\"}} {N}"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_traps_fails_alone_and_the_rest_of_its_batch_is_answered() {
    // Through the router, on the faulty guest.
    let host = Host::start(
        &with_faulty_guest("single.json", &[batching(N), ("concurrency", 1.into())]),
        &[],
    );
    let cases = safe_cases();
    let (_, deadly) = common::safe_and_deadly_rows();
    let mut bodies: Vec<Vec<u8>> = cases
        .iter()
        .map(|c| inputs(&[c["input"].clone()]))
        .collect();
    bodies.insert(2, inputs(&[deadly]));
    let mut answers = all_at_once(host.router, bodies).await;
    let (status, _, trapped) = answers.remove(2);
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{trapped}");
    assert!(
        trapped["message"].as_str().unwrap().contains("trapped"),
        "{trapped}"
    );
    assert_own_answers(&cases, &answers);
    let t = host.topology().await;
    let p1 = &t["predict1"];
    assert!(p1["batching"]["poisoned"].as_u64().unwrap() >= 1, "{t}");
    assert_eq!(p1["served"], N - 1, "{t}");
    assert_eq!(p1["load"], 0, "{t}");
    assert!(
        p1["traps"].as_u64().unwrap() >= 2,
        "the batch and the request alone: {t}"
    );
    // Each trapped call is a failed call, merged or alone.
    assert_eq!(p1["failed"], p1["traps"], "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_hangs_meets_its_deadline_and_the_rest_of_its_batch_is_answered() {
    let host = Host::start(
        &with_faulty_guest("single.json", &[batching(N), ("concurrency", 1.into())]),
        &["--deadline", "300ms"],
    );
    let cases = safe_cases();
    let mut bodies: Vec<Vec<u8>> = cases
        .iter()
        .map(|c| inputs(&[c["input"].clone()]))
        .collect();
    bodies.insert(0, inputs(&[common::hanging_row(&cases[0]["input"])]));
    let started = std::time::Instant::now();
    let mut answers = all_at_once(host.router, bodies).await;
    let (status, _, hung) = answers.remove(0);
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{hung}");
    assert!(
        hung["message"].as_str().unwrap().contains("deadline"),
        "{hung}"
    );
    assert_own_answers(&cases, &answers);
    // The batch's deadline, the hanging request's own and its retry's, and
    // the others' calls: bounded, not hung.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let t = host.topology().await;
    assert!(
        t["predict1"]["batching"]["poisoned"].as_u64().unwrap() >= 1,
        "{t}"
    );
    assert_eq!(t["predict1"]["load"], 0, "{t}");
}

/// By default a batch waits only while requests keep arriving: requests
/// that queue behind a busy sandbox (here, held by a call that hangs until
/// its 200 ms deadline, and again in its retry) are merged when it frees,
/// and their batch, which has room for more, closes then rather than after
/// its 1 s delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_behind_a_busy_sandbox_are_merged_without_waiting_out_the_delay() {
    let batch = serde_json::json!({"max_requests": 2 * N, "max_delay": "1s"});
    let host = Host::start(
        &with_faulty_guest(
            "single.json",
            &[("batch", batch), ("concurrency", 1.into())],
        ),
        &["--deadline", "200ms"],
    );
    let port = host.instance_addr("predict1").await;
    let cases = safe_cases();
    let hang = inputs(&[common::hanging_row(&cases[0]["input"])]);
    let hung = tokio::spawn(async move { post(port, "/predict", Bytes::from(hang)).await });
    host.wait_for("the hanging call to hold the sandbox", |t| {
        t["predict1"]["sandboxes"]["busy"] == 1
    })
    .await;
    let bodies = cases
        .iter()
        .map(|c| inputs(&[c["input"].clone()]))
        .collect();
    let sent = std::time::Instant::now();
    let answers = all_at_once(port, bodies).await;
    // Waiting out the delay would take a second from the batch's opening.
    let took = sent.elapsed();
    assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    assert_own_answers(&cases, &answers);
    let (status, _, hung) = hung.await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{hung}");
    let t = host.topology().await;
    let batching = &t["predict1"]["batching"];
    assert_eq!(batching["wait"], "while-arriving", "{t}");
    assert_eq!(batching["batches"], 1, "one merged call: {t}");
    assert_eq!(batching["batched_requests"], N - 1, "{t}");
}

/// A batch's leader whose client hangs up while the batch fills gives its
/// sandbox back unused: the instance keeps the one it had, and answers the
/// next request in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_client_hangs_up_gives_its_sandbox_back() {
    let (host, port) = batching_instance().await;
    let body = inputs(&[cases("digits")["cases"][0]["input"].clone()]);
    // A first batch leaves a sandbox idle.
    for (status, _, answer) in all_at_once(port, vec![body.clone(); N]).await {
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let sandboxes = |t: &serde_json::Value| t["predict1"]["sandboxes"].clone();
    assert_eq!(sandboxes(&host.topology().await)["idle"], 1);
    let client = common::send_unread(port, &body).await;
    // It leads a batch that will not fill: hang up while it holds the place.
    host.wait_for("the leader to take the place", |t| {
        sandboxes(t)["busy"] == 1
    })
    .await;
    drop(client);
    host.wait_for("the leader to go", |t| {
        sandboxes(t)["busy"] == 0 && t["predict1"]["load"] == 0
    })
    .await;
    let t = host.topology().await;
    assert_eq!(sandboxes(&t)["idle"], 1, "the sandbox is back: {t}");
    assert_eq!(
        t["predict1"]["batching"]["batches"], 1,
        "the first only: {t}"
    );
    let (status, _, answer) = post(port, "/predict", Bytes::from(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// `rows` rows of zeros, each of the digits model's 64 features.
fn zero_rows(rows: usize) -> Vec<u8> {
    inputs(&vec![serde_json::json!(vec![0; 64]); rows])
}

/// Rows whose tensor alone is over what a sandbox's tensors may hold
/// (`--max-memory`) are the request's fault, on `/predict` as on `/v2`
/// infer: refused with 422 before any guest code runs, so no trap, no
/// sandbox replaced; a merged batch over it whose requests each fit runs
/// them alone, and they are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_tensor_cap_are_refused_and_a_batch_over_it_runs_alone() {
    // 2 MiB of tensors: a row takes 256 bytes, so 5,000 rows fit and
    // 10,000 do not.
    let host = Host::start(
        &with_fields("single.json", &[batching(2), ("concurrency", 1.into())]),
        &["--max-memory", "2MiB", "--max-body", "4MiB"],
    );
    let port = host.instance_addr("predict1").await;
    let answers = all_at_once(port, vec![zero_rows(5_000), zero_rows(5_000)]).await;
    for (status, _, answer) in &answers {
        assert_eq!(*status, StatusCode::OK, "{answer}");
        assert_eq!(answer["labels"].as_array().unwrap().len(), 5_000);
    }
    let (status, _, refused) = post(port, "/predict", Bytes::from(zero_rows(10_000))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"], "invalid_input", "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("10000 rows take 2560000 bytes") && message.contains("--max-memory"),
        "{refused}"
    );
    // `/v2` inputs are copied into the guest's own memory: 3,300 rows (844,800
    // bytes) trapped the generic guest at 2 MiB; refused over a quarter of it.
    let infer = serde_json::json!({"inputs": [{"name": "float_input", "shape": [3_300, 64],
        "datatype": "FP32", "data": vec![0; 3_300 * 64]}]});
    let (status, _, refused) = post(port, "/v2/models/digits/infer", infer.to_string()).await;
    // The protocol answers invalid input with 400.
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let message = refused["error"].as_str().unwrap();
    assert!(
        message.contains("tensors take 844800 bytes, more than the 524288 bytes"),
        "{refused}"
    );
    let fits = serde_json::json!({"inputs": [{"name": "float_input", "shape": [2_000, 64],
        "datatype": "FP32", "data": vec![0; 2_000 * 64]}]});
    let (status, _, answer) = post(port, "/v2/models/digits/infer", fits.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let t = host.topology().await;
    let p1 = &t["predict1"];
    assert_eq!(p1["batching"]["batches"], 1, "the two were merged: {t}");
    assert_eq!(p1["batching"]["poisoned"], 0, "{t}");
    assert_eq!(
        (&p1["traps"], &p1["respawns"], &p1["failed"]),
        (&0.into(), &0.into(), &0.into()),
        "{t}"
    );
    assert_eq!(p1["served"], 3, "{t}");
    assert_eq!(p1["load"], 0, "{t}");
}
