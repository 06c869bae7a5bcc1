//! A long inference must not stall the accept loop or other instances: once an
//! instance's calls are known to be long they run on the blocking pool.

mod common;

use common::{cases, free_ports, get, inputs, post, Host};
use hyper::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_calls_on_every_instance_do_not_stall_the_host() {
    let host = Host::start(
        &free_ports("2-active.json"),
        &["--max-body", "32MiB", "--deadline", "60s"],
    );
    let row = cases("digits")["cases"][0]["input"].clone();
    let big = bytes::Bytes::from(inputs(&vec![row.clone(); 25_000]));
    let small = inputs(&[row]);
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
