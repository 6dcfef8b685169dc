//! Streaming detokenization: turns generated ids, one at a time, into text pieces that are
//! always whole UTF-8 characters.
//!
//! A byte-level BPE token can end in the middle of a multibyte character (an emoji is often
//! two or three tokens), and decoding a token on its own can lose context such as the space
//! a SentencePiece decoder strips at the start. So, as TGI and vLLM do, the decoder keeps a
//! small window of ids: it decodes the window with and without the newest ids and emits the
//! difference once the text no longer ends in U+FFFD (an incomplete character).

use super::Tokenizer;
use crate::error::Result;

const REPLACEMENT: char = '\u{FFFD}';

/// Incremental decoder state for one generated sequence.
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    skip_special: bool,
    /// Ids from the start of the current window on; older ones are dropped.
    ids: Vec<u32>,
    /// `ids[..read_offset]` has been emitted; `ids[..prefix_offset]` is no longer needed
    /// as context.
    prefix_offset: usize,
    read_offset: usize,
    /// What the last push decoded but held back, for [`IncrementalDecoder::finish`].
    pending: String,
}

impl IncrementalDecoder {
    /// With `skip_special`, control tokens (`<|im_end|>`, …) produce no text.
    pub fn new(skip_special: bool) -> Self {
        IncrementalDecoder { skip_special, ..Self::default() }
    }

    /// Adds one generated id and returns the text it completes, possibly empty (when the
    /// id ends inside a character, or produces no text).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let decoded = tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset], self.skip_special)
            .and_then(|prefix| Ok((prefix, tokenizer.decode(&self.ids[self.prefix_offset..], self.skip_special)?)));
        let (prefix, full) = match decoded {
            Ok(texts) => texts,
            Err(e) => {
                // A bad id (out of range) must not poison the rest of the stream.
                self.ids.pop();
                return Err(e);
            }
        };
        let new_text = new_suffix(&prefix, &full).unwrap_or_default();
        if full.ends_with(REPLACEMENT) || new_text.is_empty() {
            self.pending = new_text.to_string();
            return Ok(String::new());
        }
        let new_text = new_text.to_string();
        self.pending.clear();
        self.advance();
        Ok(new_text)
    }

    /// The text still held back (an incomplete character at the end comes out as U+FFFD),
    /// after which the decoder is empty. Needs no tokenizer: the last push decoded it.
    pub fn finish(&mut self) -> String {
        let text = std::mem::take(&mut self.pending);
        *self = IncrementalDecoder::new(self.skip_special);
        text
    }

    fn advance(&mut self) {
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        // Keep memory bounded on long generations: nothing before the window is read again.
        self.ids.drain(..self.prefix_offset);
        self.read_offset -= self.prefix_offset;
        self.prefix_offset = 0;
    }
}

/// What `full` adds to `prefix`. Decoders extend the prefix's text in practice; should one
/// not, the bytes past the prefix's length are taken as new, as TGI does, rather than
/// holding the stream back forever.
fn new_suffix<'a>(prefix: &str, full: &'a str) -> Option<&'a str> {
    full.strip_prefix(prefix).or_else(|| full.get(prefix.len()..))
}
