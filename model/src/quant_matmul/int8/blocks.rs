//! Weight blocks as 32-element chunks of integer quants in AVX2 registers: for the
//! 32-element types with their float scale and min (see the module docs of [`super`]), one
//! implementation of [`Int8Block`] a GGUF type; for the K-quants the chunk decoders and the
//! integer scales that [`super::ktile`] uses. Fixed offsets (Q4_0's 8, Q5_0's 16, Q6_K's 32) are subtracted from the quants here,
//! which makes them signed bytes and spares the kernel an offset term. Layouts are those `gguf::dequant` documents and decodes.

use std::arch::x86_64::*;

/// A chunk's float factors: weight `e` is `a[e / 16] · q[e] + o`.
#[derive(Clone, Copy)]
pub(super) struct ChunkScale {
    /// `a[0]` in lanes 0..4, `a[1]` in lanes 4..8: the lanes of an integer dot product of
    /// 32 bytes hold the sums of 4 consecutive elements.
    pub a: __m256,
    /// The min (Q4_1, Q4_K, Q5_K; zero for the others).
    pub o: f32,
}

/// A GGUF block type of `B` bytes seen as [`Int8Block::CHUNKS`] chunks of 32 quants.
pub(super) trait Int8Block<const B: usize> {
    const CHUNKS: usize;
    /// Quants are signed bytes (Q8_0, and the types whose fixed offset is subtracted from
    /// the quants in the integer domain: Q4_0, Q5_0, Q6_K) rather than unsigned.
    const SIGNED: bool = false;
    /// Whether chunks have a min `o` (Q4_1, Q4_K, Q5_K).
    const HAS_MIN: bool = false;
    /// What a block's chunks share, decoded once per block.
    type Header: Copy;

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    unsafe fn header(block: &[u8; B]) -> Self::Header;

    /// Chunk `c` (< `CHUNKS`): its 32 quants (byte `e` is element `32c + e`) and factors.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    unsafe fn chunk(block: &[u8; B], header: &Self::Header, c: usize) -> (__m256i, ChunkScale);
}

#[allow(non_camel_case_types)]
pub(super) struct Q4_0;
#[allow(non_camel_case_types)]
pub(super) struct Q4_1;
#[allow(non_camel_case_types)]
pub(super) struct Q5_0;
#[allow(non_camel_case_types)]
pub(super) struct Q8_0;

/// An f16 (little-endian at `at`) as f32, with F16C.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

#[inline]
#[target_feature(enable = "avx2")]
fn one_scale(a: f32, o: f32) -> ChunkScale {
    ChunkScale { a: _mm256_set1_ps(a), o }
}

/// `q − offset` per byte, as signed bytes.
#[inline]
#[target_feature(enable = "avx2")]
fn minus(q: __m256i, offset: i8) -> __m256i {
    _mm256_sub_epi8(q, _mm256_set1_epi8(offset))
}

/// 16 bytes of nibbles → 32 quants: low nibbles are elements 0..16, high ones 16..32.
#[inline]
#[target_feature(enable = "avx2")]
fn nibbles16(bytes: &[u8; 16]) -> __m256i {
    // SAFETY: 16 readable bytes; `loadu` has no alignment requirement.
    let v = unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) };
    let mask = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16::<4>(v), mask), _mm_and_si128(v, mask))
}

/// 32 bytes, each `(byte >> shift) & mask` (`shift` < 8).
#[inline]
#[target_feature(enable = "avx2")]
fn shifted_bits(bytes: &[u8; 32], shift: i32, mask: i8) -> __m256i {
    // SAFETY: 32 readable bytes; `loadu` has no alignment requirement.
    let v = unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) };
    // A 16-bit shift moves the high byte's low bits into the low byte's top: the mask
    // keeps only bits that came from the same byte.
    _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(shift)), _mm256_set1_epi8(mask))
}

/// Q5_0's fifth bits (bit `e` of `qh` for element `e`) as `0x10` in the bytes that have one.
#[inline]
#[target_feature(enable = "avx2")]
fn fifth_bits(qh: u32) -> __m256i {
    // Byte e gets byte e / 8 of qh (shuffles stay inside 128-bit lanes, so the high lane's
    // indices 2 and 3 address the same broadcast copy), then tests its own bit.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(qh as i32),
        _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// `block_q4_0`: f16 `d`, 16 bytes of nibbles; `w = d · (q − 8)`.
impl Int8Block<18> for Q4_0 {
    const CHUNKS: usize = 1;
    const SIGNED: bool = true;
    type Header = ();

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn header(_: &[u8; 18]) {}

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk(block: &[u8; 18], _: &(), _: usize) -> (__m256i, ChunkScale) {
        let d = f16_at(block, 0);
        (minus(nibbles16(block[2..].first_chunk().expect("16 bytes")), 8), one_scale(d, 0.0))
    }
}

/// `block_q4_1`: f16 `d`, f16 `m`, 16 bytes of nibbles; `w = d · q + m`.
impl Int8Block<20> for Q4_1 {
    const CHUNKS: usize = 1;
    const HAS_MIN: bool = true;
    type Header = ();

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn header(_: &[u8; 20]) {}

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk(block: &[u8; 20], _: &(), _: usize) -> (__m256i, ChunkScale) {
        let (d, m) = (f16_at(block, 0), f16_at(block, 2));
        (nibbles16(block[4..].first_chunk().expect("16 bytes")), one_scale(d, m))
    }
}

/// `block_q5_0`: f16 `d`, u32 of fifth bits, 16 bytes of nibbles; `w = d · (q − 16)`.
impl Int8Block<22> for Q5_0 {
    const CHUNKS: usize = 1;
    const SIGNED: bool = true;
    type Header = ();

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn header(_: &[u8; 22]) {}

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk(block: &[u8; 22], _: &(), _: usize) -> (__m256i, ChunkScale) {
        let d = f16_at(block, 0);
        let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
        let q = _mm256_or_si256(nibbles16(block[6..].first_chunk().expect("16 bytes")), fifth_bits(qh));
        (minus(q, 16), one_scale(d, 0.0))
    }
}

/// `block_q8_0`: f16 `d`, 32 signed bytes; `w = d · q`.
impl Int8Block<34> for Q8_0 {
    const CHUNKS: usize = 1;
    const SIGNED: bool = true;
    type Header = ();

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn header(_: &[u8; 34]) {}

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chunk(block: &[u8; 34], _: &(), _: usize) -> (__m256i, ChunkScale) {
        // SAFETY: bytes 2..34 are readable; `loadu` has no alignment requirement.
        let q = unsafe { _mm256_loadu_si256(block[2..].as_ptr().cast()) };
        (q, one_scale(f16_at(block, 0), 0.0))
    }
}

/// The 6-bit scales and mins of a Q4_K/Q5_K super-block's eight chunks. The 12 bytes after
/// `d` and `dmin` hold, per chunk `j`, for `j < 4` the low 6 bits of bytes `j` (scale) and
/// `j + 4` (min); for `j ≥ 4` a nibble of byte `j + 4` with the top two bits of bytes `j − 4`
/// (scale) and `j` (min) above it.
#[inline]
pub(super) fn k4_scales_mins(block: &[u8]) -> ([u8; 8], [u8; 8]) {
    let word = |i: usize| u32::from_le_bytes([block[4 + 4 * i], block[5 + 4 * i], block[6 + 4 * i], block[7 + 4 * i]]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    const LOW6: u32 = 0x3F3F_3F3F;
    const NIB: u32 = 0x0F0F_0F0F;
    const TOP2: u32 = 0x0303_0303;
    let scales_hi = (w2 & NIB) | (((w0 >> 6) & TOP2) << 4);
    let mins_hi = ((w2 >> 4) & NIB) | (((w1 >> 6) & TOP2) << 4);
    let bytes = |lo: u32, hi: u32| (u64::from(hi) << 32 | u64::from(lo)).to_le_bytes();
    (bytes(w0 & LOW6, scales_hi), bytes(w1 & LOW6, mins_hi))
}

/// Chunk `c` of a `block_q4_K` (f16 `d`, f16 `dmin`, 12 bytes of scales and mins, 128 bytes
/// of nibbles: 32 bytes a pair of chunks, low nibbles the even one): 32 quants, 0..16.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn q4k_quants(block: &[u8; 144], c: usize) -> __m256i {
    shifted_bits(block[16 + 32 * (c / 2)..].first_chunk().expect("32 bytes"), 4 * (c as i32 % 2), 0x0F)
}

/// Chunk `c` of a `block_q5_K` (like Q4_K with 32 bytes of fifth bits, bit `c` of byte `e`
/// for element `e` of chunk `c`, between the scales and the nibbles): 32 quants, 0..32.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn q5k_quants(block: &[u8; 176], c: usize) -> __m256i {
    let low = shifted_bits(block[48 + 32 * (c / 2)..].first_chunk().expect("32 bytes"), 4 * (c as i32 % 2), 0x0F);
    let high = shifted_bits(block[16..].first_chunk().expect("32 bytes"), c as i32, 0x01);
    _mm256_or_si256(low, _mm256_slli_epi16::<4>(high))
}

/// Chunk `c` of a `block_q6_K` (128 bytes of low nibbles, 64 of high bit pairs, 16 signed
/// scales, f16 `d`; `w = d · scale · (q − 32)`), less its offset: 32 signed quants, −32..32.
/// Chunk `c` is quarter `k = c % 4` of half `g = c / 4`: low nibbles of
/// `ql[64g + 32(k % 2)..]` (high nibbles for `k ≥ 2`), bits `2k..2k+2` of `qh[128 + 32g..]`;
/// its scales are `8g + 2k` and `+1` (one per 16 elements).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn q6k_quants(block: &[u8; 210], c: usize) -> __m256i {
    let (g, k) = (c / 4, c % 4);
    let ql = block[64 * g + 32 * (k % 2)..].first_chunk().expect("32 bytes");
    let low = shifted_bits(ql, 4 * (k as i32 / 2), 0x0F);
    let high = shifted_bits(block[128 + 32 * g..].first_chunk().expect("32 bytes"), 2 * k as i32, 0x03);
    minus(_mm256_or_si256(low, _mm256_slli_epi16::<4>(high)), 32)
}
