//! Acceptance: `/metrics` parses as Prometheus text and its counters agree
//! with `/topology`; `/readyz` is 200 only while a request could be taken.

mod common;

use std::io::BufRead;

use common::{cases, chaos, free_ports, get, hold_in_flight, inputs, post, Host};
use hyper::{Method, StatusCode};
use prometheus_parse::{Scrape, Value};

/// `GET /metrics`, parsed.
async fn scrape(host: &Host) -> Scrape {
    let stream = tokio::net::TcpStream::connect(host.router).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(Method::GET)
        .uri("/metrics")
        .header(hyper::header::HOST, host.router.to_string())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[hyper::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    use http_body_util::BodyExt;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Scrape::parse(body.lines()).expect("the Prometheus text parser accepts /metrics")
}

/// The value of `metric` with `labels` (all of them matching).
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{metric} is not a single number"),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_agree_with_topology() {
    let host = Host::start(&free_ports("2-active.json"), &[]);
    let row = inputs(&[cases("digits")["cases"][0]["input"].clone()]);
    for _ in 0..30 {
        let (s, _, b) = post(host.router, "/predict", row.clone()).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    for _ in 0..3 {
        let (s, _, _) = post(host.router, "/predict", "{\"inputs\": [[1, 2]]}").await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let (s, _, _) = chaos(&host, "predict1", "trap").await;
    assert_eq!(s, StatusCode::OK);
    for _ in 0..4 {
        let (s, _, _) = post(host.router, "/predict", row.clone()).await;
        assert_eq!(s, StatusCode::OK);
    }
    let metrics = scrape(&host).await;
    let topology = host.topology().await;
    let mut ok_total = 0.0;
    for name in ["predict1", "predict2", "predict3"] {
        let t = &topology[name];
        let i = [("instance", name)];
        for (metric, field) in [
            ("hadr_instance_served_total", "served"),
            ("hadr_instance_failed_total", "failed"),
            ("hadr_instance_traps_total", "traps"),
            ("hadr_instance_respawns_total", "respawns"),
            ("hadr_instance_promotions_total", "promotions"),
            ("hadr_instance_load", "load"),
            ("hadr_instance_max_load", "max_load"),
        ] {
            assert_eq!(
                value(&metrics, metric, &i),
                t[field].as_f64(),
                "{metric} of {name} disagrees with /topology: {t}"
            );
        }
        let role = t["role"].as_str().unwrap();
        assert_eq!(
            value(
                &metrics,
                "hadr_instance_role",
                &[("instance", name), ("role", role)]
            ),
            Some(1.0)
        );
        let version = t["version"].as_str().unwrap();
        assert_eq!(
            value(
                &metrics,
                "hadr_instance_version",
                &[("instance", name), ("version", version)]
            ),
            Some(1.0)
        );
        ok_total += value(
            &metrics,
            "hadr_requests_total",
            &[("instance", name), ("status", "200")],
        )
        .unwrap_or(0.0);
    }
    // Every 200 counted by the router was served by exactly one instance.
    assert_eq!(ok_total, 34.0);
    let served: f64 = ["predict1", "predict2", "predict3"]
        .iter()
        .map(|n| topology[*n]["served"].as_f64().unwrap())
        .sum();
    assert_eq!(served, ok_total);
    assert_eq!(
        value(
            &metrics,
            "hadr_instance_traps_total",
            &[("instance", "predict1")]
        ),
        Some(1.0)
    );
    let refused: f64 = metrics
        .samples
        .iter()
        .filter(|s| s.metric == "hadr_requests_total" && s.labels.get("status") == Some("422"))
        .map(|s| match s.value {
            Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(refused, 3.0);
    let count = metrics
        .samples
        .iter()
        .find(|s| s.metric == "hadr_request_duration_seconds")
        .map(|s| match &s.value {
            Value::Histogram(buckets) => buckets.last().unwrap().count,
            other => panic!("{other:?}"),
        });
    assert_eq!(
        count,
        Some(37.0),
        "every /predict answer is in the histogram"
    );
    let version = topology["predict1"]["version"].as_str().unwrap();
    // The pool (2 spares) gave one to replace the trap and refills in the
    // background: either is a correct reading.
    let spares = value(&metrics, "hadr_warm_pool_spares", &[("version", version)]);
    assert!(
        matches!(spares, Some(v) if v == 1.0 || v == 2.0),
        "{spares:?}"
    );
    assert_eq!(value(&metrics, "hadr_rollouts_total", &[]), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_nothing_can_take_a_request() {
    let topology = common::with_faulty_guest("single.json", &[("max_load", 1.into())]);
    let host = Host::start(&topology, &["--deadline", "60s"]);
    let (s, _, b) = get(host.router, "/readyz").await;
    assert_eq!((s, &b["ready"]), (StatusCode::OK, &serde_json::json!(true)));
    let in_flight = hold_in_flight(&host, "predict1").await;
    let (s, _, b) = get(host.router, "/readyz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert_eq!(b["error"], "not_ready");
    let (s, _, _) = in_flight.await.unwrap();
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = get(host.router, "/readyz").await;
    assert_eq!(s, StatusCode::OK);
}

/// With its actives full, the router is still ready while a standby could
/// take the request (it is promoted for it), as the model's readiness says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_counts_a_standby_that_could_take_the_request() {
    let topology = common::with_faulty_guest("2-active.json", &[("max_load", 1.into())]);
    let host = Host::start(&topology, &["--deadline", "60s"]);
    // Two requests of 3 slow rows (900 ms) fill both actives.
    let slow = bytes::Bytes::from(inputs(&vec![common::slow_row(); 3]));
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(post(host.router, "/predict", slow.clone())))
        .collect();
    host.wait_for("both actives full", |t| {
        t["predict1"]["load"] == 1 && t["predict2"]["load"] == 1
    })
    .await;
    assert_eq!(host.topology().await["predict3"]["role"], "standby");
    let (s, _, b) = get(host.router, "/readyz").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _, b) = get(host.router, "/v2/health/ready").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "the actives were free again when readiness was asked"
    );
    for held in held {
        assert_eq!(held.await.unwrap().0, StatusCode::OK);
    }
}

/// The whole answer to one request sent raw with `connection: close`.
async fn exchange_to_end(addr: std::net::SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the connection was not closed")
    .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// HEAD is GET without the body (RFC 9110), on the router, an instance's
/// port and the protocol's probes: what balancers and probes may send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_as_get_without_the_body() {
    let host = Host::start(&free_ports("single.json"), &[]);
    let instance = host.instance_addr("predict1").await;
    for (addr, path) in [
        (host.router, "/healthz"),
        (host.router, "/readyz"),
        (host.router, "/topology"),
        (instance, "/readyz"),
        (host.router, "/v2/health/ready"),
    ] {
        let answer = exchange_to_end(
            addr,
            &format!("HEAD {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
        )
        .await;
        let (head, rest) = answer.split_once("\r\n\r\n").expect("a whole head");
        assert!(head.starts_with("HTTP/1.1 200"), "HEAD {path}: {answer}");
        assert!(
            head.to_ascii_lowercase().contains("content-length: "),
            "HEAD {path}: {head}"
        );
        assert_eq!(rest, "", "HEAD {path} sent a body");
    }
}
