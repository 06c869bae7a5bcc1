//! Small trees evaluated for many rows at once, as bitsets of their leaves.
//!
//! A root-to-leaf walk is a chain of dependent loads: each step waits for the
//! branch the previous one chose. For a block of rows a tree of at most 64
//! leaves can instead be evaluated without walking it (the idea of
//! QuickScorer, Lucchese et al., SIGIR 2015, applied one tree at a time):
//! every row starts with all leaves possible, one bit each, numbered so that
//! a branch's true subtree comes before its false subtree; every branch whose
//! test fails for a row rules out the leaves of its true subtree; the row's
//! leaf is its lowest remaining bit. Each branch is one comparison over
//! [`WIDE`] rows and one AND, with no load waiting on another, which the
//! compiler turns into SIMD where the CPU has it ([`Kernel`]).
//!
//! A row then tests every branch of the tree, not only those on its path: at
//! most 63, so the work still does not grow with the ensemble's leaves.
//! A tree whose leaves each vote once, for one target (regressors, binary
//! classifiers such as the article's), then adds a group's votes with one
//! gather ([`add_single`]) instead of a lookup per row.
//! Measured on the article's 512-tree forest at 64 rows (`cargo bench -p
//! hadr-trees --bench forest`, which runs the walk beside the chosen kernel;
//! `HADR_TREES_KERNEL` picks another): bitsets take 0.28-0.32x the walk's
//! time a row with AVX-512 (2.2-2.4 µs), 0.45x with AVX2 (3.6) and 1.04x
//! without either (7.2 against 6.9), which is why such a CPU keeps walking.

use std::collections::HashSet;

use crate::forest::{Branch, Rule, LEAF_BIT};

/// A branch with the mask that rules out its true subtree's leaves.
pub(crate) type MaskedBranch = (Branch, u64);

/// A leaf's votes: `start..end` in the forest's vote arrays.
pub(crate) type VoteRange = (u32, u32);

/// Rows a bitset evaluation covers at once.
pub(crate) const WIDE: usize = 16;

/// Leaves a tree may have to be evaluated as a bitset (bits of a `u64`).
const MAX_LEAVES: usize = 64;

/// How blocks of rows are evaluated: chosen when a forest is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Root-to-leaf walks only (no SIMD the bitsets would need).
    Walk,
    /// Bitsets without SIMD: no faster than walking, so never detected;
    /// tests use it to check the bitset logic on any CPU.
    Bitset,
    /// Bitsets, compiled for AVX2.
    Avx2,
    /// Bitsets, compiled for AVX-512 (F, VL, BW, DQ).
    Avx512,
}

impl Kernel {
    /// The kernel `HADR_TREES_KERNEL` names (`walk`, `bitset`, `avx2`,
    /// `avx512`, any case) if this CPU runs it, else the fastest one it
    /// runs, with a warning. Forcing a kernel is for side-by-side
    /// measurements (the forest bench) and for turning bitsets off.
    pub(crate) fn choose() -> Kernel {
        let best = Kernel::detect();
        let Ok(value) = std::env::var("HADR_TREES_KERNEL") else {
            return best;
        };
        match Kernel::named(&value) {
            Some(kernel) if kernel.supported() => kernel,
            Some(kernel) => {
                tracing::warn!(?kernel, using = ?best, "HADR_TREES_KERNEL: this CPU lacks that kernel's instructions");
                best
            }
            None => {
                tracing::warn!(%value, using = ?best, "HADR_TREES_KERNEL is not one of walk, bitset, avx2, avx512");
                best
            }
        }
    }

    /// The kernel a `HADR_TREES_KERNEL` value names, in any case.
    pub(crate) fn named(name: &str) -> Option<Kernel> {
        match name.to_ascii_lowercase().as_str() {
            "walk" => Some(Kernel::Walk),
            "bitset" => Some(Kernel::Bitset),
            "avx2" => Some(Kernel::Avx2),
            "avx512" => Some(Kernel::Avx512),
            _ => None,
        }
    }

    /// Fewest rows worth a bitset group (a group costs [`WIDE`] rows
    /// whatever it holds; fewer rows are walked). Measured on the article's
    /// forest, µs a row at 8 rows against the walk's 5.3: AVX-512 5.6, AVX2
    /// 7.3; at 16 rows both win. [`Kernel::Bitset`] takes AVX2's, so tests
    /// reach walked remainders of 8 to 11 rows on any CPU.
    pub(crate) fn min_group_rows(self) -> usize {
        match self {
            Kernel::Walk => usize::MAX,
            Kernel::Avx512 => 10,
            Kernel::Bitset | Kernel::Avx2 => 12,
        }
    }

    /// Whether this CPU has every feature the kernel is compiled with, and
    /// those `#[target_feature]` implies (AVX-512F implies AVX2, FMA and
    /// F16C to the compiler, so they are checked too rather than assumed).
    fn supported(self) -> bool {
        match self {
            Kernel::Walk | Kernel::Bitset => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx")
                    && std::arch::is_x86_feature_detected!("avx2")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => {
                Kernel::Avx2.supported()
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 | Kernel::Avx512 => false,
        }
    }

    /// The fastest kernel this CPU runs.
    fn detect() -> Kernel {
        [Kernel::Avx512, Kernel::Avx2]
            .into_iter()
            .find(|k| k.supported())
            .unwrap_or(Kernel::Walk)
    }

    /// Every kernel this CPU runs (tests compare them).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Kernel> {
        [Kernel::Walk, Kernel::Bitset, Kernel::Avx2, Kernel::Avx512]
            .into_iter()
            .filter(|k| k.supported())
            .collect()
    }
}

/// One tree's place in [`BitTrees`].
#[derive(Debug, Clone, PartialEq)]
struct BitTree {
    /// Its branches: `nodes[start..end]`.
    nodes: (u32, u32),
    /// Its leaves' vote ranges in bit order: `leaves[start..end]`.
    leaves: (u32, u32),
    /// The one target every leaf of the tree votes for, once each, if so
    /// (a binary classifier, a regressor, one class's tree of a boosted
    /// multiclass model), with its leaves' votes by bit: `weights[i]`.
    /// They are then added for a whole group at once ([`add_single`]).
    single: Option<(u32, u32)>,
}

/// One bitset tree, as [`BitTrees::tree`] gives it.
pub(crate) struct BitTreeRef<'a> {
    /// Each branch with the mask that rules out its true subtree's leaves.
    pub nodes: &'a [MaskedBranch],
    /// Each leaf's votes, in bit order.
    pub leaves: &'a [VoteRange],
    /// The target every leaf votes for once, and each leaf's vote by bit.
    pub single: Option<(u32, &'a Weights)>,
}

/// The bitset form of every tree that has one.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct BitTrees {
    /// Per tree, in the forest's order: `None` for a tree with more than
    /// [`MAX_LEAVES`] leaves or a shared subtree, which is walked instead.
    trees: Vec<Option<BitTree>>,
    /// Each branch with the mask that rules out its true subtree's leaves.
    nodes: Vec<MaskedBranch>,
    /// Each leaf's votes (a range of the forest's vote arrays), each tree's
    /// leaves in bit order: found without a lookup of the leaf's number.
    leaves: Vec<VoteRange>,
    /// For each tree whose leaves all vote once for one target, its
    /// leaves' votes by bit.
    weights: Vec<Weights>,
}

/// A tree's leaves' votes by bit, 0 past its last leaf: a whole `u64`'s
/// worth, so that any bit number indexes it without a bounds check, which
/// would keep [`add_single`] from becoming SIMD.
pub(crate) type Weights = [f64; MAX_LEAVES];

/// The forest's votes: leaf `l`'s are `start[l]..start[l + 1]` of `target`
/// and `weight`.
pub(crate) struct Votes<'a> {
    pub start: &'a [u32],
    pub target: &'a [u32],
    pub weight: &'a [f64],
}

impl BitTrees {
    /// The bitset form of each tree rooted at `roots` (child references into
    /// `branches`).
    pub(crate) fn build(branches: &[Branch], roots: &[u32], votes: &Votes) -> BitTrees {
        let mut bits = BitTrees::default();
        for &root in roots {
            let tree = is_small_tree(branches, root).then(|| bits.add(branches, votes, root));
            bits.trees.push(tree);
        }
        bits
    }

    /// Tree `t`'s bitset form, if it has one.
    #[inline(always)]
    pub(crate) fn tree(&self, t: usize) -> Option<BitTreeRef<'_>> {
        let tree = self.trees[t].as_ref()?;
        let ((n0, n1), (l0, l1)) = (tree.nodes, tree.leaves);
        Some(BitTreeRef {
            nodes: &self.nodes[n0 as usize..n1 as usize],
            leaves: &self.leaves[l0 as usize..l1 as usize],
            single: tree
                .single
                .map(|(target, i)| (target, &self.weights[i as usize])),
        })
    }

    /// Whether any tree is a bitset tree (else a block needs no layout).
    /// Every bitset tree has a leaf, so this needs no walk over the trees,
    /// which would run for every block.
    pub(crate) fn any(&self) -> bool {
        !self.leaves.is_empty()
    }

    /// Appends the tree from `root` (known small).
    fn add(&mut self, branches: &[Branch], votes: &Votes, root: u32) -> BitTree {
        let start = self.nodes.len() as u32;
        let first_leaf = self.leaves.len();
        self.number(branches, votes.start, root, first_leaf);
        let leaves = &self.leaves[first_leaf..];
        let once = |&(lo, hi): &VoteRange| (hi == lo + 1).then(|| votes.target[lo as usize]);
        let first = once(&leaves[0]);
        let single = first
            .filter(|_| leaves.iter().all(|l| once(l) == first))
            .map(|target| {
                let mut weights = [0.0; MAX_LEAVES];
                for (w, &(lo, _)) in weights.iter_mut().zip(leaves) {
                    *w = votes.weight[lo as usize];
                }
                self.weights.push(weights);
                (target, self.weights.len() as u32 - 1)
            });
        BitTree {
            nodes: (start, self.nodes.len() as u32),
            leaves: (first_leaf as u32, self.leaves.len() as u32),
            single,
        }
    }

    /// Numbers the leaves under `r` (true subtree first) from bit
    /// `self.leaves.len() - first_leaf` and records each branch's mask;
    /// returns the bits of `r`'s leaves as a range. Recursion is at most 63
    /// deep (the tree has at most 64 leaves).
    fn number(
        &mut self,
        branches: &[Branch],
        leaf_start: &[u32],
        r: u32,
        first_leaf: usize,
    ) -> (u32, u32) {
        if r & LEAF_BIT != 0 {
            let bit = (self.leaves.len() - first_leaf) as u32;
            let leaf = (r & !LEAF_BIT) as usize;
            self.leaves.push((leaf_start[leaf], leaf_start[leaf + 1]));
            return (bit, bit + 1);
        }
        let b = branches[r as usize];
        let slot = self.nodes.len();
        self.nodes.push((b, 0));
        let [on_false, on_true] = b.children();
        let (lo, mid) = self.number(branches, leaf_start, on_true, first_leaf);
        let (_, hi) = self.number(branches, leaf_start, on_false, first_leaf);
        self.nodes[slot].1 = !bit_range(lo, mid);
        (lo, hi)
    }
}

/// Bits `lo..hi` set (`hi - lo` in 1..=64; a true subtree has at most 63).
fn bit_range(lo: u32, hi: u32) -> u64 {
    (u64::MAX >> (64 - (hi - lo))) << lo
}

/// Whether the tree from `root` has at most [`MAX_LEAVES`] leaves and no node
/// reached twice (the numbering needs each leaf under one path). Stops early:
/// a tree of 64 leaves has 127 nodes.
fn is_small_tree(branches: &[Branch], root: u32) -> bool {
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    let mut leaves = 0;
    while let Some(r) = stack.pop() {
        if !seen.insert(r) || seen.len() > 2 * MAX_LEAVES - 1 {
            return false;
        }
        if r & LEAF_BIT != 0 {
            leaves += 1;
        } else {
            stack.extend(branches[r as usize].children());
        }
    }
    leaves <= MAX_LEAVES
}

/// For [`WIDE`] rows (`cols[feature * WIDE + row]`), clears in `bits[row]`
/// the leaves ruled out by each of `nodes`. Every feature a node reads must
/// be laid out in `cols`.
#[inline(always)]
pub(crate) fn rule_out<R: Rule>(
    kernel: Kernel,
    nodes: &[MaskedBranch],
    cols: &[f32],
    bits: &mut [u64; WIDE],
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a forest only holds this kernel when `Kernel::supported`
        // found on this CPU every feature the wrapper enables and implies:
        // `choose` and `available` return supported kernels only, and
        // `Forest::use_kernel` (tests) asserts it.
        Kernel::Avx512 => unsafe { rule_out_avx512::<R>(nodes, cols, bits) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2.
        Kernel::Avx2 => unsafe { rule_out_avx2::<R>(nodes, cols, bits) },
        _ => rule_out_portable::<R>(nodes, cols, bits),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq")]
fn rule_out_avx512<R: Rule>(nodes: &[MaskedBranch], cols: &[f32], bits: &mut [u64; WIDE]) {
    rule_out_portable::<R>(nodes, cols, bits)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn rule_out_avx2<R: Rule>(nodes: &[MaskedBranch], cols: &[f32], bits: &mut [u64; WIDE]) {
    rule_out_portable::<R>(nodes, cols, bits)
}

/// The loop every kernel compiles (each step is [`Rule::rule_out`]).
#[inline(always)]
fn rule_out_portable<R: Rule>(nodes: &[MaskedBranch], cols: &[f32], out: &mut [u64; WIDE]) {
    // A local copy stays in registers; through `out` every node would store
    // it back (a bounds-check panic could observe it).
    let mut bits = *out;
    for (b, mask) in nodes {
        let col: &[f32; WIDE] = cols[b.feature() * WIDE..][..WIDE]
            .try_into()
            .expect("WIDE values");
        R::rule_out(b, *mask, col, &mut bits);
    }
    *out = bits;
}

/// Adds to `lane[row]` the weight of the leaf `bits[row]` leaves (its
/// lowest bit), for [`WIDE`] rows of a tree whose leaves vote for one
/// target once each (`weights` by bit): a gather and an add per row, with
/// no branch, so it runs as SIMD where the kernel has it.
#[inline(always)]
pub(crate) fn add_single(
    kernel: Kernel,
    bits: &[u64; WIDE],
    weights: &Weights,
    lane: &mut [f64; WIDE],
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for `rule_out`.
        Kernel::Avx512 => unsafe { add_single_avx512(bits, weights, lane) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for `rule_out`.
        Kernel::Avx2 => unsafe { add_single_avx2(bits, weights, lane) },
        _ => add_single_portable(bits, weights, lane),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq")]
fn add_single_avx512(bits: &[u64; WIDE], weights: &Weights, lane: &mut [f64; WIDE]) {
    add_single_portable(bits, weights, lane)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn add_single_avx2(bits: &[u64; WIDE], weights: &Weights, lane: &mut [f64; WIDE]) {
    add_single_portable(bits, weights, lane)
}

/// The loop every kernel compiles for [`add_single`].
#[inline(always)]
fn add_single_portable(bits: &[u64; WIDE], weights: &Weights, lane: &mut [f64; WIDE]) {
    for (sum, &b) in lane.iter_mut().zip(bits) {
        // The lowest bit alone is a power of two, which converts to f64
        // exactly: its exponent is the bit's number. Unlike a count of
        // trailing zeros, the conversion has a SIMD form on these CPUs.
        let low = b & b.wrapping_neg();
        let bit = ((low as f64).to_bits() >> 52) as usize;
        *sum += weights[bit.wrapping_sub(1023) % MAX_LEAVES];
    }
}
