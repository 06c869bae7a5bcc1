//! wasi-nn for hadr: the only door between a sandboxed predictor and the ML
//! library.
//!
//! The guest sees wasi:nn's `graph`, `tensor` and `inference` interfaces and
//! nothing of tract. Behind them sit two small pieces:
//! - [`tract_backend`]: wasmtime-wasi-nn's backend traits implemented with
//!   tract (pure Rust) for ONNX. A graph is an optimised, immutable tract plan
//!   behind an `Arc`, so every instance shares one copy of every model.
//! - [`budget`]: the host memory a model may claim, checked on the ONNX
//!   graph before tract folds a constant.
//! - [`tensors`]: the byte cap on tensors a guest keeps on the host.
//! - [`registry`]: the named graphs a host has preloaded, so a guest's
//!   `load-by-name("digits")` hands out a handle to the shared plan instead of
//!   parsing a model per instance.

pub mod budget;
pub mod registry;
pub mod tensors;
pub mod tract_backend;

pub use registry::{GraphRegistry, LoadedModel, ModelError};
pub use tract_backend::{ModelInfo, TensorInfo, TractBackend, DEFAULT_MODEL_BUDGET};
