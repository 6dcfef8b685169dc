//! The panel path's AVX-512 kernel, for prefill-sized batches on CPUs with AVX-512F.
//!
//! The AVX2 panel kernel ([`super::panel`]) takes dot products along the rows: its lanes run
//! over the input dimension and every result ends in a horizontal sum. Here the lanes run over
//! activation rows instead: the activations are transposed once per call into blocks of
//! [`X_BLOCK`] rows ([`transpose_blocks`]; element `k` of the 16 rows is one vector), and each
//! weight of the panel is broadcast and multiplied into the vectors of up to [`MAX_BLOCKS`]
//! blocks. A tile of 6 weight rows × 4 blocks keeps 24 accumulators in the 32 zmm
//! registers and needs 10 loads per 24 multiply-adds, so the FMA units, not the loads, bound
//! it; there is no horizontal sum, and the weight panel stays row-major as the decoders
//! write it. The transposition costs one pass over the activations per call, shared by all
//! weight rows and threads.

use std::arch::x86_64::*;

use super::Avx512;
use crate::quant_matmul::output::OutColumns;

/// Activation rows per transposed block: the lanes of one zmm register.
const X_BLOCK: usize = 16;
/// Weight rows per group (the panel is zero-padded to a multiple of this): one tile of
/// one or two activation blocks, two tiles of three or four.
pub(in crate::quant_matmul) const W_ROWS: usize = 12;
/// Activation blocks per tile: 4 blocks × 6 weight rows = 24 accumulators (2 × 12 with two
/// blocks; one block × 12 rows is bound by its 13 loads per 12 multiply-adds).
const MAX_BLOCKS: usize = 4;

/// `x[n, cols]` as blocks of [`X_BLOCK`] rows, each `[cols][X_BLOCK]` (element `k` of the
/// block's rows contiguous), rows past `n` zero: `n.div_ceil(16) × cols × 16` floats.
pub(in crate::quant_matmul) fn transpose_blocks(_cpu: Avx512, x: &[f32], n: usize, cols: usize, out: &mut Vec<f32>) {
    assert_eq!(x.len(), n * cols, "activations are n × cols");
    assert!(X_BLOCK * cols <= i32::MAX as usize, "gather offsets fit in i32");
    // Every element is written below: no need to clear what a previous call left.
    let len = n.div_ceil(X_BLOCK) * X_BLOCK * cols;
    out.truncate(len);
    out.resize(len, 0.0);
    for (b, block) in out.chunks_exact_mut(X_BLOCK * cols).enumerate() {
        let rows = &x[b * X_BLOCK * cols..((b + 1) * X_BLOCK).min(n) * cols];
        // SAFETY: the `Avx512` token proves the CPU has AVX-512F; `rows` holds whole rows
        // of `cols`, at most 16, and `block` 16 × `cols` floats.
        unsafe { transpose_block(rows, cols, block) };
    }
}

/// One block of [`transpose_blocks`]: `block[k · 16 + l] = rows[l · cols + k]`, zero for
/// lanes past the rows given. Sixteen columns at a time as a 16 × 16 transposition in
/// registers ([`transpose16`]); the last `cols % 16` columns with one gather each. (Gathering
/// every column took 2.4 % of a Gemma 3 prefill's products, serial on the calling thread
/// while the helpers waited for the transposed activations.)
///
/// # Safety
/// The CPU must have AVX-512F; `rows` must be at most 16 rows of `cols`, `block` 16 × `cols`
/// floats, and `16 · cols` must fit in an `i32`.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_block(rows: &[f32], cols: usize, block: &mut [f32]) {
    let lanes = rows.len() / cols;
    assert!(lanes <= X_BLOCK && rows.len() == lanes * cols && block.len() == X_BLOCK * cols);
    let whole = cols / X_BLOCK * X_BLOCK;
    for k0 in (0..whole).step_by(X_BLOCK) {
        let mut r = [_mm512_setzero_ps(); X_BLOCK];
        for (l, v) in r.iter_mut().enumerate().take(lanes) {
            // SAFETY: row `l < lanes` has `cols ≥ k0 + 16` elements from `l · cols`.
            *v = unsafe { _mm512_loadu_ps(rows.as_ptr().add(l * cols + k0)) };
        }
        for (k, v) in transpose16(r).into_iter().enumerate() {
            // SAFETY: `(k0 + k) · 16 + 16 ≤ cols · 16 = block.len()`.
            unsafe { _mm512_storeu_ps(block.as_mut_ptr().add((k0 + k) * X_BLOCK), v) };
        }
    }
    let step = _mm512_set1_epi32(cols as i32);
    let index = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), step);
    let mask: __mmask16 = ((1u32 << lanes) - 1) as __mmask16;
    for k in whole..cols {
        // SAFETY: lane `l < lanes` reads `rows[l · cols + k]`, inside `rows`; masked lanes
        // read nothing; the store writes `block[k · 16..k · 16 + 16]`, inside `block`.
        unsafe {
            let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, index, rows.as_ptr().add(k));
            _mm512_storeu_ps(block.as_mut_ptr().add(k * X_BLOCK), v);
        }
    }
}

/// The 16 × 16 transposition of `r` (vector `k` of the result holds element `k` of each of
/// the 16 vectors): pairs of floats, then pairs of pairs within each 128-bit lane, then the
/// four lanes across vectors.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // t[2i] lane j: r[2i][4j], r[2i+1][4j], r[2i][4j+1], r[2i+1][4j+1]; t[2i+1] the same for
    // 4j+2 and 4j+3.
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4i + c] lane j: element 4j + c of vectors 4i..4i + 4.
    let mut u = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        u[4 * i] = pairs(true, t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = pairs(false, t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = pairs(true, t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = pairs(false, t[4 * i + 1], t[4 * i + 3]);
    }
    // Element 4j + c of all 16 vectors: lane j of u[c], u[4 + c], u[8 + c], u[12 + c].
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let lo_ab = _mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]);
        let hi_ab = _mm512_shuffle_f32x4::<0xEE>(u[c], u[4 + c]);
        let lo_cd = _mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]);
        let hi_cd = _mm512_shuffle_f32x4::<0xEE>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(lo_ab, lo_cd);
        out[4 + c] = _mm512_shuffle_f32x4::<0xDD>(lo_ab, lo_cd);
        out[8 + c] = _mm512_shuffle_f32x4::<0x88>(hi_ab, hi_cd);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(hi_ab, hi_cd);
    }
    out
}

/// Float pairs of `a` and `b` interleaved within each 128-bit lane: the low pairs
/// (`a.0, b.0`) or the high ones (`a.1, b.1`).
#[inline]
#[target_feature(enable = "avx512f")]
fn pairs(lo: bool, a: __m512, b: __m512) -> __m512 {
    let (a, b) = (_mm512_castps_pd(a), _mm512_castps_pd(b));
    _mm512_castpd_ps(if lo { _mm512_unpacklo_pd(a, b) } else { _mm512_unpackhi_pd(a, b) })
}

/// Output columns `first_row..first_row + rows` for all `n` activation rows, from `x_t`
/// ([`transpose_blocks`] of the activations) and `w`, a panel of `rows` decoded weight rows
/// zero-padded to a multiple of [`W_ROWS`] (`rows.next_multiple_of(W_ROWS) × cols` floats).
/// `sums` is scratch space, resized here.
///
/// The input dimension is cut into pieces of [`K_STEP`] elements: a piece of four blocks
/// (16 KiB) and of the panel stay in L1 while every tile runs over them, and the tiles'
/// sums wait in `sums` between pieces (without the cut, each tile streamed its activations
/// from L2, which could not keep up with the multiply-adds).
///
/// `next` is the encoded weight rows the caller decodes after this panel: their cache lines
/// are prefetched a few at a time between the tiles, so that the decoder finds them in L2.
/// (Decoding read them from memory, a 4 KiB page at a time out of reach of the hardware
/// prefetchers: on Zen 5 a third of a Gemma 3 prefill's decode time, most of it waiting on
/// the first load of each block's scale.)
#[allow(clippy::too_many_arguments)]
pub(in crate::quant_matmul) fn panel_rows(
    _cpu: Avx512,
    x_t: &[f32],
    n: usize,
    cols: usize,
    w: &[f32],
    rows: usize,
    first_row: usize,
    next: &[u8],
    sums: &mut Vec<f32>,
    out: &mut OutColumns<'_>,
) {
    let blocks = n.div_ceil(X_BLOCK);
    let groups = rows.div_ceil(W_ROWS);
    assert!(rows <= MAX_PANEL_ROWS, "a panel of at most {MAX_PANEL_ROWS} rows");
    assert_eq!(x_t.len(), blocks * X_BLOCK * cols, "transposed activations of n rows");
    assert_eq!(w.len(), groups * W_ROWS * cols, "a zero-padded panel");
    // Sums of group `g`, block `b`, weight row `j` (of the group), lane `l`, at
    // `((g · blocks + b) · W_ROWS + j) · 16 + l`.
    sums.clear();
    sums.resize(groups * blocks * W_ROWS * X_BLOCK, 0.0);
    let half = W_ROWS / 2;
    let tiles = cols.div_ceil(K_STEP) * blocks.div_ceil(MAX_BLOCKS) * groups;
    let mut prefetch = Prefetch::new(next, tiles);
    for k0 in (0..cols).step_by(K_STEP) {
        let piece = Piece { cols, k0, len: K_STEP.min(cols - k0) };
        for b0 in (0..blocks).step_by(MAX_BLOCKS) {
            let x = &x_t[b0 * X_BLOCK * cols..];
            for (g, w) in w.chunks_exact(W_ROWS * cols).enumerate() {
                prefetch.some();
                let (w_lo, w_hi) = w.split_at(half * cols);
                let at = (g * blocks + b0) * W_ROWS * X_BLOCK;
                let (lo, hi) = (&mut sums[at..], half * X_BLOCK);
                // SAFETY: the `Avx512` token proves the CPU has AVX-512F; `x` holds at least
                // `blocks - b0` blocks of `cols × 16` floats, `w` `W_ROWS × cols` (asserted
                // above), and the sums the rest of this group's (`blocks - b0`) blocks.
                unsafe {
                    match blocks - b0 {
                        1 => tile_kernel::<1, W_ROWS>(x, w, piece, lo),
                        2 => tile_kernel::<2, W_ROWS>(x, w, piece, lo),
                        3 => {
                            tile_kernel::<3, { W_ROWS / 2 }>(x, w_lo, piece, lo);
                            tile_kernel::<3, { W_ROWS / 2 }>(x, w_hi, piece, &mut lo[hi..]);
                        }
                        _ => {
                            tile_kernel::<MAX_BLOCKS, { W_ROWS / 2 }>(x, w_lo, piece, lo);
                            tile_kernel::<MAX_BLOCKS, { W_ROWS / 2 }>(x, w_hi, piece, &mut lo[hi..]);
                        }
                    }
                }
            }
        }
    }
    // Block by block: each group's sums for the block, a `W_ROWS × 16` tile (weight row ×
    // activation row), are transposed into `stage` (16 activation rows × the panel's
    // columns), which then goes out as one contiguous run per activation row. (Gathering
    // every element on its own, down the columns of `sums`, took a tenth of a prefill.)
    let mut stage = [[0f32; STAGE_WIDTH]; X_BLOCK];
    for b in 0..blocks {
        for g in 0..groups {
            let tile = &sums[(g * blocks + b) * W_ROWS * X_BLOCK..][..W_ROWS * X_BLOCK];
            // SAFETY: the `Avx512` token proves the CPU has AVX-512F; `g · W_ROWS + 16 ≤
            // MAX_PANEL_ROWS + 4 ≤ STAGE_WIDTH` (rows ≤ MAX_PANEL_ROWS, asserted above).
            unsafe { transpose_tile(tile, &mut stage, g * W_ROWS) };
        }
        let lanes = X_BLOCK.min(n - b * X_BLOCK);
        for (l, staged) in stage.iter().enumerate().take(lanes) {
            out.put_run(b * X_BLOCK + l, first_row, &staged[..rows]);
        }
    }
}

/// Prefetches a byte range's cache lines into L2, an equal share at each of a number of
/// calls.
struct Prefetch<'a> {
    bytes: &'a [u8],
    /// Next byte offset to prefetch.
    at: usize,
    /// Bytes per call, whole cache lines.
    step: usize,
}

impl<'a> Prefetch<'a> {
    const LINE: usize = 64;

    fn new(bytes: &'a [u8], calls: usize) -> Self {
        let lines = bytes.len().div_ceil(Self::LINE);
        Prefetch { bytes, at: 0, step: lines.div_ceil(calls.max(1)) * Self::LINE }
    }

    /// The next share of the lines.
    #[inline(always)]
    fn some(&mut self) {
        let end = (self.at + self.step).min(self.bytes.len());
        while self.at < end {
            // SAFETY: `at < bytes.len()`, so the address is inside `bytes`; a prefetch never
            // faults and changes nothing but the caches.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(self.bytes.as_ptr().add(self.at).cast()) };
            self.at += Self::LINE;
        }
    }
}

/// Columns of the staging block of [`panel_rows`]: a panel's rows, plus room for the four
/// lanes past the last group's [`W_ROWS`] that [`transpose_tile`] stores.
const STAGE_WIDTH: usize = MAX_PANEL_ROWS + X_BLOCK;

/// `stage[l][at + j] = tile[j · 16 + l]` for the `W_ROWS` weight rows `j` and 16 lanes `l`;
/// also zeroes `stage[l][at + W_ROWS..at + 16]` (the next group's columns, which it writes
/// after this one, or columns past the panel's rows).
///
/// # Safety
/// The CPU must have AVX-512F, and `at + 16 ≤ STAGE_WIDTH`.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_tile(tile: &[f32], stage: &mut [[f32; STAGE_WIDTH]; X_BLOCK], at: usize) {
    const { assert!(W_ROWS <= X_BLOCK) };
    assert!(tile.len() >= W_ROWS * X_BLOCK && at + X_BLOCK <= STAGE_WIDTH);
    // Element `j` of the gathered vector is weight row `j`'s sum for one lane.
    let index = _mm512_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240);
    let rows: __mmask16 = (1 << W_ROWS) - 1;
    for (l, staged) in stage.iter_mut().enumerate() {
        // SAFETY: the masked lanes read `tile[j · 16 + l]` for `j < W_ROWS`, inside `tile`
        // (asserted); the store writes `staged[at..at + 16]`, inside (asserted).
        unsafe {
            let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), rows, index, tile.as_ptr().add(l));
            _mm512_storeu_ps(staged.as_mut_ptr().add(at), v);
        }
    }
}

/// Most weight rows one panel may have (see [`panel_rows`]'s caller).
pub(in crate::quant_matmul) const MAX_PANEL_ROWS: usize = 16 * W_ROWS;

/// Input elements per piece (see [`panel_rows`]).
const K_STEP: usize = 64;

/// Elements `k0..k0 + len` of rows `cols` long.
#[derive(Clone, Copy)]
struct Piece {
    cols: usize,
    k0: usize,
    len: usize,
}

/// Adds `MB` activation blocks × `NW` weight rows over one piece of the input dimension to
/// their sums: block `m`'s sums with weight row `j` at `sums[(m · W_ROWS + j) · 16..]`.
///
/// # Safety
/// The CPU must have AVX-512F; `x` must hold `MB × cols × 16` floats, `w` `NW × cols`, and
/// `sums` `((MB − 1) · W_ROWS + NW) × 16`.
#[target_feature(enable = "avx512f")]
unsafe fn tile_kernel<const MB: usize, const NW: usize>(x: &[f32], w: &[f32], piece: Piece, sums: &mut [f32]) {
    let Piece { cols, k0, len } = piece;
    debug_assert!(x.len() >= MB * cols * X_BLOCK && w.len() >= NW * cols && k0 + len <= cols);
    debug_assert!(sums.len() >= ((MB - 1) * W_ROWS + NW) * X_BLOCK);
    let (xp, wp, sp) = (x.as_ptr(), w.as_ptr(), sums.as_mut_ptr());
    let at = |m: usize, j: usize| (m * W_ROWS + j) * X_BLOCK;
    let mut acc = [[_mm512_setzero_ps(); MB]; NW];
    for (j, acc) in acc.iter_mut().enumerate() {
        for (m, acc) in acc.iter_mut().enumerate() {
            // SAFETY: inside `sums` (the caller's contract).
            *acc = unsafe { _mm512_loadu_ps(sp.add(at(m, j))) };
        }
    }
    for k in k0..k0 + len {
        let mut xv = [_mm512_setzero_ps(); MB];
        for (m, xv) in xv.iter_mut().enumerate() {
            // SAFETY: block `m`'s element `k` is inside `x` (the caller's contract).
            *xv = unsafe { _mm512_loadu_ps(xp.add((m * cols + k) * X_BLOCK)) };
        }
        for (j, acc) in acc.iter_mut().enumerate() {
            // SAFETY: weight row `j`'s element `k` is inside `w` (the caller's contract).
            let wv = _mm512_set1_ps(unsafe { *wp.add(j * cols + k) });
            for (acc, &xv) in acc.iter_mut().zip(&xv) {
                *acc = _mm512_fmadd_ps(xv, wv, *acc);
            }
        }
    }
    for (j, acc) in acc.iter().enumerate() {
        for (m, &acc) in acc.iter().enumerate() {
            // SAFETY: inside `sums` (the caller's contract).
            unsafe { _mm512_storeu_ps(sp.add(at(m, j)), acc) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the layout's definition, at row counts around a block and column counts with
    /// and without a partial 16-column tail.
    #[test]
    fn transposed_blocks_hold_each_element_where_the_layout_says() {
        let Some(cpu) = Avx512::detect() else {
            eprintln!("no AVX-512F on this CPU: skipped");
            return;
        };
        for cols in [1usize, 15, 16, 17, 40, 640] {
            for n in [1usize, 7, 15, 16, 17, 40, 64] {
                let x: Vec<f32> = (0..n * cols).map(|i| i as f32 * 0.5 - 3.0).collect();
                let mut out = vec![f32::NAN; 3];
                transpose_blocks(cpu, &x, n, cols, &mut out);
                assert_eq!(out.len(), n.div_ceil(X_BLOCK) * X_BLOCK * cols);
                for (b, block) in out.chunks_exact(X_BLOCK * cols).enumerate() {
                    for k in 0..cols {
                        for l in 0..X_BLOCK {
                            let row = b * X_BLOCK + l;
                            let want = if row < n { x[row * cols + k] } else { 0.0 };
                            assert_eq!(block[k * X_BLOCK + l], want, "n={n} cols={cols} block {b} k={k} lane {l}");
                        }
                    }
                }
            }
        }
    }
}
