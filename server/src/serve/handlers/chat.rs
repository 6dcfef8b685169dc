//! `POST /v1/chat/completions`, and what the WebSocket shares with it: [`prepare_chat`]
//! (output plan and prompt of a validated request) and the chunk builder, which also turns
//! generated tool calls into OpenAI's deltas.

use std::sync::Arc;

use bytes::Bytes;
use salvo::oapi::endpoint;
use salvo::prelude::*;
use stellarchat_model::constraint::Constraint;

use super::read_body;
use crate::serve::error::ApiError;
use crate::serve::generate::{DriverEvent, Generation, LogprobToken, PlannedPrompt};
use crate::serve::middleware::{RequestId, RequestLog};
use crate::serve::prompt::{off_worker, plan_chat_with_tools};
use crate::serve::registry::{ModelLease, ServedModel};
use crate::serve::protocol::{
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatDelta,
    ChatLogprobs, ChatMessageOut, ChatTokenLogprob, FunctionCallDelta, FunctionCallOut, ToolCallDelta, ToolCallOut,
    TopLogprob, UsageSlot, unix_now,
};
use crate::serve::sse::{self, StreamFormat, data_frame};
use crate::serve::state::AppState;
use crate::serve::tools::{OutputPlan, OutputRequest, ToolCall, ToolCallParser, ToolEvent, ToolFormat, parse_output};
use crate::serve::validate::{ValidChat, parse_json, validate_chat};

/// After validation: the output plan (constraint and call format, checked with the engine's
/// grammar compiler, which sets `valid.spec`'s constraint), then the prompt with the tools
/// rendered. Returns the prompt text, the tokenized prompt and the plan.
pub fn prepare_chat(
    state: &AppState,
    model: &ServedModel,
    valid: &mut ValidChat,
) -> Result<(String, PlannedPrompt, OutputPlan), ApiError> {
    let format =
        model.info.chat_template.as_ref().map_or(ToolFormat::Hermes, |t| ToolFormat::for_template(t.source()));
    let request = OutputRequest {
        tools: valid.tools.as_ref(),
        tool_choice: &valid.tool_choice,
        parallel_tool_calls: valid.parallel_tool_calls,
        response_format: &valid.response_format,
        response_format_param: "response_format",
        tool_parameters_param: &|i: usize| format!("tools[{i}].function.parameters"),
    };
    let plan =
        OutputPlan::new(&request, format, &model.info.tokenizer, &|c: &Constraint| model.engine.check_constraint(c))?;
    valid.spec.constraint = plan.constraint.clone();
    if plan.keep_special_tokens {
        valid.spec.skip_special_tokens = false;
    }
    let (text, prompt) = plan_chat_with_tools(
        &model.info,
        &model.limits,
        &valid.messages,
        valid.tools.as_ref(),
        &valid.spec,
        state.parse_special_in_content,
    )?;
    Ok((text, prompt, plan))
}

/// [`prepare_chat`] on the blocking pool ([`off_worker`]): rendering and tokenizing a big
/// prompt, or compiling a grammar, must not hold an async worker.
pub async fn prepare_chat_off_worker(
    state: &Arc<AppState>,
    model: &ModelLease,
    mut valid: ValidChat,
) -> Result<(ValidChat, String, PlannedPrompt, OutputPlan), ApiError> {
    let state = state.clone();
    let model = model.clone();
    off_worker(move || {
        let (text, prompt, plan) = prepare_chat(&state, &model, &mut valid)?;
        Ok((valid, text, prompt, plan))
    })
    .await
}

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
    let mut request: ChatCompletionRequest = parse_json(&body)?;
    let model = state.model(&request.model).await?;
    request.model = model.id.clone();
    let valid = validate_chat(request, &model.validation_context())?;
    let (valid, prompt_text, prompt, plan) = prepare_chat_off_worker(&state, &model, valid).await?;
    let generation = Generation::start(&state, &model, &valid.spec, std::slice::from_ref(&prompt))?;

    let request_id = depot.get_typed::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    let mut chunker = ChatChunker::new(format!("chatcmpl-{request_id}"), valid.model.clone(), valid.spec.include_usage);
    chunker.choices = generation.choices();
    chunker.parse_tool_calls(&plan);
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
        .map(|(index, c)| {
            let finish = c.finish_reason.map(|r| r.as_str().to_string());
            let (message, finish_reason) = match plan.format {
                Some(format) => {
                    let parsed = parse_output(format, &c.text);
                    let called = !parsed.calls.is_empty();
                    let message = ChatMessageOut {
                        role: "assistant".into(),
                        content: parsed.content,
                        refusal: None,
                        tool_calls: called.then(|| parsed.calls.into_iter().map(tool_call_out).collect()),
                    };
                    (message, if called { Some("tool_calls".into()) } else { finish })
                }
                None => {
                    let message = ChatMessageOut {
                        role: "assistant".into(),
                        content: Some(c.text),
                        refusal: None,
                        tool_calls: None,
                    };
                    (message, finish)
                }
            };
            ChatChoice {
                index,
                message,
                logprobs: valid.spec.logprobs.map(|_| chat_logprobs(&c.logprobs)),
                finish_reason,
            }
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

pub fn tool_call_out(call: ToolCall) -> ToolCallOut {
    ToolCallOut {
        id: call.id,
        r#type: "function".into(),
        function: FunctionCallOut { name: call.name, arguments: call.arguments },
    }
}

pub fn chat_logprobs(tokens: &[LogprobToken]) -> ChatLogprobs {
    ChatLogprobs {
        content: tokens
            .iter()
            .map(|t| ChatTokenLogprob {
                token: t.token.clone(),
                logprob: t.logprob,
                bytes: Some(t.bytes.clone()),
                top_logprobs: t
                    .top
                    .iter()
                    .zip(&t.top_bytes)
                    .map(|((token, logprob), bytes)| TopLogprob {
                        token: token.clone(),
                        logprob: *logprob,
                        bytes: Some(bytes.clone()),
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
///
/// With tool calls to parse, each choice's text goes through a [`ToolCallParser`]: content
/// deltas for text, `tool_calls` deltas for calls (id, type and name first, then argument
/// fragments), and `finish_reason: "tool_calls"` when the choice made complete calls.
pub struct ChatChunker {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub include_usage: bool,
    pub choices: usize,
    /// One per choice when calls are parsed; empty otherwise.
    parsers: Vec<ToolCallParser>,
    /// Logprobs of text a parser holds back, per choice: they ride with the next chunk.
    held_logprobs: Vec<Vec<LogprobToken>>,
}

impl ChatChunker {
    pub fn new(id: String, model: String, include_usage: bool) -> Self {
        ChatChunker {
            id,
            model,
            created: unix_now(),
            include_usage,
            choices: 1,
            parsers: Vec::new(),
            held_logprobs: Vec::new(),
        }
    }

    /// Parses each choice's text for calls when `plan` says so (call after setting `choices`).
    pub fn parse_tool_calls(&mut self, plan: &OutputPlan) {
        self.parsers = (0..self.choices).filter_map(|_| plan.parser()).collect();
        self.held_logprobs = vec![Vec::new(); self.choices];
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

    fn choice(index: usize, delta: ChatDelta, logprobs: Option<ChatLogprobs>, finish: Option<&str>) -> ChatChunkChoice {
        ChatChunkChoice { index, delta, logprobs, finish_reason: finish.map(str::to_string) }
    }

    pub fn role_chunks(&self) -> Vec<ChatCompletionChunk> {
        (0..self.choices)
            .map(|index| {
                let delta =
                    ChatDelta { role: Some("assistant".into()), content: Some(String::new()), tool_calls: None };
                self.chunk(vec![Self::choice(index, delta, None, None)])
            })
            .collect()
    }

    /// The chunks for one event (`Error` yields none: transports report it their way).
    pub fn chunks(&mut self, event: &DriverEvent) -> Vec<ChatCompletionChunk> {
        match event {
            DriverEvent::Delta { index, text, logprobs } if !self.parsers.is_empty() => {
                let events = self.parsers[*index].push(text);
                self.held_logprobs[*index].extend(logprobs.iter().cloned());
                self.tool_chunks(*index, events, None)
            }
            DriverEvent::Delta { index, text, logprobs } => {
                let delta = ChatDelta { content: Some(text.clone()), ..ChatDelta::default() };
                let lp = (!logprobs.is_empty()).then(|| chat_logprobs(logprobs));
                vec![self.chunk(vec![Self::choice(*index, delta, lp, None)])]
            }
            DriverEvent::Finish { index, reason } if !self.parsers.is_empty() => {
                let (events, outcome) = self.parsers[*index].finish();
                let finish = if outcome.has_calls() { "tool_calls" } else { reason.as_str() };
                self.tool_chunks(*index, events, Some(finish))
            }
            DriverEvent::Finish { index, reason } => {
                vec![self.chunk(vec![Self::choice(*index, ChatDelta::default(), None, Some(reason.as_str()))])]
            }
            DriverEvent::Done(usage) if self.include_usage => {
                let mut last = self.chunk(Vec::new());
                last.usage = UsageSlot::Some(*usage);
                vec![last]
            }
            DriverEvent::Done(_) | DriverEvent::Error(_) => Vec::new(),
        }
    }

    /// Chunks for a parser's events of choice `index`; held logprobs go with the first, and
    /// `finish` makes a last chunk with an empty delta.
    fn tool_chunks(&mut self, index: usize, events: Vec<ToolEvent>, finish: Option<&str>) -> Vec<ChatCompletionChunk> {
        let mut chunks: Vec<ChatCompletionChunk> = events
            .into_iter()
            .map(|event| {
                let delta = match event {
                    ToolEvent::Content(text) => ChatDelta { content: Some(text), ..ChatDelta::default() },
                    ToolEvent::CallStart { index: call, id, name } => ChatDelta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index: call,
                            id: Some(id),
                            r#type: Some("function".into()),
                            function: FunctionCallDelta { name: Some(name), arguments: Some(String::new()) },
                        }]),
                        ..ChatDelta::default()
                    },
                    ToolEvent::Arguments { index: call, fragment } => ChatDelta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index: call,
                            id: None,
                            r#type: None,
                            function: FunctionCallDelta { name: None, arguments: Some(fragment) },
                        }]),
                        ..ChatDelta::default()
                    },
                };
                let held = std::mem::take(&mut self.held_logprobs[index]);
                let logprobs = (!held.is_empty()).then(|| chat_logprobs(&held));
                self.chunk(vec![Self::choice(index, delta, logprobs, None)])
            })
            .collect();
        if let Some(finish) = finish {
            let held = std::mem::take(&mut self.held_logprobs[index]);
            let logprobs = (!held.is_empty()).then(|| chat_logprobs(&held));
            chunks.push(self.chunk(vec![Self::choice(index, ChatDelta::default(), logprobs, Some(finish))]));
        }
        chunks
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
