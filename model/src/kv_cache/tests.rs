//! The pool and block tables without a model: allocation, growth by appending blocks,
//! sharing by reference count, freeing on the last drop, exhaustion as a typed error, and
//! reads and writes through the table on the host and on a CPU device pool.

use std::sync::Arc;

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};

use super::*;
use crate::error::ModelError;

const B: usize = KV_BLOCK_TOKENS;
const SHAPE: KvShape = KvShape { layers: 2, kv_heads: 2, head_dim: 4 };

fn host_pool(max_blocks: Option<usize>) -> Arc<KvPool> {
    Arc::new(KvPool::new(SHAPE, &Device::flex(), FloatDType::F32, true, max_blocks))
}

#[test]
fn growing_appends_blocks_and_dropping_frees_them() {
    let pool = host_pool(None);
    let mut cache = SequenceCache::new(pool.clone(), 4096);
    cache.reserve(1).expect("room");
    assert_eq!((cache.blocks().len(), pool.used_blocks()), (1, 1));
    cache.advance(1);
    cache.reserve(B - 1).expect("room");
    assert_eq!(cache.blocks().len(), 1, "64 positions fit one block");
    cache.advance(B - 1);
    let first = cache.blocks()[0];
    cache.reserve(B + 1).expect("room");
    assert_eq!(cache.blocks().len(), 3);
    assert_eq!(cache.blocks()[0], first, "growth appends; held blocks stay");
    assert_eq!(pool.used_blocks(), 3);
    cache.truncate(B);
    assert_eq!((cache.blocks().len(), pool.used_blocks()), (1, 1), "truncation releases the blocks past it");
    drop(cache);
    assert_eq!(pool.used_blocks(), 0);
    assert_eq!(pool.holders(first), 0);
}

#[test]
fn a_shared_prefix_is_held_until_its_last_holder_drops_it() {
    let pool = host_pool(None);
    let mut source = SequenceCache::new(pool.clone(), 4096);
    source.reserve(2 * B + 10).expect("room");
    source.advance(2 * B + 10);
    assert_eq!(pool.used_blocks(), 3);
    let mut a = SequenceCache::new(pool.clone(), 4096);
    a.share_prefix(&source, 2 * B);
    let mut b = SequenceCache::new(pool.clone(), 4096);
    b.share_prefix(&source, B);
    assert_eq!(pool.used_blocks(), 3, "sharing allocates nothing");
    assert_eq!(a.blocks(), &source.blocks()[..2]);
    assert_eq!((pool.holders(source.blocks()[0]), pool.holders(source.blocks()[1])), (3, 2));
    // Each sequence grows into blocks of its own.
    a.reserve(1).expect("room");
    b.reserve(1).expect("room");
    assert_eq!(pool.used_blocks(), 5);
    assert_ne!(b.blocks()[1], source.blocks()[1]);
    let kept = source.blocks()[0];
    drop(source);
    assert_eq!(pool.used_blocks(), 4, "only the source's unshared tail block is freed");
    drop(a);
    assert_eq!(pool.holders(kept), 1);
    drop(b);
    assert_eq!(pool.used_blocks(), 0);
}

#[test]
#[should_panic(expected = "shared block")]
fn writing_into_a_shared_block_is_refused() {
    let pool = host_pool(None);
    let mut source = SequenceCache::new(pool.clone(), 4096);
    source.reserve(B).expect("room");
    source.advance(B);
    let mut copy = SequenceCache::new(pool.clone(), 4096);
    copy.share_prefix(&source, B);
    // Rewinding into the shared block and writing there would change the source's keys.
    copy.truncate(B - 1);
    let mut state = pool.lock();
    copy.write_host(&mut state, 0, &[0.0; 8], &[0.0; 8]);
}

#[test]
fn exhaustion_is_a_typed_error_that_allocates_nothing() {
    let pool = host_pool(Some(3));
    let mut a = SequenceCache::new(pool.clone(), 4096);
    a.reserve(2 * B).expect("two of three blocks");
    let mut b = SequenceCache::new(pool.clone(), 4096);
    assert!(matches!(b.reserve(2 * B), Err(ModelError::Overloaded(_))));
    assert_eq!((b.blocks().len(), pool.used_blocks()), (0, 2));
    b.reserve(B).expect("the last block");
    drop(a);
    b.advance(B);
    b.reserve(2 * B).expect("freed blocks are reused");
    assert_eq!(pool.used_blocks(), 3);
}

/// `n` rows of `[kv_heads, head_dim]` whose values name their position, layer and head.
fn rows(first: usize, n: usize, layer: usize, value: bool) -> Vec<f32> {
    let (h, d) = (SHAPE.kv_heads, SHAPE.head_dim);
    (0..n * h * d)
        .map(|i| ((first + i / (h * d)) * 1000 + layer * 100 + (i / d % h) * 10 + i % d) as f32 + if value { 0.5 } else { 0.0 })
        .collect()
}

#[test]
fn host_reads_go_through_the_block_table() {
    let pool = host_pool(None);
    // A first cache takes the low ids, so the second's blocks are not 0, 1, 2.
    let mut other = SequenceCache::new(pool.clone(), 4096);
    other.reserve(B).expect("room");
    let mut cache = SequenceCache::new(pool.clone(), 4096);
    for (first, n) in [(0, 50), (50, 100), (150, 1)] {
        cache.reserve(n).expect("room");
        let mut state = pool.lock();
        for layer in 0..SHAPE.layers {
            cache.write_host(&mut state, layer, &rows(first, n, layer, false), &rows(first, n, layer, true));
        }
        drop(state);
        cache.advance(n);
    }
    drop(other);
    let state = pool.lock();
    let (d, h) = (SHAPE.head_dim, SHAPE.kv_heads);
    for layer in 0..SHAPE.layers {
        let (keys, values) = cache.host_blocks(&state, layer);
        assert_eq!(keys.len(), 3);
        for p in 0..151 {
            for g in 0..h {
                let at = (g * B + p % B) * d;
                assert_eq!(keys[p / B][at..at + d], rows(p, 1, layer, false)[g * d..(g + 1) * d], "key {p} head {g}");
                assert_eq!(values[p / B][at..at + d], rows(p, 1, layer, true)[g * d..(g + 1) * d], "value {p} head {g}");
            }
        }
    }
}

#[test]
fn device_writes_and_gathers_go_through_the_block_table() {
    let device = Device::flex();
    let pool = Arc::new(KvPool::new(SHAPE, &device, FloatDType::F32, false, None));
    let mut other = SequenceCache::new(pool.clone(), 4096);
    other.reserve(B).expect("room");
    let mut cache = SequenceCache::new(pool.clone(), 4096);
    let (h, d) = (SHAPE.kv_heads, SHAPE.head_dim);
    // `[1, kv_heads, n, d]` from `[n, kv_heads, d]` rows.
    let upload = |data: Vec<f32>, n: usize| {
        Tensor::<3>::from_data(TensorData::new(data, [n, h, d]), (&device, DType::F32)).swap_dims(0, 1).unsqueeze_dim::<4>(0)
    };
    for (first, n) in [(0, 70), (70, 1), (71, 60)] {
        cache.reserve(n).expect("room");
        let mut state = pool.lock();
        cache.write_device(&mut state, 1, upload(rows(first, n, 1, false), n), upload(rows(first, n, 1, true), n));
        drop(state);
        cache.advance(n);
        // A block allocated between steps: the pool grows and ids stay valid.
        let mut more = SequenceCache::new(pool.clone(), 4096);
        more.reserve(3 * B).expect("room");
    }
    drop(other);
    let state = pool.lock();
    let (keys, values) = cache.gather_device(&state, 1, 131);
    let want = |value: bool| upload(rows(0, 131, 1, value), 131).into_data().try_to_vec::<f32>().expect("f32");
    assert_eq!(keys.dims(), [1, h, 131, d]);
    assert_eq!(keys.into_data().try_to_vec::<f32>().expect("f32"), want(false));
    assert_eq!(values.into_data().try_to_vec::<f32>().expect("f32"), want(true));
}

/// Walks `device_growth` from an empty pool, asking for `asks` blocks in turn, and returns
/// the largest old + new pool of any growth step.
fn growth_peak(limit: Option<usize>, asks: impl IntoIterator<Item = usize>) -> usize {
    let (mut size, mut used, mut peak) = (0, 0, 0);
    for ask in asks {
        if used + ask > size {
            let new = pool::device_growth(size, used + ask - size, limit);
            assert!(new >= used + ask, "growth to {new} does not hold {}", used + ask);
            if let Some(limit) = limit.filter(|&l| used + ask <= l) {
                assert!(new <= limit, "growth past the limit {limit}: {new}");
            }
            peak = peak.max(size + new);
            size = new;
        }
        used += ask;
    }
    peak
}

#[test]
fn growth_within_the_limit_never_holds_more_than_its_counted_peak() {
    // The old schedule (doubling capped at the limit) for a 1025-block budget: 1024 → 1025.
    let doubling_peak = {
        let (mut size, mut peak) = (4usize, 0);
        while size < 1025 {
            let new = (size * 2).min(1025);
            peak = peak.max(size + new);
            size = new;
        }
        peak
    };
    assert_eq!(doubling_peak, 2049);
    assert!(doubling_peak > growth_peak_blocks(1025), "the memory check would be exceeded");
    let mut rng = crate::rng::SplitMix64(7);
    for limit in 1..=600 {
        let bound = growth_peak_blocks(limit);
        // One block at a time, then random asks, then one ask for the whole budget.
        assert!(growth_peak(Some(limit), std::iter::repeat_n(1, limit)) <= bound, "limit {limit}");
        for _ in 0..20 {
            let mut left = limit;
            let asks: Vec<usize> = std::iter::from_fn(|| {
                (left > 0).then(|| {
                    let ask = 1 + (rng.next_u64() as usize) % left.min(1 + limit / 3);
                    left -= ask;
                    ask
                })
            })
            .collect();
            assert!(growth_peak(Some(limit), asks.clone()) <= bound, "limit {limit}, asks {asks:?}");
        }
        assert_eq!(growth_peak(Some(limit), [limit]), limit);
    }
    // The bound is reached: the step to the limit comes from half of it.
    assert_eq!(growth_peak(Some(1000), [500, 1]), 1500);
    assert_eq!(growth_peak_blocks(1000), 1500);
    // Without a limit, doubling as before.
    assert_eq!(growth_peak(None, std::iter::repeat_n(1, 9)), 8 + 16);
}

#[test]
fn a_device_pool_grows_through_halvings_of_its_limit() {
    let pool = Arc::new(KvPool::new(SHAPE, &Device::flex(), FloatDType::F32, false, None));
    pool.set_growth_limit(100);
    let mut cache = SequenceCache::new(pool.clone(), 100 * B);
    let mut sizes = Vec::new();
    for _ in 0..100 {
        cache.reserve(B).expect("room");
        cache.advance(B);
        if sizes.last() != Some(&pool.storage_blocks()) {
            sizes.push(pool.storage_blocks());
        }
    }
    // ceil(100 / 2^k): 100, 50, 25, 13, 7, 4.
    assert_eq!(sizes, vec![4, 7, 13, 25, 50, 100]);
}
