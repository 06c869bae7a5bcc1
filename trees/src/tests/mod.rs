//! Unit tests: semantics through whole ONNX models, errors, and the work bound.

mod kernels;
mod support;
mod vector_state;
mod work;

use support::*;
use tract_onnx::pb::tensor_proto::{self, DataType};
use tract_onnx::pb::tensor_shape_proto::dimension;
use tract_onnx::pb::TensorProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::DimLike;

use crate::error::TreeError;
use crate::flatten::threshold_f32;
use crate::table::Mode;
use crate::transform::{logistic, probit};

/// A regressor stump: `x0 <mode> 1.0` gives 1, otherwise 2.
fn stump(mode: &str, missing_true: bool) -> Trees {
    Trees::default()
        .branch(0, 0, 0, mode, 1.0, 1, 2)
        .missing_goes_true(missing_true)
        .leaf(0, 1, &[(0, 1.0)])
        .leaf(0, 2, &[(0, 2.0)])
}

/// Which way the stump went for each x: true branch = 1.0.
fn stump_branches(mode: &str, missing_true: bool, xs: &[f32]) -> Vec<bool> {
    let rows: Vec<Vec<f32>> = xs.iter().map(|&x| vec![x]).collect();
    let y = regress(
        regressor_attrs(&stump(mode, missing_true), 1, "SUM"),
        1,
        &rows,
    );
    y.iter().map(|r| r[0] == 1.0).collect()
}

const XS: [f32; 4] = [0.5, 1.0, 1.5, f32::NAN];

#[test]
fn branch_modes_compare_like_the_spec() {
    let (t, f) = (true, false);
    for (mode, want) in [
        ("BRANCH_LEQ", [t, t, f, f]),
        ("BRANCH_LT", [t, f, f, f]),
        ("BRANCH_GTE", [f, t, t, f]),
        ("BRANCH_GT", [f, f, t, f]),
        ("BRANCH_EQ", [f, t, f, f]),
        ("BRANCH_NEQ", [t, f, t, t]),
    ] {
        assert_eq!(stump_branches(mode, false, &XS), want, "{mode}");
    }
}

#[test]
fn nan_takes_the_true_branch_only_when_tracked() {
    for mode in MODES {
        let got = stump_branches(mode, true, &XS);
        assert!(
            got[3],
            "{mode}: NaN should go true when missing_value_tracks_true"
        );
        // Non-NaN values still compare normally under the mixed rule.
        assert_eq!(got[..3], stump_branches(mode, false, &XS)[..3], "{mode}");
    }
}

#[test]
fn mixed_modes_in_one_forest() {
    // Tree 0 uses LEQ on x0, tree 1 GT on x1 with NaN tracked to true.
    let trees = Trees::default()
        .branch(0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2)
        .leaf(0, 1, &[(0, 1.0)])
        .leaf(0, 2, &[(0, 2.0)])
        .branch(1, 0, 1, "BRANCH_GT", 0.0, 1, 2)
        .missing_goes_true(true)
        .leaf(1, 1, &[(0, 10.0)])
        .leaf(1, 2, &[(0, 20.0)]);
    let rows = vec![vec![-1.0, 1.0], vec![1.0, -1.0], vec![f32::NAN, f32::NAN]];
    let y = regress(regressor_attrs(&trees, 1, "SUM"), 2, &rows);
    assert_eq!(y, vec![vec![11.0], vec![22.0], vec![12.0]]);
}

/// Three trees, two targets; tree 2 is a lone leaf, and some leaves have no
/// vote for target 1.
fn aggregate_trees() -> Trees {
    Trees::default()
        .branch(0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2)
        .leaf(0, 1, &[(0, 1.0), (1, 10.0)])
        .leaf(0, 2, &[(0, 2.0)])
        .branch(1, 0, 1, "BRANCH_LEQ", 0.0, 1, 2)
        .leaf(1, 1, &[(0, 4.0)])
        .leaf(1, 2, &[(0, 8.0), (1, 20.0)])
        .leaf(2, 0, &[(0, -1.0)])
}

const AGG_ROWS: [[f32; 2]; 3] = [[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0]];

fn aggregate(function: &str, base: Option<&[f32]>) -> Vec<Vec<f32>> {
    let mut attrs = regressor_attrs(&aggregate_trees(), 2, function);
    if let Some(base) = base {
        attrs.push(floats("base_values", base));
    }
    regress(
        attrs,
        2,
        &AGG_ROWS.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
    )
}

#[test]
fn aggregate_sum() {
    assert_eq!(
        aggregate("SUM", None),
        vec![vec![4.0, 10.0], vec![9.0, 20.0], vec![5.0, 0.0]]
    );
    assert_eq!(
        aggregate("SUM", Some(&[0.5, -0.5])),
        vec![vec![4.5, 9.5], vec![9.5, 19.5], vec![5.5, -0.5]]
    );
}

#[test]
fn aggregate_average_divides_by_tree_count() {
    let want = [[4.0 / 3.0, 10.0 / 3.0], [3.0, 20.0 / 3.0], [5.0 / 3.0, 0.0]];
    let got = aggregate("AVERAGE", None);
    for (g, w) in got.iter().zip(want) {
        assert_close(g, &w, 1e-6);
    }
    let got = aggregate("AVERAGE", Some(&[1.0, 2.0]));
    assert_close(&got[0], &[1.0 + 4.0 / 3.0, 2.0 + 10.0 / 3.0], 1e-6);
}

#[test]
fn aggregate_min_skips_trees_without_a_vote() {
    assert_eq!(
        aggregate("MIN", None),
        vec![vec![-1.0, 10.0], vec![-1.0, 20.0], vec![-1.0, 0.0]]
    );
    assert_eq!(
        aggregate("MIN", Some(&[1.0, 1.0])),
        vec![vec![0.0, 11.0], vec![0.0, 21.0], vec![0.0, 1.0]]
    );
}

#[test]
fn aggregate_max_skips_trees_without_a_vote() {
    assert_eq!(
        aggregate("MAX", None),
        vec![vec![4.0, 10.0], vec![8.0, 20.0], vec![4.0, 0.0]]
    );
}

#[test]
fn regressor_post_transform() {
    let mut attrs = regressor_attrs(&aggregate_trees(), 2, "SUM");
    attrs.push(string("post_transform", "SOFTMAX"));
    let y = regress(attrs, 2, &[vec![1.0, 1.0]]);
    let (a, b) = (9f64, 20f64);
    let e = (a - b).exp();
    assert_close(&y[0], &[e / (1.0 + e), 1.0 / (1.0 + e)], 1e-7);
}

/// One leaf per tree, so the class sums are known: `[1, 0, 2]` by default.
fn lone_leaf(weights: &[(i64, f64)]) -> Trees {
    Trees::default().leaf(0, 0, weights)
}

fn classify_one(attrs: Vec<tract_onnx::pb::AttributeProto>) -> (i64, Vec<f32>) {
    let (labels, scores) = classify(attrs, 1, &[vec![0.0]]);
    (labels[0], scores[0].clone())
}

#[test]
fn multiclass_post_transforms() {
    let trees = lone_leaf(&[(0, 1.0), (2, 2.0)]);
    let e1 = (-1f64).exp();
    let sm = {
        let s = [1f64.exp(), 1.0, 2f64.exp()];
        let t: f64 = s.iter().sum();
        s.map(|v| v / t)
    };
    for (transform, want) in [
        ("NONE", [1.0, 0.0, 2.0]),
        ("LOGISTIC", [logistic(1.0), 0.5, logistic(2.0)]),
        ("SOFTMAX", sm),
        ("SOFTMAX_ZERO", [e1 / (1.0 + e1), 0.0, 1.0 / (1.0 + e1)]),
    ] {
        let (label, scores) = classify_one(classifier_attrs(&trees, 3, transform));
        assert_close(&scores, &want, 1e-7);
        assert_eq!(label, 2, "{transform}");
    }
}

#[test]
fn multiclass_probit() {
    let trees = lone_leaf(&[(0, 0.2), (1, 0.5), (2, 0.9)]);
    let (label, scores) = classify_one(classifier_attrs(&trees, 3, "PROBIT"));
    assert_close(
        &scores,
        &[-0.8416212335729143, 0.0, 1.2815515655446004],
        1e-6,
    );
    assert_eq!(label, 2);
}

#[test]
fn multiclass_base_values_and_double_weights() {
    let trees = lone_leaf(&[(0, 1.0), (2, 2.0)]);
    let attrs = set(
        classifier_attrs(&trees, 3, "NONE"),
        doubles("base_values_as_tensor", &[0.1, 0.2, 0.3]),
    );
    let attrs = set(
        without(attrs, "class_weights"),
        doubles("class_weights_as_tensor", &[1.0, 2.0]),
    );
    let (label, scores) = classify_one(attrs);
    assert_close(&scores, &[1.1, 0.2, 2.3], 1e-7);
    assert_eq!(label, 2);
}

#[test]
fn ties_go_to_the_first_class() {
    let (label, _) = classify_one(classifier_attrs(
        &lone_leaf(&[(0, 1.0), (1, 2.0), (2, 2.0)]),
        3,
        "NONE",
    ));
    assert_eq!(label, 1);
}

#[test]
fn string_labels() {
    let trees = Trees::default()
        .branch(0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2)
        .leaf(0, 1, &[(2, 1.0)])
        .leaf(0, 2, &[(0, 1.0)]);
    let mut attrs = trees.attributes("class");
    attrs.push(strings("classlabels_strings", &["cat", "dog", "eel"]));
    let plan = load(&model("TreeEnsembleClassifier", attrs, 1, DataType::Float)).unwrap();
    let out = run_rows(&plan, &[vec![-1.0], vec![1.0]]).unwrap();
    let labels: Vec<String> = out[0]
        .to_plain_array_view::<String>()
        .unwrap()
        .iter()
        .cloned()
        .collect();
    assert_eq!(labels, ["eel", "cat"]);
    assert_eq!(
        matrix(&out[1]),
        vec![vec![0.0, 0.0, 1.0], vec![1.0, 0.0, 0.0]]
    );
}

/// Two trees voting on class 0 only, as skl2onnx's binary random forests do.
fn binary_trees(w: [f64; 4]) -> Trees {
    Trees::default()
        .branch(0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2)
        .leaf(0, 1, &[(0, w[0])])
        .leaf(0, 2, &[(0, w[1])])
        .branch(1, 0, 1, "BRANCH_LEQ", 0.0, 1, 2)
        .leaf(1, 1, &[(0, w[2])])
        .leaf(1, 2, &[(0, w[3])])
}

const BIN_ROWS: [[f32; 2]; 2] = [[-1.0, -1.0], [1.0, 1.0]];

fn classify_binary(attrs: Vec<tract_onnx::pb::AttributeProto>) -> (Vec<i64>, Vec<Vec<f32>>) {
    classify(
        attrs,
        2,
        &BIN_ROWS.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
    )
}

#[test]
fn binary_nonnegative_weights_give_one_minus_s() {
    // Row 0: s = 0.3 + 0.4; row 1: s = 0.1 + 0.2. The post transform is not
    // applied in this layout (onnxruntime), so LOGISTIC gives the same.
    for transform in ["NONE", "LOGISTIC"] {
        let (labels, scores) = classify_binary(classifier_attrs(
            &binary_trees([0.3, 0.1, 0.4, 0.2]),
            2,
            transform,
        ));
        assert_close(&scores[0], &[0.3, 0.7], 1e-7);
        assert_close(&scores[1], &[0.7, 0.3], 1e-7);
        assert_eq!(labels, [1, 0], "{transform}");
    }
}

#[test]
fn binary_mixed_weights_with_logistic() {
    // s = -0.5 + 1.5 = 1 and s = 0.25 - 0.75 = -0.5 (LightGBM's layout).
    let (labels, scores) = classify_binary(classifier_attrs(
        &binary_trees([-0.5, 0.25, 1.5, -0.75]),
        2,
        "LOGISTIC",
    ));
    assert_close(&scores[0], &[logistic(-1.0), logistic(1.0)], 1e-7);
    assert_close(&scores[1], &[logistic(0.5), logistic(-0.5)], 1e-7);
    assert_eq!(labels, [1, 0]);
}

#[test]
fn binary_mixed_weights_without_transform() {
    let (labels, scores) = classify_binary(classifier_attrs(
        &binary_trees([-0.5, 0.25, 1.5, -0.75]),
        2,
        "NONE",
    ));
    assert_close(&scores[0], &[-1.0, 1.0], 1e-7);
    assert_close(&scores[1], &[0.5, -0.5], 1e-7);
    assert_eq!(labels, [1, 0]);
}

/// onnxruntime 1.20.1's probit of 0.7 (`ComputeProbit`, a float
/// approximation of erfinv): 4.5e-5 from the exact 0.52440051.
const ORT_PROBIT_0_7: f64 = 0.5244458913803101;

#[test]
fn binary_probit_labels_from_the_score_like_onnxruntime() {
    // s = 0.7 and 0.3, weights >= 0: onnxruntime 1.20.1 gives labels [1, 0]
    // (class 1 when s > 0.5) and scores [[0.52444589, 0], [-0.52444589, 0]].
    // The row is [probit(s), 0], so its argmax would invert both labels.
    let (labels, scores) = classify_binary(classifier_attrs(
        &binary_trees([0.3, 0.1, 0.4, 0.2]),
        2,
        "PROBIT",
    ));
    assert_eq!(labels, [1, 0]);
    assert_close(&scores[0], &[probit(0.7), 0.0], 1e-6);
    assert_close(&scores[1], &[probit(0.3), 0.0], 1e-6);
    assert_close(&scores[0], &[ORT_PROBIT_0_7, 0.0], 1e-4);
    assert_close(&scores[1], &[-ORT_PROBIT_0_7, 0.0], 1e-4);
    // Mixed weights (s = 1 and -0.5): onnxruntime labels [1, 0] (class 1
    // when s > 0) and writes probit(1) = inf and probit(-0.5) = NaN in the
    // first column. It leaves the second column unwritten under PROBIT (it
    // held a stale 0.7 and 0.3 there); ours is 0.
    let (labels, scores) = classify_binary(classifier_attrs(
        &binary_trees([-0.5, 0.25, 1.5, -0.75]),
        2,
        "PROBIT",
    ));
    assert_eq!(labels, [1, 0]);
    assert_eq!(scores[0], [f32::INFINITY, 0.0]);
    assert!(scores[1][0].is_nan() && scores[1][1] == 0.0, "{scores:?}");
}

/// A stump on x0 <= 0 whose two leaves vote `a` and `b` for class `class`
/// only, with integer labels `labels`; run on x0 = -1 (leaf a) and 1 (leaf b).
fn one_class_binary(
    class: i64,
    [a, b]: [f64; 2],
    labels: &[i64],
    transform: &str,
) -> (Vec<i64>, Vec<Vec<f32>>) {
    let trees = Trees::default()
        .branch(0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2)
        .leaf(0, 1, &[(class, a)])
        .leaf(0, 2, &[(class, b)]);
    let attrs = set(
        classifier_attrs(&trees, 2, transform),
        ints("classlabels_int64s", labels),
    );
    classify(attrs, 1, &[vec![-1.0], vec![1.0]])
}

#[test]
fn binary_class_one_only_labels_like_onnxruntime() {
    // Every vote on class 1, weights >= 0, no base values: onnxruntime
    // 1.20.1 reads class 1's score as a probability and labels class 1 only
    // above 0.5, though the row [0, s] has class 1 ahead for any s > 0.
    let (labels, scores) = one_class_binary(1, [0.3, 0.8], &[0, 1], "NONE");
    assert_eq!(labels, [0, 1]);
    assert_eq!(scores, vec![vec![0.0, 0.3], vec![0.0, 0.8]]);
    // The label is read from the score before the transform: onnxruntime
    // gives [0, 1] with scores [0.5, logistic(s)] and [-inf, probit(s)].
    let (labels, scores) = one_class_binary(1, [0.3, 0.8], &[0, 1], "LOGISTIC");
    assert_eq!(labels, [0, 1]);
    assert_close(&scores[0], &[0.5, logistic(0.3)], 1e-7);
    assert_close(&scores[1], &[0.5, logistic(0.8)], 1e-7);
    let (labels, scores) = one_class_binary(1, [0.3, 0.8], &[0, 1], "PROBIT");
    assert_eq!(labels, [0, 1]);
    assert_eq!(scores[0][0], f32::NEG_INFINITY);
    assert_close(&scores[1][1..], &[probit(0.8)], 1e-6);
    // The labels are the classes' own: onnxruntime gives [7, 5].
    let (labels, _) = one_class_binary(1, [0.3, 0.8], &[7, 5], "NONE");
    assert_eq!(labels, [7, 5]);
    // With a negative weight the score is a margin: class 1 above 0
    // (onnxruntime: [1, 0]).
    let (labels, scores) = one_class_binary(1, [0.3, -0.2], &[0, 1], "NONE");
    assert_eq!(labels, [1, 0]);
    assert_eq!(scores, vec![vec![0.0, 0.3], vec![0.0, -0.2]]);
}

#[test]
fn binary_class_zero_only_labels_from_the_margin() {
    // Every vote on class 0, mixed weights, LOGISTIC: s = 1e-9 and -1e-9
    // give rows [0.5, 0.5] in f32, a tie, yet onnxruntime 1.20.1 labels
    // [1, 0] from the sign of s.
    let (labels, scores) = one_class_binary(0, [1e-9, -1e-9], &[0, 1], "LOGISTIC");
    assert_eq!(labels, [1, 0]);
    assert_eq!(scores, vec![vec![0.5, 0.5], vec![0.5, 0.5]]);
    // Weights >= 0 and s = 0.5 exactly: [0.5, 0.5], class 0 (not above 0.5).
    let (labels, _) = one_class_binary(0, [0.5, 0.8], &[0, 1], "NONE");
    assert_eq!(labels, [0, 1]);
}

#[test]
fn binary_single_base_value_adds_to_the_score() {
    let attrs = set(
        classifier_attrs(&binary_trees([-0.5, 0.25, 1.5, -0.75]), 2, "LOGISTIC"),
        floats("base_values", &[0.5]),
    );
    let (labels, scores) = classify_binary(attrs);
    assert_close(&scores[0], &[logistic(-1.5), logistic(1.5)], 1e-7);
    assert_close(&scores[1], &[logistic(0.0), logistic(0.0)], 1e-7);
    assert_eq!(labels, [1, 0]);
}

#[test]
fn binary_both_classes_voted_is_per_class() {
    let trees = Trees::default()
        .branch(0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2)
        .leaf(0, 1, &[(0, 0.25), (1, 0.75)])
        .leaf(0, 2, &[(0, 0.75), (1, 0.25)]);
    let (labels, scores) = classify_binary(classifier_attrs(&trees, 2, "NONE"));
    assert_eq!(scores, vec![vec![0.25, 0.75], vec![0.75, 0.25]]);
    assert_eq!(labels, [1, 0]);
    let attrs = set(
        classifier_attrs(&trees, 2, "LOGISTIC"),
        floats("base_values", &[0.5, -0.5]),
    );
    let (_, scores) = classify_binary(attrs);
    assert_close(&scores[0], &[logistic(0.75), logistic(0.25)], 1e-7);
}

#[test]
fn binary_class_one_only() {
    let trees = Trees::default()
        .branch(0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2)
        .leaf(0, 1, &[(1, 1.0)])
        .leaf(0, 2, &[(1, -2.0)]);
    // No base values: the row is [0, s], transformed (onnxruntime keeps both columns).
    let (labels, scores) = classify_binary(classifier_attrs(&trees, 2, "NONE"));
    assert_eq!(scores, vec![vec![0.0, 1.0], vec![0.0, -2.0]]);
    assert_eq!(labels, [1, 0]);
    // Two base values: mirrored around base[1].
    let attrs = set(
        classifier_attrs(&trees, 2, "NONE"),
        floats("base_values", &[0.0, 0.5]),
    );
    let (labels, scores) = classify_binary(attrs);
    assert_eq!(scores, vec![vec![-1.5, 1.5], vec![1.5, -1.5]]);
    assert_eq!(labels, [1, 0]);
}

#[test]
fn leaf_without_votes_contributes_nothing() {
    let trees = Trees::default()
        .branch(0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2)
        .leaf(0, 1, &[(0, 1.0)])
        .leaf(0, 2, &[]);
    let y = regress(
        regressor_attrs(&trees, 1, "SUM"),
        1,
        &[vec![-1.0], vec![1.0]],
    );
    assert_eq!(y, vec![vec![1.0], vec![0.0]]);
}

#[test]
fn node_order_and_tree_ids_do_not_matter() {
    let sorted = aggregate_trees();
    // The same forest, nodes shuffled, tree ids 9, 4, 70 and leaf ids sparse.
    let shuffled = Trees::default()
        .leaf(70, 5, &[(0, -1.0)])
        .leaf(9, 12, &[(0, 2.0)])
        .leaf(4, 3, &[(0, 8.0), (1, 20.0)])
        .branch(9, 40, 0, "BRANCH_LEQ", 0.0, 11, 12)
        .branch(4, 1, 1, "BRANCH_LEQ", 0.0, 2, 3)
        .leaf(9, 11, &[(0, 1.0), (1, 10.0)])
        .leaf(4, 2, &[(0, 4.0)]);
    let rows: Vec<Vec<f32>> = AGG_ROWS.iter().map(|r| r.to_vec()).collect();
    for f in ["SUM", "AVERAGE", "MIN", "MAX"] {
        assert_eq!(
            regress(regressor_attrs(&sorted, 2, f), 2, &rows),
            regress(regressor_attrs(&shuffled, 2, f), 2, &rows),
            "{f}"
        );
    }
}

#[test]
fn double_thresholds_keep_double_semantics() {
    // 0.1 has no exact f32: 0.1f32 is above it, its predecessor below.
    let below = 0.1f32.next_down();
    assert_eq!(threshold_f32(Mode::Leq, 0.1), below);
    assert_eq!(threshold_f32(Mode::Gt, 0.1), below);
    assert_eq!(threshold_f32(Mode::Lt, 0.1), 0.1f32);
    assert_eq!(threshold_f32(Mode::Gte, 0.1), 0.1f32);
    assert!(threshold_f32(Mode::Eq, 0.1).is_nan());
    assert_eq!(threshold_f32(Mode::Eq, 0.5), 0.5);
    for mode in Mode::ALL {
        assert_eq!(
            threshold_f32(mode, 0.75),
            0.75,
            "{mode:?}: f32-exact thresholds are kept"
        );
    }
    // Through a model: x = 0.1f32 > 0.1 (double), so LEQ goes false.
    let attrs = regressor_attrs(&stump("BRANCH_LEQ", false), 1, "SUM");
    let attrs = set(
        without(attrs, "nodes_values"),
        doubles("nodes_values_as_tensor", &[0.1, 0.0, 0.0]),
    );
    let y = regress(attrs, 1, &[vec![0.1], vec![below]]);
    assert_eq!(y, vec![vec![2.0], vec![1.0]]);
}

/// Runs the aggregate regressor on one input of type `dt` and shape `shape`.
fn run_typed(dt: DataType, dims: Vec<dimension::Value>, input: Tensor) -> Vec<Vec<f32>> {
    let proto = model_shaped(
        "TreeEnsembleRegressor",
        regressor_attrs(&aggregate_trees(), 2, "SUM"),
        dt,
        dims,
    );
    let plan = load(&proto).unwrap();
    matrix(&plan.run(tvec!(input.into())).unwrap()[0])
}

#[test]
fn integer_and_double_inputs() {
    let dims = || {
        vec![
            dimension::Value::DimParam("N".into()),
            dimension::Value::DimValue(2),
        ]
    };
    // Doubles no f32 tells from the thresholds (0): compared in double,
    // 1e-300 > 0 goes false and -1e-300 true; narrowed to f32 both would
    // be 0 and go true, giving [4, 10] twice.
    assert_eq!(
        run_typed(
            DataType::Double,
            dims(),
            tensor2(&[[1e-300f64, -1e-300], [-1e-300, 1e-300]])
        ),
        vec![vec![5.0, 0.0], vec![8.0, 30.0]]
    );
    let want = vec![vec![4.0, 10.0], vec![9.0, 20.0]];
    assert_eq!(
        run_typed(DataType::Int64, dims(), tensor2(&[[-1i64, -1], [1, 1]])),
        want
    );
    assert_eq!(
        run_typed(DataType::Int32, dims(), tensor2(&[[-1i32, -1], [1, 1]])),
        want
    );
}

/// `xs` as a one-feature column of doubles.
fn double_column(xs: &[f64]) -> Tensor {
    tract_ndarray::Array2::from_shape_vec((xs.len(), 1), xs.to_vec())
        .unwrap()
        .into_tensor()
}

/// The stump regressor (1 on the true branch, 2 on the false) on f64 `xs`.
fn stump_on_doubles(attrs: Vec<tract_onnx::pb::AttributeProto>, xs: &[f64]) -> Vec<f32> {
    let out = run_input(
        "TreeEnsembleRegressor",
        attrs,
        1,
        DataType::Double,
        double_column(xs),
    );
    matrix(&out[0]).into_iter().map(|r| r[0]).collect()
}

#[test]
fn double_inputs_compare_in_double() {
    // onnxruntime 1.20.1's double kernel keeps f64 inputs and thresholds:
    // its outputs for x0 <mode> 0.5 (a FLOATS threshold) on these rows. The
    // neighbours of 0.5 would become 0.5 if narrowed to f32.
    let xs = [0.5 + 1e-10, 0.5, 0.5 - 1e-10, f64::NAN];
    let at_half = |mode, missing_true| {
        let attrs = regressor_attrs(&stump(mode, missing_true), 1, "SUM");
        set(attrs, floats("nodes_values", &[0.5, 0.0, 0.0]))
    };
    for (mode, want) in [
        ("BRANCH_LEQ", [2.0, 1.0, 1.0, 2.0]),
        ("BRANCH_LT", [2.0, 2.0, 1.0, 2.0]),
        ("BRANCH_GTE", [1.0, 1.0, 2.0, 2.0]),
        ("BRANCH_GT", [1.0, 2.0, 2.0, 2.0]),
        ("BRANCH_EQ", [2.0, 1.0, 2.0, 2.0]),
        ("BRANCH_NEQ", [1.0, 2.0, 1.0, 1.0]),
    ] {
        assert_eq!(stump_on_doubles(at_half(mode, false), &xs), want, "{mode}");
        // NaN still follows `nodes_missing_value_tracks_true`.
        let tracked = stump_on_doubles(at_half(mode, true), &xs);
        assert_eq!(tracked[3], 1.0, "{mode}, NaN tracked");
    }
    // A double threshold (`nodes_values_as_tensor`) 0.1 against x = 0.1 and
    // x = 0.1f32 (just above it): onnxruntime gives 1, 2 under LEQ and EQ.
    let above = 0.1f32 as f64;
    for mode in ["BRANCH_LEQ", "BRANCH_EQ"] {
        let attrs = set(
            without(
                regressor_attrs(&stump(mode, false), 1, "SUM"),
                "nodes_values",
            ),
            doubles("nodes_values_as_tensor", &[0.1, 0.0, 0.0]),
        );
        assert_eq!(stump_on_doubles(attrs, &[0.1, above]), [1.0, 2.0], "{mode}");
    }
    // Batches past a block go the same way, row for row.
    let many: Vec<f64> = xs.iter().copied().cycle().take(4 * 25).collect();
    let got = stump_on_doubles(at_half("BRANCH_LEQ", false), &many);
    assert!(got.chunks(4).all(|c| c == [2.0, 1.0, 1.0, 2.0]), "{got:?}");
}

#[test]
fn integers_compare_as_f32_and_doubles_as_f64() {
    // onnxruntime 1.20.1, x0 <mode> 2^24 (1 on the true side, else 2) on
    // 2^24 + 1, 2^24 - 1, 2^24 and 2^24 + 2: its integer kernels compare
    // against float thresholds, so 2^24 + 1 rounds to 2^24; its double
    // kernel does not round.
    let trees = |mode| {
        Trees::default()
            .branch(0, 0, 0, mode, 16777216.0, 1, 2)
            .leaf(0, 1, &[(1, 1.0)])
            .leaf(0, 2, &[(2, 1.0)])
    };
    let xs = [16777217i64, 16777215, 16777216, 16777218];
    let column = |v: Vec<i64>| tract_ndarray::Array2::from_shape_vec((4, 1), v).unwrap();
    for (mode, ints, doubles) in [
        ("BRANCH_LEQ", [1, 1, 1, 2], [2, 1, 1, 2]),
        ("BRANCH_LT", [2, 1, 2, 2], [2, 1, 2, 2]),
        ("BRANCH_EQ", [1, 2, 1, 2], [2, 2, 1, 2]),
    ] {
        let run = |dt, input: Tensor| {
            let attrs = three_class(&trees(mode));
            let out = run_input("TreeEnsembleClassifier", attrs, 1, dt, input);
            let labels = out[0].to_plain_array_view::<i64>().unwrap();
            labels.iter().copied().collect::<Vec<i64>>()
        };
        let i64s = column(xs.to_vec()).into_tensor();
        let i32s = i64s.cast_to::<i32>().unwrap().into_owned();
        let f64s = i64s.cast_to::<f64>().unwrap().into_owned();
        assert_eq!(run(DataType::Int64, i64s), ints, "{mode}, i64");
        assert_eq!(run(DataType::Int32, i32s), ints, "{mode}, i32");
        assert_eq!(run(DataType::Double, f64s), doubles, "{mode}, f64");
    }
}

#[test]
fn rank_one_input_is_one_row() {
    let y = run_typed(
        DataType::Float,
        vec![dimension::Value::DimValue(2)],
        tensor1(&[1f32, 1.0]),
    );
    assert_eq!(y, vec![vec![9.0, 20.0]]);
}

#[test]
fn unsupported_input_type_is_refused() {
    let proto = model(
        "TreeEnsembleRegressor",
        regressor_attrs(&aggregate_trees(), 2, "SUM"),
        2,
        DataType::Bool,
    );
    let err = load(&proto).expect_err("bool input should be refused");
    assert!(
        format!("{err:?}").contains("f32, f64, i32 or i64"),
        "{err:?}"
    );
}

#[test]
fn symbolic_batch_survives_optimisation() {
    let proto = model(
        "TreeEnsembleClassifier",
        classifier_attrs(&binary_trees([0.3, 0.1, 0.4, 0.2]), 2, "NONE"),
        2,
        DataType::Float,
    );
    let typed = crate::onnx()
        .model_for_proto_model(&proto)
        .unwrap()
        .into_optimized()
        .unwrap();
    for (ix, rank) in [(0, 1), (1, 2)] {
        let fact = typed.output_fact(ix).unwrap();
        assert_eq!(fact.rank(), rank);
        assert_eq!(fact.shape[0].to_string(), "N", "output {ix}: {fact:?}");
    }
    assert_eq!(
        typed.output_fact(1).unwrap().shape[1].to_usize().unwrap(),
        2
    );
    // And a plan built from it runs any batch size.
    let plan = typed.into_runnable().unwrap();
    for n in [1, 3, 64] {
        let out = run_rows(&plan, &vec![vec![1.0, 1.0]; n]).unwrap();
        assert_eq!(out[1].shape(), &[n, 2]);
    }
}

#[test]
fn registered_ops_replace_tracts() {
    let proto = model(
        "TreeEnsembleRegressor",
        regressor_attrs(&aggregate_trees(), 2, "SUM"),
        2,
        DataType::Float,
    );
    assert!(tract_onnx::onnx()
        .model_for_proto_model(&proto)
        .unwrap()
        .into_optimized()
        .is_err());
    let typed = crate::onnx()
        .model_for_proto_model(&proto)
        .unwrap()
        .into_optimized()
        .unwrap();
    assert!(typed
        .nodes()
        .iter()
        .any(|n| n.op.name() == "HadrTreeEnsembleRegressor"));
}

// ---- malformed ensembles -------------------------------------------------

fn three_class(trees: &Trees) -> Vec<tract_onnx::pb::AttributeProto> {
    classifier_attrs(trees, 3, "NONE")
}

fn small() -> Trees {
    Trees::default()
        .branch(0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2)
        .leaf(0, 1, &[(0, 1.0)])
        .leaf(0, 2, &[(1, 1.0)])
}

#[test]
fn refuses_dangling_children() {
    let t = Trees::default()
        .branch(0, 0, 0, "BRANCH_LEQ", 0.0, 7, 2)
        .leaf(0, 2, &[]);
    assert!(matches!(
        classifier_error(three_class(&t), 1),
        TreeError::DanglingChild {
            attr: "nodes_truenodeids",
            tree: 0,
            target: 7,
            ..
        }
    ));
    let t = Trees::default()
        .branch(0, 0, 0, "BRANCH_LEQ", 0.0, 1, 9)
        .leaf(0, 1, &[]);
    assert!(matches!(
        classifier_error(three_class(&t), 1),
        TreeError::DanglingChild {
            attr: "nodes_falsenodeids",
            ..
        }
    ));
    // A child id is looked up in its own tree only.
    let t = Trees::default()
        .branch(0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2)
        .leaf(0, 1, &[])
        .leaf(1, 2, &[]);
    assert!(matches!(
        classifier_error(three_class(&t), 1),
        TreeError::DanglingChild { target: 2, .. }
    ));
}

#[test]
fn refuses_cycles() {
    let t = Trees::default()
        .branch(0, 0, 0, "BRANCH_LEQ", 0.0, 1, 3)
        .branch(0, 1, 0, "BRANCH_LEQ", 0.0, 2, 3)
        .branch(0, 2, 0, "BRANCH_LEQ", 0.0, 1, 3)
        .leaf(0, 3, &[]);
    let err = classifier_error(three_class(&t), 1);
    assert!(
        matches!(err, TreeError::Cycle { tree: 0, node: 1 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("nodes_truenodeids"));
    // A loop through every node leaves no root.
    let t = Trees::default()
        .branch(0, 0, 0, "BRANCH_LEQ", 0.0, 1, 1)
        .branch(0, 1, 0, "BRANCH_LEQ", 0.0, 0, 0);
    assert!(matches!(
        classifier_error(three_class(&t), 1),
        TreeError::NoRoot { tree: 0 }
    ));
}

#[test]
fn shared_subtrees_are_not_cycles() {
    let t = Trees::default()
        .branch(0, 0, 0, "BRANCH_LEQ", 0.0, 1, 1)
        .leaf(0, 1, &[(0, 3.0)]);
    assert_eq!(
        regress(regressor_attrs(&t, 1, "SUM"), 1, &[vec![0.0]]),
        vec![vec![3.0]]
    );
}

#[test]
fn refuses_duplicate_nodes() {
    let t = small().leaf(0, 1, &[]);
    assert!(matches!(
        classifier_error(three_class(&t), 1),
        TreeError::DuplicateNode {
            index: 3,
            tree: 0,
            node: 1
        }
    ));
}

#[test]
fn refuses_unknown_enums() {
    let attrs = set(
        three_class(&small()),
        strings("nodes_modes", &["BRANCH_LEQ", "LEAF", "BRANCH_FOO"]),
    );
    let err = classifier_error(attrs, 1);
    assert!(
        matches!(&err, TreeError::UnknownValue { attr: "nodes_modes", value } if value.contains("BRANCH_FOO"))
    );
    let attrs = set(three_class(&small()), string("post_transform", "SIGMOID"));
    assert!(matches!(
        classifier_error(attrs, 1),
        TreeError::UnknownValue {
            attr: "post_transform",
            ..
        }
    ));
    let attrs = set(
        regressor_attrs(&small(), 2, "SUM"),
        string("aggregate_function", "MEDIAN"),
    );
    assert!(matches!(
        regressor_error(attrs, 1),
        TreeError::UnknownValue {
            attr: "aggregate_function",
            ..
        }
    ));
}

#[test]
fn refuses_length_mismatches() {
    let attrs = set(three_class(&small()), ints("nodes_featureids", &[0, 0]));
    let err = classifier_error(attrs, 1);
    assert!(matches!(
        err,
        TreeError::Length {
            attr: "nodes_featureids",
            found: 2,
            expected: 3,
            ..
        }
    ));
    assert!(err.to_string().contains("nodes_featureids"));
    let attrs = set(three_class(&small()), floats("class_weights", &[1.0]));
    assert!(matches!(
        classifier_error(attrs, 1),
        TreeError::Length {
            attr: "class_weights",
            ..
        }
    ));
}

#[test]
fn refuses_out_of_range_ids() {
    let t = small().leaf(1, 0, &[(3, 1.0)]);
    let err = classifier_error(three_class(&t), 1);
    assert!(
        matches!(
            err,
            TreeError::OutOfRange {
                attr: "class_ids",
                index: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let t = small().leaf(1, 0, &[(-1, 1.0)]);
    assert!(matches!(
        regressor_error(regressor_attrs(&t, 2, "SUM"), 1),
        TreeError::OutOfRange {
            attr: "target_ids",
            ..
        }
    ));
    let t = Trees::default()
        .branch(0, 0, -2, "BRANCH_LEQ", 0.0, 1, 1)
        .leaf(0, 1, &[]);
    assert!(matches!(
        classifier_error(three_class(&t), 1),
        TreeError::OutOfRange {
            attr: "nodes_featureids",
            ..
        }
    ));
}

#[test]
fn refuses_votes_off_leaves() {
    let mut t = small();
    t.votes.push((0, 0, 1, 1.0)); // on the branch
    assert!(matches!(
        classifier_error(three_class(&t), 1),
        TreeError::BadVote {
            attr: "class_nodeids",
            node: 0,
            ..
        }
    ));
    let mut t = small();
    t.votes.push((5, 1, 1, 1.0)); // tree 5 does not exist
    let err = classifier_error(three_class(&t), 1);
    assert!(matches!(err, TreeError::BadVote { tree: 5, .. }));
    assert!(err.to_string().contains("does not exist"));
}

#[test]
fn refuses_features_beyond_the_input_width() {
    let t = Trees::default()
        .branch(0, 0, 4, "BRANCH_LEQ", 0.0, 1, 2)
        .leaf(0, 1, &[])
        .leaf(0, 2, &[]);
    assert_eq!(
        classifier_error(three_class(&t), 3),
        TreeError::FeatureWidth {
            feature: 4,
            width: 3
        }
    );
    assert!(load(&model(
        "TreeEnsembleClassifier",
        three_class(&t),
        5,
        DataType::Float
    ))
    .is_ok());
}

#[test]
fn refuses_missing_and_conflicting_attributes() {
    let attrs = without(three_class(&small()), "nodes_modes");
    assert_eq!(
        classifier_error(attrs, 1),
        TreeError::Missing {
            attr: "nodes_modes"
        }
    );
    let attrs = without(three_class(&small()), "classlabels_int64s");
    assert_eq!(
        classifier_error(attrs, 1),
        TreeError::Missing {
            attr: "classlabels_int64s"
        }
    );
    let attrs = without(regressor_attrs(&small(), 2, "SUM"), "n_targets");
    assert_eq!(
        regressor_error(attrs, 1),
        TreeError::Missing { attr: "n_targets" }
    );
    // At the cap of outputs, rows are refused before their output is
    // allocated: 1,025 rows x 65,536 targets is past 2^26 values.
    let plan = load(&model(
        "TreeEnsembleRegressor",
        regressor_attrs(&small(), 1 << 16, "SUM"),
        1,
        DataType::Float,
    ))
    .unwrap();
    let err = run_rows(&plan, &vec![vec![0.0]; 1025]).expect_err("refused");
    assert!(
        matches!(tree_error(&err), TreeError::Invalid { attr: "X", .. }),
        "{err:?}"
    );
    assert!(run_rows(&plan, &vec![vec![0.0]; 1024]).is_ok());
    // 2^25 targets: 18 GB of scratch at the first inference, an abort.
    let err = regressor_error(regressor_attrs(&small(), 1 << 25, "SUM"), 1);
    assert!(
        matches!(err, TreeError::Invalid { attr: "n_targets", ref why } if why.contains("at most 65536")),
        "{err:?}"
    );
    let attrs = set(
        three_class(&small()),
        doubles("nodes_values_as_tensor", &[0.0, 0.0, 0.0]),
    );
    assert!(matches!(
        classifier_error(attrs, 1),
        TreeError::Exclusive {
            first: "nodes_values",
            ..
        }
    ));
    let attrs = set(
        three_class(&small()),
        strings("classlabels_strings", &["a", "b", "c"]),
    );
    assert!(matches!(
        classifier_error(attrs, 1),
        TreeError::Exclusive { .. }
    ));
}

#[test]
fn refuses_wrong_attribute_types() {
    let attrs = set(
        three_class(&small()),
        floats("nodes_treeids", &[0.0, 0.0, 0.0]),
    );
    let err = classifier_error(attrs, 1);
    assert!(
        matches!(&err, TreeError::WrongType { attr: "nodes_treeids", found, .. } if found == "FLOATS"),
        "{err:?}"
    );
}

/// `small()`'s classifier with its thresholds as the TENSOR attribute `t`.
fn thresholds_as(t: TensorProto) -> Vec<tract_onnx::pb::AttributeProto> {
    set(
        without(three_class(&small()), "nodes_values"),
        tensor_attr("nodes_values_as_tensor", t),
    )
}

/// A TensorProto of `data_type` with dims `[3]` and nothing else set.
fn three_of(data_type: DataType) -> TensorProto {
    TensorProto {
        dims: vec![3],
        data_type: data_type as i32,
        ..Default::default()
    }
}

#[test]
fn refuses_tensor_attributes_that_hold_no_floats() {
    // tract's tensor loader panics (`unimplemented!`) on a STRING tensor in
    // `raw_data`; these are the node's own attributes, so the crate reads
    // them itself and refuses what is not FLOAT or DOUBLE data that fills
    // its dims.
    let external = tract_onnx::pb::StringStringEntryProto {
        key: "location".into(),
        value: "thresholds.bin".into(),
    };
    for (what, t) in [
        (
            "STRING in raw_data",
            TensorProto {
                raw_data: b"abcdefghijkl".to_vec(),
                ..three_of(DataType::String)
            },
        ),
        (
            "STRING in string_data",
            TensorProto {
                string_data: vec![b"a".to_vec(); 3],
                ..three_of(DataType::String)
            },
        ),
        ("COMPLEX64", three_of(DataType::Complex64)),
        (
            "INT64",
            TensorProto {
                int64_data: vec![0; 3],
                ..three_of(DataType::Int64)
            },
        ),
        (
            "FLOAT, 5 bytes of raw_data",
            TensorProto {
                raw_data: vec![0; 5],
                ..three_of(DataType::Float)
            },
        ),
        (
            "DOUBLE, 2 values for dims [3]",
            TensorProto {
                double_data: vec![0.0; 2],
                ..three_of(DataType::Double)
            },
        ),
        (
            "DOUBLE, dims [-3]",
            TensorProto {
                dims: vec![-3],
                ..three_of(DataType::Double)
            },
        ),
        (
            "external data",
            TensorProto {
                data_location: Some(tensor_proto::DataLocation::External as i32),
                external_data: vec![external.clone()],
                ..three_of(DataType::Double)
            },
        ),
    ] {
        let err = classifier_error(thresholds_as(t), 1);
        assert!(
            matches!(
                err,
                TreeError::Invalid {
                    attr: "nodes_values_as_tensor",
                    ..
                }
            ),
            "{what}: {err:?}"
        );
    }
}

#[test]
fn float_tensor_attributes_load_from_any_field() {
    // Thresholds [0.25, 0, 0]: x0 = 0.25 takes the true branch (class 0),
    // x0 = 0.5 the false one (class 1), whichever field holds them.
    let le_bytes = |v: &[f64], f32s: bool| -> Vec<u8> {
        v.iter()
            .flat_map(|&x| match f32s {
                true => (x as f32).to_le_bytes().to_vec(),
                false => x.to_le_bytes().to_vec(),
            })
            .collect()
    };
    let v = [0.25, 0.0, 0.0];
    for (what, t) in [
        (
            "FLOAT in float_data",
            TensorProto {
                float_data: v.iter().map(|&x| x as f32).collect(),
                ..three_of(DataType::Float)
            },
        ),
        (
            "FLOAT in raw_data",
            TensorProto {
                raw_data: le_bytes(&v, true),
                ..three_of(DataType::Float)
            },
        ),
        (
            "DOUBLE in raw_data",
            TensorProto {
                raw_data: le_bytes(&v, false),
                ..three_of(DataType::Double)
            },
        ),
    ] {
        let (labels, _) = classify(thresholds_as(t), 1, &[vec![0.25], vec![0.5]]);
        assert_eq!(labels, [0, 1], "{what}");
    }
}

#[test]
fn refuses_bad_base_values_and_empty_ensembles() {
    let attrs = set(three_class(&small()), floats("base_values", &[0.0, 1.0]));
    assert!(matches!(
        classifier_error(attrs, 1),
        TreeError::Invalid {
            attr: "base_values",
            ..
        }
    ));
    let attrs = set(
        regressor_attrs(&small(), 2, "SUM"),
        floats("base_values", &[0.0, 1.0, 2.0]),
    );
    assert!(matches!(
        regressor_error(attrs, 1),
        TreeError::Invalid {
            attr: "base_values",
            ..
        }
    ));
    let attrs = classifier_attrs(&Trees::default(), 3, "NONE");
    assert!(matches!(
        classifier_error(attrs, 1),
        TreeError::Invalid {
            attr: "nodes_nodeids",
            ..
        }
    ));
}
