//! Acceptance: the article's own predictor (a DictVectorizer and a 512-tree
//! RandomForest, `models/placement.onnx` with the `guests/placement` guest)
//! called as the article calls it: candidate records in, the article's
//! `Placement_Probability` and `Placement` out, matching scikit-learn to
//! 1e-5 for every case; `GET /predict` answers with the deployment's
//! example; and a guest without the optional `chaos` export still takes the
//! drills' trap and hang, injected by the host.

mod common;

use common::{cases, chaos, get, post, repo, Host};
use hyper::StatusCode;

/// The article's topology `name` (single, 2-active, 3-active) serving the
/// placement model, on free ports.
fn serve(name: &str, extra: &[&str]) -> Host {
    serve_with(name, &[], extra)
}

/// [`serve`] with `fields` set on every entry.
fn serve_with(name: &str, fields: &[(&str, serde_json::Value)], extra: &[&str]) -> Host {
    let file = repo()
        .join("topologies/placement")
        .join(format!("{name}.json"));
    let mut topology: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    for entry in topology.as_object_mut().unwrap().values_mut() {
        let resolve = |key: &str| file.parent().unwrap().join(entry[key].as_str().unwrap());
        let (model, module) = (resolve("model"), resolve("module"));
        entry["model"] = serde_json::json!(model);
        entry["module"] = serde_json::json!(module);
        entry["port"] = serde_json::json!("0");
        for (field, value) in fields {
            entry[*field] = value.clone();
        }
    }
    Host::start(&topology.to_string(), extra)
}

/// Checks one answer of the article's shape against a case.
fn assert_matches(answer: &serde_json::Value, case: &serde_json::Value, what: &str) {
    // Exactly: 512 pure trees vote k/512, which f32 and the answer's f64
    // both hold, as the article's Flask server printed it.
    let got = answer["Placement_Probability"].as_f64().unwrap();
    let want = case["probability"].as_f64().unwrap();
    assert_eq!(got, want, "{what}: probability {got}, scikit-learn {want}");
    assert_eq!(answer["Placement"], case["placement"], "{what}: Placement");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_articles_body_gets_the_articles_fields_matching_scikit_learn() {
    let host = serve("2-active", &[]);
    let doc = cases("placement");
    let all = doc["cases"].as_array().unwrap();
    assert!(all.len() >= 50, "at least 50 candidates");
    // Every categorical value of the vocabulary is exercised.
    for name in doc["feature_names"].as_array().unwrap() {
        let Some((key, value)) = name.as_str().unwrap().split_once('=') else {
            continue;
        };
        assert!(
            all.iter().any(|c| c["record"][key] == value),
            "no case has {key}={value}"
        );
    }
    // As the article's client sends it: a list of one record.
    for (i, case) in all.iter().enumerate() {
        let body = serde_json::to_vec(&[&case["record"]]).unwrap();
        let (status, _, answer) = post(host.router, "/predict", body).await;
        assert_eq!(status, StatusCode::OK, "case {i}: {answer}");
        assert_matches(&answer, case, &format!("case {i}"));
        assert_eq!(answer["model"], "placement");
        assert!(answer["instance"].as_str().unwrap().starts_with("predict"));
        assert!(answer["version"].as_str().unwrap().contains('-'));
    }
    // One record on its own, and every record in one request.
    let (status, _, answer) = post(
        host.router,
        "/predict",
        serde_json::to_vec(&all[0]["record"]).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_matches(&answer, &all[0], "a bare record");
    let records: Vec<_> = all.iter().map(|c| &c["record"]).collect();
    let (status, _, answer) = post(
        host.router,
        "/predict",
        serde_json::to_vec(&records).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let predictions = answer["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), all.len(), "one prediction per record");
    for (i, (p, case)) in predictions.iter().zip(all).enumerate() {
        assert_matches(p, case, &format!("record {i} of the list"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_of_the_wrong_type_is_refused_naming_it() {
    let host = serve("single", &[]);
    let example = cases("placement")["example"][0].clone();
    // Where scikit-learn's DictVectorizer raises: a null under a numeric
    // column, a list of anything but strings, an object.
    for (field, value, what) in [
        ("ssc_p", serde_json::Value::Null, "null"),
        (
            "hsc_p",
            serde_json::json!([71.0]),
            "a list holding something other than strings",
        ),
        ("workex", serde_json::json!({"years": 2}), "an object"),
    ] {
        let mut record = example.clone();
        record[field] = value;
        let (status, _, answer) = post(
            host.router,
            "/predict",
            serde_json::to_vec(&[record]).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(answer["error"], "invalid_input");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("field `{field}` is {what}")),
            "{message}"
        );
    }
    for (body, status) in [
        ("[]", StatusCode::UNPROCESSABLE_ENTITY),
        ("[1, 2]", StatusCode::UNPROCESSABLE_ENTITY),
        ("{\"gender\": ", StatusCode::BAD_REQUEST),
    ] {
        let (got, _, answer) = post(host.router, "/predict", body).await;
        assert_eq!(got, status, "{body}: {answer}");
    }
    // 300,000 empty records fit in 900 KB, under --max-body, and ran the
    // guest out of memory (a trap on two instances, counted against them,
    // enough to abort a healthy canary): refused as too many.
    let many = format!("[{}]", vec!["{}"; 300_000].join(","));
    let (got, _, answer) = post(host.router, "/predict", many).await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("send them in several"), "{message}");
    // Refusals are the client's, not the instance's: it still serves.
    let (status, _, _) = post(
        host.router,
        "/predict",
        serde_json::to_vec(&[example]).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(host.topology().await["predict1"]["traps"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_predict_answers_the_example_through_router_and_instance_port() {
    let host = serve("2-active", &[]);
    let doc = cases("placement");
    let want = doc["example_probability"].as_f64().unwrap();
    let direct = host.instance_addr("predict2").await;
    for (addr, n) in [(host.router, 3), (direct, 2)] {
        for _ in 0..n {
            let (status, _, answer) = get(addr, "/predict").await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            let got = answer["Placement_Probability"].as_f64().unwrap();
            assert_eq!(got, want);
        }
    }
    let topology = host.topology().await;
    let served: u64 = ["predict1", "predict2", "predict3"]
        .iter()
        .map(|i| topology[i]["served"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 5, "every GET is counted as served: {topology}");
    assert!(topology["predict2"]["served"].as_u64().unwrap() >= 2);
    let metrics = common::get_text(host.router, "/metrics").await;
    let answered: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("hadr_requests_total{") && l.contains("status=\"200\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(answered, 5.0, "/metrics counts the GETs:\n{metrics}");
    let (status, headers, _) =
        common::request(host.router, hyper::Method::PUT, "/predict", "".into()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "POST, GET, HEAD");
}

/// Candidates sent at once to an instance that batches are scored in one
/// model call of the forest, each answer its own record's, as the article's
/// client gets it. Twenty rows: on a CPU with AVX2 or AVX-512, hadr-trees
/// scores sixteen as bitsets and walks the other four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_sent_together_are_scored_in_one_merged_call() {
    const N: usize = 20;
    let batch = serde_json::json!({"max_requests": N, "max_delay": "1s", "wait": "full-delay"});
    let host = serve_with(
        "single",
        &[
            ("batch", batch),
            ("concurrency", 1.into()),
            ("max_load", 32.into()),
        ],
        &[],
    );
    let doc = cases("placement");
    let picked: Vec<serde_json::Value> = doc["cases"].as_array().unwrap()[..N].to_vec();
    let calls: Vec<_> = picked
        .iter()
        .map(|case| {
            let (router, body) = (host.router, serde_json::json!([case["record"]]).to_string());
            tokio::spawn(async move { post(router, "/predict", body).await })
        })
        .collect();
    for (i, (call, case)) in calls.into_iter().zip(&picked).enumerate() {
        let (status, _, answer) = call.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_matches(&answer, case, &format!("case {i}"));
    }
    let t = host.topology().await;
    assert_eq!(t["predict1"]["batching"]["batches"], 1, "{t}");
    assert_eq!(t["predict1"]["batching"]["batched_requests"], N, "{t}");
}

/// The placement guest has no `chaos` export: the host injects trap and hang
/// itself, and refuses what it cannot inject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_without_chaos_still_takes_trap_and_hang_from_the_host() {
    // The default 1 s deadline: the retry on the replacement must not race it.
    let host = serve("single", &[]);
    let (status, _, answer) = chaos(&host, "predict1", "oom").await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"], "not_drillable");
    for (fault, traps) in [("trap", 1), ("hang", 2)] {
        let (status, _, answer) = chaos(&host, "predict1", fault).await;
        assert_eq!(status, StatusCode::OK, "{fault}: {answer}");
        // The armed call faults; the request is retried on the replacement.
        let (status, _, answer) = get(host.router, "/predict").await;
        assert_eq!(status, StatusCode::OK, "{fault}: {answer}");
        let t = host.topology().await;
        assert_eq!(t["predict1"]["traps"], traps, "{fault} fired once: {t}");
        let last = t["predict1"]["last_fault"]["error"].as_str().unwrap();
        let expected = if fault == "trap" {
            "injected by the host"
        } else {
            "deadline"
        };
        assert!(last.contains(expected), "{fault}: {last}");
    }
}
