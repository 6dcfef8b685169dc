//! Causal self-attention on the host, for CPU devices at f32.
//!
//! On flex and ndarray the per-sequence attention through burn ops (slice the cache, run
//! the attention op, swap and concatenate) cost more than the projections once many
//! sequences decode together: a few dozen small tensor operations per sequence and layer,
//! each with its own allocation. Here the keys and values live in plain host blocks (see
//! [`crate::kv_cache`]) read through each sequence's block table, and every (sequence,
//! head) pair is one task, shared by the threads of [`crate::spin_pool`], as llama.cpp shares
//! heads between its threads; within a block a head's positions are contiguous rows.

use std::ops::Range;
use std::sync::Mutex;

use crate::error::ModelError;
use crate::kv_cache::KV_BLOCK_TOKENS;
use crate::spin_pool;

/// One sequence's share of a layer's attention.
pub struct ChunkAttention<'a> {
    /// First row of the chunk in the batch's `[n, heads, head_dim]` queries.
    pub first_row: usize,
    /// Query rows in the chunk.
    pub len: usize,
    /// Positions cached before the chunk: query `i` sees keys `0..=start + i`.
    pub start: usize,
    /// The layer's keys and values per block of the sequence's table, `[kv_heads,
    /// KV_BLOCK_TOKENS, head_dim]` each, covering at least `start + len` positions.
    pub keys: Vec<&'a [f32]>,
    pub values: Vec<&'a [f32]>,
}

/// Rows `first..end` of head `g` in `blocks`, as one contiguous slice per block (within a
/// block a head's positions are consecutive rows of `d` values). Callers loop over each
/// slice's rows themselves: a closure called per row was compiled on its own, with 4-lane
/// vectors and its sums in memory, instead of into the caller's AVX-512 body.
fn row_blocks<'b>(blocks: &'b [&'b [f32]], g: usize, first: usize, end: usize, d: usize) -> impl Iterator<Item = &'b [f32]> + 'b {
    const B: usize = KV_BLOCK_TOKENS;
    (first / B..end.div_ceil(B)).map(move |b| {
        let (lo, hi) = (first.max(b * B) - b * B, end.min((b + 1) * B) - b * B);
        &blocks[b][(g * B + lo) * d..(g * B + hi) * d]
    })
}

/// Shapes and settings shared by every chunk of one layer.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies `q · k` (usually `1/√head_dim`).
    pub scale: f32,
    /// A key at least this many positions behind the query is masked (sliding-window layers).
    pub window: Option<usize>,
}

/// Below this many multiply-adds (scores and weighted sums of all heads) a layer's attention
/// runs on the calling thread alone: handing heads to a helper costs about a microsecond.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// `queries: [n, heads, head_dim]` → `[n, heads * head_dim]`, each chunk attending causally
/// (and within the window, if any) to its own cache, with grouped-query heads sharing K/V
/// (`heads / kv_heads` per group).
///
/// Every (chunk, head) pair is a task, shared between the calling thread and the helpers of
/// [`crate::spin_pool`], which have just run the layer's q/k/v product and are still spinning:
/// rayon's workers would have gone to sleep between layers, and waking them (and blocking
/// the caller until they finish) cost two context switches a layer, a tenth of a decode step.
pub fn attend(queries: &[f32], chunks: &[ChunkAttention<'_>], shape: AttentionShape) -> Result<Vec<f32>, ModelError> {
    let AttentionShape { heads, head_dim: d, .. } = shape;
    let n: usize = chunks.iter().map(|c| c.len).sum();
    debug_assert_eq!(queries.len(), n * heads * d);
    // Scores and weighted sums: each query row against every key it sees, per head.
    let macs: usize = chunks.iter().map(|c| c.len * (c.start + c.len)).sum::<usize>() * heads * d * 2;
    let helpers = if macs < PARALLEL_MIN_MACS { 0 } else { spin_pool::helper_threads() };
    let tasks = tasks(chunks, shape, helpers + 1);
    let results: Mutex<Vec<Option<Vec<f32>>>> = Mutex::new(vec![None; tasks.len()]);
    let run = |range: Range<usize>| {
        let done: Vec<Vec<f32>> =
            tasks[range.clone()].iter().map(|t| attend_head(&chunks[t.chunk], queries, t.head, t.rows.clone(), shape)).collect();
        let mut results = results.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (slot, result) in results[range].iter_mut().zip(done) {
            *slot = Some(result);
        }
        Ok(())
    };
    if helpers == 0 || tasks.len() < 2 {
        run(0..tasks.len())?;
    } else {
        // Whole groups of heads that share K/V per chunk of tasks (heads of a group are
        // consecutive tasks): the group's keys and values, read from memory by its first
        // head, are still in this core's cache for the others (decode attention is bound by
        // those reads).
        let group = (heads / shape.kv_heads.max(1)).max(1);
        spin_pool::run_chunks(tasks.len(), group, group, helpers, &run)?;
    }
    let results = results.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut output = vec![0f32; n * heads * d];
    for (task, result) in tasks.iter().zip(results) {
        let (c, h) = (task.chunk, task.head);
        let result = result.ok_or_else(|| ModelError::Internal(format!("attention head {h} of chunk {c} was not run")))?;
        let first_row = chunks[c].first_row + task.rows.start;
        for (i, src) in result.chunks_exact(d).enumerate() {
            let at = ((first_row + i) * heads + h) * d;
            output[at..at + d].copy_from_slice(src);
        }
    }
    Ok(output)
}

/// One head of one chunk's query rows `rows` (indices within the chunk).
#[derive(Debug, Clone, PartialEq)]
struct HeadTask {
    chunk: usize,
    head: usize,
    rows: Range<usize>,
}

/// Query rows below which a chunk's rows are not split between threads.
const MIN_SPLIT_ROWS: usize = 8;

/// The tasks of [`attend`] for `threads` threads, ordered chunk, row part, head (so a group
/// of heads sharing K/V stays consecutive). A chunk's rows are split into parts only when
/// its (chunk, K/V group) tasks alone could not keep the threads busy: a prefill of a model
/// with one K/V head (Gemma 3 270M) was one group, attended by one thread while the others
/// spun. Causal rows cost more the later they come, so the parts hold equal sums of visible
/// keys, not equal numbers of rows.
fn tasks(chunks: &[ChunkAttention<'_>], shape: AttentionShape, threads: usize) -> Vec<HeadTask> {
    let groups = chunks.len() * shape.kv_heads.max(1);
    // `run_chunks` deals out about two pieces a thread.
    let wanted_parts = (2 * threads).div_ceil(groups.max(1));
    let mut tasks = Vec::new();
    for (c, chunk) in chunks.iter().enumerate() {
        let parts = if threads > 1 { wanted_parts.min(chunk.len / MIN_SPLIT_ROWS).max(1) } else { 1 };
        for rows in split_rows(chunk, shape.window, parts) {
            tasks.extend((0..shape.heads).map(|head| HeadTask { chunk: c, head, rows: rows.clone() }));
        }
    }
    tasks
}

/// `chunk`'s rows in `parts` consecutive ranges of about equal cost (keys seen), none empty.
fn split_rows(chunk: &ChunkAttention<'_>, window: Option<usize>, parts: usize) -> Vec<Range<usize>> {
    if parts <= 1 {
        return vec![0..chunk.len];
    }
    let cost = |i: usize| {
        let visible = chunk.start + i + 1;
        window.map_or(visible, |w| visible.min(w))
    };
    let total: usize = (0..chunk.len).map(cost).sum();
    let mut ranges = Vec::with_capacity(parts);
    let (mut start, mut sum) = (0, 0);
    for i in 0..chunk.len {
        sum += cost(i);
        // Close part `k` once its share of the total is reached, leaving a row for each
        // part still to come.
        let k = ranges.len() + 1;
        if k < parts && sum * parts >= total * k && chunk.len - (i + 1) >= parts - k {
            ranges.push(start..i + 1);
            start = i + 1;
        }
    }
    ranges.push(start..chunk.len);
    ranges
}

/// One task of [`attend`]: `[rows.len(), head_dim]`, compiled for the widest
/// vectors this CPU has (the dot products, the exponentials and the weighted sums all
/// vectorise; the baseline build had 4 lanes and a libm `exp` per score).
fn attend_head(chunk: &ChunkAttention<'_>, queries: &[f32], h: usize, rows: Range<usize>, shape: AttentionShape) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return unsafe { attend_head_avx512(chunk, queries, h, rows, shape) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { attend_head_avx2(chunk, queries, h, rows, shape) };
        }
    }
    head_body(chunk, queries, h, rows, shape)
}

/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attend_head_avx512(
    chunk: &ChunkAttention<'_>,
    queries: &[f32],
    h: usize,
    rows: Range<usize>,
    shape: AttentionShape,
) -> Vec<f32> {
    head_body(chunk, queries, h, rows, shape)
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_head_avx2(
    chunk: &ChunkAttention<'_>,
    queries: &[f32],
    h: usize,
    rows: Range<usize>,
    shape: AttentionShape,
) -> Vec<f32> {
    head_body(chunk, queries, h, rows, shape)
}

/// [`attend_head`]'s body, inlined into each compiled version.
#[inline(always)]
fn head_body(
    chunk: &ChunkAttention<'_>,
    queries: &[f32],
    h: usize,
    rows: Range<usize>,
    shape: AttentionShape,
) -> Vec<f32> {
    let AttentionShape { heads, kv_heads, head_dim: d, scale, window } = shape;
    let g = h / (heads / kv_heads);
    let mut out = vec![0f32; rows.len() * d];
    let mut scores = Vec::with_capacity(chunk.start + rows.end);
    for (o, i) in out.chunks_exact_mut(d).zip(rows) {
        let row = chunk.first_row + i;
        let q = &queries[(row * heads + h) * d..(row * heads + h + 1) * d];
        let visible = chunk.start + i + 1;
        // Query at position p sees keys p - window < j <= p.
        let first = window.map_or(0, |w| visible.saturating_sub(w));
        scores.clear();
        for part in row_blocks(&chunk.keys, g, first, visible, d) {
            for k in part.chunks_exact(d) {
                scores.push(dot(q, k) * scale);
            }
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // `host_ops::exp` vectorises (libm's did not); arguments are ≤ 0, where its clamp
        // below e^-87 is far under a rounding of the sum (≥ 1).
        scores.iter_mut().for_each(|s| *s = crate::host_ops::exp(*s - max));
        let sum: f32 = scores.iter().sum();
        weighted_sum(&chunk.values, g, first, visible, &scores, o);
        let inv = 1.0 / sum;
        o.iter_mut().for_each(|x| *x *= inv);
    }
    out
}

/// `o = Σ_j weights[j] · v_j` over the value rows `first..end` of head `g`, `LANES` columns at
/// a time: each group's sums stay in registers over all rows, where a whole-row `o += w · v`
/// loaded and stored `o` once per row (the largest cost of decode attention in a profile).
#[inline(always)]
fn weighted_sum(values: &[&[f32]], g: usize, first: usize, end: usize, weights: &[f32], o: &mut [f32]) {
    const LANES: usize = 32;
    let d = o.len();
    let (groups, tail) = o.as_chunks_mut::<LANES>();
    for (c, group) in groups.iter_mut().enumerate() {
        let mut acc = [0f32; LANES];
        let mut w = weights.iter();
        for part in row_blocks(values, g, first, end, d) {
            for (v, &w) in part.chunks_exact(d).zip(&mut w) {
                let v = &v[c * LANES..][..LANES];
                for k in 0..LANES {
                    acc[k] += w * v[k];
                }
            }
        }
        *group = acc;
    }
    if !tail.is_empty() {
        let start = d - tail.len();
        tail.fill(0.0);
        let mut w = weights.iter();
        for part in row_blocks(values, g, first, end, d) {
            for (v, &w) in part.chunks_exact(d).zip(&mut w) {
                tail.iter_mut().zip(&v[start..]).for_each(|(acc, x)| *acc += w * x);
            }
        }
    }
}

/// Eight partial sums, so the compiler keeps them in vector registers.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward f64 attention of one query against the keys it sees.
    fn reference(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>], scale: f64) -> Vec<f64> {
        let d = q.len();
        let scores: Vec<f64> =
            keys.iter().map(|k| q.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale).collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = weights.iter().sum();
        (0..d).map(|j| weights.iter().zip(values).map(|(w, v)| w * v[j] as f64).sum::<f64>() / sum).collect()
    }

    fn value(seed: usize) -> f32 {
        ((seed.wrapping_mul(2654435761) % 1000) as f32 / 500.0) - 1.0
    }

    fn chunk(start: usize, len: usize) -> ChunkAttention<'static> {
        ChunkAttention { first_row: 0, len, start, keys: Vec::new(), values: Vec::new() }
    }

    #[test]
    fn one_kv_group_splits_its_rows_by_cost_and_keeps_heads_together() {
        let shape = AttentionShape { heads: 4, kv_heads: 1, head_dim: 8, scale: 1.0, window: None };
        // One chunk, one K/V group, two threads: four parts of the 64 rows (two a thread).
        let tasks = tasks(&[chunk(0, 64)], shape, 2);
        assert_eq!(tasks.len(), 16);
        let parts: Vec<Range<usize>> = tasks.chunks(4).map(|g| g[0].rows.clone()).collect();
        for (group, rows) in tasks.chunks(4).zip(&parts) {
            assert!(group.iter().enumerate().all(|(h, t)| t.head == h && t.rows == *rows), "{group:?}");
        }
        assert_eq!(parts.first().map(|r| r.start), Some(0));
        assert_eq!(parts.last().map(|r| r.end), Some(64));
        assert!(parts.windows(2).all(|w| w[0].end == w[1].start && !w[0].is_empty()), "{parts:?}");
        // Causal rows cost more later on: the first part holds more rows than the last, and
        // the parts' costs (keys seen) are within a row's cost of a quarter.
        assert!(parts[0].len() > parts[3].len(), "{parts:?}");
        let cost = |r: &Range<usize>| r.clone().map(|i| i + 1).sum::<usize>();
        let total = cost(&(0..64));
        assert!(parts.iter().all(|r| cost(r).abs_diff(total / 4) <= 64), "{parts:?}");
        // Under a sliding window every row costs the same once the window is full.
        let windowed = split_rows(&chunk(1000, 64), Some(16), 4);
        assert!(windowed.iter().all(|r| r.len() == 16), "{windowed:?}");
    }

    #[test]
    fn rows_stay_whole_when_groups_are_enough_or_chunks_short() {
        let shape = AttentionShape { heads: 8, kv_heads: 4, head_dim: 8, scale: 1.0, window: None };
        // Four K/V groups already give two tasks a thread.
        assert!(tasks(&[chunk(0, 64)], shape, 2).iter().all(|t| t.rows == (0..64)));
        // Decode rows (one a chunk) and one thread never split.
        assert!(tasks(&[chunk(9, 1), chunk(3, 1)], shape, 2).iter().all(|t| t.rows == (0..1)));
        let one_group = AttentionShape { kv_heads: 1, ..shape };
        assert!(tasks(&[chunk(0, 64)], one_group, 1).iter().all(|t| t.rows == (0..64)));
        // Every row of a short chunk is a part of its own at most.
        let parts = split_rows(&chunk(0, 3), None, 8);
        assert_eq!(parts, vec![0..3]);
    }

    #[test]
    fn matches_reference_with_gqa_cache_and_two_chunks() {
        check(AttentionShape { heads: 4, kv_heads: 2, head_dim: 12, scale: 1.0 / 12f32.sqrt(), window: None });
    }

    #[test]
    fn sliding_window_masks_keys_that_far_behind() {
        // Window 3: position p sees p-2..=p; chunk 0's queries (positions 70..73) lose keys 0..68.
        check(AttentionShape { heads: 4, kv_heads: 2, head_dim: 12, scale: 0.0625, window: Some(3) });
        // A window wider than every sequence changes nothing.
        check(AttentionShape { heads: 4, kv_heads: 1, head_dim: 8, scale: 0.25, window: Some(64) });
    }

    fn check(shape: AttentionShape) {
        let (heads, kv_heads, d) = (shape.heads, shape.kv_heads, shape.head_dim);
        // Chunk 0: 3 new tokens on 70 cached (two blocks); chunk 1: one decode token on 2
        // cached; chunk 2: a prefill of 40 tokens on 5 cached, long enough for its rows to be
        // split between threads. Each chunk's blocks are separate buffers, as the pool holds
        // them.
        let specs = [(70usize, 3usize), (2, 1), (5, 40)];
        let block = kv_heads * KV_BLOCK_TOKENS * d;
        let caches: Vec<(Vec<Vec<f32>>, Vec<Vec<f32>>)> = specs
            .iter()
            .enumerate()
            .map(|(c, &(start, len))| {
                let blocks = (start + len).div_ceil(KV_BLOCK_TOKENS);
                let k = (0..blocks).map(|b| (0..block).map(|i| value(i + 7919 * c + 31 * b)).collect()).collect();
                let v = (0..blocks).map(|b| (0..block).map(|i| value(i * 3 + 104729 * c + 17 * b + 1)).collect()).collect();
                (k, v)
            })
            .collect();
        let n: usize = specs.iter().map(|s| s.1).sum();
        let queries: Vec<f32> = (0..n * heads * d).map(|i| value(i * 7 + 13)).collect();
        let mut first_row = 0;
        let chunks: Vec<ChunkAttention<'_>> = specs
            .iter()
            .zip(&caches)
            .map(|(&(start, len), (k, v))| {
                let (keys, values) = (k.iter().map(Vec::as_slice).collect(), v.iter().map(Vec::as_slice).collect());
                let chunk = ChunkAttention { first_row, len, start, keys, values };
                first_row += len;
                chunk
            })
            .collect();
        let got = attend(&queries, &chunks, shape).expect("attention runs");
        for chunk in &chunks {
            for i in 0..chunk.len {
                let row = chunk.first_row + i;
                for h in 0..heads {
                    let g = h / (heads / kv_heads);
                    let pos = chunk.start + i;
                    let seen = |j: usize| shape.window.is_none_or(|w| pos - j < w);
                    // Straight from the block buffers, not through `rows`.
                    let rows = |blocks: &[&[f32]]| -> Vec<Vec<f32>> {
                        let at = |j: usize| (g * KV_BLOCK_TOKENS + j % KV_BLOCK_TOKENS) * d;
                        (0..=pos).filter(|&j| seen(j)).map(|j| blocks[j / KV_BLOCK_TOKENS][at(j)..][..d].to_vec()).collect()
                    };
                    let q = &queries[(row * heads + h) * d..][..d];
                    let want = reference(q, &rows(&chunk.keys), &rows(&chunk.values), shape.scale as f64);
                    let out = &got[(row * heads + h) * d..][..d];
                    for (a, b) in out.iter().zip(&want) {
                        assert!((*a as f64 - b).abs() < 1e-5, "row {row} head {h}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
