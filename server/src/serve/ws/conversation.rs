//! The `conversation.*` frames of the WebSocket: conversations whose history the server keeps
//! ([`crate::serve::conversations`]), so that a turn sends one message. Each turn's prompt is
//! the whole history rendered by the chat template, so the engine's prefix cache serves the
//! earlier turns; beyond `--conversation-max-tokens` the oldest exchanges are dropped.
//!
//! A turn streams the same `chat.completion.chunk` / `chat.completion.done` events as a
//! `chat.completion.create`, under the frame's `id`, and is cancelled the same way. Its user
//! message and answer are appended when it ends; a cancelled answer (or one cut by a closed
//! socket) keeps what was streamed, marked `cut`. A turn that fails before its first token
//! adds nothing.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::stream::{Outcome, Prepared, Stream, prepare};
use crate::serve::registry::ModelLease;
use crate::serve::conversations::{ConversationStore, Owner, Setup, StoredMessage, Summary};
use crate::serve::error::ApiError;
use crate::serve::middleware::RequestLog;
use crate::serve::prompt::off_worker;
use crate::serve::protocol::ws::WsServerFrame;
use crate::serve::state::AppState;

pub const TYPE_PREFIX: &str = "conversation.";
pub const TYPE_CREATE: &str = "conversation.create";
pub const TYPE_MESSAGE: &str = "conversation.message";
pub const TYPE_GET: &str = "conversation.get";
pub const TYPE_LIST: &str = "conversation.list";
pub const TYPE_TRUNCATE: &str = "conversation.truncate";
pub const TYPE_DELETE: &str = "conversation.delete";
pub const TYPES: &[&str] = &[TYPE_CREATE, TYPE_MESSAGE, TYPE_GET, TYPE_LIST, TYPE_TRUNCATE, TYPE_DELETE];

/// Request fields a conversation's `defaults` and a turn may set (the rest of a request,
/// messages and tools, belongs to the conversation).
pub const SAMPLING_FIELDS: &[&str] = &[
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "stream_options",
];

/// A parsed `conversation.*` client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ConversationRequest {
    Create {
        id: String,
        model: Option<String>,
        system: Option<String>,
        defaults: Map<String, Value>,
        messages: Vec<StoredMessage>,
    },
    Message { id: String, conversation_id: String, content: String, overrides: Map<String, Value> },
    Get { id: String, conversation_id: String },
    List { id: String },
    Truncate { id: String, conversation_id: String, keep: usize },
    Delete { id: String, conversation_id: String },
}

/// Server frames of conversations (the turns' own are the request protocol's).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type")]
pub enum ConversationFrame {
    #[serde(rename = "conversation.created")]
    Created { id: String, conversation_id: String, model: String },
    #[serde(rename = "conversation")]
    Conversation {
        id: String,
        conversation_id: String,
        model: String,
        system: Option<String>,
        messages: Vec<StoredMessage>,
    },
    #[serde(rename = "conversation.list")]
    List { id: String, conversations: Vec<Summary> },
    #[serde(rename = "conversation.truncated")]
    Truncated { id: String, conversation_id: String, messages: usize },
    #[serde(rename = "conversation.deleted")]
    Deleted { id: String, conversation_id: String },
}

/// What the session does with a conversation frame: answer it at once, or run a turn.
pub enum Step {
    Reply(ConversationFrame),
    Turn(String, Turn),
}

fn take_string(obj: &mut Map<String, Value>, field: &str, required: bool) -> Result<Option<String>, ApiError> {
    match obj.remove(field) {
        Some(Value::String(s)) => Ok(Some(s)),
        None | Some(Value::Null) if !required => Ok(None),
        _ => Err(ApiError::invalid(field, format!("`{field}` must be a string."))),
    }
}

/// Refuses every field left in `obj` that is not a sampling field.
fn only_sampling(obj: Map<String, Value>, param: &str) -> Result<Map<String, Value>, ApiError> {
    match obj.keys().find(|k| !SAMPLING_FIELDS.contains(&k.as_str())) {
        Some(key) => Err(ApiError::UnknownField(format!("{param}{key}"))),
        None => Ok(obj),
    }
}

/// One message of `conversation.create`'s `messages`: `{"role":"user"|"assistant","content":"…"}`.
fn seed_message((i, item): (usize, &Value)) -> Result<StoredMessage, ApiError> {
    let role = item.get("role").and_then(Value::as_str).filter(|r| matches!(*r, "user" | "assistant"));
    let content = item.get("content").and_then(Value::as_str);
    match (role, content) {
        (Some(role), Some(content)) => Ok(StoredMessage::new(role, content)),
        _ => Err(ApiError::invalid(
            format!("messages[{i}]"),
            "A message needs `role` \"user\" or \"assistant\" and a string `content`.",
        )),
    }
}

/// Parses a `conversation.*` frame (`id` already taken out of `obj`).
pub fn parse(kind: &str, id: String, mut obj: Map<String, Value>) -> Result<ConversationRequest, ApiError> {
    obj.remove("type");
    let request = match kind {
        TYPE_CREATE => {
            let model = take_string(&mut obj, "model", false)?;
            let system = take_string(&mut obj, "system", false)?;
            let defaults = match obj.remove("defaults") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(d)) => only_sampling(d, "defaults.")?,
                Some(_) => return Err(ApiError::invalid("defaults", "`defaults` must be an object of sampling fields.")),
            };
            let messages = match obj.remove("messages") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items.iter().enumerate().map(seed_message).collect::<Result<_, _>>()?,
                Some(_) => return Err(ApiError::invalid("messages", "`messages` must be an array of messages.")),
            };
            ConversationRequest::Create { id, model, system, defaults, messages }
        }
        TYPE_MESSAGE => {
            let conversation_id = take_string(&mut obj, "conversation_id", true)?.unwrap_or_default();
            let content = take_string(&mut obj, "content", true)?.unwrap_or_default();
            let overrides = only_sampling(std::mem::take(&mut obj), "")?;
            return Ok(ConversationRequest::Message { id, conversation_id, content, overrides });
        }
        TYPE_GET | TYPE_DELETE | TYPE_TRUNCATE => {
            let conversation_id = take_string(&mut obj, "conversation_id", true)?.unwrap_or_default();
            match kind {
                TYPE_GET => ConversationRequest::Get { id, conversation_id },
                TYPE_DELETE => ConversationRequest::Delete { id, conversation_id },
                _ => {
                    let keep = obj.remove("keep").and_then(|k| k.as_u64()).ok_or_else(|| {
                        ApiError::invalid("keep", "`keep` must be the number of messages to keep.")
                    })?;
                    ConversationRequest::Truncate { id, conversation_id, keep: usize::try_from(keep).unwrap_or(usize::MAX) }
                }
            }
        }
        TYPE_LIST => ConversationRequest::List { id },
        other => {
            return Err(ApiError::invalid("type", format!("Unknown frame type {other:?}; expected one of {TYPES:?}.")));
        }
    };
    match obj.keys().next() {
        Some(key) => Err(ApiError::UnknownField(key.clone())),
        None => Ok(request),
    }
}

impl ConversationRequest {
    /// Answers the frame, or starts its turn (the conversation is busy until the turn ends).
    pub fn into_job(self, state: &Arc<AppState>, owner: Owner) -> Result<Step, (Option<String>, ApiError)> {
        let store = &state.conversations;
        let now = Instant::now();
        let reply = match self {
            ConversationRequest::Create { id, model, system, defaults, messages } => {
                let name = model.unwrap_or_else(|| state.models.default_id().to_string());
                let index = state.models.resolve(&name).ok_or_else(|| (Some(id.clone()), ApiError::ModelNotFound(name)))?;
                let model = state.models.specs().nth(index).map(|s| s.id.clone()).unwrap_or_default();
                let setup = Setup { model, system, defaults };
                // A bad sampling value fails now rather than at every turn (checked against
                // the model when it is loaded; an unloaded one is not loaded just for this).
                if let Some(model) = state.models.try_lease(&setup.model) {
                    let probe = Turn::request_for(&setup, &messages, "?", &Map::new());
                    prepare(state, &model, probe).map_err(|e| (Some(id.clone()), e))?;
                }
                let model = setup.model.clone();
                ConversationFrame::Created { conversation_id: store.create(owner, setup, messages, now), id, model }
            }
            ConversationRequest::Message { id, conversation_id, content, overrides } => {
                let start = store.begin_turn(owner, &conversation_id, now).map_err(|e| (Some(id.clone()), e))?;
                let record = TurnRecord {
                    store: store.clone(),
                    conversation_id,
                    user: content,
                    dropped: 0,
                    answer: String::new(),
                    phase: Phase::Preparing,
                };
                let turn = Turn {
                    record,
                    setup: start.setup,
                    history: start.history,
                    overrides,
                    max_prompt_tokens: store.limits().max_tokens,
                };
                return Ok(Step::Turn(id, turn));
            }
            ConversationRequest::Get { id, conversation_id } => {
                let (setup, messages) = store.get(owner, &conversation_id, now).map_err(|e| (Some(id.clone()), e))?;
                ConversationFrame::Conversation { id, conversation_id, model: setup.model, system: setup.system, messages }
            }
            ConversationRequest::List { id } => ConversationFrame::List { id, conversations: store.list(owner, now) },
            ConversationRequest::Truncate { id, conversation_id, keep } => {
                let messages =
                    store.truncate(owner, &conversation_id, keep, now).map_err(|e| (Some(id.clone()), e))?;
                ConversationFrame::Truncated { id, conversation_id, messages }
            }
            ConversationRequest::Delete { id, conversation_id } => {
                store.delete(owner, &conversation_id, now).map_err(|e| (Some(id.clone()), e))?;
                ConversationFrame::Deleted { id, conversation_id }
            }
        };
        Ok(Step::Reply(reply))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing streamed yet: ending now adds nothing.
    Preparing,
    /// Streaming: ending now keeps what was streamed, marked cut.
    Streaming,
    Finished,
}

/// Ends the turn in the store however the task ends (finished, cancelled, failed, or
/// aborted with its socket).
struct TurnRecord {
    store: Arc<ConversationStore>,
    conversation_id: String,
    user: String,
    /// Oldest messages dropped to fit the prompt budget.
    dropped: usize,
    answer: String,
    phase: Phase,
}

impl Drop for TurnRecord {
    fn drop(&mut self) {
        let now = Instant::now();
        if self.phase == Phase::Preparing {
            self.store.abandon_turn(&self.conversation_id, now);
            return;
        }
        let answer = StoredMessage {
            role: "assistant".into(),
            content: std::mem::take(&mut self.answer),
            cut: self.phase != Phase::Finished,
        };
        let user = StoredMessage::new("user", std::mem::take(&mut self.user));
        self.store.finish_turn(&self.conversation_id, self.dropped, user, answer, now);
    }
}

/// One `conversation.message`: the history as it was when the turn began, and the message.
pub struct Turn {
    record: TurnRecord,
    setup: Setup,
    history: Vec<StoredMessage>,
    overrides: Map<String, Value>,
    max_prompt_tokens: usize,
}

impl Turn {
    /// The chat request of a turn: system prompt, history, the new message, and the
    /// conversation's defaults with the turn's overrides.
    fn request_for(setup: &Setup, history: &[StoredMessage], user: &str, overrides: &Map<String, Value>) -> Value {
        let mut messages = Vec::with_capacity(history.len() + 2);
        if let Some(system) = &setup.system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.extend(history.iter().map(|m| json!({"role": m.role, "content": m.content})));
        messages.push(json!({"role": "user", "content": user}));
        let mut request = setup.defaults.clone();
        request.extend(overrides.clone());
        request.insert("model".into(), Value::String(setup.model.clone()));
        request.insert("messages".into(), Value::Array(messages));
        request.insert("stream".into(), Value::Bool(true));
        Value::Object(request)
    }

    /// The turn's prepared request and how many of the oldest messages it leaves out: whole
    /// exchanges (up to the next user message) go until the prompt fits the budget and the
    /// context.
    fn plan(&self, state: &Arc<AppState>, model: &ModelLease) -> Result<(Prepared, usize), ApiError> {
        let limit = self.max_prompt_tokens;
        let mut dropped = 0;
        loop {
            let request = Self::request_for(&self.setup, &self.history[dropped..], &self.record.user, &self.overrides);
            let attempt = prepare(state, model, request);
            let too_long = match &attempt {
                Ok(prepared) => prepared.prompt.ids.len() > limit,
                Err(ApiError::ContextLengthExceeded { .. }) => true,
                Err(_) => false,
            };
            if !too_long {
                return attempt.map(|prepared| (prepared, dropped));
            }
            if dropped >= self.history.len() {
                return match attempt {
                    Err(e) => Err(e),
                    Ok(prepared) => Err(ApiError::ContextLengthExceeded {
                        message: format!(
                            "This message renders to {} prompt tokens; a conversation turn may have at most {limit} \
                             (--conversation-max-tokens).",
                            prepared.prompt.ids.len()
                        ),
                        param: Some("content".into()),
                    }),
                };
            }
            dropped = self.history[dropped + 1..]
                .iter()
                .position(|m| m.role == "user")
                .map_or(self.history.len(), |at| dropped + 1 + at);
        }
    }

    /// Runs the turn on `stream` and appends it to the conversation (also when it fails or is
    /// aborted: the record does it when dropped); returns the `done` frame, to send after.
    pub(super) async fn run(self, stream: &Stream<'_>, log: &mut RequestLog) -> Result<Option<WsServerFrame>, ApiError> {
        // Rendering and tokenizing the history (again for each exchange dropped) is CPU work:
        // off the async workers, as for HTTP requests.
        let state = stream.state.clone();
        let model = state.model(&self.setup.model).await?;
        let (mut turn, planned) = off_worker(move || {
            let planned = self.plan(&state, &model);
            Ok((self, planned))
        })
        .await?;
        let (prepared, dropped) = planned?;
        turn.record.dropped = dropped;
        turn.record.phase = Phase::Streaming;
        let outcome = stream.run(prepared, log, &mut turn.record.answer).await;
        match &outcome {
            Ok((Outcome::Finished, _)) => turn.record.phase = Phase::Finished,
            // Refused before a token (a full queue): nothing to keep.
            Err(_) if turn.record.answer.is_empty() => turn.record.phase = Phase::Preparing,
            _ => {}
        }
        // Into the conversation before `done` reaches the client, which may send the next turn.
        drop(turn);
        outcome.map(|(_, last)| last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<ConversationRequest, ApiError> {
        let Value::Object(mut obj) = serde_json::from_str(text).expect("json") else { panic!("object") };
        let id = obj.remove("id").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let kind = obj.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
        parse(&kind, id, obj)
    }

    #[test]
    fn frames_parse_with_only_their_fields() {
        let create = parse_text(
            r#"{"type":"conversation.create","id":"c","model":"m","system":"s","defaults":{"temperature":0}}"#,
        )
        .expect("create");
        let ConversationRequest::Create { model, system, defaults, messages, .. } = create else { panic!("create") };
        assert!(messages.is_empty());
        let seeded = parse_text(
            r#"{"type":"conversation.create","id":"c","messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#,
        );
        assert!(matches!(seeded, Ok(ConversationRequest::Create { messages, .. }) if messages.len() == 2));
        assert!(matches!(
            parse_text(r#"{"type":"conversation.create","id":"c","messages":[{"role":"system","content":"a"}]}"#),
            Err(ApiError::InvalidRequest { param: Some(p), .. }) if p == "messages[0]"
        ));
        assert_eq!((model.as_deref(), system.as_deref()), (Some("m"), Some("s")));
        assert_eq!(defaults["temperature"], 0);
        let message = parse_text(
            r#"{"type":"conversation.message","id":"m","conversation_id":"conv_1","content":"hi","max_tokens":8}"#,
        )
        .expect("message");
        let ConversationRequest::Message { content, overrides, .. } = message else { panic!("message") };
        assert_eq!((content.as_str(), &overrides["max_tokens"]), ("hi", &json!(8)));
        assert!(matches!(
            parse_text(r#"{"type":"conversation.truncate","id":"t","conversation_id":"c","keep":2}"#),
            Ok(ConversationRequest::Truncate { keep: 2, .. })
        ));
        assert!(matches!(parse_text(r#"{"type":"conversation.list","id":"l"}"#), Ok(ConversationRequest::List { .. })));

        let refused = |text: &str| parse_text(text).expect_err(text);
        assert!(matches!(
            refused(r#"{"type":"conversation.message","id":"m","conversation_id":"c","content":"x","messages":[]}"#),
            ApiError::UnknownField(f) if f == "messages"
        ));
        assert!(matches!(
            refused(r#"{"type":"conversation.create","id":"c","defaults":{"tools":[]}}"#),
            ApiError::UnknownField(f) if f == "defaults.tools"
        ));
        assert!(matches!(refused(r#"{"type":"conversation.get","id":"g"}"#), ApiError::InvalidRequest { .. }));
        assert!(matches!(refused(r#"{"type":"conversation.message","id":"m","conversation_id":"c","content":3}"#), ApiError::InvalidRequest { param: Some(p), .. } if p == "content"));
        assert!(matches!(refused(r#"{"type":"conversation.truncate","id":"t","conversation_id":"c"}"#), ApiError::InvalidRequest { .. }));
        assert!(matches!(refused(r#"{"type":"conversation.nope","id":"n"}"#), ApiError::InvalidRequest { .. }));
        assert!(matches!(refused(r#"{"type":"conversation.list","id":"l","extra":1}"#), ApiError::UnknownField(_)));
    }

    #[test]
    fn a_turn_renders_system_history_message_and_settings() {
        let mut defaults = Map::new();
        defaults.insert("temperature".into(), json!(0.5));
        defaults.insert("max_tokens".into(), json!(10));
        let setup = Setup { model: "m".into(), system: Some("sys".into()), defaults };
        let history = [StoredMessage::new("user", "a"), StoredMessage::new("assistant", "b")];
        let mut overrides = Map::new();
        overrides.insert("max_tokens".into(), json!(3));
        let request = Turn::request_for(&setup, &history, "c", &overrides);
        let roles: Vec<&str> = request["messages"].as_array().expect("messages").iter().filter_map(|m| m["role"].as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert_eq!(request["messages"][3]["content"], "c");
        assert_eq!((request["temperature"].as_f64(), request["max_tokens"].as_u64()), (Some(0.5), Some(3)));
        assert_eq!((request["model"].as_str(), request["stream"].as_bool()), (Some("m"), Some(true)));
    }
}
