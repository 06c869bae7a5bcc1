//! wasmtime-wasi-nn's backend traits, implemented with tract for ONNX.
//!
//! A [`TractGraph`] holds an optimised plan whose batch dimension stays
//! symbolic, so one plan serves any number of rows. Inputs are checked against
//! the model's input fact before tract sees them: a guest sending the wrong
//! shape gets a wasi-nn error, never a host panic.

use std::sync::Arc;

use anyhow::bail;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;
use tract_onnx::tract_hir::infer::Factoid;
use wasmtime_wasi_nn::backend::{
    BackendError, BackendExecutionContext, BackendFromDir, BackendGraph, BackendInner, Id,
    NamedTensor,
};
use wasmtime_wasi_nn::wit::{ExecutionTarget, GraphEncoding, TensorType};
use wasmtime_wasi_nn::{ExecutionContext, Graph, Tensor};

/// The tract plan type every graph runs.
type Plan = Arc<TypedRunnableModel>;

/// The ONNX backend: loads ONNX bytes into a [`TractGraph`].
#[derive(Debug, Default, Clone, Copy)]
pub struct TractBackend;

impl TractBackend {
    /// Parses and optimises an ONNX model (`[batch, features]` f32 input).
    pub fn load_onnx(bytes: &[u8]) -> Result<TractGraph, TractError> {
        let mut model = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_read(&mut std::io::Cursor::new(bytes))?;
        if model.input_outlets()?.len() != 1 {
            bail!(
                "the model has {} inputs; hadr serves models with one [batch, features] input",
                model.input_outlets()?.len()
            );
        }
        let features = declared_features(&model)?;
        let batch = model.symbols.sym("batch");
        model.set_input_fact(0, f32::fact(&[batch.to_dim(), features.to_dim()]).into())?;
        let typed = model.into_optimized()?;
        let outputs = typed
            .output_outlets()?
            .iter()
            .map(|o| {
                typed
                    .outlet_label(*o)
                    .unwrap_or(&typed.node(o.node).name)
                    .to_string()
            })
            .collect();
        let plan = typed.into_runnable()?;
        Ok(TractGraph {
            plan,
            features,
            outputs: Arc::new(outputs),
        })
    }
}

/// The feature count the ONNX file declares for its single input.
fn declared_features(model: &InferenceModel) -> TractResult<usize> {
    let fact = model.input_fact(0)?;
    let dims: Vec<_> = fact.shape.dims().collect();
    let last = match dims.as_slice() {
        [_, last] => last.concretize(),
        _ => None,
    };
    match last.and_then(|d| d.to_usize().ok()) {
        Some(n) if n > 0 => Ok(n),
        _ => bail!(
            "the model's input has shape {:?}; hadr serves models taking [batch, features] with a fixed feature count",
            fact.shape
        ),
    }
}

impl BackendInner for TractBackend {
    fn encoding(&self) -> GraphEncoding {
        GraphEncoding::Onnx
    }

    fn load(&mut self, builders: &[&[u8]], target: ExecutionTarget) -> Result<Graph, BackendError> {
        if builders.len() != 1 {
            return Err(BackendError::InvalidNumberOfBuilders(1, builders.len()));
        }
        if !matches!(target, ExecutionTarget::Cpu) {
            return Err(backend_error(format!(
                "tract runs on the CPU only, not {target:?}"
            )));
        }
        let graph = Self::load_onnx(builders[0]).map_err(from_tract)?;
        Ok(Graph::from(Box::new(graph) as Box<dyn BackendGraph>))
    }

    fn as_dir_loadable(&mut self) -> Option<&mut dyn BackendFromDir> {
        None
    }
}

/// One loaded model: an optimised tract plan shared by every instance using it.
#[derive(Clone)]
pub struct TractGraph {
    plan: Plan,
    features: usize,
    outputs: Arc<Vec<String>>,
}

impl std::fmt::Debug for TractGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractGraph")
            .field("features", &self.features)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl TractGraph {
    /// Values per input row.
    pub fn features(&self) -> usize {
        self.features
    }

    /// Names of the model's outputs, in order.
    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// Runs `rows` rows natively: the reference the guest path is checked and
    /// benchmarked against.
    pub fn run(&self, rows: usize, data: &[f32]) -> Result<Vec<(String, Tensor)>, BackendError> {
        let input = tract_ndarray::Array2::from_shape_vec((rows, self.features), data.to_vec())
            .map_err(|e| {
                backend_error(format!(
                    "input does not fit [{rows}, {}]: {e}",
                    self.features
                ))
            })?;
        self.run_tensor(input.into_tensor())
    }

    fn run_tensor(
        &self,
        input: tract_onnx::prelude::Tensor,
    ) -> Result<Vec<(String, Tensor)>, BackendError> {
        let outputs = self.plan.run(tvec!(input.into())).map_err(from_tract)?;
        outputs
            .into_iter()
            .zip(self.outputs.iter())
            .map(|(value, name)| Ok((name.clone(), to_wasi_tensor(&value)?)))
            .collect()
    }

    /// Checks a guest's tensor against the model's input and converts it.
    fn input_from_wasi(
        &self,
        tensor: &Tensor,
    ) -> Result<tract_onnx::prelude::Tensor, BackendError> {
        if tensor.ty != TensorType::Fp32 {
            return Err(BackendError::UnsupportedTensorType(format!(
                "{:?}: the model takes FP32",
                tensor.ty
            )));
        }
        let [rows, features] = tensor.dimensions[..] else {
            return Err(backend_error(format!(
                "input has dimensions {:?}; the model takes [rows, {}]",
                tensor.dimensions, self.features
            )));
        };
        let (rows, features) = (rows as usize, features as usize);
        if features != self.features || rows == 0 || tensor.data.len() != rows * features * 4 {
            return Err(backend_error(format!(
                "input is [{rows}, {features}] with {} bytes; the model takes [rows >= 1, {}] of f32",
                tensor.data.len(),
                self.features
            )));
        }
        let values: Vec<f32> = tensor
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tract_onnx::prelude::Tensor::from_shape(&[rows, features], &values).map_err(from_tract)
    }
}

impl BackendGraph for TractGraph {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        let context = TractExecutionContext {
            graph: self.clone(),
            input: None,
            outputs: Vec::new(),
        };
        Ok(ExecutionContext::from(
            Box::new(context) as Box<dyn BackendExecutionContext>
        ))
    }
}

/// An execution context: the graph plus, for the older set-input / compute /
/// get-output style, the tensors in between.
struct TractExecutionContext {
    graph: TractGraph,
    input: Option<tract_onnx::prelude::Tensor>,
    outputs: Vec<(String, Tensor)>,
}

impl BackendExecutionContext for TractExecutionContext {
    fn set_input(&mut self, id: Id, tensor: &Tensor) -> Result<(), BackendError> {
        if id.index().is_some_and(|i| i != 0) {
            return Err(backend_error(format!(
                "no input {id:?}: the model has one input"
            )));
        }
        self.input = Some(self.graph.input_from_wasi(tensor)?);
        Ok(())
    }

    fn get_output(&mut self, id: Id) -> Result<Tensor, BackendError> {
        let found = match &id {
            Id::Index(i) => self.outputs.get(*i as usize),
            Id::Name(n) => self.outputs.iter().find(|(name, _)| name == n),
        };
        found
            .map(|(_, t)| t.clone())
            .ok_or_else(|| backend_error(format!("no output {id:?} (run compute first?)")))
    }

    fn compute(
        &mut self,
        inputs: Option<Vec<NamedTensor>>,
    ) -> Result<Option<Vec<NamedTensor>>, BackendError> {
        match inputs {
            // The WIT style: inputs in, outputs out. The model has one input,
            // so the guest's name for it does not matter.
            Some(inputs) => {
                let [input] = &inputs[..] else {
                    return Err(backend_error(format!(
                        "{} inputs given; the model takes exactly one",
                        inputs.len()
                    )));
                };
                let tensor = self.graph.input_from_wasi(&input.tensor)?;
                let outputs = self.graph.run_tensor(tensor)?;
                Ok(Some(
                    outputs
                        .into_iter()
                        .map(|(name, tensor)| NamedTensor { name, tensor })
                        .collect(),
                ))
            }
            None => {
                let input = self
                    .input
                    .take()
                    .ok_or_else(|| backend_error("compute before set-input".to_string()))?;
                self.outputs = self.graph.run_tensor(input)?;
                Ok(None)
            }
        }
    }
}

/// Converts a tract output into a wasi-nn tensor (little-endian bytes).
fn to_wasi_tensor(value: &tract_onnx::prelude::Tensor) -> Result<Tensor, BackendError> {
    let dimensions = value.shape().iter().map(|d| *d as u32).collect();
    let (ty, data) = match value.datum_type() {
        DatumType::F32 => (
            TensorType::Fp32,
            le_bytes(plain::<f32>(value)?, f32::to_le_bytes),
        ),
        DatumType::F64 => (
            TensorType::Fp64,
            le_bytes(plain::<f64>(value)?, f64::to_le_bytes),
        ),
        DatumType::I64 => (
            TensorType::I64,
            le_bytes(plain::<i64>(value)?, i64::to_le_bytes),
        ),
        DatumType::I32 => (
            TensorType::I32,
            le_bytes(plain::<i32>(value)?, i32::to_le_bytes),
        ),
        DatumType::U8 => (TensorType::U8, plain::<u8>(value)?.to_vec()),
        other => {
            return Err(BackendError::UnsupportedTensorType(format!(
                "the model gave a {other:?} output, which wasi-nn cannot carry"
            )))
        }
    };
    Ok(Tensor::new(dimensions, ty, data))
}

/// The values of a tensor held in plain memory.
fn plain<D: Datum>(value: &tract_onnx::prelude::Tensor) -> Result<&[D], BackendError> {
    value
        .try_as_plain_ram()
        .and_then(|v| v.as_slice::<D>())
        .map_err(from_tract)
}

fn le_bytes<T: Copy, const N: usize>(values: &[T], f: fn(T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * N);
    for v in values {
        out.extend_from_slice(&f(*v));
    }
    out
}

fn backend_error(message: String) -> BackendError {
    BackendError::BackendAccess(wasmtime::Error::msg(message))
}

fn from_tract(e: TractError) -> BackendError {
    BackendError::BackendAccess(wasmtime::Error::from_anyhow(e))
}
