//! The batching engine end to end: batched greedy output equals each request alone,
//! cancellation frees everything, admission control rejects beyond its limits, and a long
//! prompt is prefilled in chunks without stalling running streams.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use stellarchat_model::ModelError;
use stellarchat_model::device::DeviceSpec;
use stellarchat_model::engine::{Engine, EngineConfig, EngineHandle, EventStream, FinishReason, GenerateRequest, GenerationEvent};
use stellarchat_model::model::{LoadOptions, ModelLoader};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn start(model: &str, config: EngineConfig) -> EngineHandle {
    let loader = ModelLoader::open(model).expect("open model");
    let engine = Engine::spawn(loader, LoadOptions { device: DeviceSpec::Flex, ..Default::default() }, config, Box::new(|_, _| {}));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !engine.is_ready() {
        assert!(engine.load_error().is_none(), "load failed: {:?}", engine.load_error());
        assert!(Instant::now() < deadline, "model did not load");
        std::thread::sleep(Duration::from_millis(5));
    }
    engine
}

fn real_model() -> String {
    repo_root().join("weights/SmolLM2-135M-Instruct.Q4_1.gguf").to_string_lossy().into_owned()
}

struct Outcome {
    ids: Vec<u32>,
    text: String,
    reason: Option<FinishReason>,
    steps: Vec<u64>,
}

fn collect(mut stream: EventStream) -> Outcome {
    let mut out = Outcome { ids: Vec::new(), text: String::new(), reason: None, steps: Vec::new() };
    while let Some(event) = stream.blocking_recv() {
        match event {
            GenerationEvent::Token { id, text, step, .. } => {
                out.ids.push(id);
                out.text.push_str(&text);
                out.steps.push(step);
            }
            GenerationEvent::Finished { reason, text, .. } => {
                out.text.push_str(&text);
                out.reason = Some(reason);
                break;
            }
            GenerationEvent::PromptLogprobs(_) => panic!("prompt logprobs were not asked for"),
            GenerationEvent::Error(e) => panic!("engine error: {e}"),
        }
    }
    out
}

/// Waits until the engine reports nothing running or waiting and no KV cache in use.
fn wait_idle(engine: &EngineHandle) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = engine.stats();
        if stats.running == 0 && stats.waiting == 0 && stats.kv_cache_usage == 0.0 {
            return;
        }
        assert!(Instant::now() < deadline, "engine did not go idle: {stats:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn golden_chats() -> Vec<(String, Vec<u32>, Vec<u32>)> {
    let path = repo_root().join("tests/golden/smollm2-135m-instruct-q4_1.json");
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("golden")).expect("json");
    let ids = |v: &Value| v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect::<Vec<_>>();
    golden["chats"]
        .as_array()
        .expect("chats")
        .iter()
        .map(|c| (c["name"].as_str().expect("name").to_string(), ids(&c["ids"]), ids(&c["reference_greedy"])))
        .collect()
}

#[test]
fn concurrent_greedy_requests_equal_the_reference_alone_and_batched() {
    let engine = start(&real_model(), EngineConfig { max_prefill_tokens: 48, ..EngineConfig::default() });
    let chats = golden_chats();
    // Alone, one after another.
    for (name, prompt, expected) in &chats {
        let out = collect(engine.submit(GenerateRequest::greedy(prompt.clone(), expected.len())).expect("submit"));
        assert_eq!(&out.ids, expected, "{name} alone");
    }
    // All at once, twice over: eight sequences of different lengths share every step, and
    // the 48-token prefill budget splits prompts across steps.
    let streams: Vec<_> = chats
        .iter()
        .chain(chats.iter())
        .map(|(_, prompt, expected)| engine.submit(GenerateRequest::greedy(prompt.clone(), expected.len())).expect("submit"))
        .collect();
    for (stream, (name, _, expected)) in streams.into_iter().zip(chats.iter().chain(chats.iter())) {
        let out = collect(stream);
        assert_eq!(&out.ids, expected, "{name} batched");
    }
    wait_idle(&engine);
}

#[test]
fn capital_chat_answers_paris_with_stop_and_text() {
    let engine = start(&real_model(), EngineConfig::default());
    let (_, prompt, _) = golden_chats().into_iter().next().expect("capital chat");
    let out = collect(engine.submit(GenerateRequest::greedy(prompt.clone(), 64)).expect("submit"));
    assert_eq!(out.text, "The capital of France is Paris.");
    assert_eq!(out.reason, Some(FinishReason::Stop));
    // A stop string ends generation and is not emitted.
    let mut request = GenerateRequest::greedy(prompt, 64);
    request.stop_strings = vec![" Paris".into()];
    let out = collect(engine.submit(request).expect("submit"));
    assert_eq!(out.text, "The capital of France is");
    assert_eq!(out.reason, Some(FinishReason::Stop));
}

#[test]
fn cancelled_streams_free_their_slots_and_cache() {
    let engine = start(&real_model(), EngineConfig { max_num_seqs: 8, ..EngineConfig::default() });
    let (_, prompt, _) = golden_chats().into_iter().nth(1).expect("chat");
    let streams: Vec<EventStream> = (0..20)
        .map(|_| {
            let mut request = GenerateRequest::greedy(prompt.clone(), 12);
            request.ignore_eos = true;
            engine.submit(request).expect("submit")
        })
        .collect();
    let mut kept = Vec::new();
    for (i, mut stream) in streams.into_iter().enumerate() {
        if i % 2 == 0 {
            // Wait for one token so the sequence is mid-way, then drop it.
            if i < 8 {
                assert!(matches!(stream.blocking_recv(), Some(GenerationEvent::Token { .. })));
            }
            drop(stream);
        } else {
            kept.push(stream);
        }
    }
    for stream in kept {
        let out = collect(stream);
        assert_eq!(out.ids.len(), 12);
        assert_eq!(out.reason, Some(FinishReason::Length));
    }
    wait_idle(&engine);
}

#[test]
fn admission_control_rejects_beyond_running_plus_queue() {
    let engine = start("synthetic:tiny", EngineConfig { max_num_seqs: 2, max_queue: 2, ..EngineConfig::default() });
    let long = || {
        let mut r = GenerateRequest::greedy(vec![5, 6, 7], 400);
        r.ignore_eos = true;
        r
    };
    let accepted: Vec<EventStream> = (0..4).map(|_| engine.submit(long()).expect("within limits")).collect();
    match engine.submit(long()) {
        Err(ModelError::Overloaded(_)) => {}
        Err(other) => panic!("expected Overloaded, got {other}"),
        Ok(_) => panic!("the fifth request must be rejected"),
    }
    for stream in accepted {
        let out = collect(stream);
        assert_eq!(out.ids.len(), 400, "an accepted request was harmed");
    }
    wait_idle(&engine);
    // Capacity is back once they are done.
    collect(engine.submit(long()).expect("accepted again"));
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks_while_streams_keep_flowing() {
    let chunk = 32;
    let engine = start("synthetic:tiny", EngineConfig { max_prefill_tokens: chunk, ..EngineConfig::default() });
    let stream_request = || {
        let mut r = GenerateRequest::greedy(vec![1, 2, 3], 150);
        r.ignore_eos = true;
        r
    };
    let mut short_a = engine.submit(stream_request()).expect("a");
    let mut short_b = engine.submit(stream_request()).expect("b");
    for s in [&mut short_a, &mut short_b] {
        assert!(matches!(s.blocking_recv(), Some(GenerationEvent::Token { .. })));
    }
    let prompt: Vec<u32> = (0..400).map(|i| (i * 7 % 250) as u32).collect();
    let long = engine.submit(GenerateRequest::greedy(prompt.clone(), 1)).expect("long");
    let long_out = collect(long);
    let (a, b) = (collect(short_a), collect(short_b));
    let first_long_step = long_out.steps[0];
    let prefill_steps = prompt.len().div_ceil(chunk) as u64;
    for out in [&a, &b] {
        // Every step while the long prompt was prefilled also produced a token for each stream.
        let during: Vec<u64> = out.steps.iter().copied().filter(|&s| s + prefill_steps >= first_long_step && s <= first_long_step).collect();
        assert!(during.len() as u64 >= prefill_steps, "streams stalled: {during:?}");
        assert!(during.windows(2).all(|w| w[1] == w[0] + 1), "a stream skipped a step: {during:?}");
    }
    wait_idle(&engine);
}
