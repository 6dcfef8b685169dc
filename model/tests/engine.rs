//! The batching engine end to end: batched greedy output equals each request alone,
//! cancellation frees everything, admission control rejects beyond its limits, a long
//! prompt is prefilled in chunks without stalling running streams, a short prompt is
//! prefilled before a long one that came first (FIFO: after), and a prefix-cache hit changes
//! nothing but the prefill skipped.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use stellarchat_model::ModelError;
use stellarchat_model::chat_template::ChatMessage;
use stellarchat_model::device::{DeviceSpec, Precision};
use stellarchat_model::engine::{
    Engine, EngineConfig, EngineHandle, EventStream, FinishReason, GenerateRequest, GenerationEvent, Usage,
};
use stellarchat_model::model::{LoadOptions, ModelLoader};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn start(model: &str, config: EngineConfig) -> EngineHandle {
    let loader = ModelLoader::open(model).expect("open model");
    let engine = Engine::spawn(
        loader,
        LoadOptions { device: DeviceSpec::Flex, ..Default::default() },
        config,
        Box::new(|_, _| {}),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !engine.is_ready() {
        assert!(engine.failure().is_none(), "load failed: {:?}", engine.failure());
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
    usage: Usage,
    /// The engine's step count when the request reached it.
    arrived_step: u64,
}

fn collect(mut stream: EventStream) -> Outcome {
    let mut out =
        Outcome {
        ids: Vec::new(),
        text: String::new(),
        reason: None,
        steps: Vec::new(),
        usage: Usage::default(),
        arrived_step: 0,
    };
    while let Some(event) = stream.blocking_recv() {
        match event {
            GenerationEvent::Token { id, text, step, .. } => {
                out.ids.push(id);
                out.text.push_str(&text);
                out.steps.push(step);
            }
            GenerationEvent::Finished { reason, text, usage, timings } => {
                out.text.push_str(&text);
                out.reason = Some(reason);
                out.usage = usage;
                out.arrived_step = timings.arrived_step;
                break;
            }
            GenerationEvent::PromptLogprobs(_) => panic!("prompt logprobs were not asked for"),
            GenerationEvent::Error(e) => panic!("engine error: {e}"),
        }
    }
    out
}

/// Waits until the engine reports nothing running or waiting and no KV cache in use but
/// the prefix cache's.
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

fn golden_chats() -> Vec<(String, Vec<u32>, Vec<u32>)> {
    let path = repo_root().join("tests/golden/smollm2-135m-instruct-q4_1.json");
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("golden")).expect("json");
    let ids =
        |v: &Value| v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect::<Vec<_>>();
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
        .map(|(_, prompt, expected)| {
            engine.submit(GenerateRequest::greedy(prompt.clone(), expected.len())).expect("submit")
        })
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
    let long = || {
        let mut r = GenerateRequest::greedy(vec![5, 6, 7], 400);
        r.ignore_eos = true;
        r
    };
    // A fifth request accepted because one of the first four had already finished (this
    // thread descheduled for their 400 steps on a loaded machine) voids the run; a few voids
    // in a row fail the test.
    for _ in 0..5 {
        let engine = start("synthetic:tiny", EngineConfig { max_num_seqs: 2, max_queue: 2, ..EngineConfig::default() });
        let accepted: Vec<EventStream> = (0..4).map(|_| engine.submit(long()).expect("within limits")).collect();
        let fifth_at = Instant::now();
        let fifth = engine.submit(long());
        let mut first_end = None::<Instant>;
        for mut stream in accepted {
            while let Some(event) = stream.blocking_recv() {
                match event {
                    GenerationEvent::Finished { usage, timings, .. } => {
                        assert_eq!(usage.completion_tokens, 400, "an accepted request was harmed");
                        first_end = Some(first_end.map_or(timings.finished, |t| t.min(timings.finished)));
                    }
                    GenerationEvent::Error(e) => panic!("engine error: {e}"),
                    _ => {}
                }
            }
        }
        match fifth {
            Err(ModelError::Overloaded(_)) => {}
            Err(other) => panic!("expected Overloaded, got {other}"),
            Ok(_) if first_end.is_some_and(|end| end < fifth_at) => continue,
            Ok(_) => panic!("the fifth request must be rejected"),
        }
        wait_idle(&engine);
        // Capacity is back once they are done.
        collect(engine.submit(long()).expect("accepted again"));
        return;
    }
    panic!("in every run a request had finished before the fifth was submitted");
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks_while_streams_keep_flowing() {
    let chunk = 32;
    let engine = start("synthetic:tiny", EngineConfig { max_prefill_tokens: chunk, ..EngineConfig::default() });
    let stream_request = || {
        // Nearly the whole 512-token context: the long prompt must arrive while the streams
        // still run, even when a loaded machine deschedules this thread for a while.
        let mut r = GenerateRequest::greedy(vec![1, 2, 3], 490);
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
    let last_stream_step = a.steps.last().copied().unwrap_or_default().min(b.steps.last().copied().unwrap_or_default());
    assert!(first_long_step <= last_stream_step, "the streams ended before the long prompt was prefilled");
    for out in [&a, &b] {
        // Every step while the long prompt was prefilled also produced a token for each stream.
        let during: Vec<u64> = out
            .steps
            .iter()
            .copied()
            .filter(|&s| s + prefill_steps >= first_long_step && s <= first_long_step)
            .collect();
        assert!(during.len() as u64 >= prefill_steps, "streams stalled: {during:?}");
        assert!(during.windows(2).all(|w| w[1] == w[0] + 1), "a stream skipped a step: {during:?}");
    }
    wait_idle(&engine);
}

/// The default model's tokenizer and chat template, to build multi-turn prompts.
struct Chat {
    info: std::sync::Arc<stellarchat_model::model::ModelInfo>,
}

impl Chat {
    fn open() -> Chat {
        Chat { info: ModelLoader::open(&real_model()).expect("open model").info().clone() }
    }

    /// `turns` alternate user and assistant, after a long shared system prompt.
    fn prompt(&self, turns: &[&str]) -> Vec<u32> {
        self.prompt_with_system(SYSTEM, turns)
    }

    fn prompt_with_system(&self, system: &str, turns: &[&str]) -> Vec<u32> {
        let mut messages = vec![ChatMessage::new("system", system)];
        for (i, turn) in turns.iter().enumerate() {
            messages.push(ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, *turn));
        }
        let template = self.info.chat_template.as_ref().expect("chat template");
        let text = template.render(&messages, true).expect("render");
        self.info.tokenizer.encode_prompt(&text).expect("encode")
    }
}

/// About 150 tokens: more than two whole cache blocks.
const SYSTEM: &str = "You are a concise assistant for a small bakery in Lyon. The bakery opens at seven in the \
morning and closes at seven in the evening, every day except Monday. It sells baguettes, croissants, pain au \
chocolat, brioche, fruit tarts and a rye loaf baked on Thursdays only. Orders of more than twenty items must be \
placed a day ahead. Payment is by card or cash. The owner is called Camille and has run the shop since 2009. \
Answer questions from customers in one or two short sentences, in English, and never invent products.";

const BLOCK: usize = 64;

fn greedy(engine: &EngineHandle, prompt: &[u32]) -> Outcome {
    collect(engine.submit(GenerateRequest::greedy(prompt.to_vec(), 24)).expect("submit"))
}

#[test]
fn a_prefix_cache_hit_gives_the_output_of_a_full_prefill() {
    let chat = Chat::open();
    let cached = start(&real_model(), EngineConfig::default());
    let fresh = start(&real_model(), EngineConfig { prefix_cache: false, ..EngineConfig::default() });

    let first = chat.prompt(&["When do you open?"]);
    let turn1 = greedy(&cached, &first);
    assert_eq!(turn1.usage.cached_prompt_tokens, 0, "nothing was cached yet");
    // The same prompt again: every whole block but the one holding the last token is reused.
    let again = greedy(&cached, &first);
    assert_eq!(again.usage.cached_prompt_tokens, (first.len() - 1) / BLOCK * BLOCK);
    assert_eq!(again.ids, turn1.ids);

    // The next turn sends the whole history: at least the first turn's blocks are reused.
    let second = chat.prompt(&["When do you open?", &turn1.text, "And on Mondays?"]);
    let turn2 = greedy(&cached, &second);
    let hit = turn2.usage.cached_prompt_tokens;
    assert!(hit >= first.len() / BLOCK * BLOCK && hit.is_multiple_of(BLOCK) && hit < second.len(), "{hit} of {}", second.len());
    let reference = greedy(&fresh, &second);
    assert_eq!(reference.usage.cached_prompt_tokens, 0, "the prefix cache is off");
    assert_eq!(turn2.ids, reference.ids, "{:?} vs {:?}", turn2.text, reference.text);
    assert!(!turn2.ids.is_empty());

    let stats = cached.stats();
    assert!(stats.prefix_cache_hits_tokens >= (again.usage.cached_prompt_tokens + hit) as u64);
    assert_eq!(stats.prefix_cache_queries_tokens, (2 * first.len() + second.len()) as u64);
    assert_eq!(fresh.stats().prefix_cache_queries_tokens, 0);
    wait_idle(&cached);
    assert!(cached.stats().prefix_cache_usage > 0.0, "finished caches are retained");
    // Usage is published before a request's final event, so no wait is needed here.
    assert_eq!(fresh.stats().kv_cache_usage, 0.0, "nothing is retained with the prefix cache off");
}

/// At f16 the cache is device tensors (the path GPUs take): a hit shares their blocks.
#[test]
fn a_prefix_cache_hit_on_device_tensors_gives_the_output_of_a_full_prefill() {
    let chat = Chat::open();
    let loader = ModelLoader::open(&real_model()).expect("open model");
    let options = LoadOptions { device: DeviceSpec::Flex, precision: Precision::F16, ..Default::default() };
    let engine = Engine::spawn(loader, options, EngineConfig::default(), Box::new(|_, _| {}));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !engine.is_ready() {
        assert!(engine.failure().is_none(), "load failed: {:?}", engine.failure());
        assert!(Instant::now() < deadline, "model did not load");
        std::thread::sleep(Duration::from_millis(5));
    }
    let prompt = chat.prompt(&["When do you open?"]);
    let full = greedy(&engine, &prompt);
    let hit = greedy(&engine, &prompt);
    assert_eq!(hit.usage.cached_prompt_tokens, (prompt.len() - 1) / BLOCK * BLOCK);
    assert_eq!(hit.ids, full.ids, "{:?} vs {:?}", hit.text, full.text);
    wait_idle(&engine);
}

#[test]
fn eviction_under_a_small_budget_keeps_the_output_right() {
    let chat = Chat::open();
    // Room for two retained conversations (two whole blocks each: a kept cache holds whole
    // blocks only) beside one running (three blocks).
    let engine = start(&real_model(), EngineConfig { kv_cache_tokens: 384, ..EngineConfig::default() });
    // No two share their first block: each can only hit its own cache.
    let shops = ["Lyon", "Paris", "Nantes"];
    let prompts: Vec<Vec<u32>> = shops
        .iter()
        .map(|shop| chat.prompt_with_system(&format!("{shop}. {SYSTEM}"), &["Who owns the shop?"]))
        .collect();
    let mut firsts = Vec::new();
    for prompt in &prompts {
        firsts.push(greedy(&engine, prompt));
        wait_idle(&engine);
        let usage = engine.stats().kv_cache_usage;
        assert!(usage <= 1.0, "the budget holds: {usage}");
    }
    // Three retained caches do not fit in 384 positions: the least recently used (the first)
    // went, the last is still there.
    let first_again = greedy(&engine, &prompts[0]);
    let last_again = greedy(&engine, &prompts[2]);
    assert!(last_again.usage.cached_prompt_tokens > 0);
    assert_eq!(first_again.usage.cached_prompt_tokens, 0, "the oldest cache was evicted");
    assert_eq!(first_again.ids, firsts[0].ids);
    assert_eq!(last_again.ids, firsts[2].ids);
    wait_idle(&engine);
    let stats = engine.stats();
    assert!(stats.kv_cache_usage <= 1.0 && stats.prefix_cache_usage > 0.0, "{stats:?}");
}

#[test]
fn concurrent_sequences_share_a_cached_prefix_by_reference() {
    let chat = Chat::open();
    let engine = start(&real_model(), EngineConfig { max_prefill_tokens: 48, ..EngineConfig::default() });
    let fresh = start(&real_model(), EngineConfig { prefix_cache: false, ..EngineConfig::default() });
    greedy(&engine, &chat.prompt(&["Hello!"]));
    let questions = ["Do you sell rye bread?", "Who owns the shop?", "Can I pay by card?", "What is a brioche?"];
    let prompts: Vec<Vec<u32>> = questions.iter().map(|q| chat.prompt(&[q])).collect();
    // All at once: each shares the system prompt's blocks and writes its own question after
    // them in blocks of its own; none may see another's keys and values.
    let streams: Vec<EventStream> =
        prompts.iter().map(|p| engine.submit(GenerateRequest::greedy(p.clone(), 24)).expect("submit")).collect();
    let outs: Vec<Outcome> = streams.into_iter().map(collect).collect();
    for (out, prompt) in outs.iter().zip(&prompts) {
        assert!(out.usage.cached_prompt_tokens >= 2 * BLOCK, "{}", out.usage.cached_prompt_tokens);
        let reference = greedy(&fresh, prompt);
        assert_eq!(out.ids, reference.ids, "{:?} vs {:?}", out.text, reference.text);
    }
    wait_idle(&engine);
}

/// Prints time to first token of a second request sharing a ~300-token prefix, with and
/// without the prefix cache: `cargo test ... --test engine -- --ignored --nocapture ttft`.
#[test]
#[ignore = "a measurement, not a check"]
fn ttft_with_and_without_the_prefix_cache() {
    let chat = Chat::open();
    let long_system = format!("{SYSTEM} {SYSTEM} Keep every answer polite.");
    for prefix_cache in [false, true] {
        let engine = start(&real_model(), EngineConfig { prefix_cache, ..EngineConfig::default() });
        let render = |q: &str| {
            let messages = [ChatMessage::new("system", long_system.as_str()), ChatMessage::new("user", q)];
            let text = chat.info.chat_template.as_ref().expect("template").render(&messages, true).expect("render");
            chat.info.tokenizer.encode_prompt(&text).expect("encode")
        };
        greedy(&engine, &render("When do you open?"));
        let mut samples = Vec::new();
        // Each a new question after the same system prompt: a second request sharing a prefix.
        for question in ["Who owns the shop?", "Can I pay by card?", "Do you sell rye bread?"] {
            let prompt = render(question);
            let started = Instant::now();
            let mut stream = engine.submit(GenerateRequest::greedy(prompt.clone(), 1)).expect("submit");
            assert!(matches!(stream.blocking_recv(), Some(GenerationEvent::Token { .. })));
            samples.push(started.elapsed());
            let cached = match stream.blocking_recv() {
                Some(GenerationEvent::Finished { usage, .. }) => usage.cached_prompt_tokens,
                other => panic!("expected the end, got {other:?}"),
            };
            println!(
                "prefix_cache={prefix_cache} prompt={} cached={cached} ttft={:?}",
                prompt.len(),
                samples.last().unwrap()
            );
            wait_idle(&engine);
        }
        samples.sort();
        println!("prefix_cache={prefix_cache}: median TTFT {:?}", samples[1]);
    }
}

#[test]
fn a_short_prompt_behind_a_long_one_is_prefilled_first_unless_fifo() {
    use stellarchat_model::engine::{SchedulerPolicy, Scheduling};
    // 15 chunks of 32 tokens. The short prompt is submitted right after the long one, but a
    // loaded machine may deschedule the test thread for a few engine steps in between, so
    // each policy's rule is checked against the step at which the short prompt reached the
    // engine, not against step 0.
    let long_prompt: Vec<u32> = (0..450).map(|i| (i * 11 % 250) as u32).collect();
    let run = |policy| {
        let scheduling = Scheduling { policy, ..Scheduling::default() };
        let config = EngineConfig { max_prefill_tokens: 32, scheduling, ..EngineConfig::default() };
        let engine = start("synthetic:tiny", config);
        let long = engine.submit(GenerateRequest::greedy(long_prompt.clone(), 1)).expect("long");
        let short = engine.submit(GenerateRequest::greedy(vec![3, 4, 5, 6, 7], 1)).expect("short");
        let (long, short) = (collect(long), collect(short));
        wait_idle(&engine);
        (long, short)
    };
    // Only a short prompt that arrives while the long one has chunks left tells the policies
    // apart; one that came after the long prefill ended makes the run void, and a few voids
    // in a row fail the test rather than let it pass without checking anything.
    let conclusive = |policy| {
        for _ in 0..20 {
            let (long, short) = run(policy);
            if short.arrived_step + 2 < long.steps[0] {
                return (long, short);
            }
        }
        panic!("{policy:?}: the short prompt never reached the engine before the long prefill ended");
    };
    // Shortest first: the short prompt is prefilled in the first step after it arrives (the
    // step numbered by the count it arrived at), ahead of the long one's remaining chunks.
    let (long, short) = conclusive(SchedulerPolicy::Latency);
    let (arrived, short_first, long_first) = (short.arrived_step, short.steps[0], long.steps[0]);
    assert!(short_first == arrived, "latency: short prompt arrived at {arrived}, first token at {short_first}");
    assert!(short_first < long_first, "latency: short prompt's first token at {short_first}, long's at {long_first}");
    // Oldest first: the short prompt waits for the long one's last chunk.
    let (long, short) = conclusive(SchedulerPolicy::Fifo);
    let (short_first, long_first) = (short.steps[0], long.steps[0]);
    assert!(short_first >= long_first, "fifo: short prompt's first token at {short_first}, long one's at {long_first}");
}

/// Prints a model file's 64-token prefill time, many times in one process (a noisy shared
/// machine moves single runs by 30 %): `STELLARCHAT_TIMING_MODEL=weights/… cargo test ...
/// --test engine -- --ignored --nocapture prefill_time` (default: Gemma 3 270M, when fetched).
#[test]
#[ignore = "a measurement, not a check"]
fn prefill_time_of_a_64_token_prompt() {
    let model = std::env::var("STELLARCHAT_TIMING_MODEL")
        .unwrap_or_else(|_| repo_root().join("weights/gemma-3-270m-q4_k_m.gguf").to_string_lossy().into_owned());
    // No grammar tables: their background build would take a core from the first prefills
    // (as `stellarchat generate`, which the benchmark runs, does not build them either).
    let config = EngineConfig { prefix_cache: false, prepare_grammar_tables: false, ..EngineConfig::default() };
    let engine = start(&model, config);
    // Distinct ids a round, so nothing could be reused even by mistake.
    let prompt = |round: u32| (0..64).map(|i| 1000 + (round * 64 + i) % 5000).collect::<Vec<u32>>();
    let mut times = Vec::new();
    for round in 0..30 {
        let mut stream = engine.submit(GenerateRequest::greedy(prompt(round), 1)).expect("submit");
        loop {
            match stream.blocking_recv() {
                Some(GenerationEvent::Finished { timings, .. }) => {
                    let first = timings.first_token.expect("a token");
                    times.push((first - timings.scheduled.unwrap_or(timings.submitted)).as_secs_f64() * 1e3);
                    break;
                }
                Some(GenerationEvent::Error(e)) => panic!("{e}"),
                Some(_) => {}
                None => panic!("stream ended early"),
            }
        }
        wait_idle(&engine);
    }
    // The first prefill also faults in the buffers; the rest are steady state.
    let first = times.remove(0);
    let in_order: Vec<String> = times.iter().map(|t| format!("{t:.0}")).collect();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{model}: first {first:.1} ms; then min {:.1} ms, median {median:.1} ms ({:.0} tok/s); in order (ms): {}",
        times[0],
        64.0 / median * 1e3,
        in_order.join(" ")
    );
}
