//! Every block kernel (walks, bitsets with and without SIMD) gives exactly
//! the scores of rows evaluated one at a time, on random forests that mix
//! small trees, trees too large for a bitset, shared subtrees, every branch
//! mode, missing-value tracking and NaN inputs, for every block size.

use super::support::{Trees, MODES};
use crate::bits::Kernel;
use crate::classifier::{ClassifierModel, Labels};
use crate::forest::{Accumulator, BLOCK};
use crate::table::CLASS_VOTES;
use crate::transform::PostTransform;

/// A xorshift generator: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A feature value on a coarse grid (so thresholds are hit exactly), NaN
    /// one time in sixteen.
    fn value(&mut self) -> f32 {
        if self.below(16) == 0 {
            f32::NAN
        } else {
            self.below(9) as f32 * 0.5 - 2.0
        }
    }
}

const FEATURES: i64 = 5;

/// Adds a random subtree of at most `leaves` leaves under node `id`
/// (exactly `leaves` when over 64, so that tree is walked).
fn grow(
    mut t: Trees,
    rng: &mut Rng,
    tree: i64,
    id: i64,
    leaves: u64,
    modes: &[&str],
    next: &mut i64,
) -> Trees {
    if leaves <= 1 || (leaves <= 64 && rng.below(8) == 0) {
        let mut votes = Vec::new();
        for c in 0..3 {
            if rng.below(2) == 0 {
                votes.push((c, rng.below(100) as f64 / 8.0));
            }
        }
        return t.leaf(tree, id, &votes);
    }
    let (on_true, on_false) = (*next, *next + 1);
    *next += 2;
    let left = 1 + rng.below(leaves - 1);
    t = grow(t, rng, tree, on_true, left, modes, next);
    t = grow(t, rng, tree, on_false, leaves - left, modes, next);
    let mode = modes[rng.below(modes.len() as u64) as usize];
    let value = rng.below(9) as f64 * 0.5 - 2.0;
    t.branch(
        tree,
        id,
        rng.below(FEATURES as u64) as i64,
        mode,
        value,
        on_true,
        on_false,
    )
    .missing_goes_true(rng.below(3) == 0)
}

/// Trees of up to 8, 64 (bitsets) or 200 (walked) leaves, and one tree whose
/// two branches share a subtree (walked).
fn forest(rng: &mut Rng, modes: &[&str]) -> Trees {
    let mut t = Trees::default();
    for tree in 0..24 {
        let leaves = [8, 64, 64, 200][tree as usize % 4];
        let mut next = 1;
        t = grow(t, rng, tree, 0, leaves, modes, &mut next);
    }
    t.branch(24, 0, 1, "BRANCH_LEQ", 0.0, 1, 2)
        .branch(24, 1, 2, "BRANCH_GT", 0.5, 3, 3)
        .branch(24, 2, 3, "BRANCH_LT", -1.0, 3, 4)
        .leaf(24, 3, &[(0, 1.0)])
        .leaf(24, 4, &[(2, 2.0)])
}

fn model(trees: &Trees) -> ClassifierModel {
    ClassifierModel::new(
        &trees.nodes,
        &trees.vote_table(CLASS_VOTES),
        Labels::Int(vec![0, 1, 2]),
        vec![],
        PostTransform::None,
    )
    .unwrap()
}

/// The sums of each of `rows` scored one row per block (the row-by-row walk).
fn alone(model: &ClassifierModel, rows: &[Vec<f32>]) -> Vec<Vec<f64>> {
    let mut acc = Accumulator::new(3);
    rows.iter()
        .map(|row| {
            model.score_block(&[row.as_slice()], &mut acc, &mut ());
            acc.sums(0).to_vec()
        })
        .collect()
}

/// Scores blocks of every size from 1 to [`BLOCK`] random rows with every
/// kernel this CPU runs, against the rows scored alone.
fn assert_kernels_agree(m: &mut ClassifierModel, rng: &mut Rng, what: &str) {
    let rows: Vec<Vec<f32>> = (0..BLOCK)
        .map(|_| (0..FEATURES).map(|_| rng.value()).collect())
        .collect();
    let want = alone(m, &rows);
    for kernel in Kernel::available() {
        m.forest.use_kernel(kernel);
        for n in 1..=BLOCK {
            let block: Vec<&[f32]> = rows[..n].iter().map(|r| r.as_slice()).collect();
            let mut acc = Accumulator::new(3);
            m.score_block(&block, &mut acc, &mut ());
            for (r, want) in want[..n].iter().enumerate() {
                assert_eq!(acc.sums(r), want, "{kernel:?}, {what}, {n} rows, row {r}");
            }
        }
    }
}

#[test]
fn kernels_agree_on_uniform_forests() {
    // One mode for the whole forest and no missing tracking is the fast rule.
    for mode in MODES {
        let mut rng = Rng(7);
        let mut t = Trees::default();
        for tree in 0..16 {
            let leaves = [8, 64, 100, 64][tree as usize % 4];
            t = grow(t, &mut rng, tree, 0, leaves, &[mode], &mut 1);
        }
        let n = t.nodes.missing_true.len();
        t.nodes.missing_true = vec![false; n];
        assert_kernels_agree(&mut model(&t), &mut rng, mode);
    }
}

#[test]
fn kernels_agree_on_mixed_forests() {
    for seed in [1, 2, 3] {
        let mut rng = Rng(seed);
        let mut m = model(&forest(&mut rng, &MODES));
        assert_kernels_agree(&mut m, &mut rng, &format!("seed {seed}"));
    }
}

#[test]
fn the_test_forests_hold_both_kinds_of_tree() {
    // Guards the tests above: without bitset trees they would compare walks
    // with walks.
    let m = model(&forest(&mut Rng(1), &MODES));
    let (bits, walked) = m.forest.tree_kinds();
    assert!(
        bits >= 12 && walked >= 6,
        "{bits} bitset trees, {walked} walked"
    );
}
