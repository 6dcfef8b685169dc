//! The raw text of every token id, packed into one buffer.
//!
//! A `Vec<String>` spends a 24-byte header and a heap block (32 bytes or more with the
//! allocator's rounding) on each token; Gemma 3's 262,144 tokens average 9 bytes of text, so
//! that form took ~14 MB where this one takes ~4.5 MB, and it costs one allocation instead of
//! a quarter million that fragment the heap.

/// Token texts by id: `text[ends[id - 1]..ends[id]]` is token `id` (`0..ends[0]` for id 0).
pub(crate) struct TokenTexts {
    text: String,
    ends: Vec<usize>,
}

impl TokenTexts {
    /// Packs `texts`, the text of id 0 first.
    pub(crate) fn new<S: AsRef<str>>(texts: impl IntoIterator<Item = S>) -> TokenTexts {
        let texts = texts.into_iter();
        let mut packed = TokenTexts { text: String::new(), ends: Vec::with_capacity(texts.size_hint().0) };
        for text in texts {
            packed.text.push_str(text.as_ref());
            packed.ends.push(packed.text.len());
        }
        packed.text.shrink_to_fit();
        packed.ends.shrink_to_fit();
        packed
    }

    /// The number of ids.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The text of `id`, if the vocabulary has that id.
    pub(crate) fn get(&self, id: usize) -> Option<&str> {
        let end = *self.ends.get(id)?;
        let start = if id == 0 { 0 } else { self.ends[id - 1] };
        // Every boundary is the end of a pushed `&str`, so the slice is on char boundaries.
        Some(&self.text[start..end])
    }

    /// The texts in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len()).filter_map(|id| self.get(id))
    }
}

#[cfg(test)]
mod tests {
    use super::TokenTexts;

    #[test]
    fn texts_come_back_by_id_including_empty_and_multibyte_ones() {
        let texts = ["<s>", "", "▁héllo", "a"];
        let packed = TokenTexts::new(texts);
        assert_eq!(packed.len(), 4);
        for (id, text) in texts.iter().enumerate() {
            assert_eq!(packed.get(id), Some(*text));
        }
        assert_eq!(packed.get(4), None);
        assert_eq!(packed.iter().collect::<Vec<_>>(), texts);
        assert_eq!(TokenTexts::new::<&str>([]).get(0), None);
    }
}
