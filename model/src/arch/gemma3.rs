//! Gemma 3 (`general.architecture` `gemma3`), text decoder.
//!
//! Differences from Llama, as llama.cpp's gemma3 graph computes them: token embeddings
//! multiplied by `√hidden`; per-head RMSNorm on q and k before RoPE; RMSNorm both before and
//! after attention and feed-forward (`post_attention_norm`, `post_ffw_norm`, applied to the
//! block's output before the residual add); a GELU-tanh gate; RoPE on rotated halves; and
//! layers that attend within `gemma3.attention.sliding_window` positions, five of every six
//! by default (`attention.sliding_window_pattern`), with their own RoPE base
//! (`rope.freq_base_swa`, 10 000). The output projection is usually tied to the embedding.
//! GGUF norm gains already include Gemma's `+1`.

use serde_json::{Value, json};

use super::{
    Family, FamilyKind, Role, TensorDecl, hf_name, llama, llama_block, outer_tensors, read_sliding_window, u32_value,
};
use crate::config::{Activation, ModelConfig, RopeLayout};
use crate::error::{ModelError, Result};
use crate::gguf::{Metadata, MetadataValue};
use crate::hf::config::{ConfigJson, JsonMap, common_json, read_common};

pub struct Gemma3;

/// Hugging Face names where Gemma 3 differs from Llama: four norms a block.
const HF_NAMES: &[(&str, &str)] = &[
    ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
    ("post_attention_norm.weight", "post_attention_layernorm.weight"),
    ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"),
    ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    ("attn_k_norm.weight", "self_attn.k_norm.weight"),
];

/// Layers `il` with `il % 6 < 5` slide unless the file says otherwise.
const DEFAULT_PATTERN: usize = 6;
const DEFAULT_LOCAL_THETA: f64 = 10_000.0;

impl Family for Gemma3 {
    fn kind(&self) -> FamilyKind {
        FamilyKind::Gemma3
    }

    fn architectures(&self) -> &'static [&'static str] {
        &["gemma3"]
    }

    fn config(&self, arch: &str, metadata: &Metadata, has_tensor: &dyn Fn(&str) -> bool) -> Result<ModelConfig> {
        let mut c = ModelConfig::read_common(FamilyKind::Gemma3, arch, metadata, has_tensor)?;
        c.rope_layout = RopeLayout::Halves;
        c.activation = Activation::GeluTanh;
        c.embedding_scale = (c.hidden_size as f64).sqrt();
        if c.num_layers == 62 && metadata.opt_f64("gemma3.attention.scale")?.is_none() {
            // Gemma 3 27B scales queries by 1/√(hidden / heads), not 1/√head_dim.
            c.attention_scale = 1.0 / ((c.hidden_size / c.num_heads.max(1)) as f64).sqrt();
        }
        c.sliding_window = read_sliding_window(arch, metadata)?;
        if c.sliding_window.is_some() {
            c.sliding = sliding_layers(metadata, c.num_layers)?;
            c.rope_theta_local = Some(metadata.opt_f64("gemma3.rope.freq_base_swa")?.unwrap_or(DEFAULT_LOCAL_THETA));
        }
        Ok(c)
    }

    fn metadata(&self, c: &ModelConfig) -> Vec<(String, MetadataValue)> {
        let mut entries = c.common_metadata("gemma3");
        if let Some(window) = c.sliding_window {
            entries.push(("gemma3.attention.sliding_window".into(), u32_value(window)));
            // A period where one describes the layers (what converters write), else one flag each.
            let pattern = match (0..=c.num_layers).find(|&n| period_pattern(n, c.num_layers) == c.sliding) {
                Some(n) => u32_value(n),
                None => MetadataValue::Array(c.sliding.iter().map(|&s| MetadataValue::Bool(s)).collect()),
            };
            entries.push(("gemma3.attention.sliding_window_pattern".into(), pattern));
            let local = c.rope_theta_local.unwrap_or(DEFAULT_LOCAL_THETA);
            entries.push(("gemma3.rope.freq_base_swa".into(), MetadataValue::F32(local as f32)));
        }
        entries
    }

    fn tensors(&self, c: &ModelConfig) -> Vec<TensorDecl> {
        let mut out = outer_tensors(c);
        for i in 0..c.num_layers {
            out.extend(llama_block(c, i));
            out.extend([
                TensorDecl::block(i, "attn_q_norm.weight", Role::AttnQNorm, &[c.head_dim]),
                TensorDecl::block(i, "attn_k_norm.weight", Role::AttnKNorm, &[c.head_dim]),
                TensorDecl::block(i, "post_attention_norm.weight", Role::AttnPostNorm, &[c.hidden_size]),
                TensorDecl::block(i, "post_ffw_norm.weight", Role::FfnPostNorm, &[c.hidden_size]),
            ]);
        }
        out
    }

    fn hf_model_types(&self) -> &'static [&'static str] {
        &["gemma3_text", "gemma3"]
    }

    /// The text model's keys (multimodal checkpoints nest them in `text_config`): sliding
    /// layers from `layer_types`, else `sliding_window_pattern`; the attention scale from
    /// `query_pre_attn_scalar`; the sliding layers' RoPE base `rope_local_base_freq`.
    fn hf_config(&self, json: &ConfigJson, _has_tensor: &dyn Fn(&str) -> bool) -> Result<ModelConfig> {
        let json = &json.with_defaults(&hf_text_defaults(json.get("rope_parameters").is_none()));
        let mut c = read_common(FamilyKind::Gemma3, json, true)?;
        c.activation = Activation::GeluTanh;
        c.embedding_scale = (c.hidden_size as f64).sqrt();
        if let Some(scalar) = json.opt_f64("query_pre_attn_scalar")? {
            c.attention_scale = 1.0 / scalar.sqrt();
        }
        for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if json.get(key).is_some() {
                return Err(json.error(key, "logit soft-capping is not supported (Gemma 3 does not use it)"));
            }
        }
        c.sliding_window = json.opt_usize("sliding_window")?.filter(|&w| w > 0);
        if c.sliding_window.is_some() {
            c.sliding = match json.get("layer_types") {
                Some(Value::Array(types)) if types.len() == c.num_layers => {
                    types.iter().map(|t| t.as_str() == Some("sliding_attention")).collect()
                }
                Some(_) => return Err(json.error("layer_types", format!("expected {} layer types", c.num_layers))),
                None => {
                    let period = json.opt_usize("sliding_window_pattern")?.unwrap_or(DEFAULT_PATTERN);
                    period_pattern(period, c.num_layers)
                }
            };
            c.rope_theta_local = Some(json.local_rope_theta()?.unwrap_or(DEFAULT_LOCAL_THETA));
        }
        Ok(c)
    }

    fn hf_config_json(&self, c: &ModelConfig) -> Result<JsonMap> {
        let mut map = common_json(c, "gemma3_text", "Gemma3ForCausalLM")?;
        // An integer as the models have it (256, 168; `transformers` refuses a float there),
        // not 1/scale² with its rounding.
        let scalar = 1.0 / (c.attention_scale * c.attention_scale);
        let scalar = if (scalar - scalar.round()).abs() < 1e-6 { json!(scalar.round() as u64) } else { json!(scalar) };
        map.insert("query_pre_attn_scalar".into(), scalar);
        map.insert("sliding_window".into(), json!(c.sliding_window));
        let sliding = |&s: &bool| s && c.sliding_window.is_some();
        let types: Vec<_> =
            c.sliding.iter().map(|s| if sliding(s) { "sliding_attention" } else { "full_attention" }).collect();
        map.insert("layer_types".into(), json!(types));
        map.insert("rope_local_base_freq".into(), json!(c.rope_theta_local.unwrap_or(DEFAULT_LOCAL_THETA)));
        map.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
        Ok(map)
    }

    fn hf_tensor_name(&self, gguf_name: &str) -> Option<String> {
        hf_name(gguf_name, &[HF_NAMES, llama::HF_NAMES])
    }

    fn hf_norm_offset(&self) -> f32 {
        1.0
    }
}

/// `Gemma3TextConfig`'s defaults for the keys multimodal checkpoints (Gemma 3 4B and up)
/// leave out of `text_config`; the RoPE bases only where no `rope_parameters` gives them.
fn hf_text_defaults(rope_bases: bool) -> Vec<(&'static str, Value)> {
    let mut defaults = vec![
        ("vocab_size", json!(262_208)),
        ("num_attention_heads", json!(8)),
        ("num_key_value_heads", json!(4)),
        ("head_dim", json!(256)),
        ("rms_norm_eps", json!(1e-6)),
        ("max_position_embeddings", json!(131_072)),
        ("query_pre_attn_scalar", json!(256)),
        ("sliding_window", json!(4096)),
    ];
    if rope_bases {
        defaults.extend([("rope_theta", json!(1_000_000.0)), ("rope_local_base_freq", json!(DEFAULT_LOCAL_THETA))]);
    }
    defaults
}

/// Which layers slide: `attention.sliding_window_pattern` as one flag per layer, or as a
/// period `n` (layer `il` slides when `il % n < n − 1`; 0 means all), default 6.
fn sliding_layers(metadata: &Metadata, layers: usize) -> Result<Vec<bool>> {
    const KEY: &str = "gemma3.attention.sliding_window_pattern";
    match metadata.get(KEY) {
        Some(value @ (MetadataValue::Array(_) | MetadataValue::Packed(_))) => {
            let flags = value.as_array().unwrap_or_default();
            if flags.len() != layers {
                return Err(ModelError::metadata(KEY, format!("{} flags for {layers} layers", flags.len())));
            }
            flags.iter().map(|f| f.as_bool().ok_or_else(|| ModelError::metadata(KEY, "expected booleans"))).collect()
        }
        _ => {
            let n = metadata.opt_usize(KEY)?.unwrap_or(DEFAULT_PATTERN);
            Ok(period_pattern(n, layers))
        }
    }
}

/// Layer `il` slides when `il % n < n − 1`; `n = 0` makes every layer slide.
fn period_pattern(n: usize, layers: usize) -> Vec<bool> {
    (0..layers).map(|il| n == 0 || il % n < n - 1).collect()
}
