//! The sandbox layer: everything between a request's bytes and a guest's
//! answer inside one WebAssembly sandbox.
//!
//! Owns the host lifetime ([`engine`]: engine, linker, epoch ticker, limits),
//! the deployment lifetime ([`deployment`]: a compiled guest paired with a
//! loaded model, and its warm pool; [`compiled_cache`] keeps compiled guests
//! across restarts) and one sandbox ([`live`]: a wasmtime `Store` with the
//! predictor bound, its call errors and fault injection; [`sandboxes`]: the
//! set an instance runs at once). [`nn`] is the only door between a sandbox
//! and the ML library (wasi-nn on tract); [`guest_log`] caps what guests
//! print.
//!
//! May use: the leaves (`bindings`, `topology`, `shutdown`). Nothing here
//! knows about instances, routing or HTTP.

pub mod compiled_cache;
pub mod deployment;
pub mod engine;
pub mod guest_log;
pub mod live;
pub mod nn;
pub(crate) mod rows;
pub mod sandboxes;
