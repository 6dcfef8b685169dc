//! The portable dot kernel of the panel path: plain Rust over `[f32; 8]` lanes, written so
//! the compiler vectorizes it for any target (SSE2, NEON, …). It is also the reference the
//! AVX2 kernels are tested against.

use super::{TILE_W, TILE_X, Tile};

/// Lanes per accumulator: one AVX register, two SSE/NEON registers.
const LANES: usize = 8;

/// Dot products of the tile's activation rows with the (1 to [`TILE_W`]) panel rows in `w`;
/// `result[i][j]` = row `i` · weight row `j`, entries past the tile are zero.
pub(super) fn dot_tile(tile: Tile<'_>, w: &[f32]) -> [[f32; TILE_W]; TILE_X] {
    match tile.len {
        1 => dot_rows::<1>(tile, w),
        2 => dot_rows::<2>(tile, w),
        3 => dot_rows::<3>(tile, w),
        _ => dot_rows::<4>(tile, w),
    }
}

fn dot_rows<const NX: usize>(tile: Tile<'_>, w: &[f32]) -> [[f32; TILE_W]; TILE_X] {
    let cols = tile.cols;
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
fn widen<const NX: usize, const NW: usize>(result: &mut [[f32; TILE_W]; TILE_X], dots: [[f32; NW]; NX]) {
    for (r, d) in result.iter_mut().zip(dots) {
        r[..NW].copy_from_slice(&d);
    }
}

/// `NX × NW` dot products of equally long rows with `LANES` partial sums each.
fn dot<const NX: usize, const NW: usize>(x: [&[f32]; NX], w: [&[f32]; NW]) -> [[f32; NW]; NX] {
    let cols = x[0].len();
    let chunks = cols / LANES;
    // Cut every row to the same length, so the loop's indexing needs no bounds checks.
    let mut xc: [&[[f32; LANES]]; NX] = [&[]; NX];
    for i in 0..NX {
        xc[i] = &x[i].as_chunks::<LANES>().0[..chunks];
    }
    let mut wc: [&[[f32; LANES]]; NW] = [&[]; NW];
    for j in 0..NW {
        wc[j] = &w[j].as_chunks::<LANES>().0[..chunks];
    }
    let mut acc = [[[0f32; LANES]; NW]; NX];
    for k in 0..chunks {
        for i in 0..NX {
            let xv = &xc[i][k];
            for j in 0..NW {
                let wv = &wc[j][k];
                for l in 0..LANES {
                    acc[i][j][l] += xv[l] * wv[l];
                }
            }
        }
    }
    let mut dots = [[0f32; NW]; NX];
    for i in 0..NX {
        for j in 0..NW {
            let a = acc[i][j];
            // Pairwise, like a vector horizontal sum.
            let s4 = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
            let mut tail = 0.0;
            for (a, b) in x[i][chunks * LANES..].iter().zip(&w[j][chunks * LANES..cols]) {
                tail += a * b;
            }
            dots[i][j] = (s4[0] + s4[2]) + (s4[1] + s4[3]) + tail;
        }
    }
    dots
}
