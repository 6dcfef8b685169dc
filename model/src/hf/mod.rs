//! Hugging Face checkpoints: a directory with `config.json`, `model.safetensors` (or the
//! shards `model.safetensors.index.json` lists), `tokenizer.json`, and optionally
//! `tokenizer_config.json` (chat template, BOS/EOS, `add_bos_token`), `chat_template.jinja`
//! and `generation_config.json` (stop ids, default sampling).
//!
//! [`open`] reads such a directory into the same [`ModelInfo`] and [`WeightSource`] a GGUF
//! file gives: the family comes from `model_type` ([`crate::arch::family_of_hf`]), its
//! configuration from `config.json` ([`config`], and each family's
//! [`crate::arch::Family::hf_config`]), its tensors from the safetensors files ([`shards`]),
//! found by the Hugging Face names each family declares. [`export`] writes one from a GGUF
//! file (for tests, and for users who want one).

pub mod config;
pub mod export;
pub mod shards;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

pub use export::{HfDtype, HfExport, write_checkpoint};
pub use shards::HfWeights;

use crate::arch;
use crate::chat_template::ChatTemplate;
use crate::error::{ModelError, Result};
use crate::model::{GenerationDefaults, ModelInfo};
use crate::tokenizer::Tokenizer;
use config::ConfigJson;
use shards::Shards;

pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
pub const TOKENIZER: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
pub const CHAT_TEMPLATE: &str = "chat_template.jinja";
pub const GENERATION_CONFIG: &str = "generation_config.json";

/// Opens the checkpoint in `dir`: what the model says about itself, and its weights.
pub fn open(dir: &Path) -> Result<(ModelInfo, HfWeights)> {
    let weight_files = weight_files(dir)?;
    let json = ConfigJson::parse(&dir.join(CONFIG), &read_text(&dir.join(CONFIG))?)?.text_model();
    let model_type = json.model_type()?;
    let family = arch::family_of_hf(&model_type)?;
    let shards = Shards::open(weight_files)?;
    let config = family.hf_config(&json, &|name| shards.contains(name))?;
    config.validate().map_err(|e| ModelError::checkpoint(json.path(), e.to_string()))?;
    let rope_freqs = config::rope_freq_divisors(&json, &config)?;
    let weights = HfWeights::new(shards, family, &config, rope_freqs)?;

    let tokenizer = Tokenizer::from_json_file(&dir.join(TOKENIZER))?;
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(ModelError::checkpoint(
            &dir.join(TOKENIZER),
            format!("{} tokens, more than config.json's vocab_size {}", tokenizer.vocab_size(), config.vocab_size),
        ));
    }
    let chat_template = chat_template(dir, &tokenizer)?;
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    let info = ModelInfo {
        name,
        tokenizer: Arc::new(tokenizer),
        chat_template,
        context_length: config.context_length,
        config,
        generation: generation_defaults(&dir.join(GENERATION_CONFIG))?,
    };
    Ok((info, weights))
}

/// The safetensors files: `model.safetensors`, or every shard the index's `weight_map`
/// names. A directory with neither (or without `config.json` or `tokenizer.json`) is not a
/// checkpoint: the error lists what is missing.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(WEIGHTS_INDEX);
    let has_weights = dir.join(WEIGHTS).is_file() || index.is_file();
    let mut missing: Vec<&str> = [CONFIG, TOKENIZER].into_iter().filter(|f| !dir.join(f).is_file()).collect();
    if !has_weights {
        missing.push("model.safetensors (or model.safetensors.index.json)");
    }
    if !missing.is_empty() {
        return Err(ModelError::checkpoint(
            dir,
            format!("is neither a GGUF file nor a complete Hugging Face checkpoint: missing {}", missing.join(", ")),
        ));
    }
    if !index.is_file() {
        return Ok(vec![dir.join(WEIGHTS)]);
    }
    let value: Value = serde_json::from_str(&read_text(&index)?)
        .map_err(|e| ModelError::checkpoint(&index, format!("is not valid JSON: {e}")))?;
    let Some(map) = value.get("weight_map").and_then(Value::as_object) else {
        return Err(ModelError::checkpoint(&index, "`weight_map`: missing or not an object"));
    };
    let mut files = Vec::new();
    for (tensor, file) in map {
        let Some(file) = file.as_str() else {
            return Err(ModelError::checkpoint(&index, format!("`weight_map.{tensor}`: not a file name")));
        };
        // A file name, not a path: the index must not reach outside the checkpoint.
        if Path::new(file).file_name() != Some(file.as_ref()) {
            return Err(ModelError::checkpoint(&index, format!("`weight_map.{tensor}`: `{file}` is not a file name")));
        }
        let path = dir.join(file);
        if !files.contains(&path) {
            if !path.is_file() {
                return Err(ModelError::checkpoint(
                    &index,
                    format!("lists shard `{file}` (for `{tensor}`), which is missing"),
                ));
            }
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `chat_template.jinja` if present (newer checkpoints), else `tokenizer_config.json`'s.
fn chat_template(dir: &Path, tokenizer: &Tokenizer) -> Result<Option<ChatTemplate>> {
    let jinja = dir.join(CHAT_TEMPLATE);
    if jinja.is_file() {
        return ChatTemplate::from_file(&jinja, tokenizer).map(Some);
    }
    let config = dir.join(TOKENIZER_CONFIG);
    if !config.is_file() {
        return Ok(None);
    }
    ChatTemplate::from_tokenizer_config(&config, tokenizer)
}

/// The sampling settings `generation_config.json` recommends. An explicit `do_sample: false`
/// means greedy decoding in `transformers`, i.e. temperature 0.
fn generation_defaults(path: &Path) -> Result<GenerationDefaults> {
    if !path.is_file() {
        return Ok(GenerationDefaults::default());
    }
    let json = ConfigJson::parse(path, &read_text(path)?)?;
    let greedy = json.opt_bool("do_sample")? == Some(false);
    Ok(GenerationDefaults {
        temperature: if greedy { Some(0.0) } else { json.opt_f64("temperature")? },
        top_p: json.opt_f64("top_p")?,
        top_k: json.opt_usize("top_k")?,
        repetition_penalty: json.opt_f64("repetition_penalty")?,
    })
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })
}
