//! The workaround for tract-linalg's kernels that leave the vector
//! registers' upper halves dirty (see `vector_state.rs`).

use tract_onnx::prelude::*;

use crate::vector_state::{clean_vector_state, upper_state_dirty};

#[test]
fn a_tract_run_leaves_the_upper_state_dirty_and_cleaning_clears_it() {
    let Some(_) = upper_state_dirty() else {
        eprintln!("this CPU cannot report its vector state (XINUSE): nothing to check");
        return;
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/digits.onnx");
    let plan = tract_onnx::onnx()
        .model_for_path(path)
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .unwrap();
    let input = Tensor::from_shape(&[1, 64], &[1.0f32; 64]).unwrap();
    plan.run(tvec!(input.into())).unwrap();
    // Whether tract leaves it dirty depends on the kernel it picked for
    // this CPU (AVX, FMA or AVX-512 all do); cleaning must clear it either way.
    let dirty_after_run = upper_state_dirty().unwrap();
    clean_vector_state();
    assert_eq!(upper_state_dirty(), Some(false));
    eprintln!("dirty after tract's run: {dirty_after_run}");
}
