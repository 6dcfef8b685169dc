//! The token environment llguidance computes masks against: the exact bytes every token id
//! stands for, in a [`TokTrie`], and a byte tokenizer, both built from our [`Tokenizer`].
//!
//! Vocabularies store token texts in one of two encodings:
//! - byte-level BPE (GPT-2 style, e.g. SmolLM2): every byte is written as one printable char
//!   of GPT-2's byte↔unicode table (`Ġ` is a space), so each char maps back to one byte;
//! - SentencePiece (e.g. Gemma, Llama 2): text is UTF-8 with `▁` for a space, and the byte
//!   fallback tokens `<0xNN>` stand for the single byte `NN`.
//!
//! Control tokens (`<|im_end|>`, `<eos>`, …) get toktrie's special marker byte 0xFF before
//! their text: no grammar can produce 0xFF in text, so a grammar never emits them by
//! accident, and llguidance still knows their names. The end-of-generation ids are the
//! tokenizer's stop ids, which the mask allows whenever the grammar accepts.

use std::sync::Arc;

use llguidance::toktrie::{INVALID_TOKEN, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;

/// SentencePiece's word-boundary marker, which stands for a space.
const SPIECE_UNDERLINE: char = '\u{2581}';

/// How a vocabulary writes bytes in its token texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VocabEncoding {
    ByteLevel,
    SentencePiece,
}

impl VocabEncoding {
    /// SentencePiece vocabularies always have pieces starting with `▁`; a byte-level one
    /// cannot, since it writes U+2581 as the three chars of its UTF-8 bytes.
    pub(crate) fn detect(tokenizer: &Tokenizer) -> VocabEncoding {
        let sentencepiece = (0..tokenizer.vocab_size() as u32)
            .filter(|&id| !tokenizer.is_special(id))
            .filter_map(|id| tokenizer.token_text(id))
            .any(|text| text.starts_with(SPIECE_UNDERLINE));
        if sentencepiece { VocabEncoding::SentencePiece } else { VocabEncoding::ByteLevel }
    }
}

/// The byte GPT-2's byte-level alphabet writes as `c`, or `None` for a char outside it.
/// The alphabet: printable Latin-1 bytes stand for themselves; the other 68 bytes are
/// numbered from U+0100 in byte order.
fn byte_level_byte(c: char) -> Option<u8> {
    let printable = |b: u8| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
    let code = c as u32;
    if let Ok(b) = u8::try_from(code) {
        return printable(b).then_some(b);
    }
    let rank = code.checked_sub(0x100)?;
    (0u8..=255).filter(|&b| !printable(b)).nth(rank as usize)
}

/// The byte of a SentencePiece byte-fallback token `<0xNN>`.
fn byte_fallback(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The bytes token `id` adds to the text. Special tokens: 0xFF followed by their text.
pub(crate) fn token_bytes(tokenizer: &Tokenizer, encoding: VocabEncoding, id: u32) -> Vec<u8> {
    let Some(text) = tokenizer.token_text(id) else { return Vec::new() };
    if tokenizer.is_special(id) {
        let mut bytes = vec![TokTrie::SPECIAL_TOKEN_MARKER];
        bytes.extend_from_slice(text.as_bytes());
        return bytes;
    }
    match encoding {
        VocabEncoding::ByteLevel => {
            let mapped: Option<Vec<u8>> = text.chars().map(byte_level_byte).collect();
            // Added (user-defined) tokens are stored as plain text, outside the alphabet.
            mapped.unwrap_or_else(|| text.as_bytes().to_vec())
        }
        VocabEncoding::SentencePiece => match byte_fallback(text) {
            Some(b) => vec![b],
            None => text.replace(SPIECE_UNDERLINE, " ").into_bytes(),
        },
    }
}

/// llguidance's view of our tokenizer.
pub(crate) struct TokenEnv {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenEnv {
    /// Builds the trie over every id of the tokenizer (tens of milliseconds for 50k tokens).
    pub(crate) fn build(tokenizer: &Tokenizer) -> Result<TokEnv> {
        let encoding = VocabEncoding::detect(tokenizer);
        let n = tokenizer.vocab_size();
        let words: Vec<Vec<u8>> = (0..n as u32).map(|id| token_bytes(tokenizer, encoding, id)).collect();
        let vocab_size =
            u32::try_from(n).map_err(|_| ModelError::Internal(format!("a vocabulary of {n} tokens is too large")))?;
        let stops = tokenizer.stop_ids();
        let info = TokRxInfo {
            tok_eos: stops.first().copied().unwrap_or(INVALID_TOKEN),
            tok_bos: tokenizer.bos_id(),
            ..TokRxInfo::new(vocab_size, INVALID_TOKEN)
        };
        // toktrie asserts on malformed input; that must not take the server down.
        let trie = std::panic::catch_unwind(|| {
            let trie = TokTrie::from(&info, &words);
            if stops.is_empty() { trie } else { trie.with_eos_tokens(stops) }
        })
        .map_err(|_| ModelError::Internal("the token trie for constrained decoding could not be built".into()))?;
        Ok(Arc::new(TokenEnv { trie, tokenizer: tokenizer.clone() }))
    }
}

impl TokenizerEnv for TokenEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Our tokenizer's ids for `bytes` when they decode back to exactly those bytes (the
    /// canonical tokenization, what llguidance forces), else the trie's greedy split (e.g.
    /// a SentencePiece model that prefixes a space to every text).
    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<TokenId> {
        let tokens = self.trie.tokenize_with_greedy_fallback(bytes, |text| {
            self.tokenizer.encode(text, false).unwrap_or_else(|_| self.trie.greedy_tokenize(text.as_bytes()))
        });
        if self.trie.decode(&tokens) == bytes { tokens } else { self.trie.greedy_tokenize(bytes) }
    }

    fn tokenize_is_canonical(&self) -> bool {
        true
    }
}
