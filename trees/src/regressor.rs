//! `ai.onnx.ml.TreeEnsembleRegressor` (tract 0.23 has none).
//!
//! Per target: SUM is `base + sum of votes`, AVERAGE `base + sum / n_trees`,
//! MIN and MAX `base + the smallest / largest vote` (trees whose leaf has no
//! vote for the target take no part; with no vote at all the target is
//! `base`). Accumulated in f64, output f32 `[N, n_targets]`.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use crate::attrs::Attrs;
use crate::error::TreeError;
use crate::forest::{Accumulator, Counter, Feature, Forest, MaxFold, MinFold, SumFold, BLOCK};
use crate::io::{batch_dim, Rows};
use crate::op::{Ensemble, Expanded, Shared};
use crate::table::{NodeTable, VoteTable, TARGET_VOTES};
use crate::transform::PostTransform;

/// The `aggregate_function` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Aggregate {
    #[default]
    Sum,
    Average,
    Min,
    Max,
}

impl Aggregate {
    /// Parses `aggregate_function` (absent means SUM).
    fn parse(value: Option<&str>) -> Result<Aggregate, TreeError> {
        Ok(match value.unwrap_or("SUM") {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            other => {
                return Err(TreeError::UnknownValue {
                    attr: "aggregate_function",
                    value: other.into(),
                })
            }
        })
    }
}

/// A parsed, validated regressor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RegressorModel {
    pub(crate) forest: Forest,
    aggregate: Aggregate,
    base: Vec<f64>,
    transform: PostTransform,
}

impl RegressorModel {
    /// Reads and validates every attribute of the node.
    pub(crate) fn parse(node: &NodeProto) -> TractResult<RegressorModel> {
        let attrs = Attrs::new(node);
        let n_targets = attrs
            .int("n_targets")?
            .ok_or(TreeError::Missing { attr: "n_targets" })?;
        if !(1..=u32::MAX as i64).contains(&n_targets) {
            Err(TreeError::Invalid {
                attr: "n_targets",
                why: format!("{n_targets} is not a positive count"),
            })?;
        }
        let nodes = NodeTable::parse(&attrs)?;
        let votes = VoteTable::parse(&attrs, TARGET_VOTES)?;
        let aggregate = Aggregate::parse(attrs.string("aggregate_function")?)?;
        let base = attrs
            .doubles("base_values", "base_values_as_tensor")?
            .unwrap_or_default();
        let transform = PostTransform::parse(attrs.string("post_transform")?)?;
        Ok(RegressorModel::new(
            &nodes,
            &votes,
            n_targets as usize,
            aggregate,
            base,
            transform,
        )?)
    }

    /// Builds the model from already-read attributes.
    pub(crate) fn new(
        nodes: &NodeTable,
        votes: &VoteTable,
        n_targets: usize,
        aggregate: Aggregate,
        base: Vec<f64>,
        transform: PostTransform,
    ) -> Result<RegressorModel, TreeError> {
        if !base.is_empty() && base.len() != n_targets {
            return Err(TreeError::Invalid {
                attr: "base_values",
                why: format!(
                    "{} values for {n_targets} targets (expected 0 or {n_targets})",
                    base.len()
                ),
            });
        }
        let forest = Forest::build(nodes, votes, n_targets)?;
        Ok(RegressorModel {
            forest,
            aggregate,
            base,
            transform,
        })
    }

    pub(crate) fn n_targets(&self) -> usize {
        self.forest.n_targets()
    }

    /// Folds the trees' votes for a block of rows into `acc`.
    #[inline]
    pub(crate) fn predict_block<X: Feature, C: Counter>(
        &self,
        rows: &[&[X]],
        acc: &mut Accumulator,
        counter: &mut C,
    ) {
        acc.reset(rows.len());
        let forest = &self.forest;
        match self.aggregate {
            Aggregate::Sum | Aggregate::Average => {
                forest.accumulate::<X, SumFold, C>(rows, acc, counter)
            }
            Aggregate::Min => forest.accumulate::<X, MinFold, C>(rows, acc, counter),
            Aggregate::Max => forest.accumulate::<X, MaxFold, C>(rows, acc, counter),
        }
    }

    /// One row's targets: averaging, base values, then the post transform.
    /// (For MIN/MAX, a target no tree voted for folded nothing and is 0.)
    fn finish_row(&self, folded: &[f64], out: &mut [f64]) {
        let n_trees = self.forest.n_trees() as f64;
        for (t, o) in out.iter_mut().enumerate() {
            let value = match self.aggregate {
                Aggregate::Average => folded[t] / n_trees,
                _ => folded[t],
            };
            *o = value + self.base.get(t).copied().unwrap_or(0.0);
        }
        self.transform.apply(out);
    }

    /// Evaluates a whole batch into `Y [N, n_targets]`.
    fn eval(&self, input: &Tensor) -> TractResult<Tensor> {
        let rows = Rows::new(input, &self.forest)?;
        if rows.are_f64() {
            self.eval_rows::<f64>(&rows)
        } else {
            self.eval_rows::<f32>(&rows)
        }
    }

    /// [`Self::eval`] for rows of `X`.
    fn eval_rows<X: Feature + Datum>(&self, rows: &Rows) -> TractResult<Tensor> {
        let values = rows.values::<X>()?;
        let width = self.n_targets();
        crate::forest::check_output(rows.n, width)?;
        let mut y = Tensor::zero::<f32>(&[rows.n, width])?;
        {
            let mut plain = y.try_as_plain_ram_mut()?;
            let out = plain.as_slice_mut::<f32>()?;
            let mut acc = Accumulator::new(width);
            let mut row_out = vec![0.0; width];
            let mut block = Vec::with_capacity(BLOCK);
            for start in (0..rows.n).step_by(BLOCK) {
                let end = (start + BLOCK).min(rows.n);
                block.clear();
                block.extend((start..end).map(|r| rows.row(values, r)));
                self.predict_block(&block, &mut acc, &mut ());
                for (i, r) in (start..end).enumerate() {
                    self.finish_row(acc.sums(i), &mut row_out);
                    for (d, s) in out[r * width..(r + 1) * width].iter_mut().zip(&row_out) {
                        *d = *s as f32;
                    }
                }
            }
        }
        Ok(y)
    }
}

/// The ONNX op builder registered for `TreeEnsembleRegressor`.
pub(crate) fn build(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let model = RegressorModel::parse(node)?;
    Ok((
        expand(Expanded(RegressorOp {
            model: Shared::new(model),
        })),
        vec![],
    ))
}

/// The typed op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegressorOp {
    model: Shared<RegressorModel>,
}

impl Ensemble for RegressorOp {
    const NAME: &'static str = "HadrTreeEnsembleRegressor";
    const OUTPUTS: usize = 1;

    fn output_rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[1], self.model.n_targets().to_dim())
    }
}

impl Op for RegressorOp {
    fn name(&self) -> StaticName {
        Self::NAME.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let m = &self.model;
        Ok(vec![format!(
            "{} trees, {} targets, {:?}, {:?}",
            m.forest.n_trees(),
            m.n_targets(),
            m.aggregate,
            m.transform
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for RegressorOp {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        Ok(tvec!(self.model.eval(&input)?.into_tvalue()))
    }

    op_out_of_plan!();
}

impl TypedOp for RegressorOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = batch_dim(inputs[0], &self.model.forest)?;
        Ok(tvec!(f32::fact([n, self.model.n_targets().to_dim()])))
    }

    as_op!();
}
