//! Dequantization of ggml tensor data to f32, bit-exact with ggml's reference
//! `dequantize_row_*` functions (ggml-quants.c).
//!
//! Exactness is the point: every value is produced by the same float operations in the same
//! order as the C reference (`x*d + m`, not a fused multiply-add; `(d * sc) * q` for Q6_K),
//! so a model dequantized here is the same function as the one llama.cpp's reference gives.
//!
//! The per-block functions (`dequantize_q4_0`, ...) take fixed-size arrays so the fused
//! quantized matmul can decode one block at a time without bounds checks or allocation;
//! [`dequantize_block`] is the same for a runtime type and [`dequantize`] does whole tensors.

use half::{bf16, f16};

use super::GgmlType;

/// Elements in a K-quant super-block.
pub const QK_K: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum DequantError {
    #[error("{0} cannot be dequantized")]
    Unsupported(GgmlType),
    #[error("{bytes} bytes do not hold {elements} elements of {ggml_type}")]
    Length { ggml_type: GgmlType, bytes: usize, elements: usize },
}

/// Dequantizes `bytes` (whole blocks of `ggml_type`) into `out`, whose length is the number of
/// elements.
pub fn dequantize(ggml_type: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    if !is_supported(ggml_type) {
        return Err(DequantError::Unsupported(ggml_type));
    }
    if ggml_type.byte_size(out.len()) != Some(bytes.len()) {
        return Err(DequantError::Length { ggml_type, bytes: bytes.len(), elements: out.len() });
    }
    match ggml_type {
        GgmlType::F32 => blocks(bytes, out, |b: &[u8; 4], o: &mut [f32; 1]| o[0] = f32::from_le_bytes(*b)),
        GgmlType::F16 => blocks(bytes, out, |b: &[u8; 2], o: &mut [f32; 1]| o[0] = f16::from_le_bytes(*b).to_f32()),
        GgmlType::BF16 => blocks(bytes, out, |b: &[u8; 2], o: &mut [f32; 1]| o[0] = bf16::from_le_bytes(*b).to_f32()),
        GgmlType::F64 => blocks(bytes, out, |b: &[u8; 8], o: &mut [f32; 1]| o[0] = f64::from_le_bytes(*b) as f32),
        GgmlType::I8 => blocks(bytes, out, |b: &[u8; 1], o: &mut [f32; 1]| o[0] = f32::from(b[0] as i8)),
        GgmlType::I16 => blocks(bytes, out, |b: &[u8; 2], o: &mut [f32; 1]| o[0] = f32::from(i16::from_le_bytes(*b))),
        GgmlType::I32 => blocks(bytes, out, |b: &[u8; 4], o: &mut [f32; 1]| o[0] = i32::from_le_bytes(*b) as f32),
        GgmlType::I64 => blocks(bytes, out, |b: &[u8; 8], o: &mut [f32; 1]| o[0] = i64::from_le_bytes(*b) as f32),
        GgmlType::Q4_0 => blocks(bytes, out, dequantize_q4_0),
        GgmlType::Q4_1 => blocks(bytes, out, dequantize_q4_1),
        GgmlType::Q5_0 => blocks(bytes, out, dequantize_q5_0),
        GgmlType::Q5_1 => blocks(bytes, out, dequantize_q5_1),
        GgmlType::Q8_0 => blocks(bytes, out, dequantize_q8_0),
        GgmlType::Q8_1 => blocks(bytes, out, dequantize_q8_1),
        GgmlType::Q2_K => blocks(bytes, out, dequantize_q2_k),
        GgmlType::Q3_K => blocks(bytes, out, dequantize_q3_k),
        GgmlType::Q4_K => blocks(bytes, out, dequantize_q4_k),
        GgmlType::Q5_K => blocks(bytes, out, dequantize_q5_k),
        GgmlType::Q6_K => blocks(bytes, out, dequantize_q6_k),
        GgmlType::Q8_K => blocks(bytes, out, dequantize_q8_k),
        GgmlType::Other(_) => return Err(DequantError::Unsupported(ggml_type)),
    }
    Ok(())
}

/// Dequantizes exactly one block: `block` must be the type's block byte size and `out` its
/// block element count (see [`GgmlType::block_layout`]). For the plain types a block is one
/// element.
pub fn dequantize_block(ggml_type: GgmlType, block: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    let length_error = || DequantError::Length { ggml_type, bytes: block.len(), elements: out.len() };
    match ggml_type.block_layout() {
        Some((elements, bytes)) if is_supported(ggml_type) => {
            if block.len() != bytes || out.len() != elements {
                return Err(length_error());
            }
            dequantize(ggml_type, block, out)
        }
        _ => Err(DequantError::Unsupported(ggml_type)),
    }
}

/// Whether [`dequantize`] handles `ggml_type`.
pub fn is_supported(ggml_type: GgmlType) -> bool {
    !matches!(ggml_type, GgmlType::Other(_))
}

/// Applies a block decoder to every block. The caller has checked that the lengths agree, so
/// the chunk remainders are empty.
#[inline(always)]
fn blocks<const B: usize, const E: usize>(bytes: &[u8], out: &mut [f32], f: impl Fn(&[u8; B], &mut [f32; E])) {
    let (ins, _) = bytes.as_chunks::<B>();
    let (outs, _) = out.as_chunks_mut::<E>();
    for (block, o) in ins.iter().zip(outs) {
        f(block, o);
    }
}

#[inline(always)]
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// `block_q4_0`: f16 scale `d`, then 16 bytes of nibbles; low nibbles are elements 0..16,
/// high nibbles 16..32; value = (q - 8) * d.
pub fn dequantize_q4_0(block: &[u8; 18], out: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    let (lo, hi) = out.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&block[2..]) {
        *l = (i32::from(q & 0x0F) - 8) as f32 * d;
        *h = (i32::from(q >> 4) - 8) as f32 * d;
    }
}

/// `block_q4_1`: f16 `d`, f16 min `m`, 16 bytes of nibbles; value = q * d + m.
pub fn dequantize_q4_1(block: &[u8; 20], out: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let (lo, hi) = out.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&block[4..]) {
        *l = f32::from(q & 0x0F) * d + m;
        *h = f32::from(q >> 4) * d + m;
    }
}

/// `block_q5_0`: f16 `d`, a little-endian u32 of fifth bits (bit j for element j), 16 bytes
/// of nibbles; value = (q - 16) * d.
pub fn dequantize_q5_0(block: &[u8; 22], out: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
    let (lo, hi) = out.split_at_mut(16);
    for (j, ((l, h), &q)) in lo.iter_mut().zip(hi).zip(&block[6..]).enumerate() {
        let (q0, q1) = q5_pair(q, qh, j);
        *l = (q0 - 16) as f32 * d;
        *h = (q1 - 16) as f32 * d;
    }
}

/// `block_q5_1`: f16 `d`, f16 min `m`, u32 of fifth bits, 16 bytes of nibbles;
/// value = q * d + m.
pub fn dequantize_q5_1(block: &[u8; 24], out: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let qh = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
    let (lo, hi) = out.split_at_mut(16);
    for (j, ((l, h), &q)) in lo.iter_mut().zip(hi).zip(&block[8..]).enumerate() {
        let (q0, q1) = q5_pair(q, qh, j);
        *l = q0 as f32 * d + m;
        *h = q1 as f32 * d + m;
    }
}

/// The 5-bit quants of elements `j` and `j + 16`.
#[inline(always)]
fn q5_pair(q: u8, qh: u32, j: usize) -> (i32, i32) {
    let h0 = ((qh >> j) << 4) & 0x10;
    let h1 = (qh >> (j + 12)) & 0x10;
    ((u32::from(q & 0x0F) | h0) as i32, (u32::from(q >> 4) | h1) as i32)
}

/// `block_q8_0`: f16 `d`, 32 signed bytes; value = q * d.
pub fn dequantize_q8_0(block: &[u8; 34], out: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    for (o, &q) in out.iter_mut().zip(&block[2..]) {
        *o = f32::from(q as i8) * d;
    }
}

/// `block_q8_1`: f16 `d`, f16 `s` (= d * sum of the quants, only used by dot products), 32
/// signed bytes; value = q * d.
pub fn dequantize_q8_1(block: &[u8; 36], out: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    for (o, &q) in out.iter_mut().zip(&block[4..]) {
        *o = f32::from(q as i8) * d;
    }
}

/// `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K
/// super-block. The first four pairs sit in the low 6 bits of bytes 0..8; the last four are
/// split into a nibble in bytes 8..12 and two high bits borrowed from bytes 0..8.
#[inline(always)]
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// `block_q2_K`: 16 bytes of 4-bit scale (low) / min (high) pairs, 64 bytes of 2-bit quants,
/// f16 `d`, f16 `dmin`; value = (d * scale) * q - (dmin * min) per 16 elements.
pub fn dequantize_q2_k(block: &[u8; 84], out: &mut [f32; QK_K]) {
    let scales = &block[0..16];
    let d = f16_at(block, 80);
    let min = f16_at(block, 82);
    for group in 0..2 {
        let q = &block[16 + 32 * group..16 + 32 * group + 32];
        for j in 0..4 {
            let shift = 2 * j;
            for part in 0..2 {
                let sc = scales[8 * group + 2 * j + part];
                let dl = d * f32::from(sc & 0x0F);
                let ml = min * f32::from(sc >> 4);
                let y = &mut out[128 * group + 32 * j + 16 * part..][..16];
                for (o, &qv) in y.iter_mut().zip(&q[16 * part..16 * part + 16]) {
                    *o = dl * f32::from((qv >> shift) & 3) - ml;
                }
            }
        }
    }
}

/// `block_q3_K`: 32 bytes of high bits (`hmask`), 64 bytes of low 2 bits, 12 bytes of
/// packed 6-bit scales, f16 `d`; value = (d * (scale - 32)) * (q - (high bit clear ? 4 : 0)).
pub fn dequantize_q3_k(block: &[u8; 110], out: &mut [f32; QK_K]) {
    let hmask = &block[0..32];
    let d_all = f16_at(block, 108);
    let scales = q3_k_scales(&block[96..108]);
    for group in 0..2 {
        let q = &block[32 + 32 * group..32 + 32 * group + 32];
        for j in 0..4 {
            let shift = 2 * j;
            let bit = 4 * group + j;
            for part in 0..2 {
                let dl = d_all * (i32::from(scales[8 * group + 2 * j + part]) - 32) as f32;
                let y = &mut out[128 * group + 32 * j + 16 * part..][..16];
                let range = 16 * part..16 * part + 16;
                for ((o, &qv), &h) in y.iter_mut().zip(&q[range.clone()]).zip(&hmask[range]) {
                    let sub = if (h >> bit) & 1 == 0 { 4 } else { 0 };
                    *o = dl * (i32::from((qv >> shift) & 3) - sub) as f32;
                }
            }
        }
    }
}

/// Unpacks the sixteen 6-bit Q3_K scales: low nibbles from bytes 0..8 (scales 0..8 from the low
/// nibbles, 8..16 from the high ones), the two high bits from bytes 8..12. Same word
/// arithmetic as ggml's `kmask1`/`kmask2` version.
#[inline(always)]
fn q3_k_scales(packed: &[u8]) -> [u8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let word = |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
    let (a0, a1, tmp) = (word(0), word(4), word(8));
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    // ggml reads these bytes as int8; each is at most 63, so unsigned is the same value.
    let mut scales = [0u8; 16];
    for (chunk, w) in scales.chunks_exact_mut(4).zip(aux) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    scales
}

/// `block_q4_K`: f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit scales/mins, 128 bytes of
/// nibbles (each 32 bytes hold 64 elements: low nibbles first); value = (d * sc) * q - dmin * m.
pub fn dequantize_q4_k(block: &[u8; 144], out: &mut [f32; QK_K]) {
    let d = f16_at(block, 0);
    let min = f16_at(block, 2);
    let scales = &block[4..16];
    for j in 0..4 {
        let q = &block[16 + 32 * j..16 + 32 * j + 32];
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        let (lo, hi) = out[64 * j..64 * j + 64].split_at_mut(32);
        for ((l, h), &qv) in lo.iter_mut().zip(hi.iter_mut()).zip(q) {
            *l = d1 * f32::from(qv & 0x0F) - m1;
            *h = d2 * f32::from(qv >> 4) - m2;
        }
    }
}

/// `block_q5_K`: like Q4_K plus 32 bytes of fifth bits (`qh`, bit 2j/2j+1 for the low/high
/// nibbles of the j-th 64 elements) between the scales and the nibbles.
pub fn dequantize_q5_k(block: &[u8; 176], out: &mut [f32; QK_K]) {
    let d = f16_at(block, 0);
    let min = f16_at(block, 2);
    let scales = &block[4..16];
    let qh = &block[16..48];
    for j in 0..4 {
        let ql = &block[48 + 32 * j..48 + 32 * j + 32];
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        let (lo, hi) = out[64 * j..64 * j + 64].split_at_mut(32);
        for (((l, h), &qv), &hb) in lo.iter_mut().zip(hi.iter_mut()).zip(ql).zip(qh) {
            let h_lo = ((hb >> (2 * j)) & 1) << 4;
            let h_hi = ((hb >> (2 * j + 1)) & 1) << 4;
            *l = d1 * f32::from((qv & 0x0F) + h_lo) - m1;
            *h = d2 * f32::from((qv >> 4) + h_hi) - m2;
        }
    }
}

/// `block_q6_K`: 128 bytes of low nibbles (`ql`), 64 bytes of high 2-bit pairs (`qh`), 16
/// signed 8-bit scales, f16 `d`; value = (d * scale) * (q - 32) per 16 elements.
pub fn dequantize_q6_k(block: &[u8; 210], out: &mut [f32; QK_K]) {
    let d = f16_at(block, 208);
    for group in 0..2 {
        let ql = &block[64 * group..64 * group + 64];
        let qh = &block[128 + 32 * group..128 + 32 * group + 32];
        let sc = &block[192 + 8 * group..192 + 8 * group + 8];
        let y = &mut out[128 * group..128 * group + 128];
        for l in 0..32 {
            let is = l / 16;
            let h = qh[l];
            let q1 = i32::from((ql[l] & 0x0F) | ((h & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0x0F) | (((h >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((h >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) - 32;
            y[l] = d * f32::from(sc[is] as i8) * q1 as f32;
            y[l + 32] = d * f32::from(sc[is + 2] as i8) * q2 as f32;
            y[l + 64] = d * f32::from(sc[is + 4] as i8) * q3 as f32;
            y[l + 96] = d * f32::from(sc[is + 6] as i8) * q4 as f32;
        }
    }
}

/// `block_q8_K`: f32 `d`, 256 signed bytes, 16 i16 block sums (only used by dot products);
/// value = d * q.
pub fn dequantize_q8_k(block: &[u8; 292], out: &mut [f32; QK_K]) {
    let d = f32::from_le_bytes([block[0], block[1], block[2], block[3]]);
    for (o, &q) in out.iter_mut().zip(&block[4..4 + QK_K]) {
        *o = d * f32::from(q as i8);
    }
}
