//! wasi-nn for both guests: opening the model, and converting between the
//! protocol's tensors (`hadr:predictor/types.tensor`, what the host's
//! `/v2/.../infer` hands a guest) and wasi-nn's. Both guests include this one
//! file (`#[path]`), each compiling it against its own bindings.

use crate::hadr::predictor::types::{Datatype, ErrorKind, PredictError, Tensor as Named};
use crate::wasi::nn::errors::Error as NnError;
use crate::wasi::nn::graph::{self, Graph};
use crate::wasi::nn::inference::GraphExecutionContext;
use crate::wasi::nn::tensor::{Tensor, TensorType};

/// A protocol tensor as wasi-nn takes it: its element type must be one
/// wasi-nn has (the host has already converted it to the model's type).
pub fn to_nn(t: &Named) -> Result<Tensor, PredictError> {
    let ty = match t.datatype {
        Datatype::Fp16 => TensorType::Fp16,
        Datatype::Fp32 => TensorType::Fp32,
        Datatype::Fp64 => TensorType::Fp64,
        Datatype::Uint8 | Datatype::Bool => TensorType::U8,
        Datatype::Int32 => TensorType::I32,
        Datatype::Int64 => TensorType::I64,
        other => {
            // The protocol's names, as the client wrote them.
            let name = match other {
                Datatype::Uint16 => "UINT16",
                Datatype::Uint32 => "UINT32",
                Datatype::Uint64 => "UINT64",
                Datatype::Int8 => "INT8",
                Datatype::Int16 => "INT16",
                _ => "BYTES",
            };
            return Err(invalid(format!(
                "input `{}` is {name}, which this model cannot take",
                t.name
            )));
        }
    };
    let dims = t
        .shape
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| invalid(format!("input `{}` has a dimension over 2^32", t.name)))?;
    Ok(Tensor::new(&dims, ty, &t.data))
}

/// A wasi-nn output as a protocol tensor.
pub fn from_nn(name: String, t: &Tensor) -> Result<Named, PredictError> {
    let datatype = match t.ty() {
        TensorType::Fp16 => Datatype::Fp16,
        TensorType::Fp32 => Datatype::Fp32,
        TensorType::Fp64 => Datatype::Fp64,
        TensorType::U8 => Datatype::Uint8,
        TensorType::I32 => Datatype::Int32,
        TensorType::I64 => Datatype::Int64,
        TensorType::Bf16 => {
            return Err(PredictError {
                kind: ErrorKind::ModelFailure,
                message: format!("output `{name}` is bf16, which the protocol has no name for"),
            })
        }
    };
    Ok(Named {
        name,
        datatype,
        shape: t.dimensions().into_iter().map(u64::from).collect(),
        data: t.data(),
    })
}

/// Runs `inputs` and returns every output, named as the model names them.
pub fn run(
    context: &GraphExecutionContext,
    inputs: Vec<(String, Tensor)>,
) -> Result<Vec<Named>, PredictError> {
    let outputs = context
        .compute(inputs)
        .map_err(|e| nn_error(ErrorKind::ModelFailure, "running the model", e))?;
    outputs.iter().map(|(n, t)| from_nn(n.clone(), t)).collect()
}

/// The model the host loaded under `name`, and an execution context for it
/// (the graph is kept alive beside its context).
pub fn open(name: &str) -> Result<(Graph, GraphExecutionContext), PredictError> {
    let graph = graph::load_by_name(name)
        .map_err(|e| nn_error(ErrorKind::Internal, "loading the model", e))?;
    let context = graph
        .init_execution_context()
        .map_err(|e| nn_error(ErrorKind::Internal, "creating an execution context", e))?;
    Ok((graph, context))
}

/// A wasi-nn failure while `doing` something, as a guest error of `kind`.
pub fn nn_error(kind: ErrorKind, doing: &str, e: NnError) -> PredictError {
    PredictError {
        kind,
        message: format!("wasi-nn failed {doing}: {:?}: {}", e.code(), e.data()),
    }
}

/// The client's tensors do not fit the model (HTTP 400).
pub fn invalid(message: String) -> PredictError {
    PredictError {
        kind: ErrorKind::InvalidInput,
        message,
    }
}
