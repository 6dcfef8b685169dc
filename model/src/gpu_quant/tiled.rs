//! The tiled `#[cube]` kernel for prefill and batches: `y[n, rows] = x[n, cols] · Wᵀ` where n
//! is large enough that decoding each weight once per activation row (the matrix-vector
//! kernel, `super::kernels`) would cost more than the products.
//!
//! A cube computes a tile of [`TileShape::x_rows`] activation rows × [`TileShape::w_rows`]
//! weight rows. Each K step of `32 · chunks` columns, its units decode the tile's weight chunks
//! once into shared memory as f32 (`super::decode`), copy the activations' slice there as f32,
//! wait, then each unit accumulates its own outputs (a strided `per_x × per_w` sub-grid, so the
//! units of one warp read neighbouring shared words) in registers. Both tiles are stored
//! column-major (element k of row j at `k · tile_rows + j`), so the decoding units, which take
//! neighbouring rows, write neighbouring words. Shared memory stays within WebGPU's guaranteed
//! 16 KiB. Plain barriers and no plane operations, as in the matrix-vector kernel.

use burn::backend::cubecl::dtype_to_storage_type;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::decode::{CHUNK_ELEMENTS, Quads, chunk_values};
use super::kernels::kind_code;
use super::layout::{self, QuantKind};

#[cube(launch)]
fn quant_tiled_kernel<F: Float>(
    x: &Tensor<F>,
    words: &Quads,
    out: &mut Tensor<F>,
    rows: usize,
    chunks_per_row: usize,
    scales_at: usize,
    #[comptime] kind: u32,
    #[comptime] x_rows: usize,
    #[comptime] w_rows: usize,
    #[comptime] units: usize,
    #[comptime] per_w: usize,
    #[comptime] chunks: usize,
    #[define(F)] _dtype: ElemType,
) {
    let n = x.shape(0);
    let (out_row, out_col) = (out.stride(0), out.stride(1));
    let (x_row, x_col) = (x.stride(0), x.stride(1));
    let unit = UNIT_POS as usize;
    let first_w = CUBE_POS_X as usize * w_rows;
    let first_x = CUBE_POS_Y as usize * x_rows;
    // The units as a grid: `w_units` along the weight rows, `x_units` along the activations.
    let w_units = comptime![w_rows / per_w];
    let x_units = comptime![units / (w_rows / per_w)];
    let per_x = comptime![x_rows / (units / (w_rows / per_w))];
    let (unit_x, unit_w) = (unit / w_units, unit % w_units);
    let step = comptime![chunks * 32];

    let mut x_tile = Shared::<[f32]>::new_slice(comptime![x_rows * chunks * 32]);
    let mut w_tile = Shared::<[f32]>::new_slice(comptime![w_rows * chunks * 32]);
    let mut acc = Array::<f32>::new(comptime![per_w * (x_rows / (units / (w_rows / per_w)))]);
    #[unroll]
    for a in 0..per_x * per_w {
        acc[a] = 0.0;
    }
    let mut xs = Array::<f32>::new(per_x);
    let mut ws = Array::<f32>::new(per_w);
    let mut values = Array::<f32>::new(CHUNK_ELEMENTS);

    let mut c0 = 0usize;
    while c0 < chunks_per_row {
        // The weight chunks: item `q` is row `q % w_rows`, chunk `c0 + q / w_rows`.
        let mut q = unit;
        while q < w_rows * chunks {
            let j = q % w_rows;
            let c = c0 + q / w_rows;
            let (r, at) = (first_w + j, (q / w_rows) * 32 * w_rows + j);
            if r < rows && c < chunks_per_row {
                chunk_values(words, r, c, chunks_per_row, scales_at, &mut values, kind);
                #[unroll]
                for l in 0..32usize {
                    w_tile[at + l * w_rows] = values[l];
                }
            } else {
                // Past the last row or chunk: zeros (their products are never written, but
                // shared memory starts undefined).
                for l in 0..32usize {
                    w_tile[at + l * w_rows] = 0.0;
                }
            }
            q += units;
        }
        // The activations: element `e` is column `e % step` of tile row `e / step`, so
        // neighbouring units read neighbouring columns.
        let mut e = unit;
        while e < x_rows * step {
            let (i, k) = (e / step, e % step);
            let row = first_x + i;
            let col = c0 * 32 + k;
            let mut value = f32::new(0.0);
            if row < n && col < chunks_per_row * 32 {
                value = f32::cast_from(x[row * x_row + col * x_col]);
            }
            x_tile[k * x_rows + i] = value;
            e += units;
        }
        sync_cube();
        for k in 0..step {
            #[unroll]
            for a in 0..per_x {
                xs[a] = x_tile[k * x_rows + unit_x + a * x_units];
            }
            #[unroll]
            for b in 0..per_w {
                ws[b] = w_tile[k * w_rows + unit_w + b * w_units];
            }
            #[unroll]
            for a in 0..per_x {
                #[unroll]
                for b in 0..per_w {
                    acc[a * per_w + b] += xs[a] * ws[b];
                }
            }
        }
        // The next step overwrites both tiles.
        sync_cube();
        c0 += chunks;
    }
    #[unroll]
    for a in 0..per_x {
        let i = first_x + unit_x + a * x_units;
        #[unroll]
        for b in 0..per_w {
            let r = first_w + unit_w + b * w_units;
            if i < n && r < rows {
                out[i * out_row + r * out_col] = F::cast_from(acc[a * per_w + b]);
            }
        }
    }
}

/// A cube's tile and how its units share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TileShape {
    /// Activation rows per cube.
    pub x_rows: usize,
    /// Weight rows (outputs per activation row) per cube.
    pub w_rows: usize,
    /// Units per cube.
    pub units: usize,
    /// Weight rows per unit (the rest of its `x_rows · w_rows / units` outputs are activation
    /// rows).
    pub per_w: usize,
    /// 32-column chunks per K step (between two barriers).
    pub chunks: usize,
}

impl TileShape {
    /// Bytes of shared memory a cube takes (both tiles, f32).
    pub fn shared_bytes(self) -> usize {
        (self.x_rows + self.w_rows) * self.chunks * CHUNK_ELEMENTS * 4
    }

    /// Whether the units divide the tile evenly (and the tile fits WebGPU's 16 KiB).
    pub fn is_valid(self) -> bool {
        let w_units = self.w_rows / self.per_w.max(1);
        self.per_w > 0
            && self.chunks > 0
            && self.w_rows.is_multiple_of(self.per_w)
            && w_units > 0
            && self.units.is_multiple_of(w_units)
            && self.x_rows.is_multiple_of(self.units / w_units)
            && self.x_rows >= self.units / w_units
            && self.shared_bytes() <= 16 << 10
    }
}

/// The tile a GPU gets: 64 × 64 outputs over 256 units (4 × 4 each), one chunk a step
/// (exactly 16 KiB of shared memory). Not measured on a GPU yet.
const GPU_TILE: TileShape = TileShape { x_rows: 64, w_rows: 64, units: 256, per_w: 4, chunks: 1 };

/// The tile lavapipe gets (no physical device; see `kernels::default_shape`): it runs a cube's
/// units as SIMD lanes of one CPU thread and pays for every barrier, so few units with many
/// outputs each (8 × 8) and 64-column steps. Measured there on a 1536 × 576 Q4_1 matrix and 94
/// activation rows (a temporary harness, two busy cores): 131–161 ms against 210–380 ms for
/// the other shapes tried (64 × 64 over 256 units among them), 430–620 ms for the
/// matrix-vector kernel, 85–160 ms for burn's dense f32 matmul.
const CPU_TILE: TileShape = TileShape { x_rows: 32, w_rows: 32, units: 16, per_w: 8, chunks: 2 };

/// The shapes tests run on one device: the two defaults and a tile longer along the weight
/// rows (16 activation rows × 64 weight rows, 4 × 4 per unit).
pub(super) const TILES: [TileShape; 3] =
    [CPU_TILE, GPU_TILE, TileShape { x_rows: 16, w_rows: 64, units: 64, per_w: 4, chunks: 1 }];

/// The tile for the device `client` runs on.
pub(super) fn default_tile(client: &cubecl::client::Client) -> TileShape {
    if client.properties().identity.physical.is_none() { CPU_TILE } else { GPU_TILE }
}

/// Activation rows from which the tiled kernel replaces the matrix-vector one: 8 on GPUs
/// (where llama.cpp switches; not measured here), 12 on lavapipe, where the two cost the same
/// between 8 and 16 rows on the matrix above (27–40 ms at 8, 46–63 ms against 123 ms at 16).
pub(super) fn default_tiled_from(client: &cubecl::client::Client) -> usize {
    if client.properties().identity.physical.is_none() { 12 } else { 8 }
}

/// Launches the tiled kernel for `kind` on `x` (`[n, cols]`, any float dtype the runtime has)
/// and the packed `words` of a `rows × cols` matrix; returns `[n, rows]` in `x`'s dtype.
pub(super) fn quant_tiled(
    x: CubeTensor,
    words: CubeTensor,
    kind: QuantKind,
    rows: usize,
    cols: usize,
    tile: Option<TileShape>,
) -> CubeTensor {
    let x = into_contiguous(x);
    let n = x.meta.shape()[0];
    let dtype = x.dtype;
    let client = x.client.clone();
    let output = empty_device_contiguous_dtype(client.clone(), x.device.clone(), [n, rows].into(), dtype);
    if n == 0 || rows == 0 {
        return output;
    }
    let tile = tile.unwrap_or_else(|| default_tile(&client));
    debug_assert!(tile.is_valid(), "{tile:?}");
    let chunks_per_row = cols / CHUNK_ELEMENTS;
    let scales_at = layout::scales_at(kind, rows * (cols / kind.block_elements()));
    let cube_count = CubeCount::Static(rows.div_ceil(tile.w_rows) as u32, n.div_ceil(tile.x_rows) as u32, 1);
    let cube_dim = CubeDim::new_1d(tile.units as u32);
    let (x, words, out) = (x.into_tensor_arg(), words.into_tensor_arg(), output.clone().into_tensor_arg());
    quant_tiled_kernel::launch(
        &client,
        cube_count,
        cube_dim,
        x,
        words,
        out,
        rows,
        chunks_per_row,
        scales_at,
        kind_code(kind),
        tile.x_rows,
        tile.w_rows,
        tile.units,
        tile.per_w,
        tile.chunks,
        dtype_to_storage_type(dtype),
    );
    output
}
