//! Qwen3 (`general.architecture` `qwen3`): Llama's block without biases, with a per-head
//! RMSNorm on q and k before RoPE (`attn_q_norm`, `attn_k_norm`, `[head_dim]` each), RoPE on
//! rotated halves, and a head size that need not be `hidden / heads`.

use super::{Family, FamilyKind, Role, TensorDecl, llama_block, outer_tensors};
use crate::config::{ModelConfig, RopeLayout};
use crate::error::Result;
use crate::gguf::{Metadata, MetadataValue};

pub struct Qwen3;

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
}
