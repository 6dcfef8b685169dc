//! The transformer's hyper-parameters: one [`ModelConfig`] describes a checkpoint completely
//! (its family, sizes, RoPE, attention window, which optional tensors it carries), so that
//! the family's tensor declaration ([`crate::arch::Family::tensors`]) and the forward pass
//! follow from it alone.
//!
//! The keys every family shares (`{arch}.embedding_length`, `{arch}.block_count`, …) are read
//! and written here ([`ModelConfig::read_common`], [`ModelConfig::common_metadata`]); each
//! family file in [`crate::arch`] adds its own.

use crate::arch::FamilyKind;
use crate::error::{ModelError, Result};
use crate::gguf::{Metadata, MetadataValue};

/// Largest dimension (hidden size, vocabulary, feed-forward width, context…) accepted from
/// a file. Real models stay far below; a corrupt or hostile file must fail here, with the
/// key named, rather than in an allocation of its product.
pub const MAX_DIMENSION: usize = 1 << 24;
/// Largest layer or head count accepted from a file.
pub const MAX_COUNT: usize = 1 << 12;

/// Which elements of a head RoPE rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// `(x[2i], x[2i+1])`: ggml's "normal" RoPE; GGUF llama checkpoints are permuted for it.
    InterleavedPairs,
    /// `(x[i], x[i + d/2])`: ggml's NEOX RoPE, the rotate-half layout of HF checkpoints.
    Halves,
}

/// The gate's non-linearity in the gated feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(x)` (SwiGLU).
    Silu,
    /// GELU with the tanh approximation (GeGLU), as Gemma uses it.
    GeluTanh,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub family: FamilyKind,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_layout: RopeLayout,
    /// RoPE base of full-attention layers.
    pub rope_theta: f64,
    /// RoPE base of sliding-window layers, where it differs (Gemma 3: 10 000 against 10⁶).
    /// Sliding layers take no linear scaling, as in llama.cpp.
    pub rope_theta_local: Option<f64>,
    /// Linear position scaling (`rope.scaling.type = linear`): positions are divided by it.
    pub rope_linear_scale: f64,
    /// Llama 3's per-frequency divisors are in the checkpoint (`rope_freqs.weight`).
    pub rope_freq_factors: bool,
    pub context_length: usize,
    /// Keys at least this far behind a query are masked on the layers [`Self::sliding`] marks.
    pub sliding_window: Option<usize>,
    /// Per layer: whether it attends within [`Self::sliding_window`] only.
    pub sliding: Vec<bool>,
    /// Multiplies `q · k` before the softmax (usually `1/√head_dim`).
    pub attention_scale: f64,
    /// Multiplies the token embeddings (Gemma: `√hidden`).
    pub embedding_scale: f64,
    pub activation: Activation,
    /// The output projection is the token embedding (no `output.weight`).
    pub tied_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2).
    pub qkv_bias: bool,
    /// q, k and v are one matrix (`attn_qkv`, Phi-3), split by rows after the product.
    pub fused_qkv: bool,
}

impl ModelConfig {
    /// The keys every family shares, read as `{arch}.{key}`; family-specific fields get
    /// their common defaults (no window, SiLU, no biases, `1/√head_dim`).
    /// `has_tensor` tells which optional tensors the checkpoint carries.
    pub fn read_common(
        family: FamilyKind,
        arch: &str,
        metadata: &Metadata,
        has_tensor: &dyn Fn(&str) -> bool,
    ) -> Result<ModelConfig> {
        let key = |k: &str| format!("{arch}.{k}");
        let dim = |k: &str| -> Result<usize> { bounded(&key(k), metadata.usize(&key(k))?, MAX_DIMENSION) };
        let count = |k: &str| -> Result<usize> { bounded(&key(k), metadata.usize(&key(k))?, MAX_COUNT) };
        let hidden_size = dim("embedding_length")?;
        let num_heads = count("attention.head_count")?;
        let num_kv_heads = match metadata.opt_usize(&key("attention.head_count_kv"))? {
            Some(n) => bounded(&key("attention.head_count_kv"), n, MAX_COUNT)?,
            None => num_heads,
        };
        let head_dim = match metadata.opt_usize(&key("attention.key_length"))? {
            Some(d) => bounded(&key("attention.key_length"), d, MAX_DIMENSION)?,
            None if num_heads > 0 => hidden_size / num_heads,
            None => return Err(ModelError::metadata(&key("attention.head_count"), "must be positive")),
        };
        // llama.cpp refuses a rotary dimension other than the head size for these families;
        // so do we, rather than rotate the wrong number of elements.
        if let Some(n_rot) = metadata.opt_usize(&key("rope.dimension_count"))?
            && n_rot != head_dim
        {
            return Err(ModelError::metadata(
                &key("rope.dimension_count"),
                format!("{n_rot} rotated dimensions per head of {head_dim}: partial rotary embeddings are not supported"),
            ));
        }
        let vocab_size = match metadata.opt_usize(&key("vocab_size"))? {
            Some(v) => v,
            None => metadata
                .opt_array_len("tokenizer.ggml.tokens")?
                .ok_or_else(|| ModelError::metadata(&key("vocab_size"), "missing, and no token list"))?,
        };
        let vocab_size = bounded(&key("vocab_size"), vocab_size, MAX_DIMENSION)?;
        let rope_linear_scale = match metadata.opt_str(&key("rope.scaling.type"))? {
            None | Some("none") => 1.0,
            Some("linear") => metadata.opt_f64(&key("rope.scaling.factor"))?.unwrap_or(1.0),
            Some(other) => {
                return Err(ModelError::metadata(&key("rope.scaling.type"), format!("`{other}` is not supported")));
            }
        };
        let num_layers = count("block_count")?;
        let context_length = match metadata.opt_usize(&key("context_length"))? {
            Some(n) => bounded(&key("context_length"), n, MAX_DIMENSION)?,
            None => 2048,
        };
        let attention_scale = match metadata.opt_f64(&key("attention.scale"))? {
            Some(s) => s,
            None => 1.0 / (head_dim.max(1) as f64).sqrt(),
        };
        Ok(ModelConfig {
            family,
            vocab_size,
            hidden_size,
            intermediate_size: dim("feed_forward_length")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: metadata.opt_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
            rope_layout: RopeLayout::InterleavedPairs,
            rope_theta: metadata.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_theta_local: None,
            rope_linear_scale,
            rope_freq_factors: has_tensor("rope_freqs.weight"),
            context_length,
            sliding_window: None,
            sliding: vec![false; num_layers],
            attention_scale,
            embedding_scale: 1.0,
            activation: Activation::Silu,
            tied_embeddings: !has_tensor("output.weight"),
            qkv_bias: false,
            fused_qkv: false,
        })
    }

    /// The metadata [`ModelConfig::read_common`] reads, for writing a checkpoint of this
    /// configuration (synthetic test models).
    pub fn common_metadata(&self, arch: &str) -> Vec<(String, MetadataValue)> {
        let key = |k: &str| format!("{arch}.{k}");
        let u32_of = |v: usize| MetadataValue::U32(u32::try_from(v).unwrap_or(u32::MAX));
        let mut entries = vec![
            ("general.architecture".to_string(), MetadataValue::String(arch.to_string())),
            (key("vocab_size"), u32_of(self.vocab_size)),
            (key("embedding_length"), u32_of(self.hidden_size)),
            (key("feed_forward_length"), u32_of(self.intermediate_size)),
            (key("block_count"), u32_of(self.num_layers)),
            (key("attention.head_count"), u32_of(self.num_heads)),
            (key("attention.head_count_kv"), u32_of(self.num_kv_heads)),
            (key("attention.key_length"), u32_of(self.head_dim)),
            (key("attention.value_length"), u32_of(self.head_dim)),
            (key("rope.dimension_count"), u32_of(self.head_dim)),
            (key("attention.layer_norm_rms_epsilon"), MetadataValue::F32(self.rms_norm_eps as f32)),
            (key("rope.freq_base"), MetadataValue::F32(self.rope_theta as f32)),
            (key("context_length"), u32_of(self.context_length)),
        ];
        if self.rope_linear_scale != 1.0 {
            entries.push((key("rope.scaling.type"), MetadataValue::String("linear".into())));
            entries.push((key("rope.scaling.factor"), MetadataValue::F32(self.rope_linear_scale as f32)));
        }
        entries
    }

    /// Shape checks that would otherwise surface as a panic deep inside a tensor op.
    pub fn validate(&self) -> Result<()> {
        let bad = |problem: String| Err(ModelError::metadata("model configuration", problem));
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_heads % self.num_kv_heads != 0 {
            return bad(format!("{} heads cannot share {} key/value heads", self.num_heads, self.num_kv_heads));
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 {
            return bad(format!("head dimension {} must be even", self.head_dim));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.intermediate_size == 0 || self.num_layers == 0 {
            return bad("vocabulary, hidden, feed-forward and layer counts must be positive".into());
        }
        if self.context_length == 0 {
            return bad("context length must be positive".into());
        }
        if self.sliding.len() != self.num_layers {
            return bad(format!("{} sliding-window flags for {} layers", self.sliding.len(), self.num_layers));
        }
        if self.sliding_window == Some(0) {
            return bad("a sliding window of 0 positions".into());
        }
        // The largest matrix must be addressable: a 2^40-element tensor would otherwise
        // become a 4 TiB allocation request somewhere in the loader.
        let largest = [
            self.vocab_size.checked_mul(self.hidden_size),
            self.hidden_size.checked_mul(self.intermediate_size),
            self.q_dim().checked_mul(self.hidden_size),
        ];
        if largest.iter().any(|n| n.is_none_or(|n| n > 1 << 36)) {
            return bad(format!(
                "a {}-token vocabulary, hidden size {}, feed-forward size {} and {} heads of {} make matrices too large",
                self.vocab_size, self.hidden_size, self.intermediate_size, self.num_heads, self.head_dim
            ));
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// The attention window of `layer`, if it slides.
    pub fn window(&self, layer: usize) -> Option<usize> {
        if self.sliding.get(layer).copied().unwrap_or(false) { self.sliding_window } else { None }
    }
}

/// `value` if within `max`, else an error naming `key`.
fn bounded(key: &str, value: usize, max: usize) -> Result<usize> {
    if value > max {
        return Err(ModelError::metadata(key, format!("{value} is beyond any real model (at most {max})")));
    }
    Ok(value)
}
