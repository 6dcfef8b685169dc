//! Phi-3 and Phi-3.5 mini/medium (`general.architecture` `phi3`): Llama's block with q, k
//! and v in one matrix (`attn_qkv`, split by rows after the product; some conversions keep
//! them separate) and gate‖up in one (`ffn_up`, `[hidden, 2 ff]`: the first half is the
//! gate), RoPE on rotated halves.
//!
//! The files' `phi3.attention.sliding_window` is not applied: llama.cpp disables it too,
//! because converters write values that do not match how the models were trained. LongRoPE
//! checkpoints (the 128k-context variants, `rope_factors_long`) are refused with a clear error.

use super::{Family, FamilyKind, Role, TensorDecl, hf_name, llama, outer_tensors};
use crate::config::{ModelConfig, RopeLayout};
use crate::error::{ModelError, Result};
use crate::gguf::{Metadata, MetadataValue};
use crate::hf::config::{ConfigJson, JsonMap, common_json, read_common};

pub struct Phi3;

/// Hugging Face names where Phi-3 differs from Llama: the fused matrices.
const HF_NAMES: &[(&str, &str)] =
    &[("attn_qkv.weight", "self_attn.qkv_proj.weight"), ("ffn_up.weight", "mlp.gate_up_proj.weight")];

impl Family for Phi3 {
    fn kind(&self) -> FamilyKind {
        FamilyKind::Phi3
    }

    fn architectures(&self) -> &'static [&'static str] {
        &["phi3"]
    }

    fn config(&self, arch: &str, metadata: &Metadata, has_tensor: &dyn Fn(&str) -> bool) -> Result<ModelConfig> {
        if has_tensor("rope_factors_long.weight") || has_tensor("blk.0.rope_factors_long.weight") {
            return Err(ModelError::tensor(
                "rope_factors_long.weight",
                "LongRoPE (Phi-3 128k-context variants) is not supported; use a 4k-context variant",
            ));
        }
        let mut c = ModelConfig::read_common(FamilyKind::Phi3, arch, metadata, has_tensor)?;
        c.rope_layout = RopeLayout::Halves;
        c.fused_qkv = has_tensor("blk.0.attn_qkv.weight");
        Ok(c)
    }

    fn metadata(&self, c: &ModelConfig) -> Vec<(String, MetadataValue)> {
        c.common_metadata("phi3")
    }

    fn tensors(&self, c: &ModelConfig) -> Vec<TensorDecl> {
        let (h, q, kv, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let mut out = outer_tensors(c);
        for i in 0..c.num_layers {
            out.push(TensorDecl::block(i, "attn_norm.weight", Role::AttnNorm, &[h]));
            if c.fused_qkv {
                out.push(TensorDecl::block(i, "attn_qkv.weight", Role::AttnQkv, &[h, q + 2 * kv]));
            } else {
                out.push(TensorDecl::block(i, "attn_q.weight", Role::AttnQ, &[h, q]));
                out.push(TensorDecl::block(i, "attn_k.weight", Role::AttnK, &[h, kv]));
                out.push(TensorDecl::block(i, "attn_v.weight", Role::AttnV, &[h, kv]));
            }
            out.extend([
                TensorDecl::block(i, "attn_output.weight", Role::AttnOutput, &[q, h]),
                TensorDecl::block(i, "ffn_norm.weight", Role::FfnNorm, &[h]),
                TensorDecl::block(i, "ffn_up.weight", Role::FfnGateUp, &[h, 2 * ff]),
                TensorDecl::block(i, "ffn_down.weight", Role::FfnDown, &[ff, h]),
            ]);
        }
        out
    }

    fn hf_model_types(&self) -> &'static [&'static str] {
        &["phi3"]
    }

    fn hf_config(&self, json: &ConfigJson, has_tensor: &dyn Fn(&str) -> bool) -> Result<ModelConfig> {
        // read_common refuses LongRoPE (`rope_scaling.type` longrope), as the GGUF path does.
        let mut c = read_common(FamilyKind::Phi3, json, false)?;
        c.fused_qkv = has_tensor("model.layers.0.self_attn.qkv_proj.weight");
        Ok(c)
    }

    fn hf_config_json(&self, c: &ModelConfig) -> Result<JsonMap> {
        common_json(c, "phi3", "Phi3ForCausalLM")
    }

    fn hf_tensor_name(&self, gguf_name: &str) -> Option<String> {
        hf_name(gguf_name, &[HF_NAMES, llama::HF_NAMES])
    }
}
