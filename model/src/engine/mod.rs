//! The batching engine: a dedicated thread that owns the model and its device, and serves
//! every request with continuous batching.
//!
//! Clients hold an [`EngineHandle`]: [`EngineHandle::submit`] queues a validated request and
//! returns its [`EventStream`]. Each step the engine drops cancelled sequences, admits
//! waiting ones while the sequence limit and the KV-cache budget allow, runs one batched
//! forward (decode tokens plus prefill chunks, see [`scheduler`]) and samples one token for
//! every sequence whose prompt is fully cached. Finished sequences leave at once; their
//! caches stay in the prefix cache ([`prefix_cache`], [`admission`]) until the KV budget needs
//! the room, and a new prompt that starts with the same tokens copies them instead of
//! prefilling. The thread never blocks the async runtime: events go out over unbounded
//! channels and the thread sleeps on its command channel when idle.
//!
//! Constrained sequences ([`crate::constraint`]) are compiled at submission; in a step, their
//! token masks are computed on a helper thread while the forward runs on the engine thread
//! (CubeCL binds its streams to the thread that created them). Sequences that want prompt
//! logprobs get logits for every position of their prefill chunks.

mod admission;
pub mod api;
mod prefix_cache;
mod scheduler;
mod sequence;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::Instant;

use tokio::sync::mpsc;

pub use api::*;
pub use scheduler::{SequenceView, plan_step};

use crate::constraint::{Constraint, ConstraintCompiler, ConstraintState};
use crate::error::{ModelError, Result};
use crate::kv_cache::SequenceCache;
use crate::transformer::{ForwardChunk, Transformer};
use crate::model::{LoadOptions, ModelLoader};
use crate::tokenizer::Tokenizer;
use prefix_cache::PrefixCache;
use sequence::{Pending, Progress, Sequence};

/// Limits of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Sequences decoded together in one batch.
    pub max_num_seqs: usize,
    /// Requests that may wait for a slot; beyond that `submit` answers `Overloaded`.
    pub max_queue: usize,
    /// Prompt tokens prefilled per step (the chunk size of chunked prefill).
    pub max_prefill_tokens: usize,
    /// KV-cache positions all sequences together may hold, running and retained ones.
    pub kv_cache_tokens: usize,
    /// Keep finished sequences' caches and reuse their longest prefix for new prompts.
    pub prefix_cache: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { max_num_seqs: 16, max_queue: 256, max_prefill_tokens: 256, kv_cache_tokens: 65_536, prefix_cache: true }
    }
}

/// State shared between the engine thread and its handles.
#[derive(Default)]
struct Shared {
    ready: AtomicBool,
    stopped: AtomicBool,
    load_error: Mutex<Option<String>>,
    /// Requests accepted and not yet ended (waiting + running); bounded by
    /// `max_num_seqs + max_queue` at submission.
    in_flight: AtomicUsize,
    running: AtomicUsize,
    /// KV positions allocated (running and retained), for `kv_cache_usage`.
    kv_allocated: AtomicUsize,
    /// KV positions held by the prefix cache only.
    kv_retained: AtomicUsize,
    /// Prompt tokens looked up in the prefix cache, and those found there.
    prefix_queries_tokens: AtomicU64,
    prefix_hits_tokens: AtomicU64,
    steps: AtomicU64,
}

enum Command {
    // Boxed: a request with its compiled constraint is large next to `Shutdown`.
    Submit(Box<Pending>),
    Shutdown,
}

/// A cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    commands: std_mpsc::Sender<Command>,
    shared: Arc<Shared>,
    config: EngineConfig,
    context_length: usize,
    /// Shared by all clones: the grammar compiler is built once, on the first constraint.
    constraints: Arc<ConstraintCompiler>,
}

/// Starts engines.
pub struct Engine;

impl Engine {
    /// Spawns the engine thread, which loads the weights and then serves. Returns at once;
    /// [`EngineHandle::is_ready`] turns true when loading is done.
    pub fn spawn(
        loader: ModelLoader,
        options: LoadOptions,
        config: EngineConfig,
        progress: Box<dyn FnMut(usize, usize) + Send>,
    ) -> EngineHandle {
        let (commands, receiver) = std_mpsc::channel();
        let shared = Arc::new(Shared::default());
        let handle = EngineHandle {
            commands,
            shared: shared.clone(),
            config,
            context_length: loader.info().context_length,
            constraints: Arc::new(ConstraintCompiler::new(loader.info().tokenizer.clone())),
        };
        let tokenizer = loader.info().tokenizer.clone();
        let constraints = handle.constraints.clone();
        let spawned = std::thread::Builder::new().name("stellarchat-engine".into()).spawn(move || {
            let mut progress = progress;
            // CubeCL keeps one stream per OS thread: the model is built on the thread that runs it.
            // Backends panic on some device failures (e.g. wgpu finding no adapter); that must
            // surface as a load error, not leave clients waiting for a model that never comes.
            let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loader.load(&options, &mut *progress)))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".into());
                    Err(ModelError::DeviceUnavailable {
                        requested: options.device.to_string(),
                        reason: format!("the backend failed while opening the device: {what}"),
                    })
                });
            // The model holds its own copy of every tensor: unmap the file now, or its pages,
            // read once while loading, would stay in the process's resident memory.
            drop(loader);
            match loaded {
                Ok(model) => {
                    // The grammar compiler's token tables take ~0.5 s (more for a 262k
                    // vocabulary): build them beside the engine now rather than on the async
                    // worker of the first structured-output request.
                    let _ = std::thread::Builder::new()
                        .name("stellarchat-grammar-tables".into())
                        .spawn(move || constraints.prepare());
                    shared.ready.store(true, Ordering::Release);
                    EngineLoop::new(model, tokenizer, config, shared.clone(), receiver).run();
                }
                Err(e) => {
                    tracing::error!(error = %e, "loading the model failed");
                    if let Ok(mut slot) = shared.load_error.lock() {
                        *slot = Some(e.to_string());
                    }
                }
            }
            shared.stopped.store(true, Ordering::Release);
            shared.ready.store(false, Ordering::Release);
        });
        if let Err(e) = spawned {
            handle.shared.stopped.store(true, Ordering::Release);
            if let Ok(mut slot) = handle.shared.load_error.lock() {
                *slot = Some(format!("cannot start the engine thread: {e}"));
            }
        }
        handle
    }
}

impl EngineHandle {
    /// Queues a request. Errors: `Overloaded` when the queue is full, `ContextLengthExceeded`
    /// when the prompt leaves no room to generate, `InvalidGrammar` when its constraint does
    /// not compile, `NotReady` while loading, `EngineStopped` after shutdown or a failed load.
    /// A constraint is compiled here, on the caller's thread (milliseconds for usual schemas;
    /// the first one also builds the grammar compiler's token tables).
    pub fn submit(&self, request: GenerateRequest) -> Result<EventStream> {
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(ModelError::EngineStopped);
        }
        if !self.shared.ready.load(Ordering::Acquire) {
            return Err(ModelError::NotReady);
        }
        if request.prompt_ids.is_empty() {
            return Err(ModelError::InvalidRequest("the prompt is empty".into()));
        }
        let scoring_only = request.max_tokens == 0;
        if scoring_only && request.prompt_logprobs.is_none() {
            return Err(ModelError::InvalidRequest("max_tokens must be at least 1".into()));
        }
        // Scoring only needs room for the prompt; generating needs one more position.
        if request.prompt_ids.len() > self.context_length || (!scoring_only && request.prompt_ids.len() == self.context_length)
        {
            return Err(ModelError::ContextLengthExceeded {
                prompt_tokens: request.prompt_ids.len(),
                max_tokens: request.max_tokens,
                context_length: self.context_length,
            });
        }
        let constraint = request.constraint.as_ref().map(|c| self.constraints.compile(c)).transpose()?;
        let capacity = self.config.max_num_seqs + self.config.max_queue;
        if self.shared.in_flight.fetch_add(1, Ordering::AcqRel) >= capacity {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(ModelError::Overloaded(format!(
                "{} requests are running and {} waiting, the configured maximum",
                self.config.max_num_seqs, self.config.max_queue
            )));
        }
        let (sender, events) = mpsc::unbounded_channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let pending = Pending { request, constraint, events: sender, cancelled: cancelled.clone(), submitted: Instant::now() };
        if self.commands.send(Command::Submit(Box::new(pending))).is_err() {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(ModelError::EngineStopped);
        }
        Ok(EventStream { events, cancelled })
    }

    /// Compiles `constraint` as [`EngineHandle::submit`] would, without submitting anything:
    /// `Err(InvalidGrammar)` with llguidance's explanation when it does not compile.
    pub fn check_constraint(&self, constraint: &Constraint) -> Result<()> {
        self.constraints.check(constraint)
    }

    pub fn stats(&self) -> EngineStats {
        let allocated = self.shared.kv_allocated.load(Ordering::Relaxed);
        let retained = self.shared.kv_retained.load(Ordering::Relaxed);
        let running = self.shared.running.load(Ordering::Relaxed);
        let budget = self.config.kv_cache_tokens.max(1) as f64;
        EngineStats {
            running,
            waiting: self.shared.in_flight.load(Ordering::Relaxed).saturating_sub(running),
            kv_cache_usage: allocated as f64 / budget,
            prefix_cache_usage: retained as f64 / budget,
            prefix_cache_queries_tokens: self.shared.prefix_queries_tokens.load(Ordering::Relaxed),
            prefix_cache_hits_tokens: self.shared.prefix_hits_tokens.load(Ordering::Relaxed),
            steps: self.shared.steps.load(Ordering::Relaxed),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    pub fn load_error(&self) -> Option<String> {
        self.shared.load_error.lock().ok().and_then(|e| e.clone())
    }

    pub fn config(&self) -> EngineConfig {
        self.config
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Stops the engine: running and waiting requests end with `EngineStopped`.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}

struct EngineLoop {
    model: Transformer,
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
    shared: Arc<Shared>,
    commands: std_mpsc::Receiver<Command>,
    waiting: VecDeque<Pending>,
    running: Vec<Sequence>,
    /// Caches of finished sequences, by the tokens they hold.
    retained: PrefixCache<SequenceCache>,
}

impl EngineLoop {
    fn new(
        model: Transformer,
        tokenizer: Arc<Tokenizer>,
        config: EngineConfig,
        shared: Arc<Shared>,
        commands: std_mpsc::Receiver<Command>,
    ) -> Self {
        EngineLoop {
            model,
            tokenizer,
            config,
            shared,
            commands,
            waiting: VecDeque::new(),
            running: Vec::new(),
            retained: PrefixCache::default(),
        }
    }

    fn run(mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.commands.recv() {
                    Ok(command) => {
                        if !self.handle(command) {
                            break;
                        }
                    }
                    Err(_) => break, // every handle is gone
                }
            }
            let mut open = true;
            while let Ok(command) = self.commands.try_recv() {
                open &= self.handle(command);
            }
            if !open {
                break;
            }
            self.drop_cancelled();
            self.admit();
            if !self.running.is_empty() {
                self.step();
            }
            self.publish();
        }
        for pending in self.waiting.drain(..) {
            let _ = pending.events.send(GenerationEvent::Error(ModelError::EngineStopped));
        }
        let mut stopped: Vec<Sequence> = self.running.drain(..).collect();
        self.shared.in_flight.store(0, Ordering::Relaxed);
        self.publish();
        for seq in &mut stopped {
            seq.fail(ModelError::EngineStopped);
            seq.send_final_event();
        }
    }

    /// Returns false on shutdown.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Submit(pending) => {
                self.waiting.push_back(*pending);
                true
            }
            Command::Shutdown => false,
        }
    }

    fn drop_cancelled(&mut self) {
        let before = self.waiting.len() + self.running.len();
        self.waiting.retain(|p| !p.is_cancelled());
        let mut cancelled = Vec::new();
        for i in (0..self.running.len()).rev() {
            if self.running[i].is_cancelled() {
                cancelled.push(self.running.remove(i));
            }
        }
        // What a cancelled sequence cached stays reusable; the rest of it is dropped here.
        for mut seq in cancelled {
            self.retain(&mut seq);
        }
        self.ended(before - self.waiting.len() - self.running.len());
    }

    fn step(&mut self) {
        let views: Vec<SequenceView> =
            self.running.iter().map(|s| SequenceView { cached: s.cache.len(), known: s.tokens.len() }).collect();
        let plan = plan_step(&views, self.config.max_prefill_tokens);
        let scheduled: Vec<usize> = plan.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, _)| i).collect();

        // Where each scheduled chunk starts, and whether it returns logits for all positions.
        let mut starts = Vec::with_capacity(scheduled.len());
        let mut chunks = Vec::with_capacity(scheduled.len());
        // Constraints of the sequences that sample after this forward: their masks are
        // computed meanwhile.
        let mut masks: Vec<&mut ConstraintState> = Vec::new();
        for (seq, &n) in self.running.iter_mut().zip(&plan) {
            if n == 0 {
                continue;
            }
            let all_logits = seq.wants_all_logits();
            let Sequence { cache, tokens, constraint, .. } = seq;
            let start = cache.len();
            starts.push((start, all_logits));
            if start + n == tokens.len()
                && let Some(c) = constraint.as_mut().filter(|c| c.is_active())
            {
                masks.push(c);
            }
            chunks.push(ForwardChunk { cache, tokens: &tokens[start..start + n], all_logits });
        }
        let model = &self.model;
        let result = if masks.is_empty() {
            model.forward(&mut chunks)
        } else {
            std::thread::scope(|scope| {
                scope.spawn(move || prepare_masks(masks));
                model.forward(&mut chunks)
            })
        };
        drop(chunks);
        let step = self.shared.steps.fetch_add(1, Ordering::Relaxed);

        let mut finished = vec![false; self.running.len()];
        match result {
            Ok(logits) => {
                for (row, &i) in scheduled.iter().enumerate() {
                    let seq = &mut self.running[i];
                    if let (start, true) = starts[row] {
                        seq.score_prompt(start, logits.chunk(row), logits.vocab());
                    }
                    if seq.cache.len() < seq.tokens.len() {
                        continue; // mid-prefill: nothing to sample yet
                    }
                    if let Progress::Finished = seq.accept_logits(logits.last_row(row), &self.tokenizer, step) {
                        finished[i] = true;
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "forward step failed");
                for &i in &scheduled {
                    self.running[i].fail(ModelError::Internal(format!("forward step failed: {}", e.kind())));
                    finished[i] = true;
                }
            }
        }
        let mut done = Vec::new();
        for i in (0..self.running.len()).rev() {
            if finished[i] {
                done.push(self.running.remove(i));
            }
        }
        self.ended(done.len());
        for seq in &mut done {
            self.retain(seq);
        }
        self.publish();
        for mut seq in done {
            seq.send_final_event();
        }
    }

    /// `count` requests left the engine (finished, failed or cancelled).
    fn ended(&self, count: usize) {
        if count > 0 {
            self.shared.in_flight.fetch_sub(count, Ordering::AcqRel);
        }
    }

    fn publish(&self) {
        self.shared.running.store(self.running.len(), Ordering::Relaxed);
        let running: usize = self.running.iter().map(|s| s.cache.capacity()).sum();
        self.shared.kv_allocated.store(running + self.retained.cost(), Ordering::Relaxed);
        self.shared.kv_retained.store(self.retained.cost(), Ordering::Relaxed);
    }
}

/// Computes the next token's mask of each constraint, in parallel when there are several.
fn prepare_masks(mut masks: Vec<&mut ConstraintState>) {
    use rayon::prelude::*;
    if masks.len() == 1 {
        masks.iter_mut().for_each(|c| c.prepare_mask());
    } else {
        masks.par_iter_mut().for_each(|c| c.prepare_mask());
    }
}
