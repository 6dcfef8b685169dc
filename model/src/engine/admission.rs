//! The engine loop's admission and its use of the prefix cache: which waiting request starts
//! next and with how much of its prompt shared from a retained cache (its blocks, not a
//! copy), what is evicted to make room, and which caches of departed sequences are retained.
//!
//! The order in which waiting requests are tried is the scheduler's ([`admit_in_order`], a
//! pure function); this module supplies what it needs (each prompt's uncached length, found
//! in the prefix cache) and does the starting.
//!
//! Budget, in blocks of the model's pool: the blocks held (by running sequences or retained
//! caches, a shared block once) plus the blocks running sequences may still take to reach
//! what they may grow to (`reserved_tokens`) stay within `kv_cache_tokens`, retained caches
//! giving way first, least recently used first (passing over those whose blocks running
//! sequences hold: evicting them frees nothing). A hit on blocks a running sequence holds (its
//! published prompt, [`super::running_prefix`]) adds nothing to what is held; a request that
//! would rather share blocks a running sequence is still prefilling waits for them.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use super::EngineLoop;
use super::prefix_cache::Hit;
use super::scheduler::{SchedulerPolicy, WaitingView, admit_in_order};
use super::sequence::{Pending, Sequence};
use crate::kv_cache::{KV_BLOCK_TOKENS, SequenceCache};

impl EngineLoop {
    /// KV positions in the blocks running sequences hold, a shared block once.
    pub(super) fn running_held(&self) -> usize {
        let blocks: HashSet<_> = self.running.iter().flat_map(|s| s.cache.blocks().iter().copied()).collect();
        blocks.len() * KV_BLOCK_TOKENS
    }

    /// KV positions in the pool's blocks held by anyone (running or retained).
    pub(super) fn pool_used(&self) -> usize {
        self.model.kv_pool().used_blocks() * KV_BLOCK_TOKENS
    }

    /// KV positions the running sequences may still take to reach what they may grow to.
    fn future_growth(&self) -> usize {
        self.running.iter().map(|s| s.reserved_tokens.saturating_sub(s.cache.capacity())).sum()
    }

    /// Starts waiting requests while the sequence limit and the budget allow, in the order
    /// of the configured policy ([`admit_in_order`]): oldest first, or cheapest uncached
    /// prompt first with ageing.
    pub(super) fn admit(&mut self) {
        let free_slots = self.config.max_num_seqs.saturating_sub(self.running.len());
        if free_slots == 0 || self.waiting.is_empty() {
            return;
        }
        let now = self.shared.steps.load(Ordering::Relaxed);
        let scheduling = self.config.scheduling;
        let views: Vec<WaitingView> = self
            .waiting
            .iter()
            .map(|pending| {
                let prompt = &pending.request.prompt_ids;
                // Only the latency policy's order looks at cached prefixes.
                let hit = match scheduling.policy {
                    SchedulerPolicy::Fifo => 0,
                    SchedulerPolicy::Latency if self.uses_prefix_cache(pending) => {
                        self.retained.lookup(prompt).map_or(0, |h| h.tokens)
                    }
                    SchedulerPolicy::Latency => 0,
                };
                WaitingView { uncached: prompt.len() - hit, waited: now.saturating_sub(pending.arrived_step) }
            })
            .collect();
        // Started requests leave `waiting` one by one (a panic in between loses none of the
        // others); `started` maps the views' indices to the positions that remain.
        let mut started: Vec<usize> = Vec::new();
        admit_in_order(&views, free_slots, &scheduling, |i| {
            let at = i - started.iter().filter(|&&s| s < i).count();
            let ok = self.try_start(at);
            if ok {
                started.push(i);
            }
            ok
        });
    }

    /// Whether `pending` may reuse (and counts against) the prefix cache. Prompt logprobs
    /// need the logits of every prompt position: nothing is skipped for them.
    fn uses_prefix_cache(&self, pending: &Pending) -> bool {
        self.config.prefix_cache && pending.request.prompt_logprobs.is_none()
    }

    /// Starts `self.waiting[at]` if the KV budget has room for what it may grow to, sharing
    /// the longest cached prefix of its prompt. False (and nothing changed) if there is no room.
    fn try_start(&mut self, at: usize) -> bool {
        let context = self.model.config().context_length;
        let Some(pending) = self.waiting.get(at) else { return false };
        let prompt = &pending.request.prompt_ids;
        let want = (prompt.len() + pending.request.max_tokens).min(context);
        let want = (SequenceCache::blocks_for(want) * KV_BLOCK_TOKENS).min(self.config.kv_cache_tokens);
        let lookup = self.uses_prefix_cache(pending);
        let hit = if lookup { self.retained.lookup(prompt) } else { None };
        if lookup && self.waits_for_running_prefix(prompt, hit.map_or(0, |h| h.tokens)) {
            return false;
        }
        if !self.make_room(want, hit) {
            return false;
        }
        let Some(pending) = self.waiting.remove(at) else { return false };
        let prompt = &pending.request.prompt_ids;
        let prompt_len = prompt.len();
        let mut cache = self.model.new_cache();
        let mut cached = 0;
        if let Some(hit) = hit
            && let Some(source) = self.retained.get(hit.entry)
        {
            cache.share_prefix(source, hit.tokens);
            self.retained.touch(hit.entry);
            cached = cache.len();
        }
        if lookup {
            self.shared.prefix_queries_tokens.fetch_add(prompt_len as u64, Ordering::Relaxed);
            self.shared.prefix_hits_tokens.fetch_add(cached as u64, Ordering::Relaxed);
        }
        self.running.push(Sequence::start(pending, cache, &self.tokenizer, want));
        // The hit's own entry may have had to go for the room: its blocks are shared now.
        self.trim_retained();
        true
    }

    /// Evicts retained caches, least recently used first and sparing `hit`'s entry (about to
    /// be shared), until `want` more positions fit (`hit`'s blocks are held already). False
    /// when they cannot fit beside the running sequences even with nothing retained; an empty
    /// engine always admits, so one request larger than the budget still runs.
    fn make_room(&mut self, want: usize, hit: Option<Hit>) -> bool {
        let budget = self.config.kv_cache_tokens;
        let future = self.future_growth();
        let (keep, fresh) = (hit.map(|h| h.entry), want - hit.map_or(0, |h| h.tokens).min(want));
        // After the start: the running sequences' blocks and the hit's (a block both hold
        // once), what the running ones may still take, and what the new one may take.
        if !self.running.is_empty() && self.running_held_with(hit) + future + fresh > budget {
            return false;
        }
        let pool = self.model.kv_pool().clone();
        let frees = |cache: &SequenceCache| cache.blocks().iter().any(|&id| pool.holders(id) == 1);
        while self.pool_used() + future + fresh > budget && self.retained.evict_lru_where(keep, frees).is_some() {}
        true
    }

    /// KV positions in the blocks running sequences hold together with `hit`'s, a shared
    /// block once.
    fn running_held_with(&self, hit: Option<Hit>) -> usize {
        let hit_blocks = hit.and_then(|h| Some(&self.retained.get(h.entry)?.blocks()[..h.tokens / KV_BLOCK_TOKENS]));
        let running = self.running.iter().flat_map(|s| s.cache.blocks().iter());
        let blocks: HashSet<_> = running.chain(hit_blocks.into_iter().flatten()).copied().collect();
        blocks.len() * KV_BLOCK_TOKENS
    }

    /// Evicts least recently used retained caches while the budget is exceeded.
    pub(super) fn trim_retained(&mut self) {
        let (budget, future) = (self.config.kv_cache_tokens, self.future_growth());
        let pool = self.model.kv_pool().clone();
        let frees = |cache: &SequenceCache| cache.blocks().iter().any(|&id| pool.holders(id) == 1);
        while self.pool_used() + future > budget && self.retained.evict_lru_where(None, frees).is_some() {}
    }

    /// Keeps what `seq`, which has left the engine, cached (the tokens it fed to the model),
    /// for prompts that start the same way. Caches of failed sequences are dropped: a failed
    /// forward may have left them half written.
    pub(super) fn retain(&mut self, seq: &mut Sequence) {
        // The sequence's blocks leave it now, not when it drops after its final event: the
        // usage published right after this must not count them as held.
        let mut cache = std::mem::replace(&mut seq.cache, self.model.new_cache());
        if seq.failed() {
            // Nothing of a failed sequence stays findable, its published prompt blocks neither.
            self.withdraw(seq);
        }
        if !self.config.prefix_cache || seq.failed() {
            return;
        }
        // Only whole blocks are ever reused: the partial tail block goes back now.
        cache.truncate(cache.len() / KV_BLOCK_TOKENS * KV_BLOCK_TOKENS);
        let (len, cost) = (cache.len(), cache.capacity());
        if self.retained.insert(&seq.tokens[..len], cache, cost) {
            self.trim_retained();
        }
    }
}
