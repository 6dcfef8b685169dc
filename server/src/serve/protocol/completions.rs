//! `POST /v1/completions`, the legacy text completion API.

use std::collections::BTreeMap;

use salvo::oapi::ToSchema;
use serde::{Deserialize, Serialize};

use super::chat::UsageSlot;
use super::common::{LogitBias, StopField, StreamOptions, UsageInfo};

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: String,
    /// A string, a list of strings, a list of token ids, or a list of token-id lists.
    pub prompt: PromptInput,
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
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub logit_bias: Option<LogitBias>,
    /// Number of most likely alternatives per token, 0–5 (legacy semantics).
    #[serde(default, deserialize_with = "super::integer::option")]
    pub logprobs: Option<i64>,
    #[serde(default, deserialize_with = "super::integer::option")]
    pub seed: Option<i64>,
    /// Accepted and ignored.
    #[serde(default)]
    pub user: Option<String>,

    // Extensions (vLLM's names).
    #[serde(default, deserialize_with = "super::integer::option")]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub min_p: Option<f64>,
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    #[serde(default, deserialize_with = "super::integer::option_vec")]
    pub stop_token_ids: Option<Vec<i64>>,
    #[serde(default)]
    pub skip_special_tokens: Option<bool>,

    /// Return the prompt before the completion; with `logprobs`, the prompt tokens'
    /// logprobs come first too (the first token's are `null`). With `echo`, `max_tokens` may
    /// be 0: the prompt is scored, nothing is generated.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Text that comes after the completion: fill-in-the-middle, for models whose vocabulary
    /// has FIM tokens (`<fim_prefix>`, `<fim_suffix>`, `<fim_middle>`); otherwise a 400.
    #[serde(default)]
    pub suffix: Option<String>,

    // Understood, not supported.
    /// Unsupported unless equal to `n`.
    #[serde(default, deserialize_with = "super::integer::option")]
    pub best_of: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(#[serde(deserialize_with = "super::integer::vec")] Vec<i64>),
    TokenBatches(#[serde(deserialize_with = "super::integer::vec_vec")] Vec<Vec<i64>>),
}

impl Default for PromptInput {
    fn default() -> Self {
        PromptInput::Text(String::new())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CompletionResponse {
    pub id: String,
    /// Always `text_completion`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: UsageInfo,
    pub system_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CompletionChoice {
    pub text: String,
    pub index: usize,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<String>,
}

/// Legacy logprobs: parallel arrays, one entry per token. With `echo`, the prompt's tokens
/// come first, and the first prompt token (which has no prefix to be predicted from) has
/// `null` in `token_logprobs` and `top_logprobs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<BTreeMap<String, f32>>>,
    /// Where each token starts in the choice's `text`, in characters (as Python indexes).
    pub text_offset: Vec<usize>,
}

/// One SSE chunk of a streamed completion (same object type as the response).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CompletionChunk {
    pub id: String,
    /// Always `text_completion`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<CompletionChoice>,
    #[serde(default, skip_serializing_if = "UsageSlot::is_absent")]
    pub usage: UsageSlot,
}
