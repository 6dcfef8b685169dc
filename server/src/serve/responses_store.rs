//! The stored responses of `/v1/responses` (`store: true`, the default): a bounded,
//! in-memory LRU map from `resp_…` ids to the response object and the conversation that
//! led to it, for `previous_response_id`, `GET` and `DELETE /v1/responses/{id}`.
//!
//! Entries belong to the API key that created them: another key neither sees nor deletes
//! them (they answer as if the id did not exist). Nothing survives a restart, as with
//! vLLM's and llama.cpp's stores; `--responses-store-size 0` turns storing off.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use super::protocol::ResponseObject;
use super::validate::responses::ConversationItem;

/// Who created a stored response: the index of the API key among the server's keys, or
/// `None` when the API is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner(pub Option<usize>);

/// One stored response.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub owner: Owner,
    pub response: ResponseObject,
    /// Every item up to and including this response's output (earlier turns first), without
    /// the request's `instructions`, which a continuation does not inherit.
    pub conversation: Vec<ConversationItem>,
}

/// The LRU store. Reads count as use: a conversation being continued stays.
pub struct ResponseStore {
    capacity: usize,
    inner: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<String, (u64, Arc<StoredResponse>)>,
    /// Last use → id; the first entry is the least recently used.
    by_use: BTreeMap<u64, String>,
    clock: u64,
}

impl Lru {
    fn touch(&mut self, id: &str) -> Option<Arc<StoredResponse>> {
        self.clock += 1;
        let clock = self.clock;
        let (used, value) = self.entries.get_mut(id)?;
        self.by_use.remove(used);
        *used = clock;
        self.by_use.insert(clock, id.to_string());
        Some(value.clone())
    }
}

impl ResponseStore {
    /// A store of at most `capacity` responses; 0 stores nothing.
    pub fn new(capacity: usize) -> Self {
        ResponseStore { capacity, inner: Mutex::new(Lru::default()) }
    }

    pub fn is_enabled(&self) -> bool {
        self.capacity > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // The map stays consistent across a panic elsewhere (every update is one step).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `value` under its response's id, evicting the least recently used entries
    /// beyond the capacity.
    pub fn insert(&self, value: StoredResponse) {
        if self.capacity == 0 {
            return;
        }
        let id = value.response.id.clone();
        let mut lru = self.lock();
        lru.clock += 1;
        let clock = lru.clock;
        if let Some((old, _)) = lru.entries.insert(id.clone(), (clock, Arc::new(value))) {
            lru.by_use.remove(&old);
        }
        lru.by_use.insert(clock, id);
        while lru.entries.len() > self.capacity {
            let Some((_, oldest)) = lru.by_use.pop_first() else { break };
            lru.entries.remove(&oldest);
        }
    }

    /// The response `id` if `owner` created it.
    pub fn get(&self, id: &str, owner: Owner) -> Option<Arc<StoredResponse>> {
        let mut lru = self.lock();
        let visible = lru.entries.get(id).is_some_and(|(_, v)| v.owner == owner);
        if visible { lru.touch(id) } else { None }
    }

    /// Deletes the response `id` if `owner` created it; whether it did.
    pub fn delete(&self, id: &str, owner: Owner) -> bool {
        let mut lru = self.lock();
        match lru.entries.get(id) {
            Some((used, v)) if v.owner == owner => {
                let used = *used;
                lru.by_use.remove(&used);
                lru.entries.remove(id);
                true
            }
            _ => false,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: &str, owner: Option<usize>) -> StoredResponse {
        let response: ResponseObject = serde_json::from_value(serde_json::json!({
            "id": id, "object": "response", "created_at": 0, "completed_at": 0, "status": "completed",
            "error": null, "incomplete_details": null, "instructions": null, "max_output_tokens": null,
            "model": "m", "output": [], "parallel_tool_calls": true, "previous_response_id": null,
            "reasoning": {}, "store": true, "temperature": 1.0, "text": {}, "tool_choice": "auto",
            "tools": [], "top_p": 1.0, "truncation": "disabled", "usage": null, "user": null,
            "metadata": {}, "background": false
        }))
        .expect("a response object");
        StoredResponse { owner: Owner(owner), response, conversation: Vec::new() }
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let store = ResponseStore::new(2);
        store.insert(stored("resp_a", None));
        store.insert(stored("resp_b", None));
        // Reading `a` makes `b` the oldest.
        assert!(store.get("resp_a", Owner(None)).is_some());
        store.insert(stored("resp_c", None));
        assert_eq!(store.len(), 2);
        assert!(store.get("resp_b", Owner(None)).is_none());
        assert!(store.get("resp_a", Owner(None)).is_some());
        assert!(store.get("resp_c", Owner(None)).is_some());
    }

    #[test]
    fn one_key_cannot_see_or_delete_anothers_responses() {
        let store = ResponseStore::new(8);
        store.insert(stored("resp_a", Some(0)));
        assert!(store.get("resp_a", Owner(Some(1))).is_none());
        assert!(!store.delete("resp_a", Owner(Some(1))));
        assert!(store.get("resp_a", Owner(Some(0))).is_some());
        assert!(store.delete("resp_a", Owner(Some(0))));
        assert!(store.get("resp_a", Owner(Some(0))).is_none());
        assert!(!store.delete("resp_a", Owner(Some(0))));
    }

    #[test]
    fn size_zero_stores_nothing_and_replacing_keeps_one_entry() {
        let off = ResponseStore::new(0);
        off.insert(stored("resp_a", None));
        assert!(off.is_empty() && !off.is_enabled());
        let store = ResponseStore::new(2);
        store.insert(stored("resp_a", None));
        store.insert(stored("resp_a", None));
        store.insert(stored("resp_b", None));
        assert_eq!(store.len(), 2);
        assert!(store.get("resp_a", Owner(None)).is_some());
    }
}
