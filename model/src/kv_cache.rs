//! The key/value cache of one sequence: per layer, keys and values of every position seen
//! so far, grown in blocks so that memory follows the sequence's real length.

use burn::tensor::{Device, FloatDType, Tensor};

use crate::config::ModelConfig;

/// Capacity grows in multiples of this many positions; the engine budgets in these units.
pub const KV_BLOCK_TOKENS: usize = 64;

struct LayerKv {
    /// `[1, kv_heads, capacity, head_dim]`
    k: Tensor<4>,
    v: Tensor<4>,
}

/// The cache of one sequence, for every layer.
pub struct SequenceCache {
    layers: Vec<LayerKv>,
    len: usize,
    capacity: usize,
    kv_heads: usize,
    head_dim: usize,
    max_len: usize,
    device: Device,
    dtype: FloatDType,
}

impl SequenceCache {
    pub fn new(config: &ModelConfig, device: &Device, dtype: FloatDType) -> SequenceCache {
        SequenceCache {
            layers: Vec::with_capacity(config.num_layers),
            len: 0,
            capacity: 0,
            kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            max_len: config.context_length,
            device: device.clone(),
            dtype,
        }
    }

    /// Positions already cached: the position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions allocated (what the sequence costs in memory).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Blocks needed to hold `tokens` positions.
    pub fn blocks_for(tokens: usize) -> usize {
        tokens.div_ceil(KV_BLOCK_TOKENS)
    }

    /// Makes room for `extra` more positions in every layer (`num_layers` of them).
    pub(crate) fn reserve(&mut self, extra: usize, num_layers: usize) {
        let needed = self.len + extra;
        if needed <= self.capacity && self.layers.len() == num_layers {
            return;
        }
        // Doubling keeps the number of copies logarithmic in the sequence length.
        let target = needed.max(self.capacity * 2).min(self.max_len.max(needed));
        let new_capacity = Self::blocks_for(target) * KV_BLOCK_TOKENS;
        let shape = [1, self.kv_heads, new_capacity, self.head_dim];
        let live = [0..1, 0..self.kv_heads, 0..self.len, 0..self.head_dim];
        let mut layers = Vec::with_capacity(num_layers);
        for i in 0..num_layers {
            let mut k = Tensor::<4>::zeros(shape, (&self.device, self.dtype.into()));
            let mut v = Tensor::<4>::zeros(shape, (&self.device, self.dtype.into()));
            if self.len > 0 {
                if let Some(old) = self.layers.get(i) {
                    k = k.slice_assign(live.clone(), old.k.clone().slice(live.clone()));
                    v = v.slice_assign(live.clone(), old.v.clone().slice(live.clone()));
                }
            }
            layers.push(LayerKv { k, v });
        }
        self.layers = layers;
        self.capacity = new_capacity;
    }

    /// Writes `k`, `v` (`[1, kv_heads, n, head_dim]`) at positions `len..len+n` of `layer`
    /// and returns the live keys and values `[1, kv_heads, len+n, head_dim]`.
    /// [`SequenceCache::advance`] moves `len` once every layer is written.
    pub(crate) fn append(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let n = k.dims()[2];
        let (start, end) = (self.len, self.len + n);
        let write = [0..1, 0..self.kv_heads, start..end, 0..self.head_dim];
        let live = [0..1, 0..self.kv_heads, 0..end, 0..self.head_dim];
        let entry = &mut self.layers[layer];
        // In place: the slices returned below are dropped before the next append.
        entry.k.inplace(|c| c.slice_assign(write.clone(), k));
        entry.v.inplace(|c| c.slice_assign(write, v));
        (entry.k.clone().slice(live.clone()), entry.v.clone().slice(live))
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Forgets positions from `len` on (e.g. to re-run a prompt), keeping the memory.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}
