//! wasi-nn for hadr: the only door between a sandboxed predictor and the ML
//! library.
//!
//! The guest sees wasi:nn's `graph`, `tensor` and `inference` interfaces and
//! nothing of tract. Behind them sit two small pieces:
//! - [`tract_backend`]: wasmtime-wasi-nn's backend traits implemented with
//!   tract (pure Rust) for ONNX. A graph is an optimised, immutable tract plan
//!   behind an `Arc`, so every instance shares one copy of every model.
//! - [`registry`]: the named graphs a host has preloaded, so a guest's
//!   `load-by-name("digits")` hands out a handle to the shared plan instead of
//!   parsing a model per instance.

pub mod registry;
pub mod tract_backend;

pub use registry::{GraphRegistry, LoadedModel, ModelError};
pub use tract_backend::{ModelInfo, TensorInfo, TractBackend};
