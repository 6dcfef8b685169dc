//! A lower bound on a text's token count from its bytes alone, so that a prompt certain to
//! exceed the context can be refused before it is tokenized (a 4 MB prompt takes seconds).
//!
//! The bound: no token stands for more than `L` bytes of the text (`L` = the longest
//! token's bytes, special tokens' texts included), so text whose bytes all end up in tokens
//! has at least `ceil(B / L)` tokens. Which bytes surely end up in tokens: those of every
//! character whose bytes each have a token of their own (byte-level BPE drops a byte without
//! one; SentencePiece turns a character it cannot spell into the unknown token, which may
//! swallow a whole run); only those characters are counted. The rest of the pipeline must
//! keep every byte: no normalizer that can shrink the text (only the SentencePiece space
//! marker and prefix are allowed) and no pre-tokenizer that drops characters (whitespace
//! splitting, a `Removed` delimiter). Otherwise there is no bound, and the caller tokenizes.

use serde_json::Value;

use super::{Pipeline, Tokenizer};

/// SentencePiece's word-boundary marker, which stands for a space.
const SPIECE_UNDERLINE: &str = "\u{2581}";

/// Pre-tokenizers that drop characters from the text.
const DROPPING_PRE_TOKENIZERS: &[&str] = &["Whitespace", "WhitespaceSplit", "BertPreTokenizer", "CharDelimiterSplit"];

/// What the bound needs to know of a vocabulary.
#[derive(Debug, Clone)]
pub(super) struct LengthBound {
    /// The most bytes one token stands for.
    longest: usize,
    /// The bytes that have a (non-special) token of their own.
    spelled: [bool; 256],
}

impl Tokenizer {
    /// The fewest tokens `texts` (one prompt in pieces) can encode to, BOS not counted, or
    /// `None` when this tokenizer gives no such bound (see the module docs). One pass over
    /// the bytes: far cheaper than encoding.
    pub fn min_token_count<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> Option<usize> {
        let bound = self.inner.length_bound.get_or_init(|| self.length_bound()).as_ref()?;
        let mut buf = [0u8; 4];
        let spelled_bytes: usize = texts
            .into_iter()
            .flat_map(str::chars)
            .map(|c| {
                c.encode_utf8(&mut buf).as_bytes().iter().all(|&b| bound.spelled[b as usize]).then_some(c.len_utf8())
            })
            .map(|n| n.unwrap_or(0))
            .sum();
        Some(spelled_bytes.div_ceil(bound.longest))
    }

    /// The vocabulary's figures, when its pipeline keeps every byte it can spell.
    fn length_bound(&self) -> Option<LengthBound> {
        // Our SentencePiece pipeline only prepends `▁` and writes spaces as `▁`.
        let json = |v: Option<Value>| v.unwrap_or(Value::Null);
        let (normalizer, pre_tokenizer) = match &self.inner.pipeline {
            Pipeline::Library { tokenizer, .. } => (
                json(tokenizer.get_normalizer().and_then(|n| serde_json::to_value(n).ok())),
                json(tokenizer.get_pre_tokenizer().and_then(|p| serde_json::to_value(p).ok())),
            ),
            // No normalizer: the added-token split, then these pre-tokenizers.
            Pipeline::ByteLevel(encoder) => (Value::Null, json(serde_json::to_value(encoder.pre_tokenizer()).ok())),
            Pipeline::SentencePiece(_) => (Value::Null, Value::Null),
        };
        if !normalizer_keeps_bytes(&normalizer) || drops_characters(&pre_tokenizer) {
            return None;
        }
        let mut spelled = [false; 256];
        let mut longest = 1;
        for id in 0..self.vocab_size() as u32 {
            let bytes = self.token_bytes(id);
            if let [b] = bytes[..]
                && !self.is_special(id)
            {
                spelled[b as usize] = true;
            }
            longest = longest.max(bytes.len());
        }
        Some(LengthBound { longest, spelled })
    }
}

/// Whether a (serialized) normalizer never makes the text shorter: none, or only the
/// SentencePiece steps (prepend a marker, spaces to markers).
fn normalizer_keeps_bytes(normalizer: &Value) -> bool {
    if normalizer.is_null() {
        return true;
    }
    match normalizer.get("type").and_then(Value::as_str) {
        Some("Sequence") => normalizer
            .get("normalizers")
            .and_then(Value::as_array)
            .is_some_and(|steps| steps.iter().all(normalizer_keeps_bytes)),
        Some("Prepend") => true,
        Some("Replace") => {
            normalizer.get("pattern").and_then(|p| p.get("String")).and_then(Value::as_str) == Some(" ")
                && normalizer.get("content").and_then(Value::as_str) == Some(SPIECE_UNDERLINE)
        }
        _ => false,
    }
}

/// Whether a (serialized) pre-tokenizer, or one step of it, drops characters.
fn drops_characters(pre_tokenizer: &Value) -> bool {
    match pre_tokenizer {
        Value::Object(map) => {
            let dropping_type =
                map.get("type").and_then(Value::as_str).is_some_and(|t| DROPPING_PRE_TOKENIZERS.contains(&t));
            let removed = map.get("behavior").and_then(Value::as_str) == Some("Removed");
            dropping_type || removed || map.values().any(drops_characters)
        }
        Value::Array(items) => items.iter().any(drops_characters),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_bound_never_exceeds_the_real_count() {
        let mut checked = 0;
        let tokenizers = [
            super::super::tests::smollm().map(|(_, t)| t.clone()),
            Some(super::super::gemma_tests::gemma().0.clone()),
            Tokenizer::synthetic(300).ok(),
        ];
        for tokenizer in tokenizers.into_iter().flatten() {
            let texts = [
                "Hello, world!".to_string(),
                "<|im_start|>user\nHi<|im_end|>".to_string(),
                "a".repeat(5000),
                " ".repeat(4000),
                "\u{1F600}é\u{FFFD}".repeat(300),
                // Control characters SmolLM2's vocabulary has no token for: dropped, not counted.
                "\u{4}\u{6}\u{13}".repeat(1000),
                "The quick brown fox jumps over the lazy dog. ".repeat(100),
            ];
            for text in &texts {
                let bound = tokenizer.min_token_count([text.as_str()]).expect("these tokenizers give a bound");
                for parse_special in [false, true] {
                    let count = tokenizer.encode(text, parse_special).unwrap().len();
                    assert!(bound <= count, "bound {bound} > {count} tokens for {:?}…", &text[..10.min(text.len())]);
                }
                checked += 1;
            }
            // Pieces count like their concatenation.
            assert_eq!(tokenizer.min_token_count(["ab", "cd"]), tokenizer.min_token_count(["abcd"]));
        }
        assert_eq!(checked, 21);
    }

    #[test]
    fn the_bound_grows_with_the_length() {
        let tokenizer = Tokenizer::synthetic(300).unwrap();
        let big = "x".repeat(4 << 20);
        assert_eq!(tokenizer.min_token_count(["x"]), Some(1));
        assert_eq!(tokenizer.min_token_count([""]), Some(0));
        // One token per byte plus ChatML's control tokens: the longest is `<|endoftext|>`.
        assert_eq!(tokenizer.min_token_count([big.as_str()]), Some((4usize << 20).div_ceil("<|endoftext|>".len())));
    }

    #[test]
    fn shrinking_normalizers_and_dropping_pre_tokenizers_give_no_bound() {
        assert!(normalizer_keeps_bytes(&Value::Null));
        let spm = json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
        ]});
        assert!(normalizer_keeps_bytes(&spm));
        assert!(!normalizer_keeps_bytes(&json!({"type": "NFKC"})));
        assert!(!normalizer_keeps_bytes(&json!({"type": "Replace", "pattern": {"String": "x"}, "content": ""})));
        assert!(!normalizer_keeps_bytes(&json!({"type": "Sequence", "normalizers": [{"type": "Lowercase"}]})));
        assert!(!drops_characters(&json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false},
        ]})));
        assert!(drops_characters(&json!({"type": "Split", "pattern": {"String": " "}, "behavior": "Removed"})));
        assert!(drops_characters(&json!({"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}]})));
    }
}
