//! Pins the evaluator's cost without timing it: a walked row's [`WorkCount`]
//! must equal the path lengths plus the reached leaves' votes, and must not
//! change when the forest gains many leaves off those paths; a bitset row
//! costs every branch of a small tree, never of a large one.

use super::support::Trees;
use crate::bits::Kernel;
use crate::classifier::{ClassifierModel, Labels};
use crate::forest::{Accumulator, WorkCount};
use crate::table::CLASS_VOTES;
use crate::transform::PostTransform;

/// Adds a complete subtree of `depth` levels below node id `id` (all leaves
/// voting for every class), numbering its nodes from `*next`.
fn bushy(mut trees: Trees, tree: i64, id: i64, depth: u32, next: &mut i64) -> Trees {
    if depth == 0 {
        return trees.leaf(tree, id, &[(0, 0.25), (1, 0.5), (2, 0.75)]);
    }
    let (t, f) = (*next, *next + 1);
    *next += 2;
    trees = bushy(trees, tree, t, depth - 1, next);
    trees = bushy(trees, tree, f, depth - 1, next);
    trees.branch(tree, id, 0, "BRANCH_GT", 100.0, t, f)
}

/// `n_trees` trees, each a chain of `depth` branches `x[k] <= 0.5` whose true
/// side continues the chain and ends in a leaf with `k + 1` votes. The false
/// sides are single leaves, or (with `side_depth > 0`) complete subtrees of
/// `2^side_depth` leaves written *before* the chain, so any lookup that scans
/// leaves or votes in attribute order would pay for them.
fn chains(n_trees: i64, depth: i64, side_depth: u32) -> Trees {
    let mut trees = Trees::default();
    for tree in 0..n_trees {
        let mut next = 1000;
        for k in 0..depth {
            let side = 500 + k;
            trees = if side_depth == 0 {
                trees.leaf(tree, side, &[(1, 1.0)])
            } else {
                bushy(trees, tree, side, side_depth, &mut next)
            };
        }
        for k in 0..depth {
            let on_path = if k + 1 == depth { 100 } else { k + 1 };
            trees = trees.branch(tree, k, k, "BRANCH_LEQ", 0.5, on_path, 500 + k);
        }
        let votes: Vec<(i64, f64)> = (0..=tree % 3).map(|c| (c, 1.0 + c as f64)).collect();
        trees = trees.leaf(tree, 100, &votes);
    }
    trees
}

fn classifier(trees: &Trees) -> ClassifierModel {
    let votes = trees.vote_table(CLASS_VOTES);
    ClassifierModel::new(
        &trees.nodes,
        &votes,
        Labels::Int(vec![0, 1, 2]),
        vec![],
        PostTransform::None,
    )
    .unwrap()
}

/// Work and output scores for one row.
fn measure(model: &ClassifierModel, row: &[f32]) -> (WorkCount, Vec<f64>) {
    let mut acc = Accumulator::new(3);
    let mut out = vec![0.0; 3];
    let mut count = WorkCount::default();
    model.score_block(&[row], &mut acc, &mut count);
    model.finish_row(acc.sums(0), &mut out);
    (count, out)
}

#[test]
fn work_per_row_is_path_plus_reached_votes() {
    let (n_trees, depth) = (12, 6);
    let small = classifier(&chains(n_trees, depth, 0));
    let row = vec![0.0f32; depth as usize];
    let (work, scores) = measure(&small, &row);
    // Each tree: `depth` branches and the leaf, then that leaf's `tree % 3 + 1` votes.
    let votes: usize = (0..n_trees).map(|t| (t % 3 + 1) as usize).sum();
    assert_eq!(
        work,
        WorkCount {
            nodes: (n_trees * (depth + 1)) as usize,
            votes
        }
    );
    // The bound the evaluator promises, from an independent path walk.
    let bound: usize = small
        .forest
        .path_lengths(&row)
        .iter()
        .map(|(d, v)| d + 1 + v)
        .sum();
    assert_eq!(work.nodes + work.votes, bound);
    assert_eq!(scores, vec![12.0, 16.0, 12.0]);
}

#[test]
fn work_does_not_grow_with_leaves_off_the_path() {
    let (n_trees, depth) = (12, 6);
    let small = classifier(&chains(n_trees, depth, 0));
    let large_trees = chains(n_trees, depth, 7);
    let large = classifier(&large_trees);
    // The large forest has ~100x the leaves and ~300x the votes ...
    let leaves = |t: &Trees| t.nodes.mode.iter().filter(|m| m.is_none()).count();
    assert!(leaves(&large_trees) >= 100 * leaves(&chains(n_trees, depth, 0)) / 2);
    assert!(large_trees.votes.len() > 10_000);
    // ... yet a row down the same paths does exactly the same work.
    let row = vec![0.0f32; depth as usize];
    let (small_work, small_scores) = measure(&small, &row);
    let (large_work, large_scores) = measure(&large, &row);
    assert_eq!(large_work, small_work);
    assert_eq!(large_scores, small_scores);
    // A row leaving the chain at the first branch walks into the big subtree:
    // its work is that path (1 + 7 branches and the leaf, 3 votes) per tree.
    let mut off = row.clone();
    off[0] = 1.0;
    let (off_work, _) = measure(&large, &off);
    assert_eq!(
        off_work,
        WorkCount {
            nodes: (n_trees * 9) as usize,
            votes: (n_trees * 3) as usize
        }
    );
}

/// `n` rows of `depth` features leaving the chains at different branches.
fn block_rows(n: i64, depth: i64) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| {
            (0..depth)
                .map(|k| if (i + k) % 4 == 0 { 1.0 } else { 0.0 })
                .collect()
        })
        .collect()
}

/// Scores `rows` as one block with `kernel`: the work, and whether every
/// row's scores equal its scores alone (which `measure` walks).
fn block_work(
    model: &mut ClassifierModel,
    kernel: Kernel,
    rows: &[Vec<f32>],
) -> (WorkCount, WorkCount) {
    model.forest.use_kernel(kernel);
    let block: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
    let mut acc = Accumulator::new(3);
    let mut count = WorkCount::default();
    model.score_block(&block, &mut acc, &mut count);
    let mut alone = WorkCount::default();
    for (i, row) in rows.iter().enumerate() {
        let (work, scores) = measure(model, row);
        alone.nodes += work.nodes;
        alone.votes += work.votes;
        let mut out = vec![0.0; 3];
        model.finish_row(acc.sums(i), &mut out);
        assert_eq!(out, scores, "{kernel:?}, row {i}");
    }
    (count, alone)
}

#[test]
fn a_walked_block_costs_the_sum_of_its_rows() {
    // Walks go tree by tree, several rows in lockstep: same work, same scores.
    let (n_trees, depth) = (12, 6);
    let mut model = classifier(&chains(n_trees, depth, 3));
    let (block, alone) = block_work(&mut model, Kernel::Walk, &block_rows(11, depth));
    assert_eq!(block, alone);
}

#[test]
fn bitsets_test_every_branch_of_small_trees_only() {
    let (n_trees, depth) = (12, 6);
    // 13 rows: enough for one bitset group with every kernel.
    let rows = block_rows(13, depth);
    // 6 chain branches, each with a side subtree of 8 leaves (7 branches):
    // 49 leaves, 48 branches a tree.
    let mut small = classifier(&chains(n_trees, depth, 3));
    // Side subtrees of 128 leaves: more than a bitset holds, so walked.
    let mut large = classifier(&chains(n_trees, depth, 7));
    for kernel in Kernel::available() {
        if kernel == Kernel::Walk {
            continue;
        }
        let (block, alone) = block_work(&mut small, kernel, &rows);
        let branches = depth as usize * (1 + 7);
        let per_row = n_trees as usize * (branches + 1);
        assert_eq!(block.nodes, rows.len() * per_row, "{kernel:?}");
        assert_eq!(block.votes, alone.votes, "{kernel:?}");
        let (block, alone) = block_work(&mut large, kernel, &rows);
        assert_eq!(block, alone, "{kernel:?}");
        // 20 rows: one group of 16, then 4 rows too few for a group, walked.
        let rows = block_rows(20, depth);
        let (block, alone) = block_work(&mut small, kernel, &rows);
        let walked: usize = rows[16..].iter().map(|r| measure(&small, r).0.nodes).sum();
        assert_eq!(block.nodes, 16 * per_row + walked, "{kernel:?}, 20 rows");
        assert_eq!(block.votes, alone.votes, "{kernel:?}, 20 rows");
    }
}
