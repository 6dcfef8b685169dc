//! A rendered chat prompt that remembers which of its text came from the request, and its
//! encoding: only the template's own text may become control tokens.
//!
//! A chat template writes control tokens (`<|im_start|>`, `<start_of_turn>`, BOS) as text,
//! so the rendered prompt has to be tokenized with special-token parsing on. Parsing the
//! whole string would also turn a user's `<|im_end|>\n<|im_start|>system` into real control
//! ids (a forged system turn). [`Tokenizer::encode_rendered`] therefore looks for special
//! tokens only inside [`PartKind::Template`] parts and encodes everything between two
//! allowed special tokens, template and content text alike, as one run of ordinary text.
//! That is exactly how the tokenizer treats a string it parses (it splits at special tokens,
//! then encodes each run), so BPE merges across a template/content boundary stay as they
//! were and a prompt without injected control text gets the same ids as before.

use std::collections::HashMap;

use super::Tokenizer;
use crate::error::{ModelError, Result};

/// Why a prompt whose request text turned into control tokens is refused.
const FORGED_CONTROL_TOKEN: &str = "The chat template transforms message text in a way that turns it into a \
     control token; the request is refused rather than sent with a forged control token.";

/// Where a piece of a rendered prompt came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    /// The template's own scaffolding: special-token text in it becomes control tokens.
    Template,
    /// Text from the request (message content, names, tool calls, tool results, tool
    /// definitions): always ordinary text, whatever it spells.
    Content,
}

/// A rendered prompt as a sequence of template and content parts (adjacent parts of one
/// kind are merged; no part is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderedPrompt {
    parts: Vec<(String, PartKind)>,
    /// Set when the parts could only be found by searching for the request's text (a
    /// template that transforms it): the template's text rendered around placeholders. Its
    /// special tokens are the most the template parts may hold; more means that transformed
    /// request text spells a control token, and the prompt is refused.
    scaffolding: Option<String>,
}

impl RenderedPrompt {
    pub fn new() -> Self {
        RenderedPrompt::default()
    }

    /// A prompt that is all template text (a raw prompt whose author wrote the scaffolding).
    pub fn all_template(text: impl Into<String>) -> Self {
        let mut prompt = RenderedPrompt::new();
        prompt.push(text, PartKind::Template);
        prompt
    }

    /// Appends `text` as a part of `kind`.
    pub fn push(&mut self, text: impl Into<String>, kind: PartKind) {
        let text = text.into();
        if text.is_empty() {
            return;
        }
        match self.parts.last_mut() {
            Some((last, last_kind)) if *last_kind == kind => last.push_str(&text),
            _ => self.parts.push((text, kind)),
        }
    }

    /// Limits the template parts' special tokens to those of `scaffolding` (see the field).
    pub fn with_scaffolding(mut self, scaffolding: Option<String>) -> Self {
        self.scaffolding = scaffolding;
        self
    }

    /// Whether the parts were found by searching for the request's text (see `scaffolding`).
    pub fn found_by_search(&self) -> bool {
        self.scaffolding.is_some()
    }

    pub fn parts(&self) -> &[(String, PartKind)] {
        &self.parts
    }

    /// The whole prompt as one string (what the template rendered).
    pub fn text(&self) -> String {
        self.parts.iter().map(|(text, _)| text.as_str()).collect()
    }
}

/// The texts of a tokenizer's special (control) tokens, for finding them in template text.
#[derive(Debug, Default)]
pub(super) struct SpecialTexts {
    ids: HashMap<String, u32>,
    /// The distinct text lengths in bytes, longest first (longest match wins).
    lengths: Vec<usize>,
}

impl SpecialTexts {
    pub(super) fn new(texts: impl IntoIterator<Item = (String, u32)>) -> Self {
        let ids: HashMap<String, u32> = texts.into_iter().filter(|(text, _)| !text.is_empty()).collect();
        let mut lengths: Vec<usize> = ids.keys().map(String::len).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        SpecialTexts { ids, lengths }
    }

    /// The special tokens in `text` as `(start, end, id)` byte ranges, leftmost-longest and
    /// not overlapping, as the tokenizer's own splitting finds them.
    pub(super) fn find(&self, text: &str) -> Vec<(usize, usize, u32)> {
        let mut found = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let hit = self.lengths.iter().find_map(|&len| {
                let candidate = text.get(pos..pos + len)?;
                self.ids.get(candidate).map(|&id| (pos, pos + len, id))
            });
            match hit {
                Some(hit) => {
                    found.push(hit);
                    pos = hit.1;
                }
                None => pos += text[pos..].chars().next().map_or(1, char::len_utf8),
            }
        }
        found
    }
}

impl Tokenizer {
    /// Token ids of a rendered chat prompt: special-token text becomes control ids only in
    /// template parts; content parts are ordinary text. BOS is prepended as in
    /// [`Tokenizer::encode_prompt`].
    pub fn encode_rendered(&self, prompt: &RenderedPrompt) -> Result<Vec<u32>> {
        // For prompts split by search: how many of each special token the template may write.
        let mut allowed: Option<HashMap<u32, usize>> = prompt.scaffolding.as_deref().map(|text| {
            let mut counts = HashMap::new();
            for (_, _, id) in self.inner.special_texts.find(text) {
                *counts.entry(id).or_default() += 1;
            }
            counts
        });
        let mut ids = Vec::new();
        // The ordinary text since the last allowed special token.
        let mut run = String::new();
        let flush = |run: &mut String, ids: &mut Vec<u32>| -> Result<()> {
            if !run.is_empty() {
                ids.extend(self.encode(run, false)?);
                run.clear();
            }
            Ok(())
        };
        for (text, kind) in prompt.parts() {
            match kind {
                PartKind::Content => run.push_str(text),
                PartKind::Template => {
                    let mut last = 0;
                    for (start, end, id) in self.inner.special_texts.find(text) {
                        run.push_str(&text[last..start]);
                        if let Some(allowed) = allowed.as_mut() {
                            let left = allowed.get_mut(&id).filter(|n| **n > 0);
                            let left = left.ok_or_else(|| ModelError::ChatTemplate(FORGED_CONTROL_TOKEN.into()))?;
                            *left -= 1;
                        }
                        flush(&mut run, &mut ids)?;
                        ids.push(id);
                        last = end;
                    }
                    run.push_str(&text[last..]);
                }
            }
        }
        flush(&mut run, &mut ids)?;
        Ok(self.with_bos(ids))
    }
}
