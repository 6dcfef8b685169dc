//! Token text → id, as an open-addressing hash table of ids over the packed token texts.
//!
//! A `HashMap<String, u32>` keeps a heap copy of every text next to the table (~17 MB for
//! Gemma 3's 262,144 tokens); this table holds only the ids (4 bytes a slot, at most half
//! full: 2 MB there) and compares a probed id's text in [`TokenTexts`], which the tokenizer
//! keeps anyway. The bits of a slot that ids do not need hold a few bits of the text's hash
//! (14 for Gemma 3), so that a probe rarely compares a text that cannot match.

use super::token_texts::TokenTexts;

/// A slot no id occupies.
const EMPTY: u32 = u32::MAX;

/// The first id of every distinct token text (a lossy UTF-8 decode of the metadata can
/// repeat a text; the first id is the one llama.cpp's and Hugging Face's lookups find).
pub(crate) struct TextIndex {
    /// An id in the low `id_bits`, a tag from the hash above them; or [`EMPTY`].
    slots: Vec<u32>,
    id_bits: u32,
}

impl TextIndex {
    /// Indexes every id of `texts`.
    pub(crate) fn new(texts: &TokenTexts) -> TextIndex {
        // Power of two, at least twice the ids: short probe runs, and `& mask` for `% len`.
        let slots = vec![EMPTY; (texts.len() * 2).next_power_of_two().max(2)];
        // Enough bits for every id below `len`, so that no tagged id is all ones (`EMPTY`).
        let id_bits = u32::BITS - u32::try_from(texts.len()).unwrap_or(u32::MAX).leading_zeros();
        let mut index = TextIndex { slots, id_bits };
        for (id, text) in (0u32..).zip(texts.iter()) {
            let (slot, tag) = index.probe(texts, text);
            if index.slots[slot] == EMPTY {
                index.slots[slot] = id | tag;
            }
        }
        index
    }

    /// The id whose text is `text`, if any.
    pub(crate) fn get(&self, texts: &TokenTexts, text: &str) -> Option<u32> {
        let value = self.slots[self.probe(texts, text).0];
        (value != EMPTY).then(|| value & self.id_mask())
    }

    fn id_mask(&self) -> u32 {
        ((1u64 << self.id_bits) - 1) as u32
    }

    /// The slot that holds `text`'s id, or the empty slot where it would go; and the tag
    /// (already shifted into place) that `text`'s slot carries.
    fn probe(&self, texts: &TokenTexts, text: &str) -> (usize, u32) {
        let hash = hash(text.as_bytes());
        let id_mask = self.id_mask();
        let tag = ((hash >> 32) as u32) & !id_mask;
        let mask = self.slots.len() - 1;
        let mut slot = hash as usize & mask;
        loop {
            let value = self.slots[slot];
            if value == EMPTY || (value & !id_mask == tag && texts.get((value & id_mask) as usize) == Some(text)) {
                return (slot, tag);
            }
            slot = (slot + 1) & mask;
        }
    }
}

/// A fast 64-bit hash of a short byte string (token texts average ~9 bytes): eight bytes a
/// multiply, then a final mix so that the low bits (the slot) depend on every byte.
fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        h = (h ^ word).wrapping_mul(K).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    h ^= h >> 32;
    h = h.wrapping_mul(K);
    h ^ (h >> 29)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_text_and_the_first_id_of_a_repeated_one() {
        let words: Vec<String> = (0..5000).map(|i| format!("w{i}")).collect();
        let mut list: Vec<&str> = vec!["", "a", "▁héllo", "a", "aaaaaaaaaaaaaaaaaaaaaaaa"];
        list.extend(words.iter().map(String::as_str));
        let texts = TokenTexts::new(list.iter().copied());
        let index = TextIndex::new(&texts);
        assert_eq!(index.get(&texts, "a"), Some(1), "the first of two ids");
        assert_eq!(index.get(&texts, ""), Some(0));
        assert_eq!(index.get(&texts, "▁héllo"), Some(2));
        assert_eq!(index.get(&texts, "aaaaaaaaaaaaaaaaaaaaaaaa"), Some(4));
        for (id, word) in (5u32..).zip(&words) {
            assert_eq!(index.get(&texts, word), Some(id));
        }
        for missing in ["b", "▁hé", "w5000", "aaaaaaaaaaaaaaaaaaaaaaa"] {
            assert_eq!(index.get(&texts, missing), None, "{missing:?}");
        }
    }

    #[test]
    fn hashes_differ_in_every_byte() {
        assert_ne!(hash(b"abcdefgh1"), hash(b"abcdefgh2"));
        assert_ne!(hash(b"a"), hash(b"a\0"));
        assert_ne!(hash(b""), hash(b"\0"));
    }
}
