//! Attention on cubecl devices with grouped-query heads read in place (issue 10, item 2).
//!
//! burn 0.22's fused attention on the cubecl backends takes its head count from the queries,
//! so with grouped-query attention (fewer key/value heads than query heads) the cached keys
//! and values had to be repeated per query head first: a `heads / kv_heads`-times copy of
//! the live cache per layer and step. [`gqa_attention`] is our own kernel instead (see
//! `kernel`): each query head reads its key/value head straight from the paged cache's block
//! pool, through the sequence's block table, so decoding copies nothing of the cache.
//!
//! It is used for chunks of up to [`MAX_KERNEL_ROWS`] rows (decode steps, short
//! continuations), where attention reads the whole cache for few queries. Longer prefill
//! chunks keep burn's attention, whose tiles reuse each key across many queries; their
//! blocks are gathered into a contiguous sequence and their repeated heads are a transient
//! of one layer's prefill.

mod kernel;
#[cfg(all(test, feature = "wgpu"))]
mod tests;

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::tensor::{Int, Tensor};
use burn_cubecl::CubeBackend;

use crate::error::ModelError;

/// Query rows up to which a chunk's attention runs in our kernel (see the module docs).
pub const MAX_KERNEL_ROWS: usize = 16;

/// The kernel as a burn backend extension (cubecl backends, with fusion: the call is a
/// custom operation in the stream, like `gpu_quant`'s).
#[backend_extension(
    Cube: cfg(any(feature = "wgpu", feature = "vulkan", feature = "metal", feature = "cuda", feature = "rocm")),
    Fusion: cfg(any(feature = "wgpu", feature = "vulkan", feature = "metal", feature = "cuda", feature = "rocm"))
)]
pub trait GqaAttentionOps: Backend {
    /// `q: [rows, heads, d]` against the pools `k`, `v`: `[blocks, kv_heads, block, d]`
    /// through `table` → `[rows, heads, d]`; see [`gqa_attention`].
    #[allow(clippy::too_many_arguments)]
    #[fusion(dtype = q, shape = q)]
    fn gqa_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        table: IntTensor<Self>,
        total: usize,
        window: usize,
        scale: f32,
    ) -> FloatTensor<Self>;
}

impl GqaAttentionOps for CubeBackend {
    fn gqa_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        table: IntTensor<Self>,
        total: usize,
        window: usize,
        scale: f32,
    ) -> FloatTensor<Self> {
        kernel::gqa_attention(q, k, v, table, total, window, scale)
    }
}

/// Causal attention of the last `rows` of a sequence's `total` cached positions against all
/// of them, read from the paged cache: `q: [rows, heads, d]` (already rotated), `k`, `v`: a
/// layer's block pools `[blocks, kv_heads, block, d]`, `table`: the sequence's block ids
/// (position `p` is row `p % block` of block `table[p / block]`), with the rows' own keys
/// and values written last. Query row `i` sits at position `total − rows + i` and sees the
/// keys at or before it, and with `window` = `Some(w)` only the last `w` of those. Scores are
/// scaled by `scale`. Returns `[rows, heads, d]` in `q`'s dtype.
///
/// Errors: a device that is not a cubecl one, or shapes the kernel does not take (heads not a
/// multiple of kv_heads, different head sizes, more than 256 per head, more rows than keys,
/// a table too short for `total`).
#[allow(clippy::too_many_arguments)]
pub fn gqa_attention(
    q: Tensor<3>,
    k: Tensor<4>,
    v: Tensor<4>,
    table: Tensor<1, Int>,
    total: usize,
    window: Option<usize>,
    scale: f32,
) -> Result<Tensor<3>, ModelError> {
    let [rows, heads, d] = q.dims();
    let [_, kv_heads, block, kd] = k.dims();
    let [blocks] = table.dims();
    if v.dims() != k.dims()
        || kd != d
        || kv_heads == 0
        || !heads.is_multiple_of(kv_heads)
        || d == 0
        || d > kernel::MAX_HEAD_DIM
        || rows > total
        || blocks * block < total
    {
        return Err(ModelError::Internal(format!(
            "device attention of queries {:?} against key pool {:?}, value pool {:?}, {blocks} blocks for {total} positions",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    let device = q.device();
    if !crate::gpu_quant::is_cube(&device) {
        return Err(ModelError::DeviceUnavailable {
            requested: format!("{device:?}"),
            reason: "the grouped-query attention kernel runs on cubecl devices only".into(),
        });
    }
    let out = <Dispatch as GqaAttentionOps>::gqa_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        table.into_dispatch(),
        total,
        window.unwrap_or(0),
        scale,
    );
    Ok(Tensor::from_dispatch(out))
}
