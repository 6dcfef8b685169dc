//! Tokenizer tests: llama.cpp's golden ids for SmolLM2, decoding, streaming, hand-made
//! vocabularies for the other pre-tokenizers and for SentencePiece, and `tokenizer.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use super::*;
use crate::gguf::{GgufFile, MetadataValue};

const WEIGHTS: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GOLDEN: &str = "smollm2-135m-instruct-q4_1.json";

/// The golden reference data, kept in the repository (`tests/golden`).
pub(crate) fn golden() -> &'static serde_json::Value {
    static GOLDEN_DATA: OnceLock<serde_json::Value> = OnceLock::new();
    GOLDEN_DATA.get_or_init(|| {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let path = manifest.join("../tests/golden").join(GOLDEN);
        serde_json::from_str(&std::fs::read_to_string(path).expect("read golden file")).expect("golden JSON")
    })
}

/// SmolLM2's metadata and tokenizer, or `None` (with a note) when the weights are absent.
pub(crate) fn smollm() -> Option<&'static (Metadata, Tokenizer)> {
    static MODEL: OnceLock<Option<(Metadata, Tokenizer)>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let path = manifest.join("../weights").join(WEIGHTS);
            assert!(path.is_file(), "{} is missing: run `just weights` (`just test` does)", path.display());
            let file = GgufFile::open(&path).expect("open GGUF");
            let tokenizer = Tokenizer::from_gguf(&file.metadata).expect("tokenizer from GGUF");
            Some((file.metadata.clone(), tokenizer))
        })
        .as_ref()
}

fn ids_of(value: &serde_json::Value) -> Vec<u32> {
    value.as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect()
}

#[test]
fn golden_texts_match_llama_cpp() {
    let Some((_, tok)) = smollm() else { return };
    let texts = golden()["texts"].as_array().expect("texts");
    assert!(!texts.is_empty());
    for case in texts {
        let text = case["text"].as_str().expect("text");
        assert_eq!(tok.encode(text, false).unwrap(), ids_of(&case["ids"]), "text {text:?}");
    }
}

#[test]
fn golden_chat_prompts_tokenize_like_llama_cpp() {
    let Some((_, tok)) = smollm() else { return };
    for chat in golden()["chats"].as_array().expect("chats") {
        let prompt = chat["prompt"].as_str().expect("prompt");
        let expected = ids_of(&chat["ids"]);
        assert_eq!(tok.encode(prompt, true).unwrap(), expected, "prompt {prompt:?}");
        // SmolLM2 says add_bos_token = false, so the prompt ids are the same.
        assert_eq!(tok.encode_prompt(prompt).unwrap(), expected);
    }
}

#[test]
fn decode_round_trips() {
    let Some((_, tok)) = smollm() else { return };
    for case in golden()["texts"].as_array().expect("texts") {
        let text = case["text"].as_str().expect("text");
        assert_eq!(tok.decode(&ids_of(&case["ids"]), false).unwrap(), text);
    }
    for chat in golden()["chats"].as_array().expect("chats") {
        let prompt = chat["prompt"].as_str().expect("prompt");
        assert_eq!(tok.decode(&ids_of(&chat["ids"]), false).unwrap(), prompt);
    }
    assert!(tok.decode(&[tok.vocab_size() as u32], false).is_err());
}

#[test]
fn special_tokens_are_parsed_only_on_request() {
    let Some((_, tok)) = smollm() else { return };
    let im_start = tok.token_id("<|im_start|>").unwrap();
    assert_eq!(tok.encode("<|im_start|>", true).unwrap(), vec![im_start]);
    let plain = tok.encode("<|im_start|>", false).unwrap();
    assert!(plain.len() > 1 && !plain.contains(&im_start), "{plain:?}");
    assert_eq!(tok.decode(&plain, false).unwrap(), "<|im_start|>");
}

/// The texts `plain_encoding_is_the_libraries_encode_special_tokens_mode` tries: markers
/// alone, glued to words, nested in each other and cut short, besides the golden texts.
pub(super) fn marker_texts(markers: &[&str]) -> Vec<String> {
    let mut texts: Vec<String> = markers.iter().map(|m| m.to_string()).collect();
    texts.push(markers.concat());
    texts.push(markers.join(" a\n\n b "));
    texts.extend(markers.iter().map(|m| format!("x{m}y\t\t{}", &m[..m.len() / 2])));
    texts.extend(["", " ", "\n\n\n", "<", "<<|im_start|>|>", "<start_of_<end_of_turn>turn>"].map(String::from));
    texts
}

/// `encode(.., false)` runs the pipeline by hand with a copy of the added vocabulary; it has
/// to give what a whole tokenizer set to `encode_special_tokens` gives.
pub(super) fn assert_plain_encoding_matches_the_library(
    tok: &Tokenizer,
    library: &tokenizers::Tokenizer,
    texts: &[String],
) {
    let mut library = library.clone();
    library.set_encode_special_tokens(true);
    for text in texts {
        let expected = library.encode_fast(text.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(tok.encode(text, false).unwrap(), expected, "{text:?}");
    }
}

#[test]
fn plain_encoding_is_the_libraries_encode_special_tokens_mode() {
    let Some((_, tok)) = smollm() else { return };
    let markers = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<jupyter_code>", "<repo_name>"];
    let mut texts = marker_texts(&markers);
    texts.extend(golden()["texts"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_owned()));
    texts.extend(golden()["chats"].as_array().unwrap().iter().map(|c| c["prompt"].as_str().unwrap().to_owned()));
    assert_plain_encoding_matches_the_library(tok, &tok.library_tokenizer().unwrap(), &texts);
}

#[test]
fn smollm_special_ids() {
    let Some((_, tok)) = smollm() else { return };
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.add_bos()), (Some(1), Some(2), false));
    assert_eq!(tok.bos_token_text(), Some("<|im_start|>"));
    assert_eq!(tok.eos_token_text(), Some("<|im_end|>"));
    // <|endoftext|> (0) and <|im_end|> (2) end generation; <|im_start|> does not.
    assert_eq!(tok.stop_ids(), &[0, 2]);
    assert!(tok.is_stop(2) && !tok.is_stop(1));
    assert!(tok.is_special(1) && tok.is_special(16) && !tok.is_special(17));
    assert_eq!(tok.token_text(19556), Some("Hello"));
    assert_eq!(tok.token_text(u32::MAX), None);
    let hello_world = tok.encode("Hello world", false).unwrap();
    let wrapped = [&[1][..], &hello_world, &[2]].concat();
    assert_eq!(tok.decode(&wrapped, true).unwrap(), "Hello world");
    assert_eq!(tok.decode(&wrapped, false).unwrap(), "<|im_start|>Hello world<|im_end|>");
}

fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Vec<String> {
    let mut decoder = IncrementalDecoder::new(skip_special);
    let mut pieces: Vec<String> = ids.iter().map(|&id| decoder.push(tok, id).unwrap()).collect();
    pieces.push(decoder.finish());
    pieces
}

fn stream_into(decoder: &mut IncrementalDecoder, tok: &Tokenizer, ids: &[u32]) -> String {
    let mut text: String = ids.iter().map(|&id| decoder.push(tok, id).unwrap()).collect();
    text.push_str(&decoder.finish());
    text
}

#[test]
fn incremental_decoder_never_splits_characters() {
    let Some((_, tok)) = smollm() else { return };
    let mut texts = vec!["héllo 世界 🚀".to_string(), "🚀🔥👩‍👩‍👧 done".to_string()];
    texts.extend(golden()["texts"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_string()));
    for text in texts {
        let ids = tok.encode(&text, false).unwrap();
        let pieces = stream(tok, &ids, false);
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{text:?}: {pieces:?}");
        assert_eq!(pieces.concat(), text);
    }
    // The emoji takes several byte-level tokens, so some pushes must have held text back.
    let ids = tok.encode("🚀", false).unwrap();
    assert!(ids.len() > 1);
    assert_eq!(stream(tok, &ids, false).iter().filter(|p| p.is_empty()).count(), ids.len());
}

#[test]
fn incremental_decoder_skips_special_tokens() {
    let Some((_, tok)) = smollm() else { return };
    let ids = tok.encode("Hi there<|im_end|>", true).unwrap();
    assert_eq!(stream(tok, &ids, true).concat(), "Hi there");
    assert_eq!(stream(tok, &ids, false).concat(), "Hi there<|im_end|>");
    // finish() with an incomplete character left flushes it as U+FFFD.
    let rocket = tok.encode("🚀", false).unwrap();
    let mut decoder = IncrementalDecoder::new(true);
    assert_eq!(decoder.push(tok, rocket[0]).unwrap(), "");
    assert!(decoder.finish().contains('\u{FFFD}'));
    assert_eq!(decoder.finish(), "");
    // An id outside the vocabulary is an error that leaves the stream usable.
    assert!(decoder.push(tok, u32::MAX).is_err());
    assert_eq!(stream_into(&mut decoder, tok, &tok.encode("ok", false).unwrap()), "ok");
}

#[test]
fn tokenizer_json_gives_the_same_ids() {
    let Some((_, tok)) = smollm() else { return };
    let dir = std::env::temp_dir().join(format!("stellarchat-tokenizer-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("tokenizer.json");
    std::fs::write(&json, tok.library_tokenizer().unwrap().to_string(false).unwrap()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"bos_token": {"content": "<|im_start|>"}, "eos_token": "<|im_end|>", "add_bos_token": false}"#,
    )
    .unwrap();
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [2, 5]}"#).unwrap();
    let loaded = Tokenizer::from_json_file(&json).unwrap();
    std::fs::remove_dir_all(&dir).ok();

    assert_eq!((loaded.bos_id(), loaded.eos_id(), loaded.add_bos()), (Some(1), Some(2), false));
    assert_eq!(loaded.stop_ids(), &[0, 2, 5]);
    assert_eq!(loaded.vocab_size(), 49152);
    for case in golden()["texts"].as_array().unwrap() {
        assert_eq!(loaded.encode(case["text"].as_str().unwrap(), false).unwrap(), ids_of(&case["ids"]));
    }
    for chat in golden()["chats"].as_array().unwrap() {
        assert_eq!(loaded.encode(chat["prompt"].as_str().unwrap(), true).unwrap(), ids_of(&chat["ids"]));
    }
}

fn strings(items: &[&str]) -> MetadataValue {
    MetadataValue::Array(items.iter().map(|s| MetadataValue::String((*s).to_string())).collect())
}

/// A tiny byte-level vocabulary: the 256 byte symbols plus the digit merges 12, 123, 1234.
fn byte_level_metadata(pre: &str) -> Metadata {
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let mut tokens: Vec<String> = alphabet.into_iter().map(String::from).collect();
    tokens.extend(["12", "123", "1234", "<|begin|>", "<|end|>"].map(String::from));
    let n = tokens.len() as u32;
    let mut types = vec![MetadataValue::I32(1); tokens.len()];
    types[tokens.len() - 2] = MetadataValue::I32(3);
    types[tokens.len() - 1] = MetadataValue::I32(3);
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut entries = BTreeMap::new();
    entries.insert("tokenizer.ggml.model".into(), MetadataValue::String("gpt2".into()));
    entries.insert("tokenizer.ggml.pre".into(), MetadataValue::String(pre.into()));
    entries.insert("tokenizer.ggml.tokens".into(), strings(&token_refs));
    entries.insert("tokenizer.ggml.token_type".into(), MetadataValue::Array(types));
    entries.insert("tokenizer.ggml.merges".into(), strings(&["1 2", "12 3", "123 4"]));
    entries.insert("tokenizer.ggml.bos_token_id".into(), MetadataValue::U32(n - 2));
    entries.insert("tokenizer.ggml.eos_token_id".into(), MetadataValue::U32(n - 1));
    Metadata::new(entries)
}

#[test]
fn pre_tokenizer_regexes_split_digits_like_llama_cpp() {
    let id = |t: &Tokenizer, s: &str| t.token_id(s).unwrap();
    for (pre, expected) in [
        ("gpt2", vec!["1234"]),
        ("default", vec!["123", "4"]),
        ("llama-bpe", vec!["123", "4"]),
        ("qwen2", vec!["1", "2", "3", "4"]),
        ("smollm", vec!["1", "2", "3", "4"]),
    ] {
        let tok = Tokenizer::from_gguf(&byte_level_metadata(pre)).unwrap();
        let expected: Vec<u32> = expected.iter().map(|s| id(&tok, s)).collect();
        assert_eq!(tok.encode("1234", false).unwrap(), expected, "pre {pre}");
        let text = "Hello, wörld! 'tis 42\n\n  x<|end|>";
        assert_eq!(tok.decode(&tok.encode(text, false).unwrap(), false).unwrap(), text, "pre {pre}");
        assert_eq!(tok.encode("<|end|>", true).unwrap(), vec![id(&tok, "<|end|>")]);
        assert_eq!(tok.stop_ids(), &[id(&tok, "<|end|>")]);
    }
    // llama-bpe defaults to adding BOS, like llama.cpp; the others do not.
    let llama3 = Tokenizer::from_gguf(&byte_level_metadata("llama-bpe")).unwrap();
    let (bos, one) = (id(&llama3, "<|begin|>"), id(&llama3, "1"));
    assert!(llama3.add_bos());
    assert_eq!(llama3.encode_prompt("1").unwrap(), vec![bos, one]);
    assert_eq!(llama3.encode_prompt("<|begin|>1").unwrap(), vec![bos, one]);
    let qwen2 = Tokenizer::from_gguf(&byte_level_metadata("qwen2")).unwrap();
    assert!(!qwen2.add_bos());
    assert_eq!(qwen2.encode_prompt("1").unwrap(), vec![one]);
}

#[test]
fn unknown_pre_or_model_is_an_error() {
    let err = Tokenizer::from_gguf(&byte_level_metadata("no-such-pre")).unwrap_err();
    assert!(matches!(&err, ModelError::Tokenizer(m) if m.contains("no-such-pre")), "{err}");
    let mut entries = BTreeMap::new();
    entries.insert("tokenizer.ggml.model".into(), MetadataValue::String("bert".into()));
    entries.insert("tokenizer.ggml.tokens".into(), strings(&["a"]));
    let err = Tokenizer::from_gguf(&Metadata::new(entries)).unwrap_err();
    assert!(matches!(&err, ModelError::Tokenizer(m) if m.contains("bert")), "{err}");
}

/// A hand-made SentencePiece vocabulary in which "hello" and "world" merge into one piece.
fn sentencepiece_metadata() -> Metadata {
    let mut tokens = vec![("<unk>".to_string(), 0.0, 2), ("<s>".into(), 0.0, 3), ("</s>".into(), 0.0, 3)];
    tokens.extend((0u8..=255).map(|b| (format!("<0x{b:02X}>"), 0.0, 6)));
    let pieces = [
        ("▁h", -1.0),
        ("ll", -2.0),
        ("▁he", -3.0),
        ("llo", -4.0),
        ("▁hello", -5.0),
        ("el", -6.0),
        ("lo", -7.0),
        ("▁w", -8.0),
        ("or", -9.0),
        ("▁wor", -9.5),
        ("ld", -10.0),
        ("▁world", -11.0),
        ("▁", -12.0),
        ("h", -13.0),
        ("e", -14.0),
        ("l", -15.0),
        ("o", -16.0),
        ("w", -17.0),
        ("r", -18.0),
        ("d", -19.0),
    ];
    tokens.extend(pieces.iter().map(|&(t, s)| (t.to_string(), s, 1)));
    let mut entries = BTreeMap::new();
    let texts: Vec<&str> = tokens.iter().map(|t| t.0.as_str()).collect();
    entries.insert("tokenizer.ggml.model".into(), MetadataValue::String("llama".into()));
    entries.insert("tokenizer.ggml.tokens".into(), strings(&texts));
    entries.insert(
        "tokenizer.ggml.scores".into(),
        MetadataValue::Array(tokens.iter().map(|t| MetadataValue::F32(t.1)).collect()),
    );
    entries.insert(
        "tokenizer.ggml.token_type".into(),
        MetadataValue::Array(tokens.iter().map(|t| MetadataValue::I32(t.2)).collect()),
    );
    Metadata::new(entries)
}

#[test]
fn sentencepiece_vocab_encodes_and_decodes() {
    let tok = Tokenizer::from_gguf(&sentencepiece_metadata()).unwrap();
    let id = |s: &str| tok.token_id(s).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.add_bos()), (Some(1), Some(2), true));
    assert_eq!(tok.stop_ids(), &[2]);
    assert_eq!(tok.encode("hello world", false).unwrap(), vec![id("▁hello"), id("▁world")]);
    // "i" and "é" are not pieces: byte fallback.
    assert_eq!(tok.encode("hi", false).unwrap(), vec![id("▁h"), id("<0x69>")]);
    assert_eq!(tok.encode("é", false).unwrap(), vec![id("▁"), id("<0xC3>"), id("<0xA9>")]);
    // Text after a special token gets its own leading space, as in llama.cpp.
    assert_eq!(tok.encode("<s>hello</s>world", true).unwrap(), vec![1, id("▁hello"), 2, id("▁world")]);
    assert_eq!(tok.encode_prompt("hello").unwrap(), vec![1, id("▁hello")]);
    assert_eq!(tok.encode_prompt("<s>hello").unwrap(), vec![1, id("▁hello")]);
    for text in ["hello world", "hi é 🚀", "world  hello"] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        assert_eq!(stream(&tok, &ids, false).concat(), text);
    }
    assert_eq!(tok.decode(&[1, id("▁hello"), 2], true).unwrap(), "hello");
}

#[test]
fn merges_follow_scores_then_lengths() {
    let merges = merges_for_test(&["a", "b", "c", "ab", "bc", "abc"], &[0.0, 0.0, 0.0, -2.0, -1.0, -3.0]);
    assert_eq!(merges, ["b c", "a b", "ab c", "a bc"]);
}

#[test]
fn a_repeated_token_text_merges_once_with_its_last_score() {
    // "ab" at ids 3 and 5: one merge, ranked by the score of id 5 (above "bc"'s), as
    // Python's dict {text: score} in Hugging Face's converter keeps it.
    let merges = merges_for_test(&["a", "b", "c", "ab", "bc", "ab"], &[0.0, 0.0, 0.0, -9.0, -1.0, -0.5]);
    assert_eq!(merges, ["a b", "b c"]);
}

/// `merges_from_scores` over a vocabulary that maps each text to its first id, as "left right".
fn merges_for_test(tokens: &[&str], scores: &[f32]) -> Vec<String> {
    let texts = super::token_texts::TokenTexts::new(tokens.iter().copied());
    let mut vocab = tokenizers::models::bpe::Vocab::default();
    for (id, &text) in (0u32..).zip(tokens) {
        vocab.entry(text.to_owned()).or_insert(id);
    }
    gguf_vocab::merges_from_scores(&texts, scores, &vocab).into_iter().map(|(l, r)| format!("{l} {r}")).collect()
}

#[test]
fn tokenizer_is_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<IncrementalDecoder>();
}

#[test]
fn synthetic_tokenizer_is_one_token_per_byte() {
    let tiny = Tokenizer::synthetic(256).unwrap();
    assert_eq!((tiny.vocab_size(), tiny.bos_id(), tiny.eos_id()), (256, None, None));
    assert!(tiny.stop_ids().is_empty());
    let text = "hi <|im_start|> é🚀";
    let ids = tiny.encode(text, true).unwrap();
    assert_eq!(ids, text.bytes().map(u32::from).collect::<Vec<_>>());
    assert_eq!(tiny.decode(&ids, false).unwrap(), text);
    assert!(Tokenizer::synthetic(255).is_err());

    let big = Tokenizer::synthetic(128_256).unwrap();
    assert_eq!(big.vocab_size(), 128_256);
    assert_eq!((big.bos_id(), big.eos_id(), big.add_bos()), (Some(257), Some(258), false));
    assert_eq!(big.stop_ids(), &[256, 258]);
    assert_eq!(big.encode("<|im_start|>hi<|im_end|>", true).unwrap(), vec![257, 104, 105, 258]);
    assert_eq!(big.encode("hi", false).unwrap(), vec![104, 105]);
    let distinct: std::collections::HashSet<&str> = (0..128_256).filter_map(|id| big.token_text(id)).collect();
    assert_eq!(distinct.len(), 128_256);
    assert_eq!(big.decode(&[259, 260, 259 + 75], true).unwrap(), " ba be baba");
    // Random ids decode and stream without errors.
    let ids: Vec<u32> = (0..2000u32).map(|i| i.wrapping_mul(2_654_435_761) % 128_256).collect();
    let whole = big.decode(&ids, true).unwrap();
    assert_eq!(stream(&big, &ids, true).concat(), whole);
}
