//! Validation: pure functions from a parsed request to a typed, valid one (TGI's approach).
//!
//! Nothing here touches the engine, the network or the clock, so every rule is unit-tested
//! directly. Tokenizing and the context-length check come after, in [`resolve_max_tokens`],
//! which is pure too (it takes the prompt length).
//!
//! Order of checks: body → JSON → unknown fields → model → unsupported fields → messages /
//! prompt → sampling ranges. The first failure wins and names its `param`.

use serde::de::DeserializeOwned;

pub mod responses;
mod sampling;
mod tools;

use sampling::{SpecFields, build_spec, check_top_logprobs, token_id};
use stellarchat_model::model::GenerationDefaults;
pub use tools::{validate_response_format, validate_tools};

use super::error::ApiError;
use super::protocol::{ChatCompletionRequest, ChatMessageIn, CompletionRequest, MessageContent, PromptInput};
use super::tools::{ResponseFormat, ToolCall, ToolChoice, ToolSet};

/// Most stop strings a request may carry (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 1024;
/// Most alternatives per token for `top_logprobs` / legacy `logprobs`.
pub const MAX_TOP_LOGPROBS: i64 = 20;
/// Most `logit_bias` entries (OpenAI's limit).
pub const MAX_LOGIT_BIAS: usize = 300;
/// Most extra stop token ids.
pub const MAX_STOP_TOKEN_IDS: usize = 64;
/// `max_tokens` of a `/v1/completions` request that gives none (OpenAI's legacy default).
pub const LEGACY_DEFAULT_MAX_TOKENS: usize = 16;

/// The limits validation enforces, from the command line and the model.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The context window: `--max-model-len`, at most the model's own.
    pub max_model_len: usize,
    /// Largest `max_tokens` a request may ask for, and the default when it asks nothing.
    pub max_tokens_limit: usize,
    /// Largest `n`.
    pub max_n: usize,
    /// Token ids must be below this (`logit_bias`, `stop_token_ids`, token prompts).
    pub vocab_size: usize,
}

/// Who may be addressed and within which limits.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub served_model_name: &'a str,
    pub limits: &'a Limits,
    /// The sampling the model's checkpoint recommends (`generation_config.json`), for
    /// fields a request leaves out; OpenAI's defaults where it says nothing.
    pub defaults: GenerationDefaults,
}

/// Everything about how to generate, shared by chat and completions.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSpec {
    pub temperature: f32,
    pub top_p: f32,
    /// 0 = off.
    pub top_k: usize,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
    /// `None`: as many as the context and `--max-tokens-limit` allow.
    pub max_tokens: Option<usize>,
    /// The request's name for the field, for error messages.
    pub max_tokens_param: &'static str,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub skip_special_tokens: bool,
    /// `Some(k)`: report logprobs with `k` alternatives.
    pub logprobs: Option<usize>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// What the output must match (a JSON schema, tool calls); set after validation, once
    /// the model's chat template is known ([`crate::serve::tools::OutputPlan`]).
    pub constraint: Option<stellarchat_model::constraint::Constraint>,
}

/// A chat message role the chat template understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    System,
    #[default]
    User,
    Assistant,
    /// A tool's result, answering an earlier call.
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    pub role: Role,
    /// The text (empty for an assistant message that only calls tools).
    pub content: String,
    /// An assistant message's calls (arguments as JSON text that parses).
    pub tool_calls: Vec<ToolCall>,
    /// A tool message: the call it answers (it matches an earlier call's id).
    pub tool_call_id: Option<String>,
    /// A tool message's function name (from the request, or the matching call's).
    pub name: Option<String>,
}

impl Message {
    /// A plain text message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message { role, content: content.into(), ..Message::default() }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidChat {
    pub model: String,
    pub messages: Vec<Message>,
    pub spec: GenerationSpec,
    /// The request's functions (none when it declared none).
    pub tools: Option<ToolSet>,
    pub tool_choice: ToolChoice,
    /// `parallel_tool_calls` (default true).
    pub parallel_tool_calls: bool,
    pub response_format: ResponseFormat,
}

/// One prompt of a completion request.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptSource {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidCompletion {
    pub model: String,
    pub prompts: Vec<PromptSource>,
    pub spec: GenerationSpec,
    /// Each choice's text starts with its prompt.
    pub echo: bool,
    /// Fill-in-the-middle: the text that follows the completion (never with `echo`).
    pub suffix: Option<String>,
    /// `Some(k)`: score the prompt's tokens too, with `k` alternatives each (`echo` with
    /// `logprobs`, or `echo` with `max_tokens: 0`, which only scores).
    pub prompt_logprobs: Option<usize>,
}

/// Bytes → a typed request. Invalid UTF-8 and malformed JSON are 400 `invalid_json`;
/// wrong types and missing fields are 400 naming the field's path (`messages[0].role`);
/// unknown fields are 400 "Unrecognized request argument supplied".
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidJson("The request body is empty; expected a JSON object.".into()));
    }
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::InvalidJson(format!(
            "The request body is not valid UTF-8 (at byte {}).",
            e.valid_up_to()
        )));
    }
    // Syntax first (cheaply, without building anything), so that a body like `{} junk` is
    // reported as malformed JSON rather than as a missing field.
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map_err(|e| ApiError::InvalidJson(format!("We could not parse the JSON body of your request: {e}")))?;
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => data_error(&path, &inner.to_string()),
            _ => ApiError::InvalidJson(format!("We could not parse the JSON body of your request: {inner}")),
        }
    })?;
    de.end().map_err(|e| ApiError::InvalidJson(format!("Trailing characters after the JSON body: {e}")))?;
    Ok(value)
}

/// Turns serde's data errors into OpenAI-style messages with a `param`.
fn data_error(path: &str, message: &str) -> ApiError {
    let join = |name: &str| if path == "." || path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
    // serde's wording is stable: "unknown field `x`, expected …" / "missing field `x`".
    let quoted =
        |prefix: &str| message.strip_prefix(prefix).and_then(|rest| rest.split('`').next()).map(str::to_string);
    if let Some(name) = quoted("unknown field `") {
        // serde_path_to_error's path already ends with the unknown key.
        let param = if path == name || path.ends_with(&format!(".{name}")) { path.to_string() } else { join(&name) };
        return ApiError::UnknownField(param);
    }
    if let Some(name) = quoted("missing field `") {
        let param = join(&name);
        return ApiError::invalid(param.clone(), format!("Missing required parameter: '{param}'."));
    }
    // Strip serde_json's " at line L column C" suffix: the param already says where.
    let detail = message.split(" at line ").next().unwrap_or(message);
    if path == "." || path.is_empty() {
        ApiError::invalid_no_param(format!("Invalid request body: {detail}"))
    } else {
        ApiError::invalid(path, format!("Invalid type or value for '{path}': {detail}"))
    }
}

fn check_model(model: &str, ctx: &Context<'_>) -> Result<String, ApiError> {
    if model == ctx.served_model_name { Ok(model.to_string()) } else { Err(ApiError::ModelNotFound(model.to_string())) }
}

/// Set, in the sense of "asks for something": not null, not an empty list or object.
fn is_set(v: &Option<serde_json::Value>) -> bool {
    match v {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(serde_json::Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

fn is_str(v: &Option<serde_json::Value>, allowed: &[&str]) -> bool {
    matches!(v, Some(serde_json::Value::String(s)) if allowed.contains(&s.as_str()))
}

fn unsupported(param: &str, what: &str) -> ApiError {
    ApiError::unsupported(param, format!("{what} is not supported by this server."))
}

pub fn validate_chat(req: ChatCompletionRequest, ctx: &Context<'_>) -> Result<ValidChat, ApiError> {
    let model = check_model(&req.model, ctx)?;

    let tools = validate_tools(req.tools.as_deref())?;
    let tool_choice = ToolChoice::parse(req.tool_choice.as_ref(), tools.as_ref(), "tool_choice")?;
    if is_set(&req.functions) {
        return Err(unsupported("functions", "The deprecated `functions` (use `tools`)"));
    }
    if is_set(&req.function_call) && !is_str(&req.function_call, &["none", "auto"]) {
        return Err(unsupported("function_call", "The deprecated `function_call` (use `tool_choice`)"));
    }
    let response_format = validate_response_format(req.response_format.as_ref(), "response_format")?;
    if let Some(m) = req.modalities.as_ref().filter(|v| !v.is_null())
        && *m != serde_json::json!(["text"])
    {
        return Err(unsupported("modalities", "An output modality other than text"));
    }
    for (name, value) in [
        ("audio", &req.audio),
        ("prediction", &req.prediction),
        ("reasoning_effort", &req.reasoning_effort),
        ("web_search_options", &req.web_search_options),
    ] {
        if is_set(value) {
            return Err(unsupported(name, &format!("`{name}`")));
        }
    }

    let messages = validate_messages(&req.messages)?;

    let (max_tokens, max_tokens_param) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(m), _) => (Some(m), "max_completion_tokens"),
        (None, m) => (m, "max_tokens"),
    };
    if req.top_logprobs.is_some() && req.logprobs != Some(true) {
        return Err(ApiError::invalid("top_logprobs", "`top_logprobs` requires `logprobs` to be true."));
    }
    let logprobs = match req.logprobs {
        Some(true) => Some(check_top_logprobs("top_logprobs", req.top_logprobs.unwrap_or(0))?),
        _ => None,
    };
    let spec = build_spec(
        SpecFields {
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            min_p: req.min_p,
            repetition_penalty: req.repetition_penalty,
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
            logit_bias: req.logit_bias,
            seed: req.seed,
            max_tokens,
            max_tokens_param,
            stop: req.stop,
            stop_token_ids: req.stop_token_ids,
            ignore_eos: req.ignore_eos,
            skip_special_tokens: req.skip_special_tokens,
            logprobs,
            n: req.n,
            stream: req.stream,
            include_usage: req.stream_options.as_ref().map(|o| o.include_usage),
        },
        ctx,
    )?;
    Ok(ValidChat {
        model,
        messages,
        spec,
        tools,
        tool_choice,
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        response_format,
    })
}

/// Messages → roles, plain text and tool calls. Text parts are joined with a newline (as
/// vLLM does). Every `tool` message must answer a call of an earlier assistant message.
pub fn validate_messages(messages: &[ChatMessageIn]) -> Result<Vec<Message>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must contain at least one message."));
    }
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let at = |field: &str| format!("messages[{i}].{field}");
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            "function" => return Err(unsupported(&at("role"), "The deprecated `function` role (use `tool`)")),
            other => {
                return Err(ApiError::invalid(
                    at("role"),
                    format!(
                        "Invalid value: '{other}'. Supported values are: 'system', 'developer', 'user', 'assistant' \
                         and 'tool'."
                    ),
                ));
            }
        };
        let tool_calls = match (&m.tool_calls, role) {
            (Some(calls), Role::Assistant) => tools::message_tool_calls(calls, i)?,
            (Some(calls), _) if !calls.is_empty() => {
                return Err(ApiError::invalid(at("tool_calls"), "Only assistant messages carry `tool_calls`."));
            }
            _ => Vec::new(),
        };
        let (tool_call_id, name) = match role {
            Role::Tool => {
                let (id, name) = tools::answered_call(m, &out, i)?;
                (Some(id), name)
            }
            _ => (None, None),
        };
        if is_set(&m.function_call) {
            return Err(unsupported(&at("function_call"), "Function calling"));
        }
        let content = match &m.content {
            Some(MessageContent::Text(s)) => s.clone(),
            Some(MessageContent::Parts(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for (j, part) in parts.iter().enumerate() {
                    match (part.r#type.as_str(), &part.text) {
                        ("text", Some(t)) => texts.push(t.as_str()),
                        ("text", None) => {
                            return Err(ApiError::invalid(
                                format!("messages[{i}].content[{j}].text"),
                                "A text content part needs a `text` string.",
                            ));
                        }
                        (other, _) => {
                            return Err(unsupported(
                                &format!("messages[{i}].content[{j}].type"),
                                &format!("Content of type `{other}`"),
                            ));
                        }
                    }
                }
                texts.join("\n")
            }
            // OpenAI allows a null content only on assistant messages (with tool calls).
            None if role == Role::Assistant => String::new(),
            None if role == Role::Tool => {
                return Err(ApiError::invalid(at("content"), "A tool message needs the tool's result as `content`."));
            }
            None => {
                return Err(ApiError::invalid(
                    at("content"),
                    format!("Missing required parameter: '{}'.", at("content")),
                ));
            }
        };
        out.push(Message { role, content, tool_calls, tool_call_id, name });
    }
    Ok(out)
}

pub fn validate_completion(req: CompletionRequest, ctx: &Context<'_>) -> Result<ValidCompletion, ApiError> {
    let model = check_model(&req.model, ctx)?;
    let echo = req.echo.unwrap_or(false);
    let suffix = req.suffix.filter(|s| !s.is_empty());
    if echo && suffix.is_some() {
        return Err(ApiError::invalid("suffix", "`suffix` cannot be combined with `echo`."));
    }
    if let Some(best_of) = req.best_of
        && best_of != req.n.unwrap_or(1)
    {
        return Err(unsupported("best_of", "A `best_of` different from `n`"));
    }
    let vocab = ctx.limits.vocab_size;
    let tokens = |ids: &[i64], param: &str| -> Result<Vec<u32>, ApiError> {
        if ids.is_empty() {
            return Err(ApiError::invalid(param, "A token prompt must not be empty."));
        }
        ids.iter().map(|&t| token_id(t, vocab, param)).collect()
    };
    let prompts = match req.prompt {
        PromptInput::Text(s) => vec![PromptSource::Text(s)],
        PromptInput::Texts(v) => v.into_iter().map(PromptSource::Text).collect(),
        PromptInput::Tokens(ids) => vec![PromptSource::Tokens(tokens(&ids, "prompt")?)],
        PromptInput::TokenBatches(batches) => batches
            .iter()
            .enumerate()
            .map(|(i, ids)| tokens(ids, &format!("prompt[{i}]")).map(PromptSource::Tokens))
            .collect::<Result<_, _>>()?,
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must not be an empty list."));
    }
    if prompts.iter().any(|p| matches!(p, PromptSource::Text(s) if s.is_empty())) {
        return Err(ApiError::invalid("prompt", "`prompt` must not be empty."));
    }
    let logprobs = req.logprobs.map(|k| check_top_logprobs("logprobs", k)).transpose()?;
    let n = req.n;
    // `max_tokens: 0` only scores the prompt, which only `echo` shows.
    let score_only = echo && req.max_tokens == Some(0);
    let mut spec = build_spec(
        SpecFields {
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            min_p: req.min_p,
            repetition_penalty: req.repetition_penalty,
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
            logit_bias: req.logit_bias,
            seed: req.seed,
            // The legacy API's default is 16 tokens (fewer when `--max-tokens-limit` is lower:
            // a request that asks nothing must not exceed a limit it never mentioned).
            max_tokens: Some(if score_only {
                1
            } else {
                req.max_tokens.unwrap_or(LEGACY_DEFAULT_MAX_TOKENS.min(ctx.limits.max_tokens_limit) as i64)
            }),
            max_tokens_param: "max_tokens",
            stop: req.stop,
            stop_token_ids: req.stop_token_ids,
            ignore_eos: req.ignore_eos,
            skip_special_tokens: req.skip_special_tokens,
            logprobs,
            n,
            stream: req.stream,
            include_usage: req.stream_options.as_ref().map(|o| o.include_usage),
        },
        ctx,
    )?;
    if prompts.len() * spec.n > ctx.limits.max_n {
        return Err(ApiError::invalid(
            "prompt",
            format!("At most {} choices (prompts × n) per request.", ctx.limits.max_n),
        ));
    }
    if score_only {
        spec.max_tokens = Some(0);
    }
    let prompt_logprobs = match (echo, logprobs) {
        (true, Some(k)) => Some(k),
        // The engine generates nothing only while scoring the prompt.
        (true, None) if score_only => Some(0),
        _ => None,
    };
    Ok(ValidCompletion { model, prompts, spec, echo, suffix, prompt_logprobs })
}

/// After tokenizing: how many tokens to generate. A prompt that leaves no room, or a
/// `max_tokens` that does not fit beside it, is `context_length_exceeded`. Without
/// `max_tokens`, the rest of the context up to `--max-tokens-limit`.
pub fn resolve_max_tokens(
    prompt_tokens: usize,
    requested: Option<usize>,
    limits: &Limits,
    prompt_param: &str,
) -> Result<usize, ApiError> {
    let context = limits.max_model_len;
    if prompt_tokens == 0 {
        return Err(ApiError::invalid(prompt_param, "The prompt is empty."));
    }
    if prompt_tokens >= context {
        return Err(ApiError::ContextLengthExceeded {
            message: format!(
                "This model's maximum context length is {context} tokens. However, your prompt resulted in \
                 {prompt_tokens} tokens. Please reduce the length of the prompt."
            ),
            param: Some(prompt_param.to_string()),
        });
    }
    match requested {
        Some(k) if prompt_tokens + k > context => Err(ApiError::ContextLengthExceeded {
            message: format!(
                "This model's maximum context length is {context} tokens. However, you requested {} tokens \
                 ({prompt_tokens} in the prompt, {k} in the completion). Please reduce the length of the prompt \
                 or completion.",
                prompt_tokens + k
            ),
            param: Some(prompt_param.to_string()),
        }),
        Some(k) => Ok(k),
        None => Ok((context - prompt_tokens).min(limits.max_tokens_limit)),
    }
}

#[cfg(test)]
mod tests;
