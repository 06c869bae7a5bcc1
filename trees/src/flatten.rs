//! Validation and flattening: the ONNX node table becomes a [`Flat`] ensemble.
//!
//! Nodes are found through a `(tree id, node id)` map, so neither sorted
//! nodes nor contiguous tree ids are assumed. Each tree's reachable nodes are
//! walked depth first from its root, which both numbers them for the packed
//! layout and catches cycles; every child and vote reference is checked on
//! the way, and each error names the attribute at fault.

use std::collections::HashMap;

use crate::error::TreeError;
use crate::forest::{Branch, LEAF_BIT, MAX_FEATURE};
use crate::table::{Mode, NodeTable, VoteTable};

/// A flattened ensemble, in the layout [`crate::forest::Forest`] evaluates.
pub(crate) struct Flat {
    /// Child reference of each tree's root, trees in order of first appearance.
    pub roots: Vec<u32>,
    /// Reachable branches, depth first.
    pub branches: Vec<Branch>,
    /// Each branch's threshold as the model gave it, for f64 inputs.
    pub thresholds: Vec<f64>,
    /// `leaf_start[l]..leaf_start[l + 1]` indexes the votes of leaf `l`.
    pub leaf_start: Vec<u32>,
    pub vote_target: Vec<u32>,
    pub vote_weight: Vec<f64>,
}

/// Validates `nodes` and `votes` (vote ids below `n_targets`) and flattens them.
pub(crate) fn flatten(
    nodes: &NodeTable,
    votes: &VoteTable,
    n_targets: usize,
) -> Result<Flat, TreeError> {
    if nodes.len() == 0 {
        return Err(TreeError::Invalid {
            attr: "nodes_nodeids",
            why: "the ensemble has no nodes".into(),
        });
    }
    let index = index_nodes(nodes)?;
    let has_parent = find_parents(nodes, &index)?;
    let mut flat = Flattener::new(nodes, &index);
    let mut roots = Vec::new();
    for (tree, members) in group_trees(nodes) {
        let root = pick_root(tree, &members, nodes, &has_parent)?;
        roots.push(flat.flatten(root)?);
    }
    let (leaf_start, vote_target, vote_weight) = flat.gather_votes(votes, n_targets)?;
    Ok(Flat {
        roots,
        branches: flat.branches,
        thresholds: flat.thresholds,
        leaf_start,
        vote_target,
        vote_weight,
    })
}

/// Maps `(tree id, node id)` to the node's position in the table, refusing duplicates.
fn index_nodes(nodes: &NodeTable) -> Result<HashMap<(i64, i64), usize>, TreeError> {
    let mut index = HashMap::with_capacity(nodes.len());
    for i in 0..nodes.len() {
        let key = (nodes.tree[i], nodes.node[i]);
        if index.insert(key, i).is_some() {
            return Err(TreeError::DuplicateNode {
                index: i,
                tree: key.0,
                node: key.1,
            });
        }
    }
    Ok(index)
}

/// Each tree id with its nodes' positions, trees in order of first appearance
/// (nodes need not be sorted, nor tree ids contiguous).
fn group_trees(nodes: &NodeTable) -> Vec<(i64, Vec<usize>)> {
    let mut order: HashMap<i64, usize> = HashMap::new();
    let mut trees: Vec<(i64, Vec<usize>)> = Vec::new();
    for (i, &tree) in nodes.tree.iter().enumerate() {
        let slot = *order.entry(tree).or_insert_with(|| {
            trees.push((tree, Vec::new()));
            trees.len() - 1
        });
        trees[slot].1.push(i);
    }
    trees
}

/// Marks every node some branch points to; refuses children that do not exist.
fn find_parents(
    nodes: &NodeTable,
    index: &HashMap<(i64, i64), usize>,
) -> Result<Vec<bool>, TreeError> {
    let mut has_parent = vec![false; nodes.len()];
    for i in 0..nodes.len() {
        if nodes.mode[i].is_none() {
            continue; // a leaf's child ids are meaningless (converters write 0)
        }
        let tree = nodes.tree[i];
        for (attr, child) in [
            ("nodes_truenodeids", nodes.true_id[i]),
            ("nodes_falsenodeids", nodes.false_id[i]),
        ] {
            let dangling = TreeError::DanglingChild {
                attr,
                index: i,
                tree,
                target: child,
            };
            let &c = index.get(&(tree, child)).ok_or(dangling)?;
            has_parent[c] = true;
        }
    }
    Ok(has_parent)
}

/// A tree's root: its parentless node (the smallest id if several; nodes
/// nothing reaches are then ignored, as no path can visit them).
fn pick_root(
    tree: i64,
    members: &[usize],
    nodes: &NodeTable,
    has_parent: &[bool],
) -> Result<usize, TreeError> {
    members
        .iter()
        .copied()
        .filter(|&i| !has_parent[i])
        .min_by_key(|&i| nodes.node[i])
        .ok_or(TreeError::NoRoot { tree })
}

/// The f32 threshold that makes `x <mode> t32` agree with `x <mode> t` for every
/// f32 `x`, when `t` came as a double (`nodes_values_as_tensor`). (f64 inputs
/// are compared with `t` itself: see [`crate::forest::Feature`].)
///
/// Rounding to nearest would flip comparisons for `x` between `t` and its
/// rounding; instead `<=`/`>` use the largest f32 below `t` and `<`/`>=` the
/// smallest above it. `==`/`!=` against a `t` no f32 equals use NaN, which is
/// never equal and always unequal, exactly like the double comparison.
/// For thresholds that were f32 to begin with, every case returns `t` itself.
pub(crate) fn threshold_f32(mode: Mode, t: f64) -> f32 {
    let near = t as f32;
    let floor = if (near as f64) > t {
        near.next_down()
    } else {
        near
    };
    let ceil = if (near as f64) < t {
        near.next_up()
    } else {
        near
    };
    match mode {
        Mode::Leq | Mode::Gt => floor,
        Mode::Lt | Mode::Gte => ceil,
        Mode::Eq | Mode::Neq if (near as f64) == t || t.is_nan() => near,
        Mode::Eq | Mode::Neq => f32::NAN,
    }
}

/// Depth-first flattening of the reachable part of each tree.
struct Flattener<'a> {
    nodes: &'a NodeTable,
    index: &'a HashMap<(i64, i64), usize>,
    branches: Vec<Branch>,
    /// `branches[i]`'s threshold as given.
    thresholds: Vec<f64>,
    /// Child reference assigned to each table node once flattened.
    assigned: Vec<Option<u32>>,
    /// Table position of each leaf number.
    leaf_nodes: Vec<usize>,
    /// Table nodes on the current root-to-node path (cycle detection).
    on_path: Vec<bool>,
}

/// A step of the iterative depth-first walk (recursion could overflow the
/// stack on a degenerate, very deep tree).
enum Step {
    Enter(usize),
    Exit(usize),
}

impl<'a> Flattener<'a> {
    fn new(nodes: &'a NodeTable, index: &'a HashMap<(i64, i64), usize>) -> Self {
        Flattener {
            nodes,
            index,
            branches: Vec::new(),
            thresholds: Vec::new(),
            assigned: vec![None; nodes.len()],
            leaf_nodes: Vec::new(),
            on_path: vec![false; nodes.len()],
        }
    }

    /// Flattens the tree under table node `root`; returns the root's reference.
    fn flatten(&mut self, root: usize) -> Result<u32, TreeError> {
        let mut stack = vec![Step::Enter(root)];
        while let Some(step) = stack.pop() {
            match step {
                Step::Enter(i) => self.enter(i, &mut stack)?,
                Step::Exit(i) => self.exit(i),
            }
        }
        Ok(self.assigned[root].expect("root flattened"))
    }

    /// First visit of node `i`: leaves get a number, branches a slot whose
    /// children are linked on exit.
    fn enter(&mut self, i: usize, stack: &mut Vec<Step>) -> Result<(), TreeError> {
        if self.on_path[i] {
            return Err(TreeError::Cycle {
                tree: self.nodes.tree[i],
                node: self.nodes.node[i],
            });
        }
        if self.assigned[i].is_some() {
            return Ok(()); // shared subtree, already flattened
        }
        let Some(mode) = self.nodes.mode[i] else {
            self.assigned[i] = Some(LEAF_BIT | self.leaf_nodes.len() as u32);
            self.leaf_nodes.push(i);
            return Ok(());
        };
        let slot = self.branches.len() as u32;
        if slot >= LEAF_BIT {
            return Err(TreeError::Invalid {
                attr: "nodes_nodeids",
                why: "more than 2^31 branches".into(),
            });
        }
        self.branches.push(self.branch_of(i, mode)?);
        self.thresholds.push(self.nodes.value[i]);
        self.assigned[i] = Some(slot);
        self.on_path[i] = true;
        stack.push(Step::Exit(i));
        stack.push(Step::Enter(self.child(i, self.nodes.false_id[i])));
        stack.push(Step::Enter(self.child(i, self.nodes.true_id[i])));
        Ok(())
    }

    /// Last visit of branch `i`: both subtrees are flattened, link them.
    fn exit(&mut self, i: usize) {
        self.on_path[i] = false;
        let slot = self.assigned[i].expect("entered") as usize;
        let on_false =
            self.assigned[self.child(i, self.nodes.false_id[i])].expect("child flattened");
        let on_true = self.assigned[self.child(i, self.nodes.true_id[i])].expect("child flattened");
        self.branches[slot].link(on_false, on_true);
    }

    /// Table position of a child (existence was checked by [`find_parents`]).
    fn child(&self, i: usize, id: i64) -> usize {
        self.index[&(self.nodes.tree[i], id)]
    }

    /// Packs table node `i` into a [`Branch`] (children linked later).
    fn branch_of(&self, i: usize, mode: Mode) -> Result<Branch, TreeError> {
        let feature = self.nodes.feature[i];
        if !(0..=MAX_FEATURE as i64).contains(&feature) {
            return Err(TreeError::OutOfRange {
                attr: "nodes_featureids",
                index: i,
                value: feature.to_string(),
                why: format!("feature indices must be in 0..={MAX_FEATURE}"),
            });
        }
        let threshold = threshold_f32(mode, self.nodes.value[i]);
        Ok(Branch::new(
            feature as u32,
            mode,
            self.nodes.missing_true[i],
            threshold,
        ))
    }

    /// Groups the votes by leaf number (a counting sort, attribute order kept
    /// within a leaf) after checking each names a reachable leaf and a valid id.
    /// Votes on nodes no root reaches are dropped: no path can use them.
    #[allow(clippy::type_complexity)] // the three vote columns of `Flat`
    fn gather_votes(
        &self,
        votes: &VoteTable,
        n_targets: usize,
    ) -> Result<(Vec<u32>, Vec<u32>, Vec<f64>), TreeError> {
        let leaves = self.vote_leaves(votes, n_targets)?;
        let mut start = vec![0u32; self.leaf_nodes.len() + 1];
        for &leaf in leaves.iter().flatten() {
            start[leaf + 1] += 1;
        }
        for l in 0..self.leaf_nodes.len() {
            start[l + 1] += start[l];
        }
        let total = start[self.leaf_nodes.len()] as usize;
        let mut fill = start.clone();
        let (mut target, mut weight) = (vec![0u32; total], vec![0f64; total]);
        for (v, leaf) in leaves.iter().enumerate() {
            if let &Some(leaf) = leaf {
                let at = fill[leaf] as usize;
                target[at] = votes.id[v] as u32;
                weight[at] = votes.weight[v];
                fill[leaf] += 1;
            }
        }
        Ok((start, target, weight))
    }

    /// The leaf number each vote goes to (`None`: on an unreachable node).
    fn vote_leaves(
        &self,
        votes: &VoteTable,
        n_targets: usize,
    ) -> Result<Vec<Option<usize>>, TreeError> {
        let names = votes.names;
        (0..votes.len())
            .map(|v| {
                let id = votes.id[v];
                if !(0..n_targets as i64).contains(&id) {
                    return Err(TreeError::OutOfRange {
                        attr: names.id,
                        index: v,
                        value: id.to_string(),
                        why: format!("there are {n_targets} classes or targets"),
                    });
                }
                let (tree, node) = (votes.tree[v], votes.node[v]);
                let bad = |why| TreeError::BadVote {
                    attr: names.node,
                    index: v,
                    tree,
                    node,
                    why,
                };
                let &i = self
                    .index
                    .get(&(tree, node))
                    .ok_or_else(|| bad("does not exist"))?;
                if self.nodes.mode[i].is_some() {
                    return Err(bad("is a branch, not a leaf"));
                }
                Ok(self.assigned[i].map(|r| (r & !LEAF_BIT) as usize))
            })
            .collect()
    }
}
