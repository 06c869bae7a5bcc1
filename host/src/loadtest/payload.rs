//! Request bodies from a model's cases file: rows of numbers
//! (`{"cases": [{"input": [...]}, ...]}`, sent as `{"inputs": [...]}`) or
//! records (`{"cases": [{"record": {...}}, ...]}`, sent as a list of records,
//! as the article's client does).

use std::path::Path;

use bytes::Bytes;

/// Why a cases file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PayloadError {
    path: String,
    message: String,
}

/// Bodies of `rows` consecutive cases each, covering the whole file.
pub fn from_cases(path: &Path, rows: usize) -> Result<Vec<Bytes>, PayloadError> {
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
    let field = |name: &str| -> Vec<&serde_json::Value> {
        cases.iter().filter_map(|c| c.get(name)).collect()
    };
    let (inputs, records) = (field("input"), field("record"));
    let (items, records) = match (inputs.is_empty(), records.is_empty()) {
        (false, _) => (inputs, false),
        (true, false) => (records, true),
        (true, true) => return Err(fail("no case has an `input` or a `record`".into())),
    };
    let rows = rows.max(1);
    Ok((0..items.len())
        .map(|start| {
            let batch: Vec<_> = (0..rows)
                .map(|k| items[(start + k) % items.len()])
                .collect();
            let body = if records {
                serde_json::json!(batch)
            } else {
                serde_json::json!({ "inputs": batch })
            };
            Bytes::from(serde_json::to_vec(&body).unwrap())
        })
        .collect())
}
