//! Fast ONNX-ML tree ensembles for tract-onnx.
//!
//! tract-onnx 0.23.9's `TreeEnsembleClassifier` finds a leaf's votes by
//! skipping through the votes of every leaf before it, so each tree costs
//! O(total leaves) per row: ~70 ms a row on a 512-tree forest that
//! onnxruntime scores in ~20 µs. It has no `TreeEnsembleRegressor`, and its
//! binary classifiers always label class 0.
//!
//! This crate replaces both ops in tract's op table ([`register`], or
//! [`onnx`] for a ready framework). Ensembles are validated at load (errors
//! are [`TreeError`]s naming the attribute) and flattened so a row costs one
//! root-to-leaf path per tree plus the reached leaves' votes. Blocks of rows
//! evaluate small trees as bitsets with SIMD where the CPU has AVX2 or
//! AVX-512 (`HADR_TREES_KERNEL=walk` turns that off, for measurements).
//!
//! It also holds [`clean_vector_state`], the workaround for tract-linalg's
//! x86_64 kernels, which return with the vector registers' upper halves
//! dirty (every SSE instruction after them pays until cleared): hadr's
//! backend and the native baseline call it after every tract run.
//!
//! Semantics follow the ONNX-ML spec, and onnxruntime where the spec is
//! vague: NaN goes to the true branch only where
//! `nodes_missing_value_tracks_true` says so, sums run in f64, the two-class
//! layouts and their labels match onnxruntime's (see `classifier.rs`), f32,
//! i32 and i64 inputs are compared as f32, and f64 inputs in f64 against the
//! thresholds as given (see `forest.rs`). One deliberate difference: a
//! single-target regressor applies its `post_transform` as the spec says,
//! where onnxruntime applies only PROBIT there. A malformed attribute is a
//! load error naming it, never a panic: tensor attributes are decoded here,
//! not by tract's loader (see `attrs.rs`).

mod attrs;
mod bits;
mod classifier;
mod error;
mod flatten;
mod forest;
mod io;
mod op;
mod regressor;
mod table;
mod transform;
mod vector_state;

#[cfg(test)]
mod tests;

pub use error::TreeError;
pub use forest::WorkCount;
pub use regressor::Aggregate;
pub use transform::{erfinv, logistic, probit, PostTransform};
pub use vector_state::clean_vector_state;
#[cfg(target_arch = "x86_64")]
pub use vector_state::upper_state_dirty;

use tract_onnx::model::OnnxOpRegister;

/// Registers this crate's `TreeEnsembleClassifier` and `TreeEnsembleRegressor`
/// (domain `ai.onnx.ml`), replacing tract's. tract's table is keyed by op
/// type only, so these names cover the ML domain's ops.
pub fn register(ops: &mut OnnxOpRegister) {
    ops.insert("TreeEnsembleClassifier", classifier::build);
    ops.insert("TreeEnsembleRegressor", regressor::build);
}

/// `tract_onnx::onnx()` with [`register`] applied.
pub fn onnx() -> tract_onnx::Onnx {
    let mut framework = tract_onnx::onnx();
    register(&mut framework.op_register);
    framework
}
