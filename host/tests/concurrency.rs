//! Issue 12: an instance runs up to `concurrency` calls at once, each in its
//! own sandbox. A trap replaces only its sandbox, load counting stays exact,
//! and idle sandboxes are released (to zero when configured).

mod common;

use std::time::{Duration, Instant};

use common::{cases, inputs, post, slow_row, with_fields, Host, POLL};
use hyper::StatusCode;

fn faulty_single() -> String {
    common::with_faulty_guest("single.json", &[])
}

/// Polls `/topology` (every [`POLL`], up to `within`) until `done` holds for
/// instance `name`; returns its report then.
async fn wait_for(
    host: &Host,
    name: &str,
    within: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let t = host.topology().await;
        if done(&t[name]) {
            return t[name].clone();
        }
        assert!(
            Instant::now() < deadline,
            "not reached within {within:?}: {t}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_in_one_sandbox_leaves_the_call_in_the_other_answered() {
    let host = Host::start(
        &faulty_single(),
        &["--concurrency", "2", "--deadline", "5s"],
    );
    let (_, deadly) = common::safe_and_deadly_rows();
    let router = host.router;
    let slow = tokio::spawn(async move { post(router, "/predict", inputs(&[slow_row()])).await });
    let report = wait_for(&host, "predict1", Duration::from_secs(5), |i| {
        i["sandboxes"]["busy"] == 1
    })
    .await;
    assert_eq!(report["sandboxes"]["concurrency"], 2, "{report}");
    // The deadly request runs beside the slow one and traps its own sandbox.
    let (status, _, body) = post(host.router, "/predict", inputs(&[deadly])).await;
    assert_ne!(status, StatusCode::OK, "{body}");
    assert!(
        !slow.is_finished(),
        "the deadly call waited for the slow one: they did not run at once"
    );
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK, "the slow call was answered: {body}");
    let t = host.topology().await;
    let p1 = &t["predict1"];
    assert!(p1["traps"].as_u64().unwrap() >= 1, "{t}");
    assert_eq!(p1["served"], 1, "{t}");
    assert_eq!(p1["load"], 0, "{t}");
}

/// Bounded load through the router onto instances that run two calls at
/// once with a threshold of 4: every request is served or shed, the
/// counters agree with the clients, and every load returns to 0; the same
/// with dynamic batching on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_counting_stays_exact_under_concurrency() {
    count_load_exactly(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_counting_stays_exact_with_batching() {
    let batch = serde_json::json!({"max_requests": 4, "max_delay": "500us"});
    count_load_exactly(&[("batch", batch)]).await;
}

async fn count_load_exactly(fields: &[(&str, serde_json::Value)]) {
    let mut fields = fields.to_vec();
    fields.push(("max_load", 4.into()));
    let topology = with_fields("2-active.json", &fields);
    let host = Host::start(&topology, &["--concurrency", "2"]);
    let rows: Vec<_> = cases("digits")["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["input"].clone())
        .collect();
    let bodies: Vec<bytes::Bytes> = rows.chunks(3).map(|chunk| inputs(chunk).into()).collect();
    const CLIENTS: usize = 12;
    const EACH: usize = 40;
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (router, bodies) = (host.router, bodies.clone());
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for k in 0..EACH {
                let body = bodies[(c + k) % bodies.len()].clone();
                statuses.push(post(router, "/predict", body).await.0);
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for client in clients {
        statuses.extend(client.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let shed = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!(ok + shed, CLIENTS * EACH, "only 200 and 503: {statuses:?}");
    for name in ["predict1", "predict2", "predict3"] {
        wait_for(&host, name, Duration::from_secs(2), |i| {
            i["load"] == 0 && i["sandboxes"]["busy"] == 0
        })
        .await;
    }
    let t = host.topology().await;
    let served: u64 = ["predict1", "predict2", "predict3"]
        .iter()
        .map(|n| t[*n]["served"].as_u64().unwrap())
        .sum();
    assert_eq!(served as usize, ok, "{t}");
}

/// Sandboxes beyond the one an instance keeps are released after
/// `--sandbox-idle`; with `--scale-to-zero` none is kept, and the next
/// request builds one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sandboxes_are_released_down_to_one_or_to_zero() {
    for (extra, kept) in [(None, 1), (Some("--scale-to-zero"), 0)] {
        let mut args = vec![
            "--concurrency",
            "2",
            "--sandbox-idle",
            "200ms",
            "--deadline",
            "5s",
        ];
        args.extend(extra);
        let host = Host::start(&faulty_single(), &args);
        let router = host.router;
        let calls: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(async move { post(router, "/predict", inputs(&[slow_row()])).await })
            })
            .collect();
        wait_for(&host, "predict1", Duration::from_secs(5), |i| {
            i["sandboxes"]["busy"] == 2
        })
        .await;
        for call in calls {
            assert_eq!(call.await.unwrap().0, StatusCode::OK);
        }
        wait_for(&host, "predict1", Duration::from_secs(5), |i| {
            i["sandboxes"]["idle"] == kept && i["sandboxes"]["busy"] == 0
        })
        .await;
        let (row, _) = common::safe_and_deadly_rows();
        let (status, _, body) = post(host.router, "/predict", inputs(&[row])).await;
        assert_eq!(status, StatusCode::OK, "{extra:?}: {body}");
    }
}
