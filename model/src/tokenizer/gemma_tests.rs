//! Gemma 3's tokenizer against llama.cpp's golden ids: a 262,144-token SentencePiece
//! vocabulary without a space prefix, whose user-defined tokens (runs of spaces, newlines
//! and tabs) are split out of any text before SentencePiece sees it.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::*;
use crate::gguf::GgufFile;

const WEIGHTS: &str = "gemma-3-270m-q4_k_m.gguf";
const GOLDEN: &str = "gemma-3-270m-q4_k_m.json";

pub(super) fn golden() -> &'static serde_json::Value {
    static GOLDEN_DATA: OnceLock<serde_json::Value> = OnceLock::new();
    GOLDEN_DATA.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden").join(GOLDEN);
        serde_json::from_str(&std::fs::read_to_string(path).expect("read golden file")).expect("golden JSON")
    })
}

/// Gemma's tokenizer and how long `Tokenizer::from_gguf` took. A missing file fails the
/// test: `just test` fetches it, and a skipped golden test would hide a regression.
pub(super) fn gemma() -> &'static (Tokenizer, Duration) {
    static MODEL: OnceLock<(Tokenizer, Duration)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../weights").join(WEIGHTS);
        assert!(path.is_file(), "{} is missing: run `just weights gemma3` (`just test` does)", path.display());
        let file = GgufFile::open(&path).expect("open GGUF");
        let started = Instant::now();
        let tokenizer = Tokenizer::from_gguf(&file.metadata).expect("tokenizer from GGUF");
        (tokenizer, started.elapsed())
    })
}

/// Gemma's vocabulary as the Hugging Face pipeline our SentencePiece encoder replaced: the
/// reference where both agree with llama.cpp on the golden texts.
pub(super) fn gemma_library() -> &'static tokenizers::Tokenizer {
    static LIBRARY: OnceLock<tokenizers::Tokenizer> = OnceLock::new();
    LIBRARY.get_or_init(|| gemma().0.library_tokenizer().expect("Gemma as a Hugging Face tokenizer").into_owned())
}

fn ids_of(value: &serde_json::Value) -> Vec<u32> {
    value.as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect()
}

#[test]
fn gemma_golden_texts_match_llama_cpp() {
    let (tok, _) = gemma();
    let texts = golden()["texts"].as_array().expect("texts");
    assert!(!texts.is_empty());
    for case in texts {
        let text = case["text"].as_str().expect("text");
        let expected = ids_of(&case["ids"]);
        assert_eq!(tok.encode(text, false).unwrap(), expected, "text {text:?}");
        assert_eq!(tok.decode(&expected, false).unwrap(), text);
    }
}

#[test]
fn gemma_golden_prompts_match_llama_cpp() {
    let (tok, _) = gemma();
    let prompts = golden()["prompts"].as_array().expect("prompts");
    assert!(prompts.iter().any(|p| p["ids"].as_array().unwrap().len() > 512), "the long prompt is missing");
    for case in prompts {
        let prompt = case["prompt"].as_str().expect("prompt");
        let expected = ids_of(&case["ids"]);
        assert_eq!(expected.first(), Some(&2), "golden prompts start with BOS");
        assert_eq!(tok.encode_prompt(prompt).unwrap(), expected, "prompt {:?}", case["name"]);
        assert_eq!(tok.decode(&expected, true).unwrap(), prompt);
        assert_eq!(tok.decode(&expected, false).unwrap(), format!("<bos>{prompt}"));
    }
}

#[test]
fn gemma_special_tokens() {
    let (tok, _) = gemma();
    assert_eq!(tok.vocab_size(), 262_144);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.add_bos()), (Some(2), Some(1), true));
    assert_eq!((tok.bos_token_text(), tok.eos_token_text()), (Some("<bos>"), Some("<eos>")));
    assert_eq!(tok.token_id("<start_of_turn>"), Some(105));
    assert_eq!(tok.token_id("<end_of_turn>"), Some(106));
    // <eos> and <end_of_turn> end generation; <start_of_turn> and <bos> do not.
    assert_eq!(tok.stop_ids(), &[1, 106]);
    for id in [0, 1, 2, 3, 105, 106] {
        assert!(tok.is_special(id), "id {id} should be special");
    }
    // User-defined tokens (the "\n" run tokens) are ordinary text, not control tokens.
    assert!(!tok.is_special(107) && !tok.is_special(138));

    let turn = "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n";
    let ids = tok.encode(turn, true).unwrap();
    assert_eq!(ids.iter().filter(|&&id| id == 105).count(), 2, "{ids:?}");
    assert_eq!(ids.iter().filter(|&&id| id == 106).count(), 1, "{ids:?}");
    assert_eq!(tok.decode(&ids, false).unwrap(), turn);
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nHi\nmodel\n");
    // Without parsing, the markers are plain text.
    let plain = tok.encode(turn, false).unwrap();
    assert!(!plain.contains(&105) && !plain.contains(&106), "{plain:?}");
    assert_eq!(tok.decode(&plain, false).unwrap(), turn);
}

#[test]
fn gemma_plain_encoding_splits_user_defined_tokens_only() {
    let (tok, _) = gemma();
    // "\n\n" (108) is user-defined: split out of any text; <start_of_turn> (105) is control.
    let ids = tok.encode("<start_of_turn>\n\nhi", false).unwrap();
    assert!(ids.contains(&108) && !ids.contains(&105), "{ids:?}");
    let markers = ["<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<unused17>", "<start_of_image>", "</s>"];
    let mut texts = super::tests::marker_texts(&markers);
    texts.extend(golden()["texts"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_owned()));
    texts.extend(golden()["prompts"].as_array().unwrap().iter().map(|c| c["prompt"].as_str().unwrap().to_owned()));
    super::tests::assert_plain_encoding_matches_the_library(tok, gemma_library(), &texts);
}

#[test]
fn gemma_streams_whole_characters() {
    let (tok, _) = gemma();
    for text in ["héllo 世界 🚀\n\n  tabs\t\tend", "   three spaces first"] {
        let ids = tok.encode(text, false).unwrap();
        let mut decoder = IncrementalDecoder::new(false);
        let mut pieces: Vec<String> = ids.iter().map(|&id| decoder.push(tok, id).unwrap()).collect();
        pieces.push(decoder.finish());
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{text:?}: {pieces:?}");
        assert_eq!(pieces.concat(), text);
    }
}

/// How long the 262,144-token vocabulary takes to build (a probe, not a check: no test
/// asserts a wall-clock time). `--lib gemma_vocabulary_build_time -- --ignored --nocapture`.
#[test]
#[ignore]
fn gemma_vocabulary_build_time() {
    let (_, took) = gemma();
    eprintln!("Gemma 3 tokenizer (262,144 tokens) built in {took:?}");
}

/// The same vocabulary as the Hugging Face pipeline `from_gguf` built before our own
/// SentencePiece encoder (`spm`), for comparison with the probe above: its build time, and,
/// run under heaptrack, its memory. `--lib gemma_library_build_time -- --ignored --nocapture`.
#[test]
#[ignore]
fn gemma_library_build_time() {
    let (tok, _) = gemma();
    let started = Instant::now();
    let library = tok.library_tokenizer().expect("Gemma as a Hugging Face tokenizer");
    eprintln!("Gemma 3 as a Hugging Face BPE pipeline built in {:?}", started.elapsed());
    drop(library);
}
