//! Constraint tests on the real tokenizers: token bytes, compiling, errors, masks and the
//! lazy trigger, without running a model.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde_json::json;

use super::token_env::{TokenEnv, VocabEncoding, token_bytes};
use super::*;
use crate::gguf::GgufFile;
use crate::tokenizer::tests::smollm;

fn smollm_tokenizer() -> &'static Tokenizer {
    &smollm().expect("SmolLM2 tokenizer").1
}

/// Gemma 3's SentencePiece tokenizer (`just test` fetches the file).
fn gemma_tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../weights/gemma-3-270m-q4_k_m.gguf");
        assert!(path.is_file(), "{} is missing: run `just weights gemma3`", path.display());
        Tokenizer::from_gguf(&GgufFile::open(&path).expect("open GGUF").metadata).expect("tokenizer")
    })
}

fn compiler() -> &'static ConstraintCompiler {
    static COMPILER: OnceLock<ConstraintCompiler> = OnceLock::new();
    COMPILER.get_or_init(|| ConstraintCompiler::new(Arc::new(smollm_tokenizer().clone())))
}

fn schema(schema: serde_json::Value) -> Constraint {
    Constraint::new(Grammar::JsonSchema { schema, strict: false })
}

fn grammar_error(constraint: &Constraint) -> String {
    match compiler().check(constraint) {
        Err(ModelError::InvalidGrammar(message)) => message,
        other => panic!("expected InvalidGrammar, got {other:?}"),
    }
}

const TEXTS: [&str; 4] = [
    "{\"a\": 1}",
    "Héllo wörld — ✓ 日本語\n\tdone  ",
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
    "emoji 🦀 and a lone space at the end ",
];

fn assert_round_trip(tokenizer: &Tokenizer, expected: VocabEncoding) {
    let encoding = VocabEncoding::detect(tokenizer);
    assert_eq!(encoding, expected);
    for text in TEXTS {
        let ids = tokenizer.encode(text, false).expect("encode");
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| token_bytes(tokenizer, encoding, id)).collect();
        assert_eq!(String::from_utf8_lossy(&bytes), text, "ids {ids:?}");
    }
}

#[test]
fn smollm_token_bytes_round_trip() {
    assert_round_trip(smollm_tokenizer(), VocabEncoding::ByteLevel);
}

#[test]
fn gemma_token_bytes_round_trip() {
    let tokenizer = gemma_tokenizer();
    assert_round_trip(tokenizer, VocabEncoding::SentencePiece);
    // Byte-fallback tokens are one byte each.
    let id = tokenizer.token_id("<0x0A>").expect("byte token");
    assert_eq!(token_bytes(tokenizer, VocabEncoding::SentencePiece, id), b"\n");
}

#[test]
fn control_tokens_carry_the_special_marker() {
    let tokenizer = smollm_tokenizer();
    let im_end = tokenizer.token_id("<|im_end|>").expect("<|im_end|>");
    assert_eq!(token_bytes(tokenizer, VocabEncoding::ByteLevel, im_end), b"\xFF<|im_end|>");
    let env = TokenEnv::build(tokenizer).expect("env");
    assert_eq!(env.tok_trie().eos_tokens(), tokenizer.stop_ids());
    assert!(env.tok_trie().is_special_token(im_end));
    // The env's own tokenizer gives our ids for plain text.
    assert_eq!(env.tokenize_bytes(b"{\"a\": 1}"), tokenizer.encode("{\"a\": 1}", false).expect("encode"));
}

#[test]
fn a_schema_compiles_and_errors_name_the_problem() {
    let person = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "enum": [1, 2, 3]}},
        "required": ["name", "age"],
    });
    compiler().check(&schema(person)).expect("a plain schema compiles");
    compiler().check(&Constraint::new(Grammar::JsonObject)).expect("json_object compiles");
    compiler().check(&Constraint::new(Grammar::Lark("start: \"yes\" | \"no\"".into()))).expect("lark compiles");

    let unsupported = grammar_error(&schema(json!({"type": "array", "uniqueItems": true})));
    assert!(unsupported.contains("uniqueItems"), "{unsupported}");
    let bad_type = grammar_error(&schema(json!({"type": "strin"})));
    assert!(bad_type.contains("strin"), "{bad_type}");
    let not_a_schema = grammar_error(&schema(json!("string")));
    assert!(not_a_schema.contains("object or a boolean"), "{not_a_schema}");
    let undefined_rule = grammar_error(&Constraint::new(Grammar::Lark("start: greeting".into())));
    assert!(undefined_rule.contains("greeting"), "{undefined_rule}");
    let empty_trigger = Constraint { grammar: Grammar::JsonObject, trigger: Some(String::new()) };
    assert!(grammar_error(&empty_trigger).contains("trigger"));
}

#[test]
fn strict_closes_every_object_schema_and_nothing_else() {
    let schema = json!({
        "type": "object",
        "properties": {
            "inner": {"type": "object", "properties": {"x": {"type": "integer"}}},
            "list": {"type": "array", "items": {"properties": {"y": {}}}},
            "open": {"type": "object", "additionalProperties": true},
            "choice": {"anyOf": [{"type": "object"}, {"type": "null"}]},
            "literal": {"enum": [{"type": "object"}]},
        },
        "$defs": {"d": {"type": ["object", "null"]}},
    });
    let closed = prepare_json_schema(&schema, true).expect("prepare");
    assert_eq!(closed["additionalProperties"], false);
    assert_eq!(closed["properties"]["inner"]["additionalProperties"], false);
    assert_eq!(closed["properties"]["list"]["items"]["additionalProperties"], false);
    assert_eq!(closed["properties"]["open"]["additionalProperties"], true);
    assert_eq!(closed["properties"]["choice"]["anyOf"][0]["additionalProperties"], false);
    assert_eq!(closed["properties"]["choice"]["anyOf"][1].get("additionalProperties"), None);
    assert_eq!(closed["properties"]["literal"]["enum"][0], json!({"type": "object"}), "enum values are data");
    assert_eq!(closed["$defs"]["d"]["additionalProperties"], false);
    assert_eq!(closed["x-guidance"]["whitespace_flexible"], false);
    let loose = prepare_json_schema(&schema, false).expect("prepare");
    assert_eq!(loose.get("additionalProperties"), None);
}

/// The masked row of a fresh constraint, with `extra` padding ids past the vocabulary.
fn first_mask(constraint: &Constraint, extra: usize) -> Vec<f32> {
    let mut state = compiler().compile(constraint).expect("compile");
    let mut row = vec![0.0f32; smollm_tokenizer().vocab_size() + extra];
    state.apply_mask(&mut row).expect("mask");
    row
}

fn id(text: &str) -> u32 {
    let ids = smollm_tokenizer().encode(text, false).expect("encode");
    assert_eq!(ids.len(), 1, "{text:?} is one token");
    ids[0]
}

#[test]
fn an_object_schema_allows_a_brace_and_not_a_letter() {
    let row = first_mask(&schema(json!({"type": "object"})), 64);
    let allowed = |text| row[id(text) as usize].is_finite();
    assert!(allowed("{"));
    assert!(!allowed("a"));
    assert!(!allowed("["));
    assert!(!allowed(" {"), "no whitespace before the value");
    let eos = smollm_tokenizer().token_id("<|im_end|>").expect("eos");
    assert!(!row[eos as usize].is_finite(), "nothing is complete yet");
    let vocab = smollm_tokenizer().vocab_size();
    assert!(row[vocab..].iter().all(|x| *x == f32::NEG_INFINITY), "padding ids are never allowed");
}

/// Commits `text` token by token, returning the outcome of the last.
fn commit_text(state: &mut ConstraintState, text: &str) -> Committed {
    let mut last = Committed::Continue;
    for id in smollm_tokenizer().encode(text, false).expect("encode") {
        let mut row = vec![0.0f32; smollm_tokenizer().vocab_size()];
        state.apply_mask(&mut row).expect("mask");
        assert!(row[id as usize].is_finite(), "token {id} of {text:?} is masked out");
        last = state.commit(id).expect("commit");
    }
    last
}

#[test]
fn a_lazy_constraint_waits_for_its_trigger_then_applies() {
    let grammar = Grammar::Lark("start: \"<tool_call>\" \"{\" /[a-z]+/ \"}\"".into());
    let constraint = Constraint { grammar, trigger: Some("<tool_call>".into()) };
    let mut state = compiler().compile(&constraint).expect("compile");
    assert!(!state.is_active());
    // Free text: the mask changes nothing, anything goes.
    assert_eq!(commit_text(&mut state, "I will call a tool: [x] "), Committed::Continue);
    assert!(!state.is_active());
    assert_eq!(commit_text(&mut state, "<tool_call>"), Committed::Continue);
    assert!(state.is_active(), "the trigger switches the grammar on");
    let mut row = vec![0.0f32; smollm_tokenizer().vocab_size()];
    state.apply_mask(&mut row).expect("mask");
    assert!(row[id("{") as usize].is_finite());
    assert!(!row[id("[") as usize].is_finite());
    assert_eq!(commit_text(&mut state, "{abc}"), Committed::Complete);
}

#[test]
fn text_after_the_trigger_in_the_same_token_is_fed_to_the_grammar() {
    let grammar = Grammar::Lark("start: \"ab\" \"c\"+ \"d\"".into());
    let mut state = compiler().compile(&Constraint { grammar, trigger: Some("ab".into()) }).expect("compile");
    // Feed "xabcc" as bytes of whole tokens, whatever their split, then finish with "d".
    assert_eq!(commit_text(&mut state, "xabcc"), Committed::Continue);
    assert!(state.is_active());
    assert_eq!(commit_text(&mut state, "d"), Committed::Complete);
    // A token that carries text the grammar rejects after the trigger is a grammar error.
    let grammar = Grammar::Lark("start: \"ab\" \"c\"".into());
    let mut state = compiler().compile(&Constraint { grammar, trigger: Some("ab".into()) }).expect("compile");
    let mut failed = false;
    for id in smollm_tokenizer().encode("x abz", false).expect("encode") {
        if let Err(e) = state.commit(id) {
            assert!(matches!(e, ModelError::InvalidGrammar(_)), "{e}");
            failed = true;
            break;
        }
    }
    assert!(failed, "the text after the trigger does not fit");
}

#[test]
fn strict_allows_no_key_beyond_the_listed_ones() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    for (strict, comma_allowed) in [(true, false), (false, true)] {
        let constraint = Constraint::new(Grammar::JsonSchema { schema: schema.clone(), strict });
        let mut state = compiler().compile(&constraint).expect("compile");
        assert_eq!(commit_text(&mut state, "{\"a\": 1"), Committed::Continue);
        let mut row = vec![0.0f32; smollm_tokenizer().vocab_size()];
        state.apply_mask(&mut row).expect("mask");
        assert_eq!(row[id(",") as usize].is_finite(), comma_allowed, "strict {strict}");
        assert!(row[id("}") as usize].is_finite());
        assert!(row[id("2") as usize].is_finite(), "the number may go on");
    }
}

/// What a constraint costs per token without a model: mask (on the engine, overlapped with
/// the forward) and commit. Prints figures, asserts nothing about speed. `cargo test
/// --workspace --features stellarchat/flex,stellarchat/ndarray,stellarchat/wgpu --lib
/// constraint::tests::mask_cost -- --ignored --nocapture`
#[test]
#[ignore]
fn mask_cost_per_token() {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "size": {"type": "integer", "enum": [1, 2, 3]},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "size", "tags"],
    });
    let text = r#"{"name": "Mango Dreams of a summer afternoon", "size": 2, "tags": ["sweet", "yellow", "tropical", "juicy"]}"#;
    let constraint = Constraint::new(Grammar::JsonSchema { schema, strict: true });
    let started = std::time::Instant::now();
    compiler().check(&constraint).expect("compile");
    println!("first compile (token tables + grammar): {:?}", started.elapsed());
    let started = std::time::Instant::now();
    let mut state = compiler().compile(&constraint).expect("compile");
    println!("later compile: {:?}", started.elapsed());
    let ids = smollm_tokenizer().encode(text, false).expect("encode");
    let mut row = vec![0.0f32; smollm_tokenizer().vocab_size()];
    let (mut mask, mut apply, mut commit) = (std::time::Duration::ZERO, std::time::Duration::ZERO, std::time::Duration::ZERO);
    for &id in &ids {
        let t = std::time::Instant::now();
        state.prepare_mask();
        mask += t.elapsed();
        let t = std::time::Instant::now();
        state.apply_mask(&mut row).expect("mask");
        apply += t.elapsed();
        let t = std::time::Instant::now();
        state.commit(id).expect("commit");
        commit += t.elapsed();
    }
    let per = |d: std::time::Duration| d / ids.len() as u32;
    println!("{} tokens: mask {:?}/token, apply {:?}/token, commit {:?}/token", ids.len(), per(mask), per(apply), per(commit));
}
