//! A validated ensemble, flattened for evaluation.
//!
//! The point of this crate: per row and tree, evaluation touches only the
//! branches on the path to a leaf and then that leaf's own votes, found by
//! index. Nothing scales with the ensemble's total leaf count. (Blocks of
//! rows on CPUs with SIMD evaluate trees of at most 64 leaves whole, as
//! bitsets: see [`crate::bits`]. That work is bounded by the tree too.)
//!
//! Layout: every reachable branch is a 16-byte [`Branch`] (four to a cache
//! line) in one array, in depth-first order so a path mostly walks forward in
//! memory. A child reference is either a branch index or, with [`LEAF_BIT`]
//! set, a leaf number; a leaf's votes are `votes[leaf_start[l]..leaf_start[l+1]]`.
//! Validation and flattening live in [`crate::flatten`].
//!
//! Rows are compared in f32, except f64 rows (see [`Feature`]), which keep a
//! separate array of the thresholds as given, outside the packed branches.

use crate::bits::{add_single, rule_out, BitTreeRef, BitTrees, Kernel, Votes, WIDE};
use crate::error::TreeError;
use crate::flatten::{flatten, Flat};
use crate::table::{Mode, NodeTable, VoteTable};

/// Marks a child reference as a leaf number rather than a branch index.
pub(crate) const LEAF_BIT: u32 = 1 << 31;
/// Feature indices live in the low bits of [`Branch::key`].
const FEATURE_BITS: u32 = 28;
/// Largest feature index a branch can hold.
pub(crate) const MAX_FEATURE: u32 = (1 << FEATURE_BITS) - 1;
/// Bit of [`Branch::key`] set when NaN takes the true branch.
const MISSING_TRUE_BIT: u32 = 1 << 31;

/// One decision node, packed into 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub(crate) struct Branch {
    /// Threshold, already rounded for f32 comparisons (see
    /// [`crate::flatten::threshold_f32`]).
    threshold: f32,
    /// Feature index (low 28 bits), mode (bits 28..31), missing-tracks-true (bit 31).
    key: u32,
    /// Child references: `[when false, when true]`, so the comparison indexes it.
    next: [u32; 2],
}

impl Branch {
    /// A branch with its children still unset (see [`Branch::link`]).
    /// `feature` must be at most [`MAX_FEATURE`].
    pub(crate) fn new(feature: u32, mode: Mode, missing_true: bool, threshold: f32) -> Branch {
        let missing = if missing_true { MISSING_TRUE_BIT } else { 0 };
        let key = feature | (mode as u32) << FEATURE_BITS | missing;
        Branch {
            threshold,
            key,
            next: [0, 0],
        }
    }

    /// Sets the child references taken when the comparison is false / true.
    pub(crate) fn link(&mut self, on_false: u32, on_true: u32) {
        self.next = [on_false, on_true];
    }

    /// The child references taken when the comparison is false / true.
    pub(crate) fn children(&self) -> [u32; 2] {
        self.next
    }

    #[inline(always)]
    pub(crate) fn feature(&self) -> usize {
        (self.key & MAX_FEATURE) as usize
    }

    #[inline(always)]
    fn mode(&self) -> Mode {
        Mode::ALL[((self.key >> FEATURE_BITS) & 0x7) as usize]
    }

    #[inline(always)]
    fn missing_true(&self) -> bool {
        self.key & MISSING_TRUE_BIT != 0
    }
}

/// How branches decide, chosen once per ensemble so the common case (every
/// branch `BRANCH_LEQ`, no missing-value tracking) compiles to a bare compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleKind {
    /// Every branch uses this mode and none tracks missing values to true.
    Uniform(Mode),
    /// Decode mode and missing flag per branch.
    Mixed,
}

/// A branch decision, monomorphised per [`RuleKind`].
pub(crate) trait Rule {
    fn goes_true(x: f32, b: &Branch) -> bool;

    /// Clears `mask`'s zero bits in `bits[r]` for each row `r` whose value
    /// `col[r]` fails `b`'s test (the bitset kernels' step, see
    /// [`crate::bits`]).
    #[inline(always)]
    fn rule_out(b: &Branch, mask: u64, col: &[f32; WIDE], bits: &mut [u64; WIDE]) {
        rule_out_rows(mask, col, bits, |x| Self::goes_true(x, b));
    }
}

/// [`Rule::rule_out`] for one test: branch-free, so it vectorises over rows.
#[inline(always)]
fn rule_out_rows(
    mask: u64,
    col: &[f32; WIDE],
    bits: &mut [u64; WIDE],
    goes_true: impl Fn(f32) -> bool,
) {
    for (bits, &x) in bits.iter_mut().zip(col) {
        // All ones when the row takes the true branch; a data-dependent `if`
        // here would be a coin toss for the branch predictor.
        let stays = (goes_true(x) as u64).wrapping_neg();
        *bits &= mask | stays;
    }
}

/// A single mode for the whole forest; `M` is a [`Mode`] discriminant.
struct UniformRule<const M: u8>;

impl<const M: u8> Rule for UniformRule<M> {
    #[inline(always)]
    fn goes_true(x: f32, b: &Branch) -> bool {
        Mode::ALL[M as usize].holds(x, b.threshold)
    }
}

/// Per-branch mode and missing-value flag.
struct MixedRule;

impl Rule for MixedRule {
    #[inline(always)]
    fn goes_true(x: f32, b: &Branch) -> bool {
        (b.missing_true() && x.is_nan()) || b.mode().holds(x, b.threshold)
    }

    /// Decodes the branch once, not per row, so each case's loop vectorises
    /// (decoding per row made LightGBM's forests slower as bitsets than
    /// walked).
    #[inline(always)]
    fn rule_out(b: &Branch, mask: u64, col: &[f32; WIDE], bits: &mut [u64; WIDE]) {
        let t = b.threshold;
        macro_rules! by_mode {
            ($($mode:ident),*) => {
                match (b.mode(), b.missing_true()) {
                    $(
                        (Mode::$mode, false) => {
                            rule_out_rows(mask, col, bits, |x| Mode::$mode.holds(x, t))
                        }
                        (Mode::$mode, true) => rule_out_rows(mask, col, bits, |x| {
                            x.is_nan() || Mode::$mode.holds(x, t)
                        }),
                    )*
                }
            };
        }
        by_mode!(Leq, Lt, Gte, Gt, Eq, Neq)
    }
}

/// How leaf votes for one target combine across trees.
pub(crate) trait Fold {
    /// Whether folding is adding (which needs no `seen`): bitset trees then
    /// add a whole group's votes at once.
    const SUM: bool = false;
    fn fold(acc: &mut f64, seen: &mut bool, weight: f64);
}

/// Sum (also used for AVERAGE, divided at the end).
pub(crate) struct SumFold;
/// Smallest vote.
pub(crate) struct MinFold;
/// Largest vote.
pub(crate) struct MaxFold;

impl Fold for SumFold {
    const SUM: bool = true;
    #[inline(always)]
    fn fold(acc: &mut f64, seen: &mut bool, weight: f64) {
        *acc += weight;
        *seen = true;
    }
}

impl Fold for MinFold {
    #[inline(always)]
    fn fold(acc: &mut f64, seen: &mut bool, weight: f64) {
        if !*seen || weight < *acc {
            *acc = weight;
        }
        *seen = true;
    }
}

impl Fold for MaxFold {
    #[inline(always)]
    fn fold(acc: &mut f64, seen: &mut bool, weight: f64) {
        if !*seen || weight > *acc {
            *acc = weight;
        }
        *seen = true;
    }
}

/// Observes the work of an evaluation. The no-op `()` version compiles away;
/// [`WorkCount`] lets tests pin the per-row cost without timing anything.
pub(crate) trait Counter {
    fn node(&mut self);
    fn nodes(&mut self, n: usize);
    fn vote(&mut self);
}

impl Counter for () {
    #[inline(always)]
    fn node(&mut self) {}
    #[inline(always)]
    fn nodes(&mut self, _: usize) {}
    #[inline(always)]
    fn vote(&mut self) {}
}

/// Nodes visited (the branches tested plus the leaf reached: those on the
/// path when walking, every branch of the tree for a bitset row) and votes
/// read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkCount {
    pub nodes: usize,
    pub votes: usize,
}

impl Counter for WorkCount {
    fn node(&mut self) {
        self.nodes += 1;
    }
    fn nodes(&mut self, n: usize) {
        self.nodes += n;
    }
    fn vote(&mut self) {
        self.votes += 1;
    }
}

/// Rows evaluated together. Trees are visited once per block, so a tree's
/// branches stay in cache while every row of the block walks it.
pub(crate) const BLOCK: usize = 32;

/// Most outputs a row (a regressor's targets, a classifier's classes) a
/// model may have: an inference's [`Accumulator`] holds about a kilobyte
/// per output, so a model of 2^25 targets (403 bytes of ONNX) would ask
/// for 18 GB at its first inference, an allocation failure that aborts the
/// process. At this cap it is 70 MB.
pub(crate) const MAX_TARGETS: usize = 1 << 16;

/// Most output values (rows × outputs a row) one inference may produce:
/// 256 MiB of f32. The rows come from a request, so a model near
/// [`MAX_TARGETS`] would otherwise ask for rows × 256 KiB on the host,
/// outside any sandbox's memory limit.
pub(crate) const MAX_OUTPUT_VALUES: usize = 1 << 26;

/// Refuses an inference whose output would pass [`MAX_OUTPUT_VALUES`].
pub(crate) fn check_output(rows: usize, width: usize) -> Result<(), TreeError> {
    match rows.checked_mul(width) {
        Some(values) if values <= MAX_OUTPUT_VALUES => Ok(()),
        _ => Err(TreeError::Invalid {
            attr: "X",
            why: format!(
                "{rows} rows of {width} outputs each is more than the {MAX_OUTPUT_VALUES} output values one inference may produce: send fewer rows"
            ),
        }),
    }
}

/// Walks advanced in lockstep: independent root-to-leaf walks overlap their
/// load latencies instead of waiting on one dependent chain at a time.
/// Eight, measured on the article's 512-tree forest (`cargo bench -p
/// hadr-trees --bench forest`, µs a row at 1 / 64 rows): four took
/// 8.9 / 8.1-9.2, eight 6.6 / 6.4, sixteen 8.5 / 10.5.
const LANES: usize = 8;

/// Scratch for a block of rows: one accumulator and one "has a vote" flag
/// per (row, target), and the block's rows laid out for bitsets.
/// Allocated once per evaluation, reset per block.
///
/// Accumulators are laid out like `cols`, `[group][target][row]` for groups
/// of [`WIDE`] rows, so a bitset tree adds a group's votes for a target
/// with one vector add; [`Accumulator::finish`] turns them into rows.
#[derive(Debug, Clone)]
pub(crate) struct Accumulator {
    n_targets: usize,
    sums: Vec<f64>,
    seen: Vec<bool>,
    /// The finished sums, row by row (`[row][target]`).
    rows: Vec<f64>,
    /// The block's rows [`WIDE`] to a group, feature-major within a group
    /// (`[group][feature][row]`) so one load reads a feature for them all;
    /// a last, partial group repeats its last row.
    cols: Vec<f32>,
}

impl Accumulator {
    pub(crate) fn new(n_targets: usize) -> Self {
        let lanes = BLOCK.div_ceil(WIDE) * WIDE * n_targets;
        Accumulator {
            n_targets,
            sums: vec![0.0; lanes],
            seen: vec![false; lanes],
            rows: vec![0.0; BLOCK * n_targets],
            cols: Vec::new(),
        }
    }

    /// Clears the groups holding the first `rows` rows.
    pub(crate) fn reset(&mut self, rows: usize) {
        let lanes = rows.div_ceil(WIDE) * WIDE * self.n_targets;
        self.sums[..lanes].fill(0.0);
        self.seen[..lanes].fill(false);
    }

    /// Where (row `r`, target `t`) is accumulated.
    #[inline(always)]
    fn at(&self, r: usize, t: usize) -> usize {
        ((r / WIDE) * self.n_targets + t) * WIDE + r % WIDE
    }

    /// Target `t`'s accumulators for the rows of group `g`.
    #[inline(always)]
    fn lane(&mut self, g: usize, t: usize) -> &mut [f64; WIDE] {
        let at = self.at(g * WIDE, t);
        (&mut self.sums[at..at + WIDE])
            .try_into()
            .expect("WIDE accumulators")
    }

    /// Copies the first `rows` rows' sums out, row by row, for [`Self::sums`].
    fn finish(&mut self, rows: usize) {
        let n = self.n_targets;
        for r in 0..rows {
            for t in 0..n {
                self.rows[r * n + t] = self.sums[self.at(r, t)];
            }
        }
    }

    /// The per-target results of row `r` of the block.
    pub(crate) fn sums(&self, r: usize) -> &[f64] {
        &self.rows[r * self.n_targets..(r + 1) * self.n_targets]
    }

    /// Lays out the first `n_features` of each of `rows` into [`Self::cols`].
    fn lay_out(&mut self, rows: &[&[f32]], n_features: usize) {
        let group = n_features * WIDE;
        self.cols.clear();
        self.cols.resize(rows.len().div_ceil(WIDE) * group, 0.0);
        for (g, cols) in self.cols.chunks_exact_mut(group.max(1)).enumerate() {
            for r in 0..WIDE {
                let row = rows[(g * WIDE + r).min(rows.len() - 1)];
                for (f, &x) in row[..n_features].iter().enumerate() {
                    cols[f * WIDE + r] = x;
                }
            }
        }
    }

    /// Folds one vote into row `r`.
    #[inline(always)]
    fn add<F: Fold>(&mut self, r: usize, target: u32, weight: f64) {
        let at = self.at(r, target as usize);
        F::fold(&mut self.sums[at], &mut self.seen[at], weight);
    }
}

/// The element type of the rows a forest compares: f32, or f64.
///
/// onnxruntime compares f32 inputs, and i32 and i64 inputs narrowed to
/// float, with float thresholds; its double kernel keeps f64 inputs and
/// compares them in double with the thresholds as given. Narrowing f64 rows
/// would send `0.5 + 1e-10` down `<= 0.5`, so they walk against
/// [`Forest`]'s f64 thresholds instead, one row at a time: the lanes and
/// bitsets are laid out for f32, and f64 inputs are rare enough not to
/// need a fast path.
pub(crate) trait Feature: Copy {
    /// Folds every tree's votes for `rows` into `acc` (not yet finished).
    fn fold_rows<F: Fold, C: Counter>(
        forest: &Forest,
        rows: &[&[Self]],
        acc: &mut Accumulator,
        counter: &mut C,
    );
}

impl Feature for f32 {
    fn fold_rows<F: Fold, C: Counter>(
        forest: &Forest,
        rows: &[&[f32]],
        acc: &mut Accumulator,
        counter: &mut C,
    ) {
        match forest.rule {
            RuleKind::Uniform(Mode::Leq) => forest.run::<UniformRule<0>, F, C>(rows, acc, counter),
            RuleKind::Uniform(Mode::Lt) => forest.run::<UniformRule<1>, F, C>(rows, acc, counter),
            RuleKind::Uniform(Mode::Gte) => forest.run::<UniformRule<2>, F, C>(rows, acc, counter),
            RuleKind::Uniform(Mode::Gt) => forest.run::<UniformRule<3>, F, C>(rows, acc, counter),
            RuleKind::Uniform(Mode::Eq) => forest.run::<UniformRule<4>, F, C>(rows, acc, counter),
            RuleKind::Uniform(Mode::Neq) => forest.run::<UniformRule<5>, F, C>(rows, acc, counter),
            RuleKind::Mixed => forest.run::<MixedRule, F, C>(rows, acc, counter),
        }
    }
}

impl Feature for f64 {
    fn fold_rows<F: Fold, C: Counter>(
        forest: &Forest,
        rows: &[&[f64]],
        acc: &mut Accumulator,
        counter: &mut C,
    ) {
        for (r, row) in rows.iter().enumerate() {
            for &root in &forest.roots {
                let leaf = forest.descend_exact(root, row, counter);
                forest.add_votes::<F, C>(leaf, r, acc, counter);
            }
        }
    }
}

/// A validated, flattened tree ensemble.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Forest {
    /// Child reference of each tree's root, in order of first appearance.
    roots: Vec<u32>,
    branches: Vec<Branch>,
    /// `branches[i]`'s threshold as the model gave it (a FLOATS value
    /// widened, or a double), compared with f64 rows.
    thresholds: Vec<f64>,
    /// `leaf_start[l]..leaf_start[l + 1]` indexes the votes of leaf `l`.
    leaf_start: Vec<u32>,
    vote_target: Vec<u32>,
    vote_weight: Vec<f64>,
    n_targets: usize,
    /// One more than the largest feature index a branch reads (0 if none).
    n_features: usize,
    rule: RuleKind,
    /// The trees that blocks of rows evaluate as bitsets.
    bits: BitTrees,
    /// How blocks are evaluated on this CPU.
    kernel: Kernel,
}

impl Forest {
    /// Validates `nodes` and `votes` and flattens them. `n_targets` bounds the
    /// vote ids (number of class labels, or `n_targets`).
    pub(crate) fn build(
        nodes: &NodeTable,
        votes: &VoteTable,
        n_targets: usize,
    ) -> Result<Forest, TreeError> {
        if n_targets > MAX_TARGETS {
            return Err(TreeError::Invalid {
                attr: "n_targets",
                why: format!(
                    "{n_targets} outputs a row (targets or classes): at most {MAX_TARGETS} are served, since each inference holds scratch of about a kilobyte per output"
                ),
            });
        }
        let Flat {
            roots,
            branches,
            thresholds,
            leaf_start,
            vote_target,
            vote_weight,
        } = flatten(nodes, votes, n_targets)?;
        let rule = rule_kind(&branches);
        let n_features = branches.iter().map(|b| b.feature() + 1).max().unwrap_or(0);
        let votes = Votes {
            start: &leaf_start,
            target: &vote_target,
            weight: &vote_weight,
        };
        let bits = BitTrees::build(&branches, &roots, &votes);
        Ok(Forest {
            roots,
            branches,
            thresholds,
            leaf_start,
            vote_target,
            vote_weight,
            n_targets,
            n_features,
            rule,
            bits,
            kernel: Kernel::choose(),
        })
    }

    /// Evaluates blocks with `kernel` instead of the detected one (tests
    /// compare kernels; `kernel` must be in [`Kernel::available`]).
    #[cfg(test)]
    pub(crate) fn use_kernel(&mut self, kernel: Kernel) {
        assert!(Kernel::available().contains(&kernel));
        self.kernel = kernel;
    }

    pub(crate) fn n_trees(&self) -> usize {
        self.roots.len()
    }

    pub(crate) fn n_targets(&self) -> usize {
        self.n_targets
    }

    /// Refuses an input row narrower than the features the trees read.
    pub(crate) fn check_width(&self, width: usize) -> Result<(), TreeError> {
        if width < self.n_features {
            Err(TreeError::FeatureWidth {
                feature: self.n_features - 1,
                width,
            })
        } else {
            Ok(())
        }
    }

    /// Adds every tree's votes for each of `rows` (at most [`BLOCK`], each at
    /// least as wide as the features read) into the matching rows of `acc`.
    #[inline]
    pub(crate) fn accumulate<X: Feature, F: Fold, C: Counter>(
        &self,
        rows: &[&[X]],
        acc: &mut Accumulator,
        counter: &mut C,
    ) {
        X::fold_rows::<F, C>(self, rows, acc, counter);
        acc.finish(rows.len());
    }

    /// The block loop, specialised for one rule and one fold: with enough
    /// rows, tree by tree (as bitsets over [`WIDE`] rows at a time where the
    /// kernel and the tree allow, else walking [`LANES`] rows at a time);
    /// otherwise row by row over [`LANES`] trees at a time.
    fn run<R: Rule, F: Fold, C: Counter>(
        &self,
        rows: &[&[f32]],
        acc: &mut Accumulator,
        counter: &mut C,
    ) {
        if rows.len() < LANES {
            for (r, row) in rows.iter().enumerate() {
                self.run_row::<R, F, C>(row, r, acc, counter);
            }
            return;
        }
        // Rows evaluated as bitsets: whole groups, and a last partial group
        // only if it has enough rows to be worth a whole group's cost.
        let min = self.kernel.min_group_rows();
        let bit_rows = match rows.len() % WIDE {
            _ if rows.len() < min || !self.bits.any() => 0,
            rest if rest < min => rows.len() - rest,
            _ => rows.len(),
        };
        debug_assert!(bit_rows % WIDE == 0 || bit_rows == rows.len());
        if bit_rows > 0 {
            acc.lay_out(&rows[..bit_rows], self.n_features);
        }
        // Walked rows go tree by tree, [`LANES`] rows at a time. The last
        // few that fill no lanes would walk each tree as one dependent chain
        // per row: they go row by row instead, over lanes of trees.
        let tail = (rows.len() - bit_rows) % LANES;
        let (by_tree, by_row) = rows.split_at(rows.len() - tail);
        for (t, &root) in self.roots.iter().enumerate() {
            match self.bits.tree(t).filter(|_| bit_rows > 0) {
                Some(tree) => {
                    self.run_bits::<R, F, C>(tree, bit_rows, acc, counter);
                    let walked = &by_tree[bit_rows.min(by_tree.len())..];
                    self.run_tree::<R, F, C>(root, walked, bit_rows, acc, counter);
                }
                None => self.run_tree::<R, F, C>(root, by_tree, 0, acc, counter),
            }
        }
        for (r, row) in by_row.iter().enumerate() {
            self.run_row::<R, F, C>(row, by_tree.len() + r, acc, counter);
        }
    }

    /// One small tree (its branches with their masks, and its leaves by bit)
    /// for the first `n` rows of the block, laid out in `acc`, [`WIDE`] rows
    /// at a time.
    ///
    /// A group's last lanes past `n` hold copies of the last row: their
    /// votes go to accumulators no row of the block reads (a partial group
    /// is the block's last).
    fn run_bits<R: Rule, F: Fold, C: Counter>(
        &self,
        tree: BitTreeRef,
        n: usize,
        acc: &mut Accumulator,
        counter: &mut C,
    ) {
        let group = self.n_features * WIDE;
        for g in 0..n.div_ceil(WIDE) {
            let mut bits = [u64::MAX; WIDE];
            rule_out::<R>(self.kernel, tree.nodes, &acc.cols[g * group..], &mut bits);
            let rows = (n - g * WIDE).min(WIDE);
            match tree.single.filter(|_| F::SUM) {
                Some((target, weights)) => {
                    for _ in 0..rows {
                        counter.nodes(tree.nodes.len() + 1); // every branch, then the leaf
                        counter.vote();
                    }
                    add_single(self.kernel, &bits, weights, acc.lane(g, target as usize));
                }
                None => {
                    for (r, bits) in bits.iter().enumerate().take(rows) {
                        counter.nodes(tree.nodes.len() + 1);
                        let (lo, hi) = tree.leaves[bits.trailing_zeros() as usize];
                        let votes = lo as usize..hi as usize;
                        self.add_range::<F, C>(votes, g * WIDE + r, acc, counter);
                    }
                }
            }
        }
    }

    /// One tree for `rows`, rows `first..` of the block, [`LANES`] rows at
    /// a time.
    fn run_tree<R: Rule, F: Fold, C: Counter>(
        &self,
        root: u32,
        rows: &[&[f32]],
        first: usize,
        acc: &mut Accumulator,
        counter: &mut C,
    ) {
        let mut lanes = rows.chunks_exact(LANES);
        for (q, quad) in (&mut lanes).enumerate() {
            let quad: [&[f32]; LANES] = std::array::from_fn(|l| quad[l]);
            let leaves = self.descend_lanes::<R, C>([root; LANES], quad, counter);
            for (l, leaf) in leaves.into_iter().enumerate() {
                self.add_votes::<F, C>(leaf, first + q * LANES + l, acc, counter);
            }
        }
        let done = first + rows.len() - lanes.remainder().len();
        for (r, row) in lanes.remainder().iter().enumerate() {
            let leaf = self.descend::<R, C>(root, row, counter);
            self.add_votes::<F, C>(leaf, done + r, acc, counter);
        }
    }

    /// All trees for one row (`r` in the block), [`LANES`] trees at a time.
    fn run_row<R: Rule, F: Fold, C: Counter>(
        &self,
        row: &[f32],
        r: usize,
        acc: &mut Accumulator,
        counter: &mut C,
    ) {
        let mut lanes = self.roots.chunks_exact(LANES);
        for quad in &mut lanes {
            let roots: [u32; LANES] = std::array::from_fn(|l| quad[l]);
            for leaf in self.descend_lanes::<R, C>(roots, [row; LANES], counter) {
                self.add_votes::<F, C>(leaf, r, acc, counter);
            }
        }
        for &root in lanes.remainder() {
            let leaf = self.descend::<R, C>(root, row, counter);
            self.add_votes::<F, C>(leaf, r, acc, counter);
        }
    }

    /// Reads leaf `leaf`'s votes by index range: O(votes of that leaf).
    #[inline(always)]
    fn add_votes<F: Fold, C: Counter>(
        &self,
        leaf: usize,
        r: usize,
        acc: &mut Accumulator,
        counter: &mut C,
    ) {
        let votes = self.leaf_start[leaf] as usize..self.leaf_start[leaf + 1] as usize;
        self.add_range::<F, C>(votes, r, acc, counter);
    }

    /// Folds the votes at `votes` into row `r`.
    #[inline(always)]
    fn add_range<F: Fold, C: Counter>(
        &self,
        votes: std::ops::Range<usize>,
        r: usize,
        acc: &mut Accumulator,
        counter: &mut C,
    ) {
        for (&t, &w) in self.vote_target[votes.clone()]
            .iter()
            .zip(&self.vote_weight[votes])
        {
            counter.vote();
            acc.add::<F>(r, t, w);
        }
    }

    /// [`LANES`] walks (`at[l]` on `rows[l]`) advanced together until every
    /// one is on its leaf: a walk that arrives early waits, so the others
    /// still overlap (finishing each alone once the first arrived left deep
    /// trees' tails to one dependent chain). Returns the leaf numbers.
    #[inline(always)]
    fn descend_lanes<R: Rule, C: Counter>(
        &self,
        mut at: [u32; LANES],
        rows: [&[f32]; LANES],
        counter: &mut C,
    ) -> [usize; LANES] {
        while at.iter().any(|&a| a & LEAF_BIT == 0) {
            for l in 0..LANES {
                if at[l] & LEAF_BIT == 0 {
                    counter.node();
                    let b = &self.branches[at[l] as usize];
                    at[l] = b.next[R::goes_true(rows[l][b.feature()], b) as usize];
                }
            }
        }
        // Every walk is on its leaf: `descend` only reads it.
        std::array::from_fn(|l| self.descend::<R, C>(at[l], rows[l], counter))
    }

    /// Follows one tree from `at` to a leaf: O(depth), returns the leaf number.
    #[inline(always)]
    fn descend<R: Rule, C: Counter>(&self, mut at: u32, row: &[f32], counter: &mut C) -> usize {
        while at & LEAF_BIT == 0 {
            counter.node();
            let b = &self.branches[at as usize];
            at = b.next[R::goes_true(row[b.feature()], b) as usize];
        }
        counter.node();
        (at & !LEAF_BIT) as usize
    }

    /// [`Forest::descend`] for an f64 row: each branch compares in f64 with
    /// its threshold as given (see [`Feature`]).
    fn descend_exact<C: Counter>(&self, mut at: u32, row: &[f64], counter: &mut C) -> usize {
        while at & LEAF_BIT == 0 {
            counter.node();
            let b = &self.branches[at as usize];
            let x = row[b.feature()];
            let t = self.thresholds[at as usize];
            let goes_true = (b.missing_true() && x.is_nan()) || b.mode().holds(x, t);
            at = b.next[goes_true as usize];
        }
        counter.node();
        (at & !LEAF_BIT) as usize
    }

    /// How many trees blocks evaluate as bitsets, and how many they walk.
    #[cfg(test)]
    pub(crate) fn tree_kinds(&self) -> (usize, usize) {
        let bits = (0..self.n_trees())
            .filter(|&t| self.bits.tree(t).is_some())
            .count();
        (bits, self.n_trees() - bits)
    }

    /// How many bitset trees add their votes a group at a time (every
    /// leaf votes once, for one target).
    #[cfg(test)]
    pub(crate) fn single_target_trees(&self) -> usize {
        (0..self.n_trees())
            .filter(|&t| self.bits.tree(t).is_some_and(|b| b.single.is_some()))
            .count()
    }

    /// Depth (branches on the path) each tree takes for `row`: used by tests to
    /// state the expected work independently of the evaluator.
    #[cfg(test)]
    pub(crate) fn path_lengths(&self, row: &[f32]) -> Vec<(usize, usize)> {
        self.roots
            .iter()
            .map(|&root| {
                let mut count = WorkCount::default();
                let leaf = self.descend::<MixedRule, _>(root, row, &mut count);
                (
                    count.nodes - 1,
                    (self.leaf_start[leaf + 1] - self.leaf_start[leaf]) as usize,
                )
            })
            .collect()
    }
}

/// Whether one comparison mode covers every branch (see [`RuleKind`]).
fn rule_kind(branches: &[Branch]) -> RuleKind {
    let Some(first) = branches.first() else {
        return RuleKind::Uniform(Mode::Leq);
    };
    let mode = first.mode();
    if branches
        .iter()
        .all(|b| b.mode() == mode && !b.missing_true())
    {
        RuleKind::Uniform(mode)
    } else {
        RuleKind::Mixed
    }
}
