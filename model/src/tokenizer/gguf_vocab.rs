//! Builds the tokenizer pipeline from the `tokenizer.ggml.*` metadata of a GGUF file so
//! that it produces the same ids as llama.cpp.
//!
//! Two vocabulary kinds are supported:
//! - `gpt2`: our byte-level BPE encoder (see `bpe`) over `tokens` + `merges`, pre-split by
//!   the regexes llama.cpp uses for the file's `tokenizer.ggml.pre` (see
//!   [`pre_tokenizer_regexes`]); the same vocabulary as a `tokenizers::Tokenizer` is built
//!   only on request ([`byte_level_library`]: export, tests);
//! - `llama`: our own SentencePiece encoder over `tokens` + `scores` (see `spm`). The same
//!   vocabulary as a `tokenizers::Tokenizer`, converted the way Hugging Face's
//!   `LlamaConverter` does it (merges derived from the scores, byte fallback, `▁` for
//!   spaces), is built only on request ([`sentencepiece_library`]: export, tests).

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper};

use super::Pipeline;
use super::bpe::ByteLevelBpe;
use super::spm::SentencePiece;
use super::token_texts::TokenTexts;
use crate::error::{ModelError, Result};
use crate::gguf::Metadata;

/// GGUF `token_type` values (llama.cpp's `llama_token_type`).
pub(crate) const TOKEN_TYPE_NORMAL: i64 = 1;
pub(crate) const TOKEN_TYPE_UNKNOWN: i64 = 2;
pub(crate) const TOKEN_TYPE_CONTROL: i64 = 3;
pub(crate) const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The SentencePiece word-boundary marker that stands for a space.
const SPIECE_UNDERLINE: &str = "\u{2581}";

/// GPT-2's split regex. llama.cpp's copy lacks the final `|\s+`; with isolated splitting the
/// gaps it leaves become their own pieces anyway, so both split text identically.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's regex in llama.cpp's spelling: the case-insensitive contractions are written out
/// as character classes.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's regex: as Llama 3's, but every digit is its own piece.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a `gpt2` vocabulary pre-splits text, keyed by `tokenizer.ggml.pre`.
pub(crate) struct PreTokenizerSpec {
    /// Applied in order; every match and every gap between matches becomes its own piece.
    pub regexes: &'static [&'static str],
    /// A word that is a whole token skips the merges (llama.cpp's `ignore_merges`).
    pub ignore_merges: bool,
    /// llama.cpp's default for `add_bos` when the file does not say.
    pub add_bos_default: bool,
}

/// llama.cpp's pre-tokenizer regexes for the `pre` values we support (`src/llama-vocab.cpp`,
/// `llm_tokenizer_bpe`), or `None` for a value we do not know.
pub(crate) fn pre_tokenizer_regexes(pre: &str) -> Option<PreTokenizerSpec> {
    let spec = |regexes, ignore_merges, add_bos_default| PreTokenizerSpec { regexes, ignore_merges, add_bos_default };
    Some(match pre {
        // A missing `pre` is llama.cpp's "default" too (with a loud warning).
        "" | "default" => spec(&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"], false, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => spec(&[LLAMA3], true, true),
        "dbrx" | "smaug-bpe" => spec(&[LLAMA3], false, false),
        "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" => spec(&[QWEN2], false, false),
        "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "exaone4" => spec(&[GPT2], false, false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            spec(&[r"\p{N}", GPT2], false, false)
        }
        _ => return None,
    })
}

/// What the builder found out besides the tokenizer itself.
pub(crate) struct Built {
    pub pipeline: Pipeline,
    /// The raw token texts, indexed by id.
    pub tokens: TokenTexts,
    /// llama.cpp's default for `add_bos` when `tokenizer.ggml.add_bos_token` is absent.
    pub add_bos_default: bool,
    /// llama.cpp's default bos/eos ids for this vocabulary kind.
    pub default_bos_eos: Option<(u32, u32)>,
}

/// Builds the tokenizer for `tokenizer.ggml.model` = `gpt2` or `llama`.
pub(crate) fn build(metadata: &Metadata) -> Result<Built> {
    let model = metadata.str("tokenizer.ggml.model")?;
    const TOKENS: &str = "tokenizer.ggml.tokens";
    // Borrowed from the metadata: a `Vec<String>` copy would cost ~15 MB for Gemma 3's
    // 262,144 tokens at the moment the weights load too.
    let tokens = metadata
        .opt_str_list(TOKENS)?
        .ok_or_else(|| ModelError::Tokenizer("the GGUF file has no tokenizer.ggml.tokens".into()))?;
    if tokens.is_empty() || u32::try_from(tokens.len()).is_err() {
        return Err(ModelError::Tokenizer(format!("unusable vocabulary of {} tokens", tokens.len())));
    }
    let token_types = match metadata.opt_i64_array("tokenizer.ggml.token_type")? {
        Some(types) if types.len() >= tokens.len() => types[..tokens.len()].to_vec(),
        Some(types) => {
            return Err(ModelError::Tokenizer(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        None => vec![TOKEN_TYPE_NORMAL; tokens.len()],
    };
    // llama.cpp names empty tokens this way; an empty key would confuse the BPE vocabulary.
    let named =
        tokens.iter().enumerate().map(|(i, &t)| if t.is_empty() { format!("[EMPTY_{i}]").into() } else { t.into() });
    // One packed copy of the texts serves lookups by id.
    let texts = TokenTexts::new::<std::borrow::Cow<'_, str>>(named);
    drop(tokens);

    let (pipeline, add_bos_default, default_bos_eos) = match model {
        "gpt2" => {
            let pre = metadata.opt_str("tokenizer.ggml.pre")?.unwrap_or("");
            let spec = pre_tokenizer_regexes(pre).ok_or_else(|| {
                ModelError::Tokenizer(format!("unsupported pre-tokenizer type tokenizer.ggml.pre = `{pre}`"))
            })?;
            let merges = metadata
                .opt_str_list("tokenizer.ggml.merges")?
                .ok_or_else(|| ModelError::Tokenizer("a gpt2 vocabulary needs tokenizer.ggml.merges".into()))?;
            let add_bos_default = spec.add_bos_default;
            (Pipeline::ByteLevel(ByteLevelBpe::new(&texts, &merges, &token_types, spec)?), add_bos_default, None)
        }
        "llama" => {
            let scores = metadata.opt_f32_array("tokenizer.ggml.scores")?.unwrap_or_default();
            let add_space_prefix = metadata.opt_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
            let encoder = SentencePiece::new(&texts, &scores, &token_types, add_space_prefix);
            (Pipeline::SentencePiece(encoder), true, Some((1, 2)))
        }
        other => {
            return Err(ModelError::Tokenizer(format!(
                "unsupported tokenizer model tokenizer.ggml.model = `{other}` (supported: gpt2, llama)"
            )));
        }
    };
    Ok(Built { pipeline, tokens: texts, add_bos_default, default_bos_eos })
}

/// Metadata for a synthetic model's tokenizer (random-weight models for tests and benchmarks):
/// a byte-level vocabulary in which id `b < 256` is byte `b` and there are no merges, so text
/// encodes one token per byte. With room for them, ids 256..259 are the ChatML control tokens
/// `<|endoftext|>`, `<|im_start|>` (BOS) and `<|im_end|>` (EOS), and the ids after those are
/// made-up words (" ba", " kelo", …) so that random ids decode to readable text.
pub(crate) fn synthetic_metadata(vocab_size: usize) -> Result<Metadata> {
    use crate::gguf::MetadataValue as V;
    const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    if !(256..=u32::MAX as usize).contains(&vocab_size) {
        return Err(ModelError::Tokenizer(format!(
            "a synthetic tokenizer needs a vocabulary of at least 256 tokens, not {vocab_size}"
        )));
    }
    let mut tokens: Vec<String> = (0u8..=255).map(|b| byte_level_char(b).to_string()).collect();
    let mut types = vec![V::I32(TOKEN_TYPE_NORMAL as i32); 256];
    let mut entries = std::collections::BTreeMap::new();
    if vocab_size >= 256 + SPECIALS.len() {
        tokens.extend(SPECIALS.map(String::from));
        types.extend(SPECIALS.map(|_| V::I32(TOKEN_TYPE_CONTROL as i32)));
        entries.insert("tokenizer.ggml.bos_token_id".to_string(), V::U32(257));
        entries.insert("tokenizer.ggml.eos_token_id".to_string(), V::U32(258));
    }
    const CONSONANTS: &[u8] = b"bdfghklmnprstvz";
    const VOWELS: &[u8] = b"aeiou";
    let syllables = CONSONANTS.len() * VOWELS.len();
    let mut n = 0usize;
    while tokens.len() < vocab_size {
        // Word n: its base-`syllables` digits, each a consonant-vowel pair, after a space
        // (written `Ġ` in the byte-level alphabet); distinct n give distinct words.
        let mut word = String::from("\u{120}");
        let mut k = n;
        loop {
            let syllable = k % syllables;
            word.push(char::from(CONSONANTS[syllable / VOWELS.len()]));
            word.push(char::from(VOWELS[syllable % VOWELS.len()]));
            k /= syllables;
            if k == 0 {
                break;
            }
            k -= 1;
        }
        tokens.push(word);
        types.push(V::I32(TOKEN_TYPE_NORMAL as i32));
        n += 1;
    }
    let strings = |items: Vec<String>| V::Array(items.into_iter().map(V::String).collect());
    entries.insert("tokenizer.ggml.model".to_string(), V::String("gpt2".into()));
    entries.insert("tokenizer.ggml.pre".to_string(), V::String("gpt2".into()));
    entries.insert("tokenizer.ggml.tokens".to_string(), strings(tokens));
    entries.insert("tokenizer.ggml.token_type".to_string(), V::Array(types));
    entries.insert("tokenizer.ggml.merges".to_string(), strings(Vec::new()));
    entries.insert("tokenizer.ggml.add_bos_token".to_string(), V::Bool(false));
    Ok(Metadata::new(entries))
}

/// The char GPT-2's byte-level alphabet (`bytes_to_unicode`) uses for byte `b`: printable
/// Latin-1 bytes stand for themselves, the others are numbered from U+0100 in byte order.
pub(super) fn byte_level_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(0x100 + rank).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The first id of every distinct token text: llama.cpp refuses duplicates, but a lossy UTF-8
/// decode of the metadata can create them, and the first id is the one a lookup finds there.
fn vocab_of(tokens: Vec<String>) -> Vocab {
    // Sized up front: growing a 262,144-entry table rehashes it ~18 times on the way.
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, token) in (0u32..).zip(tokens) {
        vocab.entry(token).or_insert(id);
    }
    vocab
}

/// A `gpt2` vocabulary as a Hugging Face pipeline: what [`ByteLevelBpe`] encodes, at the
/// cost of the BPE model's tables (see `bpe`).
pub(crate) fn byte_level_library(
    texts: &TokenTexts,
    merges: Vec<String>,
    token_types: &[i64],
    spec: &PreTokenizerSpec,
) -> Result<tokenizers::Tokenizer> {
    let mut tokenizer = byte_level_bpe(vocab_of(texts.iter().map(str::to_owned).collect()), merges, spec)?;
    add_special_tokens(&mut tokenizer, texts, token_types)?;
    Ok(tokenizer)
}

fn byte_level_bpe(vocab: Vocab, merges: Vec<String>, spec: &PreTokenizerSpec) -> Result<tokenizers::Tokenizer> {
    let mut pairs = Vec::with_capacity(merges.len());
    let mut skipped = 0usize;
    for merge in merges {
        // Split at the first space after the first character, as llama.cpp does (see `bpe`).
        let split = merge.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(i, _)| i);
        let Some(at) = split else {
            skipped += 1;
            continue;
        };
        let (left, right) = (&merge[..at], &merge[at + 1..]);
        // The BPE model rejects merges that name or create unknown tokens.
        if vocab.contains_key(left) && vocab.contains_key(right) && vocab.contains_key(&format!("{left}{right}")) {
            pairs.push((left.to_string(), right.to_string()));
        } else {
            skipped += 1;
        }
    }
    if skipped > 0 {
        tracing::debug!(skipped, "ignored GGUF merges that do not fit the vocabulary");
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(|e| ModelError::Tokenizer(format!("cannot build the BPE model: {e}")))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(super::bpe::pre_tokenizer(spec)?));
    tokenizer.with_decoder(Some(ByteLevel::new(false, false, false)));
    Ok(tokenizer)
}

/// A `llama` vocabulary as a Hugging Face pipeline: what [`SentencePiece`] encodes, at the
/// cost of ~60 MB of BPE tables for Gemma 3 (see `spm`).
pub(crate) fn sentencepiece_library(
    texts: &TokenTexts,
    scores: &[f32],
    token_types: &[i64],
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer> {
    let vocab = vocab_of(texts.iter().map(str::to_owned).collect());
    let mut tokenizer = sentencepiece_bpe(texts, vocab, scores, token_types, add_space_prefix)?;
    add_special_tokens(&mut tokenizer, texts, token_types)?;
    Ok(tokenizer)
}

fn sentencepiece_bpe(
    tokens: &TokenTexts,
    vocab: Vocab,
    scores: &[f32],
    token_types: &[i64],
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer> {
    let merges = merges_from_scores(tokens, scores, &vocab);
    let unk = (0..tokens.len()).find(|&i| token_types[i] == TOKEN_TYPE_UNKNOWN).and_then(|i| tokens.get(i));
    let unk = unk.map(str::to_owned);
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder.build().map_err(|e| ModelError::Tokenizer(format!("cannot build the BPE model: {e}")))?;

    let replace = |from: &str, to: &str| {
        Replace::new(from, to).map_err(|e| ModelError::Tokenizer(format!("cannot build a replace step: {e}")))
    };
    // Like llama.cpp, every run of plain text (the whole text, or what follows a special
    // token) gets the leading space; the normalizer runs once per such run.
    let mut normalizers = Vec::new();
    if add_space_prefix {
        normalizers.push(NormalizerWrapper::Prepend(Prepend::new(SPIECE_UNDERLINE.to_string())));
    }
    normalizers.push(NormalizerWrapper::Replace(replace(" ", SPIECE_UNDERLINE)?));

    let mut decoders = vec![
        DecoderWrapper::Replace(replace(SPIECE_UNDERLINE, " ")?),
        DecoderWrapper::ByteFallback(ByteFallback::default()),
        DecoderWrapper::Fuse(Fuse::default()),
    ];
    if add_space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(|e| ModelError::Tokenizer(format!("cannot set the normalizer: {e}")))?;
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// Hugging Face's `generate_merges` for SentencePiece vocabularies: every split of a token
/// into two tokens is a merge, ranked by the merged token's score (highest first), then by
/// the lengths of the left and right pieces (longest first), then by vocabulary order.
/// `vocab` maps each text to its first id, as [`vocab_of`] builds it.
pub(crate) fn merges_from_scores(tokens: &TokenTexts, scores: &[f32], vocab: &Vocab) -> Vec<(String, String)> {
    /// A merge as ids (20 bytes; Gemma 3 has ~515,000 of them): texts only at the end, once
    /// the ranking is done and the tables below are gone.
    struct Candidate {
        left: u32,
        right: u32,
        score: f32,
        left_chars: u32,
        right_chars: u32,
    }
    let chars = |text: &str| u32::try_from(text.chars().count()).unwrap_or(u32::MAX);
    // Python's dict keeps the first position and the last score of a repeated text: the last
    // score, stored under the text's first id.
    let mut score_of = vec![0.0f32; tokens.len()];
    for (id, token) in tokens.iter().enumerate() {
        if let Some(&first) = vocab.get(token) {
            // `+ 0.0` turns -0.0 into 0.0, which Python compares as equal.
            score_of[first as usize] = scores.get(id).copied().unwrap_or(0.0) + 0.0;
        }
    }
    let mut candidates = Vec::new();
    let mut local = Vec::new();
    for (id, token) in (0u32..).zip(tokens.iter()) {
        // A repeated text proposes its merges once, at its first position.
        if vocab.get(token) != Some(&id) {
            continue;
        }
        let score = score_of[id as usize];
        local.extend(token.char_indices().skip(1).filter_map(|(at, _)| {
            let (left, right) = token.split_at(at);
            let (&l, &r) = (vocab.get(left)?, vocab.get(right)?);
            Some(Candidate { left: l, right: r, score, left_chars: chars(left), right_chars: chars(right) })
        }));
        local.sort_by_key(|c: &Candidate| (c.left, c.right));
        candidates.append(&mut local);
    }
    drop(score_of);
    // Stable, like Python's sorted(..., reverse=True): ties keep their vocabulary order.
    candidates.sort_by(|a, b| {
        b.score.total_cmp(&a.score).then(b.left_chars.cmp(&a.left_chars)).then(b.right_chars.cmp(&a.right_chars))
    });
    let text = |id: u32| tokens.get(id as usize).unwrap_or_default().to_owned();
    candidates.into_iter().map(|c| (text(c.left), text(c.right))).collect()
}

/// Control and unknown tokens become special added tokens (split out only when special
/// tokens are parsed); user-defined tokens become ordinary added tokens, which llama.cpp and
/// Hugging Face both split out of any text, parsed or not.
fn add_special_tokens(tokenizer: &mut tokenizers::Tokenizer, tokens: &TokenTexts, types: &[i64]) -> Result<()> {
    let mut special = Vec::new();
    let mut user_defined = Vec::new();
    for (token, &kind) in tokens.iter().zip(types) {
        match kind {
            TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN => special.push(AddedToken::from(token, true)),
            TOKEN_TYPE_USER_DEFINED => user_defined.push(AddedToken::from(token, false).normalized(false)),
            _ => {}
        }
    }
    tokenizer
        .add_special_tokens(special)
        .and_then(|_| tokenizer.add_tokens(user_defined))
        .map_err(|e| ModelError::Tokenizer(format!("cannot register the special tokens: {e}")))?;
    Ok(())
}
