//! Sharing the prompt blocks of sequences that are still running, as vLLM's automatic prefix
//! caching shares the full blocks of running requests: sixteen requests that arrive together
//! with the same long system prompt prefill it once, not sixteen times.
//!
//! **Publishing.** After every step, a running sequence whose prompt has more whole blocks
//! written than are findable for it puts them in the prefix index ([`PrefixCache`]) as an
//! entry of its own: a [`SequenceCache`] that shares those blocks by reference (a prefix of the
//! sequence's table, so nothing is copied and no block is counted twice). Only whole, written
//! prompt blocks are published, never the block a sequence is still writing: its later writes
//! land in blocks the entry does not hold (which the cache asserts). A longer publication
//! replaces the shorter one (the index drops entries whose tokens are a prefix of a new one);
//! when the sequence finishes, the cache it leaves (prompt and output) replaces it the same
//! way, or, when the prefix cache keeps nothing of it (a failure), its publication is
//! withdrawn. A publication whose blocks a running sequence still holds costs nothing against
//! the budget, and eviction passes over it (evicting it would free nothing); once its
//! sequence has left it is an ordinary retained cache.
//!
//! **Admission.** A waiting request whose prompt shares more whole blocks with the prompt of a
//! running sequence than the index can give it now, blocks that sequence has not written yet,
//! waits: it is treated as not fitting yet (the latency policy passes over it, FIFO and an
//! aged request stop admission there). The prefilling sequence writes those blocks in the next
//! steps (prefill always progresses), so the wait is bounded by its prefill, and the request
//! then starts with them shared instead of prefilling them beside it. Requests submitted
//! together with one system prompt thus start one step apart per prefill chunk of it: the
//! first prefills, the rest share. Requests that skip the prefix cache (prompt logprobs, or
//! the cache off) never wait.

use super::EngineLoop;
use super::prefix_cache::PrefixCache;
use super::sequence::Sequence;
use crate::kv_cache::{KV_BLOCK_TOKENS, SequenceCache};

impl EngineLoop {
    /// Publishes each running sequence's newly written whole prompt blocks in the prefix index.
    pub(super) fn publish_prompt_blocks(&mut self) {
        if !self.config.prefix_cache {
            return;
        }
        for seq in &mut self.running {
            publish(&mut self.retained, seq, || self.model.new_cache());
        }
    }

    /// Takes what `seq` published out of the index: the prefix cache keeps nothing of it.
    pub(super) fn withdraw(&mut self, seq: &mut Sequence) {
        if let Some(id) = seq.published.take() {
            self.retained.remove(id);
        }
    }

    /// Whether a request for `prompt`, to which the index offers `offered` tokens now, should
    /// wait for a running sequence that is prefilling more of the same prompt.
    pub(super) fn waits_for_running_prefix(&self, prompt: &[u32], offered: usize) -> bool {
        // What a hit may cover at most: every whole block but one holding the last token.
        let usable = prompt.len().saturating_sub(1) / KV_BLOCK_TOKENS * KV_BLOCK_TOKENS;
        if usable <= offered {
            return false;
        }
        self.running.iter().any(|seq| {
            let written = seq.cache.len();
            let publishable = seq.prompt_len / KV_BLOCK_TOKENS * KV_BLOCK_TOKENS;
            if written >= publishable.min(usable) {
                return false; // nothing more of it to wait for
            }
            let common = prompt[..usable].iter().zip(&seq.tokens[..publishable]).take_while(|(a, b)| a == b).count();
            let common = common / KV_BLOCK_TOKENS * KV_BLOCK_TOKENS;
            common > offered && common > written
        })
    }
}

/// Publishes `seq`'s written whole prompt blocks if more are written than are findable.
fn publish(index: &mut PrefixCache<SequenceCache>, seq: &mut Sequence, new_cache: impl FnOnce() -> SequenceCache) {
    let blocks = seq.cache.len().min(seq.prompt_len) / KV_BLOCK_TOKENS;
    if blocks <= seq.published_blocks {
        return;
    }
    let n = blocks * KV_BLOCK_TOKENS;
    let mut entry = new_cache();
    entry.share_prefix(&seq.cache, n);
    // None: an entry holds these tokens already (e.g. the one this sequence started from,
    // refreshed); its own earlier publication, a prefix of these, is dropped by the index.
    if let Some(id) = index.insert_entry(&seq.tokens[..n], entry, n) {
        seq.published = Some(id);
    }
    seq.published_blocks = blocks;
}

#[cfg(test)]
#[path = "running_prefix_tests.rs"]
mod tests;
