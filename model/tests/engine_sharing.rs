//! The engine shares the prompt blocks of running sequences: requests submitted together
//! with one long system prompt prefill it once and answer as if each ran alone, the hits are
//! counted, and a sharer that is cancelled or fails harms no other and leaves nothing stale.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use stellarchat_model::chat_template::ChatMessage;
use stellarchat_model::device::DeviceSpec;
use stellarchat_model::engine::{
    Engine, EngineConfig, EngineHandle, EventStream, FaultInjection, GenerateRequest, GenerationEvent,
};
use stellarchat_model::model::{LoadOptions, ModelLoader};

const BLOCK: usize = 64;

fn real_model() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../weights/SmolLM2-135M-Instruct.Q4_1.gguf").to_string_lossy().into_owned()
}

fn start(config: EngineConfig) -> EngineHandle {
    let loader = ModelLoader::open(&real_model()).expect("open model");
    let options = LoadOptions { device: DeviceSpec::Flex, ..Default::default() };
    let config = EngineConfig { prepare_grammar_tables: false, ..config };
    let engine = Engine::spawn(loader, options, config, Box::new(|_, _| {}));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !engine.is_ready() {
        assert!(engine.failure().is_none(), "load failed: {:?}", engine.failure());
        assert!(Instant::now() < deadline, "model did not load");
        std::thread::sleep(Duration::from_millis(5));
    }
    engine
}

/// About 150 tokens of system prompt (more than two whole blocks) before each question.
const SYSTEM: &str = "You are a concise assistant for a small bakery in Lyon. The bakery opens at seven in the \
morning and closes at seven in the evening, every day except Monday. It sells baguettes, croissants, pain au \
chocolat, brioche, fruit tarts and a rye loaf baked on Thursdays only. Orders of more than twenty items must be \
placed a day ahead. Payment is by card or cash. The owner is called Camille and has run the shop since 2009. \
Answer questions from customers in one or two short sentences, in English, and never invent products.";

fn prompts(questions: &[&str]) -> Vec<Vec<u32>> {
    let info = ModelLoader::open(&real_model()).expect("open model").info();
    let template = info.chat_template.as_ref().expect("chat template");
    questions
        .iter()
        .map(|q| {
            let messages = [ChatMessage::new("system", SYSTEM), ChatMessage::new("user", *q)];
            info.tokenizer.encode_prompt(&template.render(&messages, true).expect("render")).expect("encode")
        })
        .collect()
}

/// Generated ids and cached prompt tokens, or the error that ended the stream.
fn collect(mut stream: EventStream) -> Result<(Vec<u32>, usize), String> {
    let mut ids = Vec::new();
    while let Some(event) = stream.blocking_recv() {
        match event {
            GenerationEvent::Token { id, .. } => ids.push(id),
            GenerationEvent::Finished { usage, .. } => return Ok((ids, usage.cached_prompt_tokens)),
            GenerationEvent::Error(e) => return Err(e.kind().to_string()),
            GenerationEvent::PromptLogprobs(_) => {}
        }
    }
    Err("the stream ended without a final event".into())
}

fn submit_all(engine: &EngineHandle, prompts: &[Vec<u32>], max_tokens: usize) -> Vec<EventStream> {
    prompts.iter().map(|p| engine.submit(GenerateRequest::greedy(p.clone(), max_tokens)).expect("submit")).collect()
}

/// Waits until nothing runs or waits and only the prefix cache holds KV blocks.
fn wait_idle(engine: &EngineHandle) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = engine.stats();
        if stats.running == 0 && stats.waiting == 0 && stats.kv_cache_usage == stats.prefix_cache_usage {
            return;
        }
        assert!(Instant::now() < deadline, "engine did not go idle: {stats:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Greedy outputs of `prompts` on an engine without the prefix cache, all at once.
fn reference(prompts: &[Vec<u32>], max_tokens: usize) -> Vec<Vec<u32>> {
    let fresh = start(EngineConfig { prefix_cache: false, ..EngineConfig::default() });
    submit_all(&fresh, prompts, max_tokens).into_iter().map(|s| collect(s).expect("reference").0).collect()
}

#[test]
fn requests_submitted_together_prefill_their_common_system_prompt_once() {
    let prompts = prompts(&["When do you open?", "Who owns the shop?", "Can I pay by card?", "Do you sell rye bread?"]);
    let common = prompts[0].iter().zip(&prompts[1]).take_while(|(a, b)| a == b).count() / BLOCK * BLOCK;
    assert!(common >= 2 * BLOCK, "the system prompt spans {common} whole-block tokens");
    let expected = reference(&prompts, 8);
    let engine = start(EngineConfig::default());
    let outs: Vec<(Vec<u32>, usize)> =
        submit_all(&engine, &prompts, 8).into_iter().map(|s| collect(s).expect("no error")).collect();
    for (i, ((ids, _), want)) in outs.iter().zip(&expected).enumerate() {
        assert_eq!(ids, want, "request {i} differs from its unshared run");
    }
    // Nothing was cached before: the first prefilled the system prompt, the rest shared it
    // while it was still running.
    let cached: Vec<usize> = outs.iter().map(|(_, c)| *c).collect();
    assert_eq!(cached[0], 0);
    assert!(cached[1..].iter().all(|&c| c == common), "{cached:?}, common prefix {common}");
    wait_idle(&engine);
    let stats = engine.stats();
    assert_eq!(stats.prefix_cache_hits_tokens, cached.iter().sum::<usize>() as u64);
    assert_eq!(stats.prefix_cache_queries_tokens, prompts.iter().map(Vec::len).sum::<usize>() as u64);
    assert!(stats.kv_cache_usage > 0.0 && stats.kv_cache_usage <= 1.0, "{stats:?}");
}

#[test]
fn a_cancelled_sharer_leaves_the_others_right() {
    let prompts = prompts(&["When do you open?", "Who owns the shop?", "Can I pay by card?"]);
    let expected = reference(&prompts, 8);
    let engine = start(EngineConfig::default());
    let mut streams = submit_all(&engine, &prompts, 8);
    // The last sharer leaves after its first token; the first (the one that prefilled) stays.
    let mut last = streams.pop().expect("three");
    assert!(matches!(last.blocking_recv(), Some(GenerationEvent::Token { .. })));
    drop(last);
    for (i, (stream, want)) in streams.into_iter().zip(&expected).enumerate() {
        let (ids, cached) = collect(stream).expect("no error");
        assert_eq!(&ids, want, "request {i}");
        assert_eq!(cached > 0, i > 0, "request {i}: {cached} cached");
    }
    wait_idle(&engine);
}

#[test]
fn a_failed_step_leaves_nothing_of_its_sharers_findable() {
    let prompts = prompts(&["When do you open?", "Who owns the shop?"]);
    let expected = reference(&prompts, 8);
    // Step 0 prefills the first prompt; step 1 starts the second on the shared blocks; step 2
    // fails them both.
    let config = EngineConfig { fault_injection: Some(FaultInjection::PanicAtStep(2)), ..EngineConfig::default() };
    let engine = start(config);
    for (i, stream) in submit_all(&engine, &prompts, 8).into_iter().enumerate() {
        assert_eq!(collect(stream), Err("engine_fault".to_string()), "request {i}");
    }
    wait_idle(&engine);
    let stats = engine.stats();
    assert_eq!(stats.kv_cache_usage, 0.0, "a failed sequence leaves no blocks behind: {stats:?}");
    // Again, after the fault: from scratch, the same output as alone.
    for (i, stream) in submit_all(&engine, &prompts, 8).into_iter().enumerate() {
        let (ids, cached) = collect(stream).expect("served after the fault");
        assert_eq!(ids, expected[i], "request {i}");
        assert_eq!(cached > 0, i > 0, "request {i}: {cached} cached");
    }
    wait_idle(&engine);
}

/// Prints the wall time for eight requests submitted together after the same ~300-token
/// system prompt to get their first token, and the prompt tokens prefilled, with the prefix
/// cache off and on: `cargo test ... --test engine_sharing -- --ignored --nocapture together`.
#[test]
#[ignore = "a measurement, not a check"]
fn together_eight_requests_with_and_without_running_prefix_sharing() {
    let questions = [
        "When do you open?", "Who owns the shop?", "Can I pay by card?", "Do you sell rye bread?",
        "Are you open on Monday?", "What is a brioche?", "Can I order forty croissants?", "Do you have fruit tarts?",
    ];
    let info = ModelLoader::open(&real_model()).expect("open model").info();
    let template = info.chat_template.as_ref().expect("chat template");
    let system = format!("{SYSTEM} {SYSTEM}");
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| {
            let messages = [ChatMessage::new("system", system.as_str()), ChatMessage::new("user", *q)];
            info.tokenizer.encode_prompt(&template.render(&messages, true).expect("render")).expect("encode")
        })
        .collect();
    for prefix_cache in [false, true] {
        let engine = start(EngineConfig { prefix_cache, ..EngineConfig::default() });
        let started = Instant::now();
        let outs: Vec<(Vec<u32>, usize)> =
            submit_all(&engine, &prompts, 1).into_iter().map(|s| collect(s).expect("no error")).collect();
        let elapsed = started.elapsed();
        let total: usize = prompts.iter().map(Vec::len).sum();
        let cached: usize = outs.iter().map(|(_, c)| c).sum();
        println!(
            "prefix_cache={prefix_cache}: 8 prompts of ~{} tokens, {} prefilled, {cached} shared, all first tokens in {elapsed:?}",
            prompts[0].len(),
            total - cached
        );
        wait_idle(&engine);
    }
}
