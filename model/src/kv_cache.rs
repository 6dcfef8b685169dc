//! The key/value cache of one sequence: per layer, keys and values of every position seen
//! so far, grown in blocks so that memory follows the sequence's real length.
//!
//! On GPU devices (and CPU devices below f32) the cache is device tensors; on CPU devices at
//! f32 it is plain host memory that [`crate::host_attention`] reads directly.

use burn::tensor::{Device, FloatDType, Tensor};

use crate::config::ModelConfig;

/// Capacity grows in multiples of this many positions; the engine budgets in these units.
pub const KV_BLOCK_TOKENS: usize = 64;

struct LayerKv {
    /// `[1, kv_heads, capacity, head_dim]`
    k: Tensor<4>,
    v: Tensor<4>,
}

/// Host keys and values of one layer, `[kv_heads, capacity, head_dim]` each, row-major.
pub(crate) struct HostLayerKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

enum Storage {
    Device(Vec<LayerKv>),
    Host(Vec<HostLayerKv>),
}

impl Storage {
    fn layers(&self) -> usize {
        match self {
            Storage::Device(l) => l.len(),
            Storage::Host(l) => l.len(),
        }
    }
}

/// The cache of one sequence, for every layer.
pub struct SequenceCache {
    layers: Storage,
    len: usize,
    capacity: usize,
    kv_heads: usize,
    head_dim: usize,
    max_len: usize,
    device: Device,
    dtype: FloatDType,
}

impl SequenceCache {
    /// `host`: keep keys and values in host memory (CPU devices at f32).
    pub fn new(config: &ModelConfig, device: &Device, dtype: FloatDType, host: bool) -> SequenceCache {
        SequenceCache {
            layers: if host { Storage::Host(Vec::new()) } else { Storage::Device(Vec::new()) },
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
        if needed <= self.capacity && self.layers.layers() == num_layers {
            return;
        }
        // Doubling keeps the number of copies logarithmic in the sequence length.
        let target = needed.max(self.capacity * 2).min(self.max_len.max(needed));
        let new_capacity = Self::blocks_for(target) * KV_BLOCK_TOKENS;
        let (len, kv_heads, d, old_capacity) = (self.len, self.kv_heads, self.head_dim, self.capacity);
        match &mut self.layers {
            Storage::Device(layers) => {
                let shape = [1, kv_heads, new_capacity, d];
                let live = [0..1, 0..kv_heads, 0..len, 0..d];
                let mut grown = Vec::with_capacity(num_layers);
                for i in 0..num_layers {
                    let mut k = Tensor::<4>::zeros(shape, (&self.device, self.dtype.into()));
                    let mut v = Tensor::<4>::zeros(shape, (&self.device, self.dtype.into()));
                    if len > 0
                        && let Some(old) = layers.get(i)
                    {
                        k = k.slice_assign(live.clone(), old.k.clone().slice(live.clone()));
                        v = v.slice_assign(live.clone(), old.v.clone().slice(live.clone()));
                    }
                    grown.push(LayerKv { k, v });
                }
                *layers = grown;
            }
            Storage::Host(layers) => {
                let grow = |old: Option<&Vec<f32>>| {
                    let mut buf = vec![0f32; kv_heads * new_capacity * d];
                    if let Some(old) = old {
                        for h in 0..kv_heads {
                            let from = h * old_capacity * d;
                            buf[h * new_capacity * d..][..len * d].copy_from_slice(&old[from..from + len * d]);
                        }
                    }
                    buf
                };
                let grown = (0..num_layers)
                    .map(|i| {
                        let old = layers.get(i);
                        HostLayerKv { k: grow(old.map(|l| &l.k)), v: grow(old.map(|l| &l.v)) }
                    })
                    .collect();
                *layers = grown;
            }
        }
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
        let Storage::Device(layers) = &mut self.layers else {
            unreachable!("device append on a host cache: the model picks one kind per device")
        };
        let entry = &mut layers[layer];
        // In place: the slices returned below are dropped before the next append.
        entry.k.inplace(|c| c.slice_assign(write.clone(), k));
        entry.v.inplace(|c| c.slice_assign(write, v));
        (entry.k.clone().slice(live.clone()), entry.v.clone().slice(live))
    }

    /// Host cache: writes `n` positions of `k`, `v` (`[n, kv_heads, head_dim]`, row-major)
    /// at `len..len+n` of `layer` and returns the layer's buffers with their capacity.
    pub(crate) fn append_host(&mut self, layer: usize, k: &[f32], v: &[f32]) -> (&[f32], &[f32], usize) {
        let (kv_heads, d, capacity, start) = (self.kv_heads, self.head_dim, self.capacity, self.len);
        let Storage::Host(layers) = &mut self.layers else {
            unreachable!("host append on a device cache: the model picks one kind per device")
        };
        let entry = &mut layers[layer];
        for (t, (k_row, v_row)) in k.chunks_exact(kv_heads * d).zip(v.chunks_exact(kv_heads * d)).enumerate() {
            for h in 0..kv_heads {
                let at = (h * capacity + start + t) * d;
                entry.k[at..at + d].copy_from_slice(&k_row[h * d..(h + 1) * d]);
                entry.v[at..at + d].copy_from_slice(&v_row[h * d..(h + 1) * d]);
            }
        }
        let entry = &layers[layer];
        (&entry.k, &entry.v, capacity)
    }

    /// Starts this empty cache with a copy of the first `n` positions of `source` (a cache of
    /// the same model), with room for `room` positions in all. A copy, not a share: the
    /// source may be evicted or reused while this cache lives.
    pub(crate) fn copy_prefix(&mut self, source: &SequenceCache, n: usize, room: usize) {
        debug_assert!(self.len == 0, "a prefix is copied into an empty cache only");
        let n = n.min(source.len);
        if n == 0 {
            return;
        }
        self.reserve(room.max(n), source.layers.layers());
        let (kv_heads, d, capacity, source_capacity) = (self.kv_heads, self.head_dim, self.capacity, source.capacity);
        match (&mut self.layers, &source.layers) {
            (Storage::Device(layers), Storage::Device(from)) => {
                let rows = [0..1, 0..kv_heads, 0..n, 0..d];
                for (to, from) in layers.iter_mut().zip(from) {
                    to.k.inplace(|c| c.slice_assign(rows.clone(), from.k.clone().slice(rows.clone())));
                    to.v.inplace(|c| c.slice_assign(rows.clone(), from.v.clone().slice(rows.clone())));
                }
            }
            (Storage::Host(layers), Storage::Host(from)) => {
                for (to, from) in layers.iter_mut().zip(from) {
                    // Per head, positions 0..n are contiguous rows in both layouts.
                    for h in 0..kv_heads {
                        let (dst, src) = (h * capacity * d, h * source_capacity * d);
                        to.k[dst..dst + n * d].copy_from_slice(&from.k[src..src + n * d]);
                        to.v[dst..dst + n * d].copy_from_slice(&from.v[src..src + n * d]);
                    }
                }
            }
            _ => unreachable!("host and device caches of one model: the model picks one kind per device"),
        }
        self.len = n;
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Forgets positions from `len` on (e.g. to re-run a prompt), keeping the memory.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}
