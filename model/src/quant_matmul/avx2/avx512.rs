//! AVX-512 variant of the fused K-quant kernel ([`super::kfused`]), for CPUs that have it
//! (recent Intel Xeons, AMD Zen 4 and later); chosen at run time, with the AVX2 kernel as
//! the fallback.
//!
//! At one to four activation rows the fused kernel is bound by decoding, not by memory: one
//! widening load, two or three bit operations and a conversion per vector of quants. With
//! 16 lanes a super-block takes half the instructions, and the 32 registers hold a whole
//! 64-weight chunk plus the accumulators of four rows.

use std::arch::x86_64::*;
use std::array;

use super::avx512_blocks;
use super::kfused::{min_term, row_sums};
use super::kquant::{KQuant, Q4_K, Q5_K, Q6_K};
use super::{FusedArgs, store8};
use crate::gguf::GgmlType;

/// Proof that this CPU has AVX-512F besides AVX2, FMA and F16C (only [`Avx512::detect`]
/// makes one).
#[derive(Debug, Clone, Copy)]
pub(in crate::quant_matmul) struct Avx512(());

impl Avx512 {
    pub(in crate::quant_matmul) fn detect() -> Option<Avx512> {
        let present = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        present.then_some(Avx512(()))
    }
}

/// Types with an AVX-512 fused kernel: the K-quants here, the 32-element block types in
/// [`super::avx512_blocks`].
pub(in crate::quant_matmul) fn has_fused(ggml_type: GgmlType) -> bool {
    matches!(ggml_type, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K) || avx512_blocks::has_fused(ggml_type)
}

/// [`super::fused_rows`] with the AVX-512 kernel; does nothing for types without one.
pub(super) fn fused_rows(_cpu: Avx512, ggml_type: GgmlType, args: FusedArgs<'_, '_>) {
    // SAFETY: the `Avx512` token proves the CPU has AVX-512F, AVX2, FMA and F16C.
    unsafe {
        match ggml_type {
            GgmlType::Q4_K => fused_tile::<144, Q4_K>(args),
            GgmlType::Q5_K => fused_tile::<176, Q5_K>(args),
            GgmlType::Q6_K => fused_tile::<210, Q6_K>(args),
            _ => avx512_blocks::fused_rows(ggml_type, args),
        }
    }
}

/// A K-quant type's quants in 16-lane vectors.
trait Quants512<const B: usize>: KQuant<B> {
    /// Elements `64j..64j + 64` as floats, 16 per vector (same values as `KQuant::quants`).
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    unsafe fn quants16(block: &[u8; B], j: usize) -> [__m512; 4];
}

impl Quants512<144> for Q4_K {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn quants16(block: &[u8; 144], j: usize) -> [__m512; 4] {
        let (qs, _) = block[16..].as_chunks::<32>();
        let (q16, _) = qs[j].as_chunks::<16>();
        let (a, b) = (u8x16(&q16[0]), u8x16(&q16[1]));
        [cvt(low_nibble(a)), cvt(low_nibble(b)), cvt(_mm512_srli_epi32::<4>(a)), cvt(_mm512_srli_epi32::<4>(b))]
    }
}

impl Quants512<176> for Q5_K {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn quants16(block: &[u8; 176], j: usize) -> [__m512; 4] {
        let (qh, _) = block[16..48].as_chunks::<16>();
        let (ql, _) = block[48..].as_chunks::<32>();
        let (ql, _) = ql[j].as_chunks::<16>();
        let (a, b) = (u8x16(&ql[0]), u8x16(&ql[1]));
        let (ha, hb) = (u8x16(&qh[0]), u8x16(&qh[1]));
        [
            cvt(_mm512_or_si512(low_nibble(a), bits_to_4(ha, 2 * j, 0x10))),
            cvt(_mm512_or_si512(low_nibble(b), bits_to_4(hb, 2 * j, 0x10))),
            cvt(_mm512_or_si512(_mm512_srli_epi32::<4>(a), bits_to_4(ha, 2 * j + 1, 0x10))),
            cvt(_mm512_or_si512(_mm512_srli_epi32::<4>(b), bits_to_4(hb, 2 * j + 1, 0x10))),
        ]
    }
}

impl Quants512<210> for Q6_K {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn quants16(block: &[u8; 210], j: usize) -> [__m512; 4] {
        let (half, high) = (j / 2, j % 2 == 1);
        let (ql, _) = block[..128].as_chunks::<64>();
        let (ql, _) = ql[half].as_chunks::<16>();
        let (qh, _) = block[128..192].as_chunks::<32>();
        let (qh, _) = qh[half].as_chunks::<16>();
        let shift = if high { 4 } else { 0 };
        let quant = |l: &[u8; 16], h: __m512i, bit: usize| {
            let v = u8x16(l);
            let nibble = if high { _mm512_srli_epi32::<4>(v) } else { low_nibble(v) };
            cvt(_mm512_or_si512(nibble, bits_to_4(h, bit, 0x30)))
        };
        let (h0, h1) = (u8x16(&qh[0]), u8x16(&qh[1]));
        [quant(&ql[0], h0, shift), quant(&ql[1], h1, shift), quant(&ql[2], h0, shift + 2), quant(&ql[3], h1, shift + 2)]
    }
}

/// Picks the kernel for the tile's row count (see `kfused::kfused_tile`).
///
/// # Safety
/// The CPU must have AVX-512F, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn fused_tile<const B: usize, K: Quants512<B>>(args: FusedArgs<'_, '_>) {
    // SAFETY: same CPU features as this function.
    unsafe {
        match args.2.len {
            1 => fused::<B, K, 1, 2>(args),
            2 => fused::<B, K, 2, 2>(args),
            3 => fused::<B, K, 3, 1>(args),
            _ => fused::<B, K, 4, 1>(args),
        }
    }
}

/// `kfused::kfused` with 16 lanes: the dot products in 512-bit accumulators, the min and
/// offset terms (8 or 16 sub-blocks) in a 256-bit one.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // indices keep the arrays in registers
unsafe fn fused<const B: usize, K: Quants512<B>, const NX: usize, const U: usize>(
    (weights, row_bytes, tile, sums, first_row, out): FusedArgs<'_, '_>,
) {
    let blocks = row_bytes / B;
    let x: [&[[f32; 256]]; NX] = array::from_fn(|i| &tile.row(i).as_chunks::<256>().0[..blocks]);
    let sums: [&[f32]; NX] = array::from_fn(|i| row_sums::<B, K>(sums, tile.first + i, blocks));
    let per_sub = K::SUB / 16;
    for (r, row) in weights.as_chunks::<B>().0.chunks_exact(blocks).enumerate() {
        let mut acc = [[_mm512_setzero_ps(); NX]; U];
        let mut mins = [_mm256_setzero_ps(); NX];
        for (b, block) in row.iter().enumerate() {
            // SAFETY: same CPU features as this function.
            let (dl, ml) = unsafe { K::scales(block) };
            let mut d = [0f32; 16];
            let (d8, _) = d.as_chunks_mut::<8>();
            store8(&mut d8[0], dl[0]);
            if K::SUB < 32 {
                store8(&mut d8[1], dl[1]);
            }
            for i in 0..NX {
                let sums = &sums[i][b * K::SUMS..][..K::SUMS];
                // SAFETY: same CPU features as this function.
                mins[i] = unsafe { min_term::<B, K>(dl, ml, sums, mins[i]) };
            }
            for j in 0..4 {
                // SAFETY: same CPU features as this function.
                let q = unsafe { K::quants16(block, j) };
                for g in 0..64 / K::SUB {
                    let s = j * (64 / K::SUB) + g;
                    let dv = _mm512_set1_ps(d[s]);
                    for i in 0..NX {
                        let (xv, _) = x[i][b][64 * j + K::SUB * g..][..K::SUB].as_chunks::<16>();
                        let mut p = _mm512_mul_ps(load16(&xv[0]), q[g * per_sub]);
                        for t in 1..per_sub {
                            p = _mm512_fmadd_ps(load16(&xv[t]), q[g * per_sub + t], p);
                        }
                        acc[s % U][i] = _mm512_fmadd_ps(dv, p, acc[s % U][i]);
                    }
                }
            }
        }
        for i in 0..NX {
            let mut total = acc[0][i];
            for set in &acc[1..] {
                total = _mm512_add_ps(total, set[i]);
            }
            let total = _mm512_add_ps(total, _mm512_zextps256_ps512(mins[i]));
            out.put(tile.first + i, first_row + r, _mm512_reduce_add_ps(total));
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load16(v: &[f32; 16]) -> __m512 {
    // SAFETY: `v` is 16 readable floats; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_ps(v.as_ptr()) }
}

/// Sixteen bytes as u32 lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn u8x16(bytes: &[u8; 16]) -> __m512i {
    // SAFETY: `bytes` is 16 readable bytes; `loadu` has no alignment requirement.
    _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) })
}

#[inline]
#[target_feature(enable = "avx512f")]
fn cvt(v: __m512i) -> __m512 {
    _mm512_cvtepi32_ps(v)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn low_nibble(v: __m512i) -> __m512i {
    _mm512_and_si512(v, _mm512_set1_epi32(0x0F))
}

/// The bits of `mask` (which start at bit 4) taken from `v` shifted so that its bit `bit`
/// lands on bit 4 (see `kquant::bits_to_4`).
#[inline]
#[target_feature(enable = "avx512f")]
fn bits_to_4(v: __m512i, bit: usize, mask: i32) -> __m512i {
    let shifted = if bit <= 4 {
        _mm512_sllv_epi32(v, _mm512_set1_epi32(4 - bit as i32))
    } else {
        _mm512_srlv_epi32(v, _mm512_set1_epi32(bit as i32 - 4))
    };
    _mm512_and_si512(shifted, _mm512_set1_epi32(mask))
}
