//! Per-type decoding for the tiled kernel: each `#[cube]` function writes one 32-element
//! chunk of a weight row (a block, or sub-block `sub` of a K-quant super-block) as f32 values
//! into shared memory, element `l` at `tile[at + l · stride]`, so that a cube decodes each
//! weight once and every activation row of its tile reuses it.
//!
//! The bit layouts are `super::decode`'s (the matrix-vector decoders, which fuse the same
//! decoding with a dot product instead of storing values), read through its helpers; the
//! values are computed in `gguf::dequant`'s order (`q · d + m`, `(d · sc) · q − dmin · m`,
//! `(d · sc) · (q − 32)`), so they are the host's dequantized weights up to the device's
//! rounding of those one or two operations.

use cubecl::prelude::*;

use super::decode::{block_scale, byte_at, f16_bits_to_f32};

/// Q8_0: 8 words of i8, value = q · d.
#[cube]
pub(super) fn q8_0_values(
    words: &Tensor<u32>,
    block: usize,
    scales_at: usize,
    tile: &mut Shared<[f32]>,
    at: usize,
    stride: usize,
) {
    let first_word = block * 8;
    let d = block_scale(words, scales_at, block);
    for k in 0..8usize {
        let word = words[first_word + k];
        #[unroll]
        for t in 0..4usize {
            let q = (word >> ((t * 8) as u32)) & 0xFF;
            // Sign-extend the byte, as `decode::q8_0_chunk` does.
            let value = f32::cast_from(i32::cast_from(q ^ 0x80) - 128);
            tile[at + (k * 4 + t) * stride] = value * d;
        }
    }
}

/// Q4_0 (`with_min` false: value = (q − 8) · d) and Q4_1 (true: value = q · d + m, `d` and `m`
/// in the block's piece word): 4 words of nibbles, byte j holding element j low and j + 16
/// high.
#[cube]
pub(super) fn q4_values(
    words: &Tensor<u32>,
    block: usize,
    scales_at: usize,
    tile: &mut Shared<[f32]>,
    at: usize,
    stride: usize,
    #[comptime] with_min: bool,
) {
    let first_word = block * 4;
    // Q4_1's piece is a word a block (`d` low, `m` high), Q4_0's a half word.
    let piece = words[scales_at + block / comptime![if with_min { 1usize } else { 2usize }]];
    let mut shift = 0u32;
    if comptime![!with_min] {
        shift = ((block % 2) * 16) as u32;
    }
    let d = f16_bits_to_f32((piece >> shift) & 0xFFFF);
    let mut m = f32::new(0.0);
    let mut offset = f32::new(8.0);
    if comptime![with_min] {
        m = f16_bits_to_f32(piece >> 16);
        offset = f32::new(0.0);
    }
    for k in 0..4usize {
        let word = words[first_word + k];
        #[unroll]
        for t in 0..4usize {
            let q = (word >> ((t * 8) as u32)) & 0xFF;
            let j = k * 4 + t;
            let low = f32::cast_from(q & 0xF) - offset;
            let high = f32::cast_from(q >> 4) - offset;
            if comptime![with_min] {
                tile[at + j * stride] = low * d + m;
                tile[at + (j + 16) * stride] = high * d + m;
            } else {
                tile[at + j * stride] = low * d;
                tile[at + (j + 16) * stride] = high * d;
            }
        }
    }
}

/// Q5_0: word 0 the fifth bits, words 1..5 Q4_0's nibbles; value = (q − 16) · d.
#[cube]
pub(super) fn q5_0_values(
    words: &Tensor<u32>,
    block: usize,
    scales_at: usize,
    tile: &mut Shared<[f32]>,
    at: usize,
    stride: usize,
) {
    let first_word = block * 5;
    let qh = words[first_word];
    let d = block_scale(words, scales_at, block);
    for k in 0..4usize {
        let word = words[first_word + 1 + k];
        #[unroll]
        for t in 0..4usize {
            let q = (word >> ((t * 8) as u32)) & 0xFF;
            let j = k * 4 + t;
            let low = (q & 0xF) | (((qh >> (j as u32)) & 1) << 4);
            let high = (q >> 4) | (((qh >> ((j + 16) as u32)) & 1) << 4);
            tile[at + j * stride] = f32::cast_from(i32::cast_from(low) - 16) * d;
            tile[at + (j + 16) * stride] = f32::cast_from(i32::cast_from(high) - 16) * d;
        }
    }
}

/// Q4_K (`fifth_bit` false) and Q5_K (true), sub-block `sub`: the layout of
/// `decode::q45_k_chunk`; value = (d · sc) · q − dmin · m.
#[cube]
pub(super) fn q45_k_values(
    words: &Tensor<u32>,
    block: usize,
    sub: usize,
    tile: &mut Shared<[f32]>,
    at: usize,
    stride: usize,
    #[comptime] fifth_bit: bool,
) {
    let first_word = block * comptime![if fifth_bit { 44usize } else { 36usize }];
    let header = words[first_word];
    let scales = first_word + 1;
    // get_scale_min_k4, as in `decode::q45_k_chunk`.
    let low = byte_at(words, scales, sub);
    let high = byte_at(words, scales, sub + 4);
    let mut sc = low & 63;
    let mut mn = high & 63;
    if sub >= 4 {
        sc = (high & 0x0F) | ((byte_at(words, scales, sub - 4) >> 6) << 4);
        mn = (high >> 4) | ((low >> 6) << 4);
    }
    let d = f16_bits_to_f32(header & 0xFFFF) * f32::cast_from(sc);
    let m = f16_bits_to_f32(header >> 16) * f32::cast_from(mn);
    let quants = first_word + comptime![if fifth_bit { 12usize } else { 4usize }] + (sub / 2) * 8;
    let shift = ((sub % 2) * 4) as u32;
    for k in 0..8usize {
        let word = words[quants + k];
        let mut high_bits = 0u32;
        if comptime![fifth_bit] {
            high_bits = words[first_word + 4 + k] >> (sub as u32);
        }
        #[unroll]
        for t in 0..4usize {
            let mut q = (word >> ((t * 8) as u32 + shift)) & 0xF;
            if comptime![fifth_bit] {
                q |= ((high_bits >> ((t * 8) as u32)) & 1) << 4;
            }
            tile[at + (k * 4 + t) * stride] = d * f32::cast_from(q) - m;
        }
    }
}

/// Q6_K, chunk `sub` = 4·group + quarter: the layout of `decode::q6_k_chunk`; value =
/// (d · sc) · (q − 32), `sc` one i8 scale for elements 0..16 and the next for 16..32.
#[cube]
pub(super) fn q6_k_values(
    words: &Tensor<u32>,
    block: usize,
    sub: usize,
    scales_at: usize,
    tile: &mut Shared<[f32]>,
    at: usize,
    stride: usize,
) {
    let first_word = block * 52;
    let (group, quarter) = (sub / 4, sub % 4);
    let low = first_word + group * 16 + (quarter % 2) * 8;
    let low_shift = ((quarter / 2) * 4) as u32;
    let high = first_word + 32 + group * 8;
    let high_shift = (quarter * 2) as u32;
    let d = block_scale(words, scales_at, block);
    let scale = group * 8 + quarter * 2;
    let first_scale = d * f32::cast_from(i32::cast_from(byte_at(words, first_word + 48, scale) ^ 0x80) - 128);
    let second_scale = d * f32::cast_from(i32::cast_from(byte_at(words, first_word + 48, scale + 1) ^ 0x80) - 128);
    for k in 0..8usize {
        let (low_word, high_word) = (words[low + k], words[high + k]);
        let mut chunk_scale = first_scale;
        if k >= 4 {
            chunk_scale = second_scale;
        }
        #[unroll]
        for t in 0..4usize {
            let shift = (t * 8) as u32;
            let q = ((low_word >> (shift + low_shift)) & 0xF) | (((high_word >> (shift + high_shift)) & 3) << 4);
            tile[at + (k * 4 + t) * stride] = chunk_scale * f32::cast_from(i32::cast_from(q) - 32);
        }
    }
}
