//! Constrained decoding and prompt logprobs through the engine, on the real SmolLM2 (flex):
//! JSON schemas (greedy and seeded), strict mode, json_object, Lark grammars, a lazy trigger,
//! constrained and free sequences batched together, `max_tokens` cutting a grammar short,
//! and prompt logprobs equal to the logprobs of the same tokens when generated.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stellarchat_model::ModelError;
use stellarchat_model::chat_template::ChatMessage;
use stellarchat_model::constraint::{Constraint, Grammar};
use stellarchat_model::device::DeviceSpec;
use stellarchat_model::engine::{
    Engine, EngineConfig, EngineHandle, EventStream, FinishReason, GenerateRequest, GenerationEvent, TokenLogprob,
};
use stellarchat_model::model::{LoadOptions, ModelInfo, ModelLoader};
use stellarchat_model::sampler::SamplingParams;

struct Model {
    engine: EngineHandle,
    info: std::sync::Arc<ModelInfo>,
}

fn start(config: EngineConfig) -> Model {
    let path = common::weights_file("SmolLM2-135M-Instruct.Q4_1.gguf", "");
    let loader = ModelLoader::open(&path.to_string_lossy()).expect("open model");
    let info = loader.info();
    let engine = Engine::spawn(loader, LoadOptions { device: DeviceSpec::Flex, ..Default::default() }, config, Box::new(|_, _| {}));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !engine.is_ready() {
        assert!(engine.failure().is_none(), "load failed: {:?}", engine.failure());
        assert!(Instant::now() < deadline, "model did not load");
        std::thread::sleep(Duration::from_millis(5));
    }
    Model { engine, info }
}

impl Model {
    /// The chat prompt's ids for one user message.
    fn chat(&self, user: &str) -> Vec<u32> {
        let template = self.info.chat_template.as_ref().expect("chat template");
        let text = template.render(&[ChatMessage::new("user", user)], true).expect("render");
        self.info.tokenizer.encode_prompt(&text).expect("encode")
    }

    fn request(&self, user: &str, grammar: Option<Grammar>, max_tokens: usize) -> GenerateRequest {
        GenerateRequest { constraint: grammar.map(Constraint::new), ..GenerateRequest::greedy(self.chat(user), max_tokens) }
    }
}

#[derive(Debug, Default)]
struct Outcome {
    ids: Vec<u32>,
    text: String,
    logprobs: Vec<TokenLogprob>,
    prompt_logprobs: Option<Vec<Option<TokenLogprob>>>,
    reason: Option<FinishReason>,
    completion_tokens: usize,
}

fn collect(mut stream: EventStream) -> Outcome {
    let mut out = Outcome::default();
    while let Some(event) = stream.blocking_recv() {
        match event {
            GenerationEvent::PromptLogprobs(entries) => {
                assert!(out.ids.is_empty() && out.prompt_logprobs.is_none(), "prompt logprobs come once, first");
                out.prompt_logprobs = Some(entries);
            }
            GenerationEvent::Token { id, text, logprob, .. } => {
                out.ids.push(id);
                out.text.push_str(&text);
                out.logprobs.extend(logprob);
            }
            GenerationEvent::Finished { reason, text, usage, .. } => {
                out.text.push_str(&text);
                out.reason = Some(reason);
                out.completion_tokens = usage.completion_tokens;
                break;
            }
            GenerationEvent::Error(e) => panic!("engine error: {e}"),
        }
    }
    out
}

fn run(model: &Model, request: GenerateRequest) -> Outcome {
    collect(model.engine.submit(request).expect("submit"))
}

/// An object with a short string, an integer from an enum and a short array of strings.
fn item_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "size": {"type": "integer", "enum": [1, 2, 3]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        },
        "required": ["name", "size", "tags"],
    })
}

/// Checks `text` against [`item_schema`] by hand; `strict`: no other keys.
fn assert_valid_item(text: &str, strict: bool) {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let object = value.as_object().unwrap_or_else(|| panic!("not an object: {text}"));
    let name = object["name"].as_str().unwrap_or_else(|| panic!("name is not a string: {text}"));
    assert!(name.chars().count() <= 24, "{text}");
    assert!(matches!(object["size"].as_i64(), Some(1..=3)), "size: {text}");
    let tags = object["tags"].as_array().unwrap_or_else(|| panic!("tags is not an array: {text}"));
    assert!(tags.len() <= 3 && tags.iter().all(|t| t.as_str().is_some_and(|s| s.chars().count() <= 12)), "{text}");
    if strict {
        assert!(object.keys().all(|k| ["name", "size", "tags"].contains(&k.as_str())), "extra key: {text}");
    }
}

const ITEM_PROMPT: &str = "Describe a fruit as JSON with a name, a size and some tags, and add a colour and a price.";

#[test]
fn json_schema_output_parses_and_validates_greedy_and_seeded() {
    let model = start(EngineConfig::default());
    for strict in [false, true] {
        let grammar = Grammar::JsonSchema { schema: item_schema(), strict };
        let greedy = run(&model, model.request(ITEM_PROMPT, Some(grammar.clone()), 160));
        assert_eq!(greedy.reason, Some(FinishReason::Stop), "{}", greedy.text);
        assert_valid_item(&greedy.text, strict);
        assert!(greedy.text.contains("\", \"") || greedy.text.contains(": "), "compact readable spacing: {}", greedy.text);
        for seed in 0..3 {
            let mut request = model.request(ITEM_PROMPT, Some(grammar.clone()), 160);
            request.sampling = SamplingParams { temperature: 1.0, seed: Some(seed), ..SamplingParams::default() };
            request.logprobs = Some(3);
            let out = run(&model, request);
            assert_eq!(out.reason, Some(FinishReason::Stop), "seed {seed}: {}", out.text);
            assert_valid_item(&out.text, strict);
            // Logprobs of a masked row: finite, and alternatives only among allowed tokens.
            assert!(out.logprobs.iter().all(|lp| lp.logprob.is_finite() && lp.top.iter().all(|t| t.1.is_finite())));
        }
    }
}

#[test]
fn strict_mode_forbids_keys_the_schema_does_not_list() {
    let model = start(EngineConfig::default());
    let schema = json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}});
    let prompt = "Reply with a JSON object with the keys city, country, population and mayor for Paris.";
    let strict = run(&model, model.request(prompt, Some(Grammar::JsonSchema { schema: schema.clone(), strict: true }), 120));
    let value: Value = serde_json::from_str(&strict.text).unwrap_or_else(|e| panic!("{e}: {}", strict.text));
    assert!(value.as_object().expect("object").keys().all(|k| k == "city"), "{}", strict.text);
    // The same schema without strict lets the model add what it was asked for.
    let loose = run(&model, model.request(prompt, Some(Grammar::JsonSchema { schema, strict: false }), 120));
    let value: Value = serde_json::from_str(&loose.text).unwrap_or_else(|e| panic!("{e}: {}", loose.text));
    assert!(value.as_object().expect("object").keys().any(|k| k != "city"), "{}", loose.text);
}

#[test]
fn json_object_and_lark_grammars_constrain_the_output() {
    let model = start(EngineConfig::default());
    let out = run(&model, model.request("Describe a cat as a JSON object with its name and colour.", Some(Grammar::JsonObject), 120));
    assert_eq!(out.reason, Some(FinishReason::Stop), "{}", out.text);
    let value: Value = serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{e}: {}", out.text));
    assert!(value.as_object().is_some_and(|o| !o.is_empty()), "{}", out.text);

    let lark = Grammar::Lark(r#"start: "The answer is " ("yes" | "no") ", because " /[a-z ]{1,40}/ "." "#.into());
    let out = run(&model, model.request("Is the sky blue?", Some(lark), 60));
    assert_eq!(out.reason, Some(FinishReason::Stop), "{}", out.text);
    let rest = out.text.strip_prefix("The answer is ").unwrap_or_else(|| panic!("{}", out.text));
    let rest = rest.strip_prefix("yes, because ").or_else(|| rest.strip_prefix("no, because ")).expect("yes or no");
    let reason = rest.strip_suffix('.').unwrap_or_else(|| panic!("ends with a period: {}", out.text));
    assert!(!reason.is_empty() && reason.len() <= 40 && reason.chars().all(|c| c.is_ascii_lowercase() || c == ' '), "{}", out.text);
}

/// A ChatML prompt with one tool and a worked example of calling it after a short remark.
const TOOL_PROMPT: &str = "<|im_start|>system\n# Tools\n\nYou may call functions. Signatures:\n<tools>\n\
{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\", \
\"properties\": {\"city\": {\"type\": \"string\"}}}}}\n</tools>\n\nReturn each call as <tool_call>\n\
{\"name\": <name>, \"arguments\": <object>}\n</tool_call><|im_end|>\n\
<|im_start|>user\nWhat is the weather in Rome?<|im_end|>\n<|im_start|>assistant\nLet me look that up.\n<tool_call>\n\
{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call><|im_end|>\n\
<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n";

#[test]
fn a_lazy_grammar_takes_over_at_its_trigger() {
    let model = start(EngineConfig::default());
    let prompt = model.info.tokenizer.encode_prompt(TOOL_PROMPT).expect("encode");
    let free = run(&model, GenerateRequest::greedy(prompt.clone(), 60));
    let before = free.text.find("<tool_call>").map(|at| &free.text[..at]).unwrap_or_else(|| panic!("{}", free.text));
    assert!(!before.is_empty(), "the model writes something before its call: {}", free.text);
    assert!(!free.text.contains("unit"), "{}", free.text);

    // The grammar asks for an argument the model does not write on its own.
    let args = json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
    });
    let call = json!({
        "type": "object",
        "properties": {"name": {"const": "get_weather"}, "arguments": args},
        "required": ["name", "arguments"],
    });
    let embedded = stellarchat_model::constraint::prepare_json_schema(&call, true).expect("schema");
    let grammar = Grammar::Lark(format!("start: \"<tool_call>\\n\" call \"\\n</tool_call>\"\ncall: %json {embedded}\n"));
    let request = GenerateRequest {
        constraint: Some(Constraint { grammar, trigger: Some("<tool_call>".into()) }),
        ..GenerateRequest::greedy(prompt, 60)
    };
    let out = run(&model, request);
    let (head, call) = out.text.split_at(out.text.find("<tool_call>").unwrap_or_else(|| panic!("no call: {}", out.text)));
    assert_eq!(head, before, "free until the trigger");
    let body = call.strip_prefix("<tool_call>\n").and_then(|b| b.strip_suffix("\n</tool_call>"));
    let body = body.unwrap_or_else(|| panic!("the grammar shapes the call: {}", out.text));
    let value: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(value["name"], "get_weather", "{body}");
    assert!(value["arguments"]["city"].is_string(), "{body}");
    assert!(["celsius", "fahrenheit"].contains(&value["arguments"]["unit"].as_str().unwrap_or_default()), "{body}");
    assert_eq!(value.as_object().map(|o| o.len()), Some(2), "strict: {body}");
    assert_eq!(out.reason, Some(FinishReason::Stop), "the finished grammar ends the sequence");
}

#[test]
fn constrained_and_free_sequences_batch_together() {
    let model = start(EngineConfig { max_prefill_tokens: 64, ..EngineConfig::default() });
    // Free sequences: greedy, so each must equal the same request alone.
    let free_prompts = ["What is the capital of France?", "Name three colours.", "Count to five.", "Say hello."];
    let alone: Vec<Outcome> = free_prompts.iter().map(|p| run(&model, model.request(p, None, 40))).collect();
    let grammar = Grammar::JsonSchema { schema: item_schema(), strict: true };
    let mut streams = Vec::new();
    for (i, prompt) in free_prompts.iter().enumerate() {
        let mut constrained = model.request(ITEM_PROMPT, Some(grammar.clone()), 160);
        constrained.sampling = SamplingParams { temperature: 0.8, seed: Some(i as u64), ..SamplingParams::default() };
        streams.push((true, model.engine.submit(constrained).expect("submit")));
        streams.push((false, model.engine.submit(model.request(prompt, None, 40)).expect("submit")));
    }
    let mut free = alone.iter();
    for (constrained, stream) in streams {
        let out = collect(stream);
        if constrained {
            assert_eq!(out.reason, Some(FinishReason::Stop), "{}", out.text);
            assert_valid_item(&out.text, true);
        } else {
            let expected = free.next().expect("free");
            assert_eq!(out.ids, expected.ids, "a free sequence changed beside constrained ones");
            assert_eq!(out.reason, expected.reason);
        }
    }
}

#[test]
fn max_tokens_cuts_a_grammar_short_with_length() {
    let model = start(EngineConfig::default());
    let out = run(&model, model.request(ITEM_PROMPT, Some(Grammar::JsonSchema { schema: item_schema(), strict: true }), 5));
    assert_eq!(out.reason, Some(FinishReason::Length));
    assert_eq!(out.ids.len(), 5);
    assert!(out.text.starts_with('{') && serde_json::from_str::<Value>(&out.text).is_err(), "{}", out.text);
}

#[test]
fn an_invalid_constraint_is_refused_at_submission() {
    let model = start(EngineConfig::default());
    let bad = Constraint::new(Grammar::JsonSchema { schema: json!({"type": "array", "uniqueItems": true}), strict: false });
    match model.engine.check_constraint(&bad) {
        Err(ModelError::InvalidGrammar(m)) => assert!(m.contains("uniqueItems"), "{m}"),
        other => panic!("expected InvalidGrammar, got {other:?}"),
    }
    let request = GenerateRequest { constraint: Some(bad), ..GenerateRequest::greedy(model.chat("hi"), 10) };
    assert!(matches!(model.engine.submit(request), Err(ModelError::InvalidGrammar(_))));
    assert_eq!(model.engine.stats().waiting, 0, "nothing was queued");
}

#[test]
fn prompt_logprobs_equal_the_logprobs_of_the_same_tokens_generated() {
    // A small prefill budget splits the scored prompt over several steps.
    let model = start(EngineConfig { max_prefill_tokens: 16, ..EngineConfig::default() });
    let prompt = model.chat("Write one sentence about the sea.");
    let generated = run(&model, GenerateRequest { logprobs: Some(0), ..GenerateRequest::greedy(prompt.clone(), 24) });
    assert_eq!(generated.logprobs.len(), generated.ids.len());

    let mut text = prompt.clone();
    text.extend_from_slice(&generated.ids);
    let scored = run(&model, GenerateRequest { prompt_logprobs: Some(2), ..GenerateRequest::greedy(text.clone(), 0) });
    assert_eq!(scored.reason, Some(FinishReason::Length));
    assert_eq!((scored.ids.len(), scored.completion_tokens), (0, 0));
    let entries = scored.prompt_logprobs.expect("prompt logprobs");
    assert_eq!(entries.len(), text.len());
    assert!(entries[0].is_none(), "the first token has no prefix");
    for (k, (&id, want)) in generated.ids.iter().zip(&generated.logprobs).enumerate() {
        let got = entries[prompt.len() + k].as_ref().expect("scored");
        assert!((got.logprob - want.logprob).abs() < 1e-3, "token {k}: {} vs {}", got.logprob, want.logprob);
        assert_eq!(got.top.len(), 2);
        assert_eq!(got.top[0].0, id, "greedy chose the most likely token");
        assert!((got.top[0].1 - got.logprob).abs() < 1e-6);
    }
    assert!(entries[1..].iter().all(|e| e.as_ref().is_some_and(|e| e.logprob <= 0.0)));

    // With generation too, they come first; without prompt_logprobs, max_tokens 0 is refused.
    let both = run(&model, GenerateRequest { prompt_logprobs: Some(0), ..GenerateRequest::greedy(prompt.clone(), 3) });
    let entries = both.prompt_logprobs.expect("prompt logprobs");
    assert!(entries[1..].iter().all(|e| e.as_ref().is_some_and(|e| e.top.is_empty())));
    assert_eq!(both.ids, generated.ids[..3]);
    assert!(matches!(model.engine.submit(GenerateRequest::greedy(prompt, 0)), Err(ModelError::InvalidRequest(_))));
}

/// Decode throughput with and without a JSON schema, 1 and 16 sequences; prints figures,
/// asserts nothing about speed. `cargo test --workspace --features stellarchat/flex,
/// stellarchat/ndarray,stellarchat/wgpu --test constraint -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_constrained_decode_throughput() {
    let model = start(EngineConfig::default());
    // At least 64 words: the grammar cannot be complete within 96 tokens, so every constrained
    // sequence decodes all of them and the batch stays as large as the free one's.
    let list = json!({"type": "object", "properties": {"words": {"type": "array", "items": {"type": "string"}, "minItems": 64}}, "required": ["words"]});
    for n in [1, 16] {
        for constrained in [false, true] {
            let streams: Vec<EventStream> = (0..n)
                .map(|i| {
                    let grammar = constrained.then(|| Grammar::JsonSchema { schema: list.clone(), strict: true });
                    let mut request = model.request("List many English words as JSON.", grammar, 96);
                    request.sampling = SamplingParams { temperature: 0.7, seed: Some(i), ..SamplingParams::default() };
                    request.ignore_eos = true;
                    model.engine.submit(request).expect("submit")
                })
                .collect();
            let (mut tokens, mut first, mut last) = (0, None::<Instant>, None::<Instant>);
            for mut stream in streams {
                while let Some(event) = stream.blocking_recv() {
                    match event {
                        GenerationEvent::Finished { usage, timings, .. } => {
                            // The first token of each sequence comes from prefill: not decode.
                            tokens += usage.completion_tokens.saturating_sub(1);
                            let started = timings.first_token.unwrap_or(timings.finished);
                            first = Some(first.map_or(started, |f: Instant| f.min(started)));
                            last = Some(last.map_or(timings.finished, |l: Instant| l.max(timings.finished)));
                            break;
                        }
                        GenerationEvent::Error(e) => panic!("{e}"),
                        _ => {}
                    }
                }
            }
            let seconds = (last.expect("end") - first.expect("start")).as_secs_f64();
            println!(
                "sequences {n:>2}  constrained {constrained:<5}  decode tokens {tokens:>5}  {:>8.1} tokens/s",
                tokens as f64 / seconds
            );
        }
    }
}
