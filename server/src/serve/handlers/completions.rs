//! `POST /v1/completions`: the legacy text completion API, with the same streaming rules
//! as chat (no role chunk; the finishing chunk has `text: ""` and the `finish_reason`).
//!
//! Two legacy features evaluation tools rely on:
//! - `echo`: each choice's text starts with its prompt; with `logprobs`, the prompt's
//!   tokens are scored too (the engine's prompt logprobs), which is how lm-evaluation-harness
//!   computes a text's log-likelihood (`max_tokens` 0 or 1).
//! - `suffix`: fill-in-the-middle in the PSM order (`<fim_prefix>` prompt `<fim_suffix>`
//!   suffix `<fim_middle>`), for vocabularies with FIM tokens.

use std::collections::BTreeMap;

use bytes::Bytes;
use salvo::oapi::endpoint;
use salvo::prelude::*;
use stellarchat_model::engine::TokenLogprob;
use stellarchat_model::model::ModelInfo;

use super::read_body;
use crate::serve::error::ApiError;
use crate::serve::generate::{DriverEvent, Generation, LogprobToken};
use crate::serve::middleware::{RequestId, RequestLog};
use crate::serve::prompt::{off_worker, plan_completion};
use crate::serve::protocol::{
    CompletionChoice, CompletionChunk, CompletionLogprobs, CompletionRequest, CompletionResponse, UsageSlot, unix_now,
};
use crate::serve::sse::{self, StreamFormat, data_frame};
use crate::serve::state::AppState;
use crate::serve::validate::{PromptSource, parse_json, validate_completion};

/// Fill-in-the-middle token spellings: StarCoder's (SmolLM's family) and Qwen2.5-Coder's /
/// CodeGemma's.
const FIM_TOKENS: [[&str; 3]; 2] =
    [["<fim_prefix>", "<fim_suffix>", "<fim_middle>"], ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]];

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
    let mut request: CompletionRequest = parse_json(&body)?;
    let model = state.model(&request.model).await?;
    request.model = model.id.clone();
    let valid = validate_completion(request, &model.validation_context())?;
    // Tokenizing prompts of up to the body limit: on the blocking pool (see `off_worker`).
    let (work_model, prompts, suffix, spec) =
        (model.clone(), valid.prompts.clone(), valid.suffix.clone(), valid.spec.clone());
    let (sources, prompts) = off_worker(move || {
        let sources = match &suffix {
            Some(suffix) => prompts
                .iter()
                .map(|p| fill_in_the_middle(&work_model.info, p, suffix))
                .collect::<Result<Vec<_>, _>>()?,
            None => prompts,
        };
        let planned = plan_completion(&work_model.info, &work_model.limits, &sources, &spec)?;
        Ok((sources, planned))
    })
    .await?;
    let mut generation = Generation::start_scoring(&state, &model, &valid.spec, &prompts, valid.prompt_logprobs)?;
    let n = valid.spec.n.max(1);
    let want_logprobs = valid.spec.logprobs.is_some();
    // The prompt text each choice echoes (choice `i` answers prompt `i / n`).
    let echo_texts: Option<Vec<String>> = valid.echo.then(|| {
        valid
            .prompts
            .iter()
            .zip(&prompts)
            .map(|(source, planned)| echo_text(&model.info, source, &planned.ids))
            .collect()
    });
    // Choice `index`'s echo, given its prompt's scores (when logprobs are wanted).
    let echo_of = |index: usize, scores: Option<&[Option<TokenLogprob>]>| -> Option<Echo> {
        let p = index / n;
        let text = echo_texts.as_ref()?[p].clone();
        let logprobs =
            want_logprobs.then(|| prompt_logprobs(&model.info, &prompts[p].ids, scores.unwrap_or_default()));
        Some(Echo { text, logprobs })
    };

    let request_id = depot.get_typed::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    let prompt_text = || {
        sources
            .iter()
            .map(|p| match p {
                PromptSource::Text(t) => t.clone(),
                PromptSource::Tokens(ids) => format!("{ids:?}"),
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
        if echo_texts.is_some() && want_logprobs {
            // The echo chunk goes first and carries the prompt's logprobs.
            generation.wait_prompt_logprobs().await?;
        }
        let echoes = (0..generation.choices()).map(|i| echo_of(i, generation.prompt_logprobs(i))).collect();
        let format = CompletionFormat {
            id: format!("cmpl-{request_id}"),
            model: valid.model.clone(),
            created: unix_now(),
            include_usage: valid.spec.include_usage,
            want_logprobs,
            offsets: vec![0; generation.choices()],
            echoes,
        };
        sse::respond(res, generation, format, state.sse_keepalive, log);
        return Ok(());
    }

    let collected = generation.collect().await?;
    let choices: Vec<CompletionChoice> = collected
        .choices
        .into_iter()
        .enumerate()
        .map(|(index, c)| {
            let echo = echo_of(index, c.prompt_logprobs.as_deref());
            let (mut text, mut logprobs) = match echo {
                Some(echo) => (echo.text, echo.logprobs),
                None => (String::new(), want_logprobs.then(CompletionLogprobs::default)),
            };
            if let Some(lp) = logprobs.as_mut() {
                append(lp, completion_logprobs(&c.logprobs, char_len(&text)));
            }
            text.push_str(&c.text);
            CompletionChoice { logprobs, text, index, finish_reason: c.finish_reason.map(|r| r.as_str().to_string()) }
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
        id: format!("cmpl-{request_id}"),
        object: "text_completion".into(),
        created: unix_now(),
        model: valid.model,
        choices,
        usage: collected.usage,
        system_fingerprint: None,
    }));
    Ok(())
}

/// What `echo` puts before a choice's completion.
#[derive(Debug, Clone)]
struct Echo {
    text: String,
    logprobs: Option<CompletionLogprobs>,
}

fn char_len(text: &str) -> usize {
    text.chars().count()
}

/// The prompt as echoed: a text prompt as sent, token ids as their text.
fn echo_text(model: &ModelInfo, source: &PromptSource, ids: &[u32]) -> String {
    match source {
        PromptSource::Text(text) => text.clone(),
        PromptSource::Tokens(_) => model.tokenizer.decode(ids, false).unwrap_or_default(),
    }
}

fn token_string(model: &ModelInfo, id: u32) -> String {
    model.tokenizer.decode(&[id], false).unwrap_or_default()
}

/// The prompt part of echoed logprobs: one entry per prompt token, `null` for the first
/// (and for any position the engine did not score), offsets from 0.
fn prompt_logprobs(model: &ModelInfo, ids: &[u32], scores: &[Option<TokenLogprob>]) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut at = 0;
    for (i, &id) in ids.iter().enumerate() {
        let token = token_string(model, id);
        let score = scores.get(i).and_then(Option::as_ref);
        out.token_logprobs.push(score.map(|s| s.logprob));
        out.top_logprobs
            .push(score.map(|s| s.top.iter().map(|&(t, l)| (token_string(model, t), l)).collect::<BTreeMap<_, _>>()));
        out.text_offset.push(at);
        at += char_len(&token);
        out.tokens.push(token);
    }
    out
}

fn append(to: &mut CompletionLogprobs, more: CompletionLogprobs) {
    to.tokens.extend(more.tokens);
    to.token_logprobs.extend(more.token_logprobs);
    to.top_logprobs.extend(more.top_logprobs);
    to.text_offset.extend(more.text_offset);
}

/// Legacy logprobs of generated tokens: parallel arrays, `text_offset` counted from
/// `offset` (characters of the choice's text before these tokens).
pub fn completion_logprobs(tokens: &[LogprobToken], offset: usize) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut at = offset;
    for t in tokens {
        out.tokens.push(t.token.clone());
        out.token_logprobs.push(Some(t.logprob));
        out.top_logprobs.push(Some(t.top.iter().map(|(s, l)| (s.clone(), *l)).collect::<BTreeMap<_, _>>()));
        out.text_offset.push(at);
        at += char_len(&t.token);
    }
    out
}

/// Whether the vocabulary has fill-in-the-middle tokens, so that `suffix` can be served.
pub fn has_fill_in_the_middle(model: &ModelInfo) -> bool {
    FIM_TOKENS.iter().any(|names| names.iter().all(|n| model.tokenizer.token_id(n).is_some()))
}

/// The fill-in-the-middle prompt (PSM): `<fim_prefix>` prompt `<fim_suffix>` suffix
/// `<fim_middle>`, as ids (BOS first when the model wants one). A vocabulary without FIM
/// tokens cannot do this: 400 naming `suffix`.
fn fill_in_the_middle(model: &ModelInfo, source: &PromptSource, suffix: &str) -> Result<PromptSource, ApiError> {
    let tokenizer = &model.tokenizer;
    let ids_of = |names: &[&str; 3]| -> Option<[u32; 3]> {
        Some([tokenizer.token_id(names[0])?, tokenizer.token_id(names[1])?, tokenizer.token_id(names[2])?])
    };
    let Some([prefix, suffix_id, middle]) = FIM_TOKENS.iter().find_map(ids_of) else {
        return Err(ApiError::unsupported(
            "suffix",
            "This model's vocabulary has no fill-in-the-middle tokens (<fim_prefix>, <fim_suffix>, <fim_middle>), \
             so it cannot complete between a prompt and a `suffix`.",
        ));
    };
    let mut ids = Vec::new();
    if let (true, Some(bos)) = (tokenizer.add_bos(), tokenizer.bos_id()) {
        ids.push(bos);
    }
    ids.push(prefix);
    match source {
        PromptSource::Text(text) => ids.extend(tokenizer.encode(text, true)?),
        PromptSource::Tokens(prompt) => ids.extend(prompt.iter().copied().filter(|&t| Some(t) != tokenizer.bos_id())),
    }
    ids.push(suffix_id);
    ids.extend(tokenizer.encode(suffix, true)?);
    ids.push(middle);
    Ok(PromptSource::Tokens(ids))
}

struct CompletionFormat {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    want_logprobs: bool,
    /// Characters emitted so far per choice, for `text_offset`.
    offsets: Vec<usize>,
    /// Per choice, the echoed prompt sent as its first chunk.
    echoes: Vec<Option<Echo>>,
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
        let echoes = std::mem::take(&mut self.echoes);
        let mut frames = Vec::new();
        for (index, echo) in echoes.into_iter().enumerate() {
            let Some(echo) = echo else { continue };
            self.offsets[index] = char_len(&echo.text);
            let choice = CompletionChoice { text: echo.text, index, logprobs: echo.logprobs, finish_reason: None };
            frames.push(data_frame(&self.chunk(vec![choice])));
        }
        frames
    }

    fn event(&mut self, event: &DriverEvent) -> Vec<Bytes> {
        let chunk = match event {
            DriverEvent::Delta { index, text, logprobs } => {
                let offset = self.offsets.get(*index).copied().unwrap_or(0);
                if let Some(o) = self.offsets.get_mut(*index) {
                    *o += char_len(text);
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
