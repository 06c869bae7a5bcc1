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
    // Big batches keep each instance busy for a while, so concurrent requests
    // pile up to each instance's threshold (max_load 10).
    let host = Host::start(
        &free_ports("2-active.json"),
        &["--max-body", "16MiB", "--deadline", "30s"],
    );
    let row = cases("digits")["cases"][0]["input"].clone();
    let big = bytes::Bytes::from(inputs(&vec![row; 12_000]));
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
