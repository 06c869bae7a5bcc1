//! wasmtime-wasi-nn's backend traits, implemented with tract for ONNX.
//!
//! A [`TractGraph`] holds an optimised plan whose batch dimension stays
//! symbolic, so one plan serves any number of rows. Inputs are checked against
//! the model's input fact before tract sees them: a guest sending the wrong
//! shape gets a wasi-nn error, never a host panic.

use std::sync::{Arc, Mutex};

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
///
/// As a guest's wasi-nn backend it refuses `load` of guest-supplied bytes
/// unless the host allows it (`--allow-guest-models`): guests serve the
/// models the operator deployed, by name.
#[derive(Debug, Clone, Copy)]
pub struct TractBackend {
    /// Host memory one model may claim, in bytes.
    pub budget: u64,
    /// Whether a guest may `load` model bytes of its own.
    pub guest_loads: bool,
}

/// The default `--max-model-bytes`: 256 MiB.
pub const DEFAULT_MODEL_BUDGET: u64 = 256 << 20;

impl Default for TractBackend {
    fn default() -> Self {
        Self {
            budget: DEFAULT_MODEL_BUDGET,
            guest_loads: false,
        }
    }
}

impl TractBackend {
    /// Parses and optimises an ONNX model (`[batch, features]` f32 input),
    /// with hadr's own tree-ensemble operators in place of tract's.
    ///
    /// Every size the file fixes is checked against `budget` bytes first
    /// ([`budget`](super::budget)), and every tensor tract types before it
    /// folds constants: a model over the budget fails with
    /// [`OverBudget`](super::budget::OverBudget) having allocated nothing of it.
    ///
    /// tract-onnx 0.23 panics (`unimplemented!`) on some malformed tensors, such as STRING data
    /// in `raw_data` (`docs/tract-onnx-tensor-loading.patch` makes them errors upstream); an
    /// uploaded or guest-supplied model is refused instead of taking its thread down.
    pub fn load_onnx(bytes: &[u8], budget: u64) -> Result<TractGraph, TractError> {
        std::panic::catch_unwind(|| Self::load_unguarded(bytes, budget)).unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("no message");
            bail!("tract cannot load this model (it panicked: {why})")
        })
    }

    fn load_unguarded(bytes: &[u8], budget: u64) -> Result<TractGraph, TractError> {
        let onnx = hadr_trees::onnx().with_ignore_value_info(true);
        let proto = onnx.proto_model_for_read(&mut std::io::Cursor::new(bytes))?;
        super::budget::check_model(&proto, budget)?;
        let mut model = onnx.model_for_proto_model(&proto)?;
        if model.input_outlets()?.len() != 1 {
            bail!(
                "the model has {} inputs; hadr serves models with one [batch, features] input",
                model.input_outlets()?.len()
            );
        }
        let features = declared_features(&model)?;
        let input_name = model.node(model.input_outlets()?[0].node).name.clone();
        let batch = model.symbols.sym("batch");
        model.set_input_fact(0, f32::fact(&[batch.to_dim(), features.to_dim()]).into())?;
        let metadata = metadata(&model);
        let typed = model.into_typed()?;
        check_typed(&typed, budget)?;
        let typed = typed.into_optimized()?;
        let outputs = output_infos(&typed)?;
        let inputs = vec![TensorInfo {
            name: input_name,
            datatype: "float",
            shape: vec![-1, features as i64],
        }];
        let plan = typed.into_runnable()?;
        Ok(TractGraph {
            plan,
            features,
            info: Arc::new(ModelInfo {
                inputs,
                outputs,
                metadata,
            }),
        })
    }
}

/// Sizes every tensor tract typed (a symbolic batch as 1) against `budget`.
fn check_typed(typed: &TypedModel, budget: u64) -> TractResult<()> {
    for node in typed.nodes() {
        for output in &node.outputs {
            let fact = &output.fact;
            let volume = fact
                .shape
                .iter()
                .map(|d| d.to_i64().map_or(1, |v| v.max(1) as u64))
                .fold(1u64, u64::saturating_mul);
            super::budget::check_fact(
                &node.name,
                volume,
                fact.datum_type.size_of() as u64,
                budget,
            )?;
        }
    }
    Ok(())
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

/// The key/value metadata the ONNX file carries (`metadata_props`), which
/// tract keeps as `onnx.metadata_props.<key>` string properties.
fn metadata(model: &InferenceModel) -> Vec<(String, String)> {
    const PREFIX: &str = "onnx.metadata_props.";
    let mut found: Vec<(String, String)> = model
        .properties
        .iter()
        .filter_map(|(key, value)| {
            let key = key.strip_prefix(PREFIX)?;
            let value = value.try_as_plain_ram().ok()?.to_scalar::<String>().ok()?;
            Some((key.to_string(), value.clone()))
        })
        .collect();
    found.sort();
    found
}

/// Each output's name, element type and shape, checked to cross wasi-nn: a
/// model whose outputs cannot is refused here, at load, rather than failing
/// every request.
fn output_infos(typed: &TypedModel) -> TractResult<Vec<TensorInfo>> {
    typed
        .output_outlets()?
        .iter()
        .map(|outlet| {
            let name = typed
                .outlet_label(*outlet)
                .unwrap_or(&typed.node(outlet.node).name)
                .to_string();
            let fact = typed.outlet_fact(*outlet)?;
            let Some(datatype) = wasi_datatype(fact.datum_type) else {
                bail!(
                    "the model's output `{name}` is a tensor of {:?}, which wasi-nn cannot carry \
                     (it carries float, double, int32, int64, and uint8, which bool becomes); export the model \
                     with numeric outputs (integer class labels, not strings)",
                    fact.datum_type
                );
            };
            let shape = fact
                .shape
                .iter()
                .map(|d| d.to_i64().unwrap_or(-1))
                .collect();
            Ok(TensorInfo {
                name,
                datatype,
                shape,
            })
        })
        .collect()
}

/// The ONNX name of the element type an output crosses wasi-nn as, if it can.
fn wasi_datatype(dt: DatumType) -> Option<&'static str> {
    Some(match dt {
        DatumType::F32 => "float",
        DatumType::F64 => "double",
        // Shape arithmetic (Shape, Gather of a shape) comes out of tract as
        // TDim: concrete integers by the time a plan runs, sent as int64.
        DatumType::I64 | DatumType::TDim => "int64",
        DatumType::I32 => "int32",
        // wasi-nn has no bool: sent as uint8 0 or 1.
        DatumType::U8 | DatumType::Bool => "uint8",
        _ => return None,
    })
}

/// One input or output as the model declares it (-1 for a symbolic dim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its name in the model.
    pub name: String,
    /// Its element type, as ONNX names it.
    pub datatype: &'static str,
    /// Its dimensions.
    pub shape: Vec<i64>,
}

/// What a guest is told about its model at `init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The model's inputs.
    pub inputs: Vec<TensorInfo>,
    /// The model's outputs, in the order wasi-nn returns them.
    pub outputs: Vec<TensorInfo>,
    /// The ONNX file's `metadata_props`, sorted by key.
    pub metadata: Vec<(String, String)>,
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
        if !self.guest_loads {
            return Err(backend_error(
                "this host serves the models its operator deployed: load them with load-by-name \
                 (guest-supplied model bytes need `hadr-host serve --allow-guest-models`)"
                    .to_string(),
            ));
        }
        let graph = Self::load_onnx(builders[0], self.budget).map_err(from_tract)?;
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
    info: Arc<ModelInfo>,
}

impl std::fmt::Debug for TractGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractGraph")
            .field("features", &self.features)
            .field("info", &self.info)
            .finish()
    }
}

impl TractGraph {
    /// Values per input row.
    pub fn features(&self) -> usize {
        self.features
    }

    /// The model's inputs, outputs and metadata.
    pub fn info(&self) -> &ModelInfo {
        &self.info
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
        self.run_in(&mut None, input)
    }

    /// Runs in `state`, tract's run state kept by an execution context
    /// across its calls (created on first use), so each call reuses its
    /// buffers and scratch space instead of allocating them. A failed run
    /// drops it.
    fn run_in(
        &self,
        state: &mut Option<TypedSimpleState>,
        input: tract_onnx::prelude::Tensor,
    ) -> Result<Vec<(String, Tensor)>, BackendError> {
        let running = match state {
            Some(running) => running,
            None => state.insert(self.plan.spawn().map_err(from_tract)?),
        };
        let outputs = running.run(tvec!(input.into()));
        // tract's kernels leave the vector registers dirty, which slows
        // every SSE instruction after them, the guest's above all.
        hadr_trees::clean_vector_state();
        let outputs = outputs.map_err(|e| {
            *state = None;
            from_tract(e)
        })?;
        outputs
            .into_iter()
            .zip(self.info.outputs.iter())
            .map(|(value, info)| Ok((info.name.clone(), to_wasi_tensor(&value)?)))
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
        if cfg!(target_endian = "big") {
            let values = from_le_bytes(&tensor.data, f32::from_le_bytes);
            return tract_onnx::prelude::Tensor::from_shape(&[rows, features], &values)
                .map_err(from_tract);
        }
        // wasi-nn's bytes are little-endian, as the host's floats: one copy.
        let mut input =
            tract_onnx::prelude::Tensor::zero::<f32>(&[rows, features]).map_err(from_tract)?;
        input.as_bytes_mut().copy_from_slice(&tensor.data);
        Ok(input)
    }
}

impl BackendGraph for TractGraph {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        let context = TractExecutionContext {
            graph: self.clone(),
            state: Mutex::new(None),
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
    /// tract's run state, reused by every call of this context (a mutex
    /// only because wasi-nn wants contexts `Sync`; one call runs at a time).
    state: Mutex<Option<TypedSimpleState>>,
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
                let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
                let outputs = self.graph.run_in(state, tensor)?;
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
                let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
                self.outputs = self.graph.run_in(state, input)?;
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
        DatumType::TDim => {
            let dims = plain::<TDim>(value)?;
            let ints = dims
                .iter()
                .map(|d| d.to_i64())
                .collect::<Result<Vec<i64>, _>>()
                .map_err(|e| backend_error(format!("a symbolic output value: {e}")))?;
            (TensorType::I64, le_bytes(&ints, i64::to_le_bytes))
        }
        DatumType::U8 => (TensorType::U8, plain::<u8>(value)?.to_vec()),
        DatumType::Bool => {
            let bools = plain::<bool>(value)?;
            (TensorType::U8, bools.iter().map(|b| *b as u8).collect())
        }
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

/// `values` as wasi-nn's tensor bytes (little-endian, `f` per value), in
/// one allocation of the right size: on a little-endian host, one copy.
pub(crate) fn le_bytes<T: bytemuck::Pod, const N: usize>(
    values: &[T],
    f: fn(T) -> [u8; N],
) -> Vec<u8> {
    debug_assert_eq!(N, std::mem::size_of::<T>());
    if cfg!(target_endian = "little") {
        return bytemuck::cast_slice(values).to_vec();
    }
    let mut out = Vec::with_capacity(values.len() * N);
    for v in values {
        out.extend_from_slice(&f(*v));
    }
    out
}

/// The values in wasi-nn tensor bytes `data` (little-endian, `f` per value;
/// bytes past the last whole value are left out): on a little-endian host,
/// one copy.
pub(crate) fn from_le_bytes<T: bytemuck::Pod, const N: usize>(
    data: &[u8],
    f: fn([u8; N]) -> T,
) -> Vec<T> {
    debug_assert_eq!(N, std::mem::size_of::<T>());
    let whole = &data[..data.len() - data.len() % N];
    if cfg!(target_endian = "little") {
        return bytemuck::pod_collect_to_vec(whole);
    }
    whole
        .chunks_exact(N)
        .map(|b| f(b.try_into().expect("N bytes")))
        .collect()
}

fn backend_error(message: String) -> BackendError {
    BackendError::BackendAccess(wasmtime::Error::msg(message))
}

fn from_tract(e: TractError) -> BackendError {
    BackendError::BackendAccess(wasmtime::Error::from_anyhow(e))
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use tract_onnx::pb::tensor_proto::DataType;
    use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
    use tract_onnx::pb::{
        attribute_proto, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
        OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
        ValueInfoProto,
    };

    use super::*;

    fn value_info(name: &str, elem: DataType, dims: &[dimension::Value]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|v| Dimension {
                value: Some(v.clone()),
                ..Default::default()
            })
            .collect();
        let tensor = type_proto::Tensor {
            elem_type: elem as i32,
            shape: Some(TensorShapeProto { dim }),
        };
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(tensor)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The int64 constant `[7]`.
    fn seven() -> TensorProto {
        TensorProto {
            dims: vec![1],
            data_type: DataType::Int64 as i32,
            int64_data: vec![7],
            ..Default::default()
        }
    }

    /// A model taking `[N, 2]` floats whose one output is the constant
    /// `value`, named `out`, with `metadata_props`.
    fn model(value: TensorProto, elem: DataType, metadata: &[(&str, &str)]) -> Vec<u8> {
        let constant = NodeProto {
            output: vec!["out".into()],
            op_type: "Constant".into(),
            attribute: vec![AttributeProto {
                name: "value".into(),
                r#type: attribute_proto::AttributeType::Tensor as i32,
                t: Some(value),
                ..Default::default()
            }],
            ..Default::default()
        };
        let n = dimension::Value::DimParam("N".into());
        let graph = GraphProto {
            node: vec![constant],
            input: vec![value_info(
                "x",
                DataType::Float,
                &[n, dimension::Value::DimValue(2)],
            )],
            output: vec![value_info("out", elem, &[dimension::Value::DimValue(1)])],
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 15,
            }],
            graph: Some(graph),
            metadata_props: metadata
                .iter()
                .map(|(key, value)| StringStringEntryProto {
                    key: key.to_string(),
                    value: value.to_string(),
                })
                .collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn tensor_bytes_are_the_values_little_endian() {
        let values = [1.5f32, -0.0, f32::MAX, 7.0];
        let bytes = le_bytes(&values, f32::to_le_bytes);
        let each: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(bytes, each);
        let mut ragged = bytes.clone();
        ragged.extend([1, 2, 3]);
        assert_eq!(from_le_bytes(&ragged, f32::from_le_bytes), values);
        let long = (-3i64).to_le_bytes();
        assert_eq!(from_le_bytes(&long, i64::from_le_bytes), [-3]);
        assert!(from_le_bytes(&long[..7], i64::from_le_bytes).is_empty());
    }

    #[test]
    fn an_output_wasi_nn_cannot_carry_is_refused_at_load() {
        let strings = TensorProto {
            dims: vec![1],
            data_type: DataType::String as i32,
            string_data: vec![b"placed".to_vec()],
            ..Default::default()
        };
        let error =
            TractBackend::load_onnx(&model(strings, DataType::String, &[]), DEFAULT_MODEL_BUDGET)
                .expect_err("a string output cannot cross wasi-nn");
        let message = format!("{error:#}");
        assert!(
            message.contains("output `out`") && message.contains("wasi-nn cannot carry"),
            "{message}"
        );
    }

    /// tract's loader panics on STRING data in `raw_data`: a load error, not a panic.
    #[test]
    fn a_tensor_tract_cannot_load_is_an_error_not_a_panic() {
        let strings = TensorProto {
            dims: vec![1],
            data_type: DataType::String as i32,
            raw_data: b"placed".to_vec(),
            ..Default::default()
        };
        let error =
            TractBackend::load_onnx(&model(strings, DataType::String, &[]), DEFAULT_MODEL_BUDGET)
                .expect_err("refused");
        let message = format!("{error:#}");
        assert!(
            message.contains("tract cannot load this model") && message.contains("raw tensor"),
            "{message}"
        );
    }

    #[test]
    fn the_guest_is_told_the_models_tensors_and_metadata() {
        let bytes = model(seven(), DataType::Int64, &[("b", "2"), ("a", "{\"x\": 1}")]);
        let graph = TractBackend::load_onnx(&bytes, DEFAULT_MODEL_BUDGET).unwrap();
        let info = graph.info();
        assert_eq!(
            info.inputs,
            [TensorInfo {
                name: "x".into(),
                datatype: "float",
                shape: vec![-1, 2],
            }]
        );
        assert_eq!(info.outputs[0].name, "out");
        assert_eq!(info.outputs[0].datatype, "int64");
        assert_eq!(
            info.metadata,
            [("a".into(), "{\"x\": 1}".into()), ("b".into(), "2".into())]
        );
        let outputs = graph.run(3, &[0.0; 6]).unwrap();
        assert_eq!(outputs[0].1.data, 7i64.to_le_bytes());
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_model_run_leaves_the_vector_registers_clean() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/digits.onnx");
        let model =
            crate::sandbox::nn::LoadedModel::from_file(&path, DEFAULT_MODEL_BUDGET).unwrap();
        model.graph.run(2, &[1.0; 128]).unwrap();
        assert_ne!(hadr_trees::upper_state_dirty(), Some(true));
    }

    #[test]
    fn a_guest_cannot_load_model_bytes_of_its_own_unless_allowed() {
        let bytes = model(seven(), DataType::Int64, &[]);
        let mut refusing = TractBackend::default();
        let error = refusing
            .load(&[&bytes], ExecutionTarget::Cpu)
            .err()
            .expect("guest-supplied bytes are refused by default");
        assert!(
            format!("{error:?}").contains("--allow-guest-models"),
            "{error:?}"
        );
        let mut allowing = TractBackend {
            guest_loads: true,
            ..TractBackend::default()
        };
        assert!(allowing.load(&[&bytes], ExecutionTarget::Cpu).is_ok());
        // Allowed, a guest's model is still held to the budget.
        let mut tight = TractBackend {
            guest_loads: true,
            budget: 4,
        };
        let error = tight.load(&[&bytes], ExecutionTarget::Cpu).err().unwrap();
        assert!(format!("{error:?}").contains("model budget"), "{error:?}");
    }
}
