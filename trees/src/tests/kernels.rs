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

/// How many leaves a random tree gets.
#[derive(Clone, Copy)]
enum Size {
    /// At most this many: each subtree may stop early.
    AtMost(u64),
    /// Exactly this many.
    Exactly(u64),
}

/// Writes random trees: branches on random features, modes from `modes`.
struct Grower<'a> {
    rng: &'a mut Rng,
    modes: &'a [&'a str],
    /// Every leaf votes once, for this target (as in regressors and
    /// boosted binary classifiers); else for random targets.
    one_target: Option<i64>,
}

impl Grower<'_> {
    /// Adds a random subtree of `size` leaves under node `id`, numbering
    /// new nodes from `*next`.
    fn grow(&mut self, mut t: Trees, tree: i64, id: i64, size: Size, next: &mut i64) -> Trees {
        let (leaves, exact) = match size {
            Size::AtMost(n) => (n, false),
            Size::Exactly(n) => (n, true),
        };
        if leaves <= 1 || (!exact && self.rng.below(8) == 0) {
            let mut votes = Vec::new();
            if let Some(c) = self.one_target {
                let weight = self.rng.below(100) as f64 / 8.0 - 6.0;
                return t.leaf(tree, id, &[(c, weight)]);
            }
            for c in 0..3 {
                if self.rng.below(2) == 0 {
                    votes.push((c, self.rng.below(100) as f64 / 8.0));
                }
            }
            return t.leaf(tree, id, &votes);
        }
        let (on_true, on_false) = (*next, *next + 1);
        *next += 2;
        let left = 1 + self.rng.below(leaves - 1);
        let part = |n| {
            if exact {
                Size::Exactly(n)
            } else {
                Size::AtMost(n)
            }
        };
        t = self.grow(t, tree, on_true, part(left), next);
        t = self.grow(t, tree, on_false, part(leaves - left), next);
        let mode = self.modes[self.rng.below(self.modes.len() as u64) as usize];
        let value = self.rng.below(9) as f64 * 0.5 - 2.0;
        let feature = self.rng.below(FEATURES as u64) as i64;
        t.branch(tree, id, feature, mode, value, on_true, on_false)
            .missing_goes_true(self.rng.below(3) == 0)
    }
}

/// Trees of at most 8 or 64 leaves (bitsets), of exactly 200 (walked), and
/// one tree whose two branches share a subtree (walked).
fn forest(rng: &mut Rng, modes: &[&str]) -> Trees {
    let mut grower = Grower {
        rng,
        modes,
        one_target: None,
    };
    let mut t = Trees::default();
    for tree in 0..24 {
        let size = [
            Size::AtMost(8),
            Size::AtMost(64),
            Size::AtMost(64),
            Size::Exactly(200),
        ][tree as usize % 4];
        t = grower.grow(t, tree, 0, size, &mut 1);
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

/// [`BLOCK`] random rows, each two features wider than the trees read.
fn random_rows(rng: &mut Rng) -> Vec<Vec<f32>> {
    (0..BLOCK)
        .map(|_| (0..FEATURES + 2).map(|_| rng.value()).collect())
        .collect()
}

/// Scores blocks of every size from 1 to [`BLOCK`] of `rows` and back with
/// every kernel this CPU runs, against the rows scored alone; the model must hold
/// both bitset and walked trees.
fn assert_kernels_agree(m: &mut ClassifierModel, rows: &[Vec<f32>], what: &str) {
    let (bits, walked) = m.forest.tree_kinds();
    assert!(
        bits > 0 && walked > 0,
        "{what}: {bits} bitset trees, {walked} walked"
    );
    let want = alone(m, rows);
    for kernel in Kernel::available() {
        m.forest.use_kernel(kernel);
        // One accumulator for every block, as an evaluation reuses it: each
        // block must clear what the one before left (sizes up, then down).
        let mut acc = Accumulator::new(3);
        for n in (1..=rows.len()).chain((1..rows.len()).rev()) {
            let block: Vec<&[f32]> = rows[..n].iter().map(|r| r.as_slice()).collect();
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
        let mut grower = Grower {
            rng: &mut rng,
            modes: &[mode],
            one_target: None,
        };
        let mut t = Trees::default();
        for tree in 0..16 {
            let size = [Size::AtMost(8), Size::AtMost(64), Size::Exactly(100)][tree as usize % 3];
            t = grower.grow(t, tree, 0, size, &mut 1);
        }
        let n = t.nodes.missing_true.len();
        t.nodes.missing_true = vec![false; n];
        let rows = random_rows(&mut rng);
        assert_kernels_agree(&mut model(&t), &rows, mode);
    }
}

#[test]
fn kernels_agree_on_mixed_forests() {
    for seed in [1, 2, 3] {
        let mut rng = Rng(seed);
        let mut m = model(&forest(&mut rng, &MODES));
        let (bits, walked) = m.forest.tree_kinds();
        assert!(
            bits >= 12 && walked >= 7,
            "{bits} bitset trees, {walked} walked"
        );
        let rows = random_rows(&mut rng);
        assert_kernels_agree(&mut m, &rows, &format!("seed {seed}"));
    }
}

#[test]
fn kernels_agree_on_single_target_trees() {
    // Trees whose leaves each vote once for one target add a group's votes
    // with one gather; mixed with trees that do not, and walked trees.
    let mut rng = Rng(5);
    let mut t = Trees::default();
    for tree in 0..18 {
        let mut grower = Grower {
            rng: &mut rng,
            modes: &MODES,
            one_target: (tree % 3 != 2).then_some(tree % 3),
        };
        let size = [Size::AtMost(64), Size::Exactly(64), Size::AtMost(8)][tree as usize % 3];
        let size = if tree == 16 { Size::Exactly(90) } else { size };
        t = grower.grow(t, tree, 0, size, &mut 1);
    }
    let mut m = model(&t);
    assert_eq!(m.forest.single_target_trees(), 11);
    let rows = random_rows(&mut rng);
    assert_kernels_agree(&mut m, &rows, "single target");
}

#[test]
fn kernels_agree_at_the_bitset_limits() {
    let mut rng = Rng(11);
    let mut grower = Grower {
        rng: &mut rng,
        modes: &MODES,
        one_target: None,
    };
    // A lone leaf; exactly 64 leaves (a bitset); 65 (walked); a root whose
    // true side holds 63 of its 64 leaves.
    let mut t = Trees::default().leaf(0, 0, &[(1, 1.0)]);
    t = grower.grow(t, 1, 0, Size::Exactly(64), &mut 1);
    t = grower.grow(t, 2, 0, Size::Exactly(65), &mut 1);
    t = grower.grow(t, 3, 1, Size::Exactly(63), &mut 3);
    t = t
        .leaf(3, 2, &[(2, 0.5)])
        .branch(3, 0, 0, "BRANCH_LEQ", 1.0, 1, 2);
    // A chain `x0 <= -2 + k/16` whose last leaf (bit 63) takes x0 > 1.9375.
    for k in 0..63 {
        let leaf = 100 + k;
        t = t.leaf(4, leaf, &[(k % 3, k as f64)]);
        let next = if k == 62 { 200 } else { k + 1 };
        t = t.branch(4, k, 0, "BRANCH_LEQ", -2.0 + k as f64 / 16.0, leaf, next);
    }
    t = t.leaf(4, 200, &[(0, 99.0)]);
    let mut m = model(&t);
    assert_eq!(m.forest.tree_kinds(), (4, 1));
    let mut rows = random_rows(&mut rng);
    rows[3][0] = 2.0; // down the chain to its last leaf
    assert_kernels_agree(&mut m, &rows, "limits");
}

#[test]
fn kernel_names_are_read_in_any_case() {
    assert_eq!(Kernel::named("walk"), Some(Kernel::Walk));
    assert_eq!(Kernel::named("WALK"), Some(Kernel::Walk));
    assert_eq!(Kernel::named("Bitset"), Some(Kernel::Bitset));
    assert_eq!(Kernel::named("avx2"), Some(Kernel::Avx2));
    assert_eq!(Kernel::named("AVX512"), Some(Kernel::Avx512));
    for unknown in ["", "off", "avx-512", "sse2"] {
        assert_eq!(Kernel::named(unknown), None, "{unknown:?}");
    }
}
