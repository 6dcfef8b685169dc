//! Per-type decoding for the matrix-vector kernel: each `#[cube]` function returns one
//! 32-element chunk's contribution, scales included, to a dot product with the activations
//! `x[x_at + l · x_col]` (l in 0..32), in f32. Each mirrors `gguf::dequant` (the same
//! products of scales before they meet the quants), reading the packed words of
//! [`super::layout`]: block `block`'s words from `block · words_per_block` on, its 2-byte
//! scale piece at `scales_at + block / 2`. A 32-element block is one chunk; a K-quant
//! super-block is 8 (`sub` in 0..8, elements `32 · sub ..`), so 32 units have work even in rows
//! of a few super-blocks.

use cubecl::prelude::*;

/// The f16 in the low 16 bits of `bits`, as an f32, exactly, with integer operations only:
/// WGSL reads no 16-bit storage, and `SHADER_F16` is optional.
#[cube]
pub(super) fn f16_bits_to_f32(bits: u32) -> f32 {
    let sign = (bits & 0x8000) << 16;
    let exponent = (bits >> 10) & 0x1F;
    let mantissa = (bits & 0x3FF) << 13;
    // A normal f16: rebias the exponent (15 → 127) and widen the mantissa.
    let mut magnitude = f32::reinterpret(((exponent + 112) << 23) | mantissa);
    if exponent == 0 {
        // Zero or subnormal: m · 2⁻²⁴ = 2⁻¹⁴ · (1 + m/1024) − 2⁻¹⁴, an exact subtraction that
        // never makes a subnormal f32 (which a GPU may flush to zero). 0x3880_0000 is 2⁻¹⁴.
        magnitude = f32::reinterpret(0x3880_0000 | mantissa) - f32::reinterpret(0x3880_0000u32);
    }
    if exponent == 31 {
        magnitude = f32::reinterpret(0x7F80_0000 | mantissa);
    }
    f32::reinterpret(u32::reinterpret(magnitude) | sign)
}

/// Block `block`'s 2-byte scale piece (`d`) as an f32: two f16 per word after the quants.
#[cube]
pub(super) fn block_scale(words: &Tensor<u32>, scales_at: usize, block: usize) -> f32 {
    let word = words[scales_at + block / 2];
    let shift = ((block % 2) * 16) as u32;
    f16_bits_to_f32((word >> shift) & 0xFFFF)
}

/// Byte `k` of the bytes from word `at` on (little-endian words).
#[cube]
pub(super) fn byte_at(words: &Tensor<u32>, at: usize, k: usize) -> u32 {
    (words[at + k / 4] >> (((k % 4) * 8) as u32)) & 0xFF
}

/// Q8_0: 8 words of i8, value = q · d.
#[cube]
pub(super) fn q8_0_chunk<F: Float>(
    x: &Tensor<F>,
    words: &Tensor<u32>,
    x_at: usize,
    x_col: usize,
    block: usize,
    scales_at: usize,
) -> f32 {
    let first_word = block * 8;
    let mut dot = 0.0f32;
    for k in 0..8usize {
        let word = words[first_word + k];
        for t in 0..4usize {
            let q = (word >> ((t * 8) as u32)) & 0xFF;
            // Sign-extend the byte: (q ^ 0x80) − 128 maps 0..=255 to 0, …, 127, −128, …, −1.
            let value = f32::cast_from(i32::cast_from(q ^ 0x80) - 128);
            dot += value * f32::cast_from(x[x_at + (k * 4 + t) * x_col]);
        }
    }
    dot * block_scale(words, scales_at, block)
}

/// Q4_0: 4 words of nibbles (byte j: element j low, element j + 16 high), value = (q − 8) · d.
#[cube]
pub(super) fn q4_0_chunk<F: Float>(
    x: &Tensor<F>,
    words: &Tensor<u32>,
    x_at: usize,
    x_col: usize,
    block: usize,
    scales_at: usize,
) -> f32 {
    let first_word = block * 4;
    let mut dot = 0.0f32;
    for k in 0..4usize {
        let word = words[first_word + k];
        for t in 0..4usize {
            let q = (word >> ((t * 8) as u32)) & 0xFF;
            let low = f32::cast_from(q & 0xF) - 8.0;
            let high = f32::cast_from(q >> 4) - 8.0;
            let j = k * 4 + t;
            dot += low * f32::cast_from(x[x_at + j * x_col]);
            dot += high * f32::cast_from(x[x_at + (j + 16) * x_col]);
        }
    }
    dot * block_scale(words, scales_at, block)
}

/// Q4_1: d · Σ q·x + m · Σ x (Q4_0's nibble layout; the block's piece word holds `d` low and
/// `m` high).
#[cube]
pub(super) fn q4_1_chunk<F: Float>(
    x: &Tensor<F>,
    words: &Tensor<u32>,
    x_at: usize,
    x_col: usize,
    block: usize,
    scales_at: usize,
) -> f32 {
    let first_word = block * 4;
    let mut dot = 0.0f32;
    let mut sum = 0.0f32;
    for k in 0..4usize {
        let word = words[first_word + k];
        for t in 0..4usize {
            let q = (word >> ((t * 8) as u32)) & 0xFF;
            let j = k * 4 + t;
            let (low_x, high_x) = (f32::cast_from(x[x_at + j * x_col]), f32::cast_from(x[x_at + (j + 16) * x_col]));
            dot += f32::cast_from(q & 0xF) * low_x + f32::cast_from(q >> 4) * high_x;
            sum += low_x + high_x;
        }
    }
    let scales = words[scales_at + block];
    dot * f16_bits_to_f32(scales & 0xFFFF) + sum * f16_bits_to_f32(scales >> 16)
}

/// Q5_0: word 0 the fifth bits (bit j for element j), words 1..5 Q4_0's nibbles;
/// value = (q − 16) · d.
#[cube]
pub(super) fn q5_0_chunk<F: Float>(
    x: &Tensor<F>,
    words: &Tensor<u32>,
    x_at: usize,
    x_col: usize,
    block: usize,
    scales_at: usize,
) -> f32 {
    let first_word = block * 5;
    let qh = words[first_word];
    let mut dot = 0.0f32;
    for k in 0..4usize {
        let word = words[first_word + 1 + k];
        for t in 0..4usize {
            let q = (word >> ((t * 8) as u32)) & 0xFF;
            let j = k * 4 + t;
            let low = (q & 0xF) | (((qh >> (j as u32)) & 1) << 4);
            let high = (q >> 4) | (((qh >> ((j + 16) as u32)) & 1) << 4);
            dot += f32::cast_from(i32::cast_from(low) - 16) * f32::cast_from(x[x_at + j * x_col]);
            dot += f32::cast_from(i32::cast_from(high) - 16) * f32::cast_from(x[x_at + (j + 16) * x_col]);
        }
    }
    dot * block_scale(words, scales_at, block)
}

/// Q4_K (`fifth_bit` false, 36 words a block) and Q5_K (true, 44 words), sub-block `sub`:
/// word 0 holds `d` low and `dmin` high, words 1..4 the 12 bytes of 6-bit scales and mins
/// (`get_scale_min_k4`), Q5_K's words 4..12 the fifth bits (bit `sub` of byte l for element
/// l), then 32 bytes of nibbles per 64 elements (sub-block `sub` in the low nibbles when even,
/// the high ones when odd); value = (d · sc) · q − dmin · m.
#[cube]
pub(super) fn q45_k_chunk<F: Float>(
    x: &Tensor<F>,
    words: &Tensor<u32>,
    x_at: usize,
    x_col: usize,
    block: usize,
    sub: usize,
    #[comptime] fifth_bit: bool,
) -> f32 {
    let first_word = block * comptime![if fifth_bit { 44usize } else { 36usize }];
    let header = words[first_word];
    let scales = first_word + 1;
    // get_scale_min_k4: sub-blocks 0..4 in the low 6 bits of bytes sub and sub + 4; 4..8 split
    // into byte sub + 4's nibbles and the top 2 bits of bytes sub − 4 and sub.
    let low = byte_at(words, scales, sub);
    let high = byte_at(words, scales, sub + 4);
    let mut sc = low & 63;
    let mut mn = high & 63;
    if sub >= 4 {
        sc = (high & 0x0F) | ((byte_at(words, scales, sub - 4) >> 6) << 4);
        mn = (high >> 4) | ((low >> 6) << 4);
    }
    let quants = first_word + comptime![if fifth_bit { 12usize } else { 4usize }] + (sub / 2) * 8;
    let shift = ((sub % 2) * 4) as u32;
    let mut dot = 0.0f32;
    let mut sum = 0.0f32;
    for k in 0..8usize {
        let word = words[quants + k];
        let mut high_bits = 0u32;
        if comptime![fifth_bit] {
            high_bits = words[first_word + 4 + k] >> (sub as u32);
        }
        for t in 0..4usize {
            let mut q = (word >> ((t * 8) as u32 + shift)) & 0xF;
            if comptime![fifth_bit] {
                q |= ((high_bits >> ((t * 8) as u32)) & 1) << 4;
            }
            let value = f32::cast_from(x[x_at + (k * 4 + t) * x_col]);
            dot += f32::cast_from(q) * value;
            sum += value;
        }
    }
    let d = f16_bits_to_f32(header & 0xFFFF) * f32::cast_from(sc);
    let m = f16_bits_to_f32(header >> 16) * f32::cast_from(mn);
    d * dot - m * sum
}

/// Q6_K (52 words a block, `d` the block's piece), chunk `sub` = 4·group + quarter: its low
/// nibbles are bytes 64·group + 32·(quarter % 2) + l of `ql` (words 0..32; the high nibbles when
/// quarter ≥ 2), its 2 high bits bits 2·quarter of byte 32·group + l of `qh` (words 32..48),
/// its scales the i8 bytes 8·group + 2·quarter (l < 16) and + 1 (l ≥ 16) of words 48..52;
/// value = (d · sc) · (q − 32).
#[cube]
pub(super) fn q6_k_chunk<F: Float>(
    x: &Tensor<F>,
    words: &Tensor<u32>,
    x_at: usize,
    x_col: usize,
    block: usize,
    sub: usize,
    scales_at: usize,
) -> f32 {
    let first_word = block * 52;
    let (group, quarter) = (sub / 4, sub % 4);
    let low = first_word + group * 16 + (quarter % 2) * 8;
    let low_shift = ((quarter / 2) * 4) as u32;
    let high = first_word + 32 + group * 8;
    let high_shift = (quarter * 2) as u32;
    let mut first_half = 0.0f32;
    let mut second_half = 0.0f32;
    for k in 0..8usize {
        let (low_word, high_word) = (words[low + k], words[high + k]);
        let mut part = 0.0f32;
        for t in 0..4usize {
            let at = (t * 8) as u32;
            let q = ((low_word >> (at + low_shift)) & 0xF) | (((high_word >> (at + high_shift)) & 3) << 4);
            part += f32::cast_from(i32::cast_from(q) - 32) * f32::cast_from(x[x_at + (k * 4 + t) * x_col]);
        }
        if k < 4 {
            first_half += part;
        } else {
            second_half += part;
        }
    }
    let d = block_scale(words, scales_at, block);
    let scale = group * 8 + quarter * 2;
    let first_scale = f32::cast_from(i32::cast_from(byte_at(words, first_word + 48, scale) ^ 0x80) - 128);
    let second_scale = f32::cast_from(i32::cast_from(byte_at(words, first_word + 48, scale + 1) ^ 0x80) - 128);
    (d * first_scale) * first_half + (d * second_scale) * second_half
}
