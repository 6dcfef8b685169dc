//! The panel path's AVX2 parts: row decoders (bit-exact with `gguf::dequant`) and the
//! register-tiled f32 dot kernel, 4 activation rows × 3 weight rows per tile.

use std::arch::x86_64::*;

use half::f16;

use super::super::{TILE_W, TILE_X, Tile};
use super::kfused::decode_superblocks;
use super::kquant::{Q4_K, Q5_K, Q6_K};
use super::{Avx2, Fused, Q4_0, Q4_1, Q5_0, Q8_0, SEG, hsum, load8, segment_scales, store8};
use crate::gguf::GgmlType;

/// Dequantizes whole rows of a type with an AVX2 decoder into `out`; false (and nothing
/// written) for other types. Bit-exact with `gguf::dequant` (same operations, unfused).
pub(in crate::quant_matmul) fn decode_rows(_cpu: Avx2, ggml_type: GgmlType, rows: &[u8], out: &mut [f32]) -> bool {
    // SAFETY: the `Avx2` token proves the CPU has AVX2, FMA and F16C.
    unsafe {
        match ggml_type {
            GgmlType::Q4_0 => decode_blocks::<18, Q4_0>(rows, out),
            GgmlType::Q4_1 => decode_blocks::<20, Q4_1>(rows, out),
            GgmlType::Q5_0 => decode_blocks::<22, Q5_0>(rows, out),
            GgmlType::Q8_0 => decode_blocks::<34, Q8_0>(rows, out),
            GgmlType::Q4_K => decode_superblocks::<144, Q4_K>(rows, out),
            GgmlType::Q5_K => decode_superblocks::<176, Q5_K>(rows, out),
            GgmlType::Q6_K => decode_superblocks::<210, Q6_K>(rows, out),
            GgmlType::F16 => decode_f16(rows, out),
            _ => return false,
        }
    }
    true
}

/// Dot products of the tile's activation rows with the (1 to [`TILE_W`]) panel rows in `w`;
/// `result[i][j]` = row `i` · weight row `j`, entries past the tile are zero.
pub(in crate::quant_matmul) fn dot_tile(_cpu: Avx2, tile: Tile<'_>, w: &[f32]) -> [[f32; TILE_W]; TILE_X] {
    // SAFETY: the `Avx2` token proves the CPU has AVX2, FMA and F16C.
    unsafe {
        match tile.len {
            1 => dot_rows::<1>(tile, w),
            2 => dot_rows::<2>(tile, w),
            3 => dot_rows::<3>(tile, w),
            _ => dot_rows::<4>(tile, w),
        }
    }
}

/// Dequantizes whole blocks of a type with a fused kernel.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_blocks<const B: usize, K: Fused<B>>(rows: &[u8], out: &mut [f32]) {
    let (mut d, mut m) = ([0f32; SEG], [0f32; SEG]);
    let offset = _mm256_set1_ps(K::OFFSET);
    for (seg, out) in rows.as_chunks::<B>().0.chunks(SEG).zip(out.chunks_mut(SEG * 32)) {
        segment_scales::<B, K>(seg, &mut d, &mut m);
        for (b, (block, o)) in seg.iter().zip(out.as_chunks_mut::<32>().0).enumerate() {
            // SAFETY: same CPU features as this function.
            let q = unsafe { K::quants(block) };
            let (dv, mv) = (_mm256_set1_ps(d[b]), _mm256_set1_ps(m[b]));
            for (o, q) in o.as_chunks_mut::<8>().0.iter_mut().zip(q) {
                // The reference's operations, unfused, so the panel is bit-exact: (q − 8) · d
                // for Q4_0, (q − 16) · d for Q5_0 (exact either way round: small integers),
                // q · d + m for Q4_1, q · d for Q8_0.
                let q = if K::OFFSET != 0.0 { _mm256_sub_ps(q, offset) } else { q };
                let v = _mm256_mul_ps(q, dv);
                store8(o, if K::HAS_MIN { _mm256_add_ps(v, mv) } else { v });
            }
        }
    }
}

/// Converts f16 values, 8 per instruction.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_f16(rows: &[u8], out: &mut [f32]) {
    let (bytes, tail) = rows.as_chunks::<16>();
    let (o8, o_tail) = out.as_chunks_mut::<8>();
    for (b, o) in bytes.iter().zip(o8.iter_mut()) {
        let (halves, _) = b.as_chunks::<8>();
        let (lo, hi) = (i64::from_le_bytes(halves[0]), i64::from_le_bytes(halves[1]));
        store8(o, _mm256_cvtph_ps(_mm_set_epi64x(hi, lo)));
    }
    for (b, o) in tail.chunks_exact(2).zip(o_tail) {
        *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
    }
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows<const NX: usize>(tile: Tile<'_>, w: &[f32]) -> [[f32; TILE_W]; TILE_X] {
    let cols = tile.cols;
    // Loops rather than `array::from_fn`/`map`: their closures were not inlined here.
    let mut x: [&[f32]; NX] = [&[]; NX];
    for (i, x) in x.iter_mut().enumerate() {
        *x = tile.row(i);
    }
    let mut result = [[0f32; TILE_W]; TILE_X];
    let (w0, w1, w2) = (&w[..cols], w.get(cols..2 * cols), w.get(2 * cols..3 * cols));
    match (w1, w2) {
        (Some(w1), Some(w2)) => widen(&mut result, dot::<NX, 3>(x, [w0, w1, w2])),
        (Some(w1), None) => widen(&mut result, dot::<NX, 2>(x, [w0, w1])),
        _ => widen(&mut result, dot::<NX, 1>(x, [w0])),
    }
    result
}

/// Copies `[f32; NW]` results into the fixed-size result.
#[inline]
fn widen<const NX: usize, const NW: usize>(result: &mut [[f32; TILE_W]; TILE_X], dots: [[f32; NW]; NX]) {
    for (r, d) in result.iter_mut().zip(dots) {
        r[..NW].copy_from_slice(&d);
    }
}

/// `NX × NW` dot products of equally long rows, 8 lanes per accumulator.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn dot<const NX: usize, const NW: usize>(x: [&[f32]; NX], w: [&[f32]; NW]) -> [[f32; NW]; NX] {
    let cols = x[0].len();
    let chunks = cols / 8;
    // Cut every row to the same length, so the loop's indexing needs no bounds checks.
    let mut xc: [&[[f32; 8]]; NX] = [&[]; NX];
    for i in 0..NX {
        xc[i] = &x[i].as_chunks::<8>().0[..chunks];
    }
    let mut wc: [&[[f32; 8]]; NW] = [&[]; NW];
    for j in 0..NW {
        wc[j] = &w[j].as_chunks::<8>().0[..chunks];
    }
    let mut acc = [[_mm256_setzero_ps(); NW]; NX];
    for k in 0..chunks {
        let mut wv = [_mm256_setzero_ps(); NW];
        for j in 0..NW {
            wv[j] = load8(&wc[j][k]);
        }
        for i in 0..NX {
            let xv = load8(&xc[i][k]);
            for j in 0..NW {
                acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
            }
        }
    }
    let mut dots = [[0f32; NW]; NX];
    for i in 0..NX {
        for j in 0..NW {
            let mut tail = 0.0;
            for (a, b) in x[i][chunks * 8..].iter().zip(&w[j][chunks * 8..cols]) {
                tail += a * b;
            }
            dots[i][j] = hsum(acc[i][j]) + tail;
        }
    }
    dots
}
