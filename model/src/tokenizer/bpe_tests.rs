//! Our byte-level BPE encoder (`bpe`): hand-made vocabularies for its rules (ranks before
//! positions, ties to the leftmost pair, a repeated merge, `ignore_merges`), and SmolLM2's
//! vocabulary against the Hugging Face pipeline built straight from the file's metadata, on
//! random text from a fixed seed.

use std::collections::BTreeMap;

use super::gguf_vocab::{byte_level_library, pre_tokenizer_regexes};
use super::tests::{assert_plain_encoding_matches_the_library, smollm};
use super::*;
use crate::gguf::MetadataValue;

/// A byte-level vocabulary: the 256 alphabet symbols, then `extra` tokens, with `merges`
/// ("left right", in rank order) and the given `pre` type.
fn vocabulary(extra: &[&str], merges: &[&str], pre: &str) -> Tokenizer {
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let mut tokens: Vec<String> = alphabet.into_iter().map(String::from).collect();
    tokens.extend(extra.iter().map(|s| s.to_string()));
    let strings = |items: &[String]| MetadataValue::Array(items.iter().map(|s| MetadataValue::String(s.clone())).collect());
    let mut entries = BTreeMap::new();
    entries.insert("tokenizer.ggml.model".into(), MetadataValue::String("gpt2".into()));
    entries.insert("tokenizer.ggml.pre".into(), MetadataValue::String(pre.into()));
    entries.insert("tokenizer.ggml.tokens".into(), strings(&tokens));
    let merges: Vec<String> = merges.iter().map(|s| s.to_string()).collect();
    entries.insert("tokenizer.ggml.merges".into(), strings(&merges));
    entries.insert("tokenizer.ggml.add_bos_token".into(), MetadataValue::Bool(false));
    Tokenizer::from_gguf(&Metadata::new(entries)).expect("tokenizer")
}

fn ids(tok: &Tokenizer, texts: &[&str]) -> Vec<u32> {
    texts.iter().map(|t| tok.token_id(t).unwrap_or_else(|| panic!("no token {t:?}"))).collect()
}

#[test]
fn the_lowest_rank_merges_first_wherever_it_is() {
    // "bc" ranks before "ab": "abc" is a + bc, although "ab" is further left.
    let tok = vocabulary(&["ab", "bc"], &["b c", "a b"], "gpt2");
    assert_eq!(tok.encode("abc", false).unwrap(), ids(&tok, &["a", "bc"]));
    let tok = vocabulary(&["ab", "bc"], &["a b", "b c"], "gpt2");
    assert_eq!(tok.encode("abc", false).unwrap(), ids(&tok, &["ab", "c"]));
}

#[test]
fn a_pair_that_repeats_merges_from_the_left() {
    let tok = vocabulary(&["aa"], &["a a"], "gpt2");
    assert_eq!(tok.encode("aaa", false).unwrap(), ids(&tok, &["aa", "a"]));
    assert_eq!(tok.encode("aaaa", false).unwrap(), ids(&tok, &["aa", "aa"]));
    // Merges go on from merged symbols: "aa aa" makes "aaaa".
    let tok = vocabulary(&["aa", "aaaa"], &["a a", "aa aa"], "gpt2");
    assert_eq!(tok.encode("aaaaa", false).unwrap(), ids(&tok, &["aaaa", "a"]));
}

#[test]
fn a_repeated_merge_keeps_its_first_rank_and_unusable_merges_are_dropped() {
    // "b c" is listed first and again after "a b"; "x y" makes no token; "q" alone is no merge.
    let tok = vocabulary(&["ab", "bc"], &["b c", "x y", "q", "a b", "b c"], "gpt2");
    assert_eq!(tok.encode("abc", false).unwrap(), ids(&tok, &["a", "bc"]));
}

#[test]
fn pieces_are_split_by_the_pre_tokenizer_and_spaces_become_the_alphabet() {
    let tok = vocabulary(&["Ġa", "ab"], &["Ġ a", "a b"], "gpt2");
    // " ab" is one piece: Ġ merges with a (rank 0) before a with b.
    assert_eq!(tok.encode(" ab", false).unwrap(), ids(&tok, &["Ġa", "b"]));
    assert_eq!(tok.decode(&tok.encode("x ab\n", false).unwrap(), false).unwrap(), "x ab\n");
}

#[test]
fn ignore_merges_takes_a_whole_piece_that_is_a_token() {
    // llama-bpe ignores merges: "abc" is a token although no merge makes it.
    let tok = vocabulary(&["ab", "abc"], &["a b"], "llama-bpe");
    assert_eq!(tok.encode("abc", false).unwrap(), ids(&tok, &["abc"]));
    let tok = vocabulary(&["ab", "abc"], &["a b"], "gpt2");
    assert_eq!(tok.encode("abc", false).unwrap(), ids(&tok, &["ab", "c"]));
}

/// A small deterministic generator (xorshift64*), so the random texts are the same each run.
struct Random(u64);

impl Random {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

/// Random texts over SmolLM2's vocabulary: decoded random tokens with spaces, newlines,
/// digits, contractions, markers and characters outside ASCII mixed in.
fn random_texts(tok: &Tokenizer, count: usize) -> Vec<String> {
    const EXTRAS: &[&str] = &[
        " ", "   ", "\n", "\n\n", "\t", " \n ", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "'s", "'ll", "2026",
        "3.14159", "é", "ü", "🚀", "\u{10FFFD}", "日本語", "—", "  x", "!!", ".",
    ];
    let mut random = Random(0x5EED_B9E0_0000_0002);
    (0..count)
        .map(|_| {
            let mut text = String::new();
            for _ in 0..1 + random.below(16) {
                if random.below(3) == 0 {
                    text.push_str(EXTRAS[random.below(EXTRAS.len())]);
                } else {
                    let id = random.below(tok.vocab_size()) as u32;
                    text.push_str(&tok.decode(&[id], false).unwrap());
                }
            }
            text
        })
        .collect()
}

/// SmolLM2's vocabulary as the Hugging Face pipeline, from the file's own merge strings (not
/// from our table, so that a slip in reading them shows).
fn smollm_library(metadata: &Metadata, tok: &Tokenizer) -> tokenizers::Tokenizer {
    let merges = metadata.opt_string_array("tokenizer.ggml.merges").unwrap().unwrap();
    let types = metadata.opt_i64_array("tokenizer.ggml.token_type").unwrap().unwrap();
    let spec = pre_tokenizer_regexes(metadata.opt_str("tokenizer.ggml.pre").unwrap().unwrap_or("")).unwrap();
    byte_level_library(&tok.inner.tokens, merges, &types, &spec).unwrap()
}

#[test]
fn smollm_random_texts_encode_and_decode_as_the_library_does() {
    let Some((metadata, tok)) = smollm() else { return };
    assert!(matches!(tok.inner.pipeline, Pipeline::ByteLevel(_)), "SmolLM2 uses our byte-level encoder");
    let library = smollm_library(metadata, tok);
    let texts = random_texts(tok, 1500);
    for text in &texts {
        let expected = library.encode_fast(text.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(tok.encode(text, true).unwrap(), expected, "{text:?}");
        assert_eq!(tok.decode(&expected, false).unwrap(), library.decode(&expected, false).unwrap());
        assert_eq!(tok.decode(&expected, true).unwrap(), library.decode(&expected, true).unwrap());
    }
    assert_plain_encoding_matches_the_library(tok, &library, &texts);
}

#[test]
fn a_long_run_of_one_character_encodes_in_reasonable_time_and_round_trips() {
    let Some((_, tok)) = smollm() else { return };
    // A quadratic merge loop would take minutes on this; the heap takes milliseconds.
    let text = " ".repeat(200_000) + &"a".repeat(200_000);
    let ids = tok.encode(&text, false).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
}
