//! The ONNX-ML tree attributes, read into plain columns.
//!
//! This is the "as written" form of an ensemble: one entry per node and one
//! per leaf vote, in attribute order, ids unchecked. [`crate::forest::Forest`]
//! validates it and flattens it into the form that is evaluated.

use crate::attrs::{check_len, Attrs};
use crate::error::TreeError;

/// How a branch compares its feature value `x` with its threshold `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum Mode {
    /// `x <= t`
    Leq = 0,
    /// `x < t`
    Lt = 1,
    /// `x >= t`
    Gte = 2,
    /// `x > t`
    Gt = 3,
    /// `x == t`
    Eq = 4,
    /// `x != t`
    Neq = 5,
}

impl Mode {
    /// All modes, indexed by their discriminant (used to decode packed branches).
    pub(crate) const ALL: [Mode; 6] = [
        Mode::Leq,
        Mode::Lt,
        Mode::Gte,
        Mode::Gt,
        Mode::Eq,
        Mode::Neq,
    ];

    /// Parses one `nodes_modes` entry; `None` means `LEAF`.
    fn parse(index: usize, s: &str) -> Result<Option<Mode>, TreeError> {
        Ok(Some(match s {
            "BRANCH_LEQ" => Mode::Leq,
            "BRANCH_LT" => Mode::Lt,
            "BRANCH_GTE" => Mode::Gte,
            "BRANCH_GT" => Mode::Gt,
            "BRANCH_EQ" => Mode::Eq,
            "BRANCH_NEQ" => Mode::Neq,
            "LEAF" => return Ok(None),
            _ => {
                return Err(TreeError::UnknownValue {
                    attr: "nodes_modes",
                    value: format!("{s} (entry {index})"),
                })
            }
        }))
    }

    /// The comparison itself, in f32 or f64. NaN compares false except under
    /// `Neq`, which is what IEEE comparisons give and what onnxruntime does.
    #[inline(always)]
    pub(crate) fn holds<T: PartialOrd>(self, x: T, t: T) -> bool {
        match self {
            Mode::Leq => x <= t,
            Mode::Lt => x < t,
            Mode::Gte => x >= t,
            Mode::Gt => x > t,
            Mode::Eq => x == t,
            Mode::Neq => x != t,
        }
    }
}

/// The `nodes_*` attributes: one entry per node, in attribute order.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeTable {
    pub tree: Vec<i64>,
    pub node: Vec<i64>,
    pub feature: Vec<i64>,
    /// `None` for a leaf.
    pub mode: Vec<Option<Mode>>,
    /// Thresholds, widened to f64 so `nodes_values_as_tensor` loses nothing.
    pub value: Vec<f64>,
    pub true_id: Vec<i64>,
    pub false_id: Vec<i64>,
    pub missing_true: Vec<bool>,
}

impl NodeTable {
    /// Reads the `nodes_*` attributes; `nodes_hitrates` is ignored, as the spec allows.
    pub(crate) fn parse(attrs: &Attrs) -> Result<NodeTable, TreeError> {
        const LIKE: &str = "nodes_nodeids";
        let node = attrs.req_ints(LIKE)?.to_vec();
        let n = node.len();
        let tree = attrs.ints_len("nodes_treeids", n, LIKE)?.to_vec();
        let feature = attrs.ints_len("nodes_featureids", n, LIKE)?.to_vec();
        let true_id = attrs.ints_len("nodes_truenodeids", n, LIKE)?.to_vec();
        let false_id = attrs.ints_len("nodes_falsenodeids", n, LIKE)?.to_vec();
        let modes = attrs.strings("nodes_modes")?.ok_or(TreeError::Missing {
            attr: "nodes_modes",
        })?;
        check_len("nodes_modes", modes.len(), n, LIKE)?;
        let mode = modes
            .iter()
            .enumerate()
            .map(|(i, s)| Mode::parse(i, s))
            .collect::<Result<_, _>>()?;
        let value = attrs
            .doubles("nodes_values", "nodes_values_as_tensor")?
            .ok_or(TreeError::Missing {
                attr: "nodes_values",
            })?;
        check_len("nodes_values", value.len(), n, LIKE)?;
        let missing_true = match attrs.ints("nodes_missing_value_tracks_true")? {
            Some(flags) => {
                check_len("nodes_missing_value_tracks_true", flags.len(), n, LIKE)?;
                flags.iter().map(|&f| f != 0).collect()
            }
            None => vec![false; n],
        };
        Ok(NodeTable {
            tree,
            node,
            feature,
            mode,
            value,
            true_id,
            false_id,
            missing_true,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.node.len()
    }
}

/// Names of the vote attributes: `class_*` for the classifier, `target_*` for
/// the regressor. Kept together so errors name the right one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VoteNames {
    pub tree: &'static str,
    pub node: &'static str,
    pub id: &'static str,
    pub weight: &'static str,
    pub weight_tensor: &'static str,
}

/// The classifier's vote attributes.
pub(crate) const CLASS_VOTES: VoteNames = VoteNames {
    tree: "class_treeids",
    node: "class_nodeids",
    id: "class_ids",
    weight: "class_weights",
    weight_tensor: "class_weights_as_tensor",
};

/// The regressor's vote attributes.
pub(crate) const TARGET_VOTES: VoteNames = VoteNames {
    tree: "target_treeids",
    node: "target_nodeids",
    id: "target_ids",
    weight: "target_weights",
    weight_tensor: "target_weights_as_tensor",
};

/// The leaf votes: one entry per (leaf, class or target) weight.
#[derive(Debug, Clone)]
pub(crate) struct VoteTable {
    pub names: VoteNames,
    pub tree: Vec<i64>,
    pub node: Vec<i64>,
    pub id: Vec<i64>,
    pub weight: Vec<f64>,
}

impl VoteTable {
    /// Reads the vote attributes. A model with no votes at all is legal (every
    /// leaf contributes nothing), so all four may be absent together.
    pub(crate) fn parse(attrs: &Attrs, names: VoteNames) -> Result<VoteTable, TreeError> {
        let id = attrs.ints(names.id)?.unwrap_or_default().to_vec();
        let n = id.len();
        let tree = attrs.ints(names.tree)?.unwrap_or_default().to_vec();
        check_len(names.tree, tree.len(), n, names.id)?;
        let node = attrs.ints(names.node)?.unwrap_or_default().to_vec();
        check_len(names.node, node.len(), n, names.id)?;
        let weight = attrs
            .doubles(names.weight, names.weight_tensor)?
            .unwrap_or_default();
        check_len(names.weight, weight.len(), n, names.id)?;
        Ok(VoteTable {
            names,
            tree,
            node,
            id,
            weight,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.id.len()
    }
}
