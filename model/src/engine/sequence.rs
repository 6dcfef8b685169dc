//! One request inside the engine: its cache, sampler, constraint, detokenizer and stop
//! conditions, the logprobs of its prompt, and the channel its events go out on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;

use super::prefix_cache::EntryId;
use super::api::{FinishReason, GenerateRequest, GenerationEvent, Timings, TokenLogprob, Usage};
use crate::constraint::{Committed, ConstraintState};
use crate::error::ModelError;
use crate::kv_cache::SequenceCache;
use crate::sampler::{Sampler, score_token};
use crate::stop::{StopOutcome, StopStrings};
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

/// A request as submitted, before the scheduler admits it.
pub(crate) struct Pending {
    pub request: GenerateRequest,
    /// The request's constraint, compiled at submission.
    pub constraint: Option<ConstraintState>,
    pub events: mpsc::UnboundedSender<GenerationEvent>,
    pub cancelled: Arc<AtomicBool>,
    pub submitted: Instant,
    /// The engine's step count when the request reached the engine thread (for ageing).
    pub arrived_step: u64,
}

impl Pending {
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed) || self.events.is_closed()
    }
}

pub(crate) struct Sequence {
    pub cache: SequenceCache,
    /// Prompt then generated tokens; `cache.len()` of them have been fed to the model.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// KV positions this sequence may grow to (its share of the budget).
    pub reserved_tokens: usize,
    /// The engine's step count when the request arrived (for ageing).
    pub arrived_step: u64,
    /// Prompt tokens whose keys and values were copied from the prefix cache at the start.
    cached_prompt_tokens: usize,
    /// Whole prompt blocks findable in the prefix index through this sequence or the hit it
    /// started from ([`super::running_prefix`]), and the entry it published last, if any.
    pub published_blocks: usize,
    pub published: Option<EntryId>,
    /// The grammar the output must follow, if any.
    pub constraint: Option<ConstraintState>,
    /// `(n, entries so far)` while prompt logprobs with `n` alternatives are being gathered;
    /// taken when they are sent.
    prompt_scores: Option<(usize, Vec<Option<TokenLogprob>>)>,
    max_tokens: usize,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    stops: StopStrings,
    stop_token_ids: Vec<u32>,
    logprobs: Option<usize>,
    events: mpsc::UnboundedSender<GenerationEvent>,
    cancelled: Arc<AtomicBool>,
    timings: Timings,
    final_event: Option<GenerationEvent>,
}

/// What happened after a token was sampled.
pub(crate) enum Progress {
    Continue,
    Finished,
}

impl Sequence {
    /// `cache` may already hold a prefix of the prompt (a prefix-cache hit).
    pub fn start(pending: Pending, cache: SequenceCache, tokenizer: &Tokenizer, reserved_tokens: usize) -> Sequence {
        let Pending { request, constraint, events, cancelled, submitted, arrived_step } = pending;
        let mut stop_token_ids = request.stop_token_ids.clone();
        if !request.ignore_eos {
            stop_token_ids.extend_from_slice(tokenizer.stop_ids());
        }
        let now = Instant::now();
        let prompt_scores = request.prompt_logprobs.map(|n| (n, Vec::with_capacity(request.prompt_ids.len())));
        Sequence {
            sampler: Sampler::new(request.sampling.clone(), &request.prompt_ids),
            decoder: IncrementalDecoder::new(request.skip_special_tokens),
            stops: StopStrings::new(request.stop_strings.clone()),
            prompt_len: request.prompt_ids.len(),
            tokens: request.prompt_ids,
            max_tokens: request.max_tokens,
            logprobs: request.logprobs,
            stop_token_ids,
            reserved_tokens,
            arrived_step,
            cached_prompt_tokens: cache.len(),
            published_blocks: cache.len() / crate::kv_cache::KV_BLOCK_TOKENS,
            published: None,
            constraint,
            prompt_scores,
            cache,
            events,
            cancelled,
            timings: Timings { submitted, arrived_step, scheduled: Some(now), first_token: None, finished: now },
            final_event: None,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed) || self.events.is_closed()
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Whether the next forward must return logits for every position of this sequence's
    /// chunk: prompt logprobs are wanted and the prompt is not fully cached yet.
    pub fn wants_all_logits(&self) -> bool {
        self.prompt_scores.is_some() && self.cache.len() < self.prompt_len
    }

    /// Scores the prompt tokens that `rows` predict: `rows` are the logits of positions
    /// `start..start + rows.len() / vocab`, and the row at position `p` predicts token `p + 1`.
    pub fn score_prompt(&mut self, start: usize, rows: &[f32], vocab: usize) {
        let Some((top, scores)) = &mut self.prompt_scores else { return };
        if start == 0 && scores.is_empty() {
            scores.push(None);
        }
        let mut scratch = Vec::with_capacity(vocab);
        for (offset, row) in rows.chunks_exact(vocab).enumerate() {
            let Some(&next) = self.tokens[..self.prompt_len].get(start + offset + 1) else { break };
            scratch.clear();
            scratch.extend_from_slice(row);
            let scored = score_token(&mut scratch, next, *top);
            scores.push(Some(TokenLogprob { logprob: scored.logprob, top: scored.top_logprobs }));
        }
    }

    /// Called once the prompt is fully cached, with the logits of its last position: sends
    /// the prompt logprobs if asked for, then samples the next token and reports it.
    pub fn accept_logits(&mut self, logits: &[f32], tokenizer: &Tokenizer, step: u64) -> Progress {
        if let Some((_, scores)) = self.prompt_scores.take() {
            self.send(GenerationEvent::PromptLogprobs(scores));
        }
        if self.max_tokens == 0 {
            return self.finish(FinishReason::Length, tokenizer);
        }
        let mut row = logits.to_vec();
        if let Some(constraint) = &mut self.constraint
            && let Err(e) = constraint.apply_mask(&mut row)
        {
            return self.fail(e);
        }
        let sampled = self.sampler.sample(&mut row, self.logprobs);
        self.timings.first_token.get_or_insert_with(Instant::now);
        let id = sampled.id;
        let mut top = sampled.top_logprobs;
        // Under a mask, disallowed tokens are -inf: no alternative at all, not a candidate.
        top.retain(|&(_, logprob)| logprob > f32::NEG_INFINITY);
        let logprob = self.logprobs.map(|_| TokenLogprob { logprob: sampled.logprob, top });

        if self.stop_token_ids.contains(&id) {
            self.tokens.push(id);
            self.send(GenerationEvent::Token { id, text: String::new(), logprob, step });
            return self.finish(FinishReason::Stop, tokenizer);
        }
        let grammar = match self.constraint.as_mut().map(|c| c.commit(id)) {
            Some(Err(e)) => return self.fail(e),
            Some(Ok(committed)) => committed,
            None => Committed::Continue,
        };
        self.tokens.push(id);
        let piece = match self.decoder.push(tokenizer, id) {
            Ok(piece) => piece,
            Err(e) => return self.fail(e),
        };
        match self.stops.push(&piece) {
            StopOutcome::Continue { emit } => self.send(GenerationEvent::Token { id, text: emit, logprob, step }),
            StopOutcome::Stopped { emit, .. } => {
                self.send(GenerationEvent::Token { id, text: emit, logprob, step });
                return self.finish_with_text(FinishReason::Stop, String::new());
            }
        }
        if grammar == Committed::Complete {
            return self.finish(FinishReason::Stop, tokenizer);
        }
        if self.generated() >= self.max_tokens || self.tokens.len() >= self.cache.max_len() {
            return self.finish(FinishReason::Length, tokenizer);
        }
        Progress::Continue
    }

    fn finish(&mut self, reason: FinishReason, _tokenizer: &Tokenizer) -> Progress {
        // Text held back by the detokenizer or for a possible stop string is released now,
        // unless it completes a stop string after all.
        let tail = self.decoder.finish();
        let text = match self.stops.push(&tail) {
            StopOutcome::Continue { mut emit } => {
                emit.push_str(&self.stops.flush());
                emit
            }
            StopOutcome::Stopped { emit, .. } => emit,
        };
        self.finish_with_text(reason, text)
    }

    fn finish_with_text(&mut self, reason: FinishReason, text: String) -> Progress {
        self.timings.finished = Instant::now();
        let usage = Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated(),
            cached_prompt_tokens: self.cached_prompt_tokens,
        };
        self.final_event = Some(GenerationEvent::Finished { reason, usage, text, timings: self.timings });
        Progress::Finished
    }

    /// Whether the sequence ended in an error (its cache may be half written).
    pub fn failed(&self) -> bool {
        matches!(self.final_event, Some(GenerationEvent::Error(_)))
    }

    pub fn fail(&mut self, error: ModelError) -> Progress {
        self.final_event = Some(GenerationEvent::Error(error));
        Progress::Finished
    }

    /// Sends the last event (`Finished` or `Error`). The engine calls it after updating its
    /// counters, so a client that sees the end also sees the engine without this sequence.
    pub fn send_final_event(&mut self) {
        if let Some(event) = self.final_event.take() {
            self.send(event);
        }
    }

    fn send(&self, event: GenerationEvent) {
        // A closed channel means the client left; the next step drops the sequence.
        let _ = self.events.send(event);
    }
}
