//! `POST /v1/completions`: the legacy text completion API, with the same streaming rules
//! as chat (no role chunk; the finishing chunk has `text: ""` and the `finish_reason`).

use std::collections::BTreeMap;

use bytes::Bytes;
use salvo::oapi::endpoint;
use salvo::prelude::*;

use super::read_body;
use crate::serve::error::ApiError;
use crate::serve::generate::{DriverEvent, Generation, LogprobToken};
use crate::serve::middleware::{RequestId, RequestLog};
use crate::serve::prompt::plan_completion;
use crate::serve::protocol::{
    CompletionChoice, CompletionChunk, CompletionLogprobs, CompletionRequest, CompletionResponse, UsageSlot, unix_now,
};
use crate::serve::sse::{self, StreamFormat, data_frame};
use crate::serve::state::AppState;
use crate::serve::validate::{parse_json, validate_completion};

/// Creates a text completion: JSON, or Server-Sent Events with `"stream": true`.
#[endpoint(
    tags("completions"),
    request_body = CompletionRequest,
    responses(
        (status_code = 200, body = CompletionResponse, description = "The completion; with `stream: true`, \
            `text/event-stream` of `CompletionChunk`s ending with `data: [DONE]`."),
    )
)]
pub async fn completions(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    let state = AppState::from_depot(depot)?;
    let body = read_body(req, state.max_body_bytes).await?;
    let request: CompletionRequest = parse_json(&body)?;
    let valid = validate_completion(request, &state.validation_context())?;
    let prompts = plan_completion(&state.model, &state.limits, &valid.prompts, &valid.spec)?;
    let generation = Generation::start(&state, &valid.spec, &prompts)?;

    let request_id = depot.get_typed::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    let format = CompletionFormat {
        id: format!("cmpl-{request_id}"),
        model: valid.model.clone(),
        created: unix_now(),
        include_usage: valid.spec.include_usage,
        want_logprobs: valid.spec.logprobs.is_some(),
        offsets: vec![0; generation.choices()],
    };
    let prompt_text = || {
        valid
            .prompts
            .iter()
            .map(|p| match p {
                crate::serve::validate::PromptSource::Text(t) => t.clone(),
                crate::serve::validate::PromptSource::Tokens(ids) => format!("{ids:?}"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    if valid.spec.stream {
        let mut log =
            depot.remove_typed::<RequestLog>().map_err(|_| ApiError::Internal("request log missing".into()))?;
        if log.log_content() {
            log.prompt = Some(prompt_text());
        }
        sse::respond(res, generation, format, state.sse_keepalive, log);
        return Ok(());
    }

    let collected = generation.collect().await?;
    let choices: Vec<CompletionChoice> = collected
        .choices
        .into_iter()
        .enumerate()
        .map(|(index, c)| CompletionChoice {
            logprobs: valid.spec.logprobs.map(|_| completion_logprobs(&c.logprobs, 0)),
            text: c.text,
            index,
            finish_reason: c.finish_reason.map(|r| r.as_str().to_string()),
        })
        .collect();
    if let Ok(log) = depot.get_typed_mut::<RequestLog>() {
        log.prompt_tokens = collected.usage.prompt_tokens;
        log.completion_tokens = collected.usage.completion_tokens;
        if log.log_content() {
            log.prompt = Some(prompt_text());
            log.completion = choices.first().map(|c| c.text.clone());
        }
    }
    res.render(Json(CompletionResponse {
        id: format.id,
        object: "text_completion".into(),
        created: format.created,
        model: valid.model,
        choices,
        usage: collected.usage,
        system_fingerprint: None,
    }));
    Ok(())
}

/// Legacy logprobs: parallel arrays, `text_offset` counted from `offset` (bytes of the
/// choice's text before these tokens).
pub fn completion_logprobs(tokens: &[LogprobToken], offset: usize) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut at = offset;
    for t in tokens {
        out.tokens.push(t.token.clone());
        out.token_logprobs.push(t.logprob);
        out.top_logprobs.push(t.top.iter().map(|(s, l)| (s.clone(), *l)).collect::<BTreeMap<_, _>>());
        out.text_offset.push(at);
        at += t.token.len();
    }
    out
}

struct CompletionFormat {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    want_logprobs: bool,
    /// Text emitted so far per choice, for `text_offset`.
    offsets: Vec<usize>,
}

impl CompletionFormat {
    fn chunk(&self, choices: Vec<CompletionChoice>) -> CompletionChunk {
        CompletionChunk {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices,
            usage: if self.include_usage { UsageSlot::Null } else { UsageSlot::Absent },
        }
    }
}

impl StreamFormat for CompletionFormat {
    fn opening(&mut self) -> Vec<Bytes> {
        Vec::new()
    }

    fn event(&mut self, event: &DriverEvent) -> Vec<Bytes> {
        let chunk = match event {
            DriverEvent::Delta { index, text, logprobs } => {
                let offset = self.offsets.get(*index).copied().unwrap_or(0);
                if let Some(o) = self.offsets.get_mut(*index) {
                    *o += text.len();
                }
                self.chunk(vec![CompletionChoice {
                    text: text.clone(),
                    index: *index,
                    logprobs: self.want_logprobs.then(|| completion_logprobs(logprobs, offset)),
                    finish_reason: None,
                }])
            }
            DriverEvent::Finish { index, reason } => self.chunk(vec![CompletionChoice {
                text: String::new(),
                index: *index,
                logprobs: None,
                finish_reason: Some(reason.as_str().to_string()),
            }]),
            DriverEvent::Done(usage) if self.include_usage => {
                let mut last = self.chunk(Vec::new());
                last.usage = UsageSlot::Some(*usage);
                last
            }
            DriverEvent::Done(_) | DriverEvent::Error(_) => return Vec::new(),
        };
        vec![data_frame(&chunk)]
    }
}
