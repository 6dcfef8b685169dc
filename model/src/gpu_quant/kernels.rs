//! The matrix-vector `#[cube]` kernel: `y[n, rows] = x[n, cols] · Wᵀ` (W of any [`QuantKind`])
//! in the packed layout of [`super::layout`], for a few activation rows (`super::tiled` takes
//! more). A [`MatvecShape`] says how units share the work: `lanes` units per group of
//! `rows_per_unit` outputs of one activation row.
//!
//! Each lane takes 32-element chunks of the weight rows in turn (a block, or a sub-block of a
//! K-quant super-block, so that rows of a few super-blocks still give 32 lanes work): it loads
//! the chunk's 32 activations once into registers (8 `vec4` loads), then for each of its rows
//! decodes the chunk's weights (`super::decode`) and adds their dot product to that row's f32
//! sum; a group's lanes then add their sums in shared memory. GPUs take 32 lanes and one row
//! (a cube per output, neighbouring lanes reading neighbouring words), lavapipe one lane and 8
//! rows, so each activation load serves 8 rows: see [`default_shape`]. Activations are read in
//! their own dtype and the result is written in it; everything in between is f32. Plain
//! barriers, no plane (subgroup) operations, so it runs wherever cubecl does; not tuned for
//! GPUs (no plane reduction; see docs/gpu-quantized-plan.md §4).

use burn::backend::cubecl::dtype_to_storage_type;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

use super::decode::{CHUNK_ELEMENTS, KIND_Q4_0, KIND_Q4_1, KIND_Q4_K, KIND_Q5_0, KIND_Q5_K, KIND_Q6_K, KIND_Q8_0};
use super::decode::{Quads, chunk_values};
use super::layout::{self, QuantKind};

/// Output group `g` (in order: activation row `g / groups`, weight rows `rows_per_unit · (g %
/// groups) ..`, so a cube's groups share their activations) goes to `lanes` units; lane l
/// takes chunks l, l + lanes, … of the group's rows, then the lanes add their partial sums in
/// shared memory. With one lane there is no reduction and no barrier.
#[cube(launch)]
fn quant_matvec_kernel<F: Float>(
    x: &Tensor<Vector<F, Const<4>>>,
    words: &Quads,
    out: &mut Tensor<F>,
    rows: usize,
    chunks_per_row: usize,
    scales_at: usize,
    #[comptime] kind: u32,
    #[comptime] cube_units: usize,
    #[comptime] lanes: usize,
    #[comptime] rows_per_unit: usize,
    #[define(F)] _dtype: ElemType,
) {
    let n = x.shape(0);
    let (out_row, out_col) = (out.stride(0), out.stride(1));
    let x_row = x.stride(0);
    let unit = UNIT_POS as usize;
    let groups = rows.div_ceil(rows_per_unit);
    let group = CUBE_POS * comptime![cube_units / lanes] + unit / lanes;
    let lane = unit % lanes;
    // Units past the last output stay to the end: the barriers below need every unit.
    let active = group < n * groups;
    let i = group / groups;
    let first_row = (group % groups) * rows_per_unit;
    let mut sums = Array::<f32>::new(rows_per_unit);
    #[unroll]
    for j in 0..rows_per_unit {
        sums[j] = 0.0;
    }
    let mut xs = Array::<f32>::new(CHUNK_ELEMENTS);
    let mut values = Array::<f32>::new(CHUNK_ELEMENTS);
    if active {
        let mut c = lane;
        while c < chunks_per_row {
            // x is contiguous with a multiple of 32 columns: the chunk is 8 aligned quads.
            let x_at = (i * x_row + c * CHUNK_ELEMENTS) / 4;
            #[unroll]
            for v in 0..8usize {
                let quad = x[x_at + v];
                #[unroll]
                for t in 0..4usize {
                    xs[v * 4 + t] = f32::cast_from(quad.extract(t));
                }
            }
            #[unroll]
            for j in 0..rows_per_unit {
                let r = first_row + j;
                if r < rows {
                    chunk_values(words, r, c, chunks_per_row, scales_at, &mut values, kind);
                    let mut dot = f32::new(0.0);
                    #[unroll]
                    for l in 0..CHUNK_ELEMENTS {
                        dot += values[l] * xs[l];
                    }
                    sums[j] += dot;
                }
            }
            c += lanes;
        }
    }
    if comptime![lanes > 1] {
        let mut shared = Shared::<[f32]>::new_slice(comptime![cube_units * rows_per_unit]);
        #[unroll]
        for j in 0..rows_per_unit {
            shared[unit * rows_per_unit + j] = sums[j];
        }
        sync_cube();
        // `lanes / 2`, as a runtime value (a comptime one cannot be halved in a loop).
        let mut stride = (CUBE_DIM as usize) / comptime![2 * cube_units / lanes];
        while stride > 0 {
            if lane < stride {
                #[unroll]
                for j in 0..rows_per_unit {
                    let both = shared[unit * rows_per_unit + j] + shared[(unit + stride) * rows_per_unit + j];
                    shared[unit * rows_per_unit + j] = both;
                }
            }
            sync_cube();
            stride /= 2;
        }
        #[unroll]
        for j in 0..rows_per_unit {
            sums[j] = shared[unit * rows_per_unit + j];
        }
    }
    if active && lane == 0 {
        #[unroll]
        for j in 0..rows_per_unit {
            let r = first_row + j;
            if r < rows {
                out[i * out_row + r * out_col] = F::cast_from(sums[j]);
            }
        }
    }
}

/// The kernels' compile-time code for `kind`.
pub(super) fn kind_code(kind: QuantKind) -> u32 {
    match kind {
        QuantKind::Q8_0 => KIND_Q8_0,
        QuantKind::Q4_0 => KIND_Q4_0,
        QuantKind::Q4_1 => KIND_Q4_1,
        QuantKind::Q5_0 => KIND_Q5_0,
        QuantKind::Q4_K => KIND_Q4_K,
        QuantKind::Q5_K => KIND_Q5_K,
        QuantKind::Q6_K => KIND_Q6_K,
    }
}

/// How the matrix-vector kernel's units share the outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MatvecShape {
    /// Units per output group (a power of two, at most `cube_units`): they split the row's
    /// chunks and add their sums in shared memory.
    pub lanes: usize,
    /// Consecutive weight rows per output group: each activation chunk a lane loads serves
    /// them all.
    pub rows_per_unit: usize,
    /// Units per cube.
    pub cube_units: usize,
}

impl MatvecShape {
    pub fn is_valid(self) -> bool {
        self.lanes.is_power_of_two()
            && self.cube_units.is_multiple_of(self.lanes)
            && self.rows_per_unit > 0
            && self.cube_units * self.rows_per_unit * 4 <= 16 << 10
    }
}

/// A GPU's shape: 32 lanes per output (a cube per output, neighbouring units reading
/// neighbouring words; not yet measured on one).
const GPU_SHAPE: MatvecShape = MatvecShape { lanes: 32, rows_per_unit: 1, cube_units: 32 };

/// lavapipe's shape (a device that is no card: cubecl reports it without a physical device).
/// lavapipe runs a cube's units as SIMD lanes of one CPU thread, pays for every barrier, and
/// issues every load lane by lane, so one unit per output group, no reduction, and several
/// rows per unit that share each activation load. Measured there with
/// `gpu_quant::tests_bench`: see docs/gpu-quantized-plan.md §7.
const CPU_SHAPE: MatvecShape = MatvecShape { lanes: 1, rows_per_unit: 8, cube_units: 32 };

/// The shapes tests run on one device: the two defaults and two in between (several lanes
/// and several rows at once; an odd number of rows in small cubes).
pub(super) const SHAPES: [MatvecShape; 4] = [
    CPU_SHAPE,
    GPU_SHAPE,
    MatvecShape { lanes: 4, rows_per_unit: 2, cube_units: 32 },
    MatvecShape { lanes: 1, rows_per_unit: 3, cube_units: 8 },
];

/// The shape for the device `client` runs on.
fn default_shape(client: &cubecl::client::Client) -> MatvecShape {
    if client.properties().identity.physical.is_none() { CPU_SHAPE } else { GPU_SHAPE }
}

/// Launches the kernel for `kind` on `x` (`[n, cols]`, any float dtype the runtime has) and
/// the packed `words` of a `rows × cols` matrix, in `shape` (`None`: the device's); returns
/// `[n, rows]` in `x`'s dtype.
pub(super) fn quant_matvec(
    x: CubeTensor,
    words: CubeTensor,
    kind: QuantKind,
    rows: usize,
    cols: usize,
    shape: Option<MatvecShape>,
) -> CubeTensor {
    // A storage-tiled x (a matmul's output) is readable only as rows once untiled; the
    // kernel reads rows as aligned quads.
    let x = into_contiguous(x);
    let n = x.meta.shape()[0];
    let dtype = x.dtype;
    let client = x.client.clone();
    let output = empty_device_contiguous_dtype(client.clone(), x.device.clone(), [n, rows].into(), dtype);
    if n == 0 || rows == 0 {
        return output;
    }
    debug_assert!(cols.is_multiple_of(CHUNK_ELEMENTS) && x.meta.strides()[1] == 1, "contiguous 32-column chunks");
    let chunks_per_row = cols / CHUNK_ELEMENTS;
    let scales_at = layout::scales_at(kind, rows * (cols / kind.block_elements()));
    let shape = shape.unwrap_or_else(|| default_shape(&client));
    debug_assert!(shape.is_valid(), "{shape:?}");
    let groups = n * rows.div_ceil(shape.rows_per_unit);
    let cube_dim = CubeDim::new_1d(shape.cube_units as u32);
    let cube_count = calculate_cube_count_elemwise(&client, groups * shape.lanes, cube_dim);
    let (x, words, out) = (x.into_tensor_arg(), words.into_tensor_arg(), output.clone().into_tensor_arg());
    quant_matvec_kernel::launch(
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
        shape.cube_units,
        shape.lanes,
        shape.rows_per_unit,
        dtype_to_storage_type(dtype),
    );
    output
}
