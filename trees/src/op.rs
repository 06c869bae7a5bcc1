//! What the classifier's and the regressor's ops share: the parsed model
//! behind a pointer ([`Shared`]), and the inference-time expansion
//! ([`Expanded`]) that checks arity and the batch dimension, then wires the
//! typed op, which says the rest through [`Ensemble`].

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use crate::io::batch_rules;

/// A parsed model shared by the copies tract makes of its op. Two compare equal
/// only when they are the same model: comparing forests field by field would
/// cost a walk of every node for what tract uses only to merge duplicate
/// nodes, which two tree ensembles never are in practice.
#[derive(Debug)]
pub(crate) struct Shared<M>(std::sync::Arc<M>);

impl<M> Shared<M> {
    pub(crate) fn new(model: M) -> Self {
        Shared(std::sync::Arc::new(model))
    }
}

impl<M> Clone for Shared<M> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<M> PartialEq for Shared<M> {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<M> Eq for Shared<M> {}

impl<M> std::ops::Deref for Shared<M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.0
    }
}

/// A tree ensemble's typed op, as its expansion needs it.
pub(crate) trait Ensemble: TypedOp + Clone {
    /// The op's name in tract's graphs.
    const NAME: &'static str;
    /// How many outputs it has.
    const OUTPUTS: usize;
    /// Its outputs' element types, ranks and widths (the batch dimension is
    /// checked apart).
    fn output_rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        outputs: &'p [TensorProxy],
    ) -> InferenceResult;
}

/// The inference-time op: the rules, then the typed op wired as it is.
#[derive(Debug, Clone)]
pub(crate) struct Expanded<O>(pub(crate) O);

impl<O: Ensemble> Expansion for Expanded<O> {
    fn name(&self) -> StaticName {
        O::NAME.into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(O::OUTPUTS)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, O::OUTPUTS)?;
        self.0.output_rules(s, outputs)?;
        batch_rules(s, &inputs[0], outputs)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}
