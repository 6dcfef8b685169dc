//! The `#[cube]` kernel of [`super::gqa_attention`]: one cube per (query row, query head),
//! reading its key/value head straight from the block pool through the sequence's block
//! table (position `p` is row `p % block` of block `table[p / block]`).
//!
//! The cube walks the visible positions in tiles of [`TILE`]: its units score the tile's
//! positions against the query (staged once in shared memory, scale folded in), every unit
//! reads the tile's maximum, the units turn scores into weights, and each unit then adds the
//! weighted value rows into the output dimensions it owns (unit `u` owns dimensions `u`,
//! `u + UNITS`, …: neighbouring units read neighbouring words of a value row). The running
//! maximum and sum rescale the accumulators between tiles (online softmax), so shared memory
//! holds one tile whatever the context length. Everything is accumulated in f32.

use burn::backend::cubecl::dtype_to_storage_type;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

/// Units per cube: a power of two no larger than any GPU's smallest workgroup limit.
const UNITS: usize = 32;

/// Positions per tile: scores and weights of one tile live in shared memory (2 × 512 B).
const TILE: usize = 128;

/// Output dimensions a unit owns at most: head sizes up to `UNITS * MAX_DIMS_PER_UNIT` = 256.
pub(super) const MAX_HEAD_DIM: usize = UNITS * MAX_DIMS_PER_UNIT;
const MAX_DIMS_PER_UNIT: usize = 8;

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn gqa_attention_kernel<F: Float, I: Numeric>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    table: &Tensor<I>,
    out: &mut Tensor<F>,
    total: usize,
    window: usize,
    scale: f32,
    #[comptime] head_dim: usize,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let rows = q.shape(0);
    let heads = q.shape(1);
    // Whole cubes leave together, so every barrier below is in uniform control flow.
    if CUBE_POS >= rows * heads {
        terminate!();
    }
    let i = CUBE_POS / heads;
    let h = CUBE_POS % heads;
    let kv_head = h / (heads / k.shape(1));
    let block = k.shape(2);
    // Rows are the last `rows` positions of the cache (bottom-right aligned causality).
    let position = total - rows + i;
    let end = position + 1;
    let mut start = 0usize;
    if window > 0 && end > window {
        start = end - window;
    }
    let unit = UNIT_POS as usize;

    let mut query = Shared::<[f32]>::new_slice(head_dim);
    let mut scores = Shared::<[f32]>::new_slice(TILE);
    let mut weights = Shared::<[f32]>::new_slice(TILE);
    let q_at = i * q.stride(0) + h * q.stride(1);
    let mut j = unit;
    while j < head_dim {
        query[j] = f32::cast_from(q[q_at + j * q.stride(2)]) * scale;
        j += UNITS;
    }
    sync_cube();

    let k_head = kv_head * k.stride(1);
    let v_head = kv_head * v.stride(1);
    let mut acc = Array::<f32>::new(MAX_DIMS_PER_UNIT);
    #[unroll]
    for d in 0..MAX_DIMS_PER_UNIT {
        acc[d] = 0.0;
    }
    // Far below any score, and finite: `exp(max - score)` is 0 without infinities, which
    // some shader compilers cannot produce reliably.
    let mut max = f32::new(-3.0e38);
    let mut sum = 0.0f32;
    let mut tile_start = start;
    while tile_start < end {
        let mut len = end - tile_start;
        if len > TILE {
            len = TILE;
        }
        let mut p = unit;
        while p < len {
            let pos = tile_start + p;
            let k_at = k_head + usize::cast_from(table[pos / block]) * k.stride(0) + (pos % block) * k.stride(2);
            let mut dot = 0.0f32;
            for jj in 0..head_dim {
                dot += query[jj] * f32::cast_from(k[k_at + jj * k.stride(3)]);
            }
            scores[p] = dot;
            p += UNITS;
        }
        sync_cube();
        let mut tile_max = max;
        for t in 0..len {
            if scores[t] > tile_max {
                tile_max = scores[t];
            }
        }
        let mut p = unit;
        while p < len {
            weights[p] = (scores[p] - tile_max).exp();
            p += UNITS;
        }
        sync_cube();
        let rescale = (max - tile_max).exp();
        sum *= rescale;
        #[unroll]
        for d in 0..MAX_DIMS_PER_UNIT {
            acc[d] *= rescale;
        }
        for t in 0..len {
            let w = weights[t];
            sum += w;
            let pos = tile_start + t;
            let v_at = v_head + usize::cast_from(table[pos / block]) * v.stride(0) + (pos % block) * v.stride(2);
            #[unroll]
            for d in 0..MAX_DIMS_PER_UNIT {
                let dim = unit + d * UNITS;
                if dim < head_dim {
                    acc[d] += w * f32::cast_from(v[v_at + dim * v.stride(3)]);
                }
            }
        }
        max = tile_max;
        // The next tile overwrites both shared arrays.
        sync_cube();
        tile_start += TILE;
    }
    let out_at = i * out.stride(0) + h * out.stride(1);
    let out_dim = out.stride(2);
    #[unroll]
    for d in 0..MAX_DIMS_PER_UNIT {
        let dim = unit + d * UNITS;
        if dim < head_dim {
            out[out_at + dim * out_dim] = F::cast_from(acc[d] / sum);
        }
    }
}

/// Launches the kernel: `q: [rows, heads, d]`, `k`, `v`: block pools `[blocks, kv_heads,
/// block, d]` (strides are honoured), `table`: the sequence's block ids covering `total`
/// positions, `window` 0 for none. Returns `[rows, heads, d]` in `q`'s dtype.
#[allow(clippy::too_many_arguments)]
pub(super) fn gqa_attention(
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    table: CubeTensor,
    total: usize,
    window: usize,
    scale: f32,
) -> CubeTensor {
    // A storage-tiled q (a matmul's output) is readable only as rows once untiled.
    let q = into_contiguous(q);
    let shape = q.meta.shape().clone();
    let (rows, heads, head_dim) = (shape[0], shape[1], shape[2]);
    let dtype = q.dtype;
    let client = q.client.clone();
    let output = empty_device_contiguous_dtype(client.clone(), q.device.clone(), shape, dtype);
    if rows * heads == 0 {
        return output;
    }
    let cube_dim = CubeDim::new_1d(UNITS as u32);
    let cube_count = calculate_cube_count_elemwise(&client, rows * heads * UNITS, cube_dim);
    let table_dtype = table.dtype;
    let (q, k, v, out) = (q.into_tensor_arg(), k.into_tensor_arg(), v.into_tensor_arg(), output.clone().into_tensor_arg());
    gqa_attention_kernel::launch(
        &client,
        cube_count,
        cube_dim,
        q,
        k,
        v,
        table.into_tensor_arg(),
        out,
        total,
        window,
        scale,
        head_dim,
        [dtype_to_storage_type(dtype), dtype_to_storage_type(table_dtype)],
    );
    output
}
