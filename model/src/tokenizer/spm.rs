//! SentencePiece (`tokenizer.ggml.model` = `llama`) tokenization as llama.cpp does it
//! (`llm_tokenizer_spm` in its `src/llama-vocab.cpp`), from compact tables.
//!
//! Encoding: added tokens are split out first (see `added_tokens`); each run of ordinary
//! text gets `▁` in front when the vocabulary asks for a space prefix and has its spaces
//! written `▁`; then, starting from one symbol per character, the adjacent pair whose
//! concatenation is a token with the highest score is merged (the leftmost on a tie) until no
//! pair is a token. A final symbol that is no token (a character outside the vocabulary)
//! becomes its bytes' `<0xXX>` tokens, or the unknown token when some byte has none.
//!
//! Hugging Face's converter turns the scores into ~515,000 BPE merges for Gemma 3, which
//! with the BPE model's two vocabulary maps cost ~60 MB; merging by score needs only the
//! scores and a text → id index over the packed texts (~3 MB together).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

use super::added_tokens::{AddedTokens, Piece};
use super::gguf_vocab::{TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_USER_DEFINED};
use super::text_index::TextIndex;
use super::token_texts::TokenTexts;
use crate::error::Result;

/// The SentencePiece word-boundary marker that stands for a space.
const SPIECE_UNDERLINE: char = '\u{2581}';
/// No id: a symbol that is not a token, or a missing byte token.
const NONE: u32 = u32::MAX;

/// A SentencePiece vocabulary's encoder and decoder. The token texts themselves stay with
/// the [`super::Tokenizer`], which passes them in.
pub(crate) struct SentencePiece {
    index: TextIndex,
    /// By id; ids past the end of the GGUF array score 0, as llama.cpp's loader leaves them.
    scores: Vec<f32>,
    added: AddedTokens,
    /// The `<0xXX>` token of each byte, or [`NONE`].
    byte_tokens: Box<[u32; 256]>,
    /// The token of each ASCII character, or [`NONE`]: most symbols start as one.
    ascii_tokens: Box<[u32; 128]>,
    /// The first token of type "unknown", for characters that cannot be spelled in bytes.
    unknown: Option<u32>,
    add_space_prefix: bool,
}

impl SentencePiece {
    /// The encoder for `texts` with the GGUF's scores and token types. Control and unknown
    /// tokens are special added tokens, user-defined ones ordinary added tokens.
    pub(crate) fn new(texts: &TokenTexts, scores: &[f32], types: &[i64], add_space_prefix: bool) -> SentencePiece {
        let index = TextIndex::new(texts);
        let mut scores = scores.to_vec();
        scores.resize(texts.len(), 0.0);
        scores.shrink_to_fit();
        // Hugging Face registers the special ones first; an id is the first one of its text.
        let first_id = |text: &str| index.get(texts, text).unwrap_or(NONE);
        let of_kind = |special: bool| {
            let index = &index;
            texts.iter().zip(types).filter_map(move |(text, &kind)| {
                let is_special = matches!(kind, TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN);
                let is_added = is_special || kind == TOKEN_TYPE_USER_DEFINED;
                (is_added && is_special == special).then(|| (text, index.get(texts, text).unwrap_or(NONE), special))
            })
        };
        let added = AddedTokens::new(of_kind(true).chain(of_kind(false)));
        let byte_tokens = Box::new(std::array::from_fn(|b| first_id(&format!("<0x{b:02X}>"))));
        let ascii_tokens = Box::new(std::array::from_fn(|c| first_id(char::from(c as u8).encode_utf8(&mut [0; 4]))));
        let unknown = types
            .iter()
            .position(|&kind| kind == TOKEN_TYPE_UNKNOWN)
            .map(|id| first_id(texts.get(id).unwrap_or_default()));
        SentencePiece { index, scores, added, byte_tokens, ascii_tokens, unknown, add_space_prefix }
    }

    /// The id of a token text (its first id, should the text repeat).
    pub(crate) fn token_id(&self, texts: &TokenTexts, text: &str) -> Option<u32> {
        self.index.get(texts, text)
    }

    /// The added tokens' ids and whether each is special, in id order.
    pub(crate) fn added_ids(&self) -> &[(u32, bool)] {
        self.added.ids()
    }

    /// Token ids of `text`; special (control) token text becomes its id only with
    /// `parse_special`, user-defined token text always does.
    pub(crate) fn encode(&self, texts: &TokenTexts, text: &str, parse_special: bool) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut normalized = String::new();
        for piece in self.added.split(text, parse_special) {
            match piece {
                Piece::Token(id) => ids.push(id),
                Piece::Text(run) => {
                    normalized.clear();
                    if self.add_space_prefix {
                        normalized.push(SPIECE_UNDERLINE);
                    }
                    normalized.extend(run.chars().map(|c| if c == ' ' { SPIECE_UNDERLINE } else { c }));
                    self.encode_run(texts, &normalized, &mut ids);
                }
            }
        }
        ids
    }

    /// Appends the tokens of one normalized run of ordinary text (see the module docs).
    fn encode_run(&self, texts: &TokenTexts, text: &str, ids: &mut Vec<u32>) {
        // Symbols and pairs hold u32 offsets (half the memory traffic of usize); a longer run,
        // which no request can carry, is encoded in pieces.
        const MAX_RUN: usize = 1 << 31;
        if text.len() >= MAX_RUN {
            let mut cut = MAX_RUN;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            self.encode_run(texts, &text[..cut], ids);
            self.encode_run(texts, &text[cut..], ids);
            return;
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (start, c) in text.char_indices() {
            let end = start + c.len_utf8();
            let id = match self.ascii_tokens.get(c as usize) {
                Some(&id) => id,
                None => self.index.get(texts, &text[start..end]).unwrap_or(NONE),
            };
            let at = symbols.len() as u32;
            symbols.push(Symbol { start: start as u32, end: end as u32, prev: at.wrapping_sub(1), next: at + 1, id });
        }
        let Some(last) = symbols.last_mut() else { return };
        last.next = NONE;

        let mut queue = BinaryHeap::with_capacity(symbols.len());
        for right in 1..symbols.len() {
            self.push_pair(texts, text, &symbols, right as u32 - 1, &mut queue);
        }
        while let Some(pair) = queue.pop() {
            let left = &symbols[pair.left as usize];
            // A pair whose symbols changed since it was queued: the left one was merged into
            // its own left neighbour (emptied), or either grew (symbols never shrink, so the
            // same span means the same two symbols).
            if left.is_empty() || left.next == NONE || symbols[left.next as usize].end - left.start != pair.len {
                continue;
            }
            let right = left.next as usize;
            let next = symbols[right].next;
            let left = pair.left as usize;
            symbols[left].end = symbols[right].end;
            symbols[left].id = pair.id;
            symbols[left].next = next;
            symbols[right].end = symbols[right].start;
            if next != NONE {
                symbols[next as usize].prev = pair.left;
            }
            let prev = symbols[left].prev;
            if prev != NONE {
                self.push_pair(texts, text, &symbols, prev, &mut queue);
            }
            if next != NONE {
                self.push_pair(texts, text, &symbols, pair.left, &mut queue);
            }
        }

        // Symbol 0 is never merged into another (it is never a right symbol): the chain's head.
        let mut at = 0;
        let mut after_unknown = false;
        while at != NONE {
            let symbol = &symbols[at as usize];
            if symbol.id != NONE {
                ids.push(symbol.id);
                after_unknown = false;
            } else {
                let bytes =
                    text[symbol.start as usize..symbol.end as usize].bytes().map(|b| self.byte_tokens[b as usize]);
                if bytes.clone().all(|id| id != NONE) {
                    ids.extend(bytes);
                    after_unknown = false;
                } else if let Some(unknown) = self.unknown {
                    // Like the BPE model's `fuse_unk`: a run of unspellable characters is one
                    // unknown token. Without an unknown token the character is dropped.
                    if !after_unknown {
                        ids.push(unknown);
                    }
                    after_unknown = true;
                }
            }
            at = symbol.next;
        }
    }

    /// Queues the merge of symbol `left` with the next one if their text is a token.
    fn push_pair(&self, texts: &TokenTexts, text: &str, symbols: &[Symbol], left: u32, queue: &mut BinaryHeap<Pair>) {
        let symbol = &symbols[left as usize];
        let (start, end) = (symbol.start, symbols[symbol.next as usize].end);
        if let Some(id) = self.index.get(texts, &text[start as usize..end as usize]) {
            // `+ 0.0` makes -0.0 equal to 0.0, as llama.cpp's `<` comparison has it.
            let score = self.scores[id as usize] + 0.0;
            queue.push(Pair { score, left, len: end - start, id });
        }
    }

    /// The text of `ids` (all in range): `▁` as a space, runs of byte tokens as the UTF-8
    /// they spell (U+FFFD per byte when they do not), the prefix space (if the vocabulary
    /// adds one) dropped; with `skip_special`, special tokens left out. This is the decoder
    /// chain Hugging Face's converter builds (Replace, ByteFallback, Fuse, Strip).
    pub(crate) fn decode(&self, texts: &TokenTexts, special: &HashSet<u32>, ids: &[u32], skip_special: bool) -> String {
        let mut out = String::new();
        let mut bytes = Vec::new();
        let flush = |bytes: &mut Vec<u8>, out: &mut String| {
            match std::str::from_utf8(bytes) {
                Ok(text) => out.push_str(text),
                Err(_) => out.extend(std::iter::repeat_n(char::REPLACEMENT_CHARACTER, bytes.len())),
            }
            bytes.clear();
        };
        for &id in ids {
            if skip_special && special.contains(&id) {
                continue;
            }
            let text = texts.get(id as usize).unwrap_or_default();
            if let Some(byte) = byte_token_value(text) {
                bytes.push(byte);
                continue;
            }
            flush(&mut bytes, &mut out);
            out.extend(text.chars().map(|c| if c == SPIECE_UNDERLINE { ' ' } else { c }));
        }
        flush(&mut bytes, &mut out);
        if self.add_space_prefix && out.starts_with(' ') {
            out.remove(0);
        }
        out
    }

    /// The token types Hugging Face's pipeline is built from, recovered from the added
    /// tokens: every id not added is normal.
    fn token_types(&self, n_tokens: usize) -> Vec<i64> {
        let mut types = vec![TOKEN_TYPE_NORMAL; n_tokens];
        for &(id, special) in self.added.ids() {
            types[id as usize] = if special { TOKEN_TYPE_CONTROL } else { TOKEN_TYPE_USER_DEFINED };
        }
        if let Some(unknown) = self.unknown {
            types[unknown as usize] = TOKEN_TYPE_UNKNOWN;
        }
        types
    }

    /// The same vocabulary as a Hugging Face pipeline (merges derived from the scores), for
    /// exporting a `tokenizer.json` and as the tests' reference. Costs what this type saves.
    pub(crate) fn library_tokenizer(&self, texts: &TokenTexts) -> Result<tokenizers::Tokenizer> {
        let types = self.token_types(texts.len());
        super::gguf_vocab::sentencepiece_library(texts, &self.scores, &types, self.add_space_prefix)
    }
}

/// The byte a `<0xXX>` token stands for (the check Hugging Face's ByteFallback decoder makes).
fn byte_token_value(text: &str) -> Option<u8> {
    if text.len() == 6 && text.starts_with("<0x") && text.ends_with('>') {
        u8::from_str_radix(&text[3..5], 16).ok()
    } else {
        None
    }
}

/// A run of the text being encoded: `text[start..end]`; empty once merged into its left
/// neighbour. `prev`/`next` link the live symbols ([`NONE`] at the ends).
struct Symbol {
    start: u32,
    end: u32,
    prev: u32,
    next: u32,
    /// The token this text is, or [`NONE`] (a single character outside the vocabulary).
    id: u32,
}

impl Symbol {
    fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// A candidate merge: the higher score first, then the leftmost.
struct Pair {
    score: f32,
    /// The left symbol; the right one is the symbol after it.
    left: u32,
    /// The merged text's length in bytes, to tell a pair whose symbols have changed.
    len: u32,
    id: u32,
}

impl Ord for Pair {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pair {}
