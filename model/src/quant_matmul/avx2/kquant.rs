//! K-quant super-blocks (Q4_K, Q5_K, Q6_K) decoded in AVX2 registers, shared by the fused
//! kernel ([`super::kfused`]) and the panel decoder.
//!
//! A super-block holds 256 weights in sub-blocks that share a scale: weight `e` is
//! `dl[e / SUB] · (q[e] − OFFSET) − ml[e / 32]`, where `dl = d · scale` and `ml = dmin · min` are computed
//! once per sub-block exactly as `gguf::dequant` does (a product of two floats rounds the
//! same in a vector lane as in a scalar), so a panel built from these parts is bit-exact.

use std::arch::x86_64::*;

use super::bytes_to_vec;

/// A K-quant type: `B` bytes per super-block of 256 weights.
pub(super) trait KQuant<const B: usize> {
    /// Elements per sub-block sharing one scale (32, or 16 for Q6_K).
    const SUB: usize;
    /// Whether weights have the `− ml` term (per 32 elements).
    const HAS_MIN: bool;
    /// Subtracted from every quant (Q6_K's 32): a small integer, so `q − OFFSET` is exact in
    /// f32 and the fused kernels can take it out of the sum as `− OFFSET · dl · Σx`.
    const OFFSET: f32 = 0.0;
    /// Activation sums per super-block for the min term (8) or the offset term (16, one per
    /// 16-element sub-block), or none.
    const SUMS: usize = if Self::HAS_MIN { 8 } else { 0 };

    /// `dl` of sub-blocks 0..8 and 8..16 (the second only used when `SUB` = 16), and `ml`
    /// (zero without a min).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    unsafe fn scales(block: &[u8; B]) -> ([__m256; 2], __m256);

    /// The quants of elements `64j..64j + 64` (`j` < 4) as floats, 8 per vector, without
    /// the offset.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    unsafe fn quants(block: &[u8; B], j: usize) -> [__m256; 8];
}

#[allow(non_camel_case_types)]
pub(super) struct Q4_K;
#[allow(non_camel_case_types)]
pub(super) struct Q5_K;
#[allow(non_camel_case_types)]
pub(super) struct Q6_K;

/// f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles (each 32
/// bytes hold 64 elements: low nibbles first).
impl KQuant<144> for Q4_K {
    const SUB: usize = 32;
    const HAS_MIN: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales(block: &[u8; 144]) -> ([__m256; 2], __m256) {
        scales_k4(block.first_chunk::<16>().expect("144 bytes"))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants(block: &[u8; 144], j: usize) -> [__m256; 8] {
        let (qs, _) = block[16..].as_chunks::<32>();
        let (q8, _) = qs[j].as_chunks::<8>();
        let mut q = [_mm256_setzero_ps(); 8];
        for k in 0..4 {
            let a = u8x8(&q8[k]);
            q[k] = _mm256_cvtepi32_ps(low_nibble(a));
            q[4 + k] = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(a));
        }
        q
    }
}

/// Q4_K's fields, then 32 bytes of fifth bits (`qh`; element `l` of the `j`-th 64 has bit
/// `2j` for its low nibble, `2j + 1` for the high one) before the nibbles.
impl KQuant<176> for Q5_K {
    const SUB: usize = 32;
    const HAS_MIN: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales(block: &[u8; 176]) -> ([__m256; 2], __m256) {
        scales_k4(block.first_chunk::<16>().expect("176 bytes"))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants(block: &[u8; 176], j: usize) -> [__m256; 8] {
        let (qh, _) = block[16..48].as_chunks::<8>();
        let (ql, _) = block[48..].as_chunks::<32>();
        let (ql, _) = ql[j].as_chunks::<8>();
        let mut q = [_mm256_setzero_ps(); 8];
        for k in 0..4 {
            let (a, h) = (u8x8(&ql[k]), u8x8(&qh[k]));
            let lo = _mm256_or_si256(low_nibble(a), bits_to_4(h, 2 * j, 0x10));
            let hi = _mm256_or_si256(_mm256_srli_epi32::<4>(a), bits_to_4(h, 2 * j + 1, 0x10));
            q[k] = _mm256_cvtepi32_ps(lo);
            q[4 + k] = _mm256_cvtepi32_ps(hi);
        }
        q
    }
}

/// 128 bytes of low nibbles (`ql`), 64 bytes of 2-bit high pairs (`qh`), 16 signed scales,
/// f16 `d`; weight `(d · scale) · (q − 32)`. In each half of 128 elements, element `l` (< 32)
/// takes `ql[l]`'s low nibble, `l + 32` `ql[l + 32]`'s, `l + 64` and `l + 96` their high
/// nibbles, with bits 0–1, 2–3, 4–5, 6–7 of `qh[l]`.
impl KQuant<210> for Q6_K {
    const SUB: usize = 16;
    const HAS_MIN: bool = false;
    const OFFSET: f32 = 32.0;
    const SUMS: usize = 16;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales(block: &[u8; 210]) -> ([__m256; 2], __m256) {
        let d = _mm256_set1_ps(f16_pair(block[208], block[209], 0, 0).0);
        let (sc, _) = block[192..208].as_chunks::<8>();
        let scale = |s: &[u8; 8]| _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes_to_vec(s))));
        ([scale(&sc[0]), scale(&sc[1])], _mm256_setzero_ps())
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quants(block: &[u8; 210], j: usize) -> [__m256; 8] {
        let (half, high) = (j / 2, j % 2 == 1);
        let (ql, _) = block[..128].as_chunks::<64>();
        let (ql, _) = ql[half].as_chunks::<8>();
        let (qh, _) = block[128..192].as_chunks::<32>();
        let (qh, _) = qh[half].as_chunks::<8>();
        let nibble = |v: __m256i| if high { _mm256_srli_epi32::<4>(v) } else { low_nibble(v) };
        let mut q = [_mm256_setzero_ps(); 8];
        for k in 0..4 {
            let (a, b, h) = (u8x8(&ql[k]), u8x8(&ql[4 + k]), u8x8(&qh[k]));
            let shift = if high { 4 } else { 0 };
            let qa = _mm256_or_si256(nibble(a), bits_to_4(h, shift, 0x30));
            let qb = _mm256_or_si256(nibble(b), bits_to_4(h, shift + 2, 0x30));
            q[k] = _mm256_cvtepi32_ps(qa);
            q[4 + k] = _mm256_cvtepi32_ps(qb);
        }
        q
    }
}

/// Q4_K/Q5_K's `dl` and `ml` from the first 16 bytes: f16 `d`, f16 `dmin`, then the packed
/// scales and mins (see `gguf::dequant::scale_min_k4`): pairs 0..4 are the low 6 bits of
/// bytes 0..4 (scales) and 4..8 (mins); pairs 4..8 take a nibble of bytes 8..12 (low:
/// scale, high: min) and, as bits 4–5, the top two bits of bytes 0..4 (scale) or 4..8 (min).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scales_k4(head: &[u8; 16]) -> ([__m256; 2], __m256) {
    let (d, dmin) = f16_pair(head[0], head[1], head[2], head[3]);
    let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let (a, m, b) = (word(4), word(8), word(12));
    let scales_lo = a & 0x3F3F_3F3F;
    let mins_lo = m & 0x3F3F_3F3F;
    let scales_hi = (b & 0x0F0F_0F0F) | ((a >> 2) & 0x3030_3030);
    let mins_hi = ((b >> 4) & 0x0F0F_0F0F) | ((m >> 2) & 0x3030_3030);
    let to_f32 = |lo: u32, hi: u32| {
        let bytes = (u64::from(hi) << 32 | u64::from(lo)).to_le_bytes();
        _mm256_cvtepi32_ps(u8x8(&bytes))
    };
    let dl = _mm256_mul_ps(_mm256_set1_ps(d), to_f32(scales_lo, scales_hi));
    let ml = _mm256_mul_ps(_mm256_set1_ps(dmin), to_f32(mins_lo, mins_hi));
    ([dl, dl], ml)
}

/// Two f16 values (little-endian byte pairs) as f32, with F16C (exact, like `half`).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16_pair(a0: u8, a1: u8, b0: u8, b1: u8) -> (f32, f32) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([a0, a1, b0, b1])));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// Eight bytes as u32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn u8x8(bytes: &[u8; 8]) -> __m256i {
    _mm256_cvtepu8_epi32(bytes_to_vec(bytes))
}

#[inline]
#[target_feature(enable = "avx2")]
fn low_nibble(v: __m256i) -> __m256i {
    _mm256_and_si256(v, _mm256_set1_epi32(0x0F))
}

/// The bits of `mask` (which start at bit 4) taken from `v` shifted so that its bit `bit`
/// lands on bit 4: a quant's high bits above its nibble.
#[inline]
#[target_feature(enable = "avx2")]
fn bits_to_4(v: __m256i, bit: usize, mask: i32) -> __m256i {
    // Per-lane shifts by a uniform count: constant-folded into immediate shifts once the
    // callers' loops are unrolled, and one instruction either way.
    let shifted = if bit <= 4 {
        _mm256_sllv_epi32(v, _mm256_set1_epi32(4 - bit as i32))
    } else {
        _mm256_srlv_epi32(v, _mm256_set1_epi32(bit as i32 - 4))
    };
    _mm256_and_si256(shifted, _mm256_set1_epi32(mask))
}
