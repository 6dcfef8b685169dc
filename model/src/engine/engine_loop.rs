//! The engine thread's loop: admission, one batched step at a time, and recovery when a
//! step panics. Everything here runs on the engine thread; handles talk to it through the
//! command channel and read what it publishes in [`Shared`].

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::Instant;

use super::prefix_cache::PrefixCache;
use super::sequence::{Pending, Progress, Sequence};
use super::supervisor::{Supervisor, Verdict, panic_message};
use super::{Command, EngineConfig, EngineState, GenerationEvent, SequenceView, Shared, plan};
use crate::constraint::ConstraintState;
use crate::error::ModelError;
use crate::kv_cache::SequenceCache;
use crate::tokenizer::Tokenizer;
use crate::transformer::{ForwardChunk, Transformer};

pub(super) struct EngineLoop {
    pub(super) model: Transformer,
    pub(super) tokenizer: Arc<Tokenizer>,
    pub(super) config: EngineConfig,
    pub(super) shared: Arc<Shared>,
    pub(super) commands: std_mpsc::Receiver<Command>,
    pub(super) waiting: VecDeque<Pending>,
    pub(super) running: Vec<Sequence>,
    /// Caches of finished sequences, and the written prompt blocks of running ones, by the
    /// tokens they hold.
    pub(super) retained: PrefixCache<SequenceCache>,
}

impl EngineLoop {
    pub(super) fn new(
        model: Transformer,
        tokenizer: Arc<Tokenizer>,
        config: EngineConfig,
        shared: Arc<Shared>,
        commands: std_mpsc::Receiver<Command>,
    ) -> Self {
        // The device pool then grows in steps no larger than the budget.
        model.kv_pool().set_growth_limit(config.kv_cache_tokens.div_ceil(crate::kv_cache::KV_BLOCK_TOKENS));
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

    pub(super) fn run(mut self) {
        let mut supervisor = Supervisor::default();
        // Set when the supervisor gives up: the last panic's message.
        let mut gave_up: Option<String> = None;
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
            let stepped = catch_unwind(AssertUnwindSafe(|| {
                self.admit();
                let step = !self.running.is_empty();
                if step {
                    self.step();
                }
                step
            }));
            match stepped {
                Ok(true) => supervisor.succeeded(),
                Ok(false) => {}
                Err(panic) => {
                    let message = panic_message(&*panic);
                    if self.recover(&message, &mut supervisor) == Verdict::GiveUp {
                        gave_up = Some(message);
                        break;
                    }
                }
            }
            self.publish();
        }
        // Waiting and running requests end with the failure, or with `EngineStopped`.
        let failures = supervisor.consecutive();
        let why = || match &gave_up {
            Some(last) => ModelError::EngineFailed { failures, last: last.clone() },
            None => ModelError::EngineStopped,
        };
        if gave_up.is_some() {
            let failure = why();
            tracing::error!(error = %failure, "the engine stops serving");
            self.shared.set_state(EngineState::Failed(Arc::new(failure)));
        }
        for pending in self.waiting.drain(..) {
            let _ = pending.events.send(GenerationEvent::Error(why()));
        }
        let mut stopped: Vec<Sequence> = self.running.drain(..).collect();
        self.shared.in_flight.store(0, Ordering::Relaxed);
        self.publish();
        for seq in &mut stopped {
            seq.fail(why());
            seq.send_final_event();
        }
    }

    /// After a panic in admission or a step: every running sequence fails with
    /// `StepFailed` (any of them may have been half-way through a cache write, so none is
    /// kept for the prefix cache), its slot and cache are freed, and the supervisor decides
    /// whether to serve on. Waiting requests are untouched.
    pub(super) fn recover(&mut self, message: &str, supervisor: &mut Supervisor) -> Verdict {
        self.shared.step_failures.fetch_add(1, Ordering::Relaxed);
        let verdict = supervisor.failed();
        tracing::error!(
            panic = message,
            failed_sequences = self.running.len(),
            consecutive = supervisor.consecutive(),
            "an engine step panicked; its sequences fail"
        );
        let mut failed: Vec<Sequence> = self.running.drain(..).collect();
        for seq in &mut failed {
            seq.fail(ModelError::StepFailed(message.to_string()));
            // Its blocks go back (and what it published is withdrawn) before usage is
            // published: a client that sees the error must not see them still held.
            self.retain(seq);
        }
        self.ended(failed.len());
        self.publish();
        for mut seq in failed {
            seq.send_final_event();
        }
        verdict
    }

    /// Returns false on shutdown.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Submit(mut pending) => {
                pending.arrived_step = self.shared.steps.load(Ordering::Relaxed);
                self.waiting.push_back(*pending);
                true
            }
            Command::Shutdown => false,
        }
    }

    pub(super) fn drop_cancelled(&mut self) {
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

    pub(super) fn step(&mut self) {
        let step = self.shared.steps.fetch_add(1, Ordering::Relaxed);
        if self.config.fault_injection.is_some_and(|fault| fault.panics_at(step)) {
            panic!("fault injection: step {step} panics");
        }
        let views: Vec<SequenceView> = self
            .running
            .iter()
            .map(|s| SequenceView {
                cached: s.cache.len(),
                known: s.tokens.len(),
                waited: step.saturating_sub(s.arrived_step),
            })
            .collect();
        let plan = plan(&views, self.config.max_prefill_tokens, &self.config.scheduling);
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
        // The scheduler's cost model (`StepCost`) is fitted to these (`RUST_LOG=...=debug`).
        let forward_started = Instant::now();
        let result = if masks.is_empty() {
            model.forward(&mut chunks)
        } else {
            std::thread::scope(|scope| {
                scope.spawn(move || prepare_masks(masks));
                model.forward(&mut chunks)
            })
        };
        drop(chunks);
        let decode_rows = views.iter().zip(&plan).filter(|(v, n)| **n == 1 && v.known - v.cached == 1).count();
        tracing::debug!(
            decode_rows,
            prefill_tokens = plan.iter().sum::<usize>() - decode_rows,
            forward_us = forward_started.elapsed().as_micros() as u64,
            "engine step"
        );

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
        // Whole prompt blocks written in this step become findable for waiting requests.
        self.publish_prompt_blocks();
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
        // Blocks held, a shared block once; the prefix cache's part is what evicting every
        // retained entry would free.
        let (used, running) = (self.pool_used(), self.running_held());
        self.shared.kv_allocated.store(used, Ordering::Relaxed);
        self.shared.kv_retained.store(used.saturating_sub(running), Ordering::Relaxed);
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
