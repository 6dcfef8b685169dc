//! Byte-level BPE (`tokenizer.ggml.model` = `gpt2`) tokenization from compact tables: what
//! the `tokenizers` pipeline of [`super::gguf_vocab`] computes, without its tables.
//!
//! Encoding: added tokens are split out first (see `added_tokens`); each run of ordinary
//! text is pre-split by the vocabulary's regexes and mapped to GPT-2's byte-level alphabet
//! (the `tokenizers` pre-tokenizers, which hold no tables); each piece starts as one symbol
//! per character, and the adjacent pair with the lowest merge rank is merged (the leftmost on
//! a tie) until no adjacent pair has a merge. A piece that is itself a token skips the merges
//! when the vocabulary says so (llama.cpp's `ignore_merges`).
//!
//! Why not the library's BPE model: its two vocabulary maps (a `String` per token each way)
//! and its merge map cost ~7 MB for SmolLM2's 49,152 tokens, ~5 % of the whole process in a
//! decode run, and issue 9 bounds peak RSS. Here the token texts stay packed (the
//! [`super::Tokenizer`] holds them), looked up through a [`TextIndex`], and the merges are
//! one map of id pairs (~1 MB).

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, HashSet};

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::added_tokens::{AddedTokens, Piece};
use super::gguf_vocab::{PreTokenizerSpec, TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_USER_DEFINED};
use super::text_index::TextIndex;
use super::token_texts::TokenTexts;
use crate::error::{ModelError, Result};

/// No id: a character outside the vocabulary.
const NONE: u32 = u32::MAX;
/// One past the last char of the byte-level alphabet (U+0100 + 68 unprintable bytes).
const ALPHABET_END: usize = 0x144;

/// A byte-level BPE vocabulary's encoder and decoder. The token texts themselves stay with
/// the [`super::Tokenizer`], which passes them in.
pub(crate) struct ByteLevelBpe {
    index: TextIndex,
    /// `(left, right)` → `(rank, merged)`: the merge's position among the usable merges and
    /// the token it makes. A pair listed twice keeps its first rank, as llama.cpp does.
    merges: HashMap<(u32, u32), (u32, u32)>,
    added: AddedTokens,
    spec: PreTokenizerSpec,
    pre_tokenizer: PreTokenizerWrapper,
    /// The token of each char below [`ALPHABET_END`] (the byte-level alphabet), or [`NONE`].
    char_tokens: Box<[u32; ALPHABET_END]>,
    /// The byte each byte-level char stands for, by char, or `None` past the alphabet.
    char_bytes: Box<[Option<u8>; ALPHABET_END]>,
}

impl ByteLevelBpe {
    /// The encoder for `texts` with the GGUF's `merges` ("left right" strings, in rank order),
    /// token types and pre-tokenizer. Control and unknown tokens are special added tokens,
    /// user-defined ones ordinary added tokens. Merges that name or make a text outside the
    /// vocabulary are dropped: llama.cpp could only ever reach them through bytes the
    /// vocabulary lacks.
    pub(crate) fn new(
        texts: &TokenTexts,
        merges: &[impl AsRef<str>],
        types: &[i64],
        spec: PreTokenizerSpec,
    ) -> Result<ByteLevelBpe> {
        let index = TextIndex::new(texts);
        let mut table = HashMap::with_capacity(merges.len());
        let mut skipped = 0usize;
        let mut joined = String::new();
        for merge in merges {
            let merge = merge.as_ref();
            // Split at the first space after the first character, as llama.cpp does: a merge
            // of two space-like pieces is written "Ġ Ġ" and the first piece may be a space.
            let split = merge.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(i, _)| i);
            let Some(at) = split else {
                skipped += 1;
                continue;
            };
            let (left, right) = (&merge[..at], &merge[at + 1..]);
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            let ids = (index.get(texts, left), index.get(texts, right), index.get(texts, &joined));
            let (Some(l), Some(r), Some(merged)) = ids else {
                skipped += 1;
                continue;
            };
            let rank = u32::try_from(table.len()).map_err(|_| ModelError::Tokenizer("too many merges".into()))?;
            if let Entry::Vacant(slot) = table.entry((l, r)) {
                slot.insert((rank, merged));
            }
        }
        if skipped > 0 {
            tracing::debug!(skipped, "ignored GGUF merges that do not fit the vocabulary");
        }
        table.shrink_to_fit();
        let of_kind = |special: bool| {
            let index = &index;
            texts.iter().zip(types).filter_map(move |(text, &kind)| {
                let is_special = matches!(kind, TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN);
                let is_added = is_special || kind == TOKEN_TYPE_USER_DEFINED;
                (is_added && is_special == special).then(|| (text, index.get(texts, text).unwrap_or(NONE), special))
            })
        };
        let added = AddedTokens::new(of_kind(true).chain(of_kind(false)));
        let pre_tokenizer = pre_tokenizer(&spec)?;
        let alphabet_char = |c: usize| char::from_u32(c as u32).unwrap_or(char::REPLACEMENT_CHARACTER);
        let char_tokens =
            Box::new(std::array::from_fn(|c| index.get(texts, alphabet_char(c).encode_utf8(&mut [0; 4])).unwrap_or(NONE)));
        let mut char_bytes = Box::new([None; ALPHABET_END]);
        for b in 0..=255u8 {
            char_bytes[super::gguf_vocab::byte_level_char(b) as usize] = Some(b);
        }
        Ok(ByteLevelBpe { index, merges: table, added, spec, pre_tokenizer, char_tokens, char_bytes })
    }

    /// The id of a token text (its first id, should the text repeat).
    pub(crate) fn token_id(&self, texts: &TokenTexts, text: &str) -> Option<u32> {
        self.index.get(texts, text)
    }

    /// The pre-tokenizers every run of ordinary text goes through.
    pub(crate) fn pre_tokenizer(&self) -> &PreTokenizerWrapper {
        &self.pre_tokenizer
    }

    /// The added tokens' ids and whether each is special, in id order.
    pub(crate) fn added_ids(&self) -> &[(u32, bool)] {
        self.added.ids()
    }

    /// Token ids of `text`; special (control) token text becomes its id only with
    /// `parse_special`, user-defined token text always does.
    pub(crate) fn encode(&self, texts: &TokenTexts, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for piece in self.added.split(text, parse_special) {
            match piece {
                Piece::Token(id) => ids.push(id),
                Piece::Text(run) => {
                    let mut pieces = PreTokenizedString::from(run);
                    self.pre_tokenizer
                        .pre_tokenize(&mut pieces)
                        .map_err(|e| ModelError::Tokenizer(format!("cannot pre-tokenize text: {e}")))?;
                    for (word, _, _) in pieces.get_splits(OffsetReferential::Original, OffsetType::None) {
                        self.encode_word(texts, word, &mut ids);
                    }
                }
            }
        }
        Ok(ids)
    }

    /// Appends the tokens of one pre-tokenized piece (byte-level text; see the module docs).
    fn encode_word(&self, texts: &TokenTexts, word: &str, ids: &mut Vec<u32>) {
        if self.spec.ignore_merges
            && let Some(id) = self.index.get(texts, word)
        {
            ids.push(id);
            return;
        }
        // A character outside the vocabulary is left out, as the library's BPE model does
        // without an unknown token or byte fallback; its neighbours may then merge.
        let mut symbols: Vec<Symbol> = Vec::with_capacity(word.len());
        for (start, c) in word.char_indices() {
            let end = start + c.len_utf8();
            let id = match self.char_tokens.get(c as usize) {
                Some(&id) => id,
                None => self.index.get(texts, &word[start..end]).unwrap_or(NONE),
            };
            if id == NONE {
                continue;
            }
            // Pieces are pre-split words of one request: far below 4 GiB.
            let at = symbols.len() as u32;
            symbols.push(Symbol { start: start as u32, end: end as u32, prev: at.wrapping_sub(1), next: at + 1, id });
        }
        let Some(last) = symbols.last_mut() else { return };
        last.next = NONE;

        let mut queue = BinaryHeap::with_capacity(symbols.len());
        for right in 1..symbols.len() {
            self.push_pair(&symbols, right as u32 - 1, &mut queue);
        }
        while let Some(pair) = queue.pop() {
            let left = &symbols[pair.left as usize];
            // A pair whose symbols changed since it was queued: the left one was merged into
            // its own left neighbour (emptied), or either grew (symbols never shrink, so the
            // same span means the same two symbols).
            if left.is_empty() || left.next == NONE || symbols[left.next as usize].end - left.start != pair.span {
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
                self.push_pair(&symbols, prev, &mut queue);
            }
            if next != NONE {
                self.push_pair(&symbols, pair.left, &mut queue);
            }
        }
        // Symbol 0 is never merged into another (it is never a right symbol): the chain's head.
        let mut at = 0;
        while at != NONE {
            ids.push(symbols[at as usize].id);
            at = symbols[at as usize].next;
        }
    }

    /// Queues the merge of symbol `left` with the next one if the vocabulary has it.
    fn push_pair(&self, symbols: &[Symbol], left: u32, queue: &mut BinaryHeap<Pair>) {
        let symbol = &symbols[left as usize];
        let right = &symbols[symbol.next as usize];
        if let Some(&(rank, id)) = self.merges.get(&(symbol.id, right.id)) {
            queue.push(Pair { rank, left, span: right.end - symbol.start, id });
        }
    }

    /// The text of `ids` (all in range); with `skip_special`, special tokens left out. As the
    /// byte-level decoder: a token whose characters are all in the byte-level alphabet stands
    /// for those bytes, any other for its own UTF-8; bytes that are not UTF-8 become U+FFFD.
    pub(crate) fn decode(&self, texts: &TokenTexts, special: &HashSet<u32>, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if skip_special && special.contains(&id) {
                continue;
            }
            let text = texts.get(id as usize).unwrap_or_default();
            let start = bytes.len();
            for c in text.chars() {
                match self.char_bytes.get(c as usize).copied().flatten() {
                    Some(b) => bytes.push(b),
                    None => {
                        bytes.truncate(start);
                        bytes.extend_from_slice(text.as_bytes());
                        break;
                    }
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The same vocabulary as a Hugging Face pipeline, for exporting a `tokenizer.json` and as
    /// the tests' reference. Costs what this type saves.
    pub(crate) fn library_tokenizer(&self, texts: &TokenTexts) -> Result<tokenizers::Tokenizer> {
        let mut ranked: Vec<(&(u32, u32), &(u32, u32))> = self.merges.iter().collect();
        ranked.sort_unstable_by_key(|&(_, &(rank, _))| rank);
        let text = |id: u32| texts.get(id as usize).unwrap_or_default();
        let merges: Vec<String> = ranked.into_iter().map(|(&(l, r), _)| format!("{} {}", text(l), text(r))).collect();
        let mut types = vec![super::gguf_vocab::TOKEN_TYPE_NORMAL; texts.len()];
        for &(id, special) in self.added.ids() {
            if let Some(kind) = types.get_mut(id as usize) {
                *kind = if special { TOKEN_TYPE_CONTROL } else { TOKEN_TYPE_USER_DEFINED };
            }
        }
        super::gguf_vocab::byte_level_library(texts, merges, &types, &self.spec)
    }
}

/// The vocabulary's regexes (each match and each gap its own piece), then the byte-level
/// mapping (no splitting of its own).
pub(crate) fn pre_tokenizer(spec: &PreTokenizerSpec) -> Result<PreTokenizerWrapper> {
    let mut pieces = Vec::with_capacity(spec.regexes.len() + 1);
    for regex in spec.regexes {
        let split = Split::new(SplitPattern::Regex((*regex).to_string()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| ModelError::Tokenizer(format!("bad pre-tokenizer regex {regex:?}: {e}")))?;
        pieces.push(PreTokenizerWrapper::Split(split));
    }
    pieces.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)));
    Ok(PreTokenizerWrapper::Sequence(PreTokenizerSequence::new(pieces)))
}

/// A run of the piece being encoded: `word[start..end]`; empty once merged into its left
/// neighbour. `prev`/`next` link the live symbols ([`NONE`] at the ends).
struct Symbol {
    start: u32,
    end: u32,
    prev: u32,
    next: u32,
    /// The token this text is.
    id: u32,
}

impl Symbol {
    fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// A candidate merge: the lower rank first, then the leftmost.
struct Pair {
    rank: u32,
    /// The left symbol; the right one is the symbol after it.
    left: u32,
    /// The merged text's length in bytes, to tell a pair whose symbols have changed.
    span: u32,
    id: u32,
}

impl Ord for Pair {
    fn cmp(&self, other: &Self) -> Ordering {
        // `BinaryHeap` pops the greatest: the lowest rank, then the lowest position.
        other.rank.cmp(&self.rank).then_with(|| other.left.cmp(&self.left))
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
