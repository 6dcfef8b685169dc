//! Llama 1/2/3.x, SmolLM and Mistral (`general.architecture` `llama` or `mistral`).
//!
//! The reference decoder: RMSNorm before attention and feed-forward, q/k/v projections,
//! RoPE on interleaved pairs (GGUF converters permute q/k rows for it), SwiGLU. Llama 3
//! checkpoints carry per-frequency RoPE divisors (`rope_freqs.weight`); Mistral's attend
//! within `llama.attention.sliding_window` positions when the file says so. llama.cpp ignores
//! that window for this architecture (it attends to everything), so the two differ only on
//! prompts longer than the window, where we follow the model's definition.

use super::{Family, FamilyKind, TensorDecl, llama_block, outer_tensors, read_sliding_window, u32_value};
use crate::config::{ModelConfig, RopeLayout};
use crate::error::Result;
use crate::gguf::{Metadata, MetadataValue};

pub struct Llama;

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
}
