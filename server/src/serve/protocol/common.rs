//! Types shared by several routes: the error object, usage, `stop`, models, health,
//! tokenize/detokenize.

use std::collections::BTreeMap;

use salvo::oapi::ToSchema;
use serde::{Deserialize, Serialize};

/// OpenAI's error envelope: `{"error":{...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error`,
    /// `service_unavailable_error` or `server_error`.
    pub r#type: String,
    /// The request field at fault, if any (e.g. `messages[0].role`).
    pub param: Option<String>,
    /// A machine-readable code, e.g. `context_length_exceeded`, `model_not_found`.
    pub code: Option<String>,
}

/// Token counts, as OpenAI reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageInfo {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV cache was reused.
    pub cached_tokens: usize,
}

impl UsageInfo {
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Self {
        UsageInfo {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens }),
        }
    }

    /// Sums usage over several choices that share one prompt (n > 1 counts the prompt once,
    /// as OpenAI does).
    pub fn add_completion(&mut self, completion_tokens: usize) {
        self.completion_tokens += completion_tokens;
        self.total_tokens = self.prompt_tokens + self.completion_tokens;
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send one more chunk with `choices: []` and the `usage` before `[DONE]`.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// `logit_bias`: token id (as a string) to a bias in −100..100.
pub type LogitBias = BTreeMap<String, f64>;

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix seconds when the server started.
    pub created: u64,
    pub owned_by: String,
    /// The context window the server enforces (vLLM's extension); absent until the model
    /// has been loaded once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
    /// StellarChat's extension: whether the model is loaded now (requests for an unloaded
    /// model load it, and wait).
    pub loaded: bool,
    /// StellarChat's extension: `loaded`, `loading` or `unloaded`.
    pub state: String,
    /// StellarChat's extension: kept loaded (never unloaded for room or keep-alive).
    pub pinned: bool,
    /// StellarChat's extension: other ids that name this model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<ModelCard>,
}

/// `GET /health`, and `GET /ready` once the model is loaded.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusBody {
    pub status: String,
}

/// `POST /tokenize` (vLLM's shape): either `prompt` or `messages`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// Plain text to tokenize.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Chat messages, rendered with the model's chat template first.
    #[serde(default)]
    pub messages: Option<Vec<super::chat::ChatMessageIn>>,
    /// Add the model's BOS token if it wants one (default true; for `prompt`).
    #[serde(default)]
    pub add_special_tokens: Option<bool>,
    /// End the rendered chat with the assistant header (default true; for `messages`).
    #[serde(default)]
    pub add_generation_prompt: Option<bool>,
    /// Also return each token's text.
    #[serde(default)]
    pub return_token_strs: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenizeResponse {
    pub tokens: Vec<u32>,
    pub count: usize,
    pub max_model_len: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_strs: Option<Vec<String>>,
}

/// `POST /detokenize`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(deserialize_with = "super::integer::vec")]
    pub tokens: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

/// A current Unix time in seconds, for `created`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
