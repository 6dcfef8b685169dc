//! Next-token sampling: turns one row of logits into a token id, with OpenAI/vLLM
//! sampling semantics (logit bias, repetition/presence/frequency penalties, temperature,
//! top-k, top-p, min-p) and log-probabilities for the `logprobs` API fields.
//!
//! Everything here is plain Rust over a `&mut [f32]` row so that it is identical on every
//! backend and cheap to test. Validation of the parameters is the server's job; this module
//! only promises never to panic, whatever the numbers.
//!
//! A seeded [`Sampler`] must replay the same tokens for the same logits forever, so it uses
//! its own fixed generator (xoshiro256++ seeded through SplitMix64, pinned by the reference
//! vectors in the tests) and its own `exp`, and draws from candidates in a canonical order,
//! never from an order that depends on std's selection or hashing internals.
//!
//! Cost per call is a few vectorized passes over the row (clean-up and maximum, the
//! log-softmax sum, and the draw's sum); top-k, top-p and `top_logprobs` gather a threshold
//! candidate set instead of sorting the vocabulary. Only a very flat nucleus (high
//! temperature with top-p) ends up sorting a large part of it.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{SystemTime, UNIX_EPOCH};

use row::{
    BLOCK, REACH, argmax, block_sums, by_value_desc, clean, exp, gather, row_max, sanitize, top_n,
};

/// Sampling settings of one sequence. The neutral value of every filter and penalty turns
/// it off, so the [`Default`] is plain sampling from the softmax (OpenAI's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 (or below, or NaN) means greedy: argmax, ties to the lowest id.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 = off.
    pub top_k: usize,
    /// Nucleus: keep the smallest most-likely set whose mass reaches `top_p`; 1.0 = off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 = off.
    pub min_p: f32,
    /// HF/llama.cpp multiplicative penalty over prompt and generated tokens; 1.0 = off.
    pub repetition_penalty: f32,
    /// OpenAI additive penalty on every generated token, once; 0 = off.
    pub presence_penalty: f32,
    /// OpenAI additive penalty per occurrence in the generated tokens; 0 = off.
    pub frequency_penalty: f32,
    /// Added to the raw logit of a token id (ids outside the row are ignored).
    pub logit_bias: Vec<(u32, f32)>,
    /// Fixes the random stream; `None` seeds from the OS and the clock.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Deterministic argmax decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Whether `temperature` selects argmax decoding (NaN counts as greedy too).
    pub fn is_greedy(&self) -> bool {
        self.temperature.is_nan() || self.temperature <= 0.0
    }
}

/// The outcome of one sampling step.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    /// The chosen token.
    pub id: u32,
    /// Log-probability of `id` under the raw row (before bias, penalties and temperature).
    pub logprob: f32,
    /// The most likely tokens of the raw row, most likely first (ties: lowest id first).
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Samples the tokens of one sequence; it remembers what it needs for the penalties.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Xoshiro256PlusPlus,
    /// Distinct ids of prompt and output, for the repetition penalty.
    seen: HashSet<u32>,
    /// Occurrences of each generated id, for presence/frequency penalties.
    counts: HashMap<u32, u32>,
    /// Reused per call: (id, logit or weight) candidates.
    cands: Vec<(u32, f32)>,
    /// Reused per call: per-block sums of a row.
    blocks: Vec<f64>,
    /// Reused per call: raw values of the entries the adjustments overwrote, so that the
    /// chosen token's logprob can be taken from the raw row without copying it.
    originals: Vec<(u32, f32)>,
}

impl Sampler {
    /// `prompt_ids` only matter to the repetition penalty, which covers the prompt too.
    pub fn new(params: SamplingParams, prompt_ids: &[u32]) -> Self {
        let mut seen = HashSet::new();
        if uses_repetition_penalty(&params) {
            seen.extend(prompt_ids.iter().copied());
        }
        Self {
            rng: Xoshiro256PlusPlus::seed_from_u64(params.seed.unwrap_or_else(entropy_seed)),
            params,
            seen,
            counts: HashMap::new(),
            cands: Vec::new(),
            blocks: Vec::new(),
            originals: Vec::new(),
        }
    }

    /// The settings this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token from `logits` (one vocab-sized row) and records it for the
    /// penalties of later steps.
    ///
    /// On return `logits` holds the row after NaN clean-up (NaN becomes -inf, +inf becomes
    /// `f32::MAX`), logit bias and penalties; temperature and the filters are not written
    /// back. A row with no finite logit yields the lowest id (0), with the uniform logprob.
    pub fn sample(&mut self, logits: &mut [f32], want_top_logprobs: Option<usize>) -> SampledToken {
        // Logprobs describe the row as the model produced it, so they are taken before any
        // adjustment touches it.
        let max = sanitize(logits);
        let ln_sum = if max == f32::NEG_INFINITY {
            (logits.len().max(1) as f32).ln()
        } else {
            block_sums(logits, &mut self.blocks, |x| exp(x - max)).ln() as f32
        };
        let norm = LogSoftmax { max, ln_sum };
        let mut top_logprobs = Vec::new();
        if let Some(n) = want_top_logprobs.filter(|&n| n > 0) {
            top_n(&mut self.cands, logits, max, n.min(logits.len()));
            top_logprobs.extend(self.cands.iter().map(|&(id, x)| (id, norm.logprob(x))));
        }

        self.adjust(logits);
        let id = if self.params.is_greedy() {
            argmax(logits)
        } else {
            self.draw(logits)
        };

        let raw = match self.originals.iter().find(|&&(i, _)| i as usize == id) {
            Some(&(_, v)) => v,
            None => logits.get(id).copied().unwrap_or(f32::NEG_INFINITY),
        };
        let id = id as u32;
        self.record(id);
        SampledToken {
            id,
            logprob: norm.logprob(raw),
            top_logprobs,
        }
    }

    /// Applies logit bias, then the repetition penalty, then presence/frequency penalties,
    /// in place, saving each overwritten raw value first. Within one stage every id is
    /// touched once and independently, so hash iteration order does not matter.
    fn adjust(&mut self, logits: &mut [f32]) {
        self.originals.clear();
        let originals = &mut self.originals;
        let mut edit = |id: u32, f: &dyn Fn(f32) -> f32| {
            if let Some(x) = logits.get_mut(id as usize) {
                originals.push((id, *x));
                *x = clean(f(*x));
            }
        };
        let params = &self.params;
        for &(id, bias) in &params.logit_bias {
            edit(id, &|x| x + bias);
        }
        if uses_repetition_penalty(params) {
            let p = params.repetition_penalty;
            for &id in &self.seen {
                edit(id, &|x| if x > 0.0 { x / p } else { x * p });
            }
        }
        let (presence, frequency) = (params.presence_penalty, params.frequency_penalty);
        for (&id, &count) in &self.counts {
            edit(id, &|x| x - (frequency * count as f32 + presence));
        }
    }

    /// temperature → top-k → top-p → min-p → draw, on a clean adjusted row.
    fn draw(&mut self, logits: &[f32]) -> usize {
        let params = &self.params;
        let max = row_max(logits);
        if max == f32::NEG_INFINITY {
            return 0;
        }
        // Clamped so that (x - max) * inv_t is never NaN, even for t = inf or t = 1e-45.
        let inv_t = (1.0 / params.temperature).clamp(f32::MIN_POSITIVE, f32::MAX);
        // Unnormalized probability: the best token weighs exactly 1.
        let prob = |x: f32| exp((x - max) * inv_t);
        // Capped at 1 so that the best token always survives min-p.
        let min_w = if params.min_p > 0.0 {
            params.min_p.min(1.0)
        } else {
            0.0
        };

        let use_top_k = params.top_k > 0 && params.top_k < logits.len();
        let use_top_p = params.top_p < 1.0;
        if !use_top_k && !use_top_p {
            let weight = |x| Some(prob(x)).filter(|&w| w >= min_w).unwrap_or(0.0);
            return draw_from_row(logits, &mut self.blocks, &mut self.rng, weight);
        }

        // (id, logit) candidates, in by_value_desc order wherever order matters.
        let cands = &mut self.cands;
        let mut sorted = 0;
        let total = if use_top_k {
            top_n(cands, logits, max, params.top_k);
            sorted = cands.len();
            cands.iter().map(|c| f64::from(prob(c.1))).sum()
        } else {
            block_sums(logits, &mut self.blocks, prob)
        };
        if use_top_p {
            let target = f64::from(params.top_p.max(0.0)) * total;
            if !use_top_k {
                gather_nucleus(cands, logits, max, params.temperature, target, prob);
            }
            let keep = nucleus_len(cands, sorted, target, prob);
            cands.truncate(keep);
        }
        for c in cands.iter_mut() {
            c.1 = prob(c.1);
        }
        cands.retain(|c| c.1 >= min_w);

        let target = self.rng.next_f64() * cands.iter().map(|c| f64::from(c.1)).sum::<f64>();
        let mut acc = 0.0;
        for c in cands.iter() {
            acc += f64::from(c.1);
            if target < acc {
                return c.0 as usize;
            }
        }
        // Only reached through rounding at the very top of the range.
        let last = cands.iter().rev().find(|c| c.1 > 0.0).or(cands.first());
        last.map_or(0, |c| c.0 as usize)
    }

    fn record(&mut self, id: u32) {
        if uses_repetition_penalty(&self.params) {
            self.seen.insert(id);
        }
        if self.params.presence_penalty != 0.0 || self.params.frequency_penalty != 0.0 {
            *self.counts.entry(id).or_insert(0) += 1;
        }
    }
}

/// The logprob of `id` under a raw logits row, and the row's `top` most likely tokens, with
/// exactly the numbers [`Sampler::sample`] reports for a sampled token: for scoring tokens
/// the model did not choose (prompt logprobs). `row` is cleaned in place (NaN → -inf).
pub fn score_token(row: &mut [f32], id: u32, top: usize) -> SampledToken {
    let max = sanitize(row);
    let ln_sum = if max == f32::NEG_INFINITY {
        (row.len().max(1) as f32).ln()
    } else {
        block_sums(row, &mut Vec::new(), |x| exp(x - max)).ln() as f32
    };
    let norm = LogSoftmax { max, ln_sum };
    let mut cands = Vec::new();
    if top > 0 {
        top_n(&mut cands, row, max, top.min(row.len()));
    }
    SampledToken {
        id,
        logprob: norm.logprob(row.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY)),
        top_logprobs: cands.iter().map(|&(t, x)| (t, norm.logprob(x))).collect(),
    }
}

fn uses_repetition_penalty(params: &SamplingParams) -> bool {
    params.repetition_penalty != 1.0
}

/// Draws an id with probability proportional to `weight` over the whole row, in id order:
/// the block sums locate the block, then one block is scanned.
fn draw_from_row(
    row: &[f32],
    blocks: &mut Vec<f64>,
    rng: &mut Xoshiro256PlusPlus,
    weight: impl Fn(f32) -> f32,
) -> usize {
    let total = block_sums(row, blocks, &weight);
    let target = rng.next_f64() * total;
    let mut before = 0.0;
    // Falls back to the last block with mass if rounding leaves `target` past the end.
    let mut chosen = blocks.iter().rposition(|&b| b > 0.0).unwrap_or(0);
    for (b, &sum) in blocks.iter().enumerate() {
        if target < before + sum {
            chosen = b;
            break;
        }
        before += sum;
    }
    let offset = chosen * BLOCK;
    let block = row
        .get(offset..(offset + BLOCK).min(row.len()))
        .unwrap_or_default();
    let mut acc = before;
    let mut last_positive = 0;
    for (i, &x) in block.iter().enumerate() {
        let w = weight(x);
        if w > 0.0 {
            last_positive = i;
        }
        acc += f64::from(w);
        if target < acc {
            return offset + i;
        }
    }
    offset + last_positive
}

/// Gathers a prefix of the row (in canonical order) whose mass surely reaches `target`, so
/// that the nucleus lies inside it. The margin absorbs the rounding difference between this
/// sum and the sorted one in [`nucleus_len`].
fn gather_nucleus(
    cands: &mut Vec<(u32, f32)>,
    row: &[f32],
    max: f32,
    temperature: f32,
    target: f64,
    prob: impl Fn(f32) -> f32,
) {
    for reach in REACH {
        gather(cands, row, max - reach * temperature);
        let mass: f64 = cands.iter().map(|c| f64::from(prob(c.1))).sum();
        if mass >= target * (1.0 + 1e-6) {
            return;
        }
    }
}

/// Number of leading candidates making the nucleus (the shortest prefix whose mass reaches
/// `target`), after putting them first in canonical order. Sorts only as far as needed: the
/// prefix grows geometrically and each round selects from the remainder.
fn nucleus_len(
    cands: &mut [(u32, f32)],
    mut sorted: usize,
    target: f64,
    prob: impl Fn(f32) -> f32,
) -> usize {
    let mut cum = 0.0;
    let mut i = 0;
    loop {
        while i < sorted {
            cum += f64::from(prob(cands[i].1));
            i += 1;
            if cum >= target {
                return i;
            }
        }
        if sorted >= cands.len() {
            return cands.len();
        }
        let next = (sorted.max(16) * 4).min(cands.len());
        let rest = &mut cands[sorted..];
        let k = next - sorted;
        if k < rest.len() {
            rest.select_nth_unstable_by(k - 1, by_value_desc);
        }
        rest[..k].sort_unstable_by(by_value_desc);
        sorted = next;
    }
}

/// Log-softmax of a raw row; with no finite logit, every token gets the uniform logprob.
#[derive(Debug, Clone, Copy)]
struct LogSoftmax {
    max: f32,
    /// ln of the sum of exp(x - max), or ln(len) for the uniform case.
    ln_sum: f32,
}

impl LogSoftmax {
    fn logprob(self, x: f32) -> f32 {
        if self.max == f32::NEG_INFINITY {
            -self.ln_sum
        } else {
            x - self.max - self.ln_sum
        }
    }
}

/// xoshiro256++ (Blackman & Vigna), seeded through SplitMix64 exactly like
/// `rand`'s `Xoshiro256PlusPlus::seed_from_u64`. Owned here because a seed's token stream
/// must not change when a dependency does.
#[derive(Debug, Clone)]
struct Xoshiro256PlusPlus {
    s: [u64; 4],
}

impl Xoshiro256PlusPlus {
    fn seed_from_u64(state: u64) -> Self {
        // SplitMix64 outputs for consecutive states are distinct, so the state is never
        // all zero (the one state xoshiro must avoid).
        let mut seeder = crate::rng::SplitMix64(state);
        Self { s: std::array::from_fn(|_| seeder.next_u64()) }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) from the top 53 bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A seed for unseeded requests: `RandomState` carries per-process OS randomness, and the
/// counter and clock keep samplers created in the same instant apart.
fn entropy_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, AtomicOrdering::Relaxed));
    if let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

mod row;
#[cfg(test)]
mod tests;
