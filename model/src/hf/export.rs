//! Writes a Hugging Face checkpoint from a GGUF file ([`write_checkpoint`]): what
//! [`super::open`] reads back as the same model, and what `transformers` loads.
//!
//! Weights are dequantized to F32, F16 or BF16. Two things GGUF stores differently are
//! undone: Llama q/k rows, which GGUF converters permute for RoPE on interleaved pairs, go
//! back to the rotate-half order of HF checkpoints; Gemma norm gains lose the `+1` GGUF files
//! fold in. Llama 3's `rope_freqs.weight` becomes `config.json`'s `rope_scaling`. The
//! tokenizer is the `tokenizers` pipeline our GGUF vocabulary builds, serialized, so it
//! encodes identically; the chat template, BOS/EOS and `add_bos_token` go to
//! `tokenizer_config.json`, the stop ids to `generation_config.json`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use safetensors::{Dtype, View};
use serde_json::{Value, json};

use super::config::{JsonMap, add_llama3_scaling};
use super::{CONFIG, GENERATION_CONFIG, TOKENIZER, TOKENIZER_CONFIG, WEIGHTS, WEIGHTS_INDEX};
use crate::arch::{self, Role, TensorDecl};
use crate::config::{ModelConfig, RopeLayout};
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use crate::weights::WeightSource;

/// The float type of the exported weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HfDtype {
    #[default]
    F32,
    F16,
    BF16,
}

impl HfDtype {
    fn safetensors(self) -> Dtype {
        match self {
            HfDtype::F32 => Dtype::F32,
            HfDtype::F16 => Dtype::F16,
            HfDtype::BF16 => Dtype::BF16,
        }
    }

    /// `config.json`'s `torch_dtype`.
    fn torch_name(self) -> &'static str {
        match self {
            HfDtype::F32 => "float32",
            HfDtype::F16 => "float16",
            HfDtype::BF16 => "bfloat16",
        }
    }

    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            HfDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            HfDtype::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
            HfDtype::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        }
    }

    fn size(self) -> usize {
        if self == HfDtype::F32 { 4 } else { 2 }
    }
}

impl FromStr for HfDtype {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(HfDtype::F32),
            "f16" => Ok(HfDtype::F16),
            "bf16" => Ok(HfDtype::BF16),
            other => Err(ModelError::InvalidRequest(format!("dtype `{other}`: expected f32, f16 or bf16"))),
        }
    }
}

impl fmt::Display for HfDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HfDtype::F32 => "f32",
            HfDtype::F16 => "f16",
            HfDtype::BF16 => "bf16",
        })
    }
}

/// How to export: the weights' float type, and into how many `.safetensors` files (more
/// than one adds `model.safetensors.index.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HfExport {
    pub dtype: HfDtype,
    pub shards: usize,
}

impl Default for HfExport {
    fn default() -> Self {
        HfExport { dtype: HfDtype::F32, shards: 1 }
    }
}

/// One tensor ready to write.
struct Encoded {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Encoded {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes the checkpoint of the GGUF file `gguf` into `out` (created if needed).
pub fn write_checkpoint(gguf: &Path, out: &Path, options: HfExport) -> Result<()> {
    if options.shards == 0 {
        return Err(ModelError::InvalidRequest("a checkpoint needs at least one shard".into()));
    }
    let file = GgufFile::open(gguf)?;
    let config = arch::config_from_gguf(&file.metadata, &|name| file.tensor_info(name).is_some())?;
    let family = config.family.family();
    let tokenizer = Tokenizer::from_gguf(&file.metadata)?;
    std::fs::create_dir_all(out).map_err(|source| ModelError::Io { path: out.to_path_buf(), source })?;

    let mut json = family.hf_config_json(&config)?;
    if config.rope_freq_factors {
        let (_, divisors) = file.f32_tensor("rope_freqs.weight")?;
        add_llama3_scaling(&mut json, &divisors, &config)?;
    }
    json.insert("torch_dtype".into(), json!(options.dtype.torch_name()));
    json.insert("bos_token_id".into(), json!(tokenizer.bos_id()));
    json.insert("eos_token_id".into(), json!(tokenizer.eos_id()));
    write_json(&out.join(CONFIG), json)?;

    let decls: Vec<TensorDecl> = family.tensors(&config).into_iter().filter(|d| d.role != Role::RopeFreqs).collect();
    write_weights(&file, &config, &decls, out, options)?;

    std::fs::write(out.join(TOKENIZER), tokenizer_json(&tokenizer)?)
        .map_err(|source| ModelError::Io { path: out.join(TOKENIZER), source })?;
    let mut tokenizer_config = JsonMap::new();
    tokenizer_config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    tokenizer_config.insert("add_bos_token".into(), json!(tokenizer.add_bos()));
    tokenizer_config.insert("add_eos_token".into(), json!(false));
    tokenizer_config.insert("clean_up_tokenization_spaces".into(), json!(false));
    tokenizer_config.insert("model_max_length".into(), json!(config.context_length));
    if let Some(bos) = tokenizer.bos_token_text() {
        tokenizer_config.insert("bos_token".into(), json!(bos));
    }
    if let Some(eos) = tokenizer.eos_token_text() {
        tokenizer_config.insert("eos_token".into(), json!(eos));
    }
    if let Some(template) = file.metadata.opt_str("tokenizer.chat_template")? {
        tokenizer_config.insert("chat_template".into(), json!(template));
    }
    write_json(&out.join(TOKENIZER_CONFIG), tokenizer_config)?;

    // Every id that ends generation, so the reader's stop set is the GGUF one.
    let mut generation = JsonMap::new();
    generation.insert("bos_token_id".into(), json!(tokenizer.bos_id()));
    generation.insert("eos_token_id".into(), json!(tokenizer.stop_ids()));
    write_json(&out.join(GENERATION_CONFIG), generation)
}

/// `tokenizer.json`: our pipeline, plus, for a model that starts prompts with BOS, the
/// post-processor that makes `transformers` add it too (as the models' own files do; our
/// reader encodes without post-processing and takes `add_bos_token` from
/// `tokenizer_config.json`, so it changes nothing here).
fn tokenizer_json(tokenizer: &Tokenizer) -> Result<String> {
    let text = tokenizer.to_hf_json()?;
    let (true, Some(bos_id), Some(bos)) = (tokenizer.add_bos(), tokenizer.bos_id(), tokenizer.bos_token_text()) else {
        return Ok(text);
    };
    let mut value: Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Tokenizer(format!("serialized: {e}")))?;
    if value.get("post_processor").is_some_and(|p| !p.is_null()) {
        return Ok(text);
    }
    let special = |type_id: u32| json!({ "SpecialToken": { "id": bos, "type_id": type_id } });
    let sequence = |id: &str, type_id: u32| json!({ "Sequence": { "id": id, "type_id": type_id } });
    value["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [special(0), sequence("A", 0)],
        "pair": [special(0), sequence("A", 0), special(1), sequence("B", 1)],
        "special_tokens": { bos: { "id": bos, "ids": [bos_id], "tokens": [bos] } },
    });
    serde_json::to_string_pretty(&value).map_err(|e| ModelError::Internal(e.to_string()))
}

/// The tensors, in `options.shards` files of about equal size, in declaration order.
fn write_weights(file: &GgufFile, c: &ModelConfig, decls: &[TensorDecl], out: &Path, options: HfExport) -> Result<()> {
    let family = c.family.family();
    let sizes: Vec<usize> = decls.iter().map(|d| d.dims.iter().product::<usize>() * options.dtype.size()).collect();
    let total: usize = sizes.iter().sum();
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); options.shards];
    let mut before = 0;
    for (i, size) in sizes.iter().enumerate() {
        groups[(before * options.shards / total.max(1)).min(options.shards - 1)].push(i);
        before += size;
    }
    groups.retain(|g| !g.is_empty());
    if groups.len() != options.shards {
        return Err(ModelError::InvalidRequest(format!(
            "{} shards asked for, but the tensors fill only {}",
            options.shards,
            groups.len()
        )));
    }
    let mut weight_map = JsonMap::new();
    for (n, group) in groups.iter().enumerate() {
        let name = if options.shards == 1 {
            WEIGHTS.to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", n + 1, options.shards)
        };
        let mut tensors = Vec::with_capacity(group.len());
        for &i in group {
            let decl = &decls[i];
            let hf_name = family
                .hf_tensor_name(&decl.name)
                .ok_or_else(|| ModelError::Internal(format!("no Hugging Face name declared for {}", decl.name)))?;
            tensors.push((hf_name.clone(), encode(file, c, decl, options.dtype)?));
            weight_map.insert(hf_name, json!(name));
        }
        let path = out.join(&name);
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata), &path)
            .map_err(|e| ModelError::checkpoint(&path, format!("cannot write: {e}")))?;
        // The crate writes through a private temporary file; give it the usual mode.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644));
        }
    }
    if options.shards > 1 {
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let Value::Object(index) = index else { return Err(ModelError::Internal("index is not an object".into())) };
        write_json(&out.join(WEIGHTS_INDEX), index)?;
    }
    Ok(())
}

/// One tensor as HF stores it: shape `[out, in]` (ggml dims reversed), rows in HF order.
fn encode(file: &GgufFile, c: &ModelConfig, decl: &TensorDecl, dtype: HfDtype) -> Result<Encoded> {
    let (dims, mut values) = file.f32_tensor(&decl.name)?;
    if dims != decl.dims {
        return Err(ModelError::tensor(
            &decl.name,
            format!("has dims {dims:?}, the configuration implies {:?}", decl.dims),
        ));
    }
    let offset = c.family.family().hf_norm_offset();
    if decl.role.is_norm() && offset != 0.0 {
        values.iter_mut().for_each(|v| *v -= offset);
    }
    if c.rope_layout == RopeLayout::InterleavedPairs {
        let heads = match decl.role {
            Role::AttnQ | Role::AttnQBias => Some(c.num_heads),
            Role::AttnK | Role::AttnKBias => Some(c.num_kv_heads),
            _ => None,
        };
        if let Some(heads) = heads {
            values = rotate_half_order(&values, *dims.last().unwrap_or(&1), heads);
        }
    }
    Ok(Encoded {
        dtype: dtype.safetensors(),
        shape: dims.iter().rev().copied().collect(),
        bytes: dtype.encode(&values),
    })
}

/// Undoes the GGUF converters' q/k permutation: in each head of `rows / heads` rows, row
/// `2j + t` (interleaved pairs) goes back to row `t · half + j` (rotated halves).
fn rotate_half_order(values: &[f32], rows: usize, heads: usize) -> Vec<f32> {
    let row_len = values.len() / rows.max(1);
    let head_dim = rows / heads.max(1);
    let half = head_dim / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                let from = (h * head_dim + 2 * j + t) * row_len;
                let to = (h * head_dim + t * half + j) * row_len;
                out[to..to + row_len].copy_from_slice(&values[from..from + row_len]);
            }
        }
    }
    out
}

fn write_json(path: &Path, map: JsonMap) -> Result<()> {
    let text = serde_json::to_string_pretty(&Value::Object(map)).map_err(|e| ModelError::Internal(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|source| ModelError::Io { path: path.to_path_buf(), source })
}
