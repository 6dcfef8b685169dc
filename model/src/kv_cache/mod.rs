//! The key/value cache: a per-model pool of [`KV_BLOCK_TOKENS`]-position blocks
//! ([`KvPool`]) and, per sequence, a block table ([`SequenceCache`]), as vLLM pages its cache.
//!
//! A sequence grows by appending blocks (nothing is ever copied to grow). Blocks are shared
//! by reference count: a prefix-cache hit, always whole blocks, gives the new sequence the
//! retained entry's blocks, and a block is freed when its last holder (a sequence or a
//! retained prefix) drops it. Writes go only to a sequence's own, unshared tail blocks (a
//! hit covers whole blocks only, so no copy-on-write is needed; it is asserted).
//!
//! On GPU devices (and CPU devices below f32) the blocks are rows of per-layer device
//! tensors; on CPU devices at f32 they are host allocations that [`crate::host_attention`]
//! reads through the block table.

mod pool;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use burn::tensor::{Int, Tensor};

pub use pool::{BlockId, KvPool, KvShape, growth_peak_blocks};
pub(crate) use pool::{PoolState, Storage};

use crate::error::Result;

/// Positions per block: the unit of allocation, sharing and the engine's budget.
pub const KV_BLOCK_TOKENS: usize = 64;

/// The cache of one sequence, for every layer: the blocks it holds, in position order.
pub struct SequenceCache {
    pool: Arc<KvPool>,
    blocks: Vec<BlockId>,
    len: usize,
    max_len: usize,
    /// `blocks` on the device, built on first use after the table last changed.
    table: Option<Tensor<1, Int>>,
}

impl SequenceCache {
    /// An empty cache drawing blocks from `pool`, for up to `max_len` positions.
    pub fn new(pool: Arc<KvPool>, max_len: usize) -> SequenceCache {
        SequenceCache { pool, blocks: Vec::new(), len: 0, max_len, table: None }
    }

    /// Positions already cached: the position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions in the blocks this cache holds (shared ones included).
    pub fn capacity(&self) -> usize {
        self.blocks.len() * KV_BLOCK_TOKENS
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The block table: block `i` holds positions `64 i .. 64 (i + 1)`.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    pub fn pool(&self) -> &Arc<KvPool> {
        &self.pool
    }

    /// Blocks needed to hold `tokens` positions.
    pub fn blocks_for(tokens: usize) -> usize {
        tokens.div_ceil(KV_BLOCK_TOKENS)
    }

    /// Makes room for `extra` more positions by appending fresh blocks. Errors (changing
    /// nothing) when the pool has too few free blocks.
    pub fn reserve(&mut self, extra: usize) -> Result<()> {
        let needed = Self::blocks_for(self.len + extra);
        if needed > self.blocks.len() {
            let fresh = self.pool.allocate(needed - self.blocks.len())?;
            self.blocks.extend(fresh);
            self.table = None;
        }
        Ok(())
    }

    /// Starts this empty cache with the first `n` positions of `source` (a cache of the same
    /// pool) by sharing its blocks: `n` is a whole number of blocks, so this cache's writes
    /// never land in a shared block.
    pub fn share_prefix(&mut self, source: &SequenceCache, n: usize) {
        assert!(self.is_empty() && self.blocks.is_empty(), "a prefix is shared into an empty cache only");
        assert!(Arc::ptr_eq(&self.pool, &source.pool), "caches of one model share blocks");
        assert!(n.is_multiple_of(KV_BLOCK_TOKENS) && n <= source.len, "a shared prefix is whole, written blocks");
        let shared = &source.blocks[..n / KV_BLOCK_TOKENS];
        self.pool.share(shared);
        self.blocks.extend_from_slice(shared);
        self.len = n;
        self.table = None;
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Forgets positions from `len` on (e.g. to re-run a prompt) and releases the blocks
    /// past them.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        let keep = Self::blocks_for(self.len);
        if keep < self.blocks.len() {
            self.pool.release(&self.blocks[keep..]);
            self.blocks.truncate(keep);
            self.table = None;
        }
    }

    /// The block and offset of position `p`, asserting it may be written: the block is
    /// held by this cache alone.
    fn writable(&self, state: &PoolState, p: usize) -> (BlockId, usize) {
        let id = self.blocks[p / KV_BLOCK_TOKENS];
        assert_eq!(state.holders(id), 1, "a write to position {p} would land in shared block {id}");
        (id, p % KV_BLOCK_TOKENS)
    }

    /// Host cache: writes `n` positions of `k`, `v` (`[n, kv_heads, head_dim]`, row-major)
    /// at `len..len+n` of `layer`. [`SequenceCache::advance`] moves `len` once every layer
    /// is written.
    pub(crate) fn write_host(&self, state: &mut PoolState, layer: usize, k: &[f32], v: &[f32]) {
        let shape = self.pool.shape();
        let (kv_heads, d, part) = (shape.kv_heads, shape.head_dim, shape.layer_block_len());
        let rows = k.chunks_exact(kv_heads * d).zip(v.chunks_exact(kv_heads * d));
        for (t, (k_row, v_row)) in rows.enumerate() {
            let (id, offset) = self.writable(state, self.len + t);
            let Storage::Host(blocks) = &mut state.storage else {
                unreachable!("host write to a device pool: the model picks one kind per device")
            };
            let block = blocks[id as usize].as_mut().unwrap_or_else(|| unreachable!("a held block has storage"));
            let (k_part, v_part) = block[2 * layer * part..][..2 * part].split_at_mut(part);
            for h in 0..kv_heads {
                let at = (h * KV_BLOCK_TOKENS + offset) * d;
                k_part[at..at + d].copy_from_slice(&k_row[h * d..(h + 1) * d]);
                v_part[at..at + d].copy_from_slice(&v_row[h * d..(h + 1) * d]);
            }
        }
    }

    /// Host cache: per block of the table, `layer`'s keys and values, `[kv_heads, 64,
    /// head_dim]` each.
    pub(crate) fn host_blocks<'s>(&self, state: &'s PoolState, layer: usize) -> (Vec<&'s [f32]>, Vec<&'s [f32]>) {
        let part = self.pool.shape().layer_block_len();
        let Storage::Host(blocks) = &state.storage else {
            unreachable!("host read of a device pool: the model picks one kind per device")
        };
        self.blocks
            .iter()
            .map(|&id| {
                let block = blocks[id as usize].as_deref().unwrap_or_else(|| unreachable!("a held block has storage"));
                block[2 * layer * part..][..2 * part].split_at(part)
            })
            .unzip()
    }

    /// Device cache: writes `k`, `v` (`[1, kv_heads, n, head_dim]`) at positions
    /// `len..len+n` of `layer`, one slice assignment per block touched, in place.
    pub(crate) fn write_device(&self, state: &mut PoolState, layer: usize, k: Tensor<4>, v: Tensor<4>) {
        let [_, kv_heads, n, d] = k.dims();
        let mut t = 0;
        while t < n {
            let (id, offset) = self.writable(state, self.len + t);
            let m = (KV_BLOCK_TOKENS - offset).min(n - t);
            let Storage::Device(layers) = &mut state.storage else {
                unreachable!("device write to a host pool: the model picks one kind per device")
            };
            let id = id as usize;
            let to = [id..id + 1, 0..kv_heads, offset..offset + m, 0..d];
            let from = [0..1, 0..kv_heads, t..t + m, 0..d];
            let entry = &mut layers[layer];
            let (k_rows, v_rows) =
                if m == n { (k.clone(), v.clone()) } else { (k.clone().slice(from.clone()), v.clone().slice(from)) };
            entry.k.inplace(|c| c.slice_assign(to.clone(), k_rows));
            entry.v.inplace(|c| c.slice_assign(to, v_rows));
            t += m;
        }
    }

    /// Device cache: the block table as an Int tensor `[blocks]` on the pool's device.
    pub(crate) fn table_tensor(&mut self) -> Tensor<1, Int> {
        self.table.get_or_insert_with(|| self.pool.table_tensor(&self.blocks)).clone()
    }

    /// Device cache: `layer`'s whole pool, `[pool_blocks, kv_heads, 64, head_dim]` keys and
    /// values, for the kernel that reads through the block table.
    pub(crate) fn device_pool(state: &PoolState, layer: usize) -> (Tensor<4>, Tensor<4>) {
        let Storage::Device(layers) = &state.storage else {
            unreachable!("device read of a host pool: the model picks one kind per device")
        };
        (layers[layer].k.clone(), layers[layer].v.clone())
    }

    /// Device cache: the first `len` positions of `layer` gathered into contiguous
    /// `[1, kv_heads, len, head_dim]` keys and values (a copy: for burn's attention op,
    /// which takes contiguous sequences).
    pub(crate) fn gather_device(&mut self, state: &PoolState, layer: usize, len: usize) -> (Tensor<4>, Tensor<4>) {
        let blocks = Self::blocks_for(len);
        let table =
            if blocks == self.blocks.len() { self.table_tensor() } else { self.pool.table_tensor(&self.blocks[..blocks]) };
        let (k, v) = Self::device_pool(state, layer);
        let gather = |pool: Tensor<4>| {
            let [_, kv_heads, _, d] = pool.dims();
            pool.select(0, table.clone()).swap_dims(0, 1).reshape([1, kv_heads, blocks * KV_BLOCK_TOKENS, d]).slice([
                0..1,
                0..kv_heads,
                0..len,
                0..d,
            ])
        };
        (gather(k), gather(v))
    }
}

impl Drop for SequenceCache {
    fn drop(&mut self) {
        if !self.blocks.is_empty() {
            self.pool.release(&self.blocks);
        }
    }
}
