//! Per-type decoding shared by both kernels: [`chunk_values`] writes the 32 dequantized
//! weights of one chunk of a weight row (a 32-element block, or a 32-element sub-block of a
//! K-quant super-block) as f32 into registers; the matrix-vector kernel (`super::kernels`)
//! dots them with the activations, the tiled one (`super::tiled`) stores them in shared
//! memory for a tile of activation rows.
//!
//! The packed words of [`super::layout`] are read four at a time (`vec4<u32>`, [`Quads`]): a
//! block's quants start on a 4-word boundary for every kind but Q5_0, and Mesa's lavapipe
//! pays for each load instruction lane by lane, so a 4-word load costs about what a 1-word
//! one does. Single words (the scale pieces, Q5_0's 5-word blocks) come through [`word_at`].
//! The values are computed in `gguf::dequant`'s order (`q · d + m`, `(d · sc) · q − dmin · m`,
//! `(d · sc) · (q − 32)`), so they are the host's dequantized weights up to the device's
//! rounding of those one or two operations.

use cubecl::prelude::*;

/// The packed words as `vec4<u32>`: quad `k` holds words `4k .. 4k + 4`.
pub(super) type Quads = Tensor<Vector<u32, Const<4>>>;

/// The kernels' compile-time kind codes.
pub(super) const KIND_Q8_0: u32 = 0;
pub(super) const KIND_Q4_0: u32 = 1;
pub(super) const KIND_Q4_1: u32 = 2;
pub(super) const KIND_Q5_0: u32 = 3;
pub(super) const KIND_Q4_K: u32 = 4;
pub(super) const KIND_Q5_K: u32 = 5;
pub(super) const KIND_Q6_K: u32 = 6;

/// Elements a chunk covers.
pub(super) const CHUNK_ELEMENTS: usize = 32;

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

/// Word `k` (0..4, a runtime value) of `quad`, by selects (no dynamic vector index).
#[cube]
fn quad_word(quad: Vector<u32, Const<4>>, k: usize) -> u32 {
    let low = select(k == 0, quad.extract(0usize), quad.extract(1usize));
    let high = select(k == 2, quad.extract(2usize), quad.extract(3usize));
    select(k < 2, low, high)
}

/// Byte `k` (0..16) of `quad`'s 16 little-endian bytes.
#[cube]
fn quad_byte(quad: Vector<u32, Const<4>>, k: usize) -> u32 {
    (quad_word(quad, k / 4) >> (((k % 4) * 8) as u32)) & 0xFF
}

/// Byte `k` (0..16, known at compile time) of `quad`.
#[cube]
fn byte_of(quad: Vector<u32, Const<4>>, #[comptime] k: usize) -> u32 {
    (quad.extract(k / 4) >> comptime![((k % 4) * 8) as u32]) & 0xFF
}

/// Word `at` of the packed buffer.
#[cube]
pub(super) fn word_at(words: &Quads, at: usize) -> u32 {
    quad_word(words[at / 4], at % 4)
}

/// Block `block`'s 2-byte scale piece (`d`) as an f32: two f16 per word after the quants.
#[cube]
fn block_scale(words: &Quads, scales_at: usize, block: usize) -> f32 {
    let word = word_at(words, scales_at + block / 2);
    f16_bits_to_f32((word >> (((block % 2) * 16) as u32)) & 0xFFFF)
}

/// The 32 values of chunk `c` of weight row `r` (rows of `chunks_per_row` chunks) into
/// `values[0..32]`; `scales_at` is where the matrix's scale pieces start.
#[cube]
pub(super) fn chunk_values(
    words: &Quads,
    r: usize,
    c: usize,
    chunks_per_row: usize,
    scales_at: usize,
    values: &mut Array<f32>,
    #[comptime] kind: u32,
) {
    if comptime![kind == KIND_Q4_K || kind == KIND_Q5_K || kind == KIND_Q6_K] {
        // Chunk c of the row is sub-block c % 8 of its super-block c / 8.
        let block = r * (chunks_per_row / 8) + c / 8;
        if comptime![kind == KIND_Q6_K] {
            q6_k_values(words, block, c % 8, scales_at, values);
        } else {
            q45_k_values(words, block, c % 8, values, comptime![kind == KIND_Q5_K]);
        }
    } else {
        let block = r * chunks_per_row + c;
        if comptime![kind == KIND_Q4_1 || kind == KIND_Q4_0] {
            q4_values(words, block, scales_at, values, comptime![kind == KIND_Q4_1]);
        } else if comptime![kind == KIND_Q5_0] {
            q5_0_values(words, block, scales_at, values);
        } else {
            q8_0_values(words, block, scales_at, values);
        }
    }
}

/// Q8_0: 8 words (2 quads) of i8, value = q · d.
#[cube]
fn q8_0_values(words: &Quads, block: usize, scales_at: usize, values: &mut Array<f32>) {
    let d = block_scale(words, scales_at, block);
    #[unroll]
    for h in 0..2usize {
        let quad = words[block * 2 + h];
        #[unroll]
        for b in 0..16usize {
            // Sign-extend the byte: (q ^ 0x80) − 128 maps 0..=255 to 0, …, 127, −128, …, −1.
            let value = f32::cast_from(i32::cast_from(byte_of(quad, b) ^ 0x80) - 128);
            values[h * 16 + b] = value * d;
        }
    }
}

/// Q4_0 (`with_min` false: value = (q − 8) · d) and Q4_1 (true: value = q · d + m, `d` and `m`
/// in the block's piece word): 4 words (a quad) of nibbles, byte j holding element j low and
/// j + 16 high.
#[cube]
fn q4_values(words: &Quads, block: usize, scales_at: usize, values: &mut Array<f32>, #[comptime] with_min: bool) {
    // Q4_1's piece is a word a block (`d` low, `m` high), Q4_0's a half word.
    let piece = word_at(words, scales_at + block / comptime![if with_min { 1usize } else { 2usize }]);
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
    let quad = words[block];
    #[unroll]
    for j in 0..16usize {
        let q = byte_of(quad, j);
        let low = f32::cast_from(q & 0xF) - offset;
        let high = f32::cast_from(q >> 4) - offset;
        if comptime![with_min] {
            values[j] = low * d + m;
            values[j + 16] = high * d + m;
        } else {
            values[j] = low * d;
            values[j + 16] = high * d;
        }
    }
}

/// Q5_0: word 0 the fifth bits (bit j for element j), words 1..5 Q4_0's nibbles; value =
/// (q − 16) · d. Its 5-word blocks are not quad-aligned: words one by one.
#[cube]
fn q5_0_values(words: &Quads, block: usize, scales_at: usize, values: &mut Array<f32>) {
    let first_word = block * 5;
    let qh = word_at(words, first_word);
    let d = block_scale(words, scales_at, block);
    #[unroll]
    for w in 0..4usize {
        let word = word_at(words, first_word + 1 + w);
        #[unroll]
        for t in 0..4usize {
            let q = (word >> ((t * 8) as u32)) & 0xFF;
            let j = w * 4 + t;
            let low = (q & 0xF) | (((qh >> (j as u32)) & 1) << 4);
            let high = (q >> 4) | (((qh >> ((j + 16) as u32)) & 1) << 4);
            values[j] = f32::cast_from(i32::cast_from(low) - 16) * d;
            values[j + 16] = f32::cast_from(i32::cast_from(high) - 16) * d;
        }
    }
}

/// Q4_K (`fifth_bit` false, 36 words a block) and Q5_K (true, 44 words), sub-block `sub`:
/// word 0 holds `d` low and `dmin` high, words 1..4 the 12 bytes of 6-bit scales and mins
/// (`get_scale_min_k4`; the block's first quad holds both), Q5_K's words 4..12 the fifth bits
/// (bit `sub` of byte l for element l), then 32 bytes of nibbles per 64 elements (sub-block
/// `sub` in the low nibbles when even, the high ones when odd); value = (d · sc) · q − dmin · m.
#[cube]
fn q45_k_values(words: &Quads, block: usize, sub: usize, values: &mut Array<f32>, #[comptime] fifth_bit: bool) {
    let first_quad = block * comptime![if fifth_bit { 11usize } else { 9usize }];
    let head = words[first_quad];
    let header = head.extract(0usize);
    // get_scale_min_k4 (scale byte j is byte 4 + j of the head quad): sub-blocks 0..4 in the
    // low 6 bits of bytes sub and sub + 4; 4..8 split into byte sub + 4's nibbles and the top
    // 2 bits of bytes sub − 4 and sub.
    let low = quad_byte(head, 4 + sub);
    let high = quad_byte(head, 8 + sub);
    let mut sc = low & 63;
    let mut mn = high & 63;
    if sub >= 4 {
        sc = (high & 0x0F) | ((quad_byte(head, sub) >> 6) << 4);
        mn = (high >> 4) | ((low >> 6) << 4);
    }
    let d = f16_bits_to_f32(header & 0xFFFF) * f32::cast_from(sc);
    let m = f16_bits_to_f32(header >> 16) * f32::cast_from(mn);
    let quants = first_quad + comptime![if fifth_bit { 3usize } else { 1usize }] + (sub / 2) * 2;
    let shift = ((sub % 2) * 4) as u32;
    #[unroll]
    for h in 0..2usize {
        let quad = words[quants + h];
        let mut fifth = quad;
        if comptime![fifth_bit] {
            fifth = words[first_quad + 1 + h];
        }
        #[unroll]
        for w in 0..4usize {
            let word = quad.extract(w);
            let high_bits = fifth.extract(w) >> (sub as u32);
            #[unroll]
            for t in 0..4usize {
                let mut q = (word >> ((t * 8) as u32 + shift)) & 0xF;
                if comptime![fifth_bit] {
                    q |= ((high_bits >> ((t * 8) as u32)) & 1) << 4;
                }
                values[(h * 4 + w) * 4 + t] = d * f32::cast_from(q) - m;
            }
        }
    }
}

/// Q6_K (52 words a block, `d` the block's piece), chunk `sub` = 4·group + quarter: its low
/// nibbles are bytes 64·group + 32·(quarter % 2) + l of `ql` (words 0..32; the high nibbles
/// when quarter ≥ 2), its 2 high bits bits 2·quarter of byte 32·group + l of `qh` (words
/// 32..48), its scales the i8 bytes 8·group + 2·quarter (l < 16) and + 1 (l ≥ 16) of words
/// 48..52 (the block's last quad); value = (d · sc) · (q − 32).
#[cube]
fn q6_k_values(words: &Quads, block: usize, sub: usize, scales_at: usize, values: &mut Array<f32>) {
    let first_quad = block * 13;
    let (group, quarter) = (sub / 4, sub % 4);
    let low = first_quad + group * 4 + (quarter % 2) * 2;
    let low_shift = ((quarter / 2) * 4) as u32;
    let high = first_quad + 8 + group * 2;
    let high_shift = (quarter * 2) as u32;
    let d = block_scale(words, scales_at, block);
    // Scale bytes 2·(4·group + quarter) and the next: both in word 2·group + quarter / 2.
    let scale_word = quad_word(words[first_quad + 12], group * 2 + quarter / 2);
    let scale_shift = ((quarter % 2) * 16) as u32;
    let first = (scale_word >> scale_shift) & 0xFF;
    let second = (scale_word >> (scale_shift + 8)) & 0xFF;
    let first_scale = d * f32::cast_from(i32::cast_from(first ^ 0x80) - 128);
    let second_scale = d * f32::cast_from(i32::cast_from(second ^ 0x80) - 128);
    #[unroll]
    for h in 0..2usize {
        let (low_quad, high_quad) = (words[low + h], words[high + h]);
        // Elements 0..16 (the first quad) take the first scale, 16..32 the second.
        let chunk_scale = select(h == 1, second_scale, first_scale);
        #[unroll]
        for w in 0..4usize {
            let (low_word, high_word) = (low_quad.extract(w), high_quad.extract(w));
            #[unroll]
            for t in 0..4usize {
                let at = (t * 8) as u32;
                let q = ((low_word >> (at + low_shift)) & 0xF) | (((high_word >> (at + high_shift)) & 3) << 4);
                values[(h * 4 + w) * 4 + t] = chunk_scale * f32::cast_from(i32::cast_from(q) - 32);
            }
        }
    }
}
