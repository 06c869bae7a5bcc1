//! Every case of the real models in `models/` through `hadr_trees::onnx()`,
//! loaded the way the host loads them (symbolic batch, `into_optimized`).
//!
//! Classifier probabilities must match the reference to 1e-5 (absolute) and
//! labels must be the class of the largest probability; regression outputs to
//! 1e-5 (relative). The models ship in the repository, so a missing model or
//! cases file fails its test, and every tree model there must have a test.

use std::path::PathBuf;

use serde_json::Value;
use tract_onnx::prelude::*;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// The tree models in `models/`, each checked by a test below.
const TREE_MODELS: [&str; 5] = [
    "breast_cancer",
    "lgbm_cancer",
    "lgbm_wine",
    "placement",
    "xgb_diabetes",
];

/// The model's plan and its cases. Panics when either file is missing:
/// they ship with the repository, so a missing one is a broken checkout or
/// a renamed model, never a reason to pass.
fn load(name: &str) -> (Arc<TypedRunnableModel>, Vec<Value>, usize) {
    let dir = models_dir();
    let (onnx, cases) = (
        dir.join(format!("{name}.onnx")),
        dir.join(format!("{name}.cases.json")),
    );
    for file in [&onnx, &cases] {
        assert!(file.is_file(), "{name}: {} is missing", file.display());
    }
    let mut model = hadr_trees::onnx()
        .with_ignore_value_info(true)
        .model_for_path(&onnx)
        .unwrap();
    let cases: Value = serde_json::from_slice(&std::fs::read(cases).unwrap()).unwrap();
    let cases = cases["cases"].as_array().unwrap().clone();
    let width = row_of(&cases[0]).len();
    let batch = model.symbols.sym("batch");
    model
        .set_input_fact(0, f32::fact(&[batch.to_dim(), width.to_dim()]).into())
        .unwrap();
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    (plan, cases, width)
}

/// A case's input row (`input`, or `vector` in the placement file).
fn row_of(case: &Value) -> Vec<f32> {
    let v = case
        .get("input")
        .or_else(|| case.get("vector"))
        .expect("input or vector");
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Runs `rows` as one batch; returns every output.
fn run(plan: &Arc<TypedRunnableModel>, rows: &[Vec<f32>], width: usize) -> TVec<TValue> {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let input = tract_ndarray::Array2::from_shape_vec((rows.len(), width), flat).unwrap();
    plan.run(tvec!(input.into_tensor().into())).unwrap()
}

/// The rank-2 f32 output (scores or predictions) as rows.
fn scores(outputs: &TVec<TValue>) -> Vec<Vec<f64>> {
    let t = outputs
        .iter()
        .find(|t| t.datum_type() == f32::datum_type() && t.rank() == 2)
        .expect("f32 [N, C] output");
    let view = t.to_plain_array_view::<f32>().unwrap();
    view.outer_iter()
        .map(|r| r.iter().map(|&x| x as f64).collect())
        .collect()
}

/// The label output, as i64. Models whose graph casts the label to INT64
/// (onnxmltools' LightGBM) give TDim: tract-onnx maps Cast-to-INT64 to TDim.
fn labels(outputs: &TVec<TValue>) -> Vec<i64> {
    let is_label = |t: &&TValue| {
        t.rank() == 1 && [i64::datum_type(), TDim::datum_type()].contains(&t.datum_type())
    };
    let t = outputs
        .iter()
        .find(is_label)
        .expect("an i64 (or TDim) [N] label output");
    let t = t.cast_to::<i64>().unwrap();
    t.to_plain_array_view::<i64>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

/// Index of the largest value, first on ties.
fn argmax(v: &[f64]) -> i64 {
    (1..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best }) as i64
}

/// Checks a classifier: every case's probabilities (from `want`) to 1e-5,
/// labels consistent, in one batch and row by row.
fn check_classifier(name: &str, want: impl Fn(&Value) -> Vec<f64>) {
    let (plan, cases, width) = load(name);
    let rows: Vec<Vec<f32>> = cases.iter().map(row_of).collect();
    let batch = run(&plan, &rows, width);
    let (got, got_labels) = (scores(&batch), labels(&batch));
    let mut worst = 0f64;
    for (i, case) in cases.iter().enumerate() {
        let expected = want(case);
        assert_eq!(got[i].len(), expected.len(), "{name} case {i}");
        for (g, w) in got[i].iter().zip(&expected) {
            worst = worst.max((g - w).abs());
        }
        assert_eq!(
            got_labels[i],
            argmax(&got[i]),
            "{name} case {i}: label is not the top class"
        );
        assert_eq!(
            got_labels[i],
            argmax(&expected),
            "{name} case {i}: label differs from the reference"
        );
        let single = run(&plan, &rows[i..i + 1], width);
        assert_eq!(
            scores(&single)[0],
            got[i],
            "{name} case {i}: batch and single row differ"
        );
    }
    eprintln!(
        "{name}: {} cases, max |probability error| = {worst:.2e}",
        cases.len()
    );
    assert!(
        worst <= 1e-5,
        "{name}: max probability error {worst:e} > 1e-5"
    );
}

/// Probabilities listed in the case (sklearn / LightGBM `predict_proba`).
fn listed(case: &Value) -> Vec<f64> {
    case["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect()
}

#[test]
fn breast_cancer_random_forest() {
    check_classifier("breast_cancer", listed);
}

#[test]
fn lightgbm_binary() {
    check_classifier("lgbm_cancer", listed);
}

#[test]
fn lightgbm_multiclass() {
    check_classifier("lgbm_wine", listed);
}

#[test]
fn placement_forest() {
    check_classifier("placement", |case| {
        let p = case["probability"].as_f64().unwrap();
        vec![1.0 - p, p]
    });
}

#[test]
fn xgboost_regressor() {
    let (plan, cases, width) = load("xgb_diabetes");
    let rows: Vec<Vec<f32>> = cases.iter().map(row_of).collect();
    let got = scores(&run(&plan, &rows, width));
    let mut worst = 0f64;
    for (i, case) in cases.iter().enumerate() {
        let want = case["prediction"].as_f64().unwrap();
        assert_eq!(got[i].len(), 1);
        let rel = (got[i][0] - want).abs() / want.abs().max(1e-12);
        worst = worst.max(rel);
    }
    eprintln!(
        "xgb_diabetes: {} cases, max relative error = {worst:.2e}",
        cases.len()
    );
    assert!(
        worst <= 1e-5,
        "xgb_diabetes: max relative error {worst:e} > 1e-5"
    );
}

#[test]
#[should_panic(expected = "no_such_model: ")]
fn a_missing_model_fails() {
    load("no_such_model");
}

#[test]
fn every_tree_model_shipped_is_checked() {
    // A model added to (or renamed in) models/ without a test here would
    // otherwise go unchecked.
    let mut shipped: Vec<String> = std::fs::read_dir(models_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "onnx"))
        .filter(|path| {
            let bytes = std::fs::read(path).unwrap();
            bytes.windows(12).any(|w| w == b"TreeEnsemble")
        })
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    shipped.sort();
    assert_eq!(shipped, TREE_MODELS);
}
