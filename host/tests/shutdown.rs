//! SIGTERM stops the host gracefully: it stops accepting, lets the request in
//! flight finish, and exits 0.

mod common;

use common::{free_ports, get, hold_in_flight, Host};
use hyper::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: signals a hadr-host process"]
async fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let host = Host::process(
        &common::with_faulty_guest("single.json", &[]),
        &["--deadline", "60s"],
    );
    let in_flight = hold_in_flight(&host, "predict1").await;
    sigterm(&host);
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "the request in flight was cut off: {body}"
    );
    exits_0(host).await;
}

/// With `--drain`, SIGTERM first turns `/readyz` to 503 `draining` on the
/// router and on instance ports while every request is still answered, so a
/// balancer takes the host out before it stops; then it exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full suite: signals a hadr-host process"]
async fn with_drain_sigterm_turns_readiness_off_while_still_serving() {
    let host = Host::process(&free_ports("2-active.json"), &["--drain", "2s"]);
    let instance = host.instance_addr("predict1").await;
    assert_eq!(get(instance, "/readyz").await.0, StatusCode::OK);
    let sent = std::time::Instant::now();
    sigterm(&host);
    // Draining: readiness off on every listener, predictions still served.
    let mut seen = false;
    while sent.elapsed() < std::time::Duration::from_millis(1500) {
        let (status, _, body) = get(instance, "/readyz").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body["error"], "draining", "{body}");
            seen = true;
            break;
        }
        tokio::time::sleep(common::POLL).await;
    }
    assert!(seen, "/readyz never turned 503 while draining");
    let (status, _, body) = get(host.router, "/readyz").await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::SERVICE_UNAVAILABLE, &"draining".into())
    );
    let (status, _, body) = get(host.router, "/predict").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "still serving while draining: {body}"
    );
    exits_0(host).await;
    assert!(
        sent.elapsed() >= std::time::Duration::from_secs(2),
        "it drained for --drain"
    );
}

fn sigterm(host: &Host) {
    let pid = host.pid().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
}

/// Waits for the host to exit, and checks it exited 0.
async fn exits_0(mut host: Host) {
    let exit = tokio::task::spawn_blocking(move || host.child().wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}
