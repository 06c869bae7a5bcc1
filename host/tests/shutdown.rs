//! SIGTERM stops the host gracefully: it stops accepting, lets the request in
//! flight finish, and exits 0.

mod common;

use common::{free_ports, hold_in_flight, Host};
use hyper::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let mut host = Host::start(
        &free_ports("single.json"),
        &["--max-body", "32MiB", "--deadline", "60s"],
    );
    let in_flight = hold_in_flight(&host, "predict1").await;
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
