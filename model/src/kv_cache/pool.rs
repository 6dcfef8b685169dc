//! The per-model pool of KV blocks: storage for [`KV_BLOCK_TOKENS`] positions of every layer,
//! handed out by id, shared by reference count, and freed when the last holder drops it.
//!
//! Host storage (CPU devices at f32) is one allocation per live block, `[layers][K, V]
//! [kv_heads][64][head_dim]` f32, dropped when the block is freed, so memory (and peak RSS)
//! follows what the sequences hold. Device storage is, per layer, a K and a V tensor
//! `[blocks, kv_heads, 64, head_dim]` in the model's dtype, grown in large steps: growth
//! copies the pool once (old and new pools are both alive during the copy), and block ids
//! stay valid across it.
//!
//! ## The growth peak
//!
//! Because old and new are alive together, a device pool that grows to `L` blocks briefly
//! holds more than `L`. Once the engine's KV budget `L` is known ([`KvPool::set_growth_limit`])
//! the pool only takes the sizes `ceil(L / 2^k)` (…, `L/4`, `L/2`, `L`; each about double the
//! one before), growing to the first of them that holds what is needed ([`device_growth`]):
//! a step to `n` then comes from at most `ceil(n/2)`, and no growth step holds more than
//! [`growth_peak_blocks`]`(L) = L + ceil(L/2)` blocks. Plain doubling capped at `L` could come
//! to `L` from just under `L` (`L = 1000`: 512 → 1000 is 1512, but `L = 1025`: 1024 → 1025 is
//! 2049). The memory check before a GPU load ([`crate::device::memory_budget`]) counts this
//! peak, not `L`, against the free memory. A pool without a limit doubles.

use std::sync::{Mutex, MutexGuard};

use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};

use super::KV_BLOCK_TOKENS;
use crate::error::{ModelError, Result};

/// Index of a block in its pool.
pub type BlockId = u32;

/// The sizes every block of one model shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// f32 values of one layer's K (or V) in one block: `[kv_heads, 64, head_dim]`.
    pub(crate) fn layer_block_len(&self) -> usize {
        self.kv_heads * KV_BLOCK_TOKENS * self.head_dim
    }
}

/// Device storage of one layer.
pub(crate) struct DeviceLayer {
    /// `[blocks, kv_heads, 64, head_dim]`
    pub k: Tensor<4>,
    pub v: Tensor<4>,
}

pub(crate) enum Storage {
    /// Per block id, its data while it is live.
    Host(Vec<Option<Box<[f32]>>>),
    /// Per layer; empty until the first block is allocated.
    Device(Vec<DeviceLayer>),
}

pub(crate) struct PoolState {
    /// Holders of each block id; 0 = free.
    refcounts: Vec<u32>,
    /// Free ids, taken from the end.
    free: Vec<BlockId>,
    used: usize,
    /// Device pools do not grow past this in one doubling step (the engine's budget).
    growth_limit: Option<usize>,
    pub(crate) storage: Storage,
}

/// The block pool of one model; sequences hold it through their [`super::SequenceCache`].
pub struct KvPool {
    shape: KvShape,
    device: Device,
    dtype: FloatDType,
    /// Blocks that may be live at once; `None`: as many as memory allows.
    max_blocks: Option<usize>,
    state: Mutex<PoolState>,
}

impl KvPool {
    /// `host`: blocks in host memory (CPU devices at f32), else device tensors in `dtype`.
    pub fn new(shape: KvShape, device: &Device, dtype: FloatDType, host: bool, max_blocks: Option<usize>) -> KvPool {
        let storage = if host { Storage::Host(Vec::new()) } else { Storage::Device(Vec::new()) };
        let state = PoolState { refcounts: Vec::new(), free: Vec::new(), used: 0, growth_limit: None, storage };
        KvPool { shape, device: device.clone(), dtype, max_blocks, state: Mutex::new(state) }
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }

    pub fn is_host(&self) -> bool {
        matches!(self.lock().storage, Storage::Host(_))
    }

    /// Blocks held by at least one sequence or retained prefix (a shared block counts once).
    pub fn used_blocks(&self) -> usize {
        self.lock().used
    }

    /// Blocks the storage has room for, free ones included (device pools: the tensors' rows).
    pub fn storage_blocks(&self) -> usize {
        self.lock().refcounts.len()
    }

    /// Holders of `id` (0 when free).
    pub fn holders(&self, id: BlockId) -> u32 {
        self.lock().refcounts.get(id as usize).copied().unwrap_or(0)
    }

    /// Caps each growth step of a device pool at `blocks` (the engine's KV budget), so the
    /// pool does not double past what the engine lets its sequences hold, and steps through
    /// the sizes that keep the growth peak at [`growth_peak_blocks`]. Set it once, before the
    /// first block is allocated: a pool grown to other sizes may peak higher.
    pub fn set_growth_limit(&self, blocks: usize) {
        self.lock().growth_limit = Some(blocks.max(1));
    }

    /// The state, also after a panicking step poisoned the lock: refcounts change only in
    /// short sections that do not panic, and a failed step's caches are dropped.
    pub(crate) fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `n` fresh blocks, each held once. Errors (and allocates nothing) when the pool's
    /// limit leaves fewer than `n` free.
    pub(crate) fn allocate(&self, n: usize) -> Result<Vec<BlockId>> {
        let mut state = self.lock();
        if let Some(max) = self.max_blocks
            && state.used + n > max
        {
            return Err(ModelError::Overloaded(format!(
                "the KV cache pool has {} of its {max} blocks free, {n} are needed",
                max - state.used
            )));
        }
        let missing = n.saturating_sub(state.free.len());
        if missing > 0 {
            self.grow(&mut state, missing);
        }
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let id = state.free.pop().unwrap_or_else(|| unreachable!("grown above"));
            state.refcounts[id as usize] = 1;
            if let Storage::Host(blocks) = &mut state.storage {
                blocks[id as usize] = Some(vec![0f32; 2 * self.shape.layers * self.shape.layer_block_len()].into_boxed_slice());
            }
            ids.push(id);
        }
        state.used += n;
        Ok(ids)
    }

    /// Adds `missing` ids at least (device pools: in large steps).
    fn grow(&self, state: &mut PoolState, missing: usize) {
        let old = state.refcounts.len();
        let new = match &state.storage {
            Storage::Host(_) => old + missing,
            Storage::Device(_) => device_growth(old, missing, state.growth_limit),
        };
        state.refcounts.resize(new, 0);
        // Lowest ids first out of the free list (it pops from the end).
        state.free.extend((old as BlockId..new as BlockId).rev());
        let KvShape { layers, kv_heads, head_dim } = self.shape;
        match &mut state.storage {
            Storage::Host(blocks) => blocks.resize_with(new, || None),
            Storage::Device(pool) => {
                let extra = [new - old, kv_heads, KV_BLOCK_TOKENS, head_dim];
                let zeros = || Tensor::<4>::zeros(extra, (&self.device, self.dtype.into()));
                if pool.is_empty() {
                    pool.extend((0..layers).map(|_| DeviceLayer { k: zeros(), v: zeros() }));
                } else {
                    for layer in pool.iter_mut() {
                        layer.k.inplace(|k| Tensor::cat(vec![k, zeros()], 0));
                        layer.v.inplace(|v| Tensor::cat(vec![v, zeros()], 0));
                    }
                }
            }
        }
    }

    /// One more holder for each of `ids` (a prefix hit shares them).
    pub(crate) fn share(&self, ids: &[BlockId]) {
        let mut state = self.lock();
        for &id in ids {
            let count = &mut state.refcounts[id as usize];
            assert!(*count > 0, "sharing free block {id}");
            *count += 1;
        }
    }

    /// One holder fewer for each of `ids`; a block whose last holder goes is freed.
    pub(crate) fn release(&self, ids: &[BlockId]) {
        let mut state = self.lock();
        for &id in ids {
            let count = &mut state.refcounts[id as usize];
            assert!(*count > 0, "releasing free block {id}");
            *count -= 1;
            if *count == 0 {
                state.used -= 1;
                state.free.push(id);
                if let Storage::Host(blocks) = &mut state.storage {
                    blocks[id as usize] = None;
                }
            }
        }
    }

    /// The block table as a device tensor, for the device attention kernel and gathers.
    pub(crate) fn table_tensor(&self, ids: &[BlockId]) -> Tensor<1, Int> {
        let data: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
        Tensor::<1, Int>::from_data(TensorData::new(data, [ids.len()]), &self.device)
    }
}

/// The size a device pool of `old` blocks grows to when it needs `missing` more. Without a
/// limit: doubling (4 blocks at least). With a limit `L`: the smallest of `ceil(L / 2^k)` that
/// holds `old + missing` and 4 blocks (or `L`); past `L` (one sequence larger than the budget,
/// which an empty engine admits), just `old + missing`.
pub(crate) fn device_growth(old: usize, missing: usize, limit: Option<usize>) -> usize {
    let need = old + missing;
    let Some(limit) = limit else { return (old * 2).max(need).max(4) };
    if need >= limit {
        return need;
    }
    let target = need.max(limit.min(4));
    // ceil(L / 2^(k+1)) = ceil(ceil(L / 2^k) / 2): halve from L while the half still holds target.
    let mut size = limit;
    while size.div_ceil(2) >= target && size.div_ceil(2) < size {
        size = size.div_ceil(2);
    }
    size
}

/// At most how many blocks a device pool with growth limit `limit` holds during one growth
/// step (old and new pool alive together) while it stays within the limit: `limit +
/// ceil(limit / 2)`, or `limit` when the pool is allocated whole at once (4 blocks or fewer).
pub fn growth_peak_blocks(limit: usize) -> usize {
    if limit <= 4 { limit } else { limit + limit.div_ceil(2) }
}

impl PoolState {
    pub(crate) fn holders(&self, id: BlockId) -> u32 {
        self.refcounts[id as usize]
    }
}
