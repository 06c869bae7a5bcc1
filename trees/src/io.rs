//! Input handling shared by both ops: accepted types, batch shape, rows.

use std::borrow::Cow;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use crate::error::TreeError;
use crate::forest::Forest;

/// Input element types the spec allows: f64 is compared in f64, the others
/// as f32, as onnxruntime does (see [`crate::forest::Feature`]).
const INPUT_TYPES: [DatumType; 4] = [
    DatumType::F32,
    DatumType::F64,
    DatumType::I32,
    DatumType::I64,
];

/// Refuses input types other than f32, f64, i32 and i64.
pub(crate) fn check_input_type(dt: DatumType) -> TractResult<()> {
    if INPUT_TYPES.contains(&dt) {
        Ok(())
    } else {
        bail!("tree ensembles take f32, f64, i32 or i64 input, not {dt:?}")
    }
}

/// Output batch size for an input shape: `[N, F]` gives N, `[F]` is one row.
fn batch_of<D: DimLike>(shape: &[D]) -> TractResult<D> {
    match shape.len() {
        1 => Ok(D::one()),
        2 => Ok(shape[0].clone()),
        r => bail!("tree ensembles take a [N, features] or [features] input, got rank {r}"),
    }
}

/// The output batch dimension for an input fact (possibly symbolic), after
/// checking the feature width against the forest when the width is known.
pub(crate) fn batch_dim(input: &TypedFact, forest: &Forest) -> TractResult<TDim> {
    check_input_type(input.datum_type)?;
    let dims = input.shape.dims().to_vec();
    let batch = batch_of(&dims)?;
    if let Ok(width) = dims.last().expect("rank checked").to_usize() {
        forest.check_width(width)?;
    }
    Ok(batch)
}

/// Inference rules for the batch dimension of every output: the input's N,
/// or 1 for a rank-1 input.
pub(crate) fn batch_rules<'r, 'p: 'r>(
    s: &mut Solver<'r>,
    input: &'p TensorProxy,
    outputs: &'p [TensorProxy],
) -> InferenceResult {
    s.given(&input.datum_type, |_, dt| check_input_type(dt))?;
    s.given(&input.rank, move |s, rank| {
        for output in outputs {
            match rank {
                1 => s.equals(&output.shape[0], 1.to_dim())?,
                2 => s.equals(&output.shape[0], &input.shape[0])?,
                r => bail!("tree ensembles take a [N, features] or [features] input, got rank {r}"),
            }
        }
        Ok(())
    })
}

/// An input tensor viewed as rows of the type the forest compares it in:
/// f64 as it is, every other accepted type narrowed to f32.
pub(crate) struct Rows<'a> {
    data: Cow<'a, Tensor>,
    pub n: usize,
    pub width: usize,
}

impl<'a> Rows<'a> {
    /// Converts (if needed) and checks the width against the forest.
    pub(crate) fn new(input: &'a Tensor, forest: &Forest) -> TractResult<Rows<'a>> {
        check_input_type(input.datum_type())?;
        let n = batch_of(input.shape())?;
        let width = *input.shape().last().expect("rank checked");
        forest
            .check_width(width)
            .map_err(|e: TreeError| anyhow!(e))?;
        let data = match input.datum_type() {
            DatumType::F64 => Cow::Borrowed(input),
            _ => input.cast_to::<f32>()?,
        };
        Ok(Rows { data, n, width })
    }

    /// Whether the rows are f64 (else f32).
    pub(crate) fn are_f64(&self) -> bool {
        self.data.datum_type() == DatumType::F64
    }

    /// The whole batch, row-major, as `X` (the type [`Self::are_f64`] says).
    pub(crate) fn values<X: Datum>(&self) -> TractResult<&[X]> {
        self.data.try_as_plain_ram()?.as_slice::<X>()
    }

    /// Row `r` of `values`.
    pub(crate) fn row<'v, X>(&self, values: &'v [X], r: usize) -> &'v [X] {
        &values[r * self.width..(r + 1) * self.width]
    }
}
