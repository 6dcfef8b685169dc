//! Text ↔ token ids, with the same ids llama.cpp gives for the same model.
//!
//! [`Tokenizer`] is built either from a GGUF file's `tokenizer.ggml.*` metadata
//! ([`Tokenizer::from_gguf`], see `gguf_vocab`) or from a `tokenizer.json`
//! ([`Tokenizer::from_json_file`]). SentencePiece (`llama`) vocabularies use our own encoder
//! (`spm`); the others wrap a Hugging Face `tokenizers::Tokenizer`. It knows the model's
//! special ids (BOS, EOS, the end-of-generation set) and whether prompts start with BOS.
//! [`IncrementalDecoder`] turns a stream of generated ids into UTF-8 text pieces.

mod added_tokens;
mod bpe;
#[cfg(test)]
mod bpe_tests;
#[cfg(test)]
mod gemma_tests;
mod gguf_vocab;
mod hf_json;
mod incremental;
mod length_bound;
mod rendered;
#[cfg(test)]
mod rendered_tests;
mod spm;
#[cfg(test)]
mod spm_tests;
#[cfg(test)]
pub(crate) mod tests;
mod text_index;
mod token_texts;

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

pub use incremental::IncrementalDecoder;
use rendered::SpecialTexts;
pub use rendered::{PartKind, RenderedPrompt};
use bpe::ByteLevelBpe;
use spm::SentencePiece;
use token_texts::TokenTexts;
use tokenizers::{Model, PreTokenizer};

use crate::error::{ModelError, Result};
use crate::gguf::Metadata;

/// Token texts that end generation, as in llama.cpp's vocabulary loader (which matches
/// them by text because converters do not always record eot/eom ids).
const END_OF_GENERATION_TEXTS: &[&str] =
    &["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<end_of_turn>", "<|end|>"];
/// Of those, the texts that are also ordinary content in some vocabularies, and so end
/// generation only as control tokens: Gemma's `</s>` (id 212) is the user-defined HTML
/// strikethrough tag, not an end marker (its model stops at `<eos>` and `<end_of_turn>`).
const END_OF_GENERATION_IF_CONTROL: &[&str] = &["</s>"];

/// A model's tokenizer. Cheap to clone (the tables are shared) and usable from many threads.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

/// How text becomes ids and back.
pub(crate) enum Pipeline {
    /// A Hugging Face pipeline (`gpt2` GGUF vocabularies, `tokenizer.json` files).
    Library {
        /// Its added vocabulary splits special tokens out of the text before tokenizing
        /// (chat prompts).
        tokenizer: tokenizers::Tokenizer,
        /// A copy of that added vocabulary which leaves special-token text in place, for
        /// text whose markers are ordinary text (user content, completions prompts); see
        /// [`Tokenizer::encode_plain`]. `encode_special_tokens` is a setting of the
        /// vocabulary, not of a call, and only the vocabulary reads it, so this copy stands in
        /// for a second whole tokenizer.
        plain_added: tokenizers::AddedVocabulary,
    },
    /// Our byte-level BPE encoder (`gpt2` GGUF vocabularies) over the packed token texts.
    ByteLevel(ByteLevelBpe),
    /// Our SentencePiece encoder (`llama` GGUF vocabularies), which needs no BPE merges.
    SentencePiece(SentencePiece),
}

impl Pipeline {
    fn library(mut tokenizer: tokenizers::Tokenizer) -> Pipeline {
        tokenizer.set_encode_special_tokens(false);
        let mut plain_added = tokenizer.get_added_vocabulary().clone();
        plain_added.set_encode_special_tokens(true);
        Pipeline::Library { tokenizer, plain_added }
    }
}

struct Inner {
    pipeline: Pipeline,
    /// Raw token texts by id (byte-level or `▁` form, as stored in the vocabulary).
    tokens: TokenTexts,
    special: HashSet<u32>,
    /// The special tokens' texts, for finding them in a chat template's own text.
    special_texts: SpecialTexts,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    stop_ids: Vec<u32>,
    /// How token texts write bytes, found on first use of [`Tokenizer::token_bytes`].
    encoding: OnceLock<crate::constraint::VocabEncoding>,
    /// What bounds a text's token count by its bytes, if anything does (see `length_bound`).
    length_bound: OnceLock<Option<length_bound::LengthBound>>,
}

/// The ids and flags a source (GGUF or `tokenizer.json`) supplies next to the tokenizer.
struct Specials {
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    /// Further end-of-generation ids (eot, eom, generation_config's eos list).
    extra_stop: Vec<u32>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.inner.bos)
            .field("eos", &self.inner.eos)
            .field("add_bos", &self.inner.add_bos)
            .field("stop_ids", &self.inner.stop_ids)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's metadata (`tokenizer.ggml.model`
    /// `gpt2` or `llama`). An unknown model or pre-tokenizer is a [`ModelError::Tokenizer`].
    pub fn from_gguf(metadata: &Metadata) -> Result<Tokenizer> {
        let built = gguf_vocab::build(metadata)?;
        let n_tokens = built.tokens.len();
        // llama.cpp ignores (with a warning) ids that are out of range or not integers.
        let id = |key: &str| {
            metadata
                .get(key)
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| (v as usize) < n_tokens)
        };
        let in_range = |v: u32| ((v as usize) < n_tokens).then_some(v);
        let (default_bos, default_eos) = match built.default_bos_eos {
            Some((b, e)) => (in_range(b), in_range(e)),
            None => (None, None),
        };
        let bos = id("tokenizer.ggml.bos_token_id").or(default_bos);
        let eos = id("tokenizer.ggml.eos_token_id").or(default_eos);
        let add_bos = metadata.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(built.add_bos_default);
        if add_bos && bos.is_none() {
            return Err(ModelError::Tokenizer(
                "tokenizer.ggml.add_bos_token is true, but there is no valid tokenizer.ggml.bos_token_id".into(),
            ));
        }
        let extra_stop =
            ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"].into_iter().filter_map(id).collect();
        Ok(Self::assemble(built.pipeline, built.tokens, Specials { bos, eos, add_bos, extra_stop }))
    }

    /// The tokenizer of a synthetic (random-weight) model with `vocab_size` ids: one token
    /// per byte, plus ChatML's control tokens when the vocabulary has room (see
    /// `gguf_vocab::synthetic_metadata`).
    pub fn synthetic(vocab_size: usize) -> Result<Tokenizer> {
        Self::from_gguf(&gguf_vocab::synthetic_metadata(vocab_size)?)
    }

    /// Loads a Hugging Face `tokenizer.json`. BOS/EOS and `add_bos_token` come from a
    /// sibling `tokenizer_config.json` when there is one (else from the post-processor and
    /// well-known token texts); a sibling `generation_config.json` adds its `eos_token_id`s
    /// to the stop ids.
    pub fn from_json_file(path: &Path) -> Result<Tokenizer> {
        let (tokenizer, specials) = hf_json::load(path)?;
        let tokens = hf_json::token_texts(&tokenizer);
        Ok(Self::assemble(Pipeline::library(tokenizer), tokens, specials))
    }

    /// The tokenizer as a Hugging Face `tokenizer.json` (for exporting a checkpoint): the
    /// same pipeline, so [`Tokenizer::from_json_file`] of it encodes identically.
    pub fn to_hf_json(&self) -> Result<String> {
        self.library_tokenizer()?.to_string(true).map_err(|e| ModelError::Tokenizer(format!("cannot serialize: {e}")))
    }

    /// The pipeline as a Hugging Face tokenizer; for a SentencePiece vocabulary, built now.
    fn library_tokenizer(&self) -> Result<std::borrow::Cow<'_, tokenizers::Tokenizer>> {
        Ok(match &self.inner.pipeline {
            Pipeline::Library { tokenizer, .. } => std::borrow::Cow::Borrowed(tokenizer),
            Pipeline::ByteLevel(encoder) => std::borrow::Cow::Owned(encoder.library_tokenizer(&self.inner.tokens)?),
            Pipeline::SentencePiece(encoder) => std::borrow::Cow::Owned(encoder.library_tokenizer(&self.inner.tokens)?),
        })
    }

    fn assemble(pipeline: Pipeline, tokens: TokenTexts, specials: Specials) -> Tokenizer {
        // The special (control) tokens' ids and texts.
        let special_tokens: Vec<(String, u32)> = match &pipeline {
            Pipeline::Library { tokenizer, .. } => tokenizer
                .get_added_tokens_decoder()
                .into_iter()
                .filter(|(_, t)| t.special)
                .map(|(id, t)| (t.content, id))
                .collect(),
            Pipeline::ByteLevel(encoder) => special_added(encoder.added_ids(), &tokens),
            Pipeline::SentencePiece(encoder) => special_added(encoder.added_ids(), &tokens),
        };
        let special: HashSet<u32> = special_tokens.iter().map(|&(_, id)| id).collect();
        let special_texts = SpecialTexts::new(special_tokens);
        let by_text = tokens
            .iter()
            .zip(0u32..)
            .filter(|(text, id)| {
                END_OF_GENERATION_TEXTS.contains(text)
                    && (!END_OF_GENERATION_IF_CONTROL.contains(text) || special.contains(id))
            })
            .map(|(_, id)| id);
        let mut stop_ids: Vec<u32> = specials.eos.into_iter().chain(specials.extra_stop).chain(by_text).collect();
        stop_ids.retain(|&id| (id as usize) < tokens.len());
        stop_ids.sort_unstable();
        stop_ids.dedup();

        let inner = Inner {
            pipeline,
            tokens,
            special,
            special_texts,
            bos: specials.bos,
            eos: specials.eos,
            add_bos: specials.add_bos,
            stop_ids,
            encoding: OnceLock::new(),
            length_bound: OnceLock::new(),
        };
        // Building the tables left many small holes between live blocks (hundreds of
        // thousands of merge strings), which glibc keeps resident; weights load on another
        // thread, whose arena cannot reuse them.
        crate::heap::return_freed_pages();
        Tokenizer { inner: Arc::new(inner) }
    }

    /// Token ids of `text`; never adds BOS. With `parse_special`, special-token text such as
    /// `<|im_start|>` becomes its special id; without, it is tokenized as ordinary text.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let (tokenizer, plain_added) = match &self.inner.pipeline {
            Pipeline::Library { tokenizer, plain_added } => (tokenizer, plain_added),
            Pipeline::ByteLevel(encoder) => return encoder.encode(&self.inner.tokens, text, parse_special),
            Pipeline::SentencePiece(encoder) => return Ok(encoder.encode(&self.inner.tokens, text, parse_special)),
        };
        let encoding =
            if parse_special { tokenizer.encode_fast(text, false) } else { encode_plain(tokenizer, plain_added, text) };
        let encoding = encoding.map_err(|e| ModelError::Tokenizer(format!("cannot encode text: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of a rendered prompt: special tokens parsed, and BOS prepended when the
    /// model wants one and the prompt does not already start with it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.with_bos(self.encode(text, true)?))
    }

    /// `ids` with BOS first when the model wants one and they do not already start with it.
    fn with_bos(&self, mut ids: Vec<u32>) -> Vec<u32> {
        if let (true, Some(bos)) = (self.inner.add_bos, self.inner.bos)
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        ids
    }

    /// The text of `ids`. With `skip_special`, control tokens (BOS, `<|im_end|>`, …) are left
    /// out. Bytes that do not form valid UTF-8 come out as U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.inner.tokens.len()) {
            return Err(ModelError::Tokenizer(format!(
                "token id {bad} is out of range for a vocabulary of {}",
                self.inner.tokens.len()
            )));
        }
        match &self.inner.pipeline {
            Pipeline::Library { tokenizer, .. } => tokenizer
                .decode(ids, skip_special)
                .map_err(|e| ModelError::Tokenizer(format!("cannot decode tokens: {e}"))),
            Pipeline::ByteLevel(encoder) => {
                Ok(encoder.decode(&self.inner.tokens, &self.inner.special, ids, skip_special))
            }
            Pipeline::SentencePiece(encoder) => {
                Ok(encoder.decode(&self.inner.tokens, &self.inner.special, ids, skip_special))
            }
        }
    }

    /// Number of token ids (the largest id + 1).
    pub fn vocab_size(&self) -> usize {
        self.inner.tokens.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.inner.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.inner.eos
    }

    /// Whether prompts should start with BOS (see [`Tokenizer::encode_prompt`]).
    pub fn add_bos(&self) -> bool {
        self.inner.add_bos
    }

    /// The ids that end generation: EOS, EOT, EOM, and the tokens whose text marks the end
    /// of a turn (`<|im_end|>`, `<|eot_id|>`, …), sorted.
    pub fn stop_ids(&self) -> &[u32] {
        &self.inner.stop_ids
    }

    pub fn is_stop(&self, id: u32) -> bool {
        self.inner.stop_ids.binary_search(&id).is_ok()
    }

    /// The raw vocabulary text of a token (byte-level BPE pieces look like `Ġworld`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.inner.tokens.get(id as usize).filter(|t| !t.is_empty())
    }

    /// The exact bytes token `id` adds to a text (a multi-byte character split across
    /// tokens gives each token its own bytes of it); for a special token, its text. Empty for
    /// an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let encoding = *self.inner.encoding.get_or_init(|| crate::constraint::VocabEncoding::detect(self));
        let mut bytes = crate::constraint::token_bytes(self, encoding, id);
        if self.is_special(id) && !bytes.is_empty() {
            // The constraint module's marker byte before a special token's text.
            bytes.remove(0);
        }
        bytes
    }

    /// The id of a token given its raw vocabulary text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.inner.pipeline {
            Pipeline::Library { tokenizer, .. } => tokenizer.token_to_id(text),
            Pipeline::ByteLevel(encoder) => encoder.token_id(&self.inner.tokens, text),
            Pipeline::SentencePiece(encoder) => encoder.token_id(&self.inner.tokens, text),
        }
    }

    /// BOS as text, for chat templates (`bos_token`).
    pub fn bos_token_text(&self) -> Option<&str> {
        self.inner.bos.and_then(|id| self.token_text(id))
    }

    /// EOS as text, for chat templates (`eos_token`).
    pub fn eos_token_text(&self) -> Option<&str> {
        self.inner.eos.and_then(|id| self.token_text(id))
    }

    /// Whether `id` is a special (control) token, which `decode(.., skip_special = true)`
    /// leaves out.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.special.contains(&id)
    }
}

/// `encode_fast(text, false)` of `tokenizer` with `plain_added` in place of its added
/// vocabulary: the same steps `tokenizers` takes for one raw sequence (split out added tokens
/// and normalize, pre-tokenize, run the model, post-process without adding special tokens).
/// Both sources turn truncation off, so no step truncates.
fn encode_plain(
    tokenizer: &tokenizers::Tokenizer,
    plain_added: &tokenizers::AddedVocabulary,
    text: &str,
) -> tokenizers::Result<tokenizers::Encoding> {
    let mut pieces = plain_added.extract_and_normalize(tokenizer.get_normalizer(), text);
    if let Some(pre_tokenizer) = tokenizer.get_pre_tokenizer() {
        pre_tokenizer.pre_tokenize(&mut pieces)?;
    }
    tokenizer.get_model().tokenize_in_pretokenized(&mut pieces, None)?;
    let encoding = pieces.into_encoding(None, 0, tokenizers::OffsetType::None)?;
    tokenizer.post_process(encoding, None, false)
}

/// The special ones among an encoder's added tokens, with their texts.
fn special_added(added: &[(u32, bool)], tokens: &TokenTexts) -> Vec<(String, u32)> {
    added
        .iter()
        .filter(|&&(_, special)| special)
        .map(|&(id, _)| (tokens.get(id as usize).unwrap_or_default().to_owned(), id))
        .collect()
}
