//! Products with 8-bit activations: the opt-in `--activations q8` path.
//!
//! The default path keeps activations in f32 and dequantizes each weight exactly, which is
//! why our logits match the float64 reference. On CPUs it costs a float conversion and an
//! FMA per weight. llama.cpp instead rounds each 32-element slice of an activation row to
//! 8-bit integers with one f32 scale (its `Q8_0`/`Q8_1` blocks) and multiplies them with the
//! weights' small integer quants in integer dot products (`vpmaddubsw`, or `vpdpbusd` with
//! VNNI): 32 multiply-adds in one or two instructions, then one float scale per block.
//! This module does the same for the types of the usual GGUF files — Q4_0, Q4_1, Q5_0,
//! Q8_0, Q4_K, Q5_K and Q6_K.
//!
//! Every weight type is seen as 32-element chunks (one block, or a K-quant super-block's
//! eighth) of small integer quants `q` with, per 16-element half, a scale `a`, and a min `o`
//! per chunk: weight `e` is `a[e / 16] · q[e] + o` — e.g. Q4_1: `a = d, o = m`; Q4_0:
//! `a = d`, `q` = nibble − 8; Q6_K: `a = d · scale₁₆`, `q` = 6-bit quant − 32. Against an
//! activation chunk `x ≈ dx · qx`:
//!
//! `Σ w·x ≈ dx · Σ_h a[h] · Σ_{e∈h} q[e]·qx[e]  +  o · (dx · Σ_e qx[e])`
//!
//! The first sum is the integer dot product, the second uses the activation's block sums,
//! computed once per row when the activations are quantized ([`Q8Activations`]).
//!
//! Rounding the activations is the only approximation: the integer sums are exact and the
//! float part differs from the f32 path by rounding only. Its effect on the logits is
//! measured against the golden data in `model/tests/golden.rs`.

#[cfg(target_arch = "x86_64")]
mod blocks;
#[cfg(target_arch = "x86_64")]
mod kernel;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests;

#[cfg(target_arch = "x86_64")]
pub(super) use kernel::{Int8Cpu, tile_rows};

use crate::gguf::GgmlType;

/// Elements per activation block (one f32 scale each).
pub(super) const QK8: usize = 32;

/// Types with an integer kernel.
pub(super) fn has_int8(ggml_type: GgmlType) -> bool {
    matches!(
        ggml_type,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q8_0
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
    )
}

/// Activation rows `x[n, cols]` rounded to 8 bits in blocks of [`QK8`], as llama.cpp's
/// `Q8_0`: `x[e] ≈ scales[e / 32] · quants[e]` with `scales = max|x| / 127` per block.
#[derive(Debug, Default)]
pub(super) struct Q8Activations {
    cols: usize,
    /// `n × cols` quants in −127..=127.
    quants: Vec<i8>,
    /// `n × cols / 32` block scales.
    scales: Vec<f32>,
    /// `n × cols / 32`: a block's scale times the sum of its quants, for the weights' min
    /// term.
    sums: Vec<f32>,
}

impl Q8Activations {
    /// Rounds `x` (`n` rows of `cols`, a multiple of [`QK8`]), reusing this value's buffers.
    pub(super) fn quantize(&mut self, x: &[f32], cols: usize) {
        debug_assert!(cols.is_multiple_of(QK8) && x.len().is_multiple_of(cols.max(1)));
        let blocks = x.len() / QK8;
        self.cols = cols;
        self.quants.resize(x.len(), 0);
        self.scales.resize(blocks, 0.0);
        self.sums.resize(blocks, 0.0);
        let parts = x.chunks_exact(QK8).zip(self.quants.chunks_exact_mut(QK8));
        for (b, (xs, qs)) in parts.enumerate() {
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (q, &v) in qs.iter_mut().zip(xs) {
                // `round` (half away from zero) as llama.cpp's `roundf`; |v · inv| ≤ 127
                // up to rounding, and the clamp keeps `-128` out for the sign trick.
                *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
            }
            self.scales[b] = d;
            self.sums[b] = d * qs.iter().map(|&q| i32::from(q)).sum::<i32>() as f32;
        }
    }

    /// Row `i`: its quants, block scales and block sums.
    pub(super) fn row(&self, i: usize) -> (&[i8], &[f32], &[f32]) {
        let blocks = self.cols / QK8;
        (
            &self.quants[i * self.cols..(i + 1) * self.cols],
            &self.scales[i * blocks..(i + 1) * blocks],
            &self.sums[i * blocks..(i + 1) * blocks],
        )
    }

    /// Rows held.
    pub(super) fn rows(&self) -> usize {
        self.quants.len().checked_div(self.cols).unwrap_or(0)
    }
}

#[cfg(test)]
mod quantize_tests {
    use super::*;

    #[test]
    fn quantization_rounds_each_block_to_its_own_scale() {
        let mut x = vec![0.0f32; 64];
        for (i, v) in x.iter_mut().enumerate() {
            *v = if i < 32 { (i as f32 - 16.0) * 0.5 } else { (i as f32 - 40.0) * 1e-3 };
        }
        let mut q = Q8Activations::default();
        q.quantize(&x, 64);
        assert_eq!(q.rows(), 1);
        let (quants, scales, sums) = q.row(0);
        assert!((scales[0] - 8.0 / 127.0).abs() < 1e-7);
        assert!((scales[1] - 0.023 / 127.0).abs() < 1e-9);
        assert_eq!(quants[0], -127); // -8.0, the block's largest magnitude
        assert_eq!(quants[63], 127); // 0.023
        for (e, &v) in x.iter().enumerate() {
            let back = scales[e / 32] * f32::from(quants[e]);
            assert!((back - v).abs() <= scales[e / 32] * 0.5 + 1e-9, "element {e}: {back} vs {v}");
        }
        let block = |b: usize| scales[b] * quants[32 * b..32 * b + 32].iter().map(|&q| f32::from(q)).sum::<f32>();
        for (b, &s) in sums.iter().enumerate() {
            assert!((s - block(b)).abs() < 1e-5, "block {b}");
        }
    }

    #[test]
    fn a_zero_block_has_zero_scale_and_quants() {
        let mut q = Q8Activations::default();
        q.quantize(&[0.0; 32], 32);
        let (quants, scales, sums) = q.row(0);
        assert!(quants.iter().all(|&v| v == 0));
        assert_eq!((scales[0], sums[0]), (0.0, 0.0));
    }

    #[test]
    fn buffers_are_reused_for_smaller_batches() {
        let mut q = Q8Activations::default();
        q.quantize(&[1.0; 128], 64);
        assert_eq!(q.rows(), 2);
        q.quantize(&[2.0; 64], 64);
        assert_eq!(q.rows(), 1);
        assert_eq!(q.row(0).0[0], 127);
    }
}
