//! Causal self-attention of a batch's chunks against their caches, one layer at a time: on
//! the device through burn's attention op, or on the host for CPU devices at f32
//! ([`crate::host_attention`]). Both apply the layer's scale and sliding window.

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Device, Tensor, TensorData};

use crate::error::{ModelError, Result};
use crate::host_attention::{self, AttentionShape, ChunkAttention};
use crate::kv_cache::SequenceCache;

/// One sequence's share of a batched forward.
pub struct ForwardChunk<'a> {
    /// The sequence's cache; the chunk's tokens are appended to it.
    pub cache: &'a mut SequenceCache,
    /// New tokens, at positions `cache.len()..cache.len() + tokens.len()`.
    pub tokens: &'a [u32],
    /// Logits for every position of the chunk (teacher forcing), not only the last.
    pub all_logits: bool,
}

/// The per-layer settings of attention.
#[derive(Debug, Clone, Copy)]
pub struct LayerAttention {
    pub layer: usize,
    pub shape: AttentionShape,
    /// Repeat K/V heads before the op (backends whose fused attention lacks GQA).
    pub repeat_kv: bool,
    /// Chunks of up to `gpu_attention::MAX_KERNEL_ROWS` rows go through our own kernel,
    /// which reads grouped K/V heads in place (cubecl devices).
    pub kernel: bool,
}

/// On the device: `q: [n, heads, d]`, `k, v: [n, kv_heads, d]` → `[n, heads * d]`; each
/// chunk's keys and values are appended to its cache first.
pub fn attend_on_device(
    settings: LayerAttention,
    chunks: &mut [ForwardChunk<'_>],
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
) -> Result<Tensor<2>> {
    let AttentionShape { heads, kv_heads, head_dim: d, scale, window } = settings.shape;
    let default_scale = 1.0 / (d as f32).sqrt();
    // Passing a scale forces burn's unfused path on cubecl backends: only when it differs.
    let burn_scale = ((scale - default_scale).abs() > 1e-7 * default_scale).then_some(scale as f64);
    let mut outputs = Vec::with_capacity(chunks.len());
    let mut row = 0;
    let Some(pool) = chunks.first().map(|c| c.cache.pool().clone()) else {
        return Err(ModelError::Internal("attention of an empty batch".into()));
    };
    let mut state = pool.lock();
    let seq = |t: Tensor<3>, rows: std::ops::Range<usize>, h: usize| -> Tensor<4> {
        t.slice([rows, 0..h, 0..d]).swap_dims(0, 1).unsqueeze_dim(0)
    };
    // Every chunk's keys and values are written before any attention reads the pool: a read
    // holds the layer's pool tensors, and a write while one is held would copy them whole.
    for chunk in chunks.iter() {
        debug_assert!(std::sync::Arc::ptr_eq(chunk.cache.pool(), &pool), "one pool per model");
        let rows = row..row + chunk.tokens.len();
        row = rows.end;
        let (k_rows, v_rows) = (seq(k.clone(), rows.clone(), kv_heads), seq(v.clone(), rows, kv_heads));
        chunk.cache.write_device(&mut state, settings.layer, k_rows, v_rows);
    }
    row = 0;
    for chunk in chunks.iter_mut() {
        let len = chunk.tokens.len();
        let start = chunk.cache.len();
        let rows = row..row + len;
        row += len;
        // Our kernel reads the layer's block pool through the sequence's block table: no copy.
        #[cfg(feature = "gpu-kernels")]
        if settings.kernel && len <= crate::gpu_attention::MAX_KERNEL_ROWS {
            let q_rows = q.clone().slice([rows.clone(), 0..heads, 0..d]);
            let (k_pool, v_pool) = SequenceCache::device_pool(&state, settings.layer);
            let table = chunk.cache.table_tensor();
            let out = crate::gpu_attention::gqa_attention(q_rows, k_pool, v_pool, table, start + len, window, scale)?;
            outputs.push(out.reshape([len, heads * d]));
            continue;
        }
        // Longer chunks go through burn's attention, which takes contiguous sequences: the
        // sequence's blocks are gathered into `[1, kv_heads, start + len, d]` for this layer.
        let (k_all, v_all) = chunk.cache.gather_device(&state, settings.layer, start + len);
        let (k_all, v_all) = if settings.repeat_kv {
            (repeat_heads(k_all, heads / kv_heads), repeat_heads(v_all, heads / kv_heads))
        } else {
            (k_all, v_all)
        };
        let device = k_all.device();
        // A window that hides some key from some query needs an explicit mask (which then
        // carries the causal part too); otherwise causal masking is bottom-right aligned,
        // which is what a chunk on top of a cache needs, and one query token needs none.
        let mask = window.and_then(|w| window_mask(start, len, w, heads, &device));
        let options = AttentionModuleOptions { scale: burn_scale, softcap: None, is_causal: mask.is_none() && len > 1 };
        let out = attention(seq(q.clone(), rows, heads), k_all, v_all, mask, None, options);
        outputs.push(out.squeeze_dim::<3>(0).swap_dims(0, 1).reshape([len, heads * d]));
    }
    Ok(if outputs.len() == 1 { outputs.pop().unwrap_or_else(|| unreachable!()) } else { Tensor::cat(outputs, 0) })
}

/// `[1, heads, len, start + len]`, true where query `start + i` must not see key `j`: in its
/// future, or `window` or more positions behind. `None` when the window hides nothing.
fn window_mask(start: usize, len: usize, window: usize, heads: usize, device: &Device) -> Option<Tensor<4, Bool>> {
    let total = start + len;
    if total <= window {
        return None;
    }
    let mut masked = Vec::with_capacity(len * total);
    for i in 0..len {
        let pos = start + i;
        masked.extend((0..total).map(|j| j > pos || pos - j >= window));
    }
    let mask = Tensor::<4, Bool>::from_data(TensorData::new(masked, [1, 1, len, total]), device);
    Some(mask.expand([1, heads, len, total]))
}

/// [`attend_on_device`] on the host: same shapes, with the cache in host memory.
pub fn attend_on_host(
    settings: LayerAttention,
    chunks: &mut [ForwardChunk<'_>],
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
) -> Result<Tensor<2>> {
    let shape = settings.shape;
    let device = q.device();
    let n = q.dims()[0];
    let read = |t: Tensor<3>| {
        t.into_data().try_into_vec::<f32>().map_err(|e| ModelError::Internal(format!("reading attention inputs: {e:?}")))
    };
    let (queries, keys, values) = (read(q)?, read(k)?, read(v)?);
    let row_width = shape.kv_heads * shape.head_dim;
    let Some(pool) = chunks.first().map(|c| c.cache.pool().clone()) else {
        return Err(ModelError::Internal("attention of an empty batch".into()));
    };
    let mut state = pool.lock();
    // Every chunk's rows are written first: the views below borrow the pool's blocks.
    let mut first_row = 0;
    for chunk in chunks.iter() {
        debug_assert!(std::sync::Arc::ptr_eq(chunk.cache.pool(), &pool), "one pool per model");
        let rows = first_row * row_width..(first_row + chunk.tokens.len()) * row_width;
        chunk.cache.write_host(&mut state, settings.layer, &keys[rows.clone()], &values[rows]);
        first_row += chunk.tokens.len();
    }
    let mut first_row = 0;
    let mut views = Vec::with_capacity(chunks.len());
    for chunk in chunks.iter() {
        let len = chunk.tokens.len();
        let (keys, values) = chunk.cache.host_blocks(&state, settings.layer);
        views.push(ChunkAttention { first_row, len, start: chunk.cache.len(), keys, values });
        first_row += len;
    }
    let out = host_attention::attend(&queries, &views, shape)?;
    Ok(Tensor::from_data(TensorData::new(out, [n, shape.heads * shape.head_dim]), (&device, DType::F32)))
}

/// `[1, kv_heads, s, d]` → `[1, kv_heads * rep, s, d]`, each head repeated `rep` times in place.
fn repeat_heads(t: Tensor<4>, rep: usize) -> Tensor<4> {
    let [b, h, s, d] = t.dims();
    t.unsqueeze_dim::<5>(2).expand([b, h, rep, s, d]).reshape([b, h * rep, s, d])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_mask_hides_future_and_far_past() {
        let device = Device::flex();
        assert!(window_mask(0, 4, 4, 2, &device).is_none(), "a window as long as the sequence hides nothing");
        let mask = window_mask(2, 3, 3, 1, &device).expect("mask");
        assert_eq!(mask.dims(), [1, 1, 3, 5]);
        let got = mask.into_data().try_to_vec::<bool>().expect("bools");
        #[rustfmt::skip]
        let want = [
            false, false, false, true, true,  // position 2 sees 0..=2
            true, false, false, false, true,  // position 3 sees 1..=3
            true, true, false, false, false,  // position 4 sees 2..=4
        ];
        assert_eq!(got, want);
    }
}
