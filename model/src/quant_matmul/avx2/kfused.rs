//! The fused AVX2 kernel for K-quant super-blocks (Q4_K, Q5_K, Q6_K): each super-block of a
//! weight row is decoded in registers 64 weights at a time and used for up to four
//! activation rows.
//!
//! Per sub-block, the kernel takes the dot product of the activations with the raw quants
//! and multiplies it by `dl` once; the min term `− Σ_s ml[s] · Σx_s` is one multiply-add of
//! the super-block's 8 `ml` with the 8 activation sums of its 32-element sub-blocks, and
//! Q6_K's offset `− 32 Σ_s dl[s] · Σx_s` two of its 16 `dl` with 16 sums.

use std::arch::x86_64::*;
use std::array;

use super::kquant::KQuant;
use super::{FusedArgs, hsum, load8, store8};

/// Activation row `row`'s part of `avx2::block_sums`: `K::SUMS` per super-block.
pub(super) fn row_sums<const B: usize, K: KQuant<B>>(sums: &[f32], row: usize, blocks: usize) -> &[f32] {
    &sums[row * blocks * K::SUMS..][..blocks * K::SUMS]
}

/// `acc` plus a super-block's min term (`ml · sums`) or offset term (`dl · sums`), where
/// `sums` are the super-block's `K::SUMS` activation sums, already times `−1` or `−OFFSET`.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn min_term<const B: usize, K: KQuant<B>>(
    dl: [__m256; 2],
    ml: __m256,
    sums: &[f32],
    acc: __m256,
) -> __m256 {
    let (s8, _) = sums.as_chunks::<8>();
    match K::SUMS {
        8 => _mm256_fmadd_ps(ml, load8(&s8[0]), acc),
        16 => _mm256_fmadd_ps(dl[1], load8(&s8[1]), _mm256_fmadd_ps(dl[0], load8(&s8[0]), acc)),
        _ => acc,
    }
}

/// Picks the kernel for the tile's row count. With one or two rows, each output has too few
/// independent accumulator chains to hide the FMA latency, so sub-blocks alternate between
/// two.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn kfused_tile<const B: usize, K: KQuant<B>>(args: FusedArgs<'_, '_>) {
    // SAFETY: same CPU features as this function.
    unsafe {
        match args.2.len {
            1 => kfused::<B, K, 1, 2>(args),
            2 => kfused::<B, K, 2, 2>(args),
            3 => kfused::<B, K, 3, 1>(args),
            _ => kfused::<B, K, 4, 1>(args),
        }
    }
}

/// The fused kernel for `NX` activation rows with `U` accumulator sets. `sums` is
/// `avx2::block_sums` of all activation rows (only read with a min or an offset).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // indices keep the arrays in registers
unsafe fn kfused<const B: usize, K: KQuant<B>, const NX: usize, const U: usize>(
    (weights, row_bytes, tile, sums, first_row, out): FusedArgs<'_, '_>,
) {
    let blocks = row_bytes / B;
    let x: [&[[f32; 256]]; NX] = array::from_fn(|i| &tile.row(i).as_chunks::<256>().0[..blocks]);
    let sums: [&[f32]; NX] = array::from_fn(|i| row_sums::<B, K>(sums, tile.first + i, blocks));
    // Vectors per sub-block.
    let per_sub = K::SUB / 8;
    for (r, row) in weights.as_chunks::<B>().0.chunks_exact(blocks).enumerate() {
        let mut acc = [[_mm256_setzero_ps(); NX]; U];
        for (b, block) in row.iter().enumerate() {
            // SAFETY: same CPU features as this function.
            let (dl, ml) = unsafe { K::scales(block) };
            // Stored so each sub-block's scale is a broadcast load.
            let mut d = [0f32; 16];
            let (d8, _) = d.as_chunks_mut::<8>();
            store8(&mut d8[0], dl[0]);
            if K::SUB < 32 {
                store8(&mut d8[1], dl[1]);
            }
            for i in 0..NX {
                let sums = &sums[i][b * K::SUMS..][..K::SUMS];
                // SAFETY: same CPU features as this function.
                acc[0][i] = unsafe { min_term::<B, K>(dl, ml, sums, acc[0][i]) };
            }
            for j in 0..4 {
                // SAFETY: same CPU features as this function.
                let q = unsafe { K::quants(block, j) };
                for g in 0..64 / K::SUB {
                    let s = j * (64 / K::SUB) + g;
                    let dv = _mm256_set1_ps(d[s]);
                    for i in 0..NX {
                        let (xv, _) = x[i][b][64 * j + K::SUB * g..][..K::SUB].as_chunks::<8>();
                        let mut p = _mm256_mul_ps(load8(&xv[0]), q[g * per_sub]);
                        for t in 1..per_sub {
                            p = _mm256_fmadd_ps(load8(&xv[t]), q[g * per_sub + t], p);
                        }
                        acc[s % U][i] = _mm256_fmadd_ps(dv, p, acc[s % U][i]);
                    }
                }
            }
        }
        for i in 0..NX {
            let mut total = acc[0][i];
            for set in &acc[1..] {
                total = _mm256_add_ps(total, set[i]);
            }
            out.put(tile.first + i, first_row + r, hsum(total));
        }
    }
}

/// Dequantizes whole super-blocks into `out` (256 floats each), bit-exact with
/// `gguf::dequant`: `q − OFFSET` (exact), `dl ·` that, then `− ml`, unfused.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn decode_superblocks<const B: usize, K: KQuant<B>>(rows: &[u8], out: &mut [f32]) {
    for (block, o) in rows.as_chunks::<B>().0.iter().zip(out.as_chunks_mut::<256>().0) {
        // SAFETY: same CPU features as this function.
        let (dl, ml) = unsafe { K::scales(block) };
        let (mut d, mut m) = ([0f32; 16], [0f32; 8]);
        let (d8, _) = d.as_chunks_mut::<8>();
        store8(&mut d8[0], dl[0]);
        store8(&mut d8[1], dl[1]);
        store8(&mut m, ml);
        let (o8, _) = o.as_chunks_mut::<8>();
        let offset = _mm256_set1_ps(K::OFFSET);
        for j in 0..4 {
            // SAFETY: same CPU features as this function.
            let q = unsafe { K::quants(block, j) };
            for (v, q) in q.into_iter().enumerate() {
                let e = 64 * j + 8 * v;
                let q = if K::OFFSET != 0.0 { _mm256_sub_ps(q, offset) } else { q };
                let w = _mm256_mul_ps(q, _mm256_set1_ps(d[e / K::SUB]));
                store8(&mut o8[e / 8], if K::HAS_MIN { _mm256_sub_ps(w, _mm256_set1_ps(m[e / 32])) } else { w });
            }
        }
    }
}
