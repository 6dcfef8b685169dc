//! What the engine's clients see: a validated request in, a stream of events out.
//!
//! [`EngineHandle::submit`](super::EngineHandle::submit) returns an [`EventStream`]; dropping
//! it cancels the sequence at the next step and frees its cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::constraint::Constraint;
use crate::error::ModelError;
use crate::sampler::SamplingParams;

/// A request the server has already validated and tokenized.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The prompt, already rendered by the chat template and tokenized.
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
    /// Upper bound on generated tokens (the engine also stops at the context length).
    pub max_tokens: usize,
    /// Text that ends generation; it is not emitted.
    pub stop_strings: Vec<String>,
    /// Token ids that end generation in addition to the model's end-of-generation ids.
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past the model's end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// `Some(n)`: report each token's logprob and its `n` most likely alternatives.
    pub logprobs: Option<usize>,
    /// Leave special tokens (e.g. `<|im_end|>`) out of the text.
    pub skip_special_tokens: bool,
    /// Keep the output inside a JSON schema or grammar. Under a constraint, logprobs are
    /// those of the masked row: the model's distribution renormalized over the tokens the
    /// grammar allows, and the alternatives are only allowed tokens.
    pub constraint: Option<Constraint>,
    /// `Some(n)`: before the first token, report every prompt token's logprob given its
    /// prefix and the `n` most likely tokens at its position, as one
    /// [`GenerationEvent::PromptLogprobs`]. With it, `max_tokens` may be 0 (score only).
    pub prompt_logprobs: Option<usize>,
}

impl GenerateRequest {
    /// A greedy request with the engine's defaults, for tests and tools.
    pub fn greedy(prompt_ids: Vec<u32>, max_tokens: usize) -> Self {
        GenerateRequest {
            prompt_ids,
            sampling: SamplingParams::greedy(),
            max_tokens,
            stop_strings: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            skip_special_tokens: true,
            constraint: None,
            prompt_logprobs: None,
        }
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose cache was reused from an earlier request (prefill skipped).
    pub cached_prompt_tokens: usize,
}

/// A token's log-probability and its most likely alternatives (ids with logprobs).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What the engine reports about one request, in order: `PromptLogprobs` once if the request
/// asked for it, zero or more `Token`s, then exactly one `Finished` or `Error`.
#[derive(Debug)]
pub enum GenerationEvent {
    /// One entry per prompt token: its logprob given the tokens before it and the most likely
    /// tokens at its position. The first token has no prefix, so its entry is `None`.
    PromptLogprobs(Vec<Option<TokenLogprob>>),
    /// One generated token. `text` is the text it completes (may be empty while a multi-byte
    /// character or a possible stop string is held back). `step` numbers the engine step
    /// that produced it (the order of batching decisions, for tests and tracing).
    Token { id: u32, text: String, logprob: Option<TokenLogprob>, step: u64 },
    /// Generation ended; `text` is any held-back text released at the end.
    Finished { reason: FinishReason, usage: Usage, text: String, timings: Timings },
    Error(ModelError),
}

/// When things happened to a request, for latency metrics.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub submitted: Instant,
    /// The engine's step count when the request reached the engine thread: comparable with
    /// [`GenerationEvent::Token::step`], so a test or trace can tell how many steps it waited.
    pub arrived_step: u64,
    /// When the scheduler first gave it a prefill slot (end of queueing).
    pub scheduled: Option<Instant>,
    pub first_token: Option<Instant>,
    pub finished: Instant,
}

/// The receiving half handed to the client. Dropping it cancels the request.
pub struct EventStream {
    pub(crate) events: mpsc::UnboundedReceiver<GenerationEvent>,
    pub(crate) cancelled: Arc<AtomicBool>,
}

impl EventStream {
    /// The next event, or `None` after the last one.
    pub async fn recv(&mut self) -> Option<GenerationEvent> {
        self.events.recv().await
    }

    /// Blocking variant for non-async callers (the CLI).
    pub fn blocking_recv(&mut self) -> Option<GenerationEvent> {
        self.events.blocking_recv()
    }

    /// Cancels explicitly (the same happens on drop).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

impl futures_core::Stream for EventStream {
    type Item = GenerationEvent;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

/// Live engine figures for metrics and admission decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    /// Fraction of the KV-cache budget in use (running sequences and the prefix cache), 0.0–1.0.
    pub kv_cache_usage: f64,
    /// The part of `kv_cache_usage` held by the prefix cache (evicted first when needed).
    pub prefix_cache_usage: f64,
    /// Prompt tokens looked up in the prefix cache since start.
    pub prefix_cache_queries_tokens: u64,
    /// Prompt tokens found there (their prefill was skipped) since start.
    pub prefix_cache_hits_tokens: u64,
    /// Forward steps run since start (tests assert on scheduling order with it).
    pub steps: u64,
    /// Steps that panicked since start (their sequences failed; see `engine::supervisor`).
    pub step_failures: u64,
    /// The load's memory check: the device's memory, the model's bytes and the KV budget
    /// (GPU devices, once loaded).
    pub memory: Option<crate::device::memory_budget::MemoryReport>,
}
