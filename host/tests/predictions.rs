//! Acceptance: through the running binary, every case of each model's cases
//! file matches its library's answers (scikit-learn, LightGBM, XGBoost):
//! class probabilities to 1e-5, regression to 1e-5 relative; and the digits
//! model is at least 95% accurate on its held-out split.

mod common;

use common::{cases, inputs, post, repo, Host};
use hyper::StatusCode;

/// A one-instance topology serving `model` with the generic guest.
fn serve(model: &str) -> Host {
    let path = repo().join("models").join(format!("{model}.onnx"));
    let topology = serde_json::json!({
        "predict1": {"status": true, "load": 0, "model": path}
    })
    .to_string();
    Host::start(&topology, &[])
}

/// Serves `model` from a one-instance topology and checks every case,
/// in batches and one row at a time. Returns the served accuracy.
async fn check_model(model: &str) -> f64 {
    let host = serve(model);
    let cases = cases(model);
    let all = cases["cases"].as_array().unwrap();
    // Wine is small: its whole held-out split is 36 rows.
    assert!(all.len() >= 36, "{model}: too few cases to mean anything");
    let mut correct = 0;
    let mut worst = 0.0f64;
    for (chunk_index, chunk) in all.chunks(37).enumerate() {
        let rows: Vec<_> = chunk.iter().map(|c| c["input"].clone()).collect();
        let (status, _, answer) = post(host.router, "/predict", inputs(&rows)).await;
        assert_eq!(status, StatusCode::OK, "{model}: {answer}");
        assert_eq!(answer["model"], model);
        assert_eq!(answer["instance"], "predict1");
        let outputs = answer["outputs"].as_array().unwrap();
        let labels = answer["labels"].as_array().unwrap();
        assert_eq!(outputs.len(), chunk.len());
        for (k, case) in chunk.iter().enumerate() {
            let want = case["probabilities"].as_array().unwrap();
            let got = outputs[k].as_array().unwrap();
            assert_eq!(got.len(), want.len(), "{model}: class count");
            for (g, w) in got.iter().zip(want) {
                let diff = (g.as_f64().unwrap() - w.as_f64().unwrap()).abs();
                worst = worst.max(diff);
                assert!(
                    diff <= 1e-5,
                    "{model}: case {} differs by {diff}: got {got:?}, scikit-learn {want:?}",
                    chunk_index * 37 + k
                );
            }
            if labels[k] == case["target"] {
                correct += 1;
            }
        }
    }
    // One row per request too: the batch path is not the only path.
    for case in all.iter().take(20) {
        let (status, _, answer) =
            post(host.router, "/predict", inputs(&[case["input"].clone()])).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["labels"][0], case["label"], "{model}: argmax label");
    }
    eprintln!("{model}: {} cases, worst difference {worst:e}", all.len());
    correct as f64 / all.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_cases_match_scikit_learn_and_accuracy_holds() {
    let accuracy = check_model("digits").await;
    eprintln!("digits held-out accuracy through hadr: {accuracy:.4}");
    assert!(accuracy >= 0.95, "digits accuracy {accuracy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breast_cancer_tree_ensemble_cases_match_scikit_learn() {
    let accuracy = check_model("breast_cancer").await;
    eprintln!("breast_cancer held-out accuracy through hadr: {accuracy:.4}");
    assert!(accuracy >= 0.9, "breast_cancer accuracy {accuracy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_v2_cases_match_scikit_learn() {
    let accuracy = check_model("digits-v2").await;
    eprintln!("digits-v2 held-out accuracy through hadr: {accuracy:.4}");
    assert!(accuracy >= 0.95, "digits-v2 accuracy {accuracy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lightgbm_binary_classifier_matches_lightgbm() {
    let accuracy = check_model("lgbm_cancer").await;
    eprintln!("lgbm_cancer held-out accuracy through hadr: {accuracy:.4}");
    assert!(accuracy >= 0.9, "lgbm_cancer accuracy {accuracy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lightgbm_multiclass_classifier_matches_lightgbm() {
    let accuracy = check_model("lgbm_wine").await;
    eprintln!("lgbm_wine held-out accuracy through hadr: {accuracy:.4}");
    assert!(accuracy >= 0.9, "lgbm_wine accuracy {accuracy}");
}

/// A regressor's answer: one value per row, no labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xgboost_regressor_matches_xgboost() {
    let model = "xgb_diabetes";
    let host = serve(model);
    let all = cases(model)["cases"].as_array().unwrap().clone();
    assert!(all.len() > 50, "too few cases to mean anything");
    let mut worst = 0.0f64;
    for chunk in all.chunks(29) {
        let rows: Vec<_> = chunk.iter().map(|c| c["input"].clone()).collect();
        let (status, _, answer) = post(host.router, "/predict", inputs(&rows)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert!(
            answer.get("labels").is_none(),
            "a regression has no labels: {answer}"
        );
        let outputs = answer["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), chunk.len());
        for (got, case) in outputs.iter().zip(chunk) {
            let got = got.as_array().unwrap();
            assert_eq!(got.len(), 1, "one target");
            let want = case["prediction"].as_f64().unwrap();
            let relative = (got[0].as_f64().unwrap() - want).abs() / want.abs().max(1e-12);
            worst = worst.max(relative);
            assert!(relative <= 1e-5, "got {got:?}, XGBoost {want}");
        }
    }
    eprintln!(
        "{model}: {} cases, worst relative difference {worst:e}",
        all.len()
    );
}

/// Every body a model's cases make, and bodies the parser refuses, each
/// answered (or refused) by the generic guest twice: parsed on the host
/// (`hadr:predictor/rows`, what `/predict` uses) and by the guest's own
/// `predict`. Byte for byte the same, one by one and merged in batches.
#[tokio::test(flavor = "current_thread")]
async fn rows_parsed_on_the_host_are_answered_as_the_guest_answers_its_own_bodies() {
    use hadr_server::sandbox::deployment::Deployment;
    use hadr_server::sandbox::engine::{HostRuntime, Limits};
    use hadr_server::sandbox::live::{CallError, Predicted};
    use hadr_server::sandbox::nn::{LoadedModel, DEFAULT_MODEL_BUDGET};

    let runtime = HostRuntime::new(Limits::default(), 1).unwrap();
    let guest = hadr_server::sandbox::deployment::CompiledModule::from_file(
        &runtime,
        &repo().join(hadr_server::serve::DEFAULT_GUEST),
        None,
    )
    .map(std::sync::Arc::new)
    .unwrap();
    // What the client is sent: the answer with its origin (added without a
    // second read for the host's JSON, checked for the guest's), or the
    // refusal; and whether the host wrote it.
    let origin = predict_core::Origin {
        model: "m",
        instance: "i",
        version: "v",
    };
    let sent = |r: Result<Predicted, CallError>| match r {
        Ok(answer) => Ok((
            String::from_utf8(answer.with_origin(origin).unwrap()).unwrap(),
            matches!(answer, Predicted::Host(_)),
        )),
        Err(CallError::Rejected(e)) => Err(e),
        Err(fault) => panic!("{fault}"),
    };
    let text = |answer: Result<(String, bool), _>| answer.map(|(text, _)| text);
    for model in ["digits", "breast_cancer", "lgbm_wine", "xgb_diabetes"] {
        let path = repo().join("models").join(format!("{model}.onnx"));
        let loaded = LoadedModel::from_file(&path, DEFAULT_MODEL_BUDGET).unwrap();
        let deployment = Deployment::new(guest.clone(), std::sync::Arc::new(loaded), 0, None);
        let mut host = deployment.instantiate(&runtime, "host").await.unwrap();
        let mut own = deployment.instantiate(&runtime, "own").await.unwrap();
        own.parse_in_guest();
        assert!(host.parses_on_host() && !own.parses_on_host());

        let rows: Vec<_> = cases(model)["cases"].as_array().unwrap()[..36]
            .iter()
            .map(|c| c["input"].clone())
            .collect();
        let mut bodies: Vec<bytes::Bytes> = rows
            .chunks(1)
            .chain(rows.chunks(7))
            .map(|rows| inputs(rows).into())
            .collect();
        let refused: [&[u8]; 7] = [
            b"not json",
            b"{}",
            b"{\"inputs\": []}",
            b"{\"inputs\": [[1, 2]]}",
            b"{\"inputs\": [[1e400]]}",
            b"{\"inputs\": [[\"a\"]]}",
            b"{\"inputs\": [[1]], \"inputs\": [[2]]}",
        ];
        bodies.extend(refused.iter().map(|b| bytes::Bytes::from_static(b)));
        let mut answered = 0;
        for body in &bodies {
            let by_host = sent(host.predict(body).await);
            let by_guest = sent(own.predict(body).await);
            assert_eq!(
                text(by_host.clone()),
                text(by_guest.clone()),
                "{model}: {}",
                String::from_utf8_lossy(body)
            );
            if let (Ok((_, host_wrote)), Ok((_, guest_wrote))) = (&by_host, &by_guest) {
                assert!(host_wrote & !guest_wrote, "{model}: who wrote the answer");
            }
            answered += usize::from(by_host.is_ok());
        }
        assert_eq!(answered, bodies.len() - refused.len(), "{model}");
        // Merged: good and refused bodies mixed, in batches of 5.
        for batch in bodies.chunks(5) {
            let texts = |replies: Vec<Result<Predicted, _>>| -> Vec<_> {
                replies
                    .into_iter()
                    .map(|r| text(sent(r.map_err(CallError::Rejected))))
                    .collect()
            };
            let by_host = texts(host.predict_batch(batch).await.unwrap());
            let by_guest = texts(own.predict_batch(batch).await.unwrap());
            assert_eq!(by_host, by_guest, "{model}: a merged batch");
        }
    }
}
