//! Builds small ONNX models in Rust and runs them through `crate::onnx()`.

use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::{
    tensor_proto, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use tract_onnx::prelude::*;

use crate::error::TreeError;
use crate::table::{Mode, NodeTable, VoteNames, VoteTable};

/// Every branch mode's ONNX name.
pub const MODES: [&str; 6] = [
    "BRANCH_LEQ",
    "BRANCH_LT",
    "BRANCH_GTE",
    "BRANCH_GT",
    "BRANCH_EQ",
    "BRANCH_NEQ",
];

/// An ensemble written node by node, in whatever order a test wants.
#[derive(Debug, Clone, Default)]
pub struct Trees {
    pub nodes: NodeTable,
    pub votes: Vec<(i64, i64, i64, f64)>,
}

impl Trees {
    /// A branch `feature <mode> value` of `tree`, children by node id; a
    /// missing value goes the false way (see [`Trees::missing_goes_true`]).
    #[allow(clippy::too_many_arguments)] // one per node attribute, like the ONNX columns
    pub fn branch(
        mut self,
        tree: i64,
        node: i64,
        feature: i64,
        mode: &str,
        value: f64,
        t: i64,
        f: i64,
    ) -> Self {
        let n = &mut self.nodes;
        n.tree.push(tree);
        n.node.push(node);
        n.feature.push(feature);
        n.mode.push(Some(parse_mode(mode)));
        n.value.push(value);
        n.true_id.push(t);
        n.false_id.push(f);
        n.missing_true.push(false);
        self
    }

    /// Sends a missing value down the last branch's true side when `yes`.
    pub fn missing_goes_true(mut self, yes: bool) -> Self {
        *self.nodes.missing_true.last_mut().expect("a branch first") = yes;
        self
    }

    /// A leaf with its votes `(class or target id, weight)`.
    pub fn leaf(mut self, tree: i64, node: i64, votes: &[(i64, f64)]) -> Self {
        let n = &mut self.nodes;
        n.tree.push(tree);
        n.node.push(node);
        n.feature.push(0);
        n.mode.push(None);
        n.value.push(0.0);
        n.true_id.push(0);
        n.false_id.push(0);
        n.missing_true.push(false);
        self.votes
            .extend(votes.iter().map(|&(id, w)| (tree, node, id, w)));
        self
    }

    /// The votes as a [`VoteTable`] under the given attribute names.
    pub fn vote_table(&self, names: VoteNames) -> VoteTable {
        VoteTable {
            names,
            tree: self.votes.iter().map(|v| v.0).collect(),
            node: self.votes.iter().map(|v| v.1).collect(),
            id: self.votes.iter().map(|v| v.2).collect(),
            weight: self.votes.iter().map(|v| v.3).collect(),
        }
    }

    /// The `nodes_*` attributes plus the vote attributes named `prefix_*`.
    pub fn attributes(&self, prefix: &str) -> Vec<AttributeProto> {
        let n = &self.nodes;
        let modes: Vec<&str> = n.mode.iter().map(|m| mode_name(*m)).collect();
        let p = |s: &str| format!("{prefix}_{s}");
        vec![
            ints("nodes_treeids", &n.tree),
            ints("nodes_nodeids", &n.node),
            ints("nodes_featureids", &n.feature),
            strings("nodes_modes", &modes),
            floats(
                "nodes_values",
                &n.value.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            ),
            ints("nodes_truenodeids", &n.true_id),
            ints("nodes_falsenodeids", &n.false_id),
            ints(
                "nodes_missing_value_tracks_true",
                &n.missing_true.iter().map(|&b| b as i64).collect::<Vec<_>>(),
            ),
            ints(
                &p("treeids"),
                &self.votes.iter().map(|v| v.0).collect::<Vec<_>>(),
            ),
            ints(
                &p("nodeids"),
                &self.votes.iter().map(|v| v.1).collect::<Vec<_>>(),
            ),
            ints(
                &p("ids"),
                &self.votes.iter().map(|v| v.2).collect::<Vec<_>>(),
            ),
            floats(
                &p("weights"),
                &self.votes.iter().map(|v| v.3 as f32).collect::<Vec<_>>(),
            ),
        ]
    }
}

fn parse_mode(s: &str) -> Mode {
    Mode::ALL
        .into_iter()
        .find(|m| mode_name(Some(*m)) == s)
        .unwrap_or_else(|| panic!("mode {s}"))
}

fn mode_name(m: Option<Mode>) -> &'static str {
    match m {
        None => "LEAF",
        Some(Mode::Leq) => "BRANCH_LEQ",
        Some(Mode::Lt) => "BRANCH_LT",
        Some(Mode::Gte) => "BRANCH_GTE",
        Some(Mode::Gt) => "BRANCH_GT",
        Some(Mode::Eq) => "BRANCH_EQ",
        Some(Mode::Neq) => "BRANCH_NEQ",
    }
}

fn attr(name: &str, ty: AttributeType) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ty as i32,
        ..Default::default()
    }
}

pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        ints: v.to_vec(),
        ..attr(name, AttributeType::Ints)
    }
}

pub fn floats(name: &str, v: &[f32]) -> AttributeProto {
    AttributeProto {
        floats: v.to_vec(),
        ..attr(name, AttributeType::Floats)
    }
}

pub fn strings(name: &str, v: &[&str]) -> AttributeProto {
    AttributeProto {
        strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..attr(name, AttributeType::Strings)
    }
}

pub fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        s: v.as_bytes().to_vec(),
        ..attr(name, AttributeType::String)
    }
}

pub fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        i: v,
        ..attr(name, AttributeType::Int)
    }
}

/// A TENSOR attribute of doubles (the `*_as_tensor` form).
pub fn doubles(name: &str, v: &[f64]) -> AttributeProto {
    tensor_attr(
        name,
        TensorProto {
            dims: vec![v.len() as i64],
            data_type: tensor_proto::DataType::Double as i32,
            double_data: v.to_vec(),
            ..Default::default()
        },
    )
}

/// A TENSOR attribute holding `t` as it is, well formed or not.
pub fn tensor_attr(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        t: Some(t),
        ..attr(name, AttributeType::Tensor)
    }
}

/// Replaces (or adds) an attribute by name.
pub fn set(mut attrs: Vec<AttributeProto>, a: AttributeProto) -> Vec<AttributeProto> {
    attrs.retain(|x| x.name != a.name);
    attrs.push(a);
    attrs
}

/// Drops an attribute by name.
pub fn without(mut attrs: Vec<AttributeProto>, name: &str) -> Vec<AttributeProto> {
    attrs.retain(|x| x.name != name);
    attrs
}

/// Classifier attributes with integer labels `0..n_classes`.
pub fn classifier_attrs(trees: &Trees, n_classes: i64, transform: &str) -> Vec<AttributeProto> {
    let mut a = trees.attributes("class");
    a.push(ints(
        "classlabels_int64s",
        &(0..n_classes).collect::<Vec<_>>(),
    ));
    a.push(string("post_transform", transform));
    a
}

/// Regressor attributes.
pub fn regressor_attrs(trees: &Trees, n_targets: i64, aggregate: &str) -> Vec<AttributeProto> {
    let mut a = trees.attributes("target");
    a.push(int("n_targets", n_targets));
    a.push(string("aggregate_function", aggregate));
    a
}

fn tensor_type(elem: tensor_proto::DataType, dims: Vec<dimension::Value>) -> TypeProto {
    let shape = TensorShapeProto {
        dim: dims
            .into_iter()
            .map(|v| Dimension {
                value: Some(v),
                ..Default::default()
            })
            .collect(),
    };
    TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: elem as i32,
            shape: Some(shape),
        })),
        ..Default::default()
    }
}

/// A one-node model: input `X` of type `elem`, shape `[N, width]`.
pub fn model(
    op: &str,
    attrs: Vec<AttributeProto>,
    width: usize,
    elem: tensor_proto::DataType,
) -> ModelProto {
    let dims = vec![
        dimension::Value::DimParam("N".into()),
        dimension::Value::DimValue(width as i64),
    ];
    model_shaped(op, attrs, elem, dims)
}

/// A one-node model whose input `X` has type `elem` and the given dims.
pub fn model_shaped(
    op: &str,
    attrs: Vec<AttributeProto>,
    elem: tensor_proto::DataType,
    dims: Vec<dimension::Value>,
) -> ModelProto {
    let outputs: Vec<String> = if op == "TreeEnsembleClassifier" {
        vec!["label".into(), "scores".into()]
    } else {
        vec!["Y".into()]
    };
    let node = NodeProto {
        input: vec!["X".into()],
        output: outputs.clone(),
        name: "ensemble".into(),
        op_type: op.into(),
        domain: "ai.onnx.ml".into(),
        attribute: attrs,
        ..Default::default()
    };
    let input = ValueInfoProto {
        name: "X".into(),
        r#type: Some(tensor_type(elem, dims)),
        ..Default::default()
    };
    let graph = GraphProto {
        node: vec![node],
        name: "g".into(),
        input: vec![input],
        output: outputs
            .into_iter()
            .map(|name| ValueInfoProto {
                name,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let opset = |domain: &str, version| OperatorSetIdProto {
        domain: domain.into(),
        version,
    };
    ModelProto {
        ir_version: 8,
        opset_import: vec![opset("", 15), opset("ai.onnx.ml", 3)],
        graph: Some(graph),
        ..Default::default()
    }
}

/// Loads like the host does: parse, symbolic batch, `into_optimized`, plan.
pub fn load(proto: &ModelProto) -> TractResult<Arc<TypedRunnableModel>> {
    let model = crate::onnx()
        .with_ignore_value_info(true)
        .model_for_proto_model(proto)?;
    model.into_optimized()?.into_runnable()
}

/// Loads a one-node `op` model whose input has type `elem` and `width`
/// features, and runs `input` (of the matching type) through it.
pub fn run_input(
    op: &str,
    attrs: Vec<AttributeProto>,
    width: usize,
    elem: tensor_proto::DataType,
    input: Tensor,
) -> TVec<TValue> {
    let plan = load(&model(op, attrs, width, elem)).unwrap();
    plan.run(tvec!(input.into())).unwrap()
}

/// Runs f32 rows through a plan.
pub fn run_rows(plan: &Arc<TypedRunnableModel>, rows: &[Vec<f32>]) -> TractResult<TVec<TValue>> {
    let width = rows.first().map(|r| r.len()).unwrap_or(0);
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let input = tract_ndarray::Array2::from_shape_vec((rows.len(), width), flat)?.into_tensor();
    plan.run(tvec!(input.into()))
}

/// A classifier with f32 input of `width` features, run on `rows`:
/// returns `(labels, scores)`.
pub fn classify(
    attrs: Vec<AttributeProto>,
    width: usize,
    rows: &[Vec<f32>],
) -> (Vec<i64>, Vec<Vec<f32>>) {
    let plan = load(&model(
        "TreeEnsembleClassifier",
        attrs,
        width,
        tensor_proto::DataType::Float,
    ))
    .unwrap();
    let out = run_rows(&plan, rows).unwrap();
    let labels = out[0]
        .to_plain_array_view::<i64>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    (labels, matrix(&out[1]))
}

/// A regressor with f32 input of `width` features, run on `rows`.
pub fn regress(attrs: Vec<AttributeProto>, width: usize, rows: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let plan = load(&model(
        "TreeEnsembleRegressor",
        attrs,
        width,
        tensor_proto::DataType::Float,
    ))
    .unwrap();
    matrix(&run_rows(&plan, rows).unwrap()[0])
}

/// A rank-2 f32 tensor as rows.
pub fn matrix(t: &Tensor) -> Vec<Vec<f32>> {
    let view = t.to_plain_array_view::<f32>().unwrap();
    view.outer_iter()
        .map(|r| r.iter().copied().collect())
        .collect()
}

/// The [`TreeError`] inside a tract error chain.
pub fn tree_error(e: &TractError) -> TreeError {
    e.chain()
        .find_map(|c| c.downcast_ref::<TreeError>())
        .cloned()
        .unwrap_or_else(|| panic!("not a TreeError: {e:?}"))
}

/// Loads an `op` node expecting a [`TreeError`].
fn refused(op: &str, attrs: Vec<AttributeProto>, width: usize) -> TreeError {
    let proto = model(op, attrs, width, tensor_proto::DataType::Float);
    let err = load(&proto).expect_err("the model should be refused");
    tree_error(&err)
}

/// Loads a classifier expecting a [`TreeError`].
pub fn classifier_error(attrs: Vec<AttributeProto>, width: usize) -> TreeError {
    refused("TreeEnsembleClassifier", attrs, width)
}

/// Loads a regressor expecting a [`TreeError`].
pub fn regressor_error(attrs: Vec<AttributeProto>, width: usize) -> TreeError {
    refused("TreeEnsembleRegressor", attrs, width)
}

/// Asserts two score rows agree to `tol` (absolute).
pub fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((*g as f64 - w).abs() <= tol, "got {got:?}, want {want:?}");
    }
}
