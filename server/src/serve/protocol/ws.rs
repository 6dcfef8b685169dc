//! Frames of `GET /v1/chat/ws` (JSON text frames; DESIGN.md).
//!
//! Client → server: `{"type":"chat.completion.create","id":…,"request":{…}}` and
//! `{"type":"cancel","id":…}`. Server → client: `chat.completion.chunk`,
//! `chat.completion.done`, `error`.

use salvo::oapi::ToSchema;
use serde::{Deserialize, Serialize};

use super::chat::ChatCompletionChunk;
use super::common::{ErrorDetail, UsageInfo};

pub const TYPE_CREATE: &str = "chat.completion.create";
pub const TYPE_CANCEL: &str = "cancel";

/// A client frame. Parsed from a `serde_json::Value` by hand in `ws.rs`, so that a
/// malformed frame still yields its `id` for the error event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WsClientFrame {
    /// `chat.completion.create` or `cancel`.
    pub r#type: String,
    /// The client's id for the request; echoed on every event about it.
    pub id: String,
    /// For `chat.completion.create`: a chat completion request (`stream` is implied).
    #[serde(default)]
    pub request: Option<serde_json::Value>,
}

/// A server frame.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type")]
pub enum WsServerFrame {
    #[serde(rename = "chat.completion.chunk")]
    Chunk { id: String, chunk: ChatCompletionChunk },
    /// The request is over: all chunks were sent (or it was cancelled: `cancelled: true`).
    #[serde(rename = "chat.completion.done")]
    Done {
        id: String,
        usage: UsageInfo,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cancelled: bool,
    },
    /// `id` is null when the frame was too malformed to carry one.
    #[serde(rename = "error")]
    Error { id: Option<String>, error: ErrorDetail },
}
