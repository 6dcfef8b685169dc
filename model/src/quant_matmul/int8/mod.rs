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
//! Against the K-quants the activations share one scale per 256 elements, as llama.cpp's
//! `Q8_K`: a super-block's chunks, with their small integer scales, then add up in integers
//! and only the super-block's sum is converted to float ([`ktile`]); the 32-element types
//! keep one scale per 32 ([`kernel`]).
//!
//! Rounding the activations is the only approximation: the integer sums are exact and the
//! float part differs from the f32 path by rounding only. Its effect on the logits is
//! measured against the golden data in `model/tests/golden.rs`.

#[cfg(target_arch = "x86_64")]
mod blocks;
#[cfg(target_arch = "x86_64")]
mod kernel;
#[cfg(target_arch = "x86_64")]
mod ktile;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests;

#[cfg(target_arch = "x86_64")]
pub(super) use kernel::{Int8Cpu, tile_rows};

use crate::gguf::GgmlType;

/// Elements per activation chunk: the unit of the integer dot products and of the sums.
pub(super) const QK8: usize = 32;

/// Elements per activation scale for products with `ggml_type`: 32 (llama.cpp's `Q8_0`) for
/// the 32-element types; 256 (its `Q8_K`) for the K-quants, so that a super-block's eight
/// chunks share one activation scale and add up in integers ([`ktile`]).
pub(super) fn scale_block(ggml_type: GgmlType) -> usize {
    match ggml_type {
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => 256,
        _ => QK8,
    }
}

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

/// Activation rows `x[n, cols]` rounded to 8 bits in blocks of `block` (32 or 256) elements,
/// as llama.cpp's `Q8_0` and `Q8_K`: `x[e] ≈ scales[e / block] · quants[e]` with
/// `scales = max|x| / 127` per block.
#[derive(Debug, Default)]
pub(super) struct Q8Activations {
    cols: usize,
    block: usize,
    /// `n × cols` quants in −127..=127.
    quants: Vec<i8>,
    /// `n × cols / block` block scales.
    scales: Vec<f32>,
    /// `n × cols / 32`: the sum of each 32-element chunk's quants …
    chunk_sums: Vec<i32>,
    /// … and that times its scale, for the weights' min term.
    sums: Vec<f32>,
}

/// One row of [`Q8Activations`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Q8Row<'a> {
    pub quants: &'a [i8],
    /// One per `block` elements.
    pub scales: &'a [f32],
    /// One per 32 elements.
    pub chunk_sums: &'a [i32],
    /// One per 32 elements.
    pub sums: &'a [f32],
}

impl Q8Activations {
    /// Rounds `x` (`n` rows of `cols`, a multiple of `block`, itself 32 or 256) reusing
    /// this value's buffers.
    pub(super) fn quantize(&mut self, x: &[f32], cols: usize, block: usize) {
        debug_assert!(block.is_multiple_of(QK8) && cols.is_multiple_of(block) && x.len().is_multiple_of(cols.max(1)));
        let blocks = x.len() / block;
        self.cols = cols;
        self.block = block;
        self.quants.resize(x.len(), 0);
        self.scales.resize(blocks, 0.0);
        self.chunk_sums.resize(x.len() / QK8, 0);
        self.sums.resize(x.len() / QK8, 0.0);
        let parts = x.chunks_exact(block).zip(self.quants.chunks_exact_mut(block));
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
            let chunks = block / QK8;
            for (c, chunk) in qs.chunks_exact(QK8).enumerate() {
                let sum = chunk.iter().map(|&q| i32::from(q)).sum::<i32>();
                self.chunk_sums[b * chunks + c] = sum;
                self.sums[b * chunks + c] = d * sum as f32;
            }
        }
    }

    /// Row `i`.
    pub(super) fn row(&self, i: usize) -> Q8Row<'_> {
        let (blocks, chunks) = (self.cols / self.block, self.cols / QK8);
        Q8Row {
            quants: &self.quants[i * self.cols..(i + 1) * self.cols],
            scales: &self.scales[i * blocks..(i + 1) * blocks],
            chunk_sums: &self.chunk_sums[i * chunks..(i + 1) * chunks],
            sums: &self.sums[i * chunks..(i + 1) * chunks],
        }
    }

    /// Elements per scale.
    pub(super) fn block(&self) -> usize {
        self.block
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
        q.quantize(&x, 64, 32);
        assert_eq!(q.rows(), 1);
        let Q8Row { quants, scales, sums, chunk_sums } = q.row(0);
        assert_eq!(chunk_sums.len(), 2);
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
        q.quantize(&[0.0; 32], 32, 32);
        let Q8Row { quants, scales, sums, .. } = q.row(0);
        assert!(quants.iter().all(|&v| v == 0));
        assert_eq!((scales[0], sums[0]), (0.0, 0.0));
    }

    #[test]
    fn buffers_are_reused_for_smaller_batches() {
        let mut q = Q8Activations::default();
        q.quantize(&[1.0; 128], 64, 32);
        assert_eq!(q.rows(), 2);
        q.quantize(&[2.0; 64], 64, 32);
        assert_eq!(q.rows(), 1);
        assert_eq!(q.row(0).quants[0], 127);
    }

    #[test]
    fn k_quant_rows_share_one_scale_per_256_and_keep_sums_per_32() {
        let x: Vec<f32> = (0..512).map(|i| if i == 300 { 12.7 } else { (i % 7) as f32 * 0.01 }).collect();
        let mut q = Q8Activations::default();
        q.quantize(&x, 512, 256);
        let row = q.row(0);
        assert_eq!((row.scales.len(), row.chunk_sums.len(), q.block()), (2, 16, 256));
        assert!((row.scales[1] - 0.1).abs() < 1e-6, "the outlier sets the second block's scale");
        assert_eq!(row.quants[300], 127);
        for c in 0..16 {
            let sum: i32 = row.quants[32 * c..32 * c + 32].iter().map(|&v| i32::from(v)).sum();
            assert_eq!(row.chunk_sums[c], sum);
            assert!((row.sums[c] - row.scales[c / 8] * sum as f32).abs() < 1e-4);
        }
    }
}
