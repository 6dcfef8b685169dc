//! Llama 1/2/3.x, SmolLM and Mistral (`general.architecture` `llama` or `mistral`).
//!
//! The reference decoder: RMSNorm before attention and feed-forward, q/k/v projections,
//! RoPE on interleaved pairs (GGUF converters permute q/k rows for it), SwiGLU. Llama 3
//! checkpoints carry per-frequency RoPE divisors (`rope_freqs.weight`); Mistral's attend
//! within `llama.attention.sliding_window` positions when the file says so. llama.cpp ignores
//! that window for this architecture (it attends to everything), so the two differ only on
//! prompts longer than the window, where we follow the model's definition.

use serde_json::json;

use super::{Family, FamilyKind, TensorDecl, hf_name, llama_block, outer_tensors, read_sliding_window, u32_value};
use crate::config::{ModelConfig, RopeLayout};
use crate::error::Result;
use crate::gguf::{Metadata, MetadataValue};
use crate::hf::config::{ConfigJson, JsonMap, common_json, read_common};

pub struct Llama;

/// Hugging Face names of the Llama tensors (`LlamaForCausalLM`), which the other families
/// share unless their own table says otherwise: `(GGUF name, HF name)`, block tensors by
/// their suffix.
pub(crate) const HF_NAMES: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

impl Family for Llama {
    fn kind(&self) -> FamilyKind {
        FamilyKind::Llama
    }

    fn architectures(&self) -> &'static [&'static str] {
        &["llama", "mistral"]
    }

    fn config(&self, arch: &str, metadata: &Metadata, has_tensor: &dyn Fn(&str) -> bool) -> Result<ModelConfig> {
        let mut c = ModelConfig::read_common(FamilyKind::Llama, arch, metadata, has_tensor)?;
        c.rope_layout = RopeLayout::InterleavedPairs;
        // Optional in llama.cpp's loader too; some fine-tunes add them.
        c.qkv_bias = has_tensor("blk.0.attn_q.bias");
        c.sliding_window = read_sliding_window(arch, metadata)?;
        c.sliding = vec![c.sliding_window.is_some(); c.num_layers];
        Ok(c)
    }

    fn metadata(&self, c: &ModelConfig) -> Vec<(String, MetadataValue)> {
        let mut entries = c.common_metadata("llama");
        if let Some(window) = c.sliding_window {
            entries.push(("llama.attention.sliding_window".into(), u32_value(window)));
        }
        entries
    }

    fn tensors(&self, c: &ModelConfig) -> Vec<TensorDecl> {
        let mut out = outer_tensors(c);
        out.extend((0..c.num_layers).flat_map(|i| llama_block(c, i)));
        out
    }

    fn hf_model_types(&self) -> &'static [&'static str] {
        &["llama", "mistral"]
    }

    /// HF checkpoints keep q/k rows in their original order and rotate halves (the GGUF
    /// converter permutes the rows for interleaved pairs instead): both compute the same,
    /// and reading the rows as they are is cheaper than permuting them at load.
    fn hf_config(&self, json: &ConfigJson, has_tensor: &dyn Fn(&str) -> bool) -> Result<ModelConfig> {
        let mut c = read_common(FamilyKind::Llama, json, false)?;
        c.qkv_bias =
            json.opt_bool("attention_bias")?.unwrap_or(false) || has_tensor("model.layers.0.self_attn.q_proj.bias");
        c.sliding_window = json.opt_usize("sliding_window")?.filter(|&w| w > 0);
        c.sliding = vec![c.sliding_window.is_some(); c.num_layers];
        Ok(c)
    }

    fn hf_config_json(&self, c: &ModelConfig) -> Result<JsonMap> {
        let (model_type, class) =
            if c.sliding_window.is_some() { ("mistral", "MistralForCausalLM") } else { ("llama", "LlamaForCausalLM") };
        let mut map = common_json(c, model_type, class)?;
        map.insert("attention_bias".into(), json!(c.qkv_bias));
        map.insert("sliding_window".into(), json!(c.sliding_window));
        Ok(map)
    }

    fn hf_tensor_name(&self, gguf_name: &str) -> Option<String> {
        hf_name(gguf_name, &[HF_NAMES])
    }
}
