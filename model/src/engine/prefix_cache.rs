//! The index of the prefix cache: caches of finished sequences, kept by the tokens they hold
//! so that a new prompt starting with the same tokens skips their prefill.
//!
//! Entries are keyed in whole [`KV_BLOCK_TOKENS`] blocks by a hash chain (block `i`'s key is
//! the hash of block `i - 1`'s key and block `i`'s tokens, as vLLM keys its blocks), so one
//! key names a whole prefix. A hash only finds candidates: a hit is always verified against
//! the entry's tokens. A hit's blocks are shared with the new sequence by reference count
//! (see [`crate::kv_cache`]), so evicting an entry frees only the blocks no running sequence
//! holds; eviction is least recently used first, among the entries whose eviction would free
//! something. Running sequences publish their written prompt blocks here too
//! ([`super::running_prefix`]). The payload is generic so that this index
//! is tested without a model; the engine stores [`crate::kv_cache::SequenceCache`]s.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use crate::kv_cache::KV_BLOCK_TOKENS;

/// The key of one block: it covers that block and every block before it.
pub(crate) type BlockKey = u64;

/// Names an entry while it is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct EntryId(u64);

/// The longest cached prefix of a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hit {
    pub entry: EntryId,
    /// Prompt tokens whose keys and values the entry holds: whole blocks only.
    pub tokens: usize,
}

/// The keys of the whole blocks of `tokens` (a partial last block has none).
pub(crate) fn block_keys(tokens: &[u32]) -> Vec<BlockKey> {
    let mut parent: BlockKey = 0;
    tokens
        .chunks_exact(KV_BLOCK_TOKENS)
        .map(|block| {
            // DefaultHasher::new() uses fixed keys: keys are stable for the life of the process.
            let mut hasher = DefaultHasher::new();
            parent.hash(&mut hasher);
            block.hash(&mut hasher);
            parent = hasher.finish();
            parent
        })
        .collect()
}

struct Entry<T> {
    /// The tokens the payload holds, whole blocks only.
    tokens: Vec<u32>,
    keys: Vec<BlockKey>,
    payload: T,
    /// What the payload costs against the KV budget, in positions.
    cost: usize,
    last_used: u64,
}

/// Cached payloads indexed by token prefix, with LRU eviction and cost accounting.
pub(crate) struct PrefixCache<T> {
    entries: HashMap<EntryId, Entry<T>>,
    /// Every block key of every entry, to the entries that hold it.
    by_block: HashMap<BlockKey, Vec<EntryId>>,
    next_id: u64,
    /// Ticks on every insert and use; an entry's `last_used` orders eviction.
    clock: u64,
    cost: usize,
}

impl<T> Default for PrefixCache<T> {
    fn default() -> Self {
        PrefixCache { entries: HashMap::new(), by_block: HashMap::new(), next_id: 0, clock: 0, cost: 0 }
    }
}

impl<T> PrefixCache<T> {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Sum of the entries' costs: KV positions held by cached payloads (blocks shared with
    /// running sequences included; the engine counts blocks in its pool instead).
    #[cfg(test)]
    pub fn cost(&self) -> usize {
        self.cost
    }

    #[cfg(test)]
    pub fn payloads(&self) -> impl Iterator<Item = &T> {
        self.entries.values().map(|e| &e.payload)
    }

    pub fn get(&self, id: EntryId) -> Option<&T> {
        self.entries.get(&id).map(|e| &e.payload)
    }

    /// Marks an entry as just used, so it is evicted last.
    pub fn touch(&mut self, id: EntryId) {
        self.clock += 1;
        if let Some(e) = self.entries.get_mut(&id) {
            e.last_used = self.clock;
        }
    }

    /// The longest cached prefix of `prompt` in whole blocks that leaves at least its last
    /// token uncached (the model must run it to give the next token's logits).
    pub fn lookup(&self, prompt: &[u32]) -> Option<Hit> {
        let usable = prompt.len().saturating_sub(1) / KV_BLOCK_TOKENS;
        self.longest(&prompt[..usable * KV_BLOCK_TOKENS], &block_keys(&prompt[..usable * KV_BLOCK_TOKENS]))
    }

    /// The deepest verified match of `tokens` (whole blocks, keyed by `keys`).
    fn longest(&self, tokens: &[u32], keys: &[BlockKey]) -> Option<Hit> {
        // A key at depth i only exists if some entry (barring a collision) holds blocks 0..=i.
        let depth = keys.iter().take_while(|k| self.by_block.contains_key(k)).count();
        (1..=depth).rev().find_map(|blocks| {
            let n = blocks * KV_BLOCK_TOKENS;
            self.by_block[&keys[blocks - 1]]
                .iter()
                .find(|id| self.entries[id].tokens.get(..n) == Some(&tokens[..n]))
                .map(|&entry| Hit { entry, tokens: n })
        })
    }

    /// Caches `payload`, which holds `tokens` (only their whole blocks are indexed).
    /// Returns false, dropping the payload, when it holds no whole block or when an entry
    /// already holds all its blocks (that entry is refreshed instead). Entries whose tokens
    /// are a prefix of the new ones are redundant and dropped.
    pub fn insert(&mut self, tokens: &[u32], payload: T, cost: usize) -> bool {
        self.insert_entry(tokens, payload, cost).is_some()
    }

    /// [`PrefixCache::insert`], naming the new entry.
    pub fn insert_entry(&mut self, tokens: &[u32], payload: T, cost: usize) -> Option<EntryId> {
        let tokens = &tokens[..tokens.len() / KV_BLOCK_TOKENS * KV_BLOCK_TOKENS];
        if tokens.is_empty() {
            return None;
        }
        let keys = block_keys(tokens);
        if let Some(hit) = self.longest(tokens, &keys).filter(|hit| hit.tokens == tokens.len()) {
            self.touch(hit.entry);
            return None;
        }
        let entries = &self.entries;
        let redundant: Vec<EntryId> = keys
            .iter()
            .enumerate()
            .filter_map(|(i, key)| self.by_block.get(key).map(|ids| (i, ids)))
            .flat_map(|(i, ids)| {
                let prefix = &tokens[..(i + 1) * KV_BLOCK_TOKENS];
                ids.iter().copied().filter(move |id| entries[id].tokens == prefix)
            })
            .collect();
        for id in redundant {
            self.remove(id);
        }
        let id = EntryId(self.next_id);
        self.next_id += 1;
        self.clock += 1;
        for key in &keys {
            self.by_block.entry(*key).or_default().push(id);
        }
        self.cost += cost;
        self.entries.insert(id, Entry { tokens: tokens.to_vec(), keys, payload, cost, last_used: self.clock });
        Some(id)
    }

    /// Removes the least recently used entry other than `keep` and returns its payload.
    #[cfg(test)]
    pub fn evict_lru(&mut self, keep: Option<EntryId>) -> Option<T> {
        self.evict_lru_where(keep, |_| true)
    }

    /// Removes the least recently used entry other than `keep` among those whose payload
    /// `frees` (evicting the others would gain nothing) and returns its payload.
    pub fn evict_lru_where(&mut self, keep: Option<EntryId>, frees: impl Fn(&T) -> bool) -> Option<T> {
        let victim = self
            .entries
            .iter()
            .filter(|(id, e)| Some(**id) != keep && frees(&e.payload))
            .min_by_key(|(_, e)| e.last_used)
            .map(|(id, _)| *id)?;
        self.remove(victim)
    }

    /// Removes entry `id` if it is still cached and returns its payload.
    pub fn remove(&mut self, id: EntryId) -> Option<T> {
        let entry = self.entries.remove(&id)?;
        for key in &entry.keys {
            if let Some(ids) = self.by_block.get_mut(key) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    self.by_block.remove(key);
                }
            }
        }
        self.cost -= entry.cost;
        Some(entry.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: usize = KV_BLOCK_TOKENS;

    /// `blocks` whole blocks of distinct tokens starting at `seed`, plus `extra` tokens.
    fn tokens(seed: u32, blocks: usize, extra: usize) -> Vec<u32> {
        (0..(blocks * B + extra) as u32).map(|i| seed * 100_000 + i).collect()
    }

    #[test]
    fn block_keys_chain_over_whole_blocks_only() {
        let t = tokens(1, 3, 10);
        let keys = block_keys(&t);
        assert_eq!(keys.len(), 3);
        assert_eq!(block_keys(&t[..2 * B]), keys[..2], "a prefix has the same keys");
        // Same tokens in block 1 after a different block 0: a different key (the chain).
        let mut other = t.clone();
        other[0] += 1;
        let other_keys = block_keys(&other);
        assert_ne!(other_keys[0], keys[0]);
        assert_ne!(other_keys[1], keys[1]);
        assert!(block_keys(&t[..B - 1]).is_empty());
    }

    #[test]
    fn lookup_finds_the_longest_verified_prefix_and_never_the_whole_prompt() {
        let mut cache = PrefixCache::default();
        let held = tokens(1, 4, 0);
        assert!(cache.insert(&held, "a", 256));
        // A prompt that shares 2 blocks then diverges.
        let mut prompt = held[..2 * B].to_vec();
        prompt.extend(tokens(2, 2, 5));
        assert_eq!(cache.lookup(&prompt).map(|h| h.tokens), Some(2 * B));
        // The prompt equals the held tokens: the last block stays to prefill.
        assert_eq!(cache.lookup(&held).map(|h| h.tokens), Some(3 * B));
        // One token past the held blocks: all of them are reused.
        let mut longer = held.clone();
        longer.push(7);
        assert_eq!(cache.lookup(&longer).map(|h| h.tokens), Some(4 * B));
        // Shorter than a block, or different from the first token: no hit.
        assert_eq!(cache.lookup(&held[..B]), None);
        assert_eq!(cache.lookup(&tokens(3, 4, 1)), None);
    }

    #[test]
    fn a_hash_match_with_different_tokens_is_not_a_hit() {
        let mut cache = PrefixCache::default();
        let held = tokens(1, 2, 0);
        cache.insert(&held, (), 128);
        // Forge a collision: index the entry's first key under a prompt with other tokens.
        let prompt = tokens(9, 2, 1);
        let forged = block_keys(&prompt)[0];
        let id = cache.by_block[&block_keys(&held)[0]][0];
        cache.by_block.insert(forged, vec![id]);
        assert_eq!(cache.lookup(&prompt), None);
    }

    #[test]
    fn lru_eviction_order_follows_use() {
        let mut cache = PrefixCache::default();
        for seed in 1..=3 {
            cache.insert(&tokens(seed, 1, 0), seed, 64);
        }
        // Using entry 1 makes entry 2 the oldest.
        let hit = cache.lookup(&tokens(1, 1, 1)).expect("hit");
        cache.touch(hit.entry);
        assert_eq!(cache.evict_lru(None), Some(2));
        // `keep` is spared even when it is the oldest.
        let keep = cache.lookup(&tokens(3, 1, 1)).expect("hit").entry;
        assert_eq!(cache.evict_lru(Some(keep)), Some(1));
        assert_eq!(cache.evict_lru(Some(keep)), None);
        assert_eq!(cache.evict_lru(None), Some(3));
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn eviction_passes_over_entries_that_would_free_nothing() {
        let mut cache = PrefixCache::default();
        for seed in 1..=3 {
            cache.insert(&tokens(seed, 1, 0), seed, 64);
        }
        // Entry 1 is the oldest, but (say) a running sequence holds all its blocks.
        let frees = |payload: &u32| *payload != 1;
        assert_eq!(cache.evict_lru_where(None, frees), Some(2));
        assert_eq!(cache.evict_lru_where(None, frees), Some(3));
        assert_eq!(cache.evict_lru_where(None, frees), None, "evicting entry 1 would free nothing");
        assert_eq!(cache.len(), 1);
        // An entry removed by id is gone once.
        let id = cache.insert_entry(&tokens(4, 2, 0), 4, 128).expect("new entry");
        assert_eq!(cache.remove(id), Some(4));
        assert_eq!(cache.remove(id), None);
    }

    #[test]
    fn costs_are_accounted_on_insert_evict_and_replace() {
        let mut cache = PrefixCache::default();
        assert!(!cache.insert(&tokens(1, 0, 63), 0, 64), "no whole block: not kept");
        assert_eq!(cache.cost(), 0);
        cache.insert(&tokens(1, 2, 3), 1, 192);
        cache.insert(&tokens(2, 1, 0), 2, 64);
        assert_eq!(cache.cost(), 256);
        // Already held: refused, and the cost does not change.
        assert!(!cache.insert(&tokens(1, 2, 0), 3, 128));
        assert!(!cache.insert(&tokens(1, 1, 0), 3, 64));
        assert_eq!((cache.len(), cache.cost()), (2, 256));
        // Extends entry 1: entry 1 is now redundant and goes.
        assert!(cache.insert(&tokens(1, 3, 0), 4, 256));
        assert_eq!((cache.len(), cache.cost()), (2, 320));
        let hit = cache.lookup(&tokens(1, 3, 1)).expect("hit");
        assert_eq!((cache.get(hit.entry), hit.tokens), (Some(&4), 3 * B));
        while cache.evict_lru(None).is_some() {}
        assert_eq!((cache.len(), cache.cost()), (0, 0));
        assert!(cache.by_block.is_empty(), "no key outlives its entries");
    }

    #[test]
    fn entries_sharing_a_prefix_are_both_kept() {
        let mut cache = PrefixCache::default();
        let mut a = tokens(1, 1, 0);
        let mut b = a.clone();
        a.extend(tokens(2, 1, 0));
        b.extend(tokens(3, 1, 0));
        cache.insert(&a, 'a', 128);
        cache.insert(&b, 'b', 128);
        let mut prompt = b.clone();
        prompt.push(1);
        let hit = cache.lookup(&prompt).expect("hit");
        assert_eq!((cache.get(hit.entry), hit.tokens), (Some(&'b'), 2 * B));
        // Evicting one leaves the shared block findable through the other.
        assert_eq!(cache.evict_lru(None), Some('a'));
        let mut shared = a[..B].to_vec();
        shared.push(1);
        assert_eq!(cache.lookup(&shared).map(|h| h.tokens), Some(B));
    }
}
