//! Request bodies from a model's cases file: `{"cases": [{"input": [...]}, ...]}`.

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
    let inputs: Vec<&serde_json::Value> = value["cases"]
        .as_array()
        .ok_or_else(|| fail("no `cases` array (expected a model's cases file)".into()))?
        .iter()
        .filter_map(|c| c.get("input"))
        .collect();
    if inputs.is_empty() {
        return Err(fail("no case has an `input`".into()));
    }
    let rows = rows.max(1);
    Ok((0..inputs.len())
        .map(|start| {
            let batch: Vec<&serde_json::Value> = (0..rows)
                .map(|k| inputs[(start + k) % inputs.len()])
                .collect();
            Bytes::from(serde_json::to_vec(&serde_json::json!({ "inputs": batch })).unwrap())
        })
        .collect())
}
