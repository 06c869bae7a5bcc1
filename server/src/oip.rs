//! The Open Inference Protocol's tensors (KServe v2, as Triton speaks it):
//! datatypes, the infer request and response in JSON, the binary tensor
//! data extension both ways, and fitting a client's inputs to a model.
//!
//! Pure: bytes and model facts in, tensors or bytes out; no I/O and no
//! routing ([`crate::http::v2`] serves it). Every refusal is a
//! [`BadRequest`] whose message names the input or output at fault.
//!
//! Tensors travel as the WIT `tensor` the guest takes: packed little-endian
//! elements, BYTES as the protocol's own binary layout (a 4-byte
//! little-endian length before each element), so a binary request's
//! tensors are copied once, into the guest.
//!
//! Owns the protocol codec. May use: `bindings` (the WIT tensor) and
//! `sandbox::nn` (a model's declared inputs).

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::bindings::hadr::predictor::types::{Datatype, Tensor};
use crate::sandbox::nn::ModelInfo;

/// The request does not follow the protocol, or does not fit the model
/// (HTTP 400, with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

fn bad<T>(message: String) -> Result<T, BadRequest> {
    Err(BadRequest(message))
}

/// Every datatype, for parsing and listing.
const DATATYPES: [(Datatype, &str); 13] = [
    (Datatype::Bool, "BOOL"),
    (Datatype::Uint8, "UINT8"),
    (Datatype::Uint16, "UINT16"),
    (Datatype::Uint32, "UINT32"),
    (Datatype::Uint64, "UINT64"),
    (Datatype::Int8, "INT8"),
    (Datatype::Int16, "INT16"),
    (Datatype::Int32, "INT32"),
    (Datatype::Int64, "INT64"),
    (Datatype::Fp16, "FP16"),
    (Datatype::Fp32, "FP32"),
    (Datatype::Fp64, "FP64"),
    (Datatype::Bytes, "BYTES"),
];

/// The protocol's name of `datatype` (`FP32`).
pub fn datatype_name(datatype: Datatype) -> &'static str {
    DATATYPES
        .iter()
        .find(|(d, _)| *d == datatype)
        .map(|(_, name)| *name)
        .expect("every datatype is listed")
}

/// A datatype by its protocol name.
pub fn parse_datatype(name: &str) -> Result<Datatype, BadRequest> {
    DATATYPES
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(d, _)| *d)
        .ok_or_else(|| {
            let known: Vec<&str> = DATATYPES.iter().map(|(_, n)| *n).collect();
            BadRequest(format!(
                "unknown datatype `{name}`; the protocol's are {}",
                known.join(", ")
            ))
        })
}

/// Bytes per element; `None` for BYTES (variable).
pub fn element_size(datatype: Datatype) -> Option<usize> {
    Some(match datatype {
        Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => 1,
        Datatype::Uint16 | Datatype::Int16 | Datatype::Fp16 => 2,
        Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => 4,
        Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => 8,
        Datatype::Bytes => return None,
    })
}

/// The protocol datatype of an ONNX element type, as [`ModelInfo`] names it.
pub fn from_onnx(onnx: &str) -> Option<Datatype> {
    Some(match onnx {
        "float" => Datatype::Fp32,
        "double" => Datatype::Fp64,
        "float16" => Datatype::Fp16,
        "int64" => Datatype::Int64,
        "int32" => Datatype::Int32,
        "uint8" => Datatype::Uint8,
        "bool" => Datatype::Bool,
        "string" => Datatype::Bytes,
        _ => return None,
    })
}

/// What a client asked of one output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    /// The output's name.
    pub name: String,
    /// Its own `binary_data` parameter, if given.
    pub binary: Option<bool>,
}

/// An infer request, parsed and checked against itself (shapes, sizes).
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// Echoed in the response.
    pub id: Option<String>,
    /// The inputs, in request order.
    pub inputs: Vec<Tensor>,
    /// The outputs asked for; empty for all of them.
    pub outputs: Vec<RequestedOutput>,
    /// `parameters.binary_data_output`: outputs binary unless they say not.
    pub binary_output: bool,
}

// Optional members are `Option`s so that an explicit `null` (what clients
// serialising unset fields send) reads as absent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestJson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Option<Parameters>,
}

/// The parameters hadr reads; others (the protocol lets clients add their
/// own) are ignored.
#[derive(Default, Deserialize)]
struct Parameters {
    #[serde(default)]
    binary_data_size: Option<u64>,
    #[serde(default)]
    binary_data: Option<bool>,
    #[serde(default)]
    binary_data_output: Option<bool>,
    #[serde(default)]
    classification: Option<Value>,
}

/// Parses an infer request: `body` is the JSON header, followed by the
/// binary tensors when `header_length` (`Inference-Header-Content-Length`)
/// is given.
pub fn parse_request(
    body: &[u8],
    header_length: Option<usize>,
) -> Result<InferRequest, BadRequest> {
    let (header, mut binary) = match header_length {
        None => (body, &[][..]),
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return bad(format!(
                "Inference-Header-Content-Length is {n}, but the body has only {} bytes",
                body.len()
            ))
        }
    };
    let request: RequestJson = serde_json::from_slice(header)
        .map_err(|e| BadRequest(format!("the request is not an inference request: {e}")))?;
    if request.inputs.is_empty() {
        return bad("the request has no inputs".into());
    }
    // A set, not a scan of those before: a body of thousands of inputs
    // would otherwise cost the square of their count on a request worker.
    let mut names = std::collections::HashSet::with_capacity(request.inputs.len());
    if let Some(twice) = request.inputs.iter().find(|i| !names.insert(&i.name)) {
        return bad(format!("input `{}` is given twice", twice.name));
    }
    let mut inputs: Vec<Tensor> = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        inputs.push(parse_input(input, &mut binary)?);
    }
    if !binary.is_empty() {
        return bad(format!(
            "the body has {} bytes beyond the inputs' binary_data_size",
            binary.len()
        ));
    }
    let requested = request.outputs.unwrap_or_default();
    let mut outputs = Vec::with_capacity(requested.len());
    for output in requested {
        let parameters = output.parameters.unwrap_or_default();
        if parameters.classification.is_some() {
            return bad(format!(
                "output `{}` asks for the classification extension, which hadr does not offer",
                output.name
            ));
        }
        outputs.push(RequestedOutput {
            name: output.name,
            binary: parameters.binary_data,
        });
    }
    Ok(InferRequest {
        id: request.id,
        inputs,
        outputs,
        binary_output: request
            .parameters
            .and_then(|p| p.binary_data_output)
            .unwrap_or(false),
    })
}

fn parse_input(input: InputJson, binary: &mut &[u8]) -> Result<Tensor, BadRequest> {
    let name = input.name;
    let datatype =
        parse_datatype(&input.datatype).map_err(|e| BadRequest(format!("input `{name}`: {e}")))?;
    let shape = input
        .shape
        .iter()
        .map(|&d| u64::try_from(d))
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|_| {
            BadRequest(format!(
                "input `{name}` has a negative dimension in {:?}",
                input.shape
            ))
        })?;
    let elements = element_count(&shape)
        .ok_or_else(|| BadRequest(format!("input `{name}`: shape {shape:?} is too large")))?;
    let binary_data_size = input.parameters.and_then(|p| p.binary_data_size);
    let data = match (binary_data_size, input.data) {
        (Some(_), Some(_)) => {
            return bad(format!(
                "input `{name}` has both `data` and a binary_data_size; give one"
            ))
        }
        (None, None) => {
            return bad(format!(
                "input `{name}` has no `data` and no binary_data_size"
            ))
        }
        (Some(size), None) => take_binary(&name, datatype, elements, size, binary)?,
        (None, Some(json)) => from_json(&name, datatype, &shape, elements, &json)?,
    };
    Ok(Tensor {
        name,
        datatype,
        shape,
        data,
    })
}

/// How many elements a shape holds; `None` past what memory could.
fn element_count(shape: &[u64]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .and_then(|n| usize::try_from(n).ok())
}

/// The next `size` bytes of the binary section, checked against the shape.
fn take_binary(
    name: &str,
    datatype: Datatype,
    elements: usize,
    size: u64,
    binary: &mut &[u8],
) -> Result<Vec<u8>, BadRequest> {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > binary.len() {
        return bad(format!(
            "input `{name}`: binary_data_size is {size}, but only {} bytes of binary data are left in the body",
            binary.len()
        ));
    }
    let (data, rest) = binary.split_at(size);
    *binary = rest;
    match element_size(datatype) {
        Some(width) if elements.checked_mul(width) != Some(size) => bad(format!(
            "input `{name}`: {elements} {} elements take {} bytes, but binary_data_size is {size}",
            datatype_name(datatype),
            elements.saturating_mul(width)
        )),
        Some(_) => Ok(data.to_vec()),
        None => {
            let found = count_bytes_elements(data).ok_or_else(|| {
                BadRequest(format!(
                    "input `{name}`: its BYTES data ends inside an element"
                ))
            })?;
            if found != elements {
                return bad(format!(
                    "input `{name}`: the shape holds {elements} elements, the BYTES data {found}"
                ));
            }
            Ok(data.to_vec())
        }
    }
}

/// How many length-prefixed elements `data` holds exactly; `None` if it
/// ends inside one.
fn count_bytes_elements(mut data: &[u8]) -> Option<usize> {
    let mut n = 0;
    while !data.is_empty() {
        let (len, rest) = data.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        data = rest.get(len..)?;
        n += 1;
    }
    Some(n)
}

/// JSON `data` (flat or nested row-major) as packed elements.
fn from_json(
    name: &str,
    datatype: Datatype,
    shape: &[u64],
    elements: usize,
    json: &Value,
) -> Result<Vec<u8>, BadRequest> {
    // Sized by the data, never by the shape: the shape is the client's
    // word, and `[35184372088832]` would ask for 256 TiB up front.
    if !nests_as(json, shape) {
        return bad(format!(
            "input `{name}`: `data` is nested, but not as shape {shape:?} says (give it flat, or one list per dimension)"
        ));
    }
    let mut flat = Vec::new();
    flatten(json, &mut flat);
    if flat.len() != elements {
        return bad(format!(
            "input `{name}`: the shape holds {elements} elements, `data` has {}",
            flat.len()
        ));
    }
    let width = element_size(datatype).unwrap_or(0);
    let mut out = Vec::with_capacity(elements * width.max(1));
    for (i, value) in flat.iter().enumerate() {
        push_json(datatype, value, &mut out).map_err(|expected| {
            BadRequest(format!(
                "input `{name}`: element {i} is {value}, not {expected}"
            ))
        })?;
    }
    Ok(out)
}

/// Whether JSON `data` is flat (the protocol's other form: its length is
/// checked against the shape after) or nested as `shape` says, each list
/// holding its dimension's count (the last lists may hold the remaining
/// dimensions flat). Flattened unchecked, `[[63 values], [1 value]]` passed
/// as a `[1, 64]` row.
fn nests_as(data: &Value, shape: &[u64]) -> bool {
    match data {
        Value::Array(items) if items.iter().any(Value::is_array) => nested(items, shape),
        _ => true,
    }
}

fn nested(items: &[Value], shape: &[u64]) -> bool {
    let Some((&first, rest)) = shape.split_first() else {
        return false;
    };
    if !items.iter().any(Value::is_array) {
        return element_count(shape) == Some(items.len());
    }
    items.len() as u64 == first
        && items
            .iter()
            .all(|i| matches!(i, Value::Array(inner) if nested(inner, rest)))
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

/// Appends one JSON element as `datatype`; says what was expected if it
/// is not one.
fn push_json(datatype: Datatype, value: &Value, out: &mut Vec<u8>) -> Result<(), &'static str> {
    macro_rules! int {
        ($t:ty, $what:literal) => {{
            let v = value
                .as_i64()
                .and_then(|v| <$t>::try_from(v).ok())
                .or_else(|| value.as_u64().and_then(|v| <$t>::try_from(v).ok()))
                .ok_or($what)?;
            out.extend_from_slice(&v.to_le_bytes());
        }};
    }
    match datatype {
        Datatype::Bool => out.push(value.as_bool().ok_or("a boolean")? as u8),
        Datatype::Uint8 => int!(u8, "an integer in 0..=255"),
        Datatype::Uint16 => int!(u16, "a UINT16"),
        Datatype::Uint32 => int!(u32, "a UINT32"),
        Datatype::Uint64 => int!(u64, "a UINT64"),
        Datatype::Int8 => int!(i8, "an INT8"),
        Datatype::Int16 => int!(i16, "an INT16"),
        Datatype::Int32 => int!(i32, "an INT32"),
        Datatype::Int64 => int!(i64, "an INT64"),
        Datatype::Fp32 => {
            // `as` makes a number past FP32's range an infinity.
            let v = value.as_f64().ok_or("a number")? as f32;
            if !v.is_finite() {
                return Err("a number within FP32's range");
            }
            out.extend_from_slice(&v.to_le_bytes());
        }
        Datatype::Fp64 => out.extend_from_slice(&value.as_f64().ok_or("a number")?.to_le_bytes()),
        Datatype::Fp16 => return Err("FP16, which hadr takes only as binary data"),
        Datatype::Bytes => {
            let s = value.as_str().ok_or("a string")?;
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    Ok(())
}

/// Checks the request's inputs against the model and converts each to the
/// element type the model declares (an INT64 or FP64 input to an FP32
/// model, say). An input the model does not declare passes only as BYTES,
/// for a guest that reads it itself (records, images); then the model's own
/// inputs may be missing, and the guest says what it needs.
pub fn fit(inputs: &[Tensor], model: &ModelInfo) -> Result<Vec<Tensor>, BadRequest> {
    let names = || {
        model
            .inputs
            .iter()
            .map(|i| format!("`{}`", i.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut fitted = Vec::with_capacity(inputs.len());
    for input in inputs {
        match model.inputs.iter().find(|i| i.name == input.name) {
            Some(declared) => fitted.push(fit_one(input, &declared.shape, declared.datatype)?),
            None if input.datatype == Datatype::Bytes => fitted.push(input.clone()),
            None => {
                return bad(format!(
                    "the model has no input `{}`; its inputs are {}",
                    input.name,
                    names()
                ))
            }
        }
    }
    let guest_reads_its_own = inputs
        .iter()
        .any(|i| i.datatype == Datatype::Bytes && !model.inputs.iter().any(|d| d.name == i.name));
    if !guest_reads_its_own {
        if let Some(missing) = model
            .inputs
            .iter()
            .find(|d| !inputs.iter().any(|i| i.name == d.name))
        {
            return bad(format!(
                "input `{}` is missing; the model's inputs are {}",
                missing.name,
                names()
            ));
        }
    }
    Ok(fitted)
}

fn fit_one(input: &Tensor, shape: &[i64], onnx: &str) -> Result<Tensor, BadRequest> {
    let name = &input.name;
    let fits = input.shape.len() == shape.len()
        && input
            .shape
            .iter()
            .zip(shape)
            .all(|(&given, &declared)| declared < 0 || given == declared as u64);
    if !fits {
        return bad(format!(
            "input `{name}` has shape {:?}; the model takes {shape:?} (-1: any size)",
            input.shape
        ));
    }
    // The client's mistake, not the model's: tract refuses an empty batch
    // as a runtime error, which would count against the instance. Only the
    // batch the model leaves open: a 0 elsewhere may be the model's own
    // (a fixed 0, an empty cache on a first step).
    if input.shape.first() == Some(&0) && shape.first().is_some_and(|&d| d < 0) {
        return bad(format!(
            "input `{name}` has shape {:?}, which holds no elements (an empty batch); send at least one row",
            input.shape
        ));
    }
    let target = from_onnx(onnx).ok_or_else(|| {
        BadRequest(format!(
            "input `{name}` is of ONNX type {onnx}, which the protocol cannot carry"
        ))
    })?;
    let data = match convert(&input.data, input.datatype, target) {
        Ok(data) => data,
        Err(Unconverted::Types) => {
            return bad(format!(
                "input `{name}` is {}, and the model takes {}: hadr converts between numeric types only where no value can change (integers to floats, narrower to wider)",
                datatype_name(input.datatype),
                datatype_name(target)
            ))
        }
        Err(Unconverted::Range { element, value }) => {
            return bad(format!(
                "input `{name}` element {element} is {value:e}, past {}'s range",
                datatype_name(target)
            ))
        }
    };
    Ok(Tensor {
        name: input.name.clone(),
        datatype: target,
        shape: input.shape.clone(),
        data,
    })
}

/// The first element of float data that is NaN or infinite, if any.
fn first_not_finite(data: &[u8], datatype: Datatype) -> Option<(usize, f64)> {
    match datatype {
        Datatype::Fp16 | Datatype::Fp32 | Datatype::Fp64 => numbers(data, datatype)?
            .map(Number::as_f64)
            .enumerate()
            .find(|(_, v)| !v.is_finite()),
        _ => None,
    }
}

/// Why an input could not be converted to the model's element type.
enum Unconverted {
    /// Not between these types, or a value that does not fit an integer
    /// type.
    Types,
    /// A finite value past the target float's range (FP64 1e39 to FP32),
    /// which would become an infinity.
    Range { element: usize, value: f64 },
}

/// Packed elements of `from` as `to`, where no accepted value changes:
/// any number to a float (FP32 rounds large integers, as a model taking
/// floats would; a finite value past its range is refused), and integers
/// to integers they fit in (BOOL: 0 and 1). NaN and infinities the client
/// sent pass as they are: tree models read NaN as a missing value.
/// Element by element: parsed into a list first, each element would take
/// 32 bytes.
fn convert(data: &[u8], from: Datatype, to: Datatype) -> Result<Vec<u8>, Unconverted> {
    if from == to {
        return Ok(data.to_vec());
    }
    let (Some(from_width), Some(to_width)) = (element_size(from), element_size(to)) else {
        return Err(Unconverted::Types);
    };
    let mut out = Vec::with_capacity(data.len() / from_width * to_width);
    let values = numbers(data, from).ok_or(Unconverted::Types)?;
    let types = |_| Unconverted::Types;
    for (element, v) in values.enumerate() {
        match (to, v) {
            (Datatype::Fp32, n) => {
                let (wide, narrow) = (n.as_f64(), n.as_f64() as f32);
                if wide.is_finite() && !narrow.is_finite() {
                    return Err(Unconverted::Range {
                        element,
                        value: wide,
                    });
                }
                out.extend_from_slice(&narrow.to_le_bytes())
            }
            (Datatype::Fp64, n) => out.extend_from_slice(&n.as_f64().to_le_bytes()),
            (Datatype::Int64, Number::Int(i)) => {
                out.extend_from_slice(&i64::try_from(i).map_err(types)?.to_le_bytes())
            }
            (Datatype::Int32, Number::Int(i)) => {
                out.extend_from_slice(&i32::try_from(i).map_err(types)?.to_le_bytes())
            }
            (Datatype::Uint8, Number::Int(i)) => out.push(u8::try_from(i).map_err(types)?),
            (Datatype::Bool, Number::Int(i @ 0..=1)) => out.push(i as u8),
            _ => return Err(Unconverted::Types),
        }
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum Number {
    Int(i128),
    Float(f64),
}

impl Number {
    fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

/// The elements of packed numeric data, one by one; `None` for BYTES.
fn numbers(data: &[u8], datatype: Datatype) -> Option<Box<dyn Iterator<Item = Number> + '_>> {
    macro_rules! each {
        ($t:ty, $wrap:expr) => {
            Box::new(
                data.chunks_exact(size_of::<$t>())
                    .map(|c| $wrap(<$t>::from_le_bytes(c.try_into().expect("exact chunk")))),
            )
        };
    }
    Some(match datatype {
        Datatype::Bool | Datatype::Uint8 => Box::new(data.iter().map(|&b| Number::Int(b.into()))),
        Datatype::Int8 => Box::new(data.iter().map(|&b| Number::Int((b as i8).into()))),
        Datatype::Uint16 => each!(u16, |v: u16| Number::Int(v.into())),
        Datatype::Int16 => each!(i16, |v: i16| Number::Int(v.into())),
        Datatype::Uint32 => each!(u32, |v: u32| Number::Int(v.into())),
        Datatype::Int32 => each!(i32, |v: i32| Number::Int(v.into())),
        Datatype::Uint64 => each!(u64, |v: u64| Number::Int(v.into())),
        Datatype::Int64 => each!(i64, |v: i64| Number::Int(v.into())),
        Datatype::Fp16 => each!(u16, |v| Number::Float(half::f16::from_bits(v).to_f64())),
        Datatype::Fp32 => each!(f32, |v: f32| Number::Float(v.into())),
        Datatype::Fp64 => each!(f64, Number::Float),
        Datatype::Bytes => return None,
    })
}

/// An infer response: the body, and the JSON header's length when binary
/// outputs follow it (for `Inference-Header-Content-Length`).
#[derive(Debug)]
pub struct Encoded {
    /// The whole body.
    pub body: Vec<u8>,
    /// `Some(n)`: the first `n` bytes are JSON, the rest binary outputs.
    pub header_length: Option<usize>,
}

/// Who answered, for the response.
pub struct Origin<'a> {
    /// The model's name.
    pub model: &'a str,
    /// The deployment version that ran the request.
    pub version: &'a str,
    /// The request's `id`, echoed.
    pub id: Option<&'a str>,
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputOut<'a>>,
}

#[derive(Serialize)]
struct OutputOut<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [u64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Data>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// JSON `data`, flat: serde writes each float in its shortest exact form.
#[derive(Serialize)]
#[serde(untagged)]
enum Data {
    Bool(Vec<bool>),
    Int(Vec<i128>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Str(Vec<String>),
}

/// Refuses a request for an output the model does not declare.
pub fn check_requested(
    requested: &[RequestedOutput],
    declared: &[TensorMetadata],
) -> Result<(), BadRequest> {
    unknown_output(requested, declared.iter().map(|t| t.name.as_str()))
}

fn unknown_output<'a>(
    requested: &[RequestedOutput],
    names: impl Iterator<Item = &'a str> + Clone,
) -> Result<(), BadRequest> {
    let Some(unknown) = requested
        .iter()
        .find(|r| !names.clone().any(|n| n == r.name))
    else {
        return Ok(());
    };
    let names: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    bad(format!(
        "the model has no output `{}`; its outputs are {}",
        unknown.name,
        names.join(", ")
    ))
}

/// Why an answer cannot be sent as the client asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The guest's outputs are no tensors the protocol can describe (data
    /// that does not fill its shape, a name given twice): the guest's
    /// fault, counted against its instance.
    #[error("{0}")]
    Malformed(String),
    /// The answer cannot be sent as asked (an output it lacks, values JSON
    /// cannot carry, outputs made up from NaN): the client's to change.
    #[error("{0}")]
    Refused(String),
}

impl From<BadRequest> for EncodeError {
    fn from(e: BadRequest) -> Self {
        EncodeError::Refused(e.0)
    }
}

/// Checks a guest's outputs: each one's data fills its shape exactly, and
/// no name is given twice.
fn check_outputs(outputs: &[Tensor]) -> Result<(), EncodeError> {
    let mut names = std::collections::HashSet::with_capacity(outputs.len());
    for t in outputs {
        let malformed = |what: String| {
            EncodeError::Malformed(format!(
                "the guest's output `{}` ({} {:?}) {what}",
                t.name,
                datatype_name(t.datatype),
                t.shape
            ))
        };
        if !names.insert(&t.name) {
            return Err(malformed("is given twice".into()));
        }
        let elements = element_count(&t.shape)
            .ok_or_else(|| malformed("has a shape too large to hold".into()))?;
        match element_size(t.datatype) {
            Some(width) if elements.checked_mul(width) != Some(t.data.len()) => {
                return Err(malformed(format!("has {} bytes of data", t.data.len())))
            }
            None if count_bytes_elements(&t.data) != Some(elements) => {
                return Err(malformed(
                    "has BYTES data that is not one length-prefixed element per place".into(),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Refuses to send an output that is not a float while a float output of
/// the same answer is NaN or infinite: a label or class computed from it
/// would be made up (as `/predict` refuses such an answer). Float outputs
/// alone pass, for the binary form to carry them as they are.
fn nothing_made_up(outputs: &[Tensor], chosen: &[(&Tensor, bool)]) -> Result<(), EncodeError> {
    let is_float =
        |t: &Tensor| matches!(t.datatype, Datatype::Fp16 | Datatype::Fp32 | Datatype::Fp64);
    let Some((other, _)) = chosen.iter().find(|(t, _)| !is_float(t)) else {
        return Ok(());
    };
    for t in outputs.iter().filter(|t| is_float(t)) {
        if let Some((i, value)) = first_not_finite(&t.data, t.datatype) {
            return Err(EncodeError::Refused(format!(
                "output `{}` element {i} is {value}, so output `{}` would be made up from it: send inputs the model can answer",
                t.name, other.name
            )));
        }
    }
    Ok(())
}

/// Writes the response: the requested outputs (all when none were named),
/// in the model's order as Triton does, each binary or JSON as asked. The
/// guest's outputs are checked first (see [`EncodeError`]).
pub fn encode_response(
    origin: Origin<'_>,
    outputs: &[Tensor],
    requested: &[RequestedOutput],
    binary_output: bool,
) -> Result<Encoded, EncodeError> {
    check_outputs(outputs)?;
    // Asked-for outputs were checked against the model's before the call:
    // one missing from the answer is the guest's.
    unknown_output(requested, outputs.iter().map(|t| t.name.as_str())).map_err(|e| {
        EncodeError::Malformed(format!(
            "the guest's answer lacks an output the model declares: {e}"
        ))
    })?;
    let chosen: Vec<(&Tensor, bool)> = outputs
        .iter()
        .filter_map(|t| {
            if requested.is_empty() {
                return Some((t, binary_output));
            }
            let asked = requested.iter().find(|r| r.name == t.name)?;
            Some((t, asked.binary.unwrap_or(binary_output)))
        })
        .collect();
    nothing_made_up(outputs, &chosen)?;
    let mut binary = Vec::new();
    let mut any_binary = false;
    let mut out = Vec::new();
    for (tensor, as_binary) in chosen {
        any_binary |= as_binary;
        let (parameters, data) = if as_binary {
            binary.extend_from_slice(&tensor.data);
            (
                Some(BinarySize {
                    binary_data_size: tensor.data.len(),
                }),
                None,
            )
        } else {
            (None, Some(to_json(tensor)?))
        };
        out.push(OutputOut {
            name: &tensor.name,
            datatype: datatype_name(tensor.datatype),
            shape: &tensor.shape,
            parameters,
            data,
        });
    }
    let mut body = serde_json::to_vec(&ResponseJson {
        model_name: origin.model,
        model_version: origin.version,
        id: origin.id,
        outputs: out,
    })
    .expect("serialising a response cannot fail");
    // The client splits the body only when told where the JSON ends.
    let header_length = any_binary.then_some(body.len());
    body.extend_from_slice(&binary);
    Ok(Encoded {
        body,
        header_length,
    })
}

/// A float output's elements for JSON, which has no number for NaN or an
/// infinity (serde would write `null`): such an output is refused, naming
/// the binary form that carries it.
fn finite<F: Copy + Into<f64>>(
    tensor: &Tensor,
    values: impl Iterator<Item = F>,
) -> Result<Vec<F>, BadRequest> {
    values
        .enumerate()
        .map(|(i, v)| match v.into() {
            x if x.is_finite() => Ok(v),
            x => Err(BadRequest(format!(
                "output `{}` element {i} is {x}, which JSON cannot carry: ask for it with \
                 binary_data, or send inputs the model can answer",
                tensor.name
            ))),
        })
        .collect()
}

/// One output's elements as JSON.
fn to_json(tensor: &Tensor) -> Result<Data, BadRequest> {
    let refuse = || {
        BadRequest(format!(
            "output `{}` is {}, which hadr sends only as binary data: ask for it with binary_data",
            tensor.name,
            datatype_name(tensor.datatype)
        ))
    };
    Ok(match tensor.datatype {
        Datatype::Bool => Data::Bool(tensor.data.iter().map(|&b| b != 0).collect()),
        Datatype::Fp32 => Data::F32(finite(
            tensor,
            tensor
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("exact chunk"))),
        )?),
        Datatype::Fp64 => Data::F64(finite(
            tensor,
            tensor
                .data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("exact chunk"))),
        )?),
        Datatype::Bytes => {
            let mut items = Vec::new();
            let mut rest = &tensor.data[..];
            while let Some((len, tail)) = rest.split_first_chunk::<4>() {
                let len = u32::from_le_bytes(*len) as usize;
                let item = tail.get(..len).ok_or_else(refuse)?;
                items.push(String::from_utf8(item.to_vec()).map_err(|_| refuse())?);
                rest = &tail[len..];
            }
            Data::Str(items)
        }
        Datatype::Fp16 => return Err(refuse()),
        integer => Data::Int(
            numbers(&tensor.data, integer)
                .ok_or_else(refuse)?
                .map(|n| match n {
                    Number::Int(i) => i,
                    Number::Float(_) => unreachable!("integer datatypes give integers"),
                })
                .collect(),
        ),
    })
}

/// A model's inputs or outputs as model metadata lists them.
#[derive(Debug, Serialize)]
pub struct TensorMetadata {
    /// Its name.
    pub name: String,
    /// The protocol's datatype name.
    pub datatype: &'static str,
    /// Its dimensions, -1 where any size goes.
    pub shape: Vec<i64>,
}

/// The inputs and outputs of `model` as the protocol names them.
pub fn tensor_metadata(model: &ModelInfo) -> (Vec<TensorMetadata>, Vec<TensorMetadata>) {
    let list = |tensors: &[crate::sandbox::nn::TensorInfo]| {
        tensors
            .iter()
            .map(|t| TensorMetadata {
                name: t.name.clone(),
                datatype: from_onnx(t.datatype).map(datatype_name).unwrap_or("BYTES"),
                shape: t.shape.clone(),
            })
            .collect()
    };
    (list(&model.inputs), list(&model.outputs))
}

#[cfg(test)]
mod tests;
