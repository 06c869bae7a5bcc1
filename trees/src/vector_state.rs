//! tract-linalg 0.23.9's x86_64 assembly kernels (matrix products,
//! sigmoid, tanh: AVX, FMA, AVX-512) return without `vzeroupper`, leaving
//! the upper halves of the vector registers dirty. Until something clears
//! them, every legacy-SSE instruction pays to merge them: the host's own
//! Rust code, and far more the guests' Cranelift code, which mixes SSE and
//! AVX encodings. Measured (`cargo bench -p hadr-host --bench predict`,
//! digits): the guest's own JSON path, one row, 34.8 → 11.0 µs once
//! cleared after each model run; the native predict-core + tract call
//! 7.9 → 6.8 µs. [`clean_vector_state`] after every tract run is the
//! workaround; `docs/tract-linalg-vzeroupper.patch` is the fix for tract.

/// Clears the upper halves of the vector registers (`vzeroupper`) where the
/// CPU has AVX; a no-op elsewhere. Call it after running a tract plan.
pub fn clean_vector_state() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX, checked just above.
        unsafe { zero_upper() }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn zero_upper() {
    std::arch::x86_64::_mm256_zeroupper();
}

/// Whether the upper halves of the vector registers are in use (dirty),
/// as the CPU reports it (`xgetbv` with ECX = 1, XINUSE bit 2); `None` where
/// it cannot say.
#[cfg(target_arch = "x86_64")]
pub fn upper_state_dirty() -> Option<bool> {
    use std::arch::x86_64::__cpuid_count;
    // OSXSAVE: the OS enabled XSAVE, so leaf 0xD exists.
    let xsave = __cpuid_count(1, 0).ecx & (1 << 27) != 0;
    let xgetbv1 = xsave && __cpuid_count(0xD, 1).eax & (1 << 2) != 0;
    if !xgetbv1 || !std::arch::is_x86_feature_detected!("avx") {
        return None;
    }
    // SAFETY: `xgetbv` with ECX = 1 is supported, checked just above.
    Some(unsafe { xinuse() } & (1 << 2) != 0)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "xsave")]
unsafe fn xinuse() -> u64 {
    std::arch::x86_64::_xgetbv(1)
}
