//! SIGTERM stops the host gracefully: it stops accepting, lets the request in
//! flight finish, and exits 0.

mod common;

use common::{cases, free_ports, inputs, post, Host};
use hyper::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let mut host = Host::start(
        &free_ports("single.json"),
        &["--max-body", "32MiB", "--deadline", "60s"],
    );
    let row = cases("digits")["cases"][0]["input"].clone();
    let big = bytes::Bytes::from(inputs(&vec![row; 25_000]));
    let router = host.router;
    let in_flight = tokio::spawn(async move { post(router, "/predict", big).await });
    while host.topology().await["predict1"]["load"] != 1 {
        assert!(
            !in_flight.is_finished(),
            "the request ended before it was seen in flight"
        );
        tokio::task::yield_now().await;
    }
    let pid = host.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "the request in flight was cut off: {body}"
    );
    let exit = tokio::task::spawn_blocking(move || host.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}
