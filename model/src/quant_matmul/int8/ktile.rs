//! The K-quant integer kernel, in llama.cpp's `Q4_K × Q8_K` manner: the activations share one
//! scale per 256-element super-block, so a super-block's eight chunks add up in integers —
//! `vpmaddubsw` for the quant products, `vpmaddwd` with the chunk's (or Q6_K's half chunk's)
//! integer scale — and only the super-block's sum is converted to float, once per row. The
//! mins (Q4_K, Q5_K) take the activations' chunk sums: `dmin · dx · Σ_c min_c · Σ_c x`.
//!
//! Bounds: quants are at most 32 in magnitude (Q6_K's, less its offset, by the sign trick)
//! against activations within ±127, so a `vpmaddubsw` pair sum is at most 8 128 (16 002 for
//! Q5_K's 31); times a scale of at most 128 in magnitude and added over 8 chunks of 8 lanes,
//! the 32-bit sums stay far from overflow.

use std::arch::x86_64::*;
use std::array;

use super::super::avx2::hsum;
use super::Q8Row;
use super::blocks::{f16_at, k4_scales_mins, q4k_quants, q5k_quants, q6k_quants};
use super::kernel::Args;

/// A K-quant type: `B` bytes per super-block of 8 chunks of 32.
pub(super) trait KInt8<const B: usize> {
    /// Quants are signed (Q6_K, less its offset of 32).
    const SIGNED: bool;

    /// `d`, `dmin` (0 without mins), the 16-bit scale vector of each chunk (lanes 0..8 for its
    /// first 16 elements, 8..16 for the others) and the mins.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    unsafe fn header(block: &[u8; B]) -> (f32, f32, [__m256i; 8], [u8; 8]);

    /// Chunk `c`'s 32 quants.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    unsafe fn quants(block: &[u8; B], c: usize) -> __m256i;
}

pub(super) struct Q4K;
pub(super) struct Q5K;
pub(super) struct Q6K;

#[inline]
#[target_feature(enable = "avx2,f16c")]
fn k4_header(block: &[u8]) -> (f32, f32, [__m256i; 8], [u8; 8]) {
    let (scales, mins) = k4_scales_mins(block);
    (f16_at(block, 0), f16_at(block, 2), array::from_fn(|c| _mm256_set1_epi16(i16::from(scales[c]))), mins)
}

impl KInt8<144> for Q4K {
    const SIGNED: bool = false;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn header(block: &[u8; 144]) -> (f32, f32, [__m256i; 8], [u8; 8]) {
        k4_header(block)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn quants(block: &[u8; 144], c: usize) -> __m256i {
        q4k_quants(block, c)
    }
}

impl KInt8<176> for Q5K {
    const SIGNED: bool = false;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn header(block: &[u8; 176]) -> (f32, f32, [__m256i; 8], [u8; 8]) {
        k4_header(block)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn quants(block: &[u8; 176], c: usize) -> __m256i {
        q5k_quants(block, c)
    }
}

impl KInt8<210> for Q6K {
    const SIGNED: bool = true;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn header(block: &[u8; 210]) -> (f32, f32, [__m256i; 8], [u8; 8]) {
        let scale = |i: usize| i16::from(block[192 + i] as i8);
        let halves = array::from_fn(|c| {
            let first = 8 * (c / 4) + 2 * (c % 4);
            _mm256_set_m128i(_mm_set1_epi16(scale(first + 1)), _mm_set1_epi16(scale(first)))
        });
        (f16_at(block, 208), 0.0, halves, [0; 8])
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn quants(block: &[u8; 210], c: usize) -> __m256i {
        q6k_quants(block, c)
    }
}

/// The tile's row count as a constant, so the per-row loops unroll.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[inline(always)]
pub(super) unsafe fn by_len<const B: usize, K: KInt8<B>>(a: Args<'_, '_>) {
    // SAFETY: the caller's features.
    unsafe {
        match a.len {
            1 => tile::<B, K, 1>(a),
            2 => tile::<B, K, 2>(a),
            3 => tile::<B, K, 3>(a),
            _ => tile::<B, K, 4>(a),
        }
    }
}

#[inline(always)]
unsafe fn tile<const B: usize, K: KInt8<B>, const R: usize>(a: Args<'_, '_>) {
    let rows: [Q8Row<'_>; R] = array::from_fn(|i| a.acts.row(a.first_x + i));
    let blocks = a.row_bytes / B;
    assert!(a.acts.block() == 256, "activations rounded per 256 elements");
    assert!(rows.iter().all(|r| r.quants.len() == 256 * blocks && r.scales.len() == blocks && r.chunk_sums.len() == 8 * blocks));
    // SAFETY: the caller's features include AVX2, FMA and F16C; every index is below
    // `blocks` (scales) or `8 · blocks` (chunks), inside the rows asserted above.
    unsafe {
        for (r, row) in a.weights.chunks_exact(a.row_bytes).enumerate() {
            let mut acc = [_mm256_setzero_ps(); R];
            let mut mins = [0.0f32; R];
            for (b, block) in row.as_chunks::<B>().0.iter().enumerate() {
                let (d, dmin, scales, block_mins) = K::header(block);
                let mut isum = [_mm256_setzero_si256(); R];
                for c in 0..8 {
                    let q = K::quants(block, c);
                    let u = if K::SIGNED { _mm256_sign_epi8(q, q) } else { q };
                    for i in 0..R {
                        let x = _mm256_loadu_si256(rows[i].quants.as_ptr().add(256 * b + 32 * c).cast());
                        let x = if K::SIGNED { _mm256_sign_epi8(x, q) } else { x };
                        let pairs = _mm256_maddubs_epi16(u, x);
                        isum[i] = _mm256_add_epi32(isum[i], _mm256_madd_epi16(pairs, scales[c]));
                    }
                }
                for i in 0..R {
                    let dx = *rows[i].scales.get_unchecked(b);
                    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), _mm256_set1_ps(d * dx), acc[i]);
                    if dmin != 0.0 {
                        let sums = rows[i].chunk_sums.get_unchecked(8 * b..8 * b + 8);
                        let dot: i32 = block_mins.iter().zip(sums).map(|(&m, &s)| i32::from(m) * s).sum();
                        mins[i] -= dmin * dx * dot as f32;
                    }
                }
            }
            for i in 0..a.len.min(R) {
                a.out.put(a.first_x + i, a.first_row + r, hsum(acc[i]) + mins[i]);
            }
        }
    }
}
