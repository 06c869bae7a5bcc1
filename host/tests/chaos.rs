//! Real faults inside a guest, armed through the admin listener: each one is
//! contained to its instance and the instance is rebuilt for the next call.
//! (Retrying the faulted request elsewhere comes with the warm pool.)

mod common;

use common::{cases, chaos, free_ports, get, inputs, post, request_with, Host};
use hyper::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_fails_one_call_in_its_instance_only() {
    let host = Host::start(&free_ports("single.json"), &["--deadline", "200ms"]);
    let body = inputs(&[cases("digits")["cases"][0]["input"].clone()]);
    let expected = [
        ("trap", StatusCode::INTERNAL_SERVER_ERROR, "instance_fault"),
        ("hang", StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
        ("oom", StatusCode::INTERNAL_SERVER_ERROR, "instance_fault"),
    ];
    for (k, (fault, status, code)) in expected.into_iter().enumerate() {
        let (s, _, b) = chaos(&host, "predict1", fault).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["armed"], fault);
        let (s, _, b) = post(host.router, "/predict", body.clone()).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (status, Some(code)),
            "{fault}: {b}"
        );
        // The sandbox was dropped and a fresh one serves the next call.
        let (s, _, b) = post(host.router, "/predict", body.clone()).await;
        assert_eq!(s, StatusCode::OK, "after {fault}: {b}");
        let t = host.topology().await;
        assert_eq!(t["predict1"]["traps"], k as u64 + 1, "{t}");
    }
    let (s, _, _) = get(host.router, "/healthz").await;
    assert_eq!(s, StatusCode::OK);
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
