//! From validated messages or prompts to token ids, with the model's own chat template and
//! tokenizer, and the context-length check that needs the token count.

use stellarchat_model::chat_template::ChatMessage;
use stellarchat_model::model::ModelInfo;

use super::error::ApiError;
use super::generate::PlannedPrompt;
use super::validate::{GenerationSpec, Limits, Message, PromptSource, resolve_max_tokens};

/// Renders a chat with the model's template (ending with the assistant header when
/// `add_generation_prompt`).
pub fn render_chat(model: &ModelInfo, messages: &[Message], add_generation_prompt: bool) -> Result<String, ApiError> {
    let template = model.chat_template.as_ref().ok_or_else(|| {
        ApiError::invalid("messages", "This model has no chat template; use /v1/completions with a raw prompt.")
    })?;
    let messages: Vec<ChatMessage> = messages
        .iter()
        .map(|m| ChatMessage { role: m.role.as_str().to_string(), content: m.content.clone() })
        .collect();
    Ok(template.render(&messages, add_generation_prompt)?)
}

/// Text → ids as a prompt: special tokens parsed, BOS if the model wants one.
pub fn encode_prompt(model: &ModelInfo, text: &str) -> Result<Vec<u32>, ApiError> {
    Ok(model.tokenizer.encode_prompt(text)?)
}

/// The chat prompt, tokenized, with its generation budget.
pub fn plan_chat(
    model: &ModelInfo,
    limits: &Limits,
    messages: &[Message],
    spec: &GenerationSpec,
) -> Result<(String, PlannedPrompt), ApiError> {
    let text = render_chat(model, messages, true)?;
    let ids = encode_prompt(model, &text)?;
    let max_tokens = resolve_max_tokens(ids.len(), spec.max_tokens, limits, "messages")?;
    Ok((text, PlannedPrompt { ids, max_tokens }))
}

/// Completion prompts, tokenized, each with its generation budget.
pub fn plan_completion(
    model: &ModelInfo,
    limits: &Limits,
    prompts: &[PromptSource],
    spec: &GenerationSpec,
) -> Result<Vec<PlannedPrompt>, ApiError> {
    prompts
        .iter()
        .map(|p| {
            let ids = match p {
                PromptSource::Text(text) => encode_prompt(model, text)?,
                PromptSource::Tokens(ids) => ids.clone(),
            };
            let max_tokens = resolve_max_tokens(ids.len(), spec.max_tokens, limits, "prompt")?;
            Ok(PlannedPrompt { ids, max_tokens })
        })
        .collect()
}
