//! `/v1/responses`: OpenAI's Responses API — the request, the response object, its output
//! items and the typed stream events, shaped as the openai SDK's models
//! (`openai.types.responses`) read them.
//!
//! Input items, tools and `text.format` arrive as JSON values: they are polymorphic (an
//! input message may omit its `type`; clients round-trip output items with extra fields),
//! so validation walks them and names the exact `param` of whatever it rejects.

use std::collections::BTreeMap;

use salvo::oapi::ToSchema;
use serde::{Deserialize, Serialize};

/// `POST /v1/responses`. Fields marked *unsupported* are understood and rejected with 400
/// when they ask for something; the extensions (`seed`, `top_k`, `min_p`,
/// `repetition_penalty`) follow vLLM.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponsesRequest {
    pub model: String,
    /// A string (one user message) or a list of input items: messages (`role` +
    /// `content`), `function_call` and `function_call_output` items.
    #[serde(default)]
    pub input: Option<ResponsesInput>,
    /// A system message put first; not carried over by `previous_response_id`.
    #[serde(default)]
    pub instructions: Option<String>,
    /// Function tools: `{"type":"function","name","description","parameters","strict"}`.
    #[serde(default)]
    pub tools: Option<Vec<serde_json::Value>>,
    /// `none`, `auto`, `required`, or `{"type":"function","name":…}`.
    #[serde(default)]
    pub tool_choice: Option<serde_json::Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", …}, "verbosity": …}`.
    #[serde(default)]
    pub text: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "super::integer::option")]
    pub max_output_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stream: Option<bool>,
    /// Accepted and ignored (`include_obfuscation` has no meaning here).
    #[serde(default)]
    pub stream_options: Option<serde_json::Value>,
    /// Keep the response for `previous_response_id` and `GET /v1/responses/{id}`
    /// (default true).
    #[serde(default)]
    pub store: Option<bool>,
    /// Continue the conversation of a stored response.
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// Up to 16 string pairs, echoed on the response.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Accepted and echoed.
    #[serde(default)]
    pub user: Option<String>,
    /// Accepted and ignored.
    #[serde(default)]
    pub safety_identifier: Option<String>,
    /// Accepted and ignored (the prefix cache needs no key).
    #[serde(default)]
    pub prompt_cache_key: Option<String>,
    /// Accepted and ignored.
    #[serde(default)]
    pub prompt_cache_retention: Option<String>,
    /// Accepted and ignored.
    #[serde(default)]
    pub service_tier: Option<String>,
    /// Only `"disabled"` (a prompt that does not fit is an error, never cut).
    #[serde(default)]
    pub truncation: Option<String>,

    // Extensions (vLLM's names).
    #[serde(default, deserialize_with = "super::integer::option")]
    pub seed: Option<i64>,
    #[serde(default, deserialize_with = "super::integer::option")]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub min_p: Option<f64>,
    #[serde(default)]
    pub repetition_penalty: Option<f64>,

    // Understood, not supported: a 400 naming the field when set.
    /// Unsupported unless `effort` is absent or `"none"`.
    #[serde(default)]
    pub reasoning: Option<serde_json::Value>,
    /// Unsupported when true.
    #[serde(default)]
    pub background: Option<bool>,
    /// Unsupported when not empty.
    #[serde(default)]
    pub include: Option<Vec<String>>,
    /// Unsupported.
    #[serde(default, deserialize_with = "super::integer::option")]
    pub top_logprobs: Option<i64>,
    /// Unsupported.
    #[serde(default, deserialize_with = "super::integer::option")]
    pub max_tool_calls: Option<i64>,
    /// Unsupported (stored prompts).
    #[serde(default)]
    pub prompt: Option<serde_json::Value>,
    /// Unsupported (use `previous_response_id`).
    #[serde(default)]
    pub conversation: Option<serde_json::Value>,
}

/// `input`: one user message as a string, or a list of items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ResponsesInput {
    Text(String),
    Items(Vec<serde_json::Value>),
}

/// The response object (`object: "response"`), also the payload of the lifecycle stream
/// events. The request's settings are echoed as OpenAI does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResponseObject {
    /// `resp_…`.
    pub id: String,
    /// Always `response`.
    pub object: String,
    pub created_at: u64,
    pub completed_at: Option<u64>,
    /// `in_progress`, `completed`, `incomplete` or `failed`.
    pub status: String,
    pub error: Option<ResponseErrorInfo>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub model: String,
    pub output: Vec<OutputItem>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    /// `{"effort": null, "summary": null}`: no reasoning here.
    pub reasoning: serde_json::Value,
    pub store: bool,
    pub temperature: f64,
    /// `{"format": {...}}` as requested (`{"type":"text"}` by default).
    pub text: serde_json::Value,
    pub tool_choice: serde_json::Value,
    pub tools: Vec<serde_json::Value>,
    pub top_p: f64,
    /// Always `disabled`.
    pub truncation: String,
    pub usage: Option<ResponseUsage>,
    pub user: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub background: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResponseErrorInfo {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IncompleteDetails {
    /// `max_output_tokens` (the budget or the context window ran out).
    pub reason: String,
}

/// An output item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    /// The assistant's text.
    Message {
        /// `msg_…`.
        id: String,
        /// `in_progress`, `completed` or `incomplete`.
        status: String,
        /// Always `assistant`.
        role: String,
        content: Vec<OutputContent>,
    },
    /// A call of one of the request's function tools.
    FunctionCall {
        /// `fc_…`.
        id: String,
        /// `call_…`: what the `function_call_output` item answers.
        call_id: String,
        name: String,
        /// The arguments as a JSON text.
        arguments: String,
        status: String,
    },
}

impl OutputItem {
    pub fn id(&self) -> &str {
        match self {
            OutputItem::Message { id, .. } | OutputItem::FunctionCall { id, .. } => id,
        }
    }
}

/// A content part of an output message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputContent {
    OutputText {
        text: String,
        /// Always empty.
        annotations: Vec<serde_json::Value>,
        /// Always empty.
        logprobs: Vec<serde_json::Value>,
    },
}

impl OutputContent {
    pub fn text(text: impl Into<String>) -> Self {
        OutputContent::OutputText { text: text.into(), annotations: Vec::new(), logprobs: Vec::new() }
    }
}

/// Token counts, in the Responses API's names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResponseUsage {
    pub input_tokens: usize,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: usize,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InputTokensDetails {
    /// Input tokens whose KV cache was reused.
    pub cached_tokens: usize,
    /// Always 0 (no billed cache writes here).
    pub cache_write_tokens: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OutputTokensDetails {
    /// Always 0.
    pub reasoning_tokens: usize,
}

/// `DELETE /v1/responses/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResponseDeleted {
    pub id: String,
    /// Always `response`.
    pub object: String,
    pub deleted: bool,
}

/// One event of a streamed response: an SSE frame `event: <type>` whose data is this
/// object. `sequence_number` counts the stream's events from 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResponseStreamEvent {
    #[serde(flatten)]
    pub event: ResponseEventKind,
    pub sequence_number: u64,
}

/// The stream events, in the order they come: `response.created`,
/// `response.in_progress`, per output item `response.output_item.added`, its content
/// (`content_part.added`, `output_text.delta`…, `output_text.done`, `content_part.done`, or
/// `function_call_arguments.delta`…, `.done`), `response.output_item.done`; last
/// `response.completed` or `response.incomplete` (or `error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type")]
pub enum ResponseEventKind {
    #[serde(rename = "response.created")]
    Created { response: Box<ResponseObject> },
    #[serde(rename = "response.in_progress")]
    InProgress { response: Box<ResponseObject> },
    #[serde(rename = "response.output_item.added")]
    OutputItemAdded { output_index: usize, item: OutputItem },
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded { item_id: String, output_index: usize, content_index: usize, part: OutputContent },
    #[serde(rename = "response.output_text.delta")]
    OutputTextDelta {
        item_id: String,
        output_index: usize,
        content_index: usize,
        delta: String,
        logprobs: Vec<serde_json::Value>,
    },
    #[serde(rename = "response.output_text.done")]
    OutputTextDone {
        item_id: String,
        output_index: usize,
        content_index: usize,
        text: String,
        logprobs: Vec<serde_json::Value>,
    },
    #[serde(rename = "response.content_part.done")]
    ContentPartDone { item_id: String, output_index: usize, content_index: usize, part: OutputContent },
    #[serde(rename = "response.function_call_arguments.delta")]
    FunctionCallArgumentsDelta { item_id: String, output_index: usize, delta: String },
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCallArgumentsDone { item_id: String, output_index: usize, name: String, arguments: String },
    #[serde(rename = "response.output_item.done")]
    OutputItemDone { output_index: usize, item: OutputItem },
    #[serde(rename = "response.completed")]
    Completed { response: Box<ResponseObject> },
    #[serde(rename = "response.incomplete")]
    Incomplete { response: Box<ResponseObject> },
    /// A failure after the stream started (the HTTP status is already 200).
    #[serde(rename = "error")]
    Error { code: Option<String>, message: String, param: Option<String> },
}

impl ResponseEventKind {
    /// The event's `type`, which is also the SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            ResponseEventKind::Created { .. } => "response.created",
            ResponseEventKind::InProgress { .. } => "response.in_progress",
            ResponseEventKind::OutputItemAdded { .. } => "response.output_item.added",
            ResponseEventKind::ContentPartAdded { .. } => "response.content_part.added",
            ResponseEventKind::OutputTextDelta { .. } => "response.output_text.delta",
            ResponseEventKind::OutputTextDone { .. } => "response.output_text.done",
            ResponseEventKind::ContentPartDone { .. } => "response.content_part.done",
            ResponseEventKind::FunctionCallArgumentsDelta { .. } => "response.function_call_arguments.delta",
            ResponseEventKind::FunctionCallArgumentsDone { .. } => "response.function_call_arguments.done",
            ResponseEventKind::OutputItemDone { .. } => "response.output_item.done",
            ResponseEventKind::Completed { .. } => "response.completed",
            ResponseEventKind::Incomplete { .. } => "response.incomplete",
            ResponseEventKind::Error { .. } => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_their_type_and_sequence_number() {
        let event = ResponseStreamEvent {
            event: ResponseEventKind::OutputTextDelta {
                item_id: "msg_1".into(),
                output_index: 0,
                content_index: 0,
                delta: "Hi".into(),
                logprobs: Vec::new(),
            },
            sequence_number: 4,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                "content_index": 0, "delta": "Hi", "logprobs": [], "sequence_number": 4})
        );
        assert_eq!(event.event.name(), json["type"]);
    }

    #[test]
    fn output_items_carry_their_type() {
        let call = OutputItem::FunctionCall {
            id: "fc_1".into(),
            call_id: "call_1".into(),
            name: "get_weather".into(),
            arguments: "{}".into(),
            status: "completed".into(),
        };
        assert_eq!(serde_json::to_value(&call).unwrap()["type"], "function_call");
        let text = serde_json::to_value(OutputContent::text("x")).unwrap();
        assert_eq!(text, serde_json::json!({"type": "output_text", "text": "x", "annotations": [], "logprobs": []}));
    }
}
