//! Typed load-time errors.
//!
//! Every variant names the ONNX attribute at fault, so a model author can find
//! the broken field without reading this crate. They travel through tract as
//! `anyhow` errors (tract's `TractResult`); callers can recover them with
//! `err.downcast_ref::<TreeError>()` or by walking `err.chain()`.

use thiserror::Error;

/// Why a `TreeEnsembleClassifier` / `TreeEnsembleRegressor` node was refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum TreeError {
    /// A required attribute is absent.
    #[error("attribute `{attr}` is required")]
    Missing { attr: &'static str },

    /// The attribute exists with another protobuf type than the spec's.
    #[error("attribute `{attr}` has type {found}, expected {expected}")]
    WrongType {
        attr: &'static str,
        found: String,
        expected: &'static str,
    },

    /// Two attributes that replace each other are both set.
    #[error("attributes `{first}` and `{second}` cannot both be set")]
    Exclusive {
        first: &'static str,
        second: &'static str,
    },

    /// A per-node (or per-vote) attribute does not have one entry per node.
    #[error("attribute `{attr}` has {found} entries, but `{like}` has {expected}")]
    Length {
        attr: &'static str,
        found: usize,
        expected: usize,
        like: &'static str,
    },

    /// An enumerated string (mode, transform, aggregate) is not one the spec knows.
    #[error("attribute `{attr}`: unknown value `{value}`")]
    UnknownValue { attr: &'static str, value: String },

    /// A number is outside what the attribute allows.
    #[error("attribute `{attr}`[{index}] = {value} is out of range: {why}")]
    OutOfRange {
        attr: &'static str,
        index: usize,
        value: String,
        why: String,
    },

    /// The same `(tree, node)` pair is declared twice.
    #[error("attribute `nodes_nodeids`[{index}]: node {node} of tree {tree} is declared twice")]
    DuplicateNode { index: usize, tree: i64, node: i64 },

    /// A branch points at a node id its tree does not have.
    #[error("attribute `{attr}`[{index}]: tree {tree} has no node {target}")]
    DanglingChild {
        attr: &'static str,
        index: usize,
        tree: i64,
        target: i64,
    },

    /// Following children from a tree's root comes back to a node on the path.
    #[error(
        "attributes `nodes_truenodeids`/`nodes_falsenodeids`: tree {tree} loops back to node {node}"
    )]
    Cycle { tree: i64, node: i64 },

    /// A tree has no node without a parent, so it has no root.
    #[error("attribute `nodes_treeids`: tree {tree} has no root (every node has a parent)")]
    NoRoot { tree: i64 },

    /// A vote names a `(tree, node)` that is missing or is not a leaf.
    #[error("attribute `{attr}`[{index}]: tree {tree} node {node} {why}")]
    BadVote {
        attr: &'static str,
        index: usize,
        tree: i64,
        node: i64,
        why: &'static str,
    },

    /// The input is narrower than the features the trees read.
    #[error(
        "attribute `nodes_featureids` reads feature {feature}, but the input has only {width} features"
    )]
    FeatureWidth { feature: usize, width: usize },

    /// Any other inconsistency, with the attribute it concerns.
    #[error("attribute `{attr}`: {why}")]
    Invalid { attr: &'static str, why: String },
}
