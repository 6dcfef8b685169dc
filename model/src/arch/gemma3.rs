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

use super::{Family, FamilyKind, Role, TensorDecl, llama_block, outer_tensors, read_sliding_window, u32_value};
use crate::config::{Activation, ModelConfig, RopeLayout};
use crate::error::{ModelError, Result};
use crate::gguf::{Metadata, MetadataValue};

pub struct Gemma3;

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
}

/// Which layers slide: `attention.sliding_window_pattern` as one flag per layer, or as a
/// period `n` (layer `il` slides when `il % n < n − 1`; 0 means all), default 6.
fn sliding_layers(metadata: &Metadata, layers: usize) -> Result<Vec<bool>> {
    const KEY: &str = "gemma3.attention.sliding_window_pattern";
    match metadata.get(KEY) {
        Some(MetadataValue::Array(flags)) => {
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
