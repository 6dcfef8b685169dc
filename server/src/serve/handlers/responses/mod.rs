//! `/v1/responses`: OpenAI's Responses API on the chat machinery — `POST` creates a
//! response (JSON, or typed SSE events with `stream: true`), `GET` and `DELETE
//! /v1/responses/{id}` read and remove stored ones.
//!
//! A request becomes a chat: `instructions` (a system message), the stored conversation of
//! `previous_response_id`, then the new input items, rendered by the model's template. So a
//! continuation's prompt starts with the previous prompt's text plus its answer (the
//! template renders each turn the same way), which a prefix cache can reuse. Function tools,
//! `tool_choice` and `text.format` go through the same [`OutputPlan`] as chat's `tools`
//! and `response_format`: one grammar for the engine, one parser for the text.

mod draft;
mod stream;

use salvo::oapi::endpoint;
use salvo::prelude::*;
use stellarchat_model::engine::FinishReason;
use subtle::ConstantTimeEq;

use super::read_body;
use crate::serve::error::ApiError;
use crate::serve::generate::{Generation, PlannedPrompt};
use crate::serve::middleware::RequestLog;
use crate::serve::prompt::{encode_chat, off_worker, render_chat_parts};
use crate::serve::protocol::{ResponseDeleted, ResponseObject, ResponsesRequest, unix_now};
use crate::serve::responses_store::Owner;
use crate::serve::sse;
use crate::serve::registry::ServedModel;
use crate::serve::state::AppState;
use crate::serve::tools::{OutputPlan, OutputRequest, ToolFormat, parse_output};
use crate::serve::validate::responses::{
    ConversationItem, ValidResponses, chat_messages, check_call_outputs, validate_responses,
};
use crate::serve::validate::{parse_json, resolve_max_tokens};
use draft::{ResponseDraft, new_id, output_items};
pub use stream::{ResponsesStream, event_frame};

/// Creates a model response: JSON, or with `"stream": true` `text/event-stream` of typed
/// events (`event: response.created` … `event: response.completed`).
#[endpoint(
    tags("responses"),
    request_body = ResponsesRequest,
    responses(
        (status_code = 200, body = ResponseObject, description = "The response; with `stream: true`, \
            `text/event-stream` of `ResponseStreamEvent`s, each as `event: <type>` + `data: {…}`."),
    )
)]
pub async fn create_response(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    let state = AppState::from_depot(depot)?;
    let owner = owner_of(req, &state.api_keys);
    let body = read_body(req, state.max_body_bytes).await?;
    let mut request: ResponsesRequest = parse_json(&body)?;
    let model = state.model(&request.model).await?;
    request.model = model.id.clone();
    let mut valid = validate_responses(request, &model.validation_context())?;

    let mut conversation = match &valid.previous_response_id {
        Some(id) => state.responses.get(id, owner).ok_or_else(|| previous_not_found(id))?.conversation.clone(),
        None => Vec::new(),
    };
    check_call_outputs(&conversation, &valid.input)?;
    conversation.append(&mut valid.input);

    // Grammar compilation, rendering and tokenizing are CPU work: off the async workers.
    let (valid, conversation, (plan, prompt_text, prompt)) = {
        let (state, model) = (state.clone(), model.clone());
        off_worker(move || {
            let prepared = prepare(&state, &model, &mut valid, &conversation)?;
            Ok((valid, conversation, prepared))
        })
        .await?
    };
    let generation = Generation::start(&state, &model, &valid.spec, std::slice::from_ref(&prompt))?;

    let draft = ResponseDraft {
        id: new_id("resp"),
        created_at: unix_now(),
        model: valid.model.clone(),
        echo: valid.echo.clone(),
        previous_response_id: valid.previous_response_id.clone(),
        store: valid.store && state.responses.is_enabled(),
        owner,
        conversation,
    };
    if valid.spec.stream {
        let mut log =
            depot.remove_typed::<RequestLog>().map_err(|_| ApiError::Internal("request log missing".into()))?;
        if log.log_content() {
            log.prompt = Some(prompt_text);
        }
        let format = ResponsesStream::new(draft, state.responses.clone(), plan.parser());
        sse::respond(res, generation, format, state.sse_keepalive, log);
        return Ok(());
    }

    let collected = generation.collect().await?;
    let choice = collected.choices.into_iter().next().unwrap_or_default();
    let reason = choice.finish_reason.unwrap_or(FinishReason::Stop);
    let (text, calls) = match plan.format {
        Some(format) => {
            let parsed = parse_output(format, &choice.text);
            (parsed.content.unwrap_or_default(), parsed.calls)
        }
        None => (choice.text, Vec::new()),
    };
    let response = draft.finished(output_items(&new_id("msg"), &text, &calls, reason), reason, &collected.usage);
    draft.keep(&state.responses, &response);
    if let Ok(log) = depot.get_typed_mut::<RequestLog>() {
        log.prompt_tokens = collected.usage.prompt_tokens;
        log.completion_tokens = collected.usage.completion_tokens;
        if log.log_content() {
            log.prompt = Some(prompt_text);
            log.completion = Some(text);
        }
    }
    res.render(Json(response));
    Ok(())
}

/// A stored response (404 for an unknown id, or one another API key created).
#[endpoint(tags("responses"), responses((status_code = 200, body = ResponseObject)))]
pub async fn get_response(req: &mut Request, depot: &mut Depot) -> Result<Json<ResponseObject>, ApiError> {
    let state = AppState::from_depot(depot)?;
    let id = req.param::<String>("id").unwrap_or_default();
    let stored = state.responses.get(&id, owner_of(req, &state.api_keys)).ok_or(ApiError::ResponseNotFound(id))?;
    Ok(Json(stored.response.clone()))
}

/// Deletes a stored response (404 for an unknown id, or one another API key created).
#[endpoint(tags("responses"), responses((status_code = 200, body = ResponseDeleted)))]
pub async fn delete_response(req: &mut Request, depot: &mut Depot) -> Result<Json<ResponseDeleted>, ApiError> {
    let state = AppState::from_depot(depot)?;
    let id = req.param::<String>("id").unwrap_or_default();
    if !state.responses.delete(&id, owner_of(req, &state.api_keys)) {
        return Err(ApiError::ResponseNotFound(id));
    }
    Ok(Json(ResponseDeleted { id, object: "response".into(), deleted: true }))
}

/// OpenAI's answer to an unknown `previous_response_id`: 400 naming the field.
fn previous_not_found(id: &str) -> ApiError {
    ApiError::invalid("previous_response_id", format!("Previous response with id '{id}' not found."))
}

/// Which API key made the request (the key hoop already checked that one did). Every key is
/// compared, as the hoop does.
fn owner_of(req: &Request, keys: &[String]) -> Owner {
    if keys.is_empty() {
        return Owner(None);
    }
    let presented = req
        .headers()
        .get(salvo::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.get(..7).filter(|s| s.eq_ignore_ascii_case("bearer ")).map(|_| v[7..].trim()))
        .unwrap_or_default();
    let mut owner = None;
    for (i, key) in keys.iter().enumerate() {
        if bool::from(presented.as_bytes().ct_eq(key.as_bytes())) {
            owner = Some(i);
        }
    }
    Owner(owner)
}

/// The request's output plan (tools, `text.format`) and its prompt, tokenized.
fn prepare(
    state: &AppState,
    model: &ServedModel,
    valid: &mut ValidResponses,
    conversation: &[ConversationItem],
) -> Result<(OutputPlan, String, PlannedPrompt), ApiError> {
    let format =
        model.info.chat_template.as_ref().map_or(ToolFormat::Hermes, |t| ToolFormat::for_template(t.source()));
    // Checked with the engine's grammar compiler: a schema it cannot use is a 400 here.
    let plan = {
        let request = OutputRequest {
            tools: valid.tools.as_ref(),
            tool_choice: &valid.tool_choice,
            parallel_tool_calls: valid.echo.parallel_tool_calls,
            response_format: &valid.format,
            response_format_param: "text.format",
            tool_parameters_param: &|i| format!("tools[{i}].parameters"),
        };
        OutputPlan::new(&request, format, &model.info.tokenizer, &|c| model.engine.check_constraint(c))?
    };
    valid.spec.constraint = plan.constraint.clone();
    if plan.keep_special_tokens {
        valid.spec.skip_special_tokens = false;
    }
    let (prompt_text, prompt) = plan_prompt(state, model, valid, conversation)?;
    Ok((plan, prompt_text, prompt))
}

/// The chat prompt of the conversation, tokenized, with its generation budget; errors name
/// `input`, the field a client can change.
fn plan_prompt(
    state: &AppState,
    model: &ServedModel,
    valid: &ValidResponses,
    conversation: &[ConversationItem],
) -> Result<(String, PlannedPrompt), ApiError> {
    let messages = chat_messages(valid.instructions.as_deref(), conversation);
    let prompt = render_chat_parts(&model.info, &messages, valid.tools.as_ref(), true).map_err(|e| match e {
        ApiError::InvalidRequest { message, .. } => ApiError::invalid("input", message),
        other => other,
    })?;
    let ids = encode_chat(&model.info, &prompt, state.parse_special_in_content)?;
    let max_tokens = resolve_max_tokens(ids.len(), valid.spec.max_tokens, &model.limits, "input")?;
    Ok((prompt.text(), PlannedPrompt { ids, max_tokens }))
}

#[cfg(test)]
mod tests;
