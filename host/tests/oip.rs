//! Acceptance: the Open Inference Protocol (KServe v2) on the router and on
//! an instance's port. One topology serves three models (digits,
//! breast_cancer, and the article's placement model with its own guest);
//! every answer is checked against scikit-learn's (the cases files) and
//! `/predict`'s, and every bad request gets its status and `{"error"}`
//! while the host keeps serving. Triton's own Python client is driven by
//! `tests/tritonclient.rs`.

mod common;

use bytes::Bytes;
use common::{cases, get, models_topology as topology, post, request_bytes, Host};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

/// A raw v2 request: status, headers, body bytes.
async fn v2(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: impl Into<Bytes>,
) -> (StatusCode, hyper::HeaderMap, Bytes) {
    request_bytes(addr, method, path, headers, body.into()).await
}

/// POST a binary infer request (`header` JSON, then `data`); the status, the
/// answer's JSON and its binary tail.
async fn infer_binary(
    addr: std::net::SocketAddr,
    path: &str,
    header: &Value,
    data: &[u8],
) -> (StatusCode, Value, Bytes) {
    let header = header.to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(data);
    let headers = [
        ("inference-header-content-length", header.len().to_string()),
        ("content-type", "application/octet-stream".to_string()),
    ];
    let (status, answer_headers, answer) = v2(addr, Method::POST, path, &headers, body).await;
    let Some(n) = answer_headers.get("inference-header-content-length") else {
        let json = serde_json::from_slice(&answer).unwrap();
        return (status, json, Bytes::new());
    };
    assert_eq!(answer_headers["content-type"], "application/octet-stream");
    let n: usize = n.to_str().unwrap().parse().unwrap();
    let json = serde_json::from_slice(&answer[..n]).unwrap();
    (status, json, answer.slice(n..))
}

/// POST a JSON infer request; the answer as JSON.
async fn infer_json(
    addr: std::net::SocketAddr,
    path: &str,
    request: &Value,
) -> (StatusCode, Value) {
    let (status, _, body) = v2(addr, Method::POST, path, &[], request.to_string()).await;
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, value)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-5, "{what}: {got:?} vs {want:?}");
    }
}

fn as_f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Every case's input rows and scikit-learn's probabilities, flat.
fn rows_and_probabilities(model: &str) -> (Vec<Value>, Vec<f64>, usize) {
    let cases = cases(model);
    let cases = cases["cases"].as_array().unwrap();
    let rows: Vec<Value> = cases.iter().map(|c| c["input"].clone()).collect();
    let probabilities: Vec<f64> = cases
        .iter()
        .flat_map(|c| as_f64s(&c["probabilities"]))
        .collect();
    let width = rows[0].as_array().unwrap().len();
    (rows, probabilities, width)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_health_and_readiness_follow_the_spec() {
    let host = Host::start(&topology(json!({})), &[]);
    let (status, _, body) = v2(host.router, Method::GET, "/v2", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    let meta: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(meta["name"], "hadr");
    assert!(meta["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));
    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/digits/ready",
    ] {
        assert_eq!(get(host.router, path).await.0, StatusCode::OK, "{path}");
    }

    let (status, _, digits) = get(host.router, "/v2/models/digits").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(digits["name"], "digits");
    assert_eq!(digits["platform"], "onnx");
    assert_eq!(
        digits["inputs"],
        json!([{"name": "float_input", "datatype": "FP32", "shape": [-1, 64]}])
    );
    let outputs: Vec<&str> = digits["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(outputs, ["label", "probabilities"]);
    let version = digits["versions"][0].as_str().unwrap().to_string();
    let topo = host.topology().await;
    assert_eq!(
        topo["digits1"]["version"],
        version.as_str(),
        "the deployment version"
    );
    let pinned = format!("/v2/models/digits/versions/{version}");
    assert_eq!(get(host.router, &pinned).await.0, StatusCode::OK);
    assert_eq!(
        get(host.router, &format!("{pinned}/ready")).await.0,
        StatusCode::OK
    );

    // Clients quote names into the URL (tritonclient does): `%69` is `i`.
    assert_eq!(
        get(host.router, "/v2/models/dig%69ts").await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(
            host.router,
            &format!("/v2/models/%64igits/versions/{version}/ready")
        )
        .await
        .0,
        StatusCode::OK
    );

    // Unknown model and version: 404 in the protocol's shape.
    let (status, _, e) = get(host.router, "/v2/models/dig%FFits").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    let (status, _, e) = get(host.router, "/v2/models/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("unknown model `nope`") && msg.contains("breast_cancer, digits, placement"),
        "{msg}"
    );
    let (status, _, e) = get(host.router, "/v2/models/digits/versions/0000-0000/ready").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(e["error"].as_str().unwrap().contains(&version), "{e}");
    let (status, headers, e) = v2(host.router, Method::DELETE, "/v2/models/digits", &[], "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET, HEAD");
    assert!(String::from_utf8_lossy(&e).contains("\"error\""));

    // An instance's port lists its own model only.
    let cancer = host.instance_addr("cancer1").await;
    assert_eq!(
        get(cancer, "/v2/models/breast_cancer").await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(cancer, "/v2/models/digits").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_infer_equals_scikit_learn_and_predict_on_router_and_instance_port() {
    let host = Host::start(&topology(json!({})), &[]);
    for model in ["digits", "breast_cancer"] {
        let (rows, want, width) = rows_and_probabilities(model);
        let n = rows.len();
        let request = json!({
            "id": "batch-1",
            "inputs": [{"name": "float_input", "shape": [n, width], "datatype": "FP32", "data": rows}],
            "outputs": [{"name": "probabilities"}]
        });
        let (status, answer) =
            infer_json(host.router, &format!("/v2/models/{model}/infer"), &request).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["model_name"], model);
        assert_eq!(answer["id"], "batch-1");
        let outputs = answer["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), 1, "only the requested output");
        assert_eq!(outputs[0]["datatype"], "FP32");
        assert_eq!(outputs[0]["shape"], json!([n, want.len() / n]));
        close(&as_f64s(&outputs[0]["data"]), &want, model);

        // The same rows through /predict, on the model's own instance and
        // on the router, which must be told the model (it serves three).
        let routed = format!("/predict?model={model}");
        let (status, _, by_router) = post(host.router, &routed, common::inputs(&rows)).await;
        assert_eq!(status, StatusCode::OK, "{by_router}");
        let instance = host
            .instance_addr(if model == "digits" {
                "digits1"
            } else {
                "cancer1"
            })
            .await;
        let (status, _, predicted) = post(instance, "/predict", common::inputs(&rows)).await;
        assert_eq!(status, StatusCode::OK);
        let scores: Vec<f64> = predicted["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(as_f64s)
            .collect();
        close(&as_f64s(&outputs[0]["data"]), &scores, "v2 vs /predict");
        assert_eq!(answer["model_version"], predicted["version"]);
        assert_eq!(
            by_router["outputs"], predicted["outputs"],
            "router vs instance"
        );
    }

    // Naming no model, or one nobody serves: refused, the body read.
    let (rows, _, _) = rows_and_probabilities("digits");
    let (status, _, e) = post(host.router, "/predict", common::inputs(&rows)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"], "model_required", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("breast_cancer, digits, placement"),
        "{e}"
    );
    let (status, _, e) = post(host.router, "/predict?model=nope", common::inputs(&rows)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    let digits1 = host.instance_addr("digits1").await;
    let (status, _, e) = post(
        digits1,
        "/predict?model=breast_cancer",
        common::inputs(&rows),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    let (status, _, e) = post(digits1, "/predict?model=digits", common::inputs(&rows)).await;
    assert_eq!(status, StatusCode::OK, "{e}");

    // INT64 rows are converted to the model's FP32; on an instance's port.
    let digits = host.instance_addr("digits1").await;
    let (rows, want, width) = rows_and_probabilities("digits");
    let ints: Vec<Value> = rows[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| json!(v.as_f64().unwrap() as i64))
        .collect();
    assert!(
        ints.iter()
            .zip(rows[0].as_array().unwrap())
            .all(|(i, f)| i.as_f64() == f.as_f64()),
        "digits pixels are integers"
    );
    let request = json!({"inputs": [{"name": "float_input", "shape": [1, width], "datatype": "INT64", "data": ints}]});
    let (status, answer) = infer_json(digits, "/v2/models/digits/infer", &request).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let probabilities = answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "probabilities")
        .unwrap();
    close(&as_f64s(&probabilities["data"]), &want[..10], "INT64 input");
    // v2, /predict on the router and on the port (twice), and INT64.
    assert_eq!(host.topology().await["digits1"]["served"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_tensors_both_ways() {
    let host = Host::start(&topology(json!({})), &[]);
    let (rows, want, width) = rows_and_probabilities("breast_cancer");
    let data: Vec<u8> = rows
        .iter()
        .flat_map(|r| as_f64s(r).into_iter().map(|v| v as f32))
        .flat_map(f32::to_le_bytes)
        .collect();
    let header = json!({
        "inputs": [{"name": "float_input", "shape": [rows.len(), width], "datatype": "FP32",
                    "parameters": {"binary_data_size": data.len()}}],
        "outputs": [{"name": "label", "parameters": {"binary_data": false}},
                    {"name": "probabilities", "parameters": {"binary_data": true}}]
    });
    let path = "/v2/models/breast_cancer/infer";
    let (status, json, binary) = infer_binary(host.router, path, &header, &data).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["outputs"][0]["name"], "label");
    assert_eq!(
        json["outputs"][0]["data"].as_array().unwrap().len(),
        rows.len()
    );
    assert_eq!(
        json["outputs"][1]["parameters"]["binary_data_size"],
        binary.len()
    );
    let got: Vec<f64> = f32s(&binary).into_iter().map(f64::from).collect();
    close(&got, &want, "binary probabilities");

    // All outputs binary at once (what tritonclient asks when it names none).
    let header = json!({
        "inputs": [{"name": "float_input", "shape": [1, width], "datatype": "FP32",
                    "parameters": {"binary_data_size": width * 4}}],
        "parameters": {"binary_data_output": true}
    });
    let (status, json, binary) = infer_binary(host.router, path, &header, &data[..width * 4]).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(
        binary.len(),
        8 + 2 * 4,
        "an INT64 label and two FP32 probabilities"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_articles_model_takes_feature_rows_or_records() {
    let host = Host::start(&topology(json!({})), &[]);
    let cases = cases("placement");
    let cases = cases["cases"].as_array().unwrap();
    let vectors: Vec<Value> = cases.iter().map(|c| c["vector"].clone()).collect();
    let want: Vec<f64> = cases
        .iter()
        .map(|c| c["probability"].as_f64().unwrap())
        .collect();
    let width = vectors[0].as_array().unwrap().len();
    let positive = |answer: &Value| -> Vec<f64> {
        let p = answer["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "probabilities")
            .unwrap_or_else(|| panic!("{answer}"));
        as_f64s(&p["data"]).chunks(2).map(|row| row[1]).collect()
    };
    let request = json!({"inputs": [{"name": "float_input", "shape": [vectors.len(), width], "datatype": "FP32", "data": vectors}]});
    let (status, answer) = infer_json(host.router, "/v2/models/placement/infer", &request).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    close(&positive(&answer), &want, "feature rows");

    let records: Vec<String> = cases.iter().map(|c| c["record"].to_string()).collect();
    let request = json!({"inputs": [{"name": "records", "shape": [records.len()], "datatype": "BYTES", "data": records}]});
    let (status, answer) = infer_json(host.router, "/v2/models/placement/infer", &request).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    close(&positive(&answer), &want, "records");

    let request = json!({"inputs": [{"name": "records", "shape": [1], "datatype": "BYTES", "data": ["{\"ssc_p\": {}}"]}]});
    let (status, answer) = infer_json(host.router, "/v2/models/placement/infer", &request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("ssc_p"),
        "{answer}"
    );
    // Row i answers element i: an element holding two records (or half of
    // one) was joined into the list and shifted the rows, with a 200.
    let request = json!({"inputs": [{"name": "records", "shape": [1], "datatype": "BYTES", "data": ["{},{}"]}]});
    let (status, answer) = infer_json(host.router, "/v2/models/placement/infer", &request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("`records` element 0"),
        "{answer}"
    );

    // FP16 feature rows, binary (the extension's own case), widened to the
    // model's FP32.
    let halves: Vec<u8> = vectors
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter())
        .flat_map(|v| half::f16::from_f64(v.as_f64().unwrap()).to_le_bytes())
        .collect();
    let header = json!({"inputs": [{"name": "float_input", "shape": [vectors.len(), width], "datatype": "FP16",
                                     "parameters": {"binary_data_size": halves.len()}}],
                        "outputs": [{"name": "probabilities", "parameters": {"binary_data": false}}]});
    let (status, answer, _) =
        infer_binary(host.router, "/v2/models/placement/infer", &header, &halves).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(positive(&answer).len(), vectors.len(), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_the_host_keeps_serving() {
    let host = Host::start(&topology(json!({})), &[]);
    let (rows, _, width) = rows_and_probabilities("digits");
    let good = json!({"inputs": [{"name": "float_input", "shape": [1, width], "datatype": "FP32", "data": rows[0]}]});
    let path = "/v2/models/digits/infer";
    let cases: Vec<(&str, String, Value, StatusCode, &str)> = vec![
        (
            "unknown model",
            "/v2/models/nope/infer".into(),
            good.clone(),
            StatusCode::NOT_FOUND,
            "unknown model `nope`",
        ),
        (
            "unknown version",
            "/v2/models/digits/versions/7/infer".into(),
            good.clone(),
            StatusCode::NOT_FOUND,
            "no version `7`",
        ),
        (
            "shape against data",
            path.into(),
            json!({"inputs": [{"name": "float_input", "shape": [2, width], "datatype": "FP32", "data": rows[0]}]}),
            StatusCode::BAD_REQUEST,
            "holds 128 elements, `data` has 64",
        ),
        (
            // Sized from the data, not the shape: allocating for this shape
            // up front would abort the process (256 TiB).
            "a shape of 2^45 elements against one value",
            path.into(),
            json!({"inputs": [{"name": "float_input", "shape": [35184372088832u64], "datatype": "FP32", "data": [0]}]}),
            StatusCode::BAD_REQUEST,
            "holds 35184372088832 elements, `data` has 1",
        ),
        (
            "a shape whose element count overflows",
            path.into(),
            json!({"inputs": [{"name": "float_input", "shape": [4294967296u64, 4294967296u64], "datatype": "FP32", "data": [0]}]}),
            StatusCode::BAD_REQUEST,
            "is too large",
        ),
        (
            // Refused before the sandbox: an empty batch is the client's
            // error (it counted as the instance's failure, a 500).
            "an empty batch",
            path.into(),
            json!({"inputs": [{"name": "float_input", "shape": [0, width], "datatype": "FP32", "data": []}]}),
            StatusCode::BAD_REQUEST,
            "holds no elements",
        ),
        (
            "shape against model",
            path.into(),
            json!({"inputs": [{"name": "float_input", "shape": [2, 32], "datatype": "FP32", "data": rows[0]}]}),
            StatusCode::BAD_REQUEST,
            "the model takes [-1, 64]",
        ),
        (
            "unknown datatype",
            path.into(),
            json!({"inputs": [{"name": "float_input", "shape": [1, width], "datatype": "FLOAT32", "data": rows[0]}]}),
            StatusCode::BAD_REQUEST,
            "unknown datatype `FLOAT32`",
        ),
        (
            "missing input",
            path.into(),
            json!({"inputs": [{"name": "pixels", "shape": [1, width], "datatype": "FP32", "data": rows[0]}]}),
            StatusCode::BAD_REQUEST,
            "no input `pixels`",
        ),
        (
            "not the protocol",
            path.into(),
            json!({"rows": [1]}),
            StatusCode::BAD_REQUEST,
            "not an inference request",
        ),
        (
            "unknown output",
            path.into(),
            json!({"inputs": good["inputs"], "outputs": [{"name": "scores"}]}),
            StatusCode::BAD_REQUEST,
            "no output `scores`",
        ),
    ];
    for (what, path, request, status, message) in cases {
        let (got, answer) = infer_json(host.router, &path, &request).await;
        assert_eq!(got, status, "{what}: {answer}");
        let error = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {answer}"));
        assert!(error.contains(message), "{what}: {error}");
    }

    // binary_data_size past the end of the body.
    let header = json!({"inputs": [{"name": "float_input", "shape": [1, width], "datatype": "FP32",
                                    "parameters": {"binary_data_size": width * 4}}]});
    let (status, answer, _) = infer_binary(host.router, path, &header, &[0; 16]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("binary_data_size is 256, but only 16 bytes"),
        "{answer}"
    );
    // Binary data counts against --max-body like any body: 413 from the
    // headers, before a byte of it is read.
    let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ninference-header-content-length: 100\r\ncontent-length: 1073741824\r\n\r\n");
    let text = common::raw_exchange(host.router, head.as_bytes()).await;
    assert!(
        text.starts_with("HTTP/1.1 413") && text.contains("\"error\""),
        "{text}"
    );
    let (status, answer) = infer_json(host.router, path, &json!({"inputs": []})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"].as_str().unwrap().contains("no inputs"),
        "{answer}"
    );

    let headers = [("inference-header-content-length", "many".to_string())];
    let (status, _, _) = v2(host.router, Method::POST, path, &headers, "{}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Given twice, it cannot say where the JSON ends (the second was ignored).
    let good_text = good.to_string();
    let n = good_text.len().to_string();
    let twice = [
        ("inference-header-content-length", n.clone()),
        ("inference-header-content-length", n),
    ];
    let (status, _, body) = v2(host.router, Method::POST, path, &twice, good_text).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");

    let (status, answer) = infer_json(host.router, path, &good).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let topo = host.topology().await;
    assert_eq!(
        topo["digits1"]["failed"], 0,
        "bad input is the client's: {topo}"
    );
    assert_eq!(topo["digits1"]["served"], 1);

    // Finite inputs the model overflows on: JSON has no number for its NaN
    // outputs (they were written as `null` with a 200); binary data has.
    let overflow = vec![3.0e38f32; width];
    let request = json!({"inputs": [{"name": "float_input", "shape": [1, width], "datatype": "FP32", "data": overflow}],
                         "outputs": [{"name": "probabilities"}]});
    let (status, answer) = infer_json(host.router, path, &request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("output `probabilities` element 0 is NaN") && error.contains("binary_data"),
        "{answer}"
    );
    let mut binary = request.clone();
    binary["parameters"] = json!({"binary_data_output": true});
    let (status, headers, body) =
        v2(host.router, Method::POST, path, &[], binary.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let n: usize = headers["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let probabilities = f32s(&body[n..]);
    assert!(
        probabilities.len() == 10 && probabilities.iter().all(|p| p.is_nan()),
        "{probabilities:?}"
    );
    // The label alone, computed from those NaNs, would be made up (it was
    // a 200 with label 0): refused, in JSON or binary, and not counted as
    // served (the encoding was checked after the instance counted it).
    let served = host.topology().await["digits1"]["served"].clone();
    for binary in [false, true] {
        let mut label = request.clone();
        label["outputs"] = json!([{"name": "label", "parameters": {"binary_data": binary}}]);
        let (status, answer) = infer_json(host.router, path, &label).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("output `label` would be made up"),
            "{answer}"
        );
    }
    // Inputs no finite FP32 holds: refused as /predict refuses them.
    let mut past = overflow.iter().map(|&v| json!(v)).collect::<Vec<_>>();
    past[5] = json!(1e39);
    for datatype in ["FP32", "FP64"] {
        let request = json!({"inputs": [{"name": "float_input", "shape": [1, width], "datatype": datatype, "data": past}]});
        let (status, answer) = infer_json(host.router, path, &request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("element 5"),
            "{answer}"
        );
    }
    let topo = host.topology().await;
    assert_eq!(topo["digits1"]["served"], served, "{topo}");
    assert_eq!(topo["digits1"]["failed"], 0, "{topo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_retries_and_shedding_are_those_of_predict() {
    // The faulty guest traps on rows whose features sum to a multiple of 3
    // and hangs on a row whose first value is -7.
    let faulty = common::faulty_guest();
    let t = topology(json!({
        "digits1": {"module": faulty, "max_load": 1},
    }));
    let host = Host::start(&t, &["--deadline", "400ms"]);
    let (safe, deadly) = common::safe_and_deadly_rows();
    let infer = |row: &Value| json!({"inputs": [{"name": "float_input", "shape": [1, 64], "datatype": "FP32", "data": row}]});

    let (status, answer) =
        infer_json(host.router, "/v2/models/digits/infer", &infer(&deadly)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("failed twice on instance digits1"),
        "{answer}"
    );
    let topo = host.topology().await;
    assert_eq!(
        topo["digits1"]["traps"], 2,
        "tried once more, as /predict is"
    );
    assert_eq!(topo["digits1"]["respawns"], 2);
    let (status, _) = infer_json(host.router, "/v2/models/digits/infer", &infer(&safe)).await;
    assert_eq!(status, StatusCode::OK);

    // With its one slot held by a hanging request, the model sheds: 503 and
    // Retry-After, while other models still serve.
    let router = host.router;
    let hang = infer(&common::hanging_row(&safe));
    let held =
        tokio::spawn(async move { infer_json(router, "/v2/models/digits/infer", &hang).await });
    while host.topology().await["digits1"]["load"] != 1 {
        assert!(
            !held.is_finished(),
            "the hanging request ended before it was seen"
        );
        tokio::time::sleep(common::POLL).await;
    }
    let (status, headers, body) = v2(
        host.router,
        Method::POST,
        "/v2/models/digits/infer",
        &[],
        infer(&safe).to_string(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(
        get(host.router, "/v2/models/digits/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (rows, _, width) = rows_and_probabilities("breast_cancer");
    let cancer = json!({"inputs": [{"name": "float_input", "shape": [1, width], "datatype": "FP32", "data": rows[0]}]});
    let (status, _) = infer_json(host.router, "/v2/models/breast_cancer/infer", &cancer).await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = held.await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{answer}");

    let metrics = common::get_text(host.router, "/metrics").await;
    assert!(
        metrics.contains("instance=\"digits1\""),
        "v2 requests are in /metrics"
    );
    let topo = host.topology().await;
    assert_eq!(topo["digits1"]["load"], 0);
    assert_eq!(
        topo["cancer2"]["role"], "standby",
        "another model's standby is not promoted"
    );
}
