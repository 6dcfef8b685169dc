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
/// Input elements transposed per pass over the 16 rows of a block, so the written part of
/// the block (64 bytes per element) stays in L1.
const TRANSPOSE_COLS: usize = 64;

/// `x[n, cols]` as blocks of [`X_BLOCK`] rows, each `[cols][X_BLOCK]` (element `k` of the
/// block's rows contiguous), rows past `n` zero: `n.div_ceil(16) × cols × 16` floats.
pub(in crate::quant_matmul) fn transpose_blocks(_cpu: Avx512, x: &[f32], n: usize, cols: usize, out: &mut Vec<f32>) {
    assert_eq!(x.len(), n * cols, "activations are n × cols");
    out.clear();
    out.resize(n.div_ceil(X_BLOCK) * X_BLOCK * cols, 0.0);
    for (b, block) in out.chunks_exact_mut(X_BLOCK * cols).enumerate() {
        let rows = &x[b * X_BLOCK * cols..((b + 1) * X_BLOCK).min(n) * cols];
        for k0 in (0..cols).step_by(TRANSPOSE_COLS) {
            let k1 = (k0 + TRANSPOSE_COLS).min(cols);
            let dst = &mut block[k0 * X_BLOCK..k1 * X_BLOCK];
            for (l, row) in rows.chunks_exact(cols).enumerate() {
                for (d, &v) in dst.chunks_exact_mut(X_BLOCK).zip(&row[k0..k1]) {
                    d[l] = v;
                }
            }
        }
    }
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
#[allow(clippy::too_many_arguments)]
pub(in crate::quant_matmul) fn panel_rows(
    _cpu: Avx512,
    x_t: &[f32],
    n: usize,
    cols: usize,
    w: &[f32],
    rows: usize,
    first_row: usize,
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
    for k0 in (0..cols).step_by(K_STEP) {
        let piece = Piece { cols, k0, len: K_STEP.min(cols - k0) };
        for b0 in (0..blocks).step_by(MAX_BLOCKS) {
            let x = &x_t[b0 * X_BLOCK * cols..];
            for (g, w) in w.chunks_exact(W_ROWS * cols).enumerate() {
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
    // Row by row, so each activation row's results are one contiguous run of the output
    // (element by element, down the columns, every write touched another cache line).
    let mut run = [0f32; MAX_PANEL_ROWS];
    let run = &mut run[..rows];
    for i in 0..n {
        let (b, l) = (i / X_BLOCK, i % X_BLOCK);
        for (r, v) in run.iter_mut().enumerate() {
            let (g, j) = (r / W_ROWS, r % W_ROWS);
            *v = sums[((g * blocks + b) * W_ROWS + j) * X_BLOCK + l];
        }
        out.put_run(i, first_row, run);
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
