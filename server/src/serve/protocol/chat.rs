//! `POST /v1/chat/completions`: request, response, stream chunk — OpenAI's shapes.

use salvo::oapi::ToSchema;
use serde::{Deserialize, Serialize};

use super::common::{LogitBias, StopField, StreamOptions, UsageInfo};

/// The chat completion request. Fields marked *unsupported* are understood and rejected
/// with 400 when set; the extensions (`top_k`, `min_p`, `repetition_penalty`, `ignore_eos`,
/// `stop_token_ids`, `skip_special_tokens`) follow vLLM.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessageIn>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default, deserialize_with = "super::integer::option")]
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub stop: Option<StopField>,
    #[serde(default, deserialize_with = "super::integer::option")]
    pub max_tokens: Option<i64>,
    #[serde(default, deserialize_with = "super::integer::option")]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub logit_bias: Option<LogitBias>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default, deserialize_with = "super::integer::option")]
    pub top_logprobs: Option<i64>,
    #[serde(default, deserialize_with = "super::integer::option")]
    pub seed: Option<i64>,
    /// Accepted and ignored (it does not change the output).
    #[serde(default)]
    pub user: Option<String>,
    /// Accepted and ignored.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// Accepted and ignored.
    #[serde(default)]
    pub store: Option<bool>,
    /// Accepted and ignored.
    #[serde(default)]
    pub service_tier: Option<String>,
    /// With `tools`: whether the model may make several calls in one turn (default true).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,

    // Extensions (vLLM's names).
    #[serde(default, deserialize_with = "super::integer::option")]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub min_p: Option<f64>,
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    /// Keep generating past end-of-generation tokens (benchmarks).
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    #[serde(default, deserialize_with = "super::integer::option_vec")]
    pub stop_token_ids: Option<Vec<i64>>,
    #[serde(default)]
    pub skip_special_tokens: Option<bool>,

    /// Functions the model may call.
    #[serde(default)]
    pub tools: Option<Vec<ChatTool>>,
    /// `"none"`, `"auto"` (the default with tools), `"required"`, or
    /// `{"type":"function","function":{"name":…}}`.
    #[serde(default)]
    pub tool_choice: Option<serde_json::Value>,
    /// `{"type":"text"}`, `{"type":"json_object"}` or
    /// `{"type":"json_schema","json_schema":{"name","schema","strict"}}`: the answer is
    /// constrained to JSON (valid for the schema).
    #[serde(default)]
    pub response_format: Option<serde_json::Value>,

    // Understood, not supported: a 400 naming the field when set.
    /// Unsupported (the deprecated form of `tools`).
    #[serde(default)]
    pub functions: Option<serde_json::Value>,
    /// Unsupported unless `"none"` or `"auto"`.
    #[serde(default)]
    pub function_call: Option<serde_json::Value>,
    /// Only `["text"]` is supported.
    #[serde(default)]
    pub modalities: Option<serde_json::Value>,
    /// Unsupported.
    #[serde(default)]
    pub audio: Option<serde_json::Value>,
    /// Unsupported.
    #[serde(default)]
    pub prediction: Option<serde_json::Value>,
    /// Unsupported.
    #[serde(default)]
    pub reasoning_effort: Option<serde_json::Value>,
    /// Unsupported.
    #[serde(default)]
    pub web_search_options: Option<serde_json::Value>,
}

/// One entry of `tools`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ChatTool {
    /// Only `function`.
    pub r#type: String,
    #[serde(default)]
    pub function: Option<FunctionDefinition>,
}

/// A function the model may call.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct FunctionDefinition {
    /// `^[a-zA-Z0-9_-]{1,64}$`.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// A JSON schema for the arguments object.
    #[serde(default)]
    pub parameters: Option<serde_json::Value>,
    /// Objects in `parameters` without `additionalProperties` get `false`.
    #[serde(default)]
    pub strict: Option<bool>,
}

/// A call in an assistant message (request) or in a response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ToolCallOut {
    pub id: String,
    /// Always `function`.
    pub r#type: String,
    pub function: FunctionCallOut,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionCallOut {
    pub name: String,
    /// The arguments as a JSON string.
    pub arguments: String,
}

/// A message in a request. Unknown keys are ignored here (clients round-trip response
/// messages that carry `refusal`, `annotations`, …); `function_call` (the deprecated form
/// of `tool_calls`) is rejected when set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ChatMessageIn {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// A string, or an array of `{"type":"text","text":…}` parts; may be null on an
    /// assistant message with `tool_calls`.
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default)]
    pub name: Option<String>,
    /// An assistant message's calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// A `tool` message: the id of the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// Unsupported when set.
    #[serde(default)]
    pub function_call: Option<serde_json::Value>,
}

/// A call in a request's assistant message (as an earlier response returned it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ToolCallIn {
    pub id: String,
    /// `function` (the default).
    #[serde(default)]
    pub r#type: Option<String>,
    pub function: FunctionCallIn,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct FunctionCallIn {
    pub name: String,
    /// A JSON string.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// A content part. Only `text` parts are supported; others (`image_url`, `input_audio`,
/// `file`) are rejected by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ContentPart {
    pub r#type: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// The non-streaming response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionResponse {
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: UsageInfo,
    pub system_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessageOut,
    pub logprobs: Option<ChatLogprobs>,
    /// `stop`, `length` or `tool_calls`.
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatMessageOut {
    /// Always `assistant`.
    pub role: String,
    /// The text; null when the message only calls tools.
    pub content: Option<String>,
    pub refusal: Option<String>,
    /// The calls the model made (absent when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallOut>>,
}

/// `choices[].logprobs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
}

/// One SSE `data:` object (and the `chunk` of a WebSocket `chat.completion.chunk`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<ChatChunkChoice>,
    /// Present (null, or the totals on the last chunk) only with
    /// `stream_options.include_usage`, as OpenAI does.
    #[serde(default, skip_serializing_if = "UsageSlot::is_absent")]
    pub usage: UsageSlot,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

/// The increment of one chunk: `{"role":"assistant","content":""}` first, then
/// `{"content":"…"}` or `{"tool_calls":[…]}`, and `{}` with the `finish_reason`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ChatDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// A piece of a streamed call: the first carries `id`, `type` and `function.name` (with
/// `arguments: ""`), the next ones fragments of `function.arguments`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ToolCallDelta {
    /// The call's position among the choice's calls.
    pub index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    pub function: FunctionCallDelta,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FunctionCallDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// The `usage` field of a stream chunk: absent without `include_usage`, `null` on ordinary
/// chunks with it, the totals on the final chunk.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "Option<UsageInfo>")]
pub enum UsageSlot {
    #[default]
    Absent,
    Null,
    Some(UsageInfo),
}

impl UsageSlot {
    pub fn is_absent(&self) -> bool {
        matches!(self, UsageSlot::Absent)
    }
}

impl From<Option<UsageInfo>> for UsageSlot {
    fn from(u: Option<UsageInfo>) -> Self {
        u.map_or(UsageSlot::Null, UsageSlot::Some)
    }
}

// On the wire it is `Option<UsageInfo>`; so is its schema.
impl salvo::oapi::ToSchema for UsageSlot {
    fn to_schema(components: &mut salvo::oapi::Components) -> salvo::oapi::RefOr<salvo::oapi::schema::Schema> {
        <Option<UsageInfo> as salvo::oapi::ToSchema>::to_schema(components)
    }
}

impl salvo::oapi::ComposeSchema for UsageSlot {
    fn compose(
        components: &mut salvo::oapi::Components,
        generics: Vec<salvo::oapi::RefOr<salvo::oapi::schema::Schema>>,
    ) -> salvo::oapi::RefOr<salvo::oapi::schema::Schema> {
        <Option<UsageInfo> as salvo::oapi::ComposeSchema>::compose(components, generics)
    }
}

impl Serialize for UsageSlot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            UsageSlot::Some(u) => u.serialize(s),
            _ => s.serialize_none(),
        }
    }
}
