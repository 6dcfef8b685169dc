//! The architecture registry: which model families StellarChat runs, and for each one how
//! its configuration is read from a checkpoint and which tensors it has.
//!
//! A family is one file ([`llama`], [`qwen2`], [`qwen3`], [`gemma3`], [`phi3`]) implementing
//! [`Family`]: its [`ModelConfig`] from the file's metadata, the metadata that configuration
//! writes back (for synthetic test checkpoints), and its tensors by the checkpoint's own
//! names, declared once ([`TensorDecl`]). The loader ([`crate::transformer`]) builds every
//! family from that declaration with the shared layers of [`crate::layers`], and synthetic
//! weights ([`crate::synthetic`]) are drawn from the same declaration.
//!
//! [`config_from_gguf`] maps `general.architecture` to a family; an architecture no family
//! reads is [`ModelError::UnsupportedArchitecture`], listing the supported ones.
//! [`family_of_hf`] does the same for a Hugging Face `model_type`: each family also reads its
//! `config.json` keys and names its tensors as HF checkpoints do ([`crate::hf`]).

pub mod gemma3;
pub mod llama;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
#[cfg(test)]
mod tests;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gguf::{Metadata, MetadataValue};
use crate::hf::config::{ConfigJson, JsonMap};

/// The families this crate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FamilyKind {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
    Phi3,
}

/// Every family, in the order errors list them.
pub const FAMILIES: [&dyn Family; 5] = [&llama::Llama, &qwen2::Qwen2, &qwen3::Qwen3, &gemma3::Gemma3, &phi3::Phi3];

impl FamilyKind {
    pub fn family(self) -> &'static dyn Family {
        match self {
            FamilyKind::Llama => &llama::Llama,
            FamilyKind::Qwen2 => &qwen2::Qwen2,
            FamilyKind::Qwen3 => &qwen3::Qwen3,
            FamilyKind::Gemma3 => &gemma3::Gemma3,
            FamilyKind::Phi3 => &phi3::Phi3,
        }
    }

    /// The `general.architecture` this family writes.
    pub fn name(self) -> &'static str {
        self.family().architectures()[0]
    }
}

/// One model family.
pub trait Family: Sync {
    fn kind(&self) -> FamilyKind;

    /// The `general.architecture` values it reads; the first is the one it writes.
    fn architectures(&self) -> &'static [&'static str];

    /// The configuration of a checkpoint whose `general.architecture` is `arch`, from its
    /// metadata; `has_tensor` tells which optional tensors it carries.
    fn config(&self, arch: &str, metadata: &Metadata, has_tensor: &dyn Fn(&str) -> bool) -> Result<ModelConfig>;

    /// The metadata [`Family::config`] reads back as `config` (for writing checkpoints).
    fn metadata(&self, config: &ModelConfig) -> Vec<(String, MetadataValue)>;

    /// Every tensor of a checkpoint of this configuration, by its name in the file.
    fn tensors(&self, config: &ModelConfig) -> Vec<TensorDecl>;

    /// The Hugging Face `model_type`s (`config.json`) it reads; the first is the one it writes.
    fn hf_model_types(&self) -> &'static [&'static str];

    /// The configuration of a Hugging Face checkpoint from its `config.json`;
    /// `has_tensor` tells which tensors (by their Hugging Face names) it carries.
    fn hf_config(&self, json: &ConfigJson, has_tensor: &dyn Fn(&str) -> bool) -> Result<ModelConfig>;

    /// The `config.json` [`Family::hf_config`] reads back as `config` (for exporting).
    fn hf_config_json(&self, config: &ModelConfig) -> Result<JsonMap>;

    /// The Hugging Face name of a tensor [`Family::tensors`] declares; `None` for one such
    /// checkpoints do not store (Llama 3's `rope_freqs.weight`, computed from `config.json`).
    fn hf_tensor_name(&self, gguf_name: &str) -> Option<String>;

    /// What a Hugging Face norm gain lacks against the GGUF one: Gemma stores `w` and
    /// multiplies by `1 + w`, its GGUF files store `1 + w`.
    fn hf_norm_offset(&self) -> f32 {
        0.0
    }
}

/// The family that reads Hugging Face `model_type`, or an error listing the supported ones.
pub fn family_of_hf(model_type: &str) -> Result<&'static dyn Family> {
    FAMILIES.into_iter().find(|f| f.hf_model_types().contains(&model_type)).ok_or_else(|| {
        let supported = FAMILIES.iter().flat_map(|f| f.hf_model_types().iter().copied()).collect::<Vec<_>>();
        ModelError::UnsupportedArchitecture { name: model_type.to_string(), supported: supported.join(", ") }
    })
}

/// A tensor's Hugging Face name from a family's tables of `(GGUF name, HF name)` pairs,
/// searched in order: block tensors (`blk.{i}.{suffix}`) by their suffix, under
/// `model.layers.{i}.`; the others by their whole name.
pub(crate) fn hf_name(gguf_name: &str, tables: &[&[(&str, &str)]]) -> Option<String> {
    let lookup = |key: &str| tables.iter().flat_map(|t| t.iter()).find(|(g, _)| *g == key).map(|(_, hf)| *hf);
    if let Some(rest) = gguf_name.strip_prefix("blk.") {
        let (layer, suffix) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        return lookup(suffix).map(|hf| format!("model.layers.{layer}.{hf}"));
    }
    lookup(gguf_name).map(str::to_owned)
}

/// The family that reads `architecture`, or an error listing the supported ones.
pub fn family_of(architecture: &str) -> Result<&'static dyn Family> {
    FAMILIES.into_iter().find(|f| f.architectures().contains(&architecture)).ok_or_else(|| {
        ModelError::UnsupportedArchitecture { name: architecture.to_string(), supported: supported_architectures() }
    })
}

/// "llama, mistral, qwen2, …": every architecture name a family reads.
pub fn supported_architectures() -> String {
    FAMILIES.iter().flat_map(|f| f.architectures().iter().copied()).collect::<Vec<_>>().join(", ")
}

/// The configuration of a GGUF checkpoint, by its `general.architecture`, validated.
pub fn config_from_gguf(metadata: &Metadata, has_tensor: &dyn Fn(&str) -> bool) -> Result<ModelConfig> {
    let arch = metadata.str("general.architecture")?;
    let config = family_of(arch)?.config(arch, metadata, has_tensor)?;
    config.validate()?;
    Ok(config)
}

/// What a tensor is for; the loader assembles layers by role, whatever a family names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    TokenEmbedding,
    OutputNorm,
    Output,
    /// Llama 3's RoPE frequency divisors, `[head_dim / 2]`.
    RopeFreqs,
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    /// q‖k‖v in one matrix, `[hidden, q + 2 kv]`.
    AttnQkv,
    AttnQBias,
    AttnKBias,
    AttnVBias,
    /// Per-head RMSNorm gains, `[head_dim]`.
    AttnQNorm,
    AttnKNorm,
    AttnOutput,
    /// RMSNorm of the attention output before the residual add (Gemma).
    AttnPostNorm,
    FfnNorm,
    FfnGate,
    FfnUp,
    /// gate‖up in one matrix, `[hidden, 2 ff]` (Phi-3's `ffn_up`).
    FfnGateUp,
    FfnDown,
    /// RMSNorm of the feed-forward output before the residual add (Gemma).
    FfnPostNorm,
}

impl Role {
    /// Norm gains: drawn near 1 for synthetic weights.
    pub fn is_norm(self) -> bool {
        matches!(
            self,
            Role::OutputNorm
                | Role::AttnNorm
                | Role::AttnQNorm
                | Role::AttnKNorm
                | Role::AttnPostNorm
                | Role::FfnNorm
                | Role::FfnPostNorm
        )
    }
}

/// One tensor of a family's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDecl {
    pub name: String,
    /// ggml order, innermost first: a linear layer is `[in, out]`.
    pub dims: Vec<usize>,
    pub role: Role,
    /// The block it belongs to; `None` for the embedding, output and global tensors.
    pub layer: Option<usize>,
}

impl TensorDecl {
    /// A tensor outside the blocks.
    pub fn global(name: &str, role: Role, dims: &[usize]) -> TensorDecl {
        TensorDecl { name: name.to_string(), dims: dims.to_vec(), role, layer: None }
    }

    /// `blk.{layer}.{name}`.
    pub fn block(layer: usize, name: &str, role: Role, dims: &[usize]) -> TensorDecl {
        TensorDecl { name: format!("blk.{layer}.{name}"), dims: dims.to_vec(), role, layer: Some(layer) }
    }
}

/// The tensors outside the blocks: embedding, final norm, the output projection unless
/// tied, and Llama 3's frequency factors when present.
pub fn outer_tensors(c: &ModelConfig) -> Vec<TensorDecl> {
    let mut out = vec![
        TensorDecl::global("token_embd.weight", Role::TokenEmbedding, &[c.hidden_size, c.vocab_size]),
        TensorDecl::global("output_norm.weight", Role::OutputNorm, &[c.hidden_size]),
    ];
    if !c.tied_embeddings {
        out.push(TensorDecl::global("output.weight", Role::Output, &[c.hidden_size, c.vocab_size]));
    }
    if c.rope_freq_factors {
        out.push(TensorDecl::global("rope_freqs.weight", Role::RopeFreqs, &[c.head_dim / 2]));
    }
    out
}

/// The Llama-shaped block every family starts from: pre-norms, separate q/k/v (with biases
/// if the configuration says so), output projection, gated feed-forward.
pub fn llama_block(c: &ModelConfig, i: usize) -> Vec<TensorDecl> {
    let (h, q, kv, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    let mut out = vec![
        TensorDecl::block(i, "attn_norm.weight", Role::AttnNorm, &[h]),
        TensorDecl::block(i, "attn_q.weight", Role::AttnQ, &[h, q]),
        TensorDecl::block(i, "attn_k.weight", Role::AttnK, &[h, kv]),
        TensorDecl::block(i, "attn_v.weight", Role::AttnV, &[h, kv]),
    ];
    if c.qkv_bias {
        out.push(TensorDecl::block(i, "attn_q.bias", Role::AttnQBias, &[q]));
        out.push(TensorDecl::block(i, "attn_k.bias", Role::AttnKBias, &[kv]));
        out.push(TensorDecl::block(i, "attn_v.bias", Role::AttnVBias, &[kv]));
    }
    out.extend([
        TensorDecl::block(i, "attn_output.weight", Role::AttnOutput, &[q, h]),
        TensorDecl::block(i, "ffn_norm.weight", Role::FfnNorm, &[h]),
        TensorDecl::block(i, "ffn_gate.weight", Role::FfnGate, &[h, ff]),
        TensorDecl::block(i, "ffn_up.weight", Role::FfnUp, &[h, ff]),
        TensorDecl::block(i, "ffn_down.weight", Role::FfnDown, &[ff, h]),
    ]);
    out
}

/// `{arch}.attention.sliding_window`, if present and positive.
pub(crate) fn read_sliding_window(arch: &str, metadata: &Metadata) -> Result<Option<usize>> {
    Ok(metadata.opt_usize(&format!("{arch}.attention.sliding_window"))?.filter(|&w| w > 0))
}

pub(crate) fn u32_value(v: usize) -> MetadataValue {
    MetadataValue::U32(u32::try_from(v).unwrap_or(u32::MAX))
}
