//! The `#[cube]` kernel: `y[n, rows] = x[n, cols] · Wᵀ` (W of any [`QuantKind`]) in the packed
//! layout of [`super::layout`], `lanes` units per output element, 32 units a cube.
//!
//! Each lane takes 32-element chunks of the weight row in turn (a block, or a sub-block of a
//! K-quant super-block, so that rows of a few super-blocks still give 32 lanes work): it
//! decodes the chunk's quants from `u32` words in registers (`super::decode`), dots them with
//! the activations in f32 and applies the chunk's scales once; an output's lanes then add their
//! sums in shared memory. GPUs take 32 lanes (a cube per output), lavapipe one (32 outputs a
//! cube, no barrier): see [`default_lanes`]. Activations are read in their own dtype and the
//! result is written in it; everything in between is f32. Correct everywhere cubecl runs, not
//! tuned for GPUs (x is re-read per weight row and each weight block once per activation row,
//! so it runs only below a few activation rows, `super::tiled` from there on; no plane
//! reduction, no vectorised loads; see docs/gpu-quantized-plan.md §4).

use burn::backend::cubecl::dtype_to_storage_type;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

use super::decode::{q4_0_chunk, q4_1_chunk, q5_0_chunk, q6_k_chunk, q8_0_chunk, q45_k_chunk};
use super::layout::{self, QuantKind};

/// Elements a unit takes at a time: a block of the 32-element kinds, a sub-block of the
/// K-quants' 256-element super-blocks.
const CHUNK_ELEMENTS: usize = 32;

/// `lanes` units per output element `y[i, r]`, `CUBE_DIM / lanes` outputs per cube (the
/// outputs `i · rows + r` in order, so a cube's rows share their activations): the lanes take
/// the row's chunks in turn (lane l: chunks l, l + lanes, …, so neighbouring lanes read
/// neighbouring words), then add their partial sums in shared memory. With one lane there is
/// no reduction and no barrier. Plain barriers, no plane (subgroup) operations, so it runs
/// wherever cubecl does.
#[cube(launch)]
fn quant_matvec_kernel<F: Float>(
    x: &Tensor<F>,
    words: &Tensor<u32>,
    out: &mut Tensor<F>,
    rows: usize,
    chunks_per_row: usize,
    scales_at: usize,
    #[comptime] kind: u32,
    #[comptime] cube_units: usize,
    #[comptime] lanes: usize,
    #[define(F)] _dtype: ElemType,
) {
    let n = x.shape(0);
    let unit = UNIT_POS as usize;
    let output = CUBE_POS * comptime![cube_units / lanes] + unit / lanes;
    let lane = unit % lanes;
    // Units past the last output stay to the end: the barriers below need every unit.
    let active = output < n * rows;
    let i = output / rows;
    let r = output % rows;
    let mut partial = 0.0f32;
    if active {
        let x_row = i * x.stride(0);
        let x_col = x.stride(1);
        let mut c = lane;
        while c < chunks_per_row {
            let x_at = x_row + c * 32 * x_col;
            if comptime![kind == KIND_Q4_K || kind == KIND_Q5_K || kind == KIND_Q6_K] {
                // Chunk c of the row is sub-block c % 8 of its super-block c / 8.
                let block = r * (chunks_per_row / 8) + c / 8;
                if comptime![kind == KIND_Q6_K] {
                    partial += q6_k_chunk(x, words, x_at, x_col, block, c % 8, scales_at);
                } else {
                    partial += q45_k_chunk(x, words, x_at, x_col, block, c % 8, comptime![kind == KIND_Q5_K]);
                }
            } else {
                let block = r * chunks_per_row + c;
                if comptime![kind == KIND_Q4_1] {
                    partial += q4_1_chunk(x, words, x_at, x_col, block, scales_at);
                } else if comptime![kind == KIND_Q4_0] {
                    partial += q4_0_chunk(x, words, x_at, x_col, block, scales_at);
                } else if comptime![kind == KIND_Q5_0] {
                    partial += q5_0_chunk(x, words, x_at, x_col, block, scales_at);
                } else {
                    partial += q8_0_chunk(x, words, x_at, x_col, block, scales_at);
                }
            }
            c += lanes;
        }
    }
    if comptime![lanes > 1] {
        let mut sums = Shared::<[f32]>::new_slice(cube_units);
        sums[unit] = partial;
        sync_cube();
        // `lanes / 2`, as a runtime value (a comptime one cannot be halved in a loop).
        let mut stride = (CUBE_DIM as usize) / comptime![2 * cube_units / lanes];
        while stride > 0 {
            if lane < stride {
                let both = sums[unit] + sums[unit + stride];
                sums[unit] = both;
            }
            sync_cube();
            stride /= 2;
        }
        partial = sums[unit];
    }
    if active && lane == 0 {
        let at = i * out.stride(0) + r * out.stride(1);
        out[at] = F::cast_from(partial);
    }
}

/// The kernel's compile-time kind codes.
pub(super) const KIND_Q8_0: u32 = 0;
pub(super) const KIND_Q4_0: u32 = 1;
pub(super) const KIND_Q4_1: u32 = 2;
pub(super) const KIND_Q5_0: u32 = 3;
pub(super) const KIND_Q4_K: u32 = 4;
pub(super) const KIND_Q5_K: u32 = 5;
pub(super) const KIND_Q6_K: u32 = 6;

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

/// Units per cube.
const CUBE_UNITS: usize = 32;

/// Units per output element where the caller leaves it to the device ([`quant_matvec`]'s
/// `lanes` 0): 32 on a GPU (a cube per output, neighbouring units reading neighbouring words;
/// not yet measured on one), 1 on a device that is no card (Mesa's lavapipe, which cubecl
/// reports without a physical device). lavapipe runs a cube's units as SIMD lanes of one CPU
/// thread and pays for every barrier; one unit per output (32 outputs a cube, no reduction)
/// took SmolLM2's decode from 0.23 to 0.5–0.8 tokens/s there, at the same results.
fn default_lanes(client: &cubecl::client::Client) -> usize {
    if client.properties().identity.physical.is_none() { 1 } else { 32 }
}

/// Launches the kernel for `kind` on `x` (`[n, cols]`, any float dtype the runtime has) and
/// the packed `words` of a `rows × cols` matrix, with `lanes` units per output (a power of two
/// up to 32; 0: the device's default); returns `[n, rows]` in `x`'s dtype.
pub(super) fn quant_matvec(
    x: CubeTensor,
    words: CubeTensor,
    kind: QuantKind,
    rows: usize,
    cols: usize,
    lanes: usize,
) -> CubeTensor {
    // A storage-tiled x (a matmul's output) is readable only as rows once untiled.
    let x = into_contiguous(x);
    let n = x.meta.shape()[0];
    let dtype = x.dtype;
    let client = x.client.clone();
    let output = empty_device_contiguous_dtype(client.clone(), x.device.clone(), [n, rows].into(), dtype);
    let total = n * rows;
    if total == 0 {
        return output;
    }
    let chunks_per_row = cols / CHUNK_ELEMENTS;
    let scales_at = layout::scales_at(kind, rows * (cols / kind.block_elements()));
    let lanes = if lanes == 0 { default_lanes(&client) } else { lanes };
    debug_assert!(lanes.is_power_of_two() && lanes <= CUBE_UNITS, "{lanes} lanes");
    let cube_dim = CubeDim::new_1d(CUBE_UNITS as u32);
    let cube_count = calculate_cube_count_elemwise(&client, total * lanes, cube_dim);
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
        CUBE_UNITS,
        lanes,
        dtype_to_storage_type(dtype),
    );
    output
}
