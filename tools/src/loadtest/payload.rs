//! Request bodies from a model's cases file: rows of numbers
//! (`{"cases": [{"input": [...]}, ...]}`, sent as `{"inputs": [...]}`) or
//! records (`{"cases": [{"record": {...}}, ...]}`, sent as a list of records,
//! as the article's client does); or the same cases as Open Inference
//! Protocol infer requests ([`Protocol`]), with JSON or binary tensors.

use std::path::Path;

use bytes::Bytes;

/// Why a cases file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PayloadError {
    path: String,
    message: String,
}

/// One request to send: its body and, for a binary infer request, where
/// its JSON ends (`Inference-Header-Content-Length`).
#[derive(Debug, Clone)]
pub struct Payload {
    /// The body.
    pub body: Bytes,
    /// The length of the JSON before the binary tensors, if any.
    pub header_length: Option<usize>,
}

impl From<Bytes> for Payload {
    fn from(body: Bytes) -> Self {
        Self {
            body,
            header_length: None,
        }
    }
}

/// How requests are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// hadr's `/predict` body (`{"inputs": rows}`, or records).
    Predict,
    /// An Open Inference Protocol infer request, tensors in JSON.
    V2Json,
    /// An Open Inference Protocol infer request, tensors binary both ways.
    V2Binary,
}

/// Bodies of `rows` consecutive cases each, covering the whole file.
pub fn from_cases(path: &Path, rows: usize) -> Result<Vec<Bytes>, PayloadError> {
    let (items, records) = read_cases(path)?;
    Ok(batches(&items, rows)
        .map(|batch| {
            let body = if records {
                serde_json::json!(batch)
            } else {
                serde_json::json!({ "inputs": batch })
            };
            Bytes::from(serde_json::to_vec(&body).unwrap())
        })
        .collect())
}

/// Requests of `rows` consecutive cases each in `protocol`; rows of numbers
/// go to the model input `input` (FP32), records to `records` (BYTES, one
/// JSON record per element, which the placement guest reads).
pub fn requests(
    path: &Path,
    rows: usize,
    protocol: Protocol,
    input: &str,
) -> Result<Vec<Payload>, PayloadError> {
    if protocol == Protocol::Predict {
        return Ok(from_cases(path, rows)?
            .into_iter()
            .map(Payload::from)
            .collect());
    }
    let (items, records) = read_cases(path)?;
    Ok(batches(&items, rows)
        .map(|batch| infer_request(&batch, records, protocol == Protocol::V2Binary, input))
        .collect())
}

fn infer_request(
    batch: &[&serde_json::Value],
    records: bool,
    binary: bool,
    input: &str,
) -> Payload {
    let (name, datatype, shape, json_data, raw): (
        &str,
        &str,
        Vec<usize>,
        serde_json::Value,
        Vec<u8>,
    ) = if records {
        let texts: Vec<String> = batch.iter().map(|r| r.to_string()).collect();
        let raw = texts
            .iter()
            .flat_map(|t| (t.len() as u32).to_le_bytes().into_iter().chain(t.bytes()))
            .collect();
        (
            "records",
            "BYTES",
            vec![batch.len()],
            serde_json::json!(texts),
            raw,
        )
    } else {
        let width = batch[0].as_array().map_or(0, Vec::len);
        let raw = batch
            .iter()
            .flat_map(|row| row.as_array().into_iter().flatten())
            .flat_map(|v| (v.as_f64().unwrap_or(f64::NAN) as f32).to_le_bytes())
            .collect();
        (
            input,
            "FP32",
            vec![batch.len(), width],
            serde_json::json!(batch),
            raw,
        )
    };
    if !binary {
        let body = serde_json::json!({"inputs": [
            {"name": name, "shape": shape, "datatype": datatype, "data": json_data}
        ]});
        return Bytes::from(serde_json::to_vec(&body).unwrap()).into();
    }
    let header = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": name, "shape": shape, "datatype": datatype,
                    "parameters": {"binary_data_size": raw.len()}}],
        "parameters": {"binary_data_output": true}
    }))
    .unwrap();
    let header_length = Some(header.len());
    let mut body = header;
    body.extend_from_slice(&raw);
    Payload {
        body: body.into(),
        header_length,
    }
}

/// Groups of `rows` consecutive items, one starting at each item.
fn batches(
    items: &[serde_json::Value],
    rows: usize,
) -> impl Iterator<Item = Vec<&serde_json::Value>> {
    let rows = rows.max(1);
    (0..items.len()).map(move |start| {
        (0..rows)
            .map(|k| &items[(start + k) % items.len()])
            .collect()
    })
}

/// The cases' rows (`input`) or records (`record`), and which they are.
fn read_cases(path: &Path) -> Result<(Vec<serde_json::Value>, bool), PayloadError> {
    let fail = |message: String| PayloadError {
        path: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("not JSON: {e}")))?;
    let cases = value["cases"]
        .as_array()
        .ok_or_else(|| fail("no `cases` array (expected a model's cases file)".into()))?;
    let field = |name: &str| -> Vec<serde_json::Value> {
        cases.iter().filter_map(|c| c.get(name)).cloned().collect()
    };
    let (inputs, records) = (field("input"), field("record"));
    let (items, records) = match (inputs.is_empty(), records.is_empty()) {
        (false, _) => (inputs, false),
        (true, false) => (records, true),
        (true, true) => return Err(fail("no case has an `input` or a `record`".into())),
    };
    Ok((items, records))
}
