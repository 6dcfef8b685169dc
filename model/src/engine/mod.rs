//! The batching engine: a dedicated thread that owns the model and its device, and serves
//! every request with continuous batching.
//!
//! Clients hold an [`EngineHandle`]: [`EngineHandle::submit`] queues a validated request and
//! returns its [`EventStream`]. Each step the engine drops cancelled sequences, admits
//! waiting ones while the sequence limit and the KV-cache budget allow, runs one batched
//! forward (decode tokens plus prefill chunks, see [`scheduler`]) and samples one token for
//! every sequence whose prompt is fully cached. Finished sequences leave at once; their
//! caches stay in the prefix cache ([`prefix_cache`], [`admission`]) until the KV budget needs
//! the room, and a new prompt that starts with the same tokens shares them instead of
//! prefilling. Running sequences publish their written prompt blocks there too, so requests
//! that arrive together with one long prefix prefill it once ([`running_prefix`]). The thread never blocks the async runtime: events go out over unbounded
//! channels and the thread sleeps on its command channel when idle.
//!
//! Constrained sequences ([`crate::constraint`]) are compiled at submission; in a step, their
//! token masks are computed on a helper thread while the forward runs on the engine thread
//! (CubeCL binds its streams to the thread that created them). Sequences that want prompt
//! logprobs get logits for every position of their prefill chunks.
//!
//! A panic inside a step fails that step's sequences and the engine serves on; repeated
//! failures stop it ([`supervisor`]). Its [`EngineState`] is published on a watch channel.

mod admission;
pub mod api;
mod engine_loop;
mod prefix_cache;
mod running_prefix;
mod scheduler;
mod sequence;
pub mod supervisor;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc as std_mpsc};
use std::time::Instant;

use tokio::sync::{mpsc, watch};

pub use api::*;
pub use scheduler::{SchedulerPolicy, Scheduling, SequenceView, StepCost, plan, plan_step};
pub use supervisor::{EngineState, FaultInjection, MAX_CONSECUTIVE_STEP_FAILURES};

use crate::constraint::{Constraint, ConstraintCompiler};
use crate::device::memory_budget::{KvRequest, MemoryReport};
use crate::error::{ModelError, Result};
use crate::model::{LoadOptions, ModelLoader};
use engine_loop::EngineLoop;
use sequence::Pending;
use supervisor::panic_message;

/// Limits of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Sequences decoded together in one batch.
    pub max_num_seqs: usize,
    /// Requests that may wait for a slot; beyond that `submit` answers `Overloaded`.
    pub max_queue: usize,
    /// Prompt tokens prefilled per step at most (the chunk size of chunked prefill); the
    /// latency policy prefills fewer while streams decode ([`scheduler`]).
    pub max_prefill_tokens: usize,
    /// KV-cache positions all sequences together may hold, running and retained ones (the
    /// ceiling when `size_kv_cache_by_device`).
    pub kv_cache_tokens: usize,
    /// On a GPU device, size the KV budget from the memory left after weights and workspace,
    /// `kv_cache_tokens` at most (`--kv-cache-tokens` not given); off: `kv_cache_tokens`
    /// exactly, refused at load when it does not fit ([`crate::device::memory_budget`]).
    pub size_kv_cache_by_device: bool,
    /// Device memory the model may use (`--gpu-memory-limit`), instead of what the device
    /// reports free.
    pub gpu_memory_limit: Option<u64>,
    /// Keep finished sequences' caches and reuse their longest prefix for new prompts.
    pub prefix_cache: bool,
    /// How prefill is handed out and waiting requests admitted ([`scheduler`]).
    pub scheduling: Scheduling,
    /// Test-only: make chosen steps panic ([`supervisor`]). `None` in every real deployment.
    pub fault_injection: Option<FaultInjection>,
    /// Build the grammar compiler's token tables on a helper thread as soon as the model is
    /// loaded, so the first structured-output request does not wait for them. Off where no
    /// request will carry a constraint (`stellarchat generate`): on a 2-core machine the
    /// build (seconds for a 262k vocabulary) would take a core from the first prefill.
    pub prepare_grammar_tables: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_num_seqs: 16, max_queue: 256, max_prefill_tokens: 256, kv_cache_tokens: 65_536,
            size_kv_cache_by_device: true,
            gpu_memory_limit: None,
            prefix_cache: true,
            scheduling: Scheduling::default(),
            fault_injection: None,
            prepare_grammar_tables: true,
        }
    }
}

/// State shared between the engine thread and its handles.
struct Shared {
    state: watch::Sender<EngineState>,
    /// Steps that panicked since start, for `engine_failures_total`.
    step_failures: AtomicU64,
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
    /// The KV budget in tokens: the configured one until the load's memory check sizes it.
    kv_budget: AtomicUsize,
    /// The load's memory check (GPU devices).
    memory: OnceLock<MemoryReport>,
}

impl Shared {
    fn new(kv_budget: usize) -> Self {
        Shared {
            state: watch::Sender::new(EngineState::Loading),
            step_failures: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            kv_allocated: AtomicUsize::new(0),
            kv_retained: AtomicUsize::new(0),
            prefix_queries_tokens: AtomicU64::new(0),
            prefix_hits_tokens: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            kv_budget: AtomicUsize::new(kv_budget),
            memory: OnceLock::new(),
        }
    }

    /// Publishes `state` unless the engine already ended: a failure stays the last word.
    fn set_state(&self, state: EngineState) {
        self.state.send_if_modified(|current| {
            if current.is_terminal() {
                return false;
            }
            *current = state;
            true
        });
    }
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
        let shared = Arc::new(Shared::new(config.kv_cache_tokens));
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
            let request = KvRequest {
                tokens: config.kv_cache_tokens,
                sized_by_device: config.size_kv_cache_by_device,
                max_prefill_tokens: config.max_prefill_tokens,
                max_num_seqs: config.max_num_seqs,
            };
            let check_and_load = || {
                let (kv_tokens, memory) = loader.check_memory(&options, config.gpu_memory_limit, &request)?;
                loader.load(&options, &mut *progress).map(|model| (model, kv_tokens, memory))
            };
            let loaded = catch_unwind(AssertUnwindSafe(check_and_load)).unwrap_or_else(|panic| {
                Err(ModelError::DeviceUnavailable {
                    requested: options.device.to_string(),
                    reason: format!("the backend failed while opening the device: {}", panic_message(&*panic)),
                })
            });
            // The model holds its own copy of every tensor: unmap the file now, or its pages,
            // read once while loading, would stay in the process's resident memory.
            drop(loader);
            match loaded {
                Ok((model, kv_tokens, memory)) => {
                    let config = EngineConfig { kv_cache_tokens: kv_tokens, ..config };
                    shared.kv_budget.store(kv_tokens, Ordering::Relaxed);
                    if let Some(memory) = memory {
                        crate::device::memory_budget::log_after_load(&memory, model.device());
                        let _ = shared.memory.set(memory);
                    }
                    // The grammar compiler's token tables take ~0.5 s (more for a 262k
                    // vocabulary): build them beside the engine now rather than on the async
                    // worker of the first structured-output request.
                    if config.prepare_grammar_tables {
                        let _ = std::thread::Builder::new()
                            .name("stellarchat-grammar-tables".into())
                            .spawn(move || constraints.prepare());
                    }
                    shared.set_state(EngineState::Ready);
                    EngineLoop::new(model, tokenizer, config, shared.clone(), receiver).run();
                }
                Err(e) => {
                    tracing::error!(error = %e, "loading the model failed");
                    shared.set_state(EngineState::Failed(Arc::new(e)));
                }
            }
            shared.set_state(EngineState::Stopped);
        });
        if let Err(e) = spawned {
            handle.shared.set_state(EngineState::Failed(Arc::new(ModelError::Internal(format!(
                "cannot start the engine thread: {e}"
            )))));
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
        match &*self.shared.state.borrow() {
            EngineState::Ready => {}
            EngineState::Loading => return Err(ModelError::NotReady),
            EngineState::Failed(_) | EngineState::Stopped => return Err(ModelError::EngineStopped),
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
        let pending = Pending {
            request,
            constraint,
            events: sender,
            cancelled: cancelled.clone(),
            submitted: Instant::now(),
            arrived_step: 0, // set by the engine thread when the request reaches it
        };
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
        let budget = self.shared.kv_budget.load(Ordering::Relaxed).max(1) as f64;
        EngineStats {
            running,
            waiting: self.shared.in_flight.load(Ordering::Relaxed).saturating_sub(running),
            kv_cache_usage: allocated as f64 / budget,
            prefix_cache_usage: retained as f64 / budget,
            prefix_cache_queries_tokens: self.shared.prefix_queries_tokens.load(Ordering::Relaxed),
            prefix_cache_hits_tokens: self.shared.prefix_hits_tokens.load(Ordering::Relaxed),
            steps: self.shared.steps.load(Ordering::Relaxed),
            step_failures: self.shared.step_failures.load(Ordering::Relaxed),
            memory: self.shared.memory.get().copied(),
        }
    }

    /// The engine's state now.
    pub fn state(&self) -> EngineState {
        self.shared.state.borrow().clone()
    }

    /// A receiver that sees every change of state (loading → ready → failed or stopped).
    pub fn watch_state(&self) -> watch::Receiver<EngineState> {
        self.shared.state.subscribe()
    }

    pub fn is_ready(&self) -> bool {
        self.shared.state.borrow().is_ready()
    }

    /// Why the engine failed (to load, or later), if it did.
    pub fn failure(&self) -> Option<Arc<ModelError>> {
        match &*self.shared.state.borrow() {
            EngineState::Failed(e) => Some(e.clone()),
            _ => None,
        }
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

