//! Conversations kept by the server for the WebSocket's `conversation.*` frames: a turn sends
//! one user message, and the server renders the whole history into the prompt (so the
//! engine's prefix cache serves the earlier turns).
//!
//! Pure bookkeeping, no model: the WebSocket layer tokenizes and trims. Bounds:
//! - at most `max_per_owner` conversations per API key (creating one more evicts that key's
//!   least recently used idle conversation);
//! - an idle TTL (a conversation unused for `ttl` is forgotten, swept on every access);
//! - a turn's prompt token budget is enforced by the caller, which drops the oldest
//!   messages and reports how many through [`ConversationStore::finish_turn`].
//!
//! A conversation is visible only to the key that created it ([`Owner`]); another key gets
//! "not found", as for a conversation that never existed. One turn at a time runs in a
//! conversation (a second one is refused while the first streams).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use super::error::ApiError;
pub use super::responses_store::Owner;

/// Id prefix of a conversation.
pub const ID_PREFIX: &str = "conv_";

/// The store's bounds (`--max-conversations-per-key`, `--conversation-ttl`,
/// `--conversation-max-tokens`).
#[derive(Debug, Clone, Copy)]
pub struct ConversationLimits {
    pub max_per_owner: usize,
    pub ttl: Duration,
    /// Prompt tokens a turn may render to; older messages are dropped beyond it.
    pub max_tokens: usize,
}

/// One message of a conversation, as `conversation.get` returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredMessage {
    pub role: String,
    pub content: String,
    /// An answer cancelled (or cut by a closed socket) after streaming this much.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
}

impl StoredMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        StoredMessage { role: role.to_string(), content: content.into(), cut: false }
    }
}

/// What a conversation was created with, and is rendered with each turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Setup {
    pub model: String,
    pub system: Option<String>,
    /// Sampling fields merged into every turn's request (a turn may override them).
    pub defaults: Map<String, Value>,
}

#[derive(Debug, Clone)]
struct Conversation {
    owner: Owner,
    setup: Setup,
    messages: Vec<StoredMessage>,
    created: u64,
    last_used: Instant,
    busy: bool,
}

/// A listing row (`conversation.list`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub conversation_id: String,
    pub model: String,
    pub messages: usize,
    pub created: u64,
    /// The first user message, cut to 80 characters, as a title.
    pub title: String,
}

/// A conversation's state at the start of a turn: what the prompt is rendered from.
#[derive(Debug, Clone)]
pub struct TurnStart {
    pub setup: Setup,
    pub history: Vec<StoredMessage>,
}

pub struct ConversationStore {
    limits: ConversationLimits,
    inner: Mutex<HashMap<String, Conversation>>,
}

fn not_found(id: &str) -> ApiError {
    ApiError::invalid("conversation_id", format!("No conversation with id {id:?} (it may have expired)."))
}

impl ConversationStore {
    pub fn new(limits: ConversationLimits) -> Self {
        ConversationStore { limits, inner: Mutex::new(HashMap::new()) }
    }

    pub fn limits(&self) -> ConversationLimits {
        self.limits
    }

    /// The map, with expired conversations swept out. Every update is one step, so the map
    /// stays consistent across a panic elsewhere.
    fn lock(&self, now: Instant) -> MutexGuard<'_, HashMap<String, Conversation>> {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let ttl = self.limits.ttl;
        map.retain(|_, c| c.busy || now.saturating_duration_since(c.last_used) < ttl);
        map
    }

    /// A new conversation of `owner`, starting with `messages` (a client restoring one the
    /// server forgot); the id. Evicts the owner's least recently used idle conversation when
    /// it already has the maximum.
    pub fn create(&self, owner: Owner, setup: Setup, messages: Vec<StoredMessage>, now: Instant) -> String {
        let mut map = self.lock(now);
        let mine = map.values().filter(|c| c.owner == owner).count();
        if mine >= self.limits.max_per_owner.max(1) {
            let oldest = map
                .iter()
                .filter(|(_, c)| c.owner == owner && !c.busy)
                .min_by_key(|(_, c)| c.last_used)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        let id = format!("{ID_PREFIX}{}", ulid::Ulid::generate().to_string().to_ascii_lowercase());
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        map.insert(id.clone(), Conversation { owner, setup, messages, created, last_used: now, busy: false });
        id
    }

    /// The setup and messages of a conversation `owner` can see.
    pub fn get(&self, owner: Owner, id: &str, now: Instant) -> Result<(Setup, Vec<StoredMessage>), ApiError> {
        let mut map = self.lock(now);
        let c = map.get_mut(id).filter(|c| c.owner == owner).ok_or_else(|| not_found(id))?;
        c.last_used = now;
        Ok((c.setup.clone(), c.messages.clone()))
    }

    /// `owner`'s conversations, most recently used first.
    pub fn list(&self, owner: Owner, now: Instant) -> Vec<Summary> {
        let map = self.lock(now);
        let mut rows: Vec<(&String, &Conversation)> = map.iter().filter(|(_, c)| c.owner == owner).collect();
        rows.sort_by_key(|(_, c)| std::cmp::Reverse(c.last_used));
        rows.into_iter()
            .map(|(id, c)| Summary {
                conversation_id: id.clone(),
                model: c.setup.model.clone(),
                messages: c.messages.len(),
                created: c.created,
                title: c
                    .messages
                    .iter()
                    .find(|m| m.role == "user")
                    .map(|m| m.content.chars().take(80).collect())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Deletes a conversation `owner` can see (a running turn's answer is then dropped).
    pub fn delete(&self, owner: Owner, id: &str, now: Instant) -> Result<(), ApiError> {
        let mut map = self.lock(now);
        match map.get(id) {
            Some(c) if c.owner == owner => {
                map.remove(id);
                Ok(())
            }
            _ => Err(not_found(id)),
        }
    }

    /// Keeps the first `keep` messages (to edit a message or regenerate an answer); the
    /// number kept. Refused while a turn runs.
    pub fn truncate(&self, owner: Owner, id: &str, keep: usize, now: Instant) -> Result<usize, ApiError> {
        let mut map = self.lock(now);
        let c = map.get_mut(id).filter(|c| c.owner == owner).ok_or_else(|| not_found(id))?;
        if c.busy {
            return Err(busy(id));
        }
        c.messages.truncate(keep);
        c.last_used = now;
        Ok(c.messages.len())
    }

    /// Starts a turn: marks the conversation busy and returns what to render. The caller
    /// must end it with [`Self::finish_turn`] or [`Self::abandon_turn`].
    pub fn begin_turn(&self, owner: Owner, id: &str, now: Instant) -> Result<TurnStart, ApiError> {
        let mut map = self.lock(now);
        let c = map.get_mut(id).filter(|c| c.owner == owner).ok_or_else(|| not_found(id))?;
        if c.busy {
            return Err(busy(id));
        }
        c.busy = true;
        c.last_used = now;
        Ok(TurnStart { setup: c.setup.clone(), history: c.messages.clone() })
    }

    /// Ends a turn: drops the `dropped` oldest messages (the prompt budget), then appends the
    /// user message and the answer. A conversation deleted meanwhile stays deleted.
    pub fn finish_turn(&self, id: &str, dropped: usize, user: StoredMessage, answer: StoredMessage, now: Instant) {
        let mut map = self.lock(now);
        if let Some(c) = map.get_mut(id) {
            c.messages.drain(..dropped.min(c.messages.len()));
            c.messages.push(user);
            c.messages.push(answer);
            c.busy = false;
            c.last_used = now;
        }
    }

    /// Ends a turn that produced nothing (it failed before its first token): nothing is added.
    pub fn abandon_turn(&self, id: &str, now: Instant) {
        if let Some(c) = self.lock(now).get_mut(id) {
            c.busy = false;
            c.last_used = now;
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn busy(id: &str) -> ApiError {
    ApiError::invalid("conversation_id", format!("Conversation {id:?} is already answering; wait for it or cancel it."))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Owner = Owner(Some(0));
    const BOB: Owner = Owner(Some(1));

    fn store(max_per_owner: usize, ttl_s: u64) -> ConversationStore {
        ConversationStore::new(ConversationLimits {
            max_per_owner,
            ttl: Duration::from_secs(ttl_s),
            max_tokens: 1000,
        })
    }

    fn setup() -> Setup {
        Setup { model: "m".into(), system: Some("be brief".into()), defaults: Map::new() }
    }

    fn turn(s: &ConversationStore, id: &str, user: &str, answer: &str, now: Instant) {
        s.begin_turn(ALICE, id, now).expect("turn starts");
        s.finish_turn(id, 0, StoredMessage::new("user", user), StoredMessage::new("assistant", answer), now);
    }

    #[test]
    fn turns_append_user_and_answer_and_one_turn_runs_at_a_time() {
        let s = store(4, 60);
        let now = Instant::now();
        let id = s.create(ALICE, setup(), Vec::new(), now);
        assert!(id.starts_with(ID_PREFIX));
        let start = s.begin_turn(ALICE, &id, now).expect("turn");
        assert!(start.history.is_empty());
        assert_eq!(start.setup.system.as_deref(), Some("be brief"));
        assert!(s.begin_turn(ALICE, &id, now).is_err(), "a second turn waits for the first");
        assert!(s.truncate(ALICE, &id, 0, now).is_err(), "no truncation during a turn");
        let cut = StoredMessage { cut: true, ..StoredMessage::new("assistant", "half") };
        s.finish_turn(&id, 0, StoredMessage::new("user", "hi"), cut.clone(), now);
        let (_, messages) = s.get(ALICE, &id, now).expect("visible");
        assert_eq!(messages, vec![StoredMessage::new("user", "hi"), cut]);
        assert_eq!(serde_json::to_value(&messages[1]).expect("json")["cut"], true);
        assert!(serde_json::to_value(&messages[0]).expect("json").get("cut").is_none());
        // A failed turn adds nothing but frees the conversation.
        s.begin_turn(ALICE, &id, now).expect("turn");
        s.abandon_turn(&id, now);
        assert_eq!(s.get(ALICE, &id, now).expect("visible").1.len(), 2);
    }

    #[test]
    fn dropped_messages_truncate_and_list() {
        let s = store(4, 60);
        let now = Instant::now();
        let id = s.create(ALICE, setup(), Vec::new(), now);
        turn(&s, &id, "one", "1", now);
        turn(&s, &id, "two", "2", now);
        s.begin_turn(ALICE, &id, now).expect("turn");
        s.finish_turn(&id, 2, StoredMessage::new("user", "three"), StoredMessage::new("assistant", "3"), now);
        let contents: Vec<String> = s.get(ALICE, &id, now).expect("visible").1.into_iter().map(|m| m.content).collect();
        assert_eq!(contents, ["two", "2", "three", "3"]);
        assert_eq!(s.truncate(ALICE, &id, 1, now).expect("truncate"), 1);
        let rows = s.list(ALICE, now);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].messages, rows[0].title.as_str()), (1, "two"));
    }

    #[test]
    fn each_key_sees_only_its_own() {
        let s = store(4, 60);
        let now = Instant::now();
        let id = s.create(ALICE, setup(), Vec::new(), now);
        assert!(s.get(BOB, &id, now).is_err());
        assert!(s.begin_turn(BOB, &id, now).is_err());
        assert!(s.truncate(BOB, &id, 0, now).is_err());
        assert!(s.delete(BOB, &id, now).is_err());
        assert!(s.list(BOB, now).is_empty());
        assert!(s.get(Owner(None), &id, now).is_err(), "the key-less owner is another owner");
        assert!(s.delete(ALICE, &id, now).is_ok());
        assert!(s.get(ALICE, &id, now).is_err());
        assert!(s.delete(ALICE, &id, now).is_err());
    }

    #[test]
    fn count_per_key_evicts_the_least_recently_used_idle_one() {
        let s = store(2, 600);
        let t0 = Instant::now();
        let a = s.create(ALICE, setup(), Vec::new(), t0);
        let b = s.create(ALICE, setup(), Vec::new(), t0 + Duration::from_secs(1));
        let bobs = s.create(BOB, setup(), Vec::new(), t0);
        // `a` is used later than `b`, so `b` goes.
        s.get(ALICE, &a, t0 + Duration::from_secs(2)).expect("a");
        let c = s.create(ALICE, setup(), Vec::new(), t0 + Duration::from_secs(3));
        assert!(s.get(ALICE, &b, t0 + Duration::from_secs(4)).is_err());
        assert!(s.get(ALICE, &a, t0 + Duration::from_secs(4)).is_ok());
        assert!(s.get(ALICE, &c, t0 + Duration::from_secs(4)).is_ok());
        assert!(s.get(BOB, &bobs, t0 + Duration::from_secs(4)).is_ok(), "another key's count is its own");
        // A conversation in a turn is not evicted.
        s.begin_turn(ALICE, &a, t0 + Duration::from_secs(5)).expect("turn");
        s.get(ALICE, &c, t0 + Duration::from_secs(6)).expect("c");
        s.create(ALICE, setup(), Vec::new(), t0 + Duration::from_secs(7));
        assert!(s.get(ALICE, &c, t0 + Duration::from_secs(8)).is_err(), "the idle one went");
        assert_eq!(s.list(ALICE, t0 + Duration::from_secs(8)).len(), 2);
    }

    #[test]
    fn idle_conversations_expire_but_not_during_a_turn() {
        let s = store(4, 10);
        let t0 = Instant::now();
        let a = s.create(ALICE, setup(), Vec::new(), t0);
        let b = s.create(ALICE, setup(), Vec::new(), t0);
        s.begin_turn(ALICE, &b, t0 + Duration::from_secs(5)).expect("turn");
        assert!(s.get(ALICE, &a, t0 + Duration::from_secs(9)).is_ok(), "used at 9 s: lives on");
        assert_eq!(s.len(), 2);
        assert!(s.get(ALICE, &a, t0 + Duration::from_secs(18)).is_ok(), "idle for 9 s of 10");
        assert!(s.get(ALICE, &a, t0 + Duration::from_secs(30)).is_err(), "idle for 12 s: gone");
        assert_eq!(s.len(), 1, "the busy one stays");
        s.finish_turn(&b, 0, StoredMessage::new("user", "u"), StoredMessage::new("assistant", "a"), t0 + Duration::from_secs(30));
        assert!(s.get(ALICE, &b, t0 + Duration::from_secs(39)).is_ok());
        assert!(s.list(ALICE, t0 + Duration::from_secs(60)).is_empty());
        assert!(s.is_empty());
    }
}
