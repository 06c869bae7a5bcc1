//! `ai.onnx.ml.TreeEnsembleClassifier`.
//!
//! Scores are the per-class sums of the reached leaves' weights. How they
//! become the `[N, C]` output follows onnxruntime wherever the spec is vague,
//! notably for two classes, where converters use several layouts (see
//! [`Finish`]). The label is the class of the largest output score, first on
//! ties, except for two classes whose votes all name one class id: there it
//! is onnxruntime's, read from that class's score before any transform (see
//! [`binary_winner`]), which also fixes tract 0.23's binary label (always
//! class 0).

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use crate::attrs::Attrs;
use crate::error::TreeError;
use crate::forest::{Accumulator, Counter, Feature, Forest, SumFold, BLOCK};
use crate::io::{batch_dim, Rows};
use crate::op::{Ensemble, Expanded, Shared};
use crate::table::{NodeTable, VoteTable, CLASS_VOTES};
use crate::transform::{logistic, probit, PostTransform};

/// The class labels, whose type is the label output's type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Labels {
    Int(Vec<i64>),
    Str(Vec<String>),
}

impl Labels {
    /// Reads `classlabels_int64s` or `classlabels_strings` (exactly one).
    fn parse(attrs: &Attrs) -> Result<Labels, TreeError> {
        let labels = match (
            attrs.ints("classlabels_int64s")?,
            attrs.strings("classlabels_strings")?,
        ) {
            (Some(ints), None) => Labels::Int(ints.to_vec()),
            (None, Some(strs)) => Labels::Str(strs.into_iter().map(String::from).collect()),
            (Some(_), Some(_)) => {
                return Err(TreeError::Exclusive {
                    first: "classlabels_int64s",
                    second: "classlabels_strings",
                })
            }
            (None, None) => {
                return Err(TreeError::Missing {
                    attr: "classlabels_int64s",
                })
            }
        };
        if labels.len() == 0 {
            return Err(TreeError::Invalid {
                attr: "classlabels_int64s",
                why: "no class labels".into(),
            });
        }
        Ok(labels)
    }

    fn len(&self) -> usize {
        match self {
            Labels::Int(v) => v.len(),
            Labels::Str(v) => v.len(),
        }
    }

    fn datum_type(&self) -> DatumType {
        match self {
            Labels::Int(_) => i64::datum_type(),
            Labels::Str(_) => String::datum_type(),
        }
    }

    /// The label tensor `[N]` for the winning class indices.
    fn gather(&self, winners: &[usize]) -> Tensor {
        match self {
            Labels::Int(v) => tensor1(&winners.iter().map(|&w| v[w]).collect::<Vec<_>>()),
            Labels::Str(v) => tensor1(&winners.iter().map(|&w| v[w].clone()).collect::<Vec<_>>()),
        }
    }
}

/// How the class sums become an output row. For C != 2 classes, and for two
/// classes that both receive votes, it is always [`Finish::PerClass`]; the
/// other variants are onnxruntime's layouts for a two-class ensemble whose
/// votes all go to one class id (`TreeAggregatorClassifier::FinalizeScores`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Finish {
    /// `score[c] = sum[c] + base[c]` (missing base entries count 0), then the
    /// post transform on the whole row.
    PerClass,
    /// All votes on class 0 and at most one base value: the single score `s`
    /// (plus `base[0]`) is the probability or margin of class 1, and the row
    /// is `[probit(s), 0]` under PROBIT, else `[1 - s, s]` when every weight
    /// is >= 0 (the post transform is then not applied, as in onnxruntime),
    /// else `[logistic(-s), logistic(s)]` under LOGISTIC and `[-s, s]` otherwise.
    /// The label is [`binary_winner`] of `s`.
    SingleColumn { nonnegative: bool },
    /// All votes on class 1 and at most one base value: the row is per
    /// class, as [`Finish::PerClass`], but the label is [`binary_winner`] of
    /// class 1's sum, as onnxruntime labels it.
    ClassOne { nonnegative: bool },
    /// All votes on class 1 and two base values: `v = base[1] + s` and the row
    /// is `[-v, v]`, then the post transform. (onnxruntime reads the sum of the
    /// unvoted class 0 here, dropping `s`; that looks unintended and no
    /// converter emits this layout, so the tree score is kept, and the label
    /// is the row's argmax.)
    Mirrored,
}

/// A parsed, validated classifier.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClassifierModel {
    pub(crate) forest: Forest,
    labels: Labels,
    base: Vec<f64>,
    transform: PostTransform,
    finish: Finish,
}

impl ClassifierModel {
    /// Reads and validates every attribute of the node.
    pub(crate) fn parse(node: &NodeProto) -> TractResult<ClassifierModel> {
        let attrs = Attrs::new(node);
        let labels = Labels::parse(&attrs)?;
        let nodes = NodeTable::parse(&attrs)?;
        let votes = VoteTable::parse(&attrs, CLASS_VOTES)?;
        let base = attrs
            .doubles("base_values", "base_values_as_tensor")?
            .unwrap_or_default();
        let transform = PostTransform::parse(attrs.string("post_transform")?)?;
        Ok(ClassifierModel::new(
            &nodes, &votes, labels, base, transform,
        )?)
    }

    /// Builds the model from already-read attributes.
    pub(crate) fn new(
        nodes: &NodeTable,
        votes: &VoteTable,
        labels: Labels,
        base: Vec<f64>,
        transform: PostTransform,
    ) -> Result<ClassifierModel, TreeError> {
        let n_classes = labels.len();
        check_base(&base, n_classes)?;
        let forest = Forest::build(nodes, votes, n_classes)?;
        let finish = pick_finish(votes, n_classes, base.len());
        Ok(ClassifierModel {
            forest,
            labels,
            base,
            transform,
            finish,
        })
    }

    /// Columns of the scores output: the number of class labels.
    pub(crate) fn width(&self) -> usize {
        self.labels.len()
    }

    /// Sums the trees' votes for a block of rows into `acc`.
    #[inline]
    pub(crate) fn score_block<X: Feature, C: Counter>(
        &self,
        rows: &[&[X]],
        acc: &mut Accumulator,
        counter: &mut C,
    ) {
        acc.reset(rows.len());
        self.forest.accumulate::<X, SumFold, C>(rows, acc, counter);
    }

    /// Applies base values, the binary layouts and the post transform.
    pub(crate) fn finish_row(&self, sums: &[f64], out: &mut [f64]) {
        let base = |c: usize| self.base.get(c).copied().unwrap_or(0.0);
        match self.finish {
            Finish::PerClass | Finish::ClassOne { .. } => {
                for (c, o) in out.iter_mut().enumerate() {
                    *o = sums[c] + base(c);
                }
                self.transform.apply(out);
            }
            Finish::SingleColumn { nonnegative } => {
                let s = sums[0] + base(0);
                let (neg, pos) = match self.transform {
                    PostTransform::Probit => (probit(s), 0.0),
                    _ if nonnegative => (1.0 - s, s),
                    PostTransform::Logistic => (logistic(-s), logistic(s)),
                    _ => (-s, s),
                };
                out[0] = neg;
                out[1] = pos;
            }
            Finish::Mirrored => {
                let v = base(1) + sums[1];
                out[0] = -v;
                out[1] = v;
                self.transform.apply(out);
            }
        }
    }

    /// The winning class of a row, from its sums and its output `scores`.
    fn winner(&self, sums: &[f64], scores: &[f32]) -> usize {
        let base = |c: usize| self.base.get(c).copied().unwrap_or(0.0);
        match self.finish {
            Finish::SingleColumn { nonnegative } => binary_winner(sums[0] + base(0), nonnegative),
            Finish::ClassOne { nonnegative } => binary_winner(sums[1], nonnegative),
            Finish::PerClass | Finish::Mirrored => argmax(scores),
        }
    }

    /// Evaluates a whole batch into `(labels [N], scores [N, C])`.
    fn eval(&self, input: &Tensor) -> TractResult<(Tensor, Tensor)> {
        let rows = Rows::new(input, &self.forest)?;
        if rows.are_f64() {
            self.eval_rows::<f64>(&rows)
        } else {
            self.eval_rows::<f32>(&rows)
        }
    }

    /// [`Self::eval`] for rows of `X`.
    fn eval_rows<X: Feature + Datum>(&self, rows: &Rows) -> TractResult<(Tensor, Tensor)> {
        let values = rows.values::<X>()?;
        let width = self.width();
        crate::forest::check_output(rows.n, width)?;
        let mut scores = Tensor::zero::<f32>(&[rows.n, width])?;
        let mut winners = Vec::with_capacity(rows.n);
        {
            let mut plain = scores.try_as_plain_ram_mut()?;
            let out = plain.as_slice_mut::<f32>()?;
            let mut acc = Accumulator::new(self.forest.n_targets());
            let mut row_scores = vec![0.0; width];
            let mut block = Vec::with_capacity(BLOCK);
            for start in (0..rows.n).step_by(BLOCK) {
                let end = (start + BLOCK).min(rows.n);
                block.clear();
                block.extend((start..end).map(|r| rows.row(values, r)));
                self.score_block(&block, &mut acc, &mut ());
                for (i, r) in (start..end).enumerate() {
                    self.finish_row(acc.sums(i), &mut row_scores);
                    let dst = &mut out[r * width..(r + 1) * width];
                    for (d, s) in dst.iter_mut().zip(&row_scores) {
                        *d = *s as f32;
                    }
                    winners.push(self.winner(acc.sums(i), dst));
                }
            }
        }
        Ok((self.labels.gather(&winners), scores))
    }
}

/// Index of the largest value, the first one on ties (NaN never wins).
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v > values[best] || values[best].is_nan() && !v.is_nan() {
            best = i;
        }
    }
    best
}

/// onnxruntime's label for two classes whose votes all name one class id
/// (`_set_score_binary`), from that class's score before the transform:
/// class 1 when it is above 0.5 if every weight is >= 0 (the score is read
/// as a probability), else above 0 (a margin). Ties and NaN give class 0.
/// An argmax of the output row would disagree: PROBIT's row `[probit(s), 0]`
/// puts class 0 first exactly when `s > 0.5`, a class-1-only row `[0, s]`
/// puts class 1 first for any `s > 0`, and a margin of 1e-9 rounds to a tie.
fn binary_winner(score: f64, nonnegative: bool) -> usize {
    let cut = if nonnegative { 0.5 } else { 0.0 };
    usize::from(score > cut)
}

/// Base values: none, one per class, or (two classes) a single one.
fn check_base(base: &[f64], n_classes: usize) -> Result<(), TreeError> {
    let ok = base.is_empty() || base.len() == n_classes || (n_classes <= 2 && base.len() == 1);
    if ok {
        Ok(())
    } else {
        Err(TreeError::Invalid {
            attr: "base_values",
            why: format!(
                "{} values for {n_classes} classes (expected 0 or {n_classes})",
                base.len()
            ),
        })
    }
}

/// Chooses the [`Finish`] from which class ids receive votes: the binary
/// layouts apply only to two classes whose votes all name the same class id.
fn pick_finish(votes: &VoteTable, n_classes: usize, n_base: usize) -> Finish {
    let Some(&first) = votes.id.first() else {
        return Finish::PerClass;
    };
    let single_class = votes.id.iter().all(|&id| id == first);
    if n_classes != 2 || !single_class {
        return Finish::PerClass;
    }
    // onnxruntime's test is `w < 0` on any weight, so NaN counts as >= 0.
    let nonnegative = !votes.weight.iter().any(|&w| w < 0.0);
    match (first, n_base) {
        (0, 0 | 1) => Finish::SingleColumn { nonnegative },
        (1, 0 | 1) => Finish::ClassOne { nonnegative },
        (1, 2) => Finish::Mirrored,
        _ => Finish::PerClass,
    }
}

/// The ONNX op builder registered for `TreeEnsembleClassifier`.
pub(crate) fn build(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let model = ClassifierModel::parse(node)?;
    Ok((
        expand(Expanded(ClassifierOp {
            model: Shared::new(model),
        })),
        vec![],
    ))
}

/// The typed op: one pass computes both outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClassifierOp {
    model: Shared<ClassifierModel>,
}

impl Ensemble for ClassifierOp {
    const NAME: &'static str = "HadrTreeEnsembleClassifier";
    const OUTPUTS: usize = 2;

    fn output_rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        s.equals(&outputs[0].datum_type, self.model.labels.datum_type())?;
        s.equals(&outputs[1].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].rank, 1)?;
        s.equals(&outputs[1].rank, 2)?;
        s.equals(&outputs[1].shape[1], self.model.width().to_dim())
    }
}

impl Op for ClassifierOp {
    fn name(&self) -> StaticName {
        Self::NAME.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let f = &self.model.forest;
        Ok(vec![format!(
            "{} trees, {} classes, {:?}, {:?}",
            f.n_trees(),
            self.model.width(),
            self.model.finish,
            self.model.transform
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for ClassifierOp {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let (labels, scores) = self.model.eval(&input)?;
        Ok(tvec!(labels.into_tvalue(), scores.into_tvalue()))
    }

    op_out_of_plan!();
}

impl TypedOp for ClassifierOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = batch_dim(inputs[0], &self.model.forest)?;
        Ok(tvec!(
            TypedFact::dt_shape(self.model.labels.datum_type(), [n.clone()]),
            f32::fact([n, self.model.width().to_dim()])
        ))
    }

    as_op!();
}
