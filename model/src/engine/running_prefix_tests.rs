//! The engine loop driven by hand on a tiny synthetic model (host cache): requests that
//! arrive together share the prompt blocks the first one writes, only written blocks are
//! ever findable, the budget counts a shared block once, eviction passes over published
//! blocks that running sequences hold, and a cancelled or failed sharer harms no other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::super::engine_loop::EngineLoop;
use super::super::sequence::Pending;
use super::super::supervisor::Supervisor;
use super::super::{Command, EngineConfig, GenerateRequest, GenerationEvent, Shared};
use crate::device::DeviceSpec;
use crate::kv_cache::KV_BLOCK_TOKENS;
use crate::model::{LoadOptions, ModelLoader};

const B: usize = KV_BLOCK_TOKENS;

struct Harness {
    engine: EngineLoop,
    // Kept so the command channel stays open.
    _commands: std_mpsc::Sender<Command>,
}

fn harness(config: EngineConfig) -> Harness {
    let loader = ModelLoader::open("synthetic:tiny").expect("open");
    let model = loader.load(&LoadOptions { device: DeviceSpec::Flex, ..Default::default() }, &mut |_, _| {}).expect("load");
    let (commands, receiver) = std_mpsc::channel();
    let shared = Arc::new(Shared::new(config.kv_cache_tokens));
    let engine = EngineLoop::new(model, loader.info().tokenizer.clone(), config, shared, receiver);
    Harness { engine, _commands: commands }
}

fn config(prefix_cache: bool) -> EngineConfig {
    EngineConfig { max_prefill_tokens: B, prefix_cache, prepare_grammar_tables: false, ..EngineConfig::default() }
}

/// `n` tokens; prompts with the same `seed` are equal, others differ from the first token.
fn prompt(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 7 + seed * 13) % 250).collect()
}

struct Client {
    events: mpsc::UnboundedReceiver<GenerationEvent>,
    cancelled: Arc<AtomicBool>,
}

#[derive(Debug, PartialEq)]
struct Outcome {
    ids: Vec<u32>,
    cached: Option<usize>,
    failed: bool,
}

impl Client {
    fn outcome(&mut self) -> Outcome {
        let mut out = Outcome { ids: Vec::new(), cached: None, failed: false };
        while let Ok(event) = self.events.try_recv() {
            match event {
                GenerationEvent::Token { id, .. } => out.ids.push(id),
                GenerationEvent::Finished { usage, .. } => out.cached = Some(usage.cached_prompt_tokens),
                GenerationEvent::Error(_) => out.failed = true,
                GenerationEvent::PromptLogprobs(_) => {}
            }
        }
        out
    }
}

impl Harness {
    fn submit(&mut self, prompt: Vec<u32>, max_tokens: usize) -> Client {
        let mut request = GenerateRequest::greedy(prompt, max_tokens);
        request.ignore_eos = true;
        let (events, receiver) = mpsc::unbounded_channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        self.engine.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        self.engine.waiting.push_back(Pending {
            request,
            constraint: None,
            events,
            cancelled: cancelled.clone(),
            submitted: Instant::now(),
            arrived_step: 0,
        });
        Client { events: receiver, cancelled }
    }

    /// One turn of the engine loop; then checks that no published block is unwritten.
    fn turn(&mut self) {
        let e = &mut self.engine;
        e.drop_cancelled();
        e.admit();
        if !e.running.is_empty() {
            e.step();
        }
        // Block j of an entry is block j of every sequence that holds it: written there.
        for entry in e.retained.payloads() {
            assert_eq!(entry.len(), entry.blocks().len() * B, "entries hold whole blocks");
            for (j, id) in entry.blocks().iter().enumerate() {
                for seq in e.running.iter().filter(|s| s.cache.blocks().get(j) == Some(id)) {
                    assert!(seq.cache.len() >= (j + 1) * B, "block {j} is published before it is written");
                }
            }
        }
    }

    /// Runs until nothing is left; returns the most pool blocks used after any turn.
    fn run(&mut self) -> usize {
        let mut peak = 0;
        while !(self.engine.running.is_empty() && self.engine.waiting.is_empty()) {
            self.turn();
            peak = peak.max(self.used_blocks());
        }
        peak
    }

    fn used_blocks(&self) -> usize {
        self.engine.model.kv_pool().used_blocks()
    }

    /// What the engine published once idle agrees with its pool: everything held is the
    /// prefix cache's.
    fn assert_idle_consistent(&self) {
        let shared = &self.engine.shared;
        let used = self.used_blocks() * B;
        assert_eq!(self.engine.running_held(), 0);
        assert_eq!(shared.kv_allocated.load(Ordering::Relaxed), used);
        assert_eq!(shared.kv_retained.load(Ordering::Relaxed), used);
        assert_eq!(shared.in_flight.load(Ordering::Relaxed), 0);
    }
}

/// Outputs of `prompts` run together with the prefix cache off.
fn unshared(prompts: &[Vec<u32>], max_tokens: usize) -> (Vec<Vec<u32>>, usize) {
    let mut h = harness(config(false));
    let mut clients: Vec<Client> = prompts.iter().map(|p| h.submit(p.clone(), max_tokens)).collect();
    let peak = h.run();
    (clients.iter_mut().map(|c| c.outcome().ids).collect(), peak)
}

#[test]
fn requests_arriving_together_share_the_prompt_the_first_one_prefills() {
    let prompts = vec![prompt(1, 200); 4];
    let (reference, unshared_peak) = unshared(&prompts, 8);
    let mut h = harness(config(true));
    let mut clients: Vec<Client> = prompts.iter().map(|p| h.submit(p.clone(), 8)).collect();
    h.turn();
    assert_eq!((h.engine.running.len(), h.engine.waiting.len()), (1, 3), "the others wait for the shared prompt");
    let peak = h.run();
    let outs: Vec<Outcome> = clients.iter_mut().map(Client::outcome).collect();
    for (i, (out, want)) in outs.iter().zip(&reference).enumerate() {
        assert_eq!(&out.ids, want, "request {i}");
    }
    let cached: Vec<Option<usize>> = outs.iter().map(|o| o.cached).collect();
    assert_eq!(cached, [Some(0), Some(3 * B), Some(3 * B), Some(3 * B)]);
    let shared = &h.engine.shared;
    assert_eq!(shared.prefix_hits_tokens.load(Ordering::Relaxed), 9 * B as u64);
    assert_eq!(shared.prefix_queries_tokens.load(Ordering::Relaxed), 800);
    // Unshared, 4 blocks each (208 positions), 11 at once as they come and go here; shared:
    // the first's 4 and one of each other's.
    assert!(peak <= 7 && peak < unshared_peak, "{peak} blocks used at most, {unshared_peak} unshared");
    h.assert_idle_consistent();
}

#[test]
fn a_request_shares_only_the_blocks_already_written_and_then_prefills_its_own() {
    let first = prompt(1, 200);
    // The same two first blocks, then other tokens.
    let mut second = first[..2 * B].to_vec();
    second.extend(prompt(2, 72));
    let (reference, _) = unshared(&[first.clone(), second.clone()], 6);
    let mut h = harness(config(true));
    let mut a = h.submit(first.clone(), 6);
    h.turn();
    // One block of the first prompt written: only it is findable.
    assert_eq!(h.engine.retained.lookup(&first).map(|hit| hit.tokens), Some(B));
    let mut b = h.submit(second.clone(), 6);
    h.turn();
    assert_eq!(h.engine.waiting.len(), 1, "the second waits for the common second block");
    h.turn();
    assert_eq!(h.engine.running.len(), 2);
    let blocks = |h: &Harness, i: usize| h.engine.running[i].cache.blocks().to_vec();
    assert_eq!(blocks(&h, 0)[..2], blocks(&h, 1)[..2], "the written blocks are shared");
    h.turn();
    let (a_blocks, b_blocks) = (blocks(&h, 0), blocks(&h, 1));
    assert!(a_blocks.len() >= 3 && b_blocks.len() >= 3, "both prefill their third block");
    assert_ne!(a_blocks[2], b_blocks[2], "the second writes its own third block");
    h.run();
    let (a, b) = (a.outcome(), b.outcome());
    assert_eq!((a.ids, b.ids), (reference[0].clone(), reference[1].clone()));
    assert_eq!((a.cached, b.cached), (Some(0), Some(2 * B)));
    h.assert_idle_consistent();
}

#[test]
fn a_block_shared_with_a_running_sequence_counts_once_and_is_not_evicted_for_room() {
    let prompts = vec![prompt(3, 200); 2];
    let (reference, _) = unshared(&prompts, 8);
    // Room for the first (4 blocks) and the second's own block: five. Counting the shared
    // blocks twice (4 + 4) would keep the second waiting until the first is done.
    let mut h = harness(EngineConfig { kv_cache_tokens: 5 * B, ..config(true) });
    let mut clients: Vec<Client> = prompts.iter().map(|p| h.submit(p.clone(), 8)).collect();
    let mut together = false;
    while h.engine.running.len() + h.engine.waiting.len() > 0 {
        h.turn();
        assert!(h.used_blocks() <= 5, "the budget holds");
        if h.engine.running.len() == 2 && !together {
            together = true;
            // A published prompt whose blocks a running sequence holds frees nothing: even
            // a budget of nothing evicts it not.
            let budget = std::mem::replace(&mut h.engine.config.kv_cache_tokens, 0);
            h.engine.trim_retained();
            h.engine.config.kv_cache_tokens = budget;
            assert_eq!(h.engine.retained.lookup(&prompts[0]).map(|hit| hit.tokens), Some(3 * B));
        }
    }
    assert!(together, "both ran at once");
    for (client, want) in clients.iter_mut().zip(&reference) {
        assert_eq!(&client.outcome().ids, want);
    }
    h.assert_idle_consistent();
}

#[test]
fn a_cancelled_publisher_or_sharer_leaves_the_others_right() {
    let prompts = vec![prompt(4, 200); 3];
    let (reference, _) = unshared(&prompts, 10);
    let mut h = harness(config(true));
    let mut clients: Vec<Client> = prompts.iter().map(|p| h.submit(p.clone(), 10)).collect();
    while h.engine.running.len() < 3 {
        h.turn();
    }
    h.turn();
    // The one that prefilled and published, and one that shares it, leave.
    clients[0].cancelled.store(true, Ordering::Relaxed);
    clients[2].cancelled.store(true, Ordering::Relaxed);
    h.run();
    let out = clients[1].outcome();
    assert_eq!(out.ids, reference[1]);
    assert_eq!(out.cached, Some(3 * B));
    h.assert_idle_consistent();
}

#[test]
fn a_failed_step_withdraws_what_its_sequences_published() {
    let first = prompt(5, 200);
    let mut h = harness(config(true));
    let mut a = h.submit(first.clone(), 8);
    h.turn();
    h.turn();
    assert_eq!(h.engine.retained.lookup(&first).map(|hit| hit.tokens), Some(2 * B));
    let mut supervisor = Supervisor::default();
    h.engine.recover("test failure", &mut supervisor);
    assert!(a.outcome().failed);
    assert_eq!(h.engine.retained.lookup(&first), None, "nothing of a failed sequence stays findable");
    assert_eq!(h.used_blocks(), 0);
    // The same prompt again runs from scratch and equals the unshared output.
    let (reference, _) = unshared(std::slice::from_ref(&first), 8);
    let mut again = h.submit(first, 8);
    h.run();
    let out = again.outcome();
    assert_eq!((out.ids, out.cached), (reference[0].clone(), Some(0)));
    h.assert_idle_consistent();
}
