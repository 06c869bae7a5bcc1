use super::*;
use crate::sandbox::nn::{ModelInfo, TensorInfo};

fn model(shape: Vec<i64>, datatype: &'static str) -> ModelInfo {
    ModelInfo {
        inputs: vec![TensorInfo {
            name: "float_input".into(),
            datatype,
            shape,
        }],
        outputs: vec![],
        metadata: vec![],
    }
}

fn f32s(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn json_request(input: serde_json::Value) -> Result<InferRequest, BadRequest> {
    let body = serde_json::to_vec(&serde_json::json!({ "inputs": [input] })).unwrap();
    parse_request(&body, None)
}

#[test]
fn nested_and_flat_json_data_give_the_same_packed_tensor() {
    let nested = json_request(serde_json::json!({
        "name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2.5], [3, 4]]
    }))
    .unwrap();
    let flat = json_request(serde_json::json!({
        "name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2.5, 3, 4]
    }))
    .unwrap();
    assert_eq!(nested.inputs, flat.inputs);
    assert_eq!(f32s(&flat.inputs[0].data), [1.0, 2.5, 3.0, 4.0]);
    assert_eq!(flat.inputs[0].shape, [2, 2]);
}

#[test]
fn nested_data_must_nest_as_its_shape() {
    let with = |shape: serde_json::Value, data: serde_json::Value| {
        json_request(
            serde_json::json!({"name": "x", "shape": shape, "datatype": "FP32", "data": data}),
        )
    };
    assert!(with(
        serde_json::json!([2, 2]),
        serde_json::json!([[1, 2], [3, 4]])
    )
    .is_ok());
    assert!(with(serde_json::json!([2, 2]), serde_json::json!([1, 2, 3, 4])).is_ok());
    assert!(with(
        serde_json::json!([2, 1, 2]),
        serde_json::json!([[1, 2], [3, 4]])
    )
    .is_ok());
    for ragged in [
        serde_json::json!([[1, 2, 3], [4]]),
        serde_json::json!([[1, 2, 3, 4]]),
        serde_json::json!([[1, 2], 3, 4]),
        serde_json::json!([[[1, 2], [3, 4]]]),
    ] {
        let e = with(serde_json::json!([2, 2]), ragged.clone()).unwrap_err();
        assert!(e.0.contains("not as shape [2, 2] says"), "{ragged}: {e}");
    }
}

#[test]
fn binary_inputs_are_cut_from_the_tail_in_input_order() {
    let header = serde_json::to_vec(&serde_json::json!({
        "id": "r1",
        "inputs": [
            {"name": "a", "shape": [2], "datatype": "INT32", "parameters": {"binary_data_size": 8}},
            {"name": "b", "shape": [1], "datatype": "FP64", "parameters": {"binary_data_size": 8}}
        ],
        "outputs": [{"name": "o", "parameters": {"binary_data": true}}]
    }))
    .unwrap();
    let mut body = header.clone();
    body.extend_from_slice(&7i32.to_le_bytes());
    body.extend_from_slice(&(-3i32).to_le_bytes());
    body.extend_from_slice(&0.5f64.to_le_bytes());
    let request = parse_request(&body, Some(header.len())).unwrap();
    assert_eq!(request.id.as_deref(), Some("r1"));
    assert_eq!(request.inputs[0].data, [7, 0, 0, 0, 253, 255, 255, 255]);
    assert_eq!(request.inputs[1].data, 0.5f64.to_le_bytes());
    assert_eq!(request.outputs[0].binary, Some(true));
}

#[test]
fn sizes_that_disagree_are_refused_with_what_was_expected() {
    let header = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "a", "shape": [3], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]
    }))
    .unwrap();
    let mut body = header.clone();
    body.extend_from_slice(&[0; 8]);
    let e = parse_request(&body, Some(header.len())).unwrap_err();
    assert!(e.0.contains("3 FP32 elements take 12 bytes"), "{e}");

    // A size that overruns the body.
    let header = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "a", "shape": [4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]
    }))
    .unwrap();
    let mut body = header.clone();
    body.extend_from_slice(&[0; 8]);
    let e = parse_request(&body, Some(header.len())).unwrap_err();
    assert!(e.0.contains("only 8 bytes of binary data are left"), "{e}");

    // Bytes left over, a header length past the end, a JSON count mismatch.
    let mut body = header.clone();
    body.extend_from_slice(&[0; 20]);
    let e = parse_request(&body, Some(header.len())).unwrap_err();
    assert!(e.0.contains("4 bytes beyond"), "{e}");
    let e = parse_request(&header, Some(header.len() + 1)).unwrap_err();
    assert!(e.0.contains("Inference-Header-Content-Length"), "{e}");
    let e = json_request(serde_json::json!({
        "name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5]
    }))
    .unwrap_err();
    assert!(e.0.contains("holds 6 elements, `data` has 5"), "{e}");
}

#[test]
fn a_huge_shape_is_refused_by_its_data_without_allocating_for_it() {
    // 2^45 elements: sizing anything by the shape would abort the process.
    for datatype in ["FP32", "BYTES"] {
        let e = json_request(serde_json::json!({
            "name": "x", "shape": [1u64 << 45], "datatype": datatype, "data": [0]
        }))
        .unwrap_err();
        assert!(
            e.0.contains("holds 35184372088832 elements, `data` has 1"),
            "{datatype}: {e}"
        );
    }
    let e = json_request(serde_json::json!({
        "name": "x", "shape": [1u64 << 32, 1u64 << 32], "datatype": "FP32", "data": [0]
    }))
    .unwrap_err();
    assert!(e.0.contains("is too large"), "{e}");
}

#[test]
fn bad_datatypes_and_values_name_the_input() {
    let e = json_request(serde_json::json!({
        "name": "x", "shape": [1], "datatype": "FLOAT", "data": [1]
    }))
    .unwrap_err();
    assert!(
        e.0.contains("input `x`: unknown datatype `FLOAT`") && e.0.contains("FP32"),
        "{e}"
    );
    let e = json_request(serde_json::json!({
        "name": "x", "shape": [2], "datatype": "INT8", "data": [1, 300]
    }))
    .unwrap_err();
    assert!(e.0.contains("element 1 is 300, not an INT8"), "{e}");
    let e = json_request(serde_json::json!({
        "name": "x", "shape": [-1], "datatype": "INT8", "data": [1]
    }))
    .unwrap_err();
    assert!(e.0.contains("negative dimension"), "{e}");
    let e = parse_request(br#"{"inputs": []}"#, None).unwrap_err();
    assert!(e.0.contains("no inputs"), "{e}");
    let e = parse_request(br#"{"input": []}"#, None).unwrap_err();
    assert!(e.0.contains("not an inference request"), "{e}");
}

#[test]
fn bytes_elements_are_length_prefixed_both_from_json_and_binary() {
    let request = json_request(serde_json::json!({
        "name": "records", "shape": [2], "datatype": "BYTES", "data": ["ab", ""]
    }))
    .unwrap();
    assert_eq!(request.inputs[0].data, [2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
    let header = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "records", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 7}}]
    }))
    .unwrap();
    let mut body = header.clone();
    body.extend_from_slice(&[3, 0, 0, 0, b'x', b'y', b'z']);
    let e = parse_request(&body, Some(header.len())).unwrap_err();
    assert!(
        e.0.contains("the shape holds 2 elements, the BYTES data 1"),
        "{e}"
    );
}

#[test]
fn fitting_converts_to_the_models_type_and_checks_fixed_dimensions() {
    let request = json_request(serde_json::json!({
        "name": "float_input", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]
    }))
    .unwrap();
    let fitted = fit(&request.inputs, &model(vec![-1, 3], "float")).unwrap();
    assert_eq!(fitted[0].datatype, Datatype::Fp32);
    assert_eq!(f32s(&fitted[0].data), [1.0, 2.0, 3.0]);

    let e = fit(&request.inputs, &model(vec![-1, 4], "float")).unwrap_err();
    assert!(
        e.0.contains("has shape [1, 3]; the model takes [-1, 4]"),
        "{e}"
    );
    let lossy = json_request(serde_json::json!({
        "name": "float_input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]
    }))
    .unwrap();
    let e = fit(&lossy.inputs, &model(vec![-1, 3], "int64")).unwrap_err();
    assert!(e.0.contains("is FP32, and the model takes INT64"), "{e}");
    let empty = json_request(serde_json::json!({
        "name": "float_input", "shape": [0, 3], "datatype": "FP32", "data": []
    }))
    .unwrap();
    let e = fit(&empty.inputs, &model(vec![-1, 3], "float")).unwrap_err();
    assert!(e.0.contains("[0, 3], which holds no elements"), "{e}");
    // A 0 the model declares, or one outside the batch, is the model's.
    let zero_width = json_request(serde_json::json!({
        "name": "float_input", "shape": [2, 0], "datatype": "FP32", "data": []
    }))
    .unwrap();
    assert!(fit(&zero_width.inputs, &model(vec![-1, -1], "float")).is_ok());
    assert!(fit(&empty.inputs, &model(vec![0, 3], "float")).is_ok());
}

#[test]
fn unknown_and_missing_inputs_are_refused_unless_a_guest_reads_bytes() {
    let other = json_request(serde_json::json!({
        "name": "pixels", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]
    }))
    .unwrap();
    let e = fit(&other.inputs, &model(vec![-1, 3], "float")).unwrap_err();
    assert!(
        e.0.contains("no input `pixels`; its inputs are `float_input`"),
        "{e}"
    );
    let records = json_request(serde_json::json!({
        "name": "records", "shape": [1], "datatype": "BYTES", "data": ["{}"]
    }))
    .unwrap();
    let fitted = fit(&records.inputs, &model(vec![-1, 3], "float")).unwrap();
    assert_eq!(fitted, records.inputs, "passed to the guest as sent");
    let two = parse_request(
        br#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]},
                        {"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]}"#,
        None,
    )
    .unwrap_err();
    assert!(two.0.contains("given twice"), "{two}");
}

fn output(name: &str, values: &[f32]) -> Tensor {
    Tensor {
        name: name.into(),
        datatype: Datatype::Fp32,
        shape: vec![1, values.len() as u64],
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn label(value: i64) -> Tensor {
    Tensor {
        name: "label".into(),
        datatype: Datatype::Int64,
        shape: vec![1],
        data: value.to_le_bytes().to_vec(),
    }
}

const ORIGIN: Origin<'static> = Origin {
    model: "m",
    version: "v1",
    id: Some("42"),
};

#[test]
fn json_responses_carry_every_output_in_model_order() {
    let outputs = [label(3), output("probabilities", &[0.25, 0.75])];
    let encoded = encode_response(ORIGIN, &outputs, &[], false).unwrap();
    assert_eq!(encoded.header_length, None);
    let body: serde_json::Value = serde_json::from_slice(&encoded.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "model_name": "m", "model_version": "v1", "id": "42",
            "outputs": [
                {"name": "label", "datatype": "INT64", "shape": [1], "data": [3]},
                {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}
            ]
        })
    );
}

#[test]
fn float_outputs_json_cannot_carry_are_refused_unless_binary() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        // Floats alone (a label beside them is refused: see below).
        let outputs = [output("probabilities", &[0.25, bad])];
        let e = encode_response(ORIGIN, &outputs, &[], false).unwrap_err();
        assert!(
            matches!(&e, EncodeError::Refused(m) if m.contains("output `probabilities` element 1 is")
                && m.contains("ask for it with binary_data")),
            "{e:?}"
        );
        let binary = encode_response(ORIGIN, &outputs, &[], true).unwrap();
        let n = binary.header_length.expect("binary outputs");
        assert_eq!(
            f32s(&binary.body[n..]).last().unwrap().to_bits(),
            bad.to_bits()
        );
    }
    let fp64 = Tensor {
        name: "y".into(),
        datatype: Datatype::Fp64,
        shape: vec![1],
        data: f64::NAN.to_le_bytes().to_vec(),
    };
    assert!(encode_response(ORIGIN, &[fp64], &[], false).is_err());
}

#[test]
fn binary_outputs_follow_the_json_in_its_order_and_the_header_says_where() {
    let outputs = [label(3), output("probabilities", &[0.25, 0.75])];
    let asked = [
        RequestedOutput {
            name: "probabilities".into(),
            binary: Some(true),
        },
        RequestedOutput {
            name: "label".into(),
            binary: Some(false),
        },
    ];
    let encoded = encode_response(ORIGIN, &outputs, &asked, false).unwrap();
    let n = encoded.header_length.expect("a binary output");
    let header: serde_json::Value = serde_json::from_slice(&encoded.body[..n]).unwrap();
    assert_eq!(header["outputs"][0]["data"], serde_json::json!([3]));
    assert_eq!(
        header["outputs"][1]["parameters"]["binary_data_size"],
        serde_json::json!(8)
    );
    assert_eq!(f32s(&encoded.body[n..]), [0.25, 0.75]);

    let unknown = [RequestedOutput {
        name: "scores".into(),
        binary: None,
    }];
    let e = encode_response(ORIGIN, &outputs, &unknown, false).unwrap_err();
    assert!(
        matches!(&e, EncodeError::Malformed(m) if m.contains("no output `scores`; its outputs are `label`, `probabilities`")),
        "{e:?}"
    );
}

#[test]
fn explicit_nulls_read_as_absent_members() {
    let body = serde_json::json!({
        "id": null, "parameters": null, "outputs": null,
        "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": null, "data": [1]}]
    });
    let request = parse_request(&serde_json::to_vec(&body).unwrap(), None).unwrap();
    assert_eq!(request.id, None);
    assert!(request.outputs.is_empty());
    assert!(!request.binary_output);
    let body = serde_json::json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
        "outputs": [{"name": "label", "parameters": null}]});
    let request = parse_request(&serde_json::to_vec(&body).unwrap(), None).unwrap();
    assert_eq!(request.outputs[0].binary, None);
}

#[test]
fn an_input_given_twice_is_found_among_thousands() {
    let mut inputs: Vec<_> = (0..20_000)
        .map(|i| serde_json::json!({"name": format!("a{i:05}"), "shape": [], "datatype": "BOOL", "data": true}))
        .collect();
    inputs
        .push(serde_json::json!({"name": "a12345", "shape": [], "datatype": "BOOL", "data": true}));
    let body = serde_json::to_vec(&serde_json::json!({ "inputs": inputs })).unwrap();
    let e = parse_request(&body, None).unwrap_err();
    assert!(e.0.contains("input `a12345` is given twice"), "{e}");
}

#[test]
fn values_past_a_floats_range_are_refused_and_nan_passes() {
    // JSON past FP32's range would become an infinity.
    let e = json_request(
        serde_json::json!({"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 1e39]}),
    )
    .unwrap_err();
    assert!(
        e.0.contains("element 1 is 1e+39, not a number within FP32's range"),
        "{e}"
    );
    // FP64 past FP32's range, fitted to a float model.
    let request = json_request(serde_json::json!({"name": "float_input", "shape": [1, 2], "datatype": "FP64", "data": [1, 1e39]}))
        .unwrap();
    let e = fit(&request.inputs, &model(vec![-1, 2], "float")).unwrap_err();
    assert!(e.0.contains("element 1 is 1e39, past FP32's range"), "{e}");
    // NaN and infinities the client sent pass, widened or as they are:
    // tree models read NaN as a missing value.
    let specials = [f64::NAN, f64::INFINITY];
    let wide = Tensor {
        name: "float_input".into(),
        datatype: Datatype::Fp64,
        shape: vec![1, 2],
        data: specials.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    let fitted = fit(&[wide], &model(vec![-1, 2], "float")).unwrap();
    let got = f32s(&fitted[0].data);
    assert!(got[0].is_nan() && got[1] == f32::INFINITY, "{got:?}");
    let same = Tensor {
        datatype: Datatype::Fp32,
        data: fitted[0].data.clone(),
        ..fitted[0].clone()
    };
    assert_eq!(
        fit(std::slice::from_ref(&same), &model(vec![-1, 2], "float")).unwrap()[0].data,
        same.data
    );
}

#[test]
fn conversions_write_each_target_types_own_width_and_range() {
    let ints = |datatype, data: Vec<u8>| Tensor {
        name: "float_input".into(),
        datatype,
        shape: vec![1, 2],
        data,
    };
    let int32: Vec<u8> = [7i32, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
    // INT32 to INT64: 8 bytes an element (it was an i128's 16).
    let fitted = fit(
        &[ints(Datatype::Int32, int32)],
        &model(vec![-1, 2], "int64"),
    )
    .unwrap();
    assert_eq!(
        fitted[0].data,
        [7i64, -1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
    );
    // UINT64 past INT64's range does not fit.
    let big: Vec<u8> = [1u64, u64::MAX]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert!(fit(&[ints(Datatype::Uint64, big)], &model(vec![-1, 2], "int64")).is_err());
    // BOOL takes 0 and 1 only.
    assert!(fit(
        &[ints(Datatype::Uint8, vec![0, 1])],
        &model(vec![-1, 2], "bool")
    )
    .is_ok());
    assert!(fit(
        &[ints(Datatype::Uint8, vec![0, 2])],
        &model(vec![-1, 2], "bool")
    )
    .is_err());
    // FP16 (binary) to FP32, exactly.
    let halves: Vec<u8> = [half::f16::from_f32(1.5), half::f16::from_f32(-0.25)]
        .iter()
        .flat_map(|v| v.to_bits().to_le_bytes())
        .collect();
    let fitted = fit(
        &[ints(Datatype::Fp16, halves)],
        &model(vec![-1, 2], "float"),
    )
    .unwrap();
    assert_eq!(f32s(&fitted[0].data), [1.5, -0.25]);
}

#[test]
fn a_guests_outputs_that_do_not_fill_their_shapes_are_its_fault() {
    let mut short = output("probabilities", &[0.25, 0.75]);
    short.shape = vec![1, 3];
    let e = encode_response(ORIGIN, &[short], &[], false).unwrap_err();
    assert!(
        matches!(&e, EncodeError::Malformed(m) if m.contains("has 8 bytes")),
        "{e:?}"
    );
    let twice = [label(1), label(2)];
    let e = encode_response(ORIGIN, &twice, &[], false).unwrap_err();
    assert!(
        matches!(&e, EncodeError::Malformed(m) if m.contains("given twice")),
        "{e:?}"
    );
    let bytes = Tensor {
        name: "records".into(),
        datatype: Datatype::Bytes,
        shape: vec![2],
        data: vec![1, 0, 0, 0, b'x'],
    };
    let e = encode_response(ORIGIN, &[bytes], &[], true).unwrap_err();
    assert!(matches!(e, EncodeError::Malformed(_)), "{e:?}");
}

#[test]
fn outputs_made_up_from_nan_are_refused_and_floats_alone_pass_as_binary() {
    let outputs = [label(3), output("probabilities", &[f32::NAN, 0.5])];
    let only = |name: &str, binary| {
        [RequestedOutput {
            name: name.into(),
            binary: Some(binary),
        }]
    };
    for asked in [&only("label", false)[..], &only("label", true), &[]] {
        let e = encode_response(ORIGIN, &outputs, asked, true).unwrap_err();
        assert!(
            matches!(&e, EncodeError::Refused(m) if m.contains("output `probabilities` element 0 is NaN, so output `label` would be made up")),
            "{asked:?}: {e:?}"
        );
    }
    let encoded = encode_response(ORIGIN, &outputs, &only("probabilities", true), false).unwrap();
    let n = encoded.header_length.unwrap();
    assert!(f32s(&encoded.body[n..])[0].is_nan());
}

#[test]
fn a_dimension_past_int64_is_refused_even_in_a_shape_of_no_elements() {
    let body = serde_json::json!({"inputs": [
        {"name": "x", "shape": [0u64, u64::MAX], "datatype": "FP64", "data": []}
    ]});
    assert!(parse_request(&serde_json::to_vec(&body).unwrap(), None).is_err());
}

#[test]
fn every_datatype_has_one_name_and_a_size_that_matches_its_bytes() {
    for (datatype, name) in DATATYPES {
        assert_eq!(parse_datatype(name).unwrap(), datatype);
        assert_eq!(datatype_name(datatype), name);
    }
    assert_eq!(element_size(Datatype::Fp64), Some(8));
    assert_eq!(element_size(Datatype::Bytes), None);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the bytes and the header length, parsing answers (an
        /// error or a request) without panicking, and an accepted request's
        /// tensors hold exactly what their shapes say.
        #[test]
        fn any_body_parses_or_is_refused(body in proptest::collection::vec(any::<u8>(), 0..512),
                                         split in proptest::option::of(0usize..600)) {
            if let Ok(request) = parse_request(&body, split) {
                for t in &request.inputs {
                    let n: u64 = t.shape.iter().product();
                    if let Some(w) = element_size(t.datatype) {
                        prop_assert_eq!(t.data.len() as u64, n * w as u64);
                    }
                }
            }
        }

        /// Infer requests that are the protocol's JSON header (random
        /// inputs: datatypes, shapes, JSON data or binary sizes, mostly
        /// sizes that fit, so that many are accepted) followed by a binary
        /// tail of their sizes (plus, at times, stray bytes), split where
        /// the header says or anywhere: parsing never panics, and an
        /// accepted request's tensors hold exactly what their shapes and
        /// datatypes say, having used the whole tail.
        #[test]
        fn framed_requests_parse_to_tensors_their_shapes_fill(
            inputs in proptest::collection::vec(
                (prop::sample::select(vec!["a", "b", "float_input"]),
                 prop::sample::select(vec!["FP32", "FP64", "FP16", "INT64", "INT8", "UINT16", "BOOL"]),
                 proptest::collection::vec(0u64..4, 0..3),
                 prop_oneof![
                     proptest::collection::vec(-4i64..4, 0..10).prop_map(Some),
                     Just(None),
                 ],
                 prop_oneof![3 => Just(0u64), 1 => 1u64..4]),
                1..3),
            stray in prop_oneof![3 => Just(0usize), 1 => 1usize..8],
            split in prop_oneof![3 => Just(None), 1 => (0usize..400).prop_map(Some)]) {
            let mut tail_len = 0;
            let inputs: Vec<_> = inputs.iter().map(|(name, datatype, shape, data, off)| {
                let input = serde_json::json!({"name": name, "datatype": datatype, "shape": shape});
                match data {
                    Some(values) => serde_json::json!({"data": values}),
                    None => {
                        let width = element_size(parse_datatype(datatype).unwrap()).unwrap() as u64;
                        let size = shape.iter().product::<u64>() * width + off;
                        tail_len += size as usize;
                        serde_json::json!({"parameters": {"binary_data_size": size}})
                    }
                }
                .as_object()
                .unwrap()
                .iter()
                .fold(input, |mut input, (k, v)| { input[k] = v.clone(); input })
            }).collect();
            let header = serde_json::to_vec(&serde_json::json!({"inputs": inputs})).unwrap();
            let mut body = header.clone();
            body.extend((0..tail_len + stray).map(|i| i as u8));
            let length = split.unwrap_or(header.len());
            if let Ok(request) = parse_request(&body, Some(length)) {
                let mut binary_used = 0;
                for (t, given) in request.inputs.iter().zip(&inputs) {
                    let n: u64 = t.shape.iter().product();
                    let w = element_size(t.datatype).unwrap();
                    prop_assert_eq!(t.data.len() as u64, n * w as u64);
                    if given.get("parameters").is_some() {
                        binary_used += t.data.len();
                    }
                }
                prop_assert_eq!(binary_used, body.len() - length);
            }
        }

        /// Shapes of any size, huge ones included, against a little data:
        /// refused (nothing is sized by the shape) unless they hold exactly
        /// the data's elements.
        #[test]
        fn any_declared_shape_is_checked_against_the_data(
            shape in proptest::collection::vec(prop_oneof![0u64..4, Just(1u64 << 45), Just(u64::MAX), any::<u64>()], 0..4),
            values in proptest::collection::vec(-1e6f64..1e6, 0..8),
            datatype in prop::sample::select(vec!["FP32", "FP64", "INT64", "BOOL", "BYTES"])) {
            let body = serde_json::to_vec(&serde_json::json!({"inputs": [
                {"name": "x", "shape": shape, "datatype": datatype, "data": values}
            ]})).unwrap();
            let elements = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
            // Dimensions are the protocol's INT64: past i64::MAX is refused,
            // even in a shape of no elements (`[0, u64::MAX]`).
            let dimensions_fit = shape.iter().all(|&d| i64::try_from(d).is_ok());
            if parse_request(&body, None).is_ok() {
                prop_assert!(dimensions_fit);
                prop_assert_eq!(elements, Some(values.len() as u64));
            } else {
                prop_assert!(
                    !dimensions_fit || elements != Some(values.len() as u64) || datatype != "FP64"
                );
            }
        }

        /// Well-formed JSON requests with random shapes and values either
        /// parse to the right number of elements or are refused; a fitted
        /// tensor always has the model's type.
        #[test]
        fn json_requests_fit_or_are_refused(rows in 0u64..4, cols in 0u64..4,
                                            values in proptest::collection::vec(-1e6f64..1e6, 0..20),
                                            datatype in prop::sample::select(vec!["FP32", "FP64", "INT32", "INT64", "BOOL", "BYTES"])) {
            let body = serde_json::to_vec(&serde_json::json!({"inputs": [
                {"name": "float_input", "shape": [rows, cols], "datatype": datatype, "data": values}
            ]})).unwrap();
            if let Ok(request) = parse_request(&body, None) {
                prop_assert_eq!(values.len() as u64, rows * cols);
                let fitted = fit(&request.inputs, &model(vec![-1, cols as i64], "float"));
                // Every number fits a float model but BYTES, and an empty
                // batch is the client's mistake.
                prop_assert_eq!(fitted.is_ok(), datatype != "BYTES" && rows > 0, "{:?}", fitted);
                if let Ok(fitted) = fitted {
                    prop_assert_eq!(fitted[0].datatype, Datatype::Fp32);
                    prop_assert_eq!(fitted[0].data.len() as u64, rows * cols * 4);
                }
            }
        }
    }
}
