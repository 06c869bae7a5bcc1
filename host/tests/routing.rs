//! Acceptance: with the article's 2-active topology, requests spread over
//! predict1 and predict2; with both held at their threshold predict3 is
//! promoted and serves; with all three saturated the router answers 503 with
//! Retry-After. Driven with concurrent requests only.

mod common;

use std::collections::HashMap;

use common::{cases, free_ports, get, inputs, post, Host};
use hyper::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_the_actives_and_skip_the_standby() {
    let host = Host::start(&free_ports("2-active.json"), &[]);
    let body = inputs(&[cases("digits")["cases"][0]["input"].clone()]);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..20 {
        let (status, _, answer) = post(host.router, "/predict", body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        *seen
            .entry(answer["instance"].as_str().unwrap().into())
            .or_default() += 1;
    }
    assert_eq!(seen.get("predict1"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("predict2"), Some(&10), "{seen:?}");
    assert_eq!(
        seen.get("predict3"),
        None,
        "the standby served before it was needed"
    );
    let t = host.topology().await;
    assert_eq!(t["predict3"]["status"], false);
    assert_eq!(t["predict3"]["role"], "standby");
    assert_eq!(t["predict1"]["served"], 10);
    assert_eq!(t["predict1"]["port"].as_str().map(|p| p != "0"), Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_actives_promote_the_standby_then_the_router_sheds() {
    // Each request keeps a sandbox busy for 300 ms (the faulty guest's slow
    // row), however fast the host, so concurrent requests pile up to each
    // instance's threshold (max_load 10).
    let host = Host::start(
        &common::with_faulty_guest("2-active.json", &[]),
        &["--deadline", "30s"],
    );
    let big = bytes::Bytes::from(inputs(&[common::slow_row()]));
    let clients = 40;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (addr, body) = (host.router, big.clone());
        tasks.spawn(async move { post(addr, "/predict", body).await });
    }
    let mut served: HashMap<String, usize> = HashMap::new();
    let mut shed = 0;
    while let Some(answer) = tasks.join_next().await {
        let (status, headers, body) = answer.unwrap();
        match status {
            StatusCode::OK => {
                *served
                    .entry(body["instance"].as_str().unwrap().into())
                    .or_default() += 1
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                shed += 1;
                assert_eq!(headers["retry-after"], "1");
                assert_eq!(body["error"], "no_capacity", "{body}");
                assert!(body["message"].as_str().unwrap().contains("threshold"));
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // 3 instances x max_load 10 can hold 30 requests at once; 40 were sent.
    assert!(
        served.get("predict3").copied().unwrap_or(0) > 0,
        "predict3 never served: {served:?}"
    );
    assert!(
        shed > 0,
        "nothing was shed with 40 concurrent requests: {served:?}"
    );
    assert_eq!(served.values().sum::<usize>() + shed, clients);
    let t = host.topology().await;
    assert_eq!(t["predict3"]["status"], true, "{t}");
    assert_eq!(t["predict3"]["role"], "promoted");
    for name in ["predict1", "predict2", "predict3"] {
        assert_eq!(t[name]["load"], 0, "load must return to 0: {t}");
    }
    let (status, _, _) = get(host.router, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_port_serves_that_instance_directly() {
    let host = Host::start(&free_ports("2-active.json"), &[]);
    let body = inputs(&[cases("digits")["cases"][0]["input"].clone()]);
    for name in ["predict2", "predict3"] {
        let addr = host.instance_addr(name).await;
        let (status, _, answer) = post(addr, "/predict", body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["instance"], name);
    }
}

/// 2-active with `max_load` 1 and the faulty guest, whose hanging row holds
/// an instance until the 1 s deadline (twice: the host retries it once).
fn start_holdable(cooldown: &str) -> Host {
    let topology = common::with_faulty_guest("2-active.json", &[("max_load", 1.into())]);
    Host::start(
        &topology,
        &["--deadline", "1s", "--promotion-cooldown", cooldown],
    )
}

/// Holds both actives at their threshold with hanging requests on their own
/// ports, sends one request through the router (which promotes the standby
/// to take it), and returns the holds (each ends with 504).
async fn promote_the_standby(host: &Host) -> Vec<tokio::task::JoinHandle<common::Answer>> {
    let (row, _) = common::safe_and_deadly_rows();
    let big = bytes::Bytes::from(inputs(&[common::hanging_row(&row)]));
    let mut held = Vec::new();
    for name in ["predict1", "predict2"] {
        let addr = host.instance_addr(name).await;
        let big = big.clone();
        held.push(tokio::spawn(
            async move { post(addr, "/predict", big).await },
        ));
    }
    loop {
        let t = host.topology().await;
        if t["predict1"]["load"] == 1 && t["predict2"]["load"] == 1 {
            break;
        }
        assert!(held.iter().all(|h| !h.is_finished()), "a hold ended early");
        tokio::time::sleep(common::POLL).await;
    }
    let (s, _, b) = post(host.router, "/predict", inputs(&[row])).await;
    assert_eq!(
        (s, &b["instance"]),
        (StatusCode::OK, &"predict3".into()),
        "{b}"
    );
    assert_eq!(host.topology().await["predict3"]["role"], "promoted");
    held
}

/// The standby is spare capacity, not a one-way door: once the actives have
/// carried the load alone for the cool-down it is a standby again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_returns_to_standby_after_a_calm_cool_down() {
    let host = start_holdable("300ms");
    let held = promote_the_standby(&host).await;
    // Busy actives: it stays promoted (past the cool-down).
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(host.topology().await["predict3"]["role"], "promoted");
    for held in held {
        assert_eq!(held.await.unwrap().0, StatusCode::GATEWAY_TIMEOUT);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let t = host.topology().await;
        if t["predict3"]["role"] == "standby" {
            assert_eq!(t["predict3"]["status"], false, "{t}");
            assert_eq!(t["predict3"]["promotions"], 1, "{t}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never returned: {t}");
        tokio::time::sleep(common::POLL).await;
    }
}

/// `POST /admin/demote` returns it at once, and the demotion is persisted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_returns_a_promoted_standby_at_once() {
    let host = start_holdable("1h");
    let held = promote_the_standby(&host).await;
    let auth = format!("Bearer {}", common::ADMIN_TOKEN);
    let (s, _, b) = common::request_with(
        host.admin,
        hyper::Method::POST,
        "/admin/demote",
        bytes::Bytes::new(),
        Some(&auth),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["demoted"], serde_json::json!(["predict3"]));
    assert_eq!(host.topology().await["predict3"]["role"], "standby");
    for h in held {
        assert_eq!(h.await.unwrap().0, StatusCode::GATEWAY_TIMEOUT);
    }
}
