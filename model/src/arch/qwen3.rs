//! Qwen3 (`general.architecture` `qwen3`): Llama's block without biases, with a per-head
//! RMSNorm on q and k before RoPE (`attn_q_norm`, `attn_k_norm`, `[head_dim]` each), RoPE on
//! rotated halves, and a head size that need not be `hidden / heads`.

use serde_json::json;

use super::{Family, FamilyKind, Role, TensorDecl, hf_name, llama, llama_block, outer_tensors};
use crate::config::{ModelConfig, RopeLayout};
use crate::error::Result;
use crate::gguf::{Metadata, MetadataValue};
use crate::hf::config::{ConfigJson, JsonMap, common_json, read_common};

pub struct Qwen3;

/// Hugging Face names of the tensors Llama's table lacks.
const HF_NAMES: &[(&str, &str)] =
    &[("attn_q_norm.weight", "self_attn.q_norm.weight"), ("attn_k_norm.weight", "self_attn.k_norm.weight")];

impl Family for Qwen3 {
    fn kind(&self) -> FamilyKind {
        FamilyKind::Qwen3
    }

    fn architectures(&self) -> &'static [&'static str] {
        &["qwen3"]
    }

    fn config(&self, arch: &str, metadata: &Metadata, has_tensor: &dyn Fn(&str) -> bool) -> Result<ModelConfig> {
        let mut c = ModelConfig::read_common(FamilyKind::Qwen3, arch, metadata, has_tensor)?;
        c.rope_layout = RopeLayout::Halves;
        Ok(c)
    }

    fn metadata(&self, c: &ModelConfig) -> Vec<(String, MetadataValue)> {
        c.common_metadata("qwen3")
    }

    fn tensors(&self, c: &ModelConfig) -> Vec<TensorDecl> {
        let mut out = outer_tensors(c);
        for i in 0..c.num_layers {
            out.extend(llama_block(c, i));
            out.push(TensorDecl::block(i, "attn_q_norm.weight", Role::AttnQNorm, &[c.head_dim]));
            out.push(TensorDecl::block(i, "attn_k_norm.weight", Role::AttnKNorm, &[c.head_dim]));
        }
        out
    }

    fn hf_model_types(&self) -> &'static [&'static str] {
        &["qwen3"]
    }

    fn hf_config(&self, json: &ConfigJson, _has_tensor: &dyn Fn(&str) -> bool) -> Result<ModelConfig> {
        if json.opt_bool("attention_bias")? == Some(true) {
            return Err(json.error("attention_bias", "Qwen3 with q/k/v biases is not supported"));
        }
        read_common(FamilyKind::Qwen3, json, false)
    }

    fn hf_config_json(&self, c: &ModelConfig) -> Result<JsonMap> {
        let mut map = common_json(c, "qwen3", "Qwen3ForCausalLM")?;
        map.insert("attention_bias".into(), json!(false));
        Ok(map)
    }

    fn hf_tensor_name(&self, gguf_name: &str) -> Option<String> {
        hf_name(gguf_name, &[HF_NAMES, llama::HF_NAMES])
    }
}
