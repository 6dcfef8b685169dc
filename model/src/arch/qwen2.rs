//! Qwen2 and Qwen2.5 (`general.architecture` `qwen2`): Llama's block with biases on the q, k
//! and v projections and RoPE on rotated halves (ggml's NEOX layout).

use super::{Family, FamilyKind, TensorDecl, llama_block, outer_tensors};
use crate::config::{ModelConfig, RopeLayout};
use crate::error::Result;
use crate::gguf::{Metadata, MetadataValue};

pub struct Qwen2;

impl Family for Qwen2 {
    fn kind(&self) -> FamilyKind {
        FamilyKind::Qwen2
    }

    fn architectures(&self) -> &'static [&'static str] {
        &["qwen2"]
    }

    fn config(&self, arch: &str, metadata: &Metadata, has_tensor: &dyn Fn(&str) -> bool) -> Result<ModelConfig> {
        let mut c = ModelConfig::read_common(FamilyKind::Qwen2, arch, metadata, has_tensor)?;
        c.rope_layout = RopeLayout::Halves;
        c.qkv_bias = true;
        Ok(c)
    }

    fn metadata(&self, c: &ModelConfig) -> Vec<(String, MetadataValue)> {
        c.common_metadata("qwen2")
    }

    fn tensors(&self, c: &ModelConfig) -> Vec<TensorDecl> {
        let mut out = outer_tensors(c);
        out.extend((0..c.num_layers).flat_map(|i| llama_block(c, i)));
        out
    }
}
