//! `POST /v1/chat/completions`, and the chat chunk builder the WebSocket shares.

use bytes::Bytes;
use salvo::oapi::endpoint;
use salvo::prelude::*;
use stellarchat_model::engine::FinishReason;

use super::read_body;
use crate::serve::error::ApiError;
use crate::serve::generate::{DriverEvent, Generation, LogprobToken};
use crate::serve::middleware::{RequestId, RequestLog};
use crate::serve::prompt::plan_chat;
use crate::serve::protocol::{
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatDelta,
    ChatLogprobs, ChatMessageOut, ChatTokenLogprob, TopLogprob, UsageSlot, unix_now,
};
use crate::serve::sse::{self, StreamFormat, data_frame};
use crate::serve::state::AppState;
use crate::serve::validate::{parse_json, validate_chat};

/// Creates a chat completion: JSON, or Server-Sent Events with `"stream": true`.
#[endpoint(
    tags("chat"),
    request_body = ChatCompletionRequest,
    responses(
        (status_code = 200, body = ChatCompletionResponse, description = "The completion; with `stream: true`, \
            `text/event-stream` of `ChatCompletionChunk`s ending with `data: [DONE]`."),
    )
)]
pub async fn chat_completions(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    let state = AppState::from_depot(depot)?;
    let body = read_body(req, state.max_body_bytes).await?;
    let request: ChatCompletionRequest = parse_json(&body)?;
    let valid = validate_chat(request, &state.validation_context())?;
    let (prompt_text, prompt) = plan_chat(&state.model, &state.limits, &valid.messages, &valid.spec)?;
    let generation = Generation::start(&state, &valid.spec, std::slice::from_ref(&prompt))?;

    let request_id = depot.get_typed::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    let mut chunker = ChatChunker::new(format!("chatcmpl-{request_id}"), valid.model.clone(), valid.spec.include_usage);
    chunker.choices = generation.choices();
    if valid.spec.stream {
        let mut log =
            depot.remove_typed::<RequestLog>().map_err(|_| ApiError::Internal("request log missing".into()))?;
        if log.log_content() {
            log.prompt = Some(prompt_text);
        }
        sse::respond(res, generation, chunker, state.sse_keepalive, log);
        return Ok(());
    }

    let collected = generation.collect().await?;
    let choices = collected
        .choices
        .into_iter()
        .enumerate()
        .map(|(index, c)| ChatChoice {
            index,
            message: ChatMessageOut { role: "assistant".into(), content: Some(c.text), refusal: None },
            logprobs: valid.spec.logprobs.map(|_| chat_logprobs(&c.logprobs)),
            finish_reason: c.finish_reason.map(|r| r.as_str().to_string()),
        })
        .collect::<Vec<_>>();
    if let Ok(log) = depot.get_typed_mut::<RequestLog>() {
        log.prompt_tokens = collected.usage.prompt_tokens;
        log.completion_tokens = collected.usage.completion_tokens;
        if log.log_content() {
            log.prompt = Some(prompt_text);
            log.completion = choices.first().and_then(|c| c.message.content.clone());
        }
    }
    res.render(Json(ChatCompletionResponse {
        id: chunker.id,
        object: "chat.completion".into(),
        created: chunker.created,
        model: valid.model,
        choices,
        usage: collected.usage,
        system_fingerprint: None,
    }));
    Ok(())
}

pub fn chat_logprobs(tokens: &[LogprobToken]) -> ChatLogprobs {
    ChatLogprobs {
        content: tokens
            .iter()
            .map(|t| ChatTokenLogprob {
                token: t.token.clone(),
                logprob: t.logprob,
                bytes: Some(t.token.as_bytes().to_vec()),
                top_logprobs: t
                    .top
                    .iter()
                    .map(|(token, logprob)| TopLogprob {
                        token: token.clone(),
                        logprob: *logprob,
                        bytes: Some(token.as_bytes().to_vec()),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Builds OpenAI's chat stream chunks: per choice a role chunk
/// (`{"role":"assistant","content":""}`), content chunks, and a chunk with an empty delta
/// and the `finish_reason`; then, with `include_usage`, a chunk with `choices: []` and the
/// usage (every other chunk then carries `"usage": null`, as OpenAI's do).
pub struct ChatChunker {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub include_usage: bool,
    pub choices: usize,
}

impl ChatChunker {
    pub fn new(id: String, model: String, include_usage: bool) -> Self {
        ChatChunker { id, model, created: unix_now(), include_usage, choices: 1 }
    }

    fn chunk(&self, choices: Vec<ChatChunkChoice>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices,
            usage: if self.include_usage { UsageSlot::Null } else { UsageSlot::Absent },
        }
    }

    fn choice(
        index: usize,
        delta: ChatDelta,
        logprobs: Option<ChatLogprobs>,
        finish: Option<FinishReason>,
    ) -> ChatChunkChoice {
        ChatChunkChoice { index, delta, logprobs, finish_reason: finish.map(|r| r.as_str().to_string()) }
    }

    pub fn role_chunks(&self) -> Vec<ChatCompletionChunk> {
        (0..self.choices)
            .map(|index| {
                let delta = ChatDelta { role: Some("assistant".into()), content: Some(String::new()) };
                self.chunk(vec![Self::choice(index, delta, None, None)])
            })
            .collect()
    }

    /// The chunks for one event (`Error` yields none: transports report it their way).
    pub fn chunks(&self, event: &DriverEvent) -> Vec<ChatCompletionChunk> {
        match event {
            DriverEvent::Delta { index, text, logprobs } => {
                let delta = ChatDelta { role: None, content: Some(text.clone()) };
                let lp = (!logprobs.is_empty()).then(|| chat_logprobs(logprobs));
                vec![self.chunk(vec![Self::choice(*index, delta, lp, None)])]
            }
            DriverEvent::Finish { index, reason } => {
                vec![self.chunk(vec![Self::choice(*index, ChatDelta::default(), None, Some(*reason))])]
            }
            DriverEvent::Done(usage) if self.include_usage => {
                let mut last = self.chunk(Vec::new());
                last.usage = UsageSlot::Some(*usage);
                vec![last]
            }
            DriverEvent::Done(_) | DriverEvent::Error(_) => Vec::new(),
        }
    }
}

impl StreamFormat for ChatChunker {
    fn opening(&mut self) -> Vec<Bytes> {
        self.role_chunks().iter().map(data_frame).collect()
    }

    fn event(&mut self, event: &DriverEvent) -> Vec<Bytes> {
        self.chunks(event).iter().map(data_frame).collect()
    }
}
