//! Frames of `GET /v1/chat/ws` (JSON text frames; DESIGN.md).
//!
//! Client → server: `{"type":"chat.completion.create","id":…,"request":{…}}` and
//! `{"type":"cancel","id":…}` (parsed by hand in `ws.rs`, so that a malformed frame still
//! yields its `id` for the error event). Server → client: [`WsServerFrame`].

use salvo::oapi::ToSchema;
use serde::{Deserialize, Serialize};

use super::chat::ChatCompletionChunk;
use super::common::{ErrorDetail, UsageInfo};

pub const TYPE_CREATE: &str = "chat.completion.create";
pub const TYPE_CANCEL: &str = "cancel";

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
