//! Elementwise kernels for activations held as host f32 rows (the quantized CPU path, whose
//! products already live on the host): the gated feed-forward activations `act(gate) · up`
//! and RMSNorm over many rows, so a prefill runs one pass over the data instead of several
//! backend ops (each its own pass and allocation) or a scalar libm call per element.
//!
//! The kernels are written once as plain, branch-free Rust and compiled three times: for
//! AVX-512F, for AVX2 + FMA, and for the baseline target; the loop vectoriser makes the
//! 16-, 8- and 4-lane versions, picked at run time. `exp` is a polynomial (see [`exp`]) so
//! that it vectorises; the results stay within a few float32 roundings of the exact
//! values (tests compare them with float64).

use crate::config::Activation;

/// `out[i] = act(gate[i]) · up[i]`; the three slices have the same length.
///
/// # Panics
/// If the lengths differ (a bug in the caller).
pub fn gated(activation: Activation, gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && up.len() == out.len(), "gate, up and out have the same length");
    match (activation, Isa::detect()) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::detect` found AVX-512F on this CPU.
        (Activation::Silu, Isa::Avx512) => unsafe { x86::silu_mul_avx512(gate, up, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::detect` found AVX2 and FMA on this CPU.
        (Activation::Silu, Isa::Avx2) => unsafe { x86::silu_mul_avx2(gate, up, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Activation::GeluTanh, Isa::Avx512) => unsafe { x86::gelu_mul_avx512(gate, up, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Activation::GeluTanh, Isa::Avx2) => unsafe { x86::gelu_mul_avx2(gate, up, out) },
        (Activation::Silu, _) => silu_mul(gate, up, out),
        (Activation::GeluTanh, _) => gelu_mul(gate, up, out),
    }
}

/// RMSNorm of one row: `out[i] = x[i] / sqrt(mean(x²) + eps) · gamma[i]`, in that order of
/// operations (the backend's); the sum of squares in 16 partial sums.
///
/// # Panics
/// If the lengths differ.
pub fn rms_norm_row(x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) {
    assert!(x.len() == gamma.len() && gamma.len() == out.len(), "x, gamma and out have the same length");
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::detect` found AVX-512F on this CPU.
        Isa::Avx512 => unsafe { x86::rms_norm_avx512(x, gamma, eps, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::detect` found AVX2 and FMA on this CPU.
        Isa::Avx2 => unsafe { x86::rms_norm_avx2(x, gamma, eps, out) },
        _ => rms_norm(x, gamma, eps, out),
    }
}

/// Which compiled version of the kernels this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    Baseline,
}

impl Isa {
    /// The widest version this CPU has (std caches the feature lookup).
    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    }
}

/// Inputs of [`exp`] are clamped to this range, where `2^n` of its reduction is a normal
/// float: below it `exp` returns `exp(EXP_MIN)` ≈ 1.6e-38 instead of a smaller value or zero,
/// above it `exp(EXP_MAX)` ≈ 1.7e38 instead of a larger value or infinity. Its callers only
/// use it as `1 + exp(t)`, where neither matters.
const EXP_MIN: f32 = -87.0;
const EXP_MAX: f32 = 88.0;

/// `e^x` for `x` in [`EXP_MIN`, `EXP_MAX`] (clamped outside; NaN stays NaN), within about
/// one float32 rounding: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2` (Cody–Waite: `ln 2` in two
/// parts, the first exact in 9 bits so `n · LN2_HI` is exact), `e^r` by its Taylor series to
/// degree 7 (truncation below 7e-9 relative), and `2^n` built in the exponent bits. No
/// branches, no table and no libm call, so loops over it vectorise.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // 0x3F31_8000, 355/512
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 · 2^23 rounds to an integer (ties to even): that float's ulp is 1, and its
    // low mantissa bits then hold n in two's complement.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < EXP_MIN {
        EXP_MIN
    } else if x > EXP_MAX {
        EXP_MAX
    } else {
        x
    };
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // n + 127 in the exponent field: the bits of `shifted` are 0x4B40_0000 + n.
    let scale = f32::from_bits(shifted.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    p * scale
}

/// `g · sigmoid(g) · u` as `g · u / (1 + e^-g)`: exact limits at both ends (0 for very
/// negative `g`, `g · u` for very positive), no overflow.
#[inline(always)]
fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g * u / (1.0 + exp(-g));
    }
}

/// GELU with the tanh approximation times `u`: `0.5 · g · (1 + tanh(t)) = g · sigmoid(2t)`
/// with `t = √(2/π) · (g + 0.044715 g³)`, computed as `g · u / (1 + e^-2t)`.
#[inline(always)]
fn gelu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    const TWO_SQRT_2_OVER_PI: f32 = 2.0 * 0.797_884_6; // 2 · √(2/π)
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let t2 = (g + g * g * g * 0.044715) * TWO_SQRT_2_OVER_PI;
        *o = g * u / (1.0 + exp(-t2));
    }
}

/// [`rms_norm_row`]'s body.
#[inline(always)]
fn rms_norm(x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) {
    // 16 partial sums in one array: the vectoriser keeps them in registers (the order of a
    // single running sum would forbid it).
    let mut partial = [0f32; 16];
    let (chunks, tail) = x.as_chunks::<16>();
    for chunk in chunks {
        for (p, &v) in partial.iter_mut().zip(chunk) {
            *p += v * v;
        }
    }
    let mut sum = tail.iter().map(|v| v * v).sum::<f32>();
    sum += partial.iter().sum::<f32>();
    let rms = (sum / x.len() as f32 + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(gamma) {
        *o = v / rms * g;
    }
}

/// The kernels compiled with wider instruction sets (same bodies, inlined).
#[cfg(target_arch = "x86_64")]
mod x86 {
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn silu_mul_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
        super::silu_mul(gate, up, out)
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
        super::silu_mul(gate, up, out)
    }

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gelu_mul_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
        super::gelu_mul(gate, up, out)
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
        super::gelu_mul(gate, up, out)
    }

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rms_norm_avx512(x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) {
        super::rms_norm(x, gamma, eps, out)
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rms_norm_avx2(x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) {
        super::rms_norm(x, gamma, eps, out)
    }
}

#[cfg(test)]
#[path = "host_ops_tests.rs"]
mod tests;
