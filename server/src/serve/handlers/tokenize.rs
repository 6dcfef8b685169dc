//! `POST /tokenize` and `POST /detokenize`, in vLLM's shapes. Both work on inputs up to the
//! body limit, so the work runs off the async workers.

use salvo::oapi::endpoint;
use salvo::prelude::*;

use super::read_body;
use crate::serve::error::ApiError;
use crate::serve::prompt::{encode_chat, off_worker, render_chat_parts};
use crate::serve::protocol::{DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse};
use crate::serve::registry::{ModelLease, ServedModel};
use crate::serve::state::AppState;
use crate::serve::validate::{parse_json, validate_messages};

/// The model named (the default one when none is), loaded if need be.
async fn model_of(state: &AppState, model: &Option<String>) -> Result<ModelLease, ApiError> {
    state.model(model.as_deref().unwrap_or(state.models.default_id())).await
}

/// Tokenizes `prompt` (special-token text parsed, as for `/v1/completions`), or `messages`
/// rendered with the chat template and tokenized as a chat request would be: only the
/// template's own text yields control tokens (unless `--parse-special-in-content`).
#[endpoint(tags("tokenize"), request_body = TokenizeRequest, responses((status_code = 200, body = TokenizeResponse)))]
pub async fn tokenize(req: &mut Request, depot: &mut Depot) -> Result<Json<TokenizeResponse>, ApiError> {
    let state = AppState::from_depot(depot)?;
    let body = read_body(req, state.max_body_bytes).await?;
    let request: TokenizeRequest = parse_json(&body)?;
    let model = model_of(&state, &request.model).await?;
    // Up to the body limit of text: tokenized on the blocking pool (see `off_worker`).
    off_worker(move || tokenize_request(&state, &model, &request)).await.map(Json)
}

fn tokenize_request(
    state: &AppState,
    model: &ServedModel,
    request: &TokenizeRequest,
) -> Result<TokenizeResponse, ApiError> {
    let tokenizer = &model.info.tokenizer;
    let tokens = match (&request.prompt, &request.messages) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("messages", "Give either `prompt` or `messages`, not both."));
        }
        (Some(prompt), None) => {
            if request.add_special_tokens.unwrap_or(true) {
                tokenizer.encode_prompt(prompt)?
            } else {
                tokenizer.encode(prompt, true)?
            }
        }
        (None, Some(messages)) => {
            let messages = validate_messages(messages)?;
            // The ids a chat request with these messages gets (content is text).
            let add_generation_prompt = request.add_generation_prompt.unwrap_or(true);
            let prompt = render_chat_parts(&model.info, &messages, None, add_generation_prompt)?;
            encode_chat(&model.info, &prompt, state.parse_special_in_content)?
        }
        (None, None) => return Err(ApiError::invalid("prompt", "Missing required parameter: 'prompt' or 'messages'.")),
    };
    let token_strs = request
        .return_token_strs
        .unwrap_or(false)
        .then(|| tokens.iter().map(|&t| tokenizer.decode(&[t], false).unwrap_or_default()).collect());
    Ok(TokenizeResponse { count: tokens.len(), tokens, max_model_len: model.limits.max_model_len, token_strs })
}

/// Turns token ids back into text (special tokens included).
#[endpoint(tags("tokenize"), request_body = DetokenizeRequest, responses((status_code = 200, body = DetokenizeResponse)))]
pub async fn detokenize(req: &mut Request, depot: &mut Depot) -> Result<Json<DetokenizeResponse>, ApiError> {
    let state = AppState::from_depot(depot)?;
    let body = read_body(req, state.max_body_bytes).await?;
    let request: DetokenizeRequest = parse_json(&body)?;
    let model = model_of(&state, &request.model).await?;
    let vocab = model.limits.vocab_size;
    let ids = request
        .tokens
        .iter()
        .map(|&t| {
            u32::try_from(t).ok().filter(|&t| (t as usize) < vocab).ok_or_else(|| {
                ApiError::invalid(
                    "tokens",
                    format!("Token id {t} is out of range (the vocabulary has {vocab} tokens)."),
                )
            })
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let prompt = off_worker(move || Ok(model.info.tokenizer.decode(&ids, false)?)).await?;
    Ok(Json(DetokenizeResponse { prompt }))
}
