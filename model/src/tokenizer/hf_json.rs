//! Loading a Hugging Face `tokenizer.json` and the special-token facts that live next to it
//! (`tokenizer_config.json`, `generation_config.json`).

use std::path::Path;

use serde_json::Value;

use super::Specials;
use super::token_texts::TokenTexts;
use crate::error::{ModelError, Result};

/// Likely BOS texts, for a `tokenizer.json` without a `tokenizer_config.json`.
const BOS_GUESSES: &[&str] = &["<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"];
/// Likely EOS texts, likewise.
const EOS_GUESSES: &[&str] = &["</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", "<|im_end|>"];

pub(super) fn load(path: &Path) -> Result<(tokenizers::Tokenizer, Specials)> {
    let mut tokenizer = tokenizers::Tokenizer::from_file(path)
        .map_err(|e| ModelError::Tokenizer(format!("cannot load {}: {e}", path.display())))?;
    // Some files ship with truncation or padding configured; prompts must come out whole.
    tokenizer.with_truncation(None).map_err(|e| ModelError::Tokenizer(format!("cannot disable truncation: {e}")))?;
    tokenizer.with_padding(None);

    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let config = read_json(&dir.join("tokenizer_config.json"))?;
    let generation = read_json(&dir.join("generation_config.json"))?;

    let special_text = |key: &str| -> Option<String> {
        let value = config.as_ref()?.get(key)?;
        // Either "<s>" or an AddedToken object {"content": "<s>", ...}.
        value.as_str().or_else(|| value.get("content")?.as_str()).map(str::to_owned)
    };
    let guess = |texts: &[&str]| texts.iter().find_map(|t| tokenizer.token_to_id(t));

    // What the post-processor puts in front of an empty input is the BOS it would add.
    let post_processor_bos = tokenizer
        .encode_fast("", true)
        .ok()
        .and_then(|e| e.get_ids().first().copied())
        .filter(|&id| tokenizer.get_added_tokens_decoder().get(&id).is_some_and(|t| t.special));

    let bos = match special_text("bos_token") {
        Some(text) => tokenizer.token_to_id(&text),
        None if config.is_some() => None,
        None => post_processor_bos.or_else(|| guess(BOS_GUESSES)),
    };
    let eos = match special_text("eos_token") {
        Some(text) => tokenizer.token_to_id(&text),
        None if config.is_some() => None,
        None => guess(EOS_GUESSES),
    };
    let add_bos = config
        .as_ref()
        .and_then(|c| c.get("add_bos_token"))
        .and_then(Value::as_bool)
        .unwrap_or_else(|| post_processor_bos.is_some() && post_processor_bos == bos);
    let add_bos = add_bos && bos.is_some();

    let extra_stop = match generation.as_ref().and_then(|g| g.get("eos_token_id")) {
        Some(Value::Array(ids)) => ids.iter().filter_map(json_id).collect(),
        Some(id) => json_id(id).into_iter().collect(),
        None => Vec::new(),
    };
    Ok((tokenizer, Specials { bos, eos, add_bos, extra_stop }))
}

/// Every token text by id, added tokens included; ids nobody uses stay empty.
pub(super) fn token_texts(tokenizer: &tokenizers::Tokenizer) -> TokenTexts {
    let vocab = tokenizer.get_vocab(true);
    let size = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
    let mut texts = vec![String::new(); size];
    for (text, id) in vocab {
        texts[id as usize] = text;
    }
    TokenTexts::new(texts.iter().map(String::as_str))
}

fn json_id(value: &Value) -> Option<u32> {
    value.as_u64().and_then(|v| u32::try_from(v).ok())
}

/// A JSON file that may be absent; present but unreadable or malformed is an error.
fn read_json(path: &Path) -> Result<Option<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ModelError::Io { path: path.to_path_buf(), source }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::Tokenizer(format!("{} is not valid JSON: {e}", path.display())))
}
