//! Our SentencePiece encoder (`spm`): hand-made vocabularies for its rules (ties, byte
//! fallback, the unknown token, spaces, added tokens), and Gemma 3's vocabulary against the
//! Hugging Face pipeline it replaces, on random text from a fixed seed.

use std::collections::BTreeMap;
use std::time::Instant;

use super::gemma_tests::{gemma, gemma_library};
use super::*;
use crate::gguf::MetadataValue;

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// A `llama` vocabulary of `pieces` (text, score, type), optionally after the 256 byte tokens.
fn vocabulary(pieces: &[(&str, f32, i32)], byte_tokens: bool, add_space_prefix: bool) -> Tokenizer {
    let mut tokens: Vec<(String, f32, i32)> = pieces.iter().map(|&(t, s, k)| (t.to_owned(), s, k)).collect();
    if byte_tokens {
        tokens.extend((0u8..=255).map(|b| (format!("<0x{b:02X}>"), 0.0, BYTE)));
    }
    let array = |f: &dyn Fn(&(String, f32, i32)) -> MetadataValue| MetadataValue::Array(tokens.iter().map(f).collect());
    let mut entries = BTreeMap::new();
    entries.insert("tokenizer.ggml.model".into(), MetadataValue::String("llama".into()));
    entries.insert("tokenizer.ggml.tokens".into(), array(&|t| MetadataValue::String(t.0.clone())));
    entries.insert("tokenizer.ggml.scores".into(), array(&|t| MetadataValue::F32(t.1)));
    entries.insert("tokenizer.ggml.token_type".into(), array(&|t| MetadataValue::I32(t.2)));
    entries.insert("tokenizer.ggml.add_space_prefix".into(), MetadataValue::Bool(add_space_prefix));
    Tokenizer::from_gguf(&Metadata::new(entries)).expect("tokenizer")
}

/// Ids 0..: `<unk>`, `<s>`, `</s>`, then these pieces.
const PIECES: &[(&str, f32, i32)] = &[
    ("<unk>", 0.0, UNKNOWN),
    ("<s>", 0.0, CONTROL),
    ("</s>", 0.0, CONTROL),
    ("▁", -1.0, NORMAL),
    ("a", -2.0, NORMAL),
    ("b", -3.0, NORMAL),
    ("c", -4.0, NORMAL),
    // "bc" before "ab", with the same score: Hugging Face's merge ranks put the lower id
    // first, llama.cpp the leftmost pair.
    ("bc", -5.0, NORMAL),
    ("ab", -5.0, NORMAL),
    ("é", -6.0, NORMAL),
    ("▁a", -7.0, NORMAL),
    ("▁▁", -8.0, NORMAL),
    ("abab", -9.0, NORMAL),
    ("\n\n", 0.0, USER_DEFINED),
];

fn ids(tok: &Tokenizer, texts: &[&str]) -> Vec<u32> {
    texts.iter().map(|t| tok.token_id(t).unwrap_or_else(|| panic!("no token {t:?}"))).collect()
}

#[test]
fn ties_go_to_the_leftmost_pair() {
    let tok = vocabulary(PIECES, true, false);
    // "ab" and "bc" score the same: the leftmost pair merges, though "bc" has the lower id.
    assert_eq!(tok.encode("abc", false).unwrap(), ids(&tok, &["ab", "c"]));
    assert_eq!(tok.encode("cabc", false).unwrap(), ids(&tok, &["c", "ab", "c"]));
    // Equal scores at two places: the leftmost first. "abab" forms only from two "ab".
    assert_eq!(tok.encode("abab", false).unwrap(), ids(&tok, &["abab"]));
    assert_eq!(tok.encode("bcab", false).unwrap(), ids(&tok, &["bc", "ab"]));
}

#[test]
fn characters_outside_the_vocabulary_become_bytes() {
    let tok = vocabulary(PIECES, true, false);
    // "é" is a piece (two bytes, one character); "ñ" and the emoji are not.
    assert_eq!(tok.encode("éa", false).unwrap(), ids(&tok, &["é", "a"]));
    assert_eq!(tok.encode("añ", false).unwrap(), ids(&tok, &["a", "<0xC3>", "<0xB1>"]));
    assert_eq!(tok.encode("🚀", false).unwrap(), ids(&tok, &["<0xF0>", "<0x9F>", "<0x9A>", "<0x80>"]));
    for text in ["añ", "🚀 ab", "é\n\né"] {
        let encoded = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&encoded, false).unwrap(), text);
    }
    // A lone byte token that is not UTF-8 decodes as U+FFFD.
    assert_eq!(tok.decode(&ids(&tok, &["a", "<0xF0>", "b"]), false).unwrap(), "a\u{FFFD}b");
}

#[test]
fn without_byte_tokens_a_run_of_unknown_characters_is_one_unknown_token() {
    let tok = vocabulary(PIECES, false, false);
    assert_eq!(tok.encode("xyz", false).unwrap(), vec![0]);
    assert_eq!(tok.encode("xaçy", false).unwrap(), [vec![0], ids(&tok, &["a"]), vec![0]].concat());
}

#[test]
fn spaces_are_underlines_and_the_prefix_follows_the_vocabulary() {
    let tok = vocabulary(PIECES, true, false);
    assert_eq!(tok.encode("", false).unwrap(), Vec::<u32>::new());
    assert_eq!(tok.encode("a", false).unwrap(), ids(&tok, &["a"]));
    assert_eq!(tok.encode(" a", false).unwrap(), ids(&tok, &["▁a"]));
    // "▁a" (-7) outscores "▁▁" (-8).
    assert_eq!(tok.encode("  a", false).unwrap(), ids(&tok, &["▁", "▁a"]));
    assert_eq!(tok.encode("   ", false).unwrap(), ids(&tok, &["▁▁", "▁"]));
    assert_eq!(tok.decode(&tok.encode(" a  b ", false).unwrap(), false).unwrap(), " a  b ");

    let prefixed = vocabulary(PIECES, true, true);
    assert_eq!(prefixed.encode("", false).unwrap(), Vec::<u32>::new());
    assert_eq!(prefixed.encode("a", false).unwrap(), ids(&prefixed, &["▁a"]));
    assert_eq!(prefixed.encode(" a", false).unwrap(), ids(&prefixed, &["▁", "▁a"]));
    // Every run of ordinary text gets the prefix, after special and user-defined tokens too.
    assert_eq!(prefixed.encode("<s>a\n\na", true).unwrap(), ids(&prefixed, &["<s>", "▁a", "\n\n", "▁a"]));
    // Decoding drops the one prefix space.
    assert_eq!(prefixed.decode(&ids(&prefixed, &["▁a", "▁a"]), false).unwrap(), "a a");
}

#[test]
fn added_tokens_are_split_out_as_the_library_does() {
    let tok = vocabulary(PIECES, true, false);
    assert_eq!(tok.encode("a<s>\n\nb", true).unwrap(), ids(&tok, &["a", "<s>", "\n\n", "b"]));
    // Unparsed, control text is ordinary text; user-defined text is still split out.
    let plain = tok.encode("a<s>\n\nb", false).unwrap();
    assert!(!plain.contains(&1) && plain.contains(&tok.token_id("\n\n").unwrap()), "{plain:?}");
    assert_eq!(tok.decode(&plain, false).unwrap(), "a<s>\n\nb");
    assert_eq!(tok.decode(&ids(&tok, &["<s>", "a", "</s>"]), true).unwrap(), "a");
    assert!(tok.is_special(0) && tok.is_special(1) && !tok.is_special(13));
}

/// The hand-made vocabulary without ties, where the two algorithms must agree.
#[test]
fn a_vocabulary_without_ties_encodes_as_the_library_does() {
    let pieces: Vec<(&str, f32, i32)> =
        PIECES.iter().map(|&(t, s, k)| (t, if t == "ab" { -5.5 } else { s }, k)).collect();
    for prefix in [false, true] {
        let tok = vocabulary(&pieces, true, prefix);
        let library = tok.library_tokenizer().unwrap().into_owned();
        let texts = ["abc", "  a b  c ", "ababab é ñ🚀", "<s>a</s>\n\n\n b", "", " ", "\n\n"];
        super::tests::assert_plain_encoding_matches_the_library(&tok, &library, &texts.map(String::from));
        for text in texts {
            let expected = library.encode_fast(text, false).unwrap().get_ids().to_vec();
            assert_eq!(tok.encode(text, true).unwrap(), expected, "{text:?}");
            assert_eq!(tok.decode(&expected, false).unwrap(), library.decode(&expected, false).unwrap());
        }
    }
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

/// Random texts over Gemma's vocabulary: a few decoded random tokens, with spaces, newlines,
/// tabs, markers and characters Gemma may lack mixed in.
fn random_texts(tok: &Tokenizer, count: usize) -> Vec<String> {
    const EXTRAS: &[&str] =
        &[" ", "  ", "\n", "\n\n", "\t", "<start_of_turn>", "<eos>", "é", "🚀", "\u{10FFFD}", "\u{E000}", "ab", "."];
    let mut random = Random(0x5EED_1234_ABCD_0001);
    (0..count)
        .map(|_| {
            let mut text = String::new();
            for _ in 0..1 + random.below(12) {
                if random.below(4) == 0 {
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

#[test]
fn gemma_random_texts_encode_as_the_library_does() {
    assert_gemma_random_texts_encode_as_the_library_does(400);
}

/// The same on many more texts (a minute or so). `--lib gemma_many_random -- --ignored`.
#[test]
#[ignore]
fn gemma_many_random_texts_encode_as_the_library_does() {
    assert_gemma_random_texts_encode_as_the_library_does(20_000);
}

fn assert_gemma_random_texts_encode_as_the_library_does(count: usize) {
    let (tok, _) = gemma();
    let library = gemma_library();
    let texts = random_texts(tok, count);
    for text in &texts {
        let expected = library.encode_fast(text.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(tok.encode(text, true).unwrap(), expected, "{text:?}");
        assert_eq!(tok.decode(&expected, false).unwrap(), library.decode(&expected, false).unwrap());
        assert_eq!(tok.decode(&expected, true).unwrap(), library.decode(&expected, true).unwrap());
    }
    super::tests::assert_plain_encoding_matches_the_library(tok, library, &texts);
}

/// Encoding speed on a long text, ours and the library's (a probe, not a check: no test
/// asserts a wall-clock time). `--lib gemma_encoding_speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn gemma_encoding_speed() {
    let (tok, _) = gemma();
    let library = gemma_library();
    let prompt = super::gemma_tests::golden()["prompts"][2]["prompt"].as_str().unwrap();
    let mut text = random_texts(tok, 2000).concat();
    while text.len() < 1 << 20 {
        text.push_str(prompt);
    }
    let started = Instant::now();
    let ours = tok.encode(&text, true).unwrap();
    let ours_took = started.elapsed();
    let started = Instant::now();
    let theirs = library.encode_fast(text.as_str(), false).unwrap().get_ids().to_vec();
    let theirs_took = started.elapsed();
    assert_eq!(ours, theirs);
    eprintln!("{} bytes, {} tokens: ours in {ours_took:?}, the library's in {theirs_took:?}", text.len(), ours.len());
}
