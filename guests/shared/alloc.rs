//! The guests' global allocator: talc instead of std's dlmalloc.
//!
//! A `/predict` call allocates about a dozen small blocks in the guest (the
//! rows the host lowers, wasi-nn's output names and data, the answer), and
//! dlmalloc spent about 3,000 of the generic guest's 6,200 instructions a
//! request on them (`scripts/count-instructions`, docs/benchmarks.md).
//! talc takes its memory from `memory.grow` as dlmalloc does, so a
//! sandbox's memory limit still refuses a runaway guest the same way.

// Guests are single-threaded wasm32-wasip2 components (no atomics), which
// is what `WasmDynamicTalc` requires; their unit tests, built natively, keep
// the system allocator.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static TALC: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

// wasi-libc keeps its own malloc for its own buffers, while the component's
// `cabi_realloc` (which the host calls to hand over lists) now allocates with
// talc. wasi-libc frees with its own `free` the lists it is handed, such as
// the environment `getenv` reads on a panic: safe only because the host
// gives guests no environment, no arguments and no directories (an empty
// list is never allocated), which `sandbox::deployment` must keep so.
