//! Driving the engine for one API request: submit one sequence per choice (prompts × `n`),
//! merge their event streams, and turn engine events into per-choice [`DriverEvent`]s —
//! text deltas (with logprobs), finishes, one usage total — that the chat and completions
//! formatters, the SSE writer and the WebSocket all share.
//!
//! A [`Generation`] owns the engine's `EventStream`s: dropping it (client gone, socket
//! closed, request cancelled) cancels every sequence at the engine's next step.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use stellarchat_model::engine::{FinishReason, GenerateRequest, GenerationEvent, TokenLogprob};
use stellarchat_model::sampler::SamplingParams;
use stellarchat_model::tokenizer::Tokenizer;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::protocol::UsageInfo;
use super::registry::ModelLease;
use super::state::{ActiveGuard, AppState};
use super::validate::GenerationSpec;

/// One prompt, tokenized, with the number of tokens to generate for it.
#[derive(Debug, Clone)]
pub struct PlannedPrompt {
    pub ids: Vec<u32>,
    pub max_tokens: usize,
}

/// A generated token with its logprob and alternatives, as text and as the token's exact
/// bytes (a character split across tokens has part of its UTF-8 in each).
#[derive(Debug, Clone, PartialEq)]
pub struct LogprobToken {
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
    /// The bytes of each of `top`, in the same order.
    pub top_bytes: Vec<Vec<u8>>,
}

/// What the formatters consume, in order per choice: `Delta`s, then one `Finish`; after all
/// choices, one `Done` with the totals. An `Error` ends everything.
#[derive(Debug)]
pub enum DriverEvent {
    Delta { index: usize, text: String, logprobs: Vec<LogprobToken> },
    Finish { index: usize, reason: FinishReason },
    Done(UsageInfo),
    Error(ApiError),
}

type Tagged = BoxStream<'static, (usize, GenerationEvent)>;

pub struct Generation {
    streams: SelectAll<Tagged>,
    queue: VecDeque<DriverEvent>,
    /// Choices not finished yet.
    remaining: usize,
    choices: usize,
    usage: UsageInfo,
    /// Whether a choice is the first one of its prompt (its cached-token count is reported).
    first_of_prompt: Vec<bool>,
    pending_logprobs: Vec<Vec<LogprobToken>>,
    /// Per choice, its prompt's scores once the engine reported them (`start_scoring`).
    prompt_logprobs: Vec<Option<Vec<Option<TokenLogprob>>>>,
    last_token_at: Vec<Option<Instant>>,
    tokenizer: Arc<Tokenizer>,
    want_logprobs: bool,
    state: Arc<AppState>,
    /// The model generating: held so that it is not unloaded under a running request.
    model: ModelLease,
    cut: CancellationToken,
    finished: bool,
    /// Tokens received so far over all choices (for usage after a cancel).
    tokens_seen: usize,
    /// Per choice: tokens received, and whether its finish (which counts them in the
    /// metrics) arrived; the rest are counted when the generation is dropped (a cancel).
    choice_tokens: Vec<usize>,
    choice_finished: Vec<bool>,
    _active: ActiveGuard,
}

fn sampling_params(spec: &GenerationSpec, index: usize) -> SamplingParams {
    SamplingParams {
        temperature: spec.temperature,
        top_k: spec.top_k,
        top_p: spec.top_p,
        min_p: spec.min_p,
        repetition_penalty: spec.repetition_penalty,
        presence_penalty: spec.presence_penalty,
        frequency_penalty: spec.frequency_penalty,
        logit_bias: spec.logit_bias.clone(),
        // n > 1 with a seed: different but reproducible choices.
        seed: spec.seed.map(|s| s.wrapping_add(index as u64)),
    }
}

impl Generation {
    /// Submits `prompts.len() × spec.n` sequences; choice `p * n + j` is prompt `p`'s `j`-th.
    /// If any submit fails (queue full), the ones already submitted are cancelled.
    pub fn start(
        state: &Arc<AppState>,
        model: &ModelLease,
        spec: &GenerationSpec,
        prompts: &[PlannedPrompt],
    ) -> Result<Self, ApiError> {
        Self::start_scoring(state, model, spec, prompts, None)
    }

    /// [`Generation::start`] that also scores every prompt token, with `prompt_logprobs`
    /// alternatives each (see [`Generation::prompt_logprobs`]); `None` scores nothing.
    pub fn start_scoring(
        state: &Arc<AppState>,
        model: &ModelLease,
        spec: &GenerationSpec,
        prompts: &[PlannedPrompt],
        prompt_logprobs: Option<usize>,
    ) -> Result<Self, ApiError> {
        state.check_accepting()?;
        // Counted as running before anything reaches the engine: a shutdown that starts
        // meanwhile (e.g. the engine failing on this very request) must wait for this
        // generation's own events instead of cutting it before it exists.
        let active = state.lifecycle.enter();
        let n = spec.n.max(1);
        let choices = prompts.len() * n;
        let mut streams = SelectAll::new();
        let mut first_of_prompt = Vec::with_capacity(choices);
        let mut prompt_tokens = 0;
        for (p, prompt) in prompts.iter().enumerate() {
            prompt_tokens += prompt.ids.len();
            for j in 0..n {
                let index = p * n + j;
                let request = GenerateRequest {
                    prompt_ids: prompt.ids.clone(),
                    sampling: sampling_params(spec, index),
                    max_tokens: prompt.max_tokens,
                    stop_strings: spec.stop.clone(),
                    stop_token_ids: spec.stop_token_ids.clone(),
                    ignore_eos: spec.ignore_eos,
                    logprobs: spec.logprobs,
                    skip_special_tokens: spec.skip_special_tokens,
                    constraint: spec.constraint.clone(),
                    prompt_logprobs,
                };
                // On error, `streams` is dropped here, cancelling what was submitted.
                let events = model.engine.submit(request)?;
                streams.push(events.map(move |e| (index, e)).boxed());
                first_of_prompt.push(j == 0);
            }
        }
        Ok(Generation {
            streams,
            queue: VecDeque::new(),
            remaining: choices,
            choices,
            usage: UsageInfo::new(prompt_tokens, 0, 0),
            first_of_prompt,
            pending_logprobs: vec![Vec::new(); choices],
            prompt_logprobs: vec![None; choices],
            last_token_at: vec![None; choices],
            tokenizer: model.info.tokenizer.clone(),
            want_logprobs: spec.logprobs.is_some(),
            cut: state.lifecycle.cut_token(),
            _active: active,
            state: state.clone(),
            model: model.clone(),
            finished: false,
            tokens_seen: 0,
            choice_tokens: vec![0; choices],
            choice_finished: vec![false; choices],
        })
    }

    pub fn choices(&self) -> usize {
        self.choices
    }

    /// Usage up to now, for a request cancelled before it finished.
    pub fn usage_so_far(&self) -> UsageInfo {
        let mut usage = self.usage;
        usage.completion_tokens = 0;
        usage.add_completion(self.tokens_seen);
        usage
    }

    /// The next event; `None` after `Done` or `Error`. Cancel-safe (no event is lost when
    /// the future is dropped), so callers may race it against a keep-alive timer.
    pub async fn next(&mut self) -> Option<DriverEvent> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.finished {
                return None;
            }
            if self.remaining == 0 {
                self.finished = true;
                return Some(DriverEvent::Done(self.usage));
            }
            let item = tokio::select! {
                biased;
                _ = self.cut.cancelled() => {
                    self.finished = true;
                    return Some(DriverEvent::Error(ApiError::ShuttingDown));
                }
                item = self.streams.next() => item,
            };
            match item {
                Some((index, event)) => self.on_event(index, event),
                None => {
                    self.finished = true;
                    return Some(DriverEvent::Error(ApiError::Internal(
                        "the engine closed a stream without finishing it".into(),
                    )));
                }
            }
        }
    }

    fn on_event(&mut self, index: usize, event: GenerationEvent) {
        match event {
            GenerationEvent::Token { id, text, logprob, .. } => {
                self.tokens_seen += 1;
                self.choice_tokens[index] += 1;
                let now = Instant::now();
                if let Some(last) = self.last_token_at[index].replace(now) {
                    self.state
                        .metrics
                        .inter_token_latency_seconds
                        .with_label_values(&[self.model.id.as_str()])
                        .observe(now.duration_since(last).as_secs_f64());
                }
                if self.want_logprobs
                    && let Some(lp) = logprob
                {
                    let entry = self.logprob_token(id, &lp);
                    self.pending_logprobs[index].push(entry);
                }
                // Empty text: held back (partial character or possible stop string); its
                // logprobs ride with the next piece of text.
                if !text.is_empty() {
                    let logprobs = std::mem::take(&mut self.pending_logprobs[index]);
                    self.queue.push_back(DriverEvent::Delta { index, text, logprobs });
                }
            }
            GenerationEvent::Finished { reason, usage, text, timings } => {
                let logprobs = std::mem::take(&mut self.pending_logprobs[index]);
                if !text.is_empty() || !logprobs.is_empty() {
                    self.queue.push_back(DriverEvent::Delta { index, text, logprobs });
                }
                self.queue.push_back(DriverEvent::Finish { index, reason });
                self.choice_finished[index] = true;
                self.usage.add_completion(usage.completion_tokens);
                if self.first_of_prompt[index]
                    && let Some(details) = self.usage.prompt_tokens_details.as_mut()
                {
                    details.cached_tokens += usage.cached_prompt_tokens;
                }
                self.state.metrics.observe_finished(
                    &self.model.id,
                    reason.as_str(),
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    &timings,
                );
                self.remaining = self.remaining.saturating_sub(1);
            }
            GenerationEvent::PromptLogprobs(scores) => self.prompt_logprobs[index] = Some(scores),
            GenerationEvent::Error(e) => {
                self.queue.push_back(DriverEvent::Error(e.into()));
                self.finished = true;
            }
        }
    }

    fn logprob_token(&self, id: u32, lp: &TokenLogprob) -> LogprobToken {
        LogprobToken {
            token: self.token_string(id),
            bytes: self.tokenizer.token_bytes(id),
            logprob: lp.logprob,
            top: lp.top.iter().map(|&(t, l)| (self.token_string(t), l)).collect(),
            top_bytes: lp.top.iter().map(|&(t, _)| self.tokenizer.token_bytes(t)).collect(),
        }
    }

    fn token_string(&self, id: u32) -> String {
        self.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    /// Choice `index`'s prompt scores (one per prompt token; the first is `None`), once
    /// they arrived: they come before the choice's first token.
    pub fn prompt_logprobs(&self, index: usize) -> Option<&[Option<TokenLogprob>]> {
        self.prompt_logprobs.get(index)?.as_deref()
    }

    /// Waits until every choice's prompt scores arrived (for a stream that must send them
    /// first), keeping the events that come meanwhile for [`Generation::next`].
    pub async fn wait_prompt_logprobs(&mut self) -> Result<(), ApiError> {
        while !self.finished && self.prompt_logprobs.iter().any(Option::is_none) {
            match self.streams.next().await {
                Some((index, event)) => self.on_event(index, event),
                None => break,
            }
            if let Some(DriverEvent::Error(e)) = self.queue.back() {
                return Err(e.clone());
            }
        }
        Ok(())
    }

    /// Runs to the end and gathers each choice (the non-streaming responses).
    pub async fn collect(mut self) -> Result<Collected, ApiError> {
        let mut choices = vec![CollectedChoice::default(); self.choices];
        while let Some(event) = self.next().await {
            match event {
                DriverEvent::Delta { index, text, logprobs } => {
                    choices[index].text.push_str(&text);
                    choices[index].logprobs.extend(logprobs);
                }
                DriverEvent::Finish { index, reason } => choices[index].finish_reason = Some(reason),
                DriverEvent::Done(usage) => {
                    for (choice, scores) in choices.iter_mut().zip(std::mem::take(&mut self.prompt_logprobs)) {
                        choice.prompt_logprobs = scores;
                    }
                    return Ok(Collected { choices, usage });
                }
                DriverEvent::Error(e) => return Err(e),
            }
        }
        Err(ApiError::Internal("generation ended without a result".into()))
    }
}

impl Drop for Generation {
    /// A cancelled (or failed) generation's tokens count as generated too: finished choices
    /// were counted with their finish, the others are counted now.
    fn drop(&mut self) {
        let unfinished: usize =
            self.choice_tokens.iter().zip(&self.choice_finished).filter(|(_, done)| !**done).map(|(n, _)| n).sum();
        self.state.metrics.generation_tokens_total.with_label_values(&[self.model.id.as_str()]).inc_by(unfinished as u64);
    }
}

#[derive(Debug, Clone, Default)]
pub struct CollectedChoice {
    pub text: String,
    pub logprobs: Vec<LogprobToken>,
    /// The prompt's scores, when the generation was started scoring them.
    pub prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    pub finish_reason: Option<FinishReason>,
}

#[derive(Debug, Clone)]
pub struct Collected {
    pub choices: Vec<CollectedChoice>,
    pub usage: UsageInfo,
}
